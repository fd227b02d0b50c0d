"""Data-parallel trials, the pure part: how many workers a trial gets and how a global batch splits.

A trial with W = `workers` > 1 runs its epoch loop on W Ray Train workers with DistributedDataParallel
(trainables/ddp_loop.py, trainables/ray_ddp.py). The batch-size policy adapts the GLOBAL batch B
(SPEC §6.1): every step of the epoch takes the next B positions of the epoch's permutation, as with one
worker, and splits them into W disjoint contiguous shards, rank r taking `shard_bounds(B, W, r)`. When W
does not divide B the first B mod W ranks take one sample more (`shard_sizes`), so the global batch is
exactly B, and each rank scales its mean loss by `loss_weight` so that DDP's average over ranks is the
mean over the B samples: the all-reduced gradient is the W = 1 step's gradient (up to BatchNorm, whose
batch statistics are per worker, and float summation order).

The study setting `workers_per_trial` is text: `W` for every arch, or per arch `ARCH=W,...[,W]` with an
optional default (`vit_b16=4,resnet50=2,1`; without a default the other archs get 1). Pure Python.
"""

from __future__ import annotations

from collections.abc import Iterable

from trainables.settings import fail

WORKERS_MAX = 1024  # ranks of one trial: a typo guard (a whole cluster of 8-GPU nodes)


def shard_sizes(batch: int, workers: int) -> tuple[int, ...]:
    """Samples of each rank in a global batch of `batch` split over `workers` ranks: floor(B/W), and one
    more for the first B mod W ranks (sum = B)."""
    if workers < 1 or batch < workers:
        raise ValueError(f"a global batch of {batch} cannot be split over {workers} workers (each needs >= 1 sample)")
    base, extra = divmod(batch, workers)
    return tuple(base + (1 if r < extra else 0) for r in range(workers))


def shard_bounds(batch: int, workers: int, rank: int) -> tuple[int, int]:
    """[lo, hi) of rank `rank`'s shard within a global batch of `batch` positions."""
    sizes = shard_sizes(batch, workers)
    lo = sum(sizes[:rank])
    return lo, lo + sizes[rank]


def loss_weight(batch: int, workers: int, rank: int) -> float:
    """Factor on rank `rank`'s mean loss so that DDP's mean over ranks is the mean over the global batch:
    b_r * W / B (1 when W divides B)."""
    return shard_sizes(batch, workers)[rank] * workers / batch


def parse_workers(text: str, name: str = "workers_per_trial") -> tuple[int, dict[str, int]]:
    """(default W, {arch: W}) of a `workers_per_trial` text; ValueError naming the setting otherwise."""
    expected = "W (an integer >= 1) or per arch ARCH=W,...[,W] with an optional default W, e.g. vit_b16=4,resnet50=2,1"
    default: int | None = None
    per_arch: dict[str, int] = {}
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        fail(name, text, expected)
    for part in parts:
        arch, sep, value = part.rpartition("=")
        try:
            w = int(value)
        except ValueError:
            fail(name, text, expected)
        if not 1 <= w <= WORKERS_MAX:
            fail(name, text, f"{expected}; each W between 1 and {WORKERS_MAX}")
        if not sep:
            if default is not None:
                fail(name, text, f"{expected} (one default only)")
            default = w
        elif not arch or arch in per_arch:
            fail(name, text, f"{expected} (each arch once)")
        else:
            per_arch[arch] = w
    return (1 if default is None else default), per_arch


def workers_for(text: str, arch: str) -> int:
    """The W of `arch` under a `workers_per_trial` text."""
    default, per_arch = parse_workers(text)
    return per_arch.get(arch, default)


def check_workers_archs(text: str, archs: Iterable[str]) -> None:
    """Refuse per-arch entries for archs the study does not run (a typo would silently give W = 1)."""
    _, per_arch = parse_workers(text)
    outside = sorted(set(per_arch) - set(archs))
    if outside:
        fail(
            "workers_per_trial",
            text,
            f"entries for the study's archs only ({', '.join(archs)}): {', '.join(outside)} is not one "
            "(drop it, or add the arch with --archs)",
        )


def replica_noise_scale(
    replica_sqnorm: float, global_sqnorm: float, batch: int, workers: int
) -> tuple[float, float, float]:
    """The gradient noise scale from one step's cross-replica statistics (AdaptDL/Pollux; McCandlish et
    al. 2018, App. A): W local gradients of b = B/W samples (mean squared norm `replica_sqnorm`) and
    their all-reduced mean over B (squared norm `global_sqnorm`). Returns (|G|^2 estimate, tr(Sigma)
    estimate, B_simple = tr(Sigma)/|G|^2); NaNs when W = 1 (one replica measures no spread)."""
    nan = float("nan")
    if workers < 2:
        return nan, nan, nan
    b_small, b_big = batch / workers, float(batch)
    g2 = (b_big * global_sqnorm - b_small * replica_sqnorm) / (b_big - b_small)
    trace = (replica_sqnorm - global_sqnorm) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace, (trace / g2 if g2 > 0 else nan)


def check_data_parallel(config: object, options: object) -> None:
    """Refuse, before Ray starts, a trial with workers > 1 that data-parallel training cannot run as
    asked: a method that measures extra statistics (per-sample passes, micro-batches: not implemented
    over DDP yet), a streamed folder dataset, torch.compile (not wired to DDP), or a batch size below W
    (a rank with no sample)."""
    from trainables.policies import POLICIES

    w = config.workers  # type: ignore[attr-defined]
    policy = POLICIES[config.method](arch=config.arch, dataset=config.dataset, options=options)  # type: ignore[attr-defined]
    needed = set().union(*(policy.measurements(e) for e in range(1, config.epochs + 1)))  # type: ignore[attr-defined]
    needed = sorted(needed - {"two_batch"})  # the replicas give the two-batch statistics (ddp_loop.ReplicaNoise)
    if needed:
        fail(
            "workers",
            w,
            f"1 for method {config.method!r}: it measures {', '.join(needed)}, which data-parallel trials "  # type: ignore[attr-defined]
            "do not implement yet (fixed, deba, adabatch and gns run with W > 1, AdaScale lr too)",
        )
    from trainables.folders import is_folder_dataset

    if is_folder_dataset(config.dataset):  # type: ignore[attr-defined]
        fail(
            "workers",
            w,
            "1 for a folder dataset: the streamed shards for W workers (trainables/streamed.py shard_positions) "
            "are not wired to data-parallel trials yet",
        )
    if config.compile is not False:  # type: ignore[attr-defined]
        fail("workers", w, "1 with compile (torch.compile is not wired to DistributedDataParallel here)")
    smallest = min(getattr(options, name) for name in ("b0", "b_min") if hasattr(options, name))
    if smallest < w:
        fail(
            "workers", w, f"at most the smallest batch size the policy may use ({smallest}): every rank needs a sample"
        )
