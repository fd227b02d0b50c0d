"""Trajectory fidelity: how closely a DEBA run's batch sizes follow the paper's path (SPEC §4).

The paper's path over 100 epochs: B = 64 for epochs 1-10, then x1.5 (floor) after each block of
10 epochs, capped at 1024: 96 (11-20), 144, 216, 324, 486, 729 (61-70), 1024 (71-100). An
E-epoch run is compared at t' = ceil(100 t / E). The distance of a run is the mean over its
epochs of |log2 B_t - log2 B_paper(t)|, in octaves (0 = the paper's path).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.configs import stored_configs
from trainables import paper
from trainables.records import ID_NAMES

LARGE_BATCH = paper.LARGE_BATCH


def paper_batch_size(epoch: int, epochs: int = paper.EPOCHS) -> int:
    """B_paper at epoch ``epoch`` (1-based) of an ``epochs``-epoch run."""
    if epoch < 1 or epochs < 1:
        raise ValueError(f"epoch and epochs must be >= 1, got epoch={epoch}, epochs={epochs}")
    t = math.ceil(paper.EPOCHS * epoch / epochs)
    batch = paper.B0
    for _ in range((t - 1) // paper.COOLDOWN):  # one increase per cooldown block of 10 epochs
        batch = min(math.floor(paper.GROWTH * batch), paper.B_MAX)
    return batch


def paper_path(epochs: int = paper.EPOCHS) -> list[int]:
    """B_paper for epochs 1..``epochs``."""
    return [paper_batch_size(t, epochs) for t in range(1, epochs + 1)]


def trajectory_distance(
    batch_sizes: list[int] | np.ndarray, epochs: int | None = None, epoch_numbers: list[int] | np.ndarray | None = None
) -> float:
    """Mean |log2 B_t - log2 B_paper(t)| in octaves over the given batch sizes of epochs 1, 2, ...
    (or ``epoch_numbers``), with the paper's path scaled to ``epochs`` (default: the last epoch)."""
    b = np.asarray(batch_sizes, dtype=float)
    if b.size == 0:
        return math.nan
    t = np.arange(1, len(b) + 1) if epoch_numbers is None else np.asarray(epoch_numbers, dtype=int)
    total = epochs or int(t.max())
    ref = np.asarray([paper_batch_size(int(x), total) for x in t], dtype=float)
    return float(np.mean(np.abs(np.log2(b) - np.log2(ref))))


def _configured_epochs(runs: pd.DataFrame) -> dict[tuple[str, str], int]:
    """(study, trial_id) -> epochs the trial was configured for, from the runs table's config_json."""
    return {
        key: config["epochs"]
        for key, config in stored_configs(runs).items()
        if isinstance(config.get("epochs"), int) and config["epochs"] >= 1
    }


TRAJECTORY_COLUMNS = [*ID_NAMES, "status", "n_epochs", "epochs_planned", "distance_oct", "epoch_reach_729",
                      "final_bs", "n_increase", "n_rollback"]  # fmt: skip


def trajectory_table(
    epochs: pd.DataFrame, summary: pd.DataFrame, runs: pd.DataFrame | None = None, method: str = "deba"
) -> pd.DataFrame:
    """One row per ``method`` run: distance to the paper's path and the path's landmarks.

    ``distance_oct``: mean octave distance over the epochs the run trained, each compared with the
    paper's path scaled to the run's planned epochs (config_json's ``epochs``, else the epochs it
    ran); ``epoch_reach_729``: first epoch trained with B >= 729 (NaN if never); ``final_bs``: the
    batch size of the last epoch; ``n_increase``/``n_rollback``: decisions taken.
    """
    e = epochs[epochs["method"].eq(method)].sort_values(["study", "trial_id", "epoch"], kind="stable")
    planned = _configured_epochs(runs) if runs is not None and "config_json" in runs else {}
    status = summary.set_index(["study", "trial_id"])["status"] if not summary.empty else pd.Series(dtype=object)
    rows = []
    for (study, trial_id), g in e.groupby(["study", "trial_id"], sort=True):
        n = int(g["epoch"].max())
        total = max(planned.get((study, trial_id), n), n)
        batch = g["batch_size"].to_numpy(dtype=float)
        reached = g["epoch"].to_numpy()[batch >= LARGE_BATCH]
        first = g.iloc[0]
        rows.append(
            {
                "study": study,
                "trial_id": trial_id,
                "arch": first["arch"],
                "dataset": first["dataset"],
                "seed": int(first["seed"]),
                "method": method,
                "variant": first["variant"],
                "status": status.get((study, trial_id), "incomplete"),
                "n_epochs": len(g),
                "epochs_planned": total,
                "distance_oct": trajectory_distance(batch, total, g["epoch"].to_numpy()),
                "epoch_reach_729": float(reached[0]) if len(reached) else math.nan,
                "final_bs": int(g["batch_size"].iloc[-1]),
                "n_increase": int(g["decision"].eq("increase").sum()),
                "n_rollback": int(g["decision"].eq("rollback").sum()),
            }
        )
    out = pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)
    return out.sort_values(["study", "arch", "dataset", "variant", "seed"], kind="stable", ignore_index=True)
