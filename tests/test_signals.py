"""Gradient signals against a numpy reference on a real model's gradients (torchvision resnet18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits

from trainables.grad_stats import EpochGradAccumulator, grad_moments, grad_stats, moments_to_stats


def digits_batches(n_batches: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Real digits images, 8x8 -> 3x32x32 floats, in consecutive batches."""
    d = load_digits()
    x = torch.tensor(d.images[: n_batches * batch], dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target[: n_batches * batch], dtype=torch.int64)
    return [(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]) for i in range(n_batches)]


def flat_grad_numpy(model: torch.nn.Module) -> np.ndarray:
    """The reference: every trainable parameter's gradient concatenated, in float64."""
    return np.concatenate([p.grad.detach().double().numpy().ravel() for p in model.parameters()])


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10)


def test_last_step_matches_numpy(resnet: torch.nn.Module) -> None:
    ((x, y),) = digits_batches(1, 8)
    resnet.zero_grad(set_to_none=True)
    F.cross_entropy(resnet(x), y).backward()
    ref = flat_grad_numpy(resnet)
    assert ref.size == sum(p.numel() for p in resnet.parameters()) == 11_181_642
    var, norm = grad_stats(resnet.parameters())
    assert var == pytest.approx(ref.var(), rel=1e-9)
    assert norm == pytest.approx(np.linalg.norm(ref), rel=1e-9)
    # A real gradient: not degenerate.
    assert var > 0 and norm > 0


@pytest.mark.slow
def test_epoch_mean_matches_numpy(resnet: torch.nn.Module) -> None:
    opt = torch.optim.SGD(resnet.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    acc = EpochGradAccumulator(resnet.parameters())
    flats = []
    for x, y in digits_batches(3, 8):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(resnet(x), y).backward()
        acc.add()
        flats.append(flat_grad_numpy(resnet))
        opt.step()
    assert acc.steps == 3
    # The steps really differ, so the mean is not any single step's gradient.
    assert not np.allclose(flats[0], flats[2])
    mean = np.mean(flats, axis=0)
    var, norm = acc.stats()
    assert var == pytest.approx(mean.var(), rel=1e-6)
    assert norm == pytest.approx(np.linalg.norm(mean), rel=1e-6)
    # The last-step source at the same point differs from the epoch mean.
    last_var, _ = grad_stats(resnet.parameters())
    assert last_var == pytest.approx(flats[-1].var(), rel=1e-9)
    assert last_var != pytest.approx(var, rel=1e-3)
    acc.reset()
    assert acc.steps == 0
    assert all(float(b.abs().sum()) == 0.0 for b in acc.buffers)


def test_sgd_step_leaves_gradients_unchanged(resnet: torch.nn.Module) -> None:
    """The loop may read last-step gradients after optimizer.step (weight decay is not applied to .grad)."""
    opt = torch.optim.SGD(resnet.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    ((x, y),) = digits_batches(1, 4)
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(resnet(x), y).backward()
    before = grad_stats(resnet.parameters())
    opt.step()
    assert grad_stats(resnet.parameters()) == before


def test_hand_computed_values_and_missing_grads() -> None:
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(2, 1))
    unused = torch.nn.Parameter(torch.zeros(4))
    frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    a.grad = torch.tensor([1.0, 2.0])
    b.grad = torch.tensor([[3.0], [-2.0]])
    # g = [1, 2, 3, -2, 0, 0, 0, 0]: mean 0.5, mean(g^2) = 18/8, var = 2.25 - 0.25 = 2.0
    var, norm = grad_stats([a, b, unused, frozen])
    assert var == pytest.approx(2.0, rel=1e-12)
    assert norm == pytest.approx(18**0.5, rel=1e-12)
    moments = grad_moments([a.grad, b.grad])
    assert moments.dtype == torch.float64
    assert moments.tolist() == [4.0, 4.0, 18.0]
    # Scaling by 1/2 (a mean over two steps): variance / 4, norm / 2.
    assert moments_to_stats([8.0, 4.0, 18.0], scale=0.5) == pytest.approx((18 / 32 - 1 / 16, 18**0.5 / 2))


def test_constant_gradient_has_zero_variance() -> None:
    p = torch.nn.Parameter(torch.zeros(1000))
    p.grad = torch.full((1000,), 0.1)
    var, norm = grad_stats([p])
    assert var == 0.0
    assert norm == pytest.approx(0.1 * 1000**0.5, rel=1e-6)


def test_errors() -> None:
    with pytest.raises(ValueError, match="no parameter requires a gradient"):
        grad_stats([torch.zeros(3)])
    acc = EpochGradAccumulator([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="no step"):
        acc.stats()
