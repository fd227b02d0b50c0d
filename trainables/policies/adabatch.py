"""AdaBatch (Devarakonda et al. 2017, as in the DiveBatch authors' code): double B every T epochs (SPEC §5)."""

from __future__ import annotations

from typing import Any

from trainables.policies.base import BatchSizePolicy, check_number


class AdaBatchPolicy(BatchSizePolicy):
    """After every `resize_every`-th epoch (T = 20), B = min(factor * B, b_max).

    Options: resize_every (T, 20), factor (2, the doubling), b_max (2048 [choice]: DiveBatch's cap,
    since AdaBatch is its baseline), b0, plus the common ones. The paper's optional "lr x2 at each
    doubling" is lr_scaling="linear" (lr = base lr x B/b0; identical while b_max/b0 is a power of
    two, and it keeps lr/B constant at a non-power-of-two cap). A doubling that would not change B
    (at b_max) is recorded as "hold". AdaBatch measures nothing.
    """

    name = "adabatch"
    OPTIONS = {**BatchSizePolicy.OPTIONS, "resize_every": 20, "factor": 2, "b_max": 2048}

    def __init__(self, arch: str | None = None, dataset: str | None = None, **options: Any) -> None:
        super().__init__(arch, dataset, **options)
        opts = self.options
        check_number("resize_every", opts["resize_every"], minimum=1, integer=True)
        check_number("factor", opts["factor"], minimum=2, integer=True)
        check_number("b_max", opts["b_max"], minimum=1, integer=True)
        if opts["b0"] > opts["b_max"]:
            raise ValueError(f"need b0 <= b_max, got b0={opts['b0']}, b_max={opts['b_max']}")

    def is_resize_epoch(self, epoch: int) -> bool:
        """Whether B changes after `epoch` (epochs T, 2T, ...)."""
        return epoch % self.options["resize_every"] == 0

    def decide(self, epoch: int, signals: Any, **inputs: Any) -> dict[str, Any]:
        """Multiply B by `factor` after a resize epoch, capped at b_max."""
        batch = self.batch_size
        if not self.is_resize_epoch(epoch):
            return {"decision": "hold", "batch_size": batch}
        new_batch = min(self.options["factor"] * batch, self.options["b_max"])
        return {"decision": "increase" if new_batch != batch else "hold", "batch_size": new_batch}
