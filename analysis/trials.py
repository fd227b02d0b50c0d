"""One row per trial: status, final accuracy, times, batch sizes and the SPEC §4 per-run metrics.

Everything downstream (comparison, taxonomy, calibration) starts from this table, computed with
vectorised group-bys over the epochs table so that a 240-trial store takes milliseconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TRIAL = ["study", "trial_id"]
IDS = ["study", "trial_id", "arch", "dataset", "seed", "method", "variant"]
INCOMPLETE = "incomplete"  # epochs were written but no runs row (trial crashed or still running)


def _finite(s: pd.Series) -> pd.Series:
    """The series with +-inf turned into NaN, so that every statistic skips both alike."""
    return s.where(np.isfinite(s))


def validate_ids(epochs: pd.DataFrame, runs: pd.DataFrame) -> None:
    """Raise ValueError naming the identifier column that holds nulls (rows would vanish)."""
    for label, df, cols in (("epochs", epochs, IDS + ["epoch"]), ("runs", runs, TRIAL)):
        for col in cols:
            n = int(df[col].isna().sum())
            if n:
                raise ValueError(f"{label} table: identifier column {col!r} is null in {n} rows")


def run_metrics(epochs: pd.DataFrame, last_fraction: float = 0.25) -> pd.DataFrame:
    """Per-trial metrics from the epochs table, indexed by (study, trial_id).

    Columns: identifiers, n_epochs, last_epoch, final_acc (test_acc of the last epoch), best_acc,
    t_train (sum of epoch_time_s; NaN if any epoch's time is missing), t_wall (wall_time_s of the
    last epoch, cumulative), final_bs (batch size used in the last epoch), mean_bs (mean over
    epochs), n_increase, n_rollback, n_decisions (epochs outside cooldown), aggressiveness
    ((#increase - #rollback) / n_decisions), convergence_stability (std of train_loss over the
    epochs after ``(1 - last_fraction)`` of the run), cv_grad_var, mean_dn, mean_dl and the
    stability score S = 1 / (1 + CV(grad_var) + mean(dN) + mean(dL)) over epochs >= 2.
    Non-finite signal values are skipped.
    """
    if not 0.0 < last_fraction <= 1.0:
        raise ValueError(f"last_fraction must be in (0, 1], got {last_fraction}")
    e = epochs.sort_values(TRIAL + ["epoch"], kind="stable").reset_index(drop=True)
    g = e.groupby(TRIAL, sort=True)
    last = e.loc[g["epoch"].idxmax()].set_index(TRIAL)
    out = last[IDS[2:]].copy()
    out["last_epoch"] = last["epoch"]
    out["final_acc"] = last["test_acc"]
    out["t_wall"] = last["wall_time_s"]
    out["final_bs"] = last["batch_size"]

    decision = e["decision"]
    outside = ~e["in_cooldown"].eq(True)
    work = pd.DataFrame(
        {
            "study": e["study"],
            "trial_id": e["trial_id"],
            "time_nan": e["epoch_time_s"].isna(),
            "inc": (decision.eq("increase") & outside).astype(float),
            "rb": (decision.eq("rollback") & outside).astype(float),
            "outside": outside.astype(float),
        }
    )
    sums = work.groupby(TRIAL, sort=True).sum()
    out["n_epochs"] = g.size()
    out["best_acc"] = g["test_acc"].max()
    out["t_train"] = g["epoch_time_s"].sum().where(sums["time_nan"] == 0)
    out["mean_bs"] = g["batch_size"].mean()
    out["n_increase"] = e["decision"].eq("increase").groupby([e["study"], e["trial_id"]]).sum()
    out["n_rollback"] = e["decision"].eq("rollback").groupby([e["study"], e["trial_id"]]).sum()
    out["n_decisions"] = sums["outside"].astype(int)
    out["aggressiveness"] = ((sums["inc"] - sums["rb"]) / sums["outside"]).where(sums["outside"] > 0)

    # Convergence stability: the last 25% of the run's epochs, i.e. epoch > 0.75 * last epoch.
    last_epoch = e.groupby(TRIAL, sort=True)["epoch"].transform("max")
    tail = e[e["epoch"] > (1.0 - last_fraction) * last_epoch]
    out["convergence_stability"] = _finite(tail["train_loss"]).groupby([tail["study"], tail["trial_id"]]).std(ddof=1)

    later = e[e["epoch"] >= 2]
    keys = [later["study"], later["trial_id"]]
    gv = _finite(later["grad_var"]).groupby(keys)
    out["cv_grad_var"] = gv.std(ddof=1) / gv.mean()
    out["mean_dn"] = _finite(later["grad_norm_variation"]).groupby(keys).mean()
    out["mean_dl"] = _finite(later["loss_variation"]).groupby(keys).mean()
    out["S"] = 1.0 / (1.0 + out["cv_grad_var"] + out["mean_dn"] + out["mean_dl"])
    return out


def trial_summary(epochs: pd.DataFrame, runs: pd.DataFrame, last_fraction: float = 0.25) -> pd.DataFrame:
    """One row per trial (from either table) with its status and :func:`run_metrics`.

    ``status`` is the runs-table status, or ``incomplete`` for a trial with epochs but no runs
    row; a runs row without epochs keeps its status with ``n_epochs`` = 0.
    """
    validate_ids(epochs, runs)
    if epochs.empty:
        raise ValueError("the epochs table has no rows: nothing to analyse")
    metrics = run_metrics(epochs, last_fraction)
    r = runs.set_index(TRIAL)[["arch", "dataset", "seed", "method", "variant", "status", "error"]]
    out = metrics.join(r[["status", "error"]], how="outer")
    # Runs rows without epochs: take their identifiers from the runs table.
    only_runs = out["arch"].isna()
    if only_runs.any():
        for col in ["arch", "dataset", "seed", "method", "variant"]:
            out.loc[only_runs, col] = r.loc[out.index[only_runs], col]
    out["status"] = out["status"].fillna(INCOMPLETE)
    out["n_epochs"] = out["n_epochs"].fillna(0).astype(int)
    out["seed"] = out["seed"].astype("int64")
    return out.reset_index()
