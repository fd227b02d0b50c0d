"""Run a study: `python orchestrator/run_grid.py [--preset demo] [overrides]`.

Works from the repo root, as the `deba-grid` console script, and as a Ray job:
`ray job submit --working-dir . -- python orchestrator/run_grid.py --preset paper --results s3://...`.
Validates everything and consults the ledger before Ray starts; attaches to a cluster given by
--address or $RAY_ADDRESS, else starts a local Ray; runs the pending trials with a scheduler-free
Tuner; prints a summary (and the analysis tables when the analysis package provides them).
Exit status: 0 when every trial of the study is finished, 1 when some failed, 2 for a bad config.
"""

from __future__ import annotations

import os
import sys
import time
if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestrator.cli import build_parser, study_from_args  # noqa: E402
from orchestrator.runner import (Plan, cluster_gpus, connect, make_plan, ray_overhead,  # noqa: E402
                                 resolve_resources, run_plan, storage_root)
from orchestrator.store import ResultsStore, resolve_uri  # noqa: E402


def format_plan(plan: Plan, results: str, resources: str, storage: str | None = None) -> str:
    """The plan as text: study, trials with their state, resources, where results go."""
    study = plan.study
    runs = ResultsStore(results, study.name).ledger()
    lines = [f"study {study.name!r}: {study.description}".rstrip(": "),
             f"  grid: archs={','.join(study.archs)} datasets={','.join(study.datasets)} "
             f"seeds={','.join(map(str, study.seeds))} methods={','.join(study.methods)} "
             f"variants={','.join(study.variants)} epochs={study.epochs}",
             f"  trials: {len(plan.trials)} total, {len(plan.finished)} finished (skipped), "
             f"{len(plan.pending)} to run",
             f"  resources per trial: {resources}; max_failures={study.max_failures}; "
             f"checkpoint every {study.checkpoint_every} epoch(s)",
             f"  results: {ResultsStore(results, study.name).study_path}  experiments: "
             f"{storage_root(results, study.name, storage)}"]
    for t in plan.trials:
        state = runs.get(t.trial_id, "pending")
        action = "skip" if t.trial_id in plan.finished else "run"
        lines.append(f"    {t.trial_id}  {t.label:<52} {action:<4} ({state})")
    if plan.waiting:
        lines.append(f"  phase 2: {len(plan.waiting)} trial(s) wait for thresholds calibrated from the study's own "
                     "fixed runs (they run once every fixed run of their arch has finished):")
        lines += [f"    {'-' * 12}  {label:<52} wait" for label in plan.waiting]
    return "\n".join(lines)


def format_summary(results: str, study: str) -> str:
    """Per (arch, dataset, method, variant): trials by status, final/best accuracy, train time, final B."""
    import pandas as pd

    runs = ResultsStore(results, study).read_runs()
    if not runs:
        return f"study {study!r}: no runs recorded"
    df = pd.DataFrame(list(runs.values()))
    df["final_acc_%"] = 100 * df["final_test_acc"].astype(float)
    g = df.groupby(["arch", "dataset", "method", "variant"], sort=True)
    table = pd.DataFrame({
        "trials": g.size(),
        "completed": g["status"].apply(lambda s: int((s == "completed").sum())),
        "diverged": g["status"].apply(lambda s: int((s == "diverged").sum())),
        "failed": g["status"].apply(lambda s: int((s == "failed").sum())),
        "final_acc_%": g["final_acc_%"].mean().round(2),
        "acc_std": g["final_acc_%"].std().round(2),
        "train_s": g["train_time_s"].mean().round(1),
        "final_bs": g["final_batch_size"].mean().round(0),
    })
    text = [f"study {study!r}: {len(df)} trial(s)", table.to_string()]
    failed = df[df["status"] == "failed"]
    for _, row in failed.iterrows():
        last = (row["error"] or "").strip().splitlines()
        text.append(f"  failed {row['trial_id']} {row['arch']}/{row['method']}/s{row['seed']}: "
                    f"{last[-1] if last else 'no error text'}")
    return "\n".join(text)


def analysis_tables(results: str, study: str) -> str | None:
    """The analysis package's summary of the study, or None when the package does not provide one."""
    try:
        from analysis.report import summarize
    except ImportError:
        return None
    out = summarize(results, study)
    return out if isinstance(out, str) else None


def main(argv: list[str] | None = None) -> int:
    """The run_grid command; returns the exit status."""
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        study = study_from_args(args)
        plan = make_plan(study, args.results, write=not args.dry_run)
        if args.storage:
            resolve_uri(args.storage, field="storage")  # Tune would only fail on it after Ray started
    except ValueError as exc:
        print(f"run_grid: invalid study: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        g = study.gpus_per_trial
        gpu = f"{g:g} GPU" if g is not None else "1 GPU if the cluster has GPUs, else CPU-only"
        print(format_plan(plan, args.results, f"{study.cpus_per_trial:g} CPU, {gpu}", args.storage))
        return 0
    if not plan.pending:
        print(format_plan(plan, args.results, "n/a (nothing to run)", args.storage))
        if plan.waiting:
            print(f"{len(plan.waiting)} trial(s) wait for a calibration that the study's fixed runs cannot give "
                  "(some failed); see the runs above", file=sys.stderr)
            return 1
        print(f"all {len(plan.trials)} trial(s) of study {study.name!r} are finished; nothing to run")
        print(format_summary(args.results, study.name))
        return 0

    how = connect(args.address, args.dashboard)
    print(how, flush=True)
    gpus = cluster_gpus()
    attached = how.startswith("attached")
    try:
        resources = resolve_resources(study, gpus, autoscaling=attached)
    except ValueError as exc:
        print(f"run_grid: invalid study: {exc}", file=sys.stderr)
        return 2
    if attached and study.gpus_per_trial is None and gpus == 0:
        print("note: the cluster has no GPU up now, so trials run CPU-only; on an autoscaling cluster whose "
              "GPU workers are not started yet, pass --gpus-per-trial 1", flush=True)
    print(format_plan(plan, args.results, f"{resources['cpu']:g} CPU, {resources['gpu']:g} GPU", args.storage),
          flush=True)
    report = run_plan(plan, args.results, resources, storage=args.storage, echo=not args.quiet,
                      verbose=args.verbose)
    if plan.waiting:  # a calibrating study: phase 2 runs with the thresholds phase 1 made possible
        plan = make_plan(study, args.results)
        ready = len(plan.pending)
        print(f"[{study.name}] phase 2: {ready} trial(s) with thresholds calibrated from the fixed runs "
              f"({ResultsStore(args.results, study.name).study_path}/calibration.json)", flush=True)
        if ready:
            more = run_plan(plan, args.results, resources, storage=args.storage, echo=not args.quiet,
                            verbose=args.verbose)
            report.experiments.update(more.experiments)
            report.grids.extend(more.grids)

    print()
    print(format_summary(args.results, study.name))
    overhead = ray_overhead(report.grids)
    if overhead:
        print(f"Ray overhead per epoch (this run, {overhead['epochs']:.0f} epochs): checkpoint save "
              f"{overhead['ckpt_save_s'] * 1e3:.1f} ms + tune.report {overhead['report_s'] * 1e3:.1f} ms = "
              f"{100 * overhead['fraction']:.2f}% of the mean epoch ({overhead['epoch_s']:.2f} s train+eval)")
    print(f"wall time: {time.perf_counter() - t0:.1f} s; experiments: "
          + ", ".join(f"{k} ({v})" for k, v in report.experiments.items()))
    if not args.no_analysis:
        tables = analysis_tables(args.results, study.name)
        print(tables if tables is not None else
              "(analysis tables: analysis.report.summarize is not available; run `python -m analysis "
              f"{args.results}` once the analysis package is installed)")
    final = make_plan(study, args.results)
    unfinished = final.pending + final.waiting
    if unfinished:
        print(f"{len(unfinished)} trial(s) not finished; re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
