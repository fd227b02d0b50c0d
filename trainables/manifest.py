"""A trial's manifest: what its epochs file held when its runs row was written, so that a reader trusts
only the rows the trial itself wrote.

The runs row of a finished trial records (RUN_COLUMNS in trainables/records.py):
- `manifest_rows`: how many epoch rows;
- `manifest_epochs`: the epochs covered, as ranges ("1-100", "1-3,5");
- `manifest_checksums`: a JSON object, column -> 16 hex digits, one content checksum per epochs column
  other than the identifiers (study, trial_id, arch, ...: those must equal the runs row's, which `verify`
  checks directly, so that renaming a trial keeps its manifest).

A column's checksum hashes its values in epoch order (nulls, NaN and +-0 each with one fixed bit
pattern), vectorised with numpy, so 2,400 trials' files are checked in well under a second. Per column,
so that a reader that loads only some columns (the analysis) checks exactly those, and an edit to any
column it reads is caught; the planner checks them all. Rows of epochs past the manifest's are a later
extension of the trial (more epochs, still running) and are not covered by it. `verify` compares rows
with a manifest and says what differs: rows of another trial (a foreign file under this trial's name),
other epochs, other values.

Rows arrive as a pyarrow Table of the contract's types (what the store writes and reads). Importing this
module imports neither pyarrow nor numpy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trainables.records import EPOCH_COLUMNS, ID_NAMES

MANIFEST_COLUMNS: tuple[str, ...] = ("manifest_rows", "manifest_epochs", "manifest_checksums")
_KINDS = dict(EPOCH_COLUMNS)
CHECKED_COLUMNS: tuple[str, ...] = tuple(n for n, _ in EPOCH_COLUMNS if n not in ID_NAMES)
_NULL = 0x9E3779B97F4A7C15  # the bit pattern a null stands for (a NaN of floats as well)


def epoch_ranges(epochs: list[int]) -> str:
    """Sorted epochs as ranges: [1, 2, 3, 5] -> "1-3,5"; "" for none."""
    runs: list[list[int]] = []
    for e in sorted(set(epochs)):
        if runs and e == runs[-1][1] + 1:
            runs[-1][1] = e
        else:
            runs.append([e, e])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def covered(ranges: str) -> list[int]:
    """The epochs of a manifest's ranges: "1-3,5" -> [1, 2, 3, 5]."""
    out: list[int] = []
    for part in filter(None, (ranges or "").split(",")):
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def _column_words(column: Any, kind: str) -> Any:
    """One uint64 word per value of a pyarrow column (see the module docstring)."""
    import numpy as np
    import pandas as pd
    import pyarrow.compute as pc

    nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if kind == "string":
        words = pd.util.hash_array(np.asarray(pc.fill_null(column, "").to_pylist(), dtype=object), categorize=False)
    elif kind == "float64":
        values = np.asarray(pc.fill_null(column, 0.0).to_numpy(zero_copy_only=False), dtype=np.float64) + 0.0
        words = values.view(np.uint64)
        nulls |= np.isnan(values)
    elif kind == "bool":
        words = np.asarray(pc.fill_null(column, False).to_numpy(zero_copy_only=False), dtype=np.uint64)
    else:  # int64
        words = np.asarray(pc.fill_null(column, 0).to_numpy(zero_copy_only=False), dtype=np.int64).view(np.uint64)
    words = np.array(words, dtype=np.uint64)  # a writable copy
    words[nulls] = np.uint64(_NULL)
    return words


def column_checksums(table: Any, columns: list[str] | None = None) -> dict[str, str]:
    """column -> 16 hex digits of the content of `table` (one trial's epoch rows, any order: they are put in
    epoch order first), for `columns` (default: every epochs column the table has)."""
    import numpy as np
    import pyarrow.compute as pc

    table = table.take(pc.sort_indices(table, [("epoch", "ascending")]))
    sums = grouped_checksums(table, np.array([0], dtype=np.int64), columns)
    return {name: values[0] for name, values in sums.items()}


def grouped_checksums(table: Any, starts: Any, columns: list[str] | None = None) -> dict[str, list[str]]:
    """column -> the checksum of each group of rows of `table`, vectorised: the groups are consecutive runs
    of rows starting at the row indices `starts` (ascending, the first 0), each already in epoch order (a
    whole store's epochs table sorted by study, trial and epoch: one group per trial)."""
    import numpy as np

    n = table.num_rows
    starts = np.asarray(starts, dtype=np.int64)
    sizes = np.diff(np.append(starts, n)).astype(np.uint64)
    position = np.arange(n, dtype=np.int64) - np.repeat(starts, sizes.astype(np.int64)) + 1
    weights = (position.astype(np.uint64) * np.uint64(0x100000001B3)) | np.uint64(1)
    names = [m for m in CHECKED_COLUMNS if m in table.column_names and (columns is None or m in columns)]
    out = {}
    with np.errstate(over="ignore"):
        for name in names:
            words = _column_words(table.column(name), _KINDS[name]) * weights
            totals = np.add.reduceat(words, starts) if n else np.zeros(len(starts), dtype=np.uint64)  # mod 2**64
            out[name] = [format(int(t) ^ int(k), "016x") for t, k in zip(totals, sizes)]
    return out


def manifest_of(table: Any) -> dict[str, Any]:
    """The manifest columns of a runs row for a trial whose stored epoch rows are `table`."""
    epochs = [int(e) for e in table.column("epoch").to_pylist()] if table.num_rows else []
    return {
        "manifest_rows": table.num_rows,
        "manifest_epochs": epoch_ranges(epochs),
        "manifest_checksums": json.dumps(column_checksums(table), sort_keys=True, separators=(",", ":")),
    }


def has_manifest(run: Mapping[str, Any]) -> bool:
    """Whether a runs row carries a manifest (rows written before manifests existed do not)."""
    return run.get("manifest_checksums") not in (None, "")


def verify(table: Any, trial_id: str, run: Mapping[str, Any] | None) -> str | None:
    """None when the epoch rows `table` (some or all columns) are the ones trial `trial_id` wrote, as far as
    its runs row `run` says; else what differs, in words. Checked: every row carries `trial_id` and the
    runs row's identifiers; with a manifest, the row count, the epochs and each column's checksum."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if "trial_id" in table.column_names and table.num_rows:
        others = sorted(set(pc.unique(table.column("trial_id")).to_pylist()) - {trial_id})
        if others:
            return f"holds rows of another trial ({', '.join(map(str, others[:3]))})"
    if run is None:
        return None
    for name in ("arch", "dataset", "seed", "method", "variant"):
        if name in table.column_names and table.num_rows and run.get(name) is not None:
            values = set(pc.unique(table.column(name)).to_pylist())
            if values != {run[name]}:
                return f"its {name} is {sorted(map(str, values))}, its runs row's {run[name]!r}"
    if not has_manifest(run):
        return None
    if "epoch" in table.column_names:
        # Epochs past the manifest's are a later extension of the trial, still running: not covered by it.
        wanted = covered(run.get("manifest_epochs") or "")
        table = table.filter(pc.is_in(table.column("epoch"), value_set=pa.array(wanted, table.column("epoch").type)))
        epochs = epoch_ranges([int(e) for e in table.column("epoch").to_pylist()])
        if epochs != run.get("manifest_epochs"):
            return f"covers epochs {epochs or 'none'} of its manifest's {run.get('manifest_epochs')}"
    if table.num_rows != run.get("manifest_rows"):
        return f"holds {table.num_rows} rows, its manifest {run.get('manifest_rows')}"
    if "epoch" in table.column_names:
        expected = json.loads(run["manifest_checksums"])
        got = column_checksums(table, [c for c in table.column_names if c in expected])
        changed = sorted(c for c, h in got.items() if expected.get(c) != h)
        if changed:
            return f"its content differs from its manifest in column(s) {', '.join(changed)}"
    return None
