"""The problem every inversion solves: a validated field and mask with their acquisition record.

Every classical method shares the signature
``method(local_field_ppm, mask, acquisition=None, *, voxel_size_mm=None, b0_dir=None, pad=None,
kernel_form=None, ...)``: the record (:class:`torchqsm.acquisition.Acquisition`) carries the
geometry, field strength, echo times, padding and kernel form; the four keywords override it
(None: the record's). Without a record, ``voxel_size_mm`` and ``b0_dir`` are required.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..acquisition import DEFAULT_PAD, Acquisition, as_acquisition
from ..errors import InputError, check_positive
from ..physics import DipoleOp, padding_for
from ..physics.operators import bounding_box
from ..validation import check_magnitude, field_and_mask

__all__ = ["Problem", "prepare", "DEFAULT_PAD", "check_positive", "weights_from_magnitude"]


@dataclass(frozen=True)
class Problem:
    """A validated dipole-inversion problem on one grid.

    ``field`` and ``mask`` live on the image grid ``shape``; the record's ``pad`` embeds that
    grid in the padded FFT grid ``padded_shape`` (zeros outside). :meth:`dipole` is the one
    padded dipole operator every method uses.
    """

    field: torch.Tensor
    mask: torch.Tensor
    acquisition: Acquisition

    @property
    def voxel_size_mm(self) -> tuple[float, float, float]:
        return self.acquisition.voxel_size_mm

    @property
    def b0_dir(self) -> tuple[float, float, float]:
        return self.acquisition.b0_dir

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.field.shape[-3:])  # type: ignore[return-value]

    @property
    def pad(self):
        """The zero padding (:class:`~torchqsm.physics.PadOp`) of the dipole operator's grid."""
        return padding_for(self.shape, self.acquisition.pad)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        return self.pad.padded_shape

    def dipole(self, *, b0_dir: Sequence[float] | None = None) -> DipoleOp:
        """The dipole operator χ (image grid) → field (image grid) of the record: its padding,
        kernel form, D(0) = 0."""
        return self.acquisition.dipole(self.shape, b0_dir=b0_dir, dtype=self.field.dtype, device=self.field.device)

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
                       for b, p, n in zip(bounding_box(self.mask), self.acquisition.pad, self.shape))
        return replace(self, field=self.field[..., region[0], region[1], region[2]],
                       mask=self.mask[region]), region  # type: ignore[return-value]


def prepare(
    local_field_ppm,
    mask,
    acquisition: Acquisition | None = None,
    *,
    method: str,
    voxel_size_mm: Sequence[float] | None = None,
    b0_dir: Sequence[float] | None = None,
    pad=None,
    kernel_form: str | None = None,
    leading: int = 0,
) -> Problem:
    """Validate inputs (:mod:`torchqsm.validation`) and resolve the record the method runs with.

    Parameters
    ----------
    method
        Named in the error when the geometry is missing.
    leading
        Number of leading axes allowed on the field (1 for COSMOS' orientations).
    """
    record = as_acquisition(acquisition, method=method, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, pad=pad,
                            kernel_form=kernel_form)
    field, inside = field_and_mask(local_field_ppm, mask, name="local_field_ppm", leading=leading)
    mask_f = inside.to(dtype=field.dtype)
    return Problem(field * mask_f, mask_f, record)


def weights_from_magnitude(magnitude, problem: Problem, *, name: str = "magnitude") -> torch.Tensor:
    """Data weights: the magnitude scaled to mean 1 in the mask (zero outside); the mask if None."""
    if magnitude is None:
        return problem.mask
    mag = check_magnitude(magnitude, problem.shape, problem.mask, name=name, dtype=problem.field.dtype,
                          device=problem.field.device)
    mean = (mag * problem.mask).sum() / problem.mask.sum()
    if float(mean) <= 0:
        raise InputError(f"{name} is zero everywhere in the mask")
    return mag / mean * problem.mask
