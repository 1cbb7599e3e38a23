"""Hybrid brains: label-preserving random deformations and Gaussian-mixture χ with texture."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.simulate import ellipsoid
from torchqsm.simulate.augment import _smooth_noise
from torchqsm.simulate.hybrid import hybrid_chi, random_deformation

RANGES = {1: (-0.05, 0.0), 2: (0.0, 0.1), 3: (0.1, 0.3), 4: (-0.2, -0.1)}


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    """48³ nested ellipsoids and a box: labels 0..4 of 86543, 19952, 3580, 229 and 288 voxels."""
    n = 48
    lab = torch.zeros(n, n, n, dtype=torch.int64)
    lab[ellipsoid((n, n, n), radii=(18, 20, 16), supersample=1) > 0.5] = 1
    lab[ellipsoid((n, n, n), radii=(10, 12, 8), supersample=1) > 0.5] = 2
    lab[ellipsoid((n, n, n), radii=(4, 5, 3), center=(30, 24, 24), supersample=1) > 0.5] = 3
    lab[14:20, 20:26, 22:30] = 4
    return lab


def test_zero_magnitude_is_identity(labels):
    out = random_deformation(labels, generator=gen(), max_rotation_deg=0.0, max_scale=0.0,
                             elastic_magnitude_mm=0.0)
    assert torch.equal(out, labels)


def test_deformation_keeps_labels_and_roughly_volumes(labels):
    volumes = torch.bincount(labels.view(-1), minlength=5)
    worst = torch.zeros(5, dtype=torch.float64)
    for seed in range(6):
        out = random_deformation(labels, generator=gen(seed))
        assert out.dtype == labels.dtype and out.shape == labels.shape
        assert out.unique().tolist() == [0, 1, 2, 3, 4]
        assert float((out != labels).float().mean()) > 0.03          # it does deform (measured 0.11)
        change = (torch.bincount(out.view(-1), minlength=5) - volumes).abs() / volumes
        worst = torch.maximum(worst, change.double())
    # Measured over 20 seeds: 0.33, 0.39 (labels 1, 2: ±10 % per axis gives up to 1.1³ = +33 %),
    # 0.63, 0.51 for the two ~250-voxel labels.
    assert float(worst[1:3].max()) < 0.5
    assert float(worst[3:].max()) < 0.8


def test_elastic_part_alone(labels):
    volumes = torch.bincount(labels.view(-1), minlength=5)
    out = random_deformation(labels, generator=gen(1), max_rotation_deg=0.0, max_scale=0.0)
    change = (torch.bincount(out.view(-1), minlength=5) - volumes).abs() / volumes
    assert float(change[1:3].max()) < 0.4        # measured ≤ 0.25 over 10 seeds (3 mm on a 15 mm scale)
    assert not torch.equal(out, labels)


def test_deformation_seeds_and_dtypes(labels):
    a = random_deformation(labels, generator=gen(7))
    assert torch.equal(a, random_deformation(labels, generator=gen(7)))
    assert not torch.equal(a, random_deformation(labels, generator=gen(8)))
    small = random_deformation(labels.to(torch.uint8), generator=gen(7))
    assert small.dtype == torch.uint8 and torch.equal(small.long(), a)
    aniso = random_deformation(labels, generator=gen(7), voxel_size_mm=(1.0, 1.0, 2.0))
    assert aniso.unique().tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("kwargs", [dict(max_scale=1.0), dict(max_scale=-0.1), dict(max_rotation_deg=-1.0),
                                    dict(elastic_magnitude_mm=-1.0), dict(elastic_smoothness_mm=0.0),
                                    dict(voxel_size_mm=(1.0, 1.0)), dict(generator=None)])
def test_deformation_rejects_bad_parameters(labels, kwargs):
    with pytest.raises(ParameterError):
        random_deformation(labels, **{"generator": gen(), **kwargs})


def test_deformation_rejects_float_labels():
    with pytest.raises(InputError):
        random_deformation(torch.zeros(8, 8, 8), generator=gen())


def test_smooth_noise_statistics():
    # Unit variance per voxel and correlation exp(-r²/4σ²) of Gaussian-filtered white noise.
    f = _smooth_noise((64, 64, 64), smoothness_mm=4.0, voxel_size_mm=(1, 1, 1), generator=gen())[0].double()
    assert 0.85 < float(f.std()) < 1.15          # measured 0.95, 1.01, 1.05, 0.99, 1.08 (seeds 0-4)
    for lag in (2, 4, 8):
        corr = float((f[:-lag] * f[lag:]).mean() / f.var())
        assert abs(corr - math.exp(-lag**2 / (4 * 4.0**2))) < 0.08   # measured 0.95/0.81/0.43 vs 0.94/0.78/0.37


def test_hybrid_chi_within_label_ranges(labels):
    for seed in range(3):
        chi = hybrid_chi(labels, chi_ranges_ppm=RANGES, generator=gen(seed))
        assert chi.dtype == torch.float32 and chi.shape == labels.shape
        assert bool((chi[labels == 0] == 0).all())           # unlisted label → 0
        for label, (lo, hi) in RANGES.items():
            values = chi[labels == label]      # bounds as float32 holds them (-0.05 → -0.0500000007)
            assert bool(values.min() >= torch.tensor(lo)) and bool(values.max() <= torch.tensor(hi))
    # Texture: values vary inside a label (measured std 0.0085 in label 2 for 0.01 ppm texture).
    assert float(chi[labels == 2].std()) > 0.004
    flat = hybrid_chi(labels, chi_ranges_ppm=RANGES, generator=gen(), texture_ppm=0.0)
    for label in RANGES:
        assert flat[labels == label].unique().numel() == 1


def test_hybrid_chi_seeds(labels):
    a = hybrid_chi(labels, chi_ranges_ppm=RANGES, generator=gen(3))
    assert torch.equal(a, hybrid_chi(labels, chi_ranges_ppm=RANGES, generator=gen(3)))
    assert not torch.equal(a, hybrid_chi(labels, chi_ranges_ppm=RANGES, generator=gen(4)))
    assert hybrid_chi(labels, chi_ranges_ppm=RANGES, generator=gen(3), dtype=torch.float64).dtype == torch.float64


def test_mixture_groups_labels():
    # One component: the 200 labels' positions in their (common) range cluster (σ ≤ 0.15);
    # ten components spread them out. Measured std over seeds 0-9: ≤ 0.143 vs ≥ 0.186.
    many = torch.arange(200).reshape(200, 1, 1).expand(200, 2, 2).contiguous()
    ranges = {i: (0.0, 1.0) for i in range(200)}
    for seed in range(10):
        one = hybrid_chi(many, chi_ranges_ppm=ranges, generator=gen(seed), mixture_components=1, texture_ppm=0)
        ten = hybrid_chi(many, chi_ranges_ppm=ranges, generator=gen(seed), mixture_components=10, texture_ppm=0)
        assert float(one[:, 0, 0].std()) < 0.16
        assert float(ten[:, 0, 0].std()) > 0.17


@pytest.mark.parametrize("kwargs", [dict(chi_ranges_ppm={1: (0.1, 0.0)}), dict(chi_ranges_ppm={-1: (0.0, 0.1)}),
                                    dict(chi_ranges_ppm={}), dict(mixture_components=0),
                                    dict(texture_ppm=-0.01), dict(texture_smoothness_mm=-1.0)])
def test_hybrid_chi_rejects_bad_parameters(labels, kwargs):
    with pytest.raises(ParameterError):
        hybrid_chi(labels, **{"chi_ranges_ppm": RANGES, "generator": gen(), **kwargs})
