"""The driver-side Tune callback that writes the Parquet results store as results arrive.

Per result: the epoch row goes into the trial's buffer (keyed by epoch, so a retry that re-reports
an epoch replaces it, and rows beyond the re-reported epoch, left by the abandoned attempt, are
dropped) and the trial's epochs file is rewritten atomically. Per finished trial: one runs row
with its status (completed | diverged | failed) and, for failures, the error.
"""

from __future__ import annotations

import math
import platform
from typing import Any

import ray
from ray import tune

from orchestrator.store import ResultsStore, run_row
from trainables.records import epoch_column_names

_ERROR_CHARS = 4000  # the end of a traceback names the exception; keep that part


def _trial_key(trial: Any) -> str:
    return trial.config["trial_id"]


def _error_text(trial: Any) -> str:
    """The trial's last error as text (the tail of its traceback)."""
    text = None
    try:
        exc = trial.get_pickled_error()
        if exc is not None:
            text = str(exc)
    except Exception:  # the pickled error may not unpickle on the driver; fall back to the log
        text = None
    if not text and trial.error_file:
        try:
            with open(trial.error_file) as f:
                text = f.read()
        except OSError:
            text = None
    text = (text or "trial failed without an error message").strip()
    return text[-_ERROR_CHARS:]


def _non_finite(row: dict[str, Any]) -> bool:
    """The loop's divergence test on a stored row: a non-finite loss or gradient signal."""
    return any(row.get(k) is None or not math.isfinite(row[k]) for k in ("train_loss", "grad_var", "grad_norm"))


def epoch_line(study: str, label: str, trial_id: str, row: dict[str, Any], epochs: int) -> str:
    """One progress line per reported epoch."""
    def num(x: Any, fmt: str) -> str:
        return "nan" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)

    return (f"[{study}] {label} ({trial_id[:6]}) epoch {row['epoch']:>3}/{epochs}"
            f"  bs {row['batch_size']}->{row['next_batch_size']}"
            f"  loss {num(row.get('train_loss'), '.4f')}  test_acc {num(row.get('test_acc'), '.4f')}"
            f"  {row.get('decision')}{' (cooldown)' if row.get('in_cooldown') else ''}"
            f"  {num(row.get('epoch_time_s'), '.2f')}s")


class ParquetSink(tune.Callback):
    """Write epochs and runs rows of `specs` (trial_id -> TrialSpec) into the results store.

    `resources` ({"cpu": c, "gpu": g}) is recorded in the runs rows. The callback is pickled with
    the Tuner's state; only its settings travel, its buffers start empty and reload from the store.
    """

    def __init__(self, results: str, study: str, specs: dict[str, Any], resources: dict[str, float],
                 echo: bool = True) -> None:
        self.results = results
        self.study = study
        self.specs = specs
        self.resources = dict(resources)
        self.echo = echo
        self._reset()

    def _reset(self) -> None:
        self._store: ResultsStore | None = None
        self._rows: dict[str, dict[int, dict[str, Any]]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k in ("results", "study", "specs", "resources", "echo")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def store(self) -> ResultsStore:
        """The study's results store (opened on first use)."""
        if self._store is None:
            self._store = ResultsStore(self.results, self.study)
        return self._store

    def _buffer(self, trial_id: str) -> dict[int, dict[str, Any]]:
        if trial_id not in self._rows:
            # A resumed study: rows stored by an earlier driver are the starting point.
            self._rows[trial_id] = {int(r["epoch"]): r for r in self.store.read_epochs(trial_id)}
        return self._rows[trial_id]

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Store one epoch row and rewrite the trial's epochs file."""
        trial_id = _trial_key(trial)
        spec = self.specs[trial_id]
        row = {name: result.get(name) for name in epoch_column_names()}
        row.update(study=self.study, trial_id=trial_id, arch=spec.arch, dataset=spec.dataset, seed=spec.seed,
                   method=spec.method, variant=spec.variant)
        epoch = int(row["epoch"])
        buf = self._buffer(trial_id)
        for stale in [e for e in buf if e > epoch]:
            del buf[stale]  # left by an attempt that died after a later checkpoint was lost
        buf[epoch] = row
        self.store.write_epochs(trial_id, buf.values())
        self._meta[trial_id] = {"loop_status": result.get("loop_status"), "device": result.get("device"),
                                "host": result.get("hostname"), "torch_version": result.get("torch_version"),
                                "python_version": result.get("python_version")}
        if self.echo:
            print(epoch_line(self.study, spec.label, trial_id, row, spec.config["epochs"]), flush=True)

    def _finish(self, trial: Any, status: str | None, error: str | None) -> None:
        trial_id = _trial_key(trial)
        spec = self.specs[trial_id]
        rows = [self._buffer(trial_id)[e] for e in sorted(self._buffer(trial_id))]
        meta = self._meta.get(trial_id, {})
        if status is None:
            status = meta.get("loop_status")
            if status not in ("completed", "diverged"):
                # Nothing reported in this session (a restored trial that had already finished) or
                # the function returned early: judge by what the store holds, as the loop would.
                if rows and _non_finite(rows[-1]):
                    status = "diverged"
                elif len(rows) == spec.config["epochs"]:
                    status = "completed"
                else:
                    status = "failed"
                    error = f"trial ended after {len(rows)} of {spec.config['epochs']} epochs"
        self.store.write_run(run_row(
            spec, rows, status=status, error=error, device=meta.get("device"), host=meta.get("host"),
            gpus_per_trial=self.resources.get("gpu", 0.0), cpus_per_trial=self.resources.get("cpu"),
            python_version=meta.get("python_version") or platform.python_version(),
            torch_version=meta.get("torch_version"), ray_version=ray.__version__))
        if self.echo:
            print(f"[{self.study}] {spec.label} ({trial_id[:6]}) {status} after {len(rows)} epochs"
                  + (f": {error.splitlines()[-1] if error.strip() else error}" if error else ""), flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial returned: completed or diverged, as its last result says."""
        self._finish(trial, None, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial failed for good (its retries are used up): record it as failed with the error."""
        self._finish(trial, "failed", _error_text(trial))
