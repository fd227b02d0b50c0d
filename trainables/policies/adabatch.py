"""AdaBatch (Devarakonda et al. 2017, as in the DiveBatch authors' code): double B every T epochs (SPEC §5)."""

from __future__ import annotations

from typing import Any

from trainables.policies.base import BatchSizePolicy
from trainables.policies.options import AdaBatchOptions


class AdaBatchPolicy(BatchSizePolicy):
    """After every `resize_every`-th epoch (T = 20), B = min(factor * B, b_max).

    Options: resize_every (T, 20), factor (2, the doubling), b_max (2048 [choice]: DiveBatch's cap,
    since AdaBatch is its baseline), b0, plus the common ones. The paper's optional "lr x2 at each
    doubling" is lr_scaling="linear" (lr = base lr x B/b0; identical while b_max/b0 is a power of
    two, and it keeps lr/B constant at a non-power-of-two cap). A doubling that would not change B
    (at b_max) is recorded as "hold". AdaBatch measures nothing.
    """

    name = "adabatch"
    Options = AdaBatchOptions
    options: AdaBatchOptions

    def is_resize_epoch(self, epoch: int) -> bool:
        """Whether B changes after `epoch` (epochs T, 2T, ...)."""
        return epoch % self.options.resize_every == 0

    def decide(self, epoch: int, signals: Any, **inputs: Any) -> dict[str, Any]:
        """Multiply B by `factor` after a resize epoch, capped at b_max."""
        batch = self.batch_size
        if not self.is_resize_epoch(epoch):
            return {"decision": "hold", "batch_size": batch}
        new_batch = min(self.options.factor * batch, self.options.b_max)
        return {"decision": "increase" if new_batch != batch else "hold", "batch_size": new_batch}
