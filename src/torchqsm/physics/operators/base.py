"""The operator algebra: ``LinearOperator`` with ``.H``, ``.gram``, ``@``, ``+``, scalar ``*``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

__all__ = ["LinearOperator", "IdentityOp"]

_DIMS = (-3, -2, -1)


def _real_dtype(x: torch.Tensor) -> torch.dtype:
    return x.real.dtype if x.is_complex() else x.dtype


class _BufferCache:
    """A buffer kept in the dtype/device it was made with, converted once per use site."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.base = tensor
        self._converted: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        dtype, device = _real_dtype(x), x.device
        if self.base.dtype == dtype and self.base.device == device:
            return self.base
        key = (dtype, device)
        if key not in self._converted:
            self._converted[key] = self.base.to(dtype=dtype, device=device)
        return self._converted[key]


class LinearOperator(ABC):
    """A linear map with a hand-written adjoint."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint operator."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    @property
    def H(self) -> LinearOperator:  # noqa: N802 - the maths' name
        """The adjoint operator :math:`A^H`."""
        return _AdjointOp(self)

    @property
    def gram(self) -> LinearOperator:
        """The normal operator :math:`A^H A` (subclasses give cheaper forms)."""
        return self.H @ self

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if isinstance(other, torch.Tensor):
            return self.forward(other)
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _ComposedOp(self, other)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _SumOp(self, other)

    def __sub__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _SumOp(self, _ScaledOp(other, -1.0))

    def __mul__(self, scalar: float) -> LinearOperator:
        if isinstance(scalar, (LinearOperator, torch.Tensor)):
            return NotImplemented
        return _ScaledOp(self, float(scalar))

    __rmul__ = __mul__

    def __neg__(self) -> LinearOperator:
        return _ScaledOp(self, -1.0)


class _AdjointOp(LinearOperator):
    def __init__(self, op: LinearOperator) -> None:
        self.op = op

    def forward(self, x):
        return self.op.adjoint(x)

    def adjoint(self, y):
        return self.op.forward(y)

    @property
    def H(self):  # noqa: N802
        return self.op

    def __repr__(self) -> str:
        return f"{self.op!r}.H"


class _ComposedOp(LinearOperator):
    def __init__(self, outer: LinearOperator, inner: LinearOperator) -> None:
        self.outer, self.inner = outer, inner

    def forward(self, x):
        return self.outer.forward(self.inner.forward(x))

    def adjoint(self, y):
        return self.inner.adjoint(self.outer.adjoint(y))

    def __repr__(self) -> str:
        return f"({self.outer!r} @ {self.inner!r})"


class _SumOp(LinearOperator):
    def __init__(self, left: LinearOperator, right: LinearOperator) -> None:
        self.left, self.right = left, right

    def forward(self, x):
        return self.left.forward(x) + self.right.forward(x)

    def adjoint(self, y):
        return self.left.adjoint(y) + self.right.adjoint(y)

    def __repr__(self) -> str:
        return f"({self.left!r} + {self.right!r})"


class _ScaledOp(LinearOperator):
    def __init__(self, op: LinearOperator, scalar: float) -> None:
        self.op, self.scalar = op, scalar

    def forward(self, x):
        return self.scalar * self.op.forward(x)

    def adjoint(self, y):
        return self.scalar * self.op.adjoint(y)

    def __repr__(self) -> str:
        return f"{self.scalar!r} * {self.op!r}"


class IdentityOp(LinearOperator):
    """The identity."""

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y

    @property
    def gram(self):
        return self

    def __repr__(self) -> str:
        return "IdentityOp()"
