#!/usr/bin/env python
"""Wall time of ``torchqsm bench`` serially and on a local Dask cluster of 2 workers.

The same CPU-bound runs (iterative methods on cases of the small evaluation suite) are
benchmarked into fresh report folders, serially in one process with one torch thread and on a
local Dask cluster of 2 single-threaded worker processes (cluster start and stop included),
alternating ``--repeats`` times so that a drifting machine load hits both alike. The results
must agree (accuracy columns of the CSV). CPU seconds (this process and its reaped children,
the Dask workers) show how much of the machine each run got. The wall times go into the
section between ``<!-- bench-bench:parallel -->`` and
``<!-- /bench-bench:parallel -->`` of docs/benchmarks.md (appended if missing; the rest of the
file is kept).

Example::

    OMP_NUM_THREADS=1 python benchmarks/bench_bench_parallel.py --suite-dir /tmp/suite
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from torchqsm.bench import build_suite, run_bench
from torchqsm.bench.tables import COLUMNS, TIMING_COLUMNS, csv_text

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- bench-bench:parallel -->", "<!-- /bench-bench:parallel -->"
CASES = ("baseline", "tilt-30deg", "snr-30", "haemorrhage")
ITERATIONS = 30  # per run; --iterations N > 30 writes its own section (longer runs amortise the cluster's start)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(suite: Path, workers: int, threads: int, methods, cases) -> tuple[float, float, list[dict]]:
    torch.set_num_threads(threads)
    out = Path(tempfile.mkdtemp(prefix="bench-parallel-"))
    try:
        cpu = _cpu_seconds()
        started = time.perf_counter()
        result = run_bench(suite, out, list(methods), cases=list(cases), workers=workers)
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds() - cpu
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert len(result.computed) == len(result.records) and not result.failed, result.failed
    return seconds, cpu, result.records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite-dir", type=Path, required=True, help="small suite (built there if missing)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of serial and Dask (default 2)")
    parser.add_argument("--print-only", action="store_true")
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="tv and l2 iterations per run")
    args = parser.parse_args()
    methods = (f"tv:max_iterations={args.iterations}", f"l2:max_iterations={args.iterations}")
    begin, end = BEGIN, END
    if args.iterations != ITERATIONS:
        begin, end = (marker.replace("parallel", f"parallel-{args.iterations}") for marker in (BEGIN, END))
    if not (args.suite_dir / "suite.json").is_file():
        build_suite(args.suite_dir, small=True, cases=CASES)
    load_before = os.getloadavg()
    configurations = (("serial, 1 process × 1 thread", 1), ("Dask LocalCluster, 2 workers × 1 thread", 2))
    walls: dict[str, list[float]] = {label: [] for label, _ in configurations}
    cpus: dict[str, list[float]] = {label: [] for label, _ in configurations}
    same: dict[str, bool] = {label: True for label, _ in configurations}
    reference = None
    for _ in range(args.repeats):
        for label, workers in configurations:
            seconds, cpu, records = timed(args.suite_dir, workers, 1, methods, CASES)
            accuracy = csv_text(records, [c for c in COLUMNS if c not in TIMING_COLUMNS])
            reference = reference or accuracy
            walls[label].append(seconds)
            cpus[label].append(cpu)
            same[label] &= accuracy == reference
            print(f"{label}: {seconds:.1f} s wall, {cpu:.1f} s CPU, load {os.getloadavg()[0]:.1f}", file=sys.stderr,
                  flush=True)
    load_after = os.getloadavg()
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runs = len(CASES) * len(methods)
    serial = statistics.median(walls[configurations[0][0]])
    title = "" if args.iterations == ITERATIONS else f", {args.iterations} iterations a run"
    lines = [begin, f"## `torchqsm bench`: serial against 2 Dask workers (CPU{title})", "",
             f"{runs} runs: {', '.join(methods)} on {', '.join(CASES)} of the small (2 mm) suite, each bench into a "
             f"fresh report folder, serial and Dask alternating {args.repeats}× (`benchmarks/bench_bench_parallel.py`, "
             f"{date}, {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}). Wall time of "
             "`run_bench`, Dask cluster start and stop included; CPU is this process plus its workers.", "",
             "| how | wall (s), median | each (s) | CPU (s), median | speed-up | same accuracy table |",
             "| --- | ---: | --- | ---: | ---: | --- |"]
    for label, _ in configurations:
        wall = statistics.median(walls[label])
        lines.append(f"| {label} | {wall:.1f} | {', '.join(f'{w:.1f}' for w in walls[label])} | "
                     f"{statistics.median(cpus[label]):.1f} | {serial / wall:.2f}× | {'yes' if same[label] else 'NO'} |")
    lines += ["", f"Load average (1 min) before/after: {load_before[0]:.1f} / {load_after[0]:.1f} on "
              f"{os.cpu_count()} cores: other jobs shared the machine, so the numbers carry that noise.", "",
              "The Dask column pays a fixed cost: the scheduler, 2 nannies and 2 workers start (each worker imports "
              "torch and torchqsm, about 4.5 s of CPU) and stop. Dask's default `MALLOC_TRIM_THRESHOLD_=65536` for "
              "workers doubled the CPU time of the runs themselves (30 TV iterations: 15.0 s against 7.4 s); "
              "`torchqsm bench` starts its workers without it.", end]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.print_only:
        return 0
    text = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
