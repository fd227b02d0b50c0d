"""Time the analysis on a synthetic store (default 240 trials x 100 epochs).

    PYTHONPATH=. python benchmarks/bench_analysis.py [--epochs 100] [--repeats 5] [--keep DIR]
    PYTHONPATH=. python benchmarks/bench_analysis.py --scaling 240,2400,24000 [--s3] [--keep DIR]

Prints the time to write the store (not part of the analysis), then the median over repeats of:
load (Parquet -> DataFrames, schema checks, de-duplication), the per-trial metrics, comparison,
taxonomy, calibration, all tables together end to end (analyse + Markdown + JSON), and,
separately, the plots and the CLI as a subprocess (interpreter start and imports included).

`--scaling N,...`: for synthetic stores of N trials x `--epochs` epochs (N/48 seeds of 6 archs x 2
datasets x 4 methods), before and after `python -m orchestrator.compact`: the files, `load_store`,
and `python -m analysis DIR --json --no-plots` end to end as a subprocess, locally and (`--s3`) from a
local S3 server (moto, benchmarks/local_s3.py) that the store is uploaded to. Wall seconds and CPU
seconds (user + sys, all threads, of the client; the machine is shared, so CPU is the steadier number);
local rows are medians of `--repeats` (at most 3; 1 above 2,400 trials), S3 rows single runs. One
Markdown table on stdout (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from analysis.calibrate import calibrate  # noqa: E402
from analysis.compare import compare  # noqa: E402
from analysis.load import load_store  # noqa: E402
from analysis.report import analyse, to_json, to_markdown  # noqa: E402
from analysis.stability import taxonomy  # noqa: E402
from analysis.trials import trial_summary  # noqa: E402
from benchmarks.synthetic_store import synthetic_store  # noqa: E402


def _timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _cpu() -> float:
    """CPU seconds (user + sys) of this process and its waited-for children so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(fn, repeats: int = 1) -> tuple[float, float, object]:
    """(median wall s, median CPU s, last result) of `fn()` over `repeats` calls."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), _cpu()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(_cpu() - c)
    return statistics.median(walls), statistics.median(cpus), out


def _cli(location: str, out: str, plots: bool = False) -> None:
    cmd = [sys.executable, "-m", "analysis", location, "--json", "--out", out] + ([] if plots else ["--no-plots"])
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)


def _compact(location: str) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-m", "orchestrator.compact", location], check=True, capture_output=True,
                   env=env, cwd=ROOT)  # fmt: skip


def _files(location: str) -> int:
    import pyarrow.fs as pafs

    from trainables.records import resolve_uri

    fs, root = resolve_uri(location)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return sum(i.type == pafs.FileType.File and i.base_name.endswith(".parquet") for i in infos)


def _row(n: int, where: str, layout: str, location: str, compaction: str, repeats: int, out: str, plots: bool):
    """One row of the --scaling table: files, load_store and the CLI end to end (wall / CPU s)."""
    lw, lc, _ = _measure(lambda: load_store(location), repeats)
    cw, cc, _ = _measure(lambda: _cli(location, out), repeats)
    row = [f"{n:,}", where, layout, f"{_files(location):,}", f"{lw:.2f} / {lc:.2f}", f"{cw:.2f} / {cc:.2f}",
           compaction]  # fmt: skip
    if plots:
        pw, pc, _ = _measure(lambda: _cli(location, out, plots=True))
        row.append(f"{pw:.1f} / {pc:.1f}")
    row.append(f"{os.getloadavg()[0]:.1f}")  # the machine is shared: how busy it was
    print("# " + " | ".join(row), file=sys.stderr, flush=True)
    return row


def _compacted(location: str) -> str:
    wall, cpu, _ = _measure(lambda: _compact(location))
    return f"{wall:.1f} / {cpu:.1f}"


def _upload(src: str, dst: str) -> str:
    """Copy a local store to an s3:// location (threads: one request per file)."""
    import pyarrow.fs as pafs

    s3fs, path = pafs.FileSystem.from_uri(dst)
    w = time.perf_counter()
    pafs.copy_files(src, path, pafs.LocalFileSystem(), s3fs, use_threads=True)
    print(f"# uploaded {src} in {time.perf_counter() - w:.0f} s", file=sys.stderr, flush=True)
    return dst


def scaling(sizes: list[int], epochs: int, s3: bool, repeats: int, keep: str | None, plots: bool) -> None:
    """The `--scaling` table (module docstring)."""
    import shutil

    from benchmarks.local_s3 import LocalS3

    base = keep or tempfile.mkdtemp(prefix="bench-analysis-")
    server = None
    if s3:
        server = LocalS3(log=os.path.join(base, "moto.log")).start()
        os.environ.update(server.env())
        bucket = server.bucket("bench")
    rows = []
    out = os.path.join(base, "report")
    try:
        for n in sizes:
            plain, packed = os.path.join(base, f"s{n}"), os.path.join(base, f"c{n}")
            if not os.path.isdir(plain):
                w = time.perf_counter()
                made = synthetic_store(plain, study="synthetic", seeds=range(max(1, n // 48)), n_epochs=epochs)
                print(f"# wrote {made} trials in {time.perf_counter() - w:.0f} s", file=sys.stderr, flush=True)
            if os.path.isdir(packed):
                shutil.rmtree(packed)
            shutil.copytree(plain, packed)
            reps = repeats if n <= 2400 else 1
            rows.append(_row(n, "local", "per-trial files", plain, "", reps, out, plots))
            rows.append(_row(n, "local", "compacted", packed, _compacted(packed), reps, out, plots))
            if server is not None:
                if n <= 2400:  # per-trial files from S3: a request each (48,000 at 24,000 trials: not run)
                    there = _upload(plain, f"{bucket}/s{n}")
                    rows.append(_row(n, "S3 (moto)", "per-trial files", there, "", 1, out, plots))
                    there = _upload(plain, f"{bucket}/c{n}")
                    rows.append(_row(n, "S3 (moto)", "compacted", there, _compacted(there), 1, out, plots))
                else:
                    there = _upload(packed, f"{bucket}/c{n}")
                    rows.append(_row(n, "S3 (moto)", "compacted", there, "(compacted locally)", 1, out, plots))
            if keep is None:
                shutil.rmtree(packed)
    finally:
        if server is not None:
            server.stop()
        if keep is None:
            shutil.rmtree(base, ignore_errors=True)
    head = ["trials", "store on", "layout", "Parquet files", "load_store s (wall / CPU)",
            "`python -m analysis DIR --json --no-plots` s (wall / CPU)", "compaction s (wall / CPU)"]  # fmt: skip
    if plots:
        head.append("with plots s (wall / CPU)")
    head.append("load avg (1 min)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    """Build the store, time each stage, print one line per stage (or the --scaling table)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--keep", help="write the store here instead of a temp dir (kept)")
    p.add_argument("--scaling", help="comma-separated trial counts: the before/after compaction table")
    p.add_argument("--s3", action="store_true", help="--scaling also from a local S3 server (moto)")
    p.add_argument("--plots", action="store_true", help="--scaling also times the CLI with plots")
    args = p.parse_args()
    if args.scaling:
        sizes = [int(x) for x in args.scaling.split(",")]
        scaling(sizes, args.epochs, args.s3, min(args.repeats, 3), args.keep, args.plots)
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or os.path.join(tmp, "results")
        t0 = time.perf_counter()
        n = synthetic_store(root, study="synthetic", n_epochs=args.epochs)
        t_write = time.perf_counter() - t0
        print(f"store: {n} trials x {args.epochs} epochs ({n * args.epochs} epoch rows), "
              f"written in {t_write:.2f} s (not part of the analysis)")  # fmt: skip

        rows = []
        t_load, store = _timed(lambda: load_store(root), args.repeats)
        rows.append(("load (schema checks, dedup)", t_load))
        t_sum, summary = _timed(lambda: trial_summary(store.epochs, store.runs), args.repeats)
        rows.append(("per-trial metrics", t_sum))
        t_cmp, comp = _timed(lambda: compare(summary), args.repeats)
        rows.append(("comparison (Tables 3/4)", t_cmp))
        t_tax, _ = _timed(lambda: taxonomy(summary, comp.pairs), args.repeats)
        rows.append(("taxonomy (Table 2)", t_tax))
        t_cal, _ = _timed(lambda: calibrate(store.epochs, summary), args.repeats)
        rows.append(("calibration (Table 1)", t_cal))

        def everything():
            a = analyse(root)
            to_markdown(a)
            to_json(a)
            return a

        t_all, a = _timed(everything, args.repeats)
        rows.append(("all tables end to end (load + tables + markdown + json)", t_all))

        from analysis.plots import make_plots  # imported here: the import is part of plotting

        out = os.path.join(tmp, "plots")
        t_plot, made = _timed(lambda: make_plots(a.epochs, a.summary, a.taxonomy, out), 1)
        rows.append((f"plots ({len(made)} PNGs, first call incl. matplotlib import)", t_plot))

        cmd = [sys.executable, "-m", "analysis", root, "--out", os.path.join(tmp, "cli"), "--no-plots"]
        env = dict(os.environ, PYTHONPATH=ROOT)
        t_cli, _ = _timed(lambda: subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT), 1)
        rows.append(("CLI subprocess --no-plots (python start + imports)", t_cli))

        width = max(len(name) for name, _ in rows)
        for name, t in rows:
            print(f"{name:<{width}}  {t * 1000:9.1f} ms")


if __name__ == "__main__":
    main()
