"""Multi-node behaviour on a 2-node `ray.cluster_utils.Cluster` (1 CPU each): a study spread over both
nodes survives the loss of the worker node, and a study whose driver is killed resumes from the
trials' checkpoints (in a new experiment) when the same command runs again. The drivers are `run_grid.py` subprocesses
attached with --address, as on a real cluster; the cluster utilities run in this main thread.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Nodes started here inherit this environment: their workers must import the project.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from orchestrator.store import ResultsStore  # noqa: E402

pytestmark = pytest.mark.slow
EPOCHS = 10


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=c.address)  # this process only watches resources; it runs no task
    yield c
    ray.shutdown()
    c.shutdown()


def _ensure_worker(cluster: Cluster):
    if len(cluster.worker_nodes) == 0:
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    deadline = time.time() + 60
    while ray.cluster_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    return next(iter(cluster.worker_nodes))


def _command(cluster: Cluster, results: str, study: str) -> list[str]:
    return [
        sys.executable,
        os.path.join(ROOT, "orchestrator", "run_grid.py"),
        "--address",
        cluster.address,
        "--study",
        study,
        "--archs",
        "tiny_cnn",
        "--seeds",
        "0,1",
        "--methods",
        "fixed",
        "--epochs",
        str(EPOCHS),
        "--results",
        results,
        "--loop-opt",
        "train_limit=384",
        "--loop-opt",
        "test_limit=64",
        "--loop-opt",
        "threads=1",
        "--gpus-per-trial",
        "0",
        "--max-failures",
        "3",
        "--no-analysis",
        "--verbose",
        "0",
    ]


def _start(cmd: list[str], log: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _epochs_stored(results: str, study: str) -> dict[str, int]:
    out = {}
    for path in glob.glob(os.path.join(results, study, "epochs", "*.parquet")):
        out[os.path.basename(path)] = pq.read_metadata(path).num_rows
    return out


def _wait_for(predicate, proc: subprocess.Popen, log: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None or time.time() > deadline:
            raise AssertionError(f"driver ended or timed out before the condition; log:\n{open(log).read()[-4000:]}")
        time.sleep(0.1)


def _tune_results(results: str, study: str) -> dict[str, list[dict]]:
    """<experiment>/<trial dir> -> the results Tune logged for it (all attempts)."""
    out = {}
    for path in glob.glob(os.path.join(results, study, "_ray", "*", "*", "result.json")):
        with open(path) as f:
            key = os.path.relpath(os.path.dirname(path), os.path.join(results, study, "_ray"))
            out[key] = [json.loads(line) for line in f if line.strip()]
    return out


def _assert_complete(results: str, study: str) -> None:
    runs = ResultsStore(results, study).read_runs()
    assert len(runs) == 2 and {r["status"] for r in runs.values()} == {"completed"}
    ep = pq.read_table(os.path.join(results, study, "epochs")).to_pandas()
    assert len(ep) == 2 * EPOCHS
    assert not ep.duplicated(["trial_id", "epoch"]).any()
    assert sorted(ep.groupby("trial_id")["epoch"].apply(list)) == [list(range(1, EPOCHS + 1))] * 2


def test_study_spans_two_nodes_and_survives_losing_the_worker(cluster, tmp_path):
    worker = _ensure_worker(cluster)
    head_id, worker_id = cluster.head_node.node_id, worker.node_id
    results, log = str(tmp_path / "results"), str(tmp_path / "driver.log")
    proc = _start(_command(cluster, results, "mn"), log)
    try:
        # Both trials are running (one per node: each node has one CPU) once both have an epoch stored.
        _wait_for(lambda: len(_epochs_stored(results, "mn")) == 2, proc, log)
        assert max(_epochs_stored(results, "mn").values()) < EPOCHS
        cluster.remove_node(worker)
        assert proc.wait(timeout=300) == 0, open(log).read()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_complete(results, "mn")
    nodes = {name: [r["node_id"] for r in rows] for name, rows in _tune_results(results, "mn").items()}
    assert set().union(*map(set, nodes.values())) == {head_id, worker_id}  # the study used both nodes
    moved = [ids for ids in nodes.values() if ids[0] == worker_id]
    assert len(moved) == 1 and moved[0][-1] == head_id  # the worker's trial finished on the head


def test_killed_driver_resumes_from_the_trials_checkpoints(cluster, tmp_path):
    _ensure_worker(cluster)
    results, log, log2 = str(tmp_path / "results"), str(tmp_path / "driver.log"), str(tmp_path / "driver2.log")
    cmd = _command(cluster, results, "kill")
    proc = _start(cmd, log)
    try:
        _wait_for(lambda: max(_epochs_stored(results, "kill").values(), default=0) >= 3, proc, log)
    finally:
        proc.kill()  # SIGKILL: no chance to clean up or to save state
        proc.wait()
    killed_at = _epochs_stored(results, "kill")
    assert min(killed_at.values(), default=0) < EPOCHS
    # The dead driver's trials die with it (fate sharing); wait until their CPUs are free again.
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)

    proc2 = _start(cmd, log2)
    assert proc2.wait(timeout=300) == 0, open(log2).read()[-4000:]
    out = open(log2).read()
    assert out.count("resumes after epoch") >= 1 and "(new)" in out
    _assert_complete(results, "kill")
    resumed = [
        r["resumed_from_epoch"]
        for rows in _tune_results(results, "kill").values()
        for r in rows
        if r.get("resumed_from_epoch")
    ]
    assert resumed and min(resumed) >= 1  # trials continued from checkpoints, not from scratch


def test_dry_run_attaches_and_names_the_clusters_gpus_and_cpus(cluster, tmp_path):
    # --dry-run --address plans for the cluster it names (here: CPUs only, no GPU up), not for this machine.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, os.path.join(ROOT, "orchestrator", "run_grid.py"), "--study", "paper", "--dry-run",
           "--address", cluster.address, "--results", str(tmp_path / "results")]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    cpus = int(ray.cluster_resources().get("CPU", 0))
    assert re.search(rf"cluster at {re.escape(cluster.address)}: 0 GPU\(s\), {cpus} CPU\(s\) on \d node\(s\) up now",
                     out.stdout), out.stdout[:2000]  # fmt: skip
    assert "note: the cluster has no GPU up now" in out.stdout and "slots here" not in out.stdout
    assert re.search(rf"not predicted on the attached cluster \(CPU-only trials on {cpus} CPUs", out.stdout)
    assert re.search(r"[\d.]+ h on 8 GPUs", out.stdout)
