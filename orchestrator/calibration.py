"""Self-calibrating studies: DEBA thresholds from the study's own fixed runs (SPEC §2, §4).

A study with `calibrate=True` (the `reconstruction` preset) runs in two phases inside one
run_grid invocation: phase 1 trains the fixed trials; once every fixed trial of an arch is
finished, each DEBA trial of that arch gets theta_stab / theta_conf calibrated by SPEC §2's rule
(p75 of dN, median of c over epochs >= 2, pooled over the fixed runs' seeds) under its own signal
reading (the policy options of SIGNAL_OPTIONS: the fixed runs' stored gradient statistics are
replayed with the reading's options), and phase 2 trains them.

The thresholds are pinned in `<results>/<study>/calibration.json` the first time they are
computed: the DEBA trial ids depend on them, so extending the study later (more seeds) keeps the
thresholds, and the ids, of the trials already run. To recalibrate (from other fixed runs, say),
run the study under a new name: with the file gone, the store's DEBA trials would no longer match
the thresholds computed again, and the study would be refused as holding other settings.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Collection, Iterable
from typing import Any

import pyarrow.fs as pafs

from orchestrator.store import ResultsStore
from trainables.policies import SIGNAL_OPTIONS, PolicyOptions, signal_reading
from trainables.settings import MISSING, fields_of

CALIBRATION_FILE = "calibration.json"
# Signal options added after calibration files existed: an entry without the key was calibrated under
# the option's neutral value (the behaviour before it existed, declared on the option).
_PINNED_BEFORE: dict[str, Any] = {
    f.name: f.metadata["neutral"]
    for f in fields_of(PolicyOptions)
    if f.name in SIGNAL_OPTIONS and f.metadata["neutral"] is not MISSING
}


def _key(arch: str, reading: dict[str, Any]) -> str:
    return json.dumps({"arch": arch, **reading}, sort_keys=True)


def _significant(x: float) -> float:
    """6 significant digits: readable in configs, and the pinned value is what every trial uses."""
    return float(f"{x:.6g}")


def study_calibration(
    study: str, results: str, finished: Collection[str], fixed: Iterable[tuple[str, str]]
) -> CalibrationLookup:
    """The `calibration(arch, method, options)` lookup `studies.expand` takes for a calibrating study
    (`finished`: ids of the trials that need no more work, with the study's epochs; `fixed`: (arch,
    trial_id) of the study's fixed trials). It computes but pins nothing: `StudyCalibration.pin` does,
    in the driver that holds the study lock."""
    return CalibrationLookup(StudyCalibration(results, study), finished, fixed)


class CalibrationLookup:
    """Pinned thresholds, else thresholds computed once every fixed trial of the arch in the study's
    grid has finished with the study's epochs; else None. When the finished fixed runs give no
    thresholds (all diverged, say), None too, and `problems[arch]` says why."""

    def __init__(
        self, calibration: StudyCalibration, finished: Collection[str], fixed: Iterable[tuple[str, str]]
    ) -> None:
        self.calibration = calibration
        self.finished = set(finished)
        self.fixed = list(fixed)
        self.problems: dict[str, str] = {}

    def __call__(self, arch: str, method: str, options: dict[str, Any]) -> dict[str, float] | None:
        reading = signal_reading(options)
        found = self.calibration.thresholds(arch, reading)
        ids = [trial_id for fixed_arch, trial_id in self.fixed if fixed_arch == arch]
        if found is None and ids and arch not in self.problems and set(ids) <= self.finished:
            try:
                self.calibration.calibrate(arch, [reading], ids)
            except ValueError as exc:
                self.problems[arch] = f"the fixed runs of {arch} give no thresholds: {exc}"
                return None
            found = self.calibration.thresholds(arch, reading)
        return found


class StudyCalibration:
    """The pinned thresholds of one study, computed on demand from its finished fixed trials."""

    def __init__(self, results: str, study: str) -> None:
        self._frames: Any = None
        self.unpinned: list[str] = []  # keys of entries computed here, not yet in the file (`pin` writes them)
        self.store = ResultsStore(results, study)
        self.path = posixpath.join(self.store.study_path, CALIBRATION_FILE)
        self.entries: dict[str, dict[str, Any]] = {}
        info = self.store.fs.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            with self.store.fs.open_input_stream(self.path) as f:
                try:
                    doc = json.loads(f.read().decode())
                    entries = [{**_PINNED_BEFORE, **e} for e in doc["entries"]]
                    self.entries = {_key(e["arch"], {k: e[k] for k in SIGNAL_OPTIONS}): e for e in entries}
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(
                        f"calibration file {self.path} cannot be read ({exc}); move it aside to "
                        "recalibrate from the fixed runs"
                    ) from exc

    def thresholds(self, arch: str, reading: dict[str, Any]) -> dict[str, float] | None:
        """{"theta_stab", "theta_conf"} pinned for (arch, reading), or None when not calibrated yet."""
        entry = self.entries.get(_key(arch, reading))
        return None if entry is None else {"theta_stab": entry["theta_stab"], "theta_conf": entry["theta_conf"]}

    def calibrate(self, arch: str, readings: Iterable[dict[str, Any]], fixed_trials: list[str]) -> None:
        """Compute and pin the thresholds of `arch` for every reading not pinned yet, from the fixed
        trials `fixed_trials` (all finished); ValueError when they hold nothing to calibrate from."""
        missing = [r for r in readings if _key(arch, r) not in self.entries]
        if not missing:
            return
        from analysis.calibrate import calibrate_reading
        from analysis.load import load_store
        from analysis.trials import trial_summary

        if self._frames is None:
            self._frames = load_store(self.store.results, self.store.study)
        store = self._frames
        epochs = store.epochs[store.epochs["trial_id"].isin(fixed_trials)]
        summary = trial_summary(epochs, store.runs[store.runs["trial_id"].isin(fixed_trials)])
        for reading in missing:
            found = calibrate_reading(epochs, summary, arch, reading)
            self.entries[_key(arch, reading)] = {
                "arch": arch,
                **reading,
                "theta_stab": _significant(found["theta_stab"]),
                "theta_conf": _significant(found["theta_conf"]),
                "n_runs": found["n_runs"],
                "n_epochs": found["n_epochs"],
                "fixed_trials": sorted(fixed_trials),
            }
            self.unpinned.append(_key(arch, reading))

    def describe_unpinned(self) -> list[str]:
        """One line per computed entry the file does not hold yet."""
        return [
            f"pin thresholds of {e['arch']} ({', '.join(f'{k}={e[k]}' for k in SIGNAL_OPTIONS)}): theta_stab "
            f"{e['theta_stab']}, theta_conf {e['theta_conf']} in {self.path}"
            for e in (self.entries[k] for k in self.unpinned)
        ]

    def pin(self) -> None:
        """Write the computed entries into the study's calibration file (the caller holds the study lock)."""
        if self.unpinned:
            self._write()
            self.unpinned = []

    def _write(self) -> None:
        doc = {
            "about": "DEBA thresholds calibrated from this study's fixed runs (the rule of SPEC section 2) per "
            "arch and signal reading; pinned: the study's DEBA trials were planned with these values",
            "entries": [self.entries[k] for k in sorted(self.entries)],
        }
        self.store.fs.create_dir(self.store.study_path, recursive=True)
        tmp = self.path + ".tmp"
        with self.store.fs.open_output_stream(tmp) as out:
            out.write(json.dumps(doc, indent=1, sort_keys=True).encode())
        self.store.fs.move(tmp, self.path)
