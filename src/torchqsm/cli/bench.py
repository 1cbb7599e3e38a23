"""``torchqsm bench DATASET -o REPORT_DIR``: every method on every case, tables, figures, an HTML page.

Register with :func:`add_bench_parser`. The handler parses, calls
:func:`torchqsm.bench.run_bench` and :func:`torchqsm.bench.write_report`, and prints one
summary line (plus one line per failed run on stderr). Rerunning into the same folder
resumes: finished runs are reused, the tables and the page are rewritten.
"""

from __future__ import annotations

import argparse
import sys

from ..bench.report import write_report
from ..bench.runner import default_methods, default_recipes, parse_method, parse_recipe, run_bench

__all__ = ["add_bench_parser", "run_bench_command"]


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``bench`` to the main parser's sub-commands."""
    bench = subparsers.add_parser(
        "bench", help="score every method on every case of an evaluation suite: tables, figures, HTML report",
        description="Run dipole inversion methods on every case of an evaluation suite (torchqsm simulate suite) "
                    "in parallel through Dask, score them against the ground truth, and write CSV/Markdown tables, "
                    "PNG figures and an offline HTML page into REPORT_DIR. A rerun computes only missing or stale "
                    "runs.")
    bench.add_argument("dataset", metavar="DATASET", help="suite folder (suite.json), one case folder, or a BIDS "
                       "dataset with ground-truth χ under derivatives/ (a case per GRE run: RUN_KEY_Chimap.nii[.gz])")
    bench.add_argument("-o", "--output", required=True, metavar="REPORT_DIR", help="report folder (also the run cache)")
    bench.add_argument("--methods", nargs="+", default=["all"], metavar="NAME",
                       help="'all' (every single-orientation method; with --from raw every recipe) and/or names, "
                            "each optionally NAME:KEY=VALUE,KEY=VALUE (default all)")
    bench.add_argument("--from", dest="source", choices=("field", "raw"), default="field",
                       help="field (default): methods invert each case's local field; raw: --methods are "
                            "recipes (torchqsm run --list-recipes), run from the case's magnitude and wrapped phase")
    bench.add_argument("--cases", nargs="+", metavar="PATTERN", help="case name glob patterns (default every case)")
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    where = bench.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="local Dask worker processes (default one per CPU core; 1 runs in this process)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="address of a running Dask scheduler (its workers must see DATASET and REPORT_DIR)")
    bench.add_argument("--retry-failed", action="store_true", help="recompute runs that failed before")
    bench.add_argument("--no-figures", action="store_true", help="tables and page without figures")
    bench.add_argument("--quiet", action="store_true", help="no per-run lines")
    bench.set_defaults(handler=run_bench_command)
    return bench


def run_bench_command(args: argparse.Namespace) -> int:
    methods = []
    every, parse = (default_recipes, parse_recipe) if args.source == "raw" else (default_methods, parse_method)
    for text in args.methods:
        methods += every() if text == "all" else [parse(text)]
    methods = list({entry.label: entry for entry in methods}.values())

    def show(record: dict, computed: bool) -> None:
        if args.quiet:
            return
        state = "computed" if computed else "cached"
        if record.get("status") == "ok":
            print(f"{record['case']} {record['method']}: NRMSE {record['nrmse']:.1f} % ({state}, "
                  f"{record['seconds']:.2f} s)", file=sys.stderr, flush=True)
        else:
            print(f"{record['case']} {record['method']}: FAILED ({state}): {record.get('error')}", file=sys.stderr,
                  flush=True)

    result = run_bench(args.dataset, args.output, methods, cases=args.cases, device=args.device, workers=args.workers,
                       scheduler=args.scheduler, retry_failed=args.retry_failed, on_record=show, source=args.source)
    files = write_report(result, figures=not args.no_figures)
    print(f"{len(result.records)} runs ({len(result.computed)} computed, {len(result.reused)} reused, "
          f"{len(result.failed)} failed): {files.html}")
    return 0
