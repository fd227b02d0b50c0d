"""The benchmarks run at tiny sizes and write their JSON result; their helpers compute what they claim.

No test asserts a timing: only that each benchmark completes, that its document has the agreed
fields, and that the ratios it reports are positive finite numbers.
"""

from __future__ import annotations

import glob
import json
import math
import os

import pytest
import torch

from benchmarks import bench_batch, bench_data, bench_orchestration, bench_signals, bench_speedups, tables
from benchmarks.bench_data import PremadeLoader
from benchmarks.bench_signals import signals_off
from benchmarks.common import alternating, deba_ladder, default_peak_tflops, mfu, paired_ratio, set_batch_size, summary
from trainables.config import TrialConfig
from trainables.loop import TrialLoop

MACHINE_KEYS = {"host", "cpu", "device", "device_type", "torch", "commit", "torch_threads"}


def _only_result(out_dir: str, benchmark: str) -> dict:
    paths = glob.glob(os.path.join(out_dir, f"{benchmark}_cpu_*.json"))
    assert len(paths) == 1, paths
    with open(paths[0]) as f:
        return json.load(f)


def _check_doc(doc: dict, benchmark: str) -> None:
    assert doc["benchmark"] == benchmark
    assert MACHINE_KEYS <= set(doc["machine"])
    assert doc["machine"]["device"] == "cpu"
    assert doc["params"]["quick"] is True
    assert doc["load_avg"]["start"] is None or len(doc["load_avg"]["start"]) == 3
    assert doc["ratios"], "every benchmark reports at least one ratio"
    for name, r in doc["ratios"].items():
        assert {"value", "definition", "target", "met"} <= set(r), name
        if r["value"] is not None:
            assert math.isfinite(r["value"]) and r["value"] >= 0, (name, r)


# ------------------------------------------------------------------------------------------ helpers


def test_deba_ladder_is_the_policy_default_ladder():
    # b0 64, alpha 1.5 (floor), b_max 1024
    assert deba_ladder() == [64, 96, 144, 216, 324, 486, 729, 1024]


def test_peak_table_and_mfu():
    assert default_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert default_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert default_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert default_peak_tflops("cpu") is None
    # 3 x 1 GFLOP x 1000 samples/s = 3 TFLOP/s of a 989.4 TFLOP/s peak
    assert mfu(1e9, 1000.0, 989.4) == pytest.approx(3.0 / 989.4)
    assert mfu(None, 1000.0, 989.4) is None
    assert mfu(1e9, 1000.0, None) is None


def test_paired_ratio_and_summary():
    # pair ratios 2.0 and 1.5: median 1.75; inclusive quartiles 1.625 and 1.875
    r = paired_ratio([2.0, 3.0], [1.0, 2.0])
    assert r == {"value": 1.75, "q1": 1.625, "q3": 1.875, "n": 2}
    s = summary([3.0, 1.0, 2.0])
    assert (s["n"], s["median"], s["min"], s["max"], s["q1"], s["q3"]) == (3, 2.0, 1.0, 3.0, 1.5, 2.5)
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_alternating_reverses_every_other_round():
    assert alternating(["a", "b", "c"], 3) == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]


def test_premade_loader_yields_one_batch_per_step():
    x, y = torch.arange(40.0).view(10, 4), torch.arange(10)
    loader = PremadeLoader(x, y, num_samples=25)
    batches = list(loader.epoch(4))
    assert loader.num_batches(4) == 6 and len(batches) == 6
    assert all(b[0] is batches[0][0] for b in batches)
    assert torch.equal(batches[0][1], torch.arange(4))
    with pytest.raises(ValueError):
        list(loader.epoch(11))


@pytest.fixture(scope="module")
def tiny_loop():
    cfg = {
        "arch": "tiny_mlp",
        "dataset": "digits",
        "train_limit": 64,
        "test_limit": 32,
        "threads": 1,
        "epochs": 50,
        "device": "cpu",
        "policy": {"b0": 32, "signal_source": "epoch_mean"},
    }
    return TrialLoop(TrialConfig.from_dict(cfg))


def test_signals_off_skips_the_signals_and_restores_the_loop(tiny_loop):
    import trainables.loop as loop_module

    loop = tiny_loop
    original, acc = loop_module.grad_moments, loop.accumulator
    with signals_off(loop):
        rec = loop.run_epoch()
        assert loop.accumulator is None
    assert math.isnan(rec["confidence"]) and rec["decision"] == "hold"
    assert loop_module.grad_moments is original and loop.accumulator is acc
    assert "step" not in vars(loop.policy)
    # The policy's epoch count followed the skipped step, so a normal epoch steps it again.
    on = loop.run_epoch()
    assert loop.policy.epoch == loop.epochs_done == on["epoch"]
    assert on["grad_norm"] > 0


def test_set_batch_size_changes_the_next_epoch(tiny_loop):
    set_batch_size(tiny_loop, 16)
    assert tiny_loop.run_epoch()["batch_size"] == 16
    assert tiny_loop.run_epoch()["batch_size"] == 16  # the fixed policy holds it


# --------------------------------------------------------------------------------- benchmarks, tiny


@pytest.mark.slow
@pytest.mark.parametrize(
    "module,name",
    [(bench_signals, "signals"), (bench_data, "data"), (bench_batch, "batch_curve"), (bench_speedups, "speedups")],
)
def test_benchmark_quick_run_writes_its_result(tmp_path, module, name):
    assert module.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    _check_doc(_only_result(str(tmp_path), name), name)
    text = tables.render(tables.latest([str(tmp_path)]))
    assert text.startswith(f"### {name} (cpu)") and "| ratio | value | target | verdict | definition |" in text


def test_orchestration_checkpoint_part_without_ray(tmp_path):
    assert bench_orchestration.main(["--quick", "--device", "cpu", "--no-ray", "--out", str(tmp_path)]) == 0
    doc = _only_result(str(tmp_path), "orchestration")
    (row,) = doc["numbers"]["checkpoints"]
    assert row["arch"] == "tiny_cnn" and row["checkpoint_mb"] > 0


@pytest.mark.slow
def test_orchestration_quick_run_on_ray_records_the_packing(tmp_path):
    assert bench_orchestration.main(["--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    doc = _only_result(str(tmp_path), "orchestration")
    _check_doc(doc, "orchestration")
    assert "Packing (same trials per arm)" in tables.render(tables.latest([str(tmp_path)]))
    assert doc["numbers"]["runs_table_records_packing"] is True
    assert set(doc["numbers"]["packing"]) == {"gpu0_cpu2", "gpu0_cpu1"}
    assert doc["numbers"]["ray_overhead_study"]["completed"] == 1


@pytest.mark.slow
def test_schedule_benchmark_replays_the_paper_grid(tmp_path):
    from benchmarks import bench_schedule

    assert bench_schedule.main(["--quick", "--gpus", "8", "--out", str(tmp_path)]) == 0
    (doc,) = [json.load(open(p)) for p in glob.glob(os.path.join(tmp_path, "schedule_*.json"))]
    (row,) = doc["numbers"]["efficiency"]
    assert row["gpus"] == 8 and row["random_worst"] <= row["random_median"] <= row["bound"] <= 1.0
    assert doc["ratios"]["longest_first_efficiency_8_gpus"]["met"] is True
