"""The results store's column contract as the analysis reads it.

The columns and their types are defined once, in ``trainables/records.py`` (torch-free); this
module adds what the analysis needs on top: which columns it requires, and which physical Parquet
types are acceptable for each contract type (naming the offenders).
"""

from __future__ import annotations

import pyarrow as pa

from trainables.records import (  # noqa: F401  (re-exported: the analysis's view of the contract)
    DECISIONS,
    EPOCH_COLUMNS,
    ID_COLUMNS,
    ID_NAMES,
    NULLABLE_EPOCH_COLUMNS,
    RUN_COLUMNS,
    RUN_STATUSES,
    arrow_schema,
)

_CONTRACT_TYPES = ("string", "int64", "float64", "bool")

# The columns the analysis uses; any other contract column may be missing from a file (a store
# written before the column existed) and is read as null, with a note naming it.
REQUIRED_EPOCH_COLUMNS: frozenset[str] = frozenset(ID_NAMES) | {
    "epoch", "batch_size", "train_loss", "test_acc", "epoch_time_s", "wall_time_s", "grad_var",
    "grad_norm_variation", "loss_variation", "confidence", "decision", "in_cooldown",
}  # fmt: skip
REQUIRED_RUN_COLUMNS: frozenset[str] = frozenset(ID_NAMES) | {"status"}


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    # is_string_view exists from pyarrow 16 on; older versions have no string views at all.
    is_view = getattr(pa.types, "is_string_view", lambda _: False)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or is_view(t)


def is_compatible(found: pa.DataType, expected: str) -> bool:
    """Whether a physical Parquet type can be read losslessly as the contract type ``expected``.

    Narrower integers widen to int64, integers and float32 widen to float64, any string
    encoding reads as string, and an all-null column (type ``null``) fits every type.
    """
    if pa.types.is_null(found):
        return True
    if expected == "int64":
        return pa.types.is_integer(found)
    if expected == "float64":
        return pa.types.is_integer(found) or pa.types.is_floating(found)
    if expected == "string":
        return _is_string(found)
    if expected == "bool":
        return pa.types.is_boolean(found)
    raise ValueError(f"unknown contract type {expected!r}; allowed: {sorted(_CONTRACT_TYPES)}")


def schema_problems(
    physical: pa.Schema, columns: tuple[tuple[str, str], ...], optional: frozenset[str] = frozenset()
) -> list[str]:
    """Human-readable problems of one file's schema against a contract (empty when it fits).

    Missing columns in ``optional`` are allowed; extra columns are always allowed.
    """
    problems = []
    names = set(physical.names)
    for name, kind in columns:
        if name not in names:
            if name not in optional:
                problems.append(f"missing column {name!r} ({kind})")
            continue
        found = physical.field(name).type
        if not is_compatible(found, kind):
            problems.append(f"column {name!r} has type {found}, expected {kind}")
    return problems
