"""The driver-side Tune callback that writes the Parquet results store as results arrive.

Per result: the epoch row goes into the trial's buffer (keyed by epoch, so a retry that re-reports
an epoch replaces it, and rows beyond the re-reported epoch, left by the abandoned attempt, are
dropped) and the trial's epochs file is rewritten atomically. Per finished trial: one runs row
with its status (completed | diverged | failed) and, for failures, the error.
"""

from __future__ import annotations

import math
import platform
import sys
import traceback
from typing import Any

import ray
from ray import tune

from orchestrator.store import FINISHED_STATUSES, ResultsStore, run_row
from trainables.records import epoch_column_names, progress_line

_ERROR_CHARS = 4000


def _trial_key(trial: Any) -> str:
    return trial.config["trial_id"]


def error_text(exc: BaseException | None, fallback: str | None = None) -> str:
    """A trial's error as stored: the cause's type and message first, then the start of its
    traceback (where the trial's own code raised), without Ray's wrapping."""
    if exc is None:
        return (fallback or "trial failed without an error message").strip()[:_ERROR_CHARS]
    cause = getattr(exc, "cause", None)
    cause = cause if isinstance(cause, BaseException) else exc
    message = str(cause).strip().splitlines()
    head = f"{type(cause).__name__}: {message[0] if message else ''}".rstrip(": ")
    frames = getattr(exc, "traceback_str", None)
    if not frames and cause.__traceback__ is not None:
        frames = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
    body = "\n".join(message[1:] + ([frames.strip()] if frames else []))
    return (head + ("\n" + body if body else ""))[:_ERROR_CHARS]


def _error_text(trial: Any) -> str:
    """The trial's last error (see `error_text`); the error file's text when it does not unpickle."""
    try:
        exc = trial.get_pickled_error()
    except Exception:  # the pickled error may not unpickle on the driver; fall back to the log
        exc = None
    fallback = None
    if exc is None and trial.error_file:
        try:
            with open(trial.error_file) as f:
                fallback = f.read()
        except OSError:
            fallback = None
    return error_text(exc, fallback)


def _non_finite(row: dict[str, Any]) -> bool:
    """The loop's divergence test on a stored row: a non-finite loss or gradient signal."""
    return any(row.get(k) is None or not math.isfinite(row[k]) for k in ("train_loss", "grad_var", "grad_norm"))


def epoch_line(study: str, label: str, trial_id: str, row: dict[str, Any], epochs: int) -> str:
    """One progress line per reported epoch (the format of trainables.records.progress_line)."""
    return progress_line(row, epochs, prefix=f"[{study}] {label} ({trial_id[:6]}) ")


class ParquetSink(tune.Callback):
    """Write epochs and runs rows of `specs` (trial_id -> TrialSpec) into the results store.

    `resources` ({"cpu": c, "gpu": g}) is recorded in the runs rows. The callback is pickled with
    the Tuner's state; only its settings travel, its buffers start empty and reload from the store.
    """

    def __init__(
        self, results: str, study: str, specs: dict[str, Any], resources: dict[str, float], echo: bool = True
    ) -> None:
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
        self._damaged: dict[str, str] = {}  # trial_id -> why its stored rows cannot be trusted
        # trial_id -> the last store operation that failed; cleared when a later write stores every
        # epoch up to its own (a missed row is in the buffer, unless the failure was reading it).
        self._unwritten: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k in ("results", "study", "specs", "resources", "echo")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def store(self) -> ResultsStore:
        """The study's results store (opened on first use)."""
        if self._store is None:
            self._store = ResultsStore(self.results, self.study, fix_damage=True)  # the driver holds the lock
        return self._store

    def _buffer(self, trial_id: str) -> dict[int, dict[str, Any]]:
        if trial_id not in self._rows:
            # A resumed study: rows stored by an earlier driver are the starting point.
            before = len(self.store.quarantined)
            self._rows[trial_id] = {int(r["epoch"]): r for r in self.store.read_epochs(trial_id)}
            if len(self.store.quarantined) > before:
                path, dest, _ = self.store.quarantined[-1]
                self._damaged[trial_id] = (
                    f"its epochs file {path} was damaged and was moved to {dest}; the rows "
                    "of the epochs before this run are lost, so the trial runs again from "
                    "its first epoch next time"
                )
        return self._rows[trial_id]

    def _guard(self, what: str, trial: Any, fn: Any, *args: Any) -> None:
        """Run one callback's work; an error concerns that trial only and never reaches Tune (which
        would abort every other trial of the experiment)."""
        try:
            fn(*args)
        except Exception as exc:
            trial_id = _trial_key(trial)
            self._unwritten[trial_id] = (
                f"the driver could not store its {what} ({type(exc).__name__}: {exc}); the trial runs again next time"
            )
            print(
                f"[{self.study}] error storing the {what} of trial {trial_id}: {type(exc).__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Store one epoch row and rewrite the trial's epochs file."""
        self._guard("epoch row", trial, self._store_result, trial, result)

    def _store_result(self, trial: Any, result: dict) -> None:
        trial_id = _trial_key(trial)
        spec = self.specs[trial_id]
        row = {name: result.get(name) for name in epoch_column_names()}
        row.update(spec.identifiers(), study=self.study)
        epoch = int(row["epoch"])
        buf = self._buffer(trial_id)
        for stale in [e for e in buf if e > epoch]:
            del buf[stale]  # left by an attempt that died after a later checkpoint was lost
        buf[epoch] = row
        self.store.write_epochs(trial_id, buf.values())
        if sorted(buf) == list(range(1, epoch + 1)):  # every epoch so far is stored: nothing was missed
            self._unwritten.pop(trial_id, None)
        self._meta[trial_id] = {
            "loop_status": result.get("loop_status"),
            "device": result.get("device"),
            "host": result.get("hostname"),
            "torch_version": result.get("torch_version"),
            "python_version": result.get("python_version"),
        }
        if self.echo:
            if result.get("checkpoints_skipped") and epoch == (result.get("resumed_from_epoch") or 0) + 1:
                print(
                    f"[{self.study}] {spec.label}: passed over damaged checkpoint(s): {result['checkpoints_skipped']}",
                    flush=True,
                )
            print(epoch_line(self.study, spec.label, trial_id, row, spec.config["epochs"]), flush=True)

    def _finish(self, trial: Any, status: str | None, error: str | None) -> None:
        trial_id = _trial_key(trial)
        spec = self.specs[trial_id]
        rows = [self._buffer(trial_id)[e] for e in sorted(self._buffer(trial_id))]
        meta = self._meta.get(trial_id, {})
        why = self._damaged.get(trial_id) or self._unwritten.get(trial_id)
        if why is not None:
            status, error = "failed", why + (f"\n{error}" if error else "")
        if status is None:
            status = meta.get("loop_status")
            if status not in FINISHED_STATUSES:
                # Nothing reported in this session (a restored trial that had already finished) or
                # the function returned early: judge by what the store holds, as the loop would.
                if rows and _non_finite(rows[-1]):
                    status = "diverged"
                elif [int(r["epoch"]) for r in rows] == list(range(1, spec.config["epochs"] + 1)):
                    status = "completed"
                else:
                    status = "failed"
                    error = f"trial ended after {len(rows)} of {spec.config['epochs']} epochs"
        self.store.write_run(
            run_row(
                spec,
                rows,
                status=status,
                error=error,
                device=meta.get("device"),
                host=meta.get("host"),
                gpus_per_trial=self.resources.get("gpu", 0.0),
                cpus_per_trial=self.resources.get("cpu"),
                workers=spec.config.workers,
                python_version=meta.get("python_version") or platform.python_version(),
                torch_version=meta.get("torch_version"),
                ray_version=ray.__version__,
            )
        )
        if self.echo:
            print(
                f"[{self.study}] {spec.label} ({trial_id[:6]}) {status} after {len(rows)} epochs"
                + (f": {error.splitlines()[0]}" if error and error.strip() else ""),
                flush=True,
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial returned: completed or diverged, as its last result says."""
        self._guard("runs row", trial, self._finish, trial, None, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial failed for good (its retries are used up): record it as failed with the error."""
        self._guard("runs row", trial, self._finish, trial, "failed", _error_text(trial))
