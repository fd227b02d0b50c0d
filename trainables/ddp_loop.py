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
- BatchNorm: `batchnorm="global"` (default) computes batch statistics over the global batch, summed over
  the ranks (trainables/global_bn.py): the one-worker computation. "per_worker": each rank's own (B/W
  samples), DDP's default, no extra communication. Running statistics are rank 0's either way (DDP
  broadcasts buffers before each training forward, and before evaluation this loop does).
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
from trainables.estimators import _sq_norm
from trainables.global_bn import to_global
from trainables.loop import TrialLoop
from trainables.policies import MEASURE_TWO_BATCH


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
            yield self._batch(lo, hi, order, offsets, flips)


class ReplicaNoise:
    """ "two_batch" from the replicas (SPEC §6.2): every step, each rank's own gradient over its b_r samples
    (read before the all-reduce) is a small batch and the all-reduced gradient over B the big one; the
    estimates of tr(Sigma) and |G|^2 are those of `TwoBatchMeter` with the W shards as its micro-batches,
    with no extra pass. Its result sums over ranks (a collective: every rank calls it, once per epoch)."""

    estimator = "noise_scale_replicas"

    def __init__(self, loop: DataParallelLoop) -> None:
        self.loop = loop
        self.sums = torch.zeros(2, dtype=torch.float64, device=loop.device)
        self.steps = 0
        self.batch = 0

    def on_step(self, step: int, x: Tensor, y: Tensor, loss: Tensor) -> None:
        """After the all-reduce, before the optimizer step: fold in this step's estimates."""
        loop = self.loop
        big = loop._batch
        b = shard_sizes(big, loop.workers)[loop.rank]
        small_sq = loop._step_sq / loop._weight**2  # the rank's own mean gradient over its b samples
        big_sq = _sq_norm([p.grad for p in loop.params if p.grad is not None])
        trace = (small_sq - big_sq) * (1.0 / (1.0 / b - 1.0 / big))
        sqnorm = (big * big_sq - b * small_sq) * (1.0 / (big - b))
        self.sums += torch.stack([trace, sqnorm])
        self.steps += 1
        self.batch = big

    def result(self) -> dict[str, Any]:
        """noise_trace, noise_sqnorm (means over steps and ranks) and n_samples, as `TwoBatchMeter`'s."""
        sums = self.sums.clone()
        dist.all_reduce(sums)
        if self.steps == 0:
            return {"noise_trace": float("nan"), "noise_sqnorm": float("nan"), "n_samples": 0}
        trace, sqnorm = (sums / (self.steps * self.loop.workers)).tolist()
        return {"noise_trace": trace, "noise_sqnorm": sqnorm, "n_samples": self.steps * self.batch}


class DataParallelLoop(TrialLoop):
    """One rank's `TrialLoop` of a W-worker trial; see the module docstring."""

    def __init__(self, config: TrialConfig, rank: int, workers: int) -> None:
        if not dist.is_initialized() or dist.get_world_size() != workers:
            raise RuntimeError(f"DataParallelLoop needs torch.distributed initialised with {workers} ranks")
        super().__init__(config)
        self.rank, self.workers = rank, workers
        self.train_loader = ShardedLoader(self.train_loader, rank, workers)
        self.test_loader = ShardedLoader(self.test_loader, rank, workers)
        if config.batchnorm == "global":
            to_global(self.model)  # in place: same parameters, buffers and state_dict
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.ddp.register_comm_hook(None, self._comm_hook)
        self.net = self.ddp  # `model` keeps the parameters and the state_dict
        self._weight = 1.0
        self._step = self._steps_total = 0
        self._local_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        self._step_sq = torch.zeros((), dtype=torch.float64, device=self.device)
        self._every_step = False
        self._batch = 0
        self._replica_sq: float | None = None

    def _comm_hook(self, state, bucket):  # noqa: ANN001, ANN202 (DDP checks the annotations; strings fail)
        """Before the all-reduce, at the epoch's last step (every step while `ReplicaNoise` measures): add
        this bucket's share of the rank's own (weighted) gradient's squared norm (state: None; bucket: a
        dist.GradBucket)."""
        if self._every_step or self._step == self._steps_total:
            self._step_sq += bucket.buffer().detach().double().pow(2).sum()
        return default_hooks.allreduce_hook(None, bucket)

    def loss_and_logits(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The rank's mean loss weighted to the global batch (`loss_weight`), and logits."""
        self._step += 1
        self._step_sq.zero_()
        loss, out = super().loss_and_logits(x, y)
        return (loss if self._weight == 1.0 else loss * self._weight), out

    def _collectors(self, epoch: int) -> dict[str, Any]:
        # "two_batch" comes from the replicas (no micro-batch passes); anything else the config refused.
        requested = self.policy.measurements(epoch)
        self._every_step = MEASURE_TWO_BATCH in requested
        rest = super()._collectors(epoch) if requested - {MEASURE_TWO_BATCH} else {}
        return {**rest, **({MEASURE_TWO_BATCH: ReplicaNoise(self)} if self._every_step else {})}

    def _train(self, batch_size: int, collectors: dict[str, Any]) -> tuple[Tensor, int, float, float]:
        self._weight = loss_weight(batch_size, self.workers, self.rank)
        self._batch = batch_size
        self._step, self._steps_total = 0, self.train_loader.num_batches(batch_size)
        stats, steps, seconds, measure_time = super()._train(batch_size, collectors)
        self._local_sq = self._step_sq.clone()  # the last step's
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
