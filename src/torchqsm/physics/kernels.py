r"""Dipole kernels for any B0 direction and (anisotropic) voxel size.

The field perturbation (ppm) of a susceptibility distribution :math:`\chi`
(ppm), in the Lorentz-corrected linear model, is :math:`f = d * \chi` with

.. math::

   D(\mathbf k) = \frac13 - \frac{(\mathbf k \cdot \hat b)^2}{\lVert\mathbf k\rVert^2}

in k-space, :math:`\hat b` the unit B0 direction in voxel coordinates and
:math:`\mathbf k` the physical spatial frequency (cycles/mm) of each FFT bin,
:math:`k_a = n_a / (N_a h_a)`. Along B0, :math:`D = -2/3`; across it
:math:`D = 1/3`. At :math:`\mathbf k = 0` the continuous kernel is undefined:
its value there (``dc``) sets how the volume's mean susceptibility maps to
the mean field. We default to ``dc = 0`` (a uniform χ produces no field, so
the reconstructed χ has zero mean in the padded box and is referenced later);
``qsm-forward`` uses 1/3. On an even grid axis the Nyquist bin stands for
both :math:`\pm k_N`; there :math:`(\mathbf k\cdot\hat b)^2` is averaged over
both signs, which keeps the sampled kernel even (so the real FFT applies
exactly the stored kernel, and :math:`A^H A` is :math:`D^2`).

The *image-space* (discretised) form integrates the dipole field over each
voxel (a box of size :math:`h`) exactly,

.. math::

   d_{\mathbf n} = \int_{V_{\mathbf n}} \hat b^\top
   \big(\nabla\nabla^\top \tfrac{1}{4\pi r}\big)\hat b\,\mathrm dV
   + \tfrac13\,[\mathbf n = 0],

where the last term is the Lorentz-sphere correction of the voxel's own
field. The box integrals have closed forms (arctangents on the diagonal,
logarithms off it; Jenkinson et al. 2004, doi:10.1002/mrm.20096). The kernel
is then transformed with the FFT. It is the form that does not alias the
singular dipole at the k-space Nyquist bins (Milovic et al. 2018,
doi:10.1002/mrm.27073, "kernel in image space").

References
----------
Salomir R, de Senneville BD, Moonen CT. A fast calculation method for
magnetic field inhomogeneity due to an arbitrary distribution of bulk
susceptibility. Concepts Magn Reson B 2003;19B:26–34. doi:10.1002/cmr.b.10083

Marques JP, Bowtell R. Application of a Fourier-based method for rapid
calculation of field inhomogeneity due to spatial variation of magnetic
susceptibility. Concepts Magn Reson B 2005;25B:65–78. doi:10.1002/cmr.b.20034
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

__all__ = [
    "kspace_frequencies",
    "dipole_kernel",
    "gradient_gram_symbol",
    "laplacian_symbol",
    "KernelForm",
]

KernelForm = Literal["kspace", "image"]
Shape3 = Sequence[int]


def _unit(b0_dir: Sequence[float]) -> tuple[float, float, float]:
    b = [float(v) for v in b0_dir]
    if len(b) != 3:
        raise ValueError(f"b0_dir must have 3 components, got {len(b)}")
    norm = math.sqrt(sum(v * v for v in b))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"b0_dir must be finite and non-zero, got {tuple(b)}")
    return (b[0] / norm, b[1] / norm, b[2] / norm)


def _check_geometry(shape: Shape3, voxel_size_mm: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    shape = tuple(int(n) for n in shape)
    voxel = tuple(float(h) for h in voxel_size_mm)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise ValueError(f"shape must be 3 positive sizes, got {shape}")
    if len(voxel) != 3 or any(not (math.isfinite(h) and h > 0) for h in voxel):
        raise ValueError(f"voxel_size_mm must be 3 positive sizes, got {voxel}")
    return shape, voxel


def kspace_frequencies(
    shape: Shape3,
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    rfft: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Physical spatial frequencies (cycles/mm) of the FFT bins, broadcastable to 3-D.

    With ``rfft=True`` the last axis holds the ``N//2 + 1`` bins of ``torch.fft.rfftn``.
    """
    shape, voxel = _check_geometry(shape, voxel_size_mm)
    kx = torch.fft.fftfreq(shape[0], d=voxel[0], dtype=dtype, device=device)
    ky = torch.fft.fftfreq(shape[1], d=voxel[1], dtype=dtype, device=device)
    if rfft:
        kz = torch.fft.rfftfreq(shape[2], d=voxel[2], dtype=dtype, device=device)
    else:
        kz = torch.fft.fftfreq(shape[2], d=voxel[2], dtype=dtype, device=device)
    return kx[:, None, None], ky[None, :, None], kz[None, None, :]


def _kspace_dipole(shape, voxel, b, rfft, device, dtype=torch.float64) -> torch.Tensor:
    k = kspace_frequencies(shape, voxel_size_mm=voxel, rfft=rfft, dtype=dtype, device=device)
    k2 = (k[0] ** 2 + k[1] ** 2 + k[2] ** 2).clone()
    k2[0, 0, 0] = 1.0  # placeholder; the DC bin is set by the caller
    # On an even axis the Nyquist bin stands for both +k_N and -k_N. Sampling (k·b)² at one sign
    # makes D(m) != D(-m) for oblique b, so the kernel would not be even and the real FFT would
    # apply a different kernel than the one stored. Average over both signs instead: the cross
    # terms with a Nyquist component vanish, leaving (Σ_regular k_a b_a)² + Σ_Nyquist (k_a b_a)².
    regular = 0.0
    nyquist_part = 0.0
    for axis in range(3):
        n = shape[axis]
        kb = k[axis] * b[axis]
        if n % 2 == 0:
            nyquist = torch.zeros_like(kb, dtype=torch.bool)
            index = n // 2
            nyquist.view(-1)[index] = True
            regular = regular + torch.where(nyquist, 0.0, kb)
            nyquist_part = nyquist_part + torch.where(nyquist, kb * kb, 0.0)
        else:
            regular = regular + kb
    return 1.0 / 3.0 - (regular**2 + nyquist_part) / k2


def _box_integrals(shape, voxel, b, device) -> torch.Tensor:
    """Voxel-integrated Lorentz-corrected dipole kernel in image space, FFT order."""
    # Corner coordinates (mm) of the voxel boxes around centres n*h, n = -N//2 .. N-1-N//2.
    corners = [
        ((torch.arange(n + 1, dtype=torch.float64, device=device) - n // 2 - 0.5) * h)
        for n, h in zip(shape, voxel)
    ]
    x = corners[0][:, None, None]
    y = corners[1][None, :, None]
    z = corners[2][None, None, :]
    r = torch.sqrt(x**2 + y**2 + z**2)

    def log_plus(c: torch.Tensor, rho2: torch.Tensor) -> torch.Tensor:
        # log(c + r) computed without cancellation where c < 0: c + r = rho² / (r - c).
        return torch.where(c >= 0, torch.log(c + r), torch.log(rho2) - torch.log(r - c))

    # F_ab evaluated at every corner; the box integral is the signed sum over its 8 corners.
    corner_sum = torch.zeros_like(r)
    if b[0] != 0.0:
        corner_sum -= b[0] ** 2 * torch.atan(y * z / (x * r))
    if b[1] != 0.0:
        corner_sum -= b[1] ** 2 * torch.atan(x * z / (y * r))
    if b[2] != 0.0:
        corner_sum -= b[2] ** 2 * torch.atan(x * y / (z * r))
    if b[0] * b[1] != 0.0:
        corner_sum += 2 * b[0] * b[1] * log_plus(z.expand_as(r), x**2 + y**2)
    if b[0] * b[2] != 0.0:
        corner_sum += 2 * b[0] * b[2] * log_plus(y.expand_as(r), x**2 + z**2)
    if b[1] * b[2] != 0.0:
        corner_sum += 2 * b[1] * b[2] * log_plus(x.expand_as(r), y**2 + z**2)
    # Signed corner sum = successive differences along each axis (upper − lower).
    box = corner_sum.diff(dim=0).diff(dim=1).diff(dim=2) / (4.0 * math.pi)
    box = torch.fft.ifftshift(box, dim=(0, 1, 2))
    box[0, 0, 0] += 1.0 / 3.0  # Lorentz-sphere correction of the voxel's own field
    return box


def dipole_kernel(
    shape: Shape3,
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    form: KernelForm = "kspace",
    dc: float | None = 0.0,
    rfft: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The dipole kernel :math:`D(\mathbf k)` on the FFT grid of ``shape``.

    Parameters
    ----------
    shape
        Grid size ``(X, Y, Z)`` the kernel is applied on (the padded size, if padding).
    voxel_size_mm
        Voxel size (mm) along each array axis.
    b0_dir
        B0 direction in voxel coordinates; normalised here.
    form
        ``"kspace"``: the continuous kernel sampled at the bins' frequencies.
        ``"image"``: the voxel-integrated, Lorentz-corrected image-space kernel,
        Fourier transformed (see the module notes).
    dc
        Value at :math:`\mathbf k = 0` (dimensionless). ``None`` keeps the form's own
        value (the sum of the image-space kernel; 0 for the k-space form).
    rfft
        Return the ``(X, Y, Z//2+1)`` half spectrum for ``torch.fft.rfftn`` (default),
        else the full ``(X, Y, Z)`` spectrum.
    dtype, device
        Of the returned real tensor. The k-space form is computed in ``dtype``
        (float32 or float64), the image form in float64.

    Returns
    -------
    torch.Tensor
        Real kernel, unitless (field in ppm per χ in ppm).

    Examples
    --------
    >>> D = dipole_kernel((8, 8, 8), rfft=False, dtype=torch.float64)
    >>> round(float(D[0, 0, 1]), 6), round(float(D[1, 0, 0]), 6)
    (-0.666667, 0.333333)
    """
    shape, voxel = _check_geometry(shape, voxel_size_mm)
    b = _unit(b0_dir)
    if form == "kspace":
        # Closed form, accurate to rounding in the output precision: no need for float64 work.
        work = torch.float64 if dtype == torch.float64 else torch.float32
        kernel = _kspace_dipole(shape, voxel, b, rfft, device, work)
        kernel[0, 0, 0] = 0.0 if dc is None else float(dc)
    elif form == "image":
        spatial = _box_integrals(shape, voxel, b, device)
        spectrum = torch.fft.rfftn(spatial) if rfft else torch.fft.fftn(spatial)
        kernel = spectrum.real.contiguous()
        if dc is not None:
            kernel[0, 0, 0] = float(dc)
    else:
        raise ValueError(f"form must be 'kspace' or 'image', got {form!r}")
    return kernel.to(dtype=dtype, device=device)


def gradient_gram_symbol(
    shape: Shape3,
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    rfft: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Symbol of :math:`\nabla^\top\nabla` for periodic forward differences (mm⁻²).

    :math:`\sum_a (2 - 2\cos(2\pi n_a / N_a)) / h_a^2`, i.e. minus the 7-point Laplacian.
    """
    return -laplacian_symbol(shape, voxel_size_mm=voxel_size_mm, stencil="7", rfft=rfft,
                             dtype=dtype, device=device)


def laplacian_symbol(
    shape: Shape3,
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    stencil: Literal["fft", "7", "27"] = "7",
    rfft: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Fourier symbol (mm⁻²) of a periodic Laplacian.

    ``"fft"``: the continuous :math:`-4\pi^2\lVert\mathbf k\rVert^2`.
    ``"7"``: the 7-point stencil, :math:`\sum_a \lambda_a`, :math:`\lambda_a = (2\cos\theta_a - 2)/h_a^2`,
    :math:`\theta_a = 2\pi n_a/N_a`.
    ``"27"``: the compact 27-point stencil
    :math:`\sum_a \lambda_a \prod_{b\ne a} (2 + \cos\theta_b)/3`, i.e. each axis' second
    difference smoothed by ``[1, 4, 1]/6`` across the other two axes; it is second-order
    accurate and more isotropic than the 7-point stencil (its error is
    :math:`\tfrac{h^2}{12}\nabla^2\nabla^2` for cubic voxels, no orientation-dependent term).
    """
    shape, voxel = _check_geometry(shape, voxel_size_mm)
    k = kspace_frequencies(shape, voxel_size_mm=voxel, rfft=rfft, device=device)
    if stencil == "fft":
        symbol = -4.0 * math.pi**2 * (k[0] ** 2 + k[1] ** 2 + k[2] ** 2)
    else:
        theta = [2.0 * math.pi * k[a] * voxel[a] for a in range(3)]
        second = [(2.0 * torch.cos(theta[a]) - 2.0) / voxel[a] ** 2 for a in range(3)]
        if stencil == "7":
            symbol = second[0] + second[1] + second[2]
        elif stencil == "27":
            smooth = [(2.0 + torch.cos(theta[a])) / 3.0 for a in range(3)]
            symbol = (second[0] * smooth[1] * smooth[2] + second[1] * smooth[0] * smooth[2]
                      + second[2] * smooth[0] * smooth[1])
        else:
            raise ValueError(f"stencil must be 'fft', '7' or '27', got {stencil!r}")
    return symbol.to(dtype=dtype)
