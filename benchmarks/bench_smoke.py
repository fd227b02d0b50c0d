"""Smoke test of the six paper architectures at B = 64 and B = 1024 with the loop's device defaults.

    PYTHONPATH=. python -m benchmarks.bench_smoke [--device cuda] [--quick] [--epoch-times FILE]

Per architecture one real `TrialLoop` (synthetic CIFAR-shaped data, fixed policy, the loop's "auto"
speed settings: bf16 autocast + channels_last + fused SGD on CUDA) trains, at each batch size, one
warm-up epoch (CUDA/cuDNN start-up, allocator growth) and `--repeats` timed epochs. Reported per
(arch, B): whether every loss was finite, the loop's status, the first and the median timed epoch
time, samples/s, step time, the projected full 50,000-sample epoch, the evaluation time projected to
10,000 test samples, MFU (3 x forward FLOPs x samples/s / dense bf16 peak) and peak memory. An
out-of-memory batch size is recorded, not fatal.

With `--epoch-times FILE` the B = 64 rows are also written as the per-arch GPU epoch times that the
plan's cost model reads (orchestrator/epoch_times.py; run_gpu.sh step 5 writes them from this
result with `python -m benchmarks.gpu_visit epoch-times`).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from benchmarks.bench_batch import PAPER_ARCHS, _is_oom
from benchmarks.common import (
    CIFAR_TRAIN_SAMPLES,
    Result,
    base_parser,
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

CIFAR_TEST_SAMPLES = 10_000  # a full CIFAR test set, for the evaluation projection


def smoke_arch(
    arch: str,
    device: str,
    threads: int | None,
    samples: int,
    test_samples: int,
    batches: list[int],
    repeats: int,
    peak: float | None,
    res: dict[str, Any],
) -> None:
    """Train `arch` at each batch size into `res` (rows appended as they are measured)."""
    import torch

    from trainables.loop import TrialLoop
    from trainables.models import model_flops_per_sample

    flops = model_flops_per_sample(arch, 10)
    t0 = time.perf_counter()
    loop = TrialLoop(loop_config(arch, "synthetic", device, threads, batches[0], samples, test_limit=test_samples))
    rows: list[dict[str, Any]] = []
    res.update(
        arch=arch,
        fwd_flops_per_sample=flops,
        params=loop._numel,
        build_s=time.perf_counter() - t0,
        train_samples=loop.n_train,
        test_samples=loop.n_test,
        amp=str(loop.amp_dtype),
        channels_last=loop.channels_last,
        fused_sgd=bool(loop._fused),
        rows=rows,
    )
    for b in batches:
        if loop.done:  # diverged at an earlier batch size: the loop refuses more epochs
            rows.append({"batch_size": b, "skipped": f"loop {loop.status}"})
            continue
        if b > loop.n_train:
            rows.append({"batch_size": b, "skipped": f"B > {loop.n_train} training samples"})
            continue
        set_batch_size(loop, b)
        recs: list[dict[str, Any]] = []
        row: dict[str, Any] = {"batch_size": b, "epoch_s": []}
        rows.append(row)
        try:
            for _ in range(1 + repeats):  # the first is the warm-up
                recs.append(loop.run_epoch())
                if loop.done:
                    break
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            torch.cuda.empty_cache()
            row["oom"] = True
        losses = [r["train_loss"] for r in recs]
        row.update(
            epochs=len(recs),
            losses=losses,
            finite=bool(recs) and all(math.isfinite(x) for x in losses),
            status=loop.status,
            first_epoch_s=recs[0]["epoch_time_s"] if recs else None,
            epoch_s=[r["epoch_time_s"] for r in recs[1:]],
            peak_mem_mb=max((r["peak_mem_mb"] for r in recs), default=None),
        )
        timed = recs[1:] or recs  # one epoch only (diverged, or no repeats): the warm-up is all there is
        if timed and not row.get("oom"):
            steps = loop.train_loader.num_batches(b)
            t = summary(r["epoch_time_s"] for r in timed)["median"]
            ev = summary(r["eval_time_s"] for r in timed)["median"]
            sps = steps * b / t
            row.update(
                steps=steps,
                timed_from_warmup=not recs[1:],
                train_s=t,
                samples_per_s=sps,
                step_ms=1e3 * t / steps,
                full_epoch_s=(CIFAR_TRAIN_SAMPLES // b) * t / steps,
                eval_s=ev,
                full_eval_s=ev * CIFAR_TEST_SAMPLES / loop.n_test,
                mfu=mfu(flops, sps, peak),
            )
    del loop
    if device == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    """Run the smoke test; print one line per (arch, B); write the JSON result."""
    p = base_parser(__doc__)
    p.add_argument("--archs", type=str_list, default=None, help="architectures (default: the six paper archs)")
    p.add_argument("--batch-sizes", type=int_list, default=None, help="batch sizes (default 64,1024)")
    p.add_argument("--samples", type=int, default=None, help="training samples per epoch (default 4096 on CUDA)")
    p.add_argument("--test-samples", type=int, default=None, help="evaluation samples (default 1024 on CUDA)")
    p.add_argument("--epoch-times", default=None, metavar="FILE", help="also write the B=64 epoch times here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    threads = resolve_threads(args.threads, device)
    gpu = device == "cuda"
    if args.quick:  # plumbing: every paper arch, one epoch of 4 images per B (vit_b16 still sees 224x224)
        archs, batches, samples, test_samples, repeats = list(PAPER_ARCHS), [2, 4], 4, 2, 0
    elif gpu:
        archs, batches, samples, test_samples, repeats = list(PAPER_ARCHS), [64, 1024], 4096, 1024, 2
    else:  # a CPU trains resnet50 at ~10 samples/s on one thread: the bottom of the range only
        archs, batches, samples, test_samples, repeats = list(PAPER_ARCHS), [16, 64], 64, 64, 1
    archs = args.archs or archs
    batches = args.batch_sizes or batches
    samples = args.samples or samples
    test_samples = args.test_samples or test_samples
    repeats = repeats if args.repeats is None else args.repeats
    peak = args.peak_tflops
    if peak is None and gpu:
        import torch

        peak = default_peak_tflops(torch.cuda.get_device_name(0))
    result = Result(
        "smoke",
        device,
        {
            "archs": archs,
            "batch_sizes": batches,
            "samples": samples,
            "test_samples": test_samples,
            "repeats": repeats,
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
        for arch in archs:
            res: dict[str, Any] = {"arch": arch}
            out.append(res)
            t0 = time.perf_counter()
            try:
                smoke_arch(arch, device, threads, samples, test_samples, batches, repeats, peak, res)
            except Exception as exc:  # one arch failing must not hide the others
                res["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                print(f"{arch}: FAILED {res['error']}", flush=True)
            res["seconds"] = time.perf_counter() - t0
            for row in res.get("rows", []):
                print(_line(arch, row), flush=True)
    _ratios(result, out, batches)
    path = result.write(args.out)
    result.print_ratios(path)
    if args.epoch_times:
        from benchmarks.gpu_visit import write_epoch_times_from_smoke

        print(f"epoch times: {write_epoch_times_from_smoke(result.doc, args.epoch_times)}")
    return 0


def _line(arch: str, row: dict[str, Any]) -> str:
    b = row["batch_size"]
    if "skipped" in row:
        return f"  {arch:<16} B={b:<5} skipped: {row['skipped']}"
    if row.get("oom"):
        return f"  {arch:<16} B={b:<5} out of memory after {row['epochs']} epoch(s)"
    m = f"{100 * row['mfu']:.1f}%" if row.get("mfu") is not None else "n/a"
    return (
        f"  {arch:<16} B={b:<5} loss {' '.join(f'{x:.3f}' for x in row['losses'])} "
        f"({'finite' if row['finite'] else 'NOT FINITE'}, {row['status']})  "
        f"first {row['first_epoch_s']:.2f} s  epoch {row.get('train_s', float('nan')):.3f} s  "
        f"{row.get('samples_per_s', float('nan')):.0f} samples/s  "
        f"full epoch {row.get('full_epoch_s', float('nan')):.2f} s"
        f"  MFU {m}  mem {row['peak_mem_mb'] or 0:.0f} MB"
    )


def _ratios(result: Result, out: list[dict[str, Any]], batches: list[int]) -> None:
    rows = [r for res in out for r in res.get("rows", []) if "skipped" not in r]
    failed = [res["arch"] for res in out if "error" in res]
    ok = not failed and bool(rows) and all(r["finite"] and not r.get("oom") for r in rows)
    result.numbers["failed_archs"] = failed
    result.ratio(
        "smoke_all_finite",
        1.0 if ok else 0.0,
        f"1 when every arch trained at every batch size ({', '.join(map(str, batches))}) with finite losses, "
        "no error and no out-of-memory",
        target="1",
        met=ok,
    )
    for res in out:
        got = {r["batch_size"]: r for r in res.get("rows", []) if r.get("samples_per_s")}
        lo, hi = min(batches), max(batches)
        if lo in got and hi in got and lo != hi:
            value = got[hi]["samples_per_s"] / got[lo]["samples_per_s"]
            result.ratio(
                f"smoke_speedup_{res['arch']}_B{hi}_over_B{lo}",
                value,
                "samples/s at the largest batch size over the smallest (one timed epoch each; the batch "
                "curve, benchmark 3, measures the whole ladder)",
                target="> 1 (the paper's mechanism)",
                met=value > 1,
            )


if __name__ == "__main__":
    sys.exit(main())
