"""Measured per-architecture epoch times of a GPU, for the plan's cost model (pure Python, no torch).

`benchmarks/run_gpu.sh` (step 5) writes one JSON document from its smoke test (step 1): each
architecture trained at B = 64 on synthetic CIFAR-shaped data with the loop's GPU defaults, the
measured step time projected to a full CIFAR-sized epoch (50,000 training samples) and the measured
evaluation projected to 10,000 test samples. Committed at `benchmarks/gpu_epoch_times.json`
(DEFAULT_PATH) once a GPU visit has measured it; absent until then (`read_epoch_times` returns None).

    {"format": "deba-gpu-epoch-times/1",
     "device": "NVIDIA H200", "device_type": "cuda", "measured": "2026-12-02T10:00:00+00:00",
     "batch_size": 64, "train_samples": 50000, "test_samples": 10000,
     "dataset": "synthetic (CIFAR-shaped 3x32x32)", "commit": "...", "torch": "...", "source": "...",
     "archs": {"resnet18": {"train_s": 3.1, "eval_s": 0.2}, ...}}

`seconds_per_epoch` of an arch is train_s + eval_s. A trial on another split scales each part
linearly with its sample counts (`EpochTimes.epoch_seconds`); `EpochTimes.measured_seconds` returns the
`{(arch, dataset): seconds per epoch}` mapping that `orchestrator.schedule.estimate_costs` takes.
These are B = 64 times: an upper bound for trials whose batch size grows (larger batches train an
epoch faster on a GPU), and a trial packed with others on one GPU runs slower.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_PATH", "FORMAT", "EpochTimes", "epoch_times_document", "read_epoch_times", "write_epoch_times"]

FORMAT = "deba-gpu-epoch-times/1"
DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                            "gpu_epoch_times.json")  # fmt: skip
_REQUIRED = ("device", "device_type", "measured", "batch_size", "train_samples", "test_samples", "archs")


@dataclass(frozen=True)
class EpochTimes:
    """One device's measured epoch times: arch -> (train seconds, eval seconds) of one full epoch of
    `train_samples` / `test_samples` samples at `batch_size`."""

    device: str
    device_type: str
    measured: str
    batch_size: int
    train_samples: int
    test_samples: int
    train_s: dict[str, float]
    eval_s: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)  # dataset, commit, torch, source, ...

    @property
    def seconds_per_epoch(self) -> dict[str, float]:
        """arch -> train + eval seconds of one measured epoch."""
        return {arch: self.train_s[arch] + self.eval_s[arch] for arch in self.train_s}

    def epoch_seconds(self, arch: str, n_train: int, n_test: int) -> float | None:
        """Seconds per epoch of `arch` on a split of n_train / n_test samples (None: arch not measured)."""
        if arch not in self.train_s:
            return None
        return self.train_s[arch] * n_train / self.train_samples + self.eval_s[arch] * n_test / self.test_samples

    def measured_seconds(
        self, pairs: Iterable[tuple[str, str]], split_sizes: Mapping[str, tuple[int, int]]
    ) -> dict[tuple[str, str], float]:
        """{(arch, dataset): seconds per epoch} for the (arch, dataset) pairs that were measured;
        `split_sizes` maps a dataset to its (train, test) sample counts (trainables.data.SPLIT_SIZES,
        or a trial's limits)."""
        out = {}
        for arch, dataset in pairs:
            if dataset not in split_sizes:
                raise ValueError(f"dataset {dataset!r} has no split sizes; known: {', '.join(sorted(split_sizes))}")
            seconds = self.epoch_seconds(arch, *split_sizes[dataset])
            if seconds is not None:
                out[(arch, dataset)] = seconds
        return out


def _positive(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r}: expected a positive number")
    if kind is int and (value != int(value)):
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive finite number")
    return kind(value)


def parse_epoch_times(doc: Mapping[str, Any], where: str = "epoch times") -> EpochTimes:
    """An EpochTimes from a document of FORMAT; ValueError naming what is wrong."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: expected a JSON object")
    if doc.get("format") != FORMAT:
        raise ValueError(f"{where}: format={doc.get('format')!r}; expected {FORMAT!r}")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    for key in ("device", "device_type", "measured"):
        if not isinstance(doc[key], str) or not doc[key]:
            raise ValueError(f"{where}: {key}={doc[key]!r}; expected a non-empty string")
    archs = doc["archs"]
    if not isinstance(archs, Mapping) or not archs:
        raise ValueError(f"{where}: archs must map at least one arch to its train_s and eval_s")
    train, evaluation = {}, {}
    for arch, entry in archs.items():
        if not isinstance(entry, Mapping) or not {"train_s", "eval_s"} <= set(entry):
            raise ValueError(f"{where}: archs[{arch!r}] must hold train_s and eval_s")
        train[arch] = _positive(f"{where}: archs[{arch!r}].train_s", entry["train_s"], float)
        evaluation[arch] = _positive(f"{where}: archs[{arch!r}].eval_s", entry["eval_s"], float)
    return EpochTimes(
        device=doc["device"],
        device_type=doc["device_type"],
        measured=doc["measured"],
        batch_size=_positive(f"{where}: batch_size", doc["batch_size"], int),
        train_samples=_positive(f"{where}: train_samples", doc["train_samples"], int),
        test_samples=_positive(f"{where}: test_samples", doc["test_samples"], int),
        train_s=train,
        eval_s=evaluation,
        extra={k: v for k, v in doc.items() if k not in _REQUIRED and k != "format"},
    )


def read_epoch_times(path: str = DEFAULT_PATH) -> EpochTimes | None:
    """The epoch times stored at `path`; None when there is no such file (no GPU measured yet).
    A file that exists but is not a valid document raises ValueError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    return parse_epoch_times(doc, where=path)


def epoch_times_document(
    device: str,
    device_type: str,
    measured: str,
    batch_size: int,
    train_samples: int,
    test_samples: int,
    archs: Mapping[str, Mapping[str, float]],
    **extra: Any,
) -> dict[str, Any]:
    """A document of FORMAT (checked by parsing it back); `archs` maps arch -> {train_s, eval_s}."""
    doc = {
        "format": FORMAT,
        "device": device,
        "device_type": device_type,
        "measured": measured,
        "batch_size": batch_size,
        "train_samples": train_samples,
        "test_samples": test_samples,
        **extra,
        "archs": {a: {"train_s": float(v["train_s"]), "eval_s": float(v["eval_s"])} for a, v in archs.items()},
    }
    parse_epoch_times(doc, where="new epoch times")
    return doc


def write_epoch_times(path: str, doc: Mapping[str, Any]) -> None:
    """Write a document of FORMAT to `path` (checked first; atomic rename)."""
    parse_epoch_times(doc, where=path)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
