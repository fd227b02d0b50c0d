"""Data-parallel trials: the global batch's split, W per arch, validation, gangs (fast), and a W = 2 trial
against a W = 1 one on real data without Ray (slow; tests/test_data_parallel_ray.py runs it through Tune)."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.gangs import gang_efficiency, gang_makespan, parallel_seconds, slot_count, tune_resources
from orchestrator.schedule import makespan
from orchestrator.studies import expand, preset, with_overrides
from trainables.config import TrialConfig
from trainables.data import GpuLoader
from trainables.data_parallel import (
    loss_weight,
    parse_workers,
    replica_noise_scale,
    shard_bounds,
    shard_sizes,
    workers_for,
)
from trainables.ddp_loop import ShardedLoader


@pytest.mark.parametrize("batch,workers", [(64, 2), (65, 2), (100, 3), (7, 7), (1024, 8), (1000, 6)])
def test_shards_cover_the_global_batch_once_and_weights_restore_its_mean(batch, workers):
    sizes = shard_sizes(batch, workers)
    assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1 and list(sizes) == sorted(sizes, reverse=True)
    bounds = [shard_bounds(batch, workers, r) for r in range(workers)]
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(workers - 1))
    # DDP averages the W weighted rank means: that is the mean over the B samples.
    losses = [float(r + 1) for r in range(workers)]  # each rank's per-sample loss, constant within a rank
    ddp = sum(loss_weight(batch, workers, r) * losses[r] for r in range(workers)) / workers
    assert ddp == pytest.approx(sum(s * v for s, v in zip(sizes, losses)) / batch)


def test_a_batch_smaller_than_the_workers_is_refused():
    with pytest.raises(ValueError, match="cannot be split"):
        shard_sizes(3, 4)


def test_workers_per_arch_text():
    assert parse_workers("1") == (1, {})
    assert parse_workers("vit_b16=4,resnet50=2,1") == (1, {"vit_b16": 4, "resnet50": 2})
    assert parse_workers("timm/vit_small_patch16_224=2") == (1, {"timm/vit_small_patch16_224": 2})
    assert workers_for("vit_b16=4,2", "resnet18") == 2 and workers_for("vit_b16=4,2", "vit_b16") == 4
    for bad in ("0", "two", "a=1,a=2", "1,2", "", "a=", "=2", "vit_b16=4,,1", "2000"):
        with pytest.raises(ValueError, match="workers_per_trial"):
            parse_workers(bad)


def test_w1_keeps_trial_ids_and_w2_is_another_trial():
    base = dict(arch="tiny_cnn", dataset="digits", method="deba", epochs=3)
    one = TrialConfig(**base)
    assert one.trial_id() == TrialConfig(**base, workers=1).trial_id()
    assert "workers" not in __import__("trainables.config", fromlist=["x"]).identity_view(one.to_dict())
    assert TrialConfig(**base, workers=2).trial_id() != one.trial_id()
    stored = {k: v for k, v in one.stored().items() if k != "workers"}  # written before the setting existed
    assert TrialConfig.from_stored(stored).workers == 1


def test_study_sets_w_per_arch_and_refuses_unknown_archs_before_ray():
    demo = preset("demo")
    study = with_overrides(demo, seeds=(0,), methods=("fixed",), workers_per_trial="tiny_cnn=2")
    got = {t.arch: t.config.workers for t in expand(study)}
    assert got == {"tiny_cnn": 2, "tiny_mlp": 1}
    assert slot_count(expand(study)) == 3
    with pytest.raises(ValueError, match="resnet50 is not one"):
        expand(with_overrides(demo, workers_per_trial="resnet50=2"))


def test_trials_w_cannot_run_are_refused_with_a_reason():
    base = dict(arch="tiny_cnn", dataset="digits", epochs=3, workers=2)
    with pytest.raises(ValueError, match="measures per_sample"):
        TrialConfig(**base, method="divebatch", policy={"resize_every": 1})
    TrialConfig(**base, method="gns")  # its two-batch statistics come from the replicas
    with pytest.raises(ValueError, match="compile"):
        TrialConfig(**base, method="fixed", compile=True)
    with pytest.raises(ValueError, match="every rank needs a sample"):
        TrialConfig(**{**base, "workers": 8}, method="fixed", policy={"b0": 4})
    TrialConfig(**base, method="adabatch")  # no measurement: runs
    with pytest.raises(ValueError, match="folder dataset"):
        TrialConfig(**{**base, "dataset": "imagefolder:pets"}, method="fixed")


def test_sharded_loader_yields_the_one_worker_batches_split():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50)
    loader = GpuLoader(x, y, (0.5,) * 3, (0.25,) * 3, "cpu", augment=True)
    shards = [ShardedLoader(loader, r, 3) for r in range(3)]
    for batch, drop_last in ((16, True), (20, False)):
        gens = [torch.Generator().manual_seed(7) for _ in range(4)]
        whole = list(loader.epoch(batch, gens[0], shuffle=True, drop_last=drop_last))
        parts = [list(s.epoch(batch, g, shuffle=True, drop_last=drop_last)) for s, g in zip(shards, gens[1:])]
        for i, (xb, yb) in enumerate(whole):
            got = [p[i] for p in parts if i < len(p)]
            assert torch.equal(torch.cat([g[0] for g in got]), xb) and torch.equal(torch.cat([g[1] for g in got]), yb)


def test_gangs_are_counted_as_slots():
    assert tune_resources(1, {"cpu": 2.0, "gpu": 1.0}) == {"cpu": 2.0, "gpu": 1.0}
    assert tune_resources(4, {"cpu": 2.0, "gpu": 1.0})["gpu"] == 0.0
    # One-wide jobs: the same as the trial scheduler's makespan.
    jobs = [(5.0, 1), (3.0, 1), (3.0, 1), (2.0, 1)]
    assert gang_makespan(jobs, 2) == makespan([c for c, _ in jobs], 2)
    # A 4-wide gang waits for 4 free slots and holds them all.
    assert gang_makespan([(4.0, 1), (2.0, 4)], 4) == 6.0
    assert gang_efficiency([(4.0, 1), (2.0, 4)], 4, 6.0) == pytest.approx(12 / 24)
    assert parallel_seconds(100.0, 4, 0.9) == pytest.approx(100 / 3.6) and parallel_seconds(7.0, 1, 0.5) == 7.0
    with pytest.raises(ValueError, match="does not fit"):
        gang_makespan([(1.0, 3)], 2)


def test_noise_scale_from_replicas_recovers_a_known_spread():
    # Per-sample gradients g + noise (variance sigma2 per coordinate, d coordinates): expected norms.
    d, sigma2, g2, batch, workers = 10, 4.0, 2.0, 64, 4
    small = g2 + d * sigma2 / (batch / workers)
    big = g2 + d * sigma2 / batch
    est_g2, trace, b_simple = replica_noise_scale(small, big, batch, workers)
    assert est_g2 == pytest.approx(g2) and trace == pytest.approx(d * sigma2) and b_simple == pytest.approx(20.0)
    assert all(math.isnan(v) for v in replica_noise_scale(1.0, 1.0, 64, 1))


@pytest.mark.slow
def test_two_workers_match_one_worker_and_resume_exactly(tmp_path):
    """tiny_mlp (no BatchNorm) on digits: W = 2 gives the W = 1 trajectory (batch sizes, accuracy, gradient
    signals up to float summation order); a W = 2 run stopped after epoch 2 and resumed from rank 0's
    checkpoint gives the uninterrupted run's rows."""
    from trainables.ddp_local import run_local
    from trainables.loop import TrialLoop

    base = dict(arch="tiny_mlp", dataset="digits", method="adabatch", policy={"resize_every": 2}, threads=1)
    base.update(device="cpu", eval_batch_size=512, train_limit=512)
    loop = TrialLoop(TrialConfig(**base, epochs=4))
    one = [loop.run_epoch() for _ in range(4)]
    two = run_local(TrialConfig(**base, epochs=4, workers=2))
    assert [r["batch_size"] for r in two] == [r["batch_size"] for r in one] == [64, 64, 128, 128]
    assert [r["worker_batch_sizes"] for r in two] == ["32,32", "32,32", "64,64", "64,64"]
    for a, b in zip(one, two):
        assert abs(a["test_acc"] - b["test_acc"]) <= 0.01
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["workers"] == 2 and b["replica_grad_sqnorm"] > b["grad_norm"] ** 2  # replicas are noisier
    ckpt = str(tmp_path / "ckpt")
    first = run_local(TrialConfig(**base, epochs=2, workers=2), checkpoint_dir=ckpt)
    rest = run_local(TrialConfig(**base, epochs=4, workers=2), checkpoint_dir=ckpt)
    timing = {"epoch_time_s", "eval_time_s", "wall_time_s", "samples_per_s", "peak_mem_mb"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in first + rest]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in two]


@pytest.mark.slow
def test_gns_reads_the_replicas_as_its_two_batches():
    """tiny_mlp: gns at W = 2 (the two shards as the small batches, no extra pass) estimates the noise scale
    that W = 1's two-batch meter does with 2 micro-batches (the same halves of each global batch)."""
    from trainables.ddp_local import run_local
    from trainables.loop import TrialLoop

    base = dict(arch="tiny_mlp", dataset="digits", method="gns", threads=1, device="cpu", train_limit=512)
    base.update(eval_batch_size=512, epochs=2, policy={"micro_batches": 2, "cooldown": 5})
    loop = TrialLoop(TrialConfig(**base))
    one = [loop.run_epoch() for _ in range(2)]
    two = run_local(TrialConfig(**base, workers=2))
    assert [r["estimator"] for r in two] == ["noise_scale_replicas"] * 2
    for a, b in zip(one, two):
        assert math.isfinite(b["noise_scale"]) and b["noise_scale"] == pytest.approx(a["noise_scale"], rel=1e-3)


def test_a_gang_wider_than_the_ray_is_refused_before_trials_start():
    from orchestrator.runner import resolve_resources

    study = with_overrides(preset("demo"), workers_per_trial="tiny_cnn=2")
    assert resolve_resources(study, 0.0, cluster_cpus=2.0) == {"cpu": 1.0, "gpu": 0.0}
    with pytest.raises(ValueError, match="gang would wait forever"):
        resolve_resources(with_overrides(study, workers_per_trial="3"), 0.0, cluster_cpus=2.0)
    assert resolve_resources(with_overrides(study, workers_per_trial="3"), 0.0, autoscaling=True, cluster_cpus=2.0)


def test_batchnorm_setting_is_no_part_of_a_one_worker_trial():
    base = dict(arch="tiny_cnn", dataset="digits", method="fixed", epochs=3)
    assert TrialConfig(**base, batchnorm="per_worker").trial_id() == TrialConfig(**base).trial_id()
    two = TrialConfig(**base, workers=2)
    assert two.batchnorm == "global" and TrialConfig(**base, workers=2, batchnorm="per_worker").trial_id() != (
        two.trial_id()
    )


def _one_step(rank: int, port: int, out: str, mode: str) -> None:
    """Rank `rank` of 2: tiny_cnn's gradient on its half of one batch of 64, all-reduced by DDP."""
    import copy
    import os

    import torch.distributed as dist
    import torch.nn.functional as F

    from trainables.global_bn import to_global
    from trainables.models import build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 10, None)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    if rank == 0:
        ref = copy.deepcopy(model)
        F.cross_entropy(ref(x), y).backward()
    if mode == "global":
        to_global(model)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    F.cross_entropy(ddp(x[32 * rank : 32 * (rank + 1)]), y[32 * rank : 32 * (rank + 1)]).backward()
    if rank == 0:
        worst = max(
            ((a.grad - b.grad).norm() / a.grad.norm()).item() for a, b in zip(ref.parameters(), model.parameters())
        )
        with open(out, "w") as f:
            f.write(str(worst))
    dist.destroy_process_group()


@pytest.mark.slow
def test_global_batchnorm_gives_the_one_worker_gradient(tmp_path):
    """tiny_cnn at W = 2: with batchnorm=global the all-reduced gradient of one step is the one-worker
    gradient of the whole batch (to float rounding); with per_worker BatchNorm it is not."""
    import torch.multiprocessing as mp

    from trainables.ddp_local import _free_port

    worst = {}
    for mode in ("global", "per_worker"):
        out = str(tmp_path / mode)
        mp.spawn(_one_step, args=(_free_port(), out, mode), nprocs=2)
        worst[mode] = float(open(out).read())
    assert worst["global"] < 1e-4 < 1e-2 < worst["per_worker"], worst


def test_global_batchnorm_converts_torch_batchnorm_only():
    from trainables.global_bn import GlobalBatchNorm, to_global

    class WithAct(torch.nn.BatchNorm2d):  # a subclass that does more in its forward (timm's BatchNormAct2d)
        pass

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    keys = list(model.state_dict())
    assert to_global(model) == 1 and isinstance(model[1], GlobalBatchNorm) and list(model.state_dict()) == keys
    with pytest.raises(ValueError, match="per_worker"):
        to_global(torch.nn.Sequential(WithAct(4)))


def test_dry_run_shows_the_gangs(tmp_path, capsys):
    from orchestrator.run_grid import main

    argv = ["--preset", "demo", "--seeds", "0", "--methods", "fixed", "--workers-per-trial", "tiny_cnn=2"]
    assert main(argv + ["--results", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "gangs: 1 trial(s) run data-parallel, holding 3 slots" in out
    assert [line.split()[-1] for line in out.splitlines() if "tiny_cnn-digits" in line] == ["2"]
    assert "gang of" not in next(line for line in out.splitlines() if "tiny_mlp-digits" in line)


def test_a_dry_run_for_a_cluster_plans_gangs_wider_than_this_machine(capsys, tmp_path):
    from orchestrator.run_grid import main

    argv = ["--study", "paper", "--dry-run", "--workers-per-trial", "vit_b16=8,1", "--results", str(tmp_path)]
    assert main(argv + ["--gpus", "64"]) == 0  # a plan for 64 GPUs, not a run on this machine's CPUs
    out = capsys.readouterr().out
    assert "on 64 GPUs" in out and "gangs: 20 trial(s) run data-parallel" in out and "gang of 8" in out
    assert main(argv) == 2  # without --gpus the dry run plans this machine, where a gang of 8 does not fit
    assert "needs 8 CPUs at once" in capsys.readouterr().err
