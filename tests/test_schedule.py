"""Trial costs and the launch order, against hand-computed schedules."""

from __future__ import annotations

import pytest

from orchestrator.schedule import efficiency, estimate_costs, longest_first, lower_bound, makespan
from orchestrator.studies import expand, preset, with_overrides


def test_list_scheduling_by_hand():
    # 2 slots, order 1, 1, 4: the 4 starts at t=1 -> makespan 5; longest first: 4 | 1, 1 -> 4.
    assert makespan([1, 1, 4], 2) == 5.0
    assert makespan([4, 1, 1], 2) == 4.0
    assert makespan([3, 3, 3], 5) == 3.0 and makespan([], 2) == 0.0
    assert lower_bound([1, 1, 4], 2) == 4.0 and lower_bound([2, 2, 2, 2], 2) == 4.0
    assert efficiency([4, 1, 1], 2, 4.0) == pytest.approx(6 / 8)
    assert longest_first(["a", "b", "c"], {"a": 1.0, "b": 3.0, "c": 3.0}) == ["b", "c", "a"]
    with pytest.raises(ValueError, match="slots=0 is not allowed"):
        makespan([1.0], 0)


def test_costs_use_measured_epoch_times_and_the_epochs_left():
    trials = expand(with_overrides(preset("demo"), seeds=[0], methods=["fixed"], epochs=10))
    cnn, mlp = (next(t for t in trials if t.arch == a) for a in ("tiny_cnn", "tiny_mlp"))
    flop = estimate_costs(trials, measured={})
    assert flop.unit == "FLOP" and flop.costs[cnn.trial_id] > flop.costs[mlp.trial_id] > 0
    # tiny_cnn measured at 2 s per epoch: 10 epochs = 20 s, or 8 s with 6 already done; tiny_mlp is
    # converted from its FLOPs at tiny_cnn's seconds per FLOP.
    timed = estimate_costs(trials, measured={("tiny_cnn", "digits"): 2.0}, done={cnn.trial_id: 6})
    assert timed.unit == "s" and timed.measured == 1
    assert timed.costs[cnn.trial_id] == pytest.approx(8.0)
    rate = 8.0 / (flop.costs[cnn.trial_id] * 0.4)
    assert timed.costs[mlp.trial_id] == pytest.approx(flop.costs[mlp.trial_id] * rate)


def test_the_paper_grid_starts_with_its_vit_trials():
    from orchestrator.runner import Plan

    study = preset("paper")
    trials = tuple(expand(study))
    plan = Plan(study=study, trials=trials, finished=frozenset(), estimate=estimate_costs(trials, {}))
    order = [t.arch for t in plan.launch_order()]
    assert order[:20] == ["vit_b16"] * 20 and order[-20:] == ["mobilenetv3"] * 20
