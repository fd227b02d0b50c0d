"""The GPU visit (benchmarks/run_gpu.sh): its Python parts on CPU, and the script end to end in plumbing mode.

No test asserts a timing: only that every step writes what it promises, that the Table 1 store has
the layout and trial ids run_grid would give it, and that the sizing arithmetic is what it says.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import subprocess
import sys
import tarfile

import pytest

from benchmarks import bench_smoke, gpu_visit
from orchestrator.epoch_times import read_epoch_times

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke_doc(rows_by_arch, batch_sizes=(64, 1024), device="NVIDIA H200"):
    """A smoke result as bench_smoke writes it (only the fields its readers use)."""
    return {
        "benchmark": "smoke",
        "started": "2026-12-02T10:00:00+00:00",
        "machine": {"device": device, "device_type": "cuda", "commit": "abc", "torch": "2.11", "cuda": "13.0"},
        "params": {"batch_sizes": list(batch_sizes), "samples": 4096},
        "numbers": {"archs": [{"arch": a, "rows": rows} for a, rows in rows_by_arch.items()]},
    }


def _row(b, full_epoch_s, full_eval_s, finite=True):
    return {"batch_size": b, "full_epoch_s": full_epoch_s, "full_eval_s": full_eval_s, "finite": finite}


# ------------------------------------------------------------------------------ step 5: epoch times


def test_epoch_times_from_smoke_take_the_b64_rows(tmp_path):
    doc = _smoke_doc(
        {
            "resnet18": [_row(64, 3.0, 0.2), _row(1024, 1.0, 0.2)],
            "mobilenetv3": [_row(64, 6.0, 0.4)],
            "vit_b16": [_row(64, float("nan"), 1.0, finite=False)],  # left out: no finite loss
        }
    )
    path = str(tmp_path / "gpu_epoch_times.json")
    line = gpu_visit.write_epoch_times_from_smoke(doc, path)
    t = read_epoch_times(path)
    assert (t.device, t.batch_size, t.measured) == ("NVIDIA H200", 64, "2026-12-02T10:00:00+00:00")
    assert t.seconds_per_epoch == {"resnet18": 3.2, "mobilenetv3": 6.4}
    assert "resnet18 3.20 s" in line
    with pytest.raises(ValueError, match="no arch"):
        gpu_visit.epoch_times_from_smoke(_smoke_doc({"vit_b16": [_row(64, 1.0, 1.0, finite=False)]}))


# ------------------------------------------------------------------------- step 4: epochs that fit


def test_table1_epochs_fit_the_limit():
    smoke = _smoke_doc({"resnet18": [_row(64, 2.5, 0.25)], "mobilenetv3": [_row(64, 5.0, 0.5)]})
    # slowest: mobilenetv3, 5.0 * 60/50 + 0.5 = 6.5 s; x1.5 (two trials share the GPU, assumed) = 9.75 s;
    # 0.9 * (360 - 45) / 9.75 = 29.08 -> 29
    n, why = gpu_visit.table1_epochs(360, smoke)
    assert n == 29 and "mobilenetv3" in why and "assumed" in why
    # a measured slowdown of 1.2 with two trials: 7.8 s per epoch -> floor(283.5 / 7.8) = 36
    packing = {"numbers": {"arms": [{"trials": 1, "slowdown": 1.0}, {"trials": 2, "slowdown": 1.2}]}}
    n, why = gpu_visit.table1_epochs(360, smoke, packing)
    assert n == 36 and "packing step" in why
    assert gpu_visit.table1_epochs(1e6, smoke)[0] == 100  # never more than the paper's 100
    assert gpu_visit.table1_epochs(40, smoke)[0] == 0
    assert gpu_visit.table1_epochs(360, None)[0] is None
    assert gpu_visit.table1_epochs(360, _smoke_doc({"resnet18": [_row(64, 2.5, 0.25)]}))[0] is None
    assert gpu_visit.table1_epochs(360, _smoke_doc({"resnet18": [_row(2, 1, 1)]}, batch_sizes=(2, 4)))[0] is None


def test_share_slowdown_takes_the_arm_with_at_least_that_many_trials():
    packing = {"numbers": {"arms": [{"trials": 1, "slowdown": 1.0}, {"trials": 4, "slowdown": 2.0}]}}
    assert gpu_visit.share_slowdown(packing, 2) == 2.0
    assert gpu_visit.share_slowdown(packing, 8) is None
    assert gpu_visit.share_slowdown(None, 2) is None


# ------------------------------------------------------------------------------ step 1: smoke test


def test_smoke_quick_run_writes_its_rows_and_the_epoch_times(tmp_path):
    times = str(tmp_path / "times.json")
    argv = ["--quick", "--device", "cpu", "--archs", "tiny_cnn,tiny_mlp", "--out", str(tmp_path)]
    assert bench_smoke.main(argv + ["--epoch-times", times]) == 0
    (path,) = glob.glob(str(tmp_path / "smoke_cpu_*.json"))
    doc = json.load(open(path))
    assert [r["arch"] for r in doc["numbers"]["archs"]] == ["tiny_cnn", "tiny_mlp"]
    for res in doc["numbers"]["archs"]:
        assert [r["batch_size"] for r in res["rows"]] == [2, 4]
        for r in res["rows"]:
            assert r["finite"] and all(math.isfinite(x) for x in r["losses"]) and r["samples_per_s"] > 0
            assert r["full_epoch_s"] == pytest.approx((50_000 // r["batch_size"]) * r["step_ms"] / 1e3)
    assert doc["ratios"]["smoke_all_finite"]["met"] is True
    t = read_epoch_times(times)
    assert t.device_type == "cpu" and t.batch_size == 2 and set(t.train_s) == {"tiny_cnn", "tiny_mlp"}


# -------------------------------------------------------------------- step 4 without Ray: the store


@pytest.mark.slow
def test_table1_without_ray_writes_the_store_run_grid_would(tmp_path):
    from test_data import write_tiny_fashion_mnist

    from orchestrator.cli import build_parser, study_from_args
    from orchestrator.runner import make_plan
    from orchestrator.store import ResultsStore

    write_tiny_fashion_mnist(str(tmp_path / "data" / "fashion-mnist"), n_train=64, n_test=32)
    work = str(tmp_path / "work")
    args = ["table1", "--work", work, "--ray", "no", "--epochs", "2", "--archs", "tiny_cnn", "--gpus-per-trial",
            "0", "--data-dir", str(tmp_path / "data"), "--setting", "train_limit=64", "--setting", "test_limit=32",
            "--setting", "threads=1"]  # fmt: skip
    assert gpu_visit.main(args) == 0
    results = os.path.join(work, "table1")
    store = ResultsStore(results, gpu_visit.TABLE1_STUDY)
    (run,) = store.read_runs().values()
    assert (run["arch"], run["dataset"], run["seed"], run["method"]) == ("tiny_cnn", "fashion_mnist", 2, "fixed")
    assert run["status"] == "completed" and run["epochs_done"] == 2 and run["ray_version"] is None
    rows = store.read_epochs(run["trial_id"])
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["batch_size"] == 64 for r in rows)
    assert all(r["grad_var_epoch_mean"] is not None for r in rows)  # table1_full records epoch-mean signals
    # run_grid, given the same study, sees the trial as finished: same trial id and configuration.
    grid = gpu_visit.table1_grid_args(
        gpu_visit.argparse.Namespace(
            archs=["tiny_cnn"], seeds=["2"], results=results, gpus_per_trial=0.0, cpus_per_trial=1.0,
            data_dir=str(tmp_path / "data"), storage=None,
            setting=["train_limit=64", "test_limit=32", "threads=1"],
        ),
        2,
    )  # fmt: skip
    plan = make_plan(study_from_args(build_parser().parse_args(grid)), results)
    assert plan.finished == {run["trial_id"]} and not plan.pending


# --------------------------------------------------------------------------- the script, end to end


def _run_script(tmp_path, steps, **env):
    out, work = tmp_path / "out", tmp_path / "work"
    full = {**os.environ, "GPU_VISIT_PLUMBING": "1", "OUT": str(out), "GPU_VISIT_WORK": str(work),
            "PYTHON": sys.executable, "PYTHONPATH": ROOT, **env}  # fmt: skip
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "run_gpu.sh"), *steps], env=full,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "steps.tsv") as f:
        steps_rows = {r["step"]: r for r in csv.DictReader(f, delimiter="\t")}
    return out, steps_rows, (out / "log.txt").read_text()


@pytest.mark.slow
def test_script_without_ray_skips_packing_with_a_message(tmp_path):
    out, steps, log = _run_script(tmp_path, ["packing"], GPU_VISIT_NO_RAY="1")
    assert steps["packing"]["exit"] == "skipped-no-ray"
    assert "packing: SKIPPED: Ray is not available" in log
    assert {"log.txt", "nvidia-smi.txt", "steps.tsv", "tables.md", "visit.tar.gz"} <= set(os.listdir(out))


@pytest.mark.slow
def test_script_refuses_unknown_steps(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "run_gpu.sh"), "nonsense"], capture_output=True,
                          text=True, env={**os.environ, "OUT": str(tmp_path)})  # fmt: skip
    assert proc.returncode == 2 and "unknown step 'nonsense'" in proc.stderr


@pytest.mark.slow
def test_plumbing_mode_end_to_end(tmp_path):
    """Every step of the visit on CPU at tiny sizes (smaller still than the script's plumbing defaults:
    two archs in the smoke test, one trial in Table 1), on a real local Ray."""
    out, steps, log = _run_script(
        tmp_path, ["all"], ARGS_SMOKE="--archs resnet18,mobilenetv3", ARGS_TABLE1="--archs mobilenetv3"
    )
    assert {s: r["exit"] for s, r in steps.items()} == {
        s: "0"
        for s in (
            "smoke",
            "signals",
            "data",
            "batch_curve",
            "speedups",
            "orchestration",
            "packing",
            "table1",
            "analysis",
            "epoch_times",
        )  # fmt: skip
    }, log[-3000:]
    files = set(os.listdir(out))
    assert {"log.txt", "nvidia-smi.txt", "steps.tsv", "tables.md", "gpu_epoch_times.json", "table1_report.md",
            "visit.tar.gz"} == files  # fmt: skip
    assert len(files) <= 8  # what the device tool returns from $OUT
    tables = (out / "tables.md").read_text()
    for bench in ("smoke", "signals", "data", "batch_curve", "speedups", "orchestration", "packing"):
        assert f"### {bench} (cpu)" in tables
    assert set(read_epoch_times(str(out / "gpu_epoch_times.json")).train_s) == {"resnet18", "mobilenetv3"}
    assert "Calibrated thresholds (Table 1)" in (out / "table1_report.md").read_text()
    with tarfile.open(out / "visit.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.startswith("./table1/table1_full/epochs/") and n.endswith(".parquet") for n in names)
    assert any(n.startswith("./packing/pack2/runs/") for n in names)
    assert any(n.startswith("./bench/packing_cpu_") for n in names)
