r"""Augmentation of susceptibility maps: χ scaling and rotations.

Two augmentations of training χ maps whose field is recomputed afterwards:

* **Susceptibility scaling** (QSMnet+): the dipole model is linear, so a χ map
  multiplied by a factor :math:`s` is a valid training target for the field
  multiplied by :math:`s`; random factors widen the χ range a network sees
  beyond that of healthy tissue.
* **Rotations** (DF-QSM): χ rotated by a random rotation of up to ±45° and the
  field recomputed with the dipole kernel, so the network sees many
  orientations of the anatomy relative to :math:`\hat b_0`.

The resampling helpers here (:func:`rotate_volume` and the private warp grid)
are shared by :mod:`torchqsm.simulate.hybrid` for its random deformations.

References
----------
.. [1] Jung W, Yoon J, Ji S, et al. Exploring linearity of deep neural network
   trained QSM: QSMnet+. NeuroImage 2020;211:116619.
   doi:10.1016/j.neuroimage.2020.116619
.. [2] Paluru N, Mathew RS, Yalavarthy PK. DF-QSM: data fidelity based hybrid
   approach for improved quantitative susceptibility mapping of the brain.
   NMR Biomed 2024;e5163. doi:10.1002/nbm.5163
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ParameterError

__all__ = ["scale_susceptibility", "random_scale", "rotation_matrix", "random_rotation", "rotate_volume"]

Order = Literal["nearest", "linear"]


# --- shared private helpers (random draws, validation, warping) -------------------------------

def _check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ParameterError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _check_range(name: str, value, *, low: float | None = None) -> tuple[float, float]:
    """A finite ``(min, max)`` pair with ``min <= max`` (and ``min >= low``)."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a (min, max) pair, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ParameterError(f"{name} must be a finite (min, max) pair with min <= max, got {value!r}")
    if low is not None and lo < low:
        raise ParameterError(f"{name} must lie at or above {low}, got {value!r}")
    return lo, hi


def _check_nonnegative(name: str, value) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ParameterError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_voxel_size(voxel_size_mm) -> tuple[float, float, float]:
    vox = tuple(float(v) for v in voxel_size_mm)
    if len(vox) != 3 or not all(math.isfinite(v) and v > 0 for v in vox):
        raise ParameterError(f"voxel_size_mm must be three positive numbers, got {voxel_size_mm!r}")
    return vox


def _rand(generator: torch.Generator, *size: int, dtype=torch.float64) -> torch.Tensor:
    """Uniform [0, 1) draws on the generator's device (move them where they are needed)."""
    return torch.rand(size, generator=generator, device=generator.device, dtype=dtype)


def _randn(generator: torch.Generator, *size: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(size, generator=generator, device=generator.device, dtype=dtype)


def _random_axes(generator: torch.Generator, count: int) -> torch.Tensor:
    """``count`` unit vectors uniform on the sphere, ``(count, 3)`` float64 on the CPU."""
    v = _randn(generator, count, 3).cpu()
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(1e-12)


def _rotations(axes: torch.Tensor, angles_rad: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula for a batch: ``(n, 3)`` unit axes, ``(n,)`` angles → ``(n, 3, 3)``."""
    x, y, z = axes.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)
    s, c = torch.sin(angles_rad)[:, None, None], torch.cos(angles_rad)[:, None, None]
    eye = torch.eye(3, dtype=axes.dtype, device=axes.device).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


def _warp_grid(shape: Sequence[int], matrix: torch.Tensor, *, voxel_size_mm: Sequence[float],
               displacement_mm: torch.Tensor | None = None, dtype=torch.float32,
               device=None) -> torch.Tensor:
    """Sampling grid for ``grid_sample`` of the map q ↦ M q + d(q) about the grid centre.

    ``q`` is an output position in mm from the centre ``(N - 1) / 2``; the
    result is the source position, normalised to [-1, 1] (``align_corners``)
    and ordered (z, y, x) as ``grid_sample`` wants for a ``(D, H, W) =
    (X, Y, Z)`` volume. ``displacement_mm`` is ``(3, X, Y, Z)``.
    """
    shape = tuple(int(n) for n in shape)
    m = torch.as_tensor(matrix, dtype=torch.float64).cpu()
    half = [v * max(n - 1, 1) / 2 for n, v in zip(shape, voxel_size_mm)]    # mm at u = ±1
    q = []
    for axis, n in enumerate(shape):
        u = torch.linspace(-1.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
        q.append(u * half[axis])
    # Components stored contiguously and permuted to (X, Y, Z, 3): grid_sample takes the strided
    # view, and contiguous writes are ~10x faster than interleaved ones.
    grid = torch.empty(3, *shape, dtype=dtype, device=device)
    for j in range(3):
        # Separable: each source coordinate is a sum of three 1-D ramps (cheap broadcasts).
        a, b, c = ((q[i] * float(m[j, i]) / half[j]).to(dtype=dtype, device=device) for i in range(3))
        out = grid[2 - j]
        torch.add(a[:, None, None] + b[None, :, None], c, out=out)
        if displacement_mm is not None:
            out.add_(displacement_mm[j], alpha=1.0 / half[j])
    return grid.permute(1, 2, 3, 0)


def _resample(volume: torch.Tensor, grid: torch.Tensor, order: Order) -> torch.Tensor:
    """``volume`` (..., X, Y, Z) sampled at ``grid`` (X, Y, Z, 3); zero outside the volume."""
    if order not in ("nearest", "linear"):
        raise ParameterError(f"order must be 'nearest' or 'linear', got {order!r}")
    lead = volume.shape[:-3]
    floating = volume.is_floating_point()
    # Integer labels go through float32: exact for labels below 2**24.
    work = volume if floating else volume.to(torch.float32)
    work = work.reshape(1, -1, *volume.shape[-3:])
    out = F.grid_sample(work, grid[None].to(dtype=work.dtype, device=work.device),
                        mode="nearest" if order == "nearest" else "bilinear",
                        padding_mode="zeros", align_corners=True)
    out = out.reshape(*lead, *grid.shape[:3])
    return out if floating else out.round().to(volume.dtype)


def _smooth_noise(shape: Sequence[int], *, smoothness_mm: float, voxel_size_mm: Sequence[float],
                  generator: torch.Generator, channels: int = 1, scale: float = 1.0,
                  dtype=torch.float32, device=None) -> torch.Tensor:
    r"""Stationary Gaussian random field, ``(channels, X, Y, Z)``, variance ``scale²`` per voxel.

    White noise :math:`w_j` on nodes spaced :math:`\sigma` = ``smoothness_mm``
    (reaching 3σ beyond the grid) is summed with Gaussian weights,
    :math:`f(x) = \sum_j w_j\, g_\sigma(x - \xi_j)`, separably: three small
    matrix products instead of full-resolution noise and FFTs (~10× cheaper
    at 160³). Weights are normalised so that each voxel has variance 1; the
    correlation between voxels a distance r apart is about exp(-r²/4σ²).
    Below half a voxel the field is white noise.
    """
    shape = tuple(int(n) for n in shape)
    if smoothness_mm < 0.5 * min(voxel_size_mm):
        return scale * _randn(generator, channels, *shape, dtype=dtype).to(device)
    sigma = float(smoothness_mm)
    weights = []
    for n, v in zip(shape, voxel_size_mm):
        x = torch.arange(n, dtype=torch.float64) * v
        nodes = torch.arange(-3 * sigma, (n - 1) * v + 3 * sigma + sigma, sigma, dtype=torch.float64)
        w = torch.exp(-0.5 * ((x[:, None] - nodes[None, :]) / sigma) ** 2)
        weights.append((w / torch.linalg.vector_norm(w, dim=1, keepdim=True)).to(dtype=dtype, device=device))
    weights[0] = weights[0] * scale
    wx, wy, wz = weights
    noise = _randn(generator, channels, wx.shape[1], wy.shape[1], wz.shape[1], dtype=dtype).to(device)
    field = noise @ wz.T                                          # (C, mx, my, Z)
    field = torch.matmul(wy, field)                               # (C, mx, Y, Z), no transposes
    return (wx @ field.reshape(channels, wx.shape[1], -1)).reshape(channels, *shape)


# --- public API --------------------------------------------------------------------------------

def scale_susceptibility(chi_ppm: torch.Tensor, *, factor: float) -> torch.Tensor:
    r"""Multiply χ by ``factor`` (QSMnet+ linearity augmentation).

    Because the field :math:`f = D * \chi` is linear in χ, the pair
    :math:`(s\chi, s f)` is as valid as :math:`(\chi, f)`; recompute the field
    from the scaled χ (or scale the field by the same factor).

    Parameters
    ----------
    chi_ppm
        Susceptibility, ppm, shape ``(..., X, Y, Z)``.
    factor
        Positive, finite scale factor (dimensionless).

    Returns
    -------
    torch.Tensor
        ``factor * chi_ppm``, same shape, dtype and device.

    References
    ----------
    Jung W, et al. QSMnet+. NeuroImage 2020;211:116619. doi:10.1016/j.neuroimage.2020.116619

    Examples
    --------
    >>> scale_susceptibility(torch.tensor([0.1, -0.2]), factor=2.0)
    tensor([ 0.2000, -0.4000])
    """
    factor = float(factor)
    if not (math.isfinite(factor) and factor > 0):
        raise ParameterError(f"factor must be a positive finite number, got {factor}")
    return chi_ppm * factor


def random_scale(chi_ppm: torch.Tensor, *, generator: torch.Generator,
                 range: tuple[float, float] = (0.5, 2.0)) -> torch.Tensor:  # noqa: A002 (agreed name)
    r"""Scale χ by a random factor drawn log-uniformly from ``range`` (QSMnet+).

    :math:`s = \exp(u)`, :math:`u \sim \mathcal U(\log s_{min}, \log s_{max})`:
    log-uniform, so halving and doubling are equally likely for the default
    ``(0.5, 2.0)``.

    Parameters
    ----------
    chi_ppm
        Susceptibility, ppm, shape ``(..., X, Y, Z)``.
    generator
        Source of randomness (one draw).
    range
        ``(min, max)`` factor, ``0 < min <= max``.

    Returns
    -------
    torch.Tensor
        The scaled χ (ppm), same shape, dtype and device.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> out = random_scale(torch.ones(2, 2, 2), generator=g, range=(2.0, 2.0))
    >>> float(out.max())
    2.0
    """
    _check_generator(generator)
    lo, hi = _check_range("range", range)
    if lo <= 0:
        raise ParameterError(f"range must hold positive factors, got {range!r}")
    u = float(_rand(generator, 1)[0])
    return scale_susceptibility(chi_ppm, factor=math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))


def rotation_matrix(axis: Sequence[float], angle_deg: float, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""Right-handed rotation by ``angle_deg`` about ``axis`` (voxel axes x, y, z), ``3×3``.

    :math:`R = I + \sin\theta\,K + (1 - \cos\theta)K^2` (Rodrigues), with
    :math:`K` the cross-product matrix of the unit axis.

    Examples
    --------
    >>> rotation_matrix((0, 0, 1), 90.0).round().tolist()   # x → y
    [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    """
    a = torch.as_tensor([float(v) for v in axis], dtype=torch.float64)
    norm = float(torch.linalg.vector_norm(a))
    if a.numel() != 3 or not math.isfinite(norm) or norm == 0:
        raise ParameterError(f"axis must be a non-zero 3-vector, got {axis!r}")
    angle = torch.tensor([math.radians(float(angle_deg))], dtype=torch.float64)
    return _rotations((a / norm)[None], angle)[0].to(dtype)


def random_rotation(generator: torch.Generator, *, max_angle_deg: float = 45.0,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""A random rotation matrix: axis uniform on the sphere, angle uniform in ±``max_angle_deg``.

    The rotated frame's axes then lie within ``max_angle_deg`` of the original
    ones, as in DF-QSM's rotations "within -45 to +45 degrees relative to B0".

    Parameters
    ----------
    generator
        Source of randomness (four draws).
    max_angle_deg
        Largest rotation angle, degrees, in [0, 180].
    dtype
        Floating dtype of the result (CPU tensor).

    Returns
    -------
    torch.Tensor
        ``(3, 3)`` orthogonal matrix with determinant +1.

    References
    ----------
    Paluru N, Mathew RS, Yalavarthy PK. DF-QSM. NMR Biomed 2024;e5163. doi:10.1002/nbm.5163

    Examples
    --------
    >>> r = random_rotation(torch.Generator().manual_seed(0), max_angle_deg=30.0)
    >>> bool(torch.allclose(r @ r.T, torch.eye(3), atol=1e-6))
    True
    """
    _check_generator(generator)
    max_angle = _check_nonnegative("max_angle_deg", max_angle_deg)
    if max_angle > 180:
        raise ParameterError(f"max_angle_deg must be in [0, 180], got {max_angle}")
    axis = _random_axes(generator, 1)
    angle = (2 * _rand(generator, 1).cpu() - 1) * math.radians(max_angle)
    return _rotations(axis, angle)[0].to(dtype)


def rotate_volume(volume: torch.Tensor, rotation: torch.Tensor, *, order: Order = "linear",
                  voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    r"""Rotate a volume about its grid centre by ``rotation`` (in millimetre space).

    .. math:: v_{out}(\mathbf q) = v(R^{T}\mathbf q), \qquad
              \mathbf q = (\mathbf p - \mathbf c)\odot\Delta

    for voxel index :math:`\mathbf p`, centre :math:`\mathbf c = (N-1)/2` and
    voxel size :math:`\Delta`: the object turns by :math:`R` (a 90° turn about
    z, ``rotation_matrix((0, 0, 1), 90)``, equals ``torch.rot90(v, 1, (0, 1))``
    on a square grid). Values from outside the grid are 0. Rotate χ, then
    recompute the field with the fixed :math:`\hat b_0` (DF-QSM augmentation).

    Parameters
    ----------
    volume
        ``(..., X, Y, Z)``; leading dimensions share the rotation. Integer and
        boolean volumes (labels, masks) come back in their own dtype, rounded.
    rotation
        ``(3, 3)`` rotation matrix acting on (x, y, z) millimetre coordinates.
    order
        ``"nearest"`` (labels, masks) or ``"linear"`` (trilinear, for χ).
    voxel_size_mm
        Voxel size (mm), so anisotropic grids rotate in physical space.

    Returns
    -------
    torch.Tensor
        Rotated volume, same shape, dtype and device.

    References
    ----------
    Paluru N, Mathew RS, Yalavarthy PK. DF-QSM. NMR Biomed 2024;e5163. doi:10.1002/nbm.5163

    Examples
    --------
    >>> v = torch.arange(27.0).reshape(3, 3, 3)
    >>> out = rotate_volume(v, rotation_matrix((0, 0, 1), 90.0), order="nearest")
    >>> bool(torch.equal(out, torch.rot90(v, 1, (0, 1))))
    True
    """
    if volume.dim() < 3:
        raise ParameterError(f"volume must have at least 3 dimensions (X, Y, Z), got shape {tuple(volume.shape)}")
    r = torch.as_tensor(rotation, dtype=torch.float64).cpu()
    if r.shape != (3, 3):
        raise ParameterError(f"rotation must be a 3x3 matrix, got shape {tuple(r.shape)}")
    if not torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-4):
        raise ParameterError("rotation must be orthogonal (R Rᵀ = I)")
    vox = _check_voxel_size(voxel_size_mm)
    dtype = volume.dtype if volume.is_floating_point() else torch.float32
    grid = _warp_grid(volume.shape[-3:], r.T, voxel_size_mm=vox, dtype=dtype, device=volume.device)
    return _resample(volume, grid, order)
