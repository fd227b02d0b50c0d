"""Trial cost estimates and the launch order: the longest trials first.

Tune starts a study's trials in the order of its grid (FIFO, whenever a GPU frees up), so a
100-epoch ViT trial that starts last sets the makespan. Launching the longest first (LPT list
scheduling) keeps the cluster busy: its makespan is at most 4/3 of the optimum.

A trial's cost, for the epochs it has left, in seconds when anything was measured, else in FLOPs:
- measured ("store"): the mean train + eval time per epoch stored for the trials of the same (arch,
  dataset) in this study's store, times the trial's epochs;
- reference ("table"): the per-arch GPU epoch time of a shared table (orchestrator/epoch_times.py),
  scaled to the trial's split, when the store has none for its (arch, dataset);
- estimated ("flops"): forward FLOPs per sample x (3 x train samples + test samples) x epochs (a
  training step costs about three forwards, evaluation one), converted to seconds with the median
  seconds-per-FLOP of the timed trials when there are any.
"""

from __future__ import annotations

import heapq
import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CostEstimate:
    """Estimated cost per trial (trial_id -> value) in `unit` ("s" or "FLOP"), and how many came from
    measurements."""

    costs: dict[str, float]
    unit: str
    measured: int
    # trial_id -> where its cost came from: "store", "table" or "flops" (module docstring)
    sources: dict[str, str] = field(default_factory=dict)
    reference: str = ""  # the shared table's device and date, when it gave any cost


def flop_cost(config: dict[str, Any]) -> float:
    """Training + evaluation FLOPs of a trial config (SPEC-free estimate; see the module docstring)."""
    from trainables.data import NUM_CLASSES, split_sizes
    from trainables.folders import folder_sizes, is_folder_dataset
    from trainables.models import model_flops_per_sample

    if is_folder_dataset(config["dataset"]):  # from the folder's listing; FLOPs scale with the input's pixels
        classes, n_train, n_test = folder_sizes(config["dataset"], config.get("data_dir"))
        n_train, n_test = (
            min(n_train, config.get("train_limit") or n_train),
            min(n_test, config.get("test_limit") or n_test),
        )
        pixels = (config.get("input_size") or 32) ** 2 / 32**2
        flops = (model_flops_per_sample(config["arch"], classes, None) or 0.0) * pixels
        return flops * (3 * n_train + n_test) * config["epochs"]
    flops = model_flops_per_sample(config["arch"], NUM_CLASSES[config["dataset"]], config.get("timm_input")) or 0.0
    n_train, n_test = split_sizes(config["dataset"], config.get("train_limit"), config.get("test_limit"))
    return flops * (3 * n_train + n_test) * config["epochs"]


def estimate_costs(
    trials: Sequence[Any],
    measured: dict[tuple[str, str], float],
    done: dict[str, int] | None = None,
    reference: dict[str, float] | None = None,
    reference_name: str = "",
) -> CostEstimate:
    """Costs of `trials` (TrialSpecs) for the epochs they have left (`done`: trial_id -> epochs
    already stored); `measured` maps (arch, dataset) -> seconds per epoch in this store, `reference`
    trial_id -> seconds per epoch from a shared table (used where the store has no measurement)."""
    done = done or {}
    reference = reference or {}
    left = {t.trial_id: max(t.config["epochs"] - done.get(t.trial_id, 0), 0) / t.config["epochs"] for t in trials}
    flops = {t.trial_id: flop_cost(t.config) for t in trials}  # whole trial
    seconds, sources = {}, {}
    for t in trials:
        if (t.arch, t.dataset) in measured:
            seconds[t.trial_id], sources[t.trial_id] = measured[(t.arch, t.dataset)] * t.config["epochs"], "store"
        elif t.trial_id in reference:
            seconds[t.trial_id], sources[t.trial_id] = reference[t.trial_id] * t.config["epochs"], "table"
        else:
            sources[t.trial_id] = "flops"
    rates = [seconds[i] / flops[i] for i in seconds if flops[i] > 0]
    if not rates:
        flop_only = {i: "flops" for i in flops}
        return CostEstimate(costs={i: flops[i] * left[i] for i in flops}, unit="FLOP", measured=0, sources=flop_only)
    rate = statistics.median(rates)  # seconds per FLOP on this cluster
    costs = {i: seconds.get(i, flops[i] * rate) * left[i] for i in flops}
    stored = sum(1 for s in sources.values() if s == "store")
    return CostEstimate(costs=costs, unit="s", measured=stored, sources=sources, reference=reference_name)


def longest_first(ids: Iterable[str], costs: dict[str, float]) -> list[str]:
    """`ids` ordered by cost, longest first (ties by id, so the order is stable)."""
    return sorted(ids, key=lambda i: (-costs.get(i, 0.0), i))


def makespan(costs: Sequence[float], slots: int) -> float:
    """Finish time of list scheduling: each trial, in the given order, starts on the first free slot."""
    if slots < 1:
        raise ValueError(f"slots={slots} is not allowed; expected an integer >= 1")
    free = [0.0] * min(slots, max(len(costs), 1))
    heapq.heapify(free)
    end = 0.0
    for c in costs:
        start = heapq.heappop(free)
        end = max(end, start + c)
        heapq.heappush(free, start + c)
    return end


def lower_bound(costs: Sequence[float], slots: int) -> float:
    """No schedule finishes before max(total / slots, longest trial)."""
    return max(sum(costs) / slots, max(costs, default=0.0))


def efficiency(costs: Sequence[float], slots: int, span: float) -> float:
    """Busy fraction of the cluster: sum of trial times / (slots x makespan)."""
    return sum(costs) / (slots * span) if span > 0 else math.nan


def random_order_efficiency(costs: Sequence[float], slots: int, repeats: int = 200, seed: int = 0) -> list[float]:
    """Efficiencies of `repeats` random launch orders (the trial-id hash order is one such order)."""
    rng = random.Random(seed)
    out = []
    for _ in range(repeats):
        order = list(costs)
        rng.shuffle(order)
        out.append(efficiency(order, slots, makespan(order, slots)))
    return out


def format_duration(value: float, unit: str) -> str:
    """A cost for people: hours/minutes/seconds, or TFLOP/PFLOP when no time was measured."""
    if unit == "FLOP":
        for scale, name in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP")):
            if value >= scale:
                return f"{value / scale:.3g} {name}"
        return f"{value / 1e9:.3g} GFLOP"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"
