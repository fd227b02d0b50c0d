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

import numpy as np
import pandas as pd

# The paper's Table 1 (SPEC §2), shown next to the calibrated values for reference.
PAPER_THRESHOLDS: dict[str, tuple[float, float]] = {
    "mobilenetv3": (0.25, 0.5),
    "efficientnet_b0": (0.60, 0.8),
    "resnet18": (0.55, 0.6),
    "resnet50": (12.0, 0.8),
    "densenet121": (0.55, 0.6),
    "vit_b16": (0.40, 0.7),
}


def calibrate(
    epochs: pd.DataFrame,
    summary: pd.DataFrame,
    fixed_method: str = "fixed",
    stab_percentile: float = 75.0,
) -> pd.DataFrame:
    """Per arch: n_runs, n_epochs (rows used), theta_stab, theta_conf, paper values."""
    if not 0.0 <= stab_percentile <= 100.0:
        raise ValueError(f"stab_percentile must be in [0, 100], got {stab_percentile}")
    ok = summary[
        summary["method"].eq(fixed_method)
        & summary["status"].eq("completed")
        & (summary["n_epochs"] > 0)
    ]
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


def thresholds(cal: pd.DataFrame) -> dict[str, dict[str, float]]:
    """arch -> {"theta_stab": x, "theta_conf": y}; archs with a NaN threshold are left out."""
    out = {}
    for row in cal.itertuples():
        if math.isfinite(row.theta_stab) and math.isfinite(row.theta_conf):
            out[str(row.arch)] = {
                "theta_stab": float(row.theta_stab),
                "theta_conf": float(row.theta_conf),
            }
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
