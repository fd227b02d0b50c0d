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
import uuid
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainables.records import EPOCH_COLUMNS, RUN_COLUMNS, epoch_column_names

_ARROW_TYPES: dict[str, pa.DataType] = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
                                        "bool": pa.bool_()}
EPOCH_SCHEMA: pa.Schema = pa.schema([(n, _ARROW_TYPES[t]) for n, t in EPOCH_COLUMNS])
RUN_SCHEMA: pa.Schema = pa.schema([(n, _ARROW_TYPES[t]) for n, t in RUN_COLUMNS])
# Runs with these statuses are finished: a re-run skips them. Failed trials run again.
FINISHED_STATUSES: frozenset[str] = frozenset({"completed", "diverged"})


def resolve_uri(results: str, field: str = "results") -> tuple[pafs.FileSystem, str]:
    """Filesystem and root path for a local path or a pyarrow.fs URI; ValueError names `field`."""
    if "://" in results:
        try:
            return pafs.FileSystem.from_uri(results)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise ValueError(f"{field}={results!r} is not a path or URI pyarrow.fs can open: {exc}") from exc
    return pafs.LocalFileSystem(), os.path.abspath(results)


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


class ResultsStore:
    """Read and write one study's epochs and runs tables."""

    def __init__(self, results: str, study: str) -> None:
        self.results = results
        self.study = study
        self.fs, root = resolve_uri(results)
        self.study_path = posixpath.join(root, study)

    def _path(self, table: str, trial_id: str) -> str:
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
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_file(path) as f:
            return pq.read_table(f)

    # epochs ---------------------------------------------------------------------------------------
    def write_epochs(self, trial_id: str, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the trial's epoch rows with `rows`, one per epoch (the last row of an epoch wins)."""
        by_epoch: dict[int, dict[str, Any]] = {}
        for r in rows:
            by_epoch[int(r["epoch"])] = r
        ordered = [by_epoch[e] for e in sorted(by_epoch)]
        self._write(to_table(ordered, EPOCH_COLUMNS, EPOCH_SCHEMA), self._path("epochs", trial_id))

    def read_epochs(self, trial_id: str) -> list[dict[str, Any]]:
        """The trial's stored epoch rows, in epoch order (empty when none)."""
        table = self._read(self._path("epochs", trial_id))
        if table is None:
            return []
        names = [n for n in epoch_column_names() if n in table.column_names]
        return table.select(names).to_pylist()

    # runs -----------------------------------------------------------------------------------------
    def write_run(self, row: dict[str, Any]) -> None:
        """Store (or replace) the trial's runs row."""
        self._write(to_table([row], RUN_COLUMNS, RUN_SCHEMA), self._path("runs", row["trial_id"]))

    def read_runs(self) -> dict[str, dict[str, Any]]:
        """trial_id -> runs row, for every stored trial of the study."""
        directory = posixpath.join(self.study_path, "runs")
        infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        out: dict[str, dict[str, Any]] = {}
        for info in infos:
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet") \
                    and not info.base_name.startswith((".", "_")):
                for row in self._read(info.path).to_pylist():
                    out[row["trial_id"]] = row
        return out

    def run_mtimes(self) -> dict[str, float]:
        """trial_id -> modification time (epoch seconds) of its runs file."""
        infos = self.fs.get_file_info(pafs.FileSelector(posixpath.join(self.study_path, "runs"), allow_not_found=True))
        return {i.base_name[:-len(".parquet")]: i.mtime.timestamp() for i in infos
                if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                and not i.base_name.startswith((".", "_")) and i.mtime is not None}

    def ledger(self) -> dict[str, str]:
        """trial_id -> status of every trial with a runs row."""
        return {tid: row["status"] for tid, row in self.read_runs().items()}

    def finished(self) -> set[str]:
        """Ids of trials that need no more work (completed or diverged)."""
        return {tid for tid, status in self.ledger().items() if status in FINISHED_STATUSES}


def run_row(spec: Any, epochs: list[dict[str, Any]], *, status: str, error: str | None = None,
            **extra: Any) -> dict[str, Any]:
    """The runs-table row of a trial from its spec (a TrialSpec) and its stored epoch rows.

    `extra` fills the columns that the epochs do not determine (device, host, resources, versions).
    final_batch_size is the batch size the last epoch trained with.
    """
    last = epochs[-1] if epochs else {}
    accs = [r["test_acc"] for r in epochs if r.get("test_acc") is not None and math.isfinite(r["test_acc"])]
    train_times = [r["epoch_time_s"] for r in epochs if r.get("epoch_time_s") is not None]
    row = {
        "study": spec.study, "trial_id": spec.trial_id, "arch": spec.arch, "dataset": spec.dataset,
        "seed": spec.seed, "method": spec.method, "variant": spec.variant, "config_json": spec.config_json,
        "status": status, "error": error, "epochs_done": len(epochs),
        "final_test_acc": last.get("test_acc"), "best_test_acc": max(accs) if accs else None,
        "train_time_s": sum(train_times) if epochs else None, "wall_time_s": last.get("wall_time_s"),
        "n_increase": sum(r.get("decision") == "increase" for r in epochs),
        "n_rollback": sum(r.get("decision") == "rollback" for r in epochs),
        "final_batch_size": last.get("batch_size"),
    }
    row.update(extra)
    return row
