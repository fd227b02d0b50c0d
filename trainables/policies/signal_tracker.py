"""DEBA's per-epoch signal bookkeeping (SPEC §1), shared by every policy.

Every policy records the same signals so that fixed-batch runs can profile an architecture, and
the analysis replays stored gradient statistics through this same class (analysis/calibrate.py),
so a replay is exactly what a policy would have computed. Pure Python: the gradient statistics
arrive as floats from the loop.

How the signals are read is set by the policy options named in `SIGNAL_OPTIONS`
(trainables/policies/options.py declares them with their defaults):
- signal_source: which gradient the statistics come from (the loop picks the columns, see
  `SOURCE_COLUMNS`); the tracker itself only sees (sigma2_t, n_t, L_t);
- window / full_history: the reference window R of sigma2 values;
- confidence_reference: median (default) or mean of R;
- confidence_includes_current: R holds the current value (default) or only the earlier ones;
- confidence_eps: the eps of c_t's denominator.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EPS = 1e-8  # SPEC's eps of dN_t and dL_t (and confidence_eps's default)

# The policy options that define how the signals are computed from the gradient statistics: a
# threshold calibrated under one reading of these is comparable only with signals of that reading.
SIGNAL_OPTIONS: tuple[str, ...] = (
    "signal_source",
    "window",
    "full_history",
    "confidence_eps",
    "confidence_reference",
    "confidence_includes_current",
)
# signal_source -> (column of sigma2_t, column of n_t) in the epochs table. The loop records the
# statistics the policy consumed as grad_var / grad_norm, and the epoch-mean gradient's (when it
# accumulates it) as grad_var_epoch_mean / grad_norm_epoch_mean; a replay of another source from a
# fixed run (always last_step) reads these columns.
SOURCE_COLUMNS: dict[str, tuple[str, str]] = {
    "last_step": ("grad_var", "grad_norm"),
    "epoch_mean": ("grad_var_epoch_mean", "grad_norm_epoch_mean"),
    "mixed": ("grad_var_epoch_mean", "grad_norm"),
}
SIGNAL_SOURCES: tuple[str, ...] = tuple(SOURCE_COLUMNS)
CONFIDENCE_REFERENCES: tuple[str, ...] = ("median", "mean")


def relative_change(current: float, previous: float | None) -> float:
    """|current - previous| / (|previous| + eps); 0 when there is no previous value (SPEC §1).

    Norms are non-negative, so |previous| equals previous for dN_t and the same formula serves dL_t.
    """
    if previous is None:
        return 0.0
    return abs(current - previous) / (abs(previous) + EPS)


def confidence_of(grad_var: float, reference: float, eps: float) -> float:
    """c_t = sigma2_t / (reference + eps) (SPEC §1); NaN when the denominator is 0 or not finite."""
    denominator = reference + eps
    return grad_var / denominator if denominator != 0 and math.isfinite(denominator) else math.nan


@dataclass
class EpochSignals:
    """The derived signals of one epoch."""

    grad_norm_variation: float
    loss_variation: float
    confidence: float


class SignalTracker:
    """Reference window of gradient variances plus the previous epoch's norm and loss.

    Built from any object (a policy's options) or mapping that carries the `SIGNAL_OPTIONS`
    other than signal_source: `SignalTracker(options)`.
    """

    def __init__(self, options: Any) -> None:
        get = options.get if isinstance(options, Mapping) else lambda name: getattr(options, name)
        self.window_size = int(get("window"))
        self.full_history = bool(get("full_history"))
        self.confidence_eps = float(get("confidence_eps"))
        self.reference = str(get("confidence_reference"))
        self.includes_current = bool(get("confidence_includes_current"))
        if self.reference not in CONFIDENCE_REFERENCES:
            raise ValueError(
                f"confidence_reference={self.reference!r} is not allowed; expected one of "
                + ", ".join(map(repr, CONFIDENCE_REFERENCES))
            )
        self.variances: deque[float] = deque(maxlen=None if self.full_history else self.window_size)
        self.prev_norm: float | None = None
        self.prev_loss: float | None = None

    def _reference_of(self, values: Any) -> float:
        # sum/len, not fmean: an overflow gives inf (-> NaN confidence), not an exception.
        return statistics.median(values) if self.reference == "median" else sum(values) / len(values)

    def update(self, train_loss: float, grad_var: float, grad_norm: float) -> EpochSignals:
        """Fold in one finished epoch and return its dN_t, dL_t and confidence c_t."""
        d_norm = relative_change(grad_norm, self.prev_norm)
        d_loss = relative_change(train_loss, self.prev_loss)
        # A non-finite variance would poison the reference for a whole window; it is reported
        # (confidence NaN) but kept out of the reference statistics.
        if math.isfinite(grad_var):
            if self.includes_current:
                self.variances.append(grad_var)
                reference = self._reference_of(self.variances)
            else:
                # The values before epoch t; at the first epoch, where there are none, the current one.
                reference = self._reference_of(self.variances) if self.variances else grad_var
                self.variances.append(grad_var)
            confidence = confidence_of(grad_var, reference, self.confidence_eps)
        else:
            confidence = math.nan
        if math.isfinite(grad_norm):
            self.prev_norm = grad_norm
        if math.isfinite(train_loss):
            self.prev_loss = train_loss
        return EpochSignals(d_norm, d_loss, confidence)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {"variances": list(self.variances), "prev_norm": self.prev_norm, "prev_loss": self.prev_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""
        self.variances.clear()
        self.variances.extend(float(v) for v in state["variances"])
        self.prev_norm = state["prev_norm"]
        self.prev_loss = state["prev_loss"]
