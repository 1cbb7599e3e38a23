"""ROMEO edge quality: each term against its formula; voxel quality."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.preprocess.unwrap import romeo_quality, voxel_quality


def _ramp(step, n=8):
    """Phase stepping ``step`` rad per voxel along x, wrapped, shape (n, 3, 3)."""
    x = torch.arange(n, dtype=torch.float64)[:, None, None].expand(n, 3, 3)
    return torch.angle(torch.exp(1j * step * x))


@pytest.mark.parametrize("step", [0.0, 0.5, 2.0, -3.0, 4.0])
def test_phase_coherence_is_one_minus_wrapped_step_over_pi(step):
    quality = romeo_quality(_ramp(step))
    wrapped_step = math.remainder(step, 2 * math.pi)
    assert torch.allclose(quality[0, :-1], torch.full((7, 3, 3), 1 - abs(wrapped_step) / math.pi, dtype=torch.float64))
    assert bool((quality[0, -1] == 0).all())  # no neighbour beyond the last slice
    assert bool((quality[1, :, :-1] == 1).all() and (quality[2, :, :, :-1] == 1).all())  # constant along y, z


@pytest.mark.parametrize(("step", "expected"), [(0.4, 1.0), (1.25 * math.pi, 0.0), (0.7 * math.pi, 0.0)])
def test_second_echo_gradient_coherence(step, expected):
    """TE2 = 2 TE1: consistent below π/2 per voxel; aliased (echo 1 or echo 2) steps score 0."""
    single = romeo_quality(_ramp(step))
    dual = romeo_quality(_ramp(step), phase2_rad=_ramp(2 * step), echo_times_s=(0.004, 0.008))
    assert torch.allclose(dual[0, :-1], expected * single[0, :-1])


def test_magnitude_terms():
    """(min/max)² coherence and the low-signal weight 1/2 + 1/2 min(1, m_min / (m_ref/2))."""
    magnitude = torch.ones(8, 3, 3, dtype=torch.float64)
    magnitude[4] = 0.5  # half the signal: weight 1 (0.5 >= m_ref/2), coherence 1/4
    magnitude[6] = 0.1  # weak signal: weight 0.6, coherence 1/100
    quality = romeo_quality(_ramp(0.0), magnitude=magnitude)[0, :, 0, 0]
    expected = torch.tensor([1, 1, 1, 0.25, 0.25, 0.01 * 0.6, 0.01 * 0.6, 0], dtype=torch.float64)
    assert torch.allclose(quality, expected)
    # A magnitude of zero gives quality 0 (no division by zero).
    magnitude[2] = 0.0
    assert bool((romeo_quality(_ramp(0.0), magnitude=magnitude)[0, 1:3] == 0).all())


def test_mask_and_range():
    generator = torch.Generator().manual_seed(0)
    phase = (torch.rand(10, 9, 8, generator=generator) * 2 - 1) * math.pi
    mask = torch.zeros(10, 9, 8, dtype=torch.bool)
    mask[2:8, 1:7, 1:6] = True
    quality = romeo_quality(phase, magnitude=torch.rand(10, 9, 8, generator=generator), mask=mask)
    assert quality.shape == (3, 10, 9, 8) and quality.dtype == torch.float32
    assert bool((quality >= 0).all() and (quality <= 1).all())
    assert bool((quality[:, ~mask] == 0).all())
    assert bool((quality[0, 7] == 0).all())  # edges from x = 7 leave the mask


def test_voxel_quality_is_mean_of_touching_edges():
    generator = torch.Generator().manual_seed(1)
    edges = torch.rand(3, 5, 4, 3, generator=generator, dtype=torch.float64)
    for axis, n in enumerate((5, 4, 3)):  # no edges past the last slice
        edges[(axis,) + (slice(None),) * axis + (n - 1,)] = 0
    result = voxel_quality(edges)
    for index in [(0, 0, 0), (2, 1, 1), (4, 3, 2), (1, 3, 0)]:
        touching, count = [], 0
        for axis in range(3):
            if index[axis] + 1 < edges.shape[axis + 1]:
                touching.append(edges[(axis,) + index]); count += 1
            if index[axis] > 0:
                before = list(index); before[axis] -= 1
                touching.append(edges[(axis,) + tuple(before)]); count += 1
        assert float(result[index]) == pytest.approx(float(sum(touching)) / count)


def test_validation():
    phase = torch.zeros(6, 6, 6)
    with pytest.raises(ParameterError, match="echo_times_s"):
        romeo_quality(phase, phase2_rad=phase)
    with pytest.raises(ParameterError, match="only used"):
        romeo_quality(phase, echo_times_s=(0.004, 0.008))
    with pytest.raises(ParameterError, match="different positive"):
        romeo_quality(phase, phase2_rad=phase, echo_times_s=(0.004, 0.004))
    with pytest.raises(InputError, match="phase2_rad shape"):
        romeo_quality(phase, phase2_rad=torch.zeros(6, 6, 5), echo_times_s=(0.004, 0.008))
    with pytest.raises(InputError, match="magnitude shape"):
        romeo_quality(phase, magnitude=torch.ones(5, 6, 6))
    with pytest.raises(InputError, match="non-negative"):
        romeo_quality(phase, magnitude=-torch.ones(6, 6, 6))
    with pytest.raises(InputError, match="zero"):
        romeo_quality(phase, magnitude=torch.zeros(6, 6, 6))
    with pytest.raises(InputError, match="NaN"):
        romeo_quality(torch.full((6, 6, 6), float("inf")))
    with pytest.raises(InputError, match=r"\(3, X, Y, Z\)"):
        voxel_quality(torch.ones(6, 6, 6))
