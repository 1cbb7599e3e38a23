"""Validation and k-space helpers shared by the inversion methods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError, ParameterError, check_positive, check_voxel_size
from ..physics import DipoleOp, PadOp, dipole_kernel, normalize_b0_dir, padding_for
from ..physics.operators import bounding_box

__all__ = ["Problem", "prepare", "DEFAULT_PAD", "check_positive", "weights_from_magnitude"]

#: Zero padding (voxels per side) every method uses unless told otherwise.
DEFAULT_PAD: tuple[int, int, int] = (16, 16, 16)

_DIMS = (-3, -2, -1)


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{name} is not an array: {error}") from None


def _pad_tuple(pad) -> tuple[int, int, int]:
    if isinstance(pad, (int, float)) and not isinstance(pad, bool):
        pad = (pad, pad, pad)
    try:
        values = tuple(int(p) for p in pad)
    except (TypeError, ValueError):
        raise ParameterError(f"pad must be an integer or three integers, got {pad!r}") from None
    if len(values) != 3 or any(p < 0 for p in values) or any(float(p) != float(q) for p, q in zip(values, pad)):
        raise ParameterError(f"pad must be three non-negative integers, got {pad!r}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Problem:
    """A validated dipole-inversion problem on one grid.

    ``field`` and ``mask`` live on the image grid ``shape``; ``pad`` embeds that
    grid in the padded FFT grid ``padded_shape`` (zeros outside).
    """

    field: torch.Tensor
    mask: torch.Tensor
    voxel_size_mm: tuple[float, float, float]
    b0_dir: tuple[float, float, float]
    pad: PadOp

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.pad.shape

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return self.pad.padded_shape

    def kernel(self, *, b0_dir: Sequence[float] | None = None) -> torch.Tensor:
        """The k-space dipole kernel (rfft half spectrum) on the padded grid, D(0) = 0."""
        return dipole_kernel(self.padded_shape, voxel_size_mm=self.voxel_size_mm,
                             b0_dir=self.b0_dir if b0_dir is None else b0_dir,
                             dtype=self.field.dtype, device=self.field.device)

    def dipole(self) -> DipoleOp:
        """The dipole operator χ (image grid) → field (image grid) with this padding, D(0) = 0."""
        return DipoleOp(self.shape, voxel_size_mm=self.voxel_size_mm, b0_dir=self.b0_dir,
                        pad=self.pad.before, dtype=self.field.dtype, device=self.field.device)

    def rfft(self, image: torch.Tensor) -> torch.Tensor:
        """Zero-pad an image-grid volume and take its real FFT."""
        return torch.fft.rfftn(self.pad.forward(image), dim=_DIMS)

    def irfft(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Inverse real FFT on the padded grid, cropped back to the image grid."""
        return self.pad.adjoint(torch.fft.irfftn(spectrum, s=self.padded_shape, dim=_DIMS))

    def finish(self, chi: torch.Tensor) -> torch.Tensor:
        """χ inside the mask, zero outside, in the input's dtype."""
        return (chi * self.mask).to(self.field.dtype)

    def cropped_to_mask(self) -> tuple[Problem, tuple[slice, slice, slice]]:
        """This problem on the mask's bounding box, with the same zero margin ``pad`` around it.

        Along axes without padding the grid is kept whole (the convolution is periodic there).
        For an unknown and data that both live in the mask, the solution then does not depend
        on how many zero voxels surround the mask, and they cost no FFT time.
        """
        region = tuple(b if p > 0 else slice(0, n)
                       for b, p, n in zip(bounding_box(self.mask), self.pad.before, self.shape))
        shape = tuple(b.stop - b.start for b in region)
        problem = Problem(self.field[region], self.mask[region], self.voxel_size_mm, self.b0_dir,
                          padding_for(shape, self.pad.before))
        return problem, region  # type: ignore[return-value]


def prepare(
    local_field_ppm,
    mask,
    *,
    voxel_size_mm: Sequence[float],
    b0_dir: Sequence[float],
    pad,
    leading: int = 0,
) -> Problem:
    """Validate inputs and build the padded problem.

    Parameters
    ----------
    leading
        Number of leading axes allowed on the field (1 for COSMOS' orientations).
    """
    field = _as_tensor(local_field_ppm, "local_field_ppm")
    mask_t = _as_tensor(mask, "mask")
    if field.ndim != 3 + leading:
        want = "3-D" if leading == 0 else f"{3 + leading}-D (orientations first)"
        raise InputError(f"local_field_ppm is {field.ndim}-D {tuple(field.shape)}; a {want} field is needed")
    if field.is_complex() or not field.is_floating_point():
        field = field.to(torch.float32) if not field.is_complex() else field
        if field.is_complex():
            raise InputError("local_field_ppm must be real (ppm), got a complex array")
    if mask_t.ndim != 3 or tuple(mask_t.shape) != tuple(field.shape[-3:]):
        raise InputError(f"mask shape {tuple(mask_t.shape)} does not match the field's grid {tuple(field.shape[-3:])}")
    if not torch.isfinite(field).all():
        bad = int((~torch.isfinite(field)).sum())
        raise InputError(f"local_field_ppm has {bad} NaN or infinite voxels")
    mask_b = mask_t != 0
    if not bool(mask_b.any()):
        raise InputError("mask is empty (no non-zero voxel)")
    voxel = check_voxel_size(voxel_size_mm)
    if leading == 0:
        try:
            b0 = normalize_b0_dir(b0_dir)
        except ValueError as error:
            raise ParameterError(str(error)) from None
    else:
        b0 = (0.0, 0.0, 1.0)  # per-orientation directions are validated by the method
    pad_op = padding_for(tuple(field.shape[-3:]), _pad_tuple(pad))
    mask_f = mask_b.to(device=field.device, dtype=field.dtype)
    return Problem(field * mask_f, mask_f, voxel, b0, pad_op)  # type: ignore[arg-type]


def weights_from_magnitude(magnitude, problem: Problem, *, name: str = "magnitude") -> torch.Tensor:
    """Data weights: the magnitude scaled to mean 1 in the mask (zero outside); the mask if None."""
    if magnitude is None:
        return problem.mask
    mag = _as_tensor(magnitude, name).to(device=problem.field.device, dtype=problem.field.dtype)
    if tuple(mag.shape) != problem.shape:
        raise InputError(f"{name} shape {tuple(mag.shape)} does not match the field's grid {problem.shape}")
    if not torch.isfinite(mag).all() or bool((mag < 0).any()):
        raise InputError(f"{name} must be finite and non-negative")
    mean = (mag * problem.mask).sum() / problem.mask.sum()
    if float(mean) <= 0:
        raise InputError(f"{name} is zero everywhere in the mask")
    return mag / mean * problem.mask
