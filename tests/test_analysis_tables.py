"""Comparison, taxonomy, dynamics and calibration against hand-computed values.

One small store (study "s", dataset "digits") built row by row:
- resnet18: fixed seeds 1, 2; deba seeds 1, 2 (+ seed 3 without a runs row = incomplete);
  deba/cooldown5 seeds 1, 2 (ablation).
- mobilenetv3: one seed (std = NaN edge case), 8 epochs (convergence stability).
- vit_b16: NaN test_acc, NaN epoch time and an inf grad_var.
- densenet121: a diverged deba run, a failed fixed run (no epochs), a deba seed without any
  fixed run.
Study "abl" holds only a deba/full_history run; its fixed partner lives in study "s".
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.report import analyse
from analysis.stability import (
    BENEFIT,
    DYNAMICALLY_STABLE,
    MODERATELY_STABLE,
    NATURALLY_UNSTABLE,
    NO_BENEFIT,
    OVERLY_STABLE,
    SEED_DEPENDENT,
    UNKNOWN,
    UNRELIABLE,
    TaxonomyOptions,
    classify,
    observed_outcome,
    predicted_outcome,
    prediction_holds,
)
from benchmarks.synthetic_store import run_row, trial_rows, write_trial

NAN = float("nan")


def _add(root, df, status="completed", write_run=True, **run_cols):
    r = df.iloc[0]
    run = (
        run_row(
            r.study, r.trial_id, r.arch, r.dataset, int(r.seed), r.method, r.variant, status, **run_cols
        )  # fmt: skip
        if write_run
        else None
    )
    write_trial(str(root), r.study, r.trial_id, df, run)


def _t(trial_id, arch, seed, method, variant="baseline", n=3, study="s", **cols):
    return trial_rows(study, trial_id, arch, "digits", seed, method, variant, n, **cols)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    # resnet18 fixed. Epoch 1 carries huge signals to prove that calibration/S use epochs >= 2.
    _add(root, _t("F1", "resnet18", 1, "fixed", test_acc=[0.3, 0.6, 0.70],
                  epoch_time_s=[10.0, 10.0, 10.0], wall_time_s=[12.0, 24.0, 36.0],
                  grad_var=[9.0, 1.0, 3.0], grad_norm_variation=[50.0, 0.2, 0.4],
                  loss_variation=[50.0, 0.1, 0.1], confidence=[100.0, 0.5, 1.5]))  # fmt: skip
    _add(root, _t("F2", "resnet18", 2, "fixed", test_acc=[0.3, 0.6, 0.80],
                  epoch_time_s=[10.0, 10.0, 20.0], wall_time_s=[12.0, 24.0, 50.0],
                  grad_var=[5.0, 2.0, 2.0], grad_norm_variation=[50.0, 0.1, 0.1],
                  loss_variation=[50.0, 0.0, 0.2], confidence=[100.0, 1.0, 2.0]))  # fmt: skip
    _add(root, _t("D1", "resnet18", 1, "deba", test_acc=[0.3, 0.6, 0.75],
                  epoch_time_s=[10.0, 5.0, 5.0], wall_time_s=[12.0, 20.0, 30.0],
                  batch_size=[64, 96, 144], decision=["increase", "increase", "hold"],
                  in_cooldown=[False, False, True]))  # fmt: skip
    _add(root, _t("D2", "resnet18", 2, "deba", test_acc=[0.3, 0.6, 0.78],
                  epoch_time_s=[10.0, 10.0, 10.0], wall_time_s=[12.0, 25.0, 40.0],
                  batch_size=[64, 64, 96], decision=["hold", "increase", "rollback"]))  # fmt: skip
    _add(root, _t("D3", "resnet18", 3, "deba"), write_run=False)  # incomplete: no runs row
    _add(root, _t("C1", "resnet18", 1, "deba", "cooldown5", test_acc=0.66, epoch_time_s=5.0))
    _add(root, _t("C2", "resnet18", 2, "deba", "cooldown5", test_acc=0.80,
                  epoch_time_s=[10.0, 5.0, 5.0]))  # fmt: skip
    # mobilenetv3: a single seed, 8 epochs.
    _add(root, _t("MF1", "mobilenetv3", 1, "fixed", n=8, test_acc=0.60,
                  grad_norm_variation=[50.0] + [0.1] * 7, loss_variation=[50.0] + [0.1] * 7,
                  train_loss=[2.0] * 6 + [0.3, 0.1], confidence=[100.0] + [1.0] * 7))  # fmt: skip
    _add(root, _t("MD1", "mobilenetv3", 1, "deba", n=8, test_acc=0.61, epoch_time_s=5.0,
                  decision=["rollback"] + ["hold"] * 7,
                  in_cooldown=[False, False] + [True] * 6))  # fmt: skip
    # vit_b16: NaN and inf values.
    _add(root, _t("VF1", "vit_b16", 1, "fixed", grad_var=1.0))
    _add(root, _t("VF2", "vit_b16", 2, "fixed", n=4, grad_var=[1.0, 2.0, math.inf, 4.0],
                  confidence=[1.0, 3.0, NAN, 5.0]))  # fmt: skip
    _add(root, _t("VD1", "vit_b16", 1, "deba", test_acc=[0.5, 0.5, NAN], epoch_time_s=5.0))
    _add(root, _t("VD2", "vit_b16", 2, "deba", test_acc=0.6, epoch_time_s=[10.0, NAN, 10.0]))
    # densenet121: partner problems.
    _add(root, _t("NF1", "densenet121", 1, "fixed"))
    _add(root, _t("ND1", "densenet121", 1, "deba", n=2, train_loss=[1.0, NAN], test_acc=0.1),
         status="diverged", error="loss is NaN")  # fmt: skip
    write_trial(str(root), "s", "NF2", None,
                run_row("s", "NF2", "densenet121", "digits", 2, "fixed", status="failed",
                        error="CUDA out of memory\nTraceback ..."))  # fmt: skip
    _add(root, _t("ND2", "densenet121", 2, "deba"))
    _add(root, _t("ND3", "densenet121", 3, "deba"))
    # Study "abl": an ablation without its own fixed runs.
    _add(root, _t("A1", "resnet18", 1, "deba", "full_history", study="abl", test_acc=0.72,
                  epoch_time_s=6.0))  # fmt: skip
    return str(root)


@pytest.fixture(scope="module")
def a(store):
    return analyse(store, "s")


def _row(df, **keys):
    m = pd.Series(True, index=df.index)
    for k, v in keys.items():
        m &= df[k].eq(v)
    assert m.sum() == 1, f"expected one row for {keys}, got {int(m.sum())}"
    return df[m].iloc[0]


# ------------------------------------------------------------------ comparison


def test_comparison_resnet18_hand_computed(a):
    r = _row(a.comparison.rows, arch="resnet18", method="deba", variant="baseline")
    assert r.n_seeds == 2
    assert r.acc_fixed == pytest.approx(75.0)  # (70 + 80) / 2
    assert r.acc_method == pytest.approx(76.5)  # (75 + 78) / 2
    assert r.dacc_mean == pytest.approx(1.5)  # seeds: +5, -2
    assert r.dacc_std == pytest.approx(4.949747468)  # 7 / sqrt(2)
    assert r.speedup_pct == pytest.approx(29.1666667)  # seeds: 100(1-20/30), 100(1-30/40)
    assert r.speedup_std == pytest.approx(5.892556510)
    assert r.throughput_x == pytest.approx(17 / 12)  # (1.5 + 4/3) / 2
    assert r.throughput_std == pytest.approx(0.117851130)
    assert r.speedup_wall_pct == pytest.approx((100 * (1 - 30 / 36) + 20.0) / 2)
    assert r.throughput_wall_x == pytest.approx((1.2 + 1.25) / 2)
    assert r.t_train == pytest.approx(25.0) and r.t_train_fixed == pytest.approx(35.0)
    assert r.n_increase == pytest.approx(1.5) and r.n_rollback == pytest.approx(0.5)
    assert r.final_bs == pytest.approx(120.0)  # (144 + 96) / 2
    assert r.mean_bs == pytest.approx(88.0)  # (304/3 + 224/3) / 2
    assert (r.n_runs, r.n_diverged, r.n_failed, r.missing_seeds) == (3, 0, 1, [])


def test_comparison_pairs_per_seed(a):
    p = a.comparison.pairs
    s1 = _row(p, arch="resnet18", method="deba", variant="baseline", seed=1)
    assert (s1.trial_id, s1.fixed_trial_id, s1.fixed_study) == ("D1", "F1", "s")
    assert s1.dacc == pytest.approx(5.0)
    assert s1.speedup_pct == pytest.approx(100 / 3)
    assert s1.throughput_x == pytest.approx(1.5)
    assert s1.speedup_wall_pct == pytest.approx(100 / 6)
    s2 = _row(p, arch="resnet18", method="deba", variant="baseline", seed=2)
    assert s2.dacc == pytest.approx(-2.0) and s2.speedup_pct == pytest.approx(25.0)
    assert set(p["method"]) == {"deba"}  # the fixed baseline is never compared with itself


def test_single_seed_has_nan_std(a):
    r = _row(a.comparison.rows, arch="mobilenetv3", method="deba")
    assert r.n_seeds == 1
    assert r.dacc_mean == pytest.approx(1.0)
    assert r.speedup_pct == pytest.approx(50.0) and r.throughput_x == pytest.approx(2.0)
    assert math.isnan(r.dacc_std) and math.isnan(r.speedup_std)


def test_nan_values_are_skipped_per_statistic(a):
    # seed 1: final test_acc NaN, time 15 vs 30; seed 2: acc 60 vs 50, one epoch time NaN.
    r = _row(a.comparison.rows, arch="vit_b16", method="deba")
    assert r.n_seeds == 2
    assert r.dacc_mean == pytest.approx(10.0) and math.isnan(r.dacc_std)
    assert r.speedup_pct == pytest.approx(50.0) and math.isnan(r.speedup_std)
    assert r.acc_method == pytest.approx(60.0)
    # wall: VD1 18 s vs VF1 33 s; VD2 23 s (NaN epoch counts 0 in the fixture's wall) vs VF2 44 s
    assert r.speedup_wall_pct == pytest.approx((100 * (1 - 18 / 33) + 100 * (1 - 23 / 44)) / 2)
    p = _row(a.comparison.pairs, arch="vit_b16", seed=2)
    assert math.isnan(p.t_train) and math.isnan(p.speedup_pct)


def test_missing_partners_and_statuses_are_reported(a):
    r = _row(a.comparison.rows, arch="densenet121", method="deba")
    assert r.n_seeds == 0 and math.isnan(r.dacc_mean)
    assert (r.n_runs, r.n_diverged, r.n_failed) == (3, 1, 0)
    assert r.missing_seeds == [2, 3]
    left = a.left_out.set_index("trial_id")
    assert left.loc["ND1", "reason"] == "diverged"
    assert left.loc["ND1", "final_acc"] == pytest.approx(0.1)
    assert left.loc["ND2", "reason"] == "fixed run failed"
    assert left.loc["ND3", "reason"] == "no fixed run"
    assert left.loc["NF2", "reason"] == "failed" and left.loc["NF2", "n_epochs"] == 0
    assert left.loc["D3", "reason"] == "incomplete"
    assert set(left.index) == {"ND1", "ND2", "ND3", "NF2", "D3"}


def test_ablation_summary(a):
    r = _row(a.comparison.rows, arch="resnet18", variant="cooldown5")
    assert r.dacc_mean == pytest.approx(-2.0)  # seeds: -4, 0
    assert r.speedup_pct == pytest.approx(50.0)
    ab = a.ablations.set_index("variant")
    assert ab.loc["cooldown5", "n_archs"] == 1 and ab.loc["cooldown5", "n_degraded"] == 1
    assert ab.loc["baseline", "n_archs"] == 3  # densenet121 has no pair
    assert ab.loc["baseline", "n_degraded"] == 0
    assert ab.loc["baseline", "mean_dacc"] == pytest.approx((1.5 + 1.0 + 10.0) / 3)


def test_cross_study_fallback_and_no_baseline(store):
    both = analyse(store)
    r = _row(both.comparison.rows, study="abl", variant="full_history")
    assert r.n_seeds == 1 and r.dacc_mean == pytest.approx(2.0)  # 72 vs F1's 70
    assert r.speedup_pct == pytest.approx(40.0)  # 18 s vs 30 s
    assert any("paired with the fixed run of study s" in n for n in both.notes)
    # Analysing "abl" alone still finds the partner in study "s", which adds no rows of its own.
    alone = analyse(store, "abl")
    assert alone.studies == ["abl"] and len(alone.comparison.rows) == 1
    r = alone.comparison.rows.iloc[0]
    assert r.n_seeds == 1 and r.dacc_mean == pytest.approx(2.0)
    assert alone.comparison.pairs["fixed_study"].tolist() == ["s"]
    assert alone.taxonomy.empty and alone.calibration.empty


def test_no_fixed_baseline_anywhere(tmp_path):
    write_trial(str(tmp_path), "x", "D", _t("D", "resnet18", 1, "deba", study="x"),
                run_row("x", "D", "resnet18", "digits", 1, "deba"))  # fmt: skip
    with pytest.raises(ValueError, match=r"no fixed baseline: .*methods found: \['deba'\]"):
        analyse(str(tmp_path))


# ------------------------------------------------------------------ stability


def test_stability_scores_per_run(a):
    s = a.summary.set_index("trial_id")
    # F1: CV([1, 3]) = sqrt(2)/2, mean dN 0.3, mean dL 0.1 (epoch 1 excluded)
    assert s.loc["F1", "cv_grad_var"] == pytest.approx(math.sqrt(2) / 2)
    assert s.loc["F1", "S"] == pytest.approx(0.4745843964)
    assert s.loc["F2", "S"] == pytest.approx(1 / 1.2)
    # VF2: inf skipped -> grad_var [2, 4], CV = sqrt(2)/3
    assert s.loc["VF2", "S"] == pytest.approx(1 / (1 + math.sqrt(2) / 3 + 0.2))


def test_taxonomy_table(a):
    t = a.taxonomy.set_index("arch")
    r = t.loc["resnet18"]
    assert r.n_seeds == 2
    assert r.S_mean == pytest.approx(0.6539588649)
    assert r.S_std == pytest.approx(0.2536738060)
    assert r["class"] == DYNAMICALLY_STABLE
    assert r.aggressiveness == pytest.approx(0.5)  # D1: (2-0)/2, D2: (1-1)/3
    assert r.dacc_mean == pytest.approx(1.5) and r.n_paired == 2
    assert (r.observed, r.predicted, r.prediction_ok) == (SEED_DEPENDENT, BENEFIT, False)
    m = t.loc["mobilenetv3"]
    assert m.n_seeds == 1 and math.isnan(m.S_std)
    assert m["class"] == OVERLY_STABLE  # S = 1/1.2; the sigma rule needs two seeds
    assert m.fixed_convergence == pytest.approx(0.1414213562)  # std(0.3, 0.1), epochs 7-8
    assert m.aggressiveness == pytest.approx(-0.5)
    assert (m.observed, m.predicted, m.prediction_ok) == (BENEFIT, BENEFIT, True)
    v = t.loc["vit_b16"]
    assert v.S_mean == pytest.approx((1 / 1.2 + 1 / (1 + math.sqrt(2) / 3 + 0.2)) / 2)
    assert v.observed == BENEFIT  # only seed 2 has a finite dAcc (+10)
    d = t.loc["densenet121"]
    assert d.n_seeds == 1 and d.n_paired == 0 and d.observed is None
    assert d.prediction_ok is None


def test_dynamics_per_run(a):
    d = a.dynamics.set_index("trial_id")
    assert d.loc["D1", "aggressiveness"] == pytest.approx(1.0)
    assert d.loc["D2", "aggressiveness"] == pytest.approx(0.0)
    assert d.loc["D1", "n_decisions"] == 2
    assert d.loc["MD1", "aggressiveness"] == pytest.approx(-0.5)
    # 3 epochs: only epoch 3 is in the last 25% -> a one-value std is NaN
    assert math.isnan(d.loc["D1", "convergence_stability"])
    assert d.loc["ND1", "status"] == "diverged"


def test_classify_boundaries():
    assert classify(0.25, 0.0) == NATURALLY_UNSTABLE
    assert classify(0.26, 0.10) == DYNAMICALLY_STABLE
    assert classify(0.26, 0.0999) == MODERATELY_STABLE
    assert classify(0.54, 0.05) == OVERLY_STABLE
    assert classify(0.60, NAN) == OVERLY_STABLE
    assert classify(NAN, 0.0) == UNKNOWN
    opts = TaxonomyOptions(unstable_below=0.1, overly_stable_from=0.9, dynamic_std=0.5)
    assert classify(0.2, 0.2, opts) == MODERATELY_STABLE
    with pytest.raises(ValueError, match="unstable_below"):
        TaxonomyOptions(unstable_below=0.6, overly_stable_from=0.5)
    with pytest.raises(ValueError, match="dynamic_std"):
        TaxonomyOptions(dynamic_std=-1.0)


def test_outcome_rules():
    assert observed_outcome([]) is None and observed_outcome([NAN]) is None
    assert observed_outcome([1.0, -0.5]) == SEED_DEPENDENT
    assert observed_outcome([0.0, 0.0]) == NO_BENEFIT
    assert observed_outcome([0.4], TaxonomyOptions(benefit_min_pt=0.5)) == NO_BENEFIT
    assert predicted_outcome(OVERLY_STABLE, 0.25) == NO_BENEFIT
    assert predicted_outcome(OVERLY_STABLE, NAN) is None
    assert predicted_outcome(NATURALLY_UNSTABLE, NAN) == UNRELIABLE
    assert prediction_holds(UNRELIABLE, SEED_DEPENDENT) is True
    assert prediction_holds(UNRELIABLE, BENEFIT) is False
    assert prediction_holds(None, BENEFIT) is None


# ------------------------------------------------------------------ calibration


def test_calibration_hand_computed(a):
    c = a.calibration.set_index("arch")
    # resnet18, epochs >= 2 pooled: dN [0.2, 0.4, 0.1, 0.1] -> p75 = 0.2 + 0.25*0.2
    assert c.loc["resnet18", "theta_stab"] == pytest.approx(0.25)
    assert c.loc["resnet18", "theta_conf"] == pytest.approx(1.25)  # median [0.5, 1.5, 1, 2]
    assert (c.loc["resnet18", "n_runs"], c.loc["resnet18", "n_epochs"]) == (2, 4)
    assert c.loc["vit_b16", "theta_conf"] == pytest.approx(2.0)  # median [1, 1, 3, 5], NaN skipped
    assert c.loc["mobilenetv3", "theta_stab"] == pytest.approx(0.1)
    assert c.loc["resnet18", "paper_theta_stab"] == 0.55
    assert c.loc["densenet121", "n_runs"] == 1  # the failed fixed run is not used
