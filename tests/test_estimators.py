"""Gradient-diversity and two-batch estimators: hand-computed values, brute force, and agreement (SPEC §5)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.estimators import DiversityMeter, TwoBatchMeter, eval_mode, has_batchnorm, per_sample_grad_sq_norms
from trainables.models import build_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the 2 shared cores are often busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ce_closure(model):
    """The loop's loss: mean cross-entropy, returned with the logits."""

    def loss_and_logits(a, b):
        out = model(a)
        return F.cross_entropy(out, b), out

    return loss_and_logits


def brute_force_sq_norms(model, x, y):
    """One backward per sample: the definition of the per-sample gradient norms."""
    out = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append(sum(p.grad.double().square().sum() for p in model.parameters() if p.grad is not None))
    model.zero_grad(set_to_none=True)
    return torch.stack(out)


def clustered_data(n, seed=0):
    """Class-dependent means plus noise: a mean gradient well above the noise at initialisation."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(10, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return mu[y] + 0.5 * torch.randn(n, 3, 32, 32, generator=g), y


def test_per_sample_norms_equal_brute_force_on_tiny_mlp():
    torch.manual_seed(0)
    model = build_model("tiny_mlp", 10)
    x, y = clustered_data(23)
    fast = per_sample_grad_sq_norms(model, x, y, chunk_size=5)  # 5 does not divide 23: a ragged last chunk
    assert fast.dtype == torch.float64 and fast.shape == (23,)
    torch.testing.assert_close(fast, brute_force_sq_norms(model, x, y), rtol=1e-5, atol=0)


def test_bn_eval_approximation_on_tiny_cnn_restores_modes_and_stats():
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 10)
    assert has_batchnorm(model) and not has_batchnorm(build_model("tiny_mlp", 10))
    x, y = clustered_data(6)
    model.train()
    model(x)  # some running statistics that differ from the initial ones
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    meter = DiversityMeter(model, chunk_size=4)
    assert meter.estimator == "per_sample_bn_eval"
    F.cross_entropy(model(x), y).backward()
    stats_after_step = {k: v.clone() for k, v in model.state_dict().items()}
    meter.add(x, y)
    # The per-sample pass changed neither the modes nor the running statistics.
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, stats_after_step[k], rtol=0, atol=0)
    assert any(not torch.equal(stats[k], stats_after_step[k]) for k in stats if "running" in k)
    # The approximation is exactly the per-sample gradient of the eval-mode network.
    with eval_mode(model):
        expected = brute_force_sq_norms(model, x, y)
    assert all(m.training for m in model.modules())
    torch.testing.assert_close(meter.sq_sum, expected.sum(), rtol=1e-5, atol=0)
    assert meter.result()["n_samples"] == 6 and math.isfinite(meter.result()["grad_diversity"])


def test_consistent_denominator_is_the_eval_network_diversity():
    torch.manual_seed(3)
    x, y = clustered_data(12)
    # Without BatchNorm the two denominators are the same quantity.
    mlp = build_model("tiny_mlp", 10)
    results = {}
    for choice in ("training", "per_sample"):
        meter = DiversityMeter(mlp, chunk_size=5, diversity_sum=choice)
        mlp.zero_grad(set_to_none=True)
        F.cross_entropy(mlp(x), y).backward()
        meter.add(x, y)
        results[choice] = meter.result()["grad_diversity"]
        assert meter.estimator == "per_sample"
    assert results["per_sample"] == pytest.approx(results["training"], rel=1e-5)
    # With BatchNorm, "per_sample" is exactly Delta of the eval-mode network (brute force below).
    cnn = build_model("tiny_cnn", 10)
    cnn(x)  # running statistics away from their initial values
    meter = DiversityMeter(cnn, chunk_size=5, diversity_sum="per_sample")
    assert meter.estimator == "per_sample_bn_eval_consistent"
    F.cross_entropy(cnn(x), y).backward()
    meter.add(x, y)
    with eval_mode(cnn):
        numerator = brute_force_sq_norms(cnn, x, y).sum().item()
        F.cross_entropy(cnn(x), y, reduction="sum").backward()
        denominator = sum(p.grad.double().square().sum().item() for p in cnn.parameters())
    assert meter.result()["grad_diversity"] == pytest.approx(numerator / denominator, rel=1e-4)
    with pytest.raises(ValueError, match="diversity_sum='eval' is not allowed"):
        DiversityMeter(cnn, diversity_sum="eval")


def test_diversity_hand_computed_on_zero_linear_model():
    # W = 0, b = 0, 2 classes: p - e_y = +-(1/2, -1/2), so |g_i|^2 = |p - e_y|^2 (|x_i|^2 + 1) = 1 for
    # unit x_i. Samples (e1, 0), (e2, 1), (e1, 0): sum of gradients W = [[-1, .5], [1, -.5]],
    # b = [-.5, .5] -> |sum|^2 = 2.5 + 0.5 = 3; Delta = 3 / 3 = 1.
    model = nn.Linear(2, 2)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    meter = DiversityMeter(model)
    assert meter.estimator == "per_sample"
    F.cross_entropy(model(x), y).backward()
    meter.add(x, y)
    assert meter.sq_sum.item() == pytest.approx(3.0)
    assert meter.result() == {"grad_diversity": pytest.approx(1.0), "n_samples": 3}


def test_diversity_meter_matches_brute_force_across_optimizer_steps():
    torch.manual_seed(1)
    model = build_model("tiny_mlp", 10)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    x, y = clustered_data(48)
    meter = DiversityMeter(model, chunk_size=16)
    numerator, grad_sum = 0.0, [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for xb, yb in zip(x.split(16), y.split(16)):
        per_sample = brute_force_sq_norms(model, xb, yb)  # at this step's parameters
        numerator += per_sample.sum().item()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb, reduction="sum").backward()
        grad_sum = [s + p.grad.double() for s, p in zip(grad_sum, params)]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        meter.add(xb, yb)
        opt.step()
    expected = numerator / sum(s.square().sum().item() for s in grad_sum)
    result = meter.result()
    assert result["n_samples"] == 48
    assert result["grad_diversity"] == pytest.approx(expected, rel=1e-5)


class Quadratic(nn.Module):
    """loss = mean_i 0.5 |w - x_i|^2, so the per-sample gradient at w = 0 is -x_i."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def loss_and_logits(self, xb, yb):
        return 0.5 * (self.w - xb).square().sum(dim=1).mean(), xb


def test_two_batch_meter_hand_computed():
    model = Quadratic()
    meter = TwoBatchMeter([model.w], micro_batches=2)
    # Step 1: micro-batch means -(2, 0) and -(0, 2): |g_b|^2 = 4, 4 (b = 2); batch mean -(1, 1): |g_B|^2 = 2.
    # tr = (4 - 2) / (1/2 - 1/4) = 8; |G|^2 = (4*2 - 2*4) / 2 = 0 for both micro-batches.
    x1 = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    loss, logits = meter.backward(model.loss_and_logits, x1, torch.zeros(4))
    assert loss.item() == pytest.approx(2.25) and torch.equal(logits, x1)  # (2.5 + 2) / 2
    torch.testing.assert_close(model.w.grad, torch.tensor([-1.0, -1.0]))
    assert meter.result() == {"noise_trace": pytest.approx(8.0), "noise_sqnorm": pytest.approx(0.0), "n_samples": 4}
    # Step 2, uneven split (2 + 1): |g_1|^2 = 1 (b=2), |g_2|^2 = 32 (b=1), |g_B|^2 = 4 + 16/9 = 52/9 (B=3).
    # tr: ((1 - 52/9)/(1/6) + (32 - 52/9)/(2/3)) / 2 = 16/3;  |G|^2: ((52/3 - 2)/1 + (52/3 - 32)/2) / 2 = 4.
    model.w.grad = None
    meter.backward(model.loss_and_logits, torch.tensor([[2.0, 0.0], [0.0, 0.0], [4.0, 4.0]]), torch.zeros(3))
    torch.testing.assert_close(model.w.grad, torch.tensor([-2.0, -4.0 / 3.0]))
    # Epoch result: mean over the two steps.
    assert meter.result() == {
        "noise_trace": pytest.approx((8.0 + 16.0 / 3.0) / 2),
        "noise_sqnorm": pytest.approx(2.0),
        "n_samples": 7,
    }


def test_two_batch_gradient_equals_unsplit_gradient_on_tiny_mlp():
    torch.manual_seed(2)
    model = build_model("tiny_mlp", 10)
    params = list(model.parameters())
    x, y = clustered_data(30)
    F.cross_entropy(model(x), y).backward()
    reference = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    meter = TwoBatchMeter(params, micro_batches=4)
    loss, logits = meter.backward(ce_closure(model), x, y)
    for p, r in zip(params, reference):
        torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-7)
    assert loss.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)
    assert logits.shape == (30, 10)


def test_per_sample_and_noise_scale_agree_within_sampling_error():
    """(a) exact n*Delta vs (b) 1 + B_simple at fixed parameters on a BatchNorm-free model.

    Over a population of n samples with mean gradient S and T = mean_i |g_i|^2 - |S|^2, n*Delta is
    exactly 1 + T/|S|^2. Batches drawn without replacement give E[tr estimate] = T n/(n-1) and
    E[|G|^2 estimate] = |S|^2 - T/(n-1) (finite-population correction), which the test checks within
    four standard errors over independent shuffles, then compares the two noise scales.
    """
    torch.manual_seed(0)
    model = build_model("tiny_mlp", 10)
    params = list(model.parameters())
    n, batch, passes = 1024, 64, 30
    x, y = clustered_data(n)
    sq = per_sample_grad_sq_norms(model, x, y, chunk_size=256)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    sum_sq = sum(p.grad.double().square().sum() for p in params).item()
    n_delta = n * sq.sum().item() / sum_sq
    mean_sq = sum_sq / n**2
    trace_pop = sq.sum().item() / n - mean_sq
    assert n_delta == pytest.approx(1 + trace_pop / mean_sq, rel=1e-9)

    g = torch.Generator().manual_seed(1)
    results = []
    for _ in range(passes):
        meter = TwoBatchMeter(params, micro_batches=2)
        perm = torch.randperm(n, generator=g)
        for idx in perm.split(batch):
            model.zero_grad(set_to_none=True)
            meter.backward(ce_closure(model), x[idx], y[idx])
        results.append(meter.result())
    traces = torch.tensor([r["noise_trace"] for r in results], dtype=torch.float64)
    sqnorms = torch.tensor([r["noise_sqnorm"] for r in results], dtype=torch.float64)
    se_trace, se_sq = traces.std().item() / passes**0.5, sqnorms.std().item() / passes**0.5
    assert abs(traces.mean().item() - trace_pop * n / (n - 1)) < 4 * se_trace
    assert abs(sqnorms.mean().item() - (mean_sq - trace_pop / (n - 1))) < 4 * se_sq
    b_simple = traces.mean().item() / sqnorms.mean().item()
    # The two noise scales differ by sampling error (4 relative standard errors of the ratio) plus the
    # finite-population correction computed above (about 2% here).
    rel_se = se_trace / traces.mean().item() + se_sq / sqnorms.mean().item()
    expected_b = (trace_pop * n / (n - 1)) / (mean_sq - trace_pop / (n - 1))
    assert abs((1 + b_simple) - (1 + expected_b)) < 4 * rel_se * (1 + expected_b)
    assert (1 + b_simple) == pytest.approx(n_delta, rel=4 * rel_se + abs(expected_b - (n_delta - 1)) / n_delta)
    assert 5 < n_delta < 100  # a regime where both estimates are informative


def test_two_batch_step_builds_no_tensor_from_host_data(monkeypatch):
    """A tensor built from Python data on the device is a host->device copy, which synchronises the
    host on CUDA: the per-step path must keep its coefficients as Python scalars."""
    model = Quadratic()
    meter = TwoBatchMeter([model.w], micro_batches=2)
    calls = []
    real_tensor = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: calls.append((a, k)) or real_tensor(*a, **k))
    meter.backward(model.loss_and_logits, real_tensor([[2.0, 0.0], [0.0, 0.0], [4.0, 4.0]]), torch.zeros(3))
    monkeypatch.undo()
    assert calls == []
    # Same uneven-split values as test_two_batch_meter_hand_computed's step 2.
    assert meter.result() == {
        "noise_trace": pytest.approx(16.0 / 3.0),
        "noise_sqnorm": pytest.approx(4.0),
        "n_samples": 3,
    }


class SharedGrad(nn.Module):
    """Two parameters whose gradients autograd.grad returns as one and the same tensor (w1 + w2)."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros(2))
        self.w2 = nn.Parameter(torch.zeros(2))

    def loss_and_logits(self, xb, yb):
        return 0.5 * (self.w1 + self.w2 - xb).square().sum(dim=1).mean(), xb


def test_two_batch_gradient_with_aliased_autograd_outputs():
    model = SharedGrad()
    meter = TwoBatchMeter([model.w1, model.w2], micro_batches=2)
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    meter.backward(model.loss_and_logits, x, torch.zeros(4))
    # d/dw of the batch-mean loss at w = 0 is -mean(x) = -(1, 1) for both parameters.
    torch.testing.assert_close(model.w1.grad, torch.tensor([-1.0, -1.0]))
    torch.testing.assert_close(model.w2.grad, torch.tensor([-1.0, -1.0]))
    assert model.w1.grad.data_ptr() != model.w2.grad.data_ptr()
