"""Tables of a bench run: one CSV row per (case, method), Markdown tables per metric.

The metric keys and their units are those of :data:`torchqsm.metrics.METRIC_DESCRIPTIONS`;
``roi_slope`` is the slope of the ROI means of the estimate on those of the truth,
``lesion_mean`` the lesion's mean χ relative to the brain mean (ppm; truth in
``lesion_mean_truth``), ``seconds`` the inversion's wall time and ``peak_memory_mib`` the
process's peak resident memory during it (on CUDA: the allocator's peak).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["COLUMNS", "TIMING_COLUMNS", "METRIC_TABLES", "csv_text", "metric_table", "markdown_report", "run_anchor"]

COLUMNS = ("case", "method", "status", "nrmse", "nrmse_demeaned", "dnrmse", "hfen", "ssim", "xsim", "psnr", "pearson",
           "roi_slope", "roi_r_squared", "lesion_mean", "lesion_mean_truth", "brain_fraction", "seconds", "peak_memory_mib",
           "error")
#: Columns that differ between two runs of the same computation.
TIMING_COLUMNS = ("seconds", "peak_memory_mib")
#: metric → (title, best is lowest, cell format)
METRIC_TABLES: dict[str, tuple[str, bool, str]] = {
    "nrmse": ("NRMSE (%)", True, "{:.1f}"),
    "nrmse_demeaned": ("NRMSE, demeaned (%)", True, "{:.1f}"),
    "dnrmse": ("dNRMSE (%)", True, "{:.1f}"),
    "hfen": ("HFEN (%)", True, "{:.1f}"),
    "ssim": ("SSIM", False, "{:.3f}"),
    "xsim": ("XSIM", False, "{:.3f}"),
    "psnr": ("PSNR (dB)", False, "{:.1f}"),
    "pearson": ("correlation", False, "{:.3f}"),
    "roi_slope": ("ROI slope", None, "{:.2f}"),
    "lesion_mean": ("lesion mean χ (ppm)", None, "{:.3f}"),
    "seconds": ("time (s)", True, "{:.2f}"),
    "peak_memory_mib": ("peak memory (MiB)", True, "{:.0f}"),
}


def run_anchor(case: str, method: str) -> str:
    """The HTML id of a run's section (letters, digits, ``-``).

    >>> run_anchor("tilt-30deg", "tkd:threshold=0.1")
    'run-tilt-30deg--tkd-threshold-0-1'
    """
    clean = ["".join(c if c.isalnum() else "-" for c in text) for text in (case, method)]
    return f"run-{clean[0]}--{clean[1]}"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else f"{value:.6g}"
    return str(value)


def csv_text(records: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    """The records as CSV (one row per run; empty cells where a value does not apply).

    >>> print(csv_text([{"case": "a", "method": "tkd", "status": "ok", "nrmse": 51.23456789}], ("case", "nrmse")), end="")
    case,nrmse
    a,51.2346
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record.get(column)) for column in columns])
    return buffer.getvalue()


def metric_table(records: Sequence[dict[str, Any]], metric: str, *, links: bool = False) -> str:
    """A Markdown table of ``metric``: a row per method, a column per case and the mean over cases.

    The best cell of each column is bold; a failed run reads "failed"; the mean is left out
    for a method with any failed run. ``links`` makes each cell a link to its run's section.

    >>> rows = [{"case": "a", "method": "tkd", "status": "ok", "nrmse": 30.0},
    ...         {"case": "a", "method": "tv", "status": "failed", "error": "boom"}]
    >>> print(metric_table(rows, "nrmse"))
    | NRMSE (%) | a | mean |
    | --- | ---: | ---: |
    | tkd | 30.0 | 30.0 |
    | tv | failed | — |
    """
    title, lowest, fmt = METRIC_TABLES[metric]
    methods = list(dict.fromkeys(r["method"] for r in records))
    cases = list(dict.fromkeys(r["case"] for r in records))
    by = {(r["method"], r["case"]): r for r in records}

    def value(method: str, case: str) -> float | None:
        record = by.get((method, case))
        if record is None or record.get("status") != "ok" or record.get(metric) is None:
            return None
        return float(record[metric])

    columns: dict[str, dict[str, float]] = {c: {m: v for m in methods if (v := value(m, c)) is not None} for c in cases}
    columns["mean"] = {m: sum(columns[c][m] for c in cases) / len(cases) for m in methods
                       if all(m in columns[c] for c in cases)}
    best = {}
    for column, cells in columns.items():
        finite = [v for v in cells.values() if math.isfinite(v)]
        if lowest is not None and len(finite) > 1:
            best[column] = fmt.format(min(finite) if lowest else max(finite))
    lines = [f"| {title} | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for method in methods:
        cells = []
        for column, values in columns.items():
            if method not in values:
                record = by.get((method, column))
                cells.append("failed" if record is not None and record.get("status") != "ok" else "—")
                continue
            text = fmt.format(values[method])
            if best.get(column) == text:
                text = f"**{text}**"
            if links and column != "mean":
                text = f"[{text}](#{run_anchor(column, method)})"
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    truth = reference_row(records, metric, cases)
    if truth:
        lines.append("| *truth* | " + " | ".join("—" if truth.get(c) is None else fmt.format(truth[c]) for c in cases)
                     + " | — |")
    return "\n".join(lines)


#: metric → the record key of the truth's value, for the tables' reference row.
REFERENCE_KEYS = {"lesion_mean": "lesion_mean_truth"}


def reference_row(records: Sequence[dict[str, Any]], metric: str, cases: Sequence[str]) -> dict[str, float | None]:
    """Case → the truth's value of ``metric`` (the lesion's true mean χ), or ``{}`` when the metric has none."""
    key = REFERENCE_KEYS.get(metric)
    if key is None:
        return {}
    out = {c: next((float(r[key]) for r in records if r["case"] == c and r.get(key) is not None), None) for c in cases}
    return out if any(v is not None for v in out.values()) else {}


def markdown_report(records: Sequence[dict[str, Any]], *, title: str = "torchqsm bench",
                    metrics: Sequence[str] = tuple(METRIC_TABLES), note: str = "") -> str:
    """Every metric table, then the failed runs with their errors, as one Markdown document."""
    parts = [f"# {title}", ""] + ([note, ""] if note else [])
    for metric in metrics:
        if metric == "lesion_mean" and not any(r.get("lesion_mean") is not None for r in records):
            continue
        parts += [metric_table(records, metric), ""]
    failed = [r for r in records if r.get("status") != "ok"]
    if failed:
        parts += ["## Failed runs", ""] + [f"- {r['method']} on {r['case']}: {r.get('error')}" for r in failed] + [""]
    return "\n".join(parts)
