"""AdaBatch, DiveBatch, GNS and the lr co-adaptation rules against hand-computed values (SPEC §5)."""

import json
import math

import pytest

from trainables.policies import POLICY_NAMES, make_policy, policy_options
from trainables.policies.divebatch import divebatch_update
from trainables.policies.gns import gns_target
from trainables.policies.noise import NoiseEMA, adascale_gain, simple_noise_scale, two_batch_estimates

BASE = {"train_loss": 1.0, "grad_var": 1.0, "grad_norm": 1.0}


def step(p, t, **measured):
    return p.step(epoch=t, **BASE, **measured)


# ---------------------------------------------------------------------------------------------- adabatch


def test_adabatch_doubles_every_t_epochs_up_to_the_cap():
    p = make_policy("adabatch", resize_every=3, b_max=300)
    recs = [step(p, t) for t in range(1, 13)]
    assert [r["batch_size"] for r in recs] == [64, 64, 128, 128, 128, 256, 256, 256, 300, 300, 300, 300]
    assert [t for t, r in enumerate(recs, 1) if r["decision"] == "increase"] == [3, 6, 9]
    assert recs[11]["decision"] == "hold"  # epoch 12 is a resize epoch, but B is already at b_max
    assert p.measurements(3) == frozenset() and recs[0]["grad_diversity"] is None
    assert policy_options("adabatch")["resize_every"] == 20 and policy_options("adabatch")["b_max"] == 2048


def test_adabatch_lr_doubling_is_linear_scaling():
    p = make_policy("adabatch", resize_every=2, lr_scaling="linear")
    recs = [step(p, t) for t in range(1, 6)]
    # lr_gain is the multiplier the epoch trained with: x2 from epoch 3, x4 from epoch 5.
    assert [r["lr_gain"] for r in recs] == [1.0, 1.0, 2.0, 2.0, 4.0]
    assert p.lr_scale == 4.0 and p.batch_size == 256


# ---------------------------------------------------------------------------------------------- divebatch


@pytest.mark.parametrize(
    "batch, n_delta, delta, b_max, expected",
    [
        (64, 1065.0, 0.1, 2048, 106),  # int(106.5): truncation
        (64, 300.0, 0.1, 2048, 64),  # 30 < B: never decreases
        (64, 1e6, 0.1, 2048, 2048),  # capped
        (64, math.nan, 0.1, 2048, 2048),  # NaN -> B_max
        (64, math.inf, 0.1, 2048, 2048),  # inf -> B_max
        (100, 15099.0, 0.01, 2048, 150),  # int(150.99)
    ],
)
def test_divebatch_update_rule(batch, n_delta, delta, b_max, expected):
    assert divebatch_update(batch, n_delta, delta, b_max) == expected


def test_divebatch_delta_defaults_by_dataset():
    assert make_policy("divebatch", dataset="cifar10").delta == 0.1
    assert make_policy("divebatch", dataset="cifar100").delta == 0.01
    assert make_policy("divebatch", dataset="digits").delta == 0.1
    assert make_policy("divebatch", dataset="cifar100", delta=0.05).delta == 0.05


def test_divebatch_per_sample_path_measures_only_on_resize_epochs():
    p = make_policy("divebatch", dataset="cifar10", resize_every=2, b_max=500)
    assert p.measurements(1) == frozenset() and p.measurements(2) == frozenset({"per_sample_diversity"})
    assert p.measure_settings() == {"micro_batches": 2, "per_sample_chunk": 32, "diversity_sum": "training"}
    r1 = step(p, 1)
    assert r1["batch_size"] == 64 and r1["grad_diversity"] is None
    # n = 1000 samples, Delta = 1.2345 -> n*Delta = 1234.5, 0.1 * 1234.5 = 123.45 -> 123.
    r2 = step(p, 2, grad_diversity=1.2345, n_samples=1000)
    assert (r2["decision"], r2["batch_size"]) == ("increase", 123)
    assert r2["grad_diversity"] == 1.2345 and r2["noise_scale"] == pytest.approx(1233.5)
    step(p, 3)
    # A smaller diversity never shrinks B.
    r4 = step(p, 4, grad_diversity=0.1, n_samples=1000)
    assert (r4["decision"], r4["batch_size"]) == ("hold", 123)
    r6 = [step(p, 5), step(p, 6, grad_diversity=math.nan, n_samples=1000)][1]
    assert (r6["decision"], r6["batch_size"]) == ("increase", 500)
    # At b_max nothing more is measured, and the resize epoch holds without inputs.
    assert p.measurements(8) == frozenset()
    assert [step(p, 7)["batch_size"], step(p, 8)["batch_size"]] == [500, 500]


def test_divebatch_noise_scale_estimator():
    p = make_policy("divebatch", dataset="cifar10", resize_every=1, estimator="noise_scale")
    assert p.measurements(1) == frozenset({"two_batch"})
    # B_simple = 1999 / 1 -> n*Delta = 2000 -> B = 200; Delta recorded as 2000 / n_samples.
    r = step(p, 1, noise_trace=1999.0, noise_sqnorm=1.0, n_samples=1000)
    assert (r["decision"], r["batch_size"]) == ("increase", 200)
    assert r["noise_scale"] == pytest.approx(1999.0) and r["grad_diversity"] == pytest.approx(2.0)
    # |G|^2 <= 0: B_simple = +inf -> the non-finite rule gives b_max.
    r = step(p, 2, noise_trace=5.0, noise_sqnorm=-0.5, n_samples=1000)
    assert r["batch_size"] == 2048


def test_divebatch_missing_measurement_names_it():
    p = make_policy("divebatch", resize_every=1)
    with pytest.raises(
        ValueError, match=r"divebatch at epoch 1 needs grad_diversity, n_samples \(measurement 'per_sample_diversity'\)"
    ):
        step(p, 1)


# ---------------------------------------------------------------------------------------------- gns


def test_two_batch_estimates_and_noise_scale_hand_computed():
    # |G|^2 = (64*2 - 16*5) / 48 = 1;  tr = (5 - 2) / (1/16 - 1/64) = 64.
    trace, sqnorm = two_batch_estimates(5.0, 16, 2.0, 64)
    assert trace == pytest.approx(64.0) and sqnorm == pytest.approx(1.0)
    assert simple_noise_scale(64.0, 1.0) == 64.0
    assert simple_noise_scale(1.0, 0.0) == math.inf and simple_noise_scale(-4.0, 2.0) == -2.0
    assert math.isnan(simple_noise_scale(math.nan, 1.0))
    with pytest.raises(ValueError, match="need 0 < b_small < b_big"):
        two_batch_estimates(1.0, 64, 1.0, 64)


def test_noise_ema_separate_averages():
    ema = NoiseEMA(0.5)
    assert math.isnan(ema.noise_scale())
    ema.update(100.0, 1.0)
    ema.update(300.0, 3.0)
    assert (ema.trace, ema.sqnorm) == (200.0, 2.0)  # separate EMAs, not an EMA of ratios
    ema.update(math.nan, 1.0)  # ignored
    assert ema.noise_scale() == 100.0
    with pytest.raises(ValueError, match="ema_decay=1.0"):
        NoiseEMA(1.0)


def test_gns_ema_clamp_and_cooldown():
    p = make_policy("gns", cooldown=2)
    assert p.measurements(1) == frozenset({"two_batch"})
    seq = [(100.0, 1.0), (300.0, 1.0), (300.0, 3.0), (30.0, 2.0), (1e6, 1.0), (1e6, 1.0), (-50.0, 10.0), (-50.0, 10.0)]
    recs = [step(p, t, noise_trace=tr, noise_sqnorm=sq, n_samples=640) for t, (tr, sq) in enumerate(seq, 1)]
    # EMA(0.5) of (trace, |G|^2): (100,1) (200,1) (250,2) (140,2) (500070,1.5) (750035,1.25) (374992.5,5.625) ...
    assert [r["noise_scale"] for r in recs[:4]] == pytest.approx([100.0, 200.0, 125.0, 70.0])
    assert [r["in_cooldown"] for r in recs] == [True, False, True, False, True, False, True, False]
    assert [r["decision"] for r in recs] == ["hold", "increase", "hold", "rollback", "hold", "increase", "hold", "hold"]
    assert [r["batch_size"] for r in recs] == [64, 200, 200, 70, 70, 1024, 1024, 1024]
    # Epoch 8: EMA trace = 0.5*(0.5*750035 - 25) - 25 > 0, still huge -> target 1024 = B -> hold.
    assert recs[7]["noise_scale"] > 1024


@pytest.mark.parametrize(
    "b_simple, expected", [(70.9, 70), (5.0, 32), (-3.0, 32), (5000.0, 1024), (math.inf, 1024), (math.nan, None)]
)
def test_gns_target_clamp(b_simple, expected):
    assert gns_target(b_simple, 32, 1024) == expected


# ---------------------------------------------------------------------------------------------- lr rules


def test_adascale_gain_formula():
    # var = 640/64 = 10, s = 2: (10 + 1) / (10/2 + 1) = 11/6.
    assert adascale_gain(640.0, 1.0, 128, 64) == pytest.approx(11 / 6)
    assert adascale_gain(0.0, 1.0, 128, 64) == 1.0  # no noise: no gain
    assert adascale_gain(5.0, 0.0, 256, 64) == 4.0  # noise only: gain = s
    assert adascale_gain(None, None, 256, 64) == 1.0  # nothing measured yet
    assert adascale_gain(640.0, 1.0, 32, 64) == pytest.approx((10 + 1) / (20 + 1))  # s = 1/2 < 1


def test_lr_rules_linear_and_sqrt_follow_the_batch():
    for rule, expected in (("linear", 1.5), ("sqrt", math.sqrt(1.5)), ("none", 1.0)):
        p = make_policy("deba", arch="resnet18", cooldown=1, lr_scaling=rule, decision_rule="either")
        step(p, 1)  # c = 1 > 0.6: rollback to 51
        assert p.lr_scale == pytest.approx({"linear": 51 / 64, "sqrt": math.sqrt(51 / 64), "none": 1.0}[rule])
        p = make_policy("gns", cooldown=0, lr_scaling=rule)
        step(p, 1, noise_trace=96.0, noise_sqnorm=1.0, n_samples=640)
        assert p.batch_size == 96 and p.lr_scale == pytest.approx(expected)
    fixed = make_policy("fixed", lr_scaling="linear")
    assert step(fixed, 1)["lr_gain"] == 1.0 and fixed.lr_scale == 1.0


def test_adascale_uses_ema_of_two_batch_statistics():
    p = make_policy("adabatch", resize_every=1, lr_scaling="adascale")
    assert p.measurements(1) == frozenset({"two_batch"})
    assert make_policy("fixed", lr_scaling="adascale").measurements(1) == frozenset()  # s is always 1
    r1 = step(p, 1, noise_trace=640.0, noise_sqnorm=1.0, n_samples=640)
    assert p.batch_size == 128 and p.lr_scale == pytest.approx(11 / 6) and r1["lr_gain"] == 1.0
    r2 = step(p, 2, noise_trace=1280.0, noise_sqnorm=1.0, n_samples=640)
    # EMA trace (640 + 1280)/2 = 960 -> var = 15; s = 4: (15 + 1)/(15/4 + 1) = 16/4.75.
    assert p.batch_size == 256 and p.lr_scale == pytest.approx(16 / 4.75)
    assert r2["lr_gain"] == pytest.approx(11 / 6)


# ---------------------------------------------------------------------------------------------- registry, resume


def test_registry_and_bad_options():
    assert POLICY_NAMES == ("fixed", "deba", "adabatch", "divebatch", "gns")
    for kwargs, message in [
        (
            {"name": "divebatch", "estimator": "exact"},
            "estimator='exact' is not allowed; expected one of 'per_sample', 'noise_scale'",
        ),
        ({"name": "gns", "lr_scaling": "cubic"}, "lr_scaling='cubic' is not allowed"),
        (
            {"name": "divebatch", "diversity_sum": "eval"},
            "diversity_sum='eval' is not allowed; expected one of 'training', 'per_sample'",
        ),
        ({"name": "adabatch", "factor": 1}, "factor=1 is not allowed; expected an integer >= 2"),
        ({"name": "gns", "micro_batches": 1}, "micro_batches=1 is not allowed; expected an integer >= 2"),
        ({"name": "divebatch", "delta": 0.0}, "delta=0.0 is not allowed; expected a finite number > 0"),
        ({"name": "gns", "b0": 2000}, "b0=2000 is not allowed; expected b_min <= b0 <= b_max"),
        (
            {"name": "deba", "arch": "resnet18", "ema_decay": 1.5},
            "ema_decay=1.5 is not allowed; expected a finite number >= 0 and < 1",
        ),
    ]:
        with pytest.raises(ValueError) as err:
            make_policy(**kwargs)
        assert message in str(err.value)


def measured_inputs(policy, t):
    """Deterministic signals plus whatever the policy asks for at epoch t."""
    inputs = {"train_loss": 2.0 / t, "grad_var": 0.5**t + (0.3 if t % 5 == 0 else 0.0), "grad_norm": 1.0 + 0.01 * t}
    needed = policy.measurements(t)
    if "per_sample_diversity" in needed:
        inputs.update(grad_diversity=0.03 * t, n_samples=5000)
    if "two_batch" in needed:
        inputs.update(noise_trace=40.0 * t + 7.0 * (t % 3), noise_sqnorm=0.5 + 0.1 * (t % 4), n_samples=5000)
    return inputs


@pytest.mark.parametrize(
    "name, options",
    [
        ("adabatch", {"resize_every": 3, "lr_scaling": "sqrt"}),
        ("divebatch", {"resize_every": 3}),
        ("divebatch", {"resize_every": 3, "estimator": "noise_scale", "lr_scaling": "linear"}),
        ("gns", {"cooldown": 3}),
        ("deba", {"cooldown": 3, "lr_scaling": "adascale"}),
    ],
)
def test_resume_gives_same_records(name, options):
    def run(policy, epochs):
        return [policy.step(epoch=t, **measured_inputs(policy, t)) for t in epochs]

    expected = run(make_policy(name, arch="resnet18", dataset="cifar10", **options), range(1, 16))
    assert len({r["batch_size"] for r in expected}) > 1  # the policy did move
    first = make_policy(name, arch="resnet18", dataset="cifar10", **options)
    head = run(first, range(1, 8))
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make_policy(name, arch="resnet18", dataset="cifar10", **options)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict() and resumed.lr_scale == first.lr_scale
    assert head + run(resumed, range(8, 16)) == expected
