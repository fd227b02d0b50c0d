"""Studies end to end on a local Ray (2 CPUs): Parquet rows, ledger re-runs, extension, divergence and
a trial whose process dies mid-run.

Each study is tiny_cnn on 128 digits images, a few epochs: seconds per trial on one core.
"""

from __future__ import annotations

import glob
import json
import math
import os

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from orchestrator.run_grid import main  # noqa: E402
from orchestrator.runner import make_plan, read_plans, run_plan, storage_root  # noqa: E402
from orchestrator.store import EPOCH_SCHEMA, RUN_SCHEMA, ResultsStore, finished_ids  # noqa: E402
from orchestrator.studies import StudySpec  # noqa: E402
from trainables.loop import TrialLoop  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = {"cpu": 1.0, "gpu": 0.0}
# Columns that measure time or memory: they differ between any two runs of the same trial.
TIMING = {"epoch_time_s", "eval_time_s", "wall_time_s", "samples_per_s", "peak_mem_mb", "measure_time_s"}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
    yield
    ray.shutdown()


def tiny(name: str, seeds=(0,), methods=("fixed", "deba"), epochs=3, datasets=("digits",), **kw) -> StudySpec:
    return StudySpec(
        name=name,
        archs=("tiny_cnn",),
        datasets=datasets,
        seeds=tuple(seeds),
        methods=methods,
        epochs=epochs,
        loop={"train_limit": 128, "test_limit": 64, "threads": 1, **kw.pop("loop", {})},
        policy={"cooldown": 1, "window": 3},
        thresholds={"tiny_cnn": {"theta_stab": 0.3, "theta_conf": 1.1}},
        gpus_per_trial=0.0,
        max_failures=kw.pop("max_failures", 1),
        **kw,
    )


def cpu_args(results: str, train_limit: int = 128, test_limit: int = 64) -> list[str]:
    """run_grid flags of a quick CPU-only call: results, a small split, one thread, quiet."""
    return ["--results", results, "--loop-opt", f"train_limit={train_limit}", "--loop-opt", f"test_limit={test_limit}",
            "--loop-opt", "threads=1", "--gpus-per-trial", "0", "--quiet", "--verbose", "0"]  # fmt: skip


def run(study: StudySpec, results: str):
    plan = make_plan(study, results)
    return plan, run_plan(plan, results, CPU, echo=False, verbose=0)


def epochs_table(results: str, study: str):
    return pq.read_table(os.path.join(results, study, "epochs")).to_pandas()


def mtimes(results: str, study: str) -> dict[str, float]:
    return {p: os.path.getmtime(p) for p in glob.glob(os.path.join(results, study, "*", "*.parquet"))}


def test_study_end_to_end_then_rerun_and_extend(tmp_path):
    results = str(tmp_path)
    plan, report = run(tiny("e2e"), results)
    assert len(plan.trials) == 2 and report.experiments == {next(iter(read_plans(storage_root(results, "e2e")))): "new"}
    # CPU-only trials hide every GPU from their process.
    assert [r.metrics["cuda_visible_devices"] for r in report.grids[0]] == ["", ""]

    # Parquet: rows = trials x epochs, the contract schema, one row per (trial_id, epoch).
    for path in glob.glob(os.path.join(results, "e2e", "epochs", "*.parquet")):
        assert pq.read_schema(path).equals(EPOCH_SCHEMA)
    for path in glob.glob(os.path.join(results, "e2e", "runs", "*.parquet")):
        assert pq.read_schema(path).equals(RUN_SCHEMA)
    ep = epochs_table(results, "e2e")
    assert len(ep) == 2 * 3
    assert sorted(ep.groupby("trial_id")["epoch"].apply(list)) == [[1, 2, 3], [1, 2, 3]]
    assert set(ep["trial_id"]) == {t.trial_id for t in plan.trials}
    assert set(ep["study"]) == {"e2e"} and set(ep["method"]) == {"fixed", "deba"}
    assert ep["test_acc"].between(0, 1).all() and (ep["epoch_time_s"] > 0).all()
    fixed = ep[ep["method"] == "fixed"]
    assert (fixed["batch_size"] == 64).all() and (fixed["decision"] == "hold").all()
    # Every epoch trains at the previous epoch's next_batch_size (clamped to the 128 training images).
    for _, g in ep.groupby("trial_id"):
        g = g.sort_values("epoch")
        assert list(g["batch_size"])[1:] == [min(b, 128) for b in list(g["next_batch_size"])[:-1]]
    runs = ResultsStore(results, "e2e").read_runs()
    assert {r["status"] for r in runs.values()} == {"completed"}
    for tid, r in runs.items():
        rows = ep[ep["trial_id"] == tid].sort_values("epoch")
        assert r["epochs_done"] == 3 and r["final_test_acc"] == rows["test_acc"].iloc[-1]
        assert r["train_time_s"] == pytest.approx(rows["epoch_time_s"].sum())
        assert (r["cpus_per_trial"], r["gpus_per_trial"], r["device"]) == (1.0, 0.0, "cpu")
        assert r["ray_version"] == ray.__version__ and r["torch_version"]
        assert json.loads(r["config_json"])["train_limit"] == 128

    # Re-running the finished study: nothing pending, the CLI starts no trial and writes nothing.
    before = mtimes(results, "e2e")
    assert make_plan(tiny("e2e"), results).pending == ()
    rerun = run(tiny("e2e"), results)[1]
    assert rerun.experiments == {} and rerun.grids == []
    assert mtimes(results, "e2e") == before

    # Extending the seeds runs only the new seed's trials, in a new experiment.
    plan2, report2 = run(tiny("e2e", seeds=(0, 1)), results)
    new_ids = {t.trial_id for t in plan2.pending}
    assert len(plan2.trials) == 4 and len(new_ids) == 2 and {t.seed for t in plan2.pending} == {1}
    assert list(report2.experiments.values()) == ["new"]
    exp = read_plans(storage_root(results, "e2e"))[next(iter(report2.experiments))]
    assert set(exp["trials"]) == new_ids
    after = mtimes(results, "e2e")
    assert all(after[p] == t for p, t in before.items())  # old trials' files untouched
    assert len(epochs_table(results, "e2e")) == 4 * 3
    assert len(finished_ids(ResultsStore(results, "e2e").read_runs())) == 4


def test_cli_rerun_of_finished_study_starts_nothing(tmp_path, capsys):
    results = str(tmp_path)
    argv = ["--study", "cli", "--archs", "tiny_cnn", "--seeds", "0", "--methods", "fixed", "--epochs", "2",
            "--no-analysis", *cpu_args(results)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trials: 1 total, 0 finished (skipped), 1 to run" in out and "Ray overhead per epoch" in out
    before = mtimes(results, "cli")
    assert len(before) == 2
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nothing to run" in out and "1 finished (skipped), 0 to run" in out
    assert mtimes(results, "cli") == before
    assert len(read_plans(storage_root(results, "cli"))) == 1  # no second experiment


def test_nan_producing_trial_is_recorded_as_diverged(tmp_path):
    results = str(tmp_path)
    plan, _ = run(tiny("nan", methods=("fixed",), epochs=4, loop={"lr": 1e12}), results)
    (run_row,) = ResultsStore(results, "nan").read_runs().values()
    assert run_row["status"] == "diverged" and run_row["error"] is None
    ep = epochs_table(results, "nan")
    assert run_row["epochs_done"] == len(ep) < 4  # stopped at the first non-finite epoch
    assert not math.isfinite(ep.sort_values("epoch")["train_loss"].iloc[-1])
    # A diverged trial is finished: a re-run does not repeat it.
    assert make_plan(tiny("nan", methods=("fixed",), epochs=4, loop={"lr": 1e12}), results).pending == ()


@pytest.mark.parametrize(
    "every,fail_at,resumed",
    [
        (1, 2, (1, 2)),  # the epoch-2 checkpoint is lost when the process dies before the driver saw it
        (2, 3, (2,)),  # epoch 3 has no checkpoint: the retry resumes from epoch 2 and re-reports epoch 3
    ],
)
def test_trial_killed_mid_run_resumes_from_checkpoint_with_identical_records(tmp_path, every, fail_at, resumed):
    results = str(tmp_path / "results")
    study = tiny(
        "fault",
        methods=("deba",),
        epochs=4,
        checkpoint_every=every,
        hooks={"fail_at_epoch": fail_at, "fail_marker_dir": str(tmp_path / "markers")},
    )
    plan, report = run(study, results)
    (spec,) = plan.trials
    assert os.path.exists(tmp_path / "markers" / f"{spec.trial_id}.failed")  # the process did die
    (grid,) = report.grids
    assert grid[0].metrics["resumed_from_epoch"] in resumed  # the retry restored a checkpoint
    (row,) = ResultsStore(results, "fault").read_runs().values()
    assert row["status"] == "completed" and row["epochs_done"] == 4
    stored = ResultsStore(results, "fault").read_epochs(spec.trial_id)
    assert [r["epoch"] for r in stored] == [1, 2, 3, 4]  # each epoch exactly once

    # The same trial without interruption, in this process: every non-timing value is identical.
    loop = TrialLoop(spec.config)
    reference = [loop.run_epoch() for _ in range(4)]
    for got, want in zip(stored, reference):
        for key, value in want.items():
            if key not in TIMING:
                assert got[key] == value or (value != value and got[key] != got[key]), (key, got[key], value)


def test_failed_trial_gets_a_runs_row_and_keeps_the_others(tmp_path):
    results = str(tmp_path / "results")
    # cifar10 with no local copy and no download fails when the trial loads its data.
    study = tiny(
        "fail",
        methods=("fixed",),
        datasets=("digits", "cifar10"),
        max_failures=0,
        data_dir=str(tmp_path / "no-data"),
        loop={"download": False},
    )
    plan, report = run(study, results)
    runs = {r["dataset"]: r for r in ResultsStore(results, "fail").read_runs().values()}
    assert runs["cifar10"]["status"] == "failed" and runs["cifar10"]["epochs_done"] == 0
    assert "DatasetNotFoundError" in runs["cifar10"]["error"] and "cifar-10-batches-py" in runs["cifar10"]["error"]
    assert runs["digits"]["status"] == "completed"
    assert len(epochs_table(results, "fail")) == 3  # the digits trial's rows, all of them
    pending = make_plan(study, results).pending  # the failed trial runs again next time
    assert [t.dataset for t in pending] == ["cifar10"]


def test_reconstruction_runs_both_phases_in_one_command(tmp_path, capsys):
    results = str(tmp_path)
    argv = ["--study", "reconstruction", "--datasets", "digits", "--seeds", "0,1", "--epochs", "3",
            "--variants", "baseline,eps_zero,epoch_mean_signals", "--policy-opt", "cooldown=1", "--policy-opt",
            "window=3", *cpu_args(results)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "phase 2: 6 trial(s) with thresholds calibrated" in out
    assert "Readings ranked by trajectory distance" in out
    pinned = json.load(open(os.path.join(results, "reconstruction", "calibration.json")))["entries"]
    assert len(pinned) == 3  # one per signal reading: baseline, eps_zero, epoch_mean_signals
    by_reading = {(e["signal_source"], e["confidence_eps"]): e for e in pinned}
    runs = ResultsStore(results, "reconstruction").read_runs()
    assert len(runs) == 8 and {r["status"] for r in runs.values()} == {"completed"}
    for r in runs.values():
        policy = json.loads(r["config_json"])["policy"]
        if r["method"] == "deba":
            key = (policy.get("signal_source", "last_step"), policy.get("confidence_eps", 1e-8))
            assert (policy["theta_stab"], policy["theta_conf"]) == (
                by_reading[key]["theta_stab"],
                by_reading[key]["theta_conf"],
            )
    assert main(argv) == 0  # a re-run plans both phases and finds everything done
    assert "nothing to run" in capsys.readouterr().out


def test_phase_two_does_not_rerun_the_fixed_runs_that_just_failed(tmp_path, capsys):
    results = str(tmp_path / "results")
    argv = ["--study", "reconstruction", "--datasets", "digits", "--seeds", "0", "--epochs", "2",
            "--variants", "baseline", "--max-failures", "0", "--test-hook", "fail_at_epoch=1", "--test-hook",
            f"fail_marker_dir={tmp_path / 'markers'}", "--no-analysis", *cpu_args(results, 64, 32)]  # fmt: skip
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "phase 2: 0 trial(s)" in captured.out and "not finished; re-run" in captured.err
    (row,) = ResultsStore(results, "reconstruction").read_runs().values()
    assert (row["method"], row["status"], row["epochs_done"]) == ("fixed", "failed", 1)  # one attempt, not two


def test_trials_launch_longest_first_and_tune_shows_their_identifiers(tmp_path):
    from ray import tune

    from orchestrator.runner import IDENTIFIERS

    results = str(tmp_path)
    study = StudySpec(
        name="order",
        archs=("tiny_mlp", "tiny_cnn"),
        datasets=("digits",),
        seeds=(0,),
        methods=("fixed",),
        epochs=1,
        loop={"train_limit": 64, "test_limit": 32, "threads": 1},
        gpus_per_trial=0.0,
        cpus_per_trial=2.0,
    )  # one trial at a time: the launch order shows
    plan = make_plan(study, results)
    order = [t.trial_id for t in plan.launch_order()]
    assert [t.arch for t in plan.launch_order()] == ["tiny_cnn", "tiny_mlp"]  # more FLOPs first
    report = run_plan(plan, results, {"cpu": 2.0, "gpu": 0.0}, echo=False, verbose=0)
    (grid,) = report.grids
    assert [r.config["trial_id"] for r in grid] == order
    started = {r.config["trial_id"]: r.metrics_dataframe["timestamp"].min() for r in grid}
    assert started[order[0]] <= started[order[1]]
    specs = {t.trial_id: t for t in plan.trials}
    for r in grid:
        assert {k: r.config[k] for k in IDENTIFIERS} == {
            k: getattr(specs[r.config["trial_id"]], k) for k in IDENTIFIERS
        }
    # Tune's own view of the finished experiment, without reading Parquet.
    exp = os.path.join(results, "order", "_ray", next(iter(report.experiments)))
    from trainables.ray_trainable import train_trial

    restored = tune.Tuner.restore(exp, trainable=tune.with_parameters(train_trial, payloads={}))
    df = restored.get_results().get_dataframe()
    assert set(df["config/arch"]) == {"tiny_cnn", "tiny_mlp"} and set(df["config/method"]) == {"fixed"}
    assert "test_acc" in df and (df["epoch"] == 1).all()
