"""Versions of the stored trial config, and what the first version stored (pure data).

A trial's runs row holds its config as JSON (`config_json`). What that JSON holds has changed once,
and the analysis and the planner must read stores of every version alike
(trainables/config.py `resolve_stored`):

- Schema 1 (up to commit 640421d; no "config_schema" key): every trial setting, and a policy's
  options only where they differed from that version's defaults, which `SCHEMA_1_POLICY_DEFAULTS`
  records (read off that commit's `policy_options`). A stored trial whose config lacks an option ran
  with the value recorded here, whatever today's default is.
- Schema 2 (this version): every trial setting and every policy option with the value it ran
  with, defaults included, plus "config_schema" and "package_version".

The trial id's rule has a version of its own, `IDENTITY_VERSION` (trainables/config.py `identity_view`):
a new version of the rule would rename stored trials, and orchestrator/migrate.py knows how.
"""

from __future__ import annotations

from typing import Any

CONFIG_SCHEMA = 2
IDENTITY_VERSION = 1

# Keys of a stored config document that are no setting.
SCHEMA_KEY = "config_schema"
PACKAGE_VERSION_KEY = "package_version"

_SHARED_1: dict[str, Any] = {
    "b0": 64,
    "window": 15,
    "full_history": False,
    "signal_source": "last_step",
    "lr_scaling": "none",
    "ema_decay": 0.5,
    "micro_batches": 2,
}
_COOLDOWN_1: dict[str, Any] = {**_SHARED_1, "b_min": 32, "b_max": 1024, "cooldown": 10}
_RESIZE_1: dict[str, Any] = {**_SHARED_1, "resize_every": 20, "b_max": 2048}

# Every policy's options and their defaults in schema 1.
SCHEMA_1_POLICY_DEFAULTS: dict[str, dict[str, Any]] = {
    "fixed": dict(_SHARED_1),
    "deba": {
        **_COOLDOWN_1,
        "theta_stab": None,
        "theta_conf": None,
        "thresholds": "arch",
        "alpha": 1.5,
        "beta": 0.8,
        "decision_rule": "both",
        "confidence_eps": 1e-08,
        "cooldown_on_noop": False,
    },
    "adabatch": {**_RESIZE_1, "factor": 2},
    "divebatch": {
        **_RESIZE_1,
        "delta": None,
        "estimator": "per_sample",
        "diversity_sum": "training",
        "per_sample_chunk": 32,
    },
    "gns": dict(_COOLDOWN_1),
}

# The trial settings of schema 1 with their defaults (arch and dataset had none): a stored config of
# schema 1 holds them all; one written before a setting existed reads it as this value.
SCHEMA_1_TRIAL_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "method": "fixed",
    "variant": "baseline",
    "epochs": 100,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "data_dir": None,
    "download": True,
    "train_limit": None,
    "test_limit": None,
    "eval_batch_size": 1024,
    "augment": "auto",
    "device": "auto",
    "amp": "auto",
    "channels_last": "auto",
    "fused_sgd": "auto",
    "compile": False,
    "cudnn_benchmark": "auto",
    "threads": None,
    "record_epoch_mean": False,
    "timm_input": None,
}
