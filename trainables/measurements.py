"""Extra statistics a policy asks the epoch loop for (`policy.measurements(epoch)`).

The loop builds, for each name a policy requests, the factory registered in MEASUREMENTS with a
`MeasureContext` (the model, its trainable parameters, the policy's measure settings, the epoch):
measurements see only what they need, never the loop. A measurement has:
- `on_step(step, x, y, loss)` (optional): called after each training step's backward, before
  optimizer.step (the batch-mean gradient is live in .grad); the loop times these hooks;
- `backward(loss_and_logits, x, y) -> (loss, logits)` (optional): replaces the step's forward +
  backward (e.g. to split the batch into micro-batches); it must leave the batch-mean gradient in
  .grad and return the detached batch-mean loss and the logits. `loss_and_logits(x, y)` runs the
  model's forward under the loop's autocast. At most one measurement of an epoch may replace it;
- `result()`: keyword arguments (plain Python values) for policy.step, read once after the epoch;
- optional `estimator` (str, recorded in the `estimator` column) and `measure_seconds()` (extra
  seconds not covered by the timed hooks, added to measure_time_s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from trainables.estimators import DiversityMeter, TwoBatchMeter
from trainables.policies import MEASURE_PER_SAMPLE, MEASURE_TWO_BATCH


@dataclass(frozen=True)
class MeasureContext:
    """What a measurement may use: the model, its trainable parameters, the policy's measure
    settings (`policy.measure_settings()`) and the epoch being trained."""

    model: nn.Module
    params: list[torch.Tensor]
    settings: dict[str, Any]
    epoch: int


class Measurement(Protocol):
    """See the module docstring; `on_step`, `backward`, `estimator`, `measure_seconds` are optional."""

    def result(self) -> dict[str, Any]:
        """Keyword arguments for policy.step."""


class PerSampleDiversity:
    """ "per_sample_diversity": DiveBatch's gradient diversity from a per-sample pass after each backward."""

    def __init__(self, ctx: MeasureContext) -> None:
        self.meter = DiversityMeter(
            ctx.model,
            chunk_size=int(ctx.settings.get("per_sample_chunk", 32)),
            diversity_sum=str(ctx.settings.get("diversity_sum", "training")),
        )
        self.estimator = self.meter.estimator

    def on_step(self, step: int, x: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        """Fold in the step's batch (its batch-mean gradient is live in .grad)."""
        self.meter.add(x, y)

    def result(self) -> dict[str, Any]:
        """grad_diversity and n_samples for policy.step."""
        return self.meter.result()


class TwoBatchNoise:
    """ "two_batch": McCandlish's estimates from k micro-batches of every step (replaces the backward)."""

    estimator = "noise_scale"

    def __init__(self, ctx: MeasureContext) -> None:
        self.meter = TwoBatchMeter(ctx.params, micro_batches=int(ctx.settings.get("micro_batches", 2)))

    def backward(self, loss_and_logits: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's forward + backward as k micro-batches; leaves the batch-mean gradient in .grad."""
        return self.meter.backward(loss_and_logits, x, y)

    def measure_seconds(self) -> float:
        """Seconds spent in the meter's own statistics this epoch."""
        return self.meter.timer.seconds()

    def result(self) -> dict[str, Any]:
        """noise_trace, noise_sqnorm and n_samples for policy.step."""
        return self.meter.result()


MEASUREMENTS: dict[str, Callable[[MeasureContext], Measurement]] = {
    MEASURE_PER_SAMPLE: PerSampleDiversity,
    MEASURE_TWO_BATCH: TwoBatchNoise,
}
