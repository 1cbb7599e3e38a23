"""The report of a bench run: tables, figures and one self-contained HTML page.

:func:`write_report` writes into the report folder (beside the cached ``runs/``)::

    results.csv           one row per (case, method): every metric, time, memory, status, error
    results.md            one Markdown table per metric (methods × cases and their mean), failures
    bench.json            the suite index, the cases and every run record
    figures/<case>/slices.png        truth and every method, χ and error on one scale each
    figures/<case>/<method>.png      one run: χ, error, ROI means against the truth
    figures/nrmse_vs_tilt.png, figures/nrmse_vs_snr.png   where the suite has such cases
    figures/runtime_vs_nrmse.png
    index.html            the tables and every figure, embedded as data URIs: the page opens
                          offline, alone, and makes no request; each table row links to its run

Every file is written atomically.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io._atomic import write_atomically
from .figures import case_figure, run_figure, runtime_figure, trend_figure
from .runner import BenchResult
from .runs import load_bench_case, run_file_stem
from .tables import COLUMNS, METRIC_TABLES, csv_text, markdown_report, reference_row, run_anchor

__all__ = ["ReportFiles", "write_report"]

_TABLE_COLUMNS = ("nrmse", "nrmse_demeaned", "dnrmse", "hfen", "ssim", "xsim", "psnr", "pearson", "roi_slope",
                  "lesion_mean", "seconds", "peak_memory_mib")
_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:80em}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #bbb;padding:2px 6px;font-size:90%}td.n{text-align:right}tr.failed td{background:#fde8e8}
img{max-width:100%;border:1px solid #ddd}section.run{border-top:1px solid #ccc;margin-top:1em}
.best{font-weight:bold}code{font-size:85%}"""


@dataclass
class ReportFiles:
    """The files :func:`write_report` wrote."""

    html: Path
    csv: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)


def _text(path: Path, text: str) -> Path:
    return write_atomically(path, lambda target: target.write_text(text, encoding="utf-8"), overwrite=True)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _format(metric: str, value: Any) -> str:
    if value is None:
        return ""
    return METRIC_TABLES[metric][2].format(value) if metric in METRIC_TABLES else str(value)


def _figures(result: BenchResult, out: Path) -> tuple[dict[str, Path], dict[str, Path], list[Path]]:
    """Write every figure; return case → slices figure, run anchor → run figure, and the summary figures."""
    case_figures, run_figures = {}, {}
    folder = out / "figures"
    for case in result.cases:
        records = [r for r in result.records if r["case"] == case["name"] and r.get("status") == "ok"]
        if not records:
            continue
        loaded = load_bench_case(case["folder"], bids_key=case.get("bids_key"))[0]
        truth, mask = loaded.chi_ppm.numpy(), loaded.mask.numpy()
        estimates = {}
        for record in records:
            chi = np.load(out / "runs" / run_file_stem(case["name"]) / f"{run_file_stem(record['method'])}.npy")
            estimates[record["method"]] = chi
            run_figures[run_anchor(case["name"], record["method"])] = run_figure(
                folder / run_file_stem(case["name"]) / f"{run_file_stem(record['method'])}.png", record, truth, mask,
                chi, loaded.voxel_size_mm)
        case_figures[case["name"]] = case_figure(folder / run_file_stem(case["name"]) / "slices.png", case["name"],
                                                 truth, mask, estimates, loaded.voxel_size_mm)
    summary = [trend_figure(folder / "nrmse_vs_tilt.png", result.records, result.cases, parameter="tilt_deg",
                            varies="b0_tilt", xlabel="B0 tilt (degrees)"),
               trend_figure(folder / "nrmse_vs_snr.png", result.records, result.cases, parameter="snr",
                            varies="snr", xlabel="peak SNR", log_x=True),
               runtime_figure(folder / "runtime_vs_nrmse.png", result.records)]
    return case_figures, run_figures, [p for p in summary if p is not None]


def _metric_html(records: Sequence[dict[str, Any]], metric: str) -> str:
    title, lowest, _ = METRIC_TABLES[metric]
    methods = list(dict.fromkeys(r["method"] for r in records))
    cases = list(dict.fromkeys(r["case"] for r in records))
    by = {(r["method"], r["case"]): r for r in records}
    best = {}
    for case in cases:
        values = [by[m, case][metric] for m in methods if (m, case) in by and by[m, case].get("status") == "ok"
                  and by[m, case].get(metric) is not None]
        if lowest is not None and len(values) > 1:
            best[case] = min(values) if lowest else max(values)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cases)
    rows = []
    for method in methods:
        cells = []
        for case in cases:
            record = by.get((method, case))
            if record is None:
                cells.append("<td>—</td>")
            elif record.get("status") != "ok":
                cells.append(f'<td><a href="#{run_anchor(case, method)}">failed</a></td>')
            else:
                value = record.get(metric)
                mark = ' best' if value is not None and best.get(case) == value else ''
                cells.append(f'<td class="n{mark}"><a href="#{run_anchor(case, method)}">'
                             f'{html.escape(_format(metric, value))}</a></td>')
        rows.append(f"<tr><th>{html.escape(method)}</th>{''.join(cells)}</tr>")
    truth = reference_row(records, metric, cases)
    if truth:
        cells = "".join("<td>—</td>" if truth.get(c) is None else f'<td class="n">{html.escape(_format(metric, truth[c]))}</td>'
                        for c in cases)
        rows.append(f"<tr><th><em>truth</em></th>{cells}</tr>")
    return f"<h3>{html.escape(title)}</h3><table><tr><th>method</th>{head}</tr>{''.join(rows)}</table>"


def _runs_html(records: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(METRIC_TABLES[c][0])}</th>" for c in _TABLE_COLUMNS)
    rows = []
    for r in records:
        anchor = run_anchor(r["case"], r["method"])
        if r.get("status") == "ok":
            cells = "".join(f'<td class="n">{html.escape(_format(c, r.get(c)))}</td>' for c in _TABLE_COLUMNS)
        else:
            cells = f'<td colspan="{len(_TABLE_COLUMNS)}">failed: {html.escape(str(r.get("error")))}</td>'
        rows.append(f'<tr class="{"ok" if r.get("status") == "ok" else "failed"}"><td>{html.escape(r["case"])}</td>'
                    f'<td><a href="#{anchor}">{html.escape(r["method"])}</a></td>{cells}</tr>')
    return f"<table><tr><th>case</th><th>method</th>{head}</tr>{''.join(rows)}</table>"


def input_note(source: str, cases: Sequence[dict[str, Any]] = ()) -> str:
    """What the runs started from, in a sentence or two (``cases``: the bench's case records)."""
    if source == "raw":
        return ("Input: each case's multi-echo magnitude and wrapped phase, through the named `torchqsm run` "
                "recipe (masking, unwrapping, echo combination, background removal, inversion, referencing); "
                "scored in the recipe's final mask ∩ the true brain mask (`brain_fraction` in each record).")
    bids = [c for c in cases if c.get("bids_key")]
    if not bids:
        return ("Input: each case's true local field plus the field noise measured from its own echoes; every "
                "method inverts it in the true brain mask.")
    kinds = []
    for field_kind, noise in dict.fromkeys((c.get("input", ""), c.get("noise", "")) for c in bids):
        names = [c["name"] for c in bids if (c.get("input", ""), c.get("noise", "")) == (field_kind, noise)]
        added = ("plus the field noise measured from its echoes against the true total field" if noise == "measured"
                 else "without noise (the dataset has no true total field map to measure it against)")
        kinds.append(f"{', '.join(names)}: the {field_kind} {added}")
    return ("Input (BIDS dataset, truth under derivatives/): " + "; ".join(kinds) + ". Every method inverts it in "
            "the true brain mask; `--from raw` runs the recipes on the measured magnitude and phase instead.")


def _page(result: BenchResult, case_figures: dict[str, Path], run_figures: dict[str, Path],
          summary: Sequence[Path]) -> str:
    records = result.records
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    suite = result.suite
    body = [f"<h1>torchqsm bench: {html.escape(str(suite.get('name', '')))} "
            f"{html.escape(str(suite.get('version', '')))}</h1>",
            f"<p>{len(records)} runs ({len(result.computed)} computed now, {len(result.reused)} reused), "
            f"{len(result.failed)} failed; {html.escape(date)}. χ and errors are compared after removing each map's "
            "mean in the brain mask where the metric says so (NRMSE demeaned, figures).</p>",
            f"<p>{html.escape(input_note(result.source, result.cases))}</p>",
            "<h2>Summary figures</h2>"]
    body += [f'<p><img alt="{html.escape(p.stem)}" src="{_data_uri(p)}"></p>' for p in summary]
    body.append("<h2>Tables</h2><p>Each cell links to its run.</p>")
    for metric in ("nrmse", "nrmse_demeaned", "hfen", "ssim", "xsim", "roi_slope", "seconds"):
        body.append(_metric_html(records, metric))
    body += ["<h2>All runs</h2>", _runs_html(records)]
    for case in result.cases:
        name = case["name"]
        body.append(f'<h2 id="case-{run_file_stem(name)}">Case {html.escape(name)}</h2>')
        if name in case_figures:
            body.append(f'<p><img alt="slices of {html.escape(name)}" src="{_data_uri(case_figures[name])}"></p>')
        for r in (r for r in records if r["case"] == name):
            anchor = run_anchor(name, r["method"])
            body.append(f'<section class="run" id="{anchor}"><h3>{html.escape(r["method"])} on {html.escape(name)}</h3>')
            if r.get("status") != "ok":
                body.append(f"<p>failed: <code>{html.escape(str(r.get('error')))}</code></p>")
            elif anchor in run_figures:
                body.append(f'<p><img alt="{html.escape(anchor)}" src="{_data_uri(run_figures[anchor])}"></p>')
            params = json.dumps(r.get("recipe") or r.get("params") or {}, sort_keys=True)
            if r.get("brain_fraction") is not None:
                body.append(f"<p>scored in {100 * r['brain_fraction']:.1f} % of the brain (the recipe's mask)</p>")
            body.append(f"<p>parameters <code>{html.escape(params)}</code>, device {html.escape(str(r.get('device')))},"
                        f" key <code>{html.escape(str(r.get('key'))[:16])}</code></p></section>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>torchqsm bench</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(result: BenchResult, *, figures: bool = True) -> ReportFiles:
    """Write the tables, the figures and ``index.html`` of ``result`` into its report folder.

    Parameters
    ----------
    result
        What :func:`~torchqsm.bench.runner.run_bench` returned.
    figures
        Draw the figures (the page then shows tables only without).

    Returns
    -------
    ReportFiles
        The paths written.
    """
    out = result.report_dir
    csv_path = _text(out / "results.csv", csv_text(result.records, COLUMNS))
    md_path = _text(out / "results.md", markdown_report(result.records, title=f"torchqsm bench: {out.name}",
                                                                 note=input_note(result.source, result.cases)))
    _text(out / "bench.json", json.dumps({"suite": result.suite, "source": result.source, "cases": result.cases,
                                          "runs": result.records},
                                         indent=1, default=str) + "\n")
    case_figures, run_figures, summary = _figures(result, out) if figures else ({}, {}, [])
    page = _text(out / "index.html", _page(result, case_figures, run_figures, summary))
    written = [*case_figures.values(), *run_figures.values(), *summary]
    return ReportFiles(page, csv_path, md_path, written)
