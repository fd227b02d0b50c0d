"""Render benchmark JSON results as the Markdown tables of BENCHMARKS.md.

    PYTHONPATH=. python -m benchmarks.tables benchmarks/out/cpu [more dirs or files ...]

For each (benchmark, device type) the newest result found is rendered: a line naming the
machine, commit and load, the benchmark's numbers, and its ratios with target and verdict.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any

from benchmarks.common import fmt_ratio

ORDER = ("smoke", "signals", "data", "batch_curve", "speedups", "orchestration", "packing")


def _f(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def latest(paths: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """(benchmark, device type) -> the newest result document among `paths` (files or directories)."""
    files: list[str] = []
    for p in paths:
        files += sorted(glob.glob(os.path.join(p, "*.json"))) if os.path.isdir(p) else [p]
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in files:
        with open(path) as f:
            doc = json.load(f)
        if "benchmark" not in doc:
            continue
        key = (doc["benchmark"], doc["machine"]["device_type"])
        if key not in docs or doc["started"] >= docs[key]["started"]:
            docs[key] = doc
    return docs


def _machine(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    la = doc["load_avg"]
    dev = m["device"] + (
        f" (CUDA {m.get('cuda')}, {m.get('gpu_memory_gib')} GiB)" if m["device_type"] == "cuda" else ""
    )
    return (
        f"Machine: {dev}; CPU {m['cpu']} x{m['cpu_count']}; torch {m['torch']}, {m['torch_threads']} thread(s); "
        f"commit `{m['commit']}`; started {doc['started']}; load avg (1/5/15 min) {la.get('start')} -> "
        f"{la.get('end')}; wall {doc.get('wall_s')} s."
    )


def _signals(doc: dict[str, Any]) -> list[str]:
    rows = [
        [
            r["arch"],
            r["batch_size"],
            r["signal_source"],
            f"{r['params'] / 1e6:.2f}M",
            r["steps_per_epoch"],
            _f(r["epoch_s_on"]["median"]),
            _f(r["epoch_s_off"]["median"]),
            fmt_ratio(r["ratio_end_to_end"]),
            _f(1e3 * r["grad_moments_s"], ".2f"),
            _f(1e3 * r["accumulator_add_s"], ".3f"),
            _f(1e3 * r["step_s"], ".1f"),
            _f(100 * r["fraction_direct"], ".3f"),
            _f(100 * r["fraction_full_epoch"], ".4f"),
        ]
        for r in doc["numbers"]["rows"]
    ]
    return _table(
        [
            "arch",
            "B",
            "source",
            "params",
            "steps",
            "epoch on s",
            "epoch off s",
            "on/off [q1, q3]",
            "grad_moments ms",
            "acc. add ms/step",
            "step ms",
            "signals % this epoch",
            "signals % full 50k epoch",
        ],
        rows,
    )


def _data(doc: dict[str, Any]) -> list[str]:
    lo = [
        [
            r["batch_size"],
            _f(r["gpu_samples_per_s"], ".0f"),
            _f(r["torchvision_samples_per_s"], ".0f"),
            fmt_ratio(r["ratio_torchvision_over_gpu"]),
        ]
        for r in doc["numbers"]["loader_only"]
    ]
    tr = [
        [
            r["batch_size"],
            r["steps"],
            _f(r["gpu_train_s"]["median"]),
            _f(r["premade_train_s"]["median"]),
            _f(r["torchvision_train_s"]["median"]),
            fmt_ratio(r["loader_overhead"]),
            fmt_ratio(r["torchvision_over_gpu"]),
        ]
        for r in doc["numbers"]["training"]
    ]
    p = doc["params"]
    return (
        [f"Loader only ({p['samples']} samples, {p['workers']} DataLoader workers):", ""]
        + _table(["B", "GpuLoader samples/s", "torchvision samples/s", "torchvision/GpuLoader time"], lo)
        + ["", f"Training epochs of {p['arch']} through TrialLoop.run_epoch (train seconds, median):", ""]
        + _table(
            ["B", "steps", "GpuLoader s", "pre-made s", "torchvision s", "GpuLoader/pre-made", "torchvision/GpuLoader"],
            tr,
        )
    )


def _batch(doc: dict[str, Any]) -> list[str]:
    rows = []
    for res in doc["numbers"]["archs"]:
        flops = res.get("fwd_flops_per_sample")
        for r in res.get("rows") or []:
            rows.append(
                [
                    res["arch"],
                    _f(flops / 1e9 if flops else None, ".3f"),
                    r["batch_size"],
                    _f(r["samples_per_s"], ".0f"),
                    _f(r["step_ms"], ".2f"),
                    _f(r["full_epoch_s"], ".2f"),
                    _f(100 * r["mfu"], ".1f") if r.get("mfu") is not None else "n/a",
                    _f(r.get("speedup_vs_first"), ".2f"),
                    _f(r.get("peak_mem_mb"), ".0f"),
                ]
            )
    p = doc["params"]
    return [
        f"Peak for MFU: {p['peak_tflops']} TFLOP/s (dense bf16); MFU = 3 x fwd FLOPs x samples/s / peak.",
        "",
    ] + _table(
        [
            "arch",
            "fwd GFLOP/sample",
            "B",
            "samples/s",
            "step ms",
            "full 50k epoch s",
            "MFU %",
            "speedup vs B=64",
            "peak mem MB",
        ],
        rows,
    )


def _speedups(doc: dict[str, Any]) -> list[str]:
    n = doc["numbers"]
    first = [
        [
            v,
            ", ".join(f"{r['batch_size']}: {r['first_s']:.2f}/{r['second_s']:.2f}" for r in rows),
            _f(sum(r["extra_s"] for r in rows), ".2f"),
        ]
        for v, rows in n["first_epochs"].items()
    ]
    steady = [
        [
            r["batch_size"],
            r["variant"],
            _f(r["step_ms"], ".2f"),
            _f(r["samples_per_s"], ".0f"),
            fmt_ratio(r["speedup_vs_plain"]),
            fmt_ratio(r["speedup_vs_default"]) if r.get("speedup_vs_default") else "n/a",
        ]
        for r in n.get("steady", [])
    ]
    out = [
        f"Arch {doc['params']['arch']}, {doc['params']['samples']} samples per epoch.",
        "",
        "Phase 1, first/second epoch seconds at each new batch size:",
        "",
    ]
    out += _table(["variant", "B: first/second s", "one-off total s"], first)
    out += ["", "Phase 2, steady state (speedup = reference epoch time / variant epoch time):", ""]
    out += _table(["B", "variant", "step ms", "samples/s", "speedup vs plain", "speedup vs default"], steady)
    for k in ("compile_break_even", "cudagraphs_break_even"):
        if k in n:
            be = n[k]
            out += [
                "",
                f"{k}: one-off {be['one_off_s']:.1f} s, saves {be['saved_per_full_epoch_s']:.2f} s per full "
                f"epoch at B={be['batch_size']} -> break-even after {_f(be['break_even_epochs'], '.1f')} epochs",
            ]
    for v, err in (n.get("errors") or {}).items():
        out += ["", f"{v} failed: `{err.splitlines()[0][:200]}`"]
    return out


def _orchestration(doc: dict[str, Any]) -> list[str]:
    n = doc["numbers"]
    ck = []
    for r in n["checkpoints"]:
        fr = ", ".join(f"B={k.rsplit('B', 1)[1]}: {100 * v:.2f}%" for k, v in r.items() if k.startswith("fraction"))
        ck.append(
            [
                r["arch"],
                f"{r['params'] / 1e6:.2f}M",
                _f(r["checkpoint_mb"], ".1f"),
                _f(1e3 * r["save_s"], ".1f"),
                fr or "n/a",
            ]
        )
    out = _table(["arch", "params", "checkpoint MB", "save ms", "save / full-epoch train time"], ck)
    one = n.get("ray_overhead_study")
    if one and one.get("ray_overhead"):
        ov = one["ray_overhead"]
        out += [
            "",
            f"Ray study ({doc['params']['ray']['arch']} on {doc['params']['ray']['dataset']}, "
            f"{ov['epochs']:.0f} epochs): checkpoint save {1e3 * ov['ckpt_save_s']:.1f} ms + tune.report "
            f"{1e3 * ov['report_s']:.1f} ms per epoch = {100 * ov['fraction']:.2f}% of the mean "
            f"{ov['epoch_s']:.3f} s epoch (train + eval).",
        ]
    pk = []
    for key, outs in (n.get("packing") or {}).items():
        for o in outs:
            pk.append(
                [
                    key,
                    f"{o['completed']}/{o['trials']}",
                    _f(o["wall_s"], ".1f"),
                    _f(o["samples_per_wall_s"], ".0f"),
                    _f(o["mean_epoch_s"], ".3f"),
                    str(o["runs_table_packing"]),
                    o["packing_recorded"],
                ]
            )
    if pk:
        out += ["", "Packing (same trials per arm):", ""]
        out += _table(
            [
                "arm",
                "trials done",
                "study wall s",
                "samples/s overall",
                "mean epoch s",
                "runs table (gpus, cpus)",
                "recorded",
            ],
            pk,
        )
    return out


def _smoke(doc: dict[str, Any]) -> list[str]:
    rows = []
    for res in doc["numbers"]["archs"]:
        if "error" in res:
            rows.append([res["arch"], "", f"error: {res['error'].splitlines()[0][:120]}"] + [""] * 8)
            continue
        for r in res.get("rows") or []:
            if "skipped" in r or r.get("oom"):
                rows.append([res["arch"], r["batch_size"], r.get("skipped") or "out of memory"] + [""] * 8)
                continue
            rows.append(
                [
                    res["arch"],
                    r["batch_size"],
                    f"{'finite' if r['finite'] else 'NOT FINITE'} ({r['status']})",
                    " ".join(f"{x:.3f}" for x in r["losses"]),
                    _f(r["first_epoch_s"], ".2f"),
                    _f(r.get("train_s"), ".3f"),
                    _f(r.get("samples_per_s"), ".0f"),
                    _f(r.get("full_epoch_s"), ".2f"),
                    _f(r.get("full_eval_s"), ".2f"),
                    _f(100 * r["mfu"], ".1f") if r.get("mfu") is not None else "n/a",
                    _f(r.get("peak_mem_mb"), ".0f"),
                ]
            )
    p = doc["params"]
    return [
        f"{p['samples']} synthetic samples per epoch, {p['repeats']} timed epoch(s) after one warm-up per batch size; "
        f"peak for MFU {p['peak_tflops']} TFLOP/s.",
        "",
    ] + _table(
        [
            "arch",
            "B",
            "loss",
            "losses",
            "first epoch s",
            "epoch s",
            "samples/s",
            "full 50k epoch s",
            "eval 10k s",
            "MFU %",
            "peak mem MB",
        ],
        rows,
    )


def _packing(doc: dict[str, Any]) -> list[str]:
    p = doc["params"]
    rows = [
        [
            a["trials"],
            f"{a['resources']['gpu']:g} / {a['resources']['cpu']:g}",
            f"{a['completed']}/{a['trials']}",
            _f(a["wall_s"], ".1f"),
            _f(a.get("steady_samples_per_s"), ".0f"),
            _f(a.get("wall_samples_per_s"), ".0f"),
            _f(a.get("mean_steady_epoch_s"), ".3f"),
            _f(a.get("slowdown"), ".2f"),
            _f(a.get("concurrency"), ".2f"),
            a["packing_recorded"],
        ]
        for a in doc["numbers"]["arms"]
    ]
    return [
        f"{p['arch']} on {p['dataset']}, B={p['batch_size']}, {p['samples']} samples x {p['epochs']} epochs per "
        "trial, one run_grid call per arm.",
        "",
    ] + _table(
        [
            "trials",
            "GPU / CPU per trial",
            "completed",
            "wall s",
            "steady samples/s",
            "wall samples/s",
            "epoch s",
            "slowdown",
            "concurrency",
            "runs table recorded",
        ],
        rows,
    )


RENDER = {
    "signals": _signals,
    "data": _data,
    "batch_curve": _batch,
    "speedups": _speedups,
    "orchestration": _orchestration,
    "smoke": _smoke,
    "packing": _packing,
}


def _ratios(doc: dict[str, Any]) -> list[str]:
    rows = []
    for name, r in doc["ratios"].items():
        v = r["value"]
        met = {True: "met", False: "NOT met", None: "not judged"}[r["met"]]
        rows.append([f"`{name}`", "n/a" if v is None else f"{v:.3f}", r["target"] or "", met, r["definition"]])
    return _table(["ratio", "value", "target", "verdict", "definition"], rows)


def render(docs: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Markdown for every result in `docs`, benchmarks in their usual order."""
    out: list[str] = []
    for (bench, dev), doc in sorted(
        docs.items(), key=lambda kv: (ORDER.index(kv[0][0]) if kv[0][0] in ORDER else 99, kv[0][1])
    ):
        out += [f"### {bench} ({dev})", "", _machine(doc), ""]
        out += RENDER.get(bench, lambda d: [])(doc)
        out += ["", "Ratios:", ""] + _ratios(doc)
        for note in doc.get("notes", []):
            out += ["", f"Note: {note}"]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Print the Markdown tables of the results in the given directories/files."""
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print("usage: python -m benchmarks.tables DIR_OR_JSON [...]", file=sys.stderr)
        return 2
    docs = latest(paths)
    if not docs:
        print(f"no benchmark results in {', '.join(paths)}", file=sys.stderr)
        return 1
    print(render(docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
