r"""TV data consistency for a phase network: the network's error is piecewise smooth, its correction sparse in gradient.

:func:`~torchqsm.refine.lot_consistency` pulls χ towards the network's output :math:`\chi_0` with an L2
term. That term holds every spatial frequency equally, but the Laplacian data term is weak at low
frequencies (its symbol :math:`|k|^2/3 - (k\cdot\hat b)^2` grows like :math:`|k|^2`), so a large,
uniform error of the network — a haemorrhage it did not see — stays: the lesion's interior has no
Laplacian, only its edge. :func:`lot_tv_consistency` instead solves

.. math::

   \chi = \chi_0 + \delta,\qquad
   \delta = \arg\min_\delta \tfrac12\lVert W(A\delta - r)\rVert_2^2 + \alpha\lVert\nabla\delta\rVert_{2,1},

with :math:`r = (\ell - LD\chi_0)/g` the Laplacian the network leaves unexplained, :math:`\ell` the
congruent Laplacian of the wrapped phase (:func:`~torchqsm.refine.lot.congruent_laplacian`),
:math:`A = LD/g` (the 27-point Laplacian times the dipole kernel, normalised by its rms :math:`g` over
the padded grid, so :math:`r` and :math:`\delta` are in ppm) and :math:`W` the data region. The
correction :math:`\delta` is TV-regularised: a lesion is a jump at its edge and a constant inside,
which the edge's Laplacian determines. ADMM with FANSI's splitting (:func:`torchqsm.inversion.tv`).

α follows the noise, as the ``tv`` inversion's rule does: :math:`\alpha = \kappa\,\hat\sigma\,\bar h`,
:math:`\hat\sigma` the noise of :math:`r` (:func:`phase_noise_ppm`: each echo's phase roughness
against its neighbours, propagated through the fit in TE and the stencil), :math:`\bar h` the mean
voxel size and κ :data:`TV_KAPPA`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..acquisition import Acquisition
from ..errors import InputError
from ..inversion._common import check_positive
from ..inversion.regularization import Regularization, RegularizationChoice, is_auto, report
from ..inversion.tv import _shrink
from ..physics import GradientOp, gradient_gram_symbol
from ..physics.units import GAMMA_BAR_MHZ_PER_T
from ..solvers import StatusCallback, admm
from ..validation import check_iterations, check_tolerance
from .lot import DEFAULT_MAX_STEP_RAD, check_inputs, congruent_laplacian, data_region, iteration_hook

__all__ = ["DEFAULT_ITERATIONS", "TV_KAPPA", "lot_tv_consistency", "phase_noise_ppm"]

_DIMS = (-3, -2, -1)

#: κ of α = κ σ̂ h̄ (module notes). On four held-out 2 mm heads of the training simulator (iqsm+, NRMSE %):
#: κ 0.025 → 32.6, 0.05 → 33.4, 0.1 → 35.4, 0.2 → 38.5; on the 1 mm suite's snr-30 case 0.1 is best (44.9;
#: 0.05 → 47.9, 0.025 → 54.0). 0.05 is within a point of the heads' best and three of snr-30's.
TV_KAPPA = 0.05

#: ADMM iterations (tolerance 1e-4 on δ's relative update). On the haemorrhage case (1 mm) the lesion's
#: mean is 1.253 ppm after 100 iterations, 1.351 after 200 and 1.389 after 300 (truth 1.455).
DEFAULT_ITERATIONS = 200

#: ADMM's penalty on the gradient split, in units of α (on the data split: 1). 20 converges a little
#: faster than FANSI's 100 (haemorrhage, 100 iterations: 21.7 against 22.2 % NRMSE); 1000 slower (36.0 %).
GRADIENT_PENALTY = 20.0


def phase_noise_ppm(wrapped_phase_rad: torch.Tensor, region: torch.Tensor, acquisition: Acquisition) -> float:
    r"""The noise of one voxel's field (ppm) as the fit through the origin in TE reads it, from the phase alone.

    Per echo, the phase noise :math:`\sigma_e` is the robust spread (1.4826 × median absolute value over
    ``region``) of :math:`\arg(z\,\overline{\langle z\rangle_6})`, the phase against the mean of its six
    face neighbours' :math:`z = e^{i\varphi}` (for a locally linear phase that is noise only, with
    variance :math:`\tfrac76\sigma_e^2`); then
    :math:`\sigma_f = \sqrt{\sum_e \mathrm{TE}_e^2\sigma_e^2} / \sum_e \mathrm{TE}_e^2 / (2\pi\bar\gamma B_0)`.
    """
    te = [float(t) for t in acquisition.echo_times_s]
    inside = region != 0
    variance = 0.0
    for echo, t in zip(wrapped_phase_rad, te):
        z = torch.polar(torch.ones_like(echo), echo)
        mean = sum(torch.roll(z, shift, dims=axis) for axis in range(3) for shift in (-1, 1)) / 6
        residual = torch.angle(z * mean.conj())[inside]
        sigma = 1.4826 * float(residual.abs().median()) / math.sqrt(7 / 6)
        variance += t * t * sigma * sigma
    power = sum(t * t for t in te)
    return math.sqrt(variance) / power / (2 * math.pi * GAMMA_BAR_MHZ_PER_T * float(acquisition.b0_tesla))


def lot_tv_consistency(
    chi_ppm: torch.Tensor,
    wrapped_phase_rad: torch.Tensor,
    mask: torch.Tensor,
    acquisition: Acquisition,
    *,
    regularization: Regularization = "auto",
    max_step_rad: float = DEFAULT_MAX_STEP_RAD,
    pad: int = 16,
    max_iterations: int = DEFAULT_ITERATIONS,
    tolerance: float = 1e-4,
    callback: StatusCallback | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    r"""χ₀ plus a TV-regularised correction that makes its field's Laplacian match the phase's (module notes).

    Parameters
    ----------
    chi_ppm
        :math:`\chi_0` (ppm), ``(X, Y, Z)``: a phase network's output.
    wrapped_phase_rad
        ``(E, X, Y, Z)`` wrapped phase (rad).
    mask
        ``(X, Y, Z)`` the region χ lives in.
    acquisition
        Echo times, field strength, B0 direction (voxel coordinates) and voxel size.
    regularization
        α (ppm·mm, > 0), or ``"auto"`` (default): :math:`\kappa\hat\sigma\bar h` (module notes).
    max_step_rad
        Of :func:`~torchqsm.refine.lot.congruent_laplacian`.
    pad
        Zero padding (voxels per side) of the FFT grid.
    max_iterations, tolerance
        Of ADMM (relative update of δ).
    callback, progress
        A :class:`~torchqsm.solvers.SolverStatus` per iteration; ``progress(1)`` per iteration.

    Returns
    -------
    torch.Tensor
        Refined χ (ppm), zero outside ``mask``, dtype of ``chi_ppm``.
    """
    from ..physics.kernels import laplacian_symbol
    from ..physics.operators import DipoleOp

    shape = check_inputs("LoT TV data consistency", chi_ppm, wrapped_phase_rad, mask, acquisition, max_step_rad)
    limit = check_iterations("max_iterations", max_iterations)
    threshold = check_tolerance("tolerance", tolerance)
    dtype = chi_ppm.dtype if chi_ppm.is_floating_point() else torch.float32
    device = chi_ppm.device
    inside = (mask != 0).to(device)
    phase = wrapped_phase_rad.to(dtype)
    laplacian, holds = congruent_laplacian(phase, inside, acquisition, max_step_rad=max_step_rad)
    region = data_region(inside) & holds
    if not bool(region.any()):
        raise InputError("no voxel of the mask lies one voxel inside its edge with phase steps under "
                         f"{max_step_rad:g} rad at the shortest echo: no data to refine against")
    dipole = DipoleOp(shape, voxel_size_mm=acquisition.voxel_size_mm, b0_dir=acquisition.b0_dir, pad=pad,
                      dtype=dtype, device=device)
    padding = dipole.pad
    grid = padding.padded_shape
    stencil_symbol = laplacian_symbol(grid, voxel_size_mm=acquisition.voxel_size_mm, stencil="27", dtype=dtype,
                                      device=device)
    symbol = stencil_symbol * dipole.kernel
    gain = float(symbol.square().mean().sqrt())
    chi0 = chi_ppm.to(dtype) * inside
    unexplained = (laplacian - dipole.apply_symbol(chi0, symbol)) / gain
    operator = symbol / gain
    h = sum(float(v) for v in acquisition.voxel_size_mm) / 3
    if is_auto(regularization):
        # the stencil's ℓ2 norm carries one voxel's field noise into ℓ
        stencil_norm = float(stencil_symbol.square().mean().sqrt())
        sigma = phase_noise_ppm(phase, region, acquisition) * stencil_norm / gain
        alpha = TV_KAPPA * sigma * h
        report(RegularizationChoice("lot-tv", f"noise-scaled (κ = {TV_KAPPA:g}, σ̂ = {sigma:.3g} ppm)", alpha))
    else:
        alpha = check_positive("regularization", regularization)
    mu1, mu2 = GRADIENT_PENALTY * alpha, 1.0
    data = padding.forward(unexplained * region)
    weights = padding.forward(region.to(dtype))
    gradient = GradientOp(voxel_size_mm=acquisition.voxel_size_mm)
    denominator = mu1 * gradient_gram_symbol(grid, voxel_size_mm=acquisition.voxel_size_mm, dtype=dtype,
                                             device=device) + mu2 * operator.square()
    denominator[0, 0, 0] = 1.0  # δ's mean is unobservable: kept at zero

    def apply(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfftn(torch.fft.rfftn(x, dim=_DIMS) * operator, s=grid, dim=_DIMS)

    def split(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([gradient(x), apply(x).unsqueeze(-4)], dim=-4)

    def x_step(target: torch.Tensor) -> torch.Tensor:
        rhs = mu1 * torch.fft.rfftn(gradient.H(target[..., :3, :, :, :]), dim=_DIMS)
        rhs = rhs + mu2 * operator * torch.fft.rfftn(target[..., 3, :, :, :], dim=_DIMS)
        spectrum = rhs / denominator
        spectrum[0, 0, 0] = 0.0
        return torch.fft.irfftn(spectrum, s=grid, dim=_DIMS)

    def prox(stacked: torch.Tensor) -> torch.Tensor:
        fitted = (weights * data + mu2 * stacked[..., 3, :, :, :]) / (weights + mu2)
        return torch.cat([_shrink(stacked[..., :3, :, :, :], alpha / mu1), fitted.unsqueeze(-4)], dim=-4)

    delta = admm(x_step=x_step, prox=prox, split=split, initial=torch.zeros_like(data), max_iterations=limit,
                 tolerance=threshold, callback=iteration_hook(callback, progress))
    chi = (chi0 + padding.adjoint(delta)) * inside
    if not bool(torch.isfinite(chi).all()):
        raise InputError("LoT TV data consistency produced non-finite values (check the phase and echo times)")
    return chi.to(chi_ppm.dtype)
