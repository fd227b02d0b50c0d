"""Column contracts of the results store, as the analysis reads them.

A copy of the names and Arrow types in ``trainables/records.py`` (the analysis never imports
trainables; ``tests/test_analysis_schema.py`` keeps the two in step). This module also decides
which physical Parquet types are acceptable for each contract type and names the offenders.
"""

from __future__ import annotations

import pyarrow as pa

ID_COLUMNS: tuple[tuple[str, str], ...] = (
    ("study", "string"),
    ("trial_id", "string"),
    ("arch", "string"),
    ("dataset", "string"),
    ("seed", "int64"),
    ("method", "string"),
    ("variant", "string"),
)

EPOCH_COLUMNS: tuple[tuple[str, str], ...] = ID_COLUMNS + (
    ("epoch", "int64"),
    ("batch_size", "int64"),
    ("next_batch_size", "int64"),
    ("lr", "float64"),
    ("train_loss", "float64"),
    ("train_acc", "float64"),
    ("test_loss", "float64"),
    ("test_acc", "float64"),
    ("epoch_time_s", "float64"),
    ("eval_time_s", "float64"),
    ("wall_time_s", "float64"),
    ("samples_per_s", "float64"),
    ("grad_var", "float64"),
    ("grad_norm", "float64"),
    ("grad_norm_variation", "float64"),
    ("loss_variation", "float64"),
    ("confidence", "float64"),
    ("decision", "string"),
    ("in_cooldown", "bool"),
    ("peak_mem_mb", "float64"),
    ("grad_diversity", "float64"),
    ("noise_scale", "float64"),
    ("lr_gain", "float64"),
    ("estimator", "string"),
    ("measure_time_s", "float64"),
    ("grad_var_epoch_mean", "float64"),
    ("grad_norm_epoch_mean", "float64"),
)

RUN_COLUMNS: tuple[tuple[str, str], ...] = ID_COLUMNS + (
    ("config_json", "string"),
    ("status", "string"),
    ("error", "string"),
    ("epochs_done", "int64"),
    ("final_test_acc", "float64"),
    ("best_test_acc", "float64"),
    ("train_time_s", "float64"),
    ("wall_time_s", "float64"),
    ("n_increase", "int64"),
    ("n_rollback", "int64"),
    ("final_batch_size", "int64"),
    ("device", "string"),
    ("host", "string"),
    ("gpus_per_trial", "float64"),
    ("cpus_per_trial", "float64"),
    ("python_version", "string"),
    ("torch_version", "string"),
    ("ray_version", "string"),
)

DECISIONS: tuple[str, ...] = ("increase", "rollback", "hold")
RUN_STATUSES: tuple[str, ...] = ("completed", "failed", "diverged")
# Method extras may be missing from a file altogether; they are then read as all-null.
NULLABLE_EPOCH_COLUMNS: frozenset[str] = frozenset(
    {"grad_diversity", "noise_scale", "lr_gain", "estimator", "measure_time_s", "grad_var_epoch_mean",
     "grad_norm_epoch_mean"}
)

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}


def arrow_schema(columns: tuple[tuple[str, str], ...]) -> pa.Schema:
    """The pyarrow schema of a contract (``EPOCH_COLUMNS`` or ``RUN_COLUMNS``)."""
    return pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in columns])


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
    raise ValueError(f"unknown contract type {expected!r}; allowed: {sorted(_ARROW_TYPES)}")


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
