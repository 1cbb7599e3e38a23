"""Validation and edge helpers shared by the unwrapping methods.

An *edge array* has shape ``(3, X, Y, Z)``: entry ``[a, i, j, k]`` belongs to
the edge from voxel ``(i, j, k)`` to its next neighbour along axis ``a``. The
last slice along axis ``a`` has no such neighbour and is always zero/False.
"""

from __future__ import annotations

import math

import torch

from ...errors import InputError

__all__ = ["wrap", "as_phase", "as_mask", "as_magnitude", "forward_differences", "edge_mask"]

TWO_PI = 2.0 * math.pi


def wrap(angle: torch.Tensor) -> torch.Tensor:
    """Angle (rad) wrapped into [-π, π)."""
    return torch.remainder(angle + math.pi, TWO_PI) - math.pi


def _tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{name} is not an array: {error}") from None


def as_phase(phase_rad, *, name: str = "phase_rad", min_ndim: int = 3, max_ndim: int | None = None) -> torch.Tensor:
    """A finite real floating tensor with ``min_ndim``…``max_ndim`` axes (integers become float32)."""
    phase = _tensor(phase_rad, name)
    if phase.is_complex():
        raise InputError(f"{name} must be real (radians), got a complex array")
    if not phase.is_floating_point():
        phase = phase.to(torch.float32)
    if phase.ndim < min_ndim or (max_ndim is not None and phase.ndim > max_ndim):
        want = f"{min_ndim}-D" if max_ndim == min_ndim else f"at least {min_ndim}-D"
        raise InputError(f"{name} is {phase.ndim}-D {tuple(phase.shape)}; a {want} array is needed")
    if min(phase.shape[-3:]) < 1:
        raise InputError(f"{name} has an empty axis: {tuple(phase.shape)}")
    if not bool(torch.isfinite(phase).all()):
        raise InputError(f"{name} has {int((~torch.isfinite(phase)).sum())} NaN or infinite voxels")
    return phase


def as_mask(mask, like: torch.Tensor) -> torch.Tensor:
    """Boolean mask on ``like``'s grid (all True if None); empty masks are refused."""
    if mask is None:
        return torch.ones(like.shape[-3:], dtype=torch.bool, device=like.device)
    mask_t = _tensor(mask, "mask")
    if tuple(mask_t.shape) != tuple(like.shape[-3:]):
        raise InputError(f"mask shape {tuple(mask_t.shape)} does not match the phase grid {tuple(like.shape[-3:])}")
    if mask_t.is_floating_point() and not bool(torch.isfinite(mask_t).all()):
        raise InputError("mask has NaN or infinite voxels")
    mask_b = (mask_t != 0).to(like.device)
    if not bool(mask_b.any()):
        raise InputError("mask is empty (no non-zero voxel)")
    return mask_b


def as_magnitude(magnitude, like: torch.Tensor, *, name: str = "magnitude") -> torch.Tensor:
    """Finite non-negative magnitude with ``like``'s shape, dtype and device."""
    mag = _tensor(magnitude, name)
    if tuple(mag.shape) != tuple(like.shape):
        raise InputError(f"{name} shape {tuple(mag.shape)} does not match the phase shape {tuple(like.shape)}")
    if mag.is_complex():
        raise InputError(f"{name} must be real, got a complex array")
    mag = mag.to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(mag).all()) or bool((mag < 0).any()):
        raise InputError(f"{name} must be finite and non-negative")
    return mag


def forward_differences(volume: torch.Tensor) -> torch.Tensor:
    """``volume[i + e_a] - volume[i]`` as an edge array ``(..., 3, X, Y, Z)`` (zero on the last slices)."""
    out = volume.new_zeros(volume.shape[:-3] + (3,) + volume.shape[-3:])
    out[..., 0, :-1, :, :] = volume[..., 1:, :, :] - volume[..., :-1, :, :]
    out[..., 1, :, :-1, :] = volume[..., :, 1:, :] - volume[..., :, :-1, :]
    out[..., 2, :, :, :-1] = volume[..., :, :, 1:] - volume[..., :, :, :-1]
    return out


def edge_mask(mask: torch.Tensor) -> torch.Tensor:
    """Edges ``(3, X, Y, Z)`` whose two voxels both lie in the boolean ``mask``."""
    out = torch.zeros((3,) + tuple(mask.shape), dtype=torch.bool, device=mask.device)
    out[0, :-1] = mask[:-1] & mask[1:]
    out[1, :, :-1] = mask[:, :-1] & mask[:, 1:]
    out[2, :, :, :-1] = mask[:, :, :-1] & mask[:, :, 1:]
    return out
