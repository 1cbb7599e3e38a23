"""TV data consistency after a phase network: a large uniform error of the network is corrected from its edge."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.acquisition import Acquisition
from torchqsm.errors import InputError, ParameterError
from torchqsm.inversion.regularization import collect_choices
from torchqsm.metrics import nrmse
from torchqsm.physics.units import GAMMA_BAR_MHZ_PER_T
from torchqsm.refine import lot_consistency, lot_tv_consistency
from torchqsm.refine.lot_tv import phase_noise_ppm
from torchqsm.simulate import forward_field

TE = (0.004, 0.012, 0.020)
RECORD = Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), b0_tesla=3.0, echo_times_s=TE)
OMEGA = 2 * math.pi * GAMMA_BAR_MHZ_PER_T * 3.0  # rad/s per ppm


def _wrapped(field_ppm, generator=None, noise_rad=0.0):
    echoes = []
    for te in TE:
        phase = OMEGA * te * field_ppm + 0.3
        if noise_rad:
            phase = phase + noise_rad * torch.randn(phase.shape, generator=generator, dtype=phase.dtype)
        echoes.append(torch.angle(torch.exp(1j * phase)))
    return torch.stack(echoes)


@pytest.fixture(scope="module")
def lesion():
    """A 1.2 ppm sphere (radius 5) in a 0.05 ppm-contrast brain (a ball of radius 14), 36³, float64; the network
    missed the lesion: χ0 is the brain without it."""
    n = 36
    x, y, z = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for _ in range(3)), indexing="ij")
    r = torch.sqrt(x * x + y * y + z * z)
    mask = r < 14
    brain = 0.05 * (x > 0).double() * mask
    sphere = r < 5
    chi = brain + 1.2 * sphere.double()
    generator = torch.Generator().manual_seed(5)
    background = 0.01 * x + 0.001 * (x * x - y * y)
    phase = _wrapped(forward_field(chi, pad=16) + background, generator, noise_rad=0.01)
    return chi, phase, mask, brain, sphere


def test_phase_noise_is_read_from_the_phase():
    generator = torch.Generator().manual_seed(1)
    x = (torch.arange(32, dtype=torch.float64) - 16).reshape(32, 1, 1).expand(32, 32, 32)
    phase = _wrapped(0.02 * x, generator, noise_rad=0.02)
    region = torch.zeros(32, 32, 32, dtype=torch.bool)
    region[2:-2, 2:-2, 2:-2] = True
    expected = 0.02 * math.sqrt(sum(t * t for t in TE)) / sum(t * t for t in TE) / OMEGA
    measured = phase_noise_ppm(phase, region, RECORD)
    assert abs(measured / expected - 1) < 0.05, (measured, expected)


def test_tv_correction_recovers_a_lesion_the_network_missed(lesion):
    chi, phase, mask, chi0, sphere = lesion
    with collect_choices() as made:
        out = lot_tv_consistency(chi0, phase, mask, RECORD)
    assert len(made) == 1 and made[0].value > 0
    before, after = nrmse(chi0, chi, mask, demean=True), nrmse(out, chi, mask, demean=True)
    l2 = lot_consistency(chi0, phase, mask, RECORD, max_iterations=200)
    # measured: the lesion's mean 0.00 (χ0) -> 1.220 ppm with TV, 0.460 with the L2 pull (truth 1.200);
    # NRMSE 99.5 -> 0.6 %, L2 72.7 % (the phantom is piecewise constant, as TV assumes)
    assert abs(float(out[sphere].mean()) / 1.2 - 1) < 0.05, float(out[sphere].mean())
    assert float(l2[sphere].mean()) < 0.6 * 1.2
    assert after < 0.1 * before, (before, after)
    assert bool((out[~mask] == 0).all())


def test_large_alpha_keeps_the_estimate_and_progress_counts(lesion):
    _, phase, mask, chi0, _ = lesion
    seen = []
    out = lot_tv_consistency(chi0, phase, mask, RECORD, regularization=1e6, max_iterations=5, tolerance=0.0,
                             progress=seen.append)
    assert seen == [1] * 5
    assert float((out - chi0)[mask].abs().max()) < 1e-3


def test_bad_inputs(lesion):
    _, phase, mask, chi0, _ = lesion
    with pytest.raises(InputError, match="one grid"):
        lot_tv_consistency(chi0[:-1], phase, mask, RECORD)
    with pytest.raises(InputError, match="no data to refine"):
        lot_tv_consistency(chi0, phase, torch.zeros_like(mask), RECORD)
    with pytest.raises(ParameterError, match="regularization"):
        lot_tv_consistency(chi0, phase, mask, RECORD, regularization=-1.0)
    with pytest.raises(ParameterError, match="max_step_rad"):
        lot_tv_consistency(chi0, phase, mask, RECORD, max_step_rad=0.0)
    with pytest.raises(ParameterError, match="echo_times_s"):
        lot_tv_consistency(chi0, phase, mask, Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                                                          b0_tesla=3.0))
