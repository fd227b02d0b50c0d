"""Run one trial without Ray, with one progress line per epoch.

    python -m trainables.run --arch resnet18 --dataset digits --method deba --epochs 5
    python -m trainables.run --arch tiny_cnn --dataset digits --method deba \\
        --policy-opt thresholds=universal --policy-opt cooldown=2 --checkpoint-dir /tmp/ck --out run.jsonl

With --checkpoint-dir the state is saved after every epoch and an existing checkpoint there is
resumed. --out writes every record of the trial (resumed ones included) as JSON lines.
Config errors (and a method whose measurements the loop does not implement) print a message
and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from trainables.loop import CHECKPOINT_FILE, TrialLoop, validate_config


def parse_policy_opt(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); the value is read as JSON when it parses (3, 0.5, true, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--policy-opt {text!r}: expected key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of one trial."""
    p = argparse.ArgumentParser(prog="python -m trainables.run", description="Train one trial without Ray.")
    p.add_argument("--arch", required=True, help="architecture registry name (e.g. resnet18, tiny_cnn)")
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, digits or synthetic")
    p.add_argument("--method", default="fixed", help="batch-size policy (fixed, deba, ...)")
    p.add_argument("--variant", default="baseline")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-download", action="store_true", help="never download dataset files")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--augment", default="auto", choices=("auto", "crop_flip", "crop", "none"),
                   help="training augmentation (auto = the dataset's default: crop for digits, else crop_flip)")
    p.add_argument("--no-augment", action="store_true", help="same as --augment none")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", default="auto", help="auto, bf16 or off")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the model; optional mode: reduce-overhead or max-autotune")
    p.add_argument("--cudnn-benchmark", default="auto", choices=("auto", "on", "off"),
                   help="torch.backends.cudnn.benchmark on CUDA (auto = off)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--policy-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="policy option (repeatable), e.g. cooldown=5 or thresholds=universal")
    p.add_argument("--checkpoint-dir", default=None, help="save every epoch; resume if a checkpoint is there")
    p.add_argument("--out", default=None, help="write all records as JSON lines to this file")
    return p


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The TrialLoop config of the parsed arguments (validated; ValueError on bad values)."""
    policy = dict(parse_policy_opt(t) for t in args.policy_opt)
    return validate_config({
        "arch": args.arch, "dataset": args.dataset, "method": args.method, "variant": args.variant,
        "epochs": args.epochs, "seed": args.seed, "lr": args.lr, "momentum": args.momentum,
        "weight_decay": args.weight_decay, "data_dir": args.data_dir, "download": not args.no_download,
        "train_limit": args.train_limit, "test_limit": args.test_limit, "eval_batch_size": args.eval_batch_size,
        "augment": "none" if args.no_augment else args.augment, "device": args.device, "amp": args.amp, "compile": args.compile,
        "cudnn_benchmark": {"auto": "auto", "on": True, "off": False}[args.cudnn_benchmark],
        "threads": args.threads, "policy": policy,
    })


def progress_line(rec: dict[str, Any], epochs: int) -> str:
    """One line per epoch: batch sizes, decision, losses, accuracies, time, throughput."""
    return (f"epoch {rec['epoch']:>3}/{epochs}  bs {rec['batch_size']:>4} -> {rec['next_batch_size']:<4} "
            f"{rec['decision']:<8}  train loss {rec['train_loss']:.4f} acc {rec['train_acc']:.4f}  "
            f"test acc {rec['test_acc']:.4f}  epoch {rec['epoch_time_s']:.2f}s  {rec['samples_per_s']:.0f} samples/s")


def summary_lines(loop: TrialLoop) -> list[str]:
    """The final summary of a trial."""
    h = loop.history
    if not h:
        return [f"status {loop.status}: no epoch was run"]
    accs = [r["test_acc"] for r in h if math.isfinite(r["test_acc"])]
    n_inc = sum(r["decision"] == "increase" for r in h)
    n_rb = sum(r["decision"] == "rollback" for r in h)
    return [
        f"status {loop.status} after {loop.epochs_done} epochs on {loop.device_name}",
        f"final test acc {h[-1]['test_acc']:.4f}  best {max(accs) if accs else float('nan'):.4f}",
        f"train time {sum(r['epoch_time_s'] for r in h):.1f}s  wall {h[-1]['wall_time_s']:.1f}s",
        f"decisions: {n_inc} increase, {n_rb} rollback; final batch size {h[-1]['next_batch_size']}",
    ]


def write_jsonl(path: str, records: Sequence[dict[str, Any]]) -> None:
    """Replace `path` with one JSON object per record (atomic rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad configuration or unsupported method)."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        loop = TrialLoop(cfg)
        if args.checkpoint_dir and os.path.exists(os.path.join(args.checkpoint_dir, CHECKPOINT_FILE)):
            loop.load_checkpoint(args.checkpoint_dir)
            print(f"resumed from {args.checkpoint_dir} after epoch {loop.epochs_done}", flush=True)
    except (ValueError, FileNotFoundError) as err:  # bad config, missing dataset, foreign checkpoint
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{cfg['arch']} on {cfg['dataset']} ({loop.n_train} train / {loop.n_test} test), method {cfg['method']}, "
          f"seed {cfg['seed']}, device {loop.device_name}", flush=True)
    for rec in loop.history:
        print(progress_line(rec, cfg["epochs"]), flush=True)
    while not loop.done:
        try:
            rec = loop.run_epoch()
        except NotImplementedError as err:  # the method needs a measurement the loop lacks
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(progress_line(rec, cfg["epochs"]), flush=True)
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
