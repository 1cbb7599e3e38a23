"""Echo combination: exact line fits, optimal noise weighting, units, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.physics.units import GAMMA_BAR_MHZ_PER_T
from torchqsm.preprocess.echoes import (
    EchoFit,
    combine_echoes,
    field_ppm_from_frequency,
    per_echo_frequencies,
)

SHAPE = (24, 24, 24)
TE = torch.tensor([0.004, 0.008, 0.012, 0.016, 0.020, 0.024], dtype=torch.float64)
T2STAR_S = 0.015


@pytest.fixture
def truth(torch_rng):
    """ω (rad/s, ±100 Hz), φ0 (rad, ±1) and the T2*-decaying magnitude (E, X, Y, Z)."""
    omega = (torch.rand(SHAPE, generator=torch_rng, dtype=torch.float64) - 0.5) * 2 * math.pi * 100
    offset = torch.rand(SHAPE, generator=torch_rng, dtype=torch.float64) * 2 - 1
    magnitude = torch.exp(-TE / T2STAR_S).reshape(-1, 1, 1, 1).expand(-1, *SHAPE).clone()
    return omega, offset, magnitude


def _phase(omega, offset):
    return offset + omega * TE.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("method", ["weighted_fit", "fit"])
def test_noise_free_recovery(truth, method):
    omega, offset, magnitude = truth
    fit = combine_echoes(_phase(omega, offset), echo_times_s=TE, magnitude=magnitude, method=method)
    assert isinstance(fit, EchoFit) and fit.frequency_rad_per_s.shape == SHAPE
    torch.testing.assert_close(fit.frequency_rad_per_s, omega, rtol=0, atol=1e-8)
    torch.testing.assert_close(fit.phase_offset_rad, offset, rtol=0, atol=1e-10)
    assert float(fit.residual_rad.max()) < 1e-10


def test_noise_free_without_offset_and_float32(truth):
    omega, _, magnitude = truth
    phase = _phase(omega, torch.zeros(SHAPE, dtype=torch.float64)).float()
    for method in ("weighted_fit", "fit", "average"):
        fit = combine_echoes(phase, echo_times_s=TE.tolist(), magnitude=magnitude.float(), method=method,
                             fit_offset=False)
        assert fit.frequency_rad_per_s.dtype == torch.float32
        torch.testing.assert_close(fit.frequency_rad_per_s, omega.float(), rtol=1e-5, atol=1e-3)
        assert not fit.phase_offset_rad.any()


@pytest.mark.parametrize("fit_offset", [True, False])
def test_weighted_fit_is_optimal(truth, torch_rng, fit_offset):
    # phase noise σ/m_e grows with TE as the magnitude decays; weights m_e² are the inverse variances
    omega, offset, magnitude = truth
    sigma = 0.05
    offset = offset if fit_offset else torch.zeros_like(offset)
    noise = sigma / magnitude * torch.randn(magnitude.shape, generator=torch_rng, dtype=torch.float64)
    phase = _phase(omega, offset) + noise

    def rmse(method: str) -> float:
        fit = combine_echoes(phase, echo_times_s=TE, magnitude=magnitude, method=method, fit_offset=fit_offset)
        return float((fit.frequency_rad_per_s - omega).pow(2).mean().sqrt())

    w = torch.exp(-2 * TE / T2STAR_S)
    centre = (w * TE).sum() / w.sum() if fit_offset else 0.0
    theory = float(sigma / torch.sqrt((w * (TE - centre) ** 2).sum()))  # Gauss–Markov standard deviation
    weighted, unweighted = rmse("weighted_fit"), rmse("fit")
    # measured (rad/s): offset fit 7.91 vs theory 7.90, unweighted 10.25; origin 4.22 vs 4.19, unweighted 5.21
    assert weighted == pytest.approx(theory, rel=0.03)
    assert weighted < 0.85 * unweighted


def test_origin_fit_is_magnitude_squared_te_squared_average(truth, torch_rng):
    # Wu 2012 / Robinson 2017: average of φ_e/TE_e weighted by m_e² TE_e², the same estimate
    omega, _, magnitude = truth
    magnitude = magnitude * (0.5 + torch.rand(magnitude.shape, generator=torch_rng, dtype=torch.float64))
    phase = _phase(omega, 0.0) + 0.1 * torch.randn(magnitude.shape, generator=torch_rng, dtype=torch.float64)
    fit = combine_echoes(phase, echo_times_s=TE, magnitude=magnitude, fit_offset=False)
    weights = magnitude**2 * TE.reshape(-1, 1, 1, 1) ** 2
    average = (weights * per_echo_frequencies(phase, echo_times_s=TE)).sum(0) / weights.sum(0)
    torch.testing.assert_close(fit.frequency_rad_per_s, average, rtol=1e-12, atol=1e-9)


def test_degenerate_weights_fall_back_to_equal_weights(truth):
    omega, offset, magnitude = truth
    magnitude = magnitude.clone()
    magnitude[:, 0, 0, 0] = 0.0  # no signal in any echo
    magnitude[1:, 1, 0, 0] = 0.0  # signal in the first echo only: slope not identified by the weights
    fit = combine_echoes(_phase(omega, offset), echo_times_s=TE, magnitude=magnitude)
    assert torch.isfinite(fit.frequency_rad_per_s).all()
    torch.testing.assert_close(fit.frequency_rad_per_s, omega, rtol=0, atol=1e-8)


def test_residual_flags_an_unwrapping_error(truth):
    omega, offset, magnitude = truth
    phase = _phase(omega, offset)
    phase[3, 5, 5, 5] += 2 * math.pi  # one echo off by a wrap
    fit = combine_echoes(phase, echo_times_s=TE, magnitude=magnitude, method="fit")
    assert float(fit.residual_rad[5, 5, 5]) > 1.0
    fit.residual_rad[5, 5, 5] = 0
    assert float(fit.residual_rad.max()) < 1e-10


def test_single_echo_and_mask(truth):
    omega, _, _ = truth
    phase = omega * 0.01
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[4:20, 4:20, 4:20] = True
    fit = combine_echoes(phase, echo_times_s=[0.01], method="fit", mask=mask)
    assert fit.frequency_rad_per_s.shape == SHAPE
    torch.testing.assert_close(fit.frequency_rad_per_s, omega * mask, rtol=1e-12, atol=1e-9)
    assert not fit.frequency_rad_per_s[~mask].any() and float(fit.residual_rad.max()) < 1e-12
    with pytest.raises(ParameterError, match="at least two echoes"):
        combine_echoes(phase, echo_times_s=[0.01], method="fit", fit_offset=True)
    torch.testing.assert_close(per_echo_frequencies(phase, echo_times_s=[0.01]), omega)


def test_per_echo_frequencies_and_batches(truth):
    omega, offset, magnitude = truth
    phase = _phase(omega, offset)
    frequencies = per_echo_frequencies(phase, echo_times_s=TE)
    assert frequencies.shape == phase.shape
    # the offset leaks in as φ0/TE: largest at the first echo
    torch.testing.assert_close(frequencies[0] - omega, offset / TE[0])
    batched = combine_echoes(torch.stack([phase, 2 * phase]), echo_times_s=TE, method="fit")
    assert batched.frequency_rad_per_s.shape == (2, *SHAPE)
    torch.testing.assert_close(batched.frequency_rad_per_s[1], 2 * omega)


def test_units_one_ppm_at_three_tesla():
    # 1 ppm at 3 T is 127.73 Hz, i.e. ω = 2π·127.73 rad/s
    assert GAMMA_BAR_MHZ_PER_T * 3.0 == pytest.approx(127.7324, abs=1e-4)
    omega = torch.tensor(2 * math.pi * 127.7324, dtype=torch.float64)
    assert float(field_ppm_from_frequency(omega, b0_tesla=3.0)) == pytest.approx(1.0, rel=1e-6)
    omega = torch.tensor(2 * math.pi * GAMMA_BAR_MHZ_PER_T * 3.0, dtype=torch.float64)
    te = [0.005, 0.010, 0.015]
    phase = torch.stack([omega * t * torch.ones(2, 2, 2, dtype=torch.float64) for t in te])
    fit = combine_echoes(phase, echo_times_s=te, method="fit")
    torch.testing.assert_close(fit.field_ppm(b0_tesla=3.0), torch.ones(2, 2, 2, dtype=torch.float64))
    with pytest.raises(ParameterError, match="b0_tesla"):
        field_ppm_from_frequency(omega, b0_tesla=0.0)


def test_validation(truth):
    omega, offset, magnitude = truth
    phase = _phase(omega, offset)
    with pytest.raises(InputError, match="echo times are missing"):
        combine_echoes(phase, echo_times_s=None, method="fit")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="5 echo times for 6 echoes"):
        combine_echoes(phase, echo_times_s=TE[:5], method="fit")
    with pytest.raises(ParameterError, match="positive"):
        combine_echoes(phase, echo_times_s=[0.0, 0.004, 0.008, 0.012, 0.016, 0.020], method="fit")
    with pytest.raises(ParameterError, match="strictly increasing"):
        combine_echoes(phase, echo_times_s=TE.flip(0), method="fit")
    with pytest.raises(ParameterError, match="milliseconds"):
        combine_echoes(phase, echo_times_s=TE * 1000, method="fit")
    with pytest.raises(InputError, match="magnitude is required"):
        combine_echoes(phase, echo_times_s=TE)
    with pytest.raises(InputError, match="magnitude shape"):
        combine_echoes(phase, echo_times_s=TE, magnitude=magnitude[:3])
    with pytest.raises(InputError, match="magnitude must be finite and non-negative"):
        combine_echoes(phase, echo_times_s=TE, magnitude=-magnitude)
    with pytest.raises(ParameterError, match="method must be"):
        combine_echoes(phase, echo_times_s=TE, method="median")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="not possible with method='average'"):
        combine_echoes(phase, echo_times_s=TE, method="average", fit_offset=True)
    with pytest.raises(InputError, match="mask shape"):
        combine_echoes(phase, echo_times_s=TE, method="fit", mask=torch.ones(4, 4, 4, dtype=torch.bool))
    bad = phase.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="unwrapped_phase_rad has 1 NaN"):
        combine_echoes(bad, echo_times_s=TE, method="fit")
    with pytest.raises(InputError, match=r"must be \(E, X, Y, Z\)"):
        combine_echoes(phase[0, 0], echo_times_s=[0.01], method="fit")


def test_shared_invivo_echoes(shared_data):
    # real 3-echo data (TE 4, 8, 12 ms): rescale, unwrap along echoes only (the first echo's
    # spatial wraps are the same 2πn in every echo, so the fitted offset absorbs them), fit
    nib = pytest.importorskip("nibabel")
    from torchqsm.preprocess.phase import rescale_phase, wrap_phase

    def load(name: str) -> torch.Tensor:
        data = nib.load(shared_data / "gre-invivo-small" / name).dataobj
        return torch.from_numpy(np.asarray(data, dtype=np.float32)).movedim(-1, 0)

    phase, magnitude = rescale_phase(load("phase.nii")).phase_rad, load("mag.nii")
    steps = wrap_phase(torch.diff(phase, dim=0))
    unwrapped = torch.cat([phase[:1], phase[:1] + torch.cumsum(steps, dim=0)])
    fit = combine_echoes(unwrapped, echo_times_s=[0.004, 0.008, 0.012], magnitude=magnitude)
    bright = magnitude[0] > magnitude[0].median()
    frequency_hz = fit.frequency_rad_per_s[bright] / (2 * math.pi)
    # measured: mean residual 0.019 rad (0.036/0.037 with the phase scale off by -/+5 %),
    # frequency 1st..99th percentile -106..65 Hz
    assert float(fit.residual_rad[bright].mean()) < 0.025
    assert -150 < float(frequency_hz.quantile(0.01)) < float(frequency_hz.quantile(0.99)) < 150


def test_nan_outside_the_mask_is_ignored(truth):
    omega, offset, magnitude = truth
    phase = _phase(omega, offset)
    mask = torch.zeros(phase.shape[-3:], dtype=torch.bool)
    mask[1:-1, 1:-1, 1:-1] = True
    outside = ~mask
    clean = combine_echoes(phase, echo_times_s=TE, magnitude=magnitude, mask=mask)
    dirty = combine_echoes(torch.where(outside, torch.nan, phase), echo_times_s=TE,
                           magnitude=torch.where(outside, -1.0, magnitude), mask=mask)
    assert torch.equal(clean.frequency_rad_per_s, dirty.frequency_rad_per_s)
    inside_nan = phase.clone()
    inside_nan[0, 2, 2, 2] = float("nan")
    with pytest.raises(InputError, match="1 NaN or infinite voxels inside the mask"):
        combine_echoes(inside_nan, echo_times_s=TE, magnitude=magnitude, mask=mask)
