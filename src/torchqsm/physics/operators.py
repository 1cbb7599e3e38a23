r"""Linear operators that read like the maths.

A :class:`LinearOperator` maps tensors shaped ``(..., X, Y, Z)`` (some to
``(..., 3, X, Y, Z)``). It knows its ``forward`` and hand-written ``adjoint``;
``A.H`` is the adjoint operator, ``A.gram`` is :math:`A^H A`, ``A @ B`` composes,
``A + B`` adds, ``s * A`` scales. Operators hold no learned weights, only fixed
buffers (kernels, masks, weights), and work on CPU and CUDA in float32 or
float64: buffers follow the input's device and real dtype.

Every operator below joins the contract list in
``tests/physics/test_operator_contract.py`` (adjointness, ``gram == H @ A``,
autograd agreement with the adjoint, odd/even sizes, anisotropic voxels,
oblique B0, float32/float64).

Examples
--------
>>> x = torch.randn(8, 8, 8, dtype=torch.float64)
>>> A = DipoleOp((8, 8, 8), voxel_size_mm=(1.0, 1.0, 2.0), b0_dir=(0.0, 0.6, 0.8))
>>> y = torch.randn(8, 8, 8, dtype=torch.float64)
>>> bool(torch.isclose((A(x) * y).sum(), (x * A.H(y)).sum()))
True
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import scipy.fft
import torch
import torch.nn.functional as F

from .kernels import KernelForm, dipole_kernel, laplacian_symbol

__all__ = [
    "LinearOperator",
    "IdentityOp",
    "FourierMultiplierOp",
    "DipoleOp",
    "PadOp",
    "padding_for",
    "WeightOp",
    "MaskOp",
    "GradientOp",
    "LaplacianOp",
]

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


class FourierMultiplierOp(LinearOperator):
    r"""Periodic convolution with a real, even kernel: :math:`F^{-1}\,\mathrm{diag}(s)\,F`.

    Parameters
    ----------
    symbol
        Real half spectrum of shape ``(X, Y, Z//2+1)`` (``torch.fft.rfftn`` layout).
        A real and even kernel makes the operator self-adjoint.
    shape
        The image grid ``(X, Y, Z)``.
    """

    def __init__(self, symbol: torch.Tensor, shape: Sequence[int]) -> None:
        self.shape = tuple(int(n) for n in shape)
        expected = (*self.shape[:2], self.shape[2] // 2 + 1)
        if tuple(symbol.shape) != expected:
            raise ValueError(f"symbol shape {tuple(symbol.shape)} does not fit grid {self.shape}")
        self._symbol = _BufferCache(symbol)

    @property
    def symbol(self) -> torch.Tensor:
        return self._symbol.base

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[-3:]) != self.shape:
            raise ValueError(f"input grid {tuple(x.shape[-3:])} does not match operator grid {self.shape}")

    def forward(self, x):
        self._check(x)
        s = self._symbol.like(x)
        if x.is_complex():  # a real kernel acts on the real and imaginary parts separately
            return torch.complex(self.forward(x.real), self.forward(x.imag))
        spectrum = torch.fft.rfftn(x, dim=_DIMS)
        # In place when autograd does not need the spectrum: saves one large allocation.
        spectrum = spectrum.mul_(s) if not torch.is_grad_enabled() or not spectrum.requires_grad else spectrum * s
        return torch.fft.irfftn(spectrum, s=self.shape, dim=_DIMS)

    adjoint = forward

    @property
    def H(self):  # noqa: N802
        return self

    @property
    def gram(self):
        return FourierMultiplierOp(self.symbol * self.symbol, self.shape)

    def __repr__(self) -> str:
        return f"FourierMultiplierOp(shape={self.shape})"


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


class DipoleOp(LinearOperator):
    r"""The dipole convolution :math:`f = P^\top F^{-1} D F P \chi` (χ ppm → field ppm).

    Parameters
    ----------
    shape
        Image grid ``(X, Y, Z)``.
    voxel_size_mm
        Voxel size (mm) per axis.
    b0_dir
        B0 direction in voxel coordinates (normalised here).
    pad
        Zero padding :math:`P` in voxels added on each side of each axis (an int
        or three). Padding suppresses the wrap-around of the periodic FFT
        convolution; 0 means no padding.
    fast_length
        Round the padded size up to a length with small prime factors
        (``scipy.fft.next_fast_len``); the extra voxels go at the end.
    form, dc
        See :func:`torchqsm.physics.kernels.dipole_kernel`.
    dtype, device
        Of the stored kernel; inputs of another real dtype/device get a converted copy.

    Notes
    -----
    The kernel is real and even, so the operator is self-adjoint. Without
    padding, ``gram`` is one multiplication by :math:`D^2`.
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
        b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
        pad: int | Sequence[int] = 0,
        fast_length: bool = True,
        form: KernelForm = "kspace",
        dc: float | None = 0.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 3:
            raise ValueError(f"shape must have 3 sizes, got {self.shape}")
        self.pad = padding_for(self.shape, pad, fast_length=fast_length)
        self.voxel_size_mm = tuple(float(h) for h in voxel_size_mm)
        self.b0_dir = tuple(float(b) for b in b0_dir)
        self.form = form
        kernel = dipole_kernel(self.pad.padded_shape, voxel_size_mm=self.voxel_size_mm, b0_dir=self.b0_dir,
                               form=form, dc=dc, dtype=dtype, device=device)
        self.multiplier = FourierMultiplierOp(kernel, self.pad.padded_shape)

    @property
    def kernel(self) -> torch.Tensor:
        """The half-spectrum kernel on the padded grid."""
        return self.multiplier.symbol

    def forward(self, x):
        if self.pad.is_identity:
            return self.multiplier.forward(x)
        if x.is_complex():  # a real kernel acts on the real and imaginary parts separately
            return torch.complex(self.forward(x.real), self.forward(x.imag))
        # Zero padding at the end of each axis instead of around the image: a circular
        # convolution commutes with shifts, so the cropped result is the same, and rfftn
        # pads internally without a separate copy.
        grid = self.pad.padded_shape
        spectrum = torch.fft.rfftn(x, s=grid, dim=_DIMS)
        kernel = self.multiplier._symbol.like(x)
        spectrum = spectrum.mul_(kernel) if not spectrum.requires_grad else spectrum * kernel
        out = torch.fft.irfftn(spectrum, s=grid, dim=_DIMS)
        return out[..., : self.shape[0], : self.shape[1], : self.shape[2]]

    adjoint = forward

    @property
    def H(self):  # noqa: N802
        return self

    @property
    def gram(self):
        if self.pad.is_identity:
            return self.multiplier.gram
        return self @ self

    def __repr__(self) -> str:
        return (f"DipoleOp(shape={self.shape}, padded={self.pad.padded_shape}, "
                f"voxel_size_mm={self.voxel_size_mm}, b0_dir={self.b0_dir}, form={self.form!r})")


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


class LaplacianOp(FourierMultiplierOp):
    r"""Periodic Laplacian (mm⁻²): continuous (``"fft"``), 7-point or 27-point stencil.

    The stencils are applied through their exact Fourier symbols
    (:func:`torchqsm.physics.kernels.laplacian_symbol`), which equals the
    stencil convolution with periodic boundaries.
    """

    def __init__(
        self,
        shape: Sequence[int],
        *,
        voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
        stencil: Literal["fft", "7", "27"] = "7",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.stencil = stencil
        symbol = laplacian_symbol(shape, voxel_size_mm=voxel_size_mm, stencil=stencil, dtype=dtype, device=device)
        super().__init__(symbol, shape)

    def __repr__(self) -> str:
        return f"LaplacianOp(shape={self.shape}, stencil={self.stencil!r})"
