"""Masks from magnitude and quality: recovery of a noisy head phantom, each cleaning step, erosion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.preprocess.masking import erode_mask, magnitude_mask, quality_mask
from torchqsm.simulate import ellipsoid, sphere

SHAPE = (48, 48, 48)
HOLE = (24, 20, 24)  # centre of a signal void inside the head
SPECK = (4, 4, 4)  # centre of a bright island outside the head


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def head():
    """Magnitude of an ellipsoidal head with a signal void and a separate bright island, Rician noise σ=8."""
    torch_rng = torch.Generator().manual_seed(1234)
    fraction = ellipsoid(SHAPE, radii=(18, 15, 13))
    signal = 100 * fraction * (1 - sphere(SHAPE, radius=4, center=HOLE)) + 100 * sphere(SHAPE, radius=3, center=SPECK)
    noise = torch.complex(torch.randn(SHAPE, generator=torch_rng), torch.randn(SHAPE, generator=torch_rng))
    return (signal + 8 * noise).abs(), fraction > 0.5


def test_otsu_recovers_head(head):
    magnitude, truth = head
    mask = magnitude_mask(magnitude)
    assert mask.dtype == torch.bool and mask.shape == SHAPE
    assert _dice(mask, truth) > 0.99  # measured 0.996
    assert mask[HOLE] and not mask[SPECK]


def test_each_cleaning_step(head):
    magnitude, truth = head
    assert not magnitude_mask(magnitude, fill_holes=False)[HOLE]
    assert magnitude_mask(magnitude, largest_component=False)[SPECK]
    eroded = magnitude_mask(magnitude, erode_voxels=2)
    assert eroded.sum() < magnitude_mask(magnitude).sum() and not eroded[24, 24, 36]  # within 2 of the z edge
    closed = magnitude_mask(magnitude, close_voxels=2)
    assert _dice(closed, truth) > 0.99


def test_threshold_method_and_echoes(head):
    magnitude, truth = head
    mask = magnitude_mask(magnitude, method="threshold", threshold=0.3)
    assert _dice(mask, truth) > 0.975  # measured 0.981
    # T2* decay: the second echo is weaker but rss and first-echo masks both find the head
    echoes = torch.stack([magnitude, 0.5 * magnitude])
    assert _dice(magnitude_mask(echoes), truth) > 0.99
    assert torch.equal(magnitude_mask(echoes, echoes="first"), magnitude_mask(magnitude))


def test_quality_mask(head, torch_rng):
    _, truth = head
    quality = torch.where(truth, 0.6 + 0.4 * torch.rand(SHAPE, generator=torch_rng),
                          0.15 * torch.rand(SHAPE, generator=torch_rng))  # ROMEO noise: < 0.13 in 99 %
    quality[SPECK] = 0.95  # a single lucky noise voxel
    quality[HOLE] = 0.1  # one poor voxel inside
    mask = quality_mask(quality)
    assert torch.equal(mask, truth)
    assert int(quality_mask(quality, erode_voxels=1).sum()) < int(truth.sum())
    with pytest.raises(InputError, match=r"quality must lie in \[0, 1\]"):
        quality_mask(quality * 2)
    with pytest.raises(ParameterError, match="threshold"):
        quality_mask(quality, threshold=1.5)


def _digital_ball(n: int, radius: float, spacing=(1.0, 1.0, 1.0)) -> torch.Tensor:
    i, j, k = np.ogrid[:n, :n, :n]
    c = n // 2
    return torch.from_numpy(((i - c) * spacing[0]) ** 2 + ((j - c) * spacing[1]) ** 2
                            + ((k - c) * spacing[2]) ** 2 <= radius**2)


@pytest.mark.parametrize("voxels", [1, 3, 5])
def test_erosion_depth(voxels):
    # eroding a ball of radius 12 by a ball of radius r leaves the ball of radius 12 - r
    # (up to discretization: between the digital balls of radius 12 - r and 12 - r + 0.5)
    eroded = erode_mask(_digital_ball(40, 12), voxels=voxels)
    assert not (_digital_ball(40, 12 - voxels) & ~eroded).any()
    assert not (eroded & ~_digital_ball(40, 12 - voxels + 0.5)).any()


def test_erosion_in_mm_on_anisotropic_grid():
    spacing = (1.0, 1.0, 2.0)
    mask = _digital_ball(40, 16, spacing)  # a 16 mm ball: 16 voxels across x, y; 8 along z
    eroded = erode_mask(mask, radius_mm=4, voxel_size_mm=spacing)
    for axis, shrink in enumerate((4, 4, 2)):
        before, after = torch.nonzero(mask)[:, axis], torch.nonzero(eroded)[:, axis]
        assert int(after.min()) - int(before.min()) == shrink
        assert int(before.max()) - int(after.max()) == shrink
    assert torch.equal(erode_mask(mask, radius_mm=0.5, voxel_size_mm=spacing), mask)
    assert torch.equal(erode_mask(mask), erode_mask(mask, voxels=1))


def test_empty_results_name_the_step(head):
    magnitude, _ = head
    with pytest.raises(InputError, match="mask is empty after erosion by 30 voxels"):
        magnitude_mask(magnitude, erode_voxels=30)
    with pytest.raises(InputError, match="mask is empty after thresholding the quality at 0.5"):
        quality_mask(torch.full(SHAPE, 0.2), threshold=0.5)
    with pytest.raises(InputError, match="mask is empty after erosion by 3 mm"):
        erode_mask(_digital_ball(16, 2), radius_mm=3)
    with pytest.raises(InputError, match=r"mask is empty \(no non-zero voxel\)"):
        erode_mask(torch.zeros(8, 8, 8, dtype=torch.bool))


def test_bad_inputs(head):
    magnitude, _ = head
    with pytest.raises(ParameterError, match="threshold is required"):
        magnitude_mask(magnitude, method="threshold")
    with pytest.raises(ParameterError, match="only used with method='threshold'"):
        magnitude_mask(magnitude, threshold=0.2)
    with pytest.raises(ParameterError, match="method must be"):
        magnitude_mask(magnitude, method="kmeans")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="erode_voxels must be a non-negative integer"):
        magnitude_mask(magnitude, erode_voxels=-1)
    with pytest.raises(InputError, match="negative values"):
        magnitude_mask(magnitude - 50)
    with pytest.raises(InputError, match=r"magnitude must be \(X, Y, Z\) or \(E, X, Y, Z\)"):
        magnitude_mask(magnitude[0])
    with pytest.raises(InputError, match="constant"):
        magnitude_mask(torch.ones(SHAPE))
    bad = magnitude.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="1 NaN or infinite voxels"):
        magnitude_mask(bad)
    with pytest.raises(ParameterError, match="either voxels or radius_mm"):
        erode_mask(magnitude > 50, voxels=1, radius_mm=1.0)
    with pytest.raises(InputError, match="mask must be boolean or hold only 0 and 1"):
        erode_mask(magnitude)


def test_closing_bridges_a_thin_gap(head):
    magnitude, truth = head
    cut = magnitude.clone()
    cut[24] = 0.0  # a one-voxel dark slab splits the head in two halves
    split = magnitude_mask(cut)
    assert split.sum() < 0.6 * truth.sum()  # only the larger half is kept
    closed = magnitude_mask(cut, close_voxels=2)
    assert closed[24, 24, 24] and _dice(closed, truth) > 0.99  # measured 0.994 (split: 0.47 of the head)


def test_extract_brain_cuts_scalp_and_neck_bridge_on_anisotropic_voxels():
    from torchqsm.preprocess.brain import extract_brain

    voxel = (1.0, 1.0, 2.0)
    g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in (64, 64, 40)], indexing="ij"))
    mm = (g - torch.tensor([31.5, 31.5, 19.5], dtype=torch.float64).view(3, 1, 1, 1)) * torch.tensor(voxel).view(3, 1, 1, 1)
    r = mm.norm(dim=0)
    brain = r < 20
    scalp = (r > 25) & (r < 29)  # 4 mm scalp beyond a 5 mm dark skull
    neck = (mm[0].abs() < 3) & (mm[1].abs() < 3) & (mm[2] < 0)  # a 6 mm bridge down to the grid edge
    found = extract_brain(brain | scalp | neck, voxel_size_mm=voxel, radius_mm=5.0)
    dice = 2 * float((found & brain).sum()) / float(found.sum() + brain.sum())
    assert dice > 0.99  # measured 0.9989: a stub of the bridge stays within the ball's reach
    assert not bool((found & scalp).any())
    with pytest.raises(InputError, match="nothing is thicker"):
        extract_brain(scalp, voxel_size_mm=voxel, radius_mm=5.0)
