"""Column contracts of the results store (DESIGN.md "Results store").

One place names every column the epoch loop emits and the orchestrator writes, with its
Arrow type, so that the loop, the Parquet sink and the tests agree. Pure Python: no torch,
no pyarrow import (the sink maps the type names to pyarrow types).
"""

from __future__ import annotations

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
    ("python_version", "string"),
    ("torch_version", "string"),
    ("ray_version", "string"),
)

DECISIONS: tuple[str, ...] = ("increase", "rollback", "hold")
RUN_STATUSES: tuple[str, ...] = ("completed", "failed", "diverged")
NULLABLE_EPOCH_COLUMNS: frozenset[str] = frozenset(
    {"grad_diversity", "noise_scale", "lr_gain", "estimator", "measure_time_s", "grad_var_epoch_mean",
     "grad_norm_epoch_mean"})


def epoch_column_names() -> list[str]:
    """Names of the epochs-table columns, in order."""
    return [name for name, _ in EPOCH_COLUMNS]


def run_column_names() -> list[str]:
    """Names of the runs-table columns, in order."""
    return [name for name, _ in RUN_COLUMNS]
