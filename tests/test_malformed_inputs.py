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
]


@pytest.mark.parametrize("argv, named", GRID_CASES)
def test_run_grid_refuses_before_ray(files, capsys, argv, named):
    import ray

    argv = [a.replace("{tmp}", str(files)) for a in argv]
    results = [] if "--results" in argv else ["--results", str(files / "results")]
    assert grid_main(argv + results + ["--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "invalid study" in err and named in err, err
    assert not ray.is_initialized()
    assert not (files / "s3:").exists() and not (files / "gs:bucket").exists()


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
    (["--out", "{tmp}"], "--out"),
    (["--out", "{tmp}/a_file/x.jsonl"], "--out"),
]


@pytest.mark.parametrize("argv, named", TRIAL_CASES)
def test_trainables_run_refuses_before_training(files, capsys, argv, named):
    argv = [a.replace("{tmp}", str(files)) for a in argv]
    base = {"--arch": "tiny_cnn", "--dataset": "digits", "--epochs": "1"}
    given = set(argv[::2])
    full = [x for k, v in base.items() if k not in given for x in (k, v)] + argv
    assert trial_main(full + ["--train-limit", "64", "--test-limit", "32"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and named in err, err
    assert "epoch   1/" not in out  # nothing trained


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
