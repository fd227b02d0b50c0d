"""Tune's own views of a study's experiments: trials named by their grid cell, and the exact trainable
`Tuner.restore` needs.

Each trial's Tune config holds the store's trial id and its arch, dataset, seed, method and variant
(runner._tuner's param_space), so `ResultGrid.get_dataframe()` and `ExperimentAnalysis` carry them as
`config/<name>` columns. TensorBoard's HParams view reads `trial.evaluated_params` instead, which Tune
fills only with the grid-search value (the trial id): `NameTrials` adds the five identifiers there.
Each report carries `training_iteration` = the epoch, so a trial resumed in a later experiment goes on
counting from the epoch it resumed after.

A study's trials may be spread over several experiments (every run_grid call is one: runner.py), so the
store (Parquet) is the study's record; Tune's views show one experiment each.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from typing import Any

from ray import tune

from orchestrator.runner import PLAN_FILE, _join, _trainable, read_plans, storage_root
from orchestrator.store import resolve_uri
from trainables.config import TrialConfig


class NameTrials(tune.Callback):
    """Adds the trial's identifiers (from its config) to the parameters Tune's loggers record as
    hyperparameters (TensorBoard HParams, the progress table), next to the trial id."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Before the trial's first result: the loggers write hparams when the trial ends."""
        trial.evaluated_params.update({k: trial.config[k] for k in self.keys if k in trial.config})


def experiment_plan(path: str) -> dict[str, Any]:
    """The orchestrator's plan file of the experiment at `path` (a folder or URI under `<results>/<study>/_ray`)."""
    fs, folder = resolve_uri(path)
    with fs.open_input_stream(posixpath.join(folder, PLAN_FILE)) as f:
        return json.loads(f.read().decode())


def experiment_trainable(path: str) -> Any:
    """The trainable the experiment at `path` ran (its trial payloads and resources, from its plan file):
    what `tune.Tuner.restore(path, trainable=...)` needs (another one fails with a ValueError)."""
    doc = experiment_plan(path)
    # The plan file holds each config as its stored document; the trainable takes the typed config.
    payloads = {tid: {**p, "config": TrialConfig.from_stored(p["config"])} for tid, p in doc["trials"].items()}
    return _trainable(payloads, doc["resources"])


def study_experiments(results: str, study: str, storage: str | None = None) -> list[str]:
    """The paths of the study's Tune experiments (one per run_grid call that ran trials; sorted by path),
    each of which opens with `Tuner.restore` or `ExperimentAnalysis`."""
    root = storage_root(results, study, storage)
    return sorted(_join(root, name) for name, doc in read_plans(root).items() if doc.get("study") == study)
