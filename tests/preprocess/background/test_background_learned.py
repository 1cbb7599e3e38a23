"""The learned background removal (``nextqsm``): the resampling around the network and the method."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.models import BackgroundUNet, UNet3d
from torchqsm.models.weights import example_card, save_weights
from torchqsm.preprocess.background import BACKGROUND_METHODS
from torchqsm.preprocess.background.learned import from_grid, to_grid
from torchqsm.simulate import sphere

SHAPE = (30, 28, 26)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """One torch thread for these small problems."""


def _linear(shape, spacing):
    axes = np.meshgrid(*[np.arange(n) * h for n, h in zip(shape, spacing)], indexing="ij")
    return 0.3 + 0.02 * axes[0] - 0.01 * axes[1] + 0.005 * axes[2]


def test_to_grid_keeps_a_linear_field_to_the_edge_of_the_mask() -> None:
    """The masked average keeps a linear field where a plain average would be pulled to zero at the edge."""
    mask = sphere(SHAPE, radius=11).numpy() > 0.5
    field = _linear(SHAPE, (1.0, 1.0, 1.0)) * mask
    coarse, coarse_mask = to_grid(field, mask, (1.0, 1.0, 1.0), (2.5, 2.5, 2.5))
    assert coarse.shape == (12, 11, 10) and 0.2 < coarse_mask.mean() < 0.32  # the ball holds 26 % of the grid
    # The coarse voxel j is centred at (j + 0.5) · 2.5 - 0.5 mm of the fine grid.
    expected = _linear(coarse.shape, (2.5, 2.5, 2.5)) + (0.02 - 0.01 + 0.005) * 0.75
    error = np.abs(coarse - expected)[coarse_mask]
    # At the curved edge the masked kernel's centre moves inward by about a voxel: 0.02 ppm/mm × 1 mm.
    assert error.max() < 0.03 and np.median(error) < 0.005
    plain = to_grid(field, np.ones(SHAPE, dtype=bool), (1.0, 1.0, 1.0), (2.5, 2.5, 2.5))[0]
    assert np.abs(plain - expected)[coarse_mask].max() > 0.1  # an unmasked average is pulled towards zero


def test_from_grid_brings_a_linear_field_back_exactly_inside() -> None:
    coarse_shape, ratio = (12, 11, 10), 2.5
    coarse = (_linear(coarse_shape, (ratio,) * 3)).astype(np.float32)
    coarse_mask = np.ones(coarse_shape, dtype=bool)
    fine = from_grid(coarse, coarse_mask, SHAPE, (1.0, 1.0, 1.0), (ratio,) * 3)
    # Fine voxel i sits at coarse index (i + 0.5) / 2.5 - 0.5: linear functions are sampled exactly inside.
    expected = _linear(SHAPE, (1.0, 1.0, 1.0)) - (0.02 - 0.01 + 0.005) * 0.75
    assert np.abs(fine - expected)[3:-3, 3:-3, 3:-3].max() < 1e-5


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    net = BackgroundUNet(base_channels=2, depth=2).eval()
    card = example_card("bg-tiny", architecture="background-unet", base_channels=2, depth=2)
    card["voxel_size_mm"] = [2.5, 2.5, 2.5]
    card["normalization"] = {"input_scale_ppm": 0.01, "output_scale_ppm": 0.01}
    return save_weights(net, card, tmp_path_factory.mktemp("bg"), "bg-tiny")


def test_the_method_is_linear_and_ignores_a_constant(weights: Path) -> None:
    mask = sphere(SHAPE, radius=11) > 0.5
    generator = torch.Generator().manual_seed(2)
    total = torch.from_numpy(_linear(SHAPE, (1.0, 1.0, 1.0))).float() + 0.05 * torch.randn(SHAPE, generator=generator)
    method = BACKGROUND_METHODS["nextqsm"]
    result = method(total, mask, voxel_size_mm=(1.0, 1.0, 1.0), weights=str(weights))
    assert result.local_field_ppm.dtype == torch.float32 and torch.equal(result.mask, mask)
    local = result.local_field_ppm
    assert float(local[~mask].abs().max()) == 0.0 and float(local.abs().max()) > 0
    shifted = method(total + 2.0, mask, voxel_size_mm=(1.0, 1.0, 1.0), weights=str(weights)).local_field_ppm
    assert float((shifted - local).abs().max()) < 1e-4
    scaled = method(4.0 * total, mask, voxel_size_mm=(1.0, 1.0, 1.0), weights=str(weights)).local_field_ppm
    assert float((scaled - 4.0 * local).abs().max()) < 1e-4 * float(scaled.abs().max())


def test_the_method_refuses_other_networks_and_too_small_masks(weights: Path, tmp_path: Path) -> None:
    other = save_weights(UNet3d(base_channels=2, depth=2).eval(), example_card("u", base_channels=2, depth=2),
                         tmp_path, "u")
    mask = sphere(SHAPE, radius=11) > 0.5
    total = torch.ones(SHAPE)
    with pytest.raises(ParameterError, match="not a background network"):
        BACKGROUND_METHODS["nextqsm"](total, mask, weights=str(other))
    tiny = torch.zeros(SHAPE, dtype=torch.bool)
    tiny[5, 5, 5] = True
    with pytest.raises(InputError, match="no voxel at the background network"):
        BACKGROUND_METHODS["nextqsm"](total, tiny, weights=str(weights))
