r"""COSMOS: calculation of susceptibility through multiple orientation sampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InputError, ParameterError
from ..physics import normalize_b0_dir
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
) -> torch.Tensor:
    r"""Least squares over several head orientations, in k-space.

    .. math::

       \chi = \mathcal F^{-1}\Big[\frac{\sum_i D_i\,\mathcal F f_i}{\sum_i D_i^2 + \epsilon}\Big]

    With three or more well-spread orientations :math:`\sum_i D_i^2` vanishes
    only at :math:`\mathbf k = 0`, so the inversion is well posed without
    a spatial prior. The fields must be co-registered on one grid.

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
        :math:`\epsilon`, guarding the division.

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
    numerator = 0.0
    denominator = 0.0
    for index, direction in enumerate(directions):
        kernel = problem.kernel(b0_dir=direction)
        numerator = numerator + kernel * problem.rfft(problem.field[index])
        denominator = denominator + kernel * kernel
    return problem.finish(problem.irfft(numerator / (denominator + eps)))
