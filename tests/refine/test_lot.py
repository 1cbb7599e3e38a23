"""LoT data consistency: χ refined against the Laplacian of the wrapped phase, background and all."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.acquisition import Acquisition
from torchqsm.errors import InputError, ParameterError
from torchqsm.inversion.regularization import collect_choices
from torchqsm.metrics import nrmse
from torchqsm.physics.operators import LaplacianOp
from torchqsm.physics.units import GAMMA_BAR_MHZ_PER_T
from torchqsm.refine import lot_consistency
from torchqsm.refine.lot import congruent_laplacian, lot_of_phase
from torchqsm.simulate import forward_field, shapes_phantom

from .conftest import blur

TE = (0.004, 0.008, 0.012)
RECORD = Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), b0_tesla=3.0, echo_times_s=TE)


def _wrapped(field_ppm: torch.Tensor, generator: torch.Generator | None = None, noise_rad: float = 0.0):
    omega = 2 * math.pi * GAMMA_BAR_MHZ_PER_T * 3.0  # rad/s per ppm
    echoes = []
    for te in TE:
        phase = omega * te * field_ppm + 0.3  # a receive offset the Laplacian does not see
        if noise_rad:
            phase = phase + noise_rad * torch.randn(phase.shape, generator=generator, dtype=phase.dtype)
        echoes.append(torch.angle(torch.exp(1j * phase)))
    return torch.stack(echoes)


@pytest.fixture
def scene():
    """(χ, wrapped phase of χ's field plus a harmonic background, brain mask, χ0) at 32³, float64.

    The background is a linear gradient plus a quadratic harmonic (x² − y²): its Laplacian is zero,
    and it wraps the phase several times across the volume.
    """
    generator = torch.Generator().manual_seed(3)
    chi, mask = shapes_phantom((32, 32, 32), dtype=torch.float64)
    chi = 0.5 * chi
    x, y, z = torch.meshgrid(*(torch.arange(32, dtype=torch.float64) - 15.5 for _ in range(3)), indexing="ij")
    background = 0.02 * x + 0.01 * z + 0.001 * (x * x - y * y)
    phase = _wrapped(forward_field(chi, pad=16) + background, generator, noise_rad=0.005)
    chi0 = 0.6 * blur(chi) * mask
    return chi, phase, mask, chi0


def test_lot_of_phase_is_the_tissue_laplacian_through_wraps_and_background():
    chi, mask = shapes_phantom((24, 24, 24), dtype=torch.float64)
    chi = 0.3 * chi
    x, y, _ = torch.meshgrid(*(torch.arange(24, dtype=torch.float64) - 11.5 for _ in range(3)), indexing="ij")
    field = forward_field(chi, pad=16)
    background = 0.02 * x + 0.002 * (x * x - y * y)  # harmonic; 9.5 rad across the grid at the last echo
    omega = 2 * math.pi * GAMMA_BAR_MHZ_PER_T * 3.0
    assert float(omega * TE[-1] * (background.max() - background.min())) > 2 * math.pi
    ones = torch.ones_like(mask)
    lot = lot_of_phase(_wrapped(field + background), ones, RECORD)
    truth = LaplacianOp((24, 24, 24), stencil="27", dtype=torch.float64)(field)
    inner = (slice(2, -2),) * 3
    # measured: 3.5 % (the LoT sums sin Δφ where the Laplacian sums Δφ: the background's steps bend it);
    # 0.4 % without the background
    error = float((lot - truth)[inner].norm() / truth[inner].norm())
    assert error < 0.05, error


def test_congruent_laplacian_is_exact_through_wraps_and_background():
    chi, mask = shapes_phantom((24, 24, 24), dtype=torch.float64)
    x, y, _ = torch.meshgrid(*(torch.arange(24, dtype=torch.float64) - 11.5 for _ in range(3)), indexing="ij")
    field = forward_field(0.3 * chi, pad=16)
    background = 0.02 * x + 0.002 * (x * x - y * y)
    ones = torch.ones_like(mask)
    laplacian, holds = congruent_laplacian(_wrapped(field + background), ones, RECORD)
    truth = LaplacianOp((24, 24, 24), stencil="27", dtype=torch.float64)(field)
    inner = (slice(2, -2),) * 3
    assert bool(holds[inner].all())
    # every neighbour step is under π at the first echo, so each wrapped difference is the true one
    error = float((laplacian - truth)[inner].norm() / truth[inner].norm())
    assert error < 1e-9, error


def test_congruent_laplacian_unwraps_late_echoes_in_time():
    """Steps beyond π at the later echoes (the first echo's under it): exact, where the LoT fails."""
    x = (torch.arange(24, dtype=torch.float64) - 11.5).reshape(24, 1, 1).expand(24, 24, 24)
    field = 0.016 * x * x  # ∇² = 0.032 ppm/mm²; steps at x = ±11.5 reach 1.2 rad at TE1 and 3.5 rad at TE3
    omega = 2 * math.pi * GAMMA_BAR_MHZ_PER_T * 3.0
    steps = omega * torch.tensor(TE, dtype=torch.float64) * 0.016 * 23
    assert float(steps[0]) < 1.2 and float(steps[-1]) > math.pi
    phase = _wrapped(field)
    ones = torch.ones(24, 24, 24, dtype=torch.bool)
    laplacian, holds = congruent_laplacian(phase, ones, RECORD)
    inner = (slice(1, -1),) * 3
    assert bool(holds[inner].all())
    torch.testing.assert_close(laplacian[inner], torch.full_like(laplacian[inner], 0.032), rtol=1e-9, atol=1e-9)
    lot = lot_of_phase(phase, ones, RECORD)
    assert float((lot[inner] - 0.032).abs().max()) > 0.2 * 0.032  # sin Δφ of the larger steps


def test_congruent_laplacian_leaves_out_ambiguous_steps():
    x = (torch.arange(24, dtype=torch.float64) - 11.5).reshape(24, 1, 1).expand(24, 24, 24)
    field = 0.03 * x * x
    omega_te = 2 * math.pi * GAMMA_BAR_MHZ_PER_T * 3.0 * TE[0]
    phase = _wrapped(field)
    ones = torch.ones(24, 24, 24, dtype=torch.bool)
    _, holds = congruent_laplacian(phase, ones, RECORD, max_step_rad=2.0)
    # the largest step of voxel x is to x ± 1: 0.03 (2|x| + 1) rad/ppm · ω TE1
    largest = 0.03 * (2 * x.abs() + 1) * omega_te
    inner = (slice(1, -1),) * 3
    assert bool((holds[inner] == (largest[inner] <= 2.0)).all())
    assert 0 < int(holds[inner].sum()) < holds[inner].numel()


def test_refinement_recovers_chi_through_wrapped_phase_and_background(scene):
    chi, phase, mask, chi0 = scene
    out = lot_consistency(chi0, phase, mask, RECORD, max_iterations=60)
    before, after = nrmse(chi0, chi, mask), nrmse(out, chi, mask)
    assert after < 0.6 * before, (before, after)
    assert bool((out[~mask] == 0).all())
    with collect_choices() as made:
        chosen = lot_consistency(chi0, phase, mask, RECORD, regularization="auto", max_iterations=60)
    assert len(made) == 1 and made[0].value > 0
    # measured (0.005 rad of phase noise): 80.5 % -> 39.4 % (λ = 0.01), 41.0 % (λ by GCV); with the LoT as the
    # data term 39.5 % and 40.9 % (its steps here are small: the congruent term's gain is on large steps)
    assert nrmse(chosen, chi, mask) < 0.6 * before
    lot = lot_consistency(chi0, phase, mask, RECORD, max_iterations=60, data_term="lot")
    assert nrmse(lot, chi, mask) < 0.6 * before


def test_large_regularization_keeps_the_estimate(scene):
    _, phase, mask, chi0 = scene
    out = lot_consistency(chi0, phase, mask, RECORD, regularization=1e9)
    torch.testing.assert_close(out, chi0, rtol=0, atol=1e-8)


def test_progress_counts_iterations(scene):
    _, phase, mask, chi0 = scene
    seen = []
    lot_consistency(chi0, phase, mask, RECORD, regularization=0.01, max_iterations=5, tolerance=0.0,
                    progress=seen.append)
    assert seen == [1] * 5


def test_bad_inputs(scene):
    _, phase, mask, chi0 = scene
    with pytest.raises(InputError, match="one grid"):
        lot_consistency(chi0[:-1], phase, mask, RECORD)
    with pytest.raises(InputError, match="one grid"):
        lot_consistency(chi0, phase[0], mask, RECORD)
    small = torch.zeros_like(mask)
    small[15:17, 14:17, 14:17] = True
    with pytest.raises(InputError, match=r"empty after eroding it by 1 voxel"):
        lot_consistency(chi0, phase, small, RECORD)
    with pytest.raises(ParameterError, match="data_erosion_voxels"):
        lot_consistency(chi0, phase, mask, RECORD, data_erosion_voxels=-1)
    with pytest.raises(ParameterError, match="regularization"):
        lot_consistency(chi0, phase, mask, RECORD, regularization=0.0)
    with pytest.raises(ParameterError, match="data term"):
        lot_consistency(chi0, phase, mask, RECORD, data_term="sine")
    with pytest.raises(ParameterError, match="max_step_rad"):
        lot_consistency(chi0, phase, mask, RECORD, max_step_rad=4.0)
    with pytest.raises(ParameterError, match="echo_times_s"):
        lot_consistency(chi0, phase, mask, Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0),
                                                       b0_tesla=3.0))
