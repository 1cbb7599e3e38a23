r"""Random geometric shapes (DeepQSM): ellipsoids, cylinders and boxes with random χ.

DeepQSM showed that a network trained only on superposed simple shapes of
random susceptibility generalises to brains; NeXtQSM-style hybrid brains and
these shapes can be mixed, e.g. ``hybrid_chi(...) + random_shapes(...,
mask=brain_mask)``. The painting helper here also draws the lesions
(:mod:`.lesions`) and external sources (:mod:`.background`): each shape is
evaluated only inside its own bounding box, so a hundred shapes at 160³ cost
milliseconds rather than a hundred full-grid passes.

References
----------
.. [1] Bollmann S, Rasmussen KGB, Kristensen M, et al. DeepQSM — using deep
   learning to solve the dipole inversion for quantitative susceptibility
   mapping. NeuroImage 2019;195:373–383. doi:10.1016/j.neuroimage.2019.03.060
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError, ParameterError
from .augment import _check_generator, _check_range, _rand, _randn

__all__ = ["random_shapes", "SHAPE_KINDS"]

SHAPE_KINDS = ("ellipsoid", "cylinder", "box")


def _draw_count(name: str, count, generator: torch.Generator) -> int:
    """``count`` as an int ≥ 0, or a draw uniform in an inclusive ``(min, max)`` pair."""
    if isinstance(count, (int,)) and not isinstance(count, bool):
        if count < 0:
            raise ParameterError(f"{name} must be >= 0, got {count}")
        return count
    try:
        lo, hi = count
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an integer or a (min, max) pair of integers, got {count!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (lo, hi)) or lo < 0 or lo > hi:
        raise ParameterError(f"{name} must be a (min, max) pair of integers with 0 <= min <= max, got {count!r}")
    return lo + int(_rand(generator, 1)[0] * (hi - lo + 1))


def _random_rotations(generator: torch.Generator, count: int) -> torch.Tensor:
    """``(count, 3, 3)`` rotations uniform on SO(3) (normalised Gaussian quaternions), float64 CPU."""
    q = _randn(generator, count, 4).cpu()
    w, x, y, z = (q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-12)).unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=1).reshape(count, 3, 3)


def _random_centres(generator: torch.Generator, count: int, shape: Sequence[int],
                    region: torch.Tensor | None) -> torch.Tensor:
    """``(count, 3)`` voxel positions (float64 CPU), uniform in the grid or in ``region``'s voxels."""
    jitter = _rand(generator, count, 3).cpu() - 0.5
    if region is None:
        return _rand(generator, count, 3).cpu() * (torch.tensor(shape, dtype=torch.float64) - 1)
    flat = region.reshape(-1)
    total = flat.numel()
    found = torch.empty(0, dtype=torch.long)
    # Rejection sampling: nonzero() over a 160³ mask costs ~20x more than a few rounds of draws.
    for _ in range(16):
        if found.numel() >= count:
            break
        candidates = (_rand(generator, max(64, 4 * count)).cpu() * total).long().clamp_max(total - 1)
        found = torch.cat([found, candidates[flat[candidates.to(flat.device)].cpu()]])
    if found.numel() < count:       # a tiny region: pick among its voxels directly
        voxels = flat.nonzero()[:, 0].cpu()
        if voxels.numel() == 0:
            raise InputError("the region to place shapes in is empty")
        found = voxels[(_rand(generator, count).cpu() * voxels.numel()).long().clamp_max(voxels.numel() - 1)]
    found = found[:count]
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1])
    index = (found[:, None] // strides) % torch.tensor(shape)
    return index.to(torch.float64) + jitter


def _paint(volume: torch.Tensor, *, kinds: Sequence[int], centres: torch.Tensor, semi_axes_mm: torch.Tensor,
           rotations: torch.Tensor, values: Sequence[float], voxel_size_mm: Sequence[float],
           region: torch.Tensor | None = None, union: torch.Tensor | None = None) -> None:
    """Paint shapes into ``volume`` (X, Y, Z) in place, later ones over earlier ones.

    ``kinds`` index :data:`SHAPE_KINDS`; ``centres`` are voxel positions,
    ``semi_axes_mm`` the half-sizes along each shape's own axes (a cylinder's
    cross-section is the ellipse of its first two semi-axes, its half-length
    the third; columns of
    ``rotations`` are the shape's axes in (x, y, z)). Only voxels of
    ``region`` are painted; painted voxels are also set in ``union``.
    """
    if len(kinds) == 0:
        return
    vox = torch.tensor(voxel_size_mm, dtype=torch.float64)
    r = rotations.to(torch.float64)
    a = semi_axes_mm.to(torch.float64)
    # Bounding half-extents in voxels: exact for an ellipsoid, conservative otherwise.
    ell = torch.sqrt((r**2) @ (a**2)[:, :, None])[:, :, 0]
    box = (r.abs() @ a[:, :, None])[:, :, 0]
    kind_t = torch.as_tensor(list(kinds))
    half = torch.where((kind_t == 0)[:, None], ell, box) / vox
    lo = torch.floor(centres - half).clamp_min(0).long()
    hi = torch.minimum(torch.ceil(centres + half).long() + 1, torch.tensor(volume.shape))
    dtype, device = volume.dtype if volume.is_floating_point() else torch.float32, volume.device
    # The shape's local coordinates (scaled so its surface is at 1) are affine in x, y and z:
    # local_k = sum_i m[k, i] * x_i - shift_k. One ramp per shape, component and axis, sliced to
    # the box and broadcast-added, costs a dozen small ops per shape (a per-box matmul with an
    # inner dimension of 3 was 10x slower on the CPU).
    m = (r / a[:, None, :].clamp_min(1e-12)).transpose(1, 2) * vox          # (S, k, i), per voxel
    shift = (m @ centres[:, :, None])[:, :, 0]                              # (S, k)
    ramps = [(m[:, :, i, None] * torch.arange(n, dtype=torch.float64)).to(dtype=dtype, device=device)
             for i, n in enumerate(volume.shape)]                           # (S, k, N_i)
    ramps[0] -= shift[:, :, None].to(dtype=dtype, device=device)
    for index, (kind, v, l, h) in enumerate(zip(kinds, values, lo.tolist(), hi.tolist())):
        if any(h_i <= l_i for l_i, h_i in zip(l, h)):
            continue
        box_slice = (slice(l[0], h[0]), slice(l[1], h[1]), slice(l[2], h[2]))
        local = (ramps[0][index, :, l[0]:h[0], None, None] + ramps[1][index, :, None, l[1]:h[1], None]
                 + ramps[2][index, :, None, None, l[2]:h[2]])                # (3, bx, by, bz)
        if kind == 0:
            inside = local.square_().sum(0) <= 1
        elif kind == 1:
            inside = (local[:2].square().sum(0) <= 1) & (local[2].abs() <= 1)
        else:
            inside = local.abs_().amax(0) <= 1
        if region is not None:
            inside &= region[box_slice]
        volume[box_slice].masked_fill_(inside, v)
        if union is not None:
            union[box_slice] |= inside


def random_shapes(
    shape: Sequence[int],
    *,
    generator: torch.Generator,
    count: int | tuple[int, int] = (20, 60),
    chi_range_ppm: tuple[float, float] = (-0.2, 0.2),
    kinds: Sequence[str] = SHAPE_KINDS,
    mask: torch.Tensor | None = None,
    size_range: tuple[float, float] = (0.03, 0.2),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""χ map of randomly placed, rotated ellipsoids, cylinders and boxes (DeepQSM-style).

    Each shape gets a χ uniform in ``chi_range_ppm``, semi-axes uniform in
    ``size_range`` × the smallest grid dimension (voxels; a cylinder uses one
    radius and a half-length), a rotation uniform on SO(3) and a centre
    uniform in the grid (or in ``mask``). Shapes are painted in turn, later
    ones over earlier ones, so every non-background voxel holds one shape's
    value; the background is 0.

    Parameters
    ----------
    shape
        Grid ``(X, Y, Z)``.
    generator
        Source of randomness.
    count
        Number of shapes, or an inclusive ``(min, max)`` range to draw it from.
    chi_range_ppm
        ``(min, max)`` susceptibility of a shape, ppm.
    kinds
        Which of ``"ellipsoid"``, ``"cylinder"``, ``"box"`` to draw (uniformly).
    mask
        Optional boolean ``(X, Y, Z)``: centres are drawn among its voxels and
        χ outside it is 0.
    size_range
        ``(min, max)`` semi-axis as a fraction of the smallest grid dimension.
    dtype, device
        Of the result (``device`` defaults to the mask's).

    Returns
    -------
    torch.Tensor
        χ in ppm, ``shape``.

    References
    ----------
    Bollmann S, et al. DeepQSM. NeuroImage 2019;195:373–383. doi:10.1016/j.neuroimage.2019.03.060

    Examples
    --------
    >>> chi = random_shapes((32, 32, 32), generator=torch.Generator().manual_seed(0), count=10)
    >>> bool(chi.min() >= -0.2) and bool(chi.max() <= 0.2) and bool((chi != 0).any())
    True
    """
    _check_generator(generator)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ParameterError(f"shape must be three positive sizes (X, Y, Z), got {shape}")
    lo, hi = _check_range("chi_range_ppm", chi_range_ppm)
    size_lo, size_hi = _check_range("size_range", size_range)
    if size_lo <= 0:
        raise ParameterError(f"size_range must be positive fractions, got {size_range!r}")
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in SHAPE_KINDS]
    if not kinds or unknown:
        raise ParameterError(f"kinds must be a non-empty selection of {SHAPE_KINDS}, got {kinds!r}")
    if mask is not None:
        if tuple(mask.shape) != shape:
            raise InputError(f"mask shape {tuple(mask.shape)} differs from shape {shape}")
        mask = mask.bool()
        device = mask.device if device is None else device
    n = _draw_count("count", count, generator)

    codes = [SHAPE_KINDS.index(k) for k in kinds]
    pick = (_rand(generator, n).cpu() * len(codes)).long().clamp_max(len(codes) - 1).tolist()
    semi = (size_lo + (size_hi - size_lo) * _rand(generator, n, 3).cpu()) * min(shape)
    rotations = _random_rotations(generator, n)
    values = (lo + (hi - lo) * _rand(generator, n).cpu()).tolist()
    centres = _random_centres(generator, n, shape, mask)
    chi = torch.zeros(shape, dtype=dtype, device=device)
    _paint(chi, kinds=[codes[p] for p in pick], centres=centres, semi_axes_mm=semi, rotations=rotations,
           values=values, voxel_size_mm=(1.0, 1.0, 1.0), region=mask)
    return chi
