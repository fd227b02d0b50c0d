"""Command-line parsing for run_grid: a preset plus overrides -> StudySpec.

Lists take commas or spaces (`--seeds 0,1 2`). `--policy-opt KEY=VALUE` sets a study-wide policy
option (every method that accepts it), `--define-variant NAME:KEY=VALUE[,KEY=VALUE]` adds a named
variant, `--loop-opt KEY=VALUE` sets a TrialLoop config key (lr, train_limit, amp, ...), as does
the flag of each trial setting (`--lr 0.02`, `--train-limit 4000`: generated from TrialConfig's
fields), and `--batch-size B` sets the policy option b0. Values are read as JSON when they parse
(3, 0.5, true, null) and as strings otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from orchestrator.studies import PRESETS, RESERVED_LOOP_KEYS, StudySpec, load_thresholds, preset, with_overrides
from trainables.config import TrialConfig
from trainables.settings import add_arguments, fields_of, parse_text

DEFAULT_RESULTS = "results"


def _split(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [v for chunk in values for v in chunk.split(",") if v]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(field: str, items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{field}={item!r} is not allowed; expected KEY=VALUE")
        out[key] = _value(value)
    return out


def _ints(field: str, values: list[str] | None) -> list[int] | None:
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"{field}={values!r} is not allowed; expected integers (e.g. 0,1,2)") from None


def _number(field: str, text: str | None, kind: type = float) -> Any:
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ValueError(
            f"{field}={text!r} is not allowed; expected {'an integer' if kind is int else 'a number'}"
        ) from None


# TrialConfig fields the study grid sets (or --data-dir): no per-setting flag for them.
GRID_FIELDS = RESERVED_LOOP_KEYS
LOOP_PREFIX = "loop_setting_"


def _loop_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The trial settings given as flags (--lr 0.02, --train-limit 4000, ...)."""
    out = {}
    for f in fields_of(TrialConfig):
        text = getattr(args, LOOP_PREFIX + f.name, None)
        if text is not None:
            out[f.name] = parse_text(f.name, text, f.metadata)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The run_grid argument parser."""
    p = argparse.ArgumentParser(
        prog="run_grid.py",
        description="Run an adaptive batch-size study on Ray Tune (one trial per arch x dataset x seed x "
        "method x variant); results go to Parquet. Re-running resumes or extends a study.",
    )
    p.add_argument(
        "--preset", help=f"study preset: {', '.join(PRESETS)} (default: --study when it names a preset, else demo)"
    )
    p.add_argument(
        "--study",
        help="study name (results subdirectory); default: the preset's name. "
        "`--study paper` alone runs the paper preset",
    )
    p.add_argument("--archs", nargs="+", help="architectures (comma or space separated)")
    p.add_argument("--datasets", nargs="+", help="datasets")
    p.add_argument("--seeds", nargs="+", help="integer seeds")
    p.add_argument("--methods", nargs="+", help="batch-size policies (fixed, deba, ...)")
    p.add_argument(
        "--variants",
        nargs="+",
        help="variants: baseline, universal_thresholds, cooldown2, cooldown5, "
        "full_history, or names from --define-variant",
    )
    p.add_argument("--epochs", help="epochs per trial")
    p.add_argument("--data-dir", help="directory with local dataset copies (CIFAR)")
    p.add_argument(
        "--results",
        default=DEFAULT_RESULTS,
        help="results store: local path or pyarrow.fs URI (s3://..., gs://...); default ./results",
    )
    p.add_argument(
        "--storage",
        help="where Ray Tune keeps experiment state and checkpoints (path or URI); "
        "default <results>/<study>/_ray. Multi-node clusters need shared storage.",
    )
    p.add_argument(
        "--gpus-per-trial", help="GPUs per trial (fractions pack trials); default 1 if the cluster has GPUs, else 0"
    )
    p.add_argument("--cpus-per-trial", help="CPUs per trial (default 1)")
    p.add_argument("--max-failures", help="retries per trial, each resuming from the last checkpoint")
    p.add_argument(
        "--checkpoint-every",
        metavar="K",
        help="checkpoint every K-th epoch (default 1; the last and a diverged epoch always): fewer "
        "checkpoints of big models, a retry re-runs up to K-1 epochs",
    )
    p.add_argument("--thresholds", help='JSON file: {arch: {"theta_stab": x, "theta_conf": y}} for DEBA trials')
    p.add_argument(
        "--policy-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="study-wide policy option, for every method that accepts it (repeatable)",
    )
    p.add_argument(
        "--define-variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="define a named variant by its policy options (repeatable); list it in --variants",
    )
    p.add_argument(
        "--loop-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TrialLoop config key for every trial: lr, train_limit, test_limit, amp, ... (repeatable)",
    )
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS; none: start local Ray)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with a local Ray")
    p.add_argument("--dry-run", action="store_true", help="print the plan (trials, resources, done) and exit")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Ray Tune verbosity (default 1)")
    p.add_argument("--no-analysis", action="store_true", help="skip the analysis tables at the end")
    p.add_argument("--batch-size", metavar="B", help="first batch size of every trial (policy option b0)")
    p.add_argument("--test-hook", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    # One flag per trial setting the grid does not own (the same fields as `python -m trainables.run`).
    add_arguments(
        p,
        TrialConfig,
        skip=GRID_FIELDS,
        group="trial settings for every trial (trainables/config.py)",
        dest_prefix=LOOP_PREFIX,
    )
    return p


def study_from_args(args: argparse.Namespace) -> StudySpec:
    """The StudySpec the arguments describe (not yet validated: expansion does that)."""
    base = preset(args.preset or (args.study if args.study in PRESETS else "demo"))
    variant_defs = dict(base.variant_defs)
    for item in args.define_variant:
        name, sep, opts = item.partition(":")
        if not sep or not name:
            raise ValueError(f"define_variant={item!r} is not allowed; expected NAME:KEY=VALUE[,KEY=VALUE]")
        variant_defs[name] = _pairs(f"define_variant[{name}]", [o for o in opts.split(",") if o])
    thresholds = dict(base.thresholds)
    policy = {**base.policy, **_pairs("policy_opt", args.policy_opt)}
    if args.batch_size is not None:
        policy["b0"] = _number("batch_size", args.batch_size, int)
    given = load_thresholds(args.thresholds) if args.thresholds else {}
    if given:
        both = sorted({"theta_stab", "theta_conf", "thresholds"} & set(_pairs("policy_opt", args.policy_opt)))
        if both:
            raise ValueError(
                f"policy_opt={both} is not allowed together with thresholds={args.thresholds!r}: both "
                "set DEBA's thresholds; give one of them"
            )
        thresholds.update(given)
    data_dir = os.path.abspath(args.data_dir) if args.data_dir else None  # trials chdir: absolute paths only
    study = with_overrides(
        base,
        name=args.study,
        archs=_split(args.archs),
        datasets=_split(args.datasets),
        seeds=_ints("seeds", _split(args.seeds)),
        methods=_split(args.methods),
        variants=_split(args.variants),
        epochs=_number("epochs", args.epochs, int),
        data_dir=data_dir,
        gpus_per_trial=_number("gpus_per_trial", args.gpus_per_trial),
        cpus_per_trial=_number("cpus_per_trial", args.cpus_per_trial),
        max_failures=_number("max_failures", args.max_failures, int),
        checkpoint_every=_number("checkpoint_every", args.checkpoint_every, int),
        policy=policy,
        loop={**base.loop, **_pairs("loop_opt", args.loop_opt), **_loop_flags(args)},
        hooks={**base.hooks, **_pairs("test_hook", args.test_hook)},
        variant_defs=variant_defs,
        thresholds=thresholds,
    )
    outside = sorted(set(given) - set(study.archs))
    if outside:
        raise ValueError(
            f"thresholds={args.thresholds!r} has thresholds for {', '.join(outside)}, which this study "
            f"does not run (its archs: {', '.join(study.archs)}); every key must be an arch of the "
            "study: drop those entries or add the archs with --archs"
        )
    return study
