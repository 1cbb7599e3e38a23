r"""COSMOS: calculation of susceptibility through multiple orientation sampling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import InputError, ParameterError
from ..physics import DipoleOp, MaskOp, normalize_b0_dir
from ..solvers import StatusCallback, cg
from ._common import DEFAULT_PAD, check_positive, prepare

__all__ = ["cosmos"]


def cosmos(
    local_field_ppm: torch.Tensor,
    mask: torch.Tensor,
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[Sequence[float]] = ((0.0, 0.0, 1.0),),
    pad: int | Sequence[int] = DEFAULT_PAD,
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
    voxel_size_mm
        Voxel size (mm).
    b0_dir
        ``N`` B0 directions in the common voxel coordinates.
    pad
        Zero padding (voxels per side).
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
    problem = prepare(local_field_ppm, mask, voxel_size_mm=voxel_size_mm, b0_dir=(0.0, 0.0, 1.0), pad=pad,
                      leading=1)
    eps = check_positive("regularization", regularization)
    try:
        directions = [normalize_b0_dir(b) for b in b0_dir]
    except (TypeError, ValueError) as error:
        raise ParameterError(f"b0_dir must be a list of 3-vectors, one per orientation: {error}") from None
    count = problem.field.shape[0]
    if len(directions) != count:
        raise InputError(f"{count} field volumes but {len(directions)} B0 directions")
    if solver not in ("cg", "kspace"):
        raise ParameterError(f"solver must be 'cg' or 'kspace', got {solver!r}")
    numerator = 0.0
    denominator = 0.0
    for index, direction in enumerate(directions):
        kernel = problem.kernel(b0_dir=direction)
        numerator = numerator + kernel * problem.rfft(problem.field[index])
        denominator = denominator + kernel * kernel
    chi = problem.finish(problem.irfft(numerator / (denominator + eps)))
    if solver == "kspace":
        return chi
    support = MaskOp(problem.mask)
    dipoles = [DipoleOp(problem.shape, voxel_size_mm=problem.voxel_size_mm, b0_dir=direction,
                        pad=problem.pad.before, dtype=chi.dtype, device=chi.device) for direction in directions]
    data = [support @ dipole @ support for dipole in dipoles]

    def normal(x: torch.Tensor) -> torch.Tensor:
        return sum(op.H(op(x)) for op in data)

    rhs = sum(op.H(problem.field[index]) for index, op in enumerate(data))
    chi = cg(normal, rhs, initial=chi, max_iterations=int(max_iterations), tolerance=float(tolerance),
             callback=callback)
    return problem.finish(chi)
