r"""Geometry: B0 direction and voxel size from a NIfTI affine.

The NIfTI affine :math:`A` maps voxel indices to world (scanner, RAS+) mm.
Its 3×3 part factors as :math:`A_{3\times3} = R\,\mathrm{diag}(h)` with
:math:`h` the voxel size (mm) and :math:`R` a matrix of unit columns (a
rotation, possibly with a reflection). The main field points along world
:math:`z`; in voxel coordinates (the frame of the array axes) its direction is

.. math:: \hat b = R^{-1} \hat z / \lVert R^{-1} \hat z \rVert ,

which equals :math:`R^\top \hat z` for an orthonormal :math:`R`.
The dipole kernel uses :math:`\hat b` together with the physical k-space grid
built from :math:`h`, so oblique and anisotropic data need no resampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["voxel_size_from_affine", "b0_dir_from_affine", "normalize_b0_dir", "tilt_b0_dir"]


def voxel_size_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis: the column norms of the affine's 3×3 part."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(sizes <= 0):
        raise ValueError("affine has a zero-length voxel axis")
    return tuple(float(s) for s in sizes)  # type: ignore[return-value]


def b0_dir_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Unit B0 direction in voxel coordinates, assuming B0 along world z.

    Parameters
    ----------
    affine
        4×4 voxel-to-world matrix (mm), as ``nibabel``'s ``img.affine``.

    Returns
    -------
    tuple of 3 floats
        Unit vector :math:`\\hat b` in the frame of the array axes.

    Examples
    --------
    >>> b0_dir_from_affine(np.diag([2.0, 1.0, 3.0, 1.0]))
    (0.0, 0.0, 1.0)
    """
    voxel = voxel_size_from_affine(affine)
    rotation = np.asarray(affine, dtype=np.float64)[:3, :3] / np.asarray(voxel)
    if abs(np.linalg.det(rotation)) < 1e-6:
        raise ValueError("affine is singular: cannot derive the B0 direction")
    b = np.linalg.solve(rotation, np.array([0.0, 0.0, 1.0]))
    b = b / np.linalg.norm(b)
    b[np.abs(b) < 1e-12] = 0.0
    return tuple(float(v) + 0.0 for v in b)  # type: ignore[return-value]


def normalize_b0_dir(b0_dir: Sequence[float]) -> tuple[float, float, float]:
    """Validate a user's B0 direction (any length, not zero) and scale it to unit length."""
    b = np.asarray(b0_dir, dtype=np.float64).reshape(-1)
    if b.shape != (3,):
        raise ValueError(f"b0_dir must have 3 components, got {b.size}")
    norm = float(np.linalg.norm(b))
    if not np.all(np.isfinite(b)) or norm == 0.0:
        raise ValueError(f"b0_dir must be finite and non-zero, got {tuple(b.tolist())}")
    return tuple(float(v) for v in b / norm)  # type: ignore[return-value]


def tilt_b0_dir(angle_deg: float, *, about: int = 0) -> tuple[float, float, float]:
    """The unit vector at ``angle_deg`` from the third axis, rotated about axis ``about`` (0 or 1).

    >>> tilt_b0_dir(0.0)
    (0.0, 0.0, 1.0)
    """
    a = math.radians(angle_deg)
    if about == 0:
        return (0.0, -math.sin(a) + 0.0, math.cos(a))
    if about == 1:
        return (math.sin(a), 0.0, math.cos(a))
    raise ValueError("about must be 0 or 1")
