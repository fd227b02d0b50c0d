"""The Python parts of the GPU visit (`benchmarks/run_gpu.sh`) that are not benchmarks of their own.

    python -m benchmarks.gpu_visit epoch-times DIR FILE      step 5: B=64 epoch times from DIR's smoke result
    python -m benchmarks.gpu_visit table1 --work DIR ...     step 4: the Table 1 profile (run_grid, or no Ray)
    python -m benchmarks.gpu_visit table1-epochs ...          how many Table 1 epochs fit a time limit
    python -m benchmarks.gpu_visit find-fashion-mnist [DIR]   where the Fashion-MNIST IDX files are

Step 4 runs `orchestrator/run_grid.py --study table1_full --archs resnet18,mobilenetv3` when Ray is
importable; without Ray it expands the very same study (run_grid's own parser, so the same trial ids
and configs) and runs each trial in its own process through `TrialLoop`, writing the store's layout
(`<results>/<study>/epochs/<trial_id>.parquet`, `runs/<trial_id>.parquet`) as the Ray sink does, so
`python -m analysis <results> --study table1_full` reads either. `--epochs auto` sizes the epochs
to the step's time limit from the smoke test's B=64 epoch times (and the packing benchmark's
slowdown of two trials sharing the GPU, when it ran).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import ROOT

TABLE1_STUDY = "table1_full"
TABLE1_ARCHS = ("resnet18", "mobilenetv3")
TABLE1_SEEDS = (2,)  # the first of the paper's profile seeds (trainables/paper.py PROFILE_SEEDS)
FASHION_SPLIT = (60_000, 10_000)
MAX_EPOCHS = 100  # the paper's
# Fixed costs of the Table 1 step before the first epoch (Ray start, trial processes importing torch,
# loading Fashion-MNIST onto the device) and a margin for the last epoch's checkpoint and the runs rows.
TABLE1_STARTUP_S = 45.0
TABLE1_MARGIN = 0.9
DEFAULT_SHARE_SLOWDOWN = 1.5  # epoch time of each of two trials sharing one GPU, over alone (unmeasured)


# ------------------------------------------------------------------------------------ JSON results


def newest(directory: str, benchmark: str) -> dict[str, Any] | None:
    """The newest result document of `benchmark` in `directory` (None when there is none)."""
    docs = []
    for path in glob.glob(os.path.join(directory, f"{benchmark}_*.json")):
        with open(path) as f:
            docs.append(json.load(f))
    return max(docs, key=lambda d: d["started"]) if docs else None


def epoch_times_from_smoke(doc: dict[str, Any]) -> dict[str, Any]:
    """The orchestrator/epoch_times.py document of a smoke result: per arch, the full-epoch train and
    evaluation seconds of its smallest batch size (B=64 on a GPU run). ValueError when no arch has one."""
    from orchestrator.epoch_times import epoch_times_document

    batch = min(doc["params"]["batch_sizes"])
    archs = {}
    for res in doc["numbers"]["archs"]:
        for row in res.get("rows", []):
            if row["batch_size"] == batch and row.get("full_epoch_s") and row.get("finite"):
                archs[res["arch"]] = {"train_s": row["full_epoch_s"], "eval_s": row["full_eval_s"]}
    if not archs:
        raise ValueError(f"smoke result of {doc['started']}: no arch has a finite B={batch} epoch to report")
    m = doc["machine"]
    return epoch_times_document(
        device=m["device"],
        device_type=m["device_type"],
        measured=doc["started"],
        batch_size=batch,
        train_samples=50_000,
        test_samples=10_000,
        dataset="synthetic (CIFAR-shaped 3x32x32), projected from the smoke test's epochs",
        settings={"amp": "auto", "channels_last": "auto", "fused_sgd": "auto", "eval_batch_size": 1024},
        commit=m.get("commit"),
        torch=m.get("torch"),
        cuda=m.get("cuda"),
        source="benchmarks/run_gpu.sh step 5 (benchmarks/bench_smoke.py)",
        smoke_samples=doc["params"]["samples"],
        archs=archs,
    )


def write_epoch_times_from_smoke(doc: dict[str, Any], path: str) -> str:
    """Write `epoch_times_from_smoke(doc)` to `path`; returns a one-line description."""
    from orchestrator.epoch_times import parse_epoch_times, write_epoch_times

    times = epoch_times_from_smoke(doc)
    write_epoch_times(path, times)
    t = parse_epoch_times(times)
    parts = ", ".join(f"{a} {s:.2f} s" for a, s in t.seconds_per_epoch.items())
    return f"{path}: {t.device}, B={t.batch_size}, {t.train_samples} + {t.test_samples} samples per epoch: {parts}"


# ------------------------------------------------------------------------------------- Table 1 epochs


def share_slowdown(packing: dict[str, Any] | None, trials: int) -> float | None:
    """The packing benchmark's per-trial slowdown with `trials` trials on the GPU (or the next larger
    arm measured), None when it has no such arm."""
    if not packing:
        return None
    arms = {int(a["trials"]): a for a in packing["numbers"].get("arms", []) if a.get("slowdown")}
    for n in sorted(arms):
        if n >= trials:
            return float(arms[n]["slowdown"])
    return None


def table1_epochs(
    limit_s: float,
    smoke: dict[str, Any] | None,
    packing: dict[str, Any] | None = None,
    archs: tuple[str, ...] = TABLE1_ARCHS,
    concurrent: int = 2,
    split: tuple[int, int] = FASHION_SPLIT,
) -> tuple[int | None, str]:
    """How many epochs of the Table 1 trials fit `limit_s` seconds, and why; (None, why) when the
    smoke result has no B=64 epoch time for one of `archs` (the caller then uses its default).

    Per epoch: the slowest arch's smoke-test B=64 train time scaled to `split`'s training samples plus
    its evaluation scaled to the test samples, times the slowdown of `concurrent` trials sharing one
    GPU (measured by the packing step, else DEFAULT_SHARE_SLOWDOWN); the step's start-up
    (TABLE1_STARTUP_S) comes off the limit and TABLE1_MARGIN of the rest is used."""
    if smoke is None:
        return None, "no smoke result to size the epochs from"
    try:
        times = epoch_times_from_smoke(smoke)
    except ValueError as exc:
        return None, str(exc)
    if times["batch_size"] != 64:
        return None, f"the smoke test ran at B={times['batch_size']}, not 64"
    missing = [a for a in archs if a not in times["archs"]]
    if missing:
        return None, f"no B=64 epoch time for {', '.join(missing)}"
    per_arch = {
        a: times["archs"][a]["train_s"] * split[0] / times["train_samples"]
        + times["archs"][a]["eval_s"] * split[1] / times["test_samples"]
        for a in archs
    }
    measured = share_slowdown(packing, concurrent) if concurrent > 1 else 1.0
    slowdown = measured if measured is not None else DEFAULT_SHARE_SLOWDOWN
    epoch_s = max(per_arch.values()) * slowdown
    epochs = max(0, min(MAX_EPOCHS, math.floor(TABLE1_MARGIN * (limit_s - TABLE1_STARTUP_S) / epoch_s)))
    why = (
        f"{epochs} epoch(s): slowest arch {max(per_arch, key=per_arch.get)} {max(per_arch.values()):.2f} s per "
        f"Fashion-MNIST epoch alone (smoke test, B=64), x{slowdown:.2f} with {concurrent} trial(s) sharing the "
        f"GPU ({'packing step' if measured is not None else 'assumed'}) = {epoch_s:.2f} s; "
        f"{TABLE1_MARGIN:.0%} of ({limit_s:.0f} s - {TABLE1_STARTUP_S:.0f} s start-up)"
    )
    return epochs, why


# --------------------------------------------------------------------------------------- Table 1 step


def table1_grid_args(args: argparse.Namespace, epochs: int) -> list[str]:
    """run_grid's arguments for the Table 1 step (also parsed, without Ray, by the in-process path)."""
    out = [
        "--study",
        TABLE1_STUDY,
        "--archs",
        ",".join(args.archs),
        "--seeds",
        ",".join(map(str, args.seeds)),
        "--epochs",
        str(epochs),
        "--results",
        args.results,
        "--gpus-per-trial",
        f"{args.gpus_per_trial:g}",
        "--cpus-per-trial",
        f"{args.cpus_per_trial:g}",
        "--checkpoint-every",
        str(max(1, epochs // 3)),
        "--max-failures",
        "0",
    ]
    if args.data_dir:
        out += ["--data-dir", args.data_dir]
    if args.storage:
        out += ["--storage", args.storage]
    for item in args.setting:
        key, _, value = item.partition("=")
        out += [f"--{key.replace('_', '-')}", value]
    return out


def _table1_specs(grid_args: list[str]) -> tuple[Any, list[Any]]:
    from orchestrator.cli import build_parser, study_from_args
    from orchestrator.studies import expand

    study = study_from_args(build_parser().parse_args(grid_args))
    return study, expand(study)


def run_trial_here(results: str, spec: Any, resources: dict[str, float]) -> str:
    """Run one trial through TrialLoop in this process, storing its epochs and runs rows as the Ray
    sink does; a SIGINT (the step's time limit) stops it after storing what it has (status failed).
    Returns its status."""
    import torch

    from orchestrator.store import ResultsStore, run_row
    from trainables.loop import TrialLoop
    from trainables.records import epoch_column_names, progress_line

    store = ResultsStore(results, spec.study)
    rows: list[dict[str, Any]] = []
    status, error, device = "failed", None, None
    epochs = spec.config["epochs"]
    try:
        loop = TrialLoop(spec.config)
        device = loop.device_name
        while not loop.done:
            rec = loop.run_epoch()
            row = {name: rec.get(name) for name in epoch_column_names()}
            row.update(spec.identifiers(), study=spec.study)
            rows.append(row)
            store.write_epochs(spec.trial_id, rows)
            print(progress_line(row, epochs, prefix=f"[{spec.study}] {spec.label} ({spec.trial_id[:6]}) "), flush=True)
        status = loop.status
    except KeyboardInterrupt:
        error = f"stopped (time limit) after {len(rows)} of {epochs} epochs"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:4000]
    store.write_run(
        run_row(
            spec,
            rows,
            status=status,
            error=error,
            device=device,
            host=socket.gethostname(),
            gpus_per_trial=resources["gpu"],
            cpus_per_trial=resources["cpu"],
            python_version=platform.python_version(),
            torch_version=torch.__version__,
            ray_version=None,
        )
    )
    print(f"[{spec.study}] {spec.label} ({spec.trial_id[:6]}) {status} after {len(rows)} epochs"
          + (f": {error}" if error else ""), flush=True)  # fmt: skip
    return status


def _ray_available() -> bool:
    if os.environ.get("GPU_VISIT_NO_RAY") == "1":
        return False
    try:
        import ray  # noqa: F401
        import ray.tune  # noqa: F401
    except Exception:
        return False
    return True


def _children_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _wait(procs: list[subprocess.Popen], grace_s: float = 30.0) -> list[int]:
    """Wait for `procs`. On Ctrl-C/SIGINT (which `timeout` and a terminal send to the whole process
    group, so the children have it too: run_grid stops at once on a second one) wait up to `grace_s`
    for them to store what they have, then kill what is left."""
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        end = time.monotonic() + grace_s
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(0.1, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes


def table1(args: argparse.Namespace) -> int:
    """Step 4: run the Table 1 profile (Ray when importable, else in-process trials); prints a summary."""
    epochs = args.epochs
    if epochs == "auto":
        bench = args.bench_dir or args.work
        n, why = table1_epochs(
            args.limit_s, newest(bench, "smoke"), newest(bench, "packing"), tuple(args.archs), len(args.archs)
        )
        if n is None:
            n, why = args.default_epochs, f"{args.default_epochs} epoch(s), the default ({why})"
        epochs = n
        print(f"table1: {why}", flush=True)
        if epochs < args.min_epochs:
            print(
                f"table1: WARNING: {epochs} epoch(s) fit, fewer than the {args.min_epochs} wanted; give this step "
                "a call of its own with more time (run_gpu.sh table1, LIMIT_TABLE1=...)",
                flush=True,
            )
        if epochs < 2:
            print("table1: not run: fewer than 2 epochs fit (the calibration uses epochs >= 2)", flush=True)
            return 3
    epochs = int(epochs)
    grid = table1_grid_args(args, epochs)
    ray_ok = args.ray == "yes" or (args.ray == "auto" and _ray_available())
    env = _children_env()
    if ray_ok:
        cmd = [args.python, os.path.join(ROOT, "orchestrator", "run_grid.py"), *grid, "--no-analysis"]
        print("table1: Ray is importable: " + " ".join(cmd), flush=True)
        (code,) = _wait([subprocess.Popen(cmd, cwd=ROOT, env=env)], grace_s=60.0)
        return code
    study, specs = _table1_specs(grid)
    from orchestrator.lock import StudyLock

    print(
        f"table1: no Ray (GPU_VISIT_NO_RAY=1 or ray not importable): running the {len(specs)} trial(s) of study "
        f"{study.name!r} here, one process each, concurrently, into {args.results}",
        flush=True,
    )
    lock = StudyLock(args.results, study.name)
    lock.acquire()
    try:
        procs = [
            subprocess.Popen(
                [args.python, "-m", "benchmarks.gpu_visit", "table1-trial", "--trial-id", s.trial_id, "--", *grid],
                cwd=ROOT,
                env=env,
            )
            for s in specs
        ]
        codes = _wait(procs)
    finally:
        lock.release()
    return 0 if all(c == 0 for c in codes) else 1


def table1_trial(trial_id: str, grid: list[str]) -> int:
    """One trial of the no-Ray path (a process of its own, started by `table1`)."""
    study, specs = _table1_specs(grid)
    (spec,) = [s for s in specs if s.trial_id == trial_id]
    resources = {"gpu": float(study.gpus_per_trial or 0.0), "cpu": float(study.cpus_per_trial)}
    return 0 if run_trial_here(_results_of(grid), spec, resources) in ("completed", "diverged") else 1


def _results_of(grid: list[str]) -> str:
    return grid[grid.index("--results") + 1]


# --------------------------------------------------------------------------------------------- main


def _csv(text: str) -> list[str]:
    return [v for v in text.replace(",", " ").split() if v]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table1-trial"]:  # internal: table1's no-Ray trial processes
        sep = argv.index("--")
        trial_id = argv[argv.index("--trial-id") + 1]
        return table1_trial(trial_id, argv[sep + 1 :])
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_visit", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("epoch-times", help="step 5: the smoke test's B=64 epoch times as the cost model's file")
    e.add_argument("bench_dir", help="directory with the smoke result (smoke_*.json)")
    e.add_argument("file", help="where to write them (run_gpu.sh: $OUT/gpu_epoch_times.json)")
    t = sub.add_parser("table1", help="step 4: the Table 1 profile")
    t.add_argument("--work", required=True, help="the visit's work directory")
    t.add_argument("--results", default=None, help="results store (default WORK/table1)")
    t.add_argument("--bench-dir", default=None, help="where the smoke/packing results are (default WORK)")
    t.add_argument("--storage", default=None, help="Tune's experiments and checkpoints (run_grid --storage)")
    t.add_argument("--epochs", default="auto", help="epochs per trial, or auto (what fits --limit-s)")
    t.add_argument("--limit-s", type=float, default=240.0, help="the step's time limit, for --epochs auto")
    t.add_argument("--default-epochs", type=int, default=30, help="--epochs auto without a smoke result")
    t.add_argument("--min-epochs", type=int, default=30, help="warn when fewer epochs fit")
    t.add_argument("--archs", type=_csv, default=list(TABLE1_ARCHS))
    t.add_argument("--seeds", type=_csv, default=[str(s) for s in TABLE1_SEEDS])
    t.add_argument("--gpus-per-trial", type=float, default=0.5, help="0.5: both trials share the one GPU")
    t.add_argument("--cpus-per-trial", type=float, default=1.0)
    t.add_argument("--data-dir", default=None, help="directory holding fashion-mnist/ (absolute)")
    t.add_argument("--ray", choices=("auto", "yes", "no"), default="auto")
    t.add_argument("--python", default=sys.executable)
    t.add_argument(
        "--setting", action="append", default=[], metavar="KEY=VALUE", help="a trial setting (train_limit=128)"
    )
    d = sub.add_parser("find-fashion-mnist", help="where the Fashion-MNIST IDX files are (exit 1: nowhere)")
    d.add_argument("data_dir", nargs="?", default=None, help="as --data-dir (default: the loader's default)")
    f = sub.add_parser("table1-epochs", help="how many Table 1 epochs fit a time limit")
    f.add_argument("bench_dir")
    f.add_argument("--limit-s", type=float, required=True)
    args = p.parse_args(argv)
    if args.command == "epoch-times":
        doc = newest(args.bench_dir, "smoke")
        if doc is None:
            print(f"epoch-times: no smoke result in {args.bench_dir}", file=sys.stderr)
            return 1
        try:
            print(write_epoch_times_from_smoke(doc, args.file))
        except ValueError as exc:
            print(f"epoch-times: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "find-fashion-mnist":
        from trainables.data import _find_fashion_mnist, default_data_dir, fashion_mnist_folders

        root = args.data_dir or default_data_dir()
        found = _find_fashion_mnist(root)
        if found is None:
            print(f"Fashion-MNIST: not in {', '.join(fashion_mnist_folders(root))}")
            return 1
        print(f"Fashion-MNIST: {os.path.dirname(found['train_x'])}")
        return 0
    if args.command == "table1-epochs":
        n, why = table1_epochs(args.limit_s, newest(args.bench_dir, "smoke"), newest(args.bench_dir, "packing"))
        print(why)
        return 0 if n is not None else 1
    args.results = args.results or os.path.join(args.work, "table1")
    if args.epochs != "auto" and not args.epochs.isdigit():
        p.error(f"--epochs {args.epochs!r}: expected a positive integer or auto")
    return table1(args)


if __name__ == "__main__":
    sys.exit(main())
