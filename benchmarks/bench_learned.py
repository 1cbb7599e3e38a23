#!/usr/bin/env python
"""Dipole inversion methods, classical and learned, scored on the evaluation suite.

Every method runs through the registry (``torchqsm.invert``) on chosen cases of the evaluation
suite (``torchqsm.bench.suite``): the input is each case's true local field plus the field noise
measured from its own multi-echo signal (``torchqsm.bench.evaluate``; background removal is left
out, as in the QSM challenges). NRMSE and HFEN (%) and SSIM are computed in the brain mask after
demeaning χ and the truth there; the time is that of the inversion alone.

The suite is built once into a cache (``$XDG_CACHE_HOME/torchqsm/suite-<version>[-small]``,
default ``~/.cache``) and reused; ``--suite-dir`` names another built suite.

The section between ``<!-- bench-learned:suite -->`` and ``<!-- /bench-learned:suite -->`` of
docs/benchmarks.md is replaced (appended if missing); the rest of the file is kept. ``--small``
runs print only.

Examples
--------
Smoke run (2 mm suite, prints, writes nothing)::

    python benchmarks/bench_learned.py --small --methods tkd tikhonov

The section in docs/benchmarks.md (classical methods plus every registered learned one)::

    python benchmarks/bench_learned.py --threads 2

A method with parameters, labelled by its text::

    python benchmarks/bench_learned.py --methods tkd "tkd:threshold=0.1" "l2:regularization=3e-4"
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from torchqsm.bench import SUITE_VERSION, build_suite
from torchqsm.bench.evaluate import evaluate, load_case, markdown_table
from torchqsm.pipeline.registry import METHODS, coerce_parameter, get_method

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench-learned:suite -->", "<!-- /bench-learned:suite -->"
DEFAULT_CASES = ("baseline", "tilt-30deg", "tilt-60deg", "snr-30", "haemorrhage", "res-1x1x2mm", "b0-7T",
                 "calcification")
CLASSICAL = ("tkd", "tikhonov", "l2", "tv")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_methods() -> list[str]:
    """The classical baselines and every learned method registered now."""
    return [*CLASSICAL, *(name for name, spec in METHODS.items() if spec.kind == "learned")]


def parse_method(text: str) -> str | tuple[str, str, dict]:
    """``name`` or ``name:key=value,key=value`` (labelled by the text itself)."""
    name, _, options = text.partition(":")
    spec = get_method(name)
    if not options:
        return name
    params = {}
    for item in options.split(","):
        key, _, value = item.partition("=")
        params[key.strip()] = coerce_parameter(spec.parameter(key.strip()), value)
    return text, name, params


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


def render(rows, noise: dict[str, tuple[float, float]], index: dict, args, command: str, load: float) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    grid = "small: 2 mm" if index.get("small") else "full: 1 mm"
    noise_text = ", ".join(f"{case} {n * 1e3:.1f} ({n / f:.0%})" for case, (n, f) in noise.items())
    lines = [BEGIN, "## Dipole inversion on the evaluation suite", "",
             f"- Suite {index['version']} ({grid} baseline, seed {index['seed']}), cases: {', '.join(noise)}. "
             "Input: the true local field plus the field noise measured from each case's own 3-echo signal "
             "(weighted fit of the echo-difference phase residuals; `torchqsm.bench.evaluate`); background "
             "removal is left out, so this isolates the dipole inversion, as in the QSM challenges.",
             f"- Field noise rms in the brain (ppb, and relative to the local field's rms): {noise_text}.",
             "- Metrics in the brain mask after demeaning χ and the truth there: NRMSE and HFEN (%; lower is better), "
             "SSIM (higher is better); time = the inversion alone. Bold: best in its column. Registry defaults "
             "unless a method's label gives parameters.",
             f"- Machine: {machine(args.device)}, device {args.device}, {args.threads} torch threads; Python "
             f"{platform.python_version()}, torch {torch.__version__}; measured {date}; load average {load:.2f} "
             "before the run (other work on the machine slows the times).",
             f"- Reproduce: `{command}`"]
    for case, (n, f) in noise.items():
        if n > f:  # not acquisition noise: the input's error is larger than the field itself
            lines.append(f"- **{case}**: the measured field error ({n * 1e3:.0f} ppb) exceeds the local field "
                         f"({f * 1e3:.0f} ppb): the phase of the signal disagrees with the ground-truth field, "
                         "so this column scores that mismatch, not the inversion.")
    lines.append("")
    for metric in ("nrmse", "hfen", "ssim", "seconds"):
        lines += [markdown_table(rows, metric), ""]
    data = {"suite_version": index["version"], "small": bool(index.get("small")), "date": date,
            "threads": args.threads, "device": args.device, "torch": torch.__version__,
            "rows": [{"case": r.case, "method": r.method, "nrmse": round(r.nrmse, 3), "hfen": round(r.hfen, 3),
                      "ssim": round(r.ssim, 5), "seconds": round(r.seconds, 3)} for r in rows]}
    lines += [f"<!-- bench-data {json.dumps(data, separators=(',', ':'))} -->", END, ""]
    return "\n".join(lines)


def update_markdown(path: Path, section: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the 2 mm suite (seconds to build); print only")
    parser.add_argument("--suite-dir", type=Path, help="a built suite (default: a cache, built when missing)")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    parser.add_argument("--methods", nargs="+", help="names or name:key=value,... "
                        f"(default: {', '.join(CLASSICAL)} and every registered learned method)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument("--update-cards", action="store_true",
                        help="write each learned method's scores into its shipped model card (metrics)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [parse_method(text) for text in (args.methods or default_methods())]
    folder = args.suite_dir or default_suite_dir(args.small)
    index = ensure_suite(folder, args.cases, small=args.small, cached=args.suite_dir is None)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    noise = {}
    for case in args.cases:
        suite_input = load_case(folder / case)
        mask = suite_input.mask
        noise[case] = (suite_input.noise_rms_ppm, float(suite_input.true_local_field_ppm[mask].square().mean().sqrt()))
    log(f"{len(methods)} methods × {len(args.cases)} cases on {args.device}, {args.threads} threads ...")
    rows = evaluate(folder, methods, cases=args.cases, device=args.device)
    command = shlex.join(["python", "benchmarks/bench_learned.py", *(argv if argv is not None else sys.argv[1:])])
    section = render(rows, noise, index, args, command, load)
    print(section)
    if not (args.small or args.no_write):
        update_markdown(args.output, section)
        log(f"updated {args.output}")
    if args.update_cards and not args.small:
        for path in update_cards(rows, index):
            log(f"updated {path}")
    return 0


def update_cards(rows, index: dict) -> list[Path]:
    """Write the suite scores of each learned network (and its refinements) into its shipped card.

    Only the card's ``metrics`` change; the weights file and its SHA-256 are untouched.
    """
    from torchqsm.models import weights as weights_module
    from torchqsm.pipeline.learned import shipped_defaults

    written = []
    for architecture, name in shipped_defaults().items():
        path = weights_module.SHIPPED_DIR / f"{name}.json"
        card = json.loads(path.read_text(encoding="utf-8"))
        scores: dict[str, dict[str, dict[str, float]]] = {}
        for r in rows:  # "unet+fine:max_iterations=10" is stored as "fine:max_iterations=10"
            base, _, refinement = r.method.partition("+")
            if base == architecture:
                scores.setdefault(refinement or "network", {})[r.case] = {
                    "nrmse": round(r.nrmse, 2), "hfen": round(r.hfen, 2), "ssim": round(r.ssim, 4)}
        if not scores.get("network"):
            continue
        baseline = scores["network"].get("baseline") or next(iter(scores["network"].values()))
        card["metrics"] = {
            "suite": baseline, "headline": "suite.nrmse",
            "suite_version": index["version"], "suite_case_of_headline": "baseline" if "baseline" in
            scores["network"] else next(iter(scores["network"])),
            "suite_input": "true local field + measured multi-echo field noise (benchmarks/bench_learned.py)",
            "units": "NRMSE and HFEN in %, SSIM 0-1, in the brain mask after demeaning",
            "cases": scores,
        }
        path.write_text(json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    sys.exit(main())
