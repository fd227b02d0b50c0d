"""Malformed inputs to the three CLIs: each exits 2 naming the field, before Ray starts or anything trains."""

from __future__ import annotations

import json
import os

import pytest

from analysis.cli import main as analysis_main
from benchmarks.synthetic_store import synthetic_store
from orchestrator.run_grid import main as grid_main
from trainables.run import main as trial_main


@pytest.fixture
def files(tmp_path):
    """Inputs the cases refer to: a plain file, a thresholds file per problem, a small store."""
    (tmp_path / "a_file").write_text("not a directory")
    for name, data in {
        "thr_unknown_arch.json": {"resnet-18": {"theta_stab": 0.3, "theta_conf": 0.5}},
        "thr_outside.json": {"resnet18": {"theta_stab": 0.3, "theta_conf": 0.5}},
        "thr_negative.json": {"tiny_cnn": {"theta_stab": -1, "theta_conf": 0.5}},
        "thr_partial.json": {"tiny_cnn": {"theta_stab": 0.3}},
        "thr_list.json": [1, 2],
    }.items():
        (tmp_path / name).write_text(json.dumps(data))
    (tmp_path / "thr_broken.json").write_text("{not json")
    (tmp_path / "thr_latin1.json").write_bytes(
        '{"tiny_cnn": {"theta_stab": 0.3, "theta_conf": 0.5}} # é'.encode("latin-1")
    )
    (tmp_path / "thr_nan.json").write_text('{"tiny_cnn": {"theta_stab": NaN, "theta_conf": 0.5}}')
    synthetic_store(
        str(tmp_path / "store"),
        "s",
        archs=["resnet18"],
        datasets=["cifar10"],
        seeds=[1, 2],
        methods=[("fixed", "baseline"), ("deba", "baseline")],
        n_epochs=3,
    )
    return tmp_path


GRID_CASES = [  # (argv, text the error names)
    (["--study", ".."], "study='..'"),
    (["--study", "."], "study='.'"),
    (["--study", "a/b"], "study='a/b'"),
    (["--study", "_x"], "study='_x'"),
    (["--results", "s3:/bucket/x"], "results='s3:/bucket/x'"),
    (["--results", "gs:bucket"], "results='gs:bucket'"),
    (["--results", "{tmp}/a_file"], "is a file"),
    (["--results", "{tmp}/a_file/sub"], "not a writable directory"),
    (["--storage", "s3:/bucket"], "storage='s3:/bucket'"),
    (["--theta-stab", "-1"], "theta_stab=-1.0"),
    (["--theta-conf", "0"], "theta_conf=0.0"),
    (["--decision-rule", "paper"], "decision_rule='paper'"),
    (["--confidence-eps=-1e-8"], "confidence_eps"),
    (["--cooldown-on-noop", "maybe"], "cooldown_on_noop='maybe'"),
    (["--policy-opt", "theta_stab=-1"], "theta_stab=-1"),  # the old spelling: checked alike
    (["--policy-opt", "colldown=2"], "did you mean 'cooldown'"),
    (["--thresholds", "{tmp}/thr_unknown_arch.json"], "resnet-18"),
    (["--thresholds", "{tmp}/thr_outside.json"], "resnet18"),
    (["--thresholds", "{tmp}/thr_negative.json"], "theta_stab"),
    (["--thresholds", "{tmp}/thr_partial.json"], "theta_conf"),
    (["--thresholds", "{tmp}/thr_list.json"], "thresholds"),
    (["--thresholds", "{tmp}/thr_broken.json"], "thresholds"),
    (["--thresholds", "{tmp}/thr_outside.json", "--archs", "resnet18", "--theta-stab", "0.3"], "--theta-stab"),
    (["--augment", "flip"], "augment='flip'"),
    (["--loop-opt", "augment=flip"], "augment"),
    (["--loop-opt", "optimiser=adam"], "known:"),
    (["--loop-opt", "train_limt=100"], "did you mean 'train_limit'"),
    (["--loop-opt", "record_epoch_mean=1"], "record_epoch_mean"),
    (["--study", "reconstruction", "--thresholds", "{tmp}/thr_outside.json", "--archs", "resnet18"], "thresholds"),
    # Requests with no effect, or in conflict (the red team's list).
    (["--methods", "fixed", "--theta-stab", "0.3"], "--theta-stab is an option of deba"),
    (["--methods", "fixed", "--policy-opt", "theta_stab=0.3"], "--theta-stab is an option of deba"),
    (["--loop-opt", "lr=0.2", "--lr", "0.05"], "lr is given twice"),
    (["--batch-size", "48", "--policy-opt", "b0=128"], "b0 is given twice"),
    (["--subset-seed", "5"], "subset_seed=5"),
    # URIs, resources and everything else checkable before Ray starts.
    (["--results", "gs://"], "the bucket is missing"),
    (["--results", "s3://"], "the bucket is missing"),
    (["--storage", "s3://"], "the bucket is missing"),
    (["--results", "ftp://host/x"], "a scheme pyarrow.fs opens"),
    (["--cpus-per-trial", "4096"], "cpus_per_trial=4096"),
    (["--seeds", str(2**32)], "seeds=4294967296"),
    (["--study", "s" * 300], "at most 100 characters"),
    (["--study", "études"], "study='études'"),
    (["--study", ""], "study=''"),
    (["--results", "{tmp}/bad\udcff"], "UTF-8"),  # a byte the file system holds that is not UTF-8
    (["--thresholds", "{tmp}/thr_latin1.json"], "not UTF-8 text"),
    (["--thresholds", "{tmp}/thr_nan.json"], "theta_stab"),
    # 30 more of our own.
    (["--epochs", "-5"], "epochs=-5"),
    (["--seeds", "1.5"], "seeds='1.5'"),
    (["--archs", "tiny_cnn,tiny_cnn"], "each value once"),
    (["--methods", "deba", "--variants", "rule_either,rule_either"], "each value once"),
    (["--train-limit", "0"], "train_limit=0"),
    (["--test-limit", "-1"], "test_limit=-1"),
    (["--subset-seed", "-1", "--train-limit", "100"], "subset_seed=-1"),
    (["--gpus-per-trial", "-1"], "gpus_per_trial=-1.0"),
    (["--gpus-per-trial", "nan"], "gpus_per_trial=nan"),
    (["--cpus-per-trial", "inf"], "cpus_per_trial=inf"),
    (["--max-failures", "1.5"], "max_failures='1.5'"),
    (["--cooldown", "-1"], "cooldown=-1"),
    (["--window", "0"], "window=0"),
    (["--alpha", "1"], "alpha=1.0"),
    (["--beta", "1.2"], "beta=1.2"),
    (["--b-min", "0"], "b_min=0"),
    (["--b-max", "16"], "b0=64"),
    (["--signal-source", "mean"], "signal_source='mean'"),
    (["--confidence-reference", "mode"], "confidence_reference='mode'"),
    (["--lr", "0"], "lr=0.0"),
    (["--momentum", "1"], "momentum=1.0"),
    (["--weight-decay=-0.1"], "weight_decay=-0.1"),
    (["--compile", "fast"], "compile='fast'"),
    (["--threads", "0"], "threads=0"),
    (["--eval-batch-size", "0"], "eval_batch_size=0"),
    (["--define-variant", "x y:cooldown=2", "--variants", "x y"], "variant_defs='x y'"),
    (["--define-variant", "rule_either:decision_rule=both"], "built-in variants cannot be redefined"),
    (["--variants", "nosuch"], "variants='nosuch'"),
    (["--verbose", "5"], "verbose='5'"),
    (["--preset", "nosuch"], "preset='nosuch'"),
    (["--timm-input", "native"], "timm_input='native'"),
    (["--archs", "timm/no_such_model_xyz"], "timm/no_such_model_xyz"),
    (["--methods", "divebatch", "--delta", "0"], "delta=0.0"),
    (["--record-epoch-mean", "maybe"], "record_epoch_mean='maybe'"),
    (["--methods", "fixed", "--variants", "cooldown2"], "variants='cooldown2'"),
]


def _written(root) -> set[str]:
    """Every path under `root` (a refused command must add none)."""
    return {str(p) for p in root.rglob("*")}


@pytest.mark.parametrize("argv, named", GRID_CASES)
def test_run_grid_refuses_before_ray(files, capsys, argv, named):
    import ray

    ray.shutdown()  # an earlier test's in-process run_grid may have left its local Ray up
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    results = [] if "--results" in argv else ["--results", str(files / "results")]
    seeds = [] if "--seeds" in argv else ["--seeds", "0"]
    before = _written(files)
    assert grid_main(argv + results + seeds) == 2
    err = capsys.readouterr().err
    assert "invalid study" in err and named in err, err
    assert not ray.is_initialized()
    assert _written(files) == before  # nothing was written


def test_run_grid_refuses_a_relative_results_path_inside_a_ray_job(files, capsys, monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "."}}))
    monkeypatch.chdir(files)
    assert grid_main(["--seeds", "0"]) == 2  # the default ./results
    err = capsys.readouterr().err
    assert "results='results'" in err and "deleted with the job" in err
    assert grid_main(["--seeds", "0", "--results", str(files / "abs"), "--dry-run"]) == 0


TRIAL_CASES = [
    (["--arch", "resnet-18"], "arch"),
    (["--dataset", "mnist"], "dataset"),
    (["--method", "sgd"], "method"),
    (["--epochs", "0"], "epochs"),
    (["--lr", "-0.1"], "lr"),
    (["--momentum", "1.5"], "momentum"),
    (["--policy-opt", "cooldwn=3", "--method", "deba", "--threshold-source", "universal"], "cooldwn"),
    (["--policy-opt", "nokeyvalue"], "KEY=VALUE"),
    (["--method", "deba", "--decision-rule", "strict", "--threshold-source", "universal"], "decision_rule"),
    (["--checkpoint-dir", "{tmp}/a_file"], "--checkpoint-dir"),
    (["--no-augment", "--augment", "crop_flip"], "augment is given twice"),
    (["--method", "fixed", "--cooldown", "3"], "'cooldown'"),
    (["--seed", "-1"], "seed=-1"),
    (["--method", "fixed", "--variant", "cooldown2"], "variant='cooldown2'"),
    (["--method", "deba", "--variant", "cooldown2", "--cooldown", "5"], "variant='cooldown2'"),
    (["--subset-seed", "3", "--train-limit", "null", "--test-limit", "null"], "subset_seed=3"),
    (["--out", "{tmp}"], "--out"),
    (["--out", "{tmp}/a_file/x.jsonl"], "--out"),
]


@pytest.mark.parametrize("argv, named", TRIAL_CASES)
def test_trainables_run_refuses_before_training(files, capsys, argv, named):
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    base = {"--arch": "tiny_cnn", "--dataset": "digits", "--epochs": "1"}
    given = set(argv[::2])
    full = [x for k, v in base.items() if k not in given for x in (k, v)] + argv
    limits = [] if "--train-limit" in argv else ["--train-limit", "64", "--test-limit", "32"]
    before = _written(files)
    assert trial_main(full + limits) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith("error: ") and named in err, err
    assert "epoch   1/" not in out  # nothing trained
    assert _written(files) == before  # nothing was written


ANALYSIS_CASES = [
    (["{tmp}/missing"], "RESULTS_DIR"),
    (["{tmp}/a_file"], "RESULTS_DIR"),
    (["s3:/x"], "RESULTS_DIR"),
    (["{tmp}/store", "--study", "nope"], "--study nope"),
    (["{tmp}/store", "--out", "{tmp}/a_file"], "--out"),
]


@pytest.mark.parametrize("argv, named", ANALYSIS_CASES)
def test_analysis_refuses_bad_arguments(files, capsys, argv, named):
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    assert analysis_main(argv + ["--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err, err
    assert not os.path.exists("reports/nope")


def test_a_quoted_tilde_is_the_home_folder_not_a_folder_named_tilde(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert grid_main(["--results", "~/x", "--seeds", "0", "--dry-run"]) == 0
    assert f"results: {tmp_path / 'home' / 'x' / 'demo'}" in capsys.readouterr().out
    assert not (tmp_path / "~").exists()


def test_a_variant_name_means_its_options_in_trainables_run_as_in_run_grid():
    from trainables.run import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--arch", "tiny_cnn", "--dataset", "digits", "--method", "deba",
                                                      "--variant", "cooldown2"]))  # fmt: skip
    assert (cfg.variant, cfg.policy["cooldown"]) == ("cooldown2", 2)
