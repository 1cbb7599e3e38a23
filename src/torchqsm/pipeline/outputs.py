"""Writing one subject's results: all files or none.

The maps are written into a hidden staging folder beside their destination and
moved into place as one set only when every one of them (and the QC figure) is
complete (:mod:`torchqsm.io._fileset`); the JSON sidecar of χ is moved last and
marks the subject as finished, so a rerun can skip it. An error, an interrupt or
a crash at any point leaves the previous results (``--overwrite``) or nothing:
the staging folder of a killed run is rolled back and removed by the next run
in that folder (:func:`is_finished` does it first).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import Volume, read_sidecar, save_nifti, write_sidecar
from ..io._fileset import commit, recover, staging_folder
from ..io.qc import qc_figure
from .subject import PipelineResult

__all__ = ["OUTPUT_UNITS", "write_result", "is_finished"]

#: Output role → unit; the file suffixes are :data:`torchqsm.io.bids.DERIVATIVE_SUFFIXES`.
OUTPUT_UNITS: Mapping[str, str] = {"chi": "ppm", "mask": "1", "eroded_mask": "1", "total_field": "ppm",
                                   "local_field": "ppm"}


def is_finished(chi_path: Path) -> bool:
    """Whether ``chi_path`` and its sidecar exist and the sidecar records a finished run."""
    sidecar = chi_path.with_name(chi_path.name.replace(".nii.gz", "").replace(".nii", "") + ".json")
    recover(chi_path.parent)  # a killed run's staging folder: rolled back before anything is judged
    if not (chi_path.is_file() and sidecar.is_file()):
        return False
    try:
        return read_sidecar(sidecar).get("Status") == "finished"
    except (InputError, ValueError, OSError):
        return False


def _parameters(result: PipelineResult) -> dict[str, Any]:
    """The recipe's choices with every parameter value each step used (defaults included)."""
    recipe = result.recipe.as_dict()
    for stage, key in (("unwrap", "unwrap_params"), ("background", "background_params"),
                       ("invert", "inversion_params"), ("network", "phase_network_params")):
        if stage in result.parameters:
            recipe[key] = dict(result.parameters[stage]["parameters"])
    choice = result.parameters.get("invert", {}).get("regularization_choice")
    if choice:  # how an automatic regularization was chosen (rule, noise estimate)
        recipe["regularization_choice"] = choice
    return recipe


def write_result(
    result: PipelineResult,
    paths: Mapping[str, Path],
    *,
    like: Volume,
    qc_path: Path | None,
    voxel_size_mm: tuple[float, ...],
    inputs: Mapping[str, str],
    extra: Mapping[str, Any],
    overwrite: bool,
) -> dict[str, Path]:
    """Write the maps of ``result`` to ``paths`` (role → NIfTI path) atomically as a set.

    ``paths["chi"]``'s sidecar (same name, ``.json``) records the recipe, every parameter,
    the inputs with their SHA-256, timings and ``Status: finished``.
    """
    paths = {role: path for role, path in paths.items()  # a phase network computes no field maps
             if not (role in ("total_field", "local_field") and getattr(result, f"{role}_ppm") is None)}
    chi_path = Path(paths["chi"])
    sidecar = chi_path.with_name(chi_path.name.replace(".nii.gz", "").replace(".nii", "") + ".json")
    targets = {**{role: Path(p) for role, p in paths.items()}, "sidecar": sidecar}
    if qc_path is not None:
        targets["qc"] = Path(qc_path)
    if not overwrite:
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing:
            raise InputError("output exists; pass --overwrite to replace it", source=existing[0])
    data = {
        "chi": result.chi_ppm, "mask": result.mask.to(dtype=result.chi_ppm.dtype),
        "eroded_mask": result.local_mask.to(dtype=result.chi_ppm.dtype),
        "total_field": result.total_field_ppm, "local_field": result.local_field_ppm,
    }
    staging = staging_folder(chi_path.parent)
    new = staging / "new"
    try:
        new.mkdir()
        staged: dict[str, Path] = {}
        for role, path in paths.items():
            dtype = np.uint8 if role.endswith("mask") else np.float32
            staged[role] = save_nifti(new / Path(path).name, data[role], like=like, dtype=dtype)
        if qc_path is not None:
            staged["qc"] = qc_figure(new / Path(qc_path).name, magnitude=result.magnitude,
                                     total_field_ppm=result.total_field_ppm,
                                     local_field_ppm=result.local_field_ppm, chi_ppm=result.chi_ppm,
                                     mask=result.local_mask, voxel_size_mm=voxel_size_mm,
                                     title=chi_path.name.split("_Chimap")[0])
        outputs = {role: {"file": targets[role].name, "unit": OUTPUT_UNITS[role]} for role in paths}
        if qc_path is not None:
            outputs["qc"] = {"file": targets["qc"].name}
        staged["sidecar"] = write_sidecar(
            new / sidecar.name, method=result.recipe.phase_network or result.recipe.inversion,
            parameters=_parameters(result),
            inputs=inputs, outputs=outputs,
            extra={**extra, "Recipe": result.recipe.name, "PhaseScaling": result.phase_scaling,
                   "TimingsSeconds": result.timings_s, "Notes": list(result.notes), "Units": "ppm",
                   "Status": "finished"})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # the sidecar last: the finish mark (out first, in last: a mixed set is never "finished")
    commit(staging, {staged[role]: targets[role] for role in [*(r for r in staged if r != "sidecar"), "sidecar"]})
    return targets
