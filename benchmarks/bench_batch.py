"""Batch-size curve: time per epoch, samples/s and MFU vs batch size for each architecture.

    PYTHONPATH=. python -m benchmarks.bench_batch [--device cuda] [--quick] [--archs resnet18,vit_b16]

The paper's speedup mechanism: a larger batch uses the accelerator better, so an epoch takes
less time. Batch sizes are the ones a DEBA run visits (64, 96, 144, 216, 324, 486, 729, 1024 with
the default policy options). Per architecture one real `TrialLoop` (synthetic CIFAR-shaped data,
the loop's default speed settings for the device) runs one warm-up epoch at every batch size, then
`--repeats` rounds over all batch sizes (interleaved, so every size sees the same machine load);
the numbers are the loop's own `epoch_time_s` (training only, device-synchronised).

Reported per (arch, B): train seconds for the benchmark's epoch, samples/s, projected seconds for a
full 50,000-sample epoch (50000 // B steps at the measured step time), forward FLOPs per sample
(`model_flops_per_sample`), MFU = 3 x FLOPs x samples/s / peak (peak: `--peak-tflops`, default
the device's dense bf16 peak; none on CPU), peak memory, and the speedup over B=64.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmarks.common import (
    CIFAR_TRAIN_SAMPLES,
    Result,
    base_parser,
    deba_ladder,
    default_peak_tflops,
    header,
    int_list,
    loop_config,
    mfu,
    resolve_device,
    resolve_threads,
    set_batch_size,
    str_list,
    summary,
)

PAPER_ARCHS = ("resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenetv3", "vit_b16")


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def curve(
    arch: str,
    device: str,
    threads: int | None,
    samples: int,
    batches: list[int],
    rounds: int,
    peak: float | None,
    deadline: float,
    res: dict[str, Any],
) -> None:
    """Measure one architecture over the batch sizes into `res`; no new round starts past `deadline`
    (monotonic s). Raw epoch times land in res["times"] as they are measured."""
    import torch

    from trainables.loop import TrialLoop
    from trainables.models import model_flops_per_sample

    flops = model_flops_per_sample(arch, 10)
    loop = TrialLoop(loop_config(arch, "synthetic", device, threads, batches[0], samples, test_limit=128))
    sizes = [b for b in batches if b <= loop.n_train]
    times: dict[int, list[float]] = {b: [] for b in sizes}
    mem: dict[int, float] = {}
    oom: list[int] = []
    res.update(
        arch=arch,
        fwd_flops_per_sample=flops,
        params=loop._numel,
        train_samples=loop.n_train,
        amp=str(loop.amp_dtype),
        channels_last=loop.channels_last,
        times=times,
        oom_batch_sizes=oom,
        rows=[],
    )

    def epoch(b: int) -> float | None:
        set_batch_size(loop, b)
        try:
            rec = loop.run_epoch()
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            torch.cuda.empty_cache()
            oom.append(b)
            return None
        mem[b] = max(mem.get(b, 0.0), rec["peak_mem_mb"])
        return rec["epoch_time_s"]

    for b in sizes:  # warm-up round
        epoch(b)
    sizes = [b for b in sizes if b not in oom]
    done_rounds = 0
    for r in range(rounds):
        if r > 0 and time.monotonic() > deadline:
            break
        for b in sizes if r % 2 == 0 else list(reversed(sizes)):
            t = epoch(b)
            if t is not None:
                times[b].append(t)
        done_rounds += 1
    rows = []
    for b in sizes:
        if not times[b]:
            continue
        steps = loop.train_loader.num_batches(b)
        t = summary(times[b])["median"]
        sps = steps * b / t
        rows.append(
            {
                "batch_size": b,
                "steps": steps,
                "train_s": summary(times[b]),
                "samples_per_s": sps,
                "step_ms": 1e3 * t / steps,
                "full_epoch_s": (CIFAR_TRAIN_SAMPLES // b) * t / steps,
                "mfu": mfu(flops, sps, peak),
                "peak_mem_mb": mem.get(b),
            }
        )
    base = rows[0]["samples_per_s"] if rows and rows[0]["batch_size"] == batches[0] else None
    for row in rows:
        row["speedup_vs_first"] = row["samples_per_s"] / base if base else None
    res.update(rounds=done_rounds, rows=rows)


def _measure(
    archs: list[str],
    samples: int | None,
    batches: list[int],
    rounds: int,
    budget: float,
    device: str,
    threads: int | None,
    peak: float | None,
    out: list[dict[str, Any]],
) -> None:
    """Measure each architecture's curve into `out` (printed as it goes)."""
    for arch in archs:
        arch_samples, arch_batches = samples, batches
        if arch_samples is None:  # CPU defaults
            small = arch in ("tiny_cnn", "tiny_mlp")
            arch_samples = 2048 if small else 432
            arch_batches = batches if small else [b for b in batches if b <= 216]
        t0 = time.monotonic()
        res: dict[str, Any] = {"arch": arch}
        out.append(res)
        curve(arch, device, threads, arch_samples, arch_batches, rounds, peak, t0 + budget, res)
        res["seconds"] = time.monotonic() - t0
        print(
            f"{arch}: {res['fwd_flops_per_sample'] / 1e9 if res['fwd_flops_per_sample'] else float('nan'):.3f} "
            f"GFLOP/sample fwd, {res['params'] / 1e6:.1f}M params, amp {res['amp']}, {res['rounds']} round(s), "
            f"{res['seconds']:.0f} s" + (f", OOM at {res['oom_batch_sizes']}" if res["oom_batch_sizes"] else "")
        )
        for row in res["rows"]:
            m = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
            print(
                f"  B={row['batch_size']:<5} {row['samples_per_s']:>9.0f} samples/s  step {row['step_ms']:8.2f} ms  "
                f"full epoch {row['full_epoch_s']:8.2f} s  MFU {m:>6}  x{row['speedup_vs_first'] or float('nan'):.2f}"
                f"  mem {row['peak_mem_mb'] or 0:.0f} MB",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table; write the JSON result."""
    p = base_parser(__doc__)
    p.add_argument(
        "--archs",
        type=str_list,
        default=None,
        help="architectures (default: the six study archs on CUDA; tiny_cnn, mobilenetv3 on CPU)",
    )
    p.add_argument("--batch-sizes", type=int_list, default=None, help="batch sizes (default: the DEBA ladder)")
    p.add_argument("--samples", type=int, default=None, help="training samples per benchmark epoch")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="soft time budget per architecture: no new round starts after it (>= 1 round always)",
    )
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    threads = resolve_threads(args.threads, device)
    gpu = device == "cuda"
    ladder = deba_ladder()
    if args.quick:
        archs, batches, samples, rounds, budget = ["tiny_cnn"], [64, 96], 192, 1, 60.0
    elif gpu:
        archs, batches, samples, rounds, budget = list(PAPER_ARCHS), ladder, 4096, 3, 12.0
    else:
        # One CPU thread: ~1,300 samples/s for tiny_cnn, ~100 for mobilenetv3, ~20 for resnet18
        # (measured), so the study archs get the bottom of the ladder on a few hundred samples.
        archs, batches, samples, rounds, budget = ["tiny_cnn", "mobilenetv3"], ladder, None, 2, 120.0
    archs = args.archs or archs
    batches = args.batch_sizes or batches
    rounds = args.repeats or rounds
    budget = args.budget_s or budget
    peak = args.peak_tflops
    if peak is None and gpu:
        import torch

        peak = default_peak_tflops(torch.cuda.get_device_name(0))
    result = Result(
        "batch_curve",
        device,
        {
            "archs": archs,
            "batch_sizes": batches,
            "samples": args.samples or samples,
            "rounds": rounds,
            "budget_s_per_arch": budget,
            "peak_tflops": peak,
            "threads": threads,
            "dataset": "synthetic",
            "quick": args.quick,
        },
    )
    print(header(result) + f", peak {peak} TFLOP/s", flush=True)
    out: list[dict[str, Any]] = []
    result.numbers["archs"] = out
    with result.written_on_interrupt(args.out):
        _measure(archs, args.samples or samples, batches, rounds, budget, device, threads, peak, out)
    for res in out:
        rows = res.get("rows") or []
        if len(rows) >= 2 and rows[0]["batch_size"] == batches[0]:
            result.ratio(
                f"speedup_{res['arch']}_B{rows[-1]['batch_size']}_over_B{rows[0]['batch_size']}",
                rows[-1]["samples_per_s"] / rows[0]["samples_per_s"],
                "samples/s at the largest measured batch size over samples/s at the smallest",
                target="> 1 (the paper's mechanism)",
                met=rows[-1]["samples_per_s"] > rows[0]["samples_per_s"],
            )
    if not gpu:
        result.note("CPU run: MFU needs --peak-tflops; study archs measured only at the bottom of the ladder")
    path = result.write(args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
