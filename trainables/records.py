"""Contracts of the results store (DESIGN.md "Results store"), in one place for every package.

Every column the epoch loop emits and the orchestrator writes, with its Arrow type; the layout of
a checkpoint directory; where a store lives (`resolve_uri`); the per-trial summary figures and the
one-line progress format. The loop, the Parquet sink, the analysis and the tests all read these.
Importing this module imports neither torch nor pyarrow (pyarrow only inside the functions that
need it).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

# Identifier columns shared by both tables, in order.
ID_COLUMNS: tuple[tuple[str, str], ...] = (
    ("study", "string"),
    ("trial_id", "string"),
    ("arch", "string"),
    ("dataset", "string"),
    ("seed", "int64"),
    ("method", "string"),
    ("variant", "string"),
)

ID_NAMES: tuple[str, ...] = tuple(name for name, _ in ID_COLUMNS)

# One row per (trial_id, epoch). Every policy fills the DEBA signal columns (SPEC §4) so
# that fixed runs can profile; the method extras are null where a method does not measure them.
EPOCH_COLUMNS: tuple[tuple[str, str], ...] = ID_COLUMNS + (
    ("epoch", "int64"),  # 1-based
    ("batch_size", "int64"),  # used during this epoch
    ("next_batch_size", "int64"),  # chosen by the policy for the next epoch
    ("lr", "float64"),  # learning rate actually used this epoch
    ("train_loss", "float64"),
    ("train_acc", "float64"),
    ("test_loss", "float64"),
    ("test_acc", "float64"),
    ("epoch_time_s", "float64"),  # training only
    ("eval_time_s", "float64"),
    ("wall_time_s", "float64"),  # cumulative since the trial started (across resumes)
    ("samples_per_s", "float64"),
    ("grad_var", "float64"),
    ("grad_norm", "float64"),
    ("grad_norm_variation", "float64"),
    ("loss_variation", "float64"),
    ("confidence", "float64"),
    ("decision", "string"),  # increase | rollback | hold
    ("in_cooldown", "bool"),
    ("peak_mem_mb", "float64"),
    ("grad_diversity", "float64"),  # nullable method extras
    ("noise_scale", "float64"),
    ("lr_gain", "float64"),
    ("estimator", "string"),  # which estimator produced grad_diversity / noise_scale
    ("measure_time_s", "float64"),  # extra training time spent measuring method statistics
    # Variance and norm of the epoch-mean gradient, when the loop accumulated it (signal_source
    # epoch_mean, or the loop option record_epoch_mean); null otherwise.
    ("grad_var_epoch_mean", "float64"),
    ("grad_norm_epoch_mean", "float64"),
    # Data-parallel trials (trainables/data_parallel.py): the trial's workers W, each rank's share of
    # this epoch's global batch ("37,37"; null when W = 1), and the mean over ranks of the squared norm
    # of each rank's own gradient at the epoch's last step, before the all-reduce (null when W = 1).
    ("workers", "int64"),
    ("worker_batch_sizes", "string"),
    ("replica_grad_sqnorm", "float64"),
)

# One row per trial with its final state.
RUN_COLUMNS: tuple[tuple[str, str], ...] = ID_COLUMNS + (
    ("config_json", "string"),
    ("status", "string"),  # completed | failed | diverged
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
    ("gpus_per_trial", "float64"),  # packing: timings under packing are not comparable
    ("cpus_per_trial", "float64"),
    ("workers", "int64"),  # data-parallel workers of the trial, each with the resources above (null: before W)
    ("python_version", "string"),
    ("torch_version", "string"),
    ("ray_version", "string"),
    # The trial's manifest (trainables/manifest.py): what its epochs file held when this row was written.
    ("manifest_rows", "int64"),
    ("manifest_epochs", "string"),  # ranges: "1-100"
    ("manifest_checksums", "string"),  # JSON: column -> 16 hex digits of its content
)

# A checkpoint directory (TrialLoop.save_checkpoint): the loop's state, and what it ends (readable
# without torch: {"epoch": k, "status": ..., "trial": {arch, dataset, seed, method, variant}}).
CHECKPOINT_FILE = "state.pt"
CHECKPOINT_META_FILE = "checkpoint.json"

DECISIONS: tuple[str, ...] = ("increase", "rollback", "hold")
RUN_STATUSES: tuple[str, ...] = ("completed", "failed", "diverged")
NULLABLE_EPOCH_COLUMNS: frozenset[str] = frozenset(
    {
        "grad_diversity",
        "noise_scale",
        "lr_gain",
        "estimator",
        "measure_time_s",
        "grad_var_epoch_mean",
        "grad_norm_epoch_mean",
        "workers",
        "worker_batch_sizes",
        "replica_grad_sqnorm",
    }
)


def epoch_column_names() -> list[str]:
    """Names of the epochs-table columns, in order."""
    return [name for name, _ in EPOCH_COLUMNS]


def arrow_schema(columns: tuple[tuple[str, str], ...]) -> Any:
    """The pyarrow schema of a contract (EPOCH_COLUMNS or RUN_COLUMNS)."""
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
    return pa.schema([(name, types[kind]) for name, kind in columns])


# "scheme:" at the start of a value that is not a URI ("s3:/bucket", "gs:bucket"); one letter is a
# Windows drive ("C:\\data").
_SCHEME_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


# URI schemes pyarrow.fs opens, and those whose first path part is a bucket (it must be given).
URI_SCHEMES: tuple[str, ...] = ("s3", "gs", "gcs", "hdfs", "viewfs", "file", "abfs", "abfss")
BUCKET_SCHEMES: frozenset[str] = frozenset({"s3", "gs", "gcs", "abfs", "abfss"})
# Seconds an object store may take to answer before a check gives up (an unreachable endpoint, or a
# cloud SDK probing for credentials, would otherwise hang the command).
STORE_TIMEOUT_S = float(os.environ.get("DEBA_STORE_TIMEOUT_S", "20"))


def with_time_limit(fn: Any, seconds: float, what: str) -> Any:
    """`fn()`, or ValueError saying `what` did not answer within `seconds` (the call is left running in a
    daemon thread: it cannot be cancelled, and the process may exit without it)."""
    import threading

    box: dict[str, Any] = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise ValueError(f"{what} did not answer within {seconds:g} s (DEBA_STORE_TIMEOUT_S sets the limit)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_text(value: str, field: str) -> None:
    """Refuse a path or name that is not valid UTF-8 text (bytes the file system holds that decode to
    nothing), naming the field, before anything is written under it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{field}={value!r} is not allowed; expected UTF-8 text (position {exc.start} holds a byte that "
            "is not UTF-8): rename the folder or give another path"
        ) from None


def resolve_uri(location: str, field: str = "results") -> tuple[Any, str]:
    """(pyarrow filesystem, root path) of a local path (`~` expanded) or a pyarrow.fs URI (s3://, gs://,
    file://); ValueError naming `field`. A value that starts like a URI without being one (`s3:/bucket`),
    an unknown scheme, a bucket URI without its bucket (`s3://`) and a store that does not answer within
    STORE_TIMEOUT_S are refused rather than taken for something else or waited for."""
    import urllib.parse

    import pyarrow as pa
    import pyarrow.fs as pafs

    if not isinstance(location, str) or not location.strip():
        raise ValueError(f"{field}={location!r} is not allowed; expected a directory path or a URI (s3://bucket/dir)")
    check_text(location, field)
    if "://" in location:
        parts = urllib.parse.urlsplit(location)
        if parts.scheme not in URI_SCHEMES:
            raise ValueError(
                f"{field}={location!r} is not allowed; expected a path or a URI of a scheme pyarrow.fs opens "
                f"({', '.join(URI_SCHEMES)})"
            )
        if parts.scheme in BUCKET_SCHEMES and not parts.netloc:
            raise ValueError(
                f"{field}={location!r} is not allowed; expected {parts.scheme}://BUCKET/PATH: the bucket is missing"
            )
        try:
            return with_time_limit(
                lambda: pafs.FileSystem.from_uri(location), STORE_TIMEOUT_S, f"{field}={location!r}: the store"
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise ValueError(
                f"{field}={location!r} is not allowed; expected a path or a URI pyarrow.fs can open ({exc})"
            ) from exc
    if _SCHEME_LIKE.match(location):
        raise ValueError(
            f"{field}={location!r} is not allowed; it looks like a URI but is malformed: write "
            "SCHEME://BUCKET/PATH (e.g. s3://my-bucket/results), or ./NAME for a local folder"
        )
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))


# ----------------------------------------------------------------------------- one trial, summarised


def summary_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs-table figures of a trial from its epoch records (in epoch order): epochs_done,
    final_test_acc, best_test_acc, train_time_s, wall_time_s, n_increase, n_rollback,
    final_batch_size (the batch size the last epoch trained with)."""
    last = records[-1] if records else {}
    accs = [r["test_acc"] for r in records if r.get("test_acc") is not None and math.isfinite(r["test_acc"])]
    train_times = [r["epoch_time_s"] for r in records if r.get("epoch_time_s") is not None]
    return {
        "epochs_done": len(records),
        "final_test_acc": last.get("test_acc"),
        "best_test_acc": max(accs) if accs else None,
        "train_time_s": sum(train_times) if records else None,
        "wall_time_s": last.get("wall_time_s"),
        "n_increase": sum(r.get("decision") == "increase" for r in records),
        "n_rollback": sum(r.get("decision") == "rollback" for r in records),
        "final_batch_size": last.get("batch_size"),
    }


def _num(x: Any, fmt: str) -> str:
    return "nan" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def progress_line(rec: dict[str, Any], epochs: int, prefix: str = "") -> str:
    """The one-line progress report of an epoch record (trainables.run and run_grid print it)."""
    return (
        f"{prefix}epoch {rec['epoch']:>3}/{epochs}  bs {rec['batch_size']:>4} -> {str(rec['next_batch_size']):<4} "
        f"{str(rec.get('decision')):<8}{'(cooldown) ' if rec.get('in_cooldown') else ''} "
        f"loss {_num(rec.get('train_loss'), '.4f')}  train acc {_num(rec.get('train_acc'), '.4f')}  "
        f"test acc {_num(rec.get('test_acc'), '.4f')}  {_num(rec.get('epoch_time_s'), '.2f')}s  "
        f"{_num(rec.get('samples_per_s'), '.0f')} samples/s"
    )
