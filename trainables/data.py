"""Datasets of the study and the device-resident loader that feeds the epoch loop.

Datasets (DESIGN.md "Data"), all returned as CPU uint8 NCHW 3x32x32 images + int64 labels:
- ``cifar10`` / ``cifar100``: torchvision's own CIFAR classes read the real on-disk format
  (``cifar-10-batches-py/``, ``cifar-100-python/``) and download it when online. Their md5
  checks stay on by default; ``verify=False`` checks only that the files exist (for a
  user-made subset in the real format, and the tests' tiny files).
- ``fashion_mnist``: Zalando's Fashion-MNIST (60,000 train / 10,000 test, 28x28 grey, 10
  classes) from the four standard IDX files, gzipped or not (SPEC §3): zero-padded by 2 px to
  32x32 and replicated to 3 channels, as uint8 (never a float copy). Found in ``data_dir``
  (``DIR/fashion-mnist/`` or torchvision's ``DIR/FashionMNIST/raw/``), else in Debian's
  ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist/``), else downloaded by
  torchvision into ``DIR/FashionMNIST/raw/`` when online.
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (real data, offline), scaled to
  0..255, bilinearly resized to 32x32 and replicated to 3 channels; a fixed stratified split
  (1437 train / 360 test) that does not depend on the trial seed.
- ``synthetic``: seeded random CIFAR-shaped data, for throughput benchmarks only.

``GpuLoader`` holds a split on the device as uint8 and does crop + flip + normalise there, for
the whole batch at once (one gather, no per-image loop), in the manner of the fast public CIFAR
trainers (airbench, hlb-CIFAR10): random draws come from one generator on the device, so an
epoch is reproducible from the generator state and no host round trip happens per batch.
"""

from __future__ import annotations

import gzip
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion_mnist", "digits", "synthetic")
NUM_CLASSES: dict[str, int] = {"cifar10": 10, "cifar100": 100, "fashion_mnist": 10, "digits": 10, "synthetic": 10}
# Per-dataset default of the training augmentation (trainables/config.py AUGMENT_CHOICES) [choice]:
# flips suit photos and clothing, but mirror digits into other glyphs.
DEFAULT_AUGMENTATION: dict[str, str] = {
    "cifar10": "crop_flip",
    "cifar100": "crop_flip",
    "fashion_mnist": "crop_flip",
    "digits": "crop",
    "synthetic": "crop_flip",
}
IMAGE_SIZE = 32
CROP_PADDING = 4  # random crop 32 from the image zero-padded by 4 pixels (SPEC §3)
DATA_DIR_ENV = "DEBA_DATA_DIR"
DIGITS_TEST_SIZE = 360  # 1797 images -> 1437 train / 360 test
DIGITS_SPLIT_SEED = 0  # fixed: every trial of every seed sees the same digits split
SYNTHETIC_SIZES = (50_000, 10_000)  # train, test (CIFAR's sizes)
# Full split sizes (train, test) of each dataset, for planning (orchestrator/schedule.py).
SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "fashion_mnist": (60_000, 10_000),
    "digits": (1797 - DIGITS_TEST_SIZE, DIGITS_TEST_SIZE),
    "synthetic": SYNTHETIC_SIZES,
}
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist
FASHION_MNIST_FILES: dict[str, str] = {  # role -> IDX file name (optionally with .gz)
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

_CIFAR_SOURCES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are missing or corrupted and could not be downloaded."""


@dataclass(frozen=True, eq=False)  # eq=False: element-wise tensor comparison has no single truth value
class ImageDataset:
    """A dataset split into train and test, as CPU tensors plus per-channel statistics.

    ``train_x``/``test_x``: uint8 [N, 3, 32, 32]; ``train_y``/``test_y``: int64 [N];
    ``mean``/``std``: per-channel statistics of ``train_x`` in [0, 1] units (population std).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            _check_images(x, y, f"{split}_x", f"{split}_y")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(f"{split}_y must lie in [0, {self.num_classes}), got [{int(y.min())}, {int(y.max())}]")


def _check_images(x: Tensor, y: Tensor, x_name: str, y_name: str) -> None:
    """Raise ValueError unless x is uint8 [N, 3, H, W] and y is int64 [N]."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{x_name} must be a uint8 tensor [N, 3, H, W], got {x.dtype} {tuple(x.shape)}")
    if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"{y_name} must be an int64 tensor [{len(x)}], got {y.dtype} {tuple(y.shape)}")


def split_sizes(name: str, train_limit: int | None = None, test_limit: int | None = None) -> tuple[int, int]:
    """(train, test) sample counts a trial of dataset `name` uses, without loading anything."""
    n_train, n_test = SPLIT_SIZES[name]
    if name == "synthetic":
        return train_limit or n_train, test_limit or n_test
    return min(n_train, train_limit or n_train), min(n_test, test_limit or n_test)


def default_data_dir() -> str:
    """``$DEBA_DATA_DIR`` if set, else ``~/.cache/deba/data``."""
    return os.environ.get(DATA_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "deba", "data")


def channel_stats(x: Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel mean and population std of uint8 images [N, 3, H, W], in [0, 1] units.

    Computed from a 256-bin histogram per channel, so no float copy of the data is made.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = hist.sum()
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)  # type: ignore[return-value]


def load_dataset(
    name: str,
    data_dir: str | None = None,
    download: bool = True,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    verify: bool = True,
) -> ImageDataset:
    """Load dataset ``name`` (one of ``DATASETS``) as CPU uint8 tensors with train statistics.

    ``data_dir`` (CIFAR, Fashion-MNIST): directory holding ``cifar-10-batches-py``/``cifar-100-python``
    or ``fashion-mnist``/``FashionMNIST/raw``; default ``default_data_dir()``. ``download``: fetch
    missing files (needs internet).
    ``train_limit``/``test_limit``: keep a random subset of that many samples, chosen with
    ``seed`` (the trial's subset_seed: the same in every trial, to compare like with like); for ``synthetic``
    they set the generated sizes, and ``seed`` seeds the generated data. ``verify``: keep
    torchvision's md5 checks of the CIFAR files (False: existence only).
    ``mean``/``std`` are computed from the returned (limited) train split.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")

    if name == "synthetic":
        train_x, train_y, test_x, test_y = _synthetic(
            train_limit or SYNTHETIC_SIZES[0], test_limit or SYNTHETIC_SIZES[1], seed
        )
    else:
        root = os.path.expanduser(data_dir) if data_dir else default_data_dir()
        if name == "digits":
            train_x, train_y, test_x, test_y = _digits()
        elif name == "fashion_mnist":
            train_x, train_y, test_x, test_y = _fashion_mnist(root, download)
        else:
            train_x, train_y, test_x, test_y = _cifar(name, root, download, verify)
        train_x, train_y = _subset(train_x, train_y, train_limit, seed)
        test_x, test_y = _subset(test_x, test_y, test_limit, seed + 1)
    mean, std = channel_stats(train_x)
    return ImageDataset(name, train_x, train_y, test_x, test_y, NUM_CLASSES[name], mean, std)


def _subset(x: Tensor, y: Tensor, limit: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random subset of ``limit`` samples, in their original order."""
    if limit is None or limit >= len(x):
        return x, y
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(x), generator=generator)[:limit].sort().values
    return x[keep].contiguous(), y[keep].contiguous()


def _synthetic(n_train: int, n_test: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for n in (n_train, n_test):
        out.append(torch.randint(0, 256, (n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator))
        out.append(torch.randint(0, NUM_CLASSES["synthetic"], (n,), dtype=torch.int64, generator=generator))
    return out[0], out[1], out[2], out[3]


def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()  # 1797 images, 8x8, integer intensities 0..16
    images = torch.from_numpy(bunch.images).to(torch.float32).unsqueeze(1) * (255.0 / 16.0)
    # Bilinear upsampling is a convex combination of neighbours, so values stay within 0..255.
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = images.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(bunch.target).to(torch.int64)
    train_idx, test_idx = train_test_split(
        torch.arange(len(y)).numpy(), test_size=DIGITS_TEST_SIZE, stratify=bunch.target, random_state=DIGITS_SPLIT_SEED
    )
    train_idx = torch.from_numpy(train_idx).sort().values
    test_idx = torch.from_numpy(test_idx).sort().values
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format; gzipped when the name ends in .gz) as a uint8 numpy array.

    Header: two zero bytes, a type byte (0x08 = unsigned byte, the only type these datasets
    use), the number of dimensions, then each dimension as a big-endian int32.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    size = math.prod(dims)
    if len(data) != header + size:
        raise ValueError(f"{path}: IDX header says {dims} ({size} bytes) but the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_file(folder: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


def fashion_mnist_folders(root: str) -> list[str]:
    """Where Fashion-MNIST's IDX files are looked for, in order (see the module docstring)."""
    return [os.path.join(root, "fashion-mnist"), os.path.join(root, "FashionMNIST", "raw"), DEBIAN_FASHION_MNIST]


def _find_fashion_mnist(root: str) -> dict[str, str] | None:
    for folder in fashion_mnist_folders(root):
        found = {role: _idx_file(folder, name) for role, name in FASHION_MNIST_FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def _fashion_mnist(root: str, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    files = _find_fashion_mnist(root)
    error: Exception | None = None
    if files is None and download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(root, train=True, download=True)  # fetches all four files into root/FashionMNIST/raw
        except Exception as err:  # URLError/OSError/RuntimeError when offline; reported below
            error = err
        files = _find_fashion_mnist(root)
    if files is None:
        tried = f"downloading failed ({type(error).__name__}: {error})" if error is not None else "download=False"
        raise DatasetNotFoundError(
            f"fashion_mnist: the four IDX files ({', '.join(FASHION_MNIST_FILES.values())}, gzipped or not) "
            f"are in none of {', '.join(fashion_mnist_folders(root))}; {tried}. Provide them one of three ways: "
            f"(1) `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, offline: {DEBIAN_FASHION_MNIST}/); "
            f"(2) put them in DIR/fashion-mnist/ and pass --data-dir DIR (or set {DATA_DIR_ENV}=DIR); "
            f"(3) run once online, which downloads them through torchvision into {root}/FashionMNIST/raw/."
        )
    out = []
    for split in ("train", "test"):
        images, labels = read_idx(files[f"{split}_x"]), read_idx(files[f"{split}_y"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"fashion_mnist: {files[f'{split}_x']} {images.shape} and {files[f'{split}_y']} "
                f"{labels.shape} are not N images with N labels"
            )
        x = torch.from_numpy(images.copy()).unsqueeze(1)  # uint8 [N, 1, 28, 28]
        pad_h, pad_w = IMAGE_SIZE - x.shape[-2], IMAGE_SIZE - x.shape[-1]
        if pad_h < 0 or pad_w < 0:
            raise ValueError(f"fashion_mnist: images of {tuple(x.shape[-2:])} do not fit {IMAGE_SIZE}x{IMAGE_SIZE}")
        # Zero border (black, like the images' own background); uint8 throughout.
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        out.append(x.expand(-1, 3, -1, -1).contiguous())
        out.append(torch.from_numpy(labels.astype("int64")))
    return out[0], out[1], out[2], out[3]


def _cifar_class(name: str, verify: bool) -> type:
    """torchvision's CIFAR class for ``name``; with ``verify=False`` a subclass whose file list
    carries no md5, which makes torchvision's own ``check_integrity`` test existence only."""
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if name == "cifar10" else CIFAR100
    if verify:
        return base
    return type(
        f"Unverified{base.__name__}",
        (base,),
        {
            "train_list": [[fname, None] for fname, _ in base.train_list],
            "test_list": [[fname, None] for fname, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


def _cifar(name: str, root: str, download: bool, verify: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cls = _cifar_class(name, verify)
    try:
        train = cls(root, train=True, download=download)
        test = cls(root, train=False, download=False)  # the train call fetched everything
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError; keep it as the cause
        raise DatasetNotFoundError(_cifar_missing_message(name, root, cls, download, err)) from err
    out = []
    for split in (train, test):
        out.append(torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous())  # NHWC -> NCHW
        out.append(torch.tensor(split.targets, dtype=torch.int64))
    return out[0], out[1], out[2], out[3]


def _cifar_missing_message(name: str, root: str, cls: type, download: bool, err: Exception) -> str:
    url, folder = _CIFAR_SOURCES[name]
    expected = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    where = os.path.join(root, folder)
    missing = [f for f in expected if not os.path.isfile(os.path.join(where, f))]
    state = f"missing: {', '.join(missing)}" if missing else "all present, but they failed the md5 check"
    tried = f"downloading failed ({type(err).__name__}: {err})" if download else f"download=False ({err})"
    return (
        f"{name}: dataset files not usable in {where} (expected {', '.join(expected)}; {state}); "
        f"{tried}. To provide them offline: download {url} on a machine with internet, extract it "
        f"into a directory DIR so that DIR/{folder}/ exists, then pass --data-dir DIR "
        f"(or set {DATA_DIR_ENV}=DIR)."
    )


class GpuLoader:
    """One split held on ``device`` as uint8; yields normalised float32 batches from it.

    Per epoch, eagerly at the ``epoch()`` call and in this order, it draws from ``generator``:
    one ``randperm`` (if shuffling), then one crop offset pair per position (if augmenting) and
    one flip bit per position (if augmenting with ``flip``). A batch is then one gather from the
    zero-padded uint8 data (crop and flip folded into the gather's indices), a float conversion and
    one fused scale-and-shift, all on
    the device. The batch size is an argument of ``epoch()``, so it can change every epoch for
    free (nothing is re-laid out); with ``drop_last`` only full batches are yielded.
    """

    def __init__(
        self,
        x_uint8: Tensor,
        y: Tensor,
        mean: tuple[float, float, float] | list[float],
        std: tuple[float, float, float] | list[float],
        device: str | torch.device,
        augment: bool,
        channels_last: bool = False,
        flip: bool = True,
    ) -> None:
        _check_images(x_uint8, y, "x_uint8", "y")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 channels with std > 0, got mean={mean}, std={std}")
        x = x_uint8.to(device)
        self.device = x.device
        self.num_samples = len(x)  # samples held (no __len__: batches or samples would be ambiguous)
        self.image_size = (x.shape[-2], x.shape[-1])
        self.augment = bool(augment)
        self.flip = self.augment and bool(flip)  # horizontal flips are part of the augmentation
        self.channels_last = bool(channels_last)
        # Stored zero-padded once when augmenting (like torchvision's RandomCrop(padding=4):
        # black borders in pixel space), so every crop is a plain gather.
        self._pad = CROP_PADDING if self.augment else 0
        if self._pad:
            x = F.pad(x, (self._pad,) * 4)
        if self.channels_last:
            # NHWC storage: a gather over (n, h, w) copies 3 contiguous bytes per pixel and the
            # permuted result is already channels_last.
            x = x.permute(0, 2, 3, 1).contiguous()
        self._x = x
        self._y = y.to(self.device)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device)
        # (x/255 - mean)/std == x * scale + shift
        self._scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1)
        self._shift = (-mean_t / std_t).view(1, 3, 1, 1)
        self._rows = torch.arange(self.image_size[0], device=self.device)
        self._cols = torch.arange(self.image_size[1], device=self.device)

    def num_batches(self, batch_size: int, drop_last: bool = True) -> int:
        """Number of batches ``epoch(batch_size, ..., drop_last=drop_last)`` yields."""
        self._check_batch_size(batch_size, drop_last)
        if drop_last:
            return self.num_samples // batch_size
        return math.ceil(self.num_samples / batch_size)

    def _check_batch_size(self, batch_size: int, drop_last: bool) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if drop_last and batch_size > self.num_samples:
            raise ValueError(
                f"batch_size {batch_size} exceeds the {self.num_samples} samples held: "
                f"with drop_last=True the epoch would have no batch"
            )

    def epoch(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: bool | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate one epoch: (float32 normalised images [B, 3, H, W], int64 labels [B]).

        ``generator`` lives on the loader's device (None: torch's default generator).
        ``augment`` overrides the loader's setting for this epoch (e.g. False to evaluate the
        training split un-augmented); it can only be on if the loader was built with augment.
        Every sample appears at most once; with ``drop_last`` every batch has ``batch_size``.
        """
        self._check_batch_size(batch_size, drop_last)
        augment = self.augment if augment is None else bool(augment)
        if augment and not self.augment:
            raise ValueError("augment=True needs a loader built with augment=True (padded storage)")
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(
                f"generator is on {generator.device}, the loader on {self.device}; "
                f"create it with torch.Generator(device=...) on the loader's device"
            )
        n = self.num_samples
        order = torch.randperm(n, generator=generator, device=self.device) if shuffle else None
        offsets = flips = None
        if augment:
            offsets = torch.randint(0, 2 * self._pad + 1, (n, 2), generator=generator, device=self.device)
            if self.flip:
                flips = torch.randint(0, 2, (n,), generator=generator, device=self.device).bool()
        count = self.num_batches(batch_size, drop_last)
        return self._batches(batch_size, count, order, offsets, flips)

    def _batches(
        self, batch_size: int, count: int, order: Tensor | None, offsets: Tensor | None, flips: Tensor | None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(count):
            yield self._batch(i * batch_size, min((i + 1) * batch_size, self.num_samples), order, offsets, flips)

    def _batch(
        self, lo: int, hi: int, order: Tensor | None, offsets: Tensor | None, flips: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Positions lo:hi of the epoch's order as one batch: normalised images and their labels."""
        idx = order[lo:hi] if order is not None else slice(lo, hi)
        if offsets is not None:
            images = self._crop_flip(idx, lo, hi, offsets[lo:hi], None if flips is None else flips[lo:hi])
        else:
            images = self._plain(idx, lo, hi)
        return self._normalise(images), self._y[idx]

    def _plain(self, idx: Tensor | slice, lo: int, hi: int) -> Tensor:
        """Un-augmented uint8 batch, NCHW view (the centre crop when storage is padded)."""
        p = self._pad
        h, w = self.image_size
        if self.channels_last:
            return self._x[idx, p : p + h, p : p + w].permute(0, 3, 1, 2)
        return self._x[idx, :, p : p + h, p : p + w]

    def _crop_flip(self, idx: Tensor | slice, lo: int, hi: int, offsets: Tensor, flips: Tensor | None) -> Tensor:
        """Random crop + horizontal flip (``flips`` None: crop only) of a whole batch as one gather on
        the padded data.

        Output pixel (i, j) of sample n reads padded pixel (dy_n + i, dx_n + j), or
        (dy_n + i, dx_n + W - 1 - j) when the sample is flipped (flip after crop).
        """
        if isinstance(idx, slice):
            idx = torch.arange(lo, hi, device=self.device)
        dy, dx = offsets[:, 0:1], offsets[:, 1:2]
        rows = dy + self._rows  # [B, H]
        cols = dx + (self._cols if flips is None else torch.where(flips[:, None], self._cols.flip(0), self._cols))
        if self.channels_last:  # storage [N, H+2p, W+2p, C]
            return self._x[idx[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        channels = torch.arange(3, device=self.device)
        return self._x[
            idx[:, None, None, None], channels[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]
        ]

    def _normalise(self, images: Tensor) -> Tensor:
        # .float() preserves the (channels_last) strides; the in-place ops keep them.
        return images.float().mul_(self._scale).add_(self._shift)
