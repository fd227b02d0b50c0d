"""The files of one table folder of the results store, which of them hold a trial's rows, and reading
many of them at once.

A table folder (`<results>/<study>/epochs/`, `<results>/<study>/runs/`) holds Parquet files of two
kinds, both with the table's columns, `trial_id` among them:

- `<trial_id>.parquet`: one trial's rows, written by the driver as its results arrive;
- `compacted-<UTC time>-<n>-<random>.parquet` (a *part*): the rows of many finished trials, sorted by
  trial_id and epoch, written by `python -m orchestrator.compact` (orchestrator/compact.py).

Names starting with '.' or '_' are files being written or metadata, never rows.

**Which rows are a trial's** (`resolve`): those of its own file when it has one, else those of the
newest part (part names sort by the time they were written) that holds it. The orchestrator's store
and the analysis both apply this rule, so a study reads the same before, during and after a
compaction (which writes the new parts before it deletes what they replace), and while a compacted
trial is being extended (it gets its own file again before it runs). At rest every trial's rows are in
exactly one file, so the README's one-line readers (pandas, polars, DuckDB) see each row once.

Reads are concurrent (`parallel`): a study's files are many and small, and on an object store each is
a request of tens of milliseconds.

Torch-free; pyarrow is imported inside the functions that need it (as in trainables/records.py).
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

PART_PREFIX = "compacted-"
SUFFIX = ".parquet"

T = TypeVar("T")
R = TypeVar("R")


def is_table_file(name: str) -> bool:
    """Whether a file name in a table folder holds rows (per-trial file or part)."""
    return name.endswith(SUFFIX) and not name.startswith((".", "_"))


def is_part(name: str) -> bool:
    """Whether a file name in a table folder is a compacted part."""
    return is_table_file(name) and name.startswith(PART_PREFIX)


def trial_of(name: str) -> str:
    """The trial id of a per-trial file's name."""
    return name[: -len(SUFFIX)]


def part_name(index: int = 0) -> str:
    """A new part's file name: later calls sort after earlier ones (UTC time to the nanosecond)."""
    ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 1_000_000_000)) + f"{ns % 1_000_000_000:09d}"
    return f"{PART_PREFIX}{stamp}-{index:04d}-{uuid.uuid4().hex[:8]}{SUFFIX}"


def threads_for(fs: Any) -> int:
    """How many files to read at once: object stores are latency-bound (many requests in flight pay),
    local disks CPU-bound (a few threads beyond the cores only add switching)."""
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        return min(8, 2 * (os.cpu_count() or 1))
    return 32


def parallel(fn: Callable[[T], R], items: Sequence[T], threads: int) -> list[R]:
    """[fn(x) for x in items], `threads` at a time (pyarrow releases the GIL while it reads and decodes);
    the first exception is raised."""
    if len(items) <= 1 or threads <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items)), thread_name_prefix="store-read") as pool:
        return list(pool.map(fn, items))


def list_table(fs: Any, directory: str) -> tuple[dict[str, str], list[str]]:
    """(trial_id -> its own file, parts newest first) of a table folder (empty when it is absent)."""
    import pyarrow.fs as pafs

    own: dict[str, str] = {}
    parts: list[str] = []
    for info in fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True)):
        if info.type != pafs.FileType.File or not is_table_file(info.base_name):
            continue
        if is_part(info.base_name):
            parts.append(info.path)
        else:
            own[trial_of(info.base_name)] = info.path
    return own, sorted(parts, key=posixpath.basename, reverse=True)


def read_bytes(fs: Any, path: str) -> bytes:
    """A whole file in one read (one request on an object store; the files are small)."""
    with fs.open_input_stream(path) as f:
        return f.read()


def read_part(fs: Any, path: str, columns: Iterable[str] | None = None) -> tuple[Any, Any]:
    """(file schema, table) of a compacted part, reading only the row groups' chunks of `columns` (those
    it has; all when None): ranged reads, several in flight (pre_buffer), instead of the whole object.
    A missing or malformed footer raises pyarrow.ArrowInvalid; other read errors OSError."""
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f, pre_buffer=True)
        schema = pf.schema_arrow
        names = None if columns is None else [c for c in dict.fromkeys(columns) if c in set(schema.names)]
        return schema, pf.read(columns=names, use_threads=True)


def parse(data: bytes, columns: Iterable[str] | None = None) -> Any:
    """The Parquet table in `data`, only `columns` of it (those it has) when given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(pa.BufferReader(data))
    if columns is None:
        return pf.read()
    have = set(pf.schema_arrow.names)
    return pf.read(columns=[c for c in dict.fromkeys(columns) if c in have])


def superseded(own: Iterable[str], parts: Sequence[str], index: dict[str, Any]) -> dict[str, set[str]]:
    """part -> the trial ids of that part whose rows are NOT the trial's (`resolve`): the trial has its
    own file (`own`), or a newer part holds it. `parts` newest first; `index`: part -> its trial ids."""
    seen = set(own)
    out: dict[str, set[str]] = {}
    for part in parts:
        ids = set(index.get(part, ()))
        out[part] = ids & seen
        seen |= ids
    return out


def resolve(tables: dict[str, Any], own: Iterable[str], parts: Sequence[str]) -> list[Any]:
    """The tables of a table folder's files, with the rows that are not their trial's dropped from
    the parts (the module's rule). `tables`: path -> table (with a trial_id column); `own`: the trial
    ids with their own file; `parts`: the part paths, newest first. Files other than parts are kept
    whole."""
    import pyarrow as pa
    import pyarrow.compute as pc

    part_set = set(parts)
    out = [t for path, t in tables.items() if path not in part_set and t is not None]
    seen = set(own)
    for part in parts:
        table = tables.get(part)
        if table is None or table.num_rows == 0:
            continue
        ids = table.column("trial_id")
        if pa.types.is_dictionary(ids.type):
            ids = ids.cast(ids.type.value_type)
        if seen:
            keep = pc.invert(pc.is_in(ids, value_set=pa.array(sorted(seen), ids.type)))
            table, ids = table.filter(keep), ids.filter(keep)
        out.append(table)
        seen |= set(pc.unique(ids).to_pylist())
    return out


def conform(tables: Sequence[Any], schema: Any) -> Any:
    """The tables as one table of `schema`: columns cast to its types, null where a table has none,
    columns not in `schema` dropped. One concatenation and one cast per column, which is what makes
    thousands of small per-trial tables cheap to combine."""
    import pyarrow as pa

    tables = [t for t in tables if t.num_rows]
    if not tables:
        return schema.empty_table()
    try:
        whole = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. a column typed differently: cast each alone first
        whole = pa.concat_tables([conform([t], schema) for t in tables])
    columns = []
    for f in schema:
        if f.name in whole.column_names:
            column = whole.column(f.name)
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            columns.append(column if column.type == f.type else column.cast(f.type))
        else:
            columns.append(pa.nulls(whole.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)
