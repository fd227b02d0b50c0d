"""Image-folder datasets: their names, their layout on disk, and the check that refuses a bad folder.

A folder dataset is named ``imagefolder:<name>`` (or ``imagenet``, the same layout under ``imagenet/``)
and lives under the data directory (``--data-dir DIR`` or ``$DEBA_DATA_DIR``)::

    DIR/<name>/train/<class>/*.png|*.jpg|*.jpeg
    DIR/<name>/val/<class>/*.png|*.jpg|*.jpeg

ImageNet's layout (torchvision's ImageFolder): classes are the sub-folders of ``train/``, sorted by
name, class k is the k-th; ``val/`` may lack a class but may not add one. Samples are ordered by
class, then by file name (a fixed order: the shuffle of an epoch permutes it). Files whose names
start with ``.`` and files without an image suffix are not samples (a README does no harm).

The path is no part of the trial's identity (``data_dir`` is an execution setting): moving the data
does not rename trials. `scan_folder` checks a folder completely, before Ray starts, and raises
`FolderError` naming every problem at once: a missing folder, no classes, an empty split, a class
without training images, a val class that train lacks, and each unreadable file (its header does not
open as a PNG or JPEG image). Unreadable files are left out only when the user allows it
(``skip_unreadable``). Pure Python and Pillow; no torch, no Ray.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

FOLDER_PREFIX = "imagefolder:"
IMAGENET = "imagenet"
SPLITS: tuple[str, ...] = ("train", "val")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
READABLE_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG"})
# Folder names a dataset name may hold: one plain path component (no '/', no '..').
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAMED = 20  # unreadable files named in one message (the count says how many more)


class FolderError(ValueError):
    """A folder dataset that cannot be used as it is; the message names every problem found."""


def is_folder_dataset(name: str) -> bool:
    """Whether dataset `name` is a folder dataset (``imagefolder:<name>`` or ``imagenet``)."""
    return name == IMAGENET or name.startswith(FOLDER_PREFIX)


def folder_name(dataset: str) -> str:
    """The folder under the data directory that holds dataset `dataset`; ValueError when the name after
    ``imagefolder:`` is not one plain folder name."""
    if dataset == IMAGENET:
        return IMAGENET
    if not dataset.startswith(FOLDER_PREFIX):
        raise ValueError(f"dataset {dataset!r} is not a folder dataset (imagefolder:<name> or imagenet)")
    name = dataset[len(FOLDER_PREFIX) :]
    if not _NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"dataset={dataset!r} is not allowed; expected imagefolder:<name> with <name> one folder name of "
            "letters, digits, '.', '_' and '-' (starting with a letter or digit): DIR/<name>/{train,val}/<class>/"
        )
    return name


@dataclass(frozen=True)
class FolderSplit:
    """One split's samples in their fixed order: paths (absolute) and class indices."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class FolderIndex:
    """A checked folder dataset: its root, its classes (class k = classes[k]), both splits and the
    files that were left out as unreadable (``skip_unreadable``)."""

    root: str
    classes: tuple[str, ...]
    train: FolderSplit
    val: FolderSplit
    skipped: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes (sub-folders of train/)."""
        return len(self.classes)


def dataset_root(dataset: str, data_dir: str | None) -> str:
    """DIR/<name> of a folder dataset (DIR: `data_dir`, else $DEBA_DATA_DIR, else ~/.cache/deba/data)."""
    from trainables.data import default_data_dir  # data.py imports torch; only its default is needed

    root = os.path.expanduser(data_dir) if data_dir else default_data_dir()
    return os.path.join(os.path.abspath(root), folder_name(dataset))


def _is_sample(file_name: str) -> bool:
    return not file_name.startswith(".") and file_name.lower().endswith(IMAGE_SUFFIXES)


def _list_split(split_dir: str, classes: tuple[str, ...]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for k, cls in enumerate(classes):
        folder = os.path.join(split_dir, cls)
        if not os.path.isdir(folder):
            continue
        for file_name in sorted(os.listdir(folder)):
            path = os.path.join(folder, file_name)
            if _is_sample(file_name) and os.path.isfile(path):
                paths.append(path)
                labels.append(k)
    return paths, labels


def unreadable_reason(path: str) -> str | None:
    """Why `path` is not a readable PNG/JPEG image (its header is opened, not the whole image), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.format not in READABLE_FORMATS:
                return f"a {image.format} image, not PNG or JPEG"
            width, height = image.size
            if width < 1 or height < 1:
                return f"an empty image ({width}x{height})"
    except UnidentifiedImageError:
        return "not an image Pillow can identify"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def scan_folder(
    dataset: str, data_dir: str | None, skip_unreadable: bool = False, check_files: bool = True
) -> FolderIndex:
    """The checked index of folder dataset `dataset`; `FolderError` naming every problem (module
    docstring). `check_files`: open every file's header (False: listing only, for planning)."""
    root = dataset_root(dataset, data_dir)
    layout = f"{root}/{{train,val}}/<class>/*.png|*.jpg"
    if not os.path.isdir(root):
        raise FolderError(
            f"dataset {dataset!r}: folder {root} does not exist; expected the layout {layout} "
            "(give --data-dir DIR, or set DEBA_DATA_DIR; python -m trainables.export_folder writes one)"
        )
    problems = [f"{os.path.join(root, s)}/ is missing" for s in SPLITS if not os.path.isdir(os.path.join(root, s))]
    if problems:
        raise FolderError(f"dataset {dataset!r}: {'; '.join(problems)}; expected the layout {layout}")
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    classes = tuple(sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d))))
    if not classes:
        raise FolderError(f"dataset {dataset!r}: no classes: {train_dir}/ has no class sub-folders ({layout})")
    extra = sorted(d for d in os.listdir(val_dir) if os.path.isdir(os.path.join(val_dir, d)) and d not in classes)
    if extra:
        problems.append(f"{val_dir}/ has classes that train/ lacks: {', '.join(extra)}")
    splits: dict[str, tuple[list[str], list[int]]] = {}
    for split, folder in (("train", train_dir), ("val", val_dir)):
        paths, labels = _list_split(folder, classes)
        splits[split] = (paths, labels)
        if not paths:
            problems.append(f"the {split} split is empty: no .png/.jpg/.jpeg file in {folder}/<class>/")
    empty = [c for k, c in enumerate(classes) if k not in set(splits["train"][1])]
    if splits["train"][0] and empty:
        problems.append(f"class(es) without training images: {', '.join(empty)} (in {train_dir}/)")
    if problems:
        raise FolderError(f"dataset {dataset!r}: " + "; ".join(problems))
    bad: list[tuple[str, str]] = []
    if check_files:
        for paths, _ in splits.values():
            bad.extend((p, reason) for p in paths if (reason := unreadable_reason(p)) is not None)
    if bad and not skip_unreadable:
        named = "; ".join(f"{p} ({why})" for p, why in bad[:MAX_NAMED])
        more = f"; and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        raise FolderError(
            f"dataset {dataset!r}: {len(bad)} unreadable file(s): {named}{more}. Remove or replace them, or give "
            "--skip-unreadable true to train without them"
        )
    skipped = frozenset(p for p, _ in bad)
    out = {}
    for split, (paths, labels) in splits.items():
        kept = [(p, y) for p, y in zip(paths, labels) if p not in skipped]
        if not kept:
            raise FolderError(f"dataset {dataset!r}: the {split} split is empty once its unreadable files are left out")
        out[split] = FolderSplit(tuple(p for p, _ in kept), tuple(y for _, y in kept))
    return FolderIndex(root, classes, out["train"], out["val"], tuple(sorted(skipped)))


@lru_cache(maxsize=64)
def folder_sizes(dataset: str, data_dir: str | None) -> tuple[int, int, int]:
    """(classes, train samples, val samples) of a folder dataset from its listing (no file opened), for
    planning; cached per process."""
    index = scan_folder(dataset, data_dir, skip_unreadable=True, check_files=False)
    return index.num_classes, len(index.train), len(index.val)


def skipped_note(dataset: str, index: FolderIndex) -> str | None:
    """One line naming the unreadable files a run leaves out (``skip_unreadable``), or None."""
    if not index.skipped:
        return None
    named = ", ".join(index.skipped[:MAX_NAMED]) + (
        f" and {len(index.skipped) - MAX_NAMED} more" if len(index.skipped) > MAX_NAMED else ""
    )
    return f"note: dataset {dataset!r}: {len(index.skipped)} unreadable file(s) left out (skip_unreadable): {named}"


def check_study_folders(datasets: tuple[str, ...], data_dir: str | None, skip_unreadable: bool = False) -> list[str]:
    """Check every folder dataset of a study (`scan_folder`) before Ray starts; FolderError names the problems.
    Returns the notes naming the files left out (`skipped_note`)."""
    notes = []
    for dataset in datasets:
        if is_folder_dataset(dataset):
            note = skipped_note(dataset, scan_folder(dataset, data_dir, skip_unreadable=skip_unreadable))
            notes += [note] if note else []
    return notes


def streamed_data_cpus(datasets: tuple[str, ...], loop: dict) -> int:
    """The Ray Data CPUs each trial of a study adds to its own (0 when no dataset is streamed): the study's
    `data_cpus` (default 1) when a folder dataset streams (`data_loader` not resident)."""
    if loop.get("data_loader") == "resident" or not any(is_folder_dataset(d) for d in datasets):
        return 0
    return int(loop.get("data_cpus", 1))


def check_stream_cpus(datasets: tuple[str, ...], loop: dict, cpus_per_trial: float, cpus: int) -> None:
    """Refuse, before a local Ray starts, a streamed trial whose CPUs and data CPUs together exceed this
    machine's `cpus` (its placement group would never be placed: Tune would wait forever)."""
    data = streamed_data_cpus(datasets, loop)
    if data and cpus_per_trial + data > cpus:
        raise ValueError(
            f"data_cpus={data} is not allowed with cpus_per_trial={cpus_per_trial:g}: a streamed trial holds both "
            f"({cpus_per_trial + data:g} CPUs) and this machine has {cpus}; lower --cpus-per-trial or --data-cpus"
        )
