"""Threshold fidelity (SPEC §4): the thresholds each reading calibrates on the paper's own
architectures, beside the paper's Table 1.

For every arch with a Table 1 row and completed fixed runs, and every distinct signal reading (the
default reading and those of trainables/policies/variants.py that change how the signals are computed;
readings that change only the decision share the default's thresholds and are listed with it): the
calibrated (theta_stab, theta_conf) by SPEC §2's rule over the fixed runs' epochs t >= 2 pooled over
seeds and datasets, Table 1's pair, the distance |ln(theta_stab / T1_stab)| + |ln(theta_conf / T1_conf)|
(0 = Table 1 exactly), whether both land within a factor NEAR_FACTOR of Table 1's values, and the
shares of profiled epochs with dN < T1_stab and with c < T1_conf: how often Table 1's own thresholds
would allow an increase under that reading.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.calibrate import PAPER_THRESHOLDS, fixed_signals
from trainables.policies import SIGNAL_OPTIONS, signal_reading
from trainables.policies.variants import BASELINE, READINGS

# "Near Table 1" [choice]: both calibrated thresholds within this factor of Table 1's.
NEAR_FACTOR = 1.5
FIDELITY_COLUMNS = [
    "arch", "reading", "readings", "signals", "n_runs", "n_epochs", "theta_stab", "theta_conf", "table1_stab",
    "table1_conf", "distance", "near", "share_stab_below", "share_conf_below",
]  # fmt: skip


def signal_readings() -> dict[str, tuple[dict, list[str]]]:
    """name -> (signal options, names of every reading that computes its signals so), one entry per
    distinct set of signal options, the default reading first."""
    out: dict[str, tuple[dict, list[str]]] = {}
    for name, options in {BASELINE: {}, **READINGS}.items():
        reading = signal_reading(options)
        same = next((names for known, names in out.values() if known == reading), None)
        if same is not None:
            same.append(name)
        else:
            out[name] = (reading, [name])
    return out


def _describe(reading: dict) -> str:
    default = signal_reading({})
    changed = [f"{k}={reading[k]}" for k in SIGNAL_OPTIONS if reading[k] != default[k]]
    return ", ".join(changed) or "defaults"


def threshold_fidelity(epochs: pd.DataFrame, summary: pd.DataFrame, fixed_method: str = "fixed") -> pd.DataFrame:
    """One row per (arch with a Table 1 row and completed fixed runs, distinct signal reading); see the
    module docstring. A reading whose statistics the fixed runs do not record is left out."""
    archs = sorted(
        set(summary.loc[summary["method"].eq(fixed_method) & summary["status"].eq("completed"), "arch"])
        & set(PAPER_THRESHOLDS)
    )
    rows = []
    for arch in archs:
        t1_stab, t1_conf = PAPER_THRESHOLDS[arch]
        for name, (reading, names) in signal_readings().items():
            parts = fixed_signals(epochs, summary, arch, reading, fixed_method)
            if not parts:
                continue
            signals = pd.concat(parts).replace([np.inf, -np.inf], np.nan)
            dn, conf = signals["grad_norm_variation"].dropna(), signals["confidence"].dropna()
            if dn.empty or conf.empty:
                continue
            stab, cf = float(np.percentile(dn, 75)), float(np.median(conf))
            ratios = (stab / t1_stab, cf / t1_conf)
            finite = all(r > 0 and math.isfinite(r) for r in ratios)
            rows.append(
                {
                    "arch": arch,
                    "reading": name,
                    "readings": ", ".join(names),
                    "signals": _describe(reading),
                    "n_runs": len(parts),
                    "n_epochs": len(signals),
                    "theta_stab": stab,
                    "theta_conf": cf,
                    "table1_stab": t1_stab,
                    "table1_conf": t1_conf,
                    "distance": sum(abs(math.log(r)) for r in ratios) if finite else math.inf,
                    "near": finite and all(abs(math.log(r)) <= math.log(NEAR_FACTOR) for r in ratios),
                    "share_stab_below": float((dn < t1_stab).mean()),
                    "share_conf_below": float((conf < t1_conf).mean()),
                }
            )
    return pd.DataFrame(rows, columns=FIDELITY_COLUMNS)
