"""The `fixed` policy: one batch size for the whole run (the study's baseline)."""

from __future__ import annotations

from typing import Any

from trainables.policies.base import BatchSizePolicy
from trainables.policies.options import FixedOptions


class FixedPolicy(BatchSizePolicy):
    """Constant batch size `b0`; still records the DEBA signals so the run can profile."""

    name = "fixed"
    Options = FixedOptions
    can_change_batch = False

    def decide(self, epoch: int, signals: Any, **inputs: Any) -> dict[str, Any]:
        """Always hold."""
        return {"decision": "hold", "batch_size": self.batch_size}
