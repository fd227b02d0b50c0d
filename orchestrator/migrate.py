"""Trials stored under the ids of an older version of the tool, renamed to the ids they have now.

A trial's id is a hash of its identity (trainables/config.py). When the identity's definition
changes (epochs left out of it, a policy's explicit defaults dropped, a new field), the trials a
store already holds keep their old ids, and the same command would run them again beside the old
rows: two rows per trial. Instead, before planning, every stored trial's config (its runs row,
else the experiment plan of an interrupted one) is read as a TrialConfig of this version and, when
its id is now another, the trial's files are rewritten under the new id. Checkpoints keep their
old directory names: an interrupted trial renamed here starts from scratch, a finished one stays
finished.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs

from orchestrator.store import ResultsStore
from trainables.config import TrialConfig


def stored_configs(
    runs: dict[str, dict[str, Any]], plans: dict[str, dict[str, Any]], with_rows: set[str]
) -> dict[str, dict[str, Any]]:
    """trial_id -> stored config, for every trial with a runs row (its config_json) or with epoch
    rows and a plan entry (interrupted before its runs row)."""
    configs: dict[str, dict[str, Any]] = {}
    for doc in plans.values():
        for tid, p in doc.get("trials", {}).items():
            if tid in with_rows and isinstance(p, dict) and isinstance(p.get("config"), dict):
                configs.setdefault(tid, p["config"])
    for tid, row in runs.items():
        try:
            cfg = json.loads(row.get("config_json") or "")
        except ValueError:
            continue
        if isinstance(cfg, dict):
            configs[tid] = cfg
    return configs


def renamed_ids(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """stored trial_id -> its id in this version, for the trials whose id changed. A config this
    version cannot read (a setting since removed) keeps its id: the study then names the difference."""
    out = {}
    for tid, cfg in configs.items():
        try:
            now = TrialConfig.from_dict(cfg).trial_id()
        except (ValueError, TypeError):
            continue
        if now != tid:
            out[tid] = now
    return out


def rename_trials(store: ResultsStore, renames: dict[str, str], finished: set[str]) -> list[str]:
    """Rewrite each renamed trial's files under its new id (the caller holds the study lock). When the
    new id has a runs row already (`finished`: the trial was run again by a version that did not
    rename), the old copy is set aside instead. Returns one line per trial."""
    lines = []
    for old, new in sorted(renames.items()):
        if new in finished:
            for table in ("runs", "epochs"):
                path = store.table_path(table, old)
                if store.fs.get_file_info(path).type == pafs.FileType.File:
                    store.quarantine(path, f"the same trial is stored under its current id {new}")
            lines.append(f"trial {old} is stored again under its current id {new}; the old copy was set aside")
            continue
        store.rename_trial(old, new)
        lines.append(f"trial {old} (an id of an older version) is now {new}")
    return lines
