"""Run a validated study on Ray Tune: resources, experiments, restore, the ledger.

Experiment directories live under `<storage>/<exp-name>` with `<storage>` = `<results>/<study>/_ray`
unless given. Each experiment is one Tuner over a fixed set of trials (`exp-<hash of its trial
ids>`), with the trial payloads in `orchestrator_plan.json` next to Tune's own state. Running a
study:

1. the ledger (runs rows with status completed or diverged) removes finished trials;
2. every earlier experiment that still holds pending trials is resumed with `Tuner.restore`
   (unfinished trials continue from their checkpoints, errored ones retry from theirs);
3. whatever is still pending (new seeds, new archs, trials of no experiment) runs in a new
   experiment.

So re-running the same command resumes an interrupted study, and a widened command extends it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from orchestrator.calibration import study_calibration
from orchestrator.studies import StudySpec, TrialSpec, expand, waiting_for_calibration
from orchestrator.store import FINISHED_STATUSES, ResultsStore, resolve_uri, storage_uri

PLAN_FILE = "orchestrator_plan.json"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Plan:
    """A study's trials split by the ledger into finished and pending, plus (calibrating studies)
    the labels of trials that wait for their thresholds (phase 2)."""

    study: StudySpec
    trials: tuple[TrialSpec, ...]
    finished: frozenset[str]
    waiting: tuple[str, ...] = ()

    @property
    def pending(self) -> tuple[TrialSpec, ...]:
        """Trials that still need to run (not completed, not diverged)."""
        return tuple(t for t in self.trials if t.trial_id not in self.finished)


def make_plan(study: StudySpec, results: str, write: bool = True) -> Plan:
    """Expand and validate `study`, then consult the ledger in `results`.

    A calibrating study's phase-2 trials are planned once their thresholds can be calibrated
    (pinned in the store unless `write` is False, as for a dry run).
    """
    ledger = ResultsStore(results, study.name).ledger()
    calibration = study_calibration(study, results, ledger, write=write) if study.calibrate else None
    trials = tuple(expand(study, calibration))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise ValueError("two trials of the study have the same configuration (duplicate trial_id)")
    finished = {tid for tid, status in ledger.items() if status in FINISHED_STATUSES} & set(ids)
    return Plan(study=study, trials=trials, finished=frozenset(finished),
                waiting=tuple(waiting_for_calibration(study, calibration)))


# ------------------------------------------------------------------------------------------------ Ray

def connect(address: str | None = None, dashboard: bool = False) -> str:
    """Attach to the cluster at `address` (or $RAY_ADDRESS), else start a local Ray; returns which."""
    import ray

    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return f"attached to {address}"
    # Local workers import the project from this checkout.
    path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(include_dashboard=dashboard, runtime_env={"env_vars": {"PYTHONPATH": path}})
    return "started local Ray"


def resolve_resources(study: StudySpec, cluster_gpus: float, autoscaling: bool = False) -> dict[str, float]:
    """Per-trial resources: one GPU per trial when the cluster has GPUs (unless given), and CPUs.

    `autoscaling`: the cluster may still add nodes (attached to a cluster rather than a local Ray),
    so asking for more GPUs than are up now is allowed: the autoscaler provides them.
    """
    gpus = study.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus > cluster_gpus and not autoscaling:
        raise ValueError(f"gpus_per_trial={gpus:g} is not allowed: this Ray has {cluster_gpus:g} GPU(s); "
                         "give --gpus-per-trial 0 for CPU-only trials")
    return {"cpu": float(study.cpus_per_trial), "gpu": float(gpus)}


def cluster_gpus() -> float:
    """GPUs in the connected cluster."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


# ----------------------------------------------------------------------------------------- experiments

def storage_root(results: str, study: str, storage: str | None = None) -> str:
    """Where the study's Tune experiments live (absolute path or URI)."""
    return storage_uri(storage) if storage else _join(storage_uri(results), study, "_ray")


def experiment_name(trial_ids: list[str]) -> str:
    """Stable name of the experiment that runs exactly these trials."""
    return "exp-" + hashlib.sha1(",".join(sorted(trial_ids)).encode()).hexdigest()[:10]


def _join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts) if "://" in root else os.path.join(root, *parts)


def write_plan(root: str, name: str, plan_doc: dict[str, Any]) -> None:
    """Write an experiment's plan file (trial payloads and resources)."""
    fs, path = resolve_uri(_join(root, name))
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(posixpath.join(path, PLAN_FILE)) as out:
        out.write(json.dumps(plan_doc, indent=1, sort_keys=True).encode())


def read_plans(root: str) -> dict[str, dict[str, Any]]:
    """experiment name -> plan document, for every experiment under `root`."""
    fs, path = resolve_uri(root)
    plans = {}
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        plan_path = posixpath.join(info.path, PLAN_FILE)
        if fs.get_file_info(plan_path).type == pafs.FileType.File:
            with fs.open_input_stream(plan_path) as f:
                plans[info.base_name] = json.loads(f.read().decode())
    return plans


def payload(spec: TrialSpec, hooks: dict[str, Any], checkpoint_every: int = 1) -> dict[str, Any]:
    """What a trial process needs (see trainables.ray_trainable)."""
    return {"study": spec.study, "config": spec.config, "hooks": dict(hooks), "label": spec.label,
            "checkpoint_every": checkpoint_every}


class TrialNamer:
    """Trial names and directories from the orchestrator's labels (picklable for Tuner.restore)."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def __call__(self, trial: Any) -> str:
        trial_id = trial.config["trial_id"]
        return f"{self.labels.get(trial_id, 'trial')}-{trial_id}"


def _trainable(payloads: dict[str, dict[str, Any]], resources: dict[str, float]) -> Any:
    from ray import tune

    from trainables.ray_trainable import train_trial

    return tune.with_resources(tune.with_parameters(train_trial, payloads=payloads), resources)


def _tuner(plan_doc: dict[str, Any], specs: dict[str, TrialSpec], results: str, root: str, name: str,
           max_failures: int, echo: bool, verbose: int) -> Any:
    from ray import tune

    from orchestrator.sink import ParquetSink

    ids = sorted(plan_doc["trials"])
    labels = {tid: plan_doc["trials"][tid]["label"] for tid in ids}
    return tune.Tuner(
        _trainable(plan_doc["trials"], plan_doc["resources"]),
        # The param_space stays tiny: it is copied into every result. Payloads travel via with_parameters.
        param_space={"trial_id": tune.grid_search(ids)},
        # reuse_actors: a finished trial's process runs the next one, saving the worker start and
        # the torch import (tens of seconds on a small CPU machine); a dead process is replaced.
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True, trial_name_creator=TrialNamer(labels),
                                    trial_dirname_creator=TrialNamer(labels)),
        run_config=tune.RunConfig(
            name=name, storage_path=root,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[ParquetSink(results, plan_doc["study"], {t: specs[t] for t in ids}, plan_doc["resources"],
                                   echo=echo)],
            verbose=verbose,
        ),
    )


@dataclass
class RunReport:
    """What `run_plan` did: experiments run (name -> "new"|"restored") and the Tune result grids."""

    experiments: dict[str, str]
    grids: list[Any]


def run_plan(plan: Plan, results: str, resources: dict[str, float], storage: str | None = None,
             echo: bool = True, verbose: int = 1) -> RunReport:
    """Run the pending trials of `plan`: resume earlier experiments, then one new experiment."""
    from ray import tune

    # Tune forces an experiment snapshot every num_to_keep checkpoints of a trial and warns when that
    # happens often; with a checkpoint per epoch of short epochs it always does, and the snapshot is cheap.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    study = plan.study
    root = storage_root(results, study.name, storage)
    specs = {t.trial_id: t for t in plan.trials}
    pending = {t.trial_id for t in plan.pending}
    done: dict[str, str] = {}
    grids = []
    store = ResultsStore(results, study.name)
    plans = read_plans(root)
    for name, doc in sorted(plans.items()):
        open_ids = pending & set(doc["trials"])
        exp_path = _join(root, name)
        if not open_ids or not tune.Tuner.can_restore(exp_path):
            continue
        print(f"[{study.name}] resuming experiment {name}: {len(open_ids)} unfinished trial(s)", flush=True)
        # The restored Tuner brings its own ParquetSink, pickled with its state. The checkpoint
        # cadence is an execution setting: this command's value applies to resumed trials too.
        payloads = {tid: {**p, "checkpoint_every": study.checkpoint_every} for tid, p in doc["trials"].items()}
        tuner = tune.Tuner.restore(exp_path, trainable=_trainable(payloads, doc["resources"]),
                                   resume_unfinished=True, resume_errored=True)
        before = store.run_mtimes()
        grids.append(tuner.fit())
        done[name] = "restored"
        # Trials the restored run settled (a runs row written now) are handled; a trial Tune had
        # already marked finished but whose row is missing (deleted to force a re-run) stays pending.
        # "Written now" compares the storage's own timestamps, never the driver's clock with them.
        after = store.run_mtimes()
        pending -= {tid for tid in open_ids if tid in after and after[tid] != before.get(tid)}
    if pending:
        ids = sorted(pending)
        name = experiment_name(ids)
        while name in plans or name in done:
            name = experiment_name(ids + [name])  # same trials as an old experiment: take a fresh directory
        doc = {"study": study.name, "resources": resources,
               "trials": {tid: payload(specs[tid], study.hooks, study.checkpoint_every) for tid in ids}}
        write_plan(root, name, doc)
        tuner = _tuner(doc, specs, results, root, name, study.max_failures, echo, verbose)
        grids.append(tuner.fit())
        done[name] = "new"
    return RunReport(experiments=done, grids=grids)


def ray_overhead(grids: list[Any]) -> dict[str, float] | None:
    """Per-epoch Ray overhead from the trials' Tune results: checkpoint save + tune.report time.

    Returns mean seconds per epoch of each part, the mean epoch time (train + eval) and the
    overhead as a fraction of it; None when no epoch carried the timings.
    """
    import pandas as pd

    frames = []
    for grid in grids:
        for result in grid:
            df = result.metrics_dataframe
            if df is not None and "ckpt_save_s" in df:
                frames.append(df)
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    save = df["ckpt_save_s"].astype(float).mean()
    report = df["report_prev_s"].dropna().astype(float).mean() if "report_prev_s" in df else float("nan")
    epoch = (df["epoch_time_s"].astype(float) + df["eval_time_s"].astype(float)).mean()
    return {"ckpt_save_s": save, "report_s": report, "epoch_s": epoch, "fraction": (save + report) / epoch,
            "epochs": float(len(df))}

