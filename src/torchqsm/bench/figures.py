"""PNG figures of a bench run (matplotlib, no display needed).

* :func:`case_figure`: orthogonal slices of the truth and of every method's χ on one case,
  each with its error map; χ panels share one grey scale, error panels one diverging scale.
* :func:`run_figure`: one run's χ and error slices and its ROI means against the truth.
* :func:`trend_figure`: a metric of every method against a case parameter (B0 tilt, SNR).
* :func:`runtime_figure`: mean runtime against mean NRMSE, one point per method.

χ is relative (the suite's truth fixes no reference), so maps and errors are shown after
removing each map's mean in the brain mask, as the demeaned NRMSE scores them. Every
figure is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..io._atomic import write_atomically

__all__ = ["case_figure", "run_figure", "trend_figure", "runtime_figure", "demeaned"]

_DPI = 80


def demeaned(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``volume`` minus its mean in ``mask``, zero outside."""
    values = np.asarray(volume, dtype=np.float64)
    return np.where(mask, values - values[mask].mean(), 0.0).astype(np.float32)


def _centre(mask: np.ndarray) -> tuple[int, int, int]:
    index = np.argwhere(mask)
    if index.size == 0:
        return tuple(s // 2 for s in mask.shape)  # type: ignore[return-value]
    return tuple(int(v) for v in (index.min(0) + index.max(0)) // 2)  # type: ignore[return-value]


def _mosaic(volume: np.ndarray, centre: Sequence[int], voxel: Sequence[float]) -> np.ndarray:
    """Axial, coronal and sagittal slices through ``centre`` side by side, square pixels, NaN between.

    One image per row keeps the figures quick to draw (few axes); each slice is repeated
    along an axis whose voxels are coarser, so anatomy keeps its proportions.
    """
    i, j, k = centre
    finest = min(voxel)
    repeat = [max(1, round(h / finest)) for h in voxel]

    def plane(image: np.ndarray, a: int, b: int) -> np.ndarray:
        return np.repeat(np.repeat(image, repeat[a], 0), repeat[b], 1).T  # rows: second axis, shown upwards

    planes = [plane(volume[:, :, k], 0, 1), plane(volume[:, j, :], 0, 2), plane(volume[i, :, :], 1, 2)]
    height = max(p.shape[0] for p in planes)
    gap = np.full((height, 2), np.nan, dtype=np.float32)
    padded = [np.vstack([p, np.full((height - p.shape[0], p.shape[1]), np.nan, dtype=np.float32)]) for p in planes]
    return np.hstack([padded[0], gap, padded[1], gap, padded[2]])


def _save(figure: Figure, path: str | Path) -> Path:
    return write_atomically(path, lambda target: figure.savefig(target, format="png", dpi=_DPI), overwrite=True)


def _scales(truth: np.ndarray, errors: Sequence[np.ndarray], mask: np.ndarray) -> tuple[float, float]:
    chi = float(np.percentile(np.abs(truth[mask]), 99.5)) or 1.0
    pooled = np.concatenate([np.abs(e[mask]) for e in errors]) if errors else np.zeros(1)
    return chi, float(np.percentile(pooled, 99.5)) or chi


def _show(axis, image: np.ndarray, limit: float, cmap: str, label: str = ""):
    shown = axis.imshow(image, cmap=cmap, vmin=-limit, vmax=limit, origin="lower", interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(False)
    if label:
        axis.set_ylabel(label, fontsize=8)
    return shown


def _colorbar(figure: Figure, image, box: Sequence[float], label: str) -> None:
    bar = figure.colorbar(image, cax=figure.add_axes(box))
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)


def case_figure(path: str | Path, case: str, truth: np.ndarray, mask: np.ndarray, estimates: dict[str, np.ndarray],
                voxel_size_mm: Sequence[float]) -> Path:
    """Truth and every method's χ (ppm) on one case, with error maps on one colour scale.

    Parameters
    ----------
    truth, mask
        Ground-truth χ (ppm) and brain mask, ``(X, Y, Z)``.
    estimates
        Method label → χ (ppm), ``(X, Y, Z)``.
    """
    mask = np.asarray(mask, dtype=bool)
    reference = demeaned(truth, mask)
    maps = {label: demeaned(chi, mask) for label, chi in estimates.items()}
    errors = {label: np.where(mask, chi - reference, 0.0) for label, chi in maps.items()}
    chi_limit, error_limit = _scales(reference, list(errors.values()), mask)
    centre = _centre(mask)
    truth_image = _mosaic(reference, centre, voxel_size_mm)
    aspect = truth_image.shape[0] / truth_image.shape[1]
    rows = 1 + len(maps)
    height = rows * 4.3 * aspect + 0.5
    figure = Figure(figsize=(10, height))
    figure.subplots_adjust(left=0.04, right=0.9, bottom=0.02, top=1 - 0.4 / height, wspace=0.03, hspace=0.06)
    axes = figure.subplots(rows, 2, squeeze=False)
    chi_image = _show(axes[0, 0], truth_image, chi_limit, "gray", "truth")
    axes[0, 1].set_axis_off()
    error_image = None
    for r, (label, chi) in enumerate(maps.items(), start=1):
        _show(axes[r, 0], _mosaic(chi, centre, voxel_size_mm), chi_limit, "gray", label)
        error_image = _show(axes[r, 1], _mosaic(errors[label], centre, voxel_size_mm), error_limit, "RdBu_r")
    _colorbar(figure, chi_image, (0.915, 0.55, 0.012, 0.35), "χ (ppm, demeaned)")
    if error_image is not None:
        _colorbar(figure, error_image, (0.915, 0.08, 0.012, 0.35), "χ − truth (ppm)")
    figure.suptitle(f"{case}: χ (left) and χ − truth (right), one scale each", fontsize=10)
    return _save(figure, path)


def run_figure(path: str | Path, record: dict[str, Any], truth: np.ndarray, mask: np.ndarray, chi: np.ndarray,
               voxel_size_mm: Sequence[float]) -> Path:
    """One run: χ and error slices, and the ROI means of the estimate against the truth's."""
    mask = np.asarray(mask, dtype=bool)
    reference = demeaned(truth, mask)
    estimate = demeaned(chi, mask)
    error = np.where(mask, estimate - reference, 0.0)
    chi_limit, error_limit = _scales(reference, [error], mask)
    centre = _centre(mask)
    figure = Figure(figsize=(10, 4))
    left = figure.add_axes((0.04, 0.52, 0.56, 0.38))
    chi_image = _show(left, _mosaic(estimate, centre, voxel_size_mm), chi_limit, "gray", "χ")
    lower = figure.add_axes((0.04, 0.06, 0.56, 0.38))
    error_image = _show(lower, _mosaic(error, centre, voxel_size_mm), error_limit, "RdBu_r", "χ − truth")
    _colorbar(figure, chi_image, (0.61, 0.55, 0.01, 0.32), "ppm")
    _colorbar(figure, error_image, (0.61, 0.09, 0.01, 0.32), "ppm")
    scatter = figure.add_axes((0.74, 0.14, 0.24, 0.72))
    rows = record.get("roi") or []
    if rows:
        x = np.array([row["mean_reference"] for row in rows])
        y = np.array([row["mean_estimate"] for row in rows])
        scatter.scatter(x, y, s=14)
        low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        scatter.plot([low, high], [low, high], color="0.6", linewidth=0.8)
        slope = record.get("roi_slope")
        scatter.set_title(f"ROI means, slope {slope:.2f}" if slope is not None else "ROI means", fontsize=9)
    scatter.set_xlabel("truth (ppm)", fontsize=8)
    scatter.set_ylabel("estimate (ppm)", fontsize=8)
    scatter.tick_params(labelsize=7)
    figure.suptitle(f"{record['method']} on {record['case']}: NRMSE {record['nrmse']:.1f} %", fontsize=10)
    return _save(figure, path)


def trend_figure(path: str | Path, records: Sequence[dict[str, Any]], cases: Sequence[dict[str, Any]], *,
                 parameter: str, varies: str, xlabel: str, metric: str = "nrmse", log_x: bool = False) -> Path | None:
    """``metric`` of every method against a case parameter over the baseline and the cases that vary it.

    Returns ``None`` (writes nothing) when fewer than two such cases were run.
    """
    chosen = {c["name"]: float(c[parameter]) for c in cases
              if c.get("varies") in ("baseline", varies) and c.get(parameter) is not None}
    if len(chosen) < 2:
        return None
    figure = Figure(figsize=(5.5, 3.6))
    figure.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.95)
    axis = figure.add_subplot()
    for method in dict.fromkeys(r["method"] for r in records):
        points = sorted((chosen[r["case"]], r[metric]) for r in records
                        if r["method"] == method and r["case"] in chosen and r.get("status") == "ok"
                        and r.get(metric) is not None and math.isfinite(r[metric]))
        if points:
            axis.plot(*zip(*points), marker="o", label=method)
    if log_x:
        axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(f"{metric.upper()} (%)" if metric in ("nrmse", "hfen") else metric)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    return _save(figure, path)


def runtime_figure(path: str | Path, records: Sequence[dict[str, Any]], *, metric: str = "nrmse") -> Path | None:
    """Mean inversion time (s) against mean ``metric`` over the cases, one point per method."""
    figure = Figure(figsize=(5.5, 3.6))
    figure.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.95)
    axis = figure.add_subplot()
    drawn = 0
    for method in dict.fromkeys(r["method"] for r in records):
        ok = [r for r in records if r["method"] == method and r.get("status") == "ok" and r.get("seconds")]
        if not ok:
            continue
        seconds = float(np.mean([r["seconds"] for r in ok]))
        value = float(np.mean([r[metric] for r in ok]))
        axis.scatter([seconds], [value], s=24)
        axis.annotate(method, (seconds, value), fontsize=7, xytext=(3, 3), textcoords="offset points")
        drawn += 1
    if not drawn:
        return None
    axis.set_xscale("log")
    axis.set_xlabel("mean inversion time (s)")
    axis.set_ylabel(f"mean {metric.upper()} (%)")
    axis.grid(alpha=0.3)
    return _save(figure, path)
