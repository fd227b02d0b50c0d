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
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from orchestrator.store import FINISHED_STATUSES, ResultsStore
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
            now = TrialConfig.from_stored(cfg).trial_id()
        except (ValueError, TypeError):
            continue
        if now != tid:
            out[tid] = now
    return out


def _rank(store: ResultsStore, tid: str, runs: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """Which copy of a trial to keep: finished (completed or diverged) first, then most epochs stored."""
    return (runs.get(tid, {}).get("status") in FINISHED_STATUSES, store.stored_epochs([tid])[tid])


@dataclass(frozen=True)
class Rename:
    """One trial stored under older ids: the copy kept (stored as `new`) and the copies set aside."""

    keep: str
    new: str
    aside: tuple[str, ...] = ()

    def line(self) -> str:
        """What renaming does, in words."""
        head = (
            f"trial {self.keep} (an id of an older version) is now {self.new}"
            if self.keep != self.new
            else (f"trial {self.new} is kept")
        )
        return head + (f"; other copies set aside: {', '.join(self.aside)}" if self.aside else "")


def plan_renames(
    store: ResultsStore, renames: dict[str, str], runs: dict[str, dict[str, Any]], with_rows: set[str]
) -> list[Rename]:
    """Which copy of each renamed trial to keep (reads only). Where one trial has several copies (under
    the new id already, or under two old ids: run at two epoch counts when epochs were part of the id),
    the best copy (`_rank`) is kept under the new id and the others are set aside, never overwritten."""
    by_new: dict[str, list[str]] = {}
    for old, new in sorted(renames.items()):
        by_new.setdefault(new, []).append(old)
    out = []
    for new, olds in sorted(by_new.items()):
        present = [new] if new in runs or new in with_rows else []
        keep = max(present + olds, key=lambda tid: _rank(store, tid, runs))
        out.append(Rename(keep, new, tuple(tid for tid in present + olds if tid != keep)))
    return out


def renamed_view(
    renames: list[Rename], runs: dict[str, dict[str, Any]], with_rows: set[str]
) -> tuple[dict[str, dict[str, Any]], set[str], dict[str, str]]:
    """The runs rows and the ids with epoch rows as the store will hold them once `renames` are done,
    and new id -> the id its rows are stored under now."""
    runs, with_rows = dict(runs), set(with_rows)
    source: dict[str, str] = {}
    for r in renames:
        kept_run, kept_rows = runs.get(r.keep), r.keep in with_rows
        for tid in (r.keep, *r.aside):
            runs.pop(tid, None)
            with_rows.discard(tid)
        if kept_run is not None:
            runs[r.new] = {**kept_run, "trial_id": r.new}
        if kept_rows:
            with_rows.add(r.new)
            source[r.new] = r.keep
    return runs, with_rows, source


def apply_renames(store: ResultsStore, renames: list[Rename]) -> list[str]:
    """Do `renames` (the caller holds the study lock); returns one line per trial."""
    # Copies in compacted parts get their own files first (then set aside or renamed like any other).
    store.release([tid for r in renames for tid in (r.keep, r.new, *r.aside)])
    for r in renames:
        for tid in r.aside:
            for table in ("runs", "epochs"):
                path = store.table_path(table, tid)
                if store.fs.get_file_info(path).type == pafs.FileType.File:
                    store.quarantine(
                        path, f"another copy of the same trial ({r.keep}) is kept as {r.new}", damaged=False
                    )
        if r.keep != r.new:
            store.rename_trial(r.keep, r.new)
    return [r.line() for r in renames]
