r"""COSMOS: calculation of susceptibility through multiple orientation sampling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..acquisition import Acquisition
from ..errors import InputError, ParameterError
from ..physics import MaskOp
from ..physics.kernels import KernelForm
from ..solvers import StatusCallback, cg
from ._common import check_positive, prepare

__all__ = ["cosmos"]


def cosmos(
    local_field_ppm: torch.Tensor,
    mask: torch.Tensor,
    acquisition: Acquisition | None = None,
    *,
    voxel_size_mm: Sequence[float] | None = None,
    b0_dir: Sequence[Sequence[float]] | None = None,
    pad: int | Sequence[int] | None = None,
    kernel_form: KernelForm | None = None,
    regularization: float = 1e-6,
    solver: Literal["cg", "kspace"] = "cg",
    max_iterations: int = 30,
    tolerance: float = 3e-4,
    callback: StatusCallback | None = None,
) -> torch.Tensor:
    r"""Least squares over several head orientations.

    .. math::

       \chi = \arg\min_{\chi = M\chi} \sum_i \lVert M(D_i\chi - f_i)\rVert_2^2

    With three or more well-spread orientations the cones of the :math:`D_i`
    intersect only at :math:`\mathbf k = 0`, so no spatial prior is needed.
    ``solver="kspace"`` is the closed form over the whole padded grid,
    :math:`\mathcal F^{-1}[\sum_i D_i\mathcal F f_i / (\sum_i D_i^2 + \epsilon)]`; it
    treats the unknown field outside the mask as zero. ``solver="cg"`` (default)
    starts there and solves the masked problem above, with χ supported in the
    mask, by conjugate gradient. On the noise-free analytic phantom (three
    orientations 25° apart) NRMSE falls from 21 % (k-space) to 2.2 % (CG, 20
    iterations). The fields must be co-registered on one grid.

    Parameters
    ----------
    local_field_ppm
        Fields (ppm), shape ``(N, X, Y, Z)``: one per orientation.
    mask
        ``(X, Y, Z)``, shared by all orientations.
    acquisition
        The record; its ``orientations`` are the ``N`` B0 directions in the common voxel
        coordinates (``Acquisition(voxel_size_mm=..., b0_dir=[[...], [...], ...])``).
    voxel_size_mm, b0_dir, pad, kernel_form
        Override the record's (``b0_dir``: ``N`` directions).
    regularization
        :math:`\epsilon`, guarding the k-space division.
    solver
        ``"cg"`` or ``"kspace"``.
    max_iterations, tolerance
        Of CG (relative residual of the normal equations).
    callback
        Receives a :class:`~torchqsm.solvers.SolverStatus` per CG iteration.

    References
    ----------
    Liu T, Spincemaille P, de Rochefort L, Kressler B, Wang Y. Calculation of
    susceptibility through multiple orientation sampling (COSMOS). MRM
    2009;61:196–204. doi:10.1002/mrm.21828
    """
    problem = prepare(local_field_ppm, mask, acquisition, method="cosmos", voxel_size_mm=voxel_size_mm,
                      b0_dir=b0_dir, pad=pad, kernel_form=kernel_form, leading=1)
    eps = check_positive("regularization", regularization)
    directions = problem.acquisition.orientations
    count = problem.field.shape[0]
    if len(directions) != count:
        raise InputError(f"{count} field volumes but {len(directions)} B0 directions")
    if solver not in ("cg", "kspace"):
        raise ParameterError(f"solver must be 'cg' or 'kspace', got {solver!r}")
    dipoles = [problem.dipole(b0_dir=direction) for direction in directions]
    numerator = 0.0
    denominator = 0.0
    for index, dipole in enumerate(dipoles):
        numerator = numerator + dipole.kernel * dipole.spectrum(problem.field[index])
        denominator = denominator + dipole.kernel * dipole.kernel
    chi = problem.finish(dipoles[0].image(numerator / (denominator + eps)))
    if solver == "kspace":
        return chi
    support = MaskOp(problem.mask)
    data = [support @ dipole @ support for dipole in dipoles]

    def normal(x: torch.Tensor) -> torch.Tensor:
        return sum(op.H(op(x)) for op in data)

    rhs = sum(op.H(problem.field[index]) for index, op in enumerate(data))
    chi = cg(normal, rhs, initial=chi, max_iterations=int(max_iterations), tolerance=float(tolerance),
             callback=callback)
    return problem.finish(chi)
