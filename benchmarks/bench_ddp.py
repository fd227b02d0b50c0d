"""Cost of a data-parallel trial on CPU: W = 2 ranks (gloo, one thread each) against W = 1 (one thread).

    PYTHONPATH=. python -m benchmarks.bench_ddp [--arch tiny_cnn] [--epochs 4] [--batch-size 128]

Runs the same fixed-B trial on digits with one worker (`TrialLoop`, in this process) and with two
(`trainables.ddp_local.run_local`: the Ray Train worker's loop, without Ray), and reports the training
samples per second of each (median over the epochs after the first), their ratio, and the seconds of
the cross-replica statistic (one squared-norm pass over each rank's gradient buckets at an epoch's last
step) against the epoch. On two cores W = 2 gives each rank a core: the ratio is the speedup the
all-reduce leaves (ideal 2); on a loaded machine the ranks share cores with other work.
"""

from __future__ import annotations

import statistics
import sys
import time

from benchmarks.common import DEFAULT_OUT, Result, base_parser


def main(argv: list[str] | None = None) -> int:
    """Run both trials; write the JSON result."""
    import torch

    from trainables.config import TrialConfig
    from trainables.ddp_local import run_local
    from trainables.loop import TrialLoop

    p = base_parser(__doc__)
    p.add_argument("--arch", default="tiny_cnn")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    base = dict(
        arch=args.arch,
        dataset="digits",
        method="fixed",
        policy={"b0": args.batch_size},
        epochs=args.epochs,
        device="cpu",
        threads=1,
        eval_batch_size=512,
    )
    torch.set_num_threads(1)
    loop = TrialLoop(TrialConfig(**base))
    one = [loop.run_epoch() for _ in range(args.epochs)]
    two = run_local(TrialConfig(**base, workers=2))
    # The cross-replica statistic's own cost: the squared norm of a gradient-sized buffer (what the hook adds).
    flat = torch.cat([p.detach().flatten() for p in loop.model.parameters()]).double()
    t0 = time.perf_counter()
    for _ in range(100):
        flat.pow(2).sum()
    stat_s = (time.perf_counter() - t0) / 100
    rate = {w: statistics.median(r["samples_per_s"] for r in rows[1:]) for w, rows in ((1, one), (2, two))}
    epoch_s = statistics.median(r["epoch_time_s"] for r in two[1:])
    res = Result("ddp", "cpu", {"arch": args.arch, "epochs": args.epochs, "batch_size": args.batch_size})
    res.numbers.update(samples_per_s_w1=rate[1], samples_per_s_w2=rate[2], replica_stat_s=stat_s, epoch_s_w2=epoch_s)
    print(
        f"{args.arch} digits B={args.batch_size}: W=1 {rate[1]:.0f} samples/s, W=2 {rate[2]:.0f} samples/s "
        f"(x{rate[2] / rate[1]:.2f}); cross-replica statistic {1e6 * stat_s:.0f} us per epoch "
        f"({100 * stat_s / epoch_s:.3f}% of a W=2 epoch)",
        flush=True,
    )
    res.ratio(
        "w2_over_w1_samples_per_s", rate[2] / rate[1], "training samples/s, W=2 / W=1", "> 1", met=rate[2] > rate[1]
    )
    path = res.write(args.out or DEFAULT_OUT)
    res.print_ratios(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
