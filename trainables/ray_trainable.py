"""The Ray Tune function trainable: one trial = one `trainables.loop.TrialLoop`, checkpointed per epoch.

The orchestrator passes a small param_space ({"trial_id": ...}) and the trial payloads through
`tune.with_parameters(train_trial, payloads=...)`; a payload is
{"study": str, "config": <TrialLoop config>, "hooks": {...}, "checkpoint_every": K,
"init_checkpoints": [URI, ...]} (the orchestrator's resume candidates from earlier experiments,
newest first; orchestrator/checkpoints.py).

Per epoch the trial trains, evaluates and calls `tune.report(row, checkpoint=...)`, with a
checkpoint (model, optimizer, policy, RNG states, history: `TrialLoop.save_checkpoint`) on every
K-th epoch and on the epoch that ends the trial (completed or diverged). A retried trial resumes
from `tune.get_checkpoint()`, a trial of a new experiment from the first of its `init_checkpoints`
that loads (a damaged one is passed over and named in the `checkpoints_skipped` metric), and
re-reports the epochs after it, which the driver's sink stores over the abandoned attempt's rows;
the loop restores every RNG state, so their values equal an uninterrupted run's. Each report also
carries the Ray overhead of the previous epoch (checkpoint save, 0 without one, + report time) so
the driver can measure it.

Test hook (used by tests/test_ray_study.py): hooks {"fail_at_epoch": k,
"fail_marker_dir": "/abs/dir"} make the trial's process die (`os._exit(1)`) right after reporting
epoch k, on the first attempt only: the marker file `<dir>/<trial_id>.failed` records that the
failure already happened.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import tune

from trainables.config import TrialConfig

GAUGE_TAGS: tuple[str, ...] = ("study", "trial_id", "arch", "dataset", "seed", "method", "variant")


class TrialGauges:
    """Live per-trial metrics for Ray's metrics export (Prometheus / Grafana dashboards)."""

    # Exported to Prometheus as ray_deba_trial_<name> (orchestrator/dashboards/ reads them).
    METRICS: dict[str, str] = {
        "batch_size": "batch size chosen for the next epoch",
        "test_acc": "test accuracy after the last epoch (fraction)",
        "epoch_time_s": "training time of the last epoch (s)",
        "confidence": "DEBA confidence signal of the last epoch",
        "epoch": "epochs trained so far",
        "epochs_total": "epochs the trial is configured for",
        "finished": "1 once the trial completed or diverged, 0 while it trains",
    }

    def __init__(self, study: str, trial_id: str, config: TrialConfig) -> None:
        from ray.util.metrics import Gauge

        self.tags = {
            "study": study,
            "trial_id": trial_id,
            "arch": config["arch"],
            "dataset": config["dataset"],
            "seed": str(config["seed"]),
            "method": config["method"],
            "variant": config["variant"],
        }
        self.gauges = {
            name: Gauge(f"deba_trial_{name}", description=desc, tag_keys=GAUGE_TAGS)
            for name, desc in self.METRICS.items()
        }

    def update(self, rec: dict[str, Any] | None, epochs_done: int, epochs_total: int, finished: bool) -> None:
        """Set the gauges from one epoch record (None: only progress, e.g. at a trial's start); the
        batch-size gauge shows the next epoch's size. A finished trial's worker may run the next
        trial (reused actors) and keep exporting these values: dashboards drop it by `finished`."""
        values: dict[str, Any] = {"epoch": epochs_done, "epochs_total": epochs_total, "finished": int(finished)}
        if rec is not None:
            values.update(
                batch_size=rec.get("next_batch_size"),
                test_acc=rec.get("test_acc"),
                epoch_time_s=rec.get("epoch_time_s"),
                confidence=rec.get("confidence"),
            )
        for name, value in values.items():
            if value is not None:
                self.gauges[name].set(float(value), tags=self.tags)


def _assigned_cpus() -> int:
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


def _maybe_fail(hooks: dict[str, Any], trial_id: str, epoch: int) -> None:
    """Test hook: die once, right after reporting epoch `fail_at_epoch`."""
    if hooks.get("fail_at_epoch") != epoch:
        return
    marker = os.path.join(hooks["fail_marker_dir"], f"{trial_id}.failed")
    if os.path.exists(marker):
        return
    os.makedirs(hooks["fail_marker_dir"], exist_ok=True)
    with open(marker, "w") as f:
        f.write(f"died after epoch {epoch}\n")
    sys.stdout.flush()
    os._exit(1)


def resume(
    make_loop: Callable[[], Any], own: tune.Checkpoint | None, seeds: list[str]
) -> tuple[Any, str | None, list[str]]:
    """A loop (from `make_loop`) restored from the first checkpoint that loads: Tune's own (this
    experiment's, after a retry), else the seeds the orchestrator found in earlier experiments
    (newest first). Returns the loop, where it resumed from (None: from scratch) and "where: why"
    for each checkpoint passed over. A checkpoint that fails half way through loading leaves the
    loop half restored, so the next candidate (or scratch) gets a fresh loop."""
    candidates = ([own] if own is not None else []) + [tune.Checkpoint(uri) for uri in seeds]
    skipped = []
    loop = make_loop()
    for checkpoint in candidates:
        try:
            with checkpoint.as_directory() as directory:
                state = loop.read_checkpoint(directory)
        except Exception as exc:  # damaged, missing, unreachable: try the next one
            skipped.append(f"{checkpoint.path}: {exc}")
            continue
        try:
            loop.load_state_dict(state)
            return loop, checkpoint.path, skipped
        except Exception as exc:  # foreign, or a state this code cannot take
            skipped.append(f"{checkpoint.path}: {type(exc).__name__}: {exc}")
            loop = None  # freed before its replacement is built: never two models and datasets at once
            loop = make_loop()
    return loop, None, skipped


def _checkpoint_tmp() -> str | None:
    """Where a checkpoint is written before Tune copies it: the driver's temporary folder (removed with
    the driver, whatever ends it: orchestrator/reaper.py) when it gave one, else the system's."""
    folder = os.environ.get("DEBA_TMPDIR")
    if folder:
        os.makedirs(folder, exist_ok=True)  # a node of a cluster has no such folder yet
    return folder or None


def checkpoint_due(epoch: int, every: int, done: bool) -> bool:
    """Whether epoch `epoch` saves a checkpoint: every `every`-th epoch, and the trial's last one."""
    return done or epoch % every == 0


def train_trial(
    config: dict[str, Any], payloads: dict[str, dict[str, Any]], resources: dict[str, float] | None = None
) -> None:
    """Run one trial to completion (or divergence), resuming from Tune's checkpoint when there is one.
    A trial of W > 1 workers runs on Ray Train (trainables/ray_ddp.py), each worker with `resources`."""
    # Ray Train logs every persisted checkpoint at INFO; the driver prints one line per epoch instead.
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    trial_id = config["trial_id"]
    payload = payloads[trial_id]
    loop_cfg: TrialConfig = payload["config"]
    if loop_cfg.workers > 1:
        from trainables.ray_ddp import train_data_parallel

        train_data_parallel(payload, trial_id, resources or {"cpu": 1.0, "gpu": 0.0})
        return
    hooks = payload.get("hooks") or {}
    if not ray.get_gpu_ids():
        # A CPU-only trial must not touch a GPU it was not given; hide them before torch looks. Device and
        # threads are execution settings: the trial's identity is unchanged.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        loop_cfg = loop_cfg.replace(device="cpu", threads=loop_cfg.threads or _assigned_cpus())

    import torch

    from trainables.loop import TrialLoop

    loop, resumed_from, skipped = resume(
        lambda: TrialLoop(loop_cfg), tune.get_checkpoint(), payload.get("init_checkpoints") or []
    )
    gauges = TrialGauges(payload["study"], trial_id, loop_cfg)
    gauges.update(None, loop.epochs_done, loop.config.epochs, loop.done)
    static = {
        "study": payload["study"],
        "device": loop.device_name,
        "node_id": ray.get_runtime_context().get_node_id(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "resumed_from_epoch": loop.epochs_done if resumed_from is not None else None,
        "resumed_from": resumed_from,
        "checkpoints_skipped": "; ".join(skipped) or None,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    every = int(payload.get("checkpoint_every", 1))
    report_prev_s = None
    while not loop.done:
        rec = loop.run_epoch()
        metrics = {**rec, **static, "loop_status": loop.status, "report_prev_s": report_prev_s}
        # Tune's iteration = the epoch, also in an experiment that resumed the trial at a later epoch (Tune
        # fills training_iteration only when the result lacks it).
        metrics["training_iteration"] = rec["epoch"]
        if checkpoint_due(rec["epoch"], every, loop.done):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="deba-ckpt-", dir=_checkpoint_tmp()) as ckpt_dir:
                loop.save_checkpoint(ckpt_dir)
                t1 = time.perf_counter()
                tune.report({**metrics, "ckpt_save_s": t1 - t0}, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))
        else:
            t1 = time.perf_counter()
            tune.report({**metrics, "ckpt_save_s": 0.0})
        report_prev_s = time.perf_counter() - t1
        gauges.update(rec, loop.epochs_done, loop.config.epochs, loop.done)
        _maybe_fail(hooks, trial_id, rec["epoch"])
