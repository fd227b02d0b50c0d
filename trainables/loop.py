"""The epoch loop of one trial: data, model, optimizer and batch-size policy from its TrialConfig.

    from trainables.loop import TrialLoop
    loop = TrialLoop(TrialConfig(arch="tiny_cnn", dataset="digits", method="deba", epochs=5))
    while not loop.done:
        rec = loop.run_epoch()      # one epochs-table row (trainables/records.py), minus study/trial_id
        loop.save_checkpoint(dir)   # optional; TrialLoop(cfg).load_checkpoint(dir) resumes exactly

Per epoch: train at the policy's batch size (lr = cfg lr * policy.lr_scale), evaluate on the
whole test set, compute the gradient signals, step the policy, emit one record. The training
step never synchronises with the host: loss, accuracy and the gradient moments stay on the
device and are read once per epoch.

Documented choices:
- A batch size larger than the training set is clamped to the number of training samples (one
  full batch per epoch); the record's `batch_size` is the size actually used.
- Divergence: a non-finite epoch train loss or gradient signal (checked once per epoch) ends the
  run with status "diverged"; that epoch's record is still emitted with decision "hold",
  next_batch_size = batch_size, NaN DEBA signals, in_cooldown False, the lr_gain it trained with,
  and the policy is not stepped.
- peak_mem_mb: the epoch's peak of torch.cuda.max_memory_allocated on CUDA; on CPU the process's
  maximum resident set size so far (the OS gives no per-epoch peak).
- Method statistics (trainables/measurements.py, trainables/estimators.py): the policy names
  what it needs for an epoch (`policy.measurements(epoch)`); only then does the loop build the
  meter, so other epochs cost nothing extra. "per_sample_diversity" runs a per-sample pass after each step's backward;
  "two_batch" replaces each step's forward + backward by k micro-batches (k from
  `policy.measure_settings()`). `estimator` records which ran ("per_sample", "per_sample_bn_eval",
  "per_sample_bn_eval_consistent", "noise_scale"; joined with "+" when two ran), null otherwise.
- measure_time_s: extra training seconds of the epoch's measurements (part of epoch_time_s; null
  when the epoch measured nothing): the per-step hooks (the per-sample pass), plus the two-batch
  meter's own norm and estimate arithmetic. The cost of running a step as k smaller micro-batches
  is not separable from the step itself and shows only in epoch_time_s (benchmarks compare it).
- Momentum buffers and lr: the policy's lr multiplier is set on the optimizer's param groups at
  the start of each epoch; SGD's momentum buffers are kept as they are across batch-size and lr
  changes (see trainables/policies/base.py for why).
- wall_time_s: seconds since the trial's first TrialLoop was built, summed across resumes (the
  time between a checkpoint and a crash is not counted).
- Speed knobs (execution settings: they may differ between a run and its resume). `compile`:
  False (default) | True (torch.compile's default mode) | "reduce-overhead" (CUDA graphs) |
  "max-autotune", the mode passed to torch.compile; the per-sample pass always runs uncompiled.
  `cudnn_benchmark`: "auto" (default) | True | False; sets the process-wide
  torch.backends.cudnn.benchmark on CUDA (untouched on CPU). "auto" is off, the behaviour before
  the option existed: no GPU measurement of it exists yet, and every batch-size change makes cuDNN
  re-benchmark its kernels for the new shapes.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainables.config import IDENTITY_FIELDS, TrialConfig, resolve_stored
from trainables.data import GpuLoader, load_dataset
from trainables.estimators import DeviceTimer
from trainables.folders import is_folder_dataset
from trainables.grad_stats import EpochGradAccumulator, grad_moments, moments_to_stats, trainable_params
from trainables.measurements import MEASUREMENTS, MeasureContext, Measurement
from trainables.models import build_model
from trainables.policies import POLICIES
from trainables.policies.signal_tracker import SOURCE_COLUMNS
from trainables.records import CHECKPOINT_FILE, CHECKPOINT_META_FILE, EPOCH_COLUMNS
from trainables.streamed import open_folder

__all__ = ["CHECKPOINT_FILE", "MEASUREMENTS", "RECORD_COLUMNS", "TrialLoop"]

# Columns of one record: the epochs table without the identifiers the orchestrator adds.
RECORD_COLUMNS: tuple[str, ...] = tuple(name for name, _ in EPOCH_COLUMNS if name not in ("study", "trial_id"))
_CHECKPOINT_FORMAT = 1


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _max_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


class TrialLoop:
    """One trial's training state and its per-epoch step; see the module docstring."""

    def __init__(self, config: TrialConfig) -> None:
        if not isinstance(config, TrialConfig):
            raise TypeError(
                f"TrialLoop takes a TrialConfig, not a {type(config).__name__}: build one with "
                "TrialConfig(**settings) or TrialConfig.from_dict(mapping) (checked once, there)"
            )
        self._t_start = time.perf_counter()
        self.config = cfg = config
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' is not allowed; expected 'auto' or 'cpu': no CUDA device is available")
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        self.device_name = torch.cuda.get_device_name(self.device) if use_cuda else "cpu"
        self.amp_dtype = torch.bfloat16 if cfg.amp == "bf16" or (cfg.amp == "auto" and use_cuda) else None
        self.channels_last = cfg.channels_last in (True, "auto")
        fused = cfg.fused_sgd is True or (cfg.fused_sgd == "auto" and use_cuda)
        self.cudnn_benchmark = cfg.cudnn_benchmark is True  # "auto" = off until measured
        if use_cuda:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark

        _seed_everything(cfg.seed)
        if is_folder_dataset(cfg.dataset):  # streamed through Ray Data (trainables/streamed.py)
            self.data = None
            num_classes, self.train_loader, self.test_loader = open_folder(cfg, self.device, self.channels_last)
        else:
            num_classes = self._resident(cfg)
        self.n_train, self.n_test = self.train_loader.num_samples, self.test_loader.num_samples
        if self.n_train == 0 or self.n_test == 0:
            raise ValueError(f"dataset {cfg['dataset']!r}: empty train or test split")
        # The loader's generator drives the shuffle and the augmentation; its state is checkpointed.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed)

        self.model = build_model(cfg.arch, num_classes, cfg.timm_input).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # `net` is what runs forward; `model` (uncompiled) owns the parameters and the state_dict.
        self.net: Callable[[torch.Tensor], torch.Tensor] = self.model
        if cfg.compile is not False:
            # No mode keyword for True: torch.compile's own default.
            mode = {} if cfg.compile is True else {"mode": cfg.compile}
            self.net = torch.compile(self.model, **mode)
        self._fused = fused or None
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=self._fused
        )
        # The one policy of the trial, from the options the config already checked.
        self.policy = POLICIES[cfg.method](arch=cfg.arch, dataset=cfg.dataset, options=cfg.options)
        self.params = trainable_params(self.model.parameters())
        self._numel = sum(p.numel() for p in self.params)
        self.accumulator = (
            EpochGradAccumulator(self.params)
            if self.policy.signal_source in ("epoch_mean", "mixed") or cfg.record_epoch_mean
            else None
        )

        self.epochs_done = 0
        self.status = "running"
        self.history: list[dict[str, Any]] = []
        self._wall_offset = 0.0  # wall time of earlier processes of this trial

    def _resident(self, cfg: TrialConfig) -> int:
        """Load a built-in dataset onto the device (data.GpuLoader); returns its number of classes."""
        self.data = load_dataset(
            cfg.dataset,
            data_dir=cfg.data_dir,
            download=cfg.download,
            train_limit=cfg.train_limit,
            test_limit=cfg.test_limit,
            seed=cfg.seed if cfg.subset_seed is None else cfg.subset_seed,
        )
        d = self.data
        self.train_loader = GpuLoader(
            d.train_x,
            d.train_y,
            d.mean,
            d.std,
            self.device,
            augment=cfg.augment != "none",
            flip=cfg.augment == "crop_flip",
            channels_last=self.channels_last,
        )
        self.test_loader = GpuLoader(
            d.test_x, d.test_y, d.mean, d.std, self.device, augment=False, channels_last=self.channels_last
        )
        return d.num_classes

    # ------------------------------------------------------------------ state
    @property
    def done(self) -> bool:
        """True once the run diverged or trained all configured epochs."""
        return self.status != "running"

    def wall_time(self) -> float:
        """Seconds since the trial started, summed across resumes."""
        return self._wall_offset + time.perf_counter() - self._t_start

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ epoch
    def _collectors(self, epoch: int) -> dict[str, Measurement]:
        requested = sorted(self.policy.measurements(epoch))
        missing = [name for name in requested if name not in MEASUREMENTS]
        if missing:
            raise NotImplementedError(
                f"policy {self.config.method!r} requests measurement(s) {', '.join(missing)} for epoch {epoch}, "
                "which the epoch loop does not implement yet "
                f"(implemented: {', '.join(sorted(MEASUREMENTS)) or 'none'})"
            )
        ctx = MeasureContext(model=self.model, params=self.params, settings=self.policy.measure_settings(), epoch=epoch)
        return {name: MEASUREMENTS[name](ctx) for name in requested}

    def loss_and_logits(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward `x` under the loop's autocast; (mean cross-entropy in float32, logits)."""
        with self._autocast():
            out = self.net(x)
            loss = F.cross_entropy(out, y)
        return loss, out

    def _train(self, batch_size: int, collectors: dict[str, Measurement]) -> tuple[torch.Tensor, int, float, float]:
        """Train one epoch; returns ([loss sum, correct, then [count, sum, sumsq] of the last step's
        gradient and, when accumulated, of the epoch's summed gradient] on device, steps, seconds,
        seconds of it spent in measurements)."""
        self.model.train()
        if self.accumulator is not None:
            self.accumulator.reset()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        backwards = [c.backward for c in collectors.values() if callable(getattr(c, "backward", None))]
        if len(backwards) > 1:
            raise ValueError(f"measurements {', '.join(collectors)}: more than one replaces the backward pass")
        custom_backward = backwards[0] if backwards else None
        on_step = [c.on_step for c in collectors.values() if callable(getattr(c, "on_step", None))]
        # Times the hooks with CUDA events on a GPU: no host synchronisation per step.
        hook_timer = DeviceTimer(self.device)
        steps = 0
        self._sync()
        t0 = time.perf_counter()
        for x, y in self.train_loader.epoch(batch_size, self.generator, shuffle=True, drop_last=True):
            steps += 1
            if self.config.compile:
                torch._dynamo.mark_dynamic(x, 0)
            self.optimizer.zero_grad(set_to_none=True)
            if custom_backward is not None:
                loss, out = custom_backward(self.loss_and_logits, x, y)
            else:
                loss, out = self.loss_and_logits(x, y)
                loss.backward()
            if self.accumulator is not None:
                self.accumulator.add()
            if on_step:
                with hook_timer.region():
                    for hook in on_step:
                        hook(steps, x, y, loss)
            self.optimizer.step()
            loss_sum += loss.detach()
            correct += (out.detach().argmax(dim=1) == y).sum()
        if steps == 0:
            raise RuntimeError(f"training loader yielded no batch at batch size {batch_size}")
        # Part of the training time spent in the policy's measurements.
        measure_time = hook_timer.seconds()
        for c in collectors.values():
            if callable(getattr(c, "measure_seconds", None)):
                measure_time += c.measure_seconds()
        # SGD's step leaves .grad untouched (weight decay goes into the update), so after the loop
        # the gradients are exactly those of the epoch's last step.
        grads = [p.grad for p in self.params if p.grad is not None]
        parts = [torch.stack([loss_sum, correct.to(torch.float64)]), grad_moments(grads, numel=self._numel)]
        if self.accumulator is not None:
            parts.append(self.accumulator.moments())  # of the summed gradient: scale by 1/steps
        self._sync()
        seconds = time.perf_counter() - t0
        stats = torch.cat([part.to(self.device) for part in parts])
        return stats, steps, seconds, measure_time

    @torch.no_grad()
    def _evaluate(self) -> tuple[torch.Tensor, float]:
        """Loss sum and correct count over the whole test set (on device), and seconds."""
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self._sync()
        t0 = time.perf_counter()
        for x, y in self.test_loader.epoch(self.config.eval_batch_size, None, shuffle=False, drop_last=False):
            if self.config.compile:
                torch._dynamo.mark_dynamic(x, 0)
            with self._autocast():
                out = self.net(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
            correct += (out.argmax(dim=1) == y).sum()
        self._sync()
        return torch.stack([loss_sum, correct.to(torch.float64)]), time.perf_counter() - t0

    def run_epoch(self) -> dict[str, Any]:
        """Train, evaluate and step the policy for one epoch; returns its record (RECORD_COLUMNS)."""
        if self.done:
            raise RuntimeError(f"run_epoch: the trial is already {self.status} after {self.epochs_done} epochs")
        cfg = self.config
        epoch = self.epochs_done + 1
        collectors = self._collectors(epoch)
        batch_size = min(int(self.policy.batch_size), self.n_train)
        lr = cfg.lr * float(self.policy.lr_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

        train_stats, steps, epoch_time, measure_time = self._train(batch_size, collectors)
        eval_stats, eval_time = self._evaluate()
        # The one host synchronisation of the epoch's statistics.
        loss_sum, correct, *moments = train_stats.tolist()
        test_loss_sum, test_correct = eval_stats.tolist()
        last_step = moments_to_stats(moments[:3])
        epoch_mean = moments_to_stats(moments[3:], scale=1.0 / steps) if len(moments) > 3 else (None, None)
        # The statistics the policy consumes, by the columns its signal source reads (SOURCE_COLUMNS). (The
        # signal-overhead benchmark removes the accumulator: the last step's moments then stand in.)
        source = self.policy.signal_source if epoch_mean[0] is not None else "last_step"
        available = dict(
            zip(("grad_var", "grad_norm", "grad_var_epoch_mean", "grad_norm_epoch_mean"), last_step + epoch_mean)
        )
        grad_var, grad_norm = (available[column] for column in SOURCE_COLUMNS[source])
        train_loss = loss_sum / steps
        measured: dict[str, Any] = {}
        for c in collectors.values():
            measured.update(c.result())

        diverged = not all(math.isfinite(v) for v in (train_loss, grad_var, grad_norm))
        if diverged:
            nan = float("nan")
            prec = {
                "decision": "hold",
                "batch_size": batch_size,
                "confidence": nan,
                "grad_norm_variation": nan,
                "loss_variation": nan,
                "in_cooldown": False,
                "lr_gain": None if self.policy.lr_scaling == "none" else float(self.policy.lr_scale),
            }
        else:
            prec = self.policy.step(
                epoch=epoch, train_loss=train_loss, grad_var=grad_var, grad_norm=grad_norm, **measured
            )
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else _max_rss_mb()
        values = {
            "arch": cfg.arch,
            "dataset": cfg.dataset,
            "seed": cfg.seed,
            "method": cfg.method,
            "variant": cfg.variant,
            "epoch": epoch,
            "batch_size": batch_size,
            "next_batch_size": int(prec["batch_size"]),
            "lr": lr,
            "train_loss": train_loss,
            "train_acc": correct / (steps * batch_size),
            "test_loss": test_loss_sum / self.n_test,
            "test_acc": test_correct / self.n_test,
            "epoch_time_s": epoch_time,
            "eval_time_s": eval_time,
            "wall_time_s": self.wall_time(),
            "samples_per_s": steps * batch_size / epoch_time,
            "grad_var": grad_var,
            "grad_norm": grad_norm,
            "peak_mem_mb": peak,
        }
        for key in ("grad_norm_variation", "loss_variation", "confidence", "decision", "in_cooldown"):
            values[key] = prec[key]
        values["in_cooldown"] = bool(values["in_cooldown"])
        for key in ("grad_diversity", "noise_scale", "lr_gain"):  # method extras: null unless measured
            values[key] = prec.get(key)
        values["grad_var_epoch_mean"], values["grad_norm_epoch_mean"] = epoch_mean
        values["measure_time_s"] = measure_time if collectors else None
        labels = sorted({c.estimator for c in collectors.values() if getattr(c, "estimator", None)})
        values["estimator"] = "+".join(labels) if labels else None
        values.update(self._parallel_values(batch_size))
        record = {name: values[name] for name in RECORD_COLUMNS}

        self.epochs_done = epoch
        self.history.append(record)
        if diverged:
            self.status = "diverged"
        elif self.epochs_done >= cfg.epochs:
            self.status = "completed"
        return record

    def _parallel_values(self, batch_size: int) -> dict[str, Any]:
        """The data-parallel columns of a record (trainables/ddp_loop.py fills them for W > 1)."""
        return {"workers": self.config.workers, "worker_batch_sizes": None, "replica_grad_sqnorm": None}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit-exactly (on the same device type)."""
        np_state = np.random.get_state()
        return {
            "format": _CHECKPOINT_FORMAT,
            "config": self.config.stored(),
            "device_type": self.device.type,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "policy": self.policy.state_dict(),
            "rng": {
                "loader": self.generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                "python": random.getstate(),
                "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            },
            "epochs_done": self.epochs_done,
            "status": self.status,
            "history": [dict(r) for r in self.history],
            "wall_time_s": self.wall_time(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned; ValueError if it belongs to a different trial or device type."""
        if state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not {_CHECKPOINT_FORMAT}")
        mine, theirs = self.config.to_dict(), resolve_stored(state["config"])
        for key in IDENTITY_FIELDS:
            if theirs.get(key) != mine[key]:
                raise ValueError(
                    f"checkpoint belongs to another trial: config field {key!r} is "
                    f"{theirs.get(key)!r} there and {mine[key]!r} here"
                )
        if state["device_type"] != self.device.type:
            raise ValueError(
                f"checkpoint was written on {state['device_type']}, this loop runs on "
                f"{self.device.type}: the RNG states cannot carry over; use device={state['device_type']!r}"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the checkpoint's param_groups carry its own setting
            group["fused"] = self._fused
        self.policy.load_state_dict(state["policy"])
        rng = state["rng"]
        self.generator.set_state(rng["loader"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        self.epochs_done = int(state["epochs_done"])
        self.history = [dict(r) for r in state["history"]]
        self._wall_offset = float(state["wall_time_s"])
        # More epochs may be configured now than when the checkpoint was written (extending a study).
        if state["status"] == "diverged":
            self.status = "diverged"
        else:
            self.status = "completed" if self.epochs_done >= self.config.epochs else "running"

    def save_checkpoint(self, directory: str | os.PathLike[str]) -> str:
        """Write state_dict() atomically to <directory>/state.pt, then <directory>/checkpoint.json
        ({"epoch", "status", "trial"}: what the checkpoint ends, readable without torch); returns the
        state file's path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CHECKPOINT_FILE)
        tmp = path + ".tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        meta = os.path.join(directory, CHECKPOINT_META_FILE)
        cfg = self.config
        with open(meta + ".tmp", "w", encoding="utf-8") as f:
            json.dump(
                {
                    "epoch": self.epochs_done,
                    "status": self.status,
                    "trial": {k: getattr(cfg, k) for k in ("arch", "dataset", "seed", "method", "variant")},
                },
                f,
            )
        os.replace(meta + ".tmp", meta)
        return path

    @staticmethod
    def read_checkpoint(directory: str | os.PathLike[str]) -> dict[str, Any]:
        """The state in <directory>/state.pt; ValueError naming the file when it is missing or damaged."""
        path = os.path.join(directory, CHECKPOINT_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint {path} does not exist")
        try:
            # CPU first: RNG states must be CPU tensors; load_state_dict moves weights to the device.
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated zip, a foreign pickle: torch raises several types
            raise ValueError(
                f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is damaged "
                "(a copy cut short?) or not a checkpoint of this tool"
            ) from exc

    def load_checkpoint(self, directory: str | os.PathLike[str]) -> None:
        """Restore from <directory>/state.pt (written by save_checkpoint); ValueError when it is damaged
        or belongs to another trial (refused before anything changes). A state that fails later, half
        way through, leaves this loop half restored: build a new loop then."""
        self.load_state_dict(self.read_checkpoint(directory))
