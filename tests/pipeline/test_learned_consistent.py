"""The shipped data-consistent networks through the registry: geometry from the record, data consistency, errors."""

from __future__ import annotations

import pytest
import torch

import torchqsm
from torchqsm.errors import InputError, ParameterError
from torchqsm.pipeline.learned import CONSISTENT_ARCHITECTURES
from torchqsm.pipeline.registry import METHODS
from torchqsm.physics import DipoleOp
from torchqsm.simulate import shapes_phantom

SHIPPED = [name for name in CONSISTENT_ARCHITECTURES if name in METHODS]
OBLIQUE = torchqsm.Acquisition(voxel_size_mm=(1.0, 1.0, 1.5), b0_dir=(0.0, 0.5, 0.8660254))


@pytest.fixture(scope="module")
def phantom():
    chi, mask = shapes_phantom((32, 32, 32))
    field = DipoleOp((32, 32, 32), voxel_size_mm=OBLIQUE.voxel_size_mm, b0_dir=OBLIQUE.b0_dir, pad=16)(chi)
    return chi, mask, field


def _residual(chi, field, mask) -> float:
    dipole = DipoleOp(tuple(mask.shape), voxel_size_mm=OBLIQUE.voxel_size_mm, b0_dir=OBLIQUE.b0_dir, pad=16)
    return float(torch.linalg.norm((dipole(chi) - field) * mask) / torch.linalg.norm(field * mask))


def test_every_data_consistent_network_is_shipped():
    assert SHIPPED == list(CONSISTENT_ARCHITECTURES)
    for name in SHIPPED:
        assert METHODS[name].kind == "learned" and "dipole operator inside" in METHODS[name].summary
        assert {spec.name for spec in METHODS[name].specs} == {"weights"}


@pytest.mark.parametrize("name", SHIPPED)
def test_runs_at_the_records_oblique_anisotropic_geometry(phantom, name):
    chi, mask, field = phantom
    out = torchqsm.invert(field, mask, name, OBLIQUE)
    assert out.shape == chi.shape and bool(torch.isfinite(out).all()) and float(out[~mask].abs().max()) == 0.0
    error = torch.linalg.norm((out - chi) * mask) / torch.linalg.norm(chi * mask)
    assert float(error) < 1.0
    # the record's geometry is what the network applies: another direction gives another χ
    axial = torchqsm.invert(field, mask, name, voxel_size_mm=(1.0, 1.0, 1.5), b0_dir=(0.0, 0.0, 1.0))
    assert float((axial - out).abs().max()) > 0.01 * float(out.abs().max())


@pytest.mark.parametrize("name", [n for n in ("noqsm", "noqsm-sd") if n in SHIPPED])
def test_data_consistency_solves_explain_the_field_better_than_a_plain_network(phantom, name):
    """NoQSM ends in a data-consistency solve: its χ's field is closer to the measured one than unet's."""
    chi, mask, field = phantom
    consistent = _residual(torchqsm.invert(field, mask, name, OBLIQUE), field, mask)
    plain = _residual(torchqsm.invert(field, mask, "unet", OBLIQUE), field, mask)
    assert consistent < plain


@pytest.mark.parametrize("name", SHIPPED)
def test_missing_or_zero_geometry_is_one_clear_error(phantom, name):
    chi, mask, field = phantom
    with pytest.raises(ParameterError, match="voxel size and the B0 direction"):
        torchqsm.invert(field, mask, name)
    with pytest.raises(ParameterError, match="b0_dir"):
        torchqsm.invert(field, mask, name, voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 0))


@pytest.mark.parametrize("name", [*SHIPPED, "unet", "unet+dfqsm", "unet+fine"])
def test_a_field_in_hz_is_one_clear_error(phantom, name):
    """A network gives silently wrong χ for a field in other units, so a field in Hz is refused (the same
    field in ppm runs)."""
    from torchqsm.errors import InputError
    from torchqsm.physics.units import ppm_to_hz

    chi, mask, field = phantom
    with pytest.raises(InputError, match="in Hz or radians"):
        torchqsm.invert(ppm_to_hz(field, b0_tesla=3.0), mask, name, OBLIQUE)
    assert float(field[mask].abs().quantile(0.99)) < 3.0


@pytest.mark.parametrize("weights", ["nextqsm-background-cpu", "iqsm-hybrid-cpu"])
def test_weights_of_a_background_or_phase_network_are_refused(phantom, weights):
    """An inversion method given the card of a network that does not map a local field to χ: one error."""
    _, mask, field = phantom
    with pytest.raises(InputError, match="not a dipole inversion"):
        torchqsm.invert(field, mask, "nextqsm", OBLIQUE, weights=weights)
