"""χ scaling and rotations: linearity, rot90 equivalence, round trips, the DF-QSM field identity."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.errors import ParameterError
from torchqsm.simulate import ellipsoid, forward_field
from torchqsm.simulate.augment import (
    random_rotation,
    random_scale,
    rotate_volume,
    rotation_matrix,
    scale_susceptibility,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_scale_is_linear_and_checked():
    chi = torch.randn(4, 5, 6, generator=gen())
    assert torch.equal(scale_susceptibility(chi, factor=3.0), chi * 3.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ParameterError):
            scale_susceptibility(chi, factor=bad)


def test_random_scale_range_seeds_and_errors():
    chi = torch.ones(3, 3, 3)
    factors = [float(random_scale(chi, generator=gen(s))[0, 0, 0]) for s in range(50)]
    assert all(0.5 <= f <= 2.0 for f in factors)
    assert min(factors) < 0.7 and max(factors) > 1.4          # log-uniform over the whole range
    assert factors[0] == float(random_scale(chi, generator=gen(0))[0, 0, 0])
    assert len(set(factors)) == 50
    for bad in ((2.0, 1.0), (0.0, 1.0), (-1.0, 2.0), (1.0,)):
        with pytest.raises(ParameterError):
            random_scale(chi, generator=gen(), range=bad)
    with pytest.raises(ParameterError):
        random_scale(chi, generator=None)


def test_random_rotation_is_proper_and_bounded():
    for seed in range(30):
        r = random_rotation(gen(seed), max_angle_deg=45.0, dtype=torch.float64)
        assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
        assert abs(float(torch.linalg.det(r)) - 1.0) < 1e-12
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(r)) - 1) / 2))))
        assert angle <= 45.0 + 1e-9
    assert torch.equal(random_rotation(gen(3)), random_rotation(gen(3)))
    assert not torch.equal(random_rotation(gen(3)), random_rotation(gen(4)))
    assert torch.allclose(random_rotation(gen(1), max_angle_deg=0.0), torch.eye(3))
    for bad in (-1.0, 181.0, float("nan")):
        with pytest.raises(ParameterError):
            random_rotation(gen(), max_angle_deg=bad)


@pytest.mark.parametrize("axis, dims, shape", [((0, 0, 1), (0, 1), (10, 10, 7)),
                                               ((1, 0, 0), (1, 2), (5, 9, 9)),
                                               ((0, 1, 0), (2, 0), (8, 6, 8))])
def test_quarter_turn_equals_rot90(axis, dims, shape):
    # A random (asymmetric) volume on a non-cubic grid: any (X, Y, Z) vs grid_sample (D, H, W)
    # axis mix-up or sign error changes the result.
    volume = torch.rand(shape, generator=gen())
    r = rotation_matrix(axis, 90.0)
    expected = torch.rot90(volume, 1, dims)
    assert torch.equal(rotate_volume(volume, r, order="nearest"), expected)
    assert torch.allclose(rotate_volume(volume, r, order="linear"), expected, atol=1e-5)
    labels = (volume * 5).long()
    out = rotate_volume(labels, r, order="nearest")
    assert out.dtype == torch.int64 and torch.equal(out, torch.rot90(labels, 1, dims))


def test_rotation_round_trip_of_a_smooth_volume():
    n = 48
    x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    r2 = x[:, None, None] ** 2 / 1.0 + x[None, :, None] ** 2 / 1.5 + x[None, None, :] ** 2 / 0.7
    # An anisotropic Gaussian off the rotation centre: smooth, and changed by any rotation.
    volume = torch.exp(-((x[:, None, None] - 4) ** 2 + x[None, :, None] ** 2 / 2.5) / (2 * 5.0**2)
                       - x[None, None, :] ** 2 / (2 * 7.0**2))
    r = rotation_matrix((1.0, 2.0, -0.5), 35.0, dtype=torch.float64)
    once = rotate_volume(volume, r)
    assert float((once - volume).abs().max()) > 0.2          # measured 0.27: the rotation acts
    back = rotate_volume(once, r.T)
    inside = r2 < 15.0**2                       # away from the corners that leave the grid
    error = float((back - volume)[inside].abs().max() / volume.abs().max())
    assert error < 0.025                         # measured 0.0161 (two trilinear passes)


def test_rotation_respects_anisotropic_voxels():
    # A physical sphere on a (1, 1, 2) mm grid is invariant under any rotation in mm space.
    sphere = ellipsoid((40, 40, 20), radii=(10, 10, 5), center=(19.5, 19.5, 9.5), supersample=1) > 0.5
    turned = rotate_volume(sphere, rotation_matrix((1, 0, 0), 90.0), order="nearest",
                           voxel_size_mm=(1.0, 1.0, 2.0))
    assert turned.dtype == torch.bool
    mismatch = float((turned ^ sphere).sum()) / float(sphere.sum())
    assert mismatch < 0.15                       # measured 0.109 (staircase of 2 mm slices)
    isotropic = rotate_volume(sphere, rotation_matrix((1, 0, 0), 90.0), order="nearest")
    assert float((isotropic ^ sphere).sum()) / float(sphere.sum()) > 0.5   # measured 0.79


def test_leading_dimensions_share_the_rotation():
    volume = torch.rand(2, 12, 10, 8, generator=gen())
    r = random_rotation(gen(5))
    both = rotate_volume(volume, r)
    assert torch.allclose(both[1], rotate_volume(volume[1], r))


def test_field_of_rotated_chi_is_rotated_field():
    # DF-QSM augmentation: rotating χ and recomputing the field with B0 turned alike gives the
    # rotated field; a quarter turn maps the grid onto itself, so the identity is exact.
    chi = 0.1 * ellipsoid((24, 24, 24), radii=(6, 3, 4), center=(10, 13, 12), dtype=torch.float64)
    r = rotation_matrix((1, 0, 0), 90.0, dtype=torch.float64)
    b0 = torch.tensor([0.3, 0.2, 0.933], dtype=torch.float64)
    b0 = b0 / b0.norm()
    field = forward_field(chi, b0_dir=tuple(b0.tolist()))
    rotated = forward_field(rotate_volume(chi, r, order="nearest"), b0_dir=tuple((r @ b0).tolist()))
    assert torch.allclose(rotated, rotate_volume(field, r, order="nearest"), atol=1e-12)


def test_bad_rotation_arguments():
    volume = torch.zeros(4, 4, 4)
    with pytest.raises(ParameterError):
        rotate_volume(volume, torch.eye(3) * 2)
    with pytest.raises(ParameterError):
        rotate_volume(volume, torch.eye(2))
    with pytest.raises(ParameterError):
        rotate_volume(volume, torch.eye(3), order="cubic")
    with pytest.raises(ParameterError):
        rotate_volume(volume, torch.eye(3), voxel_size_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ParameterError):
        rotation_matrix((0, 0, 0), 10.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    # Same CPU generator, data on CUDA: every simulation step gives the CPU result.
    from torchqsm.simulate.background import external_sources, shim_field
    from torchqsm.simulate.hybrid import hybrid_chi, random_deformation
    from torchqsm.simulate.lesions import add_lesions, add_veins
    from torchqsm.simulate.shapes import random_shapes

    labels = (ellipsoid((32, 32, 32), radii=(12, 13, 11), supersample=1) > 0.5).long()
    labels[10:16, 12:20, 14:18] = 2
    mask = labels > 0
    cuda = torch.device("cuda")
    results = []
    for device in ("cpu", cuda):
        lab, m = labels.to(device), mask.to(device)
        warped = random_deformation(lab, generator=gen(1))
        chi = hybrid_chi(warped, chi_ranges_ppm={1: (-0.05, 0.05), 2: (0.1, 0.2)}, generator=gen(2))
        chi = chi + random_shapes((32, 32, 32), generator=gen(3), count=5, mask=m)
        chi, lesions = add_lesions(chi, m, kind="haemorrhage", count=2, generator=gen(4))
        chi = add_veins(chi, m, count=3, generator=gen(5))
        chi = rotate_volume(chi, random_rotation(gen(6)))
        outside = external_sources((32, 32, 32), m, generator=gen(7), count=10)
        results.append([warped, chi, lesions, outside, shim_field((32, 32, 32), generator=gen(8), device=device)])
    for a, b in zip(*results):
        assert b.device.type == "cuda"
        assert torch.allclose(a.double(), b.cpu().double(), atol=1e-5)
