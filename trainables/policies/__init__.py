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

from collections.abc import Mapping
from typing import Any

from trainables.policies.adabatch import AdaBatchPolicy
from trainables.policies.base import MEASURE_PER_SAMPLE, MEASURE_TWO_BATCH, MEASUREMENT_NAMES, BatchSizePolicy
from trainables.policies.deba import ARCH_THRESHOLDS, DebaPolicy
from trainables.policies.divebatch import DiveBatchPolicy
from trainables.policies.fixed import FixedPolicy
from trainables.policies.gns import GnsPolicy
from trainables.policies.options import LR_SCALINGS, PolicyOptions
from trainables.policies.signal_tracker import SIGNAL_OPTIONS
from trainables.settings import build, defaults, fail, fields_of

POLICIES: dict[str, type[BatchSizePolicy]] = {
    FixedPolicy.name: FixedPolicy,
    DebaPolicy.name: DebaPolicy,
    AdaBatchPolicy.name: AdaBatchPolicy,
    DiveBatchPolicy.name: DiveBatchPolicy,
    GnsPolicy.name: GnsPolicy,
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def _policy(name: str) -> type[BatchSizePolicy]:
    if name not in POLICIES:
        fail("method", name, "one of " + ", ".join(map(repr, POLICIES)))
    return POLICIES[name]


def policy_options_object(name: str, options: Mapping[str, Any]) -> PolicyOptions:
    """The typed options of policy `name` from a mapping; ValueError names an unknown or bad option."""
    return build(_policy(name).Options, options, f"policy {name!r} option")


def policy_context_check(name: str, options: PolicyOptions, arch: str | None, dataset: str | None) -> None:
    """Refuse options that cannot work for this arch/dataset (e.g. DEBA without thresholds for the arch)."""
    _policy(name).check_context(options, arch, dataset)


def make_policy(name: str, arch: str | None = None, dataset: str | None = None, **options: Any) -> BatchSizePolicy:
    """Build the policy `name` for `arch` (and `dataset`, which DiveBatch's delta default reads);
    unknown names or options raise ValueError naming them."""
    return _policy(name)(arch=arch, dataset=dataset, options=policy_options_object(name, options))


def policy_options(name: str) -> dict[str, Any]:
    """The options `name` accepts, with their defaults (read from its options dataclass)."""
    return defaults(_policy(name).Options)


def non_default_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of policy `name` in `options` that differ from its defaults (what sets a trial apart)."""
    base = policy_options(name)
    return {k: v for k, v in options.items() if k not in base or v != base[k]}


def option_fields() -> dict[str, tuple[Any, tuple[str, ...]]]:
    """Every policy option by name: (its field in the first policy that has it, the policies that accept
    it). The command lines' policy flags are generated from these (one flag per option name)."""
    out: dict[str, tuple[Any, tuple[str, ...]]] = {}
    for name, cls in POLICIES.items():
        for f in fields_of(cls.Options):
            field, methods = out.get(f.name, (f, ()))
            out[f.name] = (field, methods + (name,))
    return out


def signal_reading(options: Mapping[str, Any]) -> dict[str, Any]:
    """The signal options (SIGNAL_OPTIONS) of a policy's options mapping, defaults filled in: how its
    signals are computed, and so which calibrated thresholds apply to it."""
    base = defaults(PolicyOptions)
    return {k: options.get(k, base[k]) for k in SIGNAL_OPTIONS}


__all__ = [
    "ARCH_THRESHOLDS",
    "LR_SCALINGS",
    "MEASUREMENT_NAMES",
    "MEASURE_PER_SAMPLE",
    "MEASURE_TWO_BATCH",
    "POLICIES",
    "POLICY_NAMES",
    "SIGNAL_OPTIONS",
    "BatchSizePolicy",
    "PolicyOptions",
    "make_policy",
    "non_default_options",
    "option_fields",
    "policy_context_check",
    "policy_options",
    "policy_options_object",
    "signal_reading",
]
