"""DEBA's per-epoch signal bookkeeping (SPEC §1), shared by every policy.

Every policy records the same signals so that fixed-batch runs can profile an
architecture. Pure Python: the gradient statistics arrive as floats from the loop.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from trainables import paper

EPS = 1e-8


def relative_change(current: float, previous: float | None) -> float:
    """|current - previous| / (|previous| + eps); 0 when there is no previous value (SPEC §1).

    Norms are non-negative, so |previous| equals previous for dN_t and the same formula serves dL_t.
    """
    if previous is None:
        return 0.0
    return abs(current - previous) / (abs(previous) + EPS)


def confidence_of(grad_var: float, median: float, eps: float = EPS) -> float:
    """c_t = sigma2_t / (median + eps) (SPEC §1); NaN when the denominator is 0 (eps = 0, zero median)."""
    denominator = median + eps
    return grad_var / denominator if denominator != 0 else math.nan


@dataclass
class EpochSignals:
    """The derived signals of one epoch."""

    grad_norm_variation: float
    loss_variation: float
    confidence: float


class SignalTracker:
    """Sliding window of gradient variances plus the previous epoch's norm and loss.

    window: how many sigma^2 values the confidence's median sees (W = 15 in the paper);
    full_history: keep every value instead (the paper's ablation); confidence_eps: the eps of the
    confidence's denominator (0: scale-free, a zero median then gives NaN).
    """

    def __init__(self, window: int = paper.WINDOW, full_history: bool = False, confidence_eps: float = EPS) -> None:
        self.window_size = window
        self.full_history = full_history
        self.confidence_eps = confidence_eps
        self.variances: deque[float] = deque(maxlen=None if full_history else window)
        self.prev_norm: float | None = None
        self.prev_loss: float | None = None

    def update(self, train_loss: float, grad_var: float, grad_norm: float) -> EpochSignals:
        """Fold in one finished epoch and return its dN_t, dL_t and confidence c_t."""
        d_norm = relative_change(grad_norm, self.prev_norm)
        d_loss = relative_change(train_loss, self.prev_loss)
        # A non-finite variance would poison the median for a whole window; it is reported
        # (confidence NaN) but kept out of the reference statistics.
        if math.isfinite(grad_var):
            self.variances.append(grad_var)
            confidence = confidence_of(grad_var, statistics.median(self.variances), self.confidence_eps)
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
