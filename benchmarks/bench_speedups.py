"""Faster where it is free: bf16 autocast, channels_last, fused SGD, cuDNN autotuning, torch.compile
(batch dimension dynamic) and CUDA graphs, each measured through the real `TrialLoop`.

    PYTHONPATH=. python -m benchmarks.bench_speedups [--device cuda] [--quick] [--arch resnet18]

Variants (TrialLoop config keys; `default` is the loop's "auto" settings for the device):
  plain           amp off, channels_last off, fused_sgd off, compile off
  bf16 / channels_last / fused_sgd   one knob on, the rest as plain
  default         amp/channels_last/fused_sgd "auto" (bf16 + channels_last + fused on CUDA; all off on CPU)
  cudnn_benchmark default + cudnn_benchmark=True (torch.backends.cudnn.benchmark)
  compile         default + compile=True (the loop marks the batch dimension dynamic)
  cudagraphs      default + compile="reduce-overhead" (torch.compile's CUDA-graph mode)

Phase 1 (compile and first-epoch cost): every variant trains two epochs at each batch size of
`--first-batch-sizes` (default: the DEBA ladder on CUDA, so the ~8 batch-size changes of a run are
all paid); first minus second epoch = the one-off cost of a new size (compilation, autotuning).
Phase 2 (steady state): `--repeats` rounds over all variants (order alternating) at each of
`--batch-sizes`; ratios are medians of per-round ratios. For compile: break-even epochs = total
one-off cost over the ladder / time saved per full 50,000-sample epoch.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from benchmarks.common import (
    CIFAR_TRAIN_SAMPLES,
    Result,
    alternating,
    base_parser,
    deba_ladder,
    header,
    int_list,
    loop_config,
    paired_ratio,
    resolve_device,
    resolve_threads,
    set_batch_size,
    str_list,
    summary,
)

PLAIN = {"amp": "off", "channels_last": False, "fused_sgd": False, "compile": False}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"config": PLAIN},
    "bf16": {"config": {**PLAIN, "amp": "bf16"}},
    "channels_last": {"config": {**PLAIN, "channels_last": True}},
    "fused_sgd": {"config": {**PLAIN, "fused_sgd": True}},
    "default": {"config": {}},
    "cudnn_benchmark": {"config": {"cudnn_benchmark": True}, "cuda_only": True},
    "compile": {"config": {"compile": True}},
    "cudagraphs": {"config": {"compile": "reduce-overhead"}, "cuda_only": True},
}
# Variants whose first epoch at a new batch size can cost more (compilation, graph capture, autotuning):
# phase 1 walks them through every size of --first-batch-sizes, the others through the first only.
LADDER_VARIANTS = frozenset({"default", "cudnn_benchmark", "compile", "cudagraphs"})


class Variant:
    """One TrialLoop built with a variant's settings, and its epochs."""

    def __init__(self, name: str, arch: str, device: str, threads: int | None, samples: int, batch: int) -> None:
        from trainables.loop import TrialLoop

        self.name = name
        self.spec = VARIANTS[name]
        cfg = loop_config(arch, "synthetic", device, threads, batch, samples, test_limit=128, **self.spec["config"])
        self.loop = TrialLoop(cfg)

    def epoch(self, batch: int) -> float:
        """Train one epoch at `batch`; the loop's training seconds."""
        set_batch_size(self.loop, batch)
        return self.loop.run_epoch()["epoch_time_s"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table; write the JSON result."""
    p = base_parser(__doc__)
    p.add_argument("--arch", default=None, help="architecture (default resnet18 on CUDA, tiny_cnn on CPU)")
    p.add_argument("--variants", type=str_list, default=None, help=f"subset of {', '.join(VARIANTS)}")
    p.add_argument("--batch-sizes", type=int_list, default=None, help="steady-state batch sizes")
    p.add_argument(
        "--first-batch-sizes",
        type=int_list,
        default=None,
        help="batch sizes of phase 1 (first-epoch cost); default: DEBA ladder on CUDA",
    )
    p.add_argument("--samples", type=int, default=None, help="training samples per epoch")
    p.add_argument(
        "--compile-cache",
        choices=("cold", "warm"),
        default="cold",
        help="cold (default): fresh, empty Inductor/Triton cache directories, as for the first trial of "
        "an arch on a node; warm: the machine's caches, as for later trials there",
    )
    args = p.parse_args(argv)
    cache_dir = None
    saved_env = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    if args.compile_cache == "cold":
        # Read by Inductor/Triton when they compile, so setting them before the first compile suffices.
        cache_dir = tempfile.mkdtemp(prefix="bench-compile-cache-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache_dir, "inductor")
        os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    device = resolve_device(args.device)
    threads = resolve_threads(args.threads, device)
    gpu = device == "cuda"
    if args.quick:
        arch, names, batches, firsts, samples, rounds = "tiny_cnn", ["plain", "bf16", "fused_sgd"], [32], [32], 128, 1
    elif gpu:
        arch, names, batches, firsts, samples, rounds = "resnet18", list(VARIANTS), [128, 512], deba_ladder(), 4096, 3
    else:
        arch, names, batches, firsts, samples, rounds = (
            "tiny_cnn",
            ["plain", "bf16", "channels_last", "fused_sgd", "compile"],
            [128],
            [64, 96],
            2048,
            3,
        )
    arch = args.arch or arch
    names = args.variants or names
    for n in names:
        if n not in VARIANTS:
            raise ValueError(f"variants: {n!r} is not one of {', '.join(VARIANTS)}")
        if VARIANTS[n].get("cuda_only") and not gpu:
            raise ValueError(f"variants: {n!r} needs --device cuda")
    if "plain" not in names:
        names = ["plain"] + names
    batches = args.batch_sizes or batches
    firsts = args.first_batch_sizes or firsts
    samples = args.samples or samples
    rounds = args.repeats or rounds
    result = Result(
        "speedups",
        device,
        {
            "arch": arch,
            "variants": names,
            "batch_sizes": batches,
            "first_batch_sizes": firsts,
            "samples": samples,
            "rounds": rounds,
            "compile_cache": args.compile_cache,
            "threads": threads,
            "dataset": "synthetic",
            "quick": args.quick,
        },
    )
    print(header(result), flush=True)
    first: dict[str, list[dict[str, float]]] = {}
    errors: dict[str, str] = {}
    times: dict[int, dict[str, list[float]]] = {}
    result.numbers.update(first_epochs=first, errors=errors, steady_times=times)
    with result.written_on_interrupt(args.out):
        variants: dict[str, Variant] = {}
        # Phase 1: first and second epoch at each new batch size (compilation / autotuning paid once per size).
        for n in names:
            try:
                v = Variant(n, arch, device, threads, samples, batches[0])
                rows1 = []
                # The eager knobs pay nothing per new size beyond what "default" pays: one size is enough.
                for b in firsts if n in LADDER_VARIANTS else firsts[:1]:
                    t1, t2 = v.epoch(b), v.epoch(b)
                    rows1.append({"batch_size": b, "first_s": t1, "second_s": t2, "extra_s": t1 - t2})
            except Exception as exc:  # a knob that fails here (e.g. no compiler for torch.compile) is reported
                if n == "plain":
                    raise
                errors[n] = f"{type(exc).__name__}: {exc}"[-2000:]
                print(f"  {n:<16} FAILED: {errors[n].splitlines()[0][:300]}", flush=True)
                continue
            variants[n], first[n] = v, rows1
            total = sum(r["extra_s"] for r in rows1)
            print(
                f"  {n:<16} one-off cost over batch sizes {[r['batch_size'] for r in rows1]}: {total:7.2f} s "
                f"(first epoch {rows1[0]['first_s']:.2f} s vs {rows1[0]['second_s']:.2f} s)",
                flush=True,
            )
        names = list(variants)
        steps = {b: variants["plain"].loop.train_loader.num_batches(b) for b in set(batches) | set(firsts)}
        # Phase 2: steady state, all variants per round.
        for b in batches:
            times[b] = {n: [] for n in names}
            for n in alternating(names, rounds):
                times[b][n].append(variants[n].epoch(b))
    rows = []
    for b in batches:
        for n in names:
            t = summary(times[b][n])
            vs_plain = paired_ratio(times[b]["plain"], times[b][n])
            vs_default = paired_ratio(times[b]["default"], times[b][n]) if "default" in names else None
            rows.append(
                {
                    "variant": n,
                    "batch_size": b,
                    "train_s": t,
                    "step_ms": 1e3 * t["median"] / steps[b],
                    "samples_per_s": steps[b] * b / t["median"],
                    "speedup_vs_plain": vs_plain,
                    "speedup_vs_default": vs_default,
                }
            )
            print(
                f"  B={b:<5} {n:<16} step {rows[-1]['step_ms']:8.2f} ms  {rows[-1]['samples_per_s']:>9.0f} samples/s"
                f"  x{vs_plain['value']:.3f} vs plain"
                + (f"  x{vs_default['value']:.3f} vs default" if vs_default else ""),
                flush=True,
            )
    result.numbers["steady"] = rows
    base = "default" if "default" in names else "plain"
    for n in names:
        if n in ("plain", base):
            continue
        vals = [r[f"speedup_vs_{base}"]["value"] for r in rows if r["variant"] == n]
        result.ratio(
            f"speedup_{n}_vs_{base}",
            summary(vals)["median"],
            f"({base} epoch time)/({n} epoch time), median over batch sizes {batches}",
            target="> 1 to keep it on",
            met=summary(vals)["median"] > 1.0,
            by_batch={b: round(v, 4) for b, v in zip(batches, vals)},
        )
    for n in ("compile", "cudagraphs"):
        if n not in names:
            continue
        ref_extra = {r["batch_size"]: r["extra_s"] for r in first[base]}
        one_off = sum(r["extra_s"] - ref_extra.get(r["batch_size"], 0.0) for r in first[n])
        b = batches[-1]
        ref = summary(times[b][base])["median"] / steps[b]
        mine = summary(times[b][n])["median"] / steps[b]
        saved = (ref - mine) * (CIFAR_TRAIN_SAMPLES // b)
        result.numbers[f"{n}_break_even"] = {
            "one_off_s": one_off,
            "batch_size": b,
            "saved_per_full_epoch_s": saved,
            "break_even_epochs": one_off / saved if saved > 0 else None,
        }
        result.ratio(
            f"{n}_break_even_epochs",
            one_off / saved if saved > 0 else None,
            f"(compile + recompile cost over {len(firsts)} batch sizes, beyond {base}'s first-epoch cost)/"
            f"(time saved per 50k-sample epoch at B={b})",
            target="< 100 (a study run's epochs)",
            met=(saved > 0 and one_off / saved < 100),
        )
    if not gpu:
        result.note(
            "CPU run: bf16/channels_last/fused SGD matter on GPUs; the CPU numbers only show that the "
            "knobs run and what they cost on this CPU"
        )
    path = result.write(args.out)
    if cache_dir:
        shutil.rmtree(cache_dir, ignore_errors=True)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result.print_ratios(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
