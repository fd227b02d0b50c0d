"""The Parquet results store and the ledger of finished trials.

Layout (DESIGN.md): `<results>/<study>/epochs/<trial_id>.parquet` (one row per epoch) and
`<results>/<study>/runs/<trial_id>.parquet` (one row per trial); a compacted study's finished trials
live in a few larger `compacted-*.parquet` parts of the same folders instead (orchestrator/compact.py;
which file holds a trial's rows: trainables/store_files.py). `<results>` is a local path or a URI that
`pyarrow.fs` understands (s3://, gs://, file://). Every write goes to a temporary name starting with
'.' (readers skip those) and is then moved over the final name, so a reader never sees a half-written
file and a crash never loses rows that were already stored. Many files are read concurrently, and
only the columns asked for are decoded.
"""

from __future__ import annotations

import math
import os
import posixpath
import sys
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables import store_files
from trainables.manifest import manifest_of, verify
from trainables.records import (
    EPOCH_COLUMNS,
    ID_NAMES,
    RUN_COLUMNS,
    STORE_TIMEOUT_S,
    arrow_schema,
    epoch_column_names,
    resolve_uri,
    summary_figures,
    with_time_limit,
)

__all__ = [
    "EPOCH_SCHEMA",
    "RUN_SCHEMA",
    "ResultsStore",
    "check_location",
    "inside_ray_job",
    "resolve_uri",
    "run_row",
    "storage_uri",
    "to_table",
]

EPOCH_SCHEMA: pa.Schema = arrow_schema(EPOCH_COLUMNS)
RUN_SCHEMA: pa.Schema = arrow_schema(RUN_COLUMNS)
# Runs with these statuses are finished: a re-run skips them. Failed trials run again.
FINISHED_STATUSES: frozenset[str] = frozenset({"completed", "diverged"})
# The epochs columns the plan reads (`contiguous_epochs`, `epoch_seconds`).
PLAN_COLUMNS: tuple[str, ...] = ("arch", "dataset", "epoch", "epoch_time_s", "eval_time_s")
TABLES: tuple[str, ...] = ("epochs", "runs")


JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a `ray job submit` entrypoint


def inside_ray_job() -> bool:
    """Whether this process is the entrypoint of a Ray job (its working directory is temporary)."""
    return JOB_ENV in os.environ


def check_location(value: str, field: str = "results", study: str | None = None) -> None:
    """Refuse, before anything starts, a results/storage location that cannot hold the study: a
    malformed URI, a store that does not answer in time, an existing file, an unwritable directory
    (the study's own folders too, when `study` is given: a read-only epochs folder would otherwise be
    found only after every trial trained), or (inside a Ray job) a relative path or one inside Ray's
    temporary session folders, which vanish with the job."""
    fs, path = resolve_uri(value, field=field)
    if not isinstance(fs, pafs.LocalFileSystem):
        try:
            with_time_limit(lambda: fs.get_file_info(path), STORE_TIMEOUT_S, f"{field}={value!r}: the store")
        except OSError as exc:
            raise ValueError(f"{field}={value!r} cannot be reached: {type(exc).__name__}: {exc}") from exc
        return
    if inside_ray_job():
        ray_tmp = os.environ.get("RAY_TMPDIR", "/tmp/ray")
        if not os.path.isabs(os.path.expanduser(value)) or path.startswith(os.path.abspath(ray_tmp) + os.sep):
            raise ValueError(
                f"{field}={value!r} would be {path}, inside this Ray job's temporary working directory, "
                "which is deleted with the job: give an absolute path on storage every node shares "
                "(NFS/EFS, the same mount path everywhere) or a URI such as s3://BUCKET/results"
            )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{field}={value!r} is a file ({path}); give a directory (it is created when missing)")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"{field}={value!r}: {parent} is not a writable directory, so {path} cannot be "
            "created or written; choose a directory you can write"
        )
    if study is not None:
        for sub in ("", "epochs", "runs", "_ray", "_quarantine"):
            folder = os.path.join(path, study, sub)
            if os.path.exists(folder) and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                raise ValueError(
                    f"{field}={value!r}: {folder} is not a writable directory, and the study writes there; "
                    "fix its permissions or run the study under another --results"
                )


def storage_uri(results: str) -> str:
    """`results` as Ray Tune's `storage_path` wants it: an absolute local path or the URI unchanged."""
    return results if "://" in results else os.path.abspath(results)


def _clean(value: Any, kind: str) -> Any:
    """One cell for Arrow: NaN/inf stay floats, numpy scalars become Python, bools stay bools."""
    if value is None:
        return None
    if kind == "float64":
        return float(value)
    if kind == "int64":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)


def to_table(rows: Iterable[dict[str, Any]], columns: tuple[tuple[str, str], ...], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing keys become null, extra keys are dropped) as a table of the contract schema."""
    rows = list(rows)
    data = {name: [_clean(r.get(name), kind) for r in rows] for name, kind in columns}
    return pa.Table.from_pydict(data, schema=schema)


_NAMED: set[str] = set()  # damaged files already named on stderr (and left in place)


class ResultsStore:
    """Read and write one study's epochs and runs tables."""

    def __init__(self, results: str, study: str, fix_damage: bool = False) -> None:
        self.results = results
        self.study = study
        self.fs, root = resolve_uri(results)
        self.study_path = posixpath.join(root, study)
        # False (readers): damaged files are named and skipped but left where they are; True (only a
        # driver that holds the study lock): moved aside (see `quarantine`).
        self.fix_damage = fix_damage
        self.quarantined: list[tuple[str, str, str]] = []  # (path, where it went or "" when left, why)
        self.threads = store_files.threads_for(self.fs)
        # table -> {part path: its trial ids}, for the parts listed last (read once per store: parts
        # change only under the study lock, by compaction or `release`, which update it).
        self._index: dict[str, dict[str, frozenset[str]]] = {}

    def table_dir(self, table: str) -> str:
        """The folder of `table` ("epochs" or "runs")."""
        return posixpath.join(self.study_path, table)

    def table_path(self, table: str, trial_id: str) -> str:
        """Where the trial's own file of `table` ("epochs" or "runs") lives."""
        return posixpath.join(self.study_path, table, f"{trial_id}.parquet")

    def _write(self, table: pa.Table, path: str, **options: Any) -> None:
        directory = posixpath.dirname(path)
        self.fs.create_dir(directory, recursive=True)
        tmp = posixpath.join(directory, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        with self.fs.open_output_stream(tmp) as out:
            pq.write_table(table, out, **options)
        # A rename on local disks and HDFS; object stores publish a whole object at once anyway.
        self.fs.move(tmp, path)

    def _read(self, path: str, columns: Iterable[str] | None = None) -> pa.Table | None:
        """The table in `path` (only `columns`, those it has, when given); None when absent, or damaged
        (then set aside, see `quarantine`).

        Reading the bytes and parsing them are kept apart: an error reading (permissions, a network
        filesystem's hiccup) is raised, since the file may be fine; only bytes that do not parse
        as Parquet mark the file damaged."""
        if store_files.is_part(posixpath.basename(path)):
            # A part is large: only the columns asked for are read. Only a footer that does not parse
            # marks it damaged (it holds many trials); any other error is raised, naming it.
            try:
                return store_files.read_part(self.fs, path, columns)[1]
            except FileNotFoundError:
                return None
            except pa.ArrowInvalid as exc:
                self.quarantine(path, f"{type(exc).__name__}: {exc}")
                return None
        try:
            data = store_files.read_bytes(self.fs, path)
        except FileNotFoundError:
            return None  # absent, or just moved aside by another reader
        try:
            return store_files.parse(data, columns)
        except (pa.ArrowInvalid, OSError) as exc:  # bad magic, bad footer, corrupt pages
            self.quarantine(path, f"{type(exc).__name__}: {exc}")
            return None

    def _read_many(self, paths: list[str], columns: Iterable[str] | None = None) -> list[pa.Table | None]:
        """`_read` of each path, concurrently."""
        cols = None if columns is None else tuple(columns)
        return store_files.parallel(lambda p: self._read(p, cols), paths, self.threads)

    def _files(self, table: str) -> tuple[dict[str, str], list[str], dict[str, frozenset[str]]]:
        """(trial_id -> its own file, parts newest first, part -> its trial ids) of `table`."""
        own, parts = store_files.list_table(self.fs, self.table_dir(table))
        known = self._index.get(table, {})
        if set(known) != set(parts):
            new = [p for p in parts if p not in known]
            index = {p: known[p] for p in parts if p in known}
            for path, data in zip(new, self._read_many(new, ["trial_id"])):
                if data is not None:  # a damaged part was named (or set aside) and is skipped
                    index[path] = frozenset(_strings(data.column("trial_id")))
            self._index[table] = known = index
            parts = [p for p in parts if p in index]
        return own, parts, known

    def _part_rows(self, table: str, trial_ids: set[str], columns: Iterable[str] | None = None) -> dict[str, pa.Table]:
        """trial_id -> its rows, for those of `trial_ids` whose rows are in a part (the newest part
        that holds the trial, when it has no file of its own), sorted by epoch for epochs."""
        own, parts, index = self._files(table)
        want = set(trial_ids) - set(own)
        out: dict[str, pa.Table] = {}
        cols = None if columns is None else list(dict.fromkeys(["trial_id", *columns]))
        for part in parts:
            ids = want & index[part]
            if not ids:
                continue
            data = self._read(part, cols)
            if data is None:
                continue
            out.update(_split(data, ids, "epoch" if table == "epochs" else None))
            want -= ids
        return out

    def quarantine(self, path: str, reason: str, damaged: bool = True) -> str:
        """Move a damaged file (or, `damaged` False, a superseded copy) to `<study>/_quarantine/` (never
        deleted) and say so on stderr; returns where it went. The trial a damaged file belonged to then
        has no rows (or no runs row) and runs again. Without `fix_damage` a damaged file is only named
        (returns "")."""
        if damaged and not self.fix_damage:
            self.quarantined.append((path, "", reason))
            if path not in _NAMED:  # once per process: a plan and its summary read the same files
                _NAMED.add(path)
                print(f"results store: {path} is damaged ({reason[:300]}); skipped", file=sys.stderr, flush=True)
            return ""
        rel = posixpath.relpath(path, self.study_path)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dest = posixpath.join(
            self.study_path, "_quarantine", f"{rel.replace('/', '__')}.{stamp}.{uuid.uuid4().hex[:6]}"
        )
        self.fs.create_dir(posixpath.dirname(dest), recursive=True)
        try:
            self.fs.move(path, dest)
        except FileNotFoundError:
            return ""  # another reader moved it first
        self.quarantined.append((path, dest, reason))
        if damaged:
            what = "every trial in it" if store_files.is_part(posixpath.basename(path)) else "the trial it belongs to"
            message = (
                f"{path} is damaged ({reason[:300]}); moved it to {dest}. {what[0].upper() + what[1:]} will run again."
            )
        else:
            message = f"{path} set aside to {dest}: {reason}"
        print(f"results store: {message}", file=sys.stderr, flush=True)
        return dest

    def rename_trial(self, old: str, new: str) -> None:
        """Store trial `old`'s epochs and runs rows under the id `new`, then remove `old`'s files
        (new files first: a stop in between leaves both, and renaming again overwrites the new).
        A trial held in a compacted part gets its own files first (`release`)."""
        self.release([old])
        moved = []
        for table in TABLES:
            path = self.table_path(table, old)
            data = self._read(path)
            if data is None:
                continue
            if "trial_id" in data.column_names:
                column = pa.array([new] * data.num_rows, data.schema.field("trial_id").type)
                data = data.set_column(data.schema.get_field_index("trial_id"), "trial_id", column)
            self._write(data, self.table_path(table, new))
            moved.append(path)
        for path in moved:
            self.fs.delete_file(path)

    # compacted parts ------------------------------------------------------------------------------
    def release(self, trial_ids: Iterable[str]) -> list[str]:
        """Give each of `trial_ids` whose rows are in a compacted part its own files again and rewrite
        the parts without them (before a trial runs again: an extension, a migration), so that at rest
        each trial's rows stay in one file. The own files are written first and a part is deleted only
        after its replacement is complete, so a stop at any point loses nothing (the rule in
        trainables/store_files.py reads the same rows throughout). Returns the released ids. Only a
        driver that holds the study lock may call it."""
        ids = set(trial_ids)
        released: set[str] = set()
        for table in TABLES:
            rows = self._part_rows(table, ids)
            for tid, data in sorted(rows.items()):
                self._write(data, self.table_path(table, tid))
            released |= set(rows)
            own, parts, index = self._files(table)
            stale = store_files.superseded(own, parts, index)
            for part in parts:
                if index[part] & ids:
                    self._rewrite_part(table, part, drop=stale[part] | ids)
        return sorted(released)

    def _rewrite_part(self, table: str, part: str, drop: set[str]) -> None:
        """Replace `part` by a new part without the rows of `drop` (none left: just delete it)."""
        data = self._read(part)
        if data is None:
            return
        if drop:
            ids = data.column("trial_id")
            data = data.filter(pc.invert(pc.is_in(ids, value_set=pa.array(sorted(drop), _string_type(ids)))))
        if data.num_rows:
            new = posixpath.join(self.table_dir(table), store_files.part_name())
            self._write(data, new, row_group_size=PART_ROW_GROUP)
            self._index.setdefault(table, {})[new] = frozenset(_strings(data.column("trial_id")))
        self.fs.delete_file(part)
        self._index.get(table, {}).pop(part, None)

    # epochs ---------------------------------------------------------------------------------------
    def write_epochs(self, trial_id: str, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the trial's epoch rows with `rows`, one per epoch (the last row of an epoch wins)."""
        by_epoch: dict[int, dict[str, Any]] = {}
        for r in rows:
            by_epoch[int(r["epoch"])] = r
        ordered = [by_epoch[e] for e in sorted(by_epoch)]
        self._write(to_table(ordered, EPOCH_COLUMNS, EPOCH_SCHEMA), self.table_path("epochs", trial_id))

    def trials_with_epochs(self) -> set[str]:
        """Ids of the trials that have epoch rows (an epochs file of their own, or rows in a part)."""
        own, parts, index = self._files("epochs")
        return set(own).union(*(index[p] for p in parts))

    def stored_epochs(self, trial_ids: Iterable[str]) -> dict[str, int]:
        """trial_id -> the last epoch k such that the trial's rows for epochs 1..k are all stored."""
        return {tid: contiguous_epochs(rows) for tid, rows in self.epochs_of(trial_ids, ("epoch",)).items()}

    def read_epochs(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's stored epoch rows, in epoch order (empty when none)."""
        return self.epochs_of([trial_id])[trial_id]

    def epochs_of(
        self, trial_ids: Iterable[str], columns: Iterable[str] | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """trial_id -> its stored epoch rows in epoch order (empty when none), with only `columns`
        (default: every contract column the files have); the files are read concurrently."""
        ids = set(trial_ids)
        names = epoch_column_names() if columns is None else list(columns)
        if len(ids) <= 4:  # a few trials (the sink's one): look them up rather than list the folder
            paths = {t: self.table_path("epochs", t) for t in ids}
            infos = self.fs.get_file_info(list(paths.values()))
            own = {t: info.path for t, info in zip(paths, infos) if info.type == pafs.FileType.File}
        else:
            own, _ = store_files.list_table(self.fs, self.table_dir("epochs"))
        mine = sorted(t for t in ids if t in own)
        out: dict[str, list[dict[str, Any]]] = {t: [] for t in ids}
        for tid, data in zip(mine, self._read_many([own[t] for t in mine], names)):
            if data is not None:
                out[tid] = _rows(data, names)
        if len(mine) < len(ids):
            for tid, data in self._part_rows("epochs", ids - set(mine), names).items():
                out[tid] = _rows(data, names)
        return out

    def mismatched(
        self, trial_ids: Iterable[str], runs: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]
    ) -> dict[str, str]:
        """trial_id -> what is wrong with its stored epoch rows, for those of `trial_ids` whose rows it did
        not write (trainables/manifest.py `verify`): rows of another trial, identifiers other than its
        runs row's (or, without one, than `expected[trial_id]`, the identifiers the study gives it), and,
        for a runs row with a manifest, other rows, epochs or values. Reads every column of their files."""
        ids = sorted(set(trial_ids))
        own, _ = store_files.list_table(self.fs, self.table_dir("epochs"))
        mine = [t for t in ids if t in own]
        tables = dict(zip(mine, self._read_many([own[t] for t in mine])))
        tables.update(self._part_rows("epochs", set(ids) - set(mine)))
        out = {}
        for tid, data in tables.items():
            if data is None:
                continue  # damaged: named, and set aside by the repairs
            problem = verify(data, tid, runs.get(tid) or expected.get(tid))
            if problem is not None:
                where = own.get(tid, "a compacted part")
                out[tid] = f"the epoch rows of trial {tid} ({where}) {problem}"
        return out

    def plan_rows(self, trial_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """`epochs_of` with only the columns the plan reads (`PLAN_COLUMNS`)."""
        return self.epochs_of(trial_ids, PLAN_COLUMNS)

    # runs -----------------------------------------------------------------------------------------
    def write_run(self, row: dict[str, Any]) -> None:
        """Store (or replace) the trial's runs row."""
        self._write(to_table([row], RUN_COLUMNS, RUN_SCHEMA), self.table_path("runs", row["trial_id"]))

    def read_runs(self) -> dict[str, dict[str, Any]]:
        """trial_id -> runs row, for every stored trial of the study (files read concurrently)."""
        own, parts, index = self._files("runs")
        paths = sorted(own.values())
        out: dict[str, dict[str, Any]] = {}
        for path, table in zip(paths, self._read_many(paths)):
            if table is None:
                continue
            missing = {"trial_id", "status"} - set(table.column_names)
            if missing:
                self.quarantine(path, f"no column(s) {', '.join(sorted(missing))}")
                continue
            for row in table.to_pylist():
                out[row["trial_id"]] = row
        in_parts = set().union(*(index[p] for p in parts)) - set(own) if parts else set()
        for data in self._part_rows("runs", in_parts).values():
            for row in data.to_pylist():
                out.setdefault(row["trial_id"], row)
        return out


PART_ROW_GROUP = 65_536  # rows per row group of a compacted part


def _string_type(column: pa.ChunkedArray) -> pa.DataType:
    t = column.type
    return t.value_type if pa.types.is_dictionary(t) else t


def _strings(column: pa.ChunkedArray) -> list[str]:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return pc.unique(column).to_pylist()


def _split(data: pa.Table, ids: set[str], order: str | None) -> dict[str, pa.Table]:
    """The rows of each of `ids` in `data` (sorted by `order` when given), trial by trial."""
    column = data.column("trial_id")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    data = data.filter(pc.is_in(column, value_set=pa.array(sorted(ids), column.type)))
    data = data.sort_by([("trial_id", "ascending")] + ([(order, "ascending")] if order in data.column_names else []))
    tids = data.column("trial_id").to_pylist()
    out: dict[str, pa.Table] = {}
    start = 0
    for i in range(1, len(tids) + 1):
        if i == len(tids) or tids[i] != tids[start]:
            out[tids[start]] = data.slice(start, i - start)
            start = i
    return out


def _rows(data: pa.Table, names: list[str]) -> list[dict[str, Any]]:
    """The table's rows as dicts with the columns of `names` it has, in that order, by epoch."""
    present = [n for n in names if n in data.column_names]
    if "epoch" in data.column_names:
        data = data.sort_by("epoch")
    return data.select(present).to_pylist()


def finished_ids(runs: dict[str, dict[str, Any]], epochs: int | None = None) -> set[str]:
    """Ids of the trials of these runs rows that need no more work: diverged, or completed (with at least
    `epochs` epochs when given: a completed trial with fewer is extended by a study that asks for more)."""
    return {
        tid
        for tid, row in runs.items()
        if row["status"] in FINISHED_STATUSES
        and (row["status"] == "diverged" or epochs is None or (row.get("epochs_done") or 0) >= epochs)
    }


def contiguous_epochs(rows: Iterable[dict[str, Any]]) -> int:
    """The last epoch k such that `rows` (one trial's epoch rows) hold every epoch 1..k."""
    have = {int(r["epoch"]) for r in rows}
    k = 0
    while k + 1 in have:
        k += 1
    return k


def epoch_seconds(rows_by_trial: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], float]:
    """(arch, dataset) -> mean train + eval seconds per epoch over these trials' epoch rows."""
    sums: dict[tuple[str, str], list[float]] = {}
    for rows in rows_by_trial.values():
        for r in rows:
            t = (r.get("epoch_time_s") or 0.0) + (r.get("eval_time_s") or 0.0)
            if t > 0 and math.isfinite(t):
                acc = sums.setdefault((r["arch"], r["dataset"]), [0.0, 0.0])
                acc[0] += t
                acc[1] += 1
    return {k: total / n for k, (total, n) in sums.items()}


def run_row(
    spec: Any, epochs: list[dict[str, Any]], *, status: str, error: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The runs-table row of a trial from its spec (a TrialSpec) and its stored epoch rows.

    `extra` fills the columns that the epochs do not determine (device, host, resources, versions).
    """
    row = {
        **{name: getattr(spec, name) for name in ID_NAMES},  # any object with these attributes
        "config_json": spec.config_json,
        "status": status,
        "error": error,
        **summary_figures(epochs),
        # What the epochs file holds now: the rows as the store writes them (one per epoch, the last wins).
        **manifest_of(to_table(list({int(r["epoch"]): r for r in epochs}.values()), EPOCH_COLUMNS, EPOCH_SCHEMA)),
    }
    row.update(extra)
    return row
