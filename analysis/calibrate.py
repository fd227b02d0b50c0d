"""Threshold calibration (the paper's Table 1) from fixed-batch profiling runs (SPEC §4).

Per arch, over the epochs t >= 2 of all completed fixed-method runs pooled across seeds and
datasets: theta_stab = 75th percentile (linear interpolation) of grad_norm_variation,
theta_conf = median of confidence. Non-finite values are skipped. The output of
:func:`thresholds` is exactly what ``run_grid.py --thresholds FILE`` reads and what
``make_policy("deba", arch=ARCH, theta_stab=..., theta_conf=...)`` accepts per arch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

# Pure Python (no torch): the paper's constants, and the policies' own signal bookkeeping, so that a
# replay is exactly what a policy would have seen.
from trainables import paper
from trainables.policies.signal_tracker import SOURCE_COLUMNS, SignalTracker

# The paper's Table 1 (SPEC §2), shown next to the calibrated values for reference.
PAPER_THRESHOLDS: dict[str, tuple[float, float]] = paper.THRESHOLDS


def calibrate(
    epochs: pd.DataFrame, summary: pd.DataFrame, fixed_method: str = "fixed", stab_percentile: float = 75.0
) -> pd.DataFrame:
    """Per arch: n_runs, n_epochs (rows used), theta_stab, theta_conf, paper values."""
    if not 0.0 <= stab_percentile <= 100.0:
        raise ValueError(f"stab_percentile must be in [0, 100], got {stab_percentile}")
    ok = summary[summary["method"].eq(fixed_method) & summary["status"].eq("completed") & (summary["n_epochs"] > 0)]
    e = epochs.merge(ok[["study", "trial_id"]], on=["study", "trial_id"], how="inner")
    e = e[e["epoch"] >= 2]
    dn = e["grad_norm_variation"].where(np.isfinite(e["grad_norm_variation"]))
    conf = e["confidence"].where(np.isfinite(e["confidence"]))
    g_dn, g_conf = dn.groupby(e["arch"]), conf.groupby(e["arch"])
    out = pd.DataFrame(
        {
            "n_runs": ok.groupby("arch")["trial_id"].size(),
            "n_epochs": e.groupby("arch")["epoch"].size(),
            "theta_stab": g_dn.quantile(stab_percentile / 100.0, interpolation="linear"),
            "theta_conf": g_conf.median(),
        }
    )
    out.index.name = "arch"
    out["n_epochs"] = out["n_epochs"].fillna(0).astype(int)
    out["paper_theta_stab"] = [PAPER_THRESHOLDS.get(a, (math.nan, math.nan))[0] for a in out.index]
    out["paper_theta_conf"] = [PAPER_THRESHOLDS.get(a, (math.nan, math.nan))[1] for a in out.index]
    return out.reset_index()


def _replay(loss: np.ndarray, var: np.ndarray, norm: np.ndarray, reading: Mapping[str, Any]) -> np.ndarray:
    """(dN_t, dL_t, c_t) rows of one trial's epochs (in order) under the signal options `reading`:
    the policy's own SignalTracker fed the stored statistics (NaN for a missing value)."""
    tracker = SignalTracker(reading)
    out = np.empty((len(loss), 3))
    # Plain floats: the tracker's per-epoch arithmetic is Python's, and numpy scalars cost ~10x here.
    for i, (lo, va, no) in enumerate(zip(loss.tolist(), var.tolist(), norm.tolist())):
        sig = tracker.update(lo, va, no)
        out[i] = (sig.grad_norm_variation, sig.loss_variation, sig.confidence)
    return out


def _columns_of(reading: Mapping[str, Any]) -> tuple[str, str]:
    source = reading["signal_source"]
    if source not in SOURCE_COLUMNS:
        raise ValueError(f"signal_source={source!r} is not allowed; allowed values: {', '.join(SOURCE_COLUMNS)}")
    return SOURCE_COLUMNS[source]


def _floats(frame: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def replay_signals(trial: pd.DataFrame, reading: Mapping[str, Any]) -> pd.DataFrame:
    """dN_t, dL_t and c_t of one trial's epochs (sorted by epoch) as a policy with the signal options
    `reading` (every name of SIGNAL_OPTIONS) would have computed them, from the stored train_loss
    and gradient statistics."""
    var_col, norm_col = _columns_of(reading)
    rows = _replay(_floats(trial, "train_loss"), _floats(trial, var_col), _floats(trial, norm_col), reading)
    return pd.DataFrame(rows, columns=["grad_norm_variation", "loss_variation", "confidence"], index=trial.index)


def fixed_signals(
    epochs: pd.DataFrame, summary: pd.DataFrame, arch: str, reading: Mapping[str, Any], fixed_method: str = "fixed"
) -> list[pd.DataFrame]:
    """Per completed fixed run of `arch` (in (study, trial_id) order): its epochs t >= 2 replayed under
    `reading` (columns epoch, grad_norm_variation, loss_variation, confidence); runs that do not record
    the reading's statistics are left out."""
    ok = summary[
        summary["method"].eq(fixed_method)
        & summary["arch"].eq(arch)
        & summary["status"].eq("completed")
        & (summary["n_epochs"] > 0)
    ]
    var_col, norm_col = _columns_of(reading)
    if ok.empty or var_col not in epochs or norm_col not in epochs:
        return []
    keys = pd.MultiIndex.from_frame(ok[["study", "trial_id"]])
    e = epochs[pd.MultiIndex.from_frame(epochs[["study", "trial_id"]]).isin(keys)]
    e = e.sort_values(["study", "trial_id", "epoch"], kind="stable")
    # One pass over the sorted rows, trial by trial (a groupby's per-group frames cost ms each).
    study, trial = e["study"].to_numpy(dtype=object), e["trial_id"].to_numpy(dtype=object)
    if not len(e):
        return []
    starts = np.flatnonzero(np.r_[True, (study[1:] != study[:-1]) | (trial[1:] != trial[:-1])])
    ends = np.r_[starts[1:], len(e)]
    epoch = e["epoch"].to_numpy()
    loss, var, norm = _floats(e, "train_loss"), _floats(e, var_col), _floats(e, norm_col)
    parts = []
    for a, z in zip(starts, ends):
        if np.isnan(var[a:z]).all() or np.isnan(norm[a:z]).all():
            continue  # this run does not record the reading's statistics
        rows = _replay(loss[a:z], var[a:z], norm[a:z], reading)
        keep = epoch[a:z] >= 2
        part = pd.DataFrame(rows[keep], columns=["grad_norm_variation", "loss_variation", "confidence"])
        part.insert(0, "epoch", epoch[a:z][keep])
        parts.append(part)
    return parts


def calibrate_reading(
    epochs: pd.DataFrame,
    summary: pd.DataFrame,
    arch: str,
    reading: Mapping[str, Any],
    fixed_method: str = "fixed",
    stab_percentile: float = 75.0,
) -> dict[str, float]:
    """SPEC §2's calibration for one arch under one reading of the signals: the fixed runs'
    signals are replayed with these options (:func:`replay_signals`), then theta_stab = the
    ``stab_percentile`` of dN and theta_conf = the median of c over epochs t >= 2.

    Returns {"theta_stab", "theta_conf", "n_runs", "n_epochs"}; ValueError when no completed fixed
    run of ``arch`` carries the statistics of the reading's signal source.
    """
    parts = fixed_signals(epochs, summary, arch, reading, fixed_method)
    if not parts:
        raise ValueError(
            f"calibration of arch {arch!r} for signal_source={reading['signal_source']!r}: no completed "
            f"{fixed_method!r} run of it records {' and '.join(SOURCE_COLUMNS.get(reading['signal_source'], ()))}"
        )
    signals = pd.concat(parts).replace([np.inf, -np.inf], np.nan)
    dn, conf = signals["grad_norm_variation"].dropna(), signals["confidence"].dropna()
    if dn.empty or conf.empty:
        raise ValueError(f"calibration of arch {arch!r}: no finite signals after epoch 1")
    return {
        "theta_stab": float(np.percentile(dn, stab_percentile)),
        "theta_conf": float(np.median(conf)),
        "n_runs": len(parts),
        "n_epochs": len(signals),
    }


def thresholds(cal: pd.DataFrame) -> dict[str, dict[str, float]]:
    """arch -> {"theta_stab": x, "theta_conf": y}; archs with a NaN threshold are left out."""
    out = {}
    for row in cal.itertuples():
        if math.isfinite(row.theta_stab) and math.isfinite(row.theta_conf):
            out[str(row.arch)] = {"theta_stab": float(row.theta_stab), "theta_conf": float(row.theta_conf)}
    return out


def write_calibration(cal: pd.DataFrame, out_dir: str) -> str:
    """Write ``calibration.json`` (the ``--thresholds`` file) into out_dir; return its path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "calibration.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(thresholds(cal), f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def calibrated_study_command(path: str, study: str = "paper") -> str:
    """The one command that runs a study with these thresholds."""
    return f"python orchestrator/run_grid.py --study {study} --thresholds {path}"
