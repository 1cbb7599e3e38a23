r"""Background fields: sources outside the brain and shim residuals.

The total field inside the brain is the local field of brain tissue plus a
background from everything else: the head's own air and bone (the field of
χ outside the brain mask, :func:`background_field`), random strong sources
around the brain as NeXtQSM simulates them (:func:`external_sources`, about a
hundred ellipsoids), and the imperfect shim, a low-order polynomial
(:func:`shim_field`). Background-removal networks learn to strip all three.

References
----------
.. [1] Cognolato F, O'Brien K, Jin J, et al. NeXtQSM — a complete deep
   learning pipeline for data-consistent quantitative susceptibility mapping
   trained with hybrid data. Med Image Anal 2023;84:102700.
   doi:10.1016/j.media.2022.102700
.. [2] Schenck JF. The role of magnetic susceptibility in magnetic resonance
   imaging: MRI magnetic compatibility of the first and second kinds. Med
   Phys 1996;23:815–850. doi:10.1118/1.597854
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import InputError, ParameterError
from .augment import _check_generator, _check_range, _check_voxel_size, _rand, _randn
from .forward import HEAD_KERNEL_FORM, forward_field
from .shapes import _draw_count, _paint, _random_centres, _random_rotations

__all__ = ["external_sources", "background_field", "shim_field"]


def _check_mask(brain_mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(brain_mask, torch.Tensor) or tuple(brain_mask.shape) != shape:
        raise InputError(f"brain_mask must be a tensor of shape {shape}, got {getattr(brain_mask, 'shape', None)}")
    return brain_mask.bool()


def external_sources(
    shape: Sequence[int],
    brain_mask: torch.Tensor,
    *,
    generator: torch.Generator,
    count: int | tuple[int, int] = 100,
    chi_range_ppm: tuple[float, float] = (-10.0, 10.0),
    radius_range_mm: tuple[float, float] | None = None,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""χ (ppm) of random ellipsoidal sources placed around the brain, never inside it (NeXtQSM).

    Each source is an ellipsoid with centre uniform among the voxels outside
    ``brain_mask``, semi-axes uniform in ``radius_range_mm``, orientation
    uniform on SO(3) and χ uniform in ``chi_range_ppm``; sources are painted
    in turn and their voxels inside the brain are left at 0. The default χ
    range spans air (≈ +9.4 ppm relative to tissue, NeXtQSM uses ≈ 9.2) and
    bone (≈ −2 ppm) with random signs, so the background varies widely; the
    default size, 3–12 % of the smallest field-of-view extent per semi-axis,
    gives ~100 sources of about a tenth of the brain's size as in NeXtQSM.
    Feed the result to :func:`forward_field` (with padding) and keep the field
    inside the brain.

    Parameters
    ----------
    shape
        Grid ``(X, Y, Z)``.
    brain_mask
        Boolean ``(X, Y, Z)``; sources never touch it.
    generator
        Source of randomness.
    count
        Number of sources, or an inclusive ``(min, max)`` range.
    chi_range_ppm
        ``(min, max)`` χ of a source, ppm.
    radius_range_mm
        ``(min, max)`` semi-axis, mm; default ``(0.03, 0.12)`` × the smallest
        extent of the field of view.
    voxel_size_mm
        Voxel size, mm.
    dtype
        Floating dtype of the result (on the mask's device).

    Returns
    -------
    torch.Tensor
        χ in ppm, ``(X, Y, Z)``, zero inside ``brain_mask``.

    References
    ----------
    Cognolato F, et al. NeXtQSM. Med Image Anal 2023;84:102700. doi:10.1016/j.media.2022.102700

    Schenck JF. Med Phys 1996;23:815–850. doi:10.1118/1.597854

    Examples
    --------
    >>> brain = torch.zeros(32, 32, 32, dtype=torch.bool)
    >>> brain[8:24, 8:24, 8:24] = True
    >>> chi = external_sources((32, 32, 32), brain, generator=torch.Generator().manual_seed(0), count=20)
    >>> bool((chi[brain] == 0).all()) and bool((chi != 0).any())
    True
    """
    _check_generator(generator)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ParameterError(f"shape must be three positive sizes (X, Y, Z), got {shape}")
    brain_mask = _check_mask(brain_mask, shape)
    lo, hi = _check_range("chi_range_ppm", chi_range_ppm)
    vox = _check_voxel_size(voxel_size_mm)
    if radius_range_mm is None:
        extent = min(n * v for n, v in zip(shape, vox))
        r_lo, r_hi = 0.03 * extent, 0.12 * extent
    else:
        r_lo, r_hi = _check_range("radius_range_mm", radius_range_mm)
        if r_lo <= 0:
            raise ParameterError(f"radius_range_mm must be positive, got {radius_range_mm!r}")
    n = _draw_count("count", count, generator)
    outside = ~brain_mask
    chi = torch.zeros(shape, dtype=dtype, device=brain_mask.device)
    if n == 0:
        return chi
    if not bool(outside.any()):
        raise InputError("brain_mask covers the whole grid: there is no room for external sources")
    semi = r_lo + (r_hi - r_lo) * _rand(generator, n, 3).cpu()
    rotations = _random_rotations(generator, n)
    values = (lo + (hi - lo) * _rand(generator, n).cpu()).tolist()
    centres = _random_centres(generator, n, shape, outside)
    _paint(chi, kinds=[0] * n, centres=centres, semi_axes_mm=semi, rotations=rotations, values=values,
           voxel_size_mm=vox, region=outside)
    return chi


def background_field(
    chi_ppm: torch.Tensor,
    brain_mask: torch.Tensor,
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    pad: int | Sequence[int] = 0,
) -> torch.Tensor:
    r"""Field (ppm) inside the brain of the χ outside it: the background of the head's own air and bone.

    .. math:: f_{bg} = M\,\big(D * ((1 - M)\,\chi)\big)

    with :math:`M` the brain mask and :math:`D` the voxel-integrated dipole kernel (``form="image"``:
    harmonic in the brain at any B0 direction, docs/conventions.md)
    (:func:`~torchqsm.simulate.forward_field`). The total field of a head is
    :math:`f_{bg}` plus the local field :math:`M (D * (M\chi))`.

    Parameters
    ----------
    chi_ppm
        χ of the whole head (and any external sources), ppm, ``(..., X, Y, Z)``.
    brain_mask
        Boolean ``(X, Y, Z)``.
    voxel_size_mm, b0_dir, pad
        As for :func:`~torchqsm.simulate.forward_field`; pad by about the
        object's size to avoid wrap-around.

    Returns
    -------
    torch.Tensor
        Background field in ppm of B0, zero outside ``brain_mask``.

    Examples
    --------
    >>> chi, brain = torch.zeros(32, 32, 32, dtype=torch.float64), torch.zeros(32, 32, 32, dtype=torch.bool)
    >>> brain[8:24, 8:24, 8:24] = True
    >>> chi[12:20, 12:20, 12:20] = 1.0            # inside the brain: no background
    >>> float(background_field(chi, brain).abs().max())
    0.0
    """
    brain_mask = _check_mask(brain_mask, tuple(chi_ppm.shape[-3:])).to(chi_ppm.device)
    outside = chi_ppm * ~brain_mask
    field = forward_field(outside, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, pad=pad, form=HEAD_KERNEL_FORM)
    return field * brain_mask


def shim_field(
    shape: Sequence[int],
    *,
    generator: torch.Generator,
    order: int = 2,
    amplitude_ppm: float = 1.0,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""A random low-order harmonic polynomial field (ppm): the residual of an imperfect shim.

    .. math::

        f(\mathbf r) = A\,\frac{p(\mathbf r)}{\max_{\mathbf r}|p(\mathbf r)|},\qquad
        p = \sum_{k=1}^{n} \sum_{j=1}^{2k+1} w_{kj}\,
            \mathrm{Re}\big(e^{i\theta_{kj}} (\mathbf a_{kj}\cdot\tilde{\mathbf r})^k\big),
        \quad w_{kj} \sim \mathcal N(0, 1),

    where :math:`\mathbf a = \mathbf u + i\mathbf v` with :math:`\mathbf u \perp \mathbf v`
    random unit vectors, so :math:`\mathbf a\cdot\mathbf a = 0` and every term is harmonic
    (:math:`\nabla^2 (\mathbf a\cdot\mathbf r)^k = k(k-1)(\mathbf a\cdot\mathbf a)
    (\mathbf a\cdot\mathbf r)^{k-2} = 0`), like the spherical-harmonic fields of real shim
    coils (a field outside its sources is harmonic; a general polynomial such as :math:`x^2` is
    not, and background removal could not remove it). :math:`\tilde{\mathbf r}` is the position
    in mm from the grid centre divided by the largest half-extent, :math:`n` = ``order`` and
    :math:`A` = ``amplitude_ppm``: the largest :math:`|f|` over the grid is exactly
    ``amplitude_ppm``. There is no constant term: a global offset is a frequency (phase)
    offset, which the signal model adds separately.

    Parameters
    ----------
    shape
        Grid ``(X, Y, Z)``.
    generator
        Source of randomness.
    order
        Highest total degree, 1 to 6 (2: linear and second-order shim terms).
    amplitude_ppm
        Largest absolute field over the grid, ppm (≥ 0).
    voxel_size_mm
        Voxel size, mm.
    dtype, device
        Of the result.

    Returns
    -------
    torch.Tensor
        Field in ppm of B0, ``(X, Y, Z)``.

    Examples
    --------
    >>> f = shim_field((16, 16, 16), generator=torch.Generator().manual_seed(0), amplitude_ppm=0.5)
    >>> round(float(f.abs().max()), 6)
    0.5
    """
    _check_generator(generator)
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ParameterError(f"shape must be three positive sizes (X, Y, Z), got {shape}")
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 6:
        raise ParameterError(f"order must be an integer from 1 to 6, got {order!r}")
    amplitude = float(amplitude_ppm)
    if not (math.isfinite(amplitude) and amplitude >= 0):
        raise ParameterError(f"amplitude_ppm must be a finite number >= 0, got {amplitude_ppm}")
    vox = _check_voxel_size(voxel_size_mm)
    radius = max((n - 1) * v / 2 for n, v in zip(shape, vox)) or 1.0
    axes = [((torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * v / radius) for n, v in zip(shape, vox)]
    count = sum(2 * k + 1 for k in range(1, order + 1))
    frames, _ = torch.linalg.qr(_randn(generator, 9 * count).cpu().double().reshape(count, 3, 3))
    draws = _randn(generator, 2 * count).cpu().double().reshape(count, 2)
    field = torch.zeros(shape, dtype=torch.float64)
    # Degrees 1 and 2 are summed as real coefficients first: Re(e^{iθ} a·r) = Re(e^{iθ} a)·r and
    # Re(e^{iθ} (a·r)²) = rᵀ Re(e^{iθ} a aᵀ) r, so the grid sees 3 + 6 real products, not 8 complex powers.
    linear, quadratic = torch.zeros(3, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    term = 0
    for k in range(1, order + 1):
        for _ in range(2 * k + 1):
            u, v = frames[term, :, 0], frames[term, :, 1]
            a = torch.complex(u, v)  # a·a = |u|² − |v|² + 2i u·v = 0
            weight, angle = float(draws[term, 0]), math.pi * float(torch.tanh(draws[term, 1]))
            phase = complex(math.cos(angle), math.sin(angle))
            if k == 1:
                linear += weight * (phase * a).real
            elif k == 2:
                quadratic += weight * (phase * torch.outer(a, a)).real
            else:
                t = (a[0] * axes[0][:, None, None] + a[1] * axes[1][None, :, None] + a[2] * axes[2][None, None, :])
                field += weight * (phase * t**k).real
            term += 1
    grid = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
    for i in range(3):
        field += linear[i] * grid[i] + quadratic[i, i] * grid[i] ** 2
        for j in range(i + 1, 3):
            field += 2 * quadratic[i, j] * grid[i] * grid[j]
    field = field.to(dtype=dtype, device=device)
    peak = float(field.abs().max())
    return field * (amplitude / peak if peak > 0 else 0.0)
