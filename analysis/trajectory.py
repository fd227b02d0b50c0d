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


def paper_batch_sizes(epoch_numbers: np.ndarray, epochs: int) -> np.ndarray:
    """:func:`paper_batch_size` of each of ``epoch_numbers`` (1-based) of an ``epochs``-epoch run, as
    floats; the same numbers, computed for a whole run at once."""
    t = np.asarray(epoch_numbers, dtype=np.int64)
    if epochs < 1 or (t.size and int(t.min()) < 1):
        raise ValueError(f"epoch and epochs must be >= 1, got epochs={epochs}, epoch min={t.min() if t.size else None}")
    blocks = (np.ceil(paper.EPOCHS * t / epochs).astype(np.int64) - 1) // paper.COOLDOWN
    path = [paper.B0]
    for _ in range(int(blocks.max()) if t.size else 0):  # one increase per cooldown block of 10 epochs
        path.append(min(math.floor(paper.GROWTH * path[-1]), paper.B_MAX))
    return np.asarray(path, dtype=float)[blocks]


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
    ref = paper_batch_sizes(t, total)
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
    status = dict(zip(zip(summary["study"], summary["trial_id"]), summary["status"])) if not summary.empty else {}
    rows = []
    # One pass over the sorted rows, trial by trial (a groupby's per-group frames cost ms each).
    study, trial = e["study"].to_numpy(dtype=object), e["trial_id"].to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, (study[1:] != study[:-1]) | (trial[1:] != trial[:-1])]) if len(e) else []
    ends = np.r_[starts[1:], len(e)] if len(e) else []
    epoch, batch = e["epoch"].to_numpy(), e["batch_size"].to_numpy(dtype=float)
    decision = e["decision"].to_numpy(dtype=object)
    arch, dataset, seed, variant = (e[c].to_numpy(dtype=object) for c in ("arch", "dataset", "seed", "variant"))
    for a, z in zip(starts, ends):
        key = (study[a], trial[a])
        n = int(epoch[a:z].max())
        total = max(planned.get(key, n), n)
        b = batch[a:z]
        reached = epoch[a:z][b >= LARGE_BATCH]
        rows.append(
            {
                "study": key[0],
                "trial_id": key[1],
                "arch": arch[a],
                "dataset": dataset[a],
                "seed": int(seed[a]),
                "method": method,
                "variant": variant[a],
                "status": status.get(key, "incomplete"),
                "n_epochs": int(z - a),
                "epochs_planned": total,
                "distance_oct": trajectory_distance(b, total, epoch[a:z]),
                "epoch_reach_729": float(reached[0]) if len(reached) else math.nan,
                "final_bs": int(b[-1]),
                "n_increase": int((decision[a:z] == "increase").sum()),
                "n_rollback": int((decision[a:z] == "rollback").sum()),
            }
        )
    out = pd.DataFrame(rows, columns=TRAJECTORY_COLUMNS)
    return out.sort_values(["study", "arch", "dataset", "variant", "seed"], kind="stable", ignore_index=True)
