"""Read a results store (local path or pyarrow.fs URI) into pandas DataFrames.

Layout (DESIGN.md): ``<results>/<study>/epochs/*.parquet`` and ``<results>/<study>/runs/*.parquet``,
one file per trial, or a hive-partitioned tree below ``epochs/`` and ``runs/``. ``results_dir`` may
also point at one study directory itself. Every file's footer is checked against the contract in
:mod:`analysis.schema` before anything is read, so a bad store fails with the file and the column.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from analysis.schema import (
    EPOCH_COLUMNS,
    REQUIRED_EPOCH_COLUMNS,
    REQUIRED_RUN_COLUMNS,
    RUN_COLUMNS,
    arrow_schema,
    schema_problems,
)
from trainables.records import resolve_uri

TABLES = ("epochs", "runs")


class StoreError(ValueError):
    """The results store is missing, empty, ambiguous or does not match the column contract."""


@dataclass
class Store:
    """The loaded store: de-duplicated epochs and runs of the selected studies."""

    root: str
    studies: list[str]
    epochs: pd.DataFrame
    runs: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def resolve(results_dir: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local directory or a URI that pyarrow.fs understands
    (trainables.records.resolve_uri); StoreError when it is malformed or cannot be opened."""
    try:
        return resolve_uri(results_dir, field="RESULTS_DIR")
    except ValueError as exc:
        raise StoreError(f"cannot open results store {results_dir!r}: {exc}") from exc


def _subdirs(fs: pafs.FileSystem, path: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def find_studies(fs: pafs.FileSystem, root: str) -> dict[str, str]:
    """Map study name -> study path. A directory holding epochs/ or runs/ is a study."""
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise StoreError(f"results directory {root!r} does not exist or is not a directory")
    here = _subdirs(fs, root)
    if any(t in here for t in TABLES):
        return {posixpath.basename(root.rstrip("/")) or root: root}
    studies = {}
    for name in here:
        if any(t in _subdirs(fs, posixpath.join(root, name)) for t in TABLES):
            studies[name] = posixpath.join(root, name)
    return studies


def list_studies(results_dir: str) -> list[str]:
    """Names of the studies in a results store (empty when there is none)."""
    fs, root = resolve(results_dir)
    return sorted(find_studies(fs, root))


def _parquet_files(fs: pafs.FileSystem, path: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    # Names starting with '.' or '_' are in-flight temporary files or metadata, never trial data.
    return sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_"))
    )


def _hive_keys(path: str) -> set[str]:
    return {seg.split("=", 1)[0] for seg in path.split("/") if "=" in seg}


def _read_table(
    fs: pafs.FileSystem,
    base: str,
    files: list[str],
    columns: tuple[tuple[str, str], ...],
    optional: frozenset[str],
    label: str,
) -> tuple[pa.Table, list[str]]:
    """Check every file's schema, then read all files cast to the contract (+ extra columns).

    ``base`` is the table directory (``<study>/epochs``); ``key=value`` folders below it are
    hive partitions and count as columns.
    """

    def make(paths: list[str]) -> ds.Dataset:
        # An explicit schema: discovery would merge the first file's types with the partition keys.
        return ds.dataset(
            paths,
            filesystem=fs,
            format="parquet",
            schema=arrow_schema(columns),
            partitioning="hive",
            partition_base_dir=base,
        )

    dataset = make(files)
    problems: list[str] = []
    notes: list[str] = []
    extras: dict[str, list[pa.DataType]] = {}
    filled: dict[str, int] = {}
    damaged: list[str] = []
    contract = {name for name, _ in columns}
    for fragment in dataset.get_fragments():
        try:
            physical = fragment.physical_schema
        except (pa.ArrowInvalid, OSError) as exc:  # truncated or not Parquet: name it, leave it out
            damaged.append(fragment.path)
            notes.append(f"{label} file {fragment.path} cannot be read ({type(exc).__name__}: {exc}); left out")
            continue
        hive = _hive_keys(posixpath.relpath(posixpath.dirname(fragment.path), base))
        present = pa.schema(list(physical) + [pa.field(k, pa.string()) for k in hive if k not in physical.names])
        for problem in schema_problems(present, columns, optional):
            problems.append(f"{label} file {fragment.path}: {problem}")
        for name in contract - set(present.names):
            filled[name] = filled.get(name, 0) + 1
        for f in physical:
            if f.name not in contract:
                extras.setdefault(f.name, []).append(f.type)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise StoreError(f"{label} table does not match the column contract:\n  " + "\n  ".join(shown))
    if filled:
        notes.append(
            f"{label}: columns missing from some files, read as null: "
            + ", ".join(f"{name} ({n} file{'s' if n > 1 else ''})" for name, n in sorted(filled.items()))
        )
    if damaged:
        dataset = make([f for f in files if f not in set(damaged)])
    schema = arrow_schema(columns)
    for name, types in sorted(extras.items()):
        try:
            merged = pa.unify_schemas([pa.schema([(name, t)]) for t in types], promote_options="permissive")
            schema = schema.append(merged.field(name))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            notes.append(f"{label}: extra column {name!r} has conflicting types across files; skipped")
    try:
        # Same fragments (their footers are already read), read as the contract types.
        return dataset.replace_schema(schema).to_table(), notes
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StoreError(f"{label} table could not be read with the contract types: {exc}") from exc


def _read_all(
    fs: pafs.FileSystem,
    parts: list[tuple[str, list[str]]],
    columns: tuple[tuple[str, str], ...],
    optional: frozenset[str],
    label: str,
    notes: list[str],
) -> pd.DataFrame:
    """Read one table of every selected study (``parts`` = [(table dir, files)]) into pandas."""
    tables = []
    for base, files in parts:
        if files:
            table, part_notes = _read_table(fs, base, files, columns, optional, label)
            tables.append(table)
            notes += part_notes
    if not tables:
        return arrow_schema(columns).empty_table().to_pandas()
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StoreError(f"{label} tables of different studies do not combine: {exc}") from exc
    return table.to_pandas()


def _dedupe(df: pd.DataFrame, keys: list[str], order: list[str], label: str, notes: list[str]):
    """Keep one row per key: the last by ``order`` (e.g. the latest re-report of an epoch)."""
    n = len(df)
    df = df.sort_values(keys + order, kind="stable", na_position="first")
    df = df.drop_duplicates(keys, keep="last").reset_index(drop=True)
    if len(df) < n:
        notes.append(f"{label}: dropped {n - len(df)} duplicate rows on ({', '.join(keys)})")
    return df


def load_store(results_dir: str, study: str | None = None) -> Store:
    """Load the epochs and runs tables of one study (``study``) or of every study in the store.

    Raises :class:`StoreError` when the directory holds no study, the named study is absent,
    a study has no epoch files, or a file misses/mistypes a contract column.
    """
    fs, root = resolve(results_dir)
    found = find_studies(fs, root)
    if not found:
        raise StoreError(
            f"no study found in {results_dir!r}: expected <study>/epochs/*.parquet and <study>/runs/*.parquet below it"
        )
    if study is not None:
        if study not in found:
            raise StoreError(f"study {study!r} not found in {results_dir!r}; available: {sorted(found)}")
        found = {study: found[study]}
    epoch_parts: list[tuple[str, list[str]]] = []
    run_parts: list[tuple[str, list[str]]] = []
    notes: list[str] = []
    for name, path in found.items():
        edir, rdir = posixpath.join(path, "epochs"), posixpath.join(path, "runs")
        e, r = _parquet_files(fs, edir), _parquet_files(fs, rdir)
        if not e:
            raise StoreError(f"study {name!r} has no epoch files under {edir}")
        if not r:
            notes.append(f"study {name!r} has no runs table: every trial counts as incomplete")
        epoch_parts.append((edir, e))
        run_parts.append((rdir, r))
    epoch_optional = frozenset(n for n, _ in EPOCH_COLUMNS) - REQUIRED_EPOCH_COLUMNS
    run_optional = frozenset(n for n, _ in RUN_COLUMNS) - REQUIRED_RUN_COLUMNS
    epochs = _read_all(fs, epoch_parts, EPOCH_COLUMNS, epoch_optional, "epochs", notes)
    epochs = _dedupe(epochs, ["study", "trial_id", "epoch"], ["wall_time_s"], "epochs", notes)
    runs = _read_all(fs, run_parts, RUN_COLUMNS, run_optional, "runs", notes)
    runs = _dedupe(runs, ["study", "trial_id"], ["epochs_done"], "runs", notes)
    return Store(root=results_dir, studies=sorted(found), epochs=epochs, runs=runs, notes=notes)
