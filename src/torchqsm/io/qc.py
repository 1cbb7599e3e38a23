"""Quality-control figure: magnitude, total field, local field and χ through the brain's centre.

One PNG per run lets a person check at a glance that the mask covers the
brain, the field is unwrapped, the background is gone and χ looks like
anatomy, without opening a viewer. Rows are the maps, columns the axial,
coronal and sagittal slices (voxel axes Z, Y, X) through the mask's centre of
mass, drawn with the true voxel aspect. Grey levels span robust percentiles
inside the mask; fields and χ are symmetric around 0.

matplotlib is imported when the figure is drawn, with its Agg canvas on a
private :class:`~matplotlib.figure.Figure`: no window opens, pyplot's state
and the global ``rcParams`` are not touched, and the file is written
atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.io._atomic import check_output_path, write_atomically
from torchqsm.io.nifti import format_shape

__all__ = ["qc_figure"]

#: Figure geometry (inches): the PNG is ``FIGURE_WIDTH_IN * dpi`` wide and
#: ``rows * ROW_HEIGHT_IN + TITLE_HEIGHT_IN`` (times dpi) high.
FIGURE_WIDTH_IN = 9.0
ROW_HEIGHT_IN = 2.5
TITLE_HEIGHT_IN = 0.4
# Percentiles (inside the mask) that set the grey range: robust to a few hot voxels.
_MAGNITUDE_PERCENTILES = (0.5, 99.5)
_SYMMETRIC_PERCENTILE = 99.0

_ROWS = (
    ("magnitude", "magnitude (a.u.)", False),
    ("total_field_ppm", "total field (ppm)", True),
    ("local_field_ppm", "local field (ppm)", True),
    ("chi_ppm", "χ (ppm)", True),
)


def _as_array(value: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = (
            value.detach()
            .to("cpu", torch.float32 if value.dtype != torch.bool else torch.bool)
            .numpy()
        )
    array = np.asarray(value)
    if name == "magnitude" and array.ndim == 4:  # (E, X, Y, Z): the first echo has the most signal
        array = array[0]
    if array.ndim != 3:
        raise InputError(
            f"the {name} must be a 3-D volume (X, Y, Z), got shape {format_shape(array.shape)}"
        )
    return array


def _grey_range(values: np.ndarray, symmetric: bool) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        limit = float(np.percentile(np.abs(values), _SYMMETRIC_PERCENTILE))
        limit = limit if limit > 0 else float(np.max(np.abs(values))) or 1.0
        return -limit, limit
    low, high = (float(v) for v in np.percentile(values, _MAGNITUDE_PERCENTILES))
    low = min(low, 0.0)  # magnitude from 0: a uniform brain shows white, not black
    return (low, high) if high > low else (low, low + 1.0)


def _centre(mask: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The mask's centre of mass (nearest voxel), or the volume's centre."""
    if mask is None:
        return tuple(n // 2 for n in shape)  # type: ignore[return-value]
    indices = np.nonzero(mask)
    return tuple(int(round(float(np.mean(axis)))) for axis in indices)  # type: ignore[return-value]


def _views(volume: np.ndarray, centre: Sequence[int], voxel_size_mm: Sequence[float]):
    """``(label, 2-D image with rows = vertical axis, aspect)`` for axial, coronal, sagittal."""
    x, y, z = centre
    vx, vy, vz = voxel_size_mm
    # Transposed so that the second listed axis runs up the page (origin="lower").
    return (
        (f"axial (z = {z})", volume[:, :, z].T, vy / vx),
        (f"coronal (y = {y})", volume[:, y, :].T, vz / vx),
        (f"sagittal (x = {x})", volume[x, :, :].T, vz / vy),
    )


def qc_figure(
    path: str | os.PathLike[str],
    *,
    magnitude: np.ndarray | torch.Tensor | None,
    total_field_ppm: np.ndarray | torch.Tensor | None,
    local_field_ppm: np.ndarray | torch.Tensor | None,
    chi_ppm: np.ndarray | torch.Tensor | None,
    mask: np.ndarray | torch.Tensor | None = None,
    voxel_size_mm: Sequence[float],
    title: str = "",
    dpi: int = 100,
    overwrite: bool = False,
) -> Path:
    """Write a PNG with three orthogonal slices of each map through the mask's centre.

    Parameters
    ----------
    path
        Output ``.png`` file; missing folders are created.
    magnitude
        Shape ``(X, Y, Z)``, or ``(E, X, Y, Z)`` of which the first echo is shown;
        arbitrary units. Grey range: 0 (or the 0.5th percentile if lower) to
        the 99.5th percentile inside the mask.
    total_field_ppm, local_field_ppm, chi_ppm
        Shape ``(X, Y, Z)``, ppm. Grey range: ±(99th percentile of the
        absolute value inside the mask).
    mask
        Shape ``(X, Y, Z)``, nonzero inside the brain: sets the slices (its
        centre of mass), the grey ranges, and is outlined on the magnitude.
        Default: the volume's centre and every voxel.
    voxel_size_mm
        Voxel size (mm) along X, Y, Z; the slices keep the true aspect.
    title
        Written above the figure, e.g. the run's BIDS key.
    dpi
        Pixels per inch: the PNG is ``9 * dpi`` pixels wide and
        ``(2.5 * rows + 0.4) * dpi`` high (``rows`` = maps given).
    overwrite
        Replace ``path`` if it exists.

    Any of the four maps may be ``None`` (its row is left out), but not all.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        A map or the mask is not 3-D, shapes differ, the mask is empty,
        ``path`` does not end in ``.png`` or exists (without ``overwrite``).
    ParameterError
        ``voxel_size_mm`` is not three positive numbers, ``dpi`` is not
        positive, or every map is ``None``.

    Examples
    --------
    >>> import tempfile
    >>> chi = torch.zeros(8, 8, 8); chi[3:5, 3:5, 3:5] = 0.1
    >>> png = qc_figure(f"{tempfile.mkdtemp()}/qc.png", magnitude=chi + 1, total_field_ppm=None,
    ...                 local_field_ppm=None, chi_ppm=chi, voxel_size_mm=(1, 1, 2), dpi=20)
    >>> png.name
    'qc.png'
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError("the QC figure's file name must end in .png", source=str(path))
    check_output_path(path, overwrite=overwrite)
    voxel = tuple(float(v) for v in voxel_size_mm)
    if len(voxel) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel):
        raise ParameterError(
            f"voxel_size_mm must be three positive numbers (mm), got {tuple(voxel_size_mm)}"
        )
    if int(dpi) <= 0:
        raise ParameterError(f"dpi must be positive, got {dpi}")
    given = {
        "magnitude": magnitude,
        "total_field_ppm": total_field_ppm,
        "local_field_ppm": local_field_ppm,
        "chi_ppm": chi_ppm,
    }
    maps = [
        (name, label, symmetric, _as_array(given[name], name))
        for name, label, symmetric in _ROWS
        if given[name] is not None
    ]
    if not maps:
        raise ParameterError("qc_figure needs at least one map")
    shape = maps[0][3].shape
    for name, _, _, array in maps[1:]:
        if array.shape != shape:
            raise InputError(
                f"the {name} shape {format_shape(array.shape)} does not match "
                f"the {maps[0][0]} shape {format_shape(shape)}"
            )
    inside = None
    if mask is not None:
        inside = _as_array(mask, "mask") != 0
        if inside.shape != shape:
            raise InputError(
                f"the mask shape {format_shape(inside.shape)} does not match "
                f"the maps' {format_shape(shape)}"
            )
        if not inside.any():
            raise InputError("the mask is empty (it has no nonzero voxel)")
    centre = _centre(inside, shape)

    # Imported here: matplotlib is slow to import and only this function needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = ROW_HEIGHT_IN * len(maps) + TITLE_HEIGHT_IN
    figure = Figure(figsize=(FIGURE_WIDTH_IN, height), dpi=int(dpi), layout="constrained")
    FigureCanvasAgg(figure)
    if title:
        figure.suptitle(title)
    axes = figure.subplots(len(maps), 3, squeeze=False)
    for row, (name, label, symmetric, volume) in enumerate(maps):
        low, high = _grey_range(volume if inside is None else volume[inside], symmetric)
        outline = _views(inside.astype(np.float32), centre, voxel) if inside is not None else None
        for column, (view, image, aspect) in enumerate(_views(volume, centre, voxel)):
            ax = axes[row, column]
            shown = ax.imshow(
                image,
                cmap="gray",
                vmin=low,
                vmax=high,
                origin="lower",
                aspect=aspect,
                interpolation="nearest",
            )
            if name == "magnitude" and outline is not None and 0 < outline[column][1].mean() < 1:
                ax.contour(outline[column][1], levels=[0.5], colors="tab:red", linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(view, fontsize="small")
        figure.colorbar(shown, ax=list(axes[row]), label=label, shrink=0.9)

    return write_atomically(
        path, lambda temporary: figure.savefig(temporary, format="png"), overwrite=overwrite
    )
