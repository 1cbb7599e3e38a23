"""Periodic convolutions applied by real FFT: Fourier multipliers, the dipole, Laplacians."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..kernels import KernelForm, dipole_kernel, laplacian_symbol
from .base import _DIMS, LinearOperator, _BufferCache
from .pointwise import padding_for

__all__ = ["FourierMultiplierOp", "DipoleOp", "LaplacianOp"]


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

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Real FFT of ``x`` (image grid) zero-padded to the operator's grid: :math:`FPx`.

        The padding goes at the end of each axis (a circular convolution commutes with
        shifts, so :meth:`image` of any diagonal operation on this spectrum is the same as
        with centred padding).
        """
        self._check_grid(x)
        return torch.fft.rfftn(x, s=self.pad.padded_shape, dim=_DIMS)

    def image(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`spectrum`: inverse real FFT on the padded grid, cropped to the image grid."""
        out = torch.fft.irfftn(spectrum, s=self.pad.padded_shape, dim=_DIMS)
        return out[..., : self.shape[0], : self.shape[1], : self.shape[2]]

    def apply_symbol(self, x: torch.Tensor, symbol: torch.Tensor) -> torch.Tensor:
        r"""Any real diagonal k-space operation on this operator's padded grid, :math:`P^\top F^{-1} s F P x`.

        The closed-form inversions (TKD, TSVD, Tikhonov, ...) are such operations with a
        symbol made from :attr:`kernel`; they share this one padded FFT path with the
        forward operator.
        """
        return self.image(self.spectrum(x) * symbol)

    def _check_grid(self, x: torch.Tensor) -> None:
        if tuple(x.shape[-3:]) != self.shape:
            raise ValueError(f"input grid {tuple(x.shape[-3:])} does not match operator grid {self.shape}")

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
