"""Echo combination by consecutive phase differences: offset cancels, frequency recovered."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.preprocess import combine_differences, echo_differences, laplacian_unwrap

ECHO_TIMES = (0.004, 0.012, 0.020, 0.028)


def test_frequency_recovered_and_receive_offset_cancels():
    shape = (24, 20, 16)
    x, y, z = torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=torch.float64) for n in shape], indexing="ij")
    omega = 300.0 * x + 150.0 * y * z + 80.0  # rad/s: the 28 ms echo spans ±9.6 rad
    offset = 2.5 * torch.cos(2.0 * x) * torch.sin(y + 0.3)  # receive phase, up to ±2.5 rad
    phase = torch.stack([torch.angle(torch.exp(1j * (offset + omega * te))) for te in ECHO_TIMES])
    magnitude = torch.stack([torch.full(shape, math.exp(-te * 30.0), dtype=torch.float64) for te in ECHO_TIMES])
    d = echo_differences(phase, echo_times_s=ECHO_TIMES, magnitude=magnitude)
    assert d.phase_rad.shape == (3, *shape) and float(d.phase_rad.abs().max()) <= math.pi
    unwrapped = laplacian_unwrap(d.phase_rad)
    estimate = combine_differences(unwrapped, delta_te_s=d.delta_te_s, weights=d.weights)
    # Laplacian unwrapping fixes each difference up to a constant multiple of 2π; compare up to that.
    error = estimate - omega
    error = error - torch.round(error.mean() * 0.008 / (2 * math.pi)) * 2 * math.pi / 0.008
    assert float(error.abs().max()) < 1e-6


def test_weights_follow_the_noise_of_each_difference():
    magnitude = torch.tensor([2.0, 1.0, 0.5]).reshape(3, 1, 1, 1)
    d = echo_differences(torch.zeros(3, 1, 1, 1), echo_times_s=(0.005, 0.01, 0.015), magnitude=magnitude)
    # inverse variance of φ_{e+1} − φ_e with σ_e ∝ 1/m_e: 1 / (1/m_e² + 1/m_{e+1}²)
    assert d.weights.flatten().tolist() == pytest.approx([1 / (1 / 4 + 1), 1 / (1 + 4)])


def test_bad_inputs():
    with pytest.raises(InputError, match="at least 2 echoes"):
        echo_differences(torch.zeros(1, 2, 2, 2), echo_times_s=(0.01,))
    with pytest.raises(InputError, match="magnitude"):
        echo_differences(torch.zeros(2, 2, 2, 2), echo_times_s=(0.01, 0.02), magnitude=torch.ones(2, 2, 2, 3))
    with pytest.raises(ParameterError):
        combine_differences(torch.zeros(2, 2, 2, 2), delta_te_s=(0.01,))
