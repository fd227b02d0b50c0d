"""DEBA and fixed policies against hand-computed sequences (SPEC §1-2)."""

import json
import math

import pytest

from trainables.policies import POLICY_NAMES, make_policy, policy_options, signal_reading
from trainables.policies.deba import decide_deba
from trainables.policies.signal_tracker import SignalTracker, relative_change


def shrinking_variance_inputs(epoch: int) -> dict:
    """Signals that ask for an increase from epoch 2 on: variance x0.25 per epoch (c <= 0.4), constant norm and loss."""
    return {"train_loss": 1.0, "grad_var": 0.25**epoch, "grad_norm": 2.0}


def run(policy, inputs_for_epoch, epochs, start=1):
    return [policy.step(epoch=t, **inputs_for_epoch(t)) for t in range(start, start + epochs)]


def test_paper_growth_path_with_cooldown_10():
    p = make_policy("deba", arch="resnet18")
    recs = run(p, shrinking_variance_inputs, 80)
    changes = [(t, r["batch_size"]) for t, r in enumerate(recs, 1) if r["decision"] != "hold"]
    assert changes == [(10, 96), (20, 144), (30, 216), (40, 324), (50, 486), (60, 729), (70, 1024)]
    assert all(r["decision"] == "increase" for r in recs if r["batch_size"] != 64 and r["decision"] != "hold")
    # At b_max a would-be increase changes nothing: recorded as hold, outside cooldown.
    assert recs[79]["decision"] == "hold" and recs[79]["batch_size"] == 1024
    assert recs[79]["in_cooldown"] is False
    # Epochs 1..9 are cooldown (t_last = 0), epoch 10 is not; 11..19 again are.
    assert [r["in_cooldown"] for r in recs[:11]] == [True] * 9 + [False, True]
    assert p.batch_size == 1024


def test_cooldown_timing_short():
    p = make_policy("deba", arch="resnet18", cooldown=3)
    recs = run(p, shrinking_variance_inputs, 7)
    assert [r["decision"] for r in recs] == ["hold", "hold", "increase", "hold", "hold", "increase", "hold"]
    assert [r["batch_size"] for r in recs] == [64, 64, 96, 96, 96, 144, 144]
    assert [r["in_cooldown"] for r in recs] == [True, True, False, True, True, False, True]


def test_cooldown_zero_decides_every_epoch():
    p = make_policy("deba", arch="resnet18", cooldown=0, decision_rule="either")
    # Epoch 1: c = v/median([v]) = 1 > 0.6 -> rollback under the "either" rule.
    recs = run(p, shrinking_variance_inputs, 3)
    assert [r["decision"] for r in recs] == ["rollback", "increase", "increase"]
    assert [r["batch_size"] for r in recs] == [51, 76, 114]


def test_rollback_path_and_lower_bound():
    # Rising variance: c = v_t / median > 0.6 -> rollback each decision epoch (cooldown 1 = every epoch).
    p = make_policy("deba", arch="resnet18", cooldown=1, decision_rule="either")
    recs = run(p, lambda t: {"train_loss": 1.0, "grad_var": 2.0**t, "grad_norm": 2.0}, 5)
    assert [r["batch_size"] for r in recs] == [51, 40, 32, 32, 32]
    assert [r["decision"] for r in recs] == ["rollback", "rollback", "rollback", "hold", "hold"]


def test_rounding_floors_and_caps():
    p = make_policy("deba", arch="resnet18", b0=65, cooldown=1, b_max=100, decision_rule="either")
    recs = run(p, shrinking_variance_inputs, 3, start=1)
    # epoch 1: c = 1 -> rollback floor(0.8*65)=52; then floor(1.5*52)=78; then min(117, 100)=100.
    assert [r["batch_size"] for r in recs] == [52, 78, 100]


def test_signals_hand_computed():
    t = SignalTracker(signal_reading({"window": 3}))
    s1 = t.update(train_loss=1.0, grad_var=1.0, grad_norm=2.0)
    assert (s1.grad_norm_variation, s1.loss_variation) == (0.0, 0.0)
    assert s1.confidence == pytest.approx(1.0)
    s2 = t.update(train_loss=0.8, grad_var=2.0, grad_norm=3.0)
    assert s2.grad_norm_variation == pytest.approx(0.5)
    assert s2.loss_variation == pytest.approx(0.2)
    assert s2.confidence == pytest.approx(2.0 / 1.5)  # median of [1, 2]
    s3 = t.update(train_loss=0.6, grad_var=3.0, grad_norm=1.5)
    assert s3.grad_norm_variation == pytest.approx(0.5)
    assert s3.loss_variation == pytest.approx(0.25)
    assert s3.confidence == pytest.approx(1.5)  # median of [1, 2, 3]
    assert relative_change(-2.0, -4.0) == pytest.approx(0.5)  # |prev| in the denominator


@pytest.mark.parametrize(
    "reference, includes_current, expected",
    [
        # variances 1, 2, 6, 10 with window 3 and eps 0 (SPEC §1):
        ("median", True, [1.0, 2 / 1.5, 6 / 2, 10 / 6]),  # R = [1], [1, 2], [1, 2, 6], [2, 6, 10]
        ("mean", True, [1.0, 2 / 1.5, 6 / 3, 10 / 6]),  # means 1, 1.5, 3, 6
        ("median", False, [1.0, 2 / 1, 6 / 1.5, 10 / 2]),  # R = {v1} at t = 1, then [1], [1, 2], [1, 2, 6]
        ("mean", False, [1.0, 2 / 1, 6 / 1.5, 10 / 3]),  # means 1, 1.5, 3
    ],
)
def test_confidence_reference_hand_computed(reference, includes_current, expected):
    options = {"window": 3, "confidence_eps": 0.0}
    options |= {"confidence_reference": reference, "confidence_includes_current": includes_current}
    tracker = SignalTracker(signal_reading(options))
    got = [tracker.update(1.0, v, 1.0).confidence for v in (1.0, 2.0, 6.0, 10.0)]
    assert got == pytest.approx(expected, rel=1e-12)
    # The same numbers through the policy, which records what its tracker computed.
    policy = make_policy("deba", arch="resnet18", **options)
    recs = [policy.step(epoch=t + 1, train_loss=1.0, grad_var=v, grad_norm=1.0) for t, v in enumerate((1, 2, 6, 10))]
    assert [r["confidence"] for r in recs] == pytest.approx(expected, rel=1e-12)


def test_confidence_with_a_zero_or_non_finite_reference_is_nan():
    tracker = SignalTracker(signal_reading({"confidence_eps": 0.0, "confidence_includes_current": False}))
    assert math.isnan(tracker.update(1.0, 0.0, 1.0).confidence)  # R_1 = {0}: 0 / 0
    tracker = SignalTracker(signal_reading({"confidence_reference": "mean"}))
    tracker.update(1.0, 1e308, 1.0)
    assert math.isnan(tracker.update(1.0, 1e308, 1.0).confidence)  # the mean of [1e308, 1e308] overflows


def test_window_vs_full_history_confidence():
    window = SignalTracker(signal_reading({"window": 3}))
    full = SignalTracker(signal_reading({"window": 3, "full_history": True}))
    for v in [1.0, 2.0, 3.0, 4.0]:
        window.update(1.0, v, 1.0)
        full.update(1.0, v, 1.0)
    # window [3, 4, 10] -> median 4; full [1, 2, 3, 4, 10] -> median 3
    assert window.update(1.0, 10.0, 1.0).confidence == pytest.approx(2.5)
    assert full.update(1.0, 10.0, 1.0).confidence == pytest.approx(10.0 / 3.0)


def test_full_history_option_changes_decision():
    # Variance history 8, 8, 8, 8, 1, 1, 1, 1, 3: window 3 sees [1, 1, 3] -> c = 3 (rollback);
    # full history median is 3 -> c = 1 (still > 0.6, rollback) -- use theta_conf 2 to separate them.
    seq = [8, 8, 8, 8, 1, 1, 1, 1, 3]
    decisions = {}
    for full in (False, True):
        p = make_policy(
            "deba", arch="resnet18", window=3, full_history=full, cooldown=9, theta_conf=2.0, decision_rule="either"
        )
        recs = run(p, lambda t: {"train_loss": 1.0, "grad_var": float(seq[t - 1]), "grad_norm": 2.0}, 9)
        decisions[full] = (recs[-1]["decision"], recs[-1]["confidence"])
    assert decisions[False][0] == "rollback" and decisions[False][1] == pytest.approx(3.0)
    assert decisions[True][0] == "increase" and decisions[True][1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "confidence, d_norm, d_loss, either, both",
    [
        (0.5, 0.1, 0.1, "increase", "increase"),  # all stable
        (0.7, 0.1, 0.1, "rollback", "hold"),  # noisy but stable gradients
        (0.5, 0.9, 0.1, "rollback", "hold"),  # quiet but unstable gradient norm
        (0.7, 0.9, 0.1, "rollback", "rollback"),  # both symptoms
        (0.5, 0.1, 0.9, "hold", "hold"),  # unstable loss only
        (0.6, 0.1, 0.1, "hold", "hold"),  # c == theta_conf is neither < nor >
        (math.nan, 0.1, 0.1, "hold", "hold"),  # no information
    ],
)
def test_decision_rules(confidence, d_norm, d_loss, either, both):
    assert decide_deba("either", confidence, d_norm, d_loss, 0.55, 0.6) == either
    assert decide_deba("both", confidence, d_norm, d_loss, 0.55, 0.6) == both


def test_thresholds_table_universal_and_override():
    assert (make_policy("deba", arch="resnet50").theta_stab, make_policy("deba", arch="resnet50").theta_conf) == (
        12.0,
        0.8,
    )
    u = make_policy("deba", arch="resnet50", thresholds="universal")
    assert (u.theta_stab, u.theta_conf) == (0.3, 0.5)
    o = make_policy("deba", arch="tiny_cnn", theta_stab=0.2, theta_conf=0.9)
    assert (o.theta_stab, o.theta_conf) == (0.2, 0.9)


def test_resume_mid_cooldown_gives_same_records():
    def inputs(t):
        return {"train_loss": 2.0 / t, "grad_var": 0.5**t + (0.3 if t % 7 == 0 else 0.0), "grad_norm": 1.0 + 0.01 * t}

    straight = make_policy("deba", arch="resnet18", cooldown=4)
    expected = run(straight, inputs, 20)
    first = make_policy("deba", arch="resnet18", cooldown=4)
    head = run(first, inputs, 6)  # epoch 4 changed the batch, so 5..7 are cooldown
    assert head[3]["decision"] != "hold" and head[5]["in_cooldown"]
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make_policy("deba", arch="resnet18", cooldown=4)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict()
    assert head + run(resumed, inputs, 14, start=7) == expected


def test_fixed_holds_and_records_signals():
    p = make_policy("fixed", b0=128)
    recs = run(p, lambda t: {"train_loss": 1.0 / t, "grad_var": float(t), "grad_norm": 1.0}, 3)
    assert [r["batch_size"] for r in recs] == [128, 128, 128]
    assert {r["decision"] for r in recs} == {"hold"}
    assert recs[1]["loss_variation"] == pytest.approx(0.5)
    assert recs[2]["confidence"] == pytest.approx(1.5)  # 3 / median(1, 2, 3)
    assert recs[0]["grad_diversity"] is None and p.lr_scale == 1.0 and p.measurements(1) == frozenset()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "dbea"}, "method='dbea' is not allowed; expected one of 'fixed', 'deba'"),
        ({"cooldwn": 3}, "unknown policy 'deba' option(s) 'cooldwn'; allowed: alpha, b0"),
        ({"b_min": 128, "b0": 64}, "b0=64 is not allowed; expected b_min <= b0 <= b_max"),
        ({"b_min": 2048}, "b0=64 is not allowed; expected b_min <= b0 <= b_max"),
        ({"decision_rule": "strict"}, "decision_rule='strict' is not allowed; expected one of 'both', 'either'"),
        ({"signal_source": "mean"}, "signal_source='mean' is not allowed; expected one of 'last_step', 'epoch_mean'"),
        ({"alpha": 0.9}, "alpha=0.9 is not allowed; expected a finite number > 1"),
        ({"beta": 1.2}, "beta=1.2 is not allowed; expected a finite number > 0 and < 1"),
        ({"window": 0}, "window=0 is not allowed; expected an integer >= 1"),
        ({"cooldown": 2.5}, "cooldown=2.5 is not allowed; expected an integer >= 0"),
        ({"theta_stab": -1.0}, "theta_stab=-1.0 is not allowed; expected a finite number > 0 or null"),
        ({"arch": "timm/convnext_atto"}, "arch='timm/convnext_atto' has no Table 1 thresholds"),
    ],
)
def test_bad_options_name_the_field(kwargs, message):
    kwargs = {"name": "deba", "arch": "resnet18", **kwargs}
    with pytest.raises(ValueError) as err:
        make_policy(**kwargs)
    assert message in str(err.value)


def test_out_of_order_epoch_and_wrong_state():
    p = make_policy("fixed")
    with pytest.raises(ValueError, match="epoch=2 out of order"):
        p.step(epoch=2, train_loss=1.0, grad_var=1.0, grad_norm=1.0)
    with pytest.raises(ValueError, match="cannot load"):
        p.load_state_dict(make_policy("deba", arch="resnet18").state_dict())


def test_registry_and_options_are_public():
    assert POLICY_NAMES[:2] == ("fixed", "deba")
    assert policy_options("deba")["cooldown"] == 10 and policy_options("deba")["b_max"] == 1024


@pytest.mark.slow
def test_policies_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, trainables.policies; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ SPEC §2 options: rule, eps, no-op cooldown


def test_confidence_eps_hand_computed():
    # Tiny variances: with eps = 1e-8, c = 1e-9 / (1e-9 + 1e-8) = 1/11; scale-free (eps = 0) c = 1.
    default = make_policy("deba", arch="resnet18")
    scale_free = make_policy("deba", arch="resnet18", confidence_eps=0.0)
    big_eps = make_policy("deba", arch="resnet18", confidence_eps=1e-9)
    inputs = {"train_loss": 1.0, "grad_var": 1e-9, "grad_norm": 1.0}
    assert default.step(epoch=1, **inputs)["confidence"] == pytest.approx(1 / 11)
    assert scale_free.step(epoch=1, **inputs)["confidence"] == 1.0
    assert big_eps.step(epoch=1, **inputs)["confidence"] == pytest.approx(0.5)


def test_confidence_eps_zero_with_zero_median_holds():
    p = make_policy("deba", arch="resnet18", confidence_eps=0.0, cooldown=0, decision_rule="either")
    recs = run(p, lambda t: {"train_loss": 1.0, "grad_var": 0.0, "grad_norm": 1.0}, 2)
    assert all(math.isnan(r["confidence"]) for r in recs)
    assert [r["decision"] for r in recs] == ["hold", "hold"] and p.batch_size == 64
    # Window [0, 0, 5] has median 0 -> c = NaN, not inf.
    p = make_policy("deba", arch="resnet18", confidence_eps=0.0, cooldown=0, window=3)
    recs = run(p, lambda t: {"train_loss": 1.0, "grad_var": [0.0, 0.0, 5.0][t - 1], "grad_norm": 1.0}, 3)
    assert math.isnan(recs[2]["confidence"]) and recs[2]["decision"] == "hold"


def test_cooldown_on_noop():
    # Increase requested at every decision epoch; b_max = 96 is reached at epoch 2 (cooldown 2).
    for noop, expected in (
        (False, ["hold", "increase", "hold", "hold", "hold", "hold"]),
        (True, ["hold", "increase", "hold", "increase", "hold", "increase"]),
    ):
        p = make_policy("deba", arch="resnet18", cooldown=2, b_max=96, cooldown_on_noop=noop)
        recs = run(p, shrinking_variance_inputs, 6)
        assert [r["decision"] for r in recs] == expected, noop
        assert [r["batch_size"] for r in recs] == [64, 96, 96, 96, 96, 96]
        # Without the option a no-op decision starts no cooldown: epochs 4..6 decide (outside cooldown).
        cooldowns = [r["in_cooldown"] for r in recs]
        assert cooldowns == (
            [True, False, True, False, False, False] if not noop else [True, False, True, False, True, False]
        )


def test_default_rule_is_both():
    assert policy_options("deba")["decision_rule"] == "both"
    assert policy_options("deba")["confidence_eps"] == 1e-8 and policy_options("deba")["cooldown_on_noop"] is False


def _reference_deba(
    seq,
    *,
    rule,
    eps,
    noop,
    cooldown,
    window,
    theta_stab,
    theta_conf,
    reference="median",
    includes_current=True,
    b0=64,
    b_min=32,
    b_max=1024,
    alpha=1.5,
    beta=0.8,
):
    """SPEC §1-2 written out independently of the policy classes: (decision, B_next, c) per epoch."""
    out, variances, prev_n, prev_l, t_last, batch = [], [], None, None, 0, b0
    for t, (loss, var, norm) in enumerate(seq, 1):
        d_n = 0.0 if prev_n is None else abs(norm - prev_n) / (abs(prev_n) + 1e-8)
        d_l = 0.0 if prev_l is None else abs(loss - prev_l) / (abs(prev_l) + 1e-8)
        before = variances
        variances = (variances + [var])[-window:]
        ref_window = variances if includes_current else (before or [var])
        srt, k = sorted(ref_window), len(ref_window)
        if reference == "mean":
            ref = sum(ref_window) / k
        else:
            ref = srt[k // 2] if k % 2 else (srt[k // 2 - 1] + srt[k // 2]) / 2
        c = var / (ref + eps) if ref + eps != 0 else math.nan
        prev_n, prev_l = norm, loss
        decision = "hold"
        if t - t_last >= cooldown and not math.isnan(c):
            if c < theta_conf and d_n < theta_stab and d_l < theta_stab:
                decision = "increase"
            elif (c > theta_conf and d_n >= theta_stab) if rule == "both" else (c > theta_conf or d_n >= theta_stab):
                decision = "rollback"
        if decision != "hold":
            new = (
                min(math.floor(alpha * batch), b_max)
                if decision == "increase"
                else max(math.floor(beta * batch), b_min)
            )
            if new == batch and not noop:
                decision = "hold"
            else:
                t_last, batch = t, new
        out.append((decision, batch, c))
    return out


@pytest.mark.parametrize("rule", ["both", "either"])
@pytest.mark.parametrize("noop", [False, True])
@pytest.mark.parametrize("eps", [1e-8, 0.0])
@pytest.mark.parametrize(
    "reference, includes_current", [("median", True), ("mean", True), ("median", False), ("mean", False)]
)
def test_deba_matches_an_independent_reference_on_random_sequences(rule, noop, eps, reference, includes_current):
    import random

    rng = random.Random(f"{rule}-{noop}-{eps}-{reference}-{includes_current}")  # str seeds: same in every process
    for trial in range(20):
        n = rng.randint(5, 60)
        # Variance near 1e-8 so that eps matters; zeros so that a zero median occurs.
        seq = [
            (rng.uniform(0.5, 2.0), rng.choice([0.0, rng.uniform(0, 3e-8)]), rng.uniform(0.5, 1.5)) for _ in range(n)
        ]
        opts = dict(
            confidence_reference=reference,
            confidence_includes_current=includes_current,
            cooldown=rng.randint(0, 4),
            window=rng.randint(1, 6),
            theta_stab=rng.uniform(0.1, 0.6),
            theta_conf=rng.uniform(0.3, 1.5),
            b_max=rng.choice([96, 216, 1024]),
        )
        ref_opts = {k: v for k, v in opts.items() if not k.startswith("confidence_")}
        expected = _reference_deba(
            seq, rule=rule, eps=eps, noop=noop, reference=reference, includes_current=includes_current, **ref_opts
        )
        cut = rng.randint(1, n)  # resume from a JSON round trip of the state after `cut` epochs
        first = make_policy(
            "deba", arch="resnet18", decision_rule=rule, confidence_eps=eps, cooldown_on_noop=noop, **opts
        )
        got = []
        for t, (loss, var, norm) in enumerate(seq[:cut], 1):
            got.append(first.step(epoch=t, train_loss=loss, grad_var=var, grad_norm=norm))
        resumed = make_policy(
            "deba", arch="resnet18", decision_rule=rule, confidence_eps=eps, cooldown_on_noop=noop, **opts
        )
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        for t, (loss, var, norm) in enumerate(seq[cut:], cut + 1):
            got.append(resumed.step(epoch=t, train_loss=loss, grad_var=var, grad_norm=norm))
        for t, (r, (decision, batch, c)) in enumerate(zip(got, expected), 1):
            assert (r["decision"], r["batch_size"]) == (decision, batch), (trial, t, opts)
            assert (math.isnan(r["confidence"]) and math.isnan(c)) or r["confidence"] == pytest.approx(c, rel=1e-12)


def test_the_test_models_have_calibrated_thresholds_and_others_must_give_them():
    assert (make_policy("deba", arch="tiny_cnn").theta_stab, make_policy("deba", arch="tiny_cnn").theta_conf) == (
        0.29,
        1.0,
    )
    with pytest.raises(ValueError, match="calibration.json for --thresholds.*--policy-opt theta_stab"):
        make_policy("deba", arch="timm/resnet10t")
