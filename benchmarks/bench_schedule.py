"""Cluster efficiency of a study's launch order: random (trial-id hash) order vs longest first.

    PYTHONPATH=. python -m benchmarks.bench_schedule [--study paper] [--gpus 8,16,64] [--quick]

Replays the plan of a preset on N GPUs with list scheduling (each trial, in launch order, starts on
the first GPU that frees up; Tune does this), the trials' costs estimated as the orchestrator
estimates them (orchestrator/schedule.py: FLOPs x samples x epochs when no trial was measured).
Reports per N: efficiency = sum of trial times / (N x makespan) for 200 random orders (median and
worst) and for the longest-first order, against the best any order can do, sum / (N x max(sum/N,
longest trial)). No training runs: seconds on any machine.
"""

from __future__ import annotations

import statistics
import sys

from benchmarks.common import DEFAULT_OUT, Result, base_parser, int_list

TARGET = 0.95  # longest-first efficiency on 8 GPUs for the paper grid


def main(argv: list[str] | None = None) -> int:
    """Run the simulation; write the JSON result."""
    from orchestrator.schedule import (
        efficiency,
        estimate_costs,
        longest_first,
        lower_bound,
        makespan,
        random_order_efficiency,
    )
    from orchestrator.studies import expand, preset

    p = base_parser(__doc__)
    p.add_argument("--study", default="paper", help="preset whose plan is replayed (default paper)")
    p.add_argument("--gpus", type=int_list, default=[8, 16, 64], help="cluster sizes (default 8,16,64)")
    args = p.parse_args(argv)
    repeats = args.repeats or (20 if args.quick else 200)
    trials = expand(preset(args.study))
    estimate = estimate_costs(trials, measured={})
    ids = [t.trial_id for t in trials]
    res = Result(
        "schedule",
        "cpu",
        {
            "study": args.study,
            "trials": len(trials),
            "gpus": args.gpus,
            "random_orders": repeats,
            "cost_unit": estimate.unit,
        },
    )
    by_arch: dict[str, float] = {}
    for t in trials:
        by_arch[t.arch] = by_arch.get(t.arch, 0.0) + estimate.costs[t.trial_id]
    total = sum(estimate.costs.values())
    res.numbers["cost_share_by_arch"] = {a: c / total for a, c in sorted(by_arch.items(), key=lambda x: -x[1])}
    print(
        f"{args.study}: {len(trials)} trials; cost share by arch: "
        + ", ".join(f"{a} {100 * s:.1f}%" for a, s in res.numbers["cost_share_by_arch"].items()),
        flush=True,
    )
    ordered = [estimate.costs[i] for i in longest_first(ids, estimate.costs)]
    hashed = [estimate.costs[i] for i in sorted(ids)]  # Tune's order before: the grid sorted by trial id
    rows = []
    for n in args.gpus:
        rand = random_order_efficiency(ordered, n, repeats=repeats)
        best = efficiency(ordered, n, lower_bound(ordered, n))
        row = {
            "gpus": n,
            "random_median": statistics.median(rand),
            "random_worst": min(rand),
            "trial_id_order": efficiency(hashed, n, makespan(hashed, n)),
            "longest_first": efficiency(ordered, n, makespan(ordered, n)),
            "bound": best,
        }
        rows.append(row)
        print(
            f"  {n:>3} GPUs: random median {row['random_median']:.3f} (worst {row['random_worst']:.3f}), "
            f"trial-id order {row['trial_id_order']:.3f}, longest first {row['longest_first']:.3f}, "
            f"best possible {best:.3f}",
            flush=True,
        )
    res.numbers["efficiency"] = rows
    eight = next((r for r in rows if r["gpus"] == 8), None)
    if eight is not None:
        res.ratio(
            "longest_first_efficiency_8_gpus",
            eight["longest_first"],
            "sum of trial times / (8 x makespan), longest-first launch order",
            f">= {TARGET}",
            met=eight["longest_first"] >= TARGET,
        )
        res.ratio(
            "longest_first_over_random_8_gpus",
            eight["longest_first"] / eight["random_median"],
            "efficiency longest first / median efficiency of random orders",
            "> 1",
            met=eight["longest_first"] > eight["random_median"],
        )
    path = res.write(args.out or DEFAULT_OUT)
    res.print_ratios(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
