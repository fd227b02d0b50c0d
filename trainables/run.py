"""Run one trial without Ray, with one progress line per epoch.

    python -m trainables.run --arch resnet18 --dataset digits --method deba --epochs 5
    python -m trainables.run --arch tiny_cnn --dataset digits --method deba \\
        --threshold-source universal --cooldown 2 --checkpoint-dir /tmp/ck --out run.jsonl

With --checkpoint-dir the state is saved after every epoch and an existing checkpoint there is
resumed. --out writes every record of the trial (resumed ones included) as JSON lines.
Config errors (and a method whose measurements the loop does not implement) print a message
and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from trainables.config import TrialConfig
from trainables.flags import (
    add_policy_arguments,
    check_subset_seed,
    given_policy_options,
    known_keys,
    pairs,
    policy_flag,
)
from trainables.loop import CHECKPOINT_FILE, TrialLoop
from trainables.policies import POLICY_NAMES, option_fields, policy_options
from trainables.policies.variants import VARIANTS
from trainables.records import progress_line, summary_figures
from trainables.settings import add_arguments, given_values, merge_old_spelling

# Fields with flags of their own: the policy's options (one flag each, trainables/flags.py).
_MANUAL = {"policy"}
POLICY_PREFIX = "policy_option_"


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of one trial: a flag per TrialConfig field and per policy option (help
    and allowed values from their typed settings), checkpoints and the JSON-lines output."""
    p = argparse.ArgumentParser(
        prog="python -m trainables.run", description="Train one trial without Ray.", allow_abbrev=False
    )
    add_arguments(p, TrialConfig, skip=_MANUAL, group="trial settings (trainables/config.py)")
    add_policy_arguments(p, "policy options of --method (trainables/policies/options.py)", POLICY_PREFIX)
    g = p.add_argument_group("outputs")
    g.add_argument("--checkpoint-dir", default=None, help="save every epoch; resume if a checkpoint is there")
    g.add_argument("--out", default=None, help="write all records as JSON lines to this file")
    # Old spellings, kept working with a notice (not shown: one spelling per setting in --help).
    p.add_argument("--policy-opt", action="append", default=[], metavar="KEY=VALUE", help=argparse.SUPPRESS)
    p.add_argument("--no-augment", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-download", action="store_true", help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    """The TrialConfig of the parsed arguments (ValueError naming a bad value). A built-in variant
    (--variant cooldown2) brings its options, as in run_grid."""
    values = merge_old_spelling(
        given_values(args, TrialConfig, skip=frozenset(_MANUAL)),
        {**({"augment": "none"} if args.no_augment else {}), **({"download": False} if args.no_download else {})},
        "--no-{key}",
        lambda key: f"--{key}",
    )
    policy = merge_old_spelling(
        given_policy_options(args, POLICY_PREFIX),
        known_keys("policy_opt", pairs("policy_opt", args.policy_opt), option_fields()),
        "--policy-opt {key}={value}",
        policy_flag,
    )
    check_subset_seed(values, values)
    variant = values.get("variant", "baseline")
    # The variant's options the method takes (TrialConfig refuses the variant, naming it, when the method
    # does not take them or the user gave another value).
    accepted = policy_options(values.get("method", "fixed")) if values.get("method", "fixed") in POLICY_NAMES else {}
    policy = {**{k: v for k, v in VARIANTS.get(variant, {}).items() if k in accepted}, **policy}
    return TrialConfig.from_dict({**values, "policy": policy})


def summary_lines(loop: TrialLoop) -> list[str]:
    """The final summary of a trial (the figures of its runs-table row)."""
    if not loop.history:
        return [f"status {loop.status}: no epoch was run"]
    s = summary_figures(loop.history)
    return [
        f"status {loop.status} after {s['epochs_done']} epochs on {loop.device_name}",
        f"final test acc {s['final_test_acc']:.4f}  best {s['best_test_acc'] or float('nan'):.4f}",
        f"train time {s['train_time_s']:.1f}s  wall {s['wall_time_s']:.1f}s",
        f"decisions: {s['n_increase']} increase, {s['n_rollback']} rollback; final batch size "
        f"{loop.history[-1]['next_batch_size']}",
    ]


def write_jsonl(path: str, records: Sequence[dict[str, Any]]) -> None:
    """Replace `path` with one JSON object per record (atomic rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse output paths that cannot work before anything trains (ValueError naming the flag)."""
    if args.checkpoint_dir and os.path.exists(args.checkpoint_dir) and not os.path.isdir(args.checkpoint_dir):
        raise ValueError(f"--checkpoint-dir {args.checkpoint_dir!r} is a file; give a directory (created when missing)")
    if args.out:
        if os.path.isdir(args.out):
            raise ValueError(f"--out {args.out!r} is a directory; give a file name for the JSON lines")
        parent = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise ValueError(f"--out {args.out!r}: {parent} is not a writable directory")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad configuration or unsupported method)."""
    args = build_parser().parse_args(argv)
    try:
        _check_paths(args)
        cfg = config_from_args(args)
        loop = TrialLoop(cfg)
        if args.checkpoint_dir and os.path.exists(os.path.join(args.checkpoint_dir, CHECKPOINT_FILE)):
            loop.load_checkpoint(args.checkpoint_dir)
            if loop.epochs_done > cfg.epochs:
                raise ValueError(
                    f"--checkpoint-dir {args.checkpoint_dir!r} holds {loop.epochs_done} trained epochs, more "
                    f"than --epochs {cfg.epochs}: give --epochs {loop.epochs_done} or more to continue "
                    "it, or another --checkpoint-dir"
                )
            print(f"resumed from {args.checkpoint_dir} after epoch {loop.epochs_done}", flush=True)
    except (ValueError, FileNotFoundError) as err:  # bad config, missing dataset, damaged or foreign checkpoint
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{cfg.arch} on {cfg.dataset} ({loop.n_train} train / {loop.n_test} test), method {cfg.method}, "
        f"seed {cfg.seed}, device {loop.device_name}",
        flush=True,
    )
    for rec in loop.history:
        print(progress_line(rec, cfg.epochs), flush=True)
    while not loop.done:
        try:
            rec = loop.run_epoch()
        except NotImplementedError as err:  # the method needs a measurement the loop lacks
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(progress_line(rec, cfg.epochs), flush=True)
        if args.checkpoint_dir:
            loop.save_checkpoint(args.checkpoint_dir)
        if args.out:
            write_jsonl(args.out, loop.history)
    if args.out:
        write_jsonl(args.out, loop.history)
    for line in summary_lines(loop):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
