r"""Bench cases from any BIDS dataset whose ground-truth χ lies under ``derivatives/``.

Every GRE run that :func:`~torchqsm.io.bids.discover_gre` finds (magnitude and phase, one file
per echo or one 4-D file) is a case when a derivative pipeline folder holds its truth beside
the run's path, named after the run's key (``sub-1`` or ``sub-01_ses-1_acq-qsm_run-2``)::

    derivatives/<pipeline>/sub-<label>[/ses-<label>]/anat/<key>[_desc-<label>]_Chimap.nii[.gz]   χ (ppm), required
    derivatives/<pipeline>/.../<key>_desc-brain_mask.nii[.gz] or <key>_mask.nii[.gz]         brain mask, required
    derivatives/<pipeline>/.../<key>_dseg.nii[.gz]                  labels for the ROI statistics (optional)
    derivatives/<pipeline>/.../<key>_desc-local_fieldmap.nii[.gz]   true local field, ppm (optional)
    derivatives/<pipeline>/.../<key>_desc-total_fieldmap.nii[.gz]   true total field, ppm (optional)
    derivatives/<pipeline>/.../<key>_desc-lesion_mask.nii[.gz]      lesion, for the lesion mean (optional)

This is the layout ``qsm-forward`` writes (``derivatives/qsm-forward``: Chimap, mask, dseg) and
the one ``torchqsm simulate suite`` writes for each case (``derivatives/groundtruth``, every file).
Pipelines are searched in name order; the first that holds the χ map gives every file.

Inputs of a run, for ``torchqsm bench`` without ``--from raw``:

* the true local field when the dataset has one, otherwise the forward field of the true χ in
  the run's own geometry (voxel size, B0 direction from the affine; :func:`~torchqsm.simulate.forward_field`
  with half the grid's size as zero padding per side), in the brain mask;
* plus the field noise measured from the run's echoes against the true total field
  (:func:`~torchqsm.bench.evaluate.measured_field_noise_ppm`) when the dataset has a total field
  map; without one the noise cannot be separated from the field, and the input is noise-free
  (each case's ``input`` says which). ``--from raw`` uses the measured magnitude and phase instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io import check_same_grid, load_gre, load_mask, load_nifti
from ..io.bids import GreRun, discover_gre
from ..simulate import forward_field
from .evaluate import SuiteInput, measured_field_noise_ppm

__all__ = ["TruthFiles", "is_bids_dataset", "bids_cases", "find_run", "find_truth", "load_bids_case",
           "bids_case_digest"]

_EXTENSIONS = (".nii.gz", ".nii")


@dataclass(frozen=True)
class TruthFiles:
    """The ground-truth files of one run (``None``: the dataset has none)."""

    chi: Path
    mask: Path
    labels: Path | None = None
    local_field: Path | None = None
    total_field: Path | None = None
    lesion: Path | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.chi, self.mask, self.labels, self.local_field, self.total_field, self.lesion) if p]


def is_bids_dataset(root: str | Path) -> bool:
    """Whether ``root`` looks like a BIDS dataset: ``dataset_description.json`` and a ``sub-*`` folder."""
    folder = Path(root)
    return (folder / "dataset_description.json").is_file() and any(p.is_dir() for p in folder.glob("sub-*"))


def _first(folder: Path, *stems: str) -> Path | None:
    for stem in stems:
        for extension in _EXTENSIONS:
            matches = sorted(folder.glob(stem + extension))
            if matches:
                return matches[0]
    return None


def find_truth(root: str | Path, run: GreRun) -> TruthFiles | None:
    """The truth files of ``run`` under ``root/derivatives``, or ``None`` when no pipeline has its χ.

    Raises
    ------
    InputError
        A χ map is found but no brain mask beside it (the message names the χ file).
    """
    anat = run.phase_files[0].parent.relative_to(Path(root))
    derivatives = Path(root) / "derivatives"
    if not derivatives.is_dir():
        return None
    key = run.key
    for pipeline in sorted(p for p in derivatives.iterdir() if p.is_dir()):
        folder = pipeline / anat
        chi = _first(folder, f"{key}_Chimap", f"{key}_desc-*_Chimap")
        if chi is None:
            continue
        mask = _first(folder, f"{key}_desc-brain_mask", f"{key}_mask")
        if mask is None:
            raise InputError(f"no brain mask beside the ground-truth χ (expected {key}_desc-brain_mask.nii[.gz] or "
                             f"{key}_mask.nii[.gz])", source=str(chi))
        return TruthFiles(chi, mask, labels=_first(folder, f"{key}_dseg"),
                          local_field=_first(folder, f"{key}_desc-local_fieldmap"),
                          total_field=_first(folder, f"{key}_desc-total_fieldmap"),
                          lesion=_first(folder, f"{key}_desc-lesion_mask"))
    return None


def bids_cases(root: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The bench case records of a BIDS dataset (one per GRE run with a truth: name, ``bids_key``, ``digest``
    of its files, ``input`` and ``noise``) and the runs without one.

    Raises
    ------
    InputError
        Not a BIDS dataset, no GRE run, or no run has a ground-truth χ.
    """
    runs = discover_gre(root)
    cases, skipped = [], []
    for run in runs:
        truth = find_truth(root, run)
        if truth is None:
            skipped.append(run.key)
            continue
        cases.append({"name": run.key, "varies": "dataset", "bids_key": run.key, "digest": _digest(root, run, truth),
                      "input": "local field" if truth.local_field else "forward field of the true χ",
                      "noise": "measured" if truth.total_field else "none"})
    if not cases:
        raise InputError(f"no GRE run has a ground-truth χ under derivatives/ (looked for <key>_Chimap.nii[.gz] "
                         f"beside each run's path in derivatives/<pipeline>/; runs: {', '.join(skipped)})",
                         source=str(root))
    return cases, skipped


def find_run(root: str | Path, key: str) -> tuple[GreRun, TruthFiles]:
    """The GRE run of ``key`` and its truth files."""
    for run in discover_gre(root):
        if run.key == key:
            truth = find_truth(root, run)
            if truth is None:
                raise InputError(f"run {key} has no ground-truth χ under derivatives/", source=str(root))
            return run, truth
    raise InputError(f"no GRE run {key} in the dataset", source=str(root))


def _sidecars(paths: list[Path]) -> list[Path]:
    out = []
    for path in paths:
        sidecar = path.with_name(path.name.split(".nii")[0] + ".json")
        if sidecar.is_file():
            out.append(sidecar)
    return out


def bids_case_digest(root: str | Path, key: str) -> str:
    """SHA-256 of the run's images and sidecars and its truth files (names relative to ``root`` and bytes);
    :func:`bids_cases` gives it with each case (``digest``) without a second scan of the dataset."""
    return _digest(root, *find_run(root, key))


def _digest(root: str | Path, run: GreRun, truth: TruthFiles) -> str:
    files = [*run.magnitude_files, *run.phase_files, *truth.paths()]
    files += _sidecars(files)
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        digest.update(str(path.relative_to(Path(root))).encode())
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=2)
def load_bids_case(root: str, key: str, digest: str = ""):
    """The run ``key`` of the BIDS dataset ``root`` as a bench case.

    Returns
    -------
    tuple
        ``(SuiteInput, GreData, lesion mask or None)``, as :func:`torchqsm.bench.runs` uses them.
        ``digest`` only keys the per-process cache.

    Raises
    ------
    InputError
        A file is unreadable, on another grid than the phase, or the χ map has NaN values.
    """
    run, truth = find_run(root, key)
    gre = load_gre(list(run.magnitude_files), list(run.phase_files))

    def image(path: Path, role: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        volume = load_nifti(path, role=role)
        check_same_grid(volume, gre.reference)
        data = torch.from_numpy(volume.data).to(dtype)
        if data.is_floating_point() and not bool(torch.isfinite(data).all()):
            raise InputError(f"the {role} map has NaN or infinite values", source=str(path))
        return data

    mask = torch.from_numpy(load_mask(truth.mask, like=gre.reference).data).bool()
    chi = image(truth.chi, "ground-truth chi") * mask
    labels = image(truth.labels, "labels", torch.int64) if truth.labels else mask.to(torch.int64)
    voxel, b0_dir = tuple(float(v) for v in gre.voxel_size_mm), tuple(float(v) for v in gre.b0_dir)
    if truth.local_field:
        local = image(truth.local_field, "local field") * mask
    else:
        whole = image(truth.chi, "ground-truth chi")
        pad = tuple(size // 2 for size in whole.shape)  # the grid doubled: no wrap-around of the object's field
        local = forward_field(whole, voxel_size_mm=voxel, b0_dir=b0_dir, pad=pad).float() * mask
    noise = torch.zeros_like(local)
    if truth.total_field:
        total = image(truth.total_field, "total field")
        noise = measured_field_noise_ppm(gre.magnitude, gre.phase, total, echo_times_s=gre.echo_times_s,
                                         b0_tesla=gre.b0_tesla) * mask
    lesion = torch.from_numpy(load_mask(truth.lesion, like=gre.reference).data).bool() if truth.lesion else None
    case = SuiteInput(key, (local + noise) * mask, local, chi, mask, labels, voxel, b0_dir, float(gre.b0_tesla),
                      float(noise[mask].double().square().mean().sqrt()) if bool(mask.any()) else 0.0,
                      gre.acquisition)
    return case, gre, lesion
