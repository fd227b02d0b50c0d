"""The batch-size policy interface every method implements.

The epoch loop asks a policy, once per epoch, for the batch size (and lr multiplier) to train
with, hands it the epoch's loss and gradient statistics, and records the dict that step()
returns. Pure Python (no torch), so the decision logic is unit-testable in microseconds.

Extra statistics (the loop -> policy contract). `measurements(epoch)` names what the loop must
gather while training `epoch`; the loop then passes these keyword arguments to `step()`:
- "per_sample_diversity" (MEASURE_PER_SAMPLE): `grad_diversity` = sum_i |g_i|^2 / |sum_i g_i|^2 over
  the epoch's training samples, and `n_samples` = how many samples that sum ran over (steps x B).
- "two_batch" (MEASURE_TWO_BATCH): `noise_trace` and `noise_sqnorm` = the epoch's mean two-batch
  estimates of tr(Sigma) and |G|^2 (policies/noise.py), and `n_samples`.
`measure_settings()` tells the loop how to measure (micro-batches per step, per-sample chunk size).
Nothing is measured on epochs whose set is empty.

Learning-rate co-adaptation (option `lr_scaling`, every policy; the loop trains epoch t+1 with
lr = base lr x `lr_scale`, SPEC §5):
- "none" (the paper's setting): lr_scale = 1.
- "linear": lr_scale = B/b0 (AdaBatch's "lr x2 at each doubling" and DiveBatch's linear scaling).
- "sqrt": lr_scale = sqrt(B/b0).
- "adascale": lr_scale = AdaScale's gain (var + sqr)/(var/s + sqr), s = B/b0, var = tr(Sigma)/b0,
  sqr = |G|^2, from EMAs (decay `ema_decay`) of the two-batch statistics, which are then measured
  every epoch (except by `fixed`, whose s is always 1).
The record's `lr_gain` is the multiplier the finished epoch trained with (so lr = base lr x lr_gain
in every row), null for "none".

Momentum buffers are left untouched when the batch size or the lr changes [choice]. PyTorch's SGD
keeps the velocity in gradient units (buf = mu*buf + g; p -= lr*buf): a mean gradient does not depend
on B, so the buffer stays a valid running average across batch changes, and a new lr applies to the
whole velocity from the next step on (as with any PyTorch lr schedule); no rescaling is done.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from trainables.policies.noise import NoiseEMA, adascale_gain
from trainables.policies.options import CooldownOptions, PolicyOptions
from trainables.policies.signal_tracker import SignalTracker

MEASURE_PER_SAMPLE = "per_sample_diversity"
MEASURE_TWO_BATCH = "two_batch"
MEASUREMENT_NAMES: tuple[str, ...] = (MEASURE_PER_SAMPLE, MEASURE_TWO_BATCH)


class BatchSizePolicy:
    """Base class: holds the batch size and the DEBA signal tracker every policy records.

    Subclasses set `name` and `Options` (their options dataclass, policies/options.py) and
    implement `decide`; those that need statistics override `method_measurements`, those whose
    options depend on the trial's arch or dataset override `check_context`. `dataset` (like `arch`)
    is context, not an option: the loop passes the trial's dataset.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[PolicyOptions]] = PolicyOptions
    # False for a policy whose batch size never leaves b0 (its adascale gain is always 1).
    can_change_batch: ClassVar[bool] = True

    def __init__(
        self, arch: str | None = None, dataset: str | None = None, options: PolicyOptions | None = None
    ) -> None:
        self.arch = arch
        self.dataset = dataset
        self.options = opts = options if options is not None else self.Options()
        self.check_context(opts, arch, dataset)
        self.signal_source: str = opts.signal_source
        self.lr_scaling: str = opts.lr_scaling
        self.tracker = SignalTracker(opts)
        # EMAs of the two-batch statistics: fed whenever the loop measured them (gns, adascale).
        self.noise = NoiseEMA(opts.ema_decay)
        self._batch_size: int = opts.b0
        self.lr_scale: float = 1.0
        self.epoch: int = 0  # last epoch stepped

    @classmethod
    def check_context(cls, options: PolicyOptions, arch: str | None, dataset: str | None) -> None:
        """Refuse options that cannot work for this arch or dataset (ValueError); nothing by default."""

    @property
    def batch_size(self) -> int:
        """Batch size for the next epoch."""
        return self._batch_size

    def measurements(self, epoch: int) -> frozenset[str]:
        """Extra statistics the loop must gather while training `epoch` (none by default).

        The method's own needs plus, under lr_scaling="adascale", the two-batch statistics.
        """
        needed = set(self.method_measurements(epoch))
        if self.lr_scaling == "adascale" and self.can_change_batch:
            needed.add(MEASURE_TWO_BATCH)
        return frozenset(needed)

    def method_measurements(self, epoch: int) -> frozenset[str]:
        """The statistics the method itself needs for `epoch` (subclasses override)."""
        return frozenset()

    def measure_settings(self) -> dict[str, int]:
        """How the loop measures: micro-batches per step for "two_batch" (subclasses may add keys)."""
        return {"micro_batches": int(self.options.micro_batches)}

    def next_lr_scale(self, batch_size: int) -> float:
        """The lr multiplier for an epoch trained at `batch_size` (option lr_scaling)."""
        s = batch_size / self.options.b0
        if self.lr_scaling == "linear":
            return s
        if self.lr_scaling == "sqrt":
            return math.sqrt(s)
        if self.lr_scaling == "adascale":
            return adascale_gain(self.noise.trace, self.noise.sqnorm, batch_size, self.options.b0)
        return 1.0

    def step(self, epoch: int, train_loss: float, grad_var: float, grad_norm: float, **measured: Any) -> dict[str, Any]:
        """Consume one finished epoch's signals; return the record with the next batch size."""
        if epoch != self.epoch + 1:
            raise ValueError(f"epoch={epoch} out of order: policy expected epoch {self.epoch + 1}")
        signals = self.tracker.update(train_loss, grad_var, grad_norm)
        self.epoch = epoch
        if "noise_trace" in measured and "noise_sqnorm" in measured:
            self.noise.update(float(measured["noise_trace"]), float(measured["noise_sqnorm"]))
        rec: dict[str, Any] = {
            "decision": "hold",
            "batch_size": self._batch_size,
            "confidence": signals.confidence,
            "grad_norm_variation": signals.grad_norm_variation,
            "loss_variation": signals.loss_variation,
            "in_cooldown": False,
            "grad_diversity": None,
            "noise_scale": None,
            "lr_gain": None if self.lr_scaling == "none" else self.lr_scale,
        }
        rec.update(
            self.decide(epoch, signals, train_loss=train_loss, grad_var=grad_var, grad_norm=grad_norm, **measured)
        )
        self._batch_size = rec["batch_size"]
        self.lr_scale = self.next_lr_scale(self._batch_size)
        return rec

    def decide(self, epoch: int, signals: Any, **inputs: Any) -> dict[str, Any]:
        """Policy-specific part of step(): return the record fields it sets (batch_size, decision, ...)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable dynamic state (options are construction-time and not included)."""
        return {
            "policy": self.name,
            "batch_size": self._batch_size,
            "lr_scale": self.lr_scale,
            "epoch": self.epoch,
            "tracker": self.tracker.state_dict(),
            "noise": self.noise.state_dict(),
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned (exact round trip)."""
        if state.get("policy") != self.name:
            raise ValueError(f"state of policy {state.get('policy')!r} cannot load into {self.name!r}")
        self._batch_size = int(state["batch_size"])
        self.lr_scale = float(state["lr_scale"])
        self.epoch = int(state["epoch"])
        self.tracker.load_state_dict(state["tracker"])
        self.noise.load_state_dict(state["noise"])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """Subclass state beyond the base's (JSON-serialisable)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what extra_state() returned."""


class CooldownPolicy(BatchSizePolicy):
    """A policy that moves B within [b_min, b_max] and holds for `cooldown` epochs after a change.

    After a change at epoch t_last, every epoch t with t - t_last < cooldown holds; t_last = 0 at the
    start, so epochs 1..cooldown-1 hold too [choice] (SPEC §2). Subclasses call `mark_change(epoch)`.
    """

    Options: ClassVar[type[PolicyOptions]] = CooldownOptions
    options: CooldownOptions

    def __init__(
        self, arch: str | None = None, dataset: str | None = None, options: PolicyOptions | None = None
    ) -> None:
        super().__init__(arch, dataset, options)
        self.t_last = 0  # epoch of the last change

    def in_cooldown(self, epoch: int) -> bool:
        """Whether decisions at `epoch` are forced to hold."""
        return epoch - self.t_last < self.options.cooldown

    def mark_change(self, epoch: int) -> None:
        """Start a cooldown: B changed after `epoch`."""
        self.t_last = epoch

    def extra_state(self) -> dict[str, Any]:
        """The epoch of the last change."""
        return {"t_last": self.t_last}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore t_last."""
        self.t_last = int(state["t_last"])
