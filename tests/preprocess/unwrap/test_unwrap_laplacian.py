"""Laplacian unwrapping: exact on Itoh-consistent phase, bounded with noise, harmonic error without CG."""

from __future__ import annotations

import math

import pytest
import scipy.ndimage as ndimage
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.physics import LaplacianOp
from torchqsm.preprocess.unwrap import laplacian_unwrap


def _smooth_phase(helpers, n=48, dtype=torch.float64):
    """Diagonal ramp, quadratics and Gaussian bumps spanning ±20π; steps below π (0.77 π at n = 48)."""
    coords = helpers.grid(n, dtype)
    x, y, z = coords
    shape = ((x + y + z) / n + 0.7 * (y / n) ** 2 - 0.5 * (z / n) ** 2
             + 0.25 * helpers.gaussian(coords, (n / 10, -n / 16, n / 24), n / 10)
             - 0.2 * helpers.gaussian(coords, (-n / 6, n / 8, -n / 12), n / 12))
    shape = shape - 0.5 * (shape.max() + shape.min())
    return 20 * math.pi * shape / shape.abs().max()


def _error_range(estimate, truth, region):
    """max - min of (estimate - truth) in region: the error up to a constant."""
    error = (estimate - truth)[region]
    return float(error.max() - error.min())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_full_box_is_exact_up_to_a_constant(helpers, dtype):
    phase = _smooth_phase(helpers, dtype=dtype)
    box = torch.ones(phase.shape, dtype=torch.bool)
    assert float(phase.min()) == pytest.approx(-20 * math.pi) and float(phase.max()) == pytest.approx(20 * math.pi)
    assert float(helpers.max_step(phase, box)) < 0.8 * math.pi
    unwrapped = laplacian_unwrap(helpers.wrap_to_pi(phase))
    assert unwrapped.dtype == dtype
    # Measured: 1.4e-12 (float64), 3.8e-5 rad (float32).
    assert _error_range(unwrapped, phase, box) < (1e-9 if dtype == torch.float64 else 5e-4)
    # The constant makes the result agree with the wrapped input modulo 2π.
    turns = (unwrapped - helpers.wrap_to_pi(phase)) / (2 * math.pi)
    assert float((turns - turns.round()).abs().max()) < 1e-4  # measured 2.9e-6 (float32)


def test_masked_with_noise_matches_interior(helpers):
    """Ellipsoidal mask, 0.1 rad noise: no wrapped difference is wrong, so the least-squares result
    is the noisy phase itself up to a constant (measured range 0.002 rad in the interior, 0.014 in
    the mask, from the CG tolerance) and differs from the clean phase by the noise (RMS 0.0997)."""
    phase = _smooth_phase(helpers)
    x, y, z = helpers.grid(48)
    radius2 = (x / 21) ** 2 + (y / 18) ** 2 + (z / 20) ** 2
    mask, interior = radius2 <= 1, radius2 <= 0.6
    generator = torch.Generator().manual_seed(3)
    noisy = phase + 0.1 * torch.randn(phase.shape, generator=generator, dtype=phase.dtype)
    unwrapped = laplacian_unwrap(helpers.wrap_to_pi(noisy), mask=mask)
    assert _error_range(unwrapped, noisy, interior) < 0.01
    assert _error_range(unwrapped, noisy, mask) < 0.03
    error = (unwrapped - phase)[mask]
    assert float((error - error.mean()).square().mean().sqrt()) < 0.11
    assert bool((unwrapped[~mask] == 0).all())


def test_box_solve_only_leaves_a_harmonic_error(helpers):
    """max_iterations=0: inside the mask the error is large but its Laplacian vanishes."""
    phase = _smooth_phase(helpers)
    x, y, z = helpers.grid(48)
    mask = (x / 21) ** 2 + (y / 18) ** 2 + (z / 20) ** 2 <= 1
    wrapped = helpers.wrap_to_pi(phase)
    box_only = laplacian_unwrap(wrapped, mask=mask, max_iterations=0)
    refined = laplacian_unwrap(wrapped, mask=mask)
    assert _error_range(box_only, phase, mask) > 5.0  # measured 17.7 rad
    assert _error_range(refined, phase, mask) < 0.01  # measured 3.8e-3 rad (tolerance 1e-3)
    inner = torch.from_numpy(ndimage.binary_erosion(mask.numpy(), iterations=2))
    laplacian = LaplacianOp(phase.shape, stencil="7", dtype=phase.dtype)
    error_laplacian = laplacian((box_only - phase) * mask)[inner]
    assert float(error_laplacian.abs().max()) < 1e-12 * float(laplacian(phase).abs().max())  # measured 5e-16


def test_batch_and_anisotropic_voxels(helpers):
    """Echoes as a leading axis give the per-volume results; voxel size only weights exact differences."""
    phase = 0.4 * _smooth_phase(helpers, n=24)  # ±8π, steps 0.61π
    echoes = torch.stack([phase, 0.5 * phase])
    batch = laplacian_unwrap(helpers.wrap_to_pi(echoes), voxel_size_mm=(1.0, 0.6, 2.0))
    assert batch.shape == echoes.shape
    for index in range(2):
        single = laplacian_unwrap(helpers.wrap_to_pi(echoes[index]), voxel_size_mm=(1.0, 0.6, 2.0))
        assert torch.allclose(batch[index], single)
        assert _error_range(batch[index], echoes[index], torch.ones(phase.shape, dtype=torch.bool)) < 1e-9


def test_validation():
    phase = torch.zeros(6, 6, 6)
    with pytest.raises(InputError, match="NaN"):
        laplacian_unwrap(torch.full((6, 6, 6), float("nan")))
    with pytest.raises(InputError, match="empty"):
        laplacian_unwrap(phase, mask=torch.zeros(6, 6, 6))
    with pytest.raises(InputError, match="mask shape"):
        laplacian_unwrap(phase, mask=torch.ones(6, 6, 5))
    with pytest.raises(InputError, match="complex"):
        laplacian_unwrap(torch.zeros(6, 6, 6, dtype=torch.complex64))
    with pytest.raises(InputError, match="3-D"):
        laplacian_unwrap(torch.zeros(6, 6))
    with pytest.raises(ParameterError, match="voxel_size_mm"):
        laplacian_unwrap(phase, voxel_size_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ParameterError, match="max_iterations"):
        laplacian_unwrap(phase, max_iterations=-1)
    with pytest.raises(ParameterError, match="tolerance"):
        laplacian_unwrap(phase, tolerance=-1.0)


@pytest.mark.parametrize("shape", [(17, 20, 23), (32, 16, 9)])
def test_cosine_transform_solve_equals_mirrored_fft(shape):
    from torchqsm.preprocess.unwrap.laplacian import _solve_by_dct, _solve_by_mirror

    rho = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    by_dct = _solve_by_dct(rho, (1.0, 0.8, 2.0))
    by_fft = _solve_by_mirror(rho, (1.0, 0.8, 2.0))
    assert by_dct.dtype == torch.float64 and by_dct.shape == shape
    assert float((by_dct - by_fft).abs().max()) < 1e-10 * float(by_fft.abs().max())


def test_nan_outside_the_mask_is_ignored(caplog):
    x = torch.arange(12, dtype=torch.float64)
    phase = torch.angle(torch.exp(1j * (0.6 * x)[:, None, None].expand(12, 6, 6)))
    mask = torch.zeros(12, 6, 6, dtype=torch.bool)
    mask[1:11, 1:5, 1:5] = True
    dirty = torch.where(mask, phase, torch.nan)
    with caplog.at_level("INFO", logger="torchqsm"):
        result = laplacian_unwrap(dirty, mask=mask)
    assert torch.equal(result, laplacian_unwrap(phase, mask=mask))
    assert "outside the mask set to zero" in caplog.text
    dirty[5, 2, 2] = torch.nan
    with pytest.raises(InputError, match="1 NaN or infinite voxels inside the mask"):
        laplacian_unwrap(dirty, mask=mask)


def test_congruent_restores_the_phase_next_to_an_aliased_source(helpers):
    """A compact source whose gradient breaks Itoh's condition (steps up to 1.48π): the least-squares
    estimate is flattened around it; the congruent result is the wrapped input plus multiples of 2π and
    equals the true phase (up to one constant) in all but the aliased core."""
    n = 48
    phase = _smooth_phase(helpers, n=n) / 4
    coords = helpers.grid(n)
    phase = phase + 16.0 * helpers.gaussian(coords, (2.0, -3.0, 1.0), 2.2)
    x, y, z = coords
    mask = (x / 21) ** 2 + (y / 18) ** 2 + (z / 20) ** 2 <= 1
    assert float(helpers.max_step(phase, mask)) > 1.2 * math.pi
    wrapped = helpers.wrap_to_pi(phase)
    smooth = laplacian_unwrap(wrapped, mask=mask)
    exact = laplacian_unwrap(wrapped, mask=mask, congruent=True)
    turns = (exact - wrapped)[mask] / (2 * math.pi)
    assert float((turns - turns.round()).abs().max()) < 1e-6  # the data's own phase, plus 2π k
    offset = torch.median((exact - phase)[mask])
    right = ((exact - phase - offset).abs() < 1e-6) & mask
    near = helpers.gaussian(coords, (2.0, -3.0, 1.0), 2.2) > 0.01  # within ~6.6 voxels of the source
    assert bool(right[mask & ~near].all())  # measured: 67 of 31 672 voxels wrong, all in the aliased core
    assert float(right.sum()) > 0.995 * float(mask.sum())
    smooth_error = (smooth - phase)[mask]
    assert float((smooth_error - smooth_error.median()).abs().max()) > 5.0  # measured 10.5 rad near the source
    with pytest.raises(ParameterError):
        laplacian_unwrap(wrapped, mask=mask, max_iterations=-1, congruent=True)
