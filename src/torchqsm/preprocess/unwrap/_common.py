"""Input and edge helpers shared by the unwrapping methods.

An *edge array* has shape ``(3, X, Y, Z)``: entry ``[a, i, j, k]`` belongs to
the edge from voxel ``(i, j, k)`` to its next neighbour along axis ``a``. The
last slice along axis ``a`` has no such neighbour and is always zero/False.
"""

from __future__ import annotations

import math

import torch

from ...validation import array_and_mask, check_magnitude

__all__ = ["wrap", "phase_and_mask", "as_magnitude", "forward_differences", "edge_mask"]

TWO_PI = 2.0 * math.pi


def wrap(angle: torch.Tensor) -> torch.Tensor:
    """Angle (rad) wrapped into [-π, π)."""
    return torch.remainder(angle + math.pi, TWO_PI) - math.pi


def phase_and_mask(phase_rad, mask=None, *, name: str = "phase_rad",
                   leading: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A wrapped phase (rad) and its boolean mask (all True if None), by :mod:`torchqsm.validation`.

    ``leading`` axes before the grid (None: any number). NaN inside the mask is an error; outside
    it the phase is set to zero and the log says so.
    """
    return array_and_mask(phase_rad, mask, name=name, unit="radians", leading=leading)


def as_magnitude(magnitude, like: torch.Tensor, mask: torch.Tensor, *, name: str = "magnitude") -> torch.Tensor:
    """Magnitude with ``like``'s shape, dtype and device: finite and non-negative in ``mask``, zero elsewhere."""
    return check_magnitude(magnitude, tuple(like.shape), mask, name=name, dtype=like.dtype, device=like.device)


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
