"""The Parquet results store: schema, de-duplication, atomic writes, runs rows and the ledger (no Ray)."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from orchestrator.store import EPOCH_SCHEMA, RUN_SCHEMA, ResultsStore, finished_ids, run_row
from orchestrator.studies import TrialSpec
from trainables.config import TrialConfig
from trainables.records import EPOCH_COLUMNS, RUN_COLUMNS


def _spec(seed: int = 3, epochs: int = 3) -> TrialSpec:
    return TrialSpec("s", TrialConfig(arch="tiny_cnn", dataset="digits", seed=seed, method="deba", epochs=epochs))


SPEC = _spec()


def _row(epoch: int, **kw) -> dict:
    base = {
        "study": "s",
        "trial_id": SPEC.trial_id,
        "arch": "tiny_cnn",
        "dataset": "digits",
        "seed": 3,
        "method": "deba",
        "variant": "baseline",
        "epoch": epoch,
        "batch_size": 64,
        "next_batch_size": 64,
        "test_acc": 0.5,
        "epoch_time_s": 1.0,
        "wall_time_s": float(epoch),
        "decision": "hold",
        "in_cooldown": True,
    }
    base.update(kw)
    return base


def test_schemas_follow_the_column_contract():
    assert [(f.name, str(f.type)) for f in EPOCH_SCHEMA] == [
        (n, {"string": "string", "int64": "int64", "float64": "double", "bool": "bool"}[t]) for n, t in EPOCH_COLUMNS
    ]
    assert RUN_SCHEMA.names == [n for n, _ in RUN_COLUMNS]


def test_epochs_are_deduplicated_last_report_wins_and_written_atomically(tmp_path):
    store = ResultsStore(str(tmp_path), "s")
    rows = [_row(2, test_acc=0.2), _row(1, test_acc=0.1), _row(2, test_acc=0.25), _row(3, test_acc=0.3)]
    store.write_epochs(SPEC.trial_id, rows)
    path = tmp_path / "s" / "epochs" / f"{SPEC.trial_id}.parquet"
    table = pq.read_table(path)
    assert table.schema.equals(EPOCH_SCHEMA)
    assert table.column("epoch").to_pylist() == [1, 2, 3]
    assert table.column("test_acc").to_pylist() == [0.1, 0.25, 0.3]
    assert table.column("grad_diversity").null_count == 3  # a column no row gave is null
    assert os.listdir(path.parent) == [path.name]  # the temporary file was moved, not left behind
    assert [r["test_acc"] for r in store.read_epochs(SPEC.trial_id)] == [0.1, 0.25, 0.3]
    assert store.read_epochs("missing") == []


def test_run_row_from_epochs():
    epochs = [
        _row(1, test_acc=0.4, decision="hold", batch_size=64, epoch_time_s=1.5),
        _row(2, test_acc=0.7, decision="increase", batch_size=64, epoch_time_s=2.0),
        _row(3, test_acc=0.6, decision="rollback", batch_size=96, epoch_time_s=0.5, wall_time_s=9.0),
    ]
    row = run_row(SPEC, epochs, status="completed", device="cpu", host="h")
    assert row["epochs_done"] == 3
    assert row["final_test_acc"] == 0.6 and row["best_test_acc"] == 0.7
    assert row["train_time_s"] == 4.0 and row["wall_time_s"] == 9.0
    assert (row["n_increase"], row["n_rollback"], row["final_batch_size"]) == (1, 1, 96)
    assert row["config_json"] == SPEC.config_json and row["device"] == "cpu"
    empty = run_row(SPEC, [], status="failed", error="boom")
    assert (empty["epochs_done"], empty["final_test_acc"], empty["train_time_s"]) == (0, None, None)


@pytest.mark.parametrize("as_uri", [False, True])
def test_runs_and_ledger(tmp_path, as_uri):
    results = f"file://{tmp_path}" if as_uri else str(tmp_path)
    store = ResultsStore(results, "s")
    assert store.read_runs() == {}
    t1, t2, t3 = (_spec(seed) for seed in (1, 2, 3))
    for spec, status in ((t1, "completed"), (t2, "diverged"), (t3, "failed")):
        store.write_run(run_row(spec, [_row(1)], status=status))
    store.write_run(run_row(t3, [_row(1)], status="completed"))
    (tmp_path / "s" / "runs" / ".t9.parquet.tmp").write_bytes(b"half a file")  # an interrupted write: ignored
    statuses = {tid: row["status"] for tid, row in store.read_runs().items()}
    assert statuses == {t1.trial_id: "completed", t2.trial_id: "diverged", t3.trial_id: "completed"}
    assert finished_ids(store.read_runs()) == {t1.trial_id, t2.trial_id, t3.trial_id}
    table = pq.read_table(tmp_path / "s" / "runs" / f"{t2.trial_id}.parquet")
    assert table.schema.equals(RUN_SCHEMA) and table.num_rows == 1


def test_bad_uri_names_the_field():
    with pytest.raises(ValueError, match="results='nosuchscheme://x'"):
        ResultsStore("nosuchscheme://x", "s")


class _Trial:
    """The one attribute of a Tune Trial the sink reads."""

    def __init__(self, trial_id: str) -> None:
        self.config = {"trial_id": trial_id}


def _sink(tmp_path, epochs: int = 3):
    from orchestrator.sink import ParquetSink

    spec = _spec(epochs=epochs)
    return ParquetSink(str(tmp_path), "s", {spec.trial_id: spec}, {"cpu": 2.0, "gpu": 0.5}, echo=False), spec


def test_sink_keeps_one_row_per_epoch_across_retries(tmp_path):
    sink, spec = _sink(tmp_path)
    trial = _Trial(spec.trial_id)
    for epoch, acc in [(1, 0.1), (2, 0.2), (3, 0.3), (2, 0.22)]:  # the retry resumed after epoch 1
        sink.on_trial_result(0, [], trial, {**_row(epoch, test_acc=acc), "loop_status": "running"})
    stored = ResultsStore(str(tmp_path), "s").read_epochs(spec.trial_id)
    assert [(r["epoch"], r["test_acc"]) for r in stored] == [(1, 0.1), (2, 0.22)]  # epoch 3 waits for its re-report
    sink.on_trial_result(
        0, [], trial, {**_row(3, test_acc=0.33), "loop_status": "completed", "device": "cpu", "hostname": "node1"}
    )
    sink.on_trial_complete(0, [], trial)
    row = ResultsStore(str(tmp_path), "s").read_runs()[spec.trial_id]
    assert (row["status"], row["epochs_done"], row["final_test_acc"], row["host"]) == ("completed", 3, 0.33, "node1")
    assert (row["cpus_per_trial"], row["gpus_per_trial"]) == (2.0, 0.5)


def test_a_new_driver_continues_from_the_stored_rows(tmp_path):
    import pickle

    sink, spec = _sink(tmp_path)
    trial = _Trial(spec.trial_id)
    sink.on_trial_result(0, [], trial, _row(1, test_acc=0.1))
    restored = pickle.loads(pickle.dumps(sink))  # what Tuner.restore hands the new driver
    assert restored._rows == {}
    restored.on_trial_result(0, [], trial, _row(2, test_acc=0.2))
    assert [r["epoch"] for r in ResultsStore(str(tmp_path), "s").read_epochs(spec.trial_id)] == [1, 2]


@pytest.mark.parametrize(
    "rows,status,error",
    [
        ([1, 2, 3], "completed", None),
        ([1, 2], "failed", "trial ended after 2 of 3 epochs"),
        ([1, "nan"], "diverged", None),
    ],
)
def test_status_of_a_trial_that_reported_nothing_this_session(tmp_path, rows, status, error):
    sink, spec = _sink(tmp_path)
    ResultsStore(str(tmp_path), "s").write_epochs(
        spec.trial_id,
        [
            _row(i + 1, train_loss=float("nan") if e == "nan" else 1.0, grad_var=1e-3, grad_norm=1.0)
            for i, e in enumerate(rows)
        ],
    )
    sink.on_trial_complete(0, [], _Trial(spec.trial_id))
    row = ResultsStore(str(tmp_path), "s").read_runs()[spec.trial_id]
    assert (row["status"], row["error"], row["epochs_done"]) == (status, error, len(rows))


def test_a_damaged_epochs_file_of_a_running_trial_fails_that_trial_only(tmp_path, capsys):
    sink, spec = _sink(tmp_path)
    other = _spec(seed=4)
    sink.specs[other.trial_id] = other
    ResultsStore(str(tmp_path), "s").write_epochs(spec.trial_id, [_row(1)])
    path = tmp_path / "s" / "epochs" / f"{spec.trial_id}.parquet"
    path.write_bytes(path.read_bytes()[:40])  # truncated while the driver was away
    trial, trial2 = _Trial(spec.trial_id), _Trial(other.trial_id)
    sink.on_trial_result(0, [], trial, {**_row(2), "loop_status": "running"})  # no exception reaches Tune
    sink.on_trial_result(0, [], trial2, {**_row(1), "loop_status": "running"})
    assert "is damaged" in capsys.readouterr().err
    assert len(list((tmp_path / "s" / "_quarantine").iterdir())) == 1
    sink.on_trial_result(0, [], trial, {**_row(3), "loop_status": "completed"})
    sink.on_trial_complete(0, [], trial)
    row = ResultsStore(str(tmp_path), "s").read_runs()[spec.trial_id]
    assert row["status"] == "failed" and "was damaged and was moved to" in row["error"]
    assert [r["epoch"] for r in ResultsStore(str(tmp_path), "s").read_epochs(other.trial_id)] == [1]


def test_a_failed_write_is_forgiven_when_a_later_write_stores_the_rows(tmp_path, monkeypatch, capsys):
    sink, spec = _sink(tmp_path)
    trial = _Trial(spec.trial_id)
    sink.on_trial_result(0, [], trial, {**_row(1), "loop_status": "running"})
    real = ResultsStore.write_epochs
    monkeypatch.setattr(ResultsStore, "write_epochs", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    sink.on_trial_result(0, [], trial, {**_row(2), "loop_status": "running"})  # lost for now, not for good
    assert "disk full" in capsys.readouterr().err
    monkeypatch.setattr(ResultsStore, "write_epochs", real)
    sink.on_trial_result(0, [], trial, {**_row(3), "loop_status": "completed"})
    sink.on_trial_complete(0, [], trial)
    row = ResultsStore(str(tmp_path), "s").read_runs()[spec.trial_id]
    assert (row["status"], row["epochs_done"], row["error"]) == ("completed", 3, None)
    # A write that fails last stays a failure: the trial runs again.
    sink2, spec2 = _sink(tmp_path / "b")
    sink2.on_trial_result(0, [], _Trial(spec2.trial_id), {**_row(1), "loop_status": "running"})
    monkeypatch.setattr(ResultsStore, "write_epochs", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    sink2.on_trial_result(0, [], _Trial(spec2.trial_id), {**_row(2), "loop_status": "running"})
    sink2.on_trial_complete(0, [], _Trial(spec2.trial_id))
    row = ResultsStore(str(tmp_path / "b"), "s").read_runs()[spec2.trial_id]
    assert row["status"] == "failed" and "could not store its epoch row (OSError: disk full)" in row["error"]


def test_only_bytes_that_do_not_parse_are_damage(tmp_path, monkeypatch, capsys):
    store = ResultsStore(str(tmp_path), "s", fix_damage=True)  # as a driver holding the study lock
    store.write_epochs(SPEC.trial_id, [_row(1), _row(2)])
    path = tmp_path / "s" / "epochs" / f"{SPEC.trial_id}.parquet"
    good = path.read_bytes()
    # A file that cannot be read now (permissions, a network hiccup) is an error, never set aside.
    path.chmod(0)
    try:
        if os.geteuid() != 0:  # root reads it anyway
            with pytest.raises(PermissionError):
                store.read_epochs(SPEC.trial_id)
            assert path.exists() and not store.quarantined
    finally:
        path.chmod(0o644)
    # Corrupt pages in the middle (snappy says OSError) are damage; a reader without the lock only names it.
    path.write_bytes(good[:8] + bytes(len(good) - 16) + good[-8:])
    reader = ResultsStore(str(tmp_path), "s", fix_damage=False)
    assert reader.read_epochs(SPEC.trial_id) == [] and path.exists()
    assert reader.quarantined[0][:2] == (str(path), "") and "skipped" in capsys.readouterr().err
    assert store.read_epochs(SPEC.trial_id) == [] and not path.exists()
    assert store.quarantined[0][1].startswith(str(tmp_path / "s" / "_quarantine"))


def test_a_failed_read_of_the_stored_rows_is_not_forgiven(tmp_path, monkeypatch):
    sink, spec = _sink(tmp_path)
    trial = _Trial(spec.trial_id)
    ResultsStore(str(tmp_path), "s").write_epochs(spec.trial_id, [_row(1)])  # stored by an earlier driver
    real = ResultsStore.read_epochs
    monkeypatch.setattr(ResultsStore, "read_epochs", lambda *a: (_ for _ in ()).throw(OSError("network down")))
    sink.on_trial_result(0, [], trial, {**_row(2), "loop_status": "running"})  # epoch 2's row goes nowhere
    monkeypatch.setattr(ResultsStore, "read_epochs", real)
    sink.on_trial_result(0, [], trial, {**_row(3), "loop_status": "completed"})
    sink.on_trial_complete(0, [], trial)
    row = ResultsStore(str(tmp_path), "s").read_runs()[spec.trial_id]
    assert row["status"] == "failed" and "network down" in row["error"]
