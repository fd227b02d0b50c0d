"""The typed configuration: TrialConfig and the policies' option dataclasses, one check, generated CLIs."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.cli import GRID_FIELDS, study_from_args
from orchestrator.cli import build_parser as grid_parser
from orchestrator.studies import expand, preset, with_overrides
from trainables.config import EXECUTION_FIELDS, IDENTITY_FIELDS, TrialConfig
from trainables.policies import POLICIES, policy_options
from trainables.policies.options import CooldownOptions, DebaOptions, PolicyOptions
from trainables.run import build_parser as trial_parser
from trainables.run import config_from_args
from trainables.settings import fields_of


def test_trial_config_is_frozen_typed_and_checked_in_one_place():
    cfg = TrialConfig(arch="tiny_cnn", dataset="digits", method="deba", policy={"thresholds": "universal"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.1  # type: ignore[misc]
    assert cfg.augment == "crop" and cfg.options.cooldown == 10 and isinstance(cfg.options, DebaOptions)
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"missing required config field\(s\) 'dataset'"):
        TrialConfig.from_dict({"arch": "tiny_cnn"})
    with pytest.raises(ValueError, match=r"unknown config field\(s\) 'optimizer'; allowed: amp, arch"):
        TrialConfig.from_dict({"arch": "tiny_cnn", "dataset": "digits", "optimizer": "adam"})
    with pytest.raises(ValueError, match="lr=-1 is not allowed; expected a finite number > 0"):
        TrialConfig(arch="tiny_cnn", dataset="digits", lr=-1)
    with pytest.raises(ValueError, match="cooldown=-1 is not allowed; expected an integer >= 0"):
        TrialConfig(
            arch="tiny_cnn", dataset="digits", method="deba", policy={"cooldown": -1, "thresholds": "universal"}
        )


def test_trial_id_leaves_out_execution_settings_and_epochs():
    cfg = TrialConfig(arch="tiny_cnn", dataset="digits")
    assert {"device", "threads", "compile", "data_dir", "eval_batch_size"} <= EXECUTION_FIELDS
    assert "epochs" not in IDENTITY_FIELDS and "lr" in IDENTITY_FIELDS
    for change in ({"device": "cpu"}, {"threads": 3}, {"compile": True}, {"epochs": 7}, {"eval_batch_size": 8}):
        assert cfg.replace(**change).trial_id() == cfg.trial_id()
    for change in ({"lr": 0.02}, {"seed": 1}, {"policy": {"b0": 32}}, {"train_limit": 100}):
        assert cfg.replace(**change).trial_id() != cfg.trial_id()


def test_policy_options_come_from_the_dataclasses():
    for name, cls in POLICIES.items():
        options = policy_options(name)
        assert options == {f.name: f.default for f in fields_of(cls.Options)}
        assert issubclass(cls.Options, PolicyOptions)
        assert all(f.metadata["help"] for f in fields_of(cls.Options)), name
    assert issubclass(DebaOptions, CooldownOptions) and issubclass(POLICIES["gns"].Options, CooldownOptions)
    assert policy_options("deba")["decision_rule"] == "both" and policy_options("divebatch")["b_max"] == 2048


def test_every_trial_setting_shows_in_both_command_lines_with_its_help():
    trial_help = " ".join(trial_parser().format_help().split())
    grid_help = " ".join(grid_parser().format_help().split())
    for f in fields_of(TrialConfig):
        if not f.metadata["cli"]:  # set by the study only (workers: --workers-per-trial)
            continue
        flag = "--" + f.name.replace("_", "-") + " "
        first_words = " ".join(f.metadata["help"].split()[:4])
        helps = ([trial_help] if f.name != "policy" else []) + ([grid_help] if f.name not in GRID_FIELDS else [])
        for text in helps:
            assert flag in text and first_words in text, f.name


def test_a_setting_given_as_a_flag_reaches_the_trial_in_both_clis():
    cfg = config_from_args(
        trial_parser().parse_args(
            [
                "--arch",
                "tiny_cnn",
                "--dataset",
                "digits",
                "--batch-size",
                "32",
                "--record-epoch-mean",
                "true",
                "--train-limit",
                "100",
                "--channels-last",
                "false",
            ]
        )
    )
    assert (cfg.policy["b0"], cfg.record_epoch_mean, cfg.train_limit, cfg.channels_last) == (32, True, 100, False)
    study = study_from_args(
        grid_parser().parse_args(
            [
                "--seeds",
                "0",
                "--batch-size",
                "32",
                "--record-epoch-mean",
                "true",
                "--train-limit",
                "100",
                "--lr",
                "0.02",
            ]
        )
    )
    configs = [s.config for s in expand(study)]
    assert all(
        c["policy"]["b0"] == 32 and c["record_epoch_mean"] and c["train_limit"] == 100 and c["lr"] == 0.02
        for c in configs
    )
    with pytest.raises(ValueError, match="train_limit='many' is not allowed; expected an integer"):
        study_from_args(grid_parser().parse_args(["--train-limit", "many"]))


def test_planning_builds_no_policy_and_a_trial_builds_one(monkeypatch):
    from trainables.loop import TrialLoop
    from trainables.policies.deba import DebaPolicy

    built = []
    original = DebaPolicy.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(DebaPolicy, "__init__", counting)
    specs = expand(with_overrides(preset("demo"), seeds=[0], archs=["tiny_cnn"], methods=["deba"]))
    assert built == []
    TrialLoop(specs[0].config.replace(train_limit=64, test_limit=32))
    assert built == [1]
