"""Null control and threshold fidelity of the readings (SPEC §4), against hand-computed numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.fidelity import signal_readings, threshold_fidelity
from analysis.null_control import null_distances, replay_path
from analysis.report import analyse, to_json
from analysis.trajectory import paper_path, trajectory_distance
from analysis.trials import trial_summary
from benchmarks.synthetic_store import run_row, trial_rows, write_trial
from trainables.policies import policy_options

# theta_conf 2 with c ~ 1 and dN = dL = 0: every decision outside cooldown is an increase.
GROW = {**policy_options("deba"), "theta_stab": 0.5, "theta_conf": 2.0}
# theta_conf 0.5 with c ~ 1: never an increase; dN = 0 is stable, so never a rollback either.
HOLD = {**GROW, "theta_conf": 0.5}


def test_replay_path_runs_the_policys_own_decisions():
    calm = np.tile([0.0, 0.0, 1.0], (25, 1))  # dN, dL, c
    assert replay_path("deba", "resnet18", {**GROW, "cooldown": 1}, calm[:5]) == [64, 96, 144, 216, 324]
    # Cooldown 10 (t_last = 0): the first change decides at epoch 10, then every 10 epochs: the paper's path.
    assert replay_path("deba", "resnet18", GROW, np.tile([0.0, 0.0, 1.0], (100, 1))) == paper_path(100)
    assert replay_path("deba", "resnet18", HOLD, calm) == [64] * 25
    # Unstable gradients and high confidence: rollbacks to b_min (32) under the default rule "both".
    shaky = np.tile([1.0, 0.0, 1.0], (25, 1))
    assert replay_path("deba", "resnet18", {**HOLD, "cooldown": 1}, shaky)[:4] == [64, 51, 40, 32]


def test_null_distances_are_seeded_and_sample_the_pool():
    pool = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 3.0]])  # a calm epoch, and an unstable high-confidence one
    a = null_distances("deba", "resnet18", {**GROW, "cooldown": 1}, pool, 20, replays=30, seed=1)
    b = null_distances("deba", "resnet18", {**GROW, "cooldown": 1}, pool, 20, replays=30, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    assert len(set(a[0].round(9))) > 1  # the draws differ between replays
    calm = null_distances("deba", "resnet18", GROW, pool[:1], 100, replays=5, seed=1)
    assert calm[0].tolist() == [0.0] * 5 and calm[1].all()  # always the paper's path, always reaching 729


def _study(tmp_path, theta_conf: float, deba_paths: dict[str, list[int]]) -> str:
    """Two fixed runs with calm signals (loss, norm and variance constant: dN = dL = 0, c ~ 1) and one
    DEBA run per reading, each with its stored options and batch-size path."""
    root, n = str(tmp_path), len(next(iter(deba_paths.values())))
    calm = {"train_loss": 1.0, "grad_var": 1.0, "grad_norm": 1.0}
    for seed in (1, 2):
        tid = f"F{seed}"
        rows = trial_rows("s", tid, "resnet18", "digits", seed, "fixed", n_epochs=n, batch_size=64, **calm)
        config = {"arch": "resnet18", "dataset": "digits", "method": "fixed", "epochs": n, "policy": {}}
        write_trial(
            root, "s", tid, rows, run_row("s", tid, "resnet18", "digits", seed, "fixed", config_json=json.dumps(config))
        )
    for variant, path in deba_paths.items():
        tid = f"D-{variant}"
        rows = trial_rows("s", tid, "resnet18", "digits", 1, "deba", variant, n_epochs=n, batch_size=path, **calm)
        policy = {"theta_stab": 0.5, "theta_conf": theta_conf, "cooldown": 3}  # 30 epochs: the path's 3-epoch steps
        config = {
            "arch": "resnet18",
            "dataset": "digits",
            "method": "deba",
            "variant": variant,
            "epochs": n,
            "policy": policy,
        }
        write_trial(
            root,
            "s",
            tid,
            rows,
            run_row("s", tid, "resnet18", "digits", 1, "deba", variant, config_json=json.dumps(config)),
        )
    return root


def test_a_policy_that_grows_on_any_signal_gets_no_credit_for_the_paper_path(tmp_path):
    # Replayed on calm noise, this policy follows the paper's path exactly (distance 0), so no run beats it.
    paths = {"baseline": paper_path(30), "other": [64] * 30}
    null = to_json(analyse(_study(tmp_path, 2.0, paths)))["null_control"]
    by = {r["reading"]: r for r in null}
    assert set(by) == {"baseline", "other"}
    assert by["baseline"]["observed"] == 0.0 and by["baseline"]["null_median"] == 0.0
    assert by["baseline"]["p"] == 1.0 and by["baseline"]["null_reached_729"] == 1.0
    assert by["other"]["p"] == 1.0 and by["other"]["observed"] == pytest.approx(trajectory_distance([64] * 30))
    assert by["baseline"]["replays"] == 200 and by["baseline"]["pool_epochs"] == 2 * 29


def test_a_run_closer_to_the_paper_than_its_null_beats_chance(tmp_path):
    # This policy holds at 64 on the calm signals: every replay has the distance of a constant 64.
    null = to_json(analyse(_study(tmp_path, 0.5, {"baseline": paper_path(30), "flat": [64] * 30})))["null_control"]
    by = {r["reading"]: r for r in null}
    flat = trajectory_distance([64] * 30)
    assert by["baseline"]["null_median"] == pytest.approx(flat) and by["baseline"]["null_p05"] == pytest.approx(flat)
    assert by["baseline"]["p"] == 0.0 and by["baseline"]["p_mean"] == 0.0  # observed 0 < every replay
    assert by["flat"]["p"] == 1.0  # as close as chance, no closer


def test_threshold_fidelity_hand_computed(tmp_path):
    # One fixed resnet18 run: norms 1, 2, 1, 1.5 -> dN(t>=2) = 1, 0.5, 0.5 -> p75 = 0.75;
    # variances 1, 1, 2, 4 -> c(t>=2) with the median of the window (current included) = 1, 2, 4/1.5 -> median 2;
    # with the mean: 1, 2/(4/3), 4/2 -> median 1.5. Table 1 (resnet18): (0.55, 0.6).
    rows = trial_rows("s", "F", "resnet18", "cifar10", 2, "fixed", n_epochs=4, train_loss=1.0,
                      grad_var=[1.0, 1.0, 2.0, 4.0], grad_norm=[1.0, 2.0, 1.0, 1.5])  # fmt: skip
    runs = pd.DataFrame([run_row("s", "F", "resnet18", "cifar10", 2, "fixed")]).assign(error=None)
    fid = threshold_fidelity(rows, trial_summary(rows, runs)).set_index("reading")
    # No epoch-mean statistics recorded: the epoch_mean and mixed readings are left out.
    assert set(fid.index) == {"baseline", "eps_zero", "mean_reference", "previous_reference"}
    base = fid.loc["baseline"]
    assert base["theta_stab"] == pytest.approx(0.75) and base["theta_conf"] == pytest.approx(2.0, rel=1e-6)
    assert base["distance"] == pytest.approx(abs(math.log(0.75 / 0.55)) + abs(math.log(2.0 / 0.6)), rel=1e-6)
    assert not base["near"] and base["share_stab_below"] == pytest.approx(2 / 3) and base["share_conf_below"] == 0.0
    assert base["readings"] == "baseline, rule_either, noop_cooldown"
    assert fid.loc["mean_reference", "theta_conf"] == pytest.approx(1.5, rel=1e-6)
    # previous values only: R = [1] -> 1; [1, 1] -> 2; [1, 1, 2] -> 4 -> median 2.
    assert fid.loc["previous_reference", "theta_conf"] == pytest.approx(2.0, rel=1e-6)


def test_signal_readings_group_the_readings_that_share_their_signals():
    groups = signal_readings()
    assert list(groups)[0] == "baseline" and "rule_either" not in groups
    assert {"epoch_mean_signals", "mixed_signals", "mean_reference", "previous_reference", "eps_zero"} <= set(groups)
