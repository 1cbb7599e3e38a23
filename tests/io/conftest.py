"""Helpers for the io tests: oblique, anisotropic affines and images written by nibabel itself."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

VOXEL_SIZE_MM = (0.5, 0.7, 1.2)
ANGLE_DEG = 30.0


def rotation_about_x(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


def oblique_affine(
    angle_deg: float = ANGLE_DEG, voxel_size_mm: tuple[float, float, float] = VOXEL_SIZE_MM
) -> np.ndarray:
    """Rotation about x times anisotropic voxels, with a translation (mm)."""
    affine = np.eye(4)
    affine[:3, :3] = rotation_about_x(angle_deg) @ np.diag(voxel_size_mm)
    affine[:3, 3] = (-12.5, 30.25, -7.0)
    return affine


def write_image(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    qform_code: int = 1,
    sform_code: int = 1,
) -> Path:
    """Write ``data`` with nibabel directly, so loading is tested independently of saving."""
    affine = oblique_affine() if affine is None else affine
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=qform_code)
    image.header.set_sform(affine, code=sform_code)
    nib.save(image, path)
    return path


@pytest.fixture
def field_file(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A 6×7×8 float32 field on the oblique grid."""
    return write_image(tmp_path / "field.nii.gz", rng.standard_normal((6, 7, 8)).astype(np.float32))


@pytest.fixture
def mask_data() -> np.ndarray:
    mask = np.zeros((6, 7, 8), dtype=np.uint8)
    mask[1:5, 2:6, 2:7] = 1
    return mask


# Test modules are imported with --import-mode=importlib and cannot import this
# file, so the helpers reach them as fixtures.
@pytest.fixture
def oblique() -> np.ndarray:
    """The oblique (30° about x), anisotropic (0.5×0.7×1.2 mm) affine."""
    return oblique_affine()


@pytest.fixture
def write_nifti():
    """``write_nifti(path, data, affine=None, *, qform_code=1, sform_code=1)`` via nibabel."""
    return write_image
