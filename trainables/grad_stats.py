"""Gradient signals of one epoch: variance and L2 norm of the flattened gradient (SPEC §1).

The flattened gradient g of a model is the concatenation of every trainable parameter's
gradient (P components). Its statistics are computed from per-parameter reductions — a sum
and a sum of squares per tensor, accumulated in float64 on the gradients' device — so no
P-sized concatenated copy is ever made. Nothing here synchronises with the host except
`moments_to_stats` / `grad_stats`, which the epoch loop calls once per epoch.

Two sources of g (policy option `signal_source`):
- "last_step": the gradient of the epoch's last optimizer step; call `grad_moments` right after
  that step's backward.
- "epoch_mean": the mean of all step gradients of the epoch; `EpochGradAccumulator` keeps one
  parameter-shaped buffer per parameter and adds each step's gradients with one foreach op.

A trainable parameter whose `.grad` is None (not reached by the backward pass) counts as P
zero components: it belongs to the flattened gradient, its gradient is just zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["EpochGradAccumulator", "grad_moments", "grad_stats", "moments_to_stats", "trainable_params"]


def trainable_params(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters that require gradients, as a list (raises ValueError if there are none)."""
    out = [p for p in params if p.requires_grad]
    if not out:
        raise ValueError("params: no parameter requires a gradient")
    return out


def grad_moments(tensors: Sequence[torch.Tensor], numel: int | None = None) -> torch.Tensor:
    """[count, sum, sum of squares] of the flattened `tensors`, as a float64 tensor on their device.

    `numel` is the count to use (default: the tensors' total size); pass the full parameter
    count when some gradients are missing so that they count as zeros. No host synchronisation.
    """
    if numel is None:
        numel = sum(t.numel() for t in tensors)
    if not tensors:
        return torch.tensor([float(numel), 0.0, 0.0], dtype=torch.float64)
    device = tensors[0].device
    # foreach_norm upcasts to float64 before squaring, so the sum of squares keeps full precision.
    sumsq = torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64)).square().sum()
    total = torch.stack([t.sum(dtype=torch.float64) for t in tensors]).sum()
    count = torch.tensor(float(numel), dtype=torch.float64, device=device)
    return torch.stack([count, total, sumsq])


def moments_to_stats(moments: torch.Tensor | Sequence[float], scale: float = 1.0) -> tuple[float, float]:
    """(population variance, L2 norm) of a vector from its [count, sum, sum of squares].

    `scale` multiplies the vector first (e.g. 1/steps to turn a gradient sum into a mean).
    Synchronises with the host once when given a device tensor.
    """
    values = moments.tolist() if isinstance(moments, torch.Tensor) else list(moments)
    count, total, sumsq = values
    if count <= 0:
        raise ValueError("moments: count must be positive")
    total *= scale
    sumsq *= scale * scale
    mean = total / count
    # Clamp at zero: rounding can leave a tiny negative value when all components are equal.
    variance = max(sumsq / count - mean * mean, 0.0)
    return variance, sumsq**0.5


def grad_stats(params: Iterable[torch.Tensor]) -> tuple[float, float]:
    """(variance, L2 norm) of the flattened gradient of `params` (missing gradients are zeros).

    Convenience for one-off use: synchronises with the host. The epoch loop instead keeps
    `grad_moments(...)` on the device and converts once per epoch.
    """
    params = trainable_params(params)
    grads = [p.grad for p in params if p.grad is not None]
    return moments_to_stats(grad_moments(grads, numel=sum(p.numel() for p in params)))


class EpochGradAccumulator:
    """Running sum of the step gradients of one epoch, for `signal_source="epoch_mean"`.

    Holds one zero-initialised buffer per trainable parameter (float32, the parameter's
    device); `add()` costs one `torch._foreach_add_` per step and never synchronises.
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.params = trainable_params(params)
        self.numel = sum(p.numel() for p in self.params)
        self.buffers = [
            torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format) for p in self.params
        ]
        self.steps = 0

    def reset(self) -> None:
        """Start a new epoch: zero the buffers and the step count."""
        torch._foreach_zero_(self.buffers)
        self.steps = 0

    def add(self) -> None:
        """Add the parameters' current gradients (call after backward, before the next zero_grad)."""
        pairs = [(b, p.grad) for b, p in zip(self.buffers, self.params) if p.grad is not None]
        if pairs:
            bufs, grads = zip(*pairs)
            torch._foreach_add_(list(bufs), list(grads))
        self.steps += 1

    def moments(self) -> torch.Tensor:
        """[count, sum, sum of squares] of the summed gradient (not yet divided by the steps)."""
        return grad_moments(self.buffers, numel=self.numel)

    def stats(self) -> tuple[float, float]:
        """(variance, L2 norm) of the epoch-mean gradient; synchronises with the host."""
        if self.steps == 0:
            raise ValueError("EpochGradAccumulator.stats: no step was added this epoch")
        return moments_to_stats(self.moments(), scale=1.0 / self.steps)
