"""A 2-worker trial through Tune and Ray Train on a local Ray (2 CPUs, gloo): one Tune trial, one set of
rows recording W = 2, the one-worker batch-size path, a worker killed after epoch 2 retried by Tune from
rank 0's checkpoint, and a second driver resuming the trial from the first one's checkpoint, giving the
rows of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from orchestrator.runner import make_plan, run_plan  # noqa: E402
from orchestrator.studies import StudySpec  # noqa: E402
from trainables.ddp_local import run_local  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = {"epoch_time_s", "eval_time_s", "wall_time_s", "samples_per_s", "peak_mem_mb", "measure_time_s"}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    yield
    ray.shutdown()


def test_two_worker_trial_through_tune_survives_a_dead_worker(tmp_path):
    results = str(tmp_path / "results")
    study = StudySpec(
        name="ddp",
        archs=("tiny_mlp",),
        datasets=("digits",),
        seeds=(0,),
        methods=("adabatch",),
        epochs=4,
        policy={"resize_every": 2},
        loop={"train_limit": 512, "threads": 1, "eval_batch_size": 512},
        gpus_per_trial=0.0,
        workers_per_trial="2",
        max_failures=1,
        hooks={"fail_at_epoch": 2, "fail_marker_dir": str(tmp_path / "markers")},
    )
    plan = make_plan(study, results)
    (trial,) = plan.trials
    run_plan(plan, results, {"cpu": 1.0, "gpu": 0.0}, echo=False, verbose=0)
    assert os.listdir(tmp_path / "markers") == [f"{trial.trial_id}.failed"]  # a worker died once
    runs = pq.read_table(os.path.join(results, "ddp", "runs")).to_pylist()
    assert [r["status"] for r in runs] == ["completed"] and json.loads(runs[0]["config_json"])["workers"] == 2
    assert runs[0]["workers"] == 2
    rows = sorted(pq.read_table(os.path.join(results, "ddp", "epochs")).to_pylist(), key=lambda r: r["epoch"])
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and {r["workers"] for r in rows} == {2}
    assert [r["batch_size"] for r in rows] == [64, 64, 128, 128]
    # A new driver (what re-running the command after a killed driver does): a new experiment whose trial
    # starts from the checkpoint the first one left, here to extend the trial by one epoch.
    longer = dataclasses.replace(study, epochs=5)
    plan = make_plan(longer, results)
    run_plan(plan, results, {"cpu": 1.0, "gpu": 0.0}, echo=False, verbose=0)
    rows = sorted(pq.read_table(os.path.join(results, "ddp", "epochs")).to_pylist(), key=lambda r: r["epoch"])
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    reference = run_local(plan.trials[0].config)  # the same trial, uninterrupted, without Ray
    keep = [k for k in reference[0] if k not in TIMING]
    assert [{k: r[k] for k in keep} for r in rows] == [{k: r[k] for k in keep} for r in reference]
