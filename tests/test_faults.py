"""A study survives any stop at any moment: drivers killed at random times (SIGINT, SIGTERM, SIGKILL),
also while the driver pauses between a checkpoint registration and Tune's snapshot (a test hook that
widens the window which used to wedge trials), a results folder moved between runs, a damaged newest
checkpoint. Every trial completes with rows equal to an uninterrupted run's, each epoch stored once.

The drivers are `run_grid.py` subprocesses with their own local Ray; after each one ends, its process
group (Ray's processes join the driver's group) is killed so that no Ray process outlives a cycle.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pyarrow.parquet as pq
import pytest

from orchestrator.store import ResultsStore
from trainables.loop import TrialLoop

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 12
TIMING = {"epoch_time_s", "eval_time_s", "wall_time_s", "samples_per_s", "peak_mem_mb", "measure_time_s"}
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


def _command(results: str, study: str, pause: float = 0.0) -> list[str]:
    cmd = [
        sys.executable,
        os.path.join(ROOT, "orchestrator", "run_grid.py"),
        "--study",
        study,
        "--archs",
        "tiny_cnn",
        "--seeds",
        "0",
        "--methods",
        "fixed,deba",
        "--epochs",
        str(EPOCHS),
        "--results",
        results,
        "--policy-opt",
        "cooldown=1",
        "--loop-opt",
        "train_limit=1024",
        "--loop-opt",
        "test_limit=64",
        "--loop-opt",
        "threads=1",
        "--gpus-per-trial",
        "0",
        "--max-failures",
        "1",
        "--no-analysis",
        "--verbose",
        "0",
        "--quiet",
    ]
    return cmd + (["--test-hook", f"driver_pause_after_save_s={pause}"] if pause else [])


def _run(
    cmd: list[str],
    log: str,
    kill_after: float | None = None,
    sig: int = signal.SIGKILL,
    kill_when: Callable[[], bool] | None = None,
) -> tuple[int, bool]:
    """Run a driver; kill it with `sig` after `kill_after` s (or once `kill_when()` holds, at most
    `kill_after` s) unless it ended first. Returns (exit code, killed)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    killed = False
    try:
        try:
            if kill_when is not None:
                deadline = time.time() + (kill_after or 300)
                while proc.poll() is None and not kill_when() and time.time() < deadline:
                    time.sleep(0.05)
                if proc.poll() is None:
                    raise subprocess.TimeoutExpired(cmd, kill_after or 300)
            rc = proc.wait(timeout=kill_after if kill_after is not None else 300)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                raise
            killed = True
            os.kill(proc.pid, sig)
            try:
                rc = proc.wait(timeout=60)  # a graceful stop writes Tune's snapshot and stops the trials
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    finally:
        try:  # the driver's process group: Ray's own processes, which a SIGKILL leaves behind
            os.killpg(proc.pid, signal.SIGKILL)
            deadline = time.time() + 15
            while time.time() < deadline:  # until the last of them is gone (no write after this)
                os.killpg(proc.pid, 0)
                time.sleep(0.05)
        except (ProcessLookupError, PermissionError):
            pass
    return rc, killed


def _rows(results: str, study: str):
    return pq.read_table(os.path.join(results, study, "epochs")).to_pandas()


@pytest.fixture(scope="module")
def reference():
    """Each trial of the study run straight through in this process: its records by epoch."""
    from orchestrator.cli import build_parser, study_from_args
    from orchestrator.studies import expand

    args = build_parser().parse_args(_command("/unused", "ref")[2:])
    out = {}
    for spec in expand(study_from_args(args)):
        loop = TrialLoop(spec.config)
        out[spec.trial_id] = [loop.run_epoch() for _ in range(EPOCHS)]
    return out


def _assert_complete_and_identical(results: str, study: str, reference) -> None:
    runs = ResultsStore(results, study).read_runs()
    assert set(runs) == set(reference) and {r["status"] for r in runs.values()} == {"completed"}, runs
    ep = _rows(results, study)
    assert not ep.duplicated(["trial_id", "epoch"]).any()
    for tid, want in reference.items():
        got = ep[ep["trial_id"] == tid].sort_values("epoch").to_dict("records")
        assert [r["epoch"] for r in got] == list(range(1, EPOCHS + 1))
        for g, w in zip(got, want):
            for key, value in w.items():
                if key not in TIMING:
                    same = (
                        g[key] == value or (value != value and g[key] != g[key]) or (value is None and g[key] != g[key])
                    )
                    assert same, (tid, g["epoch"], key, g[key], value)


def _stored(results: str, study: str) -> list[int]:
    return sorted(pq.read_metadata(p).num_rows for p in glob.glob(os.path.join(results, study, "epochs", "*.parquet")))


def test_random_kills_then_reruns_until_done(tmp_path, reference):
    """At least 10 kills at random moments: a third while the driver starts (Ray, planning, Tune's
    setup), the others at a random time after the first epoch row was stored (training, checkpoint
    copies, the sink's writes, and, with the pause hook, between a checkpoint and Tune's snapshot)."""
    rng = random.Random(20261127)
    results, log = str(tmp_path / "results"), str(tmp_path / "drivers.log")
    kills, episodes = [], 0
    while len(kills) < 10:
        episodes += 1
        study, pause = f"faults{episodes}", rng.choice([0.0, 0.5])
        cmd = _command(results, study, pause)
        while len(kills) < 10:  # this episode: kill runs at random moments until one finishes the study
            sig = rng.choice(SIGNALS)
            if rng.random() < 1 / 3:
                when, kill_when, phase = rng.uniform(0.5, 8.0), None, "startup"
            else:
                delay, seen, before = rng.uniform(0.0, 4.0), [], sum(_stored(results, study))

                def kill_when(delay=delay, seen=seen, study=study, before=before) -> bool:
                    if not seen and sum(_stored(results, study)) > before:  # this run stored a row
                        seen.append(time.time())
                    return bool(seen) and time.time() - seen[0] >= delay

                when, phase = 120.0, f"{delay:.1f} s into training"
            rc, killed = _run(cmd, log, kill_after=when, sig=sig, kill_when=kill_when)
            if not killed:
                assert rc == 0, open(log).read()[-4000:]
                break
            kills.append(
                {
                    "study": study,
                    "phase": phase if kill_when else f"{when:.1f} s after start",
                    "signal": signal.Signals(sig).name,
                    "exit": rc,
                    "pause_s": pause,
                    "epochs_stored": _stored(results, study),
                }
            )
        for _ in range(3):  # re-run until done
            rc, _ = _run(cmd, log)
            if rc == 0:
                break
        assert rc == 0, open(log).read()[-6000:]
        _assert_complete_and_identical(results, study, reference)
    with open(tmp_path / "kills.json", "w") as f:
        json.dump(kills, f, indent=1)
    print(json.dumps(kills))
    assert len(kills) >= 10 and {k["signal"] for k in kills} == {s.name for s in SIGNALS}


def test_moved_store_and_damaged_newest_checkpoint(tmp_path, reference):
    results, log = str(tmp_path / "results"), str(tmp_path / "drivers.log")
    cmd = _command(results, "moved")

    def both_trials_have_two_epochs() -> bool:
        files = glob.glob(os.path.join(results, "moved", "epochs", "*.parquet"))
        return len(files) == 2 and min(pq.read_metadata(p).num_rows for p in files) >= 2

    rc, killed = _run(cmd, log, kill_after=300, sig=signal.SIGKILL, kill_when=both_trials_have_two_epochs)
    assert killed, open(log).read()[-4000:]
    moved = str(tmp_path / "moved")
    shutil.copytree(results, moved)
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(results, "**", "*"), recursive=True)}
    # Damage the newest checkpoint of every trial in the moved copy: a copy cut short by the kill.
    for trial_dir in glob.glob(os.path.join(moved, "moved", "_ray", "exp-*", "*-*")):
        for ck in sorted(glob.glob(os.path.join(trial_dir, "checkpoint_*")))[-1:]:
            state = os.path.join(ck, "state.pt")
            open(state, "r+b").truncate(os.path.getsize(state) // 3)
    rc, _ = _run([a if a != results else moved for a in cmd], log)
    assert rc == 0, open(log).read()[-6000:]
    out = open(log).read()
    assert "checkpoint passed over" in out and "state.pt is incomplete" in out
    _assert_complete_and_identical(moved, "moved", reference)
    after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(results, "**", "*"), recursive=True)}
    assert after == before  # nothing was written into the folder the store was copied from
