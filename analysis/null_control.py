"""Null control of a reading (SPEC §4): would the same policy, fed signals with no training dynamics, do as well?

For every reading of a readings study (a DEBA variant of one study, arch and dataset), the reading's
policy (its stored options: rule, cooldown, bounds, the calibrated thresholds) is replayed R times on
signal sequences drawn from the study's own fixed runs of that arch and dataset: their (dN_t, dL_t,
c_t) of epochs t >= 2 under the reading's signal options (analysis/calibrate.py `fixed_signals`),
resampled with replacement, one epoch's triple at a time (so c and dN keep the correlation they have
within an epoch), in random order, as many epochs as the reading's runs planned. Nothing of training
is left: no trend, no feedback from B on the signals. Each replay's batch-size path gets the same
trajectory distance as a real run (analysis/trajectory.py).

Per reading: the observed mean distance over its completed runs, the null's median and 5th percentile,
p = the share of replays whose distance is <= the observed mean (lower = better than chance; SPEC:
a reading reproduces the paper's path only if p < 0.05), the shares of replays and of real runs that
trained at B >= 729, and p_mean: the share of null means of n replays (n = the reading's seeds,
drawn from the replays) that are <= the observed mean, which compares like with like (a mean of n
seeds against means of n replays) and is the sharper test. Seeded: the same store gives the same
numbers. Pure Python and numpy.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from analysis.calibrate import fixed_signals
from analysis.configs import stored_configs
from analysis.trajectory import LARGE_BATCH, trajectory_distance
from trainables.policies import make_policy, signal_reading
from trainables.policies.signal_tracker import EpochSignals

REPLAYS = 200
SEED = 20261202
SIGNAL_COLUMNS = ["grad_norm_variation", "loss_variation", "confidence"]
NULL_COLUMNS = [
    "study", "arch", "dataset", "reading", "n_seeds", "observed", "null_median", "null_p05", "p", "p_mean",
    "replays", "reached_729", "null_reached_729", "pool_epochs",
]  # fmt: skip


class ScriptedSignals:
    """Stands in for a policy's SignalTracker: hands out pre-drawn (dN, dL, c) triples, one per epoch."""

    def __init__(self, rows: np.ndarray) -> None:
        self._rows: Iterator[np.ndarray] = iter(rows)

    def update(self, train_loss: float, grad_var: float, grad_norm: float) -> EpochSignals:
        """The next epoch's signals (the statistics passed in are ignored)."""
        d_norm, d_loss, confidence = next(self._rows)
        return EpochSignals(float(d_norm), float(d_loss), float(confidence))


def replay_path(method: str, arch: str, options: Mapping[str, Any], signals: np.ndarray) -> list[int]:
    """The batch size of each epoch (B_1 = b0, then the policy's choice) when policy `method` with
    `options` sees the rows of `signals` (dN, dL, c) as its epochs' signals."""
    policy = make_policy(method, arch=arch, **options)
    policy.tracker = ScriptedSignals(signals)  # the decision code is the policy's own
    path = []
    for epoch in range(1, len(signals) + 1):
        path.append(policy.batch_size)
        policy.step(epoch=epoch, train_loss=1.0, grad_var=1.0, grad_norm=1.0)
    return path


def null_distances(
    method: str, arch: str, options: Mapping[str, Any], pool: np.ndarray, epochs: int, replays: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(distance, reached 729) of `replays` replays on `epochs` rows drawn from `pool` with replacement."""
    rng = np.random.default_rng(seed)
    distances, reached = np.empty(replays), np.empty(replays, dtype=bool)
    for r in range(replays):
        path = replay_path(method, arch, options, pool[rng.integers(0, len(pool), size=epochs)])
        distances[r] = trajectory_distance(path, epochs)
        reached[r] = max(path) >= LARGE_BATCH
    return distances, reached


def _stable_seed(*parts: Any) -> int:
    return SEED ^ zlib.crc32("/".join(map(str, parts)).encode())


def null_control(
    epochs: pd.DataFrame,
    summary: pd.DataFrame,
    runs: pd.DataFrame,
    trajectory: pd.DataFrame,
    reconstruction: pd.DataFrame,
    method: str = "deba",
    fixed_method: str = "fixed",
    replays: int = REPLAYS,
) -> pd.DataFrame:
    """One row per reading of the reconstruction table (`analysis.reconstruction.reading_table`); see the
    module docstring. Readings whose fixed runs hold no signals of their source are left out."""
    if reconstruction.empty:
        return pd.DataFrame(columns=NULL_COLUMNS)
    configs = stored_configs(runs)
    done = trajectory[trajectory["status"].eq("completed")]
    rows = []
    for r in reconstruction.itertuples():
        runs_of = done[
            done["study"].eq(r.study)
            & done["arch"].eq(r.arch)
            & done["dataset"].eq(r.dataset)
            & done["variant"].eq(r.variant)
            & done["method"].eq(method)
        ]
        config = next((configs[(r.study, t)] for t in runs_of["trial_id"] if (r.study, t) in configs), None)
        if runs_of.empty or config is None:
            continue
        options = config["policy"]
        scope = (epochs["study"] == r.study) & (epochs["dataset"] == r.dataset)
        in_scope = (summary["study"] == r.study) & (summary["dataset"] == r.dataset)
        parts = fixed_signals(epochs[scope], summary[in_scope], r.arch, signal_reading(options), fixed_method)
        if not parts:
            continue
        pool = pd.concat(parts)[SIGNAL_COLUMNS].to_numpy(dtype=float)
        planned = int(runs_of["epochs_planned"].max())
        distances, reached = null_distances(
            method, r.arch, options, pool, planned, replays, _stable_seed(r.study, r.arch, r.dataset, r.variant)
        )
        observed = float(runs_of["distance_oct"].mean())
        n = len(runs_of)
        rng = np.random.default_rng(_stable_seed("means", r.study, r.arch, r.dataset, r.variant))
        means = distances[rng.integers(0, replays, size=(replays, n))].mean(axis=1)
        rows.append(
            {
                "study": r.study,
                "arch": r.arch,
                "dataset": r.dataset,
                "reading": r.variant,
                "n_seeds": n,
                "observed": observed,
                "null_median": float(np.median(distances)),
                "null_p05": float(np.percentile(distances, 5)),
                "p": float(np.mean(distances <= observed)),
                "p_mean": float(np.mean(means <= observed)),
                "replays": replays,
                "reached_729": float(runs_of["epoch_reach_729"].notna().mean()),
                "null_reached_729": float(reached.mean()),
                "pool_epochs": len(pool),
                "null_distances": distances,
            }
        )
    out = pd.DataFrame(rows, columns=NULL_COLUMNS + ["null_distances"])
    return out.sort_values(["study", "arch", "dataset", "observed"], kind="stable", ignore_index=True)
