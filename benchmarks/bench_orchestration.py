"""Orchestration: checkpoint and Ray report cost per epoch, and trials packed onto one device.

    PYTHONPATH=. python -m benchmarks.bench_orchestration [--device cuda] [--quick] [--no-ray]

1. Checkpoint size and `TrialLoop.save_checkpoint` time per architecture (no Ray): the state a
   trial writes every epoch (model, optimizer momentum, policy, RNG states, history). The
   momentum buffers are allocated as after the first step, so the size is that of a real run.
   With `--batch-curve-json` (a bench_batch result of the same machine) the save time is also put
   against the architecture's projected full-epoch time.
2. Ray overhead: one real study through `orchestrator.runner.run_plan` (local Ray); the trainable
   reports checkpoint-save and `tune.report` seconds per epoch, `runner.ray_overhead` sums them
   against the mean epoch (train + eval).
3. Packing: the same trials run one at a time vs several at once on one device (CPU: 2 trials,
   cpus_per_trial 2 vs 1 on a 2-CPU Ray; CUDA: 4 trials, gpus_per_trial 1 / 0.5 / 0.25). Reported:
   throughput (samples trained per second of wall time, whole study) relative to one at a time,
   the mean epoch time under packing relative to alone (timings under packing are not comparable),
   and whether the runs table recorded each arm's gpus_per_trial / cpus_per_trial.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import (
    DEFAULT_OUT,
    ROOT,
    Result,
    base_parser,
    header,
    loop_config,
    mean_call_time,
    resolve_device,
    resolve_threads,
    str_list,
)

CKPT_TARGET = 0.01  # report + checkpoint under 1% of an epoch


def checkpoint_cost(
    archs: list[str],
    device: str,
    threads: int | None,
    repeats: int,
    curve: dict[str, Any] | None,
    rows: list[dict[str, Any]],
) -> None:
    """Checkpoint bytes and save seconds for each architecture (appended to rows)."""
    import torch

    from trainables.loop import TrialLoop

    for arch in archs:
        loop = TrialLoop(loop_config(arch, "synthetic", device, threads, 32, 64, test_limit=32))
        for p in loop.params:  # the momentum state SGD holds after its first step
            loop.optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as d:
            seconds = mean_call_time(functools.partial(loop.save_checkpoint, d), "cpu", repeats, warmup=1)
            size = os.path.getsize(os.path.join(d, "state.pt"))
        row = {"arch": arch, "params": loop._numel, "checkpoint_mb": size / 2**20, "save_s": seconds}
        if curve and arch in curve:
            for b, epoch_s in curve[arch].items():
                row[f"fraction_of_full_epoch_B{b}"] = seconds / epoch_s
        rows.append(row)
        extra = "  ".join(
            f"{k.rsplit('_', 1)[1]}: {100 * v:.2f}% of a full epoch" for k, v in row.items() if k.startswith("fraction")
        )
        print(
            f"  checkpoint {arch:<16} {row['checkpoint_mb']:8.1f} MB  save {1e3 * seconds:8.1f} ms  {extra}", flush=True
        )
        del loop


def _full_epoch_times(path: str | None) -> dict[str, dict[int, float]] | None:
    """arch -> {smallest B: full-epoch s, largest B: full-epoch s} from a bench_batch JSON."""
    if not path:
        return None
    with open(path) as f:
        doc = json.load(f)
    out = {}
    for res in doc["numbers"]["archs"]:
        rows = res["rows"]
        if rows:
            out[res["arch"]] = {
                rows[0]["batch_size"]: rows[0]["full_epoch_s"],
                rows[-1]["batch_size"]: rows[-1]["full_epoch_s"],
            }
    return out


def _study(
    name: str,
    arch: str,
    dataset: str,
    trials: int,
    epochs: int,
    batch: int,
    train_limit: int,
    test_limit: int,
    resources: dict[str, float],
) -> Any:
    from orchestrator.studies import StudySpec

    return StudySpec(
        name=name,
        archs=(arch,),
        datasets=(dataset,),
        seeds=tuple(range(trials)),
        methods=("fixed",),
        epochs=epochs,
        loop={"train_limit": train_limit, "test_limit": test_limit, "threads": 1, "eval_batch_size": 1024},
        policy={"b0": batch},
        gpus_per_trial=resources["gpu"],
        cpus_per_trial=resources["cpu"],
        max_failures=0,
    )


def run_study(study: Any, results: str, resources: dict[str, float]) -> dict[str, Any]:
    """Run one study on the connected Ray; wall time, epoch rows, Ray overhead and the runs-table packing."""
    from orchestrator.runner import make_plan, ray_overhead, run_plan
    from orchestrator.store import ResultsStore

    plan = make_plan(study, results)
    t0 = time.perf_counter()
    report = run_plan(plan, results, resources, echo=False, verbose=0)
    wall = time.perf_counter() - t0
    store = ResultsStore(results, study.name)
    runs = store.read_runs()
    rows = [r for t in plan.trials for r in store.read_epochs(t.trial_id)]
    samples = sum(r["samples_per_s"] * r["epoch_time_s"] for r in rows)
    recorded = sorted({(r.get("gpus_per_trial"), r.get("cpus_per_trial")) for r in runs.values()}, key=str)
    return {
        "trials": len(plan.trials),
        "completed": sum(r["status"] == "completed" for r in runs.values()),
        "epochs": len(rows),
        "wall_s": wall,
        "samples": samples,
        "samples_per_wall_s": samples / wall,
        "mean_epoch_s": statistics.mean(r["epoch_time_s"] for r in rows),
        "mean_eval_s": statistics.mean(r["eval_time_s"] for r in rows),
        "ray_overhead": ray_overhead(report.grids),
        "runs_table_packing": recorded,
        "packing_recorded": recorded == [(resources["gpu"], resources["cpu"])] and len(runs) == len(plan.trials),
        "devices": sorted({str(r.get("device")) for r in runs.values()}),
    }


def ray_part(result: Result, gpu: bool, quick: bool, rounds: int) -> None:
    """Ray overhead and packing measurements on a local Ray started here (and shut down at the end)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if gpu:
        arch, dataset, batch, limit, test_limit, epochs = "resnet18", "synthetic", 128, 10240, 1024, 3
        arms = [{"cpu": 1.0, "gpu": 1.0}, {"cpu": 1.0, "gpu": 0.5}, {"cpu": 1.0, "gpu": 0.25}]
        trials, cpus, gpus = 4, min(os.cpu_count() or 4, 16), 1
    else:
        arch, dataset, batch, limit, test_limit, epochs = "tiny_cnn", "digits", 64, None, None, 4
        arms = [{"cpu": 2.0, "gpu": 0.0}, {"cpu": 1.0, "gpu": 0.0}]
        trials, cpus, gpus = 2, 2, 0
    if quick:
        limit, test_limit, epochs, batch = 128, 64, 2, 32
    result.doc["params"].update(
        ray={
            "arch": arch,
            "dataset": dataset,
            "batch_size": batch,
            "train_limit": limit,
            "test_limit": test_limit,
            "epochs": epochs,
            "trials": trials,
            "arms": arms,
            "ray_cpus": cpus,
            "ray_gpus": gpus,
            "rounds": rounds,
        }
    )
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    # address="local": always a fresh Ray of our own size, never a cluster someone else started here.
    ray.init(
        address="local",
        num_cpus=cpus,
        num_gpus=gpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    try:
        with tempfile.TemporaryDirectory(prefix="bench-orch-") as results:
            # Ray overhead per epoch: one trial alone on the device.
            one = run_study(
                _study("overhead", arch, dataset, 1, epochs + 1, batch, limit, test_limit, arms[0]), results, arms[0]
            )
            result.numbers["ray_overhead_study"] = one
            ov = one["ray_overhead"] or {}
            if ov:
                print(
                    f"  Ray overhead per epoch: checkpoint {1e3 * ov['ckpt_save_s']:.1f} ms + report "
                    f"{1e3 * ov['report_s']:.1f} ms = {100 * ov['fraction']:.2f}% of a {ov['epoch_s']:.2f} s epoch",
                    flush=True,
                )
            result.ratio(
                "ray_report_checkpoint_fraction",
                1 + ov["fraction"] if ov else None,
                f"1 + (checkpoint save + tune.report)/(train + eval) per epoch, {arch} on {dataset} "
                f"(epoch {ov.get('epoch_s', float('nan')):.2f} s)",
                target=f"<= {1 + CKPT_TARGET}",
                met=(ov["fraction"] <= CKPT_TARGET) if ov else None,
            )
            # Packing: the same trials per arm, arms alternating over rounds.
            per_arm: dict[str, list[dict[str, Any]]] = {}
            for r in range(rounds):
                for res in arms if r % 2 == 0 else list(reversed(arms)):
                    key = f"gpu{res['gpu']:g}_cpu{res['cpu']:g}"
                    study = _study(f"pack-{key}-r{r}", arch, dataset, trials, epochs, batch, limit, test_limit, res)
                    out = run_study(study, results, res)
                    out["resources"] = res
                    per_arm.setdefault(key, []).append(out)
                    print(
                        f"  packing {key}: {out['completed']}/{out['trials']} trials in {out['wall_s']:.1f} s, "
                        f"{out['samples_per_wall_s']:.0f} samples/s overall, mean epoch {out['mean_epoch_s']:.3f} s, "
                        f"runs table packing {out['runs_table_packing']} (recorded: {out['packing_recorded']})",
                        flush=True,
                    )
            result.numbers["packing"] = per_arm
            keys = list(per_arm)
            alone = keys[0]

            def med(key: str, field: str) -> float:
                return statistics.median(o[field] for o in per_arm[key])

            for key in keys[1:]:
                result.ratio(
                    f"packing_throughput_{key}_over_{alone}",
                    med(key, "samples_per_wall_s") / med(alone, "samples_per_wall_s"),
                    "samples trained per wall second (whole study, Ray start-up of trials included), "
                    "packed over one at a time",
                    target="> 1 to pack",
                )
                result.ratio(
                    f"packing_epoch_time_{key}_over_{alone}",
                    med(key, "mean_epoch_s") / med(alone, "mean_epoch_s"),
                    "mean epoch_time_s under packing over alone (why packed timings are not comparable)",
                    target="informational",
                )
            recorded = all(o["packing_recorded"] for outs in per_arm.values() for o in outs)
            result.numbers["runs_table_records_packing"] = recorded
            result.ratio(
                "runs_table_records_packing",
                1.0 if recorded else 0.0,
                "1 when every runs row holds its arm's gpus_per_trial and cpus_per_trial",
                target="1",
                met=recorded,
            )
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table; write the JSON result."""
    p = base_parser(__doc__)
    p.add_argument("--archs", type=str_list, default=None, help="architectures of the checkpoint measurement")
    p.add_argument("--no-ray", action="store_true", help="only the checkpoint measurement (no Ray)")
    p.add_argument("--rounds", type=int, default=1, help="packing rounds (arm order reversed every other round)")
    p.add_argument(
        "--batch-curve-json",
        default=None,
        help="a bench_batch result (same machine) to relate checkpoint time to full-epoch time; "
        "'latest': the newest batch_curve_<device>_*.json in --out, else under benchmarks/out/",
    )
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    threads = resolve_threads(args.threads, device)
    gpu = device == "cuda"
    paper = ["resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenetv3", "vit_b16"]
    archs = args.archs or (["tiny_cnn"] if args.quick else ["tiny_cnn"] + paper)
    repeats = args.repeats or (1 if args.quick else 3)
    curve_path = args.batch_curve_json
    if curve_path == "latest":
        # --out first, then anything under benchmarks/out/ (e.g. a carried earlier GPU call's results)
        pattern = f"batch_curve_{device}_*.json"
        found = sorted(glob.glob(os.path.join(args.out, pattern)), key=os.path.basename) or sorted(
            glob.glob(os.path.join(DEFAULT_OUT, "**", pattern), recursive=True), key=os.path.basename
        )
        curve_path = found[-1] if found else None
    result = Result(
        "orchestration",
        device,
        {
            "checkpoint_archs": archs,
            "repeats": repeats,
            "threads": threads,
            "batch_curve_json": curve_path,
            "quick": args.quick,
        },
    )
    print(header(result), flush=True)
    ckpt: list[dict[str, Any]] = []
    result.numbers["checkpoints"] = ckpt
    with result.written_on_interrupt(args.out):
        checkpoint_cost(archs, device, threads, repeats, _full_epoch_times(curve_path), ckpt)
        fractions = [v for r in ckpt for k, v in r.items() if k.startswith("fraction")]
        if fractions:
            worst = max(ckpt, key=lambda r: max((v for k, v in r.items() if k.startswith("fraction")), default=0))
            result.ratio(
                "checkpoint_save_fraction_of_full_epoch_max",
                1 + max(fractions),
                f"1 + (save_checkpoint seconds)/(projected full-epoch train seconds), worst arch and batch "
                f"size ({worst['arch']})",
                target=f"<= {1 + CKPT_TARGET}",
                met=max(fractions) <= CKPT_TARGET,
            )
        if not args.no_ray:
            ray_part(result, gpu, args.quick, rounds=args.rounds)
    path = result.write(args.out)
    result.print_ratios(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
