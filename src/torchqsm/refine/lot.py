r"""LoT data consistency: refine a phase network's χ against the Laplacian of the wrapped phase itself.

A phase network (iQSM, iQSM+) sees no local field: it reads the wrapped phase through its LoT
layer. The data term it can be held to is the same one, without unwrapping or background
removal: inside the brain the background field is harmonic, so the Laplacian of the total field
is the Laplacian of the tissue field, and that is a local operator of χ,

.. math::

   \nabla^2 f = \nabla^2 (d \ast \chi)
   \;\Longleftrightarrow\;
   -|k|^2 D(k)\,\hat\chi = -\Big(\tfrac{|k|^2}{3} - (k\cdot\hat b)^2\Big)\hat\chi .

:func:`lot_consistency` solves

.. math::

   \chi = \arg\min_{\chi = M\chi} \lVert W(L D\chi - \ell)\rVert_2^2 + \lambda\lVert\chi - \chi_0\rVert_2^2,

with :math:`\ell` the congruent Laplacian of the wrapped phase (:func:`congruent_laplacian`, ppm/mm²)
or, with ``data_term="lot"``, its LoT (27-point stencil, each voxel's echoes weighted by
their phase steps: :class:`~torchqsm.models.oalfe.LoTLayer` with ``echo_weighting="reliability"``),
:math:`L D` the same 27-point Laplacian times the dipole kernel (one k-space symbol on the
zero-padded grid), :math:`W` the mask eroded past the stencil's reach (where :math:`\ell`
holds no phase from outside the brain) and :math:`\chi_0` the network's output. λ is
:data:`DEFAULT_REGULARIZATION` unless given; ``"auto"`` chooses it by generalized cross-validation on
what :math:`\chi_0` leaves unexplained, as :func:`~torchqsm.refine.dll2` does on the local field. Conjugate gradient on the normal equations
runs with the k-space preconditioner :math:`1/(|LD|^2 + \lambda)`.

The phase-network recipes ran it twice until session 9 (network grid at λ 0.01, then the data's grid
with λ by GCV: 51.4–53.8 % NRMSE over B0 tilts of 0–90° on the 1 mm suite, 69.4 % on the haemorrhage).
They now run :func:`torchqsm.refine.lot_tv_consistency` with the same data term: the L2 pull holds
a large uniform error of the network in place (``docs/refine.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..acquisition import Acquisition
from ..errors import InputError, ParameterError
from ..inversion.regularization import Regularization, RegularizationChoice, gcv_tikhonov, is_auto, report
from ..inversion._common import check_positive
from ..physics.kernels import laplacian_symbol
from ..physics.operators import DipoleOp
from ..solvers import SolverStatus, StatusCallback, cg
from ..validation import check_iterations, check_tolerance

__all__ = ["DATA_TERMS", "DEFAULT_MAX_STEP_RAD", "DEFAULT_REGULARIZATION", "congruent_laplacian", "data_region",
           "lot_consistency", "lot_of_phase"]

#: λ (units of the mean |LD|²): the best of a sweep on four held-out 2 mm heads of the training
#: simulator (0.3 … 0.001), never tuned on the evaluation suite; GCV chose 3–90× more on every data set
#: measured (``docs/refine.md``).
DEFAULT_REGULARIZATION = 0.01

#: Voxels of erosion beyond the LoT stencil's one-voxel reach before a voxel counts as data.
DEFAULT_DATA_EROSION = 0


#: The Laplacian of the field the data term reads (:func:`congruent_laplacian` or :func:`lot_of_phase`).
DATA_TERMS = ("congruent", "lot")

#: A voxel whose wrapped phase step to any of its 26 neighbours, at the shortest echo, exceeds this (rad)
#: is left out of the congruent data term: a true step beyond π aliases to one below it, and the 2π error
#: it leaves weighs ~1.6 ppm/mm² at TE = 5 ms and 3 T. Noise-free on the haemorrhage case, every voxel
#: kept below it has the exact Laplacian (error 0.0 %, 99.98 % of the data region kept; at 3.2 rad, 52 %).
DEFAULT_MAX_STEP_RAD = 2.5


def congruent_laplacian(wrapped_phase_rad: torch.Tensor, mask: torch.Tensor, acquisition: Acquisition, *,
                        max_step_rad: float = DEFAULT_MAX_STEP_RAD) -> tuple[torch.Tensor, torch.Tensor]:
    r"""∇² of the field (ppm/mm²) from ``(E, X, Y, Z)`` wrapped phase by wrapped neighbour differences, and where it holds.

    The 27-point Laplacian is a weighted sum of neighbour differences,
    :math:`\nabla^2 f(x) = \sum_n w_n\,(f(x+n) - f(x))`. Each difference is read from the phase wrapped into
    (−π, π] (exact while the true step is under π, where the LoT's :math:`\sin` reads a step :math:`g` as
    :math:`\sin g`), unwrapped in time edge by edge (each echo's 2π multiple is the one nearest the
    prediction of the earlier echoes' fit) and fitted through the origin in TE, as the LoT layer fits.
    No path is integrated: every voxel's value depends on its 26 neighbours only.

    Returns the Laplacian and the voxels where it holds: inside ``mask`` and no wrapped step above
    ``max_step_rad`` at the shortest echo (there the step may be its alias).
    """
    from ..models.oalfe import laplacian_stencil_27
    from ..physics.units import GAMMA_BAR_MHZ_PER_T

    te = [float(t) for t in acquisition.echo_times_s]  # increasing (the record checks it): echo 0 is the shortest
    phase = wrapped_phase_rad * (mask != 0)
    stencil = laplacian_stencil_27(acquisition.voxel_size_mm, dtype=torch.float64)
    laplacian = torch.zeros(phase.shape[1:], dtype=phase.dtype, device=phase.device)
    largest = torch.zeros_like(laplacian)
    two_pi = 2 * math.pi
    half = [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) > (0, 0, 0)]
    for offset in half:
        weight = float(stencil[offset[0] + 1, offset[1] + 1, offset[2] + 1])
        if abs(weight) < 1e-12:
            continue
        back = tuple(-o for o in offset)
        step = torch.remainder(torch.roll(phase, back, dims=(1, 2, 3)) - phase + math.pi, two_pi) - math.pi
        moment, power = te[0] * step[0], te[0] ** 2  # Σ TE·Δφ and Σ TE² of the fit through the origin
        for e in range(1, len(te)):
            predicted = moment / power * te[e]
            unwrapped = step[e] + two_pi * torch.round((predicted - step[e]) / two_pi)
            moment, power = moment + te[e] * unwrapped, power + te[e] ** 2
        edge = moment / power  # rad/s from x to x + offset
        laplacian += weight * (edge - torch.roll(edge, offset, dims=(0, 1, 2)))
        first = step[0].abs()
        largest = torch.maximum(largest, torch.maximum(first, torch.roll(first, offset, dims=(0, 1, 2))))
    laplacian = laplacian / (two_pi * GAMMA_BAR_MHZ_PER_T * float(acquisition.b0_tesla))
    return laplacian, (mask != 0) & (largest <= max_step_rad)


def check_inputs(method: str, chi_ppm: torch.Tensor, wrapped_phase_rad: torch.Tensor, mask: torch.Tensor,
                 acquisition: Acquisition, max_step_rad: float) -> tuple[int, ...]:
    """The grid ``(X, Y, Z)`` of a LoT refinement's inputs, or one clear error (shared by both refinements)."""
    acquisition.require("echo_times_s", "b0_tesla", "b0_dir", "voxel_size_mm", method=method)
    shape = tuple(mask.shape)
    if tuple(chi_ppm.shape) != shape or wrapped_phase_rad.ndim != 4 or tuple(wrapped_phase_rad.shape[1:]) != shape:
        raise InputError(f"{method} needs χ and mask (X, Y, Z) and phase (echoes, X, Y, Z) on one grid; got "
                         f"{tuple(chi_ppm.shape)}, {shape} and {tuple(wrapped_phase_rad.shape)}")
    if not 0 < float(max_step_rad) <= math.pi:
        raise ParameterError(f"max_step_rad must lie in (0, π], got {max_step_rad!r}")
    return shape


def iteration_hook(callback: StatusCallback | None,
                   progress: Callable[[int], None] | None) -> Callable[[SolverStatus], bool]:
    """A solver callback that advances ``progress`` by one and asks ``callback`` whether to stop."""

    def hook(status: SolverStatus) -> bool:
        if progress is not None:
            progress(1)
        return bool(callback(status)) if callback is not None else False

    return hook


def data_region(mask: torch.Tensor, data_erosion_voxels: int = DEFAULT_DATA_EROSION) -> torch.Tensor:
    """Where the LoT is data: ``mask`` eroded by the 3×3×3 stencil's reach (diagonals included) 1 + ``data_erosion_voxels``
    times (:func:`torchqsm.models.iqsm.stencil_interior`). A 6-neighbour erosion keeps voxels whose diagonal neighbours
    hold the zeroed phase outside the mask: 213 % LoT error there on a phantom, against 14 %."""
    from ..models.iqsm import stencil_interior

    region = (mask != 0).float()[None, None]
    for _ in range(1 + data_erosion_voxels):
        region = stencil_interior(region)
    return region[0, 0] > 0


def lot_of_phase(wrapped_phase_rad: torch.Tensor, mask: torch.Tensor, acquisition: Acquisition) -> torch.Tensor:
    """∇² of the field (ppm/mm²) from ``(E, X, Y, Z)`` wrapped phase: the fixed 27-point LoT, reliability-weighted echoes.

    The phase outside ``mask`` is set to zero first (as a phase network sees it).
    """
    from ..models.oalfe import LoTLayer

    layer = LoTLayer(1, voxel_size_mm=acquisition.voxel_size_mm, echo_weighting="reliability")
    layer = layer.to(dtype=wrapped_phase_rad.dtype, device=wrapped_phase_rad.device)
    with torch.no_grad():
        return layer((wrapped_phase_rad * (mask != 0))[None], echo_times_s=list(acquisition.echo_times_s),
                     b0_tesla=float(acquisition.b0_tesla))[0, 0]


def lot_consistency(
    chi_ppm: torch.Tensor,
    wrapped_phase_rad: torch.Tensor,
    mask: torch.Tensor,
    acquisition: Acquisition,
    *,
    regularization: Regularization = DEFAULT_REGULARIZATION,
    data_erosion_voxels: int = DEFAULT_DATA_EROSION,
    data_term: str = "congruent",
    max_step_rad: float = DEFAULT_MAX_STEP_RAD,
    pad: int = 16,
    max_iterations: int = 40,
    tolerance: float = 1e-4,
    callback: StatusCallback | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    r"""χ refined so that its field's Laplacian matches the LoT of the wrapped phase (module notes).

    Parameters
    ----------
    chi_ppm
        :math:`\chi_0` (ppm), ``(X, Y, Z)``: a phase network's output.
    wrapped_phase_rad
        ``(E, X, Y, Z)`` wrapped phase (rad) of the echoes the network read.
    mask
        ``(X, Y, Z)`` the region χ lives in (the network's mask).
    acquisition
        Echo times, field strength, B0 direction (voxel coordinates) and voxel size.
    regularization
        λ in units of the mean of :math:`|LD|^2` over the padded grid (so it does not depend on
        the voxel size), > 0; default :data:`DEFAULT_REGULARIZATION`; ``"auto"``: GCV on
        :math:`\ell - LD\chi_0` in the data region (module notes: it over-regularizes).
    data_erosion_voxels
        The data region :math:`W` is the mask eroded by one voxel (the stencil's reach, diagonals
        included) plus this many. The pipeline's mask is eroded already; on the suite 0 beat 1 and
        3 by 0.8–3 NRMSE points.
    data_term
        ``"congruent"`` (:func:`congruent_laplacian`: wrapped neighbour differences, voxels with a step
        above ``max_step_rad`` at the shortest echo left out of :math:`W`) or ``"lot"`` (:func:`lot_of_phase`).
    max_step_rad
        Of the congruent data term (:data:`DEFAULT_MAX_STEP_RAD`), in (0, π].
    pad
        Zero padding (voxels per side) of the FFT grid.
    max_iterations, tolerance
        Of preconditioned CG (relative residual of the normal equations).
    callback, progress
        A :class:`~torchqsm.solvers.SolverStatus` per iteration; ``progress(1)`` per iteration.

    Returns
    -------
    torch.Tensor
        Refined χ (ppm), zero outside ``mask``, dtype of ``chi_ppm``.
    """
    shape = check_inputs("LoT data consistency", chi_ppm, wrapped_phase_rad, mask, acquisition, max_step_rad)
    if not isinstance(data_erosion_voxels, int) or data_erosion_voxels < 0:
        raise ParameterError(f"data_erosion_voxels must be a non-negative integer, got {data_erosion_voxels!r}")
    if data_term not in DATA_TERMS:
        raise ParameterError(f"unknown LoT data term '{data_term}'; choose one of {', '.join(DATA_TERMS)}")
    limit = check_iterations("max_iterations", max_iterations)
    threshold = check_tolerance("tolerance", tolerance)
    dtype = chi_ppm.dtype if chi_ppm.is_floating_point() else torch.float32
    inside = (mask != 0).to(chi_ppm.device)
    region = data_region(inside, data_erosion_voxels)
    if not bool(region.any()):
        raise InputError(f"the mask is empty after eroding it by {1 + data_erosion_voxels} voxel(s): no LoT data to "
                         "refine against (a larger mask, or fewer data_erosion_voxels)")
    m = inside.to(dtype)
    if data_term == "lot":
        laplacian = lot_of_phase(wrapped_phase_rad.to(dtype), inside, acquisition)
    else:
        laplacian, holds = congruent_laplacian(wrapped_phase_rad.to(dtype), inside, acquisition,
                                               max_step_rad=max_step_rad)
        region = region & holds
        if not bool(region.any()):
            raise InputError(f"no voxel of the data region has phase steps under {max_step_rad:g} rad at the shortest "
                             "echo: no congruent data to refine against")
    weight = region.to(dtype)
    dipole = DipoleOp(shape, voxel_size_mm=acquisition.voxel_size_mm, b0_dir=acquisition.b0_dir, pad=pad,
                      dtype=dtype, device=chi_ppm.device)
    symbol = laplacian_symbol(dipole.pad.padded_shape, voxel_size_mm=acquisition.voxel_size_mm, stencil="27",
                              dtype=dtype, device=chi_ppm.device) * dipole.kernel
    gain = float(symbol.square().mean())

    def forward(x: torch.Tensor) -> torch.Tensor:
        return dipole.apply_symbol(x, symbol)

    chi0 = chi_ppm.to(dtype) * m
    if is_auto(regularization):
        unexplained = weight * (laplacian - forward(chi0))
        lam = gcv_tikhonov(dipole.spectrum(unexplained), symbol, torch.ones((), dtype=dtype, device=chi_ppm.device),
                           dipole.pad.padded_shape, mask=weight, image=dipole.image)
        report(RegularizationChoice("lot-consistency", "generalized cross-validation (Tikhonov on LoT - LD chi0)",
                                    lam / gain))
    else:
        lam = check_positive("regularization", regularization) * gain

    def normal(x: torch.Tensor) -> torch.Tensor:
        return m * forward(weight * forward(m * x)) + lam * (m * x)

    preconditioner_symbol = 1.0 / (symbol.square() + lam)

    def precondition(r: torch.Tensor) -> torch.Tensor:
        return m * dipole.apply_symbol(m * r, preconditioner_symbol)

    rhs = m * forward(weight * laplacian) + lam * chi0
    chi = cg(normal, rhs, initial=chi0, max_iterations=limit, tolerance=threshold,
             callback=iteration_hook(callback, progress),
             preconditioner=precondition)
    if not bool(torch.isfinite(chi).all()):
        raise InputError("LoT data consistency produced non-finite values (check the phase and echo times)")
    return (chi * m).to(chi_ppm.dtype)
