"""One subject's HTML page from a finished ``torchqsm run``: every step's map, timings, parameters.

:func:`subject_report` reads the χ map's JSON sidecar (written last by the pipeline, so a
finished run has every file it lists), draws each map it lists (total field, local field, χ,
masks) in three orthogonal slices, and writes ``<stem>_report.html`` beside χ with the images
embedded: one file that opens offline and requests nothing.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..errors import InputError
from ..io import load_nifti, read_sidecar
from ..io._atomic import write_atomically
from .figures import _centre, _mosaic, _show

__all__ = ["subject_report", "finished_chi_maps"]

#: Output role → title, in data-flow order.
_ROLES = {"total_field": "total field (ppm)", "local_field": "local field (ppm)", "chi": "χ (ppm)",
          "mask": "brain mask", "eroded_mask": "eroded mask (inversion)"}


def _png(volume: np.ndarray, mask: np.ndarray, voxel: tuple[float, ...], title: str, binary: bool) -> str:
    values = volume[mask] if mask.any() else volume.ravel()
    limit = 1.0 if binary else float(np.percentile(np.abs(values), 99.5)) or 1.0
    image = _mosaic(volume.astype(np.float32), _centre(mask), voxel)
    figure = Figure(figsize=(9, 9 * image.shape[0] / image.shape[1] + 0.5))
    figure.subplots_adjust(left=0.01, right=0.9, bottom=0.01, top=0.92)
    axis = figure.add_subplot()
    shown = _show(axis, image, limit, "gray")
    if not binary:
        bar = figure.colorbar(shown, cax=figure.add_axes((0.915, 0.1, 0.015, 0.75)))
        bar.ax.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=70)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(mapping: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(json.dumps(v, default=str))}</code>"
                   f"</td></tr>" for k, v in mapping.items())
    return f"<table>{rows}</table>"


def subject_report(chi_path: str | Path, *, output: str | Path | None = None) -> Path:
    """Write the HTML page of one finished ``torchqsm run`` subject and return its path.

    Parameters
    ----------
    chi_path
        The χ NIfTI written by ``torchqsm run`` (``..._Chimap.nii.gz``), its sidecar beside it.
    output
        The page (default: χ's name with ``_report.html`` for ``.nii.gz``); replaced if present.

    Raises
    ------
    InputError
        The sidecar is missing, unreadable or not of a finished run, or a map it lists is missing.
    """
    chi = Path(chi_path)
    stem = chi.name.removesuffix(".gz").removesuffix(".nii")
    sidecar_path = chi.with_name(stem + ".json")
    sidecar = read_sidecar(sidecar_path)
    if sidecar.get("Status") != "finished":
        raise InputError("not the sidecar of a finished torchqsm run (Status is not 'finished')",
                         source=str(sidecar_path))
    outputs = sidecar.get("Outputs") or {}
    mask_file = (outputs.get("eroded_mask") or outputs.get("mask") or {}).get("file")
    voxel = tuple(float(v) for v in sidecar.get("VoxelSizeMM") or (1.0, 1.0, 1.0))
    mask = None
    if mask_file:
        mask = load_nifti(chi.parent / mask_file, role="mask").data > 0
    sections = []
    for role, title in _ROLES.items():
        if role not in outputs:
            continue
        path = chi.parent / outputs[role]["file"]
        if not path.is_file():
            raise InputError(f"the {role} map listed in the sidecar is missing", source=str(path))
        volume = load_nifti(path, role=role).data
        region = mask if mask is not None and mask.shape == volume.shape else np.ones(volume.shape, bool)
        sections.append(f"<h3>{html.escape(title)}</h3><p><img alt=\"{role}\" "
                        f"src=\"{_png(volume, region, voxel, title, role.endswith('mask'))}\"></p>")
    timings = sidecar.get("TimingsSeconds") or {}
    timing_rows = "".join(f"<tr><th>{html.escape(step)}</th><td>{float(s):.2f}</td></tr>" for step, s in timings.items())
    body = [f"<h1>torchqsm run: {html.escape(stem)}</h1>",
            f"<p>recipe <code>{html.escape(str(sidecar.get('Recipe')))}</code>, inversion "
            f"<code>{html.escape(str(sidecar.get('Method')))}</code>, torchqsm {html.escape(str(sidecar.get('Version')))}, "
            f"{html.escape(str(sidecar.get('Created')))}, device {html.escape(str(sidecar.get('Device')))}</p>",
            "<h2>Timings (s)</h2>", f"<table>{timing_rows}</table>",
            "<h2>Maps</h2>", *sections,
            "<h2>Parameters</h2>", _table(sidecar.get("Parameters") or {}),
            "<h2>Acquisition</h2>", _table({k: sidecar.get(k) for k in ("EchoTime", "MagneticFieldStrength",
                                                                        "B0Direction", "VoxelSizeMM", "PhaseSign",
                                                                        "PhaseScaling") if k in sidecar}),
            "<h2>Inputs</h2>", _table(sidecar.get("Inputs") or {}),
            "<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in sidecar.get("Notes") or [])
            + "</ul>"]
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>torchqsm run report</title><style>'
            "body{font-family:sans-serif;margin:1.5em;max-width:70em}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:2px 6px;font-size:90%;text-align:left}img{max-width:100%}"
            "</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    target = Path(output) if output is not None else chi.with_name(stem + "_report.html")
    return write_atomically(target, lambda p: p.write_text(page, encoding="utf-8"), overwrite=True)


def finished_chi_maps(out_dir: str | Path) -> list[Path]:
    """Every ``*_Chimap.nii.gz`` under ``out_dir`` whose sidecar marks a finished run."""
    found = []
    for chi in sorted(Path(out_dir).rglob("*_Chimap.nii.gz")):
        try:
            if read_sidecar(chi.with_name(chi.name.removesuffix(".nii.gz") + ".json")).get("Status") == "finished":
                found.append(chi)
        except (InputError, ValueError, OSError):
            continue
    return found
