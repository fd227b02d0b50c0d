"""Trajectory fidelity, per-reading calibration and the readings table (SPEC §4) on hand-made stores."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.calibrate import calibrate_reading, replay_signals
from analysis.report import analyse, to_json
from analysis.trajectory import paper_batch_size, paper_path, trajectory_distance
from analysis.trials import trial_summary
from benchmarks.synthetic_store import run_row, trial_rows, write_trial
from trainables.policies import make_policy, signal_reading


def test_paper_path_100_epochs():
    path = paper_path(100)
    assert path[:10] == [64] * 10 and path[10:20] == [96] * 10
    assert [path[t - 1] for t in (21, 31, 41, 51, 61, 71, 100)] == [144, 216, 324, 486, 729, 1024, 1024]


def test_paper_path_is_epoch_scaled():
    # 50 epochs: t' = ceil(100 t / 50) = 2t -> epoch 5 is t'=10 (64), epoch 6 is t'=12 (96).
    assert paper_path(50)[4:7] == [64, 96, 96]
    assert paper_batch_size(20, 20) == 1024 and paper_batch_size(1, 20) == 64
    assert paper_batch_size(3, 20) == 96  # t' = 15
    with pytest.raises(ValueError):
        paper_batch_size(0, 10)


def test_trajectory_distance_in_octaves():
    assert trajectory_distance(paper_path(100)) == 0.0
    # Twice the paper's batch size everywhere: one octave.
    assert trajectory_distance([2 * b for b in paper_path(40)]) == pytest.approx(1.0)
    # 10 epochs of a 100-epoch plan at B=128 vs 64: one octave each.
    assert trajectory_distance([128] * 10, epochs=100) == pytest.approx(1.0)
    # B = 64 throughout 20 epochs vs 64, 64, 96, 96, ...: mean of |log2(64/B_paper)|.
    expected = np.mean([abs(math.log2(64 / b)) for b in paper_path(20)])
    assert trajectory_distance([64] * 20) == pytest.approx(expected)


def _store(tmp_path, deba_variants=("baseline",)):
    root = str(tmp_path)

    def add(tid, seed, method, variant, batch, config, **cols):
        df = trial_rows(
            "s", tid, "tiny_cnn", "digits", seed, method, variant, n_epochs=len(batch), batch_size=batch, **cols
        )
        write_trial(
            root,
            "s",
            tid,
            df,
            run_row("s", tid, "tiny_cnn", "digits", seed, method, variant, config_json=json.dumps(config)),
        )

    for seed in (1, 2):
        add(
            f"F{seed}",
            seed,
            "fixed",
            "baseline",
            [64] * 4,
            {"epochs": 4, "policy": {}},
            test_acc=0.5,
            epoch_time_s=10.0,
        )
    # Planned 8 epochs, ran 4 (diverged): compared with the 8-epoch path 96, 144, 216, 324 at t'=13,25,38,50.
    add(
        "D1",
        1,
        "deba",
        "baseline",
        [64, 96, 144, 729],
        {"epochs": 8, "policy": {}},
        decision=["increase", "increase", "increase", "hold"],
        test_acc=0.6,
        epoch_time_s=5.0,
    )
    add(
        "D2",
        2,
        "deba",
        "baseline",
        [64, 51, 40, 40],
        {"epochs": 4, "policy": {}},
        decision=["rollback", "rollback", "hold", "hold"],
        test_acc=0.4,
        epoch_time_s=10.0,
    )
    for v in deba_variants[1:]:
        for seed in (1, 2):
            add(
                f"{v}{seed}",
                seed,
                "deba",
                v,
                [64, 96, 144, 216],
                {"epochs": 4, "policy": {"decision_rule": v}},
                decision="increase",
                test_acc=0.55,
                epoch_time_s=8.0,
            )
    return root


def test_trajectory_table_and_json(tmp_path):
    a = analyse(_store(tmp_path))
    t = a.trajectory.set_index("trial_id")
    assert list(t.index) == ["D1", "D2"]
    ref8 = [paper_batch_size(e, 8) for e in range(1, 5)]
    assert ref8 == [96, 144, 216, 324]
    assert t.loc["D1", "distance_oct"] == pytest.approx((3 * math.log2(1.5) + math.log2(729 / 324)) / 4)
    assert t.loc["D1", "epoch_reach_729"] == 4 and t.loc["D1", "epochs_planned"] == 8
    assert (t.loc["D1", "final_bs"], t.loc["D1", "n_increase"], t.loc["D1", "n_rollback"]) == (729, 3, 0)
    ref4 = paper_path(4)  # 144, 324, 1024, 1024 at t' = 25, 50, 75, 100
    assert t.loc["D2", "distance_oct"] == pytest.approx(np.mean(np.abs(np.log2([64, 51, 40, 40]) - np.log2(ref4))))
    assert math.isnan(t.loc["D2", "epoch_reach_729"]) and t.loc["D2", "n_rollback"] == 2
    rows = to_json(a)["trajectory"]
    assert {
        "trial_id",
        "arch",
        "dataset",
        "seed",
        "method",
        "variant",
        "distance_oct",
        "epoch_reach_729",
        "final_bs",
        "n_increase",
        "n_rollback",
    } <= set(rows[0])
    assert rows[1]["epoch_reach_729"] is None  # NaN -> null in JSON
    assert to_json(a)["reconstruction"] == []  # one DEBA variant: no readings study


def test_readings_are_ranked_by_distance_with_the_seed_spread(tmp_path):
    a = analyse(_store(tmp_path, deba_variants=("baseline", "either")))
    r = a.reconstruction.set_index("variant")
    assert list(a.reconstruction["variant"]) == ["either", "baseline"]  # smaller distance first
    assert list(a.reconstruction["rank"]) == [1, 2]
    assert r.loc["baseline", "grew"] == "1/2" and r.loc["baseline", "shrank"] == "1/2"
    assert r.loc["baseline", "final_bs"] == "729/40" and r.loc["baseline", "reached_729"] == "1/2"
    assert r.loc["either", "reading"] == "decision_rule=either"
    # dAcc per seed: (60 - 50), (40 - 50) pp -> mean 0, std sqrt(200).
    assert r.loc["baseline", "dacc_mean"] == pytest.approx(0.0)
    assert r.loc["baseline", "dacc_std"] == pytest.approx(math.sqrt(200))
    assert r.loc["either", "speedup_pct"] == pytest.approx(20.0)


def test_replay_reproduces_the_policy_signals():
    rng = np.random.default_rng(0)
    loss, var, norm = rng.uniform(0.5, 2, 30), rng.uniform(0, 3e-8, 30), rng.uniform(0.5, 2, 30)
    var[[3, 4, 9]] = 0.0
    for eps in (1e-8, 0.0):
        policy = make_policy("fixed", window=4, confidence_eps=eps)
        recs = [policy.step(epoch=t + 1, train_loss=loss[t], grad_var=var[t], grad_norm=norm[t]) for t in range(30)]
        trial = pd.DataFrame({"train_loss": loss, "grad_var": var, "grad_norm": norm})
        replayed = replay_signals(trial, signal_reading({"window": 4, "confidence_eps": eps}))
        for col in ("grad_norm_variation", "loss_variation", "confidence"):
            np.testing.assert_array_equal(replayed[col].to_numpy(), np.array([r[col] for r in recs]))


def test_calibrate_reading_per_signal_source_and_eps():
    epochs = pd.concat(
        [
            trial_rows(
                "s",
                "F1",
                "a",
                "d",
                1,
                "fixed",
                n_epochs=4,
                train_loss=1.0,
                grad_var=[4e-9, 1e-9, 2e-9, 3e-9],
                grad_norm=[1.0, 2.0, 1.0, 1.5],
                grad_var_epoch_mean=[1.0, 1.0, 2.0, 4.0],
                grad_norm_epoch_mean=[1.0, 1.1, 1.21, 1.331],
            ),
            trial_rows("s", "D1", "a", "d", 1, "deba", n_epochs=2),
        ]
    )
    runs = pd.DataFrame([run_row("s", "F1", "a", "d", 1, "fixed"), run_row("s", "D1", "a", "d", 1, "deba")])
    runs["error"] = None
    summary = trial_summary(epochs, runs)
    # last_step, window 15, eps 0: c = v / median(so far) over epochs 2..4: 1/2.5, 2/2, 3/2.5 -> median 1.0;
    # dN over epochs 2..4: 1.0, 0.5, 0.5 -> p75 = 0.75.
    got = calibrate_reading(epochs, summary, "a", signal_reading({"confidence_eps": 0.0}))
    assert got["theta_conf"] == pytest.approx(1.0) and got["theta_stab"] == pytest.approx(0.75, rel=1e-6)
    assert (got["n_runs"], got["n_epochs"]) == (1, 3)
    # eps 1e-8 pulls c well below 1 for variances ~1e-9: median c = 2e-9 / (2e-9 + 1e-8).
    assert calibrate_reading(epochs, summary, "a", signal_reading({}))["theta_conf"] == pytest.approx(2e-9 / 1.2e-8)
    # epoch_mean: c over epochs 2..4 = 1/1, 2/1, 4/1.5 -> median 2; dN = 0.1 each -> p75 0.1.
    mean = calibrate_reading(epochs, summary, "a", signal_reading({"signal_source": "epoch_mean"}))
    assert mean["theta_conf"] == pytest.approx(2.0) and mean["theta_stab"] == pytest.approx(0.1, rel=1e-6)
    with pytest.raises(ValueError, match="no completed 'fixed' run"):
        calibrate_reading(epochs, summary, "other", signal_reading({}))


def test_a_run_still_going_is_not_ranked(tmp_path):
    root = _store(tmp_path, deba_variants=("baseline", "either"))
    # A third seed of "either" has epochs on disk but no runs row yet (a live store): listed, not ranked.
    rows = trial_rows("s", "either3", "tiny_cnn", "digits", 3, "deba", "either", n_epochs=2, batch_size=[64, 32])
    write_trial(root, "s", "either3", rows, None)
    a = analyse(root)
    assert a.trajectory.set_index("trial_id").loc["either3", "status"] == "incomplete"
    r = a.reconstruction.set_index("variant")
    assert r.loc["either", "n_seeds"] == 2 and r.loc["either", "final_bs"] == "216/216"
