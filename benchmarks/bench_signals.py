"""Signal overhead: epoch time with DEBA's gradient signals vs the same epochs without them.

    PYTHONPATH=. python -m benchmarks.bench_signals [--device cuda] [--quick]

What "the signals" cost in the real loop (trainables/loop.py): with signal_source="last_step" one
`grad_moments` reduction over the last step's gradients per epoch (plus the policy's pure-Python
step); with "epoch_mean" additionally one `EpochGradAccumulator.add` (a foreach add over every
parameter) per training step. Both arms run the real `TrialLoop.run_epoch` on the same loop,
alternating epoch by epoch at the same batch size; the "off" arm replaces `grad_moments` by a
constant, drops the accumulator and skips the policy's step for that epoch (everything else,
including the per-epoch host sync of loss and accuracy, is identical).

Two estimates per (arch, batch size, source):
- `ratio_end_to_end`: median over adjacent pairs of (epoch wall time on) / (epoch wall time off);
  honest but noisy at the 1% level on a shared CPU.
- `fraction_direct`: the signal work timed directly (many back-to-back calls, device-synchronised)
  divided by the off-arm epoch time, and `fraction_full_epoch`: the same cost against a projected
  full 50,000-sample CIFAR epoch at that batch size (the last_step cost is per epoch, so the small
  benchmark epochs overstate it).
Target: on/off <= 1.01 (the paper's < 1% claim), judged on the full-epoch projection.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator
from typing import Any

from benchmarks.common import (
    CIFAR_TRAIN_SAMPLES,
    Result,
    alternating,
    base_parser,
    header,
    int_list,
    loop_config,
    mean_call_time,
    paired_ratio,
    resolve_device,
    resolve_threads,
    run_epoch_timed,
    str_list,
    summary,
)

TARGET = 1.01


@contextlib.contextmanager
def signals_off(loop: Any) -> Iterator[None]:
    """Run the loop's next epochs without gradient signals (see the module docstring)."""
    import torch

    import trainables.loop as loop_module

    const = torch.tensor([float(loop._numel), 0.0, 1.0], dtype=torch.float64, device=loop.device)
    saved_moments, saved_acc = loop_module.grad_moments, loop.accumulator
    policy = loop.policy
    batch = policy.batch_size

    def no_moments(tensors: Any, numel: int | None = None) -> torch.Tensor:
        return const

    def no_step(epoch: int, **_: Any) -> dict[str, Any]:
        policy.epoch = epoch  # keep the policy's epoch count in line with the loop's
        nan = float("nan")
        return {
            "decision": "hold",
            "batch_size": batch,
            "confidence": nan,
            "grad_norm_variation": nan,
            "loss_variation": nan,
            "in_cooldown": False,
        }

    loop_module.grad_moments = no_moments
    loop.accumulator = None
    policy.step = no_step
    try:
        yield
    finally:
        loop_module.grad_moments = saved_moments
        loop.accumulator = saved_acc
        del policy.step  # the instance attribute shadowed the class's method


def direct_costs(loop: Any, calls: int) -> dict[str, float]:
    """Seconds of one grad_moments over the live gradients, one policy step, one accumulator add."""
    from trainables.grad_stats import EpochGradAccumulator, grad_moments

    grads = [p.grad for p in loop.params if p.grad is not None]
    numel = loop._numel
    moments_s = mean_call_time(lambda: grad_moments(grads, numel=numel).tolist(), loop.device, calls)
    policy = copy.deepcopy(loop.policy)
    epoch = [policy.epoch]

    def step() -> None:
        epoch[0] += 1
        policy.step(epoch=epoch[0], train_loss=1.0 + 0.01 * (epoch[0] % 7), grad_var=1e-6, grad_norm=1.0)

    step_s = mean_call_time(step, "cpu", calls)
    acc = EpochGradAccumulator(loop.params)
    add_s = mean_call_time(acc.add, loop.device, calls)
    return {"grad_moments_s": moments_s, "policy_step_s": step_s, "accumulator_add_s": add_s}


def measure(
    arch: str,
    dataset: str,
    batch_size: int,
    source: str,
    train_limit: int | None,
    device: str,
    threads: int | None,
    pairs: int,
    calls: int,
) -> dict[str, Any]:
    """Alternate on/off epochs on one loop; return both arms' times, the ratios and the direct costs."""
    from trainables.loop import TrialLoop

    cfg = loop_config(
        arch,
        dataset,
        device,
        threads,
        batch_size,
        train_limit,
        test_limit=128,
        policy={"b0": batch_size, "signal_source": source},
    )
    loop = TrialLoop(cfg)
    run_epoch_timed(loop)  # warm-up (allocator, kernels, first-touch of the data)
    times: dict[str, list[float]] = {"on": [], "off": []}
    train: dict[str, list[float]] = {"on": [], "off": []}
    steps = loop.train_loader.num_batches(min(batch_size, loop.n_train))
    for arm in alternating(["on", "off"], 2 * pairs):
        ctx = signals_off(loop) if arm == "off" else contextlib.nullcontext()
        with ctx:
            rec = run_epoch_timed(loop)
        times[arm].append(rec["total_s"])
        train[arm].append(rec["epoch_time_s"])
    # alternating() gives on,off,off,on,...: pair the k-th "on" with the k-th "off" epoch.
    ratio = paired_ratio(times["on"], times["off"])
    costs = direct_costs(loop, calls)
    per_epoch = costs["grad_moments_s"] + costs["policy_step_s"]
    if source == "epoch_mean":
        per_epoch += steps * costs["accumulator_add_s"]
    off = summary(times["off"])["median"]
    off_train = summary(train["off"])["median"]
    step_s = off_train / steps
    full_steps = CIFAR_TRAIN_SAMPLES // batch_size
    full_cost = costs["grad_moments_s"] + costs["policy_step_s"]
    if source == "epoch_mean":
        full_cost += full_steps * costs["accumulator_add_s"]
    return {
        "arch": arch,
        "dataset": dataset,
        "batch_size": batch_size,
        "signal_source": source,
        "train_samples": loop.n_train,
        "steps_per_epoch": steps,
        "params": loop._numel,
        "epoch_s_on": summary(times["on"]),
        "epoch_s_off": summary(times["off"]),
        "train_s_on": summary(train["on"]),
        "train_s_off": summary(train["off"]),
        "step_s": step_s,
        "ratio_end_to_end": ratio,
        **costs,
        "signal_s_per_epoch": per_epoch,
        "fraction_direct": per_epoch / off,
        "fraction_full_epoch": full_cost / (full_steps * step_s),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table; write the JSON result."""
    p = base_parser(__doc__)
    p.add_argument("--archs", type=str_list, default=None, help="architectures (default per device)")
    p.add_argument("--batch-sizes", type=int_list, default=None, help="batch sizes (default per device)")
    p.add_argument(
        "--sources", type=str_list, default=["last_step", "epoch_mean"], help="signal sources: last_step, epoch_mean"
    )
    p.add_argument("--train-limit", type=int, default=None, help="training samples per epoch (default per device)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    threads = resolve_threads(args.threads, device)
    gpu = device == "cuda"
    if args.quick:
        archs, batches, limit, pairs, calls, dataset = ["tiny_cnn"], [32], 128, 1, 3, "digits"
    elif gpu:
        archs, batches, limit, pairs, calls, dataset = ["resnet18", "vit_b16"], [128, 1024], 4096, 2, 20, "synthetic"
    else:
        # CPU sizes for a shared 2-core machine: epochs of seconds. resnet18 shows the cost on a
        # study-sized parameter count (11M); tiny_cnn on digits gives many pairs cheaply.
        archs, batches, limit, pairs, calls, dataset = ["tiny_cnn", "resnet18"], [64, 256], None, 3, 10, "digits"
    archs = args.archs or archs
    batches = args.batch_sizes or batches
    pairs = args.repeats or pairs
    sources = args.sources
    for s in sources:
        if s not in ("last_step", "epoch_mean"):
            raise ValueError(f"sources: {s!r} is not one of last_step, epoch_mean")
    result = Result(
        "signals",
        device,
        {
            "archs": archs,
            "batch_sizes": batches,
            "sources": sources,
            "train_limit": args.train_limit or limit,
            "pairs": pairs,
            "calls": calls,
            "threads": threads,
            "dataset": dataset,
            "quick": args.quick,
        },
    )
    print(header(result), flush=True)
    rows: list[dict[str, Any]] = []
    result.numbers["rows"] = rows
    with result.written_on_interrupt(args.out):
        for arch in archs:
            _measure_arch(arch, args, dataset, batches, limit, sources, device, threads, pairs, calls, gpu, rows)
    _ratios(result, rows, sources)
    if not gpu:
        result.note("CPU run; the GPU target (<= 1.01) is judged on the GPU run")
    path = result.write(args.out)
    result.print_ratios(path)
    return 0


def _measure_arch(
    arch: str,
    args: Any,
    dataset: str,
    batches: list[int],
    limit: int | None,
    sources: list[str],
    device: str,
    threads: int | None,
    pairs: int,
    calls: int,
    gpu: bool,
    rows: list[dict[str, Any]],
) -> None:
    arch_limit = args.train_limit or limit
    arch_batches = batches
    if not gpu and not args.quick and arch not in ("tiny_cnn", "tiny_mlp"):
        # ~20 samples/s for resnet18 on one CPU thread: two steps per epoch at the smallest size.
        arch_limit, arch_batches = args.train_limit or 128, [min(batches)]
    for b in arch_batches:
        for source in sources:
            row = measure(arch, dataset, b, source, arch_limit, device, threads, pairs, calls)
            rows.append(row)
            r = row["ratio_end_to_end"]
            print(
                f"{arch:>12} B={b:<5} {source:<10} epoch on/off {r['value']:.4f} "
                f"[{r['q1']:.4f}, {r['q3']:.4f}] n={r['n']}  direct {100 * row['fraction_direct']:.3f}% "
                f"of this epoch, {100 * row['fraction_full_epoch']:.3f}% of a full 50k epoch "
                f"(grad_moments {1e3 * row['grad_moments_s']:.2f} ms, add {1e3 * row['accumulator_add_s']:.2f} "
                f"ms/step, step {1e3 * row['step_s']:.1f} ms)",
                flush=True,
            )


def _ratios(result: Result, rows: list[dict[str, Any]], sources: list[str]) -> None:
    """The headline ratios: worst full-epoch projection and median end-to-end ratio, per source."""
    for source in sources:
        src_rows = [r for r in rows if r["signal_source"] == source]
        if not src_rows:
            continue
        worst = max(src_rows, key=lambda r: r["fraction_full_epoch"])
        value = 1.0 + worst["fraction_full_epoch"]
        result.ratio(
            f"signal_overhead_full_epoch_{source}",
            value,
            f"1 + (signal cost per epoch)/(train time of a 50k-sample epoch), worst over archs and batch "
            f"sizes ({worst['arch']}, B={worst['batch_size']}); direct timing",
            target=f"<= {TARGET}",
            met=value <= TARGET,
        )
        e2e = [r["ratio_end_to_end"]["value"] for r in src_rows]
        result.ratio(
            f"signal_overhead_end_to_end_{source}",
            summary(e2e)["median"],
            f"median over rows of the paired epoch-time ratio on/off ({len(src_rows)} rows; the epochs "
            f"here are short, so this over-weights the per-epoch cost)",
            target=f"<= {TARGET}",
            met=summary(e2e)["median"] <= TARGET,
            rows=[round(x, 4) for x in e2e],
        )


if __name__ == "__main__":
    sys.exit(main())
