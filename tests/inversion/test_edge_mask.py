"""MEDI's edge mask: the requested fraction of gradient components, placed at the magnitude's edges."""

from __future__ import annotations

import pytest
import torch

from torchqsm.errors import ParameterError
from torchqsm.inversion import edge_mask
from torchqsm.simulate import sphere


def test_edge_fraction_is_respected_on_random_magnitude():
    magnitude = torch.rand(30, 30, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = torch.ones_like(magnitude)
    for fraction in (0.05, 0.1, 0.3):
        edges = 1.0 - edge_mask(magnitude, mask, voxel_size_mm=(1, 1, 1), edge_fraction=fraction)
        assert edges.shape == (3, 30, 30, 30)
        assert float(edges.mean()) == pytest.approx(fraction, abs=1e-3)


def test_edges_sit_on_the_magnitude_boundary():
    # A bright sphere in a dark, uniform mask: the only gradients are on its surface.
    magnitude = 0.2 + 0.8 * (sphere((32, 32, 32), radius=8, dtype=torch.float64) > 0.5).double()
    mask = torch.ones_like(magnitude)
    edges = (1.0 - edge_mask(magnitude, mask, voxel_size_mm=(1, 1, 1), edge_fraction=0.05)).amax(dim=0)
    surface = (magnitude != torch.roll(magnitude, -1, 0)) | (magnitude != torch.roll(magnitude, -1, 1)) | (
        magnitude != torch.roll(magnitude, -1, 2))
    assert bool(edges.any())
    assert bool(torch.all(surface[edges > 0]))  # every edge voxel is on the surface


def test_edge_fraction_out_of_range():
    with pytest.raises(ParameterError, match="edge_fraction"):
        edge_mask(torch.ones(4, 4, 4), torch.ones(4, 4, 4), voxel_size_mm=(1, 1, 1), edge_fraction=1.0)
