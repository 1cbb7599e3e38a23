"""Forward simulation: χ (ppm) → field (ppm) with the dipole model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..physics import DipoleOp
from ..physics.kernels import KernelForm

__all__ = ["forward_field", "add_noise"]


#: Kernel form for the field of everything outside the brain (the head's 9.4 ppm air-tissue edge,
#: external sources) in the simulators: the voxel-integrated kernel keeps that field harmonic in the
#: brain at any B0 direction; the point-sampled k-space kernel rings at oblique B0
#: (docs/conventions.md, "Oblique B0"; tests/bench/test_suite_harmonicity.py).
HEAD_KERNEL_FORM: KernelForm = "image"


def forward_field(
    chi_ppm: torch.Tensor,
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    pad: int | Sequence[int] = 0,
    form: KernelForm = "kspace",
    dc: float | None = 0.0,
) -> torch.Tensor:
    """Field (ppm of B0) of ``chi_ppm`` (ppm), shape ``(..., X, Y, Z)``, by :class:`DipoleOp`.

    ``pad`` voxels of zeros per side suppress the periodic wrap-around; use at
    least the object's size for a field free of aliasing.

    >>> from torchqsm.simulate import sphere
    >>> f = forward_field(0.1 * sphere((32, 32, 32), radius=5, dtype=torch.float64), pad=16)
    >>> abs(float(f[16, 16, 16])) < 1e-3   # Lorentz-corrected: zero inside a sphere
    True
    """
    op = DipoleOp(tuple(chi_ppm.shape[-3:]), voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, pad=pad,
                  form=form, dc=dc, dtype=chi_ppm.dtype, device=chi_ppm.device)
    return op(chi_ppm)


def add_noise(
    field: torch.Tensor,
    *,
    sigma: float,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Add white Gaussian noise of standard deviation ``sigma`` (same unit as ``field``), inside ``mask``."""
    noise = torch.randn(field.shape, dtype=field.dtype, generator=generator).to(field.device) * float(sigma)
    if mask is not None:
        noise = noise * (mask != 0)
    return field + noise
