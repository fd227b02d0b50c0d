"""Run a validated study on Ray Tune: resources, experiments, resume points, the ledger.

Experiment directories live under `<storage>/<exp-name>` with `<storage>` = `<results>/<study>/_ray`
unless given. Each experiment is one Tuner over a fixed set of trials (`exp-<hash of its trial
ids>`), with the trial payloads in `orchestrator_plan.json` next to Tune's own state. Running a
study:

1. the ledger (runs rows) removes finished trials: completed ones that ran the study's epochs, and
   diverged ones; a completed trial with fewer epochs than the study now asks for is extended;
2. every other trial runs in one new experiment, starting from its newest intact checkpoint whose
   epochs the results store covers, whichever earlier experiment wrote it
   (orchestrator/checkpoints.py), else from scratch.

So re-running the same command resumes an interrupted study, whatever stopped it, and a widened
command extends it. Tune's own experiment state is never restored: it can name a checkpoint that
Tune already deleted when the driver was killed at the wrong moment.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import sys
import tempfile
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from orchestrator.calibration import StudyCalibration, study_calibration
from orchestrator.checkpoints import find_checkpoints, prune, resume_points
from orchestrator.gangs import tune_resources
from orchestrator.migrate import Rename, apply_renames, plan_renames, renamed_ids, renamed_view, stored_configs
from orchestrator.reaper import start_reaper
from orchestrator.schedule import CostEstimate, estimate_costs, longest_first
from orchestrator.store import ResultsStore, contiguous_epochs, epoch_seconds, finished_ids, resolve_uri, storage_uri
from orchestrator.studies import (
    StudySpec,
    TrialSpec,
    config_differences,
    defaults_since,
    expand,
    trial_label,
    waiting_for_calibration,
)
from orchestrator.study_gauges import METRICS_REPORT_INTERVAL_MS, StudyCounts, study_gauges
from trainables.config import TrialConfig
from trainables.data_parallel import workers_for

PLAN_FILE = "orchestrator_plan.json"
# The five identifiers of a trial's cell in the study grid (its label; shown in Tune's views).
IDENTIFIERS: tuple[str, ...] = ("arch", "dataset", "seed", "method", "variant")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Repairs:
    """What the driver holding the study lock does to the store before it runs a plan: rename trials
    stored under the ids of an older version, set damaged files aside, pin the thresholds a calibrating
    study computed. `make_plan` only describes them (a dry run prints `lines()`); `repair` does them."""

    store: ResultsStore
    renames: tuple[Rename, ...] = ()
    damaged: tuple[tuple[str, str], ...] = ()  # (path, why it does not read)
    untrusted: tuple[tuple[str, str], ...] = ()  # (trial_id, why its rows are not its own)
    calibration: StudyCalibration | None = None  # holds the entries to pin, if any

    def lines(self) -> list[str]:
        """What the repairs do, one line each."""
        return (
            [r.line() for r in self.renames]
            + [f"set aside damaged file {path} ({why[:200]}); its trial runs again" for path, why in self.damaged]
            + [f"set aside trial {tid}'s files: {why}; it runs again" for tid, why in self.untrusted]
            + (self.calibration.describe_unpinned() if self.calibration is not None else [])
        )

    def __bool__(self) -> bool:
        return bool(self.lines())


@dataclass(frozen=True)
class Plan:
    """A study's trials split by the ledger into finished and pending, plus (calibrating studies)
    the labels of trials that wait for their thresholds (phase 2), and the repairs the store needs
    first (the plan describes the store as it will be once they are done)."""

    study: StudySpec
    trials: tuple[TrialSpec, ...]
    finished: frozenset[str]
    waiting: tuple[str, ...] = ()
    estimate: CostEstimate | None = None  # cost per trial (orchestrator/schedule.py)
    notes: tuple[str, ...] = ()  # what the user should know: why waiting trials cannot be calibrated, ...
    statuses: dict[str, str] = field(default_factory=dict)  # trial_id -> status in the ledger (runs rows)
    repairs: Repairs | None = None

    def launch_order(self) -> list[TrialSpec]:
        """The pending trials, longest first (the order Tune starts them in)."""
        costs = self.estimate.costs if self.estimate else {}
        by_id = {t.trial_id: t for t in self.pending}
        return [by_id[i] for i in longest_first(by_id, costs)]

    @property
    def pending(self) -> tuple[TrialSpec, ...]:
        """Trials that still need to run (not completed, not diverged)."""
        return tuple(t for t in self.trials if t.trial_id not in self.finished)


def make_plan(study: StudySpec, results: str, storage: str | None = None, epoch_times: str | None = None) -> Plan:
    """Expand and validate `study`, then consult the ledger in `results`. Reads only: nothing is
    written, renamed or moved (`repair` does what `plan.repairs` describes, under the study lock).

    A calibrating study's phase-2 trials are planned once their thresholds can be calibrated. A study
    keeps one configuration per (arch, dataset, seed, method, variant): a trial stored with other
    settings is refused (ValueError naming them), except more epochs, which extend it.
    """
    store = ResultsStore(results, study.name)  # damaged files are named, not moved
    stored_runs = store.read_runs()
    plans = {
        name: doc
        for name, doc in read_plans(storage_root(results, study.name, storage)).items()
        if doc.get("study") == study.name
    }
    stored_rows = store.trials_with_epochs()
    configs = stored_configs(stored_runs, plans, stored_rows)
    renames = plan_renames(store, renamed_ids(configs), stored_runs, stored_rows)
    runs, with_rows, source = renamed_view(renames, stored_runs, stored_rows)
    # Rows a trial did not write (another trial's file under its name, edited values) are set aside by the
    # repairs and the trial runs again: the plan reads the store without them.
    base = expand(study)  # every trial but a calibrating study's phase 2 (it waits for its thresholds)
    expected = {t.trial_id: t.identifiers() for t in base}
    untrusted = store.mismatched(with_rows - set(source), stored_runs, expected) if with_rows else {}
    for tid in untrusted:
        runs.pop(tid, None)
        with_rows.discard(tid)
    done = finished_ids(runs, study.epochs)
    calibration = None
    if study.calibrate:
        fixed = [(t.arch, t.trial_id) for t in base if t.method == "fixed"]
        calibration = study_calibration(study.name, results, done, fixed)
    trials = tuple(expand(study, calibration))
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        raise ValueError("two trials of the study have the same configuration (duplicate trial_id)")
    check_one_configuration(study, trials, configs, stored_runs)
    finished = done & set(ids)
    # Costs from the epoch times stored so far (any trial of the study), for the epochs left.
    stored = store.plan_rows({source.get(tid, tid) for tid in with_rows & set(ids)})
    started = {tid: stored.get(source.get(tid, tid), []) for tid in with_rows & set(ids)}
    repairs = Repairs(
        store=store,
        renames=tuple(renames),
        damaged=tuple((path, why) for path, _, why in store.quarantined),
        untrusted=tuple(sorted(untrusted.items())),
        calibration=calibration.calibration if calibration is not None else None,
    )
    return Plan(
        study=study,
        trials=trials,
        finished=frozenset(finished),
        waiting=tuple(waiting_for_calibration(study, calibration)),
        estimate=estimate_costs(
            trials,
            epoch_seconds(started),
            {tid: contiguous_epochs(rows) for tid, rows in started.items() if tid not in finished},
            *reference_seconds(trials, epoch_times),
        ),
        statuses={tid: row["status"] for tid, row in runs.items()},
        notes=tuple(sorted(calibration.problems.values()) if calibration is not None else []),
        repairs=repairs,
    )


def reference_seconds(trials: tuple[TrialSpec, ...], path: str | None = None) -> tuple[dict[str, float], str]:
    """trial_id -> seconds per epoch from the shared GPU epoch-time table at `path` (default
    orchestrator.epoch_times.DEFAULT_PATH; none when it does not exist), and the table's name."""
    from orchestrator.epoch_times import DEFAULT_PATH, read_epoch_times
    from trainables.data import split_sizes

    table = read_epoch_times(path or DEFAULT_PATH)
    if path and table is None:
        raise ValueError(f"epoch_times={path!r} is not allowed; expected an existing epoch-time table (JSON)")
    if table is None:
        return {}, ""
    seconds = {}
    for t in trials:
        cfg = t.config
        s = table.epoch_seconds(t.arch, *split_sizes(t.dataset, cfg.get("train_limit"), cfg.get("test_limit")))
        if s is not None:
            seconds[t.trial_id] = s
    return seconds, f"{table.device}, B = {table.batch_size}, measured {table.measured[:10]}"


def repair(plan: Plan) -> list[str]:
    """Do the repairs `plan` describes (the caller holds the study lock); returns one line per repair."""
    r = plan.repairs
    if r is None:
        return []
    lines = apply_renames(r.store, list(r.renames))
    fixer = ResultsStore(r.store.results, r.store.study, fix_damage=True)
    for path, why in r.damaged:  # named on stderr where they go
        fixer.quarantine(path, why)
    if r.untrusted:
        fixer.release([tid for tid, _ in r.untrusted])  # rows in a compacted part get their own files first
    for tid, why in r.untrusted:
        for table in ("epochs", "runs"):
            path = fixer.table_path(table, tid)
            if fixer.fs.get_file_info(path).type == pafs.FileType.File:
                fixer.quarantine(path, why)
    if r.calibration is not None and r.calibration.unpinned:
        lines += r.calibration.describe_unpinned()
        r.calibration.pin()
    return lines


def check_one_configuration(
    study: StudySpec, trials: tuple[TrialSpec, ...], configs: dict[str, dict[str, Any]], runs: Collection[str]
) -> None:
    """Refuse a study whose trials differ from the ones its store already holds for the same cell
    (arch, dataset, seed, method, variant), naming the settings; more epochs only extend a trial.

    `configs`: the stored trials' configs (`migrate.stored_configs`: runs rows, and the plans of
    interrupted trials); of two for one cell, the one with a runs row (`runs`) speaks."""
    stored: dict[str, dict[str, Any]] = {}  # label -> a stored config of that cell
    for tid in sorted(configs, key=lambda tid: tid in runs):
        cfg = configs[tid]
        if all(name in cfg for name in IDENTIFIERS):
            stored[trial_label(*(cfg[name] for name in IDENTIFIERS))] = cfg
    for t in trials:
        old = stored.get(t.label)
        if old is None:
            continue
        new = t.config.to_dict()
        changes = config_differences(old, new)
        fewer = isinstance(old.get("epochs"), int) and new["epochs"] < old["epochs"]
        if changes or fewer:
            what = "; ".join(changes + ([f"epochs: {old['epochs']} -> {new['epochs']} (fewer)"] if fewer else []))
            keep = defaults_since(old, new)
            hint = " ".join(f"--{name.replace('_', '-')} {text}" for name, text in keep.items())
            raise ValueError(
                f"study {study.name!r} already holds trial {t.label} with other settings ({what}). A study keeps "
                f"one configuration per trial so that its tables compare like with like: run these settings as "
                f"a new study (--study {study.name}-2), or move {study.name!r} out of the results folder. "
                "(More epochs, seeds, archs, datasets, methods or variants extend a study.)"
                + (
                    f" The stored value of {', '.join(keep)} was the default of the version that wrote the store: "
                    f"to continue the study as it was, give {hint}"
                    if keep
                    else ""
                )
            )


# ------------------------------------------------------------------------------------------------ Ray


@dataclass(frozen=True)
class Connection:
    """How this process reached Ray: `attached` to a running cluster (which may still add nodes), or a
    local Ray it started (or found started) itself."""

    attached: bool
    description: str


TMPDIR_ENV = "DEBA_TMPDIR"  # where trials write a checkpoint before Tune copies it (trainables/ray_trainable.py)


def connect(address: str | None = None, dashboard: bool = False) -> Connection:
    """Attach to the cluster at `address` (or $RAY_ADDRESS), else start a local Ray. A local Ray gets a
    reaper (orchestrator/reaper.py): its processes and the trials' temporary folder do not outlive this
    process, whatever signal ends it."""
    import ray

    if ray.is_initialized():
        return Connection(attached=False, description="already connected")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return Connection(attached=True, description=f"attached to {address}")
    temp_dir = tempfile.mkdtemp(prefix="deba-driver-")
    start_reaper(temp_dir)
    # Local workers import the project from this checkout.
    path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    ray.init(
        include_dashboard=dashboard,
        runtime_env={"env_vars": {"PYTHONPATH": path, TMPDIR_ENV: temp_dir}},
        # live gauges every 2 s rather than Ray's 10 s (orchestrator/study_gauges.py: the lag)
        _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
    )
    return Connection(attached=False, description="started local Ray")


def resolve_resources(
    study: StudySpec, cluster_gpus: float, autoscaling: bool = False, cluster_cpus: float | None = None
) -> dict[str, float]:
    """Per-trial resources: one GPU per trial when the cluster has GPUs (unless given), and CPUs.

    `autoscaling`: the cluster may still add nodes (attached to a cluster rather than a local Ray),
    so asking for more GPUs than are up now is allowed: the autoscaler provides them.
    """
    gpus = study.gpus_per_trial
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus > cluster_gpus and not autoscaling:
        raise ValueError(
            f"gpus_per_trial={gpus:g} is not allowed: this Ray has {cluster_gpus:g} GPU(s); "
            "give --gpus-per-trial 0 for CPU-only trials"
        )
    if cluster_cpus is not None and study.cpus_per_trial > cluster_cpus and not autoscaling:
        raise ValueError(
            f"cpus_per_trial={study.cpus_per_trial:g} is not allowed: this Ray has {cluster_cpus:g} CPU(s), and "
            "a trial that asks for more would wait forever"
        )
    widest = max(workers_for(study.workers_per_trial, arch) for arch in study.archs)
    too_wide = widest * gpus > cluster_gpus or (
        cluster_cpus is not None and widest * study.cpus_per_trial > cluster_cpus
    )
    if widest > 1 and not autoscaling and too_wide:
        raise ValueError(
            f"workers_per_trial={study.workers_per_trial!r} is not allowed: a trial of {widest} workers needs "
            f"{widest * gpus:g} GPU(s) and {widest * study.cpus_per_trial:g} CPU(s) at once, and this Ray has "
            f"{cluster_gpus:g} GPU(s) and {cluster_cpus or 0:g} CPU(s); its gang would wait forever"
        )
    if gpus == 0 and study.loop.get("device") == "cuda":
        # A CPU-only trial runs on the CPU whatever its config says: refuse rather than ignore it.
        raise ValueError(
            "device=cuda is not allowed: trials get no GPU here (gpus_per_trial=0"
            + ("" if study.gpus_per_trial == 0 else f", this Ray has {cluster_gpus:g} GPU(s)")
            + "); give --gpus-per-trial 1 on a GPU cluster, or device=auto"
        )
    return {"cpu": float(study.cpus_per_trial), "gpu": float(gpus)}


def check_local_resources(study: StudySpec, address: str | None) -> None:
    """Before a local Ray starts: refuse a trial that asks for more CPUs or GPUs than this machine has
    (Tune would wait for them forever). With a cluster (`address` or $RAY_ADDRESS) the cluster's own
    resources are checked once attached (`resolve_resources`)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return
    cpus = os.cpu_count() or 1
    if study.cpus_per_trial > cpus:
        raise ValueError(
            f"cpus_per_trial={study.cpus_per_trial:g} is not allowed; expected at most {cpus}: this machine has "
            f"{cpus} CPU(s), and a trial that asks for more would wait forever (give --address for a cluster)"
        )
    widest = max(workers_for(study.workers_per_trial, arch) for arch in study.archs)
    if widest > 1 and widest * study.cpus_per_trial > cpus:
        raise ValueError(
            f"workers_per_trial={study.workers_per_trial!r} is not allowed here: a trial of {widest} workers x "
            f"{study.cpus_per_trial:g} CPU needs {widest * study.cpus_per_trial:g} CPUs at once and this machine has "
            f"{cpus} (give --address for a cluster, or fewer workers)"
        )


def local_slots(study: StudySpec) -> int:
    """How many trials this machine runs at once without a cluster: its GPUs, else CPUs / cpus_per_trial."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus and study.gpus_per_trial != 0:
        return max(1, int(gpus / (study.gpus_per_trial or 1.0)))
    return max(1, int((os.cpu_count() or 1) / study.cpus_per_trial))


def local_gpus() -> int:
    """GPUs this machine has (torch's count)."""
    import torch

    return torch.cuda.device_count()


def cluster_slots(resources: dict[str, float]) -> int:
    """How many trials of `resources` the connected cluster runs at once (now)."""
    import ray

    total = ray.cluster_resources()
    by_gpu = total.get("GPU", 0.0) / resources["gpu"] if resources["gpu"] else float("inf")
    by_cpu = total.get("CPU", 0.0) / resources["cpu"] if resources["cpu"] else float("inf")
    slots = min(by_gpu, by_cpu)
    return max(1, int(slots)) if slots != float("inf") else 1


def cluster_gpus() -> float:
    """GPUs in the connected cluster."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    """CPUs in the connected cluster."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0))


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
    """Write an experiment's plan file (trial payloads and resources), whole or not at all."""
    fs, path = resolve_uri(_join(root, name))
    fs.create_dir(path, recursive=True)
    target = posixpath.join(path, PLAN_FILE)
    tmp = f"{target}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(json.dumps(plan_doc, indent=1, sort_keys=True, default=_stored).encode())
    fs.move(tmp, target)


def _stored(obj: Any) -> Any:
    """JSON of what a plan file holds besides plain values: a trial's config, as its stored document."""
    if isinstance(obj, TrialConfig):
        return obj.stored()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def read_plans(root: str) -> dict[str, dict[str, Any]]:
    """experiment name -> plan document, for every experiment under `root` whose plan reads (an
    unreadable one is named on stderr and left out: its experiment's trials are re-planned)."""
    fs, path = resolve_uri(root)
    plans = {}
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type != pafs.FileType.Directory:
            continue
        plan_path = posixpath.join(info.path, PLAN_FILE)
        if fs.get_file_info(plan_path).type != pafs.FileType.File:
            continue
        try:
            with fs.open_input_stream(plan_path) as f:
                doc = json.loads(f.read().decode())
            if not isinstance(doc, dict):
                raise ValueError(f"a JSON {type(doc).__name__}, not an object")
        except (OSError, ValueError) as exc:
            print(f"experiment plan {plan_path} cannot be read ({exc}); left out", file=sys.stderr, flush=True)
            continue
        plans[info.base_name] = doc
    return plans


def payload(
    spec: TrialSpec, hooks: dict[str, Any], checkpoint_every: int = 1, init_checkpoints: list[str] | None = None
) -> dict[str, Any]:
    """What a trial process needs (see trainables.ray_trainable)."""
    return {
        "study": spec.study,
        "config": spec.config,
        "hooks": dict(hooks),
        "label": spec.label,
        "checkpoint_every": checkpoint_every,
        "init_checkpoints": list(init_checkpoints or []),
    }


class TrialField:
    """`tune.sample_from` function: one identifier of the trial the grid point names (picklable). It takes
    the config dict (the old spec form made Tune warn once per identifier)."""

    def __init__(self, key: str, values: dict[str, Any]) -> None:
        self.key = key
        self.values = values

    def __call__(self, config: dict[str, Any]) -> Any:
        return self.values[config["trial_id"]]


class TrialNamer:
    """Trial names and directories from the orchestrator's labels (picklable); a `/` (timm/<name>
    archs) becomes `_`, so that every trial directory sits directly in its experiment's."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def __call__(self, trial: Any) -> str:
        trial_id = trial.config["trial_id"]
        return f"{self.labels.get(trial_id, 'trial')}-{trial_id}".replace("/", "_")


def pause_after_save(seconds: float) -> Any:
    """Test hook: a Tune callback that sleeps after Tune registered (and pruned) a trial's checkpoint,
    before the experiment snapshot, the window in which a killed driver used to wedge a trial."""
    from ray import tune

    class PauseAfterSave(tune.Callback):
        def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            time.sleep(seconds)

    return PauseAfterSave()


class TrialResources:
    """`tune.with_resources` function: one slot for a one-worker trial, the driver only for a W-worker
    trial, whose gang Ray Train reserves (orchestrator/gangs.py; picklable)."""

    def __init__(self, payloads: dict[str, dict[str, Any]], resources: dict[str, float]) -> None:
        self.workers = {tid: int(p["config"].workers) for tid, p in payloads.items()}
        self.resources = dict(resources)

    def __call__(self, config: dict[str, Any]) -> dict[str, float]:
        return tune_resources(self.workers.get(config["trial_id"], 1), self.resources)


def _trainable(payloads: dict[str, dict[str, Any]], resources: dict[str, float]) -> Any:
    from ray import tune

    from trainables.ray_trainable import train_trial
    from trainables.streamed import trial_bundles

    trainable = tune.with_parameters(train_trial, payloads=payloads, resources=resources)
    if any(int(p["config"].workers) > 1 for p in payloads.values()):
        return tune.with_resources(trainable, TrialResources(payloads, resources))
    # A streamed folder dataset's Ray Data pipeline gets a bundle of its own in the trial's placement group
    # (which captures the trial's tasks): the trial's own CPUs stay the model's, and no deadlock.
    bundles = trial_bundles([p["config"] for p in payloads.values()], resources)
    request = tune.PlacementGroupFactory(bundles) if len(bundles) > 1 else resources
    return tune.with_resources(trainable, request)


def _tuner(
    plan_doc: dict[str, Any],
    specs: dict[str, TrialSpec],
    results: str,
    root: str,
    name: str,
    max_failures: int,
    echo: bool,
    verbose: int,
    extra_callbacks: list[Any],
) -> Any:
    from ray import tune

    from orchestrator.sink import ParquetSink
    from orchestrator.tune_views import NameTrials

    ids = plan_doc.get("order") or list(plan_doc["trials"])  # launch order: Tune starts grid points in order
    labels = {tid: plan_doc["trials"][tid]["label"] for tid in ids}
    return tune.Tuner(
        _trainable(plan_doc["trials"], plan_doc["resources"]),
        # The param_space stays small (it is copied into every result): the trial id and the five
        # identifiers, so that Tune's own views (ResultGrid, TensorBoard HParams) say which trial is
        # which. Payloads travel via with_parameters.
        param_space={
            "trial_id": tune.grid_search(ids),
            **{key: tune.sample_from(TrialField(key, {t: getattr(specs[t], key) for t in ids})) for key in IDENTIFIERS},
        },
        # reuse_actors: a finished trial's process runs the next one, saving the worker start and
        # the torch import (tens of seconds on a small CPU machine); a dead process is replaced.
        tune_config=tune.TuneConfig(
            num_samples=1,
            reuse_actors=True,
            trial_name_creator=TrialNamer(labels),
            trial_dirname_creator=TrialNamer(labels),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=root,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[
                ParquetSink(results, plan_doc["study"], {t: specs[t] for t in ids}, plan_doc["resources"], echo=echo),
                NameTrials(IDENTIFIERS),
                *extra_callbacks,
            ],
            verbose=verbose,
        ),
    )


@dataclass
class RunReport:
    """What `run_plan` did: experiments run (name -> "new"), the Tune result grids, where trials started
    (trial_id -> ResumePoint), the checkpoints pruned, and whether a stop signal cut the run short."""

    experiments: dict[str, str]
    grids: list[Any]
    starts: dict[str, Any] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)
    interrupted: bool = False


def run_plan(
    plan: Plan,
    results: str,
    resources: dict[str, float],
    storage: str | None = None,
    echo: bool = True,
    verbose: int = 1,
    stop: Any = None,
) -> RunReport:
    """Run the pending trials of `plan` in one new experiment, each from its newest usable checkpoint.

    Never `Tuner.restore` (orchestrator/checkpoints.py says why): unfinished trials of earlier
    experiments continue from the checkpoints found on storage, whose epochs the results store
    covers. Older checkpoints of these trials are pruned first (the caller holds the study lock).
    `stop` (a GracefulStop) ends the run early on SIGTERM/SIGINT with Tune's final snapshot.
    """
    study = plan.study
    ids = [t.trial_id for t in plan.launch_order()]
    if not ids:
        return RunReport(experiments={}, grids=[])
    root = storage_root(results, study.name, storage)
    specs = {t.trial_id: t for t in plan.trials}
    store = ResultsStore(results, study.name, fix_damage=True)
    store.release(ids)  # compacted trials that run again (an extension) get their own files first
    plans = read_plans(root)
    # Only this study's experiments: another study sharing --storage may hold the same trial ids.
    ours = {name for name, doc in plans.items() if doc.get("study") == study.name}
    found = find_checkpoints(root, set(ids), experiments=ours)
    stored = store.stored_epochs([t.trial_id for t in plan.trials])  # every trial's: the study's gauges count them
    starts = resume_points(found, stored)
    pruned = prune(found, starts)
    for tid in ids:  # printed even with echo off (--quiet drops the per-epoch lines only)
        point = starts[tid]
        for why in point.skipped:
            print(f"[{study.name}] {specs[tid].label}: checkpoint passed over: {why}", flush=True)
        if point.candidates:
            print(
                f"[{study.name}] {specs[tid].label}: resumes after epoch {point.epoch} ({point.candidates[0]})",
                flush=True,
            )
    name = experiment_name(ids)
    while name in plans:
        name = experiment_name(ids + [name])  # same trials as an earlier experiment: a fresh directory
    doc = {
        "study": study.name,
        "resources": resources,
        "order": ids,
        "trials": {
            tid: payload(specs[tid], study.hooks, study.checkpoint_every, list(starts[tid].candidates)) for tid in ids
        },
    }
    write_plan(root, name, doc)
    extra = [stop] if stop is not None else []
    counts = StudyCounts.from_plan(
        plan.trials, plan.finished, plan.statuses, stored, len(plan.waiting), len(plan.waiting) * study.epochs
    )
    extra.append(study_gauges(study.name, counts))  # live for as long as this driver runs
    if study.hooks.get("driver_pause_after_save_s"):
        extra.append(pause_after_save(float(study.hooks["driver_pause_after_save_s"])))
    tuner = _tuner(doc, specs, results, root, name, study.max_failures, echo, verbose, extra_callbacks=extra)
    report = RunReport(experiments={}, grids=[], starts=starts, pruned=pruned)
    if stop is not None and stop.requested:
        report.interrupted = True
        return report
    report.grids.append(tuner.fit())
    report.experiments[name] = "new"
    report.interrupted = stop is not None and stop.requested
    return report


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
    return {
        "ckpt_save_s": save,
        "report_s": report,
        "epoch_s": epoch,
        "fraction": (save + report) / epoch,
        "epochs": float(len(df)),
    }
