"""Finite-difference gradient (mm⁻¹) and its adjoint, the negative divergence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..kernels import laplacian_symbol
from .base import _DIMS, LinearOperator
from .fourier import FourierMultiplierOp

__all__ = ["GradientOp"]


class GradientOp(LinearOperator):
    r"""Forward differences along the three axes, divided by the voxel size (mm⁻¹).

    Maps ``(..., X, Y, Z)`` to ``(..., 3, X, Y, Z)``.

    Parameters
    ----------
    voxel_size_mm
        Voxel size (mm) per axis.
    boundary
        ``"periodic"``: :math:`(x_{i+1}-x_i)/h` with wrap-around (diagonalised by the
        FFT: ``gram`` is then a :class:`FourierMultiplierOp` given ``shape``).
        ``"neumann"``: the difference at the last voxel is zero.
    shape
        Image grid; only needed for the Fourier form of ``gram``.
    """

    def __init__(
        self,
        *,
        voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
        boundary: Literal["periodic", "neumann"] = "periodic",
        shape: Sequence[int] | None = None,
    ) -> None:
        if boundary not in ("periodic", "neumann"):
            raise ValueError(f"boundary must be 'periodic' or 'neumann', got {boundary!r}")
        self.voxel_size_mm = tuple(float(h) for h in voxel_size_mm)
        self.boundary = boundary
        self.shape = None if shape is None else tuple(int(n) for n in shape)

    def forward(self, x):
        parts = []
        for axis, h in zip(_DIMS, self.voxel_size_mm):
            if self.boundary == "periodic":
                d = torch.roll(x, -1, dims=axis) - x
            else:
                d = torch.diff(x, dim=axis, append=x.narrow(axis, x.shape[axis] - 1, 1))
            parts.append(d / h)
        return torch.stack(parts, dim=-4)

    def adjoint(self, y):
        out = None
        for index, (axis, h) in enumerate(zip(_DIMS, self.voxel_size_mm)):
            g = y.select(-4, index)
            if self.boundary == "periodic":
                term = torch.roll(g, 1, dims=axis) - g
            else:
                n = g.shape[axis]
                inner = g.narrow(axis, 0, n - 1)
                zero = torch.zeros_like(g.narrow(axis, 0, 1))
                term = torch.cat([zero, inner], dim=axis) - torch.cat([inner, zero], dim=axis)
            out = term / h if out is None else out + term / h
        return out

    @property
    def gram(self):
        if self.boundary == "periodic" and self.shape is not None:
            symbol = -laplacian_symbol(self.shape, voxel_size_mm=self.voxel_size_mm, stencil="7",
                                       dtype=torch.float64)
            return FourierMultiplierOp(symbol, self.shape)
        return self.H @ self

    def __repr__(self) -> str:
        return f"GradientOp(voxel_size_mm={self.voxel_size_mm}, boundary={self.boundary!r})"
