#!/usr/bin/env python
"""Automatic regularization against a sweep, on the evaluation suite; and what the choice costs.

For tikhonov, l2 and tv on each case, the inversion runs with ``regularization="auto"`` and with
every value of a fixed grid (the sweep); NRMSE (%) in the brain mask after demeaning, as in
``bench_learned.py``. The table gives the sweep's best value, the automatic value and the gap in
NRMSE points; the figure (``docs/figures/regularization_sweep.png``) draws each sweep with the
automatic choice marked. The input is the case's true local field plus the field noise measured
from its own multi-echo signal (``torchqsm.bench.evaluate``), with no ``noise_ppm``: the noise is
estimated from the data, as for a user's field map. Every solve is a ``torchqsm bench`` run
(:func:`torchqsm.bench.run_bench`: ``METHOD:regularization=VALUE`` for the sweep, ``METHOD`` for the
automatic choice, whose record holds the rule, the value and the noise estimate), cached in
``--report-dir``: an interrupted sweep resumes, ``--workers N`` spreads it over Dask workers.

The runtime part times, on a 176×176×160 synthetic head-sized problem, one solve with a fixed value
against one with ``"auto"`` (median of ``--repeats``).

The section between ``<!-- bench-regularization -->`` and ``<!-- /bench-regularization -->`` of
docs/benchmarks.md is replaced (appended if missing).

Examples
--------
Everything (about 35 min on 2 cores)::

    python benchmarks/bench_regularization.py --suite-dir /tmp/suite --threads 2

Smoke run, printing only::

    python benchmarks/bench_regularization.py --small --cases baseline --methods tikhonov --no-write
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_learned import default_suite_dir, ensure_suite, machine  # noqa: E402

from torchqsm import Acquisition, invert  # noqa: E402
from torchqsm.bench.runner import parse_method, run_bench  # noqa: E402
from torchqsm.simulate import forward_field, shapes_phantom  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
FIGURE = REPO / "docs" / "figures" / "regularization_sweep.png"
BEGIN, END = "<!-- bench-regularization -->", "<!-- /bench-regularization -->"
CASES = ("baseline", "tilt-30deg", "tilt-45deg", "tilt-60deg", "snr-30", "snr-300", "res-1x1x2mm", "wm-anisotropy")
#: The sweeps: factor ~1.5-2 steps around each method's optimum on the suite, wider on the sides.
SWEEPS = {
    "tikhonov": [float(v) for v in torch.logspace(-4, 0, 17)],
    "l2": [1e-4, 3e-4, 7e-4, 1.5e-3, 3e-3, 5e-3, 8e-3, 1.5e-2, 3e-2, 1e-1],
    "tv": [3e-5, 6e-5, 1e-4, 1.5e-4, 2.2e-4, 3.3e-4, 5e-4, 7.5e-4, 1.1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _label(method: str, value: float) -> str:
    return f"{method}:regularization={value:.6g}"


def sweep(suite: Path, cases: list[str], methods: list[str], known: dict | None = None, *,
          report_dir: Path, workers: int = 1) -> list[dict]:
    """Sweep and automatic choice per (case, method), as ``torchqsm bench`` runs (cached in ``report_dir``).

    Each sweep value is the run ``METHOD:regularization=VALUE``, the automatic choice the run
    ``METHOD`` (its record holds the choice: rule, value, noise estimate). ``known`` maps (case,
    method) to a row of an earlier section whose curve is reused (same values, same data: the
    fixed-value solves do not depend on the rule), so only the automatic choice runs.
    """
    rows = []
    for name in cases:
        entries, reuse, labels = [], {}, {}
        for method in methods:
            old = (known or {}).get((name, method))
            if old is not None and [round(v, 12) for v, _ in old["curve"]] == [round(v, 12) for v in SWEEPS[method]]:
                reuse[method] = old
                log(f"{name} {method}: sweep curve reused from {old.get('curve_date', old.get('date'))}")
            else:
                for value in SWEEPS[method]:
                    entries.append(parse_method(_label(method, value)))
                    labels[method, value] = entries[-1].label
            entries.append(parse_method(method))

        def show(record, computed):
            log(f"{record['case']} {record['method']}: NRMSE {record.get('nrmse_demeaned', float('nan')):.1f} "
                f"({'computed' if computed else 'reused'}){' ' + str(record.get('error')) if record.get('error') else ''}")

        result = run_bench(suite, report_dir, entries, cases=[name], workers=workers, on_record=show)
        by_label = {r["method"]: r for r in result.records}
        failed = [r for r in result.records if r.get("status") != "ok"]
        if failed:
            raise RuntimeError(f"{name}: {failed[0]['method']} failed: {failed[0].get('error')}")
        for method in methods:
            extra = {}
            if method in reuse:
                curve = [tuple(p) for p in reuse[method]["curve"]]
                extra = {"curve_date": reuse[method].get("curve_date", reuse[method].get("date"))}
            else:
                curve = [(value, by_label[labels[method, value]]["nrmse_demeaned"]) for value in SWEEPS[method]]
            auto = by_label[method]
            choices = [c for c in auto.get("choices", []) if c.get("parameter") == "regularization"]
            if not choices:
                raise RuntimeError(f"{name} {method}: the cached run has no recorded choice (made before records "
                                   f"held them); delete {report_dir / 'runs' / name / (method + '.json')} and rerun")
            choice = choices[-1]
            best_value, best = min(curve, key=lambda p: p[1])
            rows.append({"case": name, "method": method, "curve": curve, "auto_value": choice["value"],
                         "auto_nrmse": auto["nrmse_demeaned"], "best_value": best_value, "best_nrmse": best,
                         "auto_seconds": auto["seconds"], "noise_ppm": choice.get("noise_ppm"),
                         "rule": choice["rule"], **extra})
            log(f"{name} {method}: best {best:.1f} % at {best_value:.3g}, auto {auto['nrmse_demeaned']:.1f} % at "
                f"{choice['value']:.3g}")
    return rows


def runtime(repeats: int) -> list[dict]:
    """Fixed value vs auto on a 176×176×160 grid (the shapes phantom, 1 mm, 1 % noise)."""
    chi, mask = shapes_phantom((176, 176, 160))
    field = forward_field(chi, pad=16)
    field = field + 0.01 * field[mask].std() * torch.randn(field.shape, generator=torch.Generator().manual_seed(0))
    acquisition = Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1))
    out = []
    for method, fixed in (("tikhonov", 3e-3), ("l2", 3e-3), ("tv", 2e-4)):
        times = {}
        for label, value in (("fixed", fixed), ("auto", "auto")):
            measured = []
            for _ in range(repeats):
                started = time.perf_counter()
                invert(field, mask, method, acquisition, regularization=value)
                measured.append(time.perf_counter() - started)
            times[label] = statistics.median(measured)
        out.append({"method": method, **times, "repeats": repeats,
                    "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})
        log(f"runtime {method}: fixed {times['fixed']:.2f} s, auto {times['auto']:.2f} s")
    return out


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in rows}, key=list(SWEEPS).index)
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 4.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, method in zip(axes[0], methods):
        for i, case in enumerate(cases):
            row = next((r for r in rows if r["case"] == case and r["method"] == method), None)
            if row is None:
                continue
            values, errors = zip(*row["curve"])
            ax.plot(values, errors, "-", color=colours[i % len(colours)], label=case, lw=1.2)
            ax.plot([row["auto_value"]], [row["auto_nrmse"]], "o", color=colours[i % len(colours)], ms=7, mfc="none")
        ax.set_xscale("log")
        ax.set_ylim(0, 80)
        ax.set_xlabel({"tikhonov": "λ (identity)", "l2": "λ (mm²)", "tv": "α (ppm·mm)"}[method])
        ax.set_ylabel("NRMSE (%)")
        ax.set_title(f"{method}: sweep (lines) and auto (circles)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def previous_data(path: Path, *, begin: str = BEGIN, end: str = END) -> dict | None:
    """The ``bench-data`` record of the section of ``path`` between ``begin`` and ``end`` (None when there is none)."""
    import re

    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    section = re.search(re.escape(begin) + r"(.*?)" + re.escape(end), text, re.S)
    found = re.search(r"<!-- bench-data (\{.*?\}) -->", section.group(1)) if section else None
    return json.loads(found.group(1)) if found else None


def merge(rows: list[dict], timing: list[dict], old: dict | None) -> tuple[list[dict], list[dict]]:
    """``--merge``: the new rows replace the old rows of the same (case, method); the others stay,
    each with the date (and suite version) it was measured on."""
    if not old:
        return rows, timing
    fresh = {(r["case"], r["method"]) for r in rows}
    kept = [dict(r, date=r.get("date", old.get("date")), suite=r.get("suite", old.get("suite", "1.2")))
            for r in old.get("rows", []) if (r["case"], r["method"]) not in fresh]
    order = {c: i for i, c in enumerate(CASES)}
    merged = sorted(kept + rows, key=lambda r: (order.get(r["case"], len(order)), list(SWEEPS).index(r["method"])))
    return merged, timing or old.get("runtime", [])


def render(rows, timing, index, args, command: str, commands: list[str] | None = None) -> str:
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commands = list(dict.fromkeys([*(commands or []), command]))
    lines = [BEGIN, "## Automatic regularization", "",
             f"- Suite {index['version']} ({'2 mm' if index.get('small') else '1 mm'} baseline), input as in the "
             "suite table (true local field plus the measured field noise); no `noise_ppm` given, so the noise is "
             "estimated from the data. Rules (`torchqsm.inversion.regularization`): tikhonov GCV over the mask's voxels; "
             "l2 the same GCV of the closed-form gradient-Tikhonov problem; tv α = κ σ̂ h̄ with σ̂ the in-mask residual of the "
             "GCV-Tikhonov fit.",
             f"- Sweep values: {', '.join(f'{m}: {len(v)} values {v[0]:g}–{v[-1]:g}' for m, v in SWEEPS.items())}.",
             f"- Machine: {machine('cpu')}, {args.threads} torch threads; torch {torch.__version__}; measured {date}.",
             "- Reproduce (each row's date and suite version say which run measured it): "
             + "; ".join(f"`{c}`" for c in commands), "",
             "| case | method | sweep best (value) | auto (value) | gap (points) | measured (suite) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        gap = r["auto_nrmse"] - r["best_nrmse"]
        lines.append(f"| {r['case']} | {r['method']} | {r['best_nrmse']:.1f} ({r['best_value']:.2g}) | "
                     f"{r['auto_nrmse']:.1f} ({r['auto_value']:.2g}) | {gap:+.1f} | "
                     f"{str(r.get('date', date))[:10]} ({r.get('suite', index['version'])})"
                     + (f"; sweep {str(r['curve_date'])[:10]}" if r.get("curve_date") else "") + " |")
    if timing:
        lines += ["", "Runtime on 176×176×160 (shapes phantom, 1 mm, 1 % noise; median of "
                  f"{timing[0].get('repeats', args.repeats)}, measured {str(timing[0].get('date', date))[:10]}; "
                  "the auto time includes the choice):", "",
                  "| method | fixed value (s) | auto (s) | ratio |", "| --- | --- | --- | --- |"]
        for t in timing:
            lines.append(f"| {t['method']} | {t['fixed']:.2f} | {t['auto']:.2f} | {t['auto'] / t['fixed']:.2f} |")
    if rows:
        lines += ["", f"![sweeps](figures/{FIGURE.name})"]
    data = {"date": date, "suite": index["version"], "commands": commands, "rows": rows, "runtime": timing}
    lines += ["", f"<!-- bench-data {json.dumps(data, separators=(',', ':'))} -->", END, ""]
    return "\n".join(lines)


def update_markdown(path: Path, section: str, *, begin: str = BEGIN, end: str = END) -> None:
    """Replace the section between ``begin`` and ``end`` of ``path`` (append it if missing)."""
    import re

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: section, text, count=1) if pattern.search(text) else \
        text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-dir", type=Path, help="a built suite (default: the cache)")
    parser.add_argument("--small", action="store_true", help="2 mm suite")
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--methods", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report-dir", type=Path,
                        help="the bench run cache (default: a folder beside the suite's cache, one per suite version)")
    parser.add_argument("--workers", type=int, default=1, help="Dask workers for the sweep (1: serial, here)")
    parser.add_argument("--repeats", type=int, default=3, help="runtime repeats (0: skip the runtime part)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--reuse-curves", action="store_true",
                        help="take each sweep curve from the current section when it has the same case, method and "
                             "values (the fixed-value solves do not depend on the rule): only the automatic choice runs")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of the current section that this run does not measure (each keeps its date)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = args.suite_dir or default_suite_dir(args.small)
    index = ensure_suite(folder, list(args.cases), small=args.small, cached=args.suite_dir is None)
    known = None
    if args.reuse_curves:
        old_data = previous_data(args.output) or {}
        known = {(r["case"], r["method"]): dict(r, date=r.get("date", old_data.get("date")))
                 for r in old_data.get("rows", [])}
    report_dir = args.report_dir or folder.parent / f"bench-regularization-{index['version']}"
    rows = sweep(folder, list(args.cases), list(args.methods), known, report_dir=report_dir, workers=args.workers)
    timing = runtime(args.repeats) if args.repeats > 0 else []
    command = shlex.join(["python", "benchmarks/bench_regularization.py", *(argv if argv is not None else sys.argv[1:])])
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [dict(r, date=now, suite=index["version"]) for r in rows]
    commands: list[str] = []
    if args.merge:
        old = previous_data(args.output)
        rows, timing = merge(rows, timing, old)
        commands = list((old or {}).get("commands", []))
    section = render(rows, timing, index, args, command, commands)
    if args.no_write or args.small:
        print(section)
        return 0
    figure(rows, FIGURE)
    update_markdown(args.output, section)
    log(f"wrote {args.output} and {FIGURE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
