"""The results store, the analysis, compaction and the study lock against a real S3 API: moto's server on
a loopback port (tests/conftest.py), reached through pyarrow's S3 filesystem with the endpoint taken from
AWS_ENDPOINT_URL, as on a cluster. Slow: the server is a process of its own (started once per session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pyarrow.fs as pafs
import pytest

from analysis.load import load_store
from analysis.report import analyse, to_json
from benchmarks.synthetic_store import synthetic_trial
from orchestrator import lock as lock_mod
from orchestrator.compact import compact_study
from orchestrator.lock import StudyLock, StudyLocked
from orchestrator.store import ResultsStore
from trainables.records import resolve_uri

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_study(results: str, study: str = "syn", seeds=(0, 1, 2), epochs: int = 6) -> list[str]:
    """A small synthetic study (fixed + DEBA on two archs) written by the orchestrator's own writer."""
    import numpy as np

    rng = np.random.default_rng(0)
    store = ResultsStore(results, study)
    ids = []
    for arch in ("resnet18", "vit_b16"):
        for seed in seeds:
            for method in ("fixed", "deba"):
                tid, e, run = synthetic_trial(rng, study, arch, "cifar10", seed, method, "baseline", epochs)
                store.write_epochs(tid, e.to_dict("records"))
                store.write_run(run)
                ids.append(tid)
    return ids


def test_pyarrow_takes_the_endpoint_from_the_environment(s3_server, s3_results, monkeypatch):
    fs, path = resolve_uri(s3_results + "/probe")
    assert isinstance(fs, pafs.S3FileSystem)
    with fs.open_output_stream(path + "/a.txt") as out:
        out.write(b"hello")
    # The same object through boto3 (a second client of the same server): pyarrow wrote to it.
    bucket, key = (path + "/a.txt").split("/", 1)
    assert s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read() == b"hello"
    # AWS_ENDPOINT_URL_S3 alone is honoured too (service-specific endpoint).
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.url)
    fs2, _ = resolve_uri(s3_results + "/probe")
    with fs2.open_input_stream(path + "/a.txt") as f:
        assert f.read() == b"hello"


def test_store_analysis_and_compaction_read_the_same_on_s3_as_locally(s3_results, tmp_path):
    local = str(tmp_path / "results")
    ids = _write_study(s3_results)
    _write_study(local)
    remote = ResultsStore(s3_results, "syn")
    assert sorted(remote.read_runs()) == sorted(ids) == sorted(ResultsStore(local, "syn").read_runs())
    assert remote.stored_epochs(ids) == {t: 6 for t in ids}
    rows = {t: remote.read_epochs(t) for t in ids[:2]}
    assert rows == {t: ResultsStore(local, "syn").read_epochs(t) for t in ids[:2]}
    before = to_json(analyse(s3_results))
    assert before == to_json(analyse(local))
    epochs_before = load_store(s3_results).epochs

    report = compact_study(s3_results, "syn")
    assert (report.trials, report.folded, report.files_before, report.files_after) == (12, 12, 24, 2)
    fs, path = resolve_uri(s3_results + "/syn/epochs")
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(path))]
    assert len(names) == 1 and names[0].startswith("compacted-")
    after = ResultsStore(s3_results, "syn")
    assert after.stored_epochs(ids) == {t: 6 for t in ids}
    assert {t: after.read_epochs(t) for t in ids[:2]} == rows
    assert sorted(after.read_runs()) == sorted(ids)
    assert load_store(s3_results).epochs.equals(epochs_before)
    assert to_json(analyse(s3_results)) == before


def _race(locks: list[StudyLock]) -> dict[int, str]:
    """Each lock's acquire() started at the same instant (a barrier); index -> "held" or the refusal."""
    barrier = threading.Barrier(len(locks))
    outcome: dict[int, str] = {}

    def take(i: int) -> None:
        barrier.wait()
        try:
            locks[i].acquire()
            outcome[i] = "held"
        except StudyLocked as exc:
            outcome[i] = str(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(locks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcome


def test_two_drivers_racing_for_an_s3_lock_exactly_one_wins(s3_results):
    """Conditional create (If-None-Match: *): whatever the timing, one of two racing drivers holds the
    study and the other is refused naming it; 10 races, started together on a barrier."""
    for round_ in range(10):
        study = f"race{round_}"
        locks = [StudyLock(s3_results, study) for _ in range(2)]
        assert all(lk.conditional is not None for lk in locks)
        outcome = _race(locks)
        assert sorted(v == "held" for v in outcome.values()) == [False, True], outcome
        winner = next(i for i, v in outcome.items() if v == "held")
        loser_text = outcome[1 - winner]
        assert "in use by driver" in loser_text and "last heartbeat" in loser_text
        assert locks[1 - winner].holder()["token"] == locks[winner].token
        locks[winner].release()
        assert locks[winner].holder() is None


def test_a_stale_s3_lock_is_taken_over_once_and_its_old_driver_stops(s3_results, monkeypatch):
    monkeypatch.setattr(lock_mod, "HEARTBEAT_S", 0.05)
    lost = []
    old = StudyLock(s3_results, "stale", on_lost=lambda: lost.append(True))
    old.acquire()
    old._stop.set()  # its heartbeat stops (a hung driver); the object says it beat an hour ago
    old._thread.join()
    old.doc["heartbeat"] = time.time() - 3600
    old._etag = old.conditional.replace(old._body(), old._etag)
    # Two drivers find it stale at the same moment: the If-Match takeover lets exactly one in.
    racers = [StudyLock(s3_results, "stale") for _ in range(2)]
    outcome = _race(racers)
    held = [racers[i] for i, v in outcome.items() if v == "held"]
    assert len(held) == 1, outcome
    # The old driver wakes up: its next heartbeat (If-Match on its version) fails, so it stops.
    old._stop.clear()
    old._beat()
    assert lost == [True]
    old.release()  # never deletes the new holder's lock
    assert held[0].holder()["token"] == held[0].token
    held[0].release()
    assert held[0].holder() is None


def test_two_driver_processes_racing_for_an_s3_lock(s3_results):
    """Two processes (as two `run_grid` drivers would) take the same study's lock at the same instant."""
    start = time.time() + 3.0
    code = (
        "import sys, time; from orchestrator.lock import StudyLock, StudyLocked\n"
        f"lk = StudyLock({s3_results!r}, 'procs')\n"
        f"time.sleep(max(0.0, {start} - time.time()))\n"
        "try:\n    lk.acquire(); print('held', flush=True); time.sleep(2); lk.release()\n"
        "except StudyLocked as exc:\n    print('refused', exc, flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["held", "refused"], outs
    assert "in use by driver" in next(o for o in outs if o.startswith("refused"))


def test_the_lock_file_names_its_holder_on_s3(s3_results):
    with StudyLock(s3_results, "named") as lk:
        fs, path = resolve_uri(s3_results + "/named/_driver.lock")
        with fs.open_input_stream(path) as f:
            doc = json.loads(f.read())
        assert doc["token"] == lk.token and doc["remote"] is True
    assert fs.get_file_info(path).type == pafs.FileType.NotFound


def test_the_best_effort_window_and_the_conditional_create_that_closes_it(s3_results, monkeypatch):
    """Driver B reads the lock (free), stalls, and writes it after driver A took it. The best-effort
    protocol (gs://, or s3:// without conditional writes) lets both run until A's next heartbeat stops
    A; on s3:// B's conditional create arrives after A's and is refused."""
    monkeypatch.setattr(lock_mod, "SETTLE_S", 0.05)
    monkeypatch.setattr(lock_mod, "HEARTBEAT_S", 0.5)
    lost = []
    a = StudyLock(s3_results, "window", on_lost=lambda: lost.append(True))
    b = StudyLock(s3_results, "window")
    a.conditional = b.conditional = None
    monkeypatch.setattr(b, "holder", lambda: None)  # what B read before A wrote
    a.acquire()
    b.acquire()  # the window: B overwrites A's lock and holds it too
    deadline = time.time() + 10
    while not lost and time.time() < deadline:
        time.sleep(0.05)
    assert lost == [True]  # A's next heartbeat found B's token and stopped A
    a.release()
    b.release()

    c, d = StudyLock(s3_results, "window2"), StudyLock(s3_results, "window2")
    assert c.conditional is not None and d.conditional is not None
    monkeypatch.setattr(d, "holder", lambda: None)  # unused on s3://: nothing is read before the create
    c.acquire()
    with pytest.raises(StudyLocked, match="in use by driver"):
        d.acquire()
    c.release()
