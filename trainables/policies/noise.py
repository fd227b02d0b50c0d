"""Gradient-noise arithmetic shared by the policies (SPEC §5), in pure Python.

McCandlish et al. (2018): with g_b the gradient of a b-sample batch and g_B that of a B-sample batch,
E|g_b|^2 = |G|^2 + tr(Sigma)/b, so two batch sizes give unbiased estimates of the true gradient's
squared norm |G|^2 and of the per-sample covariance trace tr(Sigma); their ratio is the simple noise
scale B_simple = tr(Sigma) / |G|^2. The epoch loop measures the two norms (trainables/estimators.py);
everything that turns them into decisions lives here, testable without torch.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["NoiseEMA", "adascale_gain", "simple_noise_scale", "two_batch_estimates"]


def two_batch_estimates(sq_small: float, b_small: int, sq_big: float, b_big: int) -> tuple[float, float]:
    """(tr(Sigma), |G|^2) from |g_small|^2 of a b_small batch and |g_big|^2 of a b_big batch (SPEC §5).

    |G|^2 ~ (B|g_B|^2 - b|g_b|^2) / (B - b);  tr(Sigma) ~ (|g_b|^2 - |g_B|^2) / (1/b - 1/B).
    Either estimate can be negative on a noisy step; they are averaged over many steps before use.
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got b_small={b_small}, b_big={b_big}")
    sqnorm = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return trace, sqnorm


def simple_noise_scale(trace: float, sqnorm: float) -> float:
    """B_simple = tr(Sigma) / |G|^2, with the sign cases made explicit.

    |G|^2 <= 0 means the mean gradient is buried in the noise: B_simple = +inf (so a clamp gives the
    largest batch, and DiveBatch's non-finite rule gives B_max). A negative trace gives a negative
    B_simple (clamps to the smallest batch). NaN in, NaN out.
    """
    if math.isnan(trace) or math.isnan(sqnorm):
        return math.nan
    if sqnorm <= 0.0:
        return math.inf
    return trace / sqnorm


def adascale_gain(trace: float | None, sqnorm: float | None, batch_size: int, b0: int) -> float:
    """AdaScale's gain r = (var + sqr) / (var/s + sqr) with s = B/B_0 (SPEC §5).

    var is the gradient variance at the base batch size, tr(Sigma)/B_0, and sqr = |G|^2 (Johnson
    et al. 2020). r lies between 1 and s; a non-positive |G|^2 gives the noise-dominated limit r = s,
    a non-positive trace gives r = 1, and no statistics yet (None/NaN) give r = 1.
    """
    s = batch_size / b0
    lo, hi = min(1.0, s), max(1.0, s)
    if trace is None or sqnorm is None or math.isnan(trace) or math.isnan(sqnorm):
        return 1.0
    if sqnorm <= 0.0:
        return s
    var = max(trace, 0.0) / b0
    gain = (var + sqnorm) / (var / s + sqnorm)
    return min(max(gain, lo), hi)


class NoiseEMA:
    """Separate exponential moving averages of tr(Sigma) and |G|^2, one update per measured epoch.

    decay d: ema = d * ema + (1 - d) * x, initialised with the first value (the usual zero start with
    bias correction gives the same ratio, since both EMAs share d). A non-finite input leaves both
    averages unchanged.
    """

    def __init__(self, decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay={decay!r} must be a number in [0, 1)")
        self.decay = float(decay)
        self.trace: float | None = None
        self.sqnorm: float | None = None

    def update(self, trace: float, sqnorm: float) -> None:
        """Fold in one epoch's mean estimates."""
        if not (math.isfinite(trace) and math.isfinite(sqnorm)):
            return
        if self.trace is None or self.sqnorm is None:
            self.trace, self.sqnorm = float(trace), float(sqnorm)
            return
        d = self.decay
        self.trace = d * self.trace + (1.0 - d) * trace
        self.sqnorm = d * self.sqnorm + (1.0 - d) * sqnorm

    def noise_scale(self) -> float:
        """EMA(tr Sigma) / EMA(|G|^2); NaN before the first update."""
        if self.trace is None or self.sqnorm is None:
            return math.nan
        return simple_noise_scale(self.trace, self.sqnorm)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {"trace": self.trace, "sqnorm": self.sqnorm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""
        self.trace = None if state["trace"] is None else float(state["trace"])
        self.sqnorm = None if state["sqnorm"] is None else float(state["sqnorm"])
