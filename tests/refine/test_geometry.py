"""The refinements apply the dipole operator of the acquisition they are given (B0 direction, voxel size)."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.acquisition import Acquisition
from torchqsm.errors import ParameterError
from torchqsm.models import Normalization, UNet3d
from torchqsm.physics import DipoleOp
from torchqsm.refine import dfqsm, dll2, fine

TILT = (math.sin(math.radians(35.0)), 0.0, math.cos(math.radians(35.0)))
OBLIQUE = Acquisition(voxel_size_mm=(1.0, 1.0, 1.2), b0_dir=TILT, pad=0)
AXIAL = OBLIQUE.with_values("test", b0_dir=(0.0, 0.0, 1.0))


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(3)
    field = torch.randn((16, 14, 12), generator=generator, dtype=torch.float64)
    return field, torch.ones(field.shape, dtype=torch.bool)


def _oblique_dipole(field: torch.Tensor) -> DipoleOp:
    return DipoleOp(tuple(field.shape), voxel_size_mm=OBLIQUE.voxel_size_mm, b0_dir=TILT, pad=0, dtype=field.dtype)


def test_dfqsm_first_step_is_the_records_adjoint(data):
    field, mask = data
    one_step = dfqsm(torch.zeros_like(field), field, mask, OBLIQUE, tolerance=0.0, max_iterations=1)
    expected = _oblique_dipole(field)(field)  # χ1 = χ0 - ∇E(0) = D M f with S = M = I
    torch.testing.assert_close(one_step, expected, rtol=0, atol=1e-12)
    axial = dfqsm(torch.zeros_like(field), field, mask, AXIAL, tolerance=0.0, max_iterations=1)
    assert float((axial - one_step).abs().max()) > 0.1 * float(one_step.abs().max())


def test_dll2_solves_the_normal_equations_of_the_records_operator(data):
    field, mask = data
    chi0 = 0.5 * field
    chi = dll2(chi0, field, mask, OBLIQUE, regularization=0.1)
    dipole = _oblique_dipole(field)
    residual = dipole.gram(chi) + 0.1 * chi - (dipole(field) + 0.1 * chi0)
    assert float(torch.linalg.vector_norm(residual)) < 1e-10 * float(torch.linalg.vector_norm(field))


def test_fine_data_term_uses_the_records_operator(data):
    field, mask = data
    field, mask = field.float(), mask
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = UNet3d(base_channels=2, depth=2)
    seen = []
    fine(network, field, mask, OBLIQUE, normalization=Normalization(), max_iterations=1, callback=seen.append)
    dipole = DipoleOp(tuple(field.shape), voxel_size_mm=OBLIQUE.voxel_size_mm, b0_dir=TILT, pad=0)
    expected = float(torch.linalg.vector_norm(dipole(seen[0].solution) - field) / torch.linalg.vector_norm(field))
    assert seen[0].residual == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("refine", [dfqsm, dll2])
def test_no_geometry_is_one_clear_error(refine, data):
    field, mask = data
    with pytest.raises(ParameterError, match="voxel size and the B0 direction"):
        refine(field, field, mask)
