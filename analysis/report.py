"""The whole analysis of a store, as Markdown tables, a JSON object, and a report directory.

Python API (the orchestrator calls :func:`summarize` at the end of a study)::

    from analysis.report import analyse, summarize, write_report, to_json
    print(summarize("results", study="paper"))          # Markdown tables, writes nothing
    a = analyse("results", study="paper")               # all tables as DataFrames
    write_report(a, "reports/paper")                    # report.md, calibration.json, PNGs
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis import markdown as md
from analysis.calibrate import calibrate, calibrated_study_command, thresholds, write_calibration
from analysis.compare import Comparison, ablation_summary, compare
from analysis.fidelity import NEAR_FACTOR, threshold_fidelity
from analysis.load import ANALYSIS_EPOCH_COLUMNS, list_studies, load_store
from analysis.null_control import NULL_COLUMNS, null_control
from analysis.reconstruction import reading_table
from analysis.stability import TaxonomyOptions, deba_dynamics, taxonomy
from analysis.trajectory import LARGE_BATCH, trajectory_table
from analysis.trials import trial_summary


@dataclass
class Analysis:
    """Every table of one analysis, as DataFrames (see the producing functions for columns)."""

    root: str
    studies: list[str]
    epochs: pd.DataFrame
    summary: pd.DataFrame
    comparison: Comparison
    ablations: pd.DataFrame
    taxonomy: pd.DataFrame
    dynamics: pd.DataFrame
    calibration: pd.DataFrame
    left_out: pd.DataFrame
    options: TaxonomyOptions
    trajectory: pd.DataFrame = field(default_factory=pd.DataFrame)
    reconstruction: pd.DataFrame = field(default_factory=pd.DataFrame)
    null_control: pd.DataFrame = field(default_factory=pd.DataFrame)
    fidelity: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)


def analyse(
    results_dir: str, study: str | Sequence[str] | None = None, options: TaxonomyOptions | None = None
) -> Analysis:
    """Load the store and compute comparison, ablations, taxonomy, dynamics and calibration.

    ``study``: one name, several names, or None for every study in the store (each method run
    is paired with the fixed run of its own study first). Raises ValueError (``StoreError`` for
    store problems) on an empty store, a wrong schema, or no completed fixed baseline.
    """
    opts = options or TaxonomyOptions()
    names = [study] if isinstance(study, str) else list(study) if study else [None]
    stores = [load_store(results_dir, s, columns=ANALYSIS_EPOCH_COLUMNS) for s in dict.fromkeys(names)]
    epochs = pd.concat([s.epochs for s in stores], ignore_index=True)
    runs = pd.concat([s.runs for s in stores], ignore_index=True)
    notes = [n for s in stores for n in s.notes]
    studies = sorted({n for s in stores for n in s.studies})
    summary = trial_summary(epochs, runs)
    partners = _partner_summaries(results_dir, studies, summary, opts.fixed_method)
    try:
        comp = compare(summary, fixed_method=opts.fixed_method, partners=partners)
    except ValueError as exc:  # say which files were left out: they may hold the missing baseline
        left = [n for n in notes if "left out" in n]
        raise ValueError(str(exc) + ("".join(f"\n  {n}" for n in left) if left else "")) from exc
    notes += comp.notes
    tax = taxonomy(summary, comp.pairs, opts)
    cal = calibrate(epochs, summary, fixed_method=opts.fixed_method)
    fixed_bad = summary[
        summary["method"].eq(opts.fixed_method) & ~(summary["status"].eq("completed") & (summary["n_epochs"] > 0))
    ].copy()
    fixed_bad["reason"] = fixed_bad["status"].where(fixed_bad["status"].ne("completed"), "no epochs")
    left_out = pd.concat([comp.unpaired, fixed_bad[list(comp.unpaired.columns)]], ignore_index=True).sort_values(
        ["study", "arch", "dataset", "method", "variant", "seed"], ignore_index=True
    )
    for arch in cal.loc[cal["theta_stab"].isna() | cal["theta_conf"].isna(), "arch"]:
        notes.append(f"calibration: no finite signals for arch {arch!r}; left out of calibration.json")
    traj = trajectory_table(epochs, summary, runs, method=opts.adaptive_method)
    readings = reading_table(traj, comp.pairs, runs, method=opts.adaptive_method)
    return Analysis(
        root=results_dir,
        studies=studies,
        epochs=epochs,
        summary=summary,
        comparison=comp,
        ablations=ablation_summary(comp.rows),
        taxonomy=tax,
        dynamics=deba_dynamics(summary, opts),
        calibration=cal,
        left_out=left_out,
        options=opts,
        trajectory=traj,
        reconstruction=readings,
        null_control=null_control(
            epochs, summary, runs, traj, readings, method=opts.adaptive_method, fixed_method=opts.fixed_method
        ),
        fidelity=threshold_fidelity(epochs, summary, fixed_method=opts.fixed_method),
        notes=notes,
    )


def _partner_summaries(
    results_dir: str, studies: list[str], summary: pd.DataFrame, fixed_method: str
) -> pd.DataFrame | None:
    """Trial summaries of the store's other studies, loaded only when some completed run of
    the selected studies has no completed fixed run of its own study to pair with."""
    done = summary["status"].eq("completed") & (summary["n_epochs"] > 0)
    is_fixed = summary["method"].eq(fixed_method)
    key = ["study", "arch", "dataset", "seed"]
    have = pd.MultiIndex.from_frame(summary.loc[done & is_fixed, key])
    need = pd.MultiIndex.from_frame(summary.loc[done & ~is_fixed, key])
    others = [s for s in list_studies(results_dir) if s not in studies]
    if not others or need.isin(have).all():
        return None
    stores = [load_store(results_dir, s, columns=ANALYSIS_EPOCH_COLUMNS) for s in others]
    return trial_summary(
        pd.concat([s.epochs for s in stores], ignore_index=True), pd.concat([s.runs for s in stores], ignore_index=True)
    )


# ---------------------------------------------------------------- Markdown


def _status_line(a: Analysis) -> str:
    counts = a.summary["status"].value_counts().sort_index()
    parts = ", ".join(f"{n} {s}" for s, n in counts.items())
    return f"Store `{a.root}`, studies {', '.join(a.studies)}: {len(a.summary)} trials ({parts})."


def comparison_markdown(a: Analysis) -> str:
    """Tables 3/4 in long form: one row per (study, arch, dataset, method, variant)."""
    if a.comparison.rows.empty:
        return "No adaptive runs to compare: this selection holds only fixed-baseline runs."
    multi = len(a.studies) > 1
    head = (["Study"] if multi else []) + [
        "Arch", "Dataset", "Method", "Variant", "Seeds", "Acc fixed (%)", "Acc (%)",
        "ΔAcc (pp)", "Time (s)", "Speedup (%)", "Throughput", "Speedup wall (%)",
        "Throughput wall", "Incr/Rollb", "Final BS", "Mean BS", "Not averaged",
    ]  # fmt: skip
    rows = []
    for r in a.comparison.rows.itertuples():
        left = []
        if r.missing_seeds:
            left.append(f"no fixed partner: seeds {', '.join(map(str, r.missing_seeds))}")
        if r.n_diverged:
            left.append(f"{r.n_diverged} diverged")
        if r.n_failed:
            left.append(f"{r.n_failed} failed/incomplete")
        rows.append(
            ([r.study] if multi else [])
            + [
                r.arch,
                r.dataset,
                r.method,
                r.variant,
                str(r.n_seeds),
                md.num(r.acc_fixed),
                md.num(r.acc_method),
                md.pm(r.dacc_mean, r.dacc_std, signed=True),
                md.num(r.t_train, 1),
                md.pm(r.speedup_pct, r.speedup_std, 1),
                md.pm(r.throughput_x, r.throughput_std, 2, suffix="×"),
                md.pm(r.speedup_wall_pct, r.speedup_wall_std, 1),
                md.pm(r.throughput_wall_x, r.throughput_wall_std, 2, suffix="×"),
                f"{md.num(r.n_increase, 1)}/{md.num(r.n_rollback, 1)}",
                md.num(r.final_bs, 0),
                md.num(r.mean_bs, 1),
                "; ".join(left) or "",
            ]  # fmt: skip
        )
    align = ("l" if multi else "") + "llll" + "r" * 12 + "l"
    return md.table(head, rows, align)


def ablations_markdown(a: Analysis) -> str:
    """Table 3: per (study, dataset, method) with several variants, ΔAcc / speedup per arch."""
    rows = a.comparison.rows
    out = []
    for (study, dataset, method), g in rows.groupby(["study", "dataset", "method"], sort=True):
        variants = sorted(g["variant"].unique(), key=lambda v: (v != "baseline", v))
        if len(variants) < 2:
            continue
        head = ["Arch"] + [f"{v}: ΔAcc / Speedup" for v in variants]
        body = []
        for arch, ga in g.groupby("arch", sort=True):
            cells = []
            for v in variants:
                r = ga[ga["variant"].eq(v)]
                cells.append(
                    md.DASH
                    if r.empty
                    else f"{md.num(r['dacc_mean'].iloc[0], signed=True)} / {md.num(r['speedup_pct'].iloc[0], 1)}"
                )
            body.append([arch] + cells)
        summ = a.ablations[
            a.ablations["study"].eq(study) & a.ablations["dataset"].eq(dataset) & a.ablations["method"].eq(method)
        ].set_index("variant")
        body.append(
            ["Degraded (≥1pt)"]
            + [
                f"{int(summ.loc[v, 'n_degraded'])}/{int(summ.loc[v, 'n_archs'])}" if v in summ.index else md.DASH
                for v in variants
            ]  # fmt: skip
        )
        body.append(
            ["Mean |ΔAcc|"] + [md.num(summ.loc[v, "mean_abs_dacc"]) if v in summ.index else md.DASH for v in variants]
        )
        out.append(f"**{method} on {dataset} (study {study})**\n\n" + md.table(head, body))
    return "\n\n".join(out)


def taxonomy_markdown(a: Analysis) -> str:
    """Table 2 per (study, arch, dataset) of the fixed runs."""
    multi = len(a.studies) > 1
    head = (["Study"] if multi else []) + [
        "Arch", "Dataset", "Seeds", "S", "σ_S", "Class", "Fixed conv.", "DEBA aggr.",
        "DEBA conv.", "DEBA S", "ΔAcc (pp)", "Observed", "Predicted", "Holds",
    ]  # fmt: skip
    # Dict records: itertuples would rename the 'class' column (a Python keyword).
    rows = []
    for r in a.taxonomy.to_dict("records"):
        ok = r["prediction_ok"]
        holds = md.DASH if md.text(ok) == md.DASH else ("yes" if ok else "no")
        rows.append(
            ([r["study"]] if multi else [])
            + [
                r["arch"],
                r["dataset"],
                str(r["n_seeds"]),
                md.num(r["S_mean"], 3),
                md.num(r["S_std"], 3),
                r["class"],
                md.num(r["fixed_convergence"], 3),
                md.num(r["aggressiveness"], 2, signed=True),
                md.num(r["convergence_stability"], 3),
                md.num(r["S_adaptive"], 3),
                md.num(r["dacc_mean"], 2, signed=True),
                md.text(r["observed"]),
                md.text(r["predicted"]),
                holds,
            ]  # fmt: skip
        )
    align = ("l" if multi else "") + "llrrrlrrrrrlll"
    return md.table(head, rows, align)


RUN_HEAD = ["Study", "Arch", "Dataset", "Variant", "Seed", "Status"]


def _run_cells(r: Any) -> list[str]:
    """The cells of RUN_HEAD for one run (a row of a per-run table)."""
    return [r.study, r.arch, r.dataset, r.variant, str(r.seed), r.status]


def dynamics_markdown(a: Analysis) -> str:
    """Per adaptive run: decisions, aggressiveness, convergence stability, S."""
    head = RUN_HEAD + ["Incr", "Rollb", "Decisions", "Aggressiveness", "Conv. stability", "S", "Final BS"]
    rows = [
        _run_cells(r)
        + [
            md.num(r.n_increase, 0),
            md.num(r.n_rollback, 0),
            md.num(r.n_decisions, 0),
            md.num(r.aggressiveness, 3, signed=True),
            md.num(r.convergence_stability, 4),
            md.num(r.S, 3),
            md.num(r.final_bs, 0),
        ]  # fmt: skip
        for r in a.dynamics.itertuples()
    ]
    return md.table(head, rows, "llllrl" + "r" * 7)


def calibration_markdown(a: Analysis) -> str:
    """Table 1: calibrated thresholds per arch next to the paper's values."""
    head = ["Arch", "Fixed runs", "Epochs used", "θ_stab", "θ_conf", "paper θ_stab", "paper θ_conf"]
    rows = [
        [
            r.arch,
            str(r.n_runs),
            str(r.n_epochs),
            md.sig(r.theta_stab),
            md.sig(r.theta_conf),
            md.sig(r.paper_theta_stab),
            md.sig(r.paper_theta_conf),
        ]  # fmt: skip
        for r in a.calibration.itertuples()
    ]
    return md.table(head, rows, "lrrrrrr")


def trajectory_markdown(a: Analysis) -> str:
    """Per DEBA run: distance to the paper's batch-size path and its landmarks (SPEC §4)."""
    head = RUN_HEAD + ["Distance (oct)", f"Epoch B≥{LARGE_BATCH}", "Final BS", "Incr", "Rollb"]
    rows = [
        _run_cells(r)
        + [
            md.num(r.distance_oct, 3),
            md.num(r.epoch_reach_729, 0),
            str(r.final_bs),
            str(r.n_increase),
            str(r.n_rollback),
        ]  # fmt: skip
        for r in a.trajectory.itertuples()
    ]
    return md.table(head, rows, "llllrl" + "r" * 5)


def reconstruction_markdown(a: Analysis) -> str:
    """The readings of each readings study ranked by trajectory distance, with the seed spread."""
    head = ["Study", "Arch", "Dataset", "Rank", "Reading (variant)", "Options", "Seeds", "Distance (oct)",
            "Grew", "Shrank", f"Reached {LARGE_BATCH}", "Final BS per seed", "Incr/Rollb", "ΔAcc (pp)",
            "Speedup (%)"]  # fmt: skip
    rows = [
        [
            r.study,
            r.arch,
            r.dataset,
            str(r.rank),
            r.variant,
            r.reading,
            str(r.n_seeds),
            md.pm(r.distance_mean, r.distance_std, 3),
            r.grew,
            r.shrank,
            r.reached_729,
            r.final_bs,
            f"{md.num(r.n_increase, 1)}/{md.num(r.n_rollback, 1)}",
            md.pm(r.dacc_mean, r.dacc_std, signed=True),
            md.pm(r.speedup_pct, r.speedup_std, 1),
        ]  # fmt: skip
        for r in a.reconstruction.itertuples()
    ]
    return md.table(head, rows, "lllrll" + "r" * 9)


def null_control_markdown(a: Analysis) -> str:
    """Per reading: the observed mean distance against the same policy replayed on signals with no training."""
    head = ["Study", "Arch", "Dataset", "Reading", "Seeds", "Observed (oct)", "Null median", "Null 5th pct",
            "p", "p (mean of seeds)", f"Reached {LARGE_BATCH}", f"Null reached {LARGE_BATCH}", "Verdict"]  # fmt: skip
    rows = [
        [
            r.study,
            r.arch,
            r.dataset,
            r.reading,
            str(r.n_seeds),
            md.num(r.observed, 3),
            md.num(r.null_median, 3),
            md.num(r.null_p05, 3),
            md.num(r.p, 3),
            md.num(r.p_mean, 3),
            f"{100 * r.reached_729:.0f}%",
            f"{100 * r.null_reached_729:.0f}%",
            "beats chance" if r.p < 0.05 else ("beats chance on the seed mean only" if r.p_mean < 0.05 else "chance"),
        ]  # fmt: skip
        for r in a.null_control.itertuples()
    ]
    return md.table(head, rows, "llll" + "r" * 8 + "l")


def fidelity_markdown(a: Analysis) -> str:
    """Per paper arch and signal reading: the calibrated thresholds beside Table 1's."""
    head = ["Arch", "Reading", "Signals", "Also", "Fixed runs", "Epochs", "θ_stab", "θ_conf", "Table 1 θ_stab",
            "Table 1 θ_conf", "Distance", f"Within {NEAR_FACTOR:g}×", "dN < T1 θ_stab", "c < T1 θ_conf"]  # fmt: skip
    rows = [
        [
            r.arch,
            r.reading,
            r.signals,
            ", ".join(n for n in r.readings.split(", ") if n != r.reading) or md.DASH,
            str(r.n_runs),
            str(r.n_epochs),
            md.sig(r.theta_stab),
            md.sig(r.theta_conf),
            md.sig(r.table1_stab),
            md.sig(r.table1_conf),
            md.num(r.distance, 2),
            "yes" if r.near else "no",
            f"{100 * r.share_stab_below:.0f}%",
            f"{100 * r.share_conf_below:.0f}%",
        ]  # fmt: skip
        for r in a.fidelity.itertuples()
    ]
    return md.table(head, rows, "llll" + "r" * 10)


def left_out_markdown(a: Analysis) -> str:
    """Runs not averaged into the comparison, with the reason."""
    if a.left_out.empty:
        return "None: every run is completed and paired with its fixed baseline."
    head = ["Study", "Arch", "Dataset", "Method", "Variant", "Seed", "Trial", "Reason",
            "Epochs", "Last acc (%)", "Error"]  # fmt: skip
    rows = []
    for r in a.left_out.itertuples():
        err = md.text(r.error)
        first_line = err.splitlines()[0][:80] if err != md.DASH and err.strip() else ""
        rows.append([r.study, r.arch, r.dataset, r.method, r.variant, str(r.seed), r.trial_id,
                     r.reason, str(r.n_epochs), md.num(100 * r.final_acc), first_line])  # fmt: skip
    return md.table(head, rows)


def to_markdown(a: Analysis, calibration_path: str | None = None) -> str:
    """All tables as one Markdown document (no plots)."""
    cal_path = calibration_path or "<out>/calibration.json"
    parts = [
        _status_line(a),
        "## Comparison with the fixed baseline (Tables 3/4)",
        "Paired by seed with the completed fixed run of the same (arch, dataset, seed); "
        "mean ± sample std over seeds. Speedup = 100·(1 − T/T_fixed), throughput = T_fixed/T, "
        "on training time (sum of epoch_time_s) and on wall time. Diverged, failed and unpaired "
        "runs are not averaged in; they are counted in the last column and listed below.",
        comparison_markdown(a),
    ]
    abl = ablations_markdown(a)
    if abl:
        parts += ["## Ablations (Table 3)", abl]
    parts += [
        "## Stability taxonomy (Table 2)",
        "S and σ_S over the completed fixed runs (epochs ≥ 2); DEBA columns are means over the "
        f"completed `{a.options.adaptive_method}`/`{a.options.adaptive_variant}` runs. Boundaries: "
        f"S < {a.options.unstable_below} naturally unstable; σ_S ≥ {a.options.dynamic_std} "
        f"dynamically stable; S ≥ {a.options.overly_stable_from} overly stable; else moderately "
        "stable (σ_S needs ≥ 2 seeds).",
        taxonomy_markdown(a),
        "## Calibrated thresholds (Table 1)",
        calibration_markdown(a),
        f"Use them: `{calibrated_study_command(cal_path)}`",
    ]
    if len(a.reconstruction):
        parts += [
            "## Readings ranked by trajectory distance (reconstruction study)",
            "Each reading is a DEBA variant (its options other than the defaults, and the thresholds it "
            "used). Distance = mean over epochs of |log2 B − log2 B_paper| in octaves against the paper's "
            "64→96→…→1024 path scaled to the run's epochs (SPEC §4), mean ± std over seeds. Grew / shrank "
            f"= seeds whose final B is above / below b0; reached {LARGE_BATCH} = seeds that trained at "
            "B ≥ 729. A low mean distance with a split in the growth column is not paper-like.",
            reconstruction_markdown(a),
        ]
    if len(a.null_control):
        parts += [
            "## Null control: each reading against chance (SPEC §4)",
            "The reading's own policy (options and calibrated thresholds) replayed "
            f"{int(a.null_control['replays'].iloc[0])} times on the study's fixed-run signals (dN, dL, c of "
            "epochs ≥ 2 under the reading's signal options) resampled with replacement in random order: no "
            "trend, no feedback from B. p = share of replays at least as close to the paper's path as the "
            "observed mean; p (mean of seeds) compares the observed mean with means of as many replays. A "
            "reading reproduces the paper's path only if p < 0.05.",
            null_control_markdown(a),
        ]
    if len(a.fidelity):
        parts += [
            "## Threshold fidelity: calibrated thresholds beside Table 1 (SPEC §4)",
            "Per paper architecture and signal reading: θ_stab = p75 of dN, θ_conf = median of c over the fixed "
            "runs' epochs ≥ 2 (pooled over seeds and datasets), Table 1's pair, the distance |ln(θ_stab/T1)| + "
            f"|ln(θ_conf/T1)|, whether both lie within {NEAR_FACTOR:g}× of Table 1, and how often Table 1's own "
            "thresholds would see stable gradients (dN < T1 θ_stab) and low confidence (c < T1 θ_conf).",
            fidelity_markdown(a),
        ]
    if len(a.trajectory):
        parts += [
            "## Trajectory fidelity (SPEC §4)",
            "Per DEBA run: distance to the paper's batch-size path in octaves (0 = the paper's path), "
            f"the first epoch trained at B ≥ {LARGE_BATCH}, the final batch size and the decisions taken.",
            trajectory_markdown(a),
        ]
    parts += ["## Runs not averaged in", left_out_markdown(a)]
    if a.notes:
        parts += ["## Notes", "\n".join(f"- {n}" for n in a.notes)]
    return "\n\n".join(parts) + "\n"


def summarize(results_dir: str, study: str | Sequence[str] | None = None) -> str:
    """Markdown tables of a study (or every study); what run_grid prints at the end of a study.

    Meant for display after a long study, so a data problem (no fixed baseline yet, an empty
    or malformed store) comes back as a one-paragraph explanation instead of an exception;
    use :func:`analyse` to get the exception.
    """
    try:
        return to_markdown(analyse(results_dir, study))
    except ValueError as exc:
        return f"Analysis not available for {results_dir!r} (study {study!r}): {exc}\n"


# ---------------------------------------------------------------- JSON


def _clean(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if v is pd.NA or v is pd.NaT:
        return None
    return v


def _records(df: pd.DataFrame, columns: list[str]) -> list[dict]:
    return [{c: _clean(v) for c, v in zip(columns, row)} for row in df[columns].itertuples(index=False)]


def to_json(a: Analysis) -> dict:
    """One JSON-ready object: comparison, taxonomy, calibration (+ ablations, left_out, notes)."""
    comp_cols = [
        "study", "arch", "dataset", "method", "variant", "n_seeds", "speedup_pct", "speedup_std",
        "throughput_x", "throughput_std", "speedup_wall_pct", "speedup_wall_std",
        "throughput_wall_x", "throughput_wall_std", "dacc_mean", "dacc_std", "acc_fixed",
        "acc_method", "t_train", "t_train_fixed", "t_wall", "t_wall_fixed", "n_increase",
        "n_rollback", "final_bs", "mean_bs", "n_runs", "n_diverged", "n_failed", "missing_seeds",
    ]  # fmt: skip
    tax_cols = [
        "study", "arch", "dataset", "n_seeds", "S_mean", "S_std", "class", "fixed_convergence",
        "aggressiveness", "convergence_stability", "S_adaptive", "n_paired", "dacc_mean",
        "observed", "predicted", "prediction_ok",
    ]  # fmt: skip
    left_cols = ["study", "arch", "dataset", "method", "variant", "seed", "trial_id", "status",
                 "reason"]  # fmt: skip
    return {
        "studies": a.studies,
        "comparison": _records(a.comparison.rows, comp_cols),
        "taxonomy": _records(a.taxonomy, tax_cols),
        "calibration": thresholds(a.calibration),
        "ablations": _records(a.ablations, list(a.ablations.columns)),
        "left_out": _records(a.left_out, left_cols),
        "trajectory": _records(a.trajectory, list(a.trajectory.columns)),
        "reconstruction": _records(a.reconstruction, list(a.reconstruction.columns)),
        "null_control": _records(a.null_control, NULL_COLUMNS),
        "threshold_fidelity": _records(a.fidelity, list(a.fidelity.columns)),
        "notes": a.notes,
    }


# ---------------------------------------------------------------- report directory

PLOT_CAPTIONS = {
    "batch_size_trajectories": "Batch-size trajectories of the adaptive runs, per arch (all seeds), with the "
    "paper's path (dashed).",
    "time_vs_batch": "Training time per epoch against the batch size used.",
    "gradvar_vs_batch": "Gradient variance against the batch size used.",
    "accuracy_curves": "Test accuracy per epoch, fixed vs adaptive (mean over seeds, min–max band).",
    "taxonomy": "Taxonomy: stability score S against its seed std σ_S, with the class boundaries.",
    "null_control": "Null control: each reading's distance to the paper's path on signals with no training "
    "(histogram of the replays), the observed mean of its runs (red) and the null's 5th percentile (dashed).",
}


def write_report(a: Analysis, out_dir: str, plots: bool = True) -> str:
    """Write report.md, calibration.json and (``plots``) the PNGs into out_dir; return report.md."""
    os.makedirs(out_dir, exist_ok=True)
    cal_path = write_calibration(a.calibration, out_dir)
    body = to_markdown(a, calibration_path=cal_path)
    title = f"# Adaptive batch-size study report: {', '.join(a.studies)}\n\n"
    extra = ["## DEBA dynamics per run", dynamics_markdown(a)] if len(a.dynamics) else []
    if plots:
        from analysis.plots import make_plots  # matplotlib only when plotting

        made = make_plots(a.epochs, a.summary, a.taxonomy, out_dir, a.options, a.trajectory, a.null_control)
        if made:
            extra.append("## Plots")
            for name, path in made.items():
                extra.append(f"![{PLOT_CAPTIONS[name]}]({os.path.basename(path)})\n\n*{PLOT_CAPTIONS[name]}*")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(title + body + ("\n" + "\n\n".join(extra) + "\n" if extra else ""))
    return path
