"""Gangs: what a data-parallel trial (workers W > 1) reserves, and how planning counts it. Pure Python.

A W-worker trial occupies W slots at once (a slot: the CPUs and GPUs of one trial, `cpus_per_trial`
and `gpus_per_trial`). Ray Train reserves them as one placement group of W bundles, all or nothing
(trainables/ray_ddp.py); the Tune trial that drives it holds no CPU and no GPU of its own (a token
1 MiB of memory), so the W slots are not counted twice. The plan and `--dry-run` count slots, not
trials (`gang_makespan`: list scheduling of gangs, longest first, each starting once W slots are free,
without backfilling).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

# What the Tune trial of a W > 1 trial reserves: its driver only (Ray Train reserves the workers).
# Stated data-parallel scaling efficiency for planning (throughput on W workers / W x one worker's);
# not measured here (BENCHMARKS.md "Data-parallel trials" has the GPU measurement plan).
DEFAULT_SCALING = 0.9
DRIVER_RESOURCES: dict[str, float] = {"cpu": 0.0, "gpu": 0.0, "memory": float(2**20)}  # Tune refuses an empty request


def tune_resources(workers: int, resources: Mapping[str, float]) -> dict[str, float]:
    """The resources Tune reserves for a trial of `workers` workers, `resources` being one slot's."""
    return dict(resources) if workers <= 1 else dict(DRIVER_RESOURCES)


def gang_makespan(jobs: Sequence[tuple[float, int]], slots: int) -> float:
    """Finish time of list scheduling gangs in the given order: each job (seconds, W) starts as soon as W
    slots are free (the earliest time W of them are), and holds them all until it ends. A job wider than
    the cluster is refused."""
    if slots < 1:
        raise ValueError(f"slots={slots} is not allowed; expected an integer >= 1")
    free = [0.0] * slots  # the time each slot frees up
    heapq.heapify(free)
    end = 0.0
    for seconds, width in jobs:
        if width > slots:
            raise ValueError(f"a trial of {width} workers does not fit {slots} slots")
        taken = [heapq.heappop(free) for _ in range(width)]
        start = max(taken)
        for _ in range(width):
            heapq.heappush(free, start + seconds)
        end = max(end, start + seconds)
    return end


def gang_efficiency(jobs: Sequence[tuple[float, int]], slots: int, span: float) -> float:
    """Busy fraction of the slots: sum of seconds x W / (slots x makespan)."""
    return sum(s * w for s, w in jobs) / (slots * span) if span > 0 else float("nan")


def parallel_seconds(seconds: float, workers: int, scaling_efficiency: float) -> float:
    """A trial's time on W workers when one worker takes `seconds`: seconds / (W x e) for W > 1, e the
    data-parallel scaling efficiency (throughput on W workers / (W x one worker's))."""
    if workers <= 1:
        return seconds
    if not 0 < scaling_efficiency <= 1:
        raise ValueError(f"scaling_efficiency={scaling_efficiency!r} is not allowed; expected a number in (0, 1]")
    return seconds / (workers * scaling_efficiency)


def slot_count(specs: Sequence[Any]) -> int:
    """Slots the trials of `specs` (TrialSpecs) occupy when all run at once."""
    return sum(max(1, int(getattr(t.config, "workers", 1))) for t in specs)


def plan_lines(pending: Sequence[Any], costs: Sequence[float], cluster_sizes: Sequence[int]) -> list[str]:
    """What the plan says of its gangs, when some pending trial (TrialSpec) has W > 1: the slots they hold
    and the makespan on each cluster size, with `DEFAULT_SCALING` (empty when every W is 1)."""
    widths = [max(1, int(t.config.workers)) for t in pending]
    if max(widths, default=1) == 1:
        return []
    gangs = sum(1 for w in widths if w > 1)
    jobs = sorted(((parallel_seconds(c, w, DEFAULT_SCALING), w) for c, w in zip(costs, widths)), key=lambda j: -j[0])
    spans = [
        f"{n} slots: {gang_makespan(jobs, n) / max(gang_makespan([(c, 1) for c in costs], n), 1e-300):.2f}x the "
        "one-worker makespan"
        if max(widths) <= n
        else f"{n} slots: a gang of {max(widths)} does not fit"
        for n in cluster_sizes
    ]
    return [
        f"  gangs: {gangs} trial(s) run data-parallel, holding {sum(widths)} slots when all run at once "
        f"(a W-worker trial holds W slots, reserved together by Ray Train); assuming scaling efficiency "
        f"{DEFAULT_SCALING:g}: " + "; ".join(spans)
    ]
