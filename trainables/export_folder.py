"""Write a built-in dataset as an image folder that `imagefolder:<name>` streams (trainables/folders.py).

    python -m trainables.export_folder --dataset fashion_mnist --data-dir DIR
    # -> DIR/fashion_mnist_png/{train,val}/<class>/<index>.png; then train on it:
    python -m trainables.run --arch tiny_cnn --dataset imagefolder:fashion_mnist_png --data-dir DIR --method deba

The images are written exactly as the resident loader holds them (uint8, 32x32, lossless PNG: greyscale
when the three channels are equal, as Fashion-MNIST's and the digits' are, else RGB): class k is the
folder ``<k>`` zero-padded to sort in class order, a file is named after its index in the split, so the
folder's order (class, then file name) is the split's order within each class. The folder is written
under a temporary name and renamed when complete: an interrupted export leaves no half folder under
the final name. Exit status 0, or 2 with one line naming what is wrong.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

import numpy as np

from trainables.data import DATASETS, load_dataset


def build_parser() -> argparse.ArgumentParser:
    """The export command line."""
    p = argparse.ArgumentParser(
        prog="python -m trainables.export_folder",
        description="Write a built-in dataset as DIR/<name>/{train,val}/<class>/*.png for imagefolder:<name>.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--dataset", required=True, choices=[d for d in DATASETS if d != "synthetic"], help="dataset to write"
    )
    p.add_argument("--data-dir", default=None, help="data directory (read from and written to; default $DEBA_DATA_DIR)")
    p.add_argument("--name", default=None, help="folder name under the data directory (default <dataset>_png)")
    p.add_argument("--train-limit", type=int, default=None, help="write a seeded random subset of the train split")
    p.add_argument("--test-limit", type=int, default=None, help="write a seeded random subset of the test split")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the subsets (default 0, as trials)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder of that name")
    return p


def write_split(folder: str, images: np.ndarray, labels: np.ndarray, num_classes: int, grey: bool) -> int:
    """Write uint8 [N, 3, H, W] images as <folder>/<class>/<index>.png; returns the count written."""
    from PIL import Image

    class_width = len(str(num_classes - 1))
    index_width = max(6, len(str(len(images) - 1)))
    for k in range(num_classes):  # every class gets its folder, even one without images in this split
        os.makedirs(os.path.join(folder, f"{k:0{class_width}d}"), exist_ok=True)
    for i, (x, y) in enumerate(zip(images, labels)):
        pixels = x[0] if grey else x.transpose(1, 2, 0)
        path = os.path.join(folder, f"{int(y):0{class_width}d}", f"{i:0{index_width}d}.png")
        Image.fromarray(np.ascontiguousarray(pixels), mode="L" if grey else "RGB").save(path)
    return len(images)


def export(
    dataset: str,
    data_dir: str | None,
    name: str | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    subset_seed: int = 0,
    overwrite: bool = False,
) -> str:
    """Write `dataset` as a folder under `data_dir` (module docstring); returns the folder's path."""
    from trainables.folders import FOLDER_PREFIX, dataset_root

    target = dataset_root(FOLDER_PREFIX + (name or f"{dataset}_png"), data_dir)  # checks the name
    if os.path.exists(target) and not overwrite:
        raise ValueError(f"{target} exists; give --overwrite to replace it, or another --name")
    data = load_dataset(
        dataset, data_dir=data_dir, download=False, train_limit=train_limit, test_limit=test_limit, seed=subset_seed
    )
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    xs = {"train": data.train_x.numpy(), "val": data.test_x.numpy()}
    ys = {"train": data.train_y.numpy(), "val": data.test_y.numpy()}
    grey = all(bool((x[:, 0] == x[:, 1]).all() and (x[:, 0] == x[:, 2]).all()) for x in xs.values())
    for split in ("train", "val"):
        write_split(os.path.join(tmp, split), xs[split], ys[split], data.num_classes, grey)
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; 0 on success, 2 with one line on a bad argument or missing dataset."""
    args = build_parser().parse_args(argv)
    try:
        for flag, value in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} {value} is not allowed; expected an integer >= 1")
        path = export(
            args.dataset, args.data_dir, args.name, args.train_limit, args.test_limit, args.subset_seed, args.overwrite
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    name = os.path.basename(path)
    print(
        f"wrote {path} (train/ and val/); train on it with --dataset imagefolder:{name} "
        f"--data-dir {os.path.dirname(path)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
