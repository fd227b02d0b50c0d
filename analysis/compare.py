"""Method-vs-fixed comparison (the paper's Tables 3 and 4), paired by seed (SPEC §4).

Every (method, variant) other than (fixed, baseline) is compared with the completed fixed
baseline of the same (arch, dataset, seed), looked up in the same study first and, failing that,
in another loaded study (noted), so an ablation study without its own fixed runs can be analysed
together with the study that holds them.

Run statuses: only completed runs are paired. Diverged method runs are not averaged in (a run
that stopped early would look fast) but counted per row (``n_diverged``) and listed in
``Comparison.unpaired`` with their last accuracy; failed and incomplete runs likewise
(``n_failed``). A completed run whose seed has no usable fixed partner is listed there with the
reason and its seed appears in the row's ``missing_seeds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

GROUP = ["study", "arch", "dataset", "method", "variant"]
PAIR_KEY = ["arch", "dataset", "seed"]


@dataclass
class Comparison:
    """Aggregated rows per GROUP, the per-seed pairs, and the runs that could not be paired."""

    rows: pd.DataFrame
    pairs: pd.DataFrame
    unpaired: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _usable(summary: pd.DataFrame) -> pd.Series:
    return summary["status"].eq("completed") & (summary["n_epochs"] > 0)


def fixed_baselines(
    summary: pd.DataFrame, fixed_method: str = "fixed", fixed_variant: str = "baseline"
) -> tuple[pd.DataFrame, list[str]]:
    """Completed fixed-baseline runs, one per (study, arch, dataset, seed), and notes.

    Raises ValueError when there is none at all: no comparison, taxonomy or calibration exists
    without a fixed baseline.
    """
    is_ref = summary["method"].eq(fixed_method) & summary["variant"].eq(fixed_variant)
    refs = summary[is_ref & _usable(summary)].sort_values(["study"] + PAIR_KEY + ["trial_id"])
    if refs.empty:
        methods = sorted(summary["method"].dropna().unique())
        raise ValueError(
            f"no fixed baseline: no completed run with method {fixed_method!r} and variant "
            f"{fixed_variant!r} in studies {sorted(summary['study'].unique())} "
            f"(methods found: {methods}); the comparison, taxonomy and calibration need one"
        )
    notes = []
    dup = refs.duplicated(["study"] + PAIR_KEY, keep="first")
    for r in refs[dup].itertuples():
        notes.append(
            f"study {r.study}: several fixed runs for ({r.arch}, {r.dataset}, seed {r.seed}); "
            f"using the first by trial_id, ignoring {r.trial_id}"
        )
    return refs[~dup], notes


def _pct(s: pd.Series) -> pd.Series:
    return 100.0 * s


def _pair(cands: pd.DataFrame, refs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Attach a fixed partner to each candidate run: same study first, then any other study."""
    ref_cols = ["study", *PAIR_KEY, "trial_id", "final_acc", "t_train", "t_wall"]
    r = refs[ref_cols].rename(
        columns={
            "study": "fixed_study",
            "trial_id": "fixed_trial_id",
            "final_acc": "final_acc_fixed",
            "t_train": "t_train_fixed",
            "t_wall": "t_wall_fixed",
        }
    )
    same = cands.merge(r, left_on=["study", *PAIR_KEY], right_on=["fixed_study", *PAIR_KEY], how="left")
    missing = same["fixed_trial_id"].isna()
    notes = []
    if missing.any():
        # The own study has no partner for these keys, so any match here is from another study.
        other = r.drop_duplicates(PAIR_KEY, keep="first")
        fallback = same.loc[missing, list(cands.columns)].merge(other, on=PAIR_KEY, how="left")
        for x in fallback[fallback["fixed_trial_id"].notna()].itertuples():
            notes.append(
                f"study {x.study}: {x.method}/{x.variant} ({x.arch}, {x.dataset}, seed {x.seed}) "
                f"is paired with the fixed run of study {x.fixed_study}"
            )
        same = pd.concat([same[~missing], fallback], ignore_index=True)
    return same, notes


def compare(
    summary: pd.DataFrame,
    fixed_method: str = "fixed",
    fixed_variant: str = "baseline",
    partners: pd.DataFrame | None = None,
) -> Comparison:
    """Compare every (method, variant) with the fixed baseline, per seed, then over seeds.

    Per seed: dacc = 100 * (final_method - final_fixed) [pp], speedup_pct = 100 * (1 - T_m / T_f),
    throughput_x = T_f / T_m, on train time and (``_wall``) on wall time. Per GROUP row: means and
    sample stds (ddof=1; NaN with one seed) over the paired seeds, NaN per-seed values skipped;
    acc_* in percent; n_increase, n_rollback, final_bs, mean_bs averaged over the paired runs.
    ``partners``: trial summaries of other studies whose fixed runs may serve as partners when
    a run's own study has none (they produce no rows themselves).
    """
    pool = summary if partners is None else pd.concat([summary, partners], ignore_index=True)
    refs, notes = fixed_baselines(pool, fixed_method, fixed_variant)
    is_ref = summary["method"].eq(fixed_method) & summary["variant"].eq(fixed_variant)
    cands = summary[~is_ref]
    done = cands[_usable(cands)]
    paired, pair_notes = _pair(done, refs)
    notes += pair_notes
    has = paired["fixed_trial_id"].notna()
    p = paired[has].copy()
    p["acc_fixed"] = _pct(p["final_acc_fixed"])
    p["acc_method"] = _pct(p["final_acc"])
    p["dacc"] = p["acc_method"] - p["acc_fixed"]
    p["speedup_pct"] = 100.0 * (1.0 - p["t_train"] / p["t_train_fixed"])
    p["throughput_x"] = p["t_train_fixed"] / p["t_train"]
    p["speedup_wall_pct"] = 100.0 * (1.0 - p["t_wall"] / p["t_wall_fixed"])
    p["throughput_wall_x"] = p["t_wall_fixed"] / p["t_wall"]
    pair_cols = GROUP + [
        "seed", "trial_id", "fixed_study", "fixed_trial_id", "acc_fixed", "acc_method", "dacc",
        "t_train", "t_train_fixed", "speedup_pct", "throughput_x", "t_wall", "t_wall_fixed",
        "speedup_wall_pct", "throughput_wall_x", "n_increase", "n_rollback", "final_bs", "mean_bs",
    ]  # fmt: skip
    pairs = p[pair_cols].sort_values(GROUP + ["seed"]).reset_index(drop=True)

    # Runs that are not averaged in, with the reason.
    no_partner = paired[~has].copy()
    ref_any = summary[is_ref].drop_duplicates(["study", *PAIR_KEY]).set_index(["study", *PAIR_KEY])
    reasons = []
    for x in no_partner.itertuples():
        key = (x.study, x.arch, x.dataset, x.seed)
        reasons.append(f"fixed run {ref_any.loc[key, 'status']}" if key in ref_any.index else "no fixed run")
    no_partner["reason"] = reasons
    not_done = cands[~_usable(cands)].copy()
    not_done["reason"] = not_done["status"].where(not_done["status"].ne("completed"), "no epochs")
    unpaired_cols = GROUP + ["seed", "trial_id", "status", "reason", "n_epochs", "final_acc", "error"]
    unpaired = (
        pd.concat([no_partner[unpaired_cols], not_done[unpaired_cols]])
        .sort_values(GROUP + ["seed"])
        .reset_index(drop=True)
    )

    g = pairs.groupby(GROUP, sort=True)
    rows = g.agg(
        n_seeds=("seed", "size"),
        acc_fixed=("acc_fixed", "mean"),
        acc_method=("acc_method", "mean"),
        dacc_mean=("dacc", "mean"),
        dacc_std=("dacc", "std"),
        t_train_fixed=("t_train_fixed", "mean"),
        t_train=("t_train", "mean"),
        speedup_pct=("speedup_pct", "mean"),
        speedup_std=("speedup_pct", "std"),
        throughput_x=("throughput_x", "mean"),
        throughput_std=("throughput_x", "std"),
        t_wall_fixed=("t_wall_fixed", "mean"),
        t_wall=("t_wall", "mean"),
        speedup_wall_pct=("speedup_wall_pct", "mean"),
        speedup_wall_std=("speedup_wall_pct", "std"),
        throughput_wall_x=("throughput_wall_x", "mean"),
        throughput_wall_std=("throughput_wall_x", "std"),
        n_increase=("n_increase", "mean"),
        n_rollback=("n_rollback", "mean"),
        final_bs=("final_bs", "mean"),
        mean_bs=("mean_bs", "mean"),
    )
    all_groups = pd.MultiIndex.from_frame(cands[GROUP].drop_duplicates().sort_values(GROUP))
    rows = rows.reindex(all_groups)
    rows["n_seeds"] = rows["n_seeds"].fillna(0).astype(int)
    counts = (
        pd.DataFrame(
            {
                "n_runs": 1,
                "n_diverged": cands["status"].eq("diverged").astype(int),
                # failed, incomplete, or "completed" without a single epoch row
                "n_failed": (~_usable(cands) & cands["status"].ne("diverged")).astype(int),
            }
        )
        .groupby([cands[k] for k in GROUP])
        .sum()
    )
    for col in ("n_runs", "n_diverged", "n_failed"):
        rows[col] = counts[col].reindex(all_groups).fillna(0).astype(int)
    missing = no_partner.groupby(GROUP)["seed"].agg(lambda s: sorted(int(v) for v in s))
    rows["missing_seeds"] = [missing.get(k, []) for k in rows.index]
    return Comparison(rows=rows.reset_index(), pairs=pairs, unpaired=unpaired, notes=notes)


def ablation_summary(rows: pd.DataFrame, degraded_pt: float = 1.0) -> pd.DataFrame:
    """Per (study, dataset, method, variant): archs compared, archs degraded, mean dAcc, speedup.

    ``n_degraded`` counts archs with dacc_mean <= -degraded_pt (the paper's "Degraded (>=1pt)");
    ``mean_abs_dacc`` is the mean |dAcc| over archs (the paper's Table 3 "Mean Acc" row).
    """
    r = rows[rows["n_seeds"] > 0].copy()
    r["degraded"] = r["dacc_mean"] <= -degraded_pt
    r["abs_dacc"] = r["dacc_mean"].abs()
    out = r.groupby(["study", "dataset", "method", "variant"], sort=True).agg(
        n_archs=("arch", "size"),
        n_degraded=("degraded", "sum"),
        mean_dacc=("dacc_mean", "mean"),
        mean_abs_dacc=("abs_dacc", "mean"),
        mean_speedup_pct=("speedup_pct", "mean"),
    )
    out["n_degraded"] = out["n_degraded"].astype(int)
    return out.reset_index()
