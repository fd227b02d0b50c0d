"""Cluster time in hours: the plan's per-trial costs in seconds on a GPU count and speed, the makespan
of the launch order on it, and where the per-trial times came from (pure Python; only `observe_cluster`
imports Ray).

A trial's cost comes from `orchestrator.schedule.estimate_costs`: measured epoch times in this study's
store, else a shared table of per-arch GPU epoch times (orchestrator/epoch_times.py), else FLOPs. When
nothing was timed the costs are FLOPs, and they become seconds at an assumed throughput, stated in the
plan: ASSUMED_MFU of an H100's dense bf16 peak. That is a pessimistic guess for the paper's 32x32
models at B = 64 (BENCHMARKS.md §5 estimates 10-40%), so a plan from FLOPs is an upper bound until
something is measured. `--gpu-speed F` divides every time by F: the speed of the cluster's GPU
relative to the one the times refer to (the table's device, the store's, or the assumed H100).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.schedule import CostEstimate, makespan

ASSUMED_PEAK_TFLOPS = 989.4  # H100 SXM dense bf16 (benchmarks/common.py's table)
ASSUMED_MFU = 0.10
ASSUMED_FLOPS_PER_S = ASSUMED_PEAK_TFLOPS * 1e12 * ASSUMED_MFU
DEFAULT_GPU_COUNTS = (8, 16, 64)  # what an offline plan shows without --gpus


@dataclass(frozen=True)
class Target:
    """What a makespan is planned for: `slots` trials at once, named for people ("8 GPUs"); `gpu`: the
    trials there get GPUs (the table's and the assumed throughput's times are GPU times)."""

    slots: int
    name: str
    gpu: bool = True


@dataclass(frozen=True)
class ClusterView:
    """The resources of a Ray cluster now (alive nodes only): GPUs, CPUs, nodes, GPUs by type."""

    address: str
    gpus: float
    cpus: float
    nodes: int
    gpu_types: dict[str, float] = field(default_factory=dict)  # accelerator type -> GPUs of that type

    def describe(self) -> str:
        """One line naming the cluster's GPUs and CPUs."""
        kinds = ", ".join(f"{n:g} x {kind}" for kind, n in sorted(self.gpu_types.items()))
        gpus = f"{self.gpus:g} GPU(s)" + (f" ({kinds})" if kinds else "")
        return f"cluster at {self.address}: {gpus}, {self.cpus:g} CPU(s) on {self.nodes} node(s) up now"


def cluster_view(address: str, nodes: Sequence[dict[str, Any]]) -> ClusterView:
    """A ClusterView from `ray.nodes()` entries (their "Alive" and "Resources")."""
    alive = [n for n in nodes if n.get("Alive", True)]
    gpus = cpus = 0.0
    kinds: Counter[str] = Counter()
    for node in alive:
        res = node.get("Resources", {})
        gpus += float(res.get("GPU", 0.0))
        cpus += float(res.get("CPU", 0.0))
        for key in res:
            if key.startswith("accelerator_type:"):
                kinds[key.split(":", 1)[1]] += float(res.get("GPU", 0.0))
    return ClusterView(address=address, gpus=gpus, cpus=cpus, nodes=len(alive), gpu_types=dict(kinds))


def observe_cluster(address: str) -> ClusterView:
    """Attach to the Ray cluster at `address` (reads only: no job, no task), read its nodes, detach."""
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        return cluster_view(address, ray.nodes())
    finally:
        ray.shutdown()


def trial_slots(gpus: float, cpus: float, gpus_per_trial: float | None, cpus_per_trial: float) -> int:
    """How many trials a cluster of `gpus` / `cpus` runs at once: one GPU each when it has GPUs and
    gpus_per_trial is not given (as run_grid does), else CPU-only trials; 0 when none fits."""
    per_gpu = gpus_per_trial if gpus_per_trial is not None else (1.0 if gpus >= 1 else 0.0)
    by_gpu = gpus / per_gpu if per_gpu else float("inf")
    by_cpu = cpus / cpus_per_trial if cpus_per_trial else float("inf")
    slots = min(by_gpu, by_cpu)
    return 0 if slots == float("inf") else int(slots)


def trial_seconds(estimate: CostEstimate, ids: Sequence[str], speed: float = 1.0) -> list[float]:
    """Seconds of each trial in `ids` on a GPU `speed` times the reference (module docstring)."""
    if speed <= 0:
        raise ValueError(f"gpu_speed={speed!r} is not allowed; expected a finite number > 0")
    scale = ASSUMED_FLOPS_PER_S if estimate.unit == "FLOP" else 1.0
    return [estimate.costs[i] / scale / speed for i in ids]


def source_text(estimate: CostEstimate, ids: Sequence[str], speed: float = 1.0) -> str:
    """Where the per-trial times of `ids` came from, in words (and the throughput assumed, if any)."""
    counts = Counter(estimate.sources.get(i, "flops") for i in ids)
    parts = []
    if counts["store"]:
        parts.append(f"{counts['store']} from epoch times measured in this store")
    if counts["table"]:
        parts.append(f"{counts['table']} from the GPU epoch-time table ({estimate.reference or 'shared table'})")
    if counts["flops"]:
        if estimate.unit == "s":
            parts.append(f"{counts['flops']} from FLOPs at the timed trials' median seconds per FLOP")
        else:
            parts.append(
                f"{counts['flops']} from FLOPs at an assumed {ASSUMED_FLOPS_PER_S / 1e12:.0f} TFLOP/s per GPU "
                f"({ASSUMED_MFU:.0%} of an H100's {ASSUMED_PEAK_TFLOPS:g} TFLOP/s dense bf16; nothing measured yet)"
            )
    text = "per-trial times: " + "; ".join(parts)
    return text + (f"; divided by --gpu-speed {speed:g}" if speed != 1.0 else "")


def hours(seconds: float) -> str:
    """Seconds as hours for a plan (three significant digits; whole hours from 100 h)."""
    h = seconds / 3600
    return f"{h:.0f} h" if h >= 100 else f"{h:.3g} h"


def makespan_lines(
    estimate: CostEstimate, order: Sequence[str], targets: Sequence[Target], speed: float = 1.0
) -> list[str]:
    """The plan's cost lines: trial time in hours, where it came from, the makespan of launching `order`
    (trial ids, longest first) on each target."""
    seconds = trial_seconds(estimate, order, speed)
    # GPU times say nothing of CPU-only trials: those are predicted from this store's measurements only.
    gpu_times = estimate.unit == "FLOP" or any(estimate.sources.get(i) == "table" for i in order)
    spans = ", ".join(
        f"{hours(makespan(seconds, t.slots))} on {t.name}"
        if t.gpu or not gpu_times
        else f"not predicted on {t.name} (CPU-only trials; these are GPU times)"
        for t in targets
        if t.slots >= 1
    )
    lines = [
        f"  cost of the {len(order)} trial(s) to run: {hours(sum(seconds))} of trial time in all; launched longest "
        f"first; predicted makespan: {spans or 'none (no slot: see the note above)'}",
        f"  {source_text(estimate, order, speed)}",
    ]
    if estimate.unit == "FLOP":
        lines.append(f"  ({format_flops(sum(estimate.costs[i] for i in order))} in all)")
    return lines


def format_flops(value: float) -> str:
    """FLOPs for people (TFLOP, PFLOP, EFLOP)."""
    for scale, name in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP")):
        if value >= scale:
            return f"{value / scale:.3g} {name}"
    return f"{value / 1e9:.3g} GFLOP"


def gpu_target(gpus: int, gpus_per_trial: float | None) -> Target:
    """`gpus` GPUs as trial slots: one trial per GPU, or per `gpus_per_trial` (0: CPU-only trials, then
    one per GPU node's worth is meaningless, so one slot per GPU is kept as the planning unit)."""
    per = gpus_per_trial or 1.0
    return Target(slots=max(1, int(gpus / per)), name=f"{gpus} GPUs")


def plan_targets(
    gpus_per_trial: float | None,
    cpus_per_trial: float,
    gpus: int | None = None,
    view: ClusterView | None = None,
    here: int | None = None,
    here_gpu: bool = True,
) -> tuple[list[Target], list[str]]:
    """What a dry run plans the makespan for, and notes: `--gpus N`; the attached cluster (`view`); else
    `here` slots (GPU trials or not: `here_gpu`) and 8/16/64 GPUs. A cluster with no GPU up also gets
    the 8/16/64 plan."""
    targets: list[Target] = []
    notes: list[str] = []
    if view is not None:
        slots = trial_slots(view.gpus, view.cpus, gpus_per_trial, cpus_per_trial)
        gpu_trials = gpus_per_trial if gpus_per_trial is not None else (1.0 if view.gpus >= 1 else 0.0)
        if view.gpus == 0:
            notes.append(
                "the cluster has no GPU up now: run_grid would run CPU-only trials there unless given "
                "--gpus-per-trial 1 (an autoscaling cluster then starts its GPU workers); plan its size with --gpus N"
            )
        if slots >= 1:
            kind = f"{view.gpus:g} GPUs" if gpu_trials else f"CPU-only trials on {view.cpus:g} CPUs"
            targets.append(Target(slots, f"the attached cluster ({kind}, {slots} at once)", gpu=bool(gpu_trials)))
        else:
            notes.append(
                f"no trial fits the cluster as it is now ({gpus_per_trial or 0:g} GPU, {cpus_per_trial:g} CPU per "
                f"trial; {view.gpus:g} GPU(s), {view.cpus:g} CPU(s) up)"
            )
    elif here is not None and gpus is None:
        targets.append(Target(slots=here, name=f"{here} slots here", gpu=here_gpu))
    if gpus is not None:
        targets.append(gpu_target(gpus, gpus_per_trial))
    elif view is None or view.gpus == 0 or not targets:
        targets += [gpu_target(n, gpus_per_trial) for n in DEFAULT_GPU_COUNTS]
    return targets, notes
