"""Loading a results store: layouts, URIs, schema errors, de-duplication, study selection."""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.load import StoreError, load_store
from benchmarks.synthetic_store import EPOCH_SCHEMA, run_row, trial_rows, write_trial


def _trial(root, study, tid, seed=1, method="fixed", n=3, run=True, manifest=True, **cols):
    """One trial's files; `manifest` False: a runs row without one (another writer, or before manifests),
    for the tests that then change the epochs file by hand."""
    df = trial_rows(study, tid, "resnet18", "digits", seed, method, "baseline", n, **cols)
    extra = {} if manifest else {"manifest_checksums": None}
    write_trial(str(root), study, tid, df, run_row(study, tid, "resnet18", "digits", seed, method, **extra)
                if run else None)  # fmt: skip
    return df


def test_loads_one_study_with_types(tmp_path):
    _trial(tmp_path, "s", "a")
    _trial(tmp_path, "s", "b", seed=2, n=2)
    st = load_store(str(tmp_path))
    assert st.studies == ["s"]
    assert len(st.epochs) == 5 and len(st.runs) == 2
    assert str(st.epochs["seed"].dtype) == "int64"
    assert str(st.epochs["epoch_time_s"].dtype) == "float64"
    assert st.epochs["in_cooldown"].dtype == bool
    assert st.epochs["lr_gain"].isna().all()  # nullable extras, all null
    assert st.notes == []


def test_study_dir_itself_and_file_uri(tmp_path):
    _trial(tmp_path, "s", "a")
    assert load_store(str(tmp_path / "s")).studies == ["s"]
    assert len(load_store(f"file://{tmp_path}").epochs) == 3


def test_several_studies_and_selection(tmp_path):
    _trial(tmp_path, "p", "a")
    _trial(tmp_path, "q", "b")
    os.makedirs(tmp_path / "reports" / "p")  # not a study: no epochs/ or runs/ inside
    st = load_store(str(tmp_path))
    assert st.studies == ["p", "q"] and sorted(st.epochs["study"].unique()) == ["p", "q"]
    assert load_store(str(tmp_path), "q").studies == ["q"]
    with pytest.raises(StoreError, match=r"study 'x' not found .* available: \['p', 'q'\]"):
        load_store(str(tmp_path), "x")


def test_empty_and_missing_dirs(tmp_path):
    with pytest.raises(StoreError, match="no study found"):
        load_store(str(tmp_path))
    with pytest.raises(StoreError, match="does not exist"):
        load_store(str(tmp_path / "nope"))
    os.makedirs(tmp_path / "s" / "epochs")
    with pytest.raises(StoreError, match="study 's' has no epoch files"):
        load_store(str(tmp_path))


def test_dedup_keeps_latest_report(tmp_path):
    df = _trial(tmp_path, "s", "a", manifest=False, test_acc=[0.1, 0.2, 0.3])
    # A retry re-reported epoch 3 later (larger cumulative wall time) with another accuracy.
    again = df[df["epoch"] == 3].copy()
    again["test_acc"] = 0.9
    again["wall_time_s"] += 100.0
    (tmp_path / "s" / "epochs" / "attempt=2").mkdir()  # a hive partition: its files are not named by trial
    pq.write_table(pa.Table.from_pandas(again, schema=EPOCH_SCHEMA, preserve_index=False),
                   tmp_path / "s" / "epochs" / "attempt=2" / "rows.parquet")  # fmt: skip
    write_trial(str(tmp_path), "s", "a2", None, run_row("s", "a", "resnet18", "digits", 1, "fixed"))
    st = load_store(str(tmp_path))
    assert len(st.epochs) == 3 and len(st.runs) == 1
    assert st.epochs.loc[st.epochs["epoch"] == 3, "test_acc"].item() == 0.9
    assert any("epochs: dropped 1 duplicate rows" in n for n in st.notes)
    assert any("runs file" in n and "a2.parquet holds rows of another trial (a); left out" in n for n in st.notes)
    # A trial's own file that holds another trial's rows is named and left out (a foreign file, not a retry).
    pq.write_table(pa.Table.from_pandas(again, schema=EPOCH_SCHEMA, preserve_index=False),
                   tmp_path / "s" / "epochs" / "b.parquet")  # fmt: skip
    st = load_store(str(tmp_path))
    assert any("b.parquet holds rows of another trial (a); left out" in n for n in st.notes)


def test_missing_and_mistyped_columns_are_named(tmp_path):
    df = _trial(tmp_path, "s", "a")
    bad = df.drop(columns=["grad_var"]).astype({"seed": str})
    pq.write_table(pa.Table.from_pandas(bad, preserve_index=False),
                   tmp_path / "s" / "epochs" / "b.parquet")  # fmt: skip
    with pytest.raises(StoreError) as exc:
        load_store(str(tmp_path))
    msg = str(exc.value)
    assert "b.parquet" in msg and "a.parquet" not in msg
    assert re.search(r"column 'seed' has type (large_)?string, expected int64", msg)
    assert "missing column 'grad_var' (float64)" in msg


def test_missing_runs_column_is_named(tmp_path):
    _trial(tmp_path, "s", "a", run=False)
    os.makedirs(tmp_path / "s" / "runs")
    pq.write_table(pa.table({"study": ["s"], "trial_id": ["a"]}), tmp_path / "s" / "runs" / "a.parquet")
    with pytest.raises(StoreError, match="(?s)runs table does not match.*missing column 'status'"):
        load_store(str(tmp_path))


def test_tolerated_variations(tmp_path):
    """int32/float32 columns, missing nullable extras, extra columns, temp files, hive dirs."""
    df = _trial(tmp_path, "s", "a", manifest=False)
    t = pa.Table.from_pandas(df.drop(columns=["lr_gain", "noise_scale"]), preserve_index=False)
    t = t.set_column(t.schema.get_field_index("epoch"), "epoch", t["epoch"].cast(pa.int32()))
    t = t.set_column(t.schema.get_field_index("lr"), "lr", t["lr"].cast(pa.float32()))
    t = t.append_column("my_extra", pa.array(["x"] * 3))
    t = t.set_column(t.schema.get_field_index("study"), "study", t["study"].dictionary_encode())
    pq.write_table(t, tmp_path / "s" / "epochs" / "a.parquet")
    (tmp_path / "s" / "epochs" / ".tmp-b.parquet").write_bytes(b"partial write")
    # Hive layout: arch as a directory, not a column.
    hive = tmp_path / "s" / "epochs" / "arch=vit_b16"
    os.makedirs(hive)
    d2 = trial_rows("s", "h", "vit_b16", "digits", 1, "fixed", n_epochs=2)
    pq.write_table(pa.Table.from_pandas(d2.drop(columns=["arch"]), preserve_index=False),
                   hive / "h.parquet")  # fmt: skip
    st = load_store(str(tmp_path))
    assert str(st.epochs["epoch"].dtype) == "int64"
    assert st.epochs["lr"].tolist()[:3] == pytest.approx([0.01] * 3)
    assert st.epochs["noise_scale"].isna().all()
    assert list(st.epochs["my_extra"].iloc[:3]) == ["x"] * 3
    assert sorted(st.epochs["arch"].unique()) == ["resnet18", "vit_b16"]
    assert len(st.epochs) == 5
