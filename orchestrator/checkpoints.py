"""A trial's checkpoints across the study's Tune experiments: find them, choose where to resume, prune.

The orchestrator never resumes a Tune experiment with `Tuner.restore`: a driver killed between
Tune deleting an old checkpoint and persisting its experiment snapshot leaves a state that points
at a deleted checkpoint, and every restore then fails the same way (Ray 2.60). Instead every run
of a study is a new experiment, and each unfinished trial starts from the newest checkpoint of its
own that is intact, found here by listing the storage, whatever experiment wrote it:

    <storage>/<experiment>/<label>-<trial_id>/checkpoint_NNNNNN/{state.pt, checkpoint.json}

`checkpoint.json` (written by `TrialLoop.save_checkpoint`) says which epoch the checkpoint ends.
A candidate is usable when that file reads and `state.pt` is a complete archive (its zip central
directory, at the end of the file, reads: a copy cut short by a kill has none). The trial process
still loads each candidate in full and falls back to the next one if that fails.

A checkpoint after epoch k is only a resume point if the results store holds the trial's rows for
epochs 1..k (a quarantined or lost epochs file means re-running from an earlier epoch, or from
scratch): the resumed trial re-reports every epoch after k.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import zipfile
from collections.abc import Collection
from dataclasses import dataclass

import pyarrow.fs as pafs

from orchestrator.store import resolve_uri
from trainables.records import CHECKPOINT_FILE as CHECKPOINT_STATE
from trainables.records import CHECKPOINT_META_FILE as CHECKPOINT_META

_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")
KEEP = 2  # checkpoints kept per trial when pruning


@dataclass(frozen=True)
class StoredCheckpoint:
    """One checkpoint directory of a trial (`uri` is a local absolute path or a URI)."""

    uri: str
    experiment: str
    index: int  # Tune's number within its experiment
    epoch: int | None  # None: no readable checkpoint.json
    mtime: float


def _uri(root: str, path: str) -> str:
    """The URI of `path` on the filesystem of `root` (local roots: the path itself)."""
    if "://" not in root:
        return path
    scheme = root.split("://", 1)[0]
    return f"{scheme}://{path}"


def find_checkpoints(
    root: str, trial_ids: set[str], experiments: Collection[str] | None = None
) -> dict[str, list[StoredCheckpoint]]:
    """trial_id -> its checkpoints under the experiments of `root` (only those named in `experiments`
    when given), newest first (epoch, then time)."""
    fs, base = resolve_uri(root, field="storage")
    out: dict[str, list[StoredCheckpoint]] = {tid: [] for tid in trial_ids}
    for exp in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if exp.type != pafs.FileType.Directory or (experiments is not None and exp.base_name not in experiments):
            continue
        for trial_dir in fs.get_file_info(pafs.FileSelector(exp.path, allow_not_found=True)):
            tid = trial_dir.base_name.rsplit("-", 1)[-1]
            if trial_dir.type != pafs.FileType.Directory or tid not in out:
                continue
            for ckpt in fs.get_file_info(pafs.FileSelector(trial_dir.path, allow_not_found=True)):
                m = _CHECKPOINT_DIR.match(ckpt.base_name)
                if ckpt.type == pafs.FileType.Directory and m:
                    out[tid].append(
                        StoredCheckpoint(
                            uri=_uri(root, ckpt.path),
                            experiment=exp.base_name,
                            index=int(m.group(1)),
                            epoch=_epoch(fs, ckpt.path),
                            mtime=ckpt.mtime.timestamp() if ckpt.mtime else 0.0,
                        )
                    )
    for tid in out:
        out[tid].sort(key=lambda c: (c.epoch if c.epoch is not None else -1, c.mtime, c.index), reverse=True)
    return out


def _epoch(fs: pafs.FileSystem, path: str) -> int | None:
    try:
        with fs.open_input_stream(posixpath.join(path, CHECKPOINT_META)) as f:
            epoch = json.loads(f.read().decode())["epoch"]
        return int(epoch)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def intact(checkpoint: StoredCheckpoint) -> str | None:
    """None when the checkpoint looks complete, else why not (cheap: no tensor is read)."""
    if checkpoint.epoch is None:
        return f"{CHECKPOINT_META} is missing or unreadable"
    fs, path = resolve_uri(checkpoint.uri, field="storage")
    try:
        with fs.open_input_file(posixpath.join(path, CHECKPOINT_STATE)) as f:
            with zipfile.ZipFile(f) as archive:  # reads only the central directory at the end
                if not archive.namelist():
                    return f"{CHECKPOINT_STATE} is an empty archive"
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        return f"{CHECKPOINT_STATE} is incomplete or unreadable ({type(exc).__name__})"
    return None


@dataclass(frozen=True)
class ResumePoint:
    """Where a trial starts: candidates newest first (the trial takes the first that loads)."""

    candidates: tuple[str, ...]
    epoch: int  # epoch of the first candidate (0 = from scratch)
    skipped: tuple[str, ...]  # "uri: reason" of checkpoints passed over


def resume_points(
    found: dict[str, list[StoredCheckpoint]], stored_epochs: dict[str, int], keep: int = KEEP
) -> dict[str, ResumePoint]:
    """Per trial: its intact checkpoints whose epoch the store covers (`stored_epochs[tid]` = the last
    epoch k such that rows 1..k are stored), newest first, at most `keep` of them."""
    out = {}
    for tid, checkpoints in found.items():
        covered = stored_epochs.get(tid, 0)
        usable, skipped = [], []
        for c in checkpoints:
            reason = intact(c)
            if reason is None and c.epoch is not None and c.epoch > covered:
                reason = f"ends at epoch {c.epoch} but the store holds rows only up to epoch {covered}"
            if reason is None:
                if len(usable) < keep:
                    usable.append(c)
            else:
                skipped.append(f"{c.uri}: {reason}")
        epoch = usable[0].epoch if usable and usable[0].epoch is not None else 0
        out[tid] = ResumePoint(candidates=tuple(c.uri for c in usable), epoch=epoch, skipped=tuple(skipped))
    return out


def prune(found: dict[str, list[StoredCheckpoint]], points: dict[str, ResumePoint]) -> list[str]:
    """Delete the intact checkpoints of these trials that are older than their resume point and not
    its candidates; returns the deleted URIs. Kept: every checkpoint of a trial that resumes from
    scratch, checkpoints newer than the resume point (the store lost those epochs' rows: the
    checkpoint may still be wanted to recover them), and damaged ones (the plan names them).

    Safe while no driver runs the study (the study lock): no trial is writing or reading them.
    """
    deleted = []
    for tid, checkpoints in found.items():
        point = points.get(tid)
        if point is None or not point.candidates:
            continue
        for c in checkpoints:
            if c.uri in point.candidates or c.epoch is None or c.epoch > point.epoch or intact(c) is not None:
                continue
            if _delete(c.uri):
                deleted.append(c.uri)
    return deleted


def _delete(uri: str) -> bool:
    """Delete a folder (a checkpoint, an experiment); False when it is already gone or not ours to delete."""
    fs, path = resolve_uri(uri, field="storage")
    try:
        fs.delete_dir(path)
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Pruned:
    """What `prune_finished` deleted."""

    checkpoints: tuple[str, ...]
    experiments: tuple[str, ...]


def prune_finished(root: str, experiments: dict[str, Collection[str]], finished: Collection[str]) -> Pruned:
    """Disk kept by finished trials: each keeps only its newest intact checkpoint (the one a longer study
    resumes from), and an experiment folder all of whose trials are finished and that holds none of those
    checkpoints is deleted whole. `experiments`: this study's experiment name -> the trial ids it ran (its
    plan); experiments of other studies sharing the storage are never touched. Safe only under the study
    lock, once no trial of the study runs."""
    done = set(finished)
    found = find_checkpoints(root, done, experiments=set(experiments))
    deleted: list[str] = []
    kept_in: set[str] = set()
    for checkpoints in found.values():
        final = next((c for c in checkpoints if intact(c) is None), None)
        if final is not None:
            kept_in.add(final.experiment)
        for c in checkpoints:
            if final is not None and c.uri != final.uri and _delete(c.uri):
                deleted.append(c.uri)
    gone = [
        name
        for name, trial_ids in sorted(experiments.items())
        if name not in kept_in and set(trial_ids) <= done and _delete(_join(root, name))
    ]
    return Pruned(tuple(deleted), tuple(gone))


def _join(root: str, name: str) -> str:
    return posixpath.join(root, name) if "://" in root else os.path.join(root, name)
