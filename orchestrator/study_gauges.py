"""Study-level live gauges, exported by the driver: trials pending, running, finished (completed or
diverged), diverged and failed, and epochs done of the total.

The per-trial gauges (trainables/ray_trainable.py) live in the trials' worker processes: when a worker
exits, Ray stops exporting its series (after two report intervals), so they cannot say how many trials
finished. The driver lives as long as the study runs (both phases of a calibrating study), so its
gauges do: `StudyGauges` is a Tune callback that counts the trials' states from Tune's events and sets
`ray_deba_study_<name>{study=...}` (Prometheus names; Ray adds SessionName and the node's labels). The
counts start from the ledger (finished trials of earlier runs count as finished) and change as trials
start, report epochs and end; a trial that Tune retries is running again, one whose retries are used up
is failed (it runs again on the next invocation).

Lag: Ray exports a process's metrics every `metrics_report_interval_ms` (10 s by default; run_grid's
local Ray and cluster.yaml's head set METRICS_REPORT_INTERVAL_MS, Ray's floor is 1 s), then Prometheus
scrapes on its own interval: a change shows after at most the sum of the two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Ray's report interval for metrics (ms): what connect() gives a local Ray and cluster.yaml the head.
METRICS_REPORT_INTERVAL_MS = 2000
STATES = ("pending", "running", "completed", "diverged", "failed")
FINISHED = frozenset({"completed", "diverged"})
STUDY_GAUGE_TAGS: tuple[str, ...] = ("study",)
# Exported to Prometheus as ray_deba_study_<name> (orchestrator/dashboards/ reads them).
METRICS: dict[str, str] = {
    "trials_total": "trials of the study (including those that wait for calibrated thresholds)",
    "trials_pending": "trials not started yet in this run (or waiting for a retry or for thresholds)",
    "trials_running": "trials training now",
    "trials_finished": "trials completed or diverged (the ledger's finished trials)",
    "trials_diverged": "trials that diverged",
    "trials_failed": "trials that failed in this run after their retries (they run again next time)",
    "epochs_done": "epochs stored, over all trials",
    "epochs_total": "epochs the study's trials are configured for",
}


@dataclass
class StudyCounts:
    """Each trial's state and epochs done (pure: the counting the gauges export)."""

    states: dict[str, str]
    epochs: dict[str, int]
    epochs_total: int
    waiting: int = 0  # trials without an id yet (phase 2 of a calibrating study): pending
    changed: set[str] = field(default_factory=set)

    @classmethod
    def from_plan(
        cls, trials: Iterable[Any], finished: Iterable[str], statuses: Mapping[str, str], stored: Mapping[str, int],
        waiting: int = 0, waiting_epochs: int = 0,
    ) -> StudyCounts:  # fmt: skip
        """The counts before a run: finished trials in their ledger state, the others pending, with the
        epochs the store holds (`stored`: trial_id -> contiguous epochs stored)."""
        trials = list(trials)
        done = set(finished)
        states = {
            t.trial_id: (statuses.get(t.trial_id) if statuses.get(t.trial_id) in FINISHED else "completed")
            if t.trial_id in done
            else "pending"
            for t in trials
        }
        # a trial in `finished` that the ledger holds as failed ran in phase 1 of this invocation
        states.update({tid: "failed" for tid in done if statuses.get(tid) == "failed"})
        return cls(
            states=states,
            epochs={t.trial_id: int(stored.get(t.trial_id, 0)) for t in trials},
            epochs_total=sum(int(t.config["epochs"]) for t in trials) + waiting_epochs,
            waiting=waiting,
        )

    def set_state(self, trial_id: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"state={state!r} is not allowed; expected one of {', '.join(STATES)}")
        self.states[trial_id] = state

    def set_epoch(self, trial_id: str, epoch: int) -> None:
        self.epochs[trial_id] = max(int(epoch), 0)

    def values(self) -> dict[str, float]:
        """Gauge name -> value (METRICS)."""
        n = {s: sum(1 for v in self.states.values() if v == s) for s in STATES}
        return {
            "trials_total": float(len(self.states) + self.waiting),
            "trials_pending": float(n["pending"] + self.waiting),
            "trials_running": float(n["running"]),
            "trials_finished": float(n["completed"] + n["diverged"]),
            "trials_diverged": float(n["diverged"]),
            "trials_failed": float(n["failed"]),
            "epochs_done": float(sum(self.epochs.values())),
            "epochs_total": float(self.epochs_total),
        }


_GAUGES: dict[str, Any] = {}  # one Ray Gauge per name per process (a driver may run two phases)


def _gauge(name: str) -> Any:
    from ray.util.metrics import Gauge

    if name not in _GAUGES:
        _GAUGES[name] = Gauge(f"deba_study_{name}", description=METRICS[name], tag_keys=STUDY_GAUGE_TAGS)
    return _GAUGES[name]


def _make_callback_class() -> type:
    from ray import tune

    class StudyGauges(tune.Callback):
        """Tune callback of the driver that keeps the study's gauges (module docstring)."""

        def __init__(self, study: str, counts: StudyCounts) -> None:
            self.study = study
            self.counts = counts
            self.export()  # the counts before any trial starts

        def export(self) -> None:
            for name, value in self.counts.values().items():
                _gauge(name).set(value, tags={"study": self.study})

        def _tid(self, trial: Any) -> str | None:
            tid = trial.config.get("trial_id")
            return tid if tid in self.counts.states else None

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if (tid := self._tid(trial)) is not None:
                self.counts.set_state(tid, "running")
                self.export()

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if (tid := self._tid(trial)) is not None and result.get("epoch") is not None:
                self.counts.set_state(tid, "running")
                self.counts.set_epoch(tid, result["epoch"])
                self.export()

        def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if (tid := self._tid(trial)) is not None:
                self.counts.set_state(tid, "pending")  # Tune starts it again
                self.export()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if (tid := self._tid(trial)) is not None:
                status = (trial.last_result or {}).get("loop_status")
                self.counts.set_state(tid, status if status in FINISHED else "failed")
                self.export()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if (tid := self._tid(trial)) is not None:
                self.counts.set_state(tid, "failed")
                self.export()

    return StudyGauges


def study_gauges(study: str, counts: StudyCounts) -> Any:
    """The driver's StudyGauges callback for `study`, exporting `counts` now (Ray must be connected)."""
    return _make_callback_class()(study, counts)
