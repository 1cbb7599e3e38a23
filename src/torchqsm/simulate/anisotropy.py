r"""White-matter susceptibility anisotropy: a field the scalar dipole model does not explain.

In white matter the susceptibility is a tensor, not a number (susceptibility tensor imaging,
Liu 2010; Li et al. 2012): cylindrically symmetric about the local fibre direction
:math:`\mathbf n`,

.. math::
    \boldsymbol\chi = \bar\chi\,\mathbf I + \Delta\chi_a\,(\mathbf n\mathbf n^\top - \tfrac13\mathbf I),

with :math:`\bar\chi` the mean (what QSM's truth is) and :math:`\Delta\chi_a = \chi_\parallel -
\chi_\perp` the anisotropy, reported at 0.01–0.02 ppm in human white matter. With the unit B0
direction :math:`\hat{\mathbf h}` and the Lorentz-sphere correction, the relative field is, in
k-space,

.. math::
    \delta(\mathbf k) = \tfrac13\,\hat{\mathbf h}^\top \hat{\boldsymbol\chi}(\mathbf k)\,\hat{\mathbf h}
      - \frac{(\mathbf k\cdot\hat{\mathbf h})\,\mathbf k^\top \hat{\boldsymbol\chi}(\mathbf k)\,
      \hat{\mathbf h}}{|\mathbf k|^2},

which for :math:`\boldsymbol\chi = \bar\chi\mathbf I` is the scalar dipole kernel. This module
gives the field of the traceless part only (:func:`anisotropic_field`), to add to the scalar
model's field, and a smooth random fibre field (:func:`random_fibre_directions`) for simulated
heads, whose white matter has no diffusion data. The field depends on the fibre direction
relative to B0, so a scalar inversion sees a model error that changes with head orientation.

Analytic checks (``tests/simulate/test_anisotropy.py``): inside a uniform sphere the field is 0
for any tensor; inside an infinite cylinder of fibres along its axis the field is
:math:`2\Delta\chi_a/9` with the axis along B0 and :math:`\Delta\chi_a/18` across it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError, ParameterError
from ..physics.kernels import kspace_frequencies
from ..physics.operators.pointwise import padding_for
from .augment import _smooth_noise

__all__ = ["WM_ANISOTROPY_PPM", "anisotropic_field", "random_fibre_directions"]

#: χ∥ − χ⊥ (ppm) of white matter used by the suite's anisotropy case: STI studies in human white
#: matter report 0.01–0.02 ppm (Li et al. 2012, NeuroImage 59:2088).
WM_ANISOTROPY_PPM = 0.015

_PAIRS = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def _unit_b0(b0_dir: Sequence[float]) -> torch.Tensor:
    b = torch.as_tensor([float(v) for v in b0_dir], dtype=torch.float64)
    if b.numel() != 3 or not bool(torch.isfinite(b).all()) or float(b.norm()) == 0.0:
        raise ParameterError(f"b0_dir must be 3 finite numbers, not all zero; got {tuple(b0_dir)}")
    return b / b.norm()


def anisotropic_field(
    anisotropy_ppm: torch.Tensor,
    fibres: torch.Tensor,
    *,
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    pad: int | Sequence[int] = 0,
) -> torch.Tensor:
    r"""Field (ppm of B0) of the traceless tensor :math:`\Delta\chi_a(\mathbf n\mathbf n^\top - \mathbf I/3)`.

    Parameters
    ----------
    anisotropy_ppm
        :math:`\Delta\chi_a` (ppm) per voxel, ``(X, Y, Z)``; 0 where there are no fibres.
    fibres
        Fibre directions, ``(3, X, Y, Z)``, in voxel-axis coordinates; normalised here (a zero
        vector contributes nothing).
    b0_dir
        B0 direction in voxel-axis coordinates (normalised here).
    voxel_size_mm
        Voxel size (mm).
    pad
        Zero padding (voxels per side) of the convolution, as for :class:`~torchqsm.physics.DipoleOp`.

    Returns
    -------
    torch.Tensor
        ``(X, Y, Z)`` float32, to add to the scalar model's field.

    Examples
    --------
    A fibre field parallel to B0 in a sphere: inside, the field of a uniform sphere is 0.

    >>> from torchqsm.simulate.phantoms import ellipsoid
    >>> ball = ellipsoid((32, 32, 32), radii=(8, 8, 8)) > 0.5
    >>> n = torch.zeros(3, 32, 32, 32); n[2] = 1.0
    >>> f = anisotropic_field(0.02 * ball, n, pad=16)
    >>> float(f[14:18, 14:18, 14:18].abs().max()) < 1e-4
    True
    """
    if anisotropy_ppm.ndim != 3 or fibres.shape != (3, *anisotropy_ppm.shape):
        raise InputError(f"need anisotropy (X, Y, Z) and fibres (3, X, Y, Z); got "
                         f"{tuple(anisotropy_ppm.shape)} and {tuple(fibres.shape)}")
    if not bool(torch.isfinite(anisotropy_ppm).all()) or not bool(torch.isfinite(fibres).all()):
        raise InputError("anisotropy and fibre directions must be finite")
    h = _unit_b0(b0_dir)
    shape = tuple(anisotropy_ppm.shape)
    padder = padding_for(shape, pad)
    size = padder.padded_shape
    n = fibres.double()
    n = n / n.norm(dim=0, keepdim=True).clamp_min(1e-12)
    n = torch.where(fibres.abs().sum(0, keepdim=True) > 0, n, 0.0)
    a = anisotropy_ppm.double()
    k = kspace_frequencies(size, voxel_size_mm=voxel_size_mm, rfft=True)
    # Cross terms k_i k_j (i ≠ j) are odd in k_i: on an even axis the Nyquist bin stands for ±k_N
    # and they vanish there (as in the scalar kernel), so the kernel stays even and real.
    odd = []
    for axis, length in enumerate(size):
        ka = k[axis]
        if length % 2 == 0:
            nyquist = torch.zeros_like(ka, dtype=torch.bool)
            nyquist.view(-1)[length // 2] = True
            ka = torch.where(nyquist, 0.0, ka)
        odd.append(ka)
    k2 = (k[0] ** 2 + k[1] ** 2 + k[2] ** 2).clone()
    k2[0, 0, 0] = 1.0
    kh = [sum(h[l] * (k[l] ** 2 if l == i else odd[l] * odd[i]) for l in range(3)) for i in range(3)]  # Σ_l h_l k_l k_i
    total = torch.zeros(k2.shape, dtype=torch.complex128)
    for i, j in _PAIRS:
        component = a * (n[i] * n[j] - (1.0 / 3.0 if i == j else 0.0))
        if not bool(component.any()):
            continue
        spectrum = torch.fft.rfftn(padder(component), dim=(-3, -2, -1))
        if i == j:
            kernel = h[i] ** 2 / 3.0 - h[i] * kh[i] / k2
        else:  # χ_ij = χ_ji: both terms
            kernel = 2.0 * h[i] * h[j] / 3.0 - (h[j] * kh[i] + h[i] * kh[j]) / k2
        kernel[0, 0, 0] = 0.0  # the DC term: the field is relative (as the scalar kernel's D(0) = 0)
        total += kernel * spectrum
    field = torch.fft.irfftn(total, s=size, dim=(-3, -2, -1))
    return padder.adjoint(field).float()


def random_fibre_directions(
    mask: torch.Tensor,
    *,
    generator: torch.Generator,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    smoothness_mm: float = 8.0,
) -> torch.Tensor:
    """A smooth random unit-vector field in ``mask`` (zero outside): fibre directions for a simulated head.

    Three stationary Gaussian random fields (correlation length ``smoothness_mm``), normalised
    voxel by voxel, so directions vary over centimetres, as tracts do, and every orientation
    relative to B0 occurs. It is not anatomy (a simulated head has no diffusion data): it is a
    source of the orientation-dependent model error real white matter has.

    Returns
    -------
    torch.Tensor
        ``(3, X, Y, Z)`` float32.
    """
    if mask.ndim != 3:
        raise InputError(f"mask must be (X, Y, Z), got {tuple(mask.shape)}")
    if not smoothness_mm > 0:
        raise ParameterError(f"smoothness_mm must be positive, got {smoothness_mm}")
    smooth = _smooth_noise(mask.shape, smoothness_mm=float(smoothness_mm), voxel_size_mm=voxel_size_mm,
                           generator=generator, channels=3)
    unit = smooth / smooth.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return unit * mask.to(unit.dtype)
