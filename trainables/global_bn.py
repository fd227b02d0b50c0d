"""BatchNorm over the global batch of a data-parallel trial (`batchnorm="global"`, SPEC §6.1).

`to_global(model)` turns every BatchNorm layer of `model` into a `GlobalBatchNorm` in place (the same
parameters, buffers and state_dict keys, so checkpoints do not change): in training its batch statistics
are the mean and variance over the whole global batch, summed over the ranks with `torch.distributed`
(gloo on CPU, NCCL on GPU), and its backward sums the two per-channel terms of the BatchNorm gradient over
the ranks, as torch's SyncBatchNorm does (which runs on GPUs only). A W-worker trial then computes what one
worker computes on the global batch, up to float summation order. Evaluation uses the running statistics,
as plain BatchNorm does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


class _GlobalBatchNormFn(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with mean, var over every rank's batch."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        s1 = xf.sum(dims)
        # new_full fills on the device (a torch.tensor([...]) would be a host-to-device copy every layer).
        stats = torch.cat([s1, (xf * xf).sum(dims), s1.new_full((1,), xf.numel() / xf.shape[1])])
        dist.all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)
        invstd = torch.rsqrt(var + eps)
        shape = [1, c] + [1] * (x.dim() - 2)
        xhat = (xf - mean.view(shape)) * invstd.view(shape)
        y = xhat * weight.float().view(shape) + bias.float().view(shape)
        unbiased = var * n / (n - 1).clamp_min(1.0)  # what running_var tracks, as in torch's BatchNorm
        ctx.save_for_backward(xhat, invstd, weight, n)
        ctx.dims, ctx.shape = dims, shape
        ctx.mark_non_differentiable(mean, unbiased)
        return y.to(x.dtype), mean, unbiased

    @staticmethod
    def backward(ctx: Any, gy: Tensor, _gmean: Any, _gvar: Any) -> tuple[Tensor, Tensor, Tensor, None]:
        xhat, invstd, weight, n = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        g = gy.float()
        gb = g.sum(dims)
        gw = (g * xhat).sum(dims)
        sums = torch.cat([gb, gw])
        dist.all_reduce(sums)  # every rank's loss depends on this rank's x through mean and var
        c = gb.shape[0]
        gx = (weight.float() * invstd).view(shape) * (
            g - (sums[:c] / n).view(shape) - xhat * (sums[c:] / n).view(shape)
        )
        # The parameters' gradients are this rank's own: DDP averages them over the ranks like every other.
        return gx.to(gy.dtype), gw.to(weight.dtype), gb.to(weight.dtype), None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm layer (1d, 2d or 3d) whose training statistics span the ranks (see the module docstring)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        if self.weight is None or not self.track_running_stats:
            raise ValueError("GlobalBatchNorm needs an affine BatchNorm that tracks running statistics")
        y, mean, unbiased = _GlobalBatchNormFn.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        return y


PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def to_global(model: nn.Module) -> int:
    """Turn every BatchNorm layer of `model` into a GlobalBatchNorm in place; returns how many. Only torch's
    own BatchNorm classes, affine and tracking running statistics, are converted: a subclass may do more
    in its forward (timm's BatchNormAct2d adds its activation), so one is refused, naming it."""
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or isinstance(module, GlobalBatchNorm):
            continue
        if type(module) not in PLAIN_BATCHNORMS or not (module.affine and module.track_running_stats):
            raise ValueError(
                f"batchnorm='global' cannot convert layer {name!r} ({type(module).__name__}): only torch's own "
                "affine BatchNorm1d/2d/3d that track running statistics are; give batchnorm='per_worker'"
            )
        module.__class__ = GlobalBatchNorm
        count += 1
    return count


__all__ = ["GlobalBatchNorm", "to_global"]
