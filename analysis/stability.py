"""Stability profiling (the paper's Table 2): stability score, taxonomy, DEBA dynamics.

SPEC §4: S per fixed-method run (computed in :mod:`analysis.trials`), S_mean and S_std (ddof=1)
per (arch, dataset) across seeds, a class from boundaries that are options, and per DEBA run the
decision aggressiveness and convergence stability. Whether the class predicted the observed
benefit is judged with the rules documented on :class:`TaxonomyOptions` (all [choice]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

NATURALLY_UNSTABLE = "naturally unstable"
DYNAMICALLY_STABLE = "dynamically stable"
OVERLY_STABLE = "overly stable"
MODERATELY_STABLE = "moderately stable"
UNKNOWN = "unknown"

BENEFIT = "benefit"
NO_BENEFIT = "no benefit"
SEED_DEPENDENT = "seed-dependent"
UNRELIABLE = "unreliable"  # predicted for naturally unstable: anything but a consistent benefit


@dataclass(frozen=True)
class TaxonomyOptions:
    """Boundaries and prediction rules of the taxonomy (SPEC §4 defaults).

    Classes: S_mean < unstable_below -> naturally unstable; else S_std >= dynamic_std ->
    dynamically stable (rule skipped when S_std is NaN, i.e. one seed); else S_mean >=
    overly_stable_from -> overly stable; else moderately stable.

    Observed outcome of ``adaptive_method``/``adaptive_variant`` against fixed, from the per-seed
    dAcc: ``seed-dependent`` when >= 2 seeds have both signs, else ``benefit`` when the mean dAcc
    > benefit_min_pt, else ``no benefit``. Prediction per class: moderately and dynamically
    stable -> benefit; naturally unstable -> unreliable (right unless the outcome is a benefit);
    overly stable -> benefit only when the fixed runs' convergence stability is below
    stagnation_below (the paper: overly stable archs improve only from a stagnating baseline),
    otherwise no benefit.
    """

    unstable_below: float = 0.26
    dynamic_std: float = 0.10
    overly_stable_from: float = 0.54
    benefit_min_pt: float = 0.0
    stagnation_below: float = 0.20
    adaptive_method: str = "deba"
    adaptive_variant: str = "baseline"
    fixed_method: str = "fixed"

    def __post_init__(self) -> None:
        for name in ("unstable_below", "dynamic_std", "overly_stable_from", "stagnation_below"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"TaxonomyOptions.{name} must be a finite number >= 0, got {value!r}")
        if self.unstable_below > self.overly_stable_from:
            raise ValueError(
                "TaxonomyOptions.unstable_below must not exceed overly_stable_from "
                f"({self.unstable_below} > {self.overly_stable_from})"
            )


def classify(s_mean: float, s_std: float, opts: TaxonomyOptions = TaxonomyOptions()) -> str:
    """Taxonomy class of an (arch, dataset) from its S_mean and S_std."""
    if s_mean is None or pd.isna(s_mean):
        return UNKNOWN
    if s_mean < opts.unstable_below:
        return NATURALLY_UNSTABLE
    if s_std is not None and not pd.isna(s_std) and s_std >= opts.dynamic_std:
        return DYNAMICALLY_STABLE
    if s_mean >= opts.overly_stable_from:
        return OVERLY_STABLE
    return MODERATELY_STABLE


def observed_outcome(daccs: list[float], opts: TaxonomyOptions = TaxonomyOptions()) -> str | None:
    """Outcome of the adaptive method from its per-seed dAcc (pp); None without finite values."""
    vals = [v for v in daccs if v is not None and not pd.isna(v)]
    if not vals:
        return None
    if len(vals) >= 2 and min(vals) < 0 < max(vals):
        return SEED_DEPENDENT
    return BENEFIT if sum(vals) / len(vals) > opts.benefit_min_pt else NO_BENEFIT


def predicted_outcome(cls: str, fixed_convergence: float, opts: TaxonomyOptions = TaxonomyOptions()) -> str | None:
    """What the class predicts (see :class:`TaxonomyOptions`); None for an unknown class."""
    if cls in (MODERATELY_STABLE, DYNAMICALLY_STABLE):
        return BENEFIT
    if cls == NATURALLY_UNSTABLE:
        return UNRELIABLE
    if cls == OVERLY_STABLE:
        if fixed_convergence is None or pd.isna(fixed_convergence):
            return None
        return BENEFIT if fixed_convergence < opts.stagnation_below else NO_BENEFIT
    return None


def prediction_holds(predicted: str | None, observed: str | None) -> bool | None:
    """Whether the observed outcome matches the prediction; None when either is unknown."""
    if predicted is None or observed is None or pd.isna(predicted) or pd.isna(observed):
        return None
    if predicted == UNRELIABLE:
        return observed != BENEFIT
    return predicted == observed


def deba_dynamics(summary: pd.DataFrame, opts: TaxonomyOptions = TaxonomyOptions()) -> pd.DataFrame:
    """Per run of the adaptive method (all variants): aggressiveness, convergence stability, S."""
    d = summary[summary["method"].eq(opts.adaptive_method) & (summary["n_epochs"] > 0)]
    cols = [
        "study", "arch", "dataset", "variant", "seed", "trial_id", "status", "n_increase",
        "n_rollback", "n_decisions", "aggressiveness", "convergence_stability", "S", "final_bs",
    ]  # fmt: skip
    return d[cols].sort_values(["study", "arch", "dataset", "variant", "seed"]).reset_index(drop=True)


def taxonomy(summary: pd.DataFrame, pairs: pd.DataFrame, opts: TaxonomyOptions = TaxonomyOptions()) -> pd.DataFrame:
    """Table 2: per (study, arch, dataset) of the completed fixed runs.

    Columns: n_seeds, S_mean, S_std, class, fixed_convergence (mean over the fixed runs),
    aggressiveness, convergence_stability and S_adaptive (means over the completed adaptive
    baseline runs of the same study), dacc_mean and n_paired (from the comparison pairs whose
    fixed partner is in this study), observed, predicted, prediction_ok.
    """
    keys = ["study", "arch", "dataset"]
    fixed = summary[
        summary["method"].eq(opts.fixed_method) & summary["status"].eq("completed") & (summary["n_epochs"] > 0)
    ]
    t = fixed.groupby(keys, sort=True).agg(
        n_seeds=("seed", "nunique"),
        S_mean=("S", "mean"),
        S_std=("S", "std"),
        fixed_convergence=("convergence_stability", "mean"),
    )
    adaptive = summary[
        summary["method"].eq(opts.adaptive_method)
        & summary["variant"].eq(opts.adaptive_variant)
        & summary["status"].eq("completed")
    ]
    dyn = adaptive.groupby(keys).agg(
        aggressiveness=("aggressiveness", "mean"),
        convergence_stability=("convergence_stability", "mean"),
        S_adaptive=("S", "mean"),
    )
    t = t.join(dyn, how="left")
    ap = pairs[pairs["method"].eq(opts.adaptive_method) & pairs["variant"].eq(opts.adaptive_variant)]
    dacc_lists = ap.groupby(["fixed_study", "arch", "dataset"])["dacc"].agg(list)
    dacc_lists.index = dacc_lists.index.set_names(keys)
    t["class"] = [classify(m, s, opts) for m, s in zip(t["S_mean"], t["S_std"])]
    daccs = [dacc_lists.get(k, []) for k in t.index]
    t["n_paired"] = [len(v) for v in daccs]
    t["dacc_mean"] = [pd.Series(v, dtype=float).mean() for v in daccs]
    # Object columns keep None for "unknown" (a str column would turn it into NaN).
    observed = [observed_outcome(v, opts) for v in daccs]
    predicted = [predicted_outcome(c, fc, opts) for c, fc in zip(t["class"], t["fixed_convergence"])]
    t["observed"] = pd.Series(observed, index=t.index, dtype=object)
    t["predicted"] = pd.Series(predicted, index=t.index, dtype=object)
    t["prediction_ok"] = pd.Series(
        [prediction_holds(p, o) for p, o in zip(predicted, observed)], index=t.index, dtype=object
    )
    return t.reset_index()
