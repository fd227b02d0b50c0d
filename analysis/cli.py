"""Command line: ``python -m analysis RESULTS_DIR [--study S] [--out DIR] [--json] [--no-plots]``.

Prints the Markdown tables (or, with ``--json``, one JSON object on stdout), and writes
report.md, calibration.json and the PNG plots into the output directory. Exit status 0 on
success; 2 on bad arguments (a RESULTS_DIR that does not exist or is no directory, a malformed
URI, a --study the store does not hold, an --out that is a file), each naming the argument; 1 when
the store's data cannot be analysed (no study in it, a wrong schema, no fixed baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

DESCRIPTION = """\
Analyse an adaptive batch-size results store: comparison with the fixed baseline (Tables 3/4),
stability taxonomy (Table 2), calibrated thresholds (Table 1), plots and report.md.

RESULTS_DIR is a local directory or a pyarrow.fs URI (s3://..., gs://...) holding
<study>/epochs/*.parquet and <study>/runs/*.parquet, or one study directory itself. With several
studies and no --study, every study is analysed together: each run is paired with the fixed run
of its own study (falling back to another study's fixed run, noted), taxonomy rows are per study,
and calibration pools the fixed runs of all of them.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the analysis CLI."""
    p = argparse.ArgumentParser(
        prog="python -m analysis", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results_dir", metavar="RESULTS_DIR")
    p.add_argument(
        "--study", action="append", help="study to analyse (repeat or comma-separate for several; default: all)"
    )
    p.add_argument("--out", help="report directory (default: ./reports/<study names joined by '+'>)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots (faster)")
    return p


def _studies(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [s.strip() for v in values for s in v.split(",") if s.strip()]
    return names or None


def _argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments themselves (before any data is read), naming the argument."""
    import pyarrow.fs as pafs

    from analysis.load import StoreError, find_studies, resolve

    try:
        fs, root = resolve(args.results_dir)
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            return f"RESULTS_DIR {args.results_dir!r} does not exist or is not a directory"
        found = find_studies(fs, root)
    except (StoreError, OSError) as exc:
        return f"RESULTS_DIR {args.results_dir!r}: {exc}"
    unknown = [s for s in _studies(args.study) or [] if s not in found]
    if unknown and found:
        return f"--study {', '.join(unknown)}: not in {args.results_dir!r}; its studies: {', '.join(sorted(found))}"
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        return f"--out {args.out!r} is a file; give a directory for the report"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    args = build_parser().parse_args(argv)
    # Imported here so that --help answers without loading pandas/pyarrow.
    from analysis.report import analyse, to_json, to_markdown, write_report

    problem = _argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        a = analyse(args.results_dir, _studies(args.study))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = args.out or os.path.join("reports", "+".join(a.studies))
    report = write_report(a, out, plots=not args.no_plots)
    cal = os.path.join(out, "calibration.json")
    if args.json:
        print(json.dumps(to_json(a), indent=2, allow_nan=False))
        print(f"report: {report}", file=sys.stderr)
    else:
        print(to_markdown(a, calibration_path=cal))
        print(f"report: {report}")
    return 0
