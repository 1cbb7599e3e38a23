"""Random B0 directions (uniform on the sphere and on caps) and affines that carry them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchqsm.errors import ParameterError
from torchqsm.physics import b0_dir_from_affine, tilt_b0_dir, voxel_size_from_affine
from torchqsm.simulate.orientation import affine_for_b0_dir, b0_tilt_deg, random_b0_dir

DRAWS = 4000


def _draws(max_tilt_deg, seed=0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return np.array([random_b0_dir(generator=g, max_tilt_deg=max_tilt_deg) for _ in range(DRAWS)])


def test_unit_length_and_reproducible():
    a, b = _draws(None, seed=3), _draws(None, seed=3)
    assert np.array_equal(a, b)
    assert np.abs(np.linalg.norm(a, axis=1) - 1.0).max() < 1e-12
    assert not np.array_equal(a, _draws(None, seed=4))


def test_uniform_on_the_sphere():
    """Every component has mean 0 and second moment 1/3; the octants are equally filled."""
    b = _draws(None)
    # Standard error of a mean over 4000 draws: 0.58/63 = 0.009 (components), 0.3/63 = 0.005 (squares).
    assert np.abs(b.mean(axis=0)).max() < 0.04
    assert np.abs((b**2).mean(axis=0) - 1 / 3).max() < 0.02
    octants = np.unique((b > 0) @ np.array([1, 2, 4]), return_counts=True)[1]
    assert len(octants) == 8 and octants.min() > 0.8 * DRAWS / 8


@pytest.mark.parametrize("max_tilt", [15.0, 45.0, 90.0])
def test_uniform_on_a_cap(max_tilt):
    """Tilts stay within the cap; cos(tilt) is uniform on [cos max, 1] (Kolmogorov-Smirnov distance)."""
    b = _draws(max_tilt)
    tilt = np.degrees(np.arccos(np.clip(b[:, 2], -1, 1)))
    assert tilt.max() <= max_tilt + 1e-9
    low = math.cos(math.radians(max_tilt))
    values = np.sort((b[:, 2] - low) / (1 - low))
    ks = np.abs(values - (np.arange(1, DRAWS + 1) / DRAWS)).max()
    assert ks < 1.63 / math.sqrt(DRAWS)  # the 1 % critical value
    azimuth = np.arctan2(b[:, 1], b[:, 0])
    assert np.abs(np.histogram(azimuth, bins=8)[0] / (DRAWS / 8) - 1).max() < 0.2


def test_zero_tilt_is_z():
    assert random_b0_dir(generator=torch.Generator().manual_seed(0), max_tilt_deg=0.0) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("bad", [-1.0, 181.0, float("nan")])
def test_bad_tilt(bad):
    with pytest.raises(ParameterError, match="max_tilt_deg"):
        random_b0_dir(generator=torch.Generator(), max_tilt_deg=bad)


@pytest.mark.parametrize("b0_dir", [(0.0, 0.0, 1.0), (0.0, 0.0, -1.0), tilt_b0_dir(15.0), tilt_b0_dir(90.0, about=1),
                                    (0.3, -0.5, 0.81), (-1.0, 0.0, 0.0)])
def test_affine_carries_the_b0_direction(b0_dir):
    voxel = (1.0, 1.0, 2.0)
    affine = affine_for_b0_dir(b0_dir, voxel_size_mm=voxel, shape=(10, 12, 14))
    expected = np.asarray(b0_dir) / np.linalg.norm(b0_dir)
    assert np.abs(np.asarray(b0_dir_from_affine(affine)) - expected).max() < 1e-6
    assert np.allclose(voxel_size_from_affine(affine), voxel, atol=1e-12)
    rotation = affine[:3, :3] / np.asarray(voxel)
    assert np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-12) and np.linalg.det(rotation) > 0
    # The grid's centre sits at the world origin.
    assert np.allclose(affine @ np.array([4.5, 5.5, 6.5, 1.0]), [0, 0, 0, 1], atol=1e-9)


def test_tilt_angle():
    assert b0_tilt_deg(tilt_b0_dir(60.0)) == pytest.approx(60.0, abs=1e-9)
    with pytest.raises(ParameterError):
        b0_tilt_deg((0.0, 0.0, 0.0))
    with pytest.raises(ParameterError, match="voxel_size_mm"):
        affine_for_b0_dir((0, 0, 1), voxel_size_mm=(1.0, -1.0, 1.0))
