"""Batch-size policies: a registry and one constructor, `make_policy`.

    from trainables.policies import make_policy
    p = make_policy("deba", arch="resnet18", cooldown=5)
    p.batch_size                      # batch size for the next epoch
    rec = p.step(epoch=1, train_loss=2.3, grad_var=1e-6, grad_norm=0.8)
    make_policy("divebatch", arch="resnet18", dataset="cifar100", estimator="noise_scale")

Policies: fixed, deba (SPEC §1-2), adabatch, divebatch, gns (SPEC §5); every one accepts the
lr co-adaptation options of policies/base.py.

Pure Python: importing this package never imports torch.
"""

from __future__ import annotations

from typing import Any

from trainables.policies.adabatch import AdaBatchPolicy
from trainables.policies.base import (LR_SCALINGS, MEASURE_PER_SAMPLE, MEASURE_TWO_BATCH, MEASUREMENT_NAMES,
                                      BatchSizePolicy)
from trainables.policies.deba import ARCH_THRESHOLDS, UNIVERSAL_THRESHOLDS, DebaPolicy
from trainables.policies.divebatch import DiveBatchPolicy
from trainables.policies.fixed import FixedPolicy
from trainables.policies.gns import GnsPolicy

POLICIES: dict[str, type[BatchSizePolicy]] = {
    FixedPolicy.name: FixedPolicy,
    DebaPolicy.name: DebaPolicy,
    AdaBatchPolicy.name: AdaBatchPolicy,
    DiveBatchPolicy.name: DiveBatchPolicy,
    GnsPolicy.name: GnsPolicy,
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def make_policy(name: str, arch: str | None = None, dataset: str | None = None, **options: Any) -> BatchSizePolicy:
    """Build the policy `name` for `arch` (and `dataset`, which DiveBatch's delta default reads);
    unknown names or options raise ValueError naming them."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(POLICIES)}")
    return POLICIES[name](arch=arch, dataset=dataset, **options)


def policy_options(name: str) -> dict[str, Any]:
    """The options `name` accepts, with their defaults."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(POLICIES)}")
    return dict(POLICIES[name].OPTIONS)


__all__ = ["ARCH_THRESHOLDS", "LR_SCALINGS", "MEASUREMENT_NAMES", "MEASURE_PER_SAMPLE", "MEASURE_TWO_BATCH",
           "POLICIES", "POLICY_NAMES", "UNIVERSAL_THRESHOLDS", "BatchSizePolicy", "make_policy", "policy_options"]
