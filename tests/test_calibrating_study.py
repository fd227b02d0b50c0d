"""Self-calibrating studies (the reconstruction preset): phases, pinned thresholds, validation (no Ray)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks.synthetic_store import spec_rows
from orchestrator.calibration import CALIBRATION_FILE
from orchestrator.runner import make_plan, repair
from orchestrator.store import ResultsStore, run_row
from orchestrator.studies import RECONSTRUCTION_READINGS, expand, preset, waiting_for_calibration, with_overrides
from trainables.policies import policy_options, signal_reading


def _small():
    return with_overrides(preset("reconstruction"), datasets=["digits"], seeds=[0, 1], epochs=4)


def test_phase_one_is_the_fixed_runs_and_the_readings_wait():
    study = _small()
    specs = expand(study)
    assert {(s.method, s.variant) for s in specs} == {("fixed", "baseline")}
    assert all(s.config["record_epoch_mean"] for s in specs)
    waiting = waiting_for_calibration(study)
    assert len(waiting) == 2 * (1 + len(RECONSTRUCTION_READINGS))
    assert "tiny_cnn-digits-s1-deba-epoch_mean_signals" in waiting


def _given(spec):
    """The policy options of a trial that differ from the policy's defaults."""
    defaults = policy_options(spec.method)
    return {k: v for k, v in spec.config.policy.items() if v != defaults[k]}


def test_phase_two_takes_thresholds_per_signal_reading():
    seen = []

    def calibration(arch, method, options):
        reading = signal_reading(options)
        seen.append(reading)
        return {
            "theta_stab": 0.5 if reading["signal_source"] == "epoch_mean" else 0.25,
            "theta_conf": 0.9 if reading["confidence_eps"] == 0.0 else 1.0,
        }

    specs = {(s.seed, s.variant, s.method): _given(s) for s in expand(_small(), calibration)}
    assert specs[(0, "baseline", "deba")] == {"theta_stab": 0.25, "theta_conf": 1.0}
    assert specs[(0, "epoch_mean_signals", "deba")] == {
        "signal_source": "epoch_mean",
        "theta_stab": 0.5,
        "theta_conf": 1.0,
    }
    assert specs[(1, "eps_zero", "deba")] == {"confidence_eps": 0.0, "theta_stab": 0.25, "theta_conf": 0.9}
    assert specs[(1, "baseline", "fixed")] == {}
    assert signal_reading({}) in seen
    assert waiting_for_calibration(_small(), calibration) == []


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"methods": ["deba"]}, "methods"),
        ({"thresholds": {"tiny_cnn": {"theta_stab": 0.3, "theta_conf": 1.0}}}, "thresholds"),
        ({"policy": {"theta_conf": 1.0}}, "policy"),
        ({"loop": {}}, "record_epoch_mean"),
    ],
)
def test_calibrating_study_refuses_what_it_would_ignore(overrides, field):
    with pytest.raises(ValueError, match=field):
        expand(with_overrides(_small(), **overrides))


SIGNALS = ("grad_var", "grad_norm", "grad_var_epoch_mean", "grad_norm_epoch_mean")
N_DEBA = 2 * (1 + len(RECONSTRUCTION_READINGS))  # two seeds, the baseline and every reading


def _store_fixed_runs(results, study, specs, seed=0):
    """Completed fixed runs with made-up signals (both sources), as the sink would store them."""
    store = ResultsStore(results, study.name)
    rng = np.random.default_rng(seed)
    for spec in specs:
        rows = [{**row, "train_loss": 1.0 / row["epoch"], **{k: float(rng.uniform(1, 2)) for k in SIGNALS}}
                for row in spec_rows(spec, 4)]  # fmt: skip
        store.write_epochs(spec.trial_id, rows)
        store.write_run(run_row(spec, rows, status="completed"))


def test_make_plan_calibrates_once_the_fixed_runs_finished_and_pins_it(tmp_path):
    results, study = str(tmp_path), _small()
    plan = make_plan(study, results)
    assert len(plan.pending) == 2 and len(plan.waiting) == N_DEBA
    _store_fixed_runs(results, study, plan.trials)
    pinned = os.path.join(results, study.name, CALIBRATION_FILE)

    plan = make_plan(study, results)  # planning shows phase 2 but writes nothing
    assert len(plan.pending) == N_DEBA and not plan.waiting and not os.path.exists(pinned)
    assert sum(line.startswith("pin thresholds of tiny_cnn") for line in plan.repairs.lines()) == 6
    repair(plan)  # the driver holding the lock pins them
    assert not plan.repairs.lines() and os.path.exists(pinned)
    doc = json.load(open(pinned))
    keys = ("signal_source", "confidence_eps", "confidence_reference", "confidence_includes_current")
    assert {tuple(e[k] for k in keys) for e in doc["entries"]} == {
        ("last_step", 1e-8, "median", True),
        ("last_step", 0.0, "median", True),
        ("epoch_mean", 1e-8, "median", True),
        ("mixed", 1e-8, "median", True),
        ("last_step", 1e-8, "mean", True),
        ("last_step", 1e-8, "median", False),
    }
    ids = {t.trial_id for t in plan.pending}
    # Pinned: other stored signals (e.g. a fixed run re-run) do not move the thresholds or the ids.
    fixed = [t for t in plan.trials if t.method == "fixed"]
    _store_fixed_runs(results, study, fixed, seed=1)
    assert {t.trial_id for t in make_plan(study, results).pending} == ids
    entry = next(e for e in doc["entries"] if e["signal_source"] == "epoch_mean")
    deba = next(t for t in plan.pending if t.variant == "epoch_mean_signals")
    assert deba.config["policy"]["theta_stab"] == entry["theta_stab"]


def test_fixed_runs_that_give_no_thresholds_leave_phase_two_waiting_with_the_reason(tmp_path):
    results, study = str(tmp_path), _small()
    store = ResultsStore(results, study.name)
    for spec in make_plan(study, results).trials:  # both fixed runs diverged in epoch 1: no signal after it
        rows = [{**spec_rows(spec, 1)[0], "train_loss": float("nan"), **{k: float("nan") for k in SIGNALS}}]
        store.write_epochs(spec.trial_id, rows)
        store.write_run(run_row(spec, rows, status="diverged"))
    plan = make_plan(study, results)
    assert plan.pending == () and len(plan.waiting) == N_DEBA
    assert len(plan.notes) == 1 and plan.notes[0].startswith("the fixed runs of tiny_cnn give no thresholds: ")
    assert not os.path.exists(os.path.join(results, study.name, CALIBRATION_FILE))


def test_fixed_runs_with_fewer_epochs_than_the_study_do_not_calibrate_it(tmp_path):
    results, study = str(tmp_path), _small()
    _store_fixed_runs(results, study, make_plan(study, results).trials)  # 4 epochs each
    longer = with_overrides(study, epochs=6)  # extends the fixed runs first
    plan = make_plan(longer, results)
    assert {t.method for t in plan.pending} == {"fixed"} and len(plan.waiting) == N_DEBA
    assert not os.path.exists(os.path.join(results, study.name, CALIBRATION_FILE))
