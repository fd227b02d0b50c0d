"""Tune's own views name the trials: ResultGrid/ExperimentAnalysis columns, TensorBoard HParams, and
training_iteration = epoch in an experiment that resumed a trial; the README's Tuner.restore call works.

One tiny_cnn trial on 128 digits images: 2 epochs, then extended to 3 (a new experiment that resumes it).
"""

from __future__ import annotations

import glob
import logging
import os
import struct

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from orchestrator.runner import IDENTIFIERS, make_plan, read_plans, run_plan, storage_root  # noqa: E402
from orchestrator.studies import StudySpec  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(epochs: int) -> StudySpec:
    return StudySpec(
        name="views",
        archs=("tiny_cnn",),
        datasets=("digits",),
        seeds=(3,),
        methods=("fixed",),
        epochs=epochs,
        loop={"train_limit": 128, "test_limit": 64, "threads": 1},
        gpus_per_trial=0.0,
        max_failures=0,
    )


def _hparams(trial_dir: str) -> bytes:
    """The raw HParams session-start record of a trial's TensorBoard event file."""
    from tensorboardX.proto import event_pb2

    (path,) = glob.glob(os.path.join(trial_dir, "events.out.tfevents*"))
    data, i, found = open(path, "rb").read(), 0, b""
    while i < len(data):  # TFRecord framing: length, crc, payload, crc
        (n,) = struct.unpack("Q", data[i : i + 8])
        event = event_pb2.Event()
        event.ParseFromString(data[i + 12 : i + 12 + n])
        i += 12 + n + 4
        for value in event.summary.value:
            if value.tag == "_hparams_/session_start_info":
                found = value.metadata.plugin_data.content
    return found


def test_tune_views_name_trials_and_count_epochs_across_experiments(tmp_path, caplog):
    results = str(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    try:
        for epochs in (2, 3):  # the second run resumes the trial after epoch 2 in a new experiment
            plan = make_plan(tiny(epochs), results)
            run_plan(plan, results, {"cpu": 1.0, "gpu": 0.0}, echo=False, verbose=0)
        (spec,) = plan.trials
        root = storage_root(results, "views")
        plans = read_plans(root)
        (second,) = [name for name, doc in plans.items() if doc["trials"][spec.trial_id]["init_checkpoints"]]
        path = os.path.join(root, second)

        # The README's call: the experiment's own trainable, rebuilt from its plan file.
        from ray import tune

        from orchestrator.tune_views import experiment_trainable, study_experiments

        assert study_experiments(results, "views") == sorted(os.path.join(root, name) for name in plans)

        grid = tune.Tuner.restore(path, trainable=experiment_trainable(path)).get_results()
        df = grid.get_dataframe()
        row = df.iloc[0]
        assert len(df) == 1 and row["config/trial_id"] == spec.trial_id
        assert {k: row[f"config/{k}"] for k in IDENTIFIERS} == {k: getattr(spec, k) for k in IDENTIFIERS}
        assert grid[0].metrics_dataframe["training_iteration"].tolist() == [3]  # the epoch, not 1

        caplog.set_level(logging.WARNING)
        caplog.clear()  # only the read's own warnings count (the runs above may warn of slow syncs under load)
        analysis = tune.ExperimentAnalysis(path)
        assert analysis.dataframe()["config/arch"].tolist() == ["tiny_cnn"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text

        # TensorBoard HParams: the five identifiers next to the trial id.
        (trial_dir,) = glob.glob(os.path.join(path, "tiny_cnn-*"))
        hparams = _hparams(trial_dir)
        for key in IDENTIFIERS:
            value = getattr(spec, key)
            assert key.encode() in hparams and str(value).encode() in hparams, (key, hparams)
    finally:
        ray.shutdown()
