r"""The validated input, the result record and spherical-mean-value (SMV) helpers shared by the methods.

Inputs are checked by :mod:`torchqsm.validation` (one policy for every method: NaN inside the
mask is an error, outside it is zeroed and logged; iteration limits ≥ 0, 0 returning the start).

The SMV kernel of radius :math:`r` (mm) is the normalised indicator of the
voxels whose centres lie in the ball :math:`\sum_a (n_a h_a)^2 \le r^2`
(an ellipsoid in voxel units when the voxels are anisotropic). Convolutions
with it run by real FFT on the image grid. Such a convolution is periodic,
but every method only trusts it on the *eroded* mask (voxels whose whole ball
lies inside the mask and inside the grid), where periodic and linear
convolution agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...errors import InputError, ParameterError, check_positive, check_voxel_size
from ...physics import normalize_b0_dir
from ...validation import check_iterations, check_tolerance, field_and_mask

__all__ = ["BackgroundResult", "Field", "prepare", "check_positive", "check_loop", "SMV", "ball_reach"]

_DIMS = (-3, -2, -1)
Vector3 = Sequence[float]


@dataclass(frozen=True)
class BackgroundResult:
    """What every background-removal method returns.

    Attributes
    ----------
    local_field_ppm
        Local field (ppm of B0), shape ``(X, Y, Z)``, zero outside ``mask``.
    mask
        Boolean ``(X, Y, Z)``: the voxels where ``local_field_ppm`` is defined
        (the input mask, eroded by methods that need a margin).
    """

    local_field_ppm: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class Field:
    """A validated total field on its grid: the field (float), the mask (bool) and the geometry."""

    field: torch.Tensor
    mask: torch.Tensor
    voxel_size_mm: tuple[float, float, float]
    b0_dir: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.field.shape)  # type: ignore[return-value]

    def result(self, local: torch.Tensor, mask: torch.Tensor) -> BackgroundResult:
        """The record of ``local`` (zeroed outside ``mask``), in the input's dtype."""
        mask = mask.to(torch.bool)
        if not bool(mask.any()):
            raise InputError("the mask is empty after background removal")
        return BackgroundResult((local * mask).to(self.field.dtype), mask)


def check_loop(max_iterations: int, tolerance: float) -> tuple[int, float]:
    """The loop rule of :mod:`torchqsm.validation`: an iteration limit ≥ 0 (0: the starting point
    is returned) and a tolerance ≥ 0, else :class:`ParameterError`."""
    return check_iterations("max_iterations", max_iterations), check_tolerance("tolerance", tolerance)


def prepare(total_field_ppm, mask, *, voxel_size_mm: Vector3, b0_dir: Vector3) -> Field:
    """Validate a total field and its mask (:func:`torchqsm.validation.field_and_mask`) and the geometry."""
    field, mask_b = field_and_mask(total_field_ppm, mask, name="total_field_ppm")
    voxel = check_voxel_size(voxel_size_mm)
    try:
        b0 = normalize_b0_dir(b0_dir)
    except ValueError as error:
        raise ParameterError(str(error)) from None
    # Values outside the mask are ignored: zero them so that they cannot leak through an FFT.
    return Field(torch.where(mask_b, field, 0.0), mask_b, voxel, b0)  # type: ignore[arg-type]


def ball_reach(radius_mm: float, voxel_size_mm: Vector3) -> tuple[int, int, int]:
    """Half-widths (voxels) of the bounding box of the ball of ``radius_mm`` along each axis."""
    return tuple(int(math.floor(radius_mm / h + 1e-9)) for h in voxel_size_mm)  # type: ignore[return-value]


class SMV:
    """Spherical-mean-value convolution of one radius on one grid.

    Parameters
    ----------
    shape
        Image grid ``(X, Y, Z)``.
    radius_mm
        Ball radius (mm); it must hold more than the centre voxel and fit in half the grid.
    voxel_size_mm
        Voxel size (mm).
    dtype, device
        Of the kernel spectrum.
    """

    def __init__(self, shape: Sequence[int], radius_mm: float, *, voxel_size_mm: Vector3,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.radius_mm = check_positive("radius_mm", radius_mm)
        reach = ball_reach(self.radius_mm, voxel_size_mm)
        if all(r == 0 for r in reach):
            raise ParameterError(f"radius_mm={radius_mm} is smaller than every voxel dimension "
                                 f"{tuple(voxel_size_mm)}: the sphere holds only its centre voxel")
        if any(2 * r + 1 > n for r, n in zip(reach, self.shape)):
            raise ParameterError(f"radius_mm={radius_mm} gives a sphere of {[2 * r + 1 for r in reach]} voxels, "
                                 f"larger than the grid {self.shape}")
        #: Half-widths (voxels) of the ball's bounding box along each axis.
        self.reach = tuple(reach)
        # The ball on its small bounding box (offsets in mm), then wrapped into FFT order on the grid.
        offsets = [torch.arange(-r, r + 1, dtype=torch.float64, device=device) * h
                   for r, h in zip(reach, voxel_size_mm)]
        inside = ((offsets[0][:, None, None] ** 2 + offsets[1][None, :, None] ** 2 + offsets[2][None, None, :] ** 2)
                  <= self.radius_mm**2 * (1 + 1e-9))
        #: Number of voxels in the ball.
        self.count = int(inside.sum())
        kernel = torch.zeros(self.shape, dtype=dtype, device=device)
        kernel[tuple(slice(0, 2 * r + 1) for r in reach)] = inside.to(dtype) / self.count
        kernel = torch.roll(kernel, shifts=tuple(-r for r in reach), dims=_DIMS)
        # The ball is even (n -> -n), so its spectrum is real.
        self.symbol = torch.fft.rfftn(kernel, dim=_DIMS).real.contiguous()

    def spectrum(self, image: torch.Tensor) -> torch.Tensor:
        """Real FFT of an image on this grid (to reuse over several radii)."""
        return torch.fft.rfftn(image, dim=_DIMS)

    def apply_spectrum(self, spectrum: torch.Tensor, multiplier: torch.Tensor | None = None) -> torch.Tensor:
        """Inverse FFT of ``spectrum · multiplier`` (default the SMV symbol)."""
        symbol = self.symbol if multiplier is None else multiplier
        return torch.fft.irfftn(spectrum * symbol.to(spectrum.real.dtype), s=self.shape, dim=_DIMS)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """The spherical mean :math:`s * x`."""
        return self.apply_spectrum(self.spectrum(image))

    def erode_spectrum(self, mask_spectrum: torch.Tensor) -> torch.Tensor:
        """The voxels whose whole ball lies in the mask and in the grid, from the mask's spectrum."""
        return self.eroded_from_mean(self.apply_spectrum(mask_spectrum))

    def eroded_from_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """:meth:`erode_spectrum` from the mask's spherical mean."""
        # A ball with one voxel outside has mean <= 1 - 1/count; half that gap absorbs FFT rounding.
        eroded = mean > 1.0 - 0.5 / self.count
        # Balls that cross the grid edge would wrap around in the periodic convolution.
        border = torch.zeros(self.shape, dtype=torch.bool, device=eroded.device)
        border[self.reach[0]: self.shape[0] - self.reach[0], self.reach[1]: self.shape[1] - self.reach[1],
               self.reach[2]: self.shape[2] - self.reach[2]] = True
        return eroded & border

    def erode(self, mask: torch.Tensor) -> torch.Tensor:
        """:meth:`erode_spectrum` of a boolean mask."""
        return self.erode_spectrum(self.spectrum(mask.to(self.symbol.dtype)))
