"""Voxel-wise operators: zero padding, weights, masks."""

from __future__ import annotations

from collections.abc import Sequence

import scipy.fft
import torch
import torch.nn.functional as F

from .base import IdentityOp, LinearOperator, _BufferCache

__all__ = ["PadOp", "padding_for", "WeightOp", "MaskOp", "bounding_box"]


def bounding_box(mask: torch.Tensor) -> tuple[slice, slice, slice]:
    """Slices of the smallest box holding every non-zero voxel of a non-empty 3-D mask (last three axes)."""
    inside = mask != 0
    while inside.ndim > 3:
        inside = inside.any(dim=0)
    boxes = []
    for axis in range(3):
        where = torch.nonzero(inside.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
        if where.numel() == 0:
            raise ValueError("bounding_box of an empty mask")
        boxes.append(slice(int(where[0]), int(where[-1]) + 1))
    return tuple(boxes)  # type: ignore[return-value]


def _pad_amounts(pad: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(pad, int):
        pad = (pad, pad, pad)
    pad = tuple(int(p) for p in pad)
    if len(pad) != 3 or any(p < 0 for p in pad):
        raise ValueError(f"pad must be a non-negative int or 3 of them, got {pad}")
    return pad  # type: ignore[return-value]


def padding_for(shape: Sequence[int], pad: int | Sequence[int], *, fast_length: bool = True) -> PadOp:
    """The :class:`PadOp` adding ``pad`` voxels on each side of each axis.

    With ``fast_length`` (and any padding), every axis is then rounded up to a
    length with small prime factors (``scipy.fft.next_fast_len``); the extra
    voxels go at the end.
    """
    shape = tuple(int(n) for n in shape)
    before = _pad_amounts(pad)
    total = [n + 2 * p for n, p in zip(shape, before)]
    if fast_length and any(p > 0 for p in before):
        total = [scipy.fft.next_fast_len(t, real=True) for t in total]
    after = tuple(t - n - b for t, n, b in zip(total, shape, before))
    return PadOp(shape, before=before, after=after)


class PadOp(LinearOperator):
    """Zero padding of the last three axes; the adjoint crops.

    Parameters
    ----------
    shape
        Image grid ``(X, Y, Z)``.
    before, after
        Voxels added before and after along each axis.
    """

    def __init__(self, shape: Sequence[int], *, before: Sequence[int], after: Sequence[int]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.before = _pad_amounts(before)
        self.after = _pad_amounts(after)
        self.padded_shape = tuple(n + b + a for n, b, a in zip(self.shape, self.before, self.after))
        # F.pad takes the last axis first.
        self._torch_pad = (self.before[2], self.after[2], self.before[1], self.after[1],
                           self.before[0], self.after[0])
        self._crop = tuple(slice(b, b + n) for b, n in zip(self.before, self.shape))

    @property
    def is_identity(self) -> bool:
        return self.padded_shape == self.shape

    def forward(self, x):
        if self.is_identity:
            return x
        return F.pad(x, self._torch_pad)

    def adjoint(self, y):
        if self.is_identity:
            return y
        return y[(..., *self._crop)]

    @property
    def gram(self):
        return IdentityOp()

    def __repr__(self) -> str:
        return f"PadOp({self.shape} -> {self.padded_shape})"


class WeightOp(LinearOperator):
    """Voxel-wise multiplication by real weights (broadcast over leading axes)."""

    def __init__(self, weights: torch.Tensor) -> None:
        if weights.is_complex():
            raise ValueError("weights must be real")
        self._weights = _BufferCache(weights)

    @property
    def weights(self) -> torch.Tensor:
        return self._weights.base

    def forward(self, x):
        return x * self._weights.like(x)

    adjoint = forward

    @property
    def H(self):  # noqa: N802
        return self

    @property
    def gram(self):
        return WeightOp(self.weights * self.weights)

    def __repr__(self) -> str:
        return f"WeightOp(shape={tuple(self.weights.shape)})"


class MaskOp(WeightOp):
    """Multiplication by a binary mask (a projection: ``gram`` is itself)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask.to(torch.float32) if mask.dtype == torch.bool else (mask != 0).to(mask.dtype))

    @property
    def gram(self):
        return self

    def __repr__(self) -> str:
        return f"MaskOp(shape={tuple(self.weights.shape)})"
