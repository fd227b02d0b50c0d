"""Study presets, expansion to trial specs, trial ids, validation and the run_grid CLI (no Ray)."""

from __future__ import annotations

import json
import os

import pytest

from orchestrator.cli import build_parser, study_from_args
from orchestrator.run_grid import main
from orchestrator.runner import payload, resolve_resources
from orchestrator.studies import EXECUTION_KEYS, expand, preset, with_overrides
from trainables.config import trial_id_of
from trainables.policies import POLICY_NAMES, non_default_options


def _study(argv: list[str]):
    return study_from_args(build_parser().parse_args(argv))


def test_demo_preset_expands_to_fixed_and_deba_on_digits():
    specs = expand(preset("demo"))
    assert len(specs) == 2 * 2 * 2  # archs x seeds x methods
    assert [s.label for s in specs[:4]] == [
        "tiny_cnn-digits-s0-fixed-baseline",
        "tiny_cnn-digits-s0-deba-baseline",
        "tiny_mlp-digits-s0-fixed-baseline",
        "tiny_mlp-digits-s0-deba-baseline",
    ]
    by_label = {
        s.label: {**s.config.to_dict(), "policy": non_default_options(s.method, s.config.policy)} for s in specs
    }
    # fixed accepts window (it records the DEBA signals) but not cooldown/b_max
    assert by_label["tiny_cnn-digits-s0-fixed-baseline"]["policy"] == {"window": 5}
    assert by_label["tiny_cnn-digits-s0-deba-baseline"]["policy"] == {
        "cooldown": 2,
        "window": 5,
        "b_max": 512,
        "theta_stab": 0.29,
        "theta_conf": 1.00,
    }
    assert by_label["tiny_mlp-digits-s1-deba-baseline"]["policy"] == {
        "cooldown": 2,
        "window": 5,
        "b_max": 512,
        "theta_stab": 0.27,
        "theta_conf": 1.00,
    }
    assert all(c["epochs"] == 12 and c["dataset"] == "digits" for c in by_label.values())
    assert len({s.trial_id for s in specs}) == 8


@pytest.mark.parametrize(
    "name,count,epochs",
    [
        ("paper", 6 * 2 * 5 * 2, 100),
        ("ablations", 6 * 5 * (1 + 5), 100),
        ("profile", 6 * 2 * 3, 100),
        ("methods", 2 * 2 * len(POLICY_NAMES), 10),
        ("methods_paper", 6 * 2 * 5 * len(POLICY_NAMES), 100),
    ],
)
def test_preset_sizes(name, count, epochs):
    specs = expand(preset(name))
    assert len(specs) == count
    assert all(s.config["epochs"] == epochs for s in specs)


def test_ablation_variants_set_their_options_and_fixed_stays_baseline():
    specs = expand(with_overrides(preset("ablations"), archs=["resnet18"], seeds=[2]))
    got = {(s.method, s.variant): non_default_options(s.method, s.config.policy) for s in specs}
    assert got == {
        ("fixed", "baseline"): {},
        ("deba", "baseline"): {},
        ("deba", "universal_thresholds"): {"thresholds": "universal"},
        ("deba", "cooldown2"): {"cooldown": 2},
        ("deba", "cooldown5"): {"cooldown": 5},
        ("deba", "full_history"): {"full_history": True},
    }


def test_profile_is_fixed_only_on_the_profiling_seeds():
    specs = expand(preset("profile"))
    assert {s.method for s in specs} == {"fixed"}
    assert {s.seed for s in specs} == {2, 42, 199}


def test_trial_id_ignores_execution_keys_and_study_name_but_not_the_science():
    base = expand(with_overrides(preset("demo"), archs=["tiny_cnn"], seeds=[0], methods=["deba"]))[0]
    cfg = base.config.to_dict()
    assert trial_id_of(cfg) == base.trial_id
    for key, value in [("data_dir", "/elsewhere"), ("threads", 7), ("device", "cpu"), ("eval_batch_size", 3)]:
        assert key in EXECUTION_KEYS
        assert trial_id_of({**cfg, key: value}) == base.trial_id
    renamed = expand(with_overrides(preset("demo"), name="other", archs=["tiny_cnn"], seeds=[0], methods=["deba"]))[0]
    assert renamed.trial_id == base.trial_id and renamed.study == "other"
    for key, value in [("seed", 1), ("lr", 0.02), ("policy", {**cfg["policy"], "cooldown": 3})]:
        assert trial_id_of({**cfg, key: value}) != base.trial_id
    # More epochs continue the same trial (its first epochs are identical): the id stays.
    assert trial_id_of({**cfg, "epochs": 11}) == base.trial_id
    assert len(base.trial_id) == 12 and int(base.trial_id, 16) >= 0


def test_checkpoint_cadence_is_an_execution_setting():
    study = _study(["--archs", "tiny_cnn", "--seeds", "0", "--methods", "deba", "--checkpoint-every", "5"])
    assert study.checkpoint_every == 5 and _study([]).checkpoint_every == 1
    every5 = expand(study)[0]
    assert every5.trial_id == expand(with_overrides(study, checkpoint_every=1))[0].trial_id
    assert "checkpoint" not in every5.config_json
    assert payload(every5, {}, 5)["checkpoint_every"] == 5


@pytest.mark.parametrize(
    "every,epochs,done_at,saved",
    [
        (1, 4, None, [1, 2, 3, 4]),
        (3, 10, None, [3, 6, 9, 10]),  # the last epoch always
        (3, 10, 5, [3, 5]),  # the diverged epoch (the loop is done) always
        (20, 4, None, [4]),
    ],
)
def test_checkpoint_cadence(every, epochs, done_at, saved):
    from trainables.ray_trainable import checkpoint_due

    last = done_at or epochs
    assert [e for e in range(1, last + 1) if checkpoint_due(e, every, done=e == last)] == saved


def test_preset_policy_options_apply_only_where_accepted():
    # the demo's cooldown/b_max are DEBA options: a fixed-only demo keeps just the window
    specs = expand(_study(["--methods", "fixed"]))
    assert len(specs) == 4 and all(non_default_options(s.method, s.config.policy) == {"window": 5} for s in specs)


def test_study_flag_selects_a_preset_or_names_the_study():
    assert _study(["--study", "paper"]).archs == preset("paper").archs
    renamed = _study(["--study", "mine", "--preset", "profile"])
    assert renamed.name == "mine" and renamed.methods == ("fixed",)
    assert _study(["--study", "mine"]).archs == preset("demo").archs
    assert _study([]).name == "demo"


def test_thresholds_file_applies_to_deba_except_universal(tmp_path):
    path = tmp_path / "thr.json"
    path.write_text(json.dumps({"resnet18": {"theta_stab": 0.7, "theta_conf": 0.9}}))
    study = _study(
        [
            "--preset",
            "ablations",
            "--archs",
            "resnet18",
            "--seeds",
            "2",
            "--thresholds",
            str(path),
            "--variants",
            "baseline,universal_thresholds",
        ]
    )
    got = {(s.method, s.variant): non_default_options(s.method, s.config.policy) for s in expand(study)}
    assert got[("deba", "baseline")] == {"theta_stab": 0.7, "theta_conf": 0.9}
    assert got[("deba", "universal_thresholds")] == {"thresholds": "universal"}
    assert got[("fixed", "baseline")] == {}


def test_cli_overrides_lists_numbers_and_custom_variants():
    study = _study(
        [
            "--archs",
            "tiny_cnn",
            "--seeds",
            "3,4",
            "5",
            "--epochs",
            "4",
            "--policy-opt",
            "cooldown=3",
            "--define-variant",
            "fast:alpha=2.0,cooldown=1",
            "--variants",
            "baseline",
            "fast",
            "--loop-opt",
            "train_limit=200",
            "--cpus-per-trial",
            "0.5",
            "--gpus-per-trial",
            "0",
            "--study",
            "mine",
            "--data-dir",
            "rel/data",
        ]
    )
    assert study.seeds == (3, 4, 5) and study.epochs == 4 and study.name == "mine"
    assert study.cpus_per_trial == 0.5 and study.gpus_per_trial == 0.0
    assert study.data_dir == os.path.abspath("rel/data")
    specs = expand(study)
    assert len(specs) == 3 * (1 + 2)  # seeds x (fixed baseline + deba {baseline, fast})
    fast = [s for s in specs if s.variant == "fast"][0]
    assert non_default_options("deba", fast.config.policy) == {
        "cooldown": 1,
        "window": 5,
        "b_max": 512,
        "alpha": 2.0,
        "theta_stab": 0.29,
        "theta_conf": 1.00,
    }
    assert fast.config.train_limit == 200 and fast.config.data_dir == os.path.abspath("rel/data")


@pytest.mark.parametrize(
    "argv,field,allowed",
    [
        (["--archs", "resnet9"], "archs", "resnet18"),
        (["--datasets", "mnist"], "datasets", "digits"),
        (["--methods", "sgd"], "methods", "deba"),
        (["--variants", "cooldown3"], "variants", "cooldown5"),
        (["--seeds", "-1"], "seeds", ">= 0"),
        (["--seeds", "1,1"], "seeds", "once"),
        (["--seeds", "x"], "seeds", "an integer"),
        (["--epochs", "0"], "epochs", ">= 1"),
        (["--epochs", "2.5"], "epochs", "an integer"),
        (["--gpus-per-trial", "1.5"], "gpus_per_trial", "fraction"),
        (["--cpus-per-trial", "0"], "cpus_per_trial", "> 0"),
        (["--max-failures", "-2"], "max_failures", ">= -1"),
        (["--checkpoint-every", "0"], "checkpoint_every", ">= 1"),
        (["--checkpoint-every", "2.5"], "checkpoint_every", "an integer"),
        (["--b-min", "600"], "b_min", "b_max"),
        (["--alpha", "0.5"], "alpha", "> 1"),
        (["--policy-opt", "colldown=2"], "colldown", "cooldown"),
        (["--methods", "fixed", "--variants", "cooldown2"], "variants", "cooldown"),
        (["--methods", "fixed", "--variants", "baseline,cooldown2"], "variants", "some method of the study"),
        (["--lr", "-1"], "lr", "> 0"),
        (["--loop-opt", "lr=-1"], "lr", "> 0"),
        (["--loop-opt", "seed=3"], "loop_opt", "study grid"),
        (["--loop-opt", "optimiser=adam"], "optimiser", "known:"),
        (["--define-variant", "baseline:cooldown=1"], "variant_defs", "cannot be redefined"),
        (["--define-variant", "nocolon"], "define_variant", "NAME:KEY=VALUE"),
    ],
)
def test_bad_configs_fail_fast_naming_the_field(argv, field, allowed, capsys, tmp_path):
    assert main(["--dry-run", "--results", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert "invalid study" in err and field in err and allowed in err


def test_bad_storage_uri_fails_before_ray_naming_the_field(capsys, tmp_path):
    import ray

    ray.shutdown()  # an earlier test's in-process run_grid may have left its local Ray up

    assert main(["--results", str(tmp_path), "--seeds", "0", "--storage", "nosuchfs://bucket/x"]) == 2
    err = capsys.readouterr().err
    assert "invalid study" in err and "storage='nosuchfs://bucket/x'" in err
    assert not ray.is_initialized()


def test_bad_variant_definition_names_the_trial(tmp_path):
    # thresholds="table" is not a value DebaPolicy accepts; the error names the option and the trial.
    study = _study(
        ["--archs", "resnet18", "--methods", "deba", "--define-variant", "x:thresholds=table", "--variants", "x"]
    )
    with pytest.raises(ValueError, match=r"variant=x.*thresholds='table'.*'arch', 'universal'"):
        expand(study)


def test_bad_thresholds_file(tmp_path):
    path = tmp_path / "thr.json"
    path.write_text(json.dumps({"resnet18": {"theta_stab": -1, "theta_conf": 0.5}}))
    with pytest.raises(ValueError, match=r"thresholds\['resnet18'\].theta_stab"):
        _study(["--thresholds", str(path)])
    path.write_text("{not json")
    with pytest.raises(ValueError, match="thresholds="):
        _study(["--thresholds", str(path)])


def test_dry_run_prints_the_plan_without_ray(capsys, tmp_path):
    import ray

    ray.shutdown()  # an earlier test's in-process run_grid may have left its local Ray up

    assert main(["--dry-run", "--results", str(tmp_path), "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "trials: 4 total, 0 finished (skipped), 4 to run" in out
    assert "1 CPU, 1 GPU if the cluster has GPUs, else CPU-only" in out
    assert out.count(" run  (pending)") == 4
    assert "tiny_cnn-digits-s0-deba-baseline" in out
    assert not ray.is_initialized()


def test_resources_default_to_one_gpu_per_trial_when_the_cluster_has_gpus():
    demo = preset("demo")
    assert resolve_resources(demo, cluster_gpus=0) == {"cpu": 1.0, "gpu": 0.0}
    assert resolve_resources(demo, cluster_gpus=8) == {"cpu": 1.0, "gpu": 1.0}
    packed = with_overrides(demo, gpus_per_trial=0.25, cpus_per_trial=2)
    assert resolve_resources(packed, cluster_gpus=1) == {"cpu": 2.0, "gpu": 0.25}
    one = with_overrides(demo, gpus_per_trial=1)
    with pytest.raises(ValueError, match="gpus_per_trial=1 .*0 GPU"):
        resolve_resources(one, cluster_gpus=0)
    # attached to an autoscaling cluster, GPU workers may not be up yet
    assert resolve_resources(one, cluster_gpus=0, autoscaling=True) == {"cpu": 1.0, "gpu": 1.0}


def test_device_cuda_is_refused_when_trials_get_no_gpu():
    cuda = with_overrides(preset("demo"), loop={"device": "cuda"})
    with pytest.raises(ValueError, match="device=cuda is not allowed: trials get no GPU here .*0 GPU"):
        resolve_resources(cuda, cluster_gpus=0)
    with pytest.raises(ValueError, match=r"gpus_per_trial=0\)"):
        resolve_resources(with_overrides(cuda, gpus_per_trial=0), cluster_gpus=8)
    assert resolve_resources(cuda, cluster_gpus=8) == {"cpu": 1.0, "gpu": 1.0}


def test_data_dir_comes_from_the_study_not_loop():
    with pytest.raises(ValueError, match=r"loop.*data_dir.*--data-dir"):
        expand(with_overrides(preset("demo"), loop={"data_dir": "/data"}))
