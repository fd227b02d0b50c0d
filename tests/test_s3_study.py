"""A study end to end on a real S3 API (moto's server on a loopback port): `run_grid.py --results s3://...
--storage s3://...` killed mid-run and resumed from the checkpoints on S3, re-run without duplicates,
compacted, extended by more epochs, and analysed from S3. The drivers are subprocesses with their own
local Ray; every process finds the server through AWS_ENDPOINT_URL (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pytest

from orchestrator.lock import STALE_AFTER_S
from orchestrator.store import ResultsStore
from trainables import store_files
from trainables.records import resolve_uri

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = "s3demo"


def _command(results: str, storage: str, epochs: int) -> list[str]:
    return [
        sys.executable, os.path.join(ROOT, "orchestrator", "run_grid.py"), "--study", STUDY,
        "--archs", "tiny_cnn", "--seeds", "0", "--methods", "fixed,deba", "--epochs", str(epochs),
        "--results", results, "--storage", storage, "--policy-opt", "cooldown=1",
        "--loop-opt", "train_limit=256", "--loop-opt", "test_limit=64", "--loop-opt", "threads=1",
        "--gpus-per-trial", "0", "--max-failures", "1", "--no-analysis", "--verbose", "0", "--quiet",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def _run(cmd: list[str], log: str, kill_when=None, timeout: float = 400) -> tuple[int, bool]:
    """Run a driver (its own process group: Ray's processes join it); SIGKILL it once `kill_when()`
    holds. Returns (exit code, killed); the group is gone when it returns."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    killed = False
    try:
        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            if kill_when is not None and kill_when():
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.2)
        rc = proc.wait(timeout=60)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            deadline = time.time() + 15
            while time.time() < deadline:
                os.killpg(proc.pid, 0)
                time.sleep(0.05)
        except (ProcessLookupError, PermissionError):
            pass
    return rc, killed


def _epochs(results: str) -> dict[str, list[int]]:
    store = ResultsStore(results, STUDY)
    return {t: [r["epoch"] for r in rows] for t, rows in store.epochs_of(store.trials_with_epochs(), ["epoch"]).items()}


def _table_files(results: str, table: str) -> list[str]:
    fs, path = resolve_uri(f"{results}/{STUDY}/{table}")
    own, parts = store_files.list_table(fs, path)
    return [*own.values(), *parts]


def _rows_at_rest(results: str):
    """The epochs table as a plain reader of the folder sees it (pyarrow dataset over the files)."""
    fs, _ = resolve_uri(results)
    return ds.dataset(_table_files(results, "epochs"), filesystem=fs, format="parquet").to_table().to_pandas()


def test_a_study_on_s3_killed_resumed_rerun_compacted_extended_and_analysed(s3_server, tmp_path):
    bucket = s3_server.bucket("deba-study")
    results, storage, log = f"{bucket}/results", f"{bucket}/ray", str(tmp_path / "drivers.log")

    def both_trials_have_two_epochs() -> bool:
        stored = _epochs(results)
        return len(stored) == 2 and min(len(e) for e in stored.values()) >= 2

    # 1. Killed (SIGKILL) once both trials stored two epochs. Its lock on S3 outlives it (no kernel drops
    # it, as flock's would): the next driver is refused, naming it, until the lock has had no heartbeat
    # for lock.STALE_AFTER_S; then it takes the study over and resumes from the checkpoints on S3.
    rc, killed = _run(_command(results, storage, 4), log, kill_when=both_trials_have_two_epochs)
    assert killed, open(log).read()[-4000:]
    killed_at, refused = time.time(), 0
    while True:
        rc, _ = _run(_command(results, storage, 4), log)
        last = open(log).read().rsplit("$ ", 1)[-1]
        if rc == 2 and "in use by driver" in last and time.time() - killed_at < STALE_AFTER_S + 60:
            refused += 1
            time.sleep(10)
            continue
        break
    text = open(log).read()
    assert rc == 0, text[-6000:]
    assert refused >= 1 and "last heartbeat" in text
    assert "resumes after epoch" in last  # from a checkpoint that Tune stored on S3
    runs = ResultsStore(results, STUDY).read_runs()
    assert len(runs) == 2 and {r["status"] for r in runs.values()} == {"completed"}
    assert sorted(_epochs(results).values()) == [[1, 2, 3, 4]] * 2
    at_rest = _rows_at_rest(results)
    assert len(at_rest) == 8 and not at_rest.duplicated(["trial_id", "epoch"]).any()

    # 2. The same command again runs nothing and writes no row.
    rc, _ = _run(_command(results, storage, 4), log)
    assert rc == 0 and "nothing to run" in open(log).read().rsplit("$ ", 1)[-1]
    assert len(_rows_at_rest(results)) == 8

    # 3. Compacted on S3: one part per table folder.
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.compact", results], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "2 finished trial(s) in 1 epochs part(s)" in done.stdout
    for table in ("epochs", "runs"):
        (name,) = [os.path.basename(p) for p in _table_files(results, table)]
        assert store_files.is_part(name)
    assert sorted(_epochs(results).values()) == [[1, 2, 3, 4]] * 2

    # 4. Extended to 6 epochs: the compacted trials get their own files back and resume after epoch 4.
    rc, _ = _run(_command(results, storage, 6), log)
    text = open(log).read().rsplit("$ ", 1)[-1]
    assert rc == 0, text[-6000:]
    assert text.count("resumes after epoch 4") == 2
    assert sorted(_epochs(results).values()) == [[1, 2, 3, 4, 5, 6]] * 2
    at_rest = _rows_at_rest(results)
    assert len(at_rest) == 12 and not at_rest.duplicated(["trial_id", "epoch"]).any()
    assert not [p for p in _table_files(results, "epochs") if store_files.is_part(os.path.basename(p))]

    # 5. Analysed from S3.
    out = subprocess.run(
        [sys.executable, "-m", "analysis", results, "--json", "--no-plots", "--out", str(tmp_path / "report")],
        cwd=ROOT, env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["studies"] == [STUDY]
    (deba,) = doc["trajectory"]  # the DEBA run, with its 6 epochs, read from S3
    assert deba["trial_id"] in runs and deba["n_epochs"] == 6 and deba["status"] == "completed"
    assert [(r["method"], r["n_runs"]) for r in doc["comparison"]] == [("deba", 1)]
