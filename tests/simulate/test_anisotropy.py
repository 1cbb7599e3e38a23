"""White-matter anisotropy field against analytic answers (sphere, infinite cylinder)."""

import math

import pytest
import torch

from torchqsm.errors import InputError
from torchqsm.simulate.anisotropy import anisotropic_field, random_fibre_directions
from torchqsm.simulate.phantoms import ellipsoid


def _cylinder(n_xy: int, n_z: int, radius: float) -> torch.Tensor:
    x = torch.arange(n_xy, dtype=torch.float64) - (n_xy - 1) / 2
    disc = (x[:, None] ** 2 + x[None, :] ** 2) <= radius**2
    return disc[:, :, None].expand(n_xy, n_xy, n_z).clone()


@pytest.mark.parametrize("theta_deg", [0.0, 30.0, 54.7, 90.0])
def test_infinite_cylinder_of_axial_fibres(theta_deg):
    # Fibres along the cylinder's axis (z), B0 at θ to it: inside, Δχ (cos²θ / 6 + 1/18).
    dchi = 0.02
    cyl = _cylinder(48, 8, 5.0)  # periodic along z with no padding there: infinite
    fibres = torch.zeros(3, *cyl.shape)
    fibres[2] = 1.0
    theta = math.radians(theta_deg)
    b0 = (math.sin(theta), 0.0, math.cos(theta))
    field = anisotropic_field(dchi * cyl.float(), fibres, b0_dir=b0, pad=(40, 40, 0))
    inside = field[22:26, 22:26, :]
    expected = dchi * (math.cos(theta) ** 2 / 6 + 1 / 18)
    assert float(inside.mean()) == pytest.approx(expected, rel=0.03)
    assert float(inside.std()) < 0.03 * expected  # uniform inside


@pytest.mark.parametrize("b0", [(0.0, 0.0, 1.0), (0.5, 0.0, math.sqrt(3) / 2), (0.3, -0.4, 0.866)])
def test_uniform_sphere_has_no_field_inside(b0):
    ball = ellipsoid((40, 40, 40), radii=(10, 10, 10)) > 0.5
    fibres = torch.zeros(3, 40, 40, 40)
    fibres[0], fibres[1] = 1.0, 1.0  # oblique to every axis and to B0
    field = anisotropic_field(0.02 * ball.float(), fibres, b0_dir=b0, pad=20)
    assert float(field[17:23, 17:23, 17:23].abs().max()) < 0.02 * 0.01
    # ... but outside it the traceless tensor has a dipole field
    assert float(field[~ball].abs().max()) > 0.02 * 0.05


def test_linear_in_anisotropy_and_zero_without_it():
    ball = ellipsoid((24, 24, 24), radii=(6, 6, 6)) > 0.5
    fibres = random_fibre_directions(ball, generator=torch.Generator().manual_seed(1), smoothness_mm=4.0)
    one = anisotropic_field(0.01 * ball.float(), fibres, b0_dir=(0.2, 0.1, 1.0), pad=8)
    three = anisotropic_field(0.03 * ball.float(), fibres, b0_dir=(0.2, 0.1, 1.0), pad=8)
    torch.testing.assert_close(three, 3 * one, rtol=1e-4, atol=1e-8)
    assert float(anisotropic_field(torch.zeros(24, 24, 24), fibres, pad=8).abs().max()) == 0.0


def test_random_fibres_are_unit_in_mask_and_reproducible():
    mask = ellipsoid((20, 20, 20), radii=(7, 7, 7)) > 0.5
    a = random_fibre_directions(mask, generator=torch.Generator().manual_seed(3), smoothness_mm=5.0)
    b = random_fibre_directions(mask, generator=torch.Generator().manual_seed(3), smoothness_mm=5.0)
    torch.testing.assert_close(a, b)
    norms = a.norm(dim=0)
    torch.testing.assert_close(norms[mask], torch.ones(int(mask.sum())), rtol=0, atol=1e-5)
    assert float(norms[~mask].abs().max()) == 0.0
    # smooth: neighbouring directions nearly parallel
    cos = (a[:, 1:] * a[:, :-1]).sum(0)[mask[1:] & mask[:-1]]
    assert float(cos.mean()) > 0.9


def test_shape_mismatch_is_an_input_error():
    with pytest.raises(InputError, match="fibres"):
        anisotropic_field(torch.zeros(8, 8, 8), torch.zeros(3, 8, 8, 9))
