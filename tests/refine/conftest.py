"""Fixtures of the refinement tests: a noisy phantom and a network-like initial estimate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torchqsm.simulate import forward_field, shapes_phantom


def blur(volume: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """A 3×3×3 box blur applied ``passes`` times (a network-like loss of detail)."""
    out = volume[None, None]
    for _ in range(passes):
        out = F.avg_pool3d(out, 3, stride=1, padding=1, count_include_pad=False)
    return out[0, 0]


@pytest.fixture
def phantom():
    """(true χ ppm, local field ppm with 0.5 % noise, mask, χ0 = 0.6 × blurred χ) at 32³, float64."""
    generator = torch.Generator().manual_seed(7)
    chi, mask = shapes_phantom((32, 32, 32), dtype=torch.float64)
    field = forward_field(chi, pad=16)
    field = (field + 0.005 * field.abs().max() * torch.randn(field.shape, generator=generator, dtype=torch.float64))
    field = field * mask
    chi0 = 0.6 * blur(chi) * mask
    return chi, field, mask, chi0
