"""A data-parallel trial on Ray Train, launched from inside its Tune trial (workers > 1).

Ray's pattern for Train V2 under Tune ("Hyperparameter Tuning with Ray Tune"): the Tune function
trainable (`trainables.ray_trainable.train_trial`) builds a `TorchTrainer` with W workers (DDP: NCCL on
GPUs, gloo on CPU) and runs it. The trial stays one Tune trial with one set of rows:

- Gang: Ray Train reserves the W workers as one placement group of W bundles (each bundle the CPUs and
  GPUs of one trial), all or nothing; the Tune trial itself holds only its driver (no CPU, no GPU:
  `orchestrator/gangs.py`).
- Rows and checkpoints: every rank runs `DataParallelLoop` and reports each epoch to Ray Train; rank 0
  attaches the checkpoint (`TrialLoop.save_checkpoint`) on the epochs a one-worker trial would. A Train
  callback (`ForwardReports`, in Train's controller) hands rank 0's record and the persisted checkpoint
  to the Tune function through a Ray queue and waits for its acknowledgement; the Tune function calls
  `tune.report(record, checkpoint=...)`, so Tune and the orchestrator see exactly what a one-worker
  trial reports (the driver's sink, checkpoint discovery and resume are unchanged).
- Resume: every rank restores from the same candidate checkpoints as a one-worker trial (Tune's own,
  then the orchestrator's), and the ranks check that they agree on where they resumed.
- Failure: Ray Train does not retry (`FailureConfig(max_failures=0)`): a worker that dies fails the Train
  run, the Tune function raises, and Tune retries the trial from its last checkpoint (the study's
  max_failures), never the study.
"""

from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
from typing import Any

import ray
from ray import tune

from trainables.config import TrialConfig

POLL_S = 1.0  # how often the Tune function checks on the Train run while it waits for a report


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: `DataParallelLoop` epochs, each reported to Train (rank 0 with the checkpoint)."""
    import logging

    import ray.train
    import torch
    import torch.distributed as dist
    from ray.train.v2._internal.execution import context as train_context

    from trainables.ddp_loop import DataParallelLoop
    from trainables.ray_trainable import _checkpoint_tmp, checkpoint_due, resume

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    # Train logs every report's whole record at INFO, under its file's path; the driver prints one line.
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    cfg = TrialConfig.from_stored(config["config"])
    if config["use_gpu"]:
        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
        cfg = cfg.replace(device="cuda")
    else:
        cfg = cfg.replace(device="cpu", threads=cfg.threads or config["threads"])
    own = config["own"]
    loop, resumed_from, skipped = resume(lambda: DataParallelLoop(cfg, rank, workers), own, config["init_checkpoints"])
    where = [None] * workers
    dist.all_gather_object(where, (resumed_from, loop.epochs_done))
    if len(set(where)) != 1:
        raise RuntimeError(f"the ranks of the trial resumed from different checkpoints: {where}")
    static = {
        **config["static"],
        "device": loop.device_name,
        "resumed_from_epoch": loop.epochs_done if resumed_from is not None else None,
        "resumed_from": resumed_from,
        "checkpoints_skipped": "; ".join(skipped) or None,
    }
    hooks = config["hooks"]
    every = int(config["checkpoint_every"])
    report_prev_s = None
    while not loop.done:
        rec = loop.run_epoch()
        metrics = {**rec, **static, "loop_status": loop.status, "report_prev_s": report_prev_s}
        if rank == 0 and checkpoint_due(rec["epoch"], every, loop.done):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="deba-ckpt-", dir=_checkpoint_tmp()) as ckpt_dir:
                loop.save_checkpoint(ckpt_dir)
                t1 = time.perf_counter()
                checkpoint = ray.train.Checkpoint.from_directory(ckpt_dir)
                ray.train.report({**metrics, "ckpt_save_s": t1 - t0}, checkpoint=checkpoint)
        else:
            t1 = time.perf_counter()
            ray.train.report({**metrics, "ckpt_save_s": 0.0})
        report_prev_s = time.perf_counter() - t1
        if hooks.get("fail_at_epoch") == rec["epoch"] and rank == workers - 1:
            from trainables.ray_trainable import _maybe_fail

            _maybe_fail(hooks, config["trial_id"], rec["epoch"])  # the last rank dies: a worker, not rank 0


def _forward_reports_class() -> type:
    from ray.train.v2.api.callback import UserCallback

    class ForwardReports(UserCallback):
        """In Train's controller: hand rank 0's record and the persisted checkpoint to the Tune function,
        and wait until Tune has stored them (Train may delete that checkpoint once a newer one exists)."""

        def __init__(self, reports: Any, acks: Any) -> None:
            self.reports, self.acks = reports, acks

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            self.reports.put((dict(metrics[0]), checkpoint))
            self.acks.get()

    return ForwardReports


def train_data_parallel(payload: dict[str, Any], trial_id: str, resources: dict[str, float]) -> None:
    """Run one W-worker trial (W = its config's `workers`) on Ray Train from inside its Tune trial."""
    from ray.train._internal.session import get_session
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.config import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.util.queue import Queue

    cfg: TrialConfig = payload["config"]
    use_gpu = resources.get("gpu", 0.0) > 0
    per_worker = {"CPU": resources.get("cpu", 1.0), **({"GPU": resources["gpu"]} if use_gpu else {})}
    storage = get_session().storage  # Tune's trial folder: Train's run lives under it (shared storage)
    run_name = f"train-{trial_id}-{time.time_ns()}"  # a fresh run per attempt: Tune owns the resume
    train_root = os.path.join(storage.trial_fs_path, "train")
    reports = Queue(1, actor_options={"num_cpus": 0})
    acks = Queue(1, actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "config": cfg.stored(),
            "own": tune.get_checkpoint(),
            "init_checkpoints": list(payload.get("init_checkpoints") or []),
            "hooks": dict(payload.get("hooks") or {}),
            "checkpoint_every": int(payload.get("checkpoint_every", 1)),
            "trial_id": trial_id,
            "use_gpu": use_gpu,
            "threads": max(1, int(per_worker["CPU"])),
            "static": {
                "study": payload["study"],
                "node_id": ray.get_runtime_context().get_node_id(),
                "python_version": platform.python_version(),
                "torch_version": __import__("torch").__version__,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            },
        },
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=run_name,
            storage_path=train_root,
            storage_filesystem=storage.storage_filesystem,
            failure_config=FailureConfig(max_failures=0),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=[_forward_reports_class()(reports, acks)],
        ),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # handed to the Tune function, which raises it
            outcome["error"] = exc
        finally:
            outcome["done"] = True

    thread = threading.Thread(target=fit, name=f"train-{trial_id}", daemon=True)
    thread.start()
    try:
        while True:
            try:
                metrics, checkpoint = reports.get(timeout=POLL_S)
            except ray.util.queue.Empty:
                if outcome.get("done") and reports.empty():
                    break
                continue
            if checkpoint is not None:
                tune.report(metrics, checkpoint=tune.Checkpoint(checkpoint.path, checkpoint.filesystem))
            else:
                tune.report(metrics)
            acks.put(True)
        thread.join()
        if "error" in outcome:
            raise RuntimeError(f"the data-parallel run of trial {trial_id} failed") from outcome["error"]
    finally:
        for queue in (reports, acks):
            queue.shutdown(force=True)
        # Train's copy of the checkpoints: Tune holds its own (what the orchestrator resumes from).
        try:
            storage.storage_filesystem.delete_dir(os.path.join(train_root, run_name))
        except OSError:
            pass  # never written (the run failed before its first report) or already gone
