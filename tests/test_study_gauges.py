"""The driver's study counts: trials by state and epochs, from the ledger and Tune's events (pure)."""

from __future__ import annotations

import pytest

from orchestrator.study_gauges import StudyCounts


class Spec:  # what StudyCounts reads of a TrialSpec
    def __init__(self, tid: str, epochs: int = 10) -> None:
        self.trial_id, self.config = tid, {"epochs": epochs}


def test_counts_start_from_the_ledger_and_follow_the_trials():
    trials = [Spec("a"), Spec("b"), Spec("c"), Spec("d")]
    counts = StudyCounts.from_plan(
        trials, finished={"a", "b"}, statuses={"a": "completed", "b": "diverged", "c": "failed"},
        stored={"a": 10, "b": 4, "c": 3}, waiting=2, waiting_epochs=20,
    )  # fmt: skip
    assert counts.values() == {
        "trials_total": 6.0, "trials_pending": 4.0, "trials_running": 0.0, "trials_finished": 2.0,
        "trials_diverged": 1.0, "trials_failed": 0.0, "epochs_done": 17.0, "epochs_total": 60.0,
    }  # fmt: skip
    counts.set_state("c", "running")
    counts.set_epoch("c", 4)
    counts.set_state("d", "failed")
    v = counts.values()
    assert (v["trials_running"], v["trials_failed"], v["trials_pending"], v["epochs_done"]) == (1, 1, 2, 18)
    counts.set_state("c", "completed")
    assert counts.values()["trials_finished"] == 3 and counts.values()["trials_running"] == 0
    with pytest.raises(ValueError, match="state='done' is not allowed"):
        counts.set_state("c", "done")


def test_a_phase_one_trial_that_failed_counts_as_failed_in_phase_two():
    # run_grid's phase 2 marks this invocation's phase-1 trials finished; the ledger says which failed.
    counts = StudyCounts.from_plan([Spec("f")], finished={"f"}, statuses={"f": "failed"}, stored={"f": 2})
    assert counts.values()["trials_failed"] == 1 and counts.values()["trials_finished"] == 0
