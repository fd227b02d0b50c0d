"""Shared pieces of the benchmarks: arguments, machine facts, timing, statistics, JSON results.

Every benchmark module has `main(argv) -> int`, takes the common options below and writes one
JSON document (see `Result`) to `--out` (default benchmarks/out/, git-ignored):

    {"benchmark", "machine": {host, cpu, device, torch, cuda, commit, ...}, "load_avg": {start, end},
     "params": {...}, "numbers": {...}, "ratios": {name: {value, target, met, definition}}, "notes": [...]}

Timing rules: wall time with `torch.cuda.synchronize` on both ends on CUDA (what a user pays,
host overhead included), warm-up before anything is timed, and the arms of a comparison
alternated within one run (A B B A ...) so that both see the same machine load; a ratio is the
median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from trainables.config import TrialConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "benchmarks", "out")
CIFAR_TRAIN_SAMPLES = 50_000  # a full CIFAR-10/100 training epoch, for projections
# Training FLOPs per sample ~ 3x the forward FLOPs (forward + backward w.r.t. activations and weights),
# the usual MFU convention (PaLM appendix B); the counter counts matmul/conv/attention FLOPs only.
TRAIN_FLOPS_FACTOR = 3.0

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets. Matched in order
# against torch.cuda.get_device_name(); the first pattern whose words all occur wins.
PEAK_BF16_TFLOPS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("h100", "pcie"), 756.0),
    (("h100", "nvl"), 835.0),
    (("h100",), 989.4),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    (("h200",), 989.4),
    (("gh200",), 989.4),
    (("b200",), 2250.0),
    (("a100",), 312.0),
    (("a10g",), 70.0),
    (("l40s",), 362.0),
    (("l4",), 121.0),
    (("4090",), 165.2),
    (("v100",), 125.0),  # fp16 (V100 has no bf16)
)


# ------------------------------------------------------------------------------------------ arguments


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = cuda when available (default)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): the tests' smoke run")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"directory for the JSON result (default {DEFAULT_OUT})")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default 1 on CPU, for comparable numbers on a shared machine; torch's default on CUDA)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per arm (default per benchmark)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s for MFU (default: the device's dense bf16 peak from a table; none on CPU)",
    )
    return p


def resolve_device(name: str) -> str:
    """'cpu' or 'cuda' for the --device option; ValueError when cuda is asked for but absent."""
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={name!r}: expected one of 'auto', 'cpu', 'cuda'")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda': no CUDA device is available")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_threads(threads: int | None, device: str) -> int | None:
    """Threads for TrialLoop configs: the given number, else 1 on CPU and torch's default on CUDA.

    Also applies it to this process (torch.set_num_threads), so the benchmark's own timings agree.
    """
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads!r}: expected an integer >= 1")
    if threads is None and device == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    return threads


def default_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak TFLOP/s of a GPU named `device_name` (None when unknown, and for 'cpu')."""
    name = device_name.lower()
    for words, peak in PEAK_BF16_TFLOPS:
        if all(w in name for w in words):
            return peak
    return None


def mfu(fwd_flops_per_sample: float | None, samples_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: TRAIN_FLOPS_FACTOR * forward FLOPs * samples/s / peak (None if unknown)."""
    if fwd_flops_per_sample is None or peak_tflops is None or peak_tflops <= 0:
        return None
    return TRAIN_FLOPS_FACTOR * fwd_flops_per_sample * samples_per_s / (peak_tflops * 1e12)


def deba_ladder() -> list[int]:
    """The batch sizes a DEBA run visits with its default options: b0, floor(alpha*b), ... capped at b_max.

    With the defaults (b0 64, alpha 1.5, b_max 1024): 64, 96, 144, 216, 324, 486, 729, 1024.
    """
    from trainables.policies import policy_options

    opts = policy_options("deba")
    sizes = [int(opts["b0"])]
    while sizes[-1] < opts["b_max"]:
        sizes.append(min(math.floor(opts["alpha"] * sizes[-1]), int(opts["b_max"])))
    return sizes


def int_list(text: str) -> list[int]:
    """Parse '64,128 256' into [64, 128, 256] (argparse type)."""
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers separated by commas") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1")
    return values


def str_list(text: str) -> list[str]:
    """Parse 'a,b c' into ['a', 'b', 'c'] (argparse type)."""
    values = [v for v in text.replace(",", " ").split() if v]
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one name")
    return values


# --------------------------------------------------------------------------------------------- machine


def git_commit() -> str | None:
    """HEAD of the checkout, with '+dirty' when benchmarks/ or trainables/ or orchestrator/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", ROOT, "status", "--porcelain", "--", "trainables", "orchestrator", "benchmarks"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("DEBA_COMMIT")  # a copied tree without .git (the GPU machine) may pass it in
    return head + ("+dirty" if dirty else "")


def load_avg() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict[str, Any]:
    """Facts that make a number reproducible: host, CPU, device, library versions, commit."""
    import torch

    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device_type": device,
        "commit": git_commit(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_count=torch.cuda.device_count(),
        )
    else:
        info["device"] = "cpu"
    return info


# ---------------------------------------------------------------------------------------------- timing


def sync(device: Any) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any) -> tuple[float, Any]:
    """(wall seconds, result) of fn(), synchronising the device before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def mean_call_time(fn: Callable[[], Any], device: Any, calls: int, warmup: int = 2) -> float:
    """Mean wall seconds of one fn() over `calls` back-to-back calls (after `warmup` untimed calls)."""
    for _ in range(warmup):
        fn()
    seconds, _ = timed(lambda: [fn() for _ in range(calls)], device)
    return seconds / calls


def alternating(arms: Sequence[str], rounds: int) -> list[str]:
    """Arm order for `rounds` rounds, reversed every other round (A B C, C B A, ...) to cancel drift."""
    order: list[str] = []
    for r in range(rounds):
        order.extend(arms if r % 2 == 0 else list(reversed(arms)))
    return order


# ------------------------------------------------------------------------------------------ statistics


def summary(values: Iterable[float]) -> dict[str, float | int]:
    """n, median, min, max and the quartiles of `values` (non-empty)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("summary: no values")
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q1, "q3": q3}


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Ratio a/b from paired measurements: median of the pair ratios, their quartiles and n.

    Pairs were measured next to each other, so load changes cancel within a pair.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_ratio: need equally many values, got {len(a)} and {len(b)}")
    if min(b) <= 0:
        raise ValueError("paired_ratio: denominators must be positive")
    s = summary(x / y for x, y in zip(a, b))
    return {"value": s["median"], "q1": s["q1"], "q3": s["q3"], "n": s["n"]}


# --------------------------------------------------------------------------------------------- results


class Result:
    """One benchmark's JSON document; `ratio()` records a ratio with its target."""

    def __init__(self, benchmark: str, device: str, params: dict[str, Any]) -> None:
        self.t0 = time.perf_counter()
        self.doc: dict[str, Any] = {
            "benchmark": benchmark,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(device),
            "load_avg": {"start": load_avg()},
            "params": params,
            "numbers": {},
            "ratios": {},
            "notes": [],
        }

    @property
    def numbers(self) -> dict[str, Any]:
        """The measured numbers (free-form, JSON-able)."""
        return self.doc["numbers"]

    def note(self, text: str) -> None:
        """Add a sentence for the reader (what was skipped, what a number means)."""
        self.doc["notes"].append(text)

    def ratio(
        self,
        name: str,
        value: float | None,
        definition: str,
        target: str | None = None,
        met: bool | None = None,
        **extra: Any,
    ) -> None:
        """Record ratio `name` (value None: not measured) with its definition and target."""
        self.doc["ratios"][name] = {"value": value, "definition": definition, "target": target, "met": met, **extra}

    @contextlib.contextmanager
    def written_on_interrupt(self, out_dir: str) -> Iterator[None]:
        """On Ctrl-C / SIGINT (run_gpu.sh's `timeout --signal=INT`), write what was measured so far and exit 130."""
        try:
            yield
        except KeyboardInterrupt:
            self.note("interrupted (time limit): partial numbers, ratios may be missing")
            print(f"interrupted; wrote partial result {self.write(out_dir)}", flush=True)
            raise SystemExit(130) from None

    def write(self, out_dir: str) -> str:
        """Write the document as <out>/<benchmark>_<device type>_<UTC time>.json; returns the path."""
        self.doc["load_avg"]["end"] = load_avg()
        self.doc["wall_s"] = round(time.perf_counter() - self.t0, 2)
        os.makedirs(out_dir, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = os.path.join(out_dir, f"{self.doc['benchmark']}_{self.doc['machine']['device_type']}_{stamp}.json")
        with open(path, "w") as f:
            json.dump(self.doc, f, indent=1, sort_keys=False, default=_json_default, allow_nan=True)
        return path

    def print_ratios(self, path: str) -> None:
        """Print every ratio with its target and verdict, then where the result was written."""
        for name, r in self.doc["ratios"].items():
            v = r["value"]
            print(f"{name}: {'n/a' if v is None else f'{v:.4f}'} (target {r['target']}, met={r['met']})")
        print(f"wrote {path}")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def fmt_ratio(r: dict[str, Any]) -> str:
    """'1.004 [1.001, 1.010]' for a ratio entry (value and quartiles when present)."""
    v = r.get("value")
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if r.get("q1") is not None and r.get("q3") is not None:
        return f"{v:.3f} [{r['q1']:.3f}, {r['q3']:.3f}]"
    return f"{v:.3f}"


# ------------------------------------------------------------------------------------- loop helpers


def loop_config(
    arch: str,
    dataset: str,
    device: str,
    threads: int | None,
    batch_size: int,
    train_limit: int | None,
    test_limit: int | None = 256,
    **extra: Any,
) -> TrialConfig:
    """A TrialLoop config for benchmarking: a fixed batch size, many epochs (the benchmark decides)."""
    cfg = {
        "arch": arch,
        "dataset": dataset,
        "method": "fixed",
        "policy": {"b0": batch_size},
        "epochs": 100_000,
        "device": device,
        "threads": threads,
        "train_limit": train_limit,
        "test_limit": test_limit,
        "download": False,
    }
    cfg.update(extra)
    return TrialConfig.from_dict(cfg)


def set_batch_size(loop: Any, batch_size: int) -> None:
    """Make the loop's (fixed) policy train its next epochs at `batch_size`, through its state dict."""
    state = loop.policy.state_dict()
    state["batch_size"] = int(batch_size)
    loop.policy.load_state_dict(state)


def run_epoch_timed(loop: Any) -> dict[str, Any]:
    """loop.run_epoch() plus `total_s`: the epoch's wall time (train + eval + signals + policy step)."""
    seconds, rec = timed(loop.run_epoch, loop.device)
    return {**rec, "total_s": seconds}


def header(result: Result) -> str:
    """One line naming the machine and load, printed before a benchmark's table."""
    m = result.doc["machine"]
    return (
        f"# {result.doc['benchmark']} on {m['device']} ({m['cpu']}, torch {m['torch']}, "
        f"{m['torch_threads']} threads), commit {m['commit']}, load avg {result.doc['load_avg']['start']}"
    )
