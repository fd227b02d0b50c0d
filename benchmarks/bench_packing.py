"""Packing: 1, 2, 4 and 8 concurrent trials on one GPU through run_grid (`--gpus-per-trial 1/N`).

    PYTHONPATH=. python -m benchmarks.bench_packing [--device cuda] [--quick] [--trials 1,2,4,8]

Each arm is one real `orchestrator/run_grid.py` call (its own local Ray) running N fixed-batch
resnet18 trials (seeds 0..N-1, synthetic CIFAR-shaped data) with `--gpus-per-trial 1/N` on CUDA
(on CPU: `--gpus-per-trial 0 --cpus-per-trial <CPUs>/N`, for the plumbing check). From the
study's store and the call's wall time:

- steady throughput: sum over trials of (samples per epoch / the trial's median epoch time over
  epochs >= 2): the GPU's training throughput while all N trials run;
- wall throughput: all samples trained / wall time of the run_grid call (Ray and trial start-up
  included: what a short study pays);
- per-trial slowdown: mean steady epoch time under packing / the same with one trial alone;
- concurrency: sum of the trials' own wall times / the call's wall time (N when they all overlapped);
- whether the runs table recorded each arm's gpus_per_trial and cpus_per_trial.

Packing pays when the steady throughput with N trials exceeds one trial's (ratio > 1): the GPU is
not saturated by one trial at that batch size.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import ROOT, Result, base_parser, header, int_list, resolve_device


def arm_args(
    n: int,
    gpu: bool,
    cpus: int,
    arch: str,
    batch: int,
    samples: int,
    test_samples: int,
    epochs: int,
    results: str,
    storage: str,
) -> tuple[list[str], dict[str, float]]:
    """run_grid arguments of the arm with `n` trials, and the resources each trial gets."""
    res = {"gpu": 1.0 / n, "cpu": 1.0} if gpu else {"gpu": 0.0, "cpu": max(cpus / n, 0.01)}
    args = [
        "--preset", "profile", "--study", f"pack{n}", "--archs", arch, "--datasets", "synthetic",
        "--methods", "fixed", "--seeds", ",".join(str(s) for s in range(n)), "--epochs", str(epochs),
        "--batch-size", str(batch), "--train-limit", str(samples), "--test-limit", str(test_samples),
        "--gpus-per-trial", f"{res['gpu']:g}", "--cpus-per-trial", f"{res['cpu']:g}",
        "--checkpoint-every", str(epochs), "--max-failures", "0", "--results", results, "--storage", storage,
        "--no-analysis", "--quiet", "--verbose", "0",
    ]  # fmt: skip
    return args, res


def _same(recorded: list[Any], wanted: tuple[float, float]) -> bool:
    return None not in recorded and all(math.isclose(x, y, rel_tol=1e-4) for x, y in zip(recorded, wanted))


def measure_arm(results: str, study: str, n: int, wall: float, resources: dict[str, float]) -> dict[str, Any]:
    """The arm's numbers from its store (see the module docstring)."""
    from orchestrator.store import ResultsStore

    store = ResultsStore(results, study)
    runs = store.read_runs()
    trials = []
    for tid in sorted(store.trials_with_epochs()):
        rows = store.read_epochs(tid)
        if not rows:
            continue
        steady = [r["epoch_time_s"] for r in rows if r["epoch"] >= 2] or [r["epoch_time_s"] for r in rows]
        per_epoch = [r["samples_per_s"] * r["epoch_time_s"] for r in rows]
        epoch_s = statistics.median(steady)
        trials.append(
            {
                "trial_id": tid,
                "epochs": len(rows),
                "steady_epoch_s": epoch_s,
                "first_epoch_s": rows[0]["epoch_time_s"],
                "samples": sum(per_epoch),
                "steady_samples_per_s": per_epoch[-1] / epoch_s,
                "trial_wall_s": rows[-1]["wall_time_s"],
                "status": (runs.get(tid) or {}).get("status"),
                "device": (runs.get(tid) or {}).get("device"),
                "recorded": [(runs.get(tid) or {}).get(k) for k in ("gpus_per_trial", "cpus_per_trial")],
            }
        )
    samples = sum(t["samples"] for t in trials)
    return {
        "trials": n,
        "resources": resources,
        "wall_s": wall,
        "stored_trials": len(trials),
        "completed": sum(t["status"] == "completed" for t in trials),
        "samples": samples,
        "wall_samples_per_s": samples / wall if wall > 0 else None,
        "steady_samples_per_s": sum(t["steady_samples_per_s"] for t in trials) if trials else None,
        "mean_steady_epoch_s": statistics.mean(t["steady_epoch_s"] for t in trials) if trials else None,
        "concurrency": sum(t["trial_wall_s"] for t in trials) / wall if trials and wall > 0 else None,
        "packing_recorded": bool(trials)
        and all(_same(t["recorded"], (resources["gpu"], resources["cpu"])) for t in trials if t["status"]),
        "per_trial": trials,
    }


def _print_arm(a: dict[str, Any]) -> None:
    def f(x: Any, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    print(
        f"  {a['trials']} trial(s) x {a['resources']['gpu']:g} GPU / {a['resources']['cpu']:g} CPU: "
        f"{a['completed']}/{a['trials']} completed in {a['wall_s']:.1f} s; "
        f"steady {f(a['steady_samples_per_s'], '.0f')} samples/s, wall {f(a['wall_samples_per_s'], '.0f')} "
        f"samples/s, epoch {f(a['mean_steady_epoch_s'], '.3f')} s "
        f"(slowdown x{f(a.get('slowdown'), '.2f')}), concurrency {f(a['concurrency'], '.2f')}",
        flush=True,
    )


def _ratios(result: Result, arms: list[dict[str, Any]]) -> None:
    alone = next((a for a in arms if a["trials"] == 1 and a["steady_samples_per_s"]), None)
    for a in arms:
        if alone and a["mean_steady_epoch_s"]:
            a["slowdown"] = a["mean_steady_epoch_s"] / alone["mean_steady_epoch_s"]
    if alone is None:
        result.note("no arm with one trial alone completed: no ratios")
        return
    for a in arms:
        n = a["trials"]
        if n == 1 or not a["steady_samples_per_s"]:
            continue
        steady = a["steady_samples_per_s"] / alone["steady_samples_per_s"]
        result.ratio(
            f"packing_steady_throughput_{n}_over_1",
            steady,
            f"sum over {n} packed trials of samples/s (median epoch >= 2) over one trial alone",
            target="> 1 to pack",
            met=steady > 1,
        )
        if a["wall_samples_per_s"] and alone["wall_samples_per_s"]:
            result.ratio(
                f"packing_wall_throughput_{n}_over_1",
                a["wall_samples_per_s"] / alone["wall_samples_per_s"],
                "all samples / run_grid wall time (Ray and trial start-up included), packed over alone",
                target="informational",
            )
        result.ratio(
            f"packing_slowdown_{n}",
            a["slowdown"],
            f"mean epoch time of each of {n} packed trials over one trial alone",
            target="informational",
        )
    recorded = all(a["packing_recorded"] for a in arms if a["stored_trials"])
    result.ratio(
        "packing_runs_table_records_resources",
        1.0 if recorded else 0.0,
        "1 when every runs row holds its arm's gpus_per_trial and cpus_per_trial",
        target="1",
        met=recorded,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the arms one after another; print a line per arm; write the JSON result."""
    p = base_parser(__doc__)
    p.add_argument("--trials", type=int_list, default=None, help="trials per arm (default 1,2,4,8; --quick 1,2)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=None, help="fixed batch size (default 64)")
    p.add_argument("--samples", type=int, default=None, help="training samples per epoch (default 16384 on CUDA)")
    p.add_argument("--test-samples", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 3; >= 2 for a steady epoch)")
    p.add_argument("--work", default=None, help="results stores of the arms (default: a temporary directory)")
    p.add_argument("--storage", default=None, help="Tune's experiments (default: a temporary directory, removed)")
    p.add_argument("--python", default=sys.executable, help="interpreter for run_grid")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device == "cuda"
    try:
        import ray  # noqa: F401
        import ray.tune  # noqa: F401

        ray_ok = os.environ.get("GPU_VISIT_NO_RAY") != "1"
    except Exception:
        ray_ok = False
    if not ray_ok:
        print("bench_packing: Ray is not importable (or GPU_VISIT_NO_RAY=1): packing needs run_grid on Ray; skipped")
        return 3
    if args.quick:
        trials, batch, samples, test_samples, epochs = [1, 2], 16, 32, 16, 2
    elif gpu:
        trials, batch, samples, test_samples, epochs = [1, 2, 4, 8], 64, 16384, 1024, 3
    else:
        trials, batch, samples, test_samples, epochs = [1, 2], 32, 256, 64, 2
    trials = args.trials or trials
    batch = args.batch_size or batch
    samples = args.samples or samples
    test_samples = args.test_samples or test_samples
    epochs = args.epochs or epochs
    cpus = os.cpu_count() or 1
    work = args.work or tempfile.mkdtemp(prefix="bench-packing-")
    storage = args.storage or tempfile.mkdtemp(prefix="bench-packing-ray-")
    result = Result(
        "packing",
        device,
        {
            "arch": args.arch,
            "trials": trials,
            "batch_size": batch,
            "samples": samples,
            "test_samples": test_samples,
            "epochs": epochs,
            "dataset": "synthetic",
            "cpus": cpus,
            "results": work,
            "quick": args.quick,
        },
    )
    print(header(result), flush=True)
    arms: list[dict[str, Any]] = []
    result.numbers["arms"] = arms
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(x for x in (ROOT, env.get("PYTHONPATH")) if x)
    interrupted = False
    try:
        for n in trials:
            grid, res = arm_args(n, gpu, cpus, args.arch, batch, samples, test_samples, epochs, work, storage)
            cmd = [args.python, os.path.join(ROOT, "orchestrator", "run_grid.py"), *grid]
            print(f"  arm {n}: {' '.join(cmd)}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
            try:
                code = proc.wait()
            except KeyboardInterrupt:  # the process group (timeout, Ctrl-C) stops run_grid too: let it store
                interrupted = True
                try:
                    code = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
            arm = measure_arm(work, f"pack{n}", n, time.perf_counter() - t0, res)
            arm["exit_code"] = code
            arms.append(arm)
            _print_arm(arm)
            if interrupted:
                break
    finally:
        if args.storage is None:
            shutil.rmtree(storage, ignore_errors=True)
    _ratios(result, arms)
    for a in arms:
        if a.get("slowdown") is not None:
            _print_arm(a)
    if interrupted:
        result.note("interrupted (time limit): the last arm is partial and later arms did not run")
    if not gpu:
        result.note("CPU run (plumbing): trials share the CPU cores, not a GPU; not a packing verdict")
    path = result.write(args.out)
    result.print_ratios(path)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
