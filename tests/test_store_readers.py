"""The README's one-liners read each table of a store alone, with pandas, polars and DuckDB, whatever
else the study folders hold (Tune's experiments, the calibration, the lock, quarantined files)."""

from __future__ import annotations

import glob
import os

import duckdb
import pandas as pd
import polars as pl

from benchmarks.synthetic_store import spec_rows
from orchestrator.store import ResultsStore, run_row
from orchestrator.studies import expand, preset, with_overrides


def _store(root: str) -> int:
    """Two studies written by the orchestrator's own writer, plus the non-table files a study holds."""
    n = 0
    for name in ("demo", "other"):
        for spec in expand(with_overrides(preset("demo"), name=name, seeds=[0])):
            rows = spec_rows(spec, 3)
            store = ResultsStore(root, name)
            store.write_epochs(spec.trial_id, rows)
            store.write_run(run_row(spec, rows, status="completed"))
            n += 1
        for junk in (
            "_ray/exp-0/orchestrator_plan.json",
            "calibration.json",
            "_driver.lock",
            "_quarantine/runs__x.parquet.20261127",
        ):
            path = os.path.join(root, name, junk)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "w").write("{}")
    return n


def test_each_table_reads_alone_with_pandas_polars_and_duckdb(tmp_path, monkeypatch):
    trials = _store(str(tmp_path / "results"))
    monkeypatch.chdir(tmp_path)
    # One study (pandas reads a folder), every study (a list of files, or a glob).
    epochs = pd.read_parquet("results/demo/epochs")
    runs = pd.read_parquet("results/demo/runs")
    assert len(epochs) == 3 * trials // 2 and "epoch" in epochs and "status" not in epochs
    assert len(runs) == trials // 2 and "status" in runs and "epoch" not in runs
    all_epochs = pd.read_parquet(glob.glob("results/*/epochs/*.parquet"))
    assert len(all_epochs) == 3 * trials and set(all_epochs["study"]) == {"demo", "other"}

    pl_epochs = pl.read_parquet("results/*/epochs/*.parquet")
    pl_runs = pl.scan_parquet("results/*/runs/*.parquet").collect()
    assert pl_epochs.height == 3 * trials and pl_runs.height == trials and "status" in pl_runs.columns

    db_epochs = duckdb.sql("SELECT * FROM read_parquet('results/*/epochs/*.parquet', union_by_name=true)").df()
    db_runs = duckdb.sql("SELECT study, count(*) AS n FROM 'results/*/runs/*.parquet' GROUP BY study").df()
    assert len(db_epochs) == 3 * trials and dict(zip(db_runs["study"], db_runs["n"])) == {"demo": 4, "other": 4}
    assert list(pl_epochs.columns) == list(epochs.columns) == list(db_epochs.columns)
