"""Streamed folder datasets (Ray Data) against the device-resident loader, on an exported folder.

    python -m trainables.export_folder --dataset fashion_mnist --data-dir DIR --name fmnist10k \\
        --train-limit 10000 --test-limit 2000
    PYTHONPATH=. python -m benchmarks.bench_streamed --data-dir DIR --dataset imagefolder:fmnist10k \\
        [--batch-sizes 64 1024] [--data-cpus 1 2] [--device cpu] [--epochs 2]

Measured (BENCHMARKS.md "Streamed folder datasets"):
1. Loader only: images/s of one training epoch of batches on the device, crop_flip, for the resident
   loader (decoded once, data.GpuLoader) and the streamed one (trainables/streamed.py) at each data-CPU
   count and batch size; the streamed one also with resized_crop_flip. The first streamed epoch of a
   process includes Ray's start; each arm runs `--epochs` epochs and the best is kept.
2. Where a streamed image's time goes, in one process without Ray, per image: reading the file's
   bytes, decoding (PNG -> RGB), augmenting (pad-crop-flip; random-resized crop), normalising (float32),
   and copying a batch to the device; the rest of the streamed epoch's time per image is Ray's
   (tasks, object store, re-batching).
3. Training: samples/s of `TrialLoop.run_epoch` (tiny_cnn, fixed batch size) resident vs streamed.
Writes JSON to --out (default benchmarks/out/bench_streamed.json) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainables.config import TrialConfig
from trainables.data import GpuLoader
from trainables.folders import scan_folder
from trainables.streamed import (
    StreamLoader,
    decode_images,
    ensure_ray,
    fit_image,
    folder_statistics,
    normalise,
    resized_crop_box,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_streamed", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", default="imagefolder:fashion_mnist_png")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--data-cpus", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=2, help="epochs per loader arm (best kept)")
    p.add_argument("--breakdown-images", type=int, default=2000)
    p.add_argument("--train-epochs", type=int, default=1, help="training epochs per arm (0: skip training)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "bench_streamed.json"))
    return p


def _epoch_rate(loader: Any, batch_size: int, device: torch.device, epochs: int) -> float:
    """Best images/s over `epochs` epochs of the loader's batches, synchronised on CUDA."""
    best = 0.0
    for e in range(epochs):
        gen = torch.Generator(device=device).manual_seed(e)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        n = 0
        for x, _ in loader.epoch(batch_size, gen):
            n += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, n / (time.perf_counter() - t0))
    return best


def breakdown(paths: Sequence[str], device: torch.device, size: int = 32) -> dict[str, float]:
    """Microseconds per image of each stage of the streamed path, in-process (module docstring, 2)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    t = {}
    t0 = time.perf_counter()
    blobs = []
    for p in paths:
        with open(p, "rb") as f:
            blobs.append(f.read())
    t["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = []
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            images.append(im.convert("RGB"))
    t["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        pixels = np.asarray(fit_image(im, size))
        padded = np.zeros((size + 8, size + 8, 3), dtype=np.uint8)
        padded[4 : 4 + size, 4 : 4 + size] = pixels
        dy, dx = rng.integers(0, 9, 2)
        pixels = padded[dy : dy + size, dx : dx + size]
        out[i] = pixels[:, ::-1] if rng.integers(0, 2) else pixels
    t["augment_crop_flip"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, im in enumerate(images):
        box = resized_crop_box(im.size[0], im.size[1], rng.random(4))
        out[i] = np.asarray(im.resize((size, size), Image.BILINEAR, box=box))
    t["augment_resized_crop_flip"] = time.perf_counter() - t0
    x = out.transpose(0, 3, 1, 2)
    t0 = time.perf_counter()
    xf = normalise(x, np.full(3, 0.02, np.float32), np.full(3, -1.0, np.float32))
    t["normalise"] = time.perf_counter() - t0
    batch = torch.from_numpy(xf)
    t0 = time.perf_counter()
    moved = batch.to(device, non_blocking=False) if device.type == "cuda" else batch.clone()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t["transfer"] = time.perf_counter() - t0
    del moved
    return {k: 1e6 * v / len(paths) for k, v in t.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurements; print tables and write JSON."""
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    index = scan_folder(args.dataset, args.data_dir)
    train = index.train
    size = 32
    load = {"start": os.getloadavg()}
    ensure_ray(max(args.data_cpus))
    t0 = time.perf_counter()
    mean, std = folder_statistics(train, size, max(args.data_cpus))
    stats_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = torch.from_numpy(decode_images(train.paths, size))
    decode_once_s = time.perf_counter() - t0
    y = torch.tensor(train.labels)
    resident = GpuLoader(x, y, mean, std, device, augment=True, flip=True, channels_last=True)
    loader_rows = []
    for b in args.batch_sizes:
        loader_rows.append(
            {"arm": "resident crop_flip", "batch_size": b, "data_cpus": 0,
             "images_per_s": _epoch_rate(resident, b, device, args.epochs)}
        )  # fmt: skip
        for cpus in args.data_cpus:
            for aug in ("crop_flip", "resized_crop_flip"):
                stream = StreamLoader(train, size, mean, std, device, augment=aug, channels_last=True, data_cpus=cpus)
                # The pipeline's CPU limit is the process-wide DataContext's: set for this arm.
                ensure_ray(cpus)
                rate = _epoch_rate(stream, b, device, args.epochs)
                loader_rows.append({"arm": f"streamed {aug}", "batch_size": b, "data_cpus": cpus, "images_per_s": rate})
                print(json.dumps(loader_rows[-1]), flush=True)
    parts = breakdown(train.paths[: args.breakdown_images], device)
    train_rows = []
    if args.train_epochs:
        from trainables.loop import TrialLoop

        for b in args.batch_sizes:
            for loader in ("resident", "stream"):
                cfg = TrialConfig(
                    arch="tiny_cnn", dataset=args.dataset, data_dir=args.data_dir, method="fixed",
                    policy={"b0": b}, augment="crop_flip", data_loader=loader,
                    epochs=args.train_epochs, device=args.device, data_cpus=max(args.data_cpus),
                )  # fmt: skip
                loop = TrialLoop(cfg)
                recs = [loop.run_epoch() for _ in range(args.train_epochs)]
                train_rows.append(
                    {"loader": loader, "batch_size": b, "samples_per_s": max(r["samples_per_s"] for r in recs)}
                )
                print(json.dumps(train_rows[-1]), flush=True)
    load["end"] = os.getloadavg()
    doc = {
        "benchmark": "bench_streamed",
        "dataset": args.dataset,
        "train_images": len(train),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg": load,
        "stats_s": stats_s,
        "decode_once_s": decode_once_s,
        "loader": loader_rows,
        "breakdown_us_per_image": parts,
        "training": train_rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    print(f"\n{len(train)} train images of {args.dataset}; load average {load['start']} -> {load['end']}")
    print(f"statistics pass {stats_s:.1f} s; decoding the split once (resident) {decode_once_s:.1f} s\n")
    print("| arm | B | Ray Data CPUs | images/s |\n|---|---:|---:|---:|")
    for r in loader_rows:
        print(f"| {r['arm']} | {r['batch_size']} | {r['data_cpus'] or '-'} | {r['images_per_s']:,.0f} |")
    print("\n| stage | µs per image |\n|---|---:|")
    for k, v in parts.items():
        print(f"| {k} | {v:.1f} |")
    if train_rows:
        print("\n| training (tiny_cnn) | B | samples/s |\n|---|---:|---:|")
        for r in train_rows:
            print(f"| {r['loader']} | {r['batch_size']} | {r['samples_per_s']:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
