#!/usr/bin/env python
"""The data-consistent networks beside the classical methods and the plain networks, through ``torchqsm bench``.

Runs (or reuses, from the bench cache in ``--report-dir``) every method on every chosen case of a
built evaluation suite with :func:`torchqsm.bench.run_bench`, the engine of ``torchqsm bench``
(input: true local field plus the field noise measured from each case's signal), writes the bench
report there (tables, figures, ``index.html``), and replaces the section between
``<!-- bench-consistent:suite -->`` and ``<!-- /bench-consistent:suite -->`` of docs/benchmarks.md
with NRMSE (demeaned), HFEN and SSIM tables. ``--update-cards`` writes each shipped network's
scores into its card (``metrics``); the weights and their SHA-256 are untouched.

Example::

    torchqsm simulate suite /tmp/suite --case baseline --case tilt-30deg --case tilt-60deg \\
        --case snr-30 --case haemorrhage
    python benchmarks/bench_consistent.py --suite-dir /tmp/suite --report-dir /tmp/bench13 --update-cards
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learned import update_cards as shared_update_cards  # noqa: E402
from bench_regularization import update_markdown  # noqa: E402

from torchqsm.bench.report import write_report  # noqa: E402
from torchqsm.bench.runner import run_bench  # noqa: E402
from torchqsm.bench.tables import metric_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench-consistent:suite -->", "<!-- /bench-consistent:suite -->"
DEFAULT_METHODS = ("tkd", "tikhonov", "tv", "unet", "unet+dfqsm", "xqsm", "qsmnet", "lpcnn", "noqsm", "noqsm-sd",
                   "nextqsm")
DEFAULT_CASES = ("baseline", "tilt-30deg", "tilt-60deg", "snr-30", "haemorrhage")
NETWORKS = ("unet", "xqsm", "qsmnet", "lpcnn", "noqsm", "noqsm-sd", "nextqsm")


def section(result, command: str, load: float) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    records = [r for r in result.records]
    lines = [BEGIN, f"## Data-consistent networks on the evaluation suite (suite {result.suite.get('version')})", "",
             "- Input: each case's true local field plus the field noise measured from its own multi-echo "
             "signal (`torchqsm.bench`); background removal left out. Metrics in the brain mask; NRMSE demeaned.",
             "- The data-consistent networks (`lpcnn`, `noqsm`, `noqsm-sd`, `nextqsm`) apply each case's own "
             "dipole operator inside; the plain networks reorient when B0 lies beyond their training tilt (45°).",
             f"- Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {now}; load "
             f"average {load:.2f} before the run (other jobs may share the machine: compare times within this table only).",
             f"- Reproduce: `{command}` (cached runs are reused; the bench report is in the report folder).", ""]
    for metric in ("nrmse_demeaned", "hfen", "ssim", "seconds"):
        lines += [metric_table(records, metric), ""]
    data = {"date": now, "suite_version": result.suite.get("version"),
            "rows": [{k: r.get(k) for k in ("case", "method", "status", "nrmse_demeaned", "hfen", "ssim", "seconds")}
                     for r in records]}
    lines += [f"<!-- bench-data {json.dumps(data, separators=(',', ':'))} -->", END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-dir", type=Path, required=True)
    parser.add_argument("--report-dir", type=Path, required=True, help="bench report folder (also its run cache)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--update-cards", action="store_true")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]

    def report(record, computed):
        print(f"{record['case']} {record['method']}: {record.get('status')} "
              f"NRMSE {record.get('nrmse_demeaned')} ({'computed' if computed else 'reused'})", file=sys.stderr)

    result = run_bench(args.suite_dir, args.report_dir, args.methods, cases=args.cases, workers=args.workers,
                       on_record=report)
    write_report(result, figures=not args.no_figures)
    command = shlex.join(["python", "benchmarks/bench_consistent.py",
                          *(argv if argv is not None else sys.argv[1:])])
    text = section(result, command, load)
    print(text)
    if not args.no_write:
        update_markdown(args.output, text, begin=BEGIN, end=END)
    if args.update_cards:
        for path in shared_update_cards(result, "benchmarks/bench_consistent.py"):
            print(f"updated {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
