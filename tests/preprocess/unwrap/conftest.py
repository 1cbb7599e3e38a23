"""Synthetic wrapped phases for the unwrapping tests: an ellipsoidal head, smooth phases, noise."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from torchqsm.preprocess.unwrap._common import edge_mask, forward_differences


def grid(n: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel coordinates centred on the volume, each (n, n, n)."""
    c = torch.arange(n, dtype=dtype) - n / 2 + 0.5
    return torch.meshgrid(c, c, c, indexing="ij")


def gaussian(coords, center, sigma):
    x, y, z = coords
    return torch.exp(-((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2) / (2 * sigma**2))


def max_step(phase: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Largest |difference| (rad) between neighbours inside the mask."""
    return forward_differences(phase).abs()[edge_mask(mask)].max()


def voxel_max_step(phase: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per voxel, the largest |difference| (rad) to a neighbour inside the mask."""
    step = forward_differences(phase).abs() * edge_mask(mask)
    out = step.max(dim=0).values
    out[1:] = torch.maximum(out[1:], step[0, :-1])
    out[:, 1:] = torch.maximum(out[:, 1:], step[1, :, :-1])
    out[:, :, 1:] = torch.maximum(out[:, :, 1:], step[2, :, :, :-1])
    return out


def wrap_to_pi(phase: torch.Tensor) -> torch.Tensor:
    return torch.angle(torch.exp(1j * phase))


def exact_fraction(unwrapped, wrapped, true_phase, mask) -> tuple[torch.Tensor, float]:
    """Voxels whose 2π multiple is the one nearest the truth, up to one global multiple.

    Returns the boolean map of exact voxels (inside ``mask``) and their fraction of the mask.
    """
    found = torch.round((unwrapped.double() - wrapped.double()) / (2 * math.pi))
    ideal = torch.round((true_phase.double() - wrapped.double()) / (2 * math.pi))
    difference = found - ideal
    common = torch.mode(difference[mask]).values
    exact = (difference == common) & mask
    return exact, float(exact.sum()) / float(mask.sum())


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The phantom and scoring helpers above (test modules cannot import conftest)."""
    return SimpleNamespace(grid=grid, gaussian=gaussian, max_step=max_step, voxel_max_step=voxel_max_step,
                           wrap_to_pi=wrap_to_pi, exact_fraction=exact_fraction)


@pytest.fixture(scope="module")
def head_phase():
    """64³ head (ellipsoid), phase spanning ±20π with steps below π, noise and three low-signal blobs.

    Complex noise σ = 0.2 (tissue magnitude 1, i.e. 0.2 rad phase noise); the
    blobs have magnitude 0.1, so their phase is essentially noise (SNR 0.5).
    """
    coords = grid(64)
    x, y, z = coords
    mask = (x / 28) ** 2 + (y / 24) ** 2 + (z / 26) ** 2 <= 1
    # A diagonal ramp (26.1 = the head's half extent along (1,1,1)), a saddle and two bumps.
    shape = ((x + y + z) / (math.sqrt(3) * 26.1) + 0.1 * ((x / 28) ** 2 - (y / 24) ** 2)
             - 0.12 * gaussian(coords, (8, -6, 4), 5) + 0.1 * gaussian(coords, (-10, 8, -6), 4))
    phase = 20 * math.pi * shape / shape[mask].abs().max()
    magnitude = torch.ones_like(phase)
    blobs = torch.zeros_like(mask)
    for center in ((5, 5, 5), (-12, -4, 8), (10, -10, -8)):
        blobs |= gaussian(coords, center, 1.0) > math.exp(-0.5 * 3.5**2)  # radius 3.5
    blobs &= mask
    magnitude[blobs] = 0.1
    generator = torch.Generator().manual_seed(0)
    noise = torch.complex(torch.randn(phase.shape, generator=generator, dtype=torch.float64),
                          torch.randn(phase.shape, generator=generator, dtype=torch.float64))
    signal = magnitude * torch.exp(1j * phase) + 0.2 * noise
    return {"phase": phase, "mask": mask, "blobs": blobs,
            "wrapped": torch.angle(signal).float(), "magnitude": signal.abs().float()}
