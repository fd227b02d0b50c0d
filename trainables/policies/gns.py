"""GNS (McCandlish et al. 2018): train at the simple noise scale, with DEBA's cooldown (SPEC §5)."""

from __future__ import annotations

import math
from typing import Any

from trainables.policies.base import MEASURE_TWO_BATCH, CooldownPolicy
from trainables.policies.options import GnsOptions


def gns_target(b_simple: float, b_min: int, b_max: int) -> int | None:
    """clamp(floor(B_simple), b_min, b_max); +inf -> b_max; NaN -> None (no information, hold)."""
    if math.isnan(b_simple):
        return None
    if math.isinf(b_simple):
        return b_max if b_simple > 0 else b_min
    return min(max(math.floor(b_simple), b_min), b_max)


class GnsPolicy(CooldownPolicy):
    """Measure the two-batch statistics every epoch; B_simple = EMA(tr Sigma) / EMA(|G|^2) (separate
    EMAs, decay `ema_decay`); outside cooldown, B = clamp(floor(B_simple), b_min, b_max).

    Options: b_min (32), b_max (1024) [choice: DEBA's bounds, so both methods move in the same range];
    cooldown (10, DEBA's: after a change at t_last, epochs with t - t_last < cooldown hold, t_last = 0
    at start); ema_decay (0.5 [choice]: each epoch's value is already a mean over all its steps);
    micro_batches (2: each step's batch is split in k micro-batches whose gradient norms give the
    small-batch estimate); b0; lr_scaling. Rounding down and a change only when the clamped target
    differs from B are [choice]s. A non-positive EMA(|G|^2) gives B_simple = +inf -> b_max; a NaN
    (nothing finite measured yet) holds. The EMA'd B_simple is recorded every epoch (`noise_scale`).
    """

    name = "gns"
    Options = GnsOptions

    def method_measurements(self, epoch: int) -> frozenset[str]:
        """Two-batch statistics every epoch (the EMA needs every epoch, cooldown included)."""
        return frozenset({MEASURE_TWO_BATCH})

    def decide(self, epoch: int, signals: Any, **inputs: Any) -> dict[str, Any]:
        """Move B to the clamped noise scale outside cooldown."""
        if inputs.get("noise_trace") is None or inputs.get("noise_sqnorm") is None:
            raise ValueError(
                f"gns at epoch {epoch} needs noise_trace and noise_sqnorm (measurement {MEASURE_TWO_BATCH!r})"
            )
        batch = self.batch_size
        b_simple = self.noise.noise_scale()
        rec: dict[str, Any] = {"decision": "hold", "batch_size": batch, "noise_scale": b_simple}
        if self.in_cooldown(epoch):
            rec["in_cooldown"] = True
            return rec
        target = gns_target(b_simple, self.options.b_min, self.options.b_max)
        if target is not None and target != batch:
            rec.update(decision="increase" if target > batch else "rollback", batch_size=target)
            self.mark_change(epoch)
        return rec
