"""Small geometric phantoms (spheres, cylinders, ellipsoids) with partial-volume edges."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["sphere", "ellipsoid", "cylinder", "shapes_phantom"]


def _grid(shape: Sequence[int], supersample: int, dtype, device) -> list[torch.Tensor]:
    """Sub-voxel sample coordinates (voxel units) along each axis, broadcastable."""
    axes = []
    for axis, n in enumerate(shape):
        offsets = (torch.arange(supersample, dtype=dtype, device=device) + 0.5) / supersample - 0.5
        coords = (torch.arange(n, dtype=dtype, device=device)[:, None] + offsets[None, :]).reshape(-1)
        view = [1, 1, 1]
        view[axis] = -1
        axes.append(coords.view(view))
    return axes


def _average(inside: torch.Tensor, shape: Sequence[int], supersample: int) -> torch.Tensor:
    s = supersample
    x, y, z = shape
    return inside.reshape(x, s, y, s, z, s).mean(dim=(1, 3, 5))


def ellipsoid(
    shape: Sequence[int],
    *,
    radii: Sequence[float],
    center: Sequence[float] | None = None,
    rotation: torch.Tensor | None = None,
    supersample: int = 3,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Partial-volume indicator (0…1) of an ellipsoid, in voxel units.

    Parameters
    ----------
    shape
        Grid ``(X, Y, Z)``.
    radii
        Semi-axes (voxels).
    center
        Centre (voxel index coordinates); default the grid centre ``N // 2``.
    rotation
        3×3 matrix rotating the ellipsoid's axes (default identity).
    supersample
        Samples per voxel per axis for the partial-volume fraction.
    """
    shape = tuple(int(n) for n in shape)
    center = [n // 2 for n in shape] if center is None else [float(c) for c in center]
    x, y, z = _grid(shape, supersample, torch.float64, device)
    d = [x - center[0], y - center[1], z - center[2]]
    if rotation is not None:
        r = torch.as_tensor(rotation, dtype=torch.float64, device=device)
        d = [r[0, 0] * d[0] + r[1, 0] * d[1] + r[2, 0] * d[2],
             r[0, 1] * d[0] + r[1, 1] * d[1] + r[2, 1] * d[2],
             r[0, 2] * d[0] + r[1, 2] * d[1] + r[2, 2] * d[2]]
    inside = (d[0] / radii[0]) ** 2 + (d[1] / radii[1]) ** 2 + (d[2] / radii[2]) ** 2 <= 1.0
    return _average(inside.to(torch.float64), shape, supersample).to(dtype)


def sphere(shape: Sequence[int], *, radius: float, center: Sequence[float] | None = None,
           supersample: int = 3, dtype: torch.dtype = torch.float32,
           device: torch.device | str | None = None) -> torch.Tensor:
    """Partial-volume indicator of a sphere of ``radius`` voxels.

    >>> s = sphere((16, 16, 16), radius=4)
    >>> float(s[8, 8, 8]), float(s[0, 0, 0])
    (1.0, 0.0)
    """
    return ellipsoid(shape, radii=(radius, radius, radius), center=center, supersample=supersample,
                     dtype=dtype, device=device)


def cylinder(
    shape: Sequence[int],
    *,
    radius: float,
    length: float,
    axis: Sequence[float] = (0.0, 0.0, 1.0),
    center: Sequence[float] | None = None,
    supersample: int = 3,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Partial-volume indicator of a finite cylinder (voxel units) along ``axis``."""
    shape = tuple(int(n) for n in shape)
    center = [n // 2 for n in shape] if center is None else [float(c) for c in center]
    a = torch.as_tensor(axis, dtype=torch.float64)
    a = a / torch.linalg.vector_norm(a)
    x, y, z = _grid(shape, supersample, torch.float64, device)
    d = [x - center[0], y - center[1], z - center[2]]
    along = d[0] * a[0] + d[1] * a[1] + d[2] * a[2]
    radial2 = d[0] ** 2 + d[1] ** 2 + d[2] ** 2 - along**2
    inside = (radial2 <= radius**2) & (along.abs() <= length / 2)
    return _average(inside.to(torch.float64), shape, supersample).to(dtype)


def shapes_phantom(
    shape: Sequence[int] = (64, 64, 64),
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A head-like test object: χ (ppm) and its mask.

    An ellipsoidal "brain" (χ = 0) holding a vein-like cylinder (0.3 ppm),
    two deep-grey-matter-like ellipsoids (0.1, 0.15 ppm), a white-matter-like
    ellipsoid (−0.05 ppm) and a calcification-like sphere (−0.2 ppm).
    Sizes scale with the grid.

    Returns
    -------
    chi_ppm, mask
        Float tensor (ppm) and boolean mask, both ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    n = min(shape)
    c = [s / 2 for s in shape]
    mask = ellipsoid(shape, radii=(0.42 * shape[0], 0.44 * shape[1], 0.40 * shape[2]), supersample=1) > 0.5
    chi = torch.zeros(shape, dtype=torch.float64)
    chi += 0.3 * cylinder(shape, radius=0.03 * n, length=0.5 * n, axis=(1.0, 0.3, 0.2),
                          center=(c[0], c[1] + 0.15 * n, c[2]))
    chi += 0.10 * ellipsoid(shape, radii=(0.10 * n, 0.06 * n, 0.08 * n), center=(c[0] - 0.15 * n, c[1], c[2]))
    chi += 0.15 * ellipsoid(shape, radii=(0.07 * n, 0.05 * n, 0.06 * n), center=(c[0] + 0.16 * n, c[1], c[2]))
    chi -= 0.05 * ellipsoid(shape, radii=(0.12 * n, 0.07 * n, 0.05 * n), center=(c[0], c[1] - 0.15 * n, c[2]))
    chi -= 0.2 * sphere(shape, radius=0.04 * n, center=(c[0], c[1], c[2] + 0.15 * n))
    chi = chi * mask
    return chi.to(dtype=dtype, device=device), mask.to(device)
