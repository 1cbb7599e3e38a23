r"""DF-QSM: refine any χ estimate by early-stopped gradient descent on the data fidelity.

The estimate (a network's output, or any method's) is the starting point of
gradient descent on :math:`\tfrac12\lVert M(D\chi - f)\rVert^2`; the number of
iterations, set by a stopping rule on the gradient norm, is the only regulariser.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..acquisition import Acquisition
from ..errors import InputError
from ..inversion._common import Problem, check_positive, prepare
from ..inversion.regularization import DISCREPANCY_TAU, RegularizationChoice, discrepancy_noise, is_auto, report
from ..physics import LinearOperator, MaskOp
from ..physics.kernels import KernelForm
from ..solvers import SolverStatus, StatusCallback
from ..validation import check_iterations, check_tolerance

__all__ = ["dfqsm", "DEFAULT_TOLERANCE"]

Vector3 = Sequence[float]

#: Relative gradient norm at which :func:`dfqsm` stops: the paper's absolute 0.75
#: (ppm, 1 mm brain volumes of 176×176×160) divided by :math:`\lVert SDMf\rVert` of
#: such a volume. Measured by ``benchmarks/bench_refine_threshold.py`` (docs/refine.md).
DEFAULT_TOLERANCE: float = 0.11


def initial_estimate(chi_ppm, problem: Problem, *, name: str = "chi_ppm") -> torch.Tensor:
    """The initial χ (ppm) on the problem's grid, dtype and device, masked; :class:`InputError` if unusable."""
    try:
        chi = torch.as_tensor(chi_ppm)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{name} is not an array: {error}") from None
    if tuple(chi.shape) != problem.shape:
        raise InputError(f"{name} shape {tuple(chi.shape)} does not match the field's grid {problem.shape}")
    if chi.is_complex():
        raise InputError(f"{name} must be real (ppm), got a complex array")
    chi = chi.to(device=problem.field.device, dtype=problem.field.dtype)
    if not bool(torch.isfinite(chi).all()):
        bad = int((~torch.isfinite(chi)).sum())
        raise InputError(f"{name} has {bad} NaN or infinite voxels")
    return chi * problem.mask


def dfqsm(
    chi_ppm: torch.Tensor,
    local_field_ppm: torch.Tensor,
    mask: torch.Tensor,
    acquisition: Acquisition | None = None,
    *,
    voxel_size_mm: Vector3 | None = None,
    b0_dir: Vector3 | None = None,
    pad: int | Sequence[int] | None = None,
    kernel_form: KernelForm | None = None,
    step_size: float = 1.0,
    tolerance: float | Literal["auto"] = "auto",
    noise_ppm: float | None = None,
    max_iterations: int = 200,
    support: bool = True,
    callback: StatusCallback | None = None,
) -> torch.Tensor:
    r"""Data-fidelity refinement of a χ estimate (DF-QSM): early-stopped gradient descent.

    .. math::

       E(\chi) = \tfrac12\lVert M(DS\chi - f)\rVert_2^2, \qquad
       \chi_{k+1} = \chi_k - \alpha\,\nabla E(\chi_k), \quad
       \nabla E(\chi) = S D M (DS\chi - f),

    from :math:`\chi_0` = ``chi_ppm`` (paper Eqs. 11–12), with :math:`M` the mask,
    :math:`D` the dipole convolution and :math:`S` the support constraint (the mask
    when ``support``, else the identity). The step :math:`\alpha = 1` of the paper is
    stable: the kernel lies in :math:`[-2/3, 1/3]`, so :math:`\lVert SDMDS\rVert \le 4/9`
    and every eigen-component of the error shrinks by :math:`1 - \alpha\lambda \in [5/9, 1]`
    per iteration, without changing sign (that holds for :math:`\alpha \le 9/4`);
    :math:`E` decreases monotonically for any :math:`\alpha < 2/(4/9) = 9/2`.

    Stopping rule (scale-free form of the paper's "gradient norm below 0.75"): stop
    as soon as

    .. math::

       \rho_k = \lVert\nabla E(\chi_k)\rVert_2 \,/\, \lVert\nabla E(0)\rVert_2
              = \lVert SDM(DS\chi_k - f)\rVert_2 \,/\, \lVert SDMf\rVert_2 \le \text{tolerance},

    or after ``max_iterations`` (``tolerance`` a number). :math:`\rho` is unchanged when :math:`f` and
    :math:`\chi_0` are multiplied by one constant (units: ppm, Hz, radians) and when
    the grid is padded with zeros (the norms do not see zero voxels), and it does not
    grow with the number of voxels; the paper's absolute threshold does all three.
    It is the quantity CG's ``tolerance`` bounds in :func:`~torchqsm.inversion.l2`.
    The default is the paper's 0.75 divided by :math:`\lVert SDMf\rVert` of a 1 mm
    brain of 176×176×160 in ppm (docs/refine.md: both rules stop at the same iteration).

    ``tolerance="auto"`` (default): the discrepancy principle (Morozov). Stop as soon as the
    residual in the mask is as small as the noise,
    :math:`\lVert M(DS\chi_k - f)\rVert_2/\sqrt n \le \tau\hat\sigma` (:math:`n` voxels in the
    mask, :math:`\tau` = :data:`~torchqsm.inversion.regularization.DISCREPANCY_TAU`), with
    :math:`\hat\sigma` = ``noise_ppm`` or estimated from the field
    (the in-mask residual of the GCV-Tikhonov fit, as for tv): iterating further fits the noise.
    The :math:`\rho_k` at which it stopped is reported as the ``tolerance`` chosen, so passing
    that number reproduces the result.

    Parameters
    ----------
    chi_ppm
        Initial estimate :math:`\chi_0` (ppm), shape ``(X, Y, Z)`` of the field;
        values outside the mask are ignored.
    local_field_ppm
        Local field :math:`f` (ppm of B0), shape ``(X, Y, Z)``.
    mask
        Region of interest ``(X, Y, Z)`` (non-zero = inside).
    acquisition, voxel_size_mm, b0_dir, pad, kernel_form
        The acquisition record and its overrides, as :func:`~torchqsm.inversion.tkd`: the
        dipole operator of the data term is the record's (its B0 direction, voxel size,
        padding and kernel form). With ``support``, the iterations run on the mask's
        bounding box padded by ``pad`` (along axes where it is > 0): zero voxels around the
        mask change neither the result nor the time. On the 176×176×160 head of
        ``benchmarks/bench_learned_inference.py`` that cut the FFT grid from 216×216×192 to
        192×200×180 voxels.
    step_size
        :math:`\alpha` (dimensionless, > 0); 1 as in the paper.
    tolerance
        Threshold on :math:`\rho_k` (dimensionless, ≥ 0; 0 runs ``max_iterations``), or ``"auto"``:
        the discrepancy principle above.
    noise_ppm
        Field noise σ (ppm, > 0) for ``tolerance="auto"``; None: estimated from the field.
    max_iterations
        Iteration limit (≥ 0).
    support
        Constrain χ to the mask (sources of the local field lie inside it).
    callback
        Receives a :class:`~torchqsm.solvers.SolverStatus` per iteration
        (``residual`` = :math:`\rho_k` after the update, ``iteration`` = the count
        so far); returning ``True`` stops.

    Returns
    -------
    torch.Tensor
        Refined χ (ppm), zero outside the mask, dtype of the field.

    References
    ----------
    Paluru N, Mathew RS, Yalavarthy PK. DF-QSM: data fidelity based hybrid
    approach for improved quantitative susceptibility mapping of the brain.
    NMR Biomed 2024;e5163. doi:10.1002/nbm.5163 (Eqs. 10–12, Fig. 4)

    Examples
    --------
    >>> from torchqsm.acquisition import Acquisition
    >>> from torchqsm.simulate import forward_field, shapes_phantom
    >>> chi, mask = shapes_phantom((32, 32, 32), dtype=torch.float64)
    >>> field = forward_field(chi, pad=16) * mask
    >>> seen = []
    >>> axial = Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), pad=8)
    >>> refined = dfqsm(0.5 * chi, field, mask, axial, callback=lambda s: seen.append(s.iteration))
    >>> seen[-1] > 0, bool((refined[~mask] == 0).all())
    (True, True)
    """
    whole = prepare(local_field_ppm, mask, acquisition, method="dfqsm", voxel_size_mm=voxel_size_mm, b0_dir=b0_dir,
                    pad=pad, kernel_form=kernel_form)
    alpha = check_positive("step_size", step_size)
    auto = is_auto(tolerance, name="tolerance")
    threshold = 0.0 if auto else check_tolerance("tolerance", tolerance)
    limit = check_iterations("max_iterations", max_iterations)
    chi = initial_estimate(chi_ppm, whole)
    region = tuple(slice(0, n) for n in whole.shape)
    problem = whole
    if support:  # χ and the residual live in the mask: work on its bounding box, padded by `pad`
        problem, region = whole.cropped_to_mask()
        chi = chi[region]
    data = _data_operator(problem, support=support)
    measured = MaskOp(problem.mask)(problem.field)
    rhs = data.H(measured)  # S D M f = -∇E(0)
    reference = float(torch.linalg.vector_norm(rhs))
    if reference == 0.0:
        raise InputError("local_field_ppm has no component the dipole model can explain inside the mask "
                         "(D M f = 0): nothing to refine against")
    target, sigma, source = -1.0, None, None  # residual rms (ppm) at which the discrepancy principle stops
    if auto:
        sigma, source = discrepancy_noise("dfqsm", noise_ppm, problem.field, problem.mask, problem.dipole())
        target = DISCREPANCY_TAU * sigma
    scale = float(problem.mask.sum()) ** -0.5  # vector norm → rms over the mask

    def step(chi: torch.Tensor) -> tuple[torch.Tensor, float, bool]:
        """The gradient at χ, ρ, and whether either stopping rule holds there."""
        residual = data(chi) - measured
        gradient = data.H(residual)
        relative = float(torch.linalg.vector_norm(gradient)) / reference
        return gradient, relative, relative <= threshold or float(torch.linalg.vector_norm(residual)) * scale <= target

    gradient, relative, stop = step(chi)
    iteration = 0
    while not stop and iteration < limit:
        chi = chi - alpha * gradient
        iteration += 1
        gradient, relative, stop = step(chi)
        if callback is not None and callback(SolverStatus(iteration, _embed(chi, region, whole), relative, stop)):
            break
    if auto:
        report(RegularizationChoice("dfqsm", f"discrepancy principle (tau {DISCREPANCY_TAU:g}; stopped after "
                                    f"{iteration} iterations)", relative, sigma, source, parameter="tolerance"))
    return _embed(problem.finish(chi), region, whole)


def _embed(chi: torch.Tensor, region, whole: Problem) -> torch.Tensor:
    """χ on the bounding box → the whole grid (zeros around)."""
    if tuple(chi.shape) == whole.shape:
        return chi
    result = torch.zeros_like(whole.field)
    result[region] = chi
    return result



def _data_operator(problem: Problem, *, support: bool) -> LinearOperator:
    """:math:`MDS`: χ (image grid) → field inside the mask."""
    inside = MaskOp(problem.mask)
    dipole = problem.dipole()
    return inside @ dipole @ inside if support else inside @ dipole
