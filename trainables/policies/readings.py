"""Named readings of DEBA's lost equations (SPEC §4): each changes one reconstructed choice of the
default reading (decision_rule both, confidence_eps 1e-8, last-step signals, median reference over a
window that includes the current epoch, no cooldown after a no-op decision).

The reconstruction preset runs one DEBA variant per reading (orchestrator/studies.py); the
analysis calibrates every reading's thresholds from fixed runs and compares them with Table 1
(analysis/fidelity.py). Pure Python.
"""

from __future__ import annotations

from typing import Any

# variant name -> the DEBA options it sets. "baseline" (the default reading) sets none.
READINGS: dict[str, dict[str, Any]] = {
    "rule_either": {"decision_rule": "either"},
    "eps_zero": {"confidence_eps": 0.0},
    "epoch_mean_signals": {"signal_source": "epoch_mean"},
    "mixed_signals": {"signal_source": "mixed"},
    "mean_reference": {"confidence_reference": "mean"},
    "previous_reference": {"confidence_includes_current": False},
    "noop_cooldown": {"cooldown_on_noop": True},
}
BASELINE_READING = "baseline"
