"""The options of every batch-size policy, as typed dataclasses (one per policy, shared bases).

`policy_options(name)` lists a policy's options with their defaults; `make_policy(name, ...)`
builds the options (every value checked here, in the one wording of trainables/settings.py) and
then the policy. Every [choice] of SPEC §1-5 is one field, with its help text. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainables import paper
from trainables.policies.signal_tracker import CONFIDENCE_REFERENCES, EPS, SIGNAL_SOURCES
from trainables.settings import fail, setting, validate

LR_SCALINGS: tuple[str, ...] = ("none", "linear", "sqrt", "adascale")
# "both": roll back only on both symptoms (high confidence and unstable gradients), the default;
# "either": roll back on either symptom, the literal reading of the paper's prose (SPEC §2).
DECISION_RULES: tuple[str, ...] = ("both", "either")
THRESHOLD_SOURCES: tuple[str, ...] = ("arch", "universal")
ESTIMATORS: tuple[str, ...] = ("per_sample", "noise_scale")
DIVERSITY_SUMS: tuple[str, ...] = ("training", "per_sample")


@dataclass(frozen=True)
class PolicyOptions:
    """Options every policy accepts (policies/base.py describes the lr co-adaptation rules)."""

    b0: int = setting(paper.B0, "batch size of the first epoch (B_0)", kind="int", minimum=1, flag="--batch-size")
    window: int = setting(
        paper.WINDOW, "how many epochs of gradient variance the confidence's reference sees (W)", kind="int", minimum=1
    )
    full_history: bool = setting(
        False, "reference over every epoch instead of the window (the paper's ablation)", kind="bool"
    )
    signal_source: str = setting(
        "last_step",
        "gradient of the signals: the epoch's last step, the mean of all its steps, or mixed (variance "
        "from the epoch mean, norm from the last step)",
        kind="choice",
        choices=SIGNAL_SOURCES,
    )
    confidence_eps: float = setting(
        EPS,
        "eps of the confidence's denominator (0: scale-free; a zero reference then holds)",
        kind="float",
        minimum=0.0,
        neutral=EPS,
    )
    confidence_reference: str = setting(
        "median",
        "the confidence's reference: the median or the mean of the window's gradient variances",
        kind="choice",
        choices=CONFIDENCE_REFERENCES,
        neutral="median",
    )
    confidence_includes_current: bool = setting(
        True,
        "the confidence's reference window holds the current epoch's variance (false: only the earlier ones)",
        kind="bool",
        neutral=True,
    )
    lr_scaling: str = setting(
        "none",
        "lr co-adaptation with the batch size: none (the paper), linear, sqrt, adascale",
        kind="choice",
        choices=LR_SCALINGS,
    )
    ema_decay: float = setting(
        0.5, "decay of the EMAs of the two-batch statistics (gns, adascale)", kind="float", minimum=0.0, below=1.0
    )
    micro_batches: int = setting(
        2, "micro-batches per step when the two-batch statistics are measured", kind="int", minimum=2
    )

    def __post_init__(self) -> None:
        validate(self)
        self.check()

    def check(self) -> None:
        """Checks across fields (subclasses extend)."""

    def bounded(self, low: str | None, high: str) -> None:
        """Refuse b0 outside [low, high] (the policy's batch-size bounds)."""
        lo = getattr(self, low) if low else 1
        if not lo <= self.b0 <= getattr(self, high):
            bounds = f"{low} <= b0 <= {high}" if low else f"b0 <= {high}"
            fail("b0", self.b0, f"{bounds} ({low + '=' + str(lo) + ', ' if low else ''}{high}={getattr(self, high)})")


@dataclass(frozen=True)
class FixedOptions(PolicyOptions):
    """`fixed`: B = b0 throughout."""


@dataclass(frozen=True)
class CooldownOptions(PolicyOptions):
    """A policy that moves B within [b_min, b_max] and holds for `cooldown` epochs after a change."""

    b_min: int = setting(paper.B_MIN, "smallest batch size", kind="int", minimum=1)
    b_max: int = setting(paper.B_MAX, "largest batch size", kind="int", minimum=1)
    cooldown: int = setting(
        paper.COOLDOWN, "epochs after a change during which every decision is hold (C)", kind="int", minimum=0
    )

    def check(self) -> None:
        """b_min <= b0 <= b_max."""
        self.bounded("b_min", "b_max")


@dataclass(frozen=True)
class DebaOptions(CooldownOptions):
    """DEBA (SPEC §1-2): every reconstructed choice of the lost equations is a field."""

    theta_stab: float | None = setting(
        None,
        "stability threshold on dN and dL (None: the arch's Table 1 value)",
        kind="float",
        minimum=0.0,
        strict=True,
        nullable=True,
    )
    theta_conf: float | None = setting(
        None,
        "confidence threshold (None: the arch's Table 1 value)",
        kind="float",
        minimum=0.0,
        strict=True,
        nullable=True,
    )
    thresholds: str = setting(
        "arch",
        "where missing thresholds come from: the arch's Table 1 row, or the universal (0.3, 0.5) of the ablation",
        kind="choice",
        choices=THRESHOLD_SOURCES,
        flag="--threshold-source",
    )
    alpha: float = setting(paper.GROWTH, "growth factor of an increase", kind="float", minimum=1.0, strict=True)
    beta: float = setting(
        paper.SHRINK, "shrink factor of a rollback", kind="float", minimum=0.0, strict=True, below=1.0
    )
    decision_rule: str = setting(
        "both",
        "roll back on both symptoms (c > theta_conf and unstable gradients) or on either",
        kind="choice",
        choices=DECISION_RULES,
    )
    cooldown_on_noop: bool = setting(
        False, "a decision that leaves B unchanged (at a bound) keeps its label and starts a cooldown", kind="bool"
    )


@dataclass(frozen=True)
class GnsOptions(CooldownOptions):
    """GNS (SPEC §5): the cooldown family's options; it measures the two-batch statistics."""


@dataclass(frozen=True)
class ResizeOptions(PolicyOptions):
    """A policy that resizes B every `resize_every` epochs, never above b_max (AdaBatch, DiveBatch)."""

    resize_every: int = setting(20, "epochs between resizes (T)", kind="int", minimum=1)
    b_max: int = setting(2048, "largest batch size (DiveBatch's cap; AdaBatch is its baseline)", kind="int", minimum=1)

    def check(self) -> None:
        """b0 <= b_max."""
        self.bounded(None, "b_max")


@dataclass(frozen=True)
class AdaBatchOptions(ResizeOptions):
    """AdaBatch (SPEC §5): multiply B by `factor` every `resize_every` epochs, up to b_max."""

    factor: int = setting(2, "growth factor at each resize", kind="int", minimum=2)


@dataclass(frozen=True)
class DiveBatchOptions(ResizeOptions):
    """DiveBatch (SPEC §5): grow B from the gradient diversity measured every `resize_every` epochs."""

    delta: float | None = setting(
        None,
        "scale of the diversity bound (None: 0.1 for cifar10, 0.01 for cifar100, 0.1 otherwise)",
        kind="float",
        minimum=0.0,
        strict=True,
        nullable=True,
    )
    estimator: str = setting(
        "per_sample",
        "per-sample gradient norms, or the two-batch noise scale (n*Delta = 1 + B_simple)",
        kind="choice",
        choices=ESTIMATORS,
    )
    diversity_sum: str = setting(
        "training",
        "denominator of the per-sample estimator: the training steps' "
        "gradient sum (authors) or the per-sample pass's own",
        kind="choice",
        choices=DIVERSITY_SUMS,
    )
    per_sample_chunk: int = setting(32, "samples per torch.func chunk of the per-sample pass", kind="int", minimum=1)
