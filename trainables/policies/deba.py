"""DEBA: grow, roll back or hold the batch size from gradient and loss stability (SPEC §1-2)."""

from __future__ import annotations

import math
from typing import Any

from trainables.policies.base import CooldownPolicy, check_choice, check_number
from trainables.policies.signals import EPS, EpochSignals

# Paper Table 1: (theta_stab, theta_conf) per registry architecture name.
ARCH_THRESHOLDS: dict[str, tuple[float, float]] = {
    "mobilenetv3": (0.25, 0.5),
    "efficientnet_b0": (0.60, 0.8),
    "resnet18": (0.55, 0.6),
    "resnet50": (12.0, 0.8),
    "densenet121": (0.55, 0.6),
    "vit_b16": (0.40, 0.7),
}
# The universal-thresholds ablation [choice].
UNIVERSAL_THRESHOLDS: tuple[float, float] = (0.3, 0.5)

# "both": roll back only on both symptoms (high confidence and unstable gradients), the default;
# "either": roll back on either symptom, the literal reading of the paper's prose (SPEC §2).
DECISION_RULES: tuple[str, ...] = ("both", "either")
THRESHOLD_SOURCES: tuple[str, ...] = ("arch", "universal")


def decide_deba(rule: str, confidence: float, d_norm: float, d_loss: float,
                theta_stab: float, theta_conf: float) -> str:
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


class DebaPolicy(CooldownPolicy):
    """DEBA with every [choice] of SPEC §1-2 as a named option.

    Options: theta_stab, theta_conf (override the architecture's Table 1 values), thresholds
    ("arch" = Table 1, "universal" = (0.3, 0.5)), alpha, beta, b0, b_min, b_max, window, cooldown,
    full_history, decision_rule ("both" | "either"), signal_source ("last_step" | "epoch_mean"),
    confidence_eps (the eps of c_t's denominator, default 1e-8; 0 = scale-free), cooldown_on_noop,
    and the common lr_scaling / ema_decay / micro_batches (policies/base.py; lr_scaling "none" is the paper).

    A decision whose update would leave B unchanged (an increase at b_max, a rollback at b_min) is
    recorded as "hold" and starts no cooldown when cooldown_on_noop is False (the default [choice]:
    nothing changed, so nothing needs to settle); with cooldown_on_noop True it keeps its decision
    and starts a cooldown. Non-finite signals always give "hold".
    """

    name = "deba"
    OPTIONS = {**CooldownPolicy.OPTIONS, "theta_stab": None, "theta_conf": None, "thresholds": "arch",
               "alpha": 1.5, "beta": 0.8, "decision_rule": "both", "confidence_eps": EPS,
               "cooldown_on_noop": False}

    def __init__(self, arch: str | None = None, dataset: str | None = None, **options: Any) -> None:
        super().__init__(arch, dataset, **options)
        opts = self.options
        check_choice("thresholds", opts["thresholds"], THRESHOLD_SOURCES)
        check_choice("decision_rule", opts["decision_rule"], DECISION_RULES)
        check_number("alpha", opts["alpha"], minimum=1.0, strict=True)
        check_number("beta", opts["beta"], minimum=0.0, strict=True)
        if opts["beta"] >= 1.0:
            raise ValueError(f"beta={opts['beta']!r} must be < 1 (the rollback factor shrinks the batch)")
        check_number("confidence_eps", opts["confidence_eps"], minimum=0.0)
        check_choice("cooldown_on_noop", opts["cooldown_on_noop"], (False, True))
        self.tracker.confidence_eps = float(opts["confidence_eps"])
        self.theta_stab, self.theta_conf = self._thresholds(arch, opts)

    @staticmethod
    def _thresholds(arch: str | None, opts: dict[str, Any]) -> tuple[float, float]:
        if opts["thresholds"] == "universal":
            base: tuple[float | None, float | None] = UNIVERSAL_THRESHOLDS
        elif arch in ARCH_THRESHOLDS:
            base = ARCH_THRESHOLDS[arch]
        else:
            base = (None, None)
        stab = opts["theta_stab"] if opts["theta_stab"] is not None else base[0]
        conf = opts["theta_conf"] if opts["theta_conf"] is not None else base[1]
        if stab is None or conf is None:
            raise ValueError(
                f"arch={arch!r} has no Table 1 thresholds (known: {', '.join(sorted(ARCH_THRESHOLDS))}); "
                "give theta_stab and theta_conf, or thresholds='universal'")
        check_number("theta_stab", stab, minimum=0.0, strict=True)
        check_number("theta_conf", conf, minimum=0.0, strict=True)
        return float(stab), float(conf)

    def decide(self, epoch: int, signals: EpochSignals, **inputs: Any) -> dict[str, Any]:
        """Apply cooldown, the decision rule and the bounded multiplicative update."""
        opts = self.options
        batch = self.batch_size
        if self.in_cooldown(epoch):
            return {"decision": "hold", "batch_size": batch, "in_cooldown": True}
        decision = decide_deba(opts["decision_rule"], signals.confidence, signals.grad_norm_variation,
                               signals.loss_variation, self.theta_stab, self.theta_conf)
        if decision == "hold":
            return {"decision": "hold", "batch_size": batch, "in_cooldown": False}
        if decision == "increase":
            new_batch = min(math.floor(opts["alpha"] * batch), opts["b_max"])
        else:
            new_batch = max(math.floor(opts["beta"] * batch), opts["b_min"])
        if new_batch == batch and not opts["cooldown_on_noop"]:
            decision = "hold"  # nothing changed, so nothing needs to settle
        else:
            self.mark_change(epoch)
        return {"decision": decision, "batch_size": new_batch, "in_cooldown": False}
