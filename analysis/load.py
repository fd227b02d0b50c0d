"""Read a results store (local path or pyarrow.fs URI) into pandas DataFrames.

Layout (DESIGN.md): ``<results>/<study>/epochs/*.parquet`` and ``<results>/<study>/runs/*.parquet``,
one file per trial, or a hive-partitioned tree below ``epochs/`` and ``runs/``. ``results_dir`` may
also point at one study directory itself. Every file's footer is checked against the contract in
:mod:`analysis.schema` before anything is read, so a bad store fails with the file and the column.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from analysis.schema import (
    EPOCH_COLUMNS,
    REQUIRED_EPOCH_COLUMNS,
    REQUIRED_RUN_COLUMNS,
    RUN_COLUMNS,
    arrow_schema,
    schema_problems,
)
from trainables import store_files
from trainables.manifest import MANIFEST_COLUMNS, covered, grouped_checksums
from trainables.records import resolve_uri

TABLES = ("epochs", "runs")
# What de-duplication needs of the epochs table, whatever columns are asked for.
REQUIRED_EPOCH_KEYS = frozenset({"study", "trial_id", "epoch", "wall_time_s"})
# The epochs columns the analysis uses (tables, plots, calibration and null control of the stored signals
# under every signal source).
ANALYSIS_EPOCH_COLUMNS = REQUIRED_EPOCH_COLUMNS | {"grad_norm", "grad_var_epoch_mean", "grad_norm_epoch_mean"}


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


def _hive_values(rel_dir: str) -> dict[str, str]:
    """key -> value of the `key=value` folders in a path relative to the table folder."""
    return dict(seg.split("=", 1) for seg in rel_dir.split("/") if "=" in seg)


def _plain(table: pa.Table) -> pa.Table:
    """`table` with dictionary-encoded columns decoded (their values' type is what the contract checks)."""
    if not any(pa.types.is_dictionary(f.type) for f in table.schema):
        return table
    return pa.table(
        [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns],
        names=table.column_names,
    )


def _read_table(
    fs: pafs.FileSystem,
    base: str,
    files: list[str],
    columns: tuple[tuple[str, str], ...],
    optional: frozenset[str],
    label: str,
    wanted: frozenset[str] | None = None,
) -> tuple[pa.Table, list[str]]:
    """Read every file (concurrently, each in one request), check its schema against the contract,
    and return the rows cast to the contract types (+ extra columns), with only the columns of
    ``wanted`` when given (every file's whole schema is still checked).

    ``base`` is the table directory (``<study>/epochs``); ``key=value`` folders below it are
    hive partitions and count as columns. Compacted parts and per-trial files are combined by the
    rule of trainables/store_files.py (a part's rows of a trial that has its own file, or that a
    newer part holds, are left out).
    """

    def one(path: str) -> tuple[pa.Schema | None, pa.Table | None, str | None]:
        try:
            if store_files.is_part(posixpath.basename(path)):  # large: only the wanted columns' bytes
                physical, table = store_files.read_part(fs, path, wanted)
                return physical, table, None
            pf = pq.ParquetFile(pa.BufferReader(store_files.read_bytes(fs, path)))
            physical = pf.schema_arrow
            table = pf.read(columns=[n for n in physical.names if wanted is None or n in wanted])
        except FileNotFoundError:
            return None, None, None  # moved away meanwhile (a driver set a damaged file aside)
        except (pa.ArrowInvalid, OSError) as exc:  # truncated or not Parquet: name it, leave it out
            return None, None, f"{type(exc).__name__}: {exc}"
        return physical, table, None

    read = store_files.parallel(one, files, store_files.threads_for(fs))
    problems: list[str] = []
    notes: list[str] = []
    extras: dict[str, list[pa.DataType]] = {}
    filled: dict[str, int] = {}
    contract = {name for name, _ in columns}
    checked: dict[pa.Schema, list[str]] = {}  # a store's files share a few schemas: check each once
    tables: dict[str, pa.Table] = {}
    for path, (physical, table, error) in zip(files, read):
        if error is not None:
            notes.append(f"{label} file {path} cannot be read ({error}); left out")
            continue
        if physical is None:
            continue
        hive = _hive_values(posixpath.relpath(posixpath.dirname(path), base))
        present = pa.schema(list(physical) + [pa.field(k, pa.string()) for k in hive if k not in physical.names])
        if present not in checked:
            checked[present] = schema_problems(present, columns, optional)
        problems += [f"{label} file {path}: {problem}" for problem in checked[present]]
        foreign = "" if hive else _foreign(path, table)
        if foreign:  # another trial's file under this trial's name (a copy, a mix-up): its rows are not this trial's
            notes.append(f"{label} file {path} holds rows of another trial ({foreign}); left out")
            continue
        for name in contract - set(present.names) - set(MANIFEST_COLUMNS):  # before manifests: noted apart
            filled[name] = filled.get(name, 0) + 1
        for f in physical:
            if f.name not in contract:
                extras.setdefault(f.name, []).append(f.type)
        for key, value in hive.items():
            if key not in physical.names and (wanted is None or key in wanted):
                table = table.append_column(key, pa.array([value] * table.num_rows, pa.string()))
        tables[path] = _plain(table)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise StoreError(f"{label} table does not match the column contract:\n  " + "\n  ".join(shown))
    if filled:
        notes.append(
            f"{label}: columns missing from some files, read as null: "
            + ", ".join(f"{name} ({n} file{'s' if n > 1 else ''})" for name, n in sorted(filled.items()))
        )
    schema = pa.schema([f for f in arrow_schema(columns) if wanted is None or f.name in wanted])
    for name, types in sorted(extras.items()):
        if wanted is not None and name not in wanted:
            continue
        try:
            merged = pa.unify_schemas([pa.schema([(name, t)]) for t in types], promote_options="permissive")
            schema = schema.append(merged.field(name))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            notes.append(f"{label}: extra column {name!r} has conflicting types across files; skipped")
    parts = sorted((p for p in tables if store_files.is_part(posixpath.basename(p))), key=posixpath.basename)[::-1]
    if parts:  # newest first
        own = {t for p, table in tables.items() if p not in parts for t in _ids(table)}
        kept = store_files.resolve(tables, own, parts)
    else:
        kept = list(tables.values())
    try:
        return store_files.conform(kept, schema), notes
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise StoreError(f"{label} table could not be read with the contract types: {exc}") from exc


def _foreign(path: str, table: pa.Table) -> str:
    """The other trial ids a trial's own file (not a compacted part) holds rows of ("" when none)."""
    name = posixpath.basename(path)
    if store_files.is_part(name) or "trial_id" not in table.column_names or not name.endswith(".parquet"):
        return ""
    others = sorted(set(_ids(table)) - {store_files.trial_of(name)})
    return ", ".join(map(str, others[:3]))


def _verify(epochs: pa.Table, runs: pd.DataFrame, notes: list[str]) -> tuple[pa.Table, set[tuple[str, str]]]:
    """The epoch rows of the trials whose rows match their runs row's manifest (trainables/manifest.py),
    checked on the columns read, vectorised over the whole table; the other trials' rows are left out and
    named. Trials whose runs row has no manifest (written before manifests existed) are kept, with a note."""
    if epochs.num_rows == 0 or "manifest_checksums" not in runs:
        return epochs, set()
    with_manifest = runs[runs["manifest_checksums"].notna() & runs["manifest_checksums"].ne("")]
    before = len(runs) - len(with_manifest)
    if before:
        notes.append(f"{before} trial(s) were stored before manifests existed: their rows are read unverified")
    if with_manifest.empty:
        return epochs, set()
    epochs = epochs.sort_by([("study", "ascending"), ("trial_id", "ascending"), ("epoch", "ascending")])
    all_keys = epochs.select(["study", "trial_id", "epoch"]).to_pandas()
    # Each trial's rows of the epochs its manifest covers (later epochs: an extension still running).
    cover = (
        with_manifest[["study", "trial_id", "manifest_epochs"]]
        .assign(epoch=with_manifest["manifest_epochs"].map(covered))
        .explode("epoch")
    )
    cover = cover.dropna(subset=["epoch"]).astype({"epoch": "int64"})[["study", "trial_id", "epoch"]]
    in_manifest = all_keys.merge(cover.assign(_in=True), how="left", on=["study", "trial_id", "epoch"])["_in"]
    in_manifest = in_manifest.fillna(False).to_numpy(dtype=bool)
    checked = epochs.filter(pa.array(in_manifest))
    keys = checked.select(["study", "trial_id"]).to_pandas()
    codes, _ = pd.factorize(keys["study"] + "\0" + keys["trial_id"])
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    sums = grouped_checksums(checked, starts)
    firsts = keys.iloc[starts].reset_index(drop=True)
    counts = np.diff(np.r_[starts, checked.num_rows])
    manifest = with_manifest.set_index(["study", "trial_id"])
    bad: set[tuple[str, str]] = set()
    for i, (study, tid) in enumerate(firsts.itertuples(index=False)):
        if (study, tid) not in manifest.index:
            continue
        row = manifest.loc[(study, tid)]
        expected = json.loads(row["manifest_checksums"])
        changed = sorted(c for c, values in sums.items() if c in expected and expected[c] != values[i])
        if row["manifest_rows"] != counts[i] or changed:
            why = (
                f"{counts[i]} rows, its manifest {row['manifest_rows']}"
                if not changed
                else (f"its content differs from its manifest in column(s) {', '.join(changed)}")
            )
            notes.append(f"epochs of trial {tid} (study {study}): {why}; left out (the next run sets them aside)")
            bad.add((study, tid))
    if bad:
        drop = pd.MultiIndex.from_frame(all_keys[["study", "trial_id"]]).isin(list(bad))
        epochs = epochs.filter(pa.array(~drop))
    return epochs, bad


def _ids(table: pa.Table) -> list[str]:
    return pc.unique(table.column("trial_id")).to_pylist() if "trial_id" in table.column_names else []


def _read_all(
    fs: pafs.FileSystem,
    parts: list[tuple[str, list[str]]],
    columns: tuple[tuple[str, str], ...],
    optional: frozenset[str],
    label: str,
    notes: list[str],
    wanted: frozenset[str] | None = None,
    as_arrow: bool = False,
) -> Any:
    """Read one table of every selected study (``parts`` = [(table dir, files)]) into pandas (or, with
    ``as_arrow``, one Arrow table)."""
    tables = []
    for base, files in parts:
        if files:
            table, part_notes = _read_table(fs, base, files, columns, optional, label, wanted)
            tables.append(table)
            notes += part_notes
    if not tables:
        schema = arrow_schema(columns)
        empty = pa.schema([f for f in schema if wanted is None or f.name in wanted]).empty_table()
        return empty if as_arrow else empty.to_pandas()
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise StoreError(f"{label} tables of different studies do not combine: {exc}") from exc
    return table if as_arrow else table.to_pandas()


def _latest_reports(epochs: pa.Table, notes: list[str]) -> pa.Table:
    """One row per (study, trial_id, epoch), the latest report (largest wall_time_s: a retry re-reported
    the epoch), sorted by those keys."""
    keys = epochs.select(["study", "trial_id", "epoch", "wall_time_s"]).to_pandas()
    order = keys.sort_values(["study", "trial_id", "epoch", "wall_time_s"], kind="stable", na_position="first").index
    last = ~keys.loc[order].duplicated(["study", "trial_id", "epoch"], keep="last").to_numpy()
    if not last.all():
        notes.append(f"epochs: dropped {int((~last).sum())} duplicate rows on (study, trial_id, epoch)")
    return epochs.take(pa.array(order.to_numpy()[last]))


def _dedupe(df: pd.DataFrame, keys: list[str], order: list[str], label: str, notes: list[str]):
    """Keep one row per key: the last by ``order`` (e.g. the latest re-report of an epoch)."""
    n = len(df)
    df = df.sort_values(keys + order, kind="stable", na_position="first")
    df = df.drop_duplicates(keys, keep="last").reset_index(drop=True)
    if len(df) < n:
        notes.append(f"{label}: dropped {n - len(df)} duplicate rows on ({', '.join(keys)})")
    return df


def load_store(results_dir: str, study: str | None = None, columns: Iterable[str] | None = None) -> Store:
    """Load the epochs and runs tables of one study (``study``) or of every study in the store.

    ``columns``: the epochs columns to read (default: all, extra columns included); the analysis
    reads only those it uses (``ANALYSIS_EPOCH_COLUMNS``). Every file's schema is checked either way.
    The files are read concurrently; compacted and per-trial files alike (trainables/store_files.py).

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
    wanted = None if columns is None else frozenset(columns) | REQUIRED_EPOCH_KEYS
    runs = _read_all(fs, run_parts, RUN_COLUMNS, run_optional, "runs", notes)
    runs = _dedupe(runs, ["study", "trial_id"], ["epochs_done"], "runs", notes)
    epochs = _read_all(fs, epoch_parts, EPOCH_COLUMNS, epoch_optional, "epochs", notes, wanted, as_arrow=True)
    epochs, bad = _verify(_latest_reports(epochs, notes), runs, notes)
    if bad:
        runs = runs[~pd.MultiIndex.from_frame(runs[["study", "trial_id"]]).isin(list(bad))].reset_index(drop=True)
    epochs = epochs.to_pandas()
    return Store(root=results_dir, studies=sorted(found), epochs=epochs, runs=runs, notes=notes)
