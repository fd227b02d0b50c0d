"""The Parquet results store and the ledger of finished trials.

Layout (DESIGN.md): `<results>/<study>/epochs/<trial_id>.parquet` (one row per epoch) and
`<results>/<study>/runs/<trial_id>.parquet` (one row per trial). `<results>` is a local path or a
URI that `pyarrow.fs` understands (s3://, gs://, file://). Every write goes to a temporary name
starting with '.' (readers skip those) and is then moved over the final name, so a reader never
sees a half-written file and a crash never loses rows that were already stored.
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
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables.manifest import manifest_of
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

    def table_path(self, table: str, trial_id: str) -> str:
        """Where the trial's file of `table` ("epochs" or "runs") lives."""
        return posixpath.join(self.study_path, table, f"{trial_id}.parquet")

    def _write(self, table: pa.Table, path: str) -> None:
        directory = posixpath.dirname(path)
        self.fs.create_dir(directory, recursive=True)
        tmp = posixpath.join(directory, f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
        with self.fs.open_output_stream(tmp) as out:
            pq.write_table(table, out)
        # A rename on local disks and HDFS; object stores publish a whole object at once anyway.
        self.fs.move(tmp, path)

    def _read(self, path: str) -> pa.Table | None:
        """The table in `path`; None when absent, or damaged (then set aside, see `quarantine`).

        Reading the bytes and parsing them are kept apart: an error reading (permissions, a network
        filesystem's hiccup) is raised, since the file may be fine; only bytes that do not parse
        as Parquet mark the file damaged."""
        try:
            with self.fs.open_input_file(path) as f:
                data = f.read()
        except FileNotFoundError:
            return None  # absent, or just moved aside by another reader
        try:
            return pq.read_table(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as exc:  # bad magic, bad footer, corrupt pages
            self.quarantine(path, f"{type(exc).__name__}: {exc}")
            return None

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
            message = f"{path} is damaged ({reason[:300]}); moved it to {dest}. The trial it belongs to will run again."
        else:
            message = f"{path} set aside to {dest}: {reason}"
        print(f"results store: {message}", file=sys.stderr, flush=True)
        return dest

    def rename_trial(self, old: str, new: str) -> None:
        """Store trial `old`'s epochs and runs rows under the id `new`, then remove `old`'s files
        (new files first: a stop in between leaves both, and renaming again overwrites the new)."""
        moved = []
        for table in ("epochs", "runs"):
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

    # epochs ---------------------------------------------------------------------------------------
    def write_epochs(self, trial_id: str, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the trial's epoch rows with `rows`, one per epoch (the last row of an epoch wins)."""
        by_epoch: dict[int, dict[str, Any]] = {}
        for r in rows:
            by_epoch[int(r["epoch"])] = r
        ordered = [by_epoch[e] for e in sorted(by_epoch)]
        self._write(to_table(ordered, EPOCH_COLUMNS, EPOCH_SCHEMA), self.table_path("epochs", trial_id))

    def trials_with_epochs(self) -> set[str]:
        """Ids of the trials that have an epochs file."""
        directory = posixpath.join(self.study_path, "epochs")
        infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return {
            i.base_name[: -len(".parquet")]
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith((".", "_"))
        }

    def stored_epochs(self, trial_ids: Iterable[str]) -> dict[str, int]:
        """trial_id -> the last epoch k such that the trial's rows for epochs 1..k are all stored."""
        return {tid: contiguous_epochs(self.read_epochs(tid)) for tid in trial_ids}

    def read_epochs(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's stored epoch rows, in epoch order (empty when none)."""
        table = self._read(self.table_path("epochs", trial_id))
        if table is None:
            return []
        names = [n for n in epoch_column_names() if n in table.column_names]
        return table.select(names).to_pylist()

    # runs -----------------------------------------------------------------------------------------
    def write_run(self, row: dict[str, Any]) -> None:
        """Store (or replace) the trial's runs row."""
        self._write(to_table([row], RUN_COLUMNS, RUN_SCHEMA), self.table_path("runs", row["trial_id"]))

    def read_runs(self) -> dict[str, dict[str, Any]]:
        """trial_id -> runs row, for every stored trial of the study."""
        directory = posixpath.join(self.study_path, "runs")
        infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        out: dict[str, dict[str, Any]] = {}
        for info in infos:
            if (
                info.type == pafs.FileType.File
                and info.base_name.endswith(".parquet")
                and not info.base_name.startswith((".", "_"))
            ):
                table = self._read(info.path)
                if table is None:
                    continue
                missing = {"trial_id", "status"} - set(table.column_names)
                if missing:
                    self.quarantine(info.path, f"no column(s) {', '.join(sorted(missing))}")
                    continue
                for row in table.to_pylist():
                    out[row["trial_id"]] = row
        return out


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
