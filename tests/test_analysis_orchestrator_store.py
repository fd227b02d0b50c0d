"""The analysis reads a store written by the orchestrator's own writer (orchestrator/store.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from analysis.report import analyse
from benchmarks.synthetic_store import trial_rows

store_mod = pytest.importorskip("orchestrator.store")


def _write(results, tid, seed, method, **cols):
    rows = trial_rows("demo", tid, "resnet18", "digits", seed, method, "baseline", 4, **cols)
    records = rows.to_dict("records")
    st = store_mod.ResultsStore(results, "demo")
    # A retried trial re-reports epoch 2; the writer keeps the last report of each epoch.
    st.write_epochs(tid, records[:2] + records[1:])
    spec = SimpleNamespace(study="demo", trial_id=tid, arch="resnet18", dataset="digits", seed=seed,
                           method=method, variant="baseline", config_json="{}")  # fmt: skip
    st.write_run(store_mod.run_row(spec, records, status="completed", device="cpu", host="h"))


def test_reads_orchestrator_store(tmp_path):
    results = str(tmp_path / "results")
    _write(results, "f1", 1, "fixed", test_acc=0.5, epoch_time_s=10.0)
    _write(results, "d1", 1, "deba", test_acc=0.55, epoch_time_s=[10.0, 10.0, 5.0, 5.0],
           batch_size=[64, 64, 96, 96], decision=["hold", "increase", "hold", "hold"])  # fmt: skip
    a = analyse(results)
    assert a.studies == ["demo"]
    r = a.comparison.rows.iloc[0]
    assert (r.method, r.n_seeds) == ("deba", 1)
    assert r.dacc_mean == pytest.approx(5.0)
    assert r.speedup_pct == pytest.approx(25.0)  # 30 s vs 40 s
    assert r.final_bs == 96 and r.n_increase == 1
    # The analysis agrees with the orchestrator's own runs row.
    runs = a.summary.set_index("trial_id")
    stored = store_mod.ResultsStore(results, "demo").read_runs()
    for tid in ("f1", "d1"):
        assert runs.loc[tid, "t_train"] == pytest.approx(stored[tid]["train_time_s"])
        assert runs.loc[tid, "final_acc"] == pytest.approx(stored[tid]["final_test_acc"])
        assert runs.loc[tid, "final_bs"] == stored[tid]["final_batch_size"]
