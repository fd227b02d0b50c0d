"""A store written by an earlier version (tests/fixtures/store_v1, config schema 1) plans as finished and
analyses to the numbers that version computed: changing a default, adding a setting or a new config
schema must never change what a stored trial means (trainables/config_schema.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from analysis.report import analyse, to_json
from orchestrator.cli import build_parser, study_from_args
from orchestrator.runner import make_plan
from orchestrator.store import ResultsStore
from trainables.config import TrialConfig

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"
# The commands that wrote the fixture (its README), without --results (and --subset-seed null, below).
COMMANDS = {
    "fixture_v1": "--preset demo --study fixture_v1 --archs tiny_cnn --seeds 0 --methods fixed deba gns "
    "--variants baseline cooldown2 either_eps0 --define-variant either_eps0:decision_rule=either,confidence_eps=0 "
    "--epochs 3 --train-limit 300",
    "fixture_v1_table": "--preset paper --study fixture_v1_table --archs tiny_cnn --datasets digits --seeds 0 "
    "--methods fixed deba --variants baseline universal_thresholds mean_signals "
    "--define-variant mean_signals:signal_source=epoch_mean --epochs 3 --train-limit 300 --test-limit 200 "
    "--record-epoch-mean true",
}
# Free text that later versions may word differently; every number and identifier must stay.
TEXT_FIELDS = {"reading", "notes"}


@pytest.fixture
def store(tmp_path: Path) -> str:
    shutil.copytree(FIXTURE, tmp_path / "store", ignore=shutil.ignore_patterns("*.md", "*.json"))
    return str(tmp_path / "store")


def _study(study: str, store: str, *extra: str):
    return study_from_args(build_parser().parse_args(COMMANDS[study].split() + ["--results", store, *extra]))


@pytest.mark.parametrize("study", sorted(COMMANDS))
def test_the_commands_that_wrote_it_have_nothing_left_to_run(store: str, study: str) -> None:
    # subset_seed came after the fixture and its default (0, one subset for every seed) is not what ran
    # then (the subset drawn with the trial seed, subset_seed null): the refusal says how to continue.
    with pytest.raises(
        ValueError, match=r"subset_seed: None -> 0.*to continue the study as it was, give --subset-seed null"
    ):
        make_plan(_study(study, store), store)
    plan = make_plan(_study(study, store, "--subset-seed", "null"), store)
    assert plan.pending == () and plan.waiting == ()
    assert len(plan.finished) == len(plan.trials) == len(ResultsStore(store, study).read_runs())
    assert not plan.notes  # no trial renamed, nothing set aside


def test_every_stored_config_reads_and_keeps_its_id(store: str) -> None:
    runs = {**ResultsStore(store, "fixture_v1").read_runs(), **ResultsStore(store, "fixture_v1_table").read_runs()}
    assert len(runs) == 10
    for trial_id, row in runs.items():
        config = TrialConfig.from_stored(json.loads(row["config_json"]))
        assert config.trial_id() == trial_id
        # What schema 1 left out is the schema-1 default, not today's: e.g. decision_rule and the new options.
        if config.method == "deba":
            assert config.policy["confidence_reference"] == "median" and config.policy["confidence_includes_current"]


def _numbers(value, key=None):
    """The value with free-text fields dropped, floats rounded to 9 significant digits."""
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items() if k not in TEXT_FIELDS}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.9g}")
    return value


def test_it_analyses_to_the_numbers_its_version_computed(store: str) -> None:
    expected = json.loads((FIXTURE / "analysis.json").read_text())
    got = json.loads(json.dumps(to_json(analyse(store)), allow_nan=False))
    for key, value in expected.items():
        if key not in TEXT_FIELDS:
            assert _numbers(got[key]) == _numbers(value), key
