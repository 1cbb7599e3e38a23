#!/usr/bin/env python
"""Automatic stopping rules and refinement weights against their curves, on the evaluation suite.

The rules of issue 12 beyond tikhonov, l2 and tv (``bench_regularization.py``):

* ``ndi``: the discrepancy principle stop (``tolerance="auto"``) against the whole NRMSE-per-iteration
  curve of one 300-iteration run and the former fixed rule (relative update ≤ 3e-4);
* ``dfqsm`` on the shipped U-Net's χ: the discrepancy principle stop against the curve of one
  200-iteration run and the paper's rule (relative gradient ≤ 0.11);
* ``dll2`` on the shipped U-Net's χ: GCV of λ against a sweep and the former fixed 0.01;
* ``medi`` (opt-in, slow): λ = 1/(κ σ̂ h̄) against a sweep and the former fixed 2000. The magnitude
  is the case's first echo.

Input and score as in ``bench_learned.py``: the true local field plus the measured field noise,
NRMSE (%) in the brain mask after demeaning. No ``noise_ppm`` is given: the noise is estimated
from the field, as for a user's field map.

The section between ``<!-- bench-stopping-rules -->`` and ``<!-- /bench-stopping-rules -->`` of
docs/benchmarks.md is replaced (appended if missing).

Examples
--------
::

    python benchmarks/bench_stopping_rules.py --suite-dir /tmp/suite --threads 2
    python benchmarks/bench_stopping_rules.py --suite-dir /tmp/suite --cases baseline --methods medi --no-write
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learned import default_suite_dir, ensure_suite, machine  # noqa: E402
from bench_regularization import update_markdown  # noqa: E402

from torchqsm import invert  # noqa: E402
from torchqsm.bench.evaluate import load_case  # noqa: E402
from torchqsm.inversion.regularization import collect_choices  # noqa: E402
from torchqsm.io import load_gre  # noqa: E402
from torchqsm.metrics import nrmse  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench-stopping-rules -->", "<!-- /bench-stopping-rules -->"
CASES = ("baseline", "tilt-30deg", "snr-30", "snr-300", "wm-anisotropy")
METHODS = ("ndi", "dfqsm", "dll2")
DLL2_SWEEP = [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0]
MEDI_SWEEP = [500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0]
FORMER = {"ndi": "relative update 3e-4", "dfqsm": "relative gradient 0.11", "dll2": "0.01", "medi": "2000"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def score(chi: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    estimate = (chi.double() - chi.double()[mask].mean()) * mask
    reference = (truth.double() - truth.double()[mask].mean()) * mask
    return float(nrmse(estimate, reference, mask))


def iterative(case, method: str, chi0: torch.Tensor | None) -> dict:
    """One fixed-length run scored every iteration, the former rule read off it, and the auto run."""
    curve: list[tuple[int, float]] = []
    former_iteration: list[int] = []
    former_threshold = {"ndi": 3e-4, "dfqsm": 0.11}[method]

    def record(status) -> bool:  # scoring costs more than an iteration: every one up to 30, then every 10th
        if status.iteration <= 30 or status.iteration % 10 == 0:
            curve.append((status.iteration, score(status.solution * case.mask, case.chi_ppm, case.mask)))
        if not former_iteration and status.residual <= former_threshold:
            former_iteration.append(status.iteration)
        return False

    limit = {"ndi": 300, "dfqsm": 200}[method]
    run = (lambda **kw: invert(case.local_field_ppm, case.mask, "ndi", case.acquisition, **kw)) if chi0 is None \
        else (lambda **kw: _refine(method, chi0, case, **kw))
    run(tolerance=0.0, max_iterations=limit, callback=record)
    seen: list[int] = []
    with collect_choices() as made:
        chi = run(callback=lambda s: seen.append(s.iteration) and False)
    auto = score(chi, case.chi_ppm, case.mask)
    best_iteration, best = min(curve, key=lambda p: p[1])
    stop = former_iteration[0] if former_iteration else limit
    former = min(curve, key=lambda p: abs(p[0] - stop))[1]  # the scored iteration nearest the former rule's stop
    return {"case": case.name, "method": method, "curve": curve, "best_value": best_iteration, "best_nrmse": best,
            "auto_value": seen[-1] if seen else 0, "auto_nrmse": auto, "former_value": stop, "former_nrmse": former,
            "noise_ppm": made[-1].noise_ppm, "rule": made[-1].rule, "unit": "iterations"}


def _refine(method: str, chi0: torch.Tensor, case, **params) -> torch.Tensor:
    from torchqsm.refine import dfqsm, dll2

    function = {"dfqsm": dfqsm, "dll2": dll2}[method]
    return function(chi0, case.local_field_ppm, case.mask, case.acquisition, **params)


def swept(case, method: str, chi0: torch.Tensor | None, values: list[float], former_value: float,
          magnitude: torch.Tensor | None = None) -> dict:
    def run(value):
        if method == "dll2":
            return _refine("dll2", chi0, case, regularization=value)
        return invert(case.local_field_ppm, case.mask, method, case.acquisition, regularization=value,
                      magnitude=magnitude)

    curve = []
    for value in values:
        curve.append((value, score(run(value), case.chi_ppm, case.mask)))
        log(f"  {case.name} {method} {value:g}: {curve[-1][1]:.1f} %")
    with collect_choices() as made:
        auto = score(run("auto"), case.chi_ppm, case.mask)
    best_value, best = min(curve, key=lambda p: p[1])
    former = dict(curve)[former_value] if former_value in dict(curve) else score(run(former_value), case.chi_ppm,
                                                                                  case.mask)
    return {"case": case.name, "method": method, "curve": curve, "best_value": best_value, "best_nrmse": best,
            "auto_value": made[-1].value, "auto_nrmse": auto, "former_value": former_value, "former_nrmse": former,
            "noise_ppm": made[-1].noise_ppm, "rule": made[-1].rule, "unit": "lambda"}


def measure(suite: Path, cases: list[str], methods: list[str]) -> list[dict]:
    rows = []
    for name in cases:
        case = load_case(suite / name)
        chi0 = invert(case.local_field_ppm, case.mask, "unet", case.acquisition) \
            if {"dfqsm", "dll2"} & set(methods) else None
        if chi0 is not None:
            log(f"{name} unet: {score(chi0, case.chi_ppm, case.mask):.1f} %")
        for method in methods:
            if method == "ndi":
                row = iterative(case, "ndi", None)
            elif method == "dfqsm":
                row = iterative(case, "dfqsm", chi0)
            elif method == "dll2":
                row = swept(case, "dll2", chi0, DLL2_SWEEP, 0.01)
            else:
                anat = suite / name / "sub-01" / "anat"
                gre = load_gre(sorted(anat.glob("*_part-mag_*.nii.gz")), sorted(anat.glob("*_part-phase_*.nii.gz")))
                magnitude = torch.as_tensor(gre.magnitude[0]).float()
                row = swept(case, "medi", None, MEDI_SWEEP, 2000.0, magnitude=magnitude)
            rows.append(row)
            log(f"{name} {method}: best {row['best_nrmse']:.1f} % at {row['best_value']:g}, auto "
                f"{row['auto_nrmse']:.1f} % at {row['auto_value']:g}, former {row['former_nrmse']:.1f} %")
    return rows


def render(rows, index, args, command: str) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "## Automatic stopping rules and refinement weights", "",
             f"- Suite {index['version']} ({'2 mm' if index.get('small') else '1 mm'} baseline), input as in the "
             "suite table; no `noise_ppm` given. ndi and dfqsm: the discrepancy principle (stop when the in-mask "
             "residual rms reaches σ̂, the in-mask residual of the GCV-Tikhonov fit as for tv) against the NRMSE of every iteration of one long "
             "run (value = iterations); dll2: GCV of λ on f − Dχ₀; medi: λ = 1/(κ σ̂ h̄). dfqsm and dll2 refine "
             "the shipped U-Net's χ.",
             f"- Machine: {machine('cpu')}, {args.threads} torch threads; torch {torch.__version__}; measured {date}.",
             f"- Reproduce: `{command}`", "",
             "| case | method | best (value) | auto (value) | gap (points) | former default (value) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        gap = r["auto_nrmse"] - r["best_nrmse"]
        lines.append(f"| {r['case']} | {r['method']} | {r['best_nrmse']:.1f} ({r['best_value']:.3g}) | "
                     f"{r['auto_nrmse']:.1f} ({r['auto_value']:.3g}) | {gap:+.1f} | "
                     f"{r['former_nrmse']:.1f} ({r['former_value']:.3g}) |")
    data = {"date": date, "rows": rows}
    lines += ["", f"<!-- bench-data {json.dumps(data, separators=(',', ':'))} -->", END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-dir", type=Path, help="a built suite (default: the cache)")
    parser.add_argument("--small", action="store_true", help="2 mm suite")
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=[*METHODS, "medi"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.suite_dir or default_suite_dir(args.small)
    index = ensure_suite(folder, list(args.cases), small=args.small, cached=args.suite_dir is None)
    rows = measure(folder, list(args.cases), list(args.methods))
    command = shlex.join(["python", "benchmarks/bench_stopping_rules.py", *(argv if argv is not None else sys.argv[1:])])
    section = render(rows, index, args, command)
    print(section)
    if not (args.no_write or args.small):
        update_markdown(args.output, section, begin=BEGIN, end=END)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
