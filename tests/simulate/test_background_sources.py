"""Background: external sources outside the brain, the field of outside χ, shim polynomials."""

from __future__ import annotations

import itertools

import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.simulate import ellipsoid, sphere
from torchqsm.simulate.background import background_field, external_sources, shim_field

N = 48


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def brain():
    return ellipsoid((N, N, N), radii=(16, 18, 15), supersample=1) > 0.5


def test_sources_outside_the_brain_only(brain):
    for seed in range(3):
        chi = external_sources((N, N, N), brain, generator=gen(seed))
        assert chi.dtype == torch.float32
        assert bool((chi[brain] == 0).all())
        outside = chi[~brain]
        assert float((outside != 0).float().mean()) > 0.08          # measured 0.152-0.169 (seeds 0-2)
        assert float(outside.min()) >= -10.0 and float(outside.max()) <= 10.0
        assert chi.unique().numel() <= 101


def test_sources_counts_sizes_seeds(brain):
    assert not bool(external_sources((N, N, N), brain, generator=gen(), count=0).any())
    one = external_sources((N, N, N), brain, generator=gen(), count=1, radius_range_mm=(3.0, 3.0),
                           chi_range_ppm=(9.2, 9.2))
    # A sphere of 3 mm radius (113 mm³), or the part of it outside the brain: measured 104 voxels.
    assert 0 < int((one != 0).sum()) <= 123 and bool((one[one != 0] == 9.2).all())
    a = external_sources((N, N, N), brain, generator=gen(4), count=20)
    assert torch.equal(a, external_sources((N, N, N), brain, generator=gen(4), count=20))
    assert not torch.equal(a, external_sources((N, N, N), brain, generator=gen(5), count=20))


@pytest.mark.parametrize("kwargs", [dict(count=-5), dict(count=(10, 5)), dict(chi_range_ppm=(10.0, -10.0)),
                                    dict(radius_range_mm=(0.0, 2.0)), dict(radius_range_mm=(5.0, 2.0))])
def test_sources_bad_parameters(brain, kwargs):
    with pytest.raises(ParameterError):
        external_sources((N, N, N), brain, **{"generator": gen(), **kwargs})


def test_sources_bad_masks(brain):
    with pytest.raises(InputError):
        external_sources((N, N, N), torch.ones(N, N, N, dtype=torch.bool), generator=gen())
    with pytest.raises(InputError):
        external_sources((N, N, N), brain[:10], generator=gen())


def test_background_field_of_an_outside_sphere():
    # Field of a sphere (1 ppm, radius 5) outside a spherical brain: χ/3 (R/r)³ (3cos²θ - 1);
    # χ inside the brain (0.5 ppm here) must not contribute. 64³ grid, padded by 32.
    n, radius, centre = 64, 5.0, (32, 32, 54)
    mask = ellipsoid((n, n, n), radii=(14, 14, 14), center=(32, 32, 32), supersample=1) > 0.5
    chi = sphere((n, n, n), radius=radius, center=centre, supersample=4, dtype=torch.float64) + 0.5 * mask
    field = background_field(chi, mask, pad=32)
    x = torch.arange(n, dtype=torch.float64)
    d = [x[:, None, None] - centre[0], x[None, :, None] - centre[1], x[None, None, :] - centre[2]]
    r = torch.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    analytic = (radius / r) ** 3 * (3 * (d[2] / r) ** 2 - 1) / 3
    peak = float(analytic[mask].abs().max())
    assert float((field - analytic)[mask].abs().max()) < 0.03 * peak     # measured 0.011 of the peak
    assert bool((field[~mask] == 0).all())


def monomials(shape, order, include_constant=True):
    x, y, z = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in shape)
    x, y, z = torch.meshgrid(x, y, z, indexing="ij")
    low = 0 if include_constant else 1
    return torch.stack([(x**a * y**b * z**c).reshape(-1) for a, b, c in itertools.product(range(order + 1), repeat=3)
                        if low <= a + b + c <= order], dim=1)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_shim_is_a_polynomial_of_the_stated_order(order):
    shape = (20, 18, 14)
    field = shim_field(shape, generator=gen(order), order=order, amplitude_ppm=0.7, dtype=torch.float64)
    assert abs(float(field.abs().max()) - 0.7) < 1e-12
    target = field.reshape(-1)
    basis = monomials(shape, order)
    fit = torch.linalg.lstsq(basis, target[:, None]).solution
    assert float((basis @ fit)[:, 0].sub(target).abs().max()) < 1e-9       # measured ≤ 4.6e-15
    assert abs(float(fit[0, 0])) < 1e-9                                    # no constant term
    lower = monomials(shape, order - 1)
    residual = (lower @ torch.linalg.lstsq(lower, target[:, None]).solution)[:, 0] - target
    assert float(residual.abs().max()) > 0.05      # the top degree is used: measured 0.70, 0.43, 0.25


def test_shim_seeds_dtype_and_errors():
    a = shim_field((16, 16, 16), generator=gen(1))
    assert a.dtype == torch.float32 and torch.equal(a, shim_field((16, 16, 16), generator=gen(1)))
    assert not torch.equal(a, shim_field((16, 16, 16), generator=gen(2)))
    assert not bool(shim_field((8, 8, 8), generator=gen(), amplitude_ppm=0.0).any())
    for kwargs in (dict(order=0), dict(order=7), dict(order=2.0), dict(amplitude_ppm=-1.0),
                   dict(amplitude_ppm=float("nan")), dict(shape=(8, 8))):
        with pytest.raises(ParameterError):
            shim_field(**{"shape": (8, 8, 8), "generator": gen(), **kwargs})


@pytest.mark.parametrize("order", [1, 2, 3])
def test_shim_is_harmonic_so_background_removal_can_remove_it(order):
    # The 7-point Laplacian is exact for polynomials up to degree 3: it must vanish.
    f = shim_field((20, 18, 16), generator=torch.Generator().manual_seed(order), order=order,
                   voxel_size_mm=(1.0, 1.0, 1.0), dtype=torch.float64)
    lap = (f[2:, 1:-1, 1:-1] + f[:-2, 1:-1, 1:-1] + f[1:-1, 2:, 1:-1] + f[1:-1, :-2, 1:-1]
           + f[1:-1, 1:-1, 2:] + f[1:-1, 1:-1, :-2] - 6 * f[1:-1, 1:-1, 1:-1])
    assert float(lap.abs().max()) < 1e-12
    assert float(f.std()) > 0.1  # not trivially zero


@pytest.mark.parametrize("order, expected", [
    (2, (-0.2335727907315955, -0.5681219916066489, 0.0050995898422781785, 0.1776567286834093)),
    (3, (0.16334813982110538, 0.19243886733020904, -0.007387297672557383, 0.37129743217874694)),
])
def test_shim_values_are_those_of_the_complex_power_formula(order, expected):
    """Degrees 1-2 are summed as real coefficients (a 15x faster grid pass): the values are those the
    term-by-term Re(e^{iθ}(a·r)^k) evaluation gave (recorded from it, 2026-12-06; differences ≤ 9e-16)."""
    field = shim_field((40, 36, 30), generator=torch.Generator().manual_seed(0), order=order,
                       voxel_size_mm=(1.0, 1.0, 1.5), dtype=torch.float64)
    points = [(0, 0, 0), (39, 35, 29), (20, 5, 17), (7, 30, 2)]
    assert [float(field[p]) for p in points] == pytest.approx(expected, abs=1e-12)
