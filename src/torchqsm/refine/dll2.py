r"""DLL2: refine a χ estimate by least squares on the data with an L2 pull towards the estimate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..acquisition import Acquisition
from ..errors import ParameterError
from ..inversion._common import check_positive, prepare, weights_from_magnitude
from ..inversion.regularization import AUTO, Regularization, RegularizationChoice, gcv_tikhonov, is_auto, report
from ..physics import MaskOp, WeightOp
from ..physics.kernels import KernelForm
from ..solvers import StatusCallback, cg
from ..validation import check_iterations, check_tolerance
from .dfqsm import initial_estimate

__all__ = ["dll2"]

Vector3 = Sequence[float]


def dll2(
    chi_ppm: torch.Tensor,
    local_field_ppm: torch.Tensor,
    mask: torch.Tensor,
    acquisition: Acquisition | None = None,
    *,
    voxel_size_mm: Vector3 | None = None,
    b0_dir: Vector3 | None = None,
    pad: int | Sequence[int] | None = None,
    kernel_form: KernelForm | None = None,
    regularization: Regularization = AUTO,
    weighting: Literal["identity", "mask"] = "identity",
    magnitude: torch.Tensor | None = None,
    max_iterations: int = 100,
    tolerance: float = 1e-4,
    callback: StatusCallback | None = None,
) -> torch.Tensor:
    r"""Deep learning with L2 regularisation (DLL2): data fidelity plus a pull towards the estimate.

    .. math::

       \chi = \arg\min_\chi \lVert W(D\chi - f)\rVert_2^2 + \lambda\lVert\chi - \chi_0\rVert_2^2,
       \qquad (D^\top W^2 D + \lambda)\,\chi = D^\top W^2 f + \lambda\chi_0,

    with :math:`\chi_0` = ``chi_ppm`` (a network's output, or any method's).

    * ``weighting="identity"`` (:math:`W = I`): closed form in k-space on the zero-padded grid,
      :math:`\chi = P^\top F^{-1}\big[(D\,F P f + \lambda\,F P\chi_0)/(D^2 + \lambda)\big]`,
      where the field counts as measured zero outside the mask (as in TKD or Tikhonov);
      two FFTs, no iteration, ``max_iterations``/``tolerance``/``callback`` unused.
    * ``weighting="mask"``: :math:`W = M`, or with ``magnitude`` :math:`W` = the magnitude
      scaled to mean 1 in the mask, times :math:`M` (a noise weight); the data
      outside the mask are ignored and χ is constrained to the mask (:math:`\chi = M\chi`,
      the sources of a local field lie inside it); the normal equations
      :math:`M(D W^2 D + \lambda)M\chi = M D W^2 f + \lambda M\chi_0` are solved on the
      image grid by conjugate gradient from :math:`M\chi_0`.

    :math:`\lambda \to \infty` returns :math:`\chi_0`; :math:`\lambda \to 0` the
    least-squares fit of the data. The result is masked (for the closed form, after
    solving, as in TKD).

    Parameters
    ----------
    chi_ppm
        Initial estimate :math:`\chi_0` (ppm), shape ``(X, Y, Z)`` of the field; zero
        outside the mask is assumed (it is masked).
    local_field_ppm, mask, acquisition, voxel_size_mm, b0_dir, pad, kernel_form
        As :func:`~torchqsm.inversion.tkd` (field in ppm of B0; the record's dipole operator).
    regularization
        :math:`\lambda` (dimensionless, > 0: the dipole kernel is dimensionless).
        With 0.01 the data decide wherever :math:`|D| \gtrsim 0.1`, the estimate
        near the magic-angle cone. ``"auto"`` (default): generalized cross-validation. With
        :math:`u = \chi - \chi_0` the problem is identity Tikhonov on the field the estimate
        leaves unexplained, :math:`\min\lVert Du - (f - D\chi_0)\rVert^2 + \lambda\lVert u\rVert^2`,
        whose GCV minimum is closed form in k-space
        (:func:`~torchqsm.inversion.regularization.gcv_tikhonov`); ``weighting="mask"`` uses the same λ.
    weighting
        ``"identity"`` or ``"mask"``, as above.
    magnitude
        Optional magnitude ``(X, Y, Z)`` (non-negative) for :math:`W`; needs ``weighting="mask"``.
    max_iterations, tolerance
        Of CG (relative residual of the normal equations).
    callback
        Receives a :class:`~torchqsm.solvers.SolverStatus` per CG iteration.

    Returns
    -------
    torch.Tensor
        Refined χ (ppm), zero outside the mask, dtype of the field.

    References
    ----------
    Wang S, Su Z, Ying L, et al. Accelerating magnetic resonance imaging via deep
    learning. IEEE ISBI 2016:514–517. doi:10.1109/ISBI.2016.7493320 (DLL2, ref. 33 of
    Paluru et al., NMR Biomed 2024;e5163, doi:10.1002/nbm.5163, Eq. 13)

    Liu Z, Zhang J, Zhang S, Spincemaille P, Nguyen T, Wang Y. Quantitative
    susceptibility mapping using a deep learning prior. Proc ISMRM 2019;27:4933
    (the same prior for QSM)

    Examples
    --------
    >>> from torchqsm.acquisition import Acquisition
    >>> from torchqsm.simulate import forward_field, shapes_phantom
    >>> chi, mask = shapes_phantom((32, 32, 32), dtype=torch.float64)
    >>> field = forward_field(chi, pad=16) * mask
    >>> same = dll2(chi, field, mask, Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), pad=8),
    ...             regularization=1e9)   # λ → ∞ keeps χ0
    >>> bool(torch.allclose(same, chi, atol=1e-9))
    True
    """
    problem = prepare(local_field_ppm, mask, acquisition, method="dll2", voxel_size_mm=voxel_size_mm, b0_dir=b0_dir,
                      pad=pad, kernel_form=kernel_form)
    chi0 = initial_estimate(chi_ppm, problem)
    if is_auto(regularization):
        dipole = problem.dipole()
        kernel = dipole.kernel
        unexplained = dipole.spectrum(problem.field) - kernel * dipole.spectrum(chi0)
        lam = gcv_tikhonov(unexplained, kernel, torch.ones((), dtype=kernel.dtype, device=kernel.device),
                           dipole.pad.padded_shape)
        report(RegularizationChoice("dll2", "generalized cross-validation (Tikhonov on f - D chi0)", lam))
    else:
        lam = check_positive("regularization", regularization)
    if weighting not in ("identity", "mask"):
        raise ParameterError(f"weighting must be 'identity' or 'mask', got {weighting!r}")
    if weighting == "identity" and magnitude is not None:
        raise ParameterError("magnitude weights apply inside the mask: pass weighting='mask' with magnitude")
    if weighting == "identity":
        dipole = problem.dipole()
        kernel = dipole.kernel
        spectrum = (kernel * dipole.spectrum(problem.field) + lam * dipole.spectrum(chi0)) / (kernel * kernel + lam)
        return problem.finish(dipole.image(spectrum))
    data_weights = weights_from_magnitude(magnitude, problem)  # the mask when None
    limit = check_iterations("max_iterations", max_iterations)
    threshold = check_tolerance("tolerance", tolerance)
    inside = MaskOp(problem.mask)
    data = WeightOp(data_weights) @ problem.dipole() @ inside
    normal = data.gram + lam * inside  # CG from masked vectors stays in the mask, where this is SPD
    rhs = data.H(data_weights * problem.field) + lam * chi0
    chi = cg(normal, rhs, initial=chi0, max_iterations=limit, tolerance=threshold, callback=callback)
    return problem.finish(chi)
