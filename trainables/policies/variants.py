"""Named variants of a method: the paper's ablations and the readings of DEBA's lost equations.

A variant is a name for a set of policy options. The name means the same options everywhere:
run_grid's `--variants`, `python -m trainables.run --variant`, and a TrialConfig, which refuses a
built-in variant's name on a trial whose options differ from it (trainables/config.py).

- The paper's ablations (SPEC §3): universal thresholds, cooldown 2 and 5, full history.
- The readings (SPEC §4): each changes one reconstructed choice of the default reading (decision_rule
  both, confidence_eps 1e-8, last-step signals, median reference over a window that includes the current
  epoch, no cooldown after a no-op decision). The reconstruction preset runs one DEBA variant per reading;
  the analysis calibrates every reading's thresholds from fixed runs and compares them with Table 1
  (analysis/fidelity.py).

Pure Python.
"""

from __future__ import annotations

from typing import Any

BASELINE = "baseline"  # every method's main configuration: no options of its own
ABLATIONS: dict[str, dict[str, Any]] = {
    "universal_thresholds": {"thresholds": "universal"},  # (0.3, 0.5), the policy's own constant
    "cooldown2": {"cooldown": 2},
    "cooldown5": {"cooldown": 5},
    "full_history": {"full_history": True},
}
READINGS: dict[str, dict[str, Any]] = {
    "rule_either": {"decision_rule": "either"},
    "eps_zero": {"confidence_eps": 0.0},
    "epoch_mean_signals": {"signal_source": "epoch_mean"},
    "mixed_signals": {"signal_source": "mixed"},
    "mean_reference": {"confidence_reference": "mean"},
    "previous_reference": {"confidence_includes_current": False},
    "noop_cooldown": {"cooldown_on_noop": True},
}
# Every built-in variant: name -> the policy options it sets.
VARIANTS: dict[str, dict[str, Any]] = {BASELINE: {}, **ABLATIONS, **READINGS}
