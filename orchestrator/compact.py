"""Compact a study's finished trials into a few larger files: `python -m orchestrator.compact DIR [--study NAME]`.

A study stores one epochs file and one runs file per trial; reading thousands of small files costs a
request each (tens of milliseconds on an object store). Compaction rewrites the rows of the finished
trials (completed or diverged) into a few `compacted-*.parquet` parts per table folder, sorted by
trial_id and epoch, each trial's rows whole in one part, its runs row kept in a runs part. Unfinished
trials (failed, interrupted, not started) keep their own files. Readers find a trial's rows by the
rule in trainables/store_files.py, so the analysis and the planner read a compacted study as before;
a trial that runs again later (more epochs: an extension) gets its own files back first
(`ResultsStore.release`, called by the runner).

Nothing is lost to a crash: the new parts are written (each atomically) and read back, trial by trial,
before any file they replace is deleted; until then a trial's own file is read in preference to any
part, and a newer part in preference to an older one, and both hold the same rows. Running the command
again finishes the job. It holds the study lock: never while a driver runs the study.

Each trial is checked before it is folded in (`check_trial`): its runs row is finished, its epoch rows
carry its id and are epochs 1..n once each, n = the runs row's epochs_done. A trial that fails the check
keeps its own files and is named. This is where a per-trial manifest (row count, epochs covered,
content checksum, recorded in the runs row) is checked: before the trial is written into a part, and
again on the part's rows when they are read back (`_verify`), so that a part never replaces files
whose rows it does not reproduce.
"""

from __future__ import annotations

import argparse
import posixpath
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.lock import StudyLock, StudyLocked
from orchestrator.store import EPOCH_SCHEMA, FINISHED_STATUSES, PART_ROW_GROUP, RUN_SCHEMA, ResultsStore
from trainables import store_files
from trainables.manifest import epoch_ranges, has_manifest, verify

ROWS_PER_PART = 1_000_000  # epoch rows per part: 10,000 trials of 100 epochs, ~40 MB


@dataclass
class Compaction:
    """What compacting one study did."""

    study: str
    trials: int = 0  # trials held in the study's parts afterwards
    folded: int = 0  # trials whose own files were folded into parts now
    files_before: int = 0  # files in the two table folders before
    files_after: int = 0
    parts_written: list[str] = field(default_factory=list)
    parts_removed: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)  # trial_id -> why its own files stay
    seconds: float = 0.0

    def describe(self) -> str:
        """One paragraph for the command line."""
        if not self.parts_written:
            head = f"study {self.study!r}: nothing to compact ({self.trials} trial(s) already in parts)"
        else:
            epochs = sum(posixpath.basename(posixpath.dirname(p)) == "epochs" for p in self.parts_written)
            head = (
                f"study {self.study!r}: {self.trials} finished trial(s) in {epochs} epochs part(s) and "
                f"{len(self.parts_written) - epochs} runs part(s) ({self.folded} folded in now); "
                f"files {self.files_before} -> {self.files_after} in {self.seconds:.1f} s"
            )
        reasons: dict[str, int] = {}
        for why in self.left.values():
            reasons[why] = reasons.get(why, 0) + 1
        return "\n".join([head] + [f"  {n} trial(s) keep their own files: {why}" for why, n in sorted(reasons.items())])


def check_trial(trial_id: str, epochs: pa.Table | None, run: dict[str, Any] | None) -> str | None:
    """None when the trial's rows may go into a part, else why not (the trial keeps its files): a finished
    trial whose rows are epochs 1..n once each and match its manifest (trainables/manifest.py)."""
    if run is None:
        return "no runs row"
    if run.get("status") not in FINISHED_STATUSES:
        return f"not finished (status {run.get('status')})"
    if epochs is None or epochs.num_rows == 0:
        return "no epoch rows"
    if not {"trial_id", "epoch"} <= set(epochs.column_names):
        return "epoch rows without a trial_id or epoch column"
    if set(_values(epochs.column("trial_id"))) != {trial_id}:
        return "epoch rows that carry another trial id"
    got = sorted(epochs.column("epoch").to_pylist())
    if got != list(range(1, len(got) + 1)):
        return "epoch rows that are not epochs 1..n once each"
    done = run.get("epochs_done")
    if done is not None and done != len(got):
        return f"{len(got)} epoch rows but the runs row says {done} epochs"
    if has_manifest(run) and run.get("manifest_epochs") != epoch_ranges(got):
        return f"epoch rows {epoch_ranges(got)} but its manifest covers {run.get('manifest_epochs')}"
    problem = verify(epochs, trial_id, run)
    return None if problem is None else f"epoch rows that {problem}"


def compact_study(results: str, study: str, rows_per_part: int = ROWS_PER_PART) -> Compaction:
    """Compact one study (module docstring); raises StudyLocked while a driver runs it."""
    t0 = time.perf_counter()
    with StudyLock(results, study):
        store = ResultsStore(results, study, fix_damage=True)
        report = _compact(store, rows_per_part)
    report.seconds = time.perf_counter() - t0
    return report


def _compact(store: ResultsStore, rows_per_part: int) -> Compaction:
    report = Compaction(study=store.study)
    files = {table: store._files(table) for table in ("epochs", "runs")}
    report.files_before = sum(len(own) + len(parts) for own, parts, _ in files.values())
    own_e, parts_e, index_e = files["epochs"]
    own_r, parts_r, index_r = files["runs"]
    # The runs rows (as `ResultsStore.read_runs` resolves them), each file read once.
    own_runs = dict(zip(sorted(own_r), store._read_many([own_r[t] for t in sorted(own_r)])))
    kept_runs = store_files.resolve(dict(zip(parts_r, store._read_many(parts_r))), [*own_r], parts_r)
    runs: dict[str, dict[str, Any]] = {}
    for data in [*kept_runs, *(t for t in own_runs.values() if t is not None)]:
        if {"trial_id", "status"} <= set(data.column_names):
            names = [c for c in ("trial_id", "status", "epochs_done") if c in data.column_names]
            runs.update((row["trial_id"], row) for row in data.select(names).to_pylist())
    in_parts = set().union(*(index_e[p] for p in parts_e)) - set(own_e) if parts_e else set()

    # The rows now read for each trial: parts (minus superseded rows), and the own files of trials
    # that may join them.
    candidates = sorted(t for t in own_e if runs.get(t, {}).get("status") in FINISHED_STATUSES)
    for tid in sorted(set(own_e) - set(candidates)):
        report.left[tid] = check_trial(tid, None, runs.get(tid)) or "not finished"
    epochs = dict(zip(candidates, store._read_many([own_e[t] for t in candidates])))
    folded: list[pa.Table] = []
    for tid in candidates:
        why = check_trial(tid, epochs[tid], runs.get(tid))
        if why is None:
            folded.append(epochs[tid])
        else:
            report.left[tid] = why
    fold_ids = sorted(set(candidates) - set(report.left))
    stale = {t: store_files.superseded(own, parts, index) for t, (own, parts, index) in files.items()}
    needed = max(1, -(-_count_rows(store, parts_e, folded) // rows_per_part))
    tidy = not any(any(s.values()) for s in stale.values()) and len(parts_e) <= needed and len(parts_r) <= 1
    if not fold_ids and tidy:
        report.trials = len(in_parts)
        report.files_after = report.files_before
        return report

    kept_epochs = store_files.resolve(dict(zip(parts_e, store._read_many(parts_e))), [*own_e], parts_e)
    trials = set(fold_ids) | _ids(kept_epochs)
    runs_ids = sorted(t for t in trials & set(own_r) if own_runs[t] is not None)  # runs rows joining a part
    new_epochs = _sorted(_unify([*kept_epochs, *folded], EPOCH_SCHEMA), ["trial_id", "epoch"])
    new_runs = _sorted(_unify([*kept_runs, *(own_runs[t] for t in runs_ids)], RUN_SCHEMA), ["trial_id"])
    missing = trials - _ids([new_runs])
    if missing:  # every trial of a part has its runs row in a runs part (the manifest lives there)
        raise RuntimeError(
            f"compaction of {store.study!r}: no runs row for {len(missing)} trial(s), e.g. {min(missing)}"
        )

    written: list[str] = []
    try:
        for i, chunk in enumerate(_chunks(new_epochs, rows_per_part)):
            written.append(_write_part(store, "epochs", chunk, i))
        written.append(_write_part(store, "runs", new_runs, 0))
    except BaseException:
        for path in written:  # an incomplete set of parts must not win over the old files
            store.fs.delete_file(path)
        raise
    report.parts_written = written
    # Everything the new parts replace, now that they are complete and checked.
    store_files.parallel(store.fs.delete_file, [*parts_e, *parts_r], store.threads)
    report.parts_removed = [*parts_e, *parts_r]
    # Many small deletes: concurrently (a request each on an object store).
    store_files.parallel(
        store.fs.delete_file, [own_e[t] for t in fold_ids] + [own_r[t] for t in runs_ids], store.threads
    )
    store._index.clear()
    report.folded = len(fold_ids)
    report.trials = len(trials)
    report.files_after = sum(len(own) + len(parts) for own, parts, _ in (store._files(t) for t in ("epochs", "runs")))
    return report


def _write_part(store: ResultsStore, table: str, data: pa.Table, index: int) -> str:
    """Write one part and read it back: the same rows per trial, or it is deleted and an error raised."""
    path = posixpath.join(store.table_dir(table), store_files.part_name(index))
    store._write(data, path, row_group_size=PART_ROW_GROUP)
    back = store._read(path)
    if back is None or not _verify(data, back):
        if back is not None:
            store.fs.delete_file(path)
        raise RuntimeError(f"compaction: the part {path} does not read back as written; the old files are kept")
    return path


def _verify(written: pa.Table, back: pa.Table) -> bool:
    """Whether `back` (a part read back) holds exactly the rows of `written`. The manifest check of
    each trial's rows in the part goes here too."""
    return back.equals(written, check_metadata=False)


def _count_rows(store: ResultsStore, parts: list[str], folded: list[pa.Table]) -> int:
    """Epoch rows the study's parts will hold (footers of the parts, plus the rows folded in)."""
    import pyarrow.parquet as pq

    rows = sum(t.num_rows for t in folded)
    for path in parts:
        with store.fs.open_input_file(path) as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    return rows


def _values(column: pa.ChunkedArray) -> list[str]:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return pc.unique(column).to_pylist()


def _ids(tables: list[pa.Table]) -> set[str]:
    return {t for table in tables for t in _values(table.column("trial_id"))}


def _unify(tables: list[pa.Table], contract: pa.Schema) -> pa.Table:
    """One table of the contract's columns (cast; null where a file lacked one) plus any extra columns."""
    extra: dict[str, pa.DataType] = {}
    known = set(contract.names)
    for t in tables:
        for f in t.schema:
            if f.name not in known and f.name not in extra:
                extra[f.name] = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
    return store_files.conform(tables, pa.schema([*contract, *extra.items()]))


def _sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys]).combine_chunks()


def _chunks(table: pa.Table, rows: int) -> list[pa.Table]:
    """`table` (sorted by trial_id) in pieces of about `rows` rows, never splitting a trial."""
    if table.num_rows <= rows:
        return [table]
    ids = table.column("trial_id").to_pylist()
    out, start = [], 0
    while start < len(ids):
        end = min(start + rows, len(ids))
        while end < len(ids) and ids[end] == ids[end - 1]:
            end += 1
        out.append(table.slice(start, end - start))
        start = end
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The command; exit 0 when every study was compacted (or had nothing to compact), 2 for a bad
    argument or a study a driver is running, 1 when a compaction failed."""
    from analysis.load import StoreError, find_studies, resolve

    p = argparse.ArgumentParser(prog="python -m orchestrator.compact", description=__doc__.split("\n\n")[0])
    p.add_argument("results", metavar="DIR", help="a results store (local path or s3://, gs:// URI) or one study in it")
    p.add_argument("--study", action="append", help="only this study (repeat for several; default: every study)")
    p.add_argument("--rows-per-part", type=int, default=ROWS_PER_PART, help="epoch rows per part (default %(default)s)")
    args = p.parse_args(argv)
    try:
        fs, root = resolve(args.results)
        found = find_studies(fs, root)
    except (StoreError, OSError) as exc:
        print(f"compact: {exc}", file=sys.stderr)
        return 2
    results = args.results.rstrip("/")
    if found and list(found.values()) == [root]:  # DIR is one study folder itself
        results = posixpath.dirname(results) if "://" in results else (posixpath.dirname(root) or "/")
    names = [s for v in args.study or [] for s in v.split(",") if s] or sorted(found)
    unknown = [s for s in names if s not in found]
    if unknown or not names:
        print(
            f"compact: no study {', '.join(unknown) or ''} in {args.results!r}; its studies: {sorted(found)}",
            file=sys.stderr,
        )
        return 2
    status = 0
    for name in names:
        try:
            print(compact_study(results, name, args.rows_per_part).describe(), flush=True)
        except StudyLocked as exc:
            print(f"compact: {exc}", file=sys.stderr)
            status = max(status, 2)
        except (OSError, RuntimeError, pa.ArrowException) as exc:
            print(f"compact: study {name!r} not compacted: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
