"""The configs the runs table stores, read as what each trial ran with (trainables/config.py `resolve_stored`).

A runs row's `config_json` may come from any version of the tool: a setting the document lacks is
read as the value it ran with (its neutral value, or a schema-1 default), never as today's default.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from trainables.config import resolve_stored


def stored_config(text: Any) -> dict[str, Any] | None:
    """The full config of one runs row's config_json; None when it is missing or does not read."""
    if not isinstance(text, str) or not text:
        return None
    try:
        doc = json.loads(text)
        return resolve_stored(doc) if isinstance(doc, dict) else None
    except (ValueError, TypeError, KeyError, LookupError):
        return None


def stored_configs(runs: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    """(study, trial_id) -> the full config it ran with, for every runs row whose config reads."""
    if "config_json" not in runs:
        return {}
    out = {}
    for study, trial_id, text in runs[["study", "trial_id", "config_json"]].itertuples(index=False):
        config = stored_config(text)
        if config is not None:
            out[(study, trial_id)] = config
    return out
