#!/usr/bin/env python
"""NRMSE against the B0 tilt (the iQSM+ paper's Fig. 5) and the phase networks end to end, from one run.

Two :func:`torchqsm.bench.run_bench` calls on the evaluation suite's tilt cases (B0 tilted about the
first voxel axis by 0, 15, 30, 45, 60 and 90°):

* local-field methods (``--methods``; default ``tkd tv unet unet+oalfe xqsm xqsm+``) on each case's true
  local field plus the field noise measured from its own echoes (as ``bench_learned.py``), scored in
  the brain mask;
* phase recipes (``--recipes``; default ``iqsm-bare iqsm+-bare iqsm iqsm+ fast``: the phase networks
  alone, then as their recipes run them, with LoT data consistency) through ``torchqsm run`` on the
  case's magnitude and wrapped phase, scored in the recipe's final mask ∩ the brain mask.

It also runs the recipes on ``--end-to-end`` cases (default ``tilt-30deg haemorrhage``): NRMSE and the
haemorrhage's mean χ against the truth. Runs are cached in ``--report-dir`` (``field/`` and ``raw/``),
so a rerun computes only what is missing. Writes the section between
``<!-- bench-orientation:suite -->`` markers of docs/benchmarks.md and ``docs/figures/orientation.png``.

Example::

    python benchmarks/bench_orientation.py --suite-dir SUITE --report-dir REPORT
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
from pathlib import Path

import torch

from bench_learned import ensure_suite, log, machine, update_markdown

from torchqsm.bench.runner import run_bench

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "benchmarks.md"
FIGURE = REPO / "docs" / "figures" / "orientation.png"
BEGIN, END = "<!-- bench-orientation:suite -->", "<!-- /bench-orientation:suite -->"
TILTS = (0, 15, 30, 45, 60, 90)


def case_of(tilt: int) -> str:
    return "baseline" if tilt == 0 else f"tilt-{tilt}deg"


def figure(rows: dict[str, dict[int, float]], raw: set[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.5), dpi=120)
    for label, values in rows.items():
        tilts = sorted(values)
        ax.plot(tilts, [values[t] for t in tilts], "--o" if label in raw else "-o", label=label, markersize=4)
    ax.set_xlabel("B0 tilt (degrees, about the first voxel axis)")
    ax.set_ylabel("NRMSE demeaned (%)")
    ax.set_xticks(TILTS)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("NRMSE against B0 tilt (dashed: from raw phase)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def tilt_table(rows: dict[str, dict[int, float]], raw: set[str]) -> list[str]:
    head = "| method | input | " + " | ".join(f"{t}°" for t in TILTS) + " | 45° − 0° | worst − 0° |"
    lines = [head, "|" + " --- |" * (len(TILTS) + 4)]
    for label, values in rows.items():
        cells = [f"{values[t]:.1f}" if t in values else "–" for t in TILTS]
        delta = f"{values[45] - values[0]:+.1f}" if 0 in values and 45 in values else "–"
        worst = f"{max(values.values()) - values[0]:+.1f}" if 0 in values else "–"
        source = "raw phase" if label in raw else "local field"
        lines.append(f"| {label} | {source} | " + " | ".join(cells) + f" | {delta} | {worst} |")
    return lines


def update_phase_cards(raw) -> list[Path]:
    """Write each shipped phase network's scores (its bare recipe ``METHOD-bare`` from the raw phase, every case
    run: the weights' own output, without the recipe's refinement) into its card."""
    from torchqsm.models import weights as weights_module
    from torchqsm.pipeline.learned import shipped_defaults
    from torchqsm.pipeline.recipes import BARE_SUFFIX

    written = []
    for method, name in shipped_defaults().items():
        scores = {r["case"]: {"nrmse": round(float(r["nrmse_demeaned"]), 2), "hfen": round(float(r["hfen"]), 2),
                              "ssim": round(float(r["ssim"]), 4)}
                  for r in raw.records if r["method"] == method + BARE_SUFFIX and r.get("status") == "ok"}
        if "baseline" not in scores:
            continue
        path = weights_module.SHIPPED_DIR / f"{name}.json"
        card = json.loads(path.read_text(encoding="utf-8"))
        card["metrics"] = {
            "suite": scores["baseline"], "headline": "suite.nrmse", "suite_version": raw.suite.get("version"),
            "suite_case_of_headline": "baseline",
            "suite_input": f"magnitude and wrapped phase through `torchqsm run --recipe {method}{BARE_SUFFIX}` "
                           "(benchmarks/bench_orientation.py), scored in its final mask ∩ the brain mask",
            "units": "NRMSE (demeaned) and HFEN in %, SSIM 0-1", "cases": {"network": scores}}
        path.write_text(json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-dir", type=Path, required=True, help="built evaluation suite (missing cases built)")
    parser.add_argument("--report-dir", type=Path, required=True, help="bench report folder (run cache)")
    parser.add_argument("--methods", nargs="+", default=["tkd", "tv", "unet", "unet+oalfe", "xqsm", "xqsm+"])
    parser.add_argument("--recipes", nargs="+", default=["iqsm-bare", "iqsm+-bare", "iqsm", "iqsm+", "fast"])
    parser.add_argument("--end-to-end", nargs="+", default=["tilt-30deg", "haemorrhage"], metavar="CASE")
    parser.add_argument("--tilts", nargs="+", type=int, default=list(TILTS), choices=TILTS)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true", help="print the section, write nothing to docs/")
    parser.add_argument("--update-cards", action="store_true",
                        help="write the shipped networks' scores into their cards (phase networks: from the raw phase)")
    args = parser.parse_args(argv)

    tilt_cases = [case_of(t) for t in args.tilts]
    ensure_suite(args.suite_dir, sorted({*tilt_cases, *args.end_to_end}), small=False, cached=True)
    load = os.getloadavg()[0]
    field = run_bench(args.suite_dir, args.report_dir / "field", args.methods, cases=tilt_cases,
                      device=args.device, workers=args.workers,
                      on_record=lambda r, computed: log(f"{r['case']} {r['method']}: {r.get('nrmse_demeaned')}"))
    raw = run_bench(args.suite_dir, args.report_dir / "raw", args.recipes,
                    cases=sorted({*tilt_cases, *args.end_to_end}), source="raw", device=args.device,
                    workers=args.workers,
                    on_record=lambda r, computed: log(f"{r['case']} {r['method']} (raw): {r.get('nrmse_demeaned')}"))

    tilt_of = {case_of(t): t for t in args.tilts}
    rows: dict[str, dict[int, float]] = {}
    for label, result in ((m, field) for m in args.methods):
        rows[label] = {tilt_of[r["case"]]: float(r["nrmse_demeaned"]) for r in result.records
                       if r["method"] == label and r["case"] in tilt_of and r.get("status") == "ok"}
    for label in args.recipes:
        rows[label] = {tilt_of[r["case"]]: float(r["nrmse_demeaned"]) for r in raw.records
                       if r["method"] == label and r["case"] in tilt_of and r.get("status") == "ok"}
    failed = [*field.failed, *raw.failed]
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "benchmarks/bench_orientation.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [BEGIN, "## NRMSE against B0 tilt, and the phase networks end to end", "",
             f"- Suite {field.suite['version']} (1 mm), cases {', '.join(tilt_cases)} (B0 tilted about the first "
             "voxel axis). Local-field methods: the case's true local field plus the field noise measured from "
             "its own echoes, scored in the brain mask. Raw-phase recipes (`torchqsm run --recipe`): magnitude "
             "and wrapped phase, scored in the recipe's final mask ∩ the brain mask.",
             "- NRMSE demeaned (%), lower is better. `unet`/`xqsm` were trained with B0 within 45° of axis 3 and "
             "are rotated into their own frame beyond that; `unet+oalfe`, `xqsm+`, `iqsm`, `iqsm+` were trained "
             "over the whole sphere, the OA-LFE ones told B0 (cards: `torchqsm models`).",
             f"- Machine: {machine(args.device)}, {args.workers} worker(s), torch {torch.__version__}; {date}; "
             f"load average {load:.2f} before the run (runs reused from the cache keep their date in `bench.json`).",
             f"- Reproduce: `{command}`", "",
             "![NRMSE against B0 tilt](figures/orientation.png)", "",
             *tilt_table(rows, set(args.recipes)), ""]
    lines += ["End to end from the raw phase (`torchqsm run --recipe R` on the case's magnitude and phase):", "",
              "| recipe | case | NRMSE (%) | lesion mean χ (ppm) | truth (ppm) | time (s) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in raw.records:
        if r["case"] in args.end_to_end and r.get("status") == "ok":
            lesion = f"{r['lesion_mean']:.3f}" if r.get("lesion_mean") is not None else "–"
            truth = f"{r['lesion_mean_truth']:.3f}" if r.get("lesion_mean_truth") is not None else "–"
            lines.append(f"| {r['method']} | {r['case']} | {float(r['nrmse_demeaned']):.1f} | {lesion} | {truth} | "
                         f"{float(r['seconds']):.1f} |")
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r['method']} on {r['case']}: {r.get('error')}" for r in failed]
    data = {"date": date, "rows": rows}
    lines += ["", f"<!-- bench-data {json.dumps(data, separators=(',', ':'))} -->", END, ""]
    section = "\n".join(lines)
    print(section)
    if not args.no_write:
        figure(rows, set(args.recipes), FIGURE)
        update_markdown(OUTPUT, section, begin=BEGIN, end=END)
        log(f"updated {OUTPUT} and {FIGURE}")
    if args.update_cards:
        from bench_learned import update_cards

        for path in [*update_cards(field, script="benchmarks/bench_orientation.py"), *update_phase_cards(raw)]:
            log(f"updated {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
