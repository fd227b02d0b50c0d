"""Planning cluster time: makespans in hours for a GPU count and speed, and where the per-trial times
came from (store, shared GPU epoch-time table, FLOPs at a stated throughput)."""

from __future__ import annotations

import json
import re

import pytest

from orchestrator.capacity import (
    ASSUMED_FLOPS_PER_S,
    ClusterView,
    cluster_view,
    hours,
    makespan_lines,
    plan_targets,
    trial_seconds,
    trial_slots,
)
from orchestrator.epoch_times import epoch_times_document
from orchestrator.run_grid import main
from orchestrator.schedule import CostEstimate


def test_trial_seconds_from_flops_at_the_assumed_throughput_and_speed():
    est = CostEstimate(costs={"a": ASSUMED_FLOPS_PER_S * 7200, "b": ASSUMED_FLOPS_PER_S * 3600}, unit="FLOP",
                       measured=0, sources={"a": "flops", "b": "flops"})  # fmt: skip
    assert trial_seconds(est, ["a", "b"]) == pytest.approx([7200, 3600])
    assert trial_seconds(est, ["a"], speed=2.0) == pytest.approx([3600])
    lines = makespan_lines(est, ["a", "b"], plan_targets(None, 1, gpus=1)[0])
    # one GPU: 2 h + 1 h in a row; the source names the assumption
    assert "3 h of trial time" in lines[0] and "predicted makespan: 3 h on 1 GPUs" in lines[0]
    assert "2 from FLOPs at an assumed 99 TFLOP/s per GPU" in lines[1]
    assert (hours(36.6 * 3600), hours(1234.4 * 3600), hours(18)) == ("36.6 h", "1234 h", "0.005 h")
    with pytest.raises(ValueError, match="gpu_speed=0"):
        trial_seconds(est, ["a"], speed=0)


def test_sources_are_counted_and_named():
    est = CostEstimate(costs={"a": 3600.0, "b": 1800.0, "c": 900.0}, unit="s", measured=1,
                       sources={"a": "store", "b": "table", "c": "flops"}, reference="NVIDIA H200, B = 64")  # fmt: skip
    text = makespan_lines(est, ["a", "b", "c"], plan_targets(None, 1, gpus=2)[0], speed=2.0)
    assert "predicted makespan: 0.5 h on 2 GPUs" in text[0]  # 1800 s | 900 + 450 s
    assert text[1] == (
        "  per-trial times: 1 from epoch times measured in this store; 1 from the GPU epoch-time table "
        "(NVIDIA H200, B = 64); 1 from FLOPs at the timed trials' median seconds per FLOP; divided by --gpu-speed 2"
    )


def test_cluster_view_names_gpus_and_cpus_of_alive_nodes():
    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0}},
        {"Alive": True, "Resources": {"CPU": 192.0, "GPU": 8.0, "accelerator_type:H100": 1.0}},
        {"Alive": False, "Resources": {"CPU": 192.0, "GPU": 8.0, "accelerator_type:H100": 1.0}},
    ]
    view = cluster_view("10.0.0.1:6379", nodes)
    assert (view.gpus, view.cpus, view.nodes) == (8.0, 200.0, 2)
    assert view.describe() == "cluster at 10.0.0.1:6379: 8 GPU(s) (8 x H100), 200 CPU(s) on 2 node(s) up now"


def test_targets_for_an_attached_cluster_a_gpu_count_and_offline():
    gpu = ClusterView("h:1", gpus=16, cpus=400, nodes=3)
    targets, notes = plan_targets(None, 1, view=gpu)
    assert [(t.slots, t.name) for t in targets] == [(16, "the attached cluster (16 GPUs, 16 at once)")] and not notes
    assert plan_targets(0.5, 1, view=gpu)[0][0].slots == 32
    # A cluster with no GPU up: says so, plans CPU-only trials there and 8/16/64 GPUs beside.
    cpu = ClusterView("h:1", gpus=0, cpus=4, nodes=1)
    targets, notes = plan_targets(None, 2, view=cpu)
    assert [t.slots for t in targets] == [2, 8, 16, 64] and "no GPU up now" in notes[0]
    targets, notes = plan_targets(1.0, 1, view=cpu)  # --gpus-per-trial 1: nothing fits now
    assert [t.name for t in targets] == ["8 GPUs", "16 GPUs", "64 GPUs"] and "no trial fits" in notes[1]
    assert [t.slots for t in plan_targets(None, 1, gpus=24, view=cpu)[0]] == [4, 24]
    assert [t.name for t in plan_targets(None, 1, here=2)[0]] == ["2 slots here", "8 GPUs", "16 GPUs", "64 GPUs"]
    assert trial_slots(8, 4, None, 1) == 4 and trial_slots(0, 0, None, 1) == 0


def test_paper_dry_run_prints_hours_on_given_gpus_and_its_sources(tmp_path, capsys):
    argv = ["--study", "paper", "--dry-run", "--gpus", "8", "--results", str(tmp_path / "r")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    span = re.search(r"predicted makespan: ([\d.]+) h on 8 GPUs", out)
    assert span and float(span.group(1)) > 0, out
    assert "120 from FLOPs at an assumed 99 TFLOP/s per GPU" in out
    # A shared table of GPU epoch times for resnet18: its 20 trials take their times from it, the rest
    # from FLOPs at its seconds per FLOP; a GPU twice as fast halves the makespan.
    table = tmp_path / "times.json"
    doc = epoch_times_document("NVIDIA H200", "cuda", "2026-12-02T10:00:00+00:00", 64, 50_000, 10_000,
                               {"resnet18": {"train_s": 5.0, "eval_s": 1.0}})  # fmt: skip
    table.write_text(json.dumps(doc))
    assert main([*argv, "--epoch-times", str(table)]) == 0
    out = capsys.readouterr().out
    assert "20 from the GPU epoch-time table (NVIDIA H200, B = 64, measured 2026-12-02); 100 from FLOPs" in out
    one = float(re.search(r"([\d.]+) h on 8 GPUs", out).group(1))
    assert re.search(r"resnet18-cifar10-s2-fixed-baseline +run +\(pending\) 0\.167 h", out)  # 100 x 6 s
    assert main([*argv, "--epoch-times", str(table), "--gpu-speed", "2"]) == 0
    two = float(re.search(r"([\d.]+) h on 8 GPUs", capsys.readouterr().out).group(1))
    assert two == pytest.approx(one / 2, rel=0.01)


def test_planning_flags_are_refused_outside_a_dry_run_and_a_missing_table(tmp_path, capsys):
    assert main(["--study", "demo", "--gpus", "8", "--results", str(tmp_path)]) == 2
    assert "gpus=8 is not allowed; expected --gpus only with --dry-run" in capsys.readouterr().err
    assert main(["--study", "demo", "--dry-run", "--gpu-speed", "0", "--results", str(tmp_path)]) == 2
    assert "gpu_speed=0.0 is not allowed" in capsys.readouterr().err
    missing = str(tmp_path / "none.json")
    assert main(["--study", "demo", "--dry-run", "--epoch-times", missing, "--results", str(tmp_path)]) == 2
    assert "expected an existing epoch-time table" in capsys.readouterr().err


def test_cpu_only_slots_are_not_predicted_from_gpu_times():
    flops = CostEstimate(costs={"a": 1e18}, unit="FLOP", measured=0, sources={"a": "flops"})
    targets, _ = plan_targets(None, 1, here=2, here_gpu=False)
    line = makespan_lines(flops, ["a"], targets)[0]
    assert "not predicted on 2 slots here (CPU-only trials; these are GPU times)" in line and "on 8 GPUs" in line
    stored = CostEstimate(costs={"a": 7200.0}, unit="s", measured=1, sources={"a": "store"})
    assert "2 h on 2 slots here" in makespan_lines(stored, ["a"], targets)[0]  # measured on this store's hardware
