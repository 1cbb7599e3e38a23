"""Read and validate NIfTI images (writing is in :mod:`torchqsm.io.save`).

This is the numpy edge of the library: images come in as a :class:`Volume`
(array, affine, header, file) and go out through :func:`~torchqsm.io.save.save_nifti`,
which keeps the reference image's geometry and header and writes atomically.
Every problem with an input file is an :class:`~torchqsm.errors.InputError`
whose message names the file and says what is wrong in one sentence.

Arrays keep NIfTI voxel order ``(X, Y, Z[, ...])``; nothing is transposed or
reoriented, so oblique and anisotropic data keep their affine, from which the
B0 direction in voxel coordinates is derived
(:func:`torchqsm.physics.geometry.b0_dir_from_affine`).
"""

from __future__ import annotations

import contextlib
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from torchqsm.errors import InputError
from torchqsm.io.limits import check_memory, check_stored_size, format_shape
from torchqsm.physics.geometry import b0_dir_from_affine, voxel_size_from_affine

__all__ = ["Volume", "load_nifti", "load_mask", "check_same_grid", "open_nifti", "header_voxel_size_mm", "affine_b0_dir",
           "check_orthogonal", "check_memory"]

# What nibabel, gzip and zlib raise on a damaged, truncated or foreign file.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)


def _describe(volume: Volume) -> tuple[str, str]:
    """``("the field's", " (field.nii.gz)")``; the second part is empty without a file."""
    where = f" ({volume.path.name})" if volume.path is not None else ""
    return f"the {volume.role}'s", where


@dataclass(frozen=True, eq=False)
class Volume:
    """An image as loaded from (or destined for) a NIfTI file.

    Parameters
    ----------
    data
        Voxel values, shape ``(X, Y, Z[, ...])`` in NIfTI voxel order, already
        scaled by the header's ``scl_slope``/``scl_inter`` (float32 unless
        asked otherwise; boolean for masks).
    affine
        4×4 voxel-to-world matrix (mm), as nibabel's ``image.affine``.
    header
        A copy of the file's header; :func:`save_nifti` reuses it for outputs.
    path
        The file it was read from, or ``None``.
    role
        What the image is (``"field"``, ``"mask"``, ...), used in messages.

    Notes
    -----
    Equality is identity (``eq=False``): comparing arrays elementwise is not
    a yes/no question.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None
    role: str = "image"

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of :attr:`data`."""
        return tuple(int(n) for n in self.data.shape)

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        """Voxel size (mm) along the first three axes, from the affine checked against pixdim (:func:`header_voxel_size_mm`)."""
        return header_voxel_size_mm(self.header, source=str(self.path) if self.path is not None else None)

    @property
    def b0_dir(self) -> tuple[float, float, float]:
        """Unit B0 direction in voxel coordinates, from the affine (B0 along world z)."""
        return affine_b0_dir(self.affine, source=str(self.path) if self.path is not None else None)


def _shortest(value: float) -> float:
    """The shortest decimal that round-trips ``value`` as float32 (``0.7``, not ``0.699999988``)."""
    return float(str(np.float32(value)))


def header_voxel_size_mm(header: nib.Nifti1Header, *, source: str | None = None) -> tuple[float, float, float]:
    """Voxel size (mm) along the first three axes, from the header's affine, checked against its pixdim.

    The affine (sform, else qform; :meth:`~nibabel.nifti1.Nifti1Header.get_best_affine`) places
    the voxels in space, so its column norms are the voxel size. ``pixdim`` must agree within
    0.1 %; when it is zero, negative or not finite (some converters leave it empty), the
    affine's values are used. Values are the shortest decimals that round-trip as float32.

    Raises
    ------
    InputError
        ``pixdim`` and the affine disagree, or the affine has a zero-length axis.

    Examples
    --------
    >>> header = nib.Nifti1Header()
    >>> header.set_data_shape((4, 4, 4))
    >>> header.set_sform(np.diag([0.47, 0.47, 1.0, 1.0]), code=1)
    >>> header["pixdim"][1:4] = 0          # an empty pixdim: the affine's voxel size
    >>> header_voxel_size_mm(header)
    (0.47, 0.47, 1.0)
    """
    try:
        from_affine = voxel_size_from_affine(header.get_best_affine())
    except ValueError as error:
        raise InputError(f"the header gives no voxel size: {error}", source=source) from None
    pixdim = [float(p) for p in header["pixdim"][1:4]]
    if not all(math.isfinite(p) and p > 0 for p in pixdim):
        return tuple(_shortest(h) for h in from_affine)  # type: ignore[return-value]
    if any(abs(p - h) > 1e-3 * h for p, h in zip(pixdim, from_affine)):
        shown = "×".join(f"{_shortest(p):g}" for p in pixdim), "×".join(f"{_shortest(h):g}" for h in from_affine)
        raise InputError(f"the header's pixdim gives {shown[0]} mm voxels but its affine {shown[1]} mm; "
                         "the header is inconsistent: fix pixdim or the affine", source=source)
    return tuple(_shortest(p) for p in pixdim)  # type: ignore[return-value]


def check_orthogonal(affine: np.ndarray, *, role: str = "image", source: str | None = None,
                     tolerance_deg: float = 0.1) -> None:
    """Refuse a sheared affine: the voxel axes must be at right angles (within ``tolerance_deg``).

    The dipole kernel assumes a rectangular voxel grid; a sheared grid would be processed as
    if it were not, silently. Resample such an image onto an orthogonal grid first.

    >>> check_orthogonal(np.diag([1.0, 1.0, 2.0, 1.0]))
    >>> sheared = np.diag([1.0, 1.0, 1.0, 1.0]); sheared[0, 1] = 0.2
    >>> check_orthogonal(sheared, source="t1.nii")
    Traceback (most recent call last):
    ...
    torchqsm.errors.InputError: t1.nii: the image's affine is sheared: voxel axes 1 and 2 are 78.7° apart, not 90°; ...
    """
    columns = np.asarray(affine, dtype=np.float64)[:3, :3].T
    norms = np.linalg.norm(columns, axis=1)
    if not (np.all(np.isfinite(columns)) and np.all(norms > 0)):
        return  # reported by the B0 direction check
    unit = columns / norms[:, None]
    for i, j in ((0, 1), (0, 2), (1, 2)):
        angle = math.degrees(math.acos(max(-1.0, min(1.0, float(unit[i] @ unit[j])))))
        if abs(angle - 90.0) > tolerance_deg:
            raise InputError(f"the {role}'s affine is sheared: voxel axes {i + 1} and {j + 1} are {angle:.1f}° "
                             "apart, not 90°; resample it onto an orthogonal grid (e.g. with FSL flirt or "
                             "nibabel.processing.resample_from_to)", source=source)


def affine_b0_dir(affine: np.ndarray, *, source: str | None = None) -> tuple[float, float, float]:
    """Unit B0 direction in voxel coordinates from an affine, or :class:`InputError` naming ``source``."""
    try:
        return b0_dir_from_affine(affine)
    except ValueError as error:
        raise InputError(f"cannot derive the B0 direction: {error}", source=source) from None


def _needed(allowed: tuple[int, ...]) -> str:
    return " or ".join(f"{n}-D" for n in allowed)


def _read_array(image: nib.Nifti1Image, dtype: np.dtype, *, role: str, source: str) -> np.ndarray:
    """The scaled voxel values of ``image`` as ``dtype``."""
    on_disk = image.get_data_dtype()
    if on_disk.kind == "c" and dtype.kind != "c":
        raise InputError(
            f"the {role} image holds complex values; save magnitude and phase as "
            "separate real images",
            source=source,
        )
    try:
        if on_disk.kind == "c":
            return np.asarray(image.dataobj).astype(dtype, copy=False)
        if dtype.kind == "f":
            return image.get_fdata(dtype=dtype)
        return image.get_fdata(dtype=np.float64)
    except _READ_ERRORS as error:
        raise InputError(
            f"the {role} file is damaged or truncated: {error}", source=source
        ) from error


def open_nifti(path: str | os.PathLike[str], *, role: str = "image", mmap: bool = True) -> nib.Nifti1Image:
    """The NIfTI image at ``path``, its voxels not yet read (header and affine only, for geometry).

    Raises
    ------
    InputError
        The file is missing, a folder, not readable as NIfTI, or another image format.
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise InputError(f"the {role} file does not exist", source=source)
    if path.is_dir():
        raise InputError(f"the {role} path is a folder, not a NIfTI file", source=source)
    try:
        with _quiet_nibabel():  # nibabel's header fixes: we check and say it ourselves
            image = nib.load(path, mmap=mmap)
            raw_pixdim = _raw_pixdim(path) if isinstance(image, nib.Nifti1Image) else None
    except _READ_ERRORS as error:
        raise InputError(f"the {role} file cannot be read as NIfTI: {error}", source=source) from error
    if not isinstance(image, nib.Nifti1Image):
        raise InputError(
            f"the {role} file is a {type(image).__name__}, not a NIfTI image", source=source
        )
    # Before anything reads the voxels: a header that lies about the size, the voxel size or
    # the grid is refused here, in milliseconds, with nothing allocated.
    check_stored_size(image, path, role)
    check_orthogonal(image.affine, role=role, source=source)
    if raw_pixdim is not None and not all(math.isfinite(p) and p > 0 for p in raw_pixdim):
        # nibabel replaces an empty pixdim by 1 mm; the voxel size then comes from the sform.
        if int(image.header["sform_code"]) <= 0:
            raise InputError(f"the {role} header gives no voxel size: pixdim is {list(raw_pixdim)} and there is "
                             "no sform", source=source)
        image.header.set_zooms((*voxel_size_from_affine(image.affine), *image.header.get_zooms()[3:]))
    header_voxel_size_mm(image.header, source=source)
    return image


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's global logger (its header fixes print to stderr through logging's last resort)."""
    logger = nib.imageglobals.logger
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


def _raw_pixdim(path: Path) -> tuple[float, float, float]:
    """``pixdim[1:4]`` as stored, before nibabel's checks replace zeros by 1."""
    with nib.openers.ImageOpener(path) as stream:
        header = nib.Nifti1Header.from_fileobj(stream, check=False)
    return tuple(float(p) for p in header["pixdim"][1:4])  # type: ignore[return-value]


def load_nifti(
    path: str | os.PathLike[str],
    *,
    role: str = "image",
    ndim: int | tuple[int, ...] | None = 3,
    dtype: np.dtype | type = np.float32,
) -> Volume:
    """Read a NIfTI file and check that it is usable.

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file.
    role
        What the image is (``"field"``, ``"magnitude"``, ...); used in messages.
    ndim
        The allowed number(s) of dimensions, or ``None`` for any. Trailing
        axes of length 1 are dropped until the count is allowed, so a
        ``64×64×64×1`` file loads as a 3-D image.
    dtype
        Data type of :attr:`Volume.data`; values are scaled by the header's
        ``scl_slope``/``scl_inter`` first.

    Returns
    -------
    Volume
        The data, affine (mm), a copy of the header (with the dimensions
        matching the returned data), the path and the role.

    Raises
    ------
    InputError
        The file is missing, not NIfTI, damaged, has the wrong number of
        dimensions, contains NaN or infinite values, or has an affine from
        which no B0 direction follows (zero-length or degenerate axes).

    Examples
    --------
    >>> import tempfile
    >>> from torchqsm.io.save import save_nifti
    >>> folder = tempfile.mkdtemp()
    >>> written = save_nifti(f"{folder}/chi.nii.gz", np.zeros((4, 5, 6)),
    ...                      affine=np.diag([0.5, 0.7, 1.2, 1.0]))
    >>> volume = load_nifti(written, role="chi")
    >>> volume.shape, volume.voxel_size_mm, volume.b0_dir
    ((4, 5, 6), (0.5, 0.7, 1.2), (0.0, 0.0, 1.0))
    """
    path = Path(path)
    source = str(path)
    dtype = np.dtype(dtype)
    image = open_nifti(path, role=role, mmap=False)
    check_memory(math.prod(image.shape), dtype, image.get_data_dtype(), role=role, source=source)
    data = _read_array(image, dtype, role=role, source=source)
    stored_shape = data.shape
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        while data.ndim not in allowed and data.ndim > min(allowed) and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim not in allowed:
            raise InputError(
                f"the {role} image is {len(stored_shape)}-D ({format_shape(stored_shape)}); "
                f"a {_needed(allowed)} image is needed",
                source=source,
            )
    if data.size == 0:
        raise InputError(f"the {role} image is empty ({format_shape(stored_shape)})", source=source)

    finite = np.isfinite(data)
    if not finite.all():
        nan_count = int(np.count_nonzero(np.isnan(data)))
        inf_count = int(data.size - np.count_nonzero(finite)) - nan_count
        raise InputError(
            f"the {role} image has {nan_count + inf_count} voxels that are not finite "
            f"({nan_count} NaN, {inf_count} infinite); replace them, e.g. with 0",
            source=source,
        )
    if dtype.kind != "f" and dtype.kind != "c":
        data = data.astype(dtype)

    affine = np.array(image.affine, dtype=np.float64)
    try:
        b0_dir_from_affine(affine)
    except ValueError as error:
        raise InputError(f"the {role} image has an unusable affine: {error}", source=source) from None

    header = image.header.copy()
    if data.shape != stored_shape:
        header.set_data_shape(data.shape)
    return Volume(data=data, affine=affine, header=header, path=path, role=role)


def check_same_grid(volume: Volume, reference: Volume, *, atol_mm: float = 1e-4) -> None:
    """Check that two images share one voxel grid: same spatial shape and affine.

    Parameters
    ----------
    volume
        The image being checked; errors name its file.
    reference
        The image it must match (its role and file name appear in messages).
    atol_mm
        Largest allowed absolute difference between affine entries (mm).

    Raises
    ------
    InputError
        The first three dimensions differ, or some affine entry differs by
        more than ``atol_mm`` (the message gives the largest difference).
    """
    source = str(volume.path) if volume.path is not None else None
    theirs, where = _describe(reference)
    if volume.shape[:3] != reference.shape[:3]:
        raise InputError(
            f"the {volume.role}'s shape {format_shape(volume.shape[:3])} does not match "
            f"{theirs} {format_shape(reference.shape[:3])}{where}",
            source=source,
        )
    difference = float(np.max(np.abs(np.asarray(volume.affine) - np.asarray(reference.affine))))
    if not difference <= atol_mm:  # also catches NaN
        raise InputError(
            f"the {volume.role}'s affine differs from {theirs}{where} by up to "
            f"{difference:.3g} mm (tolerance {atol_mm:g} mm); the images are not on one grid",
            source=source,
        )


def load_mask(path: str | os.PathLike[str], *, like: Volume | None = None) -> Volume:
    """Read a 3-D mask: every nonzero voxel is inside.

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file.
    like
        The image the mask belongs to; its first three dimensions and its
        affine must match (see :func:`check_same_grid`).

    Returns
    -------
    Volume
        With boolean :attr:`Volume.data` and role ``"mask"``.

    Raises
    ------
    InputError
        Everything :func:`load_nifti` raises, a grid that differs from
        ``like``'s, or a mask with no nonzero voxel.
    """
    # float64 so that no small nonzero value rounds to zero.
    volume = load_nifti(path, role="mask", ndim=3, dtype=np.float64)
    if like is not None:
        check_same_grid(volume, like)
    mask = volume.data != 0
    if not mask.any():
        raise InputError("the mask is empty (it has no nonzero voxel)", source=str(volume.path))
    return replace(volume, data=mask)
