#!/usr/bin/env python
"""Every registered dipole inversion method, classical and learned, on the evaluation suite, through ``torchqsm bench``.

Every method runs through :func:`torchqsm.bench.run_bench`, the engine of ``torchqsm bench``
(the registry's ``torchqsm.invert`` on each case's true local field plus the field noise
measured from its own multi-echo signal; background removal left out, as in the QSM
challenges). Runs are cached in ``--report-dir`` (the bench report folder: tables, figures,
``index.html``), so a rerun computes only what is missing or stale. Metrics in the brain mask:
NRMSE demeaned, HFEN (%), SSIM; the time is that of the inversion alone.

Writes:

* the section between ``<!-- bench-learned:suite -->`` and ``<!-- /bench-learned:suite -->`` of
  docs/benchmarks.md (NRMSE, HFEN, SSIM and time tables);
* ``docs/results.md`` (``--results``): every metric table of the bench report, its summary figures
  and the baseline's slices copied to ``docs/figures/results/``: the results page of the project,
  generated from this one bench run;
* with ``--update-cards``, each shipped network's suite scores into its model card.

The suite is built once into a cache (``$XDG_CACHE_HOME/torchqsm/suite-<version>[-small]``,
default ``~/.cache``) and reused; ``--suite-dir`` names another built suite.

Examples
--------
Smoke run (2 mm suite, prints, writes nothing)::

    python benchmarks/bench_learned.py --small --methods tkd tikhonov --cases baseline

Every registered method (FINE capped at 3 steps) on five cases, docs and cards updated::

    python benchmarks/bench_learned.py --suite-dir SUITE --report-dir REPORT --update-cards
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from torchqsm.bench import SUITE_VERSION, build_suite
from torchqsm.bench.evaluate import load_case
from torchqsm.bench.report import input_note, write_report
from torchqsm.bench.runner import default_methods as every_method
from torchqsm.bench.runner import run_bench
from torchqsm.bench.tables import METRIC_TABLES, metric_table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "docs" / "results.md"
BEGIN, END = "<!-- bench-learned:suite -->", "<!-- /bench-learned:suite -->"
DEFAULT_CASES = ("baseline", "tilt-30deg", "tilt-60deg", "snr-30", "haemorrhage")
#: FINE fine-tunes the network for 100 Adam steps by default; on a 1 mm case 3 steps took 585-914 s on 2
#: shared CPU cores (2026-12-05), so the suite run takes 3.
FINE_STEPS = 3


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_suite_dir(small: bool) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "torchqsm" / f"suite-{SUITE_VERSION}{'-small' if small else ''}"


def ensure_suite(folder: Path, cases: list[str], *, small: bool, cached: bool) -> dict:
    """The suite index, building the suite (or, in the cache, the missing cases) first where needed."""
    index_path = folder / "suite.json"
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else None
    have = [c["name"] for c in index["cases"]] if index else []
    stale = index is not None and (index.get("version") != SUITE_VERSION or bool(index.get("small")) != small)
    missing = [c for c in cases if c not in have]
    if index is not None and not stale and not missing:
        return index
    if index is not None and not cached:
        raise SystemExit(f"{index_path}: version {index.get('version')}, small={index.get('small')}, "
                         f"missing cases {missing}; build it again or leave out --suite-dir")
    wanted = cases if stale else [*have, *missing]
    log(f"building the {'small ' if small else ''}suite {SUITE_VERSION} ({len(wanted)} cases) in {folder} ...")
    started = time.perf_counter()
    build_suite(folder, small=small, cases=wanted, overwrite=index is not None,
                progress=lambda case: log(f"  {case.name}"))
    log(f"  built in {time.perf_counter() - started:.0f} s")
    return json.loads(index_path.read_text(encoding="utf-8"))


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = f"{cpu} ({cores} cores)"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def default_methods() -> list[str]:
    """Every registered single-orientation method (``torchqsm bench --methods all``), FINE capped."""
    return [f"{e.name}:max_iterations={FINE_STEPS}" if e.name.endswith("+fine") else e.name for e in every_method()]


def default_report_dir(index: dict) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "torchqsm" / f"bench-{index['version']}{'-small' if index.get('small') else ''}"


def field_noise(folder: Path, cases: list[str]) -> dict[str, tuple[float, float]]:
    """Per case: the input's field noise rms and the true local field's rms in the brain (ppm)."""
    noise = {}
    for case in cases:
        suite_input = load_case(folder / case)
        mask = suite_input.mask
        noise[case] = (suite_input.noise_rms_ppm, float(suite_input.true_local_field_ppm[mask].square().mean().sqrt()))
    return noise


def header(result, noise, args, command: str, load: float, date: str) -> list[str]:
    index = result.suite
    grid = "small: 2 mm" if index.get("small") else "full: 1 mm"
    noise_text = ", ".join(f"{case} {n * 1e3:.1f} ({n / f:.0%})" for case, (n, f) in noise.items())
    lines = [f"- Suite {index['version']} ({grid} baseline, seed {index.get('seed')}), cases: {', '.join(noise)}. "
             + input_note(result.source) + " Background removal is left out, so this isolates the dipole "
             "inversion, as in the QSM challenges.",
             f"- Field noise rms in the brain (ppb, and relative to the local field's rms): {noise_text}.",
             "- Metrics in the brain mask; NRMSE demeaned (χ and the truth each minus their brain mean), HFEN (%; "
             "lower is better), SSIM (higher is better); time = the inversion alone. Bold: best in its column. "
             f"Registry defaults unless a method's label gives parameters (FINE: {FINE_STEPS} of its 100 steps).",
             f"- Machine: {machine(args.device)}, device {args.device}, {args.workers} worker(s); Python "
             f"{platform.python_version()}, torch {torch.__version__}; measured {date} (runs reused from the "
             f"cache keep their own date, in `bench.json`); load average {load:.2f} before the run.",
             f"- Reproduce: `{command}`"]
    for case, (n, f) in noise.items():
        if n > f:  # not acquisition noise: the input's error is larger than the field itself
            lines.append(f"- **{case}**: the measured field error ({n * 1e3:.0f} ppb) exceeds the local field "
                         f"({f * 1e3:.0f} ppb): the phase of the signal disagrees with the ground-truth field, "
                         "so this column scores that mismatch, not the inversion.")
    return lines


def render(result, noise, args, command: str, load: float) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "## Dipole inversion on the evaluation suite", "",
             *header(result, noise, args, command, load, date),
             "- Every table and figure of this run: [results.md](results.md).", ""]
    for metric in ("nrmse_demeaned", "hfen", "ssim", "seconds"):
        lines += [metric_table(result.records, metric), ""]
    data = {"suite_version": result.suite["version"], "small": bool(result.suite.get("small")), "date": date,
            "device": args.device, "torch": torch.__version__,
            "rows": [{k: r.get(k) for k in ("case", "method", "status", "nrmse_demeaned", "hfen", "ssim", "seconds")}
                     for r in result.records]}
    lines += [f"<!-- bench-data {json.dumps(data, separators=(',', ':'))} -->", END, ""]
    return "\n".join(lines)


def results_page(result, files, noise, args, command: str, load: float) -> str:
    """docs/results.md: every metric table of the run, its summary figures and the baseline's slices
    (copied to ``figures/results/`` beside the page)."""
    folder = args.results.parent / "figures" / "results"
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    figures = []
    for path in files.figures:
        relative = path.relative_to(result.report_dir / "figures")
        if len(relative.parts) == 1 or relative.name == "slices.png" and relative.parts[0] == "baseline":
            target = folder / "_".join(relative.parts)
            shutil.copyfile(path, target)
            figures.append(target)
    lines = ["# Results: every method on the evaluation suite", "",
             "<!-- generated by benchmarks/bench_learned.py from one torchqsm bench run: do not edit -->", "",
             *header(result, noise, args, command, load, date),
             f"- {len(result.records)} runs, {len(result.failed)} failed; the full report (every run's figure, "
             "`index.html`) is written to the bench report folder.", ""]
    for path in figures:
        lines += [f"![{path.stem}]({path.relative_to(args.results.parent).as_posix()})", ""]
    for metric in METRIC_TABLES:
        if metric == "lesion_mean" and not any(r.get("lesion_mean") is not None for r in result.records):
            continue
        lines += [metric_table(result.records, metric), ""]
    if result.failed:
        lines += ["## Failed runs", ""] + [f"- {r['method']} on {r['case']}: {r.get('error')}" for r in result.failed]
    return "\n".join(lines).rstrip("\n") + "\n"


def update_markdown(path: Path, section: str, *, begin: str = BEGIN, end: str = END) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the 2 mm suite (seconds to build); print only")
    parser.add_argument("--suite-dir", type=Path, help="a built suite (default: a cache, built when missing)")
    parser.add_argument("--report-dir", type=Path, help="bench report folder and run cache (default: a cache)")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--methods", nargs="+", help="names or name:key=value,... (default: every registered "
                        f"single-orientation method, FINE at {FINE_STEPS} steps)")
    parser.add_argument("--workers", type=int, default=1, help="Dask workers (1: serial, in this process)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of a serial run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the generated results page")
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--update-cards", action="store_true",
                        help="write each learned method's scores into its shipped model card (metrics)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.suite_dir or default_suite_dir(args.small)
    small = args.small
    if args.suite_dir is not None and (args.suite_dir / "suite.json").is_file():  # a given suite says its grid
        small = bool(json.loads((args.suite_dir / "suite.json").read_text(encoding="utf-8")).get("small"))
    index = ensure_suite(folder, args.cases, small=small, cached=args.suite_dir is None)
    report_dir = args.report_dir or default_report_dir(index)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    noise = field_noise(folder, args.cases)
    methods = args.methods or default_methods()
    log(f"{len(methods)} methods × {len(args.cases)} cases on {args.device}; report and cache in {report_dir}")

    def show(record, computed):
        log(f"{record['case']} {record['method']}: {record.get('status')} NRMSE {record.get('nrmse_demeaned')} "
            f"({'computed' if computed else 'reused'})")

    result = run_bench(folder, report_dir, methods, cases=args.cases, device=args.device, workers=args.workers,
                       on_record=show)
    files = write_report(result)
    command = shlex.join(["python", "benchmarks/bench_learned.py", *(argv if argv is not None else sys.argv[1:])])
    section = render(result, noise, args, command, load)
    print(section)
    if not (args.small or args.no_write):
        update_markdown(args.output, section)
        args.results.write_text(results_page(result, files, noise, args, command, load), encoding="utf-8")
        log(f"updated {args.output} and {args.results}")
    if args.update_cards and not args.small:
        for path in update_cards(result):
            log(f"updated {path}")
    return 0


def update_cards(result, script: str = "benchmarks/bench_learned.py") -> list[Path]:
    """Write the suite scores of each shipped network (and its refinements) into its card.

    Only the card's ``metrics`` change; the weights file and its SHA-256 are untouched. Scores of
    the same suite version for cases this run did not score are kept. Shared by ``bench_consistent.py``.
    """
    from torchqsm.models import weights as weights_module
    from torchqsm.pipeline.learned import shipped_defaults, split_method

    written = []
    for architecture, name in shipped_defaults().items():
        scores: dict[str, dict[str, dict[str, float]]] = {}
        for r in result.records:  # "unet+fine:max_iterations=10" is stored as "fine:max_iterations=10"
            base, refinement = split_method(r["method"])
            if base == architecture and r.get("status") == "ok":
                scores.setdefault(refinement or "network", {})[r["case"]] = {
                    "nrmse": round(float(r["nrmse_demeaned"]), 2), "hfen": round(float(r["hfen"]), 2),
                    "ssim": round(float(r["ssim"]), 4)}
        if "baseline" not in scores.get("network", {}):
            continue
        path = weights_module.SHIPPED_DIR / f"{name}.json"
        card = json.loads(path.read_text(encoding="utf-8"))
        previous = card.get("metrics") or {}
        if previous.get("suite_version") == result.suite.get("version"):  # keep the cases this run did not score
            for refinement, cases in (previous.get("cases") or {}).items():
                for case, values in cases.items():
                    scores.setdefault(refinement, {}).setdefault(case, values)
        card["metrics"] = {
            "suite": scores["network"]["baseline"], "headline": "suite.nrmse",
            "suite_version": result.suite.get("version"), "suite_case_of_headline": "baseline",
            "suite_input": f"true local field + measured multi-echo field noise ({script})",
            "units": "NRMSE (demeaned) and HFEN in %, SSIM 0-1, in the brain mask",
            "cases": scores,
        }
        path.write_text(json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    sys.exit(main())
