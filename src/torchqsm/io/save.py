"""Write NIfTI images atomically on the grid (and with the header) of a reference image."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.io._atomic import check_output_path, write_atomically
from torchqsm.io.nifti import Volume
from torchqsm.physics.geometry import b0_dir_from_affine, voxel_size_from_affine

__all__ = ["save_nifti"]

# NIfTI codes for qform/sform: 1 = scanner anatomical coordinates.
_SCANNER_CODE = 1


def _to_numpy(data: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(data, torch.Tensor):
        data = data.detach()
        if data.dtype == torch.bfloat16:  # numpy has no bfloat16
            data = data.float()
        return data.cpu().numpy()
    return np.asarray(data)


def _is_nifti_name(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _output_header(
    shape: tuple[int, ...], dtype: np.dtype, *, like: Volume | None, affine: np.ndarray | None
) -> tuple[nib.Nifti1Header, np.ndarray]:
    """The header and affine of an output image: ``like``'s, updated for the new data."""
    if like is None and affine is None:
        raise ParameterError(
            "save_nifti needs `like` (a loaded Volume) or `affine` (4×4, mm) to place the image"
        )
    explicit = affine is not None
    affine = np.asarray(like.affine if affine is None else affine, dtype=np.float64)
    try:
        voxel_size_mm = voxel_size_from_affine(affine)
        b0_dir_from_affine(affine)
    except ValueError as error:
        raise ParameterError(f"unusable affine for the output image: {error}") from None

    if like is not None:
        header = like.header.copy()
        qform_code, sform_code = int(like.header["qform_code"]), int(like.header["sform_code"])
    else:
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm", "sec")
        qform_code = sform_code = 0
    if explicit and qform_code == 0 and sform_code == 0:
        # A new affine with "unknown" codes would be ignored by readers.
        qform_code = sform_code = _SCANNER_CODE

    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_qform(affine, code=qform_code)
    header.set_sform(affine, code=sform_code)
    if len(shape) >= 3:
        zooms = list(header.get_zooms())
        zooms[:3] = voxel_size_mm
        header.set_zooms(zooms)
    header.set_slope_inter(1.0, 0.0)
    # The display range belongs to the old data, not to the new.
    header["cal_min"] = 0.0
    header["cal_max"] = 0.0
    return header, affine


def save_nifti(
    path: str | os.PathLike[str],
    data: np.ndarray | torch.Tensor,
    *,
    like: Volume | None = None,
    affine: np.ndarray | None = None,
    overwrite: bool = False,
    dtype: np.dtype | type = np.float32,
) -> Path:
    """Write an image as NIfTI, atomically, on the grid of a reference image.

    Parameters
    ----------
    path
        Output ``.nii`` or ``.nii.gz`` file; missing folders are created.
    data
        Voxel values, shape ``(X, Y, Z[, ...])``; a tensor is detached and
        moved to the CPU.
    like
        Reference image whose header is copied: affine, qform/sform codes,
        units, description, intent and the other fields. The data type and
        dimensions are updated, scaling is reset (slope 1, intercept 0) and
        the display range ``cal_min``/``cal_max`` is cleared.
    affine
        4×4 voxel-to-world matrix (mm); overrides ``like``'s. Needed when
        ``like`` is not given, in which case the qform and sform codes are
        1 (scanner coordinates) and units are mm and s.
    overwrite
        Replace ``path`` if it exists.
    dtype
        Data type on disk (numpy's ``astype`` casting); ``bool`` is stored
        as ``uint8``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        ``path`` exists and ``overwrite`` is false, is not a ``.nii``/``.nii.gz``
        name, or cannot be written; complex data for a real ``dtype``.
    ParameterError
        Neither ``like`` nor ``affine`` is given, or ``affine`` is not 4×4.

    Notes
    -----
    The file is written as ``.tmp-<random>-<name>`` in the output folder and
    moved into place when complete; on any error the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    if not _is_nifti_name(path):
        raise InputError("the output file name must end in .nii or .nii.gz", source=str(path))
    check_output_path(path, overwrite=overwrite)

    array = _to_numpy(data)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        dtype = np.dtype(np.uint8)
    if np.iscomplexobj(array) and dtype.kind != "c":
        raise InputError(
            f"cannot save complex data as {dtype}; save magnitude and phase separately",
            source=str(path),
        )
    if not 1 <= array.ndim <= 7:
        raise InputError(f"NIfTI holds 1 to 7 dimensions, the data has {array.ndim}", source=str(path))
    array = array.astype(dtype, copy=False)

    header, affine = _output_header(array.shape, dtype, like=like, affine=affine)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(array, affine, header=header)
    return write_atomically(path, lambda temporary: nib.save(image, temporary), overwrite=overwrite)
