"""Compaction (orchestrator/compact.py): a finished study's per-trial files become a few parts; the store,
the planner and the analysis read it as before; a crash at any step loses nothing; extensions and
migrations give trials their own files back. Local filesystem, no Ray."""

from __future__ import annotations

import glob
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from analysis.load import load_store
from analysis.report import analyse, to_json
from benchmarks.synthetic_store import spec_rows, synthetic_store, under_id
from orchestrator import compact as compact_mod
from orchestrator.compact import compact_study, main
from orchestrator.lock import StudyLock
from orchestrator.runner import make_plan, repair
from orchestrator.store import ResultsStore, run_row
from orchestrator.studies import expand, preset, with_overrides
from trainables import store_files


def _synthetic(results: str) -> list[str]:
    """48 finished synthetic trials of 10 epochs, plus three that compaction must leave alone."""
    synthetic_store(results, "syn", archs=("resnet18", "vit_b16"), seeds=(0, 1, 2), n_epochs=10)
    store = ResultsStore(results, "syn")
    runs = store.read_runs()
    ids = sorted(runs)
    failed, mismatched, interrupted = ids[0], ids[1], ids[2]
    store.write_run({**runs[failed], "status": "failed", "error": "boom"})
    store.write_run({**runs[mismatched], "epochs_done": 9})
    os.remove(store.table_path("runs", interrupted))  # rows but no runs row: still running, or killed
    return ids


def _snapshot(results: str, study: str = "syn") -> tuple:
    """What readers see: the runs rows, every trial's epoch rows, the analysis's tables."""
    store = ResultsStore(results, study)
    runs = store.read_runs()
    epochs = store.epochs_of(store.trials_with_epochs())
    loaded = load_store(results, study)
    return runs, epochs, loaded.epochs, loaded.runs


def _same(a: tuple, b: tuple) -> bool:
    """Two snapshots are equal: the same runs rows, epoch rows and analysis tables."""
    return a[:2] == b[:2] and a[2].equals(b[2]) and a[3].equals(b[3])


def _files(results: str, study: str = "syn", table: str = "epochs") -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(results, study, table, "*.parquet")))


def test_compaction_keeps_every_row_and_every_table(tmp_path):
    results = str(tmp_path / "r")
    ids = _synthetic(results)
    before = _snapshot(results)
    tables_before = to_json(analyse(results))
    report = compact_study(results, "syn")
    assert (report.folded, report.trials, report.files_before) == (45, 45, 48 + 47)
    assert report.left == {
        ids[0]: "not finished (status failed)",
        ids[1]: "10 epoch rows but the runs row says 9 epochs",
        ids[2]: "no runs row",
    }
    # One part per table, plus the files of the three trials left alone.
    epochs, runs = _files(results), _files(results, table="runs")
    assert [n for n in epochs if store_files.is_part(n)] and len(epochs) == 1 + 3 and len(runs) == 1 + 2
    assert _same(_snapshot(results), before)
    assert to_json(analyse(results)) == tables_before
    # At rest each row is in one file: the one-line readers of the README see every row once.
    table = pd.read_parquet(os.path.join(results, "syn", "epochs"))
    assert len(table) == 48 * 10 and not table.duplicated(["trial_id", "epoch"]).any()
    assert len(pd.read_parquet(os.path.join(results, "syn", "runs"))) == 47
    # A second run has nothing to do.
    again = compact_study(results, "syn")
    assert again.parts_written == [] and again.trials == 45 and "nothing to compact" in again.describe()


class _CrashingFS:
    """A filesystem that raises on its `crash_at`-th change (a write, move or delete): a killed compaction."""

    def __init__(self, fs, crash_at: int) -> None:
        self.fs, self.crash_at, self.changes = fs, crash_at, 0

    def _change(self) -> None:
        self.changes += 1
        if self.changes == self.crash_at:
            raise KeyboardInterrupt(f"killed at change {self.changes}")

    def open_output_stream(self, *a, **k):
        self._change()
        return self.fs.open_output_stream(*a, **k)

    def move(self, *a, **k):
        self._change()
        return self.fs.move(*a, **k)

    def delete_file(self, *a, **k):
        self._change()
        return self.fs.delete_file(*a, **k)

    def __getattr__(self, name):
        return getattr(self.fs, name)


@pytest.mark.slow  # nine compactions of a 48-trial store
@pytest.mark.parametrize("crash_at", [1, 2, 3, 4, 5, 6, 7, 16, 26])  # 26 changes in all
def test_a_compaction_killed_at_any_step_loses_nothing(tmp_path, monkeypatch, crash_at):
    results = str(tmp_path / "r")
    _synthetic(results)
    compact_study(results, "syn")  # a compacted study...
    store = ResultsStore(results, "syn", fix_damage=True)
    released = sorted(store.read_runs())[5:15]
    store.release(released)  # ...ten of whose trials were extended since: own files and a rewritten part
    before = _snapshot(results)

    class Crashing(ResultsStore):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.fs = _CrashingFS(self.fs, crash_at)

    monkeypatch.setattr(compact_mod, "ResultsStore", Crashing)
    with pytest.raises(KeyboardInterrupt):
        compact_study(results, "syn")
    assert _same(_snapshot(results), before)
    monkeypatch.setattr(compact_mod, "ResultsStore", ResultsStore)
    report = compact_study(results, "syn")  # run again: it finishes the job
    assert report.trials == 45 and len(_files(results)) == 1 + 3
    assert _same(_snapshot(results), before)


def _store_trial(results, spec, epochs, status="completed"):
    store = ResultsStore(results, spec.study)
    rows = spec_rows(spec, epochs)
    store.write_epochs(spec.trial_id, rows)
    store.write_run(run_row(spec, rows, status=status))


def test_the_planner_reads_a_compacted_study_and_an_extension_gets_own_files_back(tmp_path):
    results = str(tmp_path)
    study = with_overrides(preset("demo"), seeds=[0, 1], epochs=3)
    specs = expand(study)
    for spec in specs:
        _store_trial(results, spec, 3)
    plan_before = make_plan(study, results)
    compact_study(results, "demo")
    assert len(_files(results, "demo")) == 1
    plan = make_plan(study, results)
    assert plan.pending == () and plan.finished == plan_before.finished
    assert plan.estimate.costs == plan_before.estimate.costs  # epoch times read from the part
    # More epochs: every trial runs again, from its stored rows; the runner releases them first.
    longer = with_overrides(study, epochs=5)
    pending = [t.trial_id for t in make_plan(longer, results).pending]
    assert sorted(pending) == sorted(t.trial_id for t in specs)
    store = ResultsStore(results, "demo", fix_damage=True)
    assert store.release(pending[:3]) == sorted(pending[:3])
    # The released trials have their own files; the part holds only the others; every row once.
    names = _files(results, "demo")
    assert sorted(n for n in names if not store_files.is_part(n)) == sorted(f"{t}.parquet" for t in pending[:3])
    rows = pq.read_table(os.path.join(results, "demo", "epochs")).to_pandas()
    assert len(rows) == 3 * len(specs) and not rows.duplicated(["trial_id", "epoch"]).any()
    assert store.stored_epochs(pending) == {t: 3 for t in pending}
    assert store.release(pending) == sorted(pending[3:])
    assert not [n for n in _files(results, "demo") if store_files.is_part(n)]
    assert len(pq.read_table(os.path.join(results, "demo", "epochs"))) == 3 * len(specs)


def test_trials_of_an_older_version_in_a_compacted_study_are_renamed(tmp_path):
    results = str(tmp_path)
    study = with_overrides(preset("demo"), seeds=[0], epochs=2, archs=["tiny_cnn"])
    fixed, deba = expand(study)
    old = {fixed.trial_id: "0ld0ld0ld0f1", deba.trial_id: "0ld0ld0ld0d1"}
    for spec in (fixed, deba):
        _store_trial(results, under_id(spec, old[spec.trial_id]), 2)
    compact_study(results, "demo")
    plan = make_plan(study, results)
    assert plan.pending == ()  # renamed in place (by the driver holding the lock), not run again
    repair(plan)
    store = ResultsStore(results, "demo")
    assert sorted(store.read_runs()) == sorted([fixed.trial_id, deba.trial_id])
    assert store.stored_epochs([fixed.trial_id, deba.trial_id]) == {fixed.trial_id: 2, deba.trial_id: 2}
    assert len(load_store(results, "demo").epochs) == 4


def test_a_damaged_part_is_named_and_its_trials_run_again(tmp_path, capsys):
    results = str(tmp_path)
    study = with_overrides(preset("demo"), seeds=[0], epochs=2, archs=["tiny_cnn"])
    specs = expand(study)
    for spec in specs:
        _store_trial(results, spec, 2)
    compact_study(results, "demo")
    for table in ("epochs", "runs"):
        (part,) = glob.glob(os.path.join(results, "demo", table, "compacted-*.parquet"))
        data = open(part, "rb").read()
        open(part, "wb").write(data[: len(data) // 2])
    loaded = load_store(results, "demo")  # the analysis names the parts and leaves them out
    assert loaded.epochs.empty and loaded.runs.empty
    assert sum("cannot be read" in n and "compacted-" in n for n in loaded.notes) == 2
    plan = make_plan(study, results)  # planning only names them
    assert plan.pending == tuple(specs)
    assert len(glob.glob(os.path.join(results, "demo", "*", "compacted-*.parquet"))) == 2
    repair(plan)  # the driver sets them aside: the trials run again
    assert len(os.listdir(os.path.join(results, "demo", "_quarantine"))) == 2
    assert "every trial in it will run again" in capsys.readouterr().err.lower()


def test_the_command_line(tmp_path, capsys):
    results = str(tmp_path / "r")
    synthetic_store(results, "a", archs=("resnet18",), seeds=(0,), n_epochs=3)
    synthetic_store(results, "b", archs=("resnet18",), seeds=(0,), n_epochs=3)
    assert main([results, "--study", "a"]) == 0
    assert "study 'a': 8 finished trial(s) in 1 epochs part(s) and 1 runs part(s)" in capsys.readouterr().out
    assert len(_files(results, "a")) == 1 and len(_files(results, "b")) == 8
    assert main([results, "--study", "nope"]) == 2
    assert "no study nope" in capsys.readouterr().err
    with StudyLock(results, "b"):  # a driver runs study b: refused, nothing touched
        assert main([os.path.join(results, "b")]) == 2
        assert "in use by driver" in capsys.readouterr().err
    assert len(_files(results, "b")) == 8
    assert main([os.path.join(results, "b")]) == 0  # DIR may be one study's folder
    assert len(_files(results, "b")) == 1


@pytest.mark.slow
def test_the_scaling_benchmark_runs_locally_and_on_a_local_s3_server(tmp_path):
    """benchmarks/bench_analysis.py --scaling at a tiny size: its table rows (no timing is asserted)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(root, "benchmarks", "bench_analysis.py"), "--scaling", "48",
           "--epochs", "3", "--s3", "--repeats", "1", "--keep", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| 48 ")]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("local", "per-trial files", "96"),
        ("local", "compacted", "2"),
        ("S3 (moto)", "per-trial files", "96"),
        ("S3 (moto)", "compacted", "2"),
    ]
