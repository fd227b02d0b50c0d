"""A trial's manifest: the rows it wrote, checked column by column (no Ray, no training)."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from orchestrator.store import EPOCH_SCHEMA, run_row, to_table
from orchestrator.studies import TrialSpec
from trainables.config import TrialConfig
from trainables.manifest import CHECKED_COLUMNS, column_checksums, epoch_ranges, has_manifest, manifest_of, verify
from trainables.records import EPOCH_COLUMNS


def _spec(seed: int = 0) -> TrialSpec:
    return TrialSpec("s", TrialConfig(arch="tiny_cnn", dataset="digits", seed=seed, method="fixed", epochs=3))


def _rows(spec: TrialSpec, n: int = 3) -> list[dict]:
    return [{**spec.identifiers(), "epoch": e, "batch_size": 64, "next_batch_size": 64, "train_loss": 1.0 / e,
             "test_acc": 0.5, "decision": "hold", "in_cooldown": False, "grad_var": math.nan if e == 2 else 1e-3,
             "lr_gain": None} for e in range(1, n + 1)]  # fmt: skip


def _table(rows: list[dict]) -> pa.Table:
    return to_table(rows, EPOCH_COLUMNS, EPOCH_SCHEMA)


def test_epoch_ranges():
    assert epoch_ranges([3, 1, 2, 5, 7, 6]) == "1-3,5-7" and epoch_ranges([4]) == "4" and epoch_ranges([]) == ""


def test_checksums_follow_the_content_not_the_row_order_or_the_null_spelling():
    spec = _spec()
    rows = _rows(spec)
    base = column_checksums(_table(rows))
    assert base == column_checksums(_table(rows[::-1]))  # put in epoch order first
    assert set(base) == set(CHECKED_COLUMNS) and all(len(h) == 16 for h in base.values())  # not the identifiers
    edited = [dict(r) for r in rows]
    edited[1]["test_acc"] = 0.51
    changed = {c for c, h in column_checksums(_table(edited)).items() if h != base[c]}
    assert changed == {"test_acc"}
    swapped = [dict(r) for r in rows]
    swapped[0]["train_loss"], swapped[1]["train_loss"] = swapped[1]["train_loss"], swapped[0]["train_loss"]
    assert column_checksums(_table(swapped))["train_loss"] != base["train_loss"]  # the order of values counts
    assert column_checksums(_table(rows[:2]))["batch_size"] != base["batch_size"]  # so does their number


def test_a_runs_row_carries_the_manifest_of_its_rows_and_verify_names_what_differs():
    spec, other = _spec(0), _spec(1)
    rows = _rows(spec)
    run = run_row(spec, rows, status="completed")
    assert has_manifest(run) and run["manifest_rows"] == 3 and run["manifest_epochs"] == "1-3"
    assert json.loads(run["manifest_checksums"]) == column_checksums(_table(rows))
    assert verify(_table(rows), spec.trial_id, run) is None
    assert verify(_table(rows).select(["trial_id", "epoch", "test_acc"]), spec.trial_id, run) is None  # some columns
    foreign = _table(_rows(other))
    assert "holds rows of another trial" in verify(foreign, spec.trial_id, run)
    relabelled = _table([{**r, "trial_id": spec.trial_id} for r in _rows(other)])  # another trial's rows, renamed
    assert "seed" in verify(relabelled, spec.trial_id, run)
    edited = [dict(r) for r in rows]
    edited[2]["train_loss"] = 0.1
    assert verify(_table(edited), spec.trial_id, run) == "its content differs from its manifest in column(s) train_loss"
    assert "covers epochs 1-2 of its manifest's 1-3" in verify(_table(rows[:2]), spec.trial_id, run)
    longer = _rows(spec, 5)  # epochs past the manifest's: an extension of the trial, still running
    assert verify(_table(longer), spec.trial_id, run) is None
    old = {k: v for k, v in run.items() if not k.startswith("manifest_")}  # written before manifests
    assert not has_manifest(old) and verify(_table(edited), spec.trial_id, old) is None


@pytest.mark.parametrize("value", [math.nan, None])
def test_a_null_and_a_nan_read_alike(value):
    spec = _spec()
    rows = _rows(spec)
    rows[1]["grad_var"] = value
    assert manifest_of(_table(rows))["manifest_checksums"] == manifest_of(_table(_rows(spec)))["manifest_checksums"]
