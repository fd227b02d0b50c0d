"""Run a study: `python orchestrator/run_grid.py [--preset demo] [overrides]`.

Works from the repo root, as the `deba-grid` console script, and as a Ray job:
`ray job submit --working-dir . -- python orchestrator/run_grid.py --preset paper --results s3://...`.
Validates everything and consults the ledger before Ray starts; attaches to a cluster given by
--address or $RAY_ADDRESS, else starts a local Ray; runs the pending trials with a scheduler-free
Tuner; prints a summary and the analysis tables. One driver per study (a lock in the study's
folder); SIGTERM (`ray job stop`) and Ctrl-C stop it gracefully, and the same command resumes.
Exit status: 0 when every trial of the study is finished, 1 when some failed, 2 for a bad config
or a study another driver is running, 128 + the signal number when a signal stopped it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis.report import summarize  # noqa: E402
from orchestrator import gangs  # noqa: E402
from orchestrator.capacity import Target, hours, makespan_lines, observe_cluster, plan_targets, trial_seconds  # noqa: E402
from orchestrator.checkpoints import prune_finished  # noqa: E402
from orchestrator.cli import DriverOptions, build_parser, driver_from_args, study_from_args  # noqa: E402
from orchestrator.lock import StudyLock, StudyLocked  # noqa: E402
from orchestrator.runner import (  # noqa: E402
    Plan,
    check_local_resources,
    cluster_cpus,
    cluster_gpus,
    cluster_slots,
    connect,
    local_gpus,
    local_slots,
    make_plan,
    ray_overhead,
    read_plans,
    repair,
    resolve_resources,
    run_plan,
    storage_root,
)
from orchestrator.store import ResultsStore, check_location, finished_ids  # noqa: E402
from orchestrator.studies import StudySpec, expand  # noqa: E402
from trainables.folders import check_stream_cpus, check_study_folders  # noqa: E402


def format_plan(
    plan: Plan,
    results: str,
    resources: str,
    storage: str | None = None,
    slots: int | None = None,
    targets: list[Target] | None = None,
    speed: float = 1.0,
    here_gpu: bool = True,
) -> str:
    """The plan as text: study, trials in launch order with their cost estimates and state, the
    predicted makespan in hours on `targets` (default: `slots` parallel trials here and 8/16/64 GPUs;
    orchestrator/capacity.py; `here_gpu`: whether those trials get GPUs) at `speed` x the reference GPU,
    where results go."""
    study = plan.study
    runs = plan.statuses
    est = plan.estimate
    lines = [
        f"study {study.name!r}: {study.description}".rstrip(": "),
        f"  grid: archs={','.join(study.archs)} datasets={','.join(study.datasets)} "
        f"seeds={','.join(map(str, study.seeds))} methods={','.join(study.methods)} "
        f"variants={','.join(study.variants)} epochs={study.epochs}",
        f"  trials: {len(plan.trials)} total, {len(plan.finished)} finished (skipped), {len(plan.pending)} to run",
        f"  resources per trial: {resources}; max_failures={study.max_failures}; "
        f"checkpoint every {study.checkpoint_every} epoch(s)",
        f"  results: {ResultsStore(results, study.name).study_path}  experiments: "
        f"{storage_root(results, study.name, storage)}",
    ]
    inputs = {t.arch: t.config.get("timm_input") for t in plan.trials if t.config.get("timm_input")}
    if inputs:
        from trainables.timm_archs import describe

        lines += [
            f"  {arch} at 32x32 (timm_input={choice}): {describe(arch, choice)}"
            for arch, choice in sorted(inputs.items())
        ]
    pending = plan.launch_order()
    if est is not None and pending:
        if targets is None:
            targets, _ = plan_targets(study.gpus_per_trial, study.cpus_per_trial, here=slots, here_gpu=here_gpu)
        lines += makespan_lines(est, [t.trial_id for t in pending], targets, speed)
        lines += gangs.plan_lines(
            pending, trial_seconds(est, [t.trial_id for t in pending], speed), [t.slots for t in targets]
        )
    finished = [t for t in plan.trials if t.trial_id in plan.finished]
    for t in pending + finished:
        state = runs.get(t.trial_id, "pending")
        action = "skip" if t.trial_id in plan.finished else "run"
        cost = hours(trial_seconds(est, [t.trial_id], speed)[0]) if est and action == "run" else ""
        gang = f"  gang of {t.config.workers}" if t.config.workers > 1 else ""
        lines.append(f"    {t.trial_id}  {t.label:<52} {action:<4} ({state}) {cost}{gang}".rstrip())
    if plan.waiting:
        lines.append(
            f"  phase 2: {len(plan.waiting)} trial(s) wait for thresholds calibrated from the study's own "
            "fixed runs (they run once every fixed run of their arch has finished):"
        )
        lines += [f"    {'-' * 12}  {label:<52} wait" for label in plan.waiting]
    lines += [f"  note: {note}" for note in plan.notes]
    return "\n".join(lines)


def format_summary(results: str, study: str) -> str:
    """Per (arch, dataset, method, variant): trials by status, final accuracy and train time of the
    completed ones, final B."""
    import pandas as pd

    runs = ResultsStore(results, study).read_runs()
    if not runs:
        return f"study {study!r}: no runs recorded"
    df = pd.DataFrame(list(runs.values()))
    # Only completed trials: a failed or diverged trial's last accuracy is not a final accuracy.
    completed = df["status"] == "completed"
    df["final_acc_%"] = (100 * df["final_test_acc"].astype(float)).where(completed)
    df["train_s"] = df["train_time_s"].astype(float).where(completed)
    g = df.groupby(["arch", "dataset", "method", "variant"], sort=True)
    table = pd.DataFrame(
        {
            "trials": g.size(),
            "completed": g["status"].apply(lambda s: int((s == "completed").sum())),
            "diverged": g["status"].apply(lambda s: int((s == "diverged").sum())),
            "failed": g["status"].apply(lambda s: int((s == "failed").sum())),
            "final_acc_%": g["final_acc_%"].mean().round(2),
            "acc_std": g["final_acc_%"].std().round(2),
            "train_s": g["train_s"].mean().round(1),
            "final_bs": g["final_batch_size"].mean().round(0),
        }
    )
    text = [f"study {study!r}: {len(df)} trial(s)", table.to_string()]
    failed = df[df["status"] == "failed"]
    for _, row in failed.iterrows():
        lines = (row["error"] or "").strip().splitlines()
        text.append(
            f"  failed {row['trial_id']} {row['arch']}/{row['method']}/s{row['seed']}: "
            f"{lines[0] if lines else 'no error text'}"
        )
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    """The run_grid command; returns the exit status (module docstring). A Ctrl-C before Tune's graceful
    stop is installed (while planning, or while Ray starts) ends it with one line and status 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("run_grid: interrupted; re-run the same command to continue the study", file=sys.stderr)
        return 128 + signal.SIGINT


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        driver = driver_from_args(args)
        study = study_from_args(args)
        check_location(driver.results, "results", study=study.name)
        if driver.storage:
            check_location(driver.storage, "storage")  # Tune would only fail on it after Ray started
        if not (driver.dry_run and driver.gpus is not None):  # a plan for --gpus N is not a run here
            check_local_resources(study, driver.address)
        for note in check_study_folders(study.datasets, study.data_dir, study.loop.get("skip_unreadable", False)):
            print(note, file=sys.stderr)  # the folders are checked before Ray; files left out are named
        if not (driver.address or os.environ.get("RAY_ADDRESS")):
            check_stream_cpus(study.datasets, study.loop, study.cpus_per_trial, os.cpu_count() or 1)
        if driver.dry_run:  # planning reads only: no lock, no file written or moved
            plan = make_plan(study, driver.results, storage=driver.storage, epoch_times=driver.epoch_times)
        else:
            expand(study)  # every trial's settings checked before the lock creates the study folder
    except ValueError as exc:
        print(f"run_grid: invalid study: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the store cannot be read now (permissions, an unreachable bucket)
        print(f"run_grid: cannot read the results: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    # A driver whose (object-store) lock another driver took over stops, as on `ray job stop`.
    lock = StudyLock(driver.results, study.name, on_lost=functools.partial(os.kill, os.getpid(), signal.SIGTERM))
    if driver.dry_run:
        g = study.gpus_per_trial
        gpu = f"{g:g} GPU" if g is not None else "1 GPU if the cluster has GPUs, else CPU-only"
        address = driver.address or os.environ.get("RAY_ADDRESS")
        try:
            view = observe_cluster(address) if address else None  # a dry run plans for the cluster it names
        except (ConnectionError, RuntimeError) as exc:  # unreachable, or token auth without the token
            print(f"run_grid: cannot attach to the cluster at {address}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        # This machine's slots only when it has GPUs: the plan's times are GPU times.
        here = local_slots(study) if view is None and local_gpus() else None
        targets, notes = plan_targets(study.gpus_per_trial, study.cpus_per_trial, driver.gpus, view, here)
        if view is not None:
            print(view.describe())
        print(
            format_plan(
                plan,
                driver.results,
                f"{study.cpus_per_trial:g} CPU, {gpu}",
                driver.storage,
                targets=targets,
                speed=driver.gpu_speed,
            )
        )
        for note in notes:
            print(f"note: {note}")
        for line in plan.repairs.lines() if plan.repairs else []:
            print(f"  would first: {line}")
        holder = lock.holder()
        if holder is not None:
            print(f"note: the study is being run now by {lock.describe(holder)}")
        return 0
    # The lock comes before the plan: the plan's repairs (renames, damaged files, a calibration to pin)
    # are done by the one driver that holds it.
    try:
        lock.acquire()
    except StudyLocked as exc:
        print(f"run_grid: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            plan = make_plan(study, driver.results, storage=driver.storage, epoch_times=driver.epoch_times)
        except ValueError as exc:
            print(f"run_grid: invalid study: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"run_grid: cannot read the results: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        for line in repair(plan):
            print(f"[{study.name}] {line}", flush=True)
        if not plan.pending:
            print(format_plan(plan, driver.results, "n/a (nothing to run)", driver.storage))
            if plan.waiting:
                print(
                    f"{len(plan.waiting)} trial(s) wait for a calibration that the study's fixed runs cannot give "
                    "(some failed, or gave no thresholds); see above",
                    file=sys.stderr,
                )
                return 1
            print(f"all {len(plan.trials)} trial(s) of study {study.name!r} are finished; nothing to run")
            print(format_summary(driver.results, study.name))
            return 0
        return _run(driver, study, plan, t0)
    finally:
        lock.release()


def _run(driver: DriverOptions, study: StudySpec, plan: Plan, t0: float) -> int:
    """Start or attach to Ray and run the plan (both phases of a calibrating study), holding the lock."""
    from orchestrator.interrupt import GracefulStop

    connection = connect(driver.address, driver.dashboard)
    print(connection.description, flush=True)
    stop = GracefulStop().install()  # after ray.init, which replaces the SIGTERM handler
    gpus = cluster_gpus()
    attached = connection.attached
    try:
        resources = resolve_resources(study, gpus, autoscaling=attached, cluster_cpus=cluster_cpus())
    except ValueError as exc:
        print(f"run_grid: invalid study: {exc}", file=sys.stderr)
        return 2
    if attached and study.gpus_per_trial is None and gpus == 0:
        print(
            "note: the cluster has no GPU up now, so trials run CPU-only; on an autoscaling cluster whose "
            "GPU workers are not started yet, pass --gpus-per-trial 1",
            flush=True,
        )
    print(
        format_plan(
            plan,
            driver.results,
            f"{resources['cpu']:g} CPU, {resources['gpu']:g} GPU",
            driver.storage,
            slots=cluster_slots(resources),
            here_gpu=resources["gpu"] > 0,
        ),
        flush=True,
    )
    run = functools.partial(
        run_plan,
        results=driver.results,
        resources=resources,
        storage=driver.storage,
        echo=not driver.quiet,
        verbose=driver.verbose,
        stop=stop,
    )
    report = run(plan)
    last = plan  # the plan of the last phase run
    if plan.waiting and not report.interrupted:  # a calibrating study: phase 2 with the thresholds phase 1 gave
        ran = {t.trial_id for t in plan.pending}
        try:
            phase2 = make_plan(study, driver.results, storage=driver.storage, epoch_times=driver.epoch_times)
        except ValueError as exc:
            print(f"run_grid: phase 2 cannot be planned: {exc}", file=sys.stderr)
            return 1
        for line in repair(phase2):
            print(f"[{study.name}] {line}", flush=True)
        # Phase-1 trials that failed just now wait for the next invocation, like any failed trial.
        phase2 = dataclasses.replace(phase2, finished=phase2.finished | ran)
        print(
            f"[{study.name}] phase 2: {len(phase2.pending)} trial(s) with thresholds calibrated from the fixed "
            f"runs ({ResultsStore(driver.results, study.name).study_path}/calibration.json)",
            flush=True,
        )
        for note in phase2.notes:
            print(f"[{study.name}] phase 2: note: {note}", file=sys.stderr, flush=True)
        more = run(phase2)
        last = phase2
        report.experiments.update(more.experiments)
        report.grids.extend(more.grids)
        report.interrupted = more.interrupted
    if report.interrupted or stop.requested:
        print(
            f"run_grid: stopped by signal {stop.signal}; the trials' checkpoints and rows are stored. Re-run the "
            "same command to resume.",
            file=sys.stderr,
            flush=True,
        )
        return 128 + (stop.signal or signal.SIGINT)

    print()
    print(format_summary(driver.results, study.name))
    overhead = ray_overhead(report.grids)
    if overhead:
        print(
            f"Ray overhead per epoch (this run, {overhead['epochs']:.0f} epochs): checkpoint save "
            f"{overhead['ckpt_save_s'] * 1e3:.1f} ms + tune.report {overhead['report_s'] * 1e3:.1f} ms = "
            f"{100 * overhead['fraction']:.2f}% of the mean epoch ({overhead['epoch_s']:.2f} s train+eval)"
        )
    print(
        f"wall time: {time.perf_counter() - t0:.1f} s; experiments: "
        + ", ".join(f"{k} ({v})" for k, v in report.experiments.items())
    )
    if not driver.no_analysis:
        print(summarize(driver.results, study.name))
    # Which trials the ledger now holds as finished (no new plan: that is the next invocation's).
    done = finished_ids(ResultsStore(driver.results, study.name).read_runs(), study.epochs)
    unfinished = [t.label for t in last.trials if t.trial_id not in done] + list(last.waiting)
    if not driver.keep_checkpoints:
        root = storage_root(driver.results, study.name, driver.storage)
        ours = {
            name: list(doc.get("trials", {}))
            for name, doc in read_plans(root).items()
            if doc.get("study") == study.name
        }
        pruned = prune_finished(root, ours, done)
        if pruned.checkpoints or pruned.experiments:
            print(
                f"[{study.name}] disk: finished trials keep their final checkpoint only; deleted "
                f"{len(pruned.checkpoints)} older checkpoint(s) and {len(pruned.experiments)} experiment folder(s) "
                "whose trials are all finished (--keep-checkpoints keeps them)",
                flush=True,
            )
    if unfinished:
        print(f"{len(unfinished)} trial(s) not finished; re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
