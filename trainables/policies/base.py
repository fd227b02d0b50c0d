"""The batch-size policy interface every method implements.

The epoch loop asks a policy, once per epoch, for the batch size (and lr multiplier) to train
with, hands it the epoch's loss and gradient statistics, and records the dict that step()
returns. Pure Python (no torch), so the decision logic is unit-testable in microseconds.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from trainables.policies.signals import SignalTracker

SIGNAL_SOURCES: tuple[str, ...] = ("last_step", "epoch_mean")


def check_choice(field: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Raise ValueError naming `field` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")


def check_number(field: str, value: Any, *, minimum: float | None = None, strict: bool = False,
                 integer: bool = False) -> None:
    """Raise ValueError naming `field` unless `value` is a finite number in range."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise ValueError(f"{field}={value!r} must be {kind}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{field}={value!r} must be {'>' if strict else '>='} {minimum}")


class BatchSizePolicy:
    """Base class: holds the batch size and the DEBA signal tracker every policy records.

    Subclasses set `name` and `OPTIONS` (option name -> default) and implement `decide`.
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {"b0": 64, "window": 15, "full_history": False,
                                         "signal_source": "last_step"}

    def __init__(self, arch: str | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for policy {self.name!r}; "
                             f"allowed options: {', '.join(sorted(self.OPTIONS))}")
        self.arch = arch
        self.options: dict[str, Any] = {**self.OPTIONS, **options}
        opts = self.options
        check_number("b0", opts["b0"], minimum=1, integer=True)
        check_number("window", opts["window"], minimum=1, integer=True)
        check_choice("full_history", opts["full_history"], (False, True))
        check_choice("signal_source", opts["signal_source"], SIGNAL_SOURCES)
        self.signal_source: str = opts["signal_source"]
        self.tracker = SignalTracker(opts["window"], opts["full_history"])
        self._batch_size: int = opts["b0"]
        self.lr_scale: float = 1.0
        self.epoch: int = 0  # last epoch stepped

    @property
    def batch_size(self) -> int:
        """Batch size for the next epoch."""
        return self._batch_size

    def measurements(self, epoch: int) -> frozenset[str]:
        """Extra statistics the loop must gather while training `epoch` (none by default)."""
        return frozenset()

    def step(self, epoch: int, train_loss: float, grad_var: float, grad_norm: float,
             **measured: Any) -> dict[str, Any]:
        """Consume one finished epoch's signals; return the record with the next batch size."""
        if epoch != self.epoch + 1:
            raise ValueError(f"epoch={epoch} out of order: policy expected epoch {self.epoch + 1}")
        signals = self.tracker.update(train_loss, grad_var, grad_norm)
        self.epoch = epoch
        rec: dict[str, Any] = {
            "decision": "hold",
            "batch_size": self._batch_size,
            "confidence": signals.confidence,
            "grad_norm_variation": signals.grad_norm_variation,
            "loss_variation": signals.loss_variation,
            "in_cooldown": False,
            "grad_diversity": None,
            "noise_scale": None,
            "lr_gain": None,
        }
        rec.update(self.decide(epoch, signals, train_loss=train_loss, grad_var=grad_var,
                               grad_norm=grad_norm, **measured))
        self._batch_size = rec["batch_size"]
        return rec

    def decide(self, epoch: int, signals: Any, **inputs: Any) -> dict[str, Any]:
        """Policy-specific part of step(): return the record fields it sets (batch_size, decision, ...)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable dynamic state (options are construction-time and not included)."""
        return {"policy": self.name, "batch_size": self._batch_size, "lr_scale": self.lr_scale,
                "epoch": self.epoch, "tracker": self.tracker.state_dict(), **self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned (exact round trip)."""
        if state.get("policy") != self.name:
            raise ValueError(f"state of policy {state.get('policy')!r} cannot load into {self.name!r}")
        self._batch_size = int(state["batch_size"])
        self.lr_scale = float(state["lr_scale"])
        self.epoch = int(state["epoch"])
        self.tracker.load_state_dict(state["tracker"])
        self.load_extra_state(state)

    def extra_state(self) -> dict[str, Any]:
        """Subclass state beyond the base's (JSON-serialisable)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what extra_state() returned."""
