"""A folder dataset streamed through Ray Data into the epoch loop, at any batch size, epoch by epoch.

    loader = StreamLoader(index.train, input_size=32, mean=m, std=s, device=dev, augment="resized_crop_flip")
    for x, y in loader.epoch(batch_size, generator):   # the same interface as data.GpuLoader
        ...

Per epoch, eagerly at the ``epoch()`` call, the trial's generator draws the epoch's randomness in the
trial process, in the order data.GpuLoader draws it: one ``randperm`` (if shuffling), then per position
either one crop offset pair and one flip bit (``crop``/``crop_flip``, the resident loader's draws, so
both loaders yield the same batches) or four uniforms and one flip bit (``resized_crop_flip``). These
draws become columns of a small table (path, label, draws) in epoch order, cut into blocks;
Ray Data's ``map_batches`` then reads, decodes, augments and normalises each block on the data CPUs,
and ``iter_torch_batches(batch_size=B)`` re-batches the stream at this epoch's B, in order
(``preserve_order``). Every image's pixels are a function of its row alone, so an epoch is the same
whatever Ray's scheduling, the number of data CPUs or the block sizes; the generator's state is in
the trial's checkpoint, so a resumed trial restarts an epoch at its beginning with the same rows as
an uninterrupted run.

Why the shuffle is not Ray Data's ``random_shuffle`` and the shards not ``streaming_split``: both
depend on block boundaries and on which consumer asks first, so rows would not be reproducible.
`shard_positions` gives worker r of W the r-th slice of every global batch instead: the W shards of a
step together are the single-worker batch, each worker builds its own stream of its rows
(``epoch(..., rank=, world=)``).

Pixels: an image is decoded to RGB and fitted to ``input_size`` (shorter side resized bilinearly,
centre crop; nothing happens to an image already of that size). ``crop``/``crop_flip``: then zero-pad by
4 pixels, crop and flip, as the resident loader; ``resized_crop_flip``: a random-resized crop of the
original image (area 8-100 %, aspect ratio 3/4-4/3, one draw, clamped to the image: no retries) resized
to ``input_size``, then the flip. Normalisation (x/255 - mean)/std is the resident loader's float32
``x * scale + shift``, two correctly rounded operations: bit-identical on every device.

Statistics: per-channel mean and std of the train split are computed from at most `STATS_SAMPLE`
images (a fixed seeded sample, the whole split when smaller) at the input size, with the resident
loader's histogram formula: exact for a split of up to that many images.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainables.data import CROP_PADDING, GpuLoader
from trainables.folders import FolderIndex, FolderSplit, scan_folder, skipped_note

STATS_SAMPLE = 10_000  # images the normalisation statistics are computed from [choice: ~1 min of decoding]
STATS_SEED = 0  # the same sample for every trial
RRC_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's defaults
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
MODES: tuple[str, ...] = ("none", "crop", "crop_flip", "resized_crop_flip")
MIN_BLOCK_ROWS = 8  # rows of one Ray Data block at least (per-task overhead), at most MAX_BLOCK_ROWS
MAX_BLOCK_ROWS = 1024
MAX_BLOCK_BYTES = 64 * 2**20  # of decoded float32 images per block (the object store holds a few per CPU)


# ------------------------------------------------------------------------------ pure pieces (numpy)
def shard_positions(count: int, batch_size: int, rank: int, world: int) -> np.ndarray:
    """Positions of an epoch of `count` rows (whole batches) that worker `rank` of `world` reads: the
    `rank`-th of `world` equal slices of every global batch, so the shards of one step together are
    the single-worker batch. ValueError unless world divides batch_size and 0 <= rank < world."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank={rank} of world={world} is not allowed; expected 0 <= rank < world")
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} is not allowed; expected a multiple of the {world} workers")
    per = batch_size // world
    starts = np.arange(0, count - count % batch_size if count >= batch_size else count, batch_size)
    return (starts[:, None] + rank * per + np.arange(per)[None, :]).reshape(-1)


def block_rows(count: int, cpus: int, input_size: int = 32) -> int:
    """Rows per Ray Data block: about four blocks per data CPU, at least MIN_BLOCK_ROWS, and at most
    MAX_BLOCK_ROWS or MAX_BLOCK_BYTES of float32 images (ImageNet at 224 px: 111 rows, 64 MiB)."""
    by_bytes = max(1, MAX_BLOCK_BYTES // (4 * 3 * input_size * input_size))
    upper = max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, by_bytes))
    return max(MIN_BLOCK_ROWS, min(upper, math.ceil(count / (4 * max(cpus, 1)))))


def resized_crop_box(width: int, height: int, u: Sequence[float]) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a random-resized crop from four uniforms in [0, 1):
    area fraction, log aspect ratio, left and top position (see the module docstring)."""
    area = width * height * (RRC_SCALE[0] + float(u[0]) * (RRC_SCALE[1] - RRC_SCALE[0]))
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    ratio = math.exp(log_lo + float(u[1]) * (log_hi - log_lo))
    w = min(max(1, round(math.sqrt(area * ratio))), width)
    h = min(max(1, round(math.sqrt(area / ratio))), height)
    left = min(int(float(u[2]) * (width - w + 1)), width - w)
    top = min(int(float(u[3]) * (height - h + 1)), height - h)
    return left, top, left + w, top + h


def fit_image(image: Any, size: int) -> Any:
    """A PIL image resized (shorter side to `size`, bilinear) and centre-cropped to size x size; an image
    already of that size is returned as it is."""
    from PIL import Image

    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def _open_rgb(path: str) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as exc:  # a file that broke after the check, or whose data (past its header) is damaged
        raise OSError(f"cannot decode image {path}: {type(exc).__name__}: {exc}") from exc


def decode_images(
    paths: Sequence[str], size: int, mode: str = "none", draws: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """uint8 [N, 3, size, size] images of `paths`, augmented by `mode` with the per-row `draws`
    (``dy``/``dx``/``flip`` or ``u``/``flip``; see the module docstring)."""
    from PIL import Image

    draws = draws or {}
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    pad = CROP_PADDING
    for i, path in enumerate(paths):
        image = _open_rgb(str(path))
        if mode == "resized_crop_flip":
            box = resized_crop_box(image.size[0], image.size[1], draws["u"][i])
            pixels = np.asarray(image.resize((size, size), Image.BILINEAR, box=box))
        else:
            pixels = np.asarray(fit_image(image, size))
            if mode in ("crop", "crop_flip"):
                padded = np.zeros((size + 2 * pad, size + 2 * pad, 3), dtype=np.uint8)
                padded[pad : pad + size, pad : pad + size] = pixels
                dy, dx = int(draws["dy"][i]), int(draws["dx"][i])
                pixels = padded[dy : dy + size, dx : dx + size]
        if "flip" in draws and draws["flip"][i]:
            pixels = pixels[:, ::-1]
        out[i] = pixels
    return out.transpose(0, 3, 1, 2)


def normalise(x: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """float32 (x * scale + shift) per channel, as data.GpuLoader computes it (two rounded float32 ops)."""
    out = x.astype(np.float32)
    out *= scale.reshape(1, 3, 1, 1)
    out += shift.reshape(1, 3, 1, 1)
    return out


def decode_block(
    batch: dict[str, np.ndarray], size: int, mode: str, scale: np.ndarray, shift: np.ndarray
) -> dict[str, np.ndarray]:
    """Ray Data's map function: a block of rows (path, y, draws) to {"x": float32 [n,3,S,S], "y": int64}."""
    draws = {k: np.asarray(batch[k]) for k in ("dy", "dx", "flip") if k in batch}
    if "u0" in batch:
        draws["u"] = np.stack([np.asarray(batch[f"u{j}"], dtype=np.float64) for j in range(4)], axis=1)
    x = decode_images(list(batch["path"]), size, mode, draws)
    return {"x": normalise(x, scale, shift), "y": np.asarray(batch["y"], dtype=np.int64)}


def histogram_block(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray Data's map function for the statistics: per-channel 256-bin histograms of a block's images."""
    x = decode_images(list(batch["path"]), size)
    hist = np.stack([np.bincount(x[:, c].reshape(-1), minlength=256) for c in range(3)]).astype(np.int64)
    return {"hist": hist[None]}


def stats_from_histograms(hist: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and population std in [0, 1] units from [3, 256] pixel counts (the formula of
    data.channel_stats, so equal images give equal statistics)."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(3):
        h = torch.from_numpy(np.asarray(hist[c], dtype=np.int64)).to(torch.float64)
        n = h.sum()
        mean = (h * values).sum() / n
        var = (h * (values - mean) ** 2).sum() / n
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)  # type: ignore[return-value]


def stats_sample(count: int) -> np.ndarray:
    """Indices of the train images the statistics are computed from (all when at most STATS_SAMPLE)."""
    if count <= STATS_SAMPLE:
        return np.arange(count)
    generator = torch.Generator().manual_seed(STATS_SEED)
    return torch.randperm(count, generator=generator)[:STATS_SAMPLE].sort().values.numpy()


def subset_split(split: FolderSplit, limit: int | None, seed: int) -> FolderSplit:
    """A seeded random subset of `limit` samples in their order (data._subset's draw)."""
    if limit is None or limit >= len(split):
        return split
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(split), generator=generator)[:limit].sort().values.tolist()
    return FolderSplit(tuple(split.paths[i] for i in keep), tuple(split.labels[i] for i in keep))


# ------------------------------------------------------------------------------ Ray Data
def trial_bundles(configs: Sequence[Any], resources: dict[str, float]) -> list[dict[str, float]]:
    """Placement-group bundles of a study's trials under Tune: the trial's own {CPU, GPU}, plus one bundle of
    the largest ``data_cpus`` among the configs (TrialConfig or mapping) that stream a folder dataset."""
    from trainables.folders import is_folder_dataset

    own = {"CPU": float(resources["cpu"]), "GPU": float(resources["gpu"])}
    data = [int(c["data_cpus"]) for c in configs if is_folder_dataset(c["dataset"]) and c["data_loader"] != "resident"]
    return [own, {"CPU": float(max(data))}] if data else [own]


def ensure_ray(data_cpus: int) -> None:
    """Connect to Ray when this process is not yet (a trial under Tune already is): a local Ray of
    `data_cpus` CPUs for the pipeline, its workers importing this checkout. Ray Data keeps the row order."""
    import logging

    import ray
    from ray.data import DataContext

    # One progress line per epoch is the loop's; Ray Data's per-dataset INFO lines would drown it.
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": we did
    if not ray.is_initialized():
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
        ray.init(
            num_cpus=data_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the epoch's order is the drawn one
    if ctx.enable_progress_bars:
        ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(cpu=data_cpus)


def _dataset(columns: dict[str, np.ndarray], cpus: int, input_size: int = 32) -> Any:
    """A Ray Dataset of the rows `columns` (1-D arrays), in order, in blocks of about `block_rows` rows.

    Built locally (``from_items`` puts the blocks; ``from_arrow`` would run metadata tasks outside the
    trial's placement group, which a full cluster never schedules)."""
    import ray.data

    n = len(columns["path"])
    names = list(columns)
    values = [columns[k].tolist() for k in names]
    items = [dict(zip(names, row)) for row in zip(*values)]
    return ray.data.from_items(items, override_num_blocks=max(1, math.ceil(n / block_rows(n, cpus, input_size))))


def _task_options(cpus: int) -> dict[str, Any]:
    """Ray options of the pipeline's map tasks: one CPU each, inside the trial's placement group when there
    is one (Tune's: the trial's data bundle), else Ray Data's default placement."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = ray.util.get_current_placement_group()
    if pg is None:
        return {"num_cpus": 1}
    return {
        "num_cpus": 1,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True),
    }


def folder_statistics(split: FolderSplit, size: int, cpus: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation statistics of a train split (module docstring), decoded through Ray Data."""
    idx = stats_sample(len(split))
    paths = np.array([split.paths[i] for i in idx], dtype=object)
    ds = _dataset({"path": paths}, cpus, size).map_batches(
        histogram_block, batch_size=None, fn_kwargs={"size": size}, **_task_options(cpus)
    )
    total = np.zeros((3, 256), dtype=np.int64)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        total += np.asarray(batch["hist"]).sum(axis=0)
    return stats_from_histograms(total)


class StreamLoader:
    """One split of a folder dataset, streamed through Ray Data; the interface of data.GpuLoader."""

    def __init__(
        self,
        split: FolderSplit,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device,
        augment: str = "none",
        channels_last: bool = False,
        data_cpus: int = 1,
    ) -> None:
        if augment not in MODES:
            raise ValueError(f"augment={augment!r} is not allowed; expected one of {', '.join(MODES)}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 channels with std > 0, got mean={mean}, std={std}")
        self.device = torch.device(device)
        self.num_samples = len(split)
        self.image_size = (input_size, input_size)
        self.augment = augment
        self.channels_last = bool(channels_last)
        self.data_cpus = int(data_cpus)
        self._paths = np.array(split.paths, dtype=object)
        self._labels = np.array(split.labels, dtype=np.int64)
        # The resident loader's constants, computed the same way (float32 on the device, then to host).
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self._scale = (1.0 / (255.0 * std_t)).cpu().numpy()
        self._shift = (-mean_t / std_t).cpu().numpy()

    def num_batches(self, batch_size: int, drop_last: bool = True) -> int:
        """Number of batches ``epoch(batch_size, ..., drop_last=drop_last)`` yields."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if drop_last and batch_size > self.num_samples:
            raise ValueError(f"batch_size {batch_size} exceeds the {self.num_samples} samples held: no batch")
        return self.num_samples // batch_size if drop_last else math.ceil(self.num_samples / batch_size)

    def draw(self, generator: torch.Generator | None, shuffle: bool, augment: str) -> dict[str, np.ndarray]:
        """The epoch's draws from `generator`, in data.GpuLoader's order: rows (path, y, draws) in epoch order."""
        n = self.num_samples
        gen_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=gen_device) if shuffle else torch.arange(n)
        rows = order.cpu().numpy()
        columns = {"path": self._paths[rows], "y": self._labels[rows]}
        if augment in ("crop", "crop_flip"):
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator, device=gen_device)
            columns["dy"], columns["dx"] = offsets[:, 0].cpu().numpy(), offsets[:, 1].cpu().numpy()
        elif augment == "resized_crop_flip":
            u = torch.rand((n, 4), generator=generator, device=gen_device).double().cpu().numpy()
            for j in range(4):
                columns[f"u{j}"] = u[:, j]
        if augment in ("crop_flip", "resized_crop_flip"):
            columns["flip"] = torch.randint(0, 2, (n,), generator=generator, device=gen_device).bool().cpu().numpy()
        return columns

    def epoch(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: bool | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate one epoch: (float32 normalised images [B/world, 3, S, S], int64 labels) on the device.
        ``augment`` False evaluates un-augmented; ``rank``/``world``: this worker's shard (`shard_positions`)."""
        columns = self.epoch_rows(batch_size, generator, shuffle, drop_last, augment, rank, world)
        return self._stream(columns, batch_size // world, drop_last)

    def epoch_rows(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: bool | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> dict[str, np.ndarray]:
        """The rows (path, y, draws) worker `rank` of `world` streams this epoch, in order (`epoch`'s
        arguments); the draws are made here, eagerly, whatever the shard."""
        count = self.num_batches(batch_size, drop_last)
        mode = self.augment if augment is None or augment else "none"
        columns = self.draw(generator, shuffle, mode)
        rows = count * batch_size if drop_last else self.num_samples
        keep = shard_positions(rows, batch_size, rank, world) if world > 1 else np.arange(rows)
        return {k: v[keep] for k, v in columns.items()}

    def _stream(
        self, columns: dict[str, np.ndarray], batch_size: int, drop_last: bool
    ) -> Iterator[tuple[Tensor, Tensor]]:
        ensure_ray(self.data_cpus)
        mode = "none" if not any(k in columns for k in ("dy", "u0", "flip")) else self.augment
        ds = _dataset(columns, self.data_cpus, self.image_size[0]).map_batches(
            decode_block,
            batch_size=None,  # one task per block: the block's rows are decoded together
            fn_kwargs={"size": self.image_size[0], "mode": mode, "scale": self._scale, "shift": self._shift},
            **_task_options(self.data_cpus),
        )
        for batch in ds.iter_torch_batches(
            batch_size=batch_size, drop_last=drop_last, device="cpu", prefetch_batches=2
        ):
            x = batch["x"].to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, batch["y"].to(self.device, non_blocking=True)


# ------------------------------------------------------------------------------ the loop's entry point
def open_folder(cfg: Any, device: torch.device, channels_last: bool) -> tuple[int, Any, Any]:
    """(num_classes, train loader, test loader) of a folder-dataset TrialConfig: streamed (StreamLoader)
    or, with data_loader=resident, decoded once into data.GpuLoader (the same rows: tests/test_streamed.py)."""
    index: FolderIndex = scan_folder(cfg.dataset, cfg.data_dir, skip_unreadable=cfg.skip_unreadable)
    note = skipped_note(cfg.dataset, index)
    if note:
        print(note, file=sys.stderr, flush=True)
    subset_seed = cfg.seed if cfg.subset_seed is None else cfg.subset_seed
    train = subset_split(index.train, cfg.train_limit, subset_seed)
    val = subset_split(index.val, cfg.test_limit, subset_seed + 1)
    size = int(cfg.input_size)
    if cfg.data_loader == "resident":
        train_x = torch.from_numpy(decode_images(train.paths, size))
        sample = train_x[torch.from_numpy(stats_sample(len(train)))]
        hist = np.stack([np.bincount(sample[:, c].numpy().reshape(-1), minlength=256) for c in range(3)])
        mean, std = stats_from_histograms(hist)
        y = torch.tensor(train.labels, dtype=torch.int64)
        train_loader = GpuLoader(
            train_x, y, mean, std, device, augment=cfg.augment != "none", flip=cfg.augment == "crop_flip",
            channels_last=channels_last,
        )  # fmt: skip
        val_x, val_y = torch.from_numpy(decode_images(val.paths, size)), torch.tensor(val.labels, dtype=torch.int64)
        test_loader = GpuLoader(val_x, val_y, mean, std, device, augment=False, channels_last=channels_last)
        return index.num_classes, train_loader, test_loader
    ensure_ray(cfg.data_cpus)
    mean, std = folder_statistics(train, size, cfg.data_cpus)
    common = {"input_size": size, "mean": mean, "std": std, "device": device, "channels_last": channels_last}
    train_loader = StreamLoader(train, augment=cfg.augment, data_cpus=cfg.data_cpus, **common)
    test_loader = StreamLoader(val, augment="none", data_cpus=cfg.data_cpus, **common)
    return index.num_classes, train_loader, test_loader
