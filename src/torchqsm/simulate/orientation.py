r"""Random B0 directions and the NIfTI affines that express them.

A B0 direction :math:`\hat b` is a unit vector in voxel coordinates (the frame of the array
axes); its tilt is the angle to the third axis, :math:`\theta = \arccos \hat b_z`.
:func:`random_b0_dir` draws :math:`\hat b` uniformly over the sphere, or over the cap
:math:`\theta \le \theta_{\max}`: by Archimedes' hat-box theorem the area of a cap is linear in
:math:`\cos\theta`, so :math:`\cos\theta \sim U[\cos\theta_{\max}, 1]` and an azimuth
:math:`\phi \sim U[0, 2\pi)` give the uniform density.

:func:`affine_for_b0_dir` goes the other way: it rotates a voxel-to-world affine so that
``physics.b0_dir_from_affine`` (B0 along world :math:`z`) returns a chosen :math:`\hat b`.
The data stay on their voxel grid; only where the scanner's :math:`z` lies changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ParameterError
from ..physics.geometry import normalize_b0_dir

__all__ = ["random_b0_dir", "affine_for_b0_dir", "b0_tilt_deg"]


def random_b0_dir(*, generator: torch.Generator, max_tilt_deg: float | None = None) -> tuple[float, float, float]:
    """A random unit B0 direction, uniform on the sphere or on the cap within ``max_tilt_deg`` of the z axis.

    Parameters
    ----------
    generator
        CPU random generator (two uniform draws are taken from it).
    max_tilt_deg
        Largest angle (degrees, 0 to 180) between :math:`\\hat b` and the third voxel axis;
        ``None`` (or 180) for the whole sphere, 0 for exactly ``(0, 0, 1)``.

    Returns
    -------
    tuple of 3 floats
        Unit vector in voxel coordinates.

    Examples
    --------
    >>> b = random_b0_dir(generator=torch.Generator().manual_seed(0), max_tilt_deg=30.0)
    >>> round(sum(v * v for v in b), 12), b0_tilt_deg(b) <= 30.0
    (1.0, True)
    """
    if max_tilt_deg is None:
        max_tilt_deg = 180.0
    max_tilt_deg = float(max_tilt_deg)
    if not 0.0 <= max_tilt_deg <= 180.0:
        raise ParameterError(f"max_tilt_deg must lie in [0, 180] degrees, got {max_tilt_deg}")
    u = torch.rand(2, dtype=torch.float64, generator=generator)
    lowest = math.cos(math.radians(max_tilt_deg))
    cos_tilt = 1.0 - float(u[0]) * (1.0 - lowest)
    sin_tilt = math.sqrt(max(0.0, 1.0 - cos_tilt * cos_tilt))
    azimuth = 2.0 * math.pi * float(u[1])
    return (sin_tilt * math.cos(azimuth), sin_tilt * math.sin(azimuth), cos_tilt)


def b0_tilt_deg(b0_dir: Sequence[float]) -> float:
    """Angle (degrees) between a B0 direction (any length) and the third voxel axis.

    >>> b0_tilt_deg((0.0, 1.0, 1.0))
    45.0
    """
    try:
        b = normalize_b0_dir(b0_dir)
    except ValueError as error:
        raise ParameterError(str(error)) from None
    return round(math.degrees(math.acos(max(-1.0, min(1.0, b[2])))), 12)


def _rotation_taking(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The proper rotation of least angle taking unit vector ``a`` to unit vector ``b`` (Rodrigues)."""
    axis = np.cross(a, b)
    sin, cos = float(np.linalg.norm(axis)), float(np.dot(a, b))
    if sin < 1e-12:
        if cos > 0:
            return np.eye(3)
        # Opposite vectors: half a turn about any axis perpendicular to a.
        helper = np.array([1.0, 0.0, 0.0]) if abs(a[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        axis = np.cross(a, helper)
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    k = axis / sin
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + sin * cross + (1.0 - cos) * cross @ cross


def affine_for_b0_dir(
    b0_dir: Sequence[float],
    *,
    voxel_size_mm: Sequence[float],
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """A voxel-to-world affine (mm) in which world z (B0) is ``b0_dir`` in voxel coordinates.

    The 3×3 part is :math:`R\\,\\mathrm{diag}(h)` with :math:`R` the smallest rotation taking
    :math:`\\hat b` to :math:`\\hat z`, so :math:`R^\\top \\hat z = \\hat b` and
    ``physics.b0_dir_from_affine`` returns :math:`\\hat b`. With ``shape`` given, the
    translation puts the grid's centre at the world origin.

    Parameters
    ----------
    b0_dir
        B0 direction in voxel coordinates (normalised here).
    voxel_size_mm
        Voxel size (mm), 3 positive values.
    shape
        Grid ``(X, Y, Z)``, for the centring translation; ``None`` keeps voxel 0 at the origin.

    Returns
    -------
    numpy.ndarray
        4×4 float64 affine.

    Examples
    --------
    >>> from torchqsm.physics import b0_dir_from_affine, tilt_b0_dir
    >>> b = tilt_b0_dir(30.0)
    >>> a = affine_for_b0_dir(b, voxel_size_mm=(1.0, 1.0, 2.0))
    >>> bool(np.allclose(b0_dir_from_affine(a), b, atol=1e-12))
    True
    """
    try:
        b = np.asarray(normalize_b0_dir(b0_dir))
    except ValueError as error:
        raise ParameterError(str(error)) from None
    voxel = np.asarray([float(h) for h in voxel_size_mm], dtype=np.float64)
    if voxel.shape != (3,) or not np.all(np.isfinite(voxel)) or np.any(voxel <= 0):
        raise ParameterError(f"voxel_size_mm must be 3 positive numbers, got {tuple(voxel.tolist())}")
    rotation = _rotation_taking(b, np.array([0.0, 0.0, 1.0]))
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(voxel)
    if shape is not None:
        centre = (np.asarray([int(n) for n in shape], dtype=np.float64) - 1.0) / 2.0
        affine[:3, 3] = -affine[:3, :3] @ centre
    return affine
