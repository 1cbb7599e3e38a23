"""Where the QSM derivatives of a GRE run go, and the derivative dataset's description.

Derivatives (:func:`derivative_path`) follow the BIDS derivatives layout,
``OUT_DIR/sub-<label>[/ses-<label>]/anat/<run key>_<suffix>.nii.gz``, where the
run key keeps the source entities except ``echo`` and ``part``. The suffixes
the pipeline writes (:data:`DERIVATIVE_SUFFIXES`) are

=================  ==========================  ===================================
output             suffix                      content
=================  ==========================  ===================================
χ map              ``Chimap``                  susceptibility, ppm (BIDS qMRI)
brain mask         ``desc-brain_mask``         1 inside, 0 outside
eroded mask        ``desc-eroded_mask``        mask after background removal
total field        ``desc-total_fieldmap``     ppm of B0 (the JSON says ``ppm``)
local field        ``desc-local_fieldmap``     ppm of B0, background removed
QC figure          ``desc-qc_Chimap`` (.png)   slices of every map
=================  ==========================  ===================================

BIDS ``fieldmap`` images hold Hz; ours hold ppm, so each field's JSON sidecar
records ``"Units": "ppm"``. :func:`write_dataset_description` writes the
derivative dataset's ``dataset_description.json``.

References
----------
Gorgolewski KJ et al. The brain imaging data structure, a format for
organizing and describing outputs of neuroimaging experiments. Sci Data
2016;3:160044. https://doi.org/10.1038/sdata.2016.44
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from torchqsm.errors import InputError, ParameterError
from torchqsm.io._atomic import write_atomically
from torchqsm.io.bids import GreRun

__all__ = ["derivative_path", "write_dataset_description", "DERIVATIVE_SUFFIXES", "BIDS_VERSION"]

#: Suffix (with ``desc`` entity) of each output the pipeline writes.
DERIVATIVE_SUFFIXES = {
    "chi": "Chimap",
    "mask": "desc-brain_mask",
    "eroded_mask": "desc-eroded_mask",
    "total_field": "desc-total_fieldmap",
    "local_field": "desc-local_fieldmap",
    "qc": "desc-qc_Chimap",
}
#: BIDS version written into ``dataset_description.json``.
BIDS_VERSION = "1.10.0"
_SUFFIX = re.compile(r"^([a-zA-Z0-9]+-[a-zA-Z0-9]+_)*[a-zA-Z0-9]+$")
_EXTENSION = re.compile(r"^(\.[a-zA-Z0-9]+)+$")


def derivative_path(
    out_dir: str | os.PathLike[str], run: GreRun, suffix: str, ext: str = ".nii.gz"
) -> Path:
    """Where a run's derivative goes: ``OUT_DIR/sub-X[/ses-Y]/anat/<key>_<suffix><ext>``.

    Parameters
    ----------
    out_dir
        The derivatives dataset's root folder.
    run
        The source run (its :attr:`GreRun.key` keeps ``acq``, ``run``, ...).
    suffix
        A BIDS suffix, optionally after entities: ``"Chimap"``,
        ``"desc-brain_mask"`` (see :data:`DERIVATIVE_SUFFIXES`).
    ext
        File extension with its leading dot (``".nii.gz"``, ``".json"``, ``".png"``).

    Raises
    ------
    ParameterError
        ``suffix`` or ``ext`` is not of that form.

    Examples
    --------
    >>> run = GreRun("1", "2", {"acq": "x", "run": "1"}, "MEGRE", (), (), "sub-1_ses-2_acq-x_run-1")
    >>> derivative_path("out", run, DERIVATIVE_SUFFIXES["chi"]).as_posix()
    'out/sub-1/ses-2/anat/sub-1_ses-2_acq-x_run-1_Chimap.nii.gz'
    """
    if not _SUFFIX.match(suffix):
        raise ParameterError(f"not a BIDS suffix (e.g. 'Chimap' or 'desc-brain_mask'): {suffix!r}")
    if not _EXTENSION.match(ext):
        raise ParameterError(f"not a file extension (e.g. '.nii.gz'): {ext!r}")
    folder = Path(out_dir) / f"sub-{run.subject}"
    if run.session is not None:
        folder = folder / f"ses-{run.session}"
    return folder / "anat" / f"{run.key}_{suffix}{ext}"


def _made_by_torchqsm(path: Path) -> bool:
    """Whether ``path`` is a derivative dataset description written by torchqsm."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        made_by = [entry.get("Name") for entry in record.get("GeneratedBy", [])]
        return "torchqsm" in made_by and record.get("DatasetType") == "derivative"
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable or not shaped like BIDS
        return False


def write_dataset_description(
    out_dir: str | os.PathLike[str],
    *,
    version: str,
    name: str = "torchqsm QSM derivatives",
    code_url: str | None = None,
    source_datasets: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Write the derivatives' ``dataset_description.json``, atomically.

    Parameters
    ----------
    out_dir
        The derivatives dataset's root folder (created if missing).
    version
        torchqsm's version, recorded in ``GeneratedBy``.
    name
        The dataset's ``Name``.
    code_url
        ``GeneratedBy[0].CodeURL``, if any.
    source_datasets
        URLs or paths of the raw datasets (``SourceDatasets``).
    overwrite
        Replace an existing file. Without it, an existing description made
        by torchqsm is kept (several runs share one derivatives folder) and
        any other one is an error.

    Returns
    -------
    Path
        ``out_dir/dataset_description.json``.

    Raises
    ------
    InputError
        A description not made by torchqsm exists and ``overwrite`` is false,
        or the file cannot be written.
    ParameterError
        ``version`` is empty.
    """
    if not str(version).strip():
        raise ParameterError("version must not be empty")
    path = Path(out_dir) / "dataset_description.json"
    if path.is_file() and not overwrite:
        if _made_by_torchqsm(path):
            return path
        raise InputError(
            "a dataset_description.json not made by torchqsm exists; pass --overwrite to replace it",
            source=str(path),
        )
    generated_by = {"Name": "torchqsm", "Version": str(version)}
    if code_url:
        generated_by["CodeURL"] = code_url
    record = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
    }
    if source_datasets:
        record["SourceDatasets"] = [{"URL": str(source)} for source in source_datasets]
    text = json.dumps(record, indent=2) + "\n"
    return write_atomically(
        path, lambda temporary: temporary.write_text(text, encoding="utf-8"), overwrite=overwrite
    )
