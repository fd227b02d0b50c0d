"""Method statistics measured while an epoch trains (SPEC §5): gradient diversity and two-batch noise.

Two meters, each built by the epoch loop only for an epoch whose policy asks for it
(`policy.measurements(epoch)`), so nothing here runs on other epochs:

- `DiversityMeter` ("per_sample_diversity"): DiveBatch's gradient diversity
  Delta = sum_i |g_i|^2 / |sum_i g_i|^2 over the epoch's training samples. The numerator comes from
  exact per-sample gradient norms (`per_sample_grad_sq_norms`, torch.func, chunked); the denominator,
  by default, from the training gradients themselves (B x the batch-mean gradient of each step,
  summed; option `diversity_sum`). After each step's backward it runs one extra per-sample pass
  over the step's batch.
  The per-sample pass runs with the model in eval mode [choice]. For a model without BatchNorm and
  without active dropout the two modes compute the same function, so the norms are exact. With
  BatchNorm a per-sample gradient is ill-defined (each output depends on the whole batch); the pass
  then uses the running statistics, which is the DiveBatch authors' approximation (they switch
  BatchNorm to eval for BackPACK's per-sample norms) and is recorded as "per_sample_bn_eval"
  ("per_sample_bn_eval_consistent" with diversity_sum="per_sample", see DiversityMeter). Dropout and
  stochastic depth are off in that pass too (deterministic, consumes no RNG). The pass
  runs in float32 even when training uses bf16 autocast [choice]: exact norms, and vmap's
  BatchNorm rule rejects autocast's mixed bf16/float32 inputs.
- `TwoBatchMeter` ("two_batch"): McCandlish's two-batch estimates. On a measuring epoch each step's
  batch of B samples is split into k micro-batches (sizes differ by at most one); each micro-batch's
  gradient is computed with torch.autograd.grad, its squared norm taken, and it is accumulated into
  `.grad` weighted by b_j/B, so `.grad` ends as the batch-mean gradient the optimizer steps with.
  Per step and micro-batch j, tr(Sigma) and |G|^2 are estimated from (|g_j|^2, b_j) and (|g_B|^2, B)
  and averaged over j; the epoch's result is the mean over steps. Without BatchNorm the accumulated
  gradient equals the unsplit one (up to rounding), so training is unchanged. With BatchNorm the
  micro-batches normalise over b_j samples ("ghost batch norm") and update the running statistics k
  times per step: on measuring epochs training itself differs slightly [documented consequence].

Both keep their sums on the device; `result()` synchronises once per epoch. `TwoBatchMeter` also
times its own statistics (the norms and estimates, not the micro-batched forward/backward that
replaces the plain one) without synchronising: CUDA events on a GPU, the wall clock on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "DIVERSITY_SUMS",
    "DeviceTimer",
    "DiversityMeter",
    "TwoBatchMeter",
    "eval_mode",
    "has_batchnorm",
    "per_sample_grad_sq_norms",
    "trainable_named",
]

LossAndLogits = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any submodule is a BatchNorm layer (its outputs couple the samples of a batch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _sq_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared L2 norm of the concatenation of `tensors`, float64 on their device, no host sync."""
    return torch.stack(torch._foreach_norm(list(tensors), 2, dtype=torch.float64)).square().sum()


class DeviceTimer:
    """Sums the durations of `region()` blocks without host synchronisation (CUDA events on a GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.events: list[tuple[Any, Any]] = []
        self.cpu_seconds = 0.0

    @contextmanager
    def region(self) -> Iterator[None]:
        """Time the enclosed work (its queued kernels, on a GPU)."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.cpu_seconds += time.perf_counter() - t0

    def seconds(self) -> float:
        """Total timed seconds (waits for the last timed kernels on a GPU)."""
        if self.events:
            self.events[-1][1].synchronize()
        return self.cpu_seconds + sum(s.elapsed_time(e) for s, e in self.events) / 1000.0


def trainable_named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every parameter that requires a gradient, in module order."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def per_sample_grad_sq_norms(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk_size: int = 32,
    sum_into: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """|grad_theta CE(model(x_i), y_i)|^2 for every sample i, as a float64 [N] tensor on x's device.

    torch.func.vmap(grad(...)) over chunks of `chunk_size` samples: memory is bounded by
    chunk_size x (number of trainable parameters) floats. Runs in the model's current mode (use
    `eval_mode` for BatchNorm models); parameters that do not require grad are held fixed.
    `sum_into`: buffers shaped like `trainable_named(model)`'s parameters, to which the sum of the
    per-sample gradients is added.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be >= 1")
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def sample_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    norms = []
    for start in range(0, x.shape[0], chunk_size):
        grads = per_sample_grads(params, x[start : start + chunk_size], y[start : start + chunk_size])
        sq = (
            torch.stack(
                [
                    torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1, dtype=torch.float64)
                    for g in grads.values()
                ]
            )
            .square()
            .sum(dim=0)
        )
        if sum_into is not None:
            with torch.no_grad():
                torch._foreach_add_(list(sum_into), [g.sum(dim=0) for g in grads.values()])
        del grads  # free the chunk's per-sample gradients before the next chunk
        norms.append(sq)
    return torch.cat(norms)


DIVERSITY_SUMS: tuple[str, ...] = ("training", "per_sample")


class DiversityMeter:
    """DiveBatch's gradient diversity over one epoch (see the module docstring).

    Call `add(x, y)` after each training step's backward and before the optimizer step (the
    batch-mean gradient must be in `.grad`); `result()` after the epoch.

    `diversity_sum` [choice] picks the denominator's |sum_i g_i|^2:
    - "training" (the authors' code): the sum of the training gradients, B x each step's batch-mean
      gradient. With BatchNorm it mixes train-mode sums with eval-mode per-sample norms.
    - "per_sample": the sum of the per-sample pass's own gradients, so numerator and denominator
      describe the same (eval-mode) network; recorded as "per_sample_bn_eval_consistent".
    Without BatchNorm both are the same quantity (up to rounding) and the estimator is "per_sample".
    """

    def __init__(self, model: nn.Module, chunk_size: int = 32, diversity_sum: str = "training") -> None:
        if diversity_sum not in DIVERSITY_SUMS:
            raise ValueError(
                f"diversity_sum={diversity_sum!r} is not allowed; allowed values: "
                f"{', '.join(map(repr, DIVERSITY_SUMS))}"
            )
        self.model = model
        self.params = [p for _, p in trainable_named(model)]
        self.chunk_size = chunk_size
        self.diversity_sum = diversity_sum
        if not has_batchnorm(model):
            self.estimator = "per_sample"
        else:
            self.estimator = "per_sample_bn_eval" + ("_consistent" if diversity_sum == "per_sample" else "")
        device = self.params[0].device
        self.grad_sum = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.sq_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.n_samples = 0

    @torch.no_grad()
    def _add_batch_gradient(self, batch: int) -> None:
        # .grad holds the batch-mean gradient: the sum of the per-sample gradients is B times it.
        pairs = [(s, p.grad) for s, p in zip(self.grad_sum, self.params) if p.grad is not None]
        if pairs:
            sums, grads = zip(*pairs)
            torch._foreach_add_(list(sums), list(grads), alpha=float(batch))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fold in one training step's batch (no host synchronisation)."""
        per_sample_sum = self.diversity_sum == "per_sample"
        if not per_sample_sum:
            self._add_batch_gradient(x.shape[0])
        with eval_mode(self.model):
            # float32 even under bf16 training autocast: the loop's autocast region ended with the forward.
            norms = per_sample_grad_sq_norms(
                self.model, x.float(), y, self.chunk_size, sum_into=self.grad_sum if per_sample_sum else None
            )
        self.sq_sum += norms.sum()
        self.n_samples += int(x.shape[0])

    def result(self) -> dict[str, Any]:
        """{"grad_diversity": Delta, "n_samples": n}; Delta = inf when the summed gradient is zero."""
        if self.n_samples == 0:
            return {"grad_diversity": float("nan"), "n_samples": 0}
        numerator, denominator = torch.stack([self.sq_sum, _sq_norm(self.grad_sum)]).tolist()
        diversity = numerator / denominator if denominator > 0 else float("inf")
        return {"grad_diversity": diversity, "n_samples": self.n_samples}


class TwoBatchMeter:
    """McCandlish's two-batch statistics over one epoch, from micro-batches of each step.

    `backward(loss_and_logits, x, y)` replaces the step's forward+backward: it leaves the
    batch-mean gradient in `.grad` (call after zero_grad, before the optimizer step) and returns
    (the batch-mean loss, the logits), both detached. `result()` after the epoch.
    """

    def __init__(self, params: Sequence[torch.Tensor], micro_batches: int = 2) -> None:
        if micro_batches < 2:
            raise ValueError(f"micro_batches={micro_batches!r} must be >= 2")
        self.params = list(params)
        self.micro_batches = micro_batches
        device = self.params[0].device
        self.sums = torch.zeros(2, dtype=torch.float64, device=device)  # [tr(Sigma), |G|^2]
        self.steps = 0
        self.n_samples = 0
        self.timer = DeviceTimer(device)

    def backward(
        self, loss_and_logits: LossAndLogits, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward the batch as k micro-batches; accumulate the step's estimates."""
        big = int(x.shape[0])
        k = min(self.micro_batches, big)
        losses, logits, small_sq, sizes = [], [], [], []
        for xj, yj in zip(x.tensor_split(k), y.tensor_split(k)):
            b = int(xj.shape[0])
            loss, out = loss_and_logits(xj, yj)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            present = [(p, g) for p, g in zip(self.params, grads) if g is not None]
            with self.timer.region():
                small_sq.append(_sq_norm([g for _, g in present]))
            self._accumulate(present, b / big)
            losses.append(loss.detach() * (b / big))
            # A copy: under torch.compile(mode="reduce-overhead") the next micro-batch's CUDA-graph
            # replay overwrites this output's memory.
            logits.append(out.detach().clone())
            sizes.append(b)
        self.n_samples += big
        if k >= 2:
            with self.timer.region():
                big_sq = _sq_norm([p.grad for p in self.params if p.grad is not None])
                self.sums += self._estimates(small_sq, sizes, big_sq, big)
            self.steps += 1
        return torch.stack(losses).sum(), torch.cat(logits)

    @torch.no_grad()
    def _accumulate(self, present: list[tuple[torch.Tensor, torch.Tensor]], weight: float) -> None:
        fresh, rest = [], []
        for p, g in present:
            (fresh if p.grad is None else rest).append((p, g))
        # autograd.grad returned new tensors: reuse one as .grad when its layout matches the
        # parameter's (the layout backward() would give) and no other parameter takes it (autograd
        # returns one tensor for both inputs of e.g. w1 + w2); copy it otherwise, before any reused
        # tensor is scaled in place.
        reuse, taken = [], set()
        for p, g in fresh:
            if g.stride() == p.stride() and g.data_ptr() not in taken:
                taken.add(g.data_ptr())
                reuse.append((p, g))
            else:
                p.grad = torch.empty_like(p).copy_(g).mul_(weight)
        for p, g in reuse:
            p.grad = g.mul_(weight)
        if rest:
            torch._foreach_add_([p.grad for p, _ in rest], [g for _, g in rest], alpha=weight)

    @staticmethod
    def _estimates(
        small_sq: Sequence[torch.Tensor], sizes: Sequence[int], big_sq: torch.Tensor, big: int
    ) -> torch.Tensor:
        """Mean over micro-batches j of [tr(Sigma), |G|^2] from (|g_j|^2, b_j) and (|g_B|^2, B).

        The coefficients stay Python scalars: a tensor made from them on a GPU would be a
        host->device copy, which synchronises with the host, on every step.
        """
        k = len(sizes)
        trace = sum((s - big_sq) * (1.0 / (1.0 / b - 1.0 / big)) for s, b in zip(small_sq, sizes)) / k
        sqnorm = sum((big * big_sq - b * s) * (1.0 / (big - b)) for s, b in zip(small_sq, sizes)) / k
        return torch.stack([trace, sqnorm])

    def result(self) -> dict[str, Any]:
        """{"noise_trace", "noise_sqnorm"} = mean estimates over the epoch's steps, and "n_samples"."""
        if self.steps == 0:
            return {"noise_trace": float("nan"), "noise_sqnorm": float("nan"), "n_samples": self.n_samples}
        trace, sqnorm = (self.sums / self.steps).tolist()
        return {"noise_trace": trace, "noise_sqnorm": sqnorm, "n_samples": self.n_samples}
