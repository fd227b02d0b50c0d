"""DEBA: grow, roll back or hold the batch size from gradient and loss stability (SPEC §1-2)."""

from __future__ import annotations

import math
from typing import Any

from trainables.paper import THRESHOLDS, UNIVERSAL_THRESHOLDS
from trainables.policies.base import CooldownPolicy
from trainables.policies.options import DebaOptions, PolicyOptions
from trainables.policies.signal_tracker import EpochSignals
from trainables.settings import fail

# The tiny test models have no Table 1 row: thresholds calibrated by SPEC §2's rule (theta_stab =
# p75 of dN, theta_conf = median of c, epochs >= 2) from this project's demo fixed runs (digits,
# window 5, seeds 0-2) [choice]: a starting point for runs without Ray, not a measurement of any
# other setting (calibrate your own: docs/results, README).
TEST_ARCH_THRESHOLDS: dict[str, tuple[float, float]] = {"tiny_cnn": (0.29, 1.00), "tiny_mlp": (0.27, 1.00)}
# Per-arch (theta_stab, theta_conf): paper Table 1 (trainables/paper.py), and the test models'.
ARCH_THRESHOLDS: dict[str, tuple[float, float]] = {**THRESHOLDS, **TEST_ARCH_THRESHOLDS}


def decide_deba(
    rule: str, confidence: float, d_norm: float, d_loss: float, theta_stab: float, theta_conf: float
) -> str:
    """The DEBA decision outside cooldown: "increase", "rollback" or "hold" (SPEC §2).

    Non-finite signals carry no information and give "hold" [choice].
    """
    if not all(math.isfinite(x) for x in (confidence, d_norm, d_loss)):
        return "hold"
    stable_gradients = d_norm < theta_stab
    stable_loss = d_loss < theta_stab
    if confidence < theta_conf and stable_gradients and stable_loss:
        return "increase"
    if rule == "either":
        unstable = confidence > theta_conf or not stable_gradients
    else:  # "both": both symptoms are needed before shrinking
        unstable = confidence > theta_conf and not stable_gradients
    return "rollback" if unstable else "hold"


def resolve_thresholds(arch: str | None, options: DebaOptions) -> tuple[float, float]:
    """(theta_stab, theta_conf): the options' values where given, else the universal pair or the
    arch's Table 1 row; ValueError when an arch without a row gets neither."""
    if options.thresholds == "universal":
        base: tuple[float | None, float | None] = UNIVERSAL_THRESHOLDS
    else:
        base = ARCH_THRESHOLDS.get(arch or "", (None, None))
    stab = options.theta_stab if options.theta_stab is not None else base[0]
    conf = options.theta_conf if options.theta_conf is not None else base[1]
    if stab is None or conf is None:
        missing = " and ".join(n for n, v in (("theta_stab", stab), ("theta_conf", conf)) if v is None)
        fail(
            "arch",
            arch,
            f"an arch with Table 1 thresholds ({', '.join(sorted(ARCH_THRESHOLDS))}): arch={arch!r} "
            f"has no Table 1 thresholds, so give {missing}: calibrated ones (profile it, then "
            "`python -m analysis` writes calibration.json for --thresholds) or explicit ones "
            "(--policy-opt theta_stab=X --policy-opt theta_conf=Y), or thresholds='universal'",
        )
    return float(stab), float(conf)


class DebaPolicy(CooldownPolicy):
    """DEBA with every [choice] of SPEC §1-2 as a named option (policies/options.py, DebaOptions).

    A decision whose update would leave B unchanged (an increase at b_max, a rollback at b_min) is
    recorded as "hold" and starts no cooldown when cooldown_on_noop is False (the default [choice]:
    nothing changed, so nothing needs to settle); with cooldown_on_noop True it keeps its decision
    and starts a cooldown. Non-finite signals always give "hold".
    """

    name = "deba"
    Options = DebaOptions
    options: DebaOptions

    def __init__(
        self, arch: str | None = None, dataset: str | None = None, options: PolicyOptions | None = None
    ) -> None:
        super().__init__(arch, dataset, options)
        self.theta_stab, self.theta_conf = resolve_thresholds(arch, self.options)

    @classmethod
    def check_context(cls, options: PolicyOptions, arch: str | None, dataset: str | None) -> None:
        """The arch needs thresholds (its Table 1 row, the universal pair, or given ones)."""
        resolve_thresholds(arch, options)  # type: ignore[arg-type]

    def decide(self, epoch: int, signals: EpochSignals, **inputs: Any) -> dict[str, Any]:
        """Apply cooldown, the decision rule and the bounded multiplicative update."""
        opts = self.options
        batch = self.batch_size
        if self.in_cooldown(epoch):
            return {"decision": "hold", "batch_size": batch, "in_cooldown": True}
        decision = decide_deba(
            opts.decision_rule,
            signals.confidence,
            signals.grad_norm_variation,
            signals.loss_variation,
            self.theta_stab,
            self.theta_conf,
        )
        if decision == "hold":
            return {"decision": "hold", "batch_size": batch, "in_cooldown": False}
        if decision == "increase":
            new_batch = min(math.floor(opts.alpha * batch), opts.b_max)
        else:
            new_batch = max(math.floor(opts.beta * batch), opts.b_min)
        if new_batch == batch and not opts.cooldown_on_noop:
            decision = "hold"  # nothing changed, so nothing needs to settle
        else:
            self.mark_change(epoch)
        return {"decision": decision, "batch_size": new_batch, "in_cooldown": False}
