"""Input checks shared by the metrics: conversion to float64, shapes, masks.

Every metric accepts ``torch.Tensor`` or ``numpy.ndarray`` inputs, converts
them here once (numpy only at this edge) and computes in float64 on the device
of ``reference``.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from torchqsm import validation

__all__ = ["ArrayLike", "as_tensor", "as_float64", "as_mask", "prepare", "relative_error_percent"]

#: What every metric accepts for an image, a mask or a label volume.
ArrayLike = Union[torch.Tensor, np.ndarray]


def as_tensor(array: ArrayLike, *, name: str) -> torch.Tensor:
    """``array`` as a real-valued tensor (no copy where none is needed), detached
    (:func:`torchqsm.validation.as_tensor`: big-endian and read-only numpy arrays are copied)."""
    tensor = validation.as_tensor(array, name).detach()
    if tensor.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {tensor.dtype}")
    return tensor


def as_float64(array: ArrayLike, *, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``array`` as a float64 tensor on ``device`` (its own device when None)."""
    return as_tensor(array, name=name).to(device=device, dtype=torch.float64)


def as_mask(mask: ArrayLike | None, *, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A boolean mask of ``shape`` on ``device``; None selects every voxel.

    Raises
    ------
    ValueError
        If the shape differs, a value is neither 0 nor 1, or no voxel is selected
        (:func:`torchqsm.validation.check_mask` with ``binary=True``).
    """
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    return validation.check_mask(as_tensor(mask, name="mask"), shape, device=device, binary=True,
                                 grid="the images' shape")


def prepare(
    estimate: ArrayLike,
    reference: ArrayLike,
    mask: ArrayLike | None,
    *,
    require_3d: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated float64 ``(estimate, reference, mask)`` on one device.

    Raises
    ------
    ValueError
        On a shape mismatch, a non-3-D volume where ``require_3d``, an empty or
        non-binary mask, or a NaN/infinite value inside the mask.
    """
    y = as_float64(reference, name="reference")
    x = as_float64(estimate, name="estimate", device=y.device)
    if x.shape != y.shape:
        raise ValueError(f"estimate has shape {tuple(x.shape)} but reference has shape {tuple(y.shape)}")
    if require_3d and y.ndim != 3:
        raise ValueError(f"expected 3-D volumes shaped (X, Y, Z), got shape {tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError("the images are empty")
    m = as_mask(mask, shape=tuple(y.shape), device=y.device)
    for name, tensor in (("estimate", x), ("reference", y)):
        # Check the whole volume first (cheap); NaN outside the mask is allowed.
        finite = torch.isfinite(tensor)
        if not bool(finite.all()) and not bool(finite[m].all()):
            raise ValueError(f"{name} contains NaN or infinite values inside the mask")
    return x, y, m


def relative_error_percent(difference: torch.Tensor, reference: torch.Tensor, *, what: str) -> float:
    r"""``100 · ‖difference‖₂ / ‖reference‖₂``; ValueError when ``reference`` is all zero.

    ``what`` names the reference in the error message.
    """
    denominator = torch.linalg.vector_norm(reference)
    if float(denominator) == 0.0:
        raise ValueError(f"{what} is zero everywhere in the mask: the normalized error is undefined")
    return float(100.0 * torch.linalg.vector_norm(difference) / denominator)
