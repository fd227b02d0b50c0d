"""Command-line parsing for run_grid: a preset plus overrides -> StudySpec, and the driver's options.

Every flag is generated from a typed setting, with its help and allowed values: the driver's options
(`DriverOptions` below), the study's grid and resources (`StudySpec`), the trial settings for every
trial (`TrialConfig`: `--lr 0.02`, `--train-limit 4000`), and every policy option (`--cooldown 5`,
`--decision-rule either`, `--batch-size 48` for b0), applied to each method of the study that accepts
it. Lists take commas or spaces (`--seeds 0,1 2`). `--define-variant NAME:KEY=VALUE[,KEY=VALUE]` adds a
named variant. Flags are matched whole. The old spellings `--policy-opt KEY=VALUE` and `--loop-opt
KEY=VALUE` still work, with a one-line notice; one setting given two ways with different values is
refused.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from orchestrator.studies import (
    PRESETS,
    RESERVED_LOOP_KEYS,
    THRESHOLD_OPTIONS,
    StudySpec,
    load_thresholds,
    preset,
    with_overrides,
)
from trainables import flags
from trainables.config import TrialConfig
from trainables.policies import option_fields, policy_options
from trainables.settings import add_arguments, fail, fields_of, given_values, merge_old_spelling, setting, validate

DEFAULT_RESULTS = "results"
# TrialConfig fields the study grid sets (or --data-dir): no per-setting flag for them.
GRID_FIELDS = RESERVED_LOOP_KEYS
STUDY_PREFIX = "study_setting_"
LOOP_PREFIX = "loop_setting_"
POLICY_PREFIX = "policy_option_"


@dataclass(frozen=True)
class DriverOptions:
    """How run_grid runs a study (not what the study is)."""

    preset: str | None = setting(
        None,
        f"study preset: {', '.join(PRESETS)} (default: --study when it names a preset, else demo)",
        kind="choice",
        choices=tuple(PRESETS),
        nullable=True,
    )
    results: str = setting(
        DEFAULT_RESULTS, "results store: local path or pyarrow.fs URI (s3://..., gs://...)", kind="str"
    )
    storage: str | None = setting(
        None,
        "where Ray Tune keeps experiment state and checkpoints (path or URI); default <results>/<study>/_ray. "
        "Multi-node clusters need shared storage.",
        kind="path",
        nullable=True,
    )
    thresholds: str | None = setting(
        None, 'JSON file: {arch: {"theta_stab": x, "theta_conf": y}} for DEBA trials', kind="path", nullable=True
    )
    address: str | None = setting(
        None, "Ray cluster address (default $RAY_ADDRESS; none: start a local Ray)", kind="path", nullable=True
    )
    dashboard: bool = setting(False, "start the Ray dashboard with a local Ray", kind="bool", switch=True)
    dry_run: bool = setting(False, "print the plan (trials, resources, done) and exit", kind="bool", switch=True)
    # Planning cluster time (orchestrator/capacity.py): --dry-run only.
    gpus: int | None = setting(
        None,
        "--dry-run: plan the makespan in hours for a cluster of this many GPUs (one trial per GPU unless "
        "--gpus-per-trial says otherwise); default: the attached cluster's (--address), else 8, 16 and 64",
        kind="int",
        minimum=1,
        nullable=True,
    )
    gpu_speed: float = setting(
        1.0,
        "--dry-run: the GPU's speed relative to the one the epoch times refer to (the epoch-time table's "
        "device, the store's measurements, or the assumed H100); every time is divided by it",
        kind="float",
        minimum=0,
        strict=True,
    )
    epoch_times: str | None = setting(
        None,
        "a table of per-arch GPU epoch times (orchestrator/epoch_times.py) for the plan's costs; default "
        "benchmarks/gpu_epoch_times.json when it exists",
        kind="path",
        nullable=True,
    )
    quiet: bool = setting(False, "no per-epoch progress lines", kind="bool", switch=True)
    verbose: int = setting(1, "Ray Tune verbosity", kind="choice", choices=(0, 1, 2))
    no_analysis: bool = setting(False, "skip the analysis tables at the end", kind="bool", switch=True)
    keep_checkpoints: bool = setting(
        False,
        "keep every checkpoint and experiment folder (default: finished trials keep only their final checkpoint, "
        "and experiment folders whose trials are all finished are deleted)",
        kind="bool",
        switch=True,
    )

    def __post_init__(self) -> None:
        validate(self)
        if not self.dry_run:  # a run uses the GPUs of the Ray it runs on, at their own speed
            if self.gpus is not None:
                fail("gpus", self.gpus, "--gpus only with --dry-run (it plans cluster time; a run uses its Ray's GPUs)")
            if self.gpu_speed != 1.0:
                fail("gpu_speed", self.gpu_speed, "--gpu-speed only with --dry-run (it plans cluster time)")


def build_parser() -> argparse.ArgumentParser:
    """The run_grid argument parser, generated from the typed settings (module docstring)."""
    p = argparse.ArgumentParser(
        prog="run_grid.py",
        description="Run an adaptive batch-size study on Ray Tune (one trial per arch x dataset x seed x "
        "method x variant); results go to Parquet. Re-running resumes or extends a study.",
        allow_abbrev=False,
    )
    add_arguments(p, DriverOptions, group="running the study")
    add_arguments(p, StudySpec, group="the study (overrides the preset's)", dest_prefix=STUDY_PREFIX)
    p.add_argument(
        "--define-variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="define a named variant by its policy options (repeatable); list it in --variants",
    )
    add_arguments(
        p, TrialConfig, skip=GRID_FIELDS, group="trial settings for every trial (trainables/config.py)",
        dest_prefix=LOOP_PREFIX,
    )  # fmt: skip
    flags.add_policy_arguments(
        p, "policy options for every method of the study that takes them (trainables/policies/options.py)",
        POLICY_PREFIX,
    )  # fmt: skip
    # Old spellings, kept working with a notice (not shown: one spelling per setting in --help).
    p.add_argument("--policy-opt", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    p.add_argument("--loop-opt", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    p.add_argument("--test-hook", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    return p


def driver_from_args(args: argparse.Namespace) -> DriverOptions:
    """The driver's options the arguments give (ValueError naming a bad one)."""
    return DriverOptions(**given_values(args, DriverOptions))


def study_from_args(args: argparse.Namespace) -> StudySpec:
    """The StudySpec the arguments describe (its trials are checked when `expand` builds them)."""
    driver = driver_from_args(args)
    grid = given_values(args, StudySpec, STUDY_PREFIX)
    name = grid.get("name")
    base = preset(driver.preset or (name if name in PRESETS else "demo"))
    variant_defs = dict(base.variant_defs)
    for item in args.define_variant:
        vname, sep, opts = item.partition(":")
        if not sep or not vname:
            fail("define_variant", item, "NAME:KEY=VALUE[,KEY=VALUE]")
        variant_defs[vname] = flags.pairs(f"define_variant[{vname}]", [o for o in opts.split(",") if o])
    old_policy = flags.known_keys("policy_opt", flags.pairs("policy_opt", args.policy_opt), option_fields())
    policy_given = merge_old_spelling(
        flags.given_policy_options(args, POLICY_PREFIX), old_policy, "--policy-opt {key}={value}", flags.policy_flag
    )
    old_loop = flags.pairs("loop_opt", args.loop_opt)
    reserved = sorted(GRID_FIELDS & set(old_loop))
    if reserved:
        fail(
            "loop_opt",
            reserved,
            "trial settings other than arch, dataset, seed, method, variant, policy and epochs (the study grid "
            "sets them: --archs, --seeds, ...) and data_dir (--data-dir)",
        )
    loop_given = merge_old_spelling(
        given_values(args, TrialConfig, LOOP_PREFIX, skip=GRID_FIELDS),
        flags.known_keys("loop_opt", old_loop, {f.name for f in fields_of(TrialConfig)}),
        "--loop-opt {key}={value}",
        lambda key: f"--{key.replace('_', '-')}",
    )
    thresholds = dict(base.thresholds)
    given = load_thresholds(driver.thresholds) if driver.thresholds else {}
    if given:
        both = sorted(THRESHOLD_OPTIONS & set(policy_given))
        if both:
            fail(
                "thresholds",
                driver.thresholds,
                f"no --thresholds file together with {', '.join(flags.policy_flag(k) for k in both)}: both set DEBA's "
                "thresholds; give one of them",
            )
        thresholds.update(given)
    if "data_dir" in grid and grid["data_dir"] is not None:
        grid["data_dir"] = os.path.abspath(os.path.expanduser(grid["data_dir"]))  # trials chdir: absolute paths only
    study = with_overrides(
        base,
        **grid,
        policy={**base.policy, **policy_given},
        loop={**base.loop, **loop_given},
        hooks={**base.hooks, **flags.pairs("test_hook", args.test_hook)},
        variant_defs=variant_defs,
        thresholds=thresholds,
    )
    flags.check_subset_seed(loop_given, study.loop)
    unused = sorted(k for k in policy_given if not any(k in policy_options(m) for m in study.methods))
    if unused:
        takers = {k: option_fields()[k][1] if k in option_fields() else () for k in unused}
        fail(
            "policy options",
            unused,
            f"options of a method of this study ({', '.join(study.methods)}); "
            + "; ".join(
                f"{flags.policy_flag(k) if takers[k] else k} is an option of {', '.join(takers[k]) or 'no policy'}"
                for k in unused
            )  # fmt: skip
            + ": add the method (--methods) or drop the option",
        )
    outside = sorted(set(given) - set(study.archs))
    if outside:
        fail(
            "thresholds",
            driver.thresholds,
            f"thresholds for the study's archs only ({', '.join(study.archs)}): the file has "
            f"{', '.join(outside)}, which this study does not run; drop those entries or add the archs with --archs",
        )
    return study
