"""The epoch loop of one rank of a data-parallel trial: `TrialLoop` over DistributedDataParallel.

    loop = DataParallelLoop(config, rank, workers)   # torch.distributed already initialised (Ray Train)
    rec = loop.run_epoch()                           # the same record on every rank

What changes against one worker (trainables/data_parallel.py has the rules, SPEC §6.1):
- Data: every rank draws the same permutation, crop offsets and flips from the same seeded generator,
  and takes its shard (`shard_bounds`) of each global batch of B positions; evaluation splits each
  evaluation batch the same way. So the epoch's global batches are those of one worker.
- Gradient: each rank's mean loss is weighted by `loss_weight`, so DDP's all-reduced gradient is the
  mean over the global batch. SGD, the gradient signals (grad_var, grad_norm, the epoch-mean
  accumulator) and the policy read that gradient, identical on every rank, so every rank steps the
  policy to the same batch size.
- Statistics: loss sums and correct counts are summed over ranks once per epoch. A DDP communication
  hook reads each rank's own gradient at the epoch's last step before the all-reduce (the cross-replica
  statistics, `replica_grad_sqnorm`).
- BatchNorm: batch statistics are per rank (B/W samples), DDP's default; running statistics are rank 0's
  (DDP broadcasts buffers before each training forward, and before evaluation this loop does).
- Checkpoints: the state of every rank is the same, so rank 0's `save_checkpoint` is the trial's, and
  every rank restores from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from trainables.config import TrialConfig
from trainables.data import GpuLoader
from trainables.data_parallel import loss_weight, shard_sizes
from trainables.loop import TrialLoop


class ShardedLoader(GpuLoader):
    """A view of a `GpuLoader` that yields rank `rank`'s shard of every batch (the first B mod W ranks one
    sample more); it shares the loader's device storage and draws from the generator exactly as it does."""

    def __init__(self, loader: GpuLoader, rank: int, workers: int) -> None:  # no copy of the data
        self.__dict__.update(loader.__dict__)
        self.rank, self.workers = rank, workers

    def _batches(
        self, batch_size: int, count: int, order: Tensor | None, offsets: Tensor | None, flips: Tensor | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(count):
            start, stop = i * batch_size, min((i + 1) * batch_size, self.num_samples)
            base, extra = divmod(stop - start, self.workers)  # shard_sizes, allowing empty shards (evaluation)
            lo = start + self.rank * base + min(self.rank, extra)
            hi = lo + base + (1 if self.rank < extra else 0)
            if hi == lo:
                continue
            idx = order[lo:hi] if order is not None else slice(lo, hi)
            if offsets is not None:
                images = self._crop_flip(idx, lo, hi, offsets[lo:hi], None if flips is None else flips[lo:hi])
            else:
                images = self._plain(idx, lo, hi)
            yield self._normalise(images), self._y[idx]


class DataParallelLoop(TrialLoop):
    """One rank's `TrialLoop` of a W-worker trial; see the module docstring."""

    def __init__(self, config: TrialConfig, rank: int, workers: int) -> None:
        if not dist.is_initialized() or dist.get_world_size() != workers:
            raise RuntimeError(f"DataParallelLoop needs torch.distributed initialised with {workers} ranks")
        super().__init__(config)
        self.rank, self.workers = rank, workers
        self.train_loader = ShardedLoader(self.train_loader, rank, workers)
        self.test_loader = ShardedLoader(self.test_loader, rank, workers)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.ddp.register_comm_hook(None, self._comm_hook)
        self.net = self.ddp  # `model` keeps the parameters and the state_dict
        self._weight = 1.0
        self._step = self._steps_total = 0
        self._local_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        self._replica_sq: float | None = None

    def _comm_hook(self, state, bucket):  # noqa: ANN001, ANN202 (DDP checks the annotations; strings fail)
        """Before the all-reduce, at the epoch's last step: add this bucket's share of the rank's own
        (weighted) gradient's squared norm (state: None; bucket: a dist.GradBucket)."""
        if self._step == self._steps_total:
            self._local_sq += bucket.buffer().detach().double().pow(2).sum()
        return default_hooks.allreduce_hook(None, bucket)

    def loss_and_logits(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The rank's mean loss weighted to the global batch (`loss_weight`), and logits."""
        self._step += 1
        loss, out = super().loss_and_logits(x, y)
        return (loss if self._weight == 1.0 else loss * self._weight), out

    def _train(self, batch_size: int, collectors: dict[str, Any]) -> tuple[Tensor, int, float, float]:
        self._weight = loss_weight(batch_size, self.workers, self.rank)
        self._step, self._steps_total = 0, self.train_loader.num_batches(batch_size)
        self._local_sq.zero_()
        stats, steps, seconds, measure_time = super()._train(batch_size, collectors)
        # [weighted loss sum, correct, own |g|^2]: summed over ranks (DDP averaged the weighted losses).
        head = torch.stack([stats[0], stats[1], self._local_sq / self._weight**2])
        dist.all_reduce(head)
        self._replica_sq = float(head[2]) / self.workers
        head = torch.stack([head[0] / self.workers, head[1]])
        return torch.cat([head, stats[2:]]), steps, seconds, measure_time

    @torch.no_grad()
    def _evaluate(self) -> tuple[Tensor, float]:
        # Rank 0's BatchNorm running statistics everywhere (what its checkpoint holds); each rank then
        # evaluates its shard with the plain module (no DDP collective per batch: shard counts may differ).
        for buffer in self.model.buffers():
            dist.broadcast(buffer, src=0)
        self.net = self.model
        try:
            stats, seconds = super()._evaluate()
        finally:
            self.net = self.ddp
        dist.all_reduce(stats)
        return stats, seconds

    def _parallel_values(self, batch_size: int) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "worker_batch_sizes": ",".join(map(str, shard_sizes(batch_size, self.workers))),
            "replica_grad_sqnorm": self._replica_sq,
        }
