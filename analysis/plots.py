"""PNG plots of a study (matplotlib's object API with the Agg canvas; no pyplot state).

Imported only when plots are requested, so the tables stay fast. Each function writes one PNG
and returns its path, or None when the data for it is absent (e.g. no adaptive runs).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.stability import TaxonomyOptions
from analysis.trajectory import paper_path

DEFAULT_OPTIONS = TaxonomyOptions()
CLASS_COLORS = {
    "naturally unstable": "tab:red",
    "dynamically stable": "tab:orange",
    "moderately stable": "tab:green",
    "overly stable": "tab:blue",
    "unknown": "tab:gray",
}


def _grid(n: int, ncols: int = 3, size: tuple[float, float] = (4.2, 3.2)):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    w, h = size[0] * ncols, size[1] * nrows + 0.5
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    # Fixed margins: a layout engine re-draws the figure several times (slow with many panels).
    fig.subplots_adjust(left=0.7 / w, right=1 - 0.15 / w, bottom=0.55 / h, top=1 - 0.75 / h,
                        wspace=0.3, hspace=0.55)  # fmt: skip
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _save(fig: Figure, path: str) -> str:
    fig.savefig(path, dpi=90)
    return path


def _label(method: str, variant: str) -> str:
    return method if variant == "baseline" else f"{method}/{variant}"


SEED_LINES = 8  # up to this many seeds per panel and dataset one line each; more: median and band
SCATTER_POINTS = 20_000  # points drawn per scatter plot (a fixed random sample; medians use every row)


def batch_size_trajectories(
    epochs: pd.DataFrame, path: str, fixed_method: str = "fixed", trajectory: pd.DataFrame | None = None
):
    """Batch size per epoch of every adaptive run, one panel per (arch, method/variant), one line per
    seed (coloured by dataset) or, past SEED_LINES seeds of a dataset, their median with a 10-90%
    band, and the paper's path (dashed) scaled to the panel's planned epochs (``trajectory``'s
    epochs_planned, else the longest run)."""
    e = epochs[epochs["method"].ne(fixed_method)]
    if e.empty:
        return None
    e = e[["arch", "dataset", "method", "variant", "trial_id", "epoch", "batch_size"]]
    panels = sorted(e[["arch", "method", "variant"]].drop_duplicates().itertuples(index=False, name=None))
    fig, axes = _grid(len(panels))
    colors = {d: f"C{i % 10}" for i, d in enumerate(sorted(e["dataset"].unique()))}
    planned_by_trial = (
        dict(zip(trajectory["trial_id"], trajectory["epochs_planned"]))
        if trajectory is not None and len(trajectory)
        else {}
    )
    banded = False
    for ax, ((arch, method, variant), sub) in zip(axes, _panels(e, ["arch", "method", "variant"], panels)):
        for ds, runs in sub.groupby("dataset", sort=True):
            if runs["trial_id"].nunique() <= SEED_LINES:
                for i, (_tid, run) in enumerate(runs.groupby("trial_id", sort=True)):
                    ax.step(run["epoch"], run["batch_size"], where="post", color=colors[ds], alpha=0.7, lw=1.2,
                            label=None if i else ds)  # fmt: skip
                continue
            banded = True
            q = runs.groupby("epoch")["batch_size"].quantile([0.1, 0.5, 0.9]).unstack()
            n_runs = runs["trial_id"].nunique()
            ax.step(q.index, q[0.5], where="post", color=colors[ds], lw=1.6, label=f"{ds} median (n={n_runs})")
            ax.fill_between(q.index, q[0.1], q[0.9], step="post", color=colors[ds], alpha=0.2, lw=0)
        planned = max((planned_by_trial.get(t, float("nan")) for t in sub["trial_id"].unique()), default=None)
        n = int(planned) if planned is not None and pd.notna(planned) else int(sub["epoch"].max())
        ax.step(range(1, n + 1), paper_path(n), where="post", color="black", ls="--", lw=1.0, label="paper's path")
        ax.set_yscale("log", base=2)
        ax.set_title(f"{arch} {_label(method, variant)}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("batch size")
        ax.legend(fontsize=7, loc="upper left")
    band = f"; past {SEED_LINES} seeds: median, band = 10-90%" if banded else ""
    fig.suptitle(f"Batch-size trajectories (one line per seed{band})")
    return _save(fig, path)


def _panels(e: pd.DataFrame, keys: list[str], panels: list[tuple]):
    """(panel key, its rows) for each of `panels`, from one groupby (not one filter per panel)."""
    groups = dict(iter(e.groupby(keys, sort=False)))
    return [(key, groups[key]) for key in panels]


def _per_arch_vs_batch(epochs: pd.DataFrame, column: str, path: str, ylabel: str, logy: bool, title: str):
    e = epochs[["arch", "batch_size", column]].replace([np.inf, -np.inf], np.nan).dropna()
    if e.empty:
        return None
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shown = e if len(e) <= SCATTER_POINTS else e.sample(SCATTER_POINTS, random_state=0)
    for i, (arch, g) in enumerate(e.groupby("arch", sort=True)):
        color = f"C{i % 10}"
        points = shown[shown["arch"] == arch]
        ax.scatter(points["batch_size"], points[column], s=6, alpha=0.25, color=color)
        med = g.groupby("batch_size")[column].median()
        ax.plot(med.index, med.values, "-o", ms=3, color=color, label=f"{arch} (median)")
    if len(shown) < len(e):
        title += f" ({len(shown):,} of {len(e):,} epochs drawn)"
    ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def time_vs_batch(epochs: pd.DataFrame, path: str):
    """Training time per epoch against the batch size used, all runs, median line per arch."""
    return _per_arch_vs_batch(epochs, "epoch_time_s", path, "train time per epoch (s)", False,
                              "Time per epoch vs batch size")  # fmt: skip


def gradvar_vs_batch(epochs: pd.DataFrame, path: str):
    """Gradient variance against the batch size used (log-log), median line per arch."""
    e = epochs[epochs["grad_var"] > 0]
    return _per_arch_vs_batch(e, "grad_var", path, "gradient variance", True,
                              "Gradient variance vs batch size")  # fmt: skip


def accuracy_curves(epochs: pd.DataFrame, summary: pd.DataFrame, path: str):
    """Test accuracy per epoch, mean over completed seeds with a min-max band, per (arch, dataset)."""
    done = summary[summary["status"].eq("completed")][["study", "trial_id"]]
    e = epochs.merge(done, on=["study", "trial_id"], how="inner")
    if e.empty:
        return None
    panels = sorted(e[["arch", "dataset"]].drop_duplicates().itertuples(index=False, name=None))
    fig, axes = _grid(len(panels))
    series = sorted(e[["method", "variant"]].drop_duplicates().itertuples(index=False, name=None))
    colors = {k: f"C{i % 10}" for i, k in enumerate(series)}
    colors[("fixed", "baseline")] = "black"
    # Every curve's statistics in one group-by, then one panel at a time.
    keys = ["arch", "dataset", "method", "variant"]
    acc = (100.0 * e["test_acc"]).groupby([e[k] for k in keys] + [e["epoch"]]).agg(["mean", "min", "max"])
    n_runs = e.groupby(keys)["trial_id"].nunique()
    for ax, (arch, ds) in zip(axes, panels):
        for m, v in sorted(n_runs.loc[(arch, ds)].index):
            stats = acc.loc[(arch, ds, m, v)]
            ax.plot(stats.index, stats["mean"], color=colors[(m, v)], lw=1.4,
                    label=f"{_label(m, v)} (n={n_runs.loc[(arch, ds, m, v)]})")  # fmt: skip
            ax.fill_between(stats.index, stats["min"], stats["max"], color=colors[(m, v)], alpha=0.15)
        ax.set_title(f"{arch} / {ds}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Test accuracy: mean over seeds, band = min..max")
    return _save(fig, path)


def taxonomy_scatter(tax: pd.DataFrame, path: str, opts: TaxonomyOptions = DEFAULT_OPTIONS):
    """S_mean vs sigma_S per (arch, dataset), coloured by class, with the class boundaries."""
    t = tax.dropna(subset=["S_mean"])
    if t.empty:
        return None
    fig = Figure(figsize=(6.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = t["S_std"].fillna(0.0)
    for cls, color in CLASS_COLORS.items():
        m = t["class"].eq(cls)
        if m.any():
            ax.scatter(t.loc[m, "S_mean"], y[m], color=color, s=40, label=cls)
    for row, yy in zip(t.itertuples(), y):
        ax.annotate(f"{row.arch}/{row.dataset}", (row.S_mean, yy), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")  # fmt: skip
    ax.axvline(opts.unstable_below, ls="--", color="gray", lw=0.8)
    ax.axvline(opts.overly_stable_from, ls="--", color="gray", lw=0.8)
    ax.axhline(opts.dynamic_std, ls=":", color="gray", lw=0.8)
    ax.set_xlabel("stability score S (mean over seeds)")
    ax.set_ylabel(r"$\sigma_S$ (seed std; 0 when one seed)")
    ax.set_title("Stability taxonomy of the fixed-batch runs")
    ax.legend(fontsize=7)
    return _save(fig, path)


def null_control_plot(null: pd.DataFrame, path: str):
    """Per reading: the histogram of its null replays' distances to the paper's path, with the observed
    mean distance of its runs (red) and the null's 5th percentile (dashed)."""
    if null is None or null.empty or "null_distances" not in null:
        return None
    fig, axes = _grid(len(null), ncols=4, size=(3.4, 2.6))
    high = max(float(np.max(d)) for d in null["null_distances"])
    high = max(high, float(null["observed"].max())) * 1.05 or 1.0
    for ax, r in zip(axes, null.itertuples()):
        ax.hist(r.null_distances, bins=np.linspace(0.0, high, 30), color="tab:gray", alpha=0.8)
        ax.axvline(r.null_p05, color="k", ls="--", lw=1)
        ax.axvline(r.observed, color="tab:red", lw=2)
        ax.set_title(f"{r.arch}: {r.reading}\np = {r.p:.2f} (seed mean {r.p_mean:.2f})", fontsize=8)
        ax.set_xlabel("distance to the paper's path (octaves)", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle("Null control: replays on signals with no training (gray), observed runs (red)", fontsize=9)
    return _save(fig, path)


def make_plots(
    epochs: pd.DataFrame,
    summary: pd.DataFrame,
    tax: pd.DataFrame,
    out_dir: str,
    opts: TaxonomyOptions = DEFAULT_OPTIONS,
    trajectory: pd.DataFrame | None = None,
    null: pd.DataFrame | None = None,
) -> dict[str, str]:
    """Write every plot into out_dir; return {name: path} of those that had data."""
    os.makedirs(out_dir, exist_ok=True)
    jobs = {
        "batch_size_trajectories": lambda p: batch_size_trajectories(epochs, p, opts.fixed_method, trajectory),
        "time_vs_batch": lambda p: time_vs_batch(epochs, p),
        "gradvar_vs_batch": lambda p: gradvar_vs_batch(epochs, p),
        "accuracy_curves": lambda p: accuracy_curves(epochs, summary, p),
        "taxonomy": lambda p: taxonomy_scatter(tax, p, opts),
        "null_control": lambda p: null_control_plot(null, p),
    }
    out = {}
    for name, job in jobs.items():
        written = job(os.path.join(out_dir, f"{name}.png"))
        if written:
            out[name] = written
    return out
