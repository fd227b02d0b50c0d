"""Reliability without Ray: settings applied or refused, one configuration per study, damaged files set
aside, one driver per study, resume points across experiments, older stores in the analysis, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from analysis.load import load_store
from benchmarks.synthetic_store import run_row as synthetic_run_row
from benchmarks.synthetic_store import spec_rows, trial_rows, under_id, write_trial
from orchestrator.checkpoints import find_checkpoints, intact, prune, resume_points
from orchestrator.cli import build_parser, study_from_args
from orchestrator.lock import StudyLock, StudyLocked
from orchestrator.run_grid import format_summary
from orchestrator.run_grid import main as grid_main
from orchestrator.runner import make_plan, repair
from orchestrator.sink import error_text
from orchestrator.store import ResultsStore, run_row
from orchestrator.studies import expand, preset, with_overrides
from trainables.config import TrialConfig
from trainables.loop import TrialLoop
from trainables.run import main as trial_main


def _study(argv):
    return study_from_args(build_parser().parse_args(argv))


def _store_trial(results, spec, epochs, status="completed", rows=None):
    """Rows and a runs row of `spec` as the sink stores them (made-up numbers)."""
    store = ResultsStore(results, spec.study)
    rows = rows or spec_rows(spec, epochs)
    store.write_epochs(spec.trial_id, rows)
    store.write_run(run_row(spec, rows, status=status))
    return store


# ------------------------------------------------------------------ item 2: settings applied or refused


def test_a_study_wide_theta_overrides_the_presets_thresholds():
    specs = expand(_study(["--seeds", "0", "--policy-opt", "theta_stab=0.5"]))
    deba = [s.config["policy"] for s in specs if s.method == "deba"]
    assert deba and all(p["theta_stab"] == 0.5 for p in deba)
    assert {p["theta_conf"] for p in deba} == {1.0}  # the preset's theta_conf stays


def test_universal_thresholds_study_wide_replace_the_presets():
    specs = expand(_study(["--seeds", "0", "--policy-opt", "thresholds=universal"]))
    deba = [s.config["policy"] for s in specs if s.method == "deba"]
    assert all(p["thresholds"] == "universal" and p["theta_stab"] is None for p in deba)


def test_thresholds_file_keys_must_be_archs_of_the_study(tmp_path):
    path = tmp_path / "thr.json"
    path.write_text(json.dumps({"resnet-18": {"theta_stab": 0.3, "theta_conf": 0.5}}))
    with pytest.raises(ValueError, match="thresholds key: arch=.resnet-18. is not allowed; expected .* resnet18"):
        _study(["--thresholds", str(path)])
    path.write_text(
        json.dumps(
            {"tiny_cnn": {"theta_stab": 0.3, "theta_conf": 0.5}, "resnet18": {"theta_stab": 0.3, "theta_conf": 0.5}}
        )
    )
    with pytest.raises(
        ValueError,
        match=r"study's archs only \(tiny_cnn, tiny_mlp\): the file has resnet18, which this study does not run",
    ):
        _study(["--thresholds", str(path)])
    study = _study(["--thresholds", str(path), "--archs", "tiny_cnn,resnet18"])
    assert study.thresholds["resnet18"] == {"theta_stab": 0.3, "theta_conf": 0.5}


# ------------------------------------------------------------------ item 6: one configuration per study


def test_a_changed_setting_under_an_existing_study_is_refused_naming_it(tmp_path):
    results = str(tmp_path)
    study = with_overrides(preset("demo"), seeds=[0], epochs=3)
    for spec in expand(study):
        _store_trial(results, spec, 3)
    assert make_plan(study, results).pending == ()
    with pytest.raises(ValueError, match=r"epochs: 3 -> 2 \(fewer\)"):
        make_plan(with_overrides(study, epochs=2), results)
    changed = with_overrides(study, loop={**study.loop, "lr": 0.02})
    with pytest.raises(ValueError, match=r"lr: 0.01 -> 0.02.*--study demo-2"):
        make_plan(changed, results)
    with pytest.raises(ValueError, match=r"policy.cooldown: 2 -> 3"):
        make_plan(with_overrides(study, policy={**study.policy, "cooldown": 3}), results)
    # More epochs extend the same trials (their ids do not depend on the epochs); more seeds add trials.
    longer = make_plan(with_overrides(study, epochs=5), results)
    assert {t.trial_id for t in longer.pending} == {t.trial_id for t in expand(study)}
    wider = make_plan(with_overrides(study, seeds=[0, 1]), results)
    assert {t.seed for t in wider.pending} == {1}


def test_run_grid_refuses_a_changed_study_with_exit_2(tmp_path, capsys):
    results = str(tmp_path)
    study = with_overrides(preset("demo"), seeds=[0], epochs=3)
    for spec in expand(study):
        _store_trial(results, spec, 3)
    assert grid_main(["--seeds", "0", "--epochs", "2", "--results", results]) == 2
    assert "already holds trial" in capsys.readouterr().err


# ------------------------------------------------------------------ item 4: damaged files are set aside


def _demo_with_a_cut_runs_file(results):
    """A finished 2-trial demo store whose first trial's runs file was cut short: (study, specs, store, path)."""
    study = with_overrides(preset("demo"), seeds=[0], epochs=2, archs=["tiny_cnn"])
    specs = expand(study)
    for spec in specs:
        store = _store_trial(results, spec, 2)
    path = os.path.join(store.study_path, "runs", f"{specs[0].trial_id}.parquet")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    return study, specs, store, path


def test_a_damaged_runs_file_is_quarantined_and_its_trial_runs_again(tmp_path, capsys):
    results = str(tmp_path)
    study, specs, store, path = _demo_with_a_cut_runs_file(results)
    plan = make_plan(study, results)
    assert [t.trial_id for t in plan.pending] == [specs[0].trial_id]
    assert os.path.exists(path) and plan.repairs.lines()[0].startswith(f"set aside damaged file {path}")
    repair(plan)  # the driver that holds the lock sets it aside
    assert not os.path.exists(path)
    moved = os.listdir(os.path.join(store.study_path, "_quarantine"))
    assert len(moved) == 1 and moved[0].startswith(f"runs__{specs[0].trial_id}.parquet.")
    assert "is damaged" in capsys.readouterr().err
    # The analysis still reads the study: the damaged file is not in a table folder any more.
    assert len(load_store(results, study.name).runs) == 1


def test_a_damaged_epochs_file_means_the_trial_starts_over(tmp_path):
    results = str(tmp_path)
    spec = expand(with_overrides(preset("demo"), seeds=[0], epochs=4, archs=["tiny_cnn"], methods=["fixed"]))[0]
    store = _store_trial(results, spec, 2, status="failed")
    assert store.stored_epochs([spec.trial_id]) == {spec.trial_id: 2}
    path = os.path.join(store.study_path, "epochs", f"{spec.trial_id}.parquet")
    open(path, "wb").write(b"PAR1 truncated")
    assert store.stored_epochs([spec.trial_id]) == {spec.trial_id: 0}
    assert len(store.quarantined) == 1


def test_the_analysis_names_a_damaged_file_and_leaves_it_out(tmp_path):
    write_trial(
        str(tmp_path),
        "s",
        "a",
        trial_rows("s", "a", "resnet18", "digits", 1, "fixed"),
        synthetic_run_row("s", "a", "resnet18", "digits", 1, "fixed"),
    )
    os.makedirs(tmp_path / "s" / "epochs", exist_ok=True)
    (tmp_path / "s" / "epochs" / "b.parquet").write_bytes(b"PAR1 not really")
    st = load_store(str(tmp_path))
    assert len(st.epochs) == 3
    assert any("b.parquet cannot be read" in n and "left out" in n for n in st.notes)


# ------------------------------------------------------------------ item 5: one driver per study


def test_a_second_driver_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys):
    results = str(tmp_path)
    first = StudyLock(results, "demo").acquire()
    try:
        with pytest.raises(StudyLocked, match=r"in use by driver .*:\d+ \(started"):
            StudyLock(results, "demo").acquire()
        assert grid_main(["--results", results, "--seeds", "0"]) == 2
        assert "in use by driver" in capsys.readouterr().err
        assert grid_main(["--results", results, "--seeds", "0", "--dry-run"]) == 0
        assert "the study is being run now by driver" in capsys.readouterr().out
    finally:
        first.release()
    assert first.holder() is None and open(first.path).read() == ""  # the file stays, emptied (lock.py says why)
    # A lock file left by a driver that is gone (killed: the kernel dropped its lock) is taken at once,
    # whatever its heartbeat says.
    lock = StudyLock(results, "demo")
    open(lock.path, "w").write(json.dumps({**lock.doc, "owner": "elsewhere:1", "token": "old"}))
    assert lock.holder() is None
    lock.acquire()
    assert lock.holder()["token"] == lock.token
    lock.release()


@pytest.mark.slow
def test_a_live_driver_keeps_its_study_however_long_it_is_silent_and_loses_it_when_killed(tmp_path):
    results = str(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from orchestrator.lock import StudyLock; "
            f"StudyLock({results!r}, 'demo').acquire(); print('held', flush=True); time.sleep(600)",
        ],  # fmt: skip
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = StudyLock(results, "demo")
        doc = json.load(open(lock.path))
        doc["heartbeat"] = doc["started"] = time.time() - 3600  # silent for an hour: still alive, still held
        open(lock.path, "w").write(json.dumps(doc))
        with pytest.raises(StudyLocked, match=f":{holder.pid} "):
            lock.acquire()
        holder.kill()
        holder.wait()
        lock.acquire()  # no waiting for a heartbeat to go stale
        lock.release()
    finally:
        holder.kill()


def test_a_remote_lock_goes_stale_and_a_driver_that_lost_it_stops(tmp_path, monkeypatch):
    import pyarrow.fs as pafs

    from orchestrator import lock as lock_mod

    def remote(name):  # an object store stand-in: no flock, so the heartbeat rules apply
        lk = StudyLock(str(tmp_path), "demo")
        lk.fs, lk.local = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), False
        lk.dir, lk.path = "demo", "demo/_driver.lock"
        return lk

    monkeypatch.setattr(lock_mod, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(time, "sleep", lambda s: None)  # the read-back wait
    lost = []
    a = remote("a")
    a.on_lost = lambda: lost.append(True)
    a.acquire()
    with pytest.raises(StudyLocked, match="last heartbeat"):
        remote("b").acquire()
    os.makedirs(tmp_path / "demo", exist_ok=True)
    a._stop.set()
    a._thread.join()
    # a half-written lock file is held while it is new
    (tmp_path / "demo" / "_driver.lock").write_text("{")
    with pytest.raises(StudyLocked, match="unknown"):
        remote("b").acquire()
    # a's heartbeat stopped an hour ago: taken over; a, still running, sees that and stops itself
    doc = {**a.doc, "heartbeat": time.time() - 3600}
    (tmp_path / "demo" / "_driver.lock").write_text(json.dumps(doc))
    b = remote("b").acquire()
    a._stop.clear()
    a._beat()
    assert lost == [True]
    assert json.load(open(tmp_path / "demo" / "_driver.lock"))["token"] == b.token
    b.release()
    assert not (tmp_path / "demo" / "_driver.lock").exists()


# ------------------------------------------------------------------ item 1: resume points across experiments


def _checkpoint(root, exp, tid, index, loop):
    d = os.path.join(root, exp, f"label-{tid}", f"checkpoint_{index:06d}")
    loop.save_checkpoint(d)
    return d


def test_resume_points_skip_damaged_and_uncovered_checkpoints_and_prune_old_ones(tmp_path):
    root = str(tmp_path / "_ray")
    loop = TrialLoop(
        TrialConfig.from_dict(
            {"arch": "tiny_mlp", "dataset": "digits", "train_limit": 64, "test_limit": 32, "epochs": 4, "threads": 1}
        )
    )
    paths = {}
    for epoch in range(1, 5):
        loop.run_epoch()
        # epochs 1-2 in one experiment, 3-4 in the next (a killed driver, then a re-run)
        paths[epoch] = _checkpoint(root, "exp-a" if epoch <= 2 else "exp-b", "t1", (epoch - 1) % 2, loop)
    found = find_checkpoints(root, {"t1", "t2"})
    assert [c.epoch for c in found["t1"]] == [4, 3, 2, 1] and found["t2"] == []
    # The newest is truncated (a copy cut short): passed over, named, and kept for inspection.
    state = os.path.join(paths[4], "state.pt")
    open(state, "r+b").truncate(os.path.getsize(state) // 2)
    assert "incomplete" in intact(found["t1"][0])
    points = resume_points(found, {"t1": 4})
    assert points["t1"].candidates == (paths[3], paths[2]) and points["t1"].epoch == 3
    assert "state.pt is incomplete" in points["t1"].skipped[0]
    # The store holds rows only up to epoch 2: a later checkpoint would skip rows, so it is no resume point.
    assert resume_points(found, {"t1": 2})["t1"].candidates == (paths[2], paths[1])
    assert resume_points(found, {"t1": 0})["t1"].candidates == ()
    # Checkpoints newer than the resume point (rows lost) are kept, and nothing goes without a resume point.
    assert prune(found, resume_points(found, {"t1": 2})) == []
    assert prune(found, resume_points(found, {"t1": 0})) == []
    assert all(os.path.exists(p) for p in paths.values())
    deleted = prune(found, points)
    assert deleted == [paths[1]] and os.path.exists(paths[4]) and os.path.exists(paths[2])


def test_the_trial_falls_back_when_a_candidate_does_not_load(tmp_path):
    from trainables.ray_trainable import resume

    cfg = TrialConfig.from_dict(
        {"arch": "tiny_mlp", "dataset": "digits", "train_limit": 64, "test_limit": 32, "epochs": 3, "threads": 1}
    )
    loop = TrialLoop(cfg)
    loop.run_epoch()
    good = str(tmp_path / "good")
    loop.save_checkpoint(good)
    bad = str(tmp_path / "bad")
    os.makedirs(bad)
    open(os.path.join(bad, "state.pt"), "wb").write(b"PK\x03\x04 truncated")
    made = []

    def make_loop():
        made.append(TrialLoop(cfg))
        return made[-1]

    fresh, where, skipped = resume(make_loop, None, [bad, good])
    assert where == good and fresh.epochs_done == 1 and "cannot be read" in skipped[0] and len(made) == 1
    again, where, skipped_again = resume(make_loop, None, [bad])
    assert where is None and skipped_again == [skipped[0]] and again.epochs_done == 0
    # A state that fails half way through loading (here: the policy's part) leaves no half-restored loop.
    state = TrialLoop.read_checkpoint(good)
    state["policy"] = "not a policy state"
    half = str(tmp_path / "half")
    os.makedirs(half)
    torch.save(state, os.path.join(half, "state.pt"))
    made.clear()
    loop, where, skipped = resume(make_loop, None, [half])
    assert where is None and len(made) == 2 and loop is made[1] and loop.epochs_done == 0
    assert made[0].epochs_done == 0 and "half" in skipped[0]
    first_param = next(made[0].model.parameters()).detach()
    assert not torch.equal(first_param, next(loop.model.parameters()).detach())  # made[0] took the weights


# ------------------------------------------------------------------ item 7: older stores in the analysis


def test_the_analysis_reads_a_store_without_provenance_columns(tmp_path):
    old = ["gpus_per_trial", "cpus_per_trial", "python_version", "torch_version", "ray_version", "device", "host"]
    for tid, method in (("f", "fixed"), ("d", "deba")):
        write_trial(str(tmp_path), "s", tid, trial_rows("s", tid, "resnet18", "digits", 1, method), None)
        row = synthetic_run_row("s", tid, "resnet18", "digits", 1, method)
        os.makedirs(tmp_path / "s" / "runs", exist_ok=True)
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / "s" / "runs" / f"{tid}.parquet")
    st = load_store(str(tmp_path))
    assert st.runs["gpus_per_trial"].isna().all() and len(st.runs) == 2
    note = next(n for n in st.notes if n.startswith("runs: columns missing"))
    assert all(name in note for name in old)


# ------------------------------------------------------------------ item 8: smaller things


def test_summary_averages_only_completed_trials(tmp_path):
    results = str(tmp_path)
    specs = expand(with_overrides(preset("demo"), seeds=[0, 1], archs=["tiny_cnn"], methods=["fixed"]))

    def rows(spec, acc, n):
        return spec_rows(spec, n, test_acc=acc)

    _store_trial(results, specs[0], 12, rows=rows(specs[0], 0.9, 12))
    _store_trial(results, specs[1], 2, status="failed", rows=rows(specs[1], 0.1, 2))
    text = format_summary(results, "demo")
    assert "90.0" in text and "50.0" not in text  # not (90 + 10) / 2


def test_error_text_keeps_the_cause_first():
    try:
        raise FileNotFoundError("cifar10: dataset files not usable in /x")
    except FileNotFoundError as exc:
        text = error_text(exc)
    first, rest = text.split("\n", 1)
    assert first == "FileNotFoundError: cifar10: dataset files not usable in /x"
    assert "Traceback" in rest and "test_error_text_keeps_the_cause_first" in rest


def test_trainables_run_refuses_damaged_and_shorter_checkpoints_before_training(tmp_path, capsys):
    base = ["--arch", "tiny_mlp", "--dataset", "digits", "--train-limit", "64", "--test-limit", "32"]
    ck = str(tmp_path / "ck")
    assert trial_main(base + ["--epochs", "2", "--checkpoint-dir", ck]) == 0
    capsys.readouterr()
    assert trial_main(base + ["--epochs", "1", "--checkpoint-dir", ck]) == 2
    out, err = capsys.readouterr()
    assert "holds 2 trained epochs, more than --epochs 1" in err and "epoch" not in out
    state = os.path.join(ck, "state.pt")
    open(state, "r+b").truncate(100)
    assert trial_main(base + ["--epochs", "3", "--checkpoint-dir", ck]) == 2
    out, err = capsys.readouterr()
    assert "cannot be read" in err and "state.pt" in err and "epoch   3/" not in out


# ------------------------------------------------------------------ review: nothing moved or deleted without the lock


def test_a_dry_run_or_a_refused_driver_moves_no_damaged_file(tmp_path, capsys):
    results = str(tmp_path)
    _, _, store, path = _demo_with_a_cut_runs_file(results)
    argv = ["--results", results, "--seeds", "0", "--epochs", "2", "--archs", "tiny_cnn"]
    assert grid_main([*argv, "--dry-run"]) == 0
    assert os.path.exists(path) and "is damaged" in capsys.readouterr().err
    with StudyLock(results, "demo"):
        assert grid_main(argv) == 2  # refused before it plans: the running driver owns the files
    assert os.path.exists(path) and not os.path.exists(os.path.join(store.study_path, "_quarantine"))


def test_checkpoints_of_another_study_sharing_the_storage_are_left_alone(tmp_path):
    from orchestrator.runner import read_plans, write_plan

    root = str(tmp_path / "shared")
    loop = TrialLoop(
        TrialConfig.from_dict(
            {"arch": "tiny_mlp", "dataset": "digits", "train_limit": 64, "test_limit": 32, "epochs": 2}
        )
    )
    loop.run_epoch()
    mine = _checkpoint(root, "exp-mine", "t1", 0, loop)
    theirs = _checkpoint(root, "exp-theirs", "t1", 0, loop)  # the same trial id in another study
    write_plan(root, "exp-mine", {"study": "a", "trials": {}})
    write_plan(root, "exp-theirs", {"study": "b", "trials": {}})
    os.makedirs(os.path.join(root, "exp-broken"))
    open(os.path.join(root, "exp-broken", "orchestrator_plan.json"), "w").write('{"study": "a", "tri')
    plans = read_plans(root)  # the unreadable plan is named and left out
    assert sorted(plans) == ["exp-mine", "exp-theirs"]
    ours = {name for name, doc in plans.items() if doc["study"] == "a"}
    found = find_checkpoints(root, {"t1"}, experiments=ours)
    assert [c.uri for c in found["t1"]] == [mine]
    prune(found, resume_points(found, {"t1": 1}))
    assert os.path.exists(theirs)
    assert not [f for f in os.listdir(os.path.join(root, "exp-mine")) if f.endswith(".tmp")]


def test_spellings_of_one_policy_are_one_trial(tmp_path):
    from orchestrator.studies import config_differences
    from trainables.config import TrialConfig

    base = {"arch": "tiny_cnn", "dataset": "digits", "method": "deba"}
    plain = TrialConfig(**base, policy={"cooldown": 3})
    spelled = TrialConfig(**base, policy={"cooldown": 3, "alpha": 1.5, "decision_rule": "both", "b0": 64})
    assert spelled.policy == plain.policy and spelled.trial_id() == plain.trial_id()
    assert TrialConfig(**base, policy={"alpha": 2}).trial_id() == TrialConfig(**base, policy={"alpha": 2.0}).trial_id()
    stored = {**plain.to_dict(), "policy": {"cooldown": 3, "alpha": 1.5}}  # as an older version stored it
    assert config_differences(stored, plain.to_dict()) == []
    assert config_differences(stored, TrialConfig(**base, policy={"cooldown": 4}).to_dict()) == [
        "policy.cooldown: 3 -> 4"
    ]


def test_trials_stored_under_the_ids_of_an_older_version_are_renamed_not_run_again(tmp_path, capsys):
    results = str(tmp_path)
    study = with_overrides(preset("demo"), seeds=[0], epochs=2, archs=["tiny_cnn"])
    fixed, deba = expand(study)
    assert (fixed.method, deba.method) == ("fixed", "deba")
    # As an older version stored them: other ids (epochs were part of the identity), the same configs.
    old = {fixed.trial_id: "0ld0ld0ld0f1", deba.trial_id: "0ld0ld0ld0d1"}
    for spec in (fixed, deba):
        _store_trial(results, under_id(spec, old[spec.trial_id]), 2)
    dry = make_plan(study, results)  # describes the store as it will be once the trials are renamed
    assert dry.pending == () and [r.line() for r in dry.repairs.renames] == [
        f"trial {old[t.trial_id]} (an id of an older version) is now {t.trial_id}"
        for t in sorted((fixed, deba), key=lambda t: t.trial_id)
    ]
    assert sorted(ResultsStore(results, "demo").read_runs()) == sorted(old.values())  # nothing renamed yet
    assert grid_main(["--results", results, "--seeds", "0", "--epochs", "2", "--archs", "tiny_cnn"]) == 0
    out = capsys.readouterr().out
    assert f"trial 0ld0ld0ld0f1 (an id of an older version) is now {fixed.trial_id}" in out and "nothing to run" in out
    runs = ResultsStore(results, "demo").read_runs()
    assert sorted(runs) == sorted([fixed.trial_id, deba.trial_id])
    assert [r["trial_id"] for r in ResultsStore(results, "demo").read_epochs(deba.trial_id)] == [deba.trial_id] * 2
    assert len(load_store(results, "demo").epochs) == 4  # no trial twice
    # The same trial stored under both ids (run again by a version that did not rename): one copy stays.
    _store_trial(results, under_id(fixed, "0ld0ld0ld0f1"), 2)
    plan = make_plan(study, results)
    assert plan.pending == ()
    repair(plan)
    assert len(os.listdir(os.path.join(results, "demo", "_quarantine"))) == 2
    assert len(load_store(results, "demo").runs) == 2


def test_of_several_old_copies_of_a_trial_the_finished_one_is_kept(tmp_path, capsys):
    results = str(tmp_path)
    study = with_overrides(preset("demo"), seeds=[0], epochs=4, archs=["tiny_cnn"], methods=["fixed"])
    (spec,) = expand(study)
    # One trial under two old ids (it ran at 4 and at 1 epochs when epochs were in the id), and a failed
    # copy under its current id.
    _store_trial(results, under_id(spec, "0ld0ld0ld004"), 4)
    _store_trial(results, under_id(spec, "0ld0ld0ld001"), 1, status="failed")
    _store_trial(results, spec, 2, status="failed")
    plan = make_plan(study, results)
    assert plan.pending == ()  # the completed copy, with its 4 epochs, is the trial now
    print("\n".join(repair(plan)))
    store = ResultsStore(results, "demo")
    assert store.read_runs()[spec.trial_id]["status"] == "completed"
    assert store.stored_epochs([spec.trial_id]) == {spec.trial_id: 4}
    assert "trial 0ld0ld0ld004 (an id of an older version) is now" in capsys.readouterr().out
    assert len(os.listdir(os.path.join(results, "demo", "_quarantine"))) == 4  # 2 copies x (runs, epochs)
    assert sorted(store.read_runs()) == [spec.trial_id]


# ------------------------------------------------------------------ manifests: the store trusts only its own rows
TIMING_COLUMNS = {"epoch_time_s", "eval_time_s", "wall_time_s", "samples_per_s", "peak_mem_mb", "measure_time_s"}


def _content(results: str, study: str):
    """Every stored epoch row without its timings, by (trial_id, epoch)."""
    rows = load_store(results, study).epochs
    keep = [c for c in rows.columns if c not in TIMING_COLUMNS]
    return rows[keep].sort_values(["trial_id", "epoch"]).reset_index(drop=True)


@pytest.mark.slow
def test_a_foreign_file_and_an_edited_value_are_set_aside_and_their_trials_run_again(tmp_path, capsys):
    import pandas as pd

    results = str(tmp_path)
    argv = ["--results", results, "--study", "man", "--archs", "tiny_cnn", "--seeds", "0", "--epochs", "3",
            "--train-limit", "200", "--test-limit", "60", "--threads", "1", "--quiet", "--no-analysis"]  # fmt: skip
    assert grid_main(argv) == 0
    clean = _content(results, "man")
    runs = ResultsStore(results, "man").read_runs()
    fixed = next(t for t, r in runs.items() if r["method"] == "fixed")
    deba = next(t for t, r in runs.items() if r["method"] == "deba")
    epochs = os.path.join(results, "man", "epochs")
    # The red team's attack: another trial's valid Parquet under the DEBA trial's name; and an edited value.
    shutil.copy(os.path.join(epochs, f"{fixed}.parquet"), os.path.join(epochs, f"{deba}.parquet"))
    table = pq.read_table(os.path.join(epochs, f"{fixed}.parquet")).to_pandas()
    table.loc[1, "test_acc"] = 0.999
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), os.path.join(epochs, f"{fixed}.parquet"))
    plan = make_plan(study_from_args(build_parser().parse_args(argv)), results)
    lines = "\n".join(plan.repairs.lines())
    assert f"set aside trial {deba}'s files" in lines and "holds rows of another trial" in lines
    assert f"set aside trial {fixed}'s files" in lines and "differs from its manifest in column(s) test_acc" in lines
    assert {t.trial_id for t in plan.pending} == {fixed, deba}
    capsys.readouterr()
    assert grid_main(argv) == 0  # sets both aside and runs both again
    healed = _content(results, "man")
    for tid in (fixed, deba):  # every stored row is its trial's own, and equal to the uninterrupted run's
        ours = healed[healed["trial_id"].eq(tid)]
        assert len(ours) == 3 and (ours["method"] == runs[tid]["method"]).all()
    pd.testing.assert_frame_equal(healed, clean)
    assert len(os.listdir(os.path.join(results, "man", "_quarantine"))) == 4
