"""The CLI (`python -m analysis`), the report directory, JSON output and the summarize API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from analysis.cli import main
from analysis.report import summarize
from benchmarks.synthetic_store import run_row, synthetic_store, trial_rows, write_trial

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trial(root, study, tid, arch, seed, method, **cols):
    df = trial_rows(study, tid, arch, "digits", seed, method, "baseline", 3, **cols)
    write_trial(str(root), study, tid, df, run_row(study, tid, arch, "digits", seed, method))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """resnet18: fixed and deba, seeds 1 and 2; mobilenetv3: one seed of each."""
    root = tmp_path_factory.mktemp("store")
    _trial(root, "s", "f1", "resnet18", 1, "fixed", test_acc=0.70, epoch_time_s=10.0,
           grad_norm_variation=[9.0, 0.2, 0.4], confidence=[9.0, 1.0, 3.0])  # fmt: skip
    _trial(root, "s", "f2", "resnet18", 2, "fixed", test_acc=0.80, epoch_time_s=20.0)
    _trial(root, "s", "d1", "resnet18", 1, "deba", test_acc=0.75, epoch_time_s=5.0,
           batch_size=[64, 96, 144], decision=["increase", "increase", "hold"])  # fmt: skip
    _trial(root, "s", "d2", "resnet18", 2, "deba", test_acc=0.78, epoch_time_s=15.0)
    _trial(root, "s", "mf", "mobilenetv3", 1, "fixed", test_acc=0.5)
    _trial(root, "s", "md", "mobilenetv3", 1, "deba", test_acc=0.6, epoch_time_s=2.5)
    return str(root)


def test_json_output(small, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([small, "--study", "s", "--out", str(out), "--json", "--no-plots"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"comparison", "taxonomy", "calibration"} <= set(data)
    rows = {r["arch"]: r for r in data["comparison"]}
    r = rows["resnet18"]
    assert (r["dataset"], r["method"], r["variant"], r["n_seeds"]) == ("digits", "deba", "baseline", 2)
    assert r["speedup_pct"] == pytest.approx(37.5)  # seeds: 100(1-15/30), 100(1-45/60)
    assert r["throughput_x"] == pytest.approx(1.666666667)  # (2 + 4/3) / 2
    assert r["dacc_mean"] == pytest.approx(1.5) and r["dacc_std"] == pytest.approx(4.949747468)
    m = rows["mobilenetv3"]
    assert m["dacc_std"] is None and m["speedup_std"] is None  # one seed: NaN -> null
    assert m["dacc_mean"] == pytest.approx(10.0) and m["throughput_x"] == pytest.approx(4.0)
    tax = {t["arch"]: t for t in data["taxonomy"]}
    assert set(tax["resnet18"]) >= {"arch", "dataset", "S_mean", "S_std", "class"}
    assert tax["mobilenetv3"]["S_std"] is None
    # resnet18 epochs >= 2: dN [0.2, 0.4, 0.1, 0.1] -> p75 0.25; confidence [1, 3, 1, 1] -> 1
    assert data["calibration"]["resnet18"] == {
        "theta_stab": pytest.approx(0.25), "theta_conf": pytest.approx(1.0)}  # fmt: skip
    assert data["calibration"]["mobilenetv3"] == {
        "theta_stab": pytest.approx(0.1), "theta_conf": pytest.approx(1.0)}  # fmt: skip
    # The calibration file has exactly the --thresholds form.
    written = json.loads((out / "calibration.json").read_text())
    assert written == data["calibration"]
    assert all(set(v) == {"theta_stab", "theta_conf"} for v in written.values())


def test_markdown_output_and_report_with_plots(small, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main([small, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "## Comparison with the fixed baseline" in text
    assert "| resnet18 | digits | deba | baseline | 2 |" in text
    assert "+1.50 ± 4.95" in text  # dAcc mean ± std
    assert f"python orchestrator/run_grid.py --study paper --thresholds {out}/calibration.json" in text
    report = (out / "report.md").read_text()
    assert report.startswith("# Adaptive batch-size study report: s")
    assert "## Stability taxonomy (Table 2)" in report and "## DEBA dynamics per run" in report
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert pngs == ["accuracy_curves.png", "batch_size_trajectories.png", "gradvar_vs_batch.png",
                    "taxonomy.png", "time_vs_batch.png"]  # fmt: skip
    for name in pngs:
        assert f"]({name})" in report
        head = (out / name).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n"


def test_default_out_dir_and_all_studies(tmp_path, monkeypatch, capsys):
    root = tmp_path / "results"
    synthetic_store(str(root), "p", archs=["resnet18"], datasets=["digits"], seeds=[1, 2],
                    methods=[("fixed", "baseline"), ("deba", "baseline")], n_epochs=6)  # fmt: skip
    synthetic_store(str(root), "q", archs=["vit_b16"], datasets=["digits"], seeds=[1],
                    methods=[("fixed", "baseline"), ("deba", "baseline")], n_epochs=6)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main([str(root), "--json", "--no-plots"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["studies"] == ["p", "q"]
    assert sorted((r["study"], r["arch"]) for r in data["comparison"]) == [
        ("p", "resnet18"), ("q", "vit_b16")]  # fmt: skip
    assert set(data["calibration"]) == {"resnet18", "vit_b16"}
    assert (tmp_path / "reports" / "p+q" / "report.md").exists()
    assert main([str(root), "--study", "q", "--json", "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["studies"] == ["q"]


def test_profiling_store_with_fixed_runs_only(tmp_path, capsys):
    root = tmp_path / "results"
    synthetic_store(str(root), "profile", archs=["resnet18"], datasets=["cifar10"],
                    seeds=[2, 42, 199], methods=[("fixed", "baseline")], n_epochs=5)  # fmt: skip
    assert main([str(root), "--out", str(tmp_path / "o"), "--json", "--no-plots"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["comparison"] == []
    assert [(t["arch"], t["n_seeds"]) for t in data["taxonomy"]] == [("resnet18", 3)]
    assert set(data["calibration"]) == {"resnet18"}
    assert "No adaptive runs to compare" in summarize(str(root))


@pytest.mark.parametrize("case, message, code", [
    ("empty", "no study found", 1),
    ("no_fixed", "no fixed baseline", 1),
    ("schema", "missing column 'test_acc'", 1),
    ("unknown_study", "--study nope: not in", 2),  # a bad argument, not bad data
])  # fmt: skip
def test_bad_input_exits_non_zero(tmp_path, capsys, case, message, code):
    root = tmp_path / "r"
    os.makedirs(root)
    args = [str(root), "--out", str(tmp_path / "o"), "--no-plots"]
    if case == "no_fixed":
        _trial(root, "s", "d", "resnet18", 1, "deba")
    elif case == "schema":
        df = trial_rows("s", "t", "resnet18", "digits", 1, "fixed").drop(columns=["test_acc"])
        write_trial(str(root), "s", "t", None, run_row("s", "t", "resnet18", "digits", 1, "fixed"))
        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(root / "s" / "epochs")
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), root / "s" / "epochs" / "t.parquet")
    elif case == "unknown_study":
        _trial(root, "s", "f", "resnet18", 1, "fixed")
        args += ["--study", "nope"]
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "o").exists()


def test_summarize_api(small, tmp_path):
    text = summarize(small, "s")
    assert "## Calibrated thresholds (Table 1)" in text and "| resnet18 |" in text
    empty = tmp_path / "empty"
    os.makedirs(empty)
    assert "Analysis not available" in summarize(str(empty)) and "no study found" in summarize(str(empty))


@pytest.mark.slow
def test_python_m_analysis_subprocess(small, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "analysis", small, "--out", str(tmp_path / "o"), "--json", "--no-plots"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["comparison"][0]["method"] == "deba"
    bad = subprocess.run([sys.executable, "-m", "analysis", str(tmp_path / "missing")],
                         capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_a_store_whose_only_baseline_file_is_truncated_names_the_file(tmp_path, capsys):
    import pyarrow.parquet as pq

    synthetic_store(str(tmp_path), "s", archs=("resnet18",), datasets=("cifar10",), seeds=(1,),
                    methods=[("fixed", "baseline"), ("deba", "baseline")], n_epochs=3)  # fmt: skip
    fixed = next(p for p in (tmp_path / "s" / "runs").iterdir() if "fixed" in pq.read_table(p)["method"].to_pylist())
    epochs = tmp_path / "s" / "epochs" / fixed.name
    epochs.write_bytes(epochs.read_bytes()[:40])
    assert main([str(tmp_path), "--no-plots", "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert "no fixed baseline" in err and f"{epochs} cannot be read" in err
