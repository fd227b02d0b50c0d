"""Write results stores with the contract schema: hand-made rows (tests) or synthetic studies.

The synthetic study imitates the shape of real data (DEBA-like batch-size steps with cooldown,
time per epoch falling with batch size, accuracy curves, signal columns) so that the analysis
and its plots can be exercised and timed without training anything. Its numbers mean nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trainables.manifest import manifest_of
from trainables.records import EPOCH_COLUMNS, RUN_COLUMNS, arrow_schema

EPOCH_SCHEMA = arrow_schema(EPOCH_COLUMNS)
RUN_SCHEMA = arrow_schema(RUN_COLUMNS)


def _table(rows: pd.DataFrame | Sequence[Mapping], schema: pa.Schema) -> pa.Table:
    df = pd.DataFrame(rows)
    for name in schema.names:
        if name not in df:
            df[name] = None
    extra = [c for c in df.columns if c not in schema.names]
    table = pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    for c in extra:  # extra columns are allowed by the contract; keep them
        table = table.append_column(c, pa.array(df[c]))
    return table


def write_trial(
    root: str, study: str, trial_id: str, epochs: pd.DataFrame | Sequence[Mapping] | None, run: Mapping | None
) -> None:
    """Write one trial's epochs file and runs file (either may be None = not written). A runs row written
    with the trial's epochs carries their manifest, as the tool's own runs rows do (trainables/manifest.py),
    unless the row says otherwise (`manifest_checksums` given, None for a row from before manifests)."""
    table = None
    if epochs is not None:
        d = os.path.join(root, study, "epochs")
        os.makedirs(d, exist_ok=True)
        table = _table(epochs, EPOCH_SCHEMA)
        pq.write_table(table, os.path.join(d, f"{trial_id}.parquet"))
    if run is not None:
        d = os.path.join(root, study, "runs")
        os.makedirs(d, exist_ok=True)
        if table is not None and "manifest_checksums" not in run:
            run = {**run, **manifest_of(table)}
        pq.write_table(_table([run], RUN_SCHEMA), os.path.join(d, f"{trial_id}.parquet"))


def trial_rows(
    study: str,
    trial_id: str,
    arch: str,
    dataset: str,
    seed: int,
    method: str,
    variant: str = "baseline",
    n_epochs: int = 3,
    **columns,
) -> pd.DataFrame:
    """Hand-made epoch rows: each keyword is a per-epoch list or a scalar; others get defaults.

    Defaults: batch_size 64, test_acc 0.5, epoch_time_s 10, wall_time_s cumulative epoch
    time + 1 s per epoch, signals 0.1/1.0, decision 'hold', in_cooldown False.
    """
    epoch = np.arange(1, n_epochs + 1)
    rows = {
        "study": study, "trial_id": trial_id, "arch": arch, "dataset": dataset, "seed": seed,
        "method": method, "variant": variant, "epoch": epoch, "batch_size": 64, "lr": 0.01,
        "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5,
        "epoch_time_s": 10.0, "eval_time_s": 1.0, "samples_per_s": 100.0, "grad_var": 1.0,
        "grad_norm": 1.0, "grad_norm_variation": 0.1, "loss_variation": 0.1, "confidence": 1.0,
        "decision": "hold", "in_cooldown": False, "peak_mem_mb": 10.0,
    }  # fmt: skip
    rows.update(columns)
    df = pd.DataFrame(rows)
    if "next_batch_size" not in columns:
        df["next_batch_size"] = np.append(df["batch_size"].to_numpy()[1:], df["batch_size"].iloc[-1])
    if "wall_time_s" not in columns:
        df["wall_time_s"] = (df["epoch_time_s"].fillna(0) + 1.0).cumsum()
    for name in EPOCH_SCHEMA.names:
        if name not in df:
            df[name] = None
    return df[EPOCH_SCHEMA.names + [c for c in df.columns if c not in EPOCH_SCHEMA.names]]


def under_id(spec: Any, trial_id: str) -> Any:
    """A TrialSpec as an older version stored it: the same config under another trial id (for the tests
    of renames)."""
    from types import SimpleNamespace

    ids = {**spec.identifiers(), "trial_id": trial_id}
    return SimpleNamespace(**ids, identifiers=lambda: ids, config=spec.config, config_json=spec.config_json)


def spec_rows(spec: Any, epochs: int, **columns: Any) -> list[dict]:
    """Epoch rows 1..`epochs` of a TrialSpec as the sink stores them, with made-up values (each keyword
    a scalar for every row): batch size 64, test_acc 0.5, losses and gradient signals 1, 1 s epochs."""
    base = {"batch_size": 64, "next_batch_size": 64, "test_acc": 0.5, "train_loss": 1.0, "grad_var": 1.0,
            "grad_norm": 1.0, "epoch_time_s": 1.0, "decision": "hold", "in_cooldown": False}  # fmt: skip
    return [{**spec.identifiers(), **base, "epoch": e, "wall_time_s": float(e), **columns}
            for e in range(1, epochs + 1)]  # fmt: skip


def run_row(
    study: str,
    trial_id: str,
    arch: str,
    dataset: str,
    seed: int,
    method: str,
    variant: str = "baseline",
    status: str = "completed",
    **columns,
) -> dict:
    """Hand-made runs row with the identifiers and status; other columns default to null."""
    row = {
        "study": study, "trial_id": trial_id, "arch": arch, "dataset": dataset, "seed": seed,
        "method": method, "variant": variant, "status": status, "config_json": "{}",
    }  # fmt: skip
    row.update(columns)
    return row


ARCH_SPEED = {  # seconds per epoch at B = 64, a made-up scale per arch
    "resnet18": 20.0, "resnet50": 45.0, "densenet121": 50.0,
    "efficientnet_b0": 30.0, "mobilenetv3": 15.0, "vit_b16": 120.0,
}  # fmt: skip
# Made-up signal noise per arch (mean, seed spread) so that the taxonomy has all four classes.
ARCH_NOISE = {
    "resnet18": (2.2, 0.05), "resnet50": (6.0, 0.2), "densenet121": (2.0, 0.05),
    "efficientnet_b0": (3.0, 0.5), "mobilenetv3": (1.0, 0.05), "vit_b16": (1.2, 0.03),
}  # fmt: skip


def _trajectory(rng: np.random.Generator, n_epochs: int, cooldown: int) -> tuple[np.ndarray, list]:
    """Batch sizes and decisions of a DEBA-like policy: a change at most every ``cooldown``."""
    bs, decisions, in_cd = np.empty(n_epochs, dtype=np.int64), [], []
    b, last = 64, 0
    for t in range(1, n_epochs + 1):
        bs[t - 1] = b
        cooling = t - last < cooldown
        if cooling:
            d = "hold"
        else:
            d = rng.choice(["increase", "rollback", "hold"], p=[0.6, 0.15, 0.25])
        if d == "increase":
            b, last = min(int(1.5 * b), 1024), t
        elif d == "rollback":
            b, last = max(int(0.8 * b), 32), t
        decisions.append(d)
        in_cd.append(cooling)
    return bs, list(zip(decisions, in_cd))


def synthetic_trial(
    rng: np.random.Generator, study: str, arch: str, dataset: str, seed: int, method: str, variant: str, n_epochs: int
) -> tuple[str, pd.DataFrame, dict]:
    """One synthetic trial: (trial_id, epochs rows, runs row)."""
    trial_id = f"{arch}-{dataset}-{method}-{variant}-s{seed}"
    if method == "fixed":
        bs = np.full(n_epochs, 64, dtype=np.int64)
        dec = [("hold", False)] * n_epochs
    else:
        bs, dec = _trajectory(rng, n_epochs, 5 if variant == "cooldown5" else 10)
    nxt = np.append(bs[1:], bs[-1])
    epoch = np.arange(1, n_epochs + 1)
    base = ARCH_SPEED.get(arch, 25.0)
    t_epoch = base * (64.0 / bs) ** 0.6 * rng.lognormal(0, 0.03, n_epochs)
    t_eval = np.full(n_epochs, 0.1 * base)
    ceiling = 0.93 if dataset == "cifar10" else 0.72
    test_acc = ceiling * (1 - np.exp(-epoch / (0.2 * n_epochs))) + rng.normal(0, 0.005, n_epochs)
    train_loss = 2.3 * np.exp(-epoch / (0.3 * n_epochs)) + 0.05 + rng.normal(0, 0.01, n_epochs)
    mean_noise, spread = ARCH_NOISE.get(arch, (1.0, 0.1))
    noise = max(0.05, mean_noise * (1.0 + spread * rng.standard_normal()))
    grad_norm = 1.0 + rng.lognormal(0, 0.2 * noise, n_epochs)
    grad_var = 1e-4 * 64.0 / bs * rng.lognormal(0, 0.3 * noise, n_epochs)
    dn = np.abs(np.diff(grad_norm, prepend=grad_norm[0])) / grad_norm
    dl = np.abs(np.diff(train_loss, prepend=train_loss[0])) / np.abs(train_loss)
    e = pd.DataFrame(
        {
            "study": study, "trial_id": trial_id, "arch": arch, "dataset": dataset,
            "seed": seed, "method": method, "variant": variant, "epoch": epoch,
            "batch_size": bs, "next_batch_size": nxt, "lr": 0.01, "train_loss": train_loss,
            "train_acc": np.clip(test_acc + 0.03, 0, 1), "test_loss": train_loss + 0.2,
            "test_acc": np.clip(test_acc, 0, 1), "epoch_time_s": t_epoch,
            "eval_time_s": t_eval, "wall_time_s": np.cumsum(t_epoch + t_eval),
            "samples_per_s": 50000 / t_epoch, "grad_var": grad_var, "grad_norm": grad_norm,
            "grad_norm_variation": dn, "loss_variation": dl,
            "confidence": rng.lognormal(0, 0.4, n_epochs),
            "decision": [d for d, _ in dec], "in_cooldown": [c for _, c in dec],
            "peak_mem_mb": 100.0 + bs, "grad_diversity": None, "noise_scale": None,
            "lr_gain": None,
        }
    )  # fmt: skip
    run = {
        "study": study, "trial_id": trial_id, "arch": arch, "dataset": dataset, "seed": seed,
        "method": method, "variant": variant, "config_json": "{}", "status": "completed",
        "error": None, "epochs_done": n_epochs, "final_test_acc": float(e["test_acc"].iloc[-1]),
        "best_test_acc": float(e["test_acc"].max()), "train_time_s": float(t_epoch.sum()),
        "wall_time_s": float(e["wall_time_s"].iloc[-1]),
        "n_increase": int((e["decision"] == "increase").sum()),
        "n_rollback": int((e["decision"] == "rollback").sum()),
        "final_batch_size": int(nxt[-1]), "device": "synthetic", "host": "localhost",
        "gpus_per_trial": 1.0, "cpus_per_trial": 4.0, "python_version": "3.11",
        "torch_version": "none", "ray_version": "none",
    }  # fmt: skip
    return trial_id, e, run


def synthetic_store(
    root: str,
    study: str = "synthetic",
    archs: Iterable[str] = tuple(ARCH_SPEED),
    datasets: Iterable[str] = ("cifar10", "cifar100"),
    seeds: Iterable[int] = (2, 7, 42, 123, 199),
    methods: Iterable[tuple[str, str]] = (
        ("fixed", "baseline"),
        ("deba", "baseline"),
        ("deba", "cooldown5"),
        ("deba", "full_history"),
    ),  # fmt: skip
    n_epochs: int = 100,
    rng_seed: int = 0,
) -> int:
    """Write a synthetic study (default 6 x 2 x 5 x 4 = 240 trials); return the trial count."""
    rng = np.random.default_rng(rng_seed)
    n = 0
    for arch in archs:
        for dataset in datasets:
            for seed in seeds:
                for method, variant in methods:
                    tid, e, run = synthetic_trial(rng, study, arch, dataset, seed, method, variant, n_epochs)
                    write_trial(root, study, tid, e, run)
                    n += 1
    return n
