"""Time the analysis on a synthetic store (default 240 trials x 100 epochs).

    PYTHONPATH=. python benchmarks/bench_analysis.py [--epochs 100] [--repeats 5] [--keep DIR]

Prints the time to write the store (not part of the analysis), then the median over repeats of:
load (Parquet -> DataFrames, schema checks, de-duplication), the per-trial metrics, comparison,
taxonomy, calibration, all tables together end to end (analyse + Markdown + JSON), and,
separately, the plots and the CLI as a subprocess (interpreter start and imports included).
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    """Build the store, time each stage, print one line per stage."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--keep", help="write the store here instead of a temp dir (kept)")
    args = p.parse_args()

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
