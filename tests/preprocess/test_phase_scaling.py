"""Phase rescaling: each storage convention is detected and mapped onto [-π, π)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.preprocess.phase import apply_phase_sign, rescale_phase, wrap_phase


@pytest.fixture
def true_phase(torch_rng) -> torch.Tensor:
    """Wrapped phase of a smooth field that wraps several times: visits the whole circle."""
    x = torch.linspace(-1, 1, 24, dtype=torch.float64)
    field = 9.0 * x[:, None, None] ** 2 + 4.0 * x[None, :, None] + 2.0 * x[None, None, :] ** 3
    field = field + 0.05 * torch.randn(field.shape, generator=torch_rng, dtype=torch.float64)
    return wrap_phase(field)


def _circular_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(wrap_phase((a - b).to(torch.float64)).abs().max())


def _in_range(phase_rad: torch.Tensor) -> bool:
    return bool((phase_rad >= -math.pi).all() and (phase_rad < math.pi).all())


def test_radians_left_unchanged(true_phase):
    phase32 = true_phase.to(torch.float32)
    out = rescale_phase(phase32)
    assert out.kind == "radians" and out.scale == 1.0 and out.offset == 0.0
    assert out.phase_rad.dtype == torch.float32
    assert torch.equal(out.phase_rad, phase32)
    assert "radians" in out.message


def test_radians_zero_to_two_pi_are_wrapped(true_phase):
    out = rescale_phase(torch.remainder(true_phase, 2 * math.pi))
    assert out.kind == "radians" and "[0, 2π)" in out.message
    assert _in_range(out.phase_rad)
    assert _circular_error(out.phase_rad, true_phase) < 1e-12


def test_siemens_signed_integers(true_phase):
    # DICOM: stored 0..4095, rescale slope 2, intercept -4096 -> even values -4096..4094
    stored = 2 * torch.floor((true_phase + math.pi) / (2 * math.pi) * 4096) - 4096
    out = rescale_phase(stored.to(torch.int32))
    assert out.kind == "integer_4096"
    assert out.scale == pytest.approx(math.pi / 4096) and out.offset == 0.0
    assert out.message == "phase looked like integers in [-4096, 4094]; rescaled by π/4096"
    assert out.phase_rad.dtype == torch.float32 and _in_range(out.phase_rad)
    assert _circular_error(out.phase_rad, true_phase) < 2 * math.pi / 4096 + 1e-6


def test_siemens_unsigned_integers_are_centred(true_phase):
    stored = torch.floor((true_phase + math.pi) / (2 * math.pi) * 4096)
    out = rescale_phase(stored)  # float64 holding integers
    assert out.kind == "integer_4096" and out.offset == 2048.0
    assert out.scale == pytest.approx(math.pi / 2048)
    assert "centred on 2048" in out.message
    assert out.phase_rad.dtype == torch.float64
    assert _circular_error(out.phase_rad, true_phase) < 2 * math.pi / 4096 + 1e-12


def test_uint16_full_range(true_phase):
    stored = np.floor((true_phase.numpy() + math.pi) / (2 * math.pi) * 65536).astype(np.uint16)
    out = rescale_phase(torch.from_numpy(stored))
    assert out.kind == "integer_other" and out.offset == 32768.0
    assert out.scale == pytest.approx(math.pi / 32768)
    assert "16-bit unsigned integers" in out.message
    assert _circular_error(out.phase_rad, true_phase) < 2 * math.pi / 65536 + 1e-6


def test_partial_integer_range_is_arbitrary(true_phase):
    # milliradians as integers (-3142..3141) fill only 77 % of 13-bit: read as a linear map
    stored = torch.round(true_phase * 1000)
    out = rescale_phase(stored)
    assert out.kind == "arbitrary"
    assert out.scale == pytest.approx(1e-3, rel=1e-3)
    assert _circular_error(out.phase_rad, true_phase) < 2e-3


def test_arbitrary_scaled_levels(true_phase):
    # 4096 bin-centred levels scaled to ±0.00367, as in the shared in-vivo file
    levels = torch.floor((true_phase + math.pi) / (2 * math.pi) * 4096)
    step = 0.0036743774 / 2047.5
    stored = ((levels - 2047.5) * step).to(torch.float32)
    out = rescale_phase(stored, name="phase.nii")
    assert out.kind == "arbitrary" and "(4096 levels)" in out.message
    assert out.message.startswith("phase.nii looked like arbitrary units")
    assert out.scale == pytest.approx(2 * math.pi / (4096 * step), rel=1e-4)
    assert _circular_error(out.phase_rad, true_phase) < 2 * math.pi / 4096


def test_continuous_arbitrary_floats(true_phase):
    stored = (true_phase + math.pi) * 100.0 + 17.0  # continuous, far outside ±π
    out = rescale_phase(stored)
    assert out.kind == "arbitrary" and "levels" not in out.message
    # continuous: observed min..max is taken as the full circle, exact up to the unvisited sliver
    assert _circular_error(out.phase_rad, true_phase) < 0.05


def test_assume_overrides(true_phase):
    small = 0.1 * true_phase  # continuous and within ±π: radians by default
    assert rescale_phase(small).kind == "radians"
    forced = rescale_phase(small, assume="arbitrary")
    assert forced.kind == "arbitrary" and _circular_error(forced.phase_rad, true_phase) < 0.05
    with pytest.raises(InputError, match="not n-bit integer phase"):
        rescale_phase(small, assume="integer")
    with pytest.raises(ParameterError, match="assume"):
        rescale_phase(small, assume="degrees")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0.0, 4095.0])
def test_constant_phase_is_an_error(value):
    with pytest.raises(InputError, match=rf"echo1 is constant \(all values {value:.4g}\)"):
        rescale_phase(torch.full((4, 4, 4), value), name="echo1")


def test_bad_values_are_errors():
    phase = torch.zeros(4, 4, 4)
    phase[0, 0, 0] = float("nan")
    phase[1, 0, 0] = 1.0
    with pytest.raises(InputError, match="phase has 1 NaN or infinite voxels"):
        rescale_phase(phase)
    with pytest.raises(InputError, match="complex"):
        rescale_phase(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(InputError, match="empty"):
        rescale_phase(torch.zeros(0))


def test_phase_sign():
    phase = torch.tensor([-math.pi, -1.0, 0.0, 2.5], dtype=torch.float64)
    flipped = apply_phase_sign(phase, sign=-1)
    assert flipped.tolist() == [-math.pi, 1.0, 0.0, -2.5]
    assert apply_phase_sign(phase, sign=1) is phase
    with pytest.raises(ParameterError, match="sign must be 1 or -1"):
        apply_phase_sign(phase, sign=0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="floating-point"):
        apply_phase_sign(torch.tensor([1, 2]), sign=-1)


def test_shared_invivo_phase(shared_data):
    nib = pytest.importorskip("nibabel")
    stored = np.asarray(nib.load(shared_data / "gre-invivo-small" / "phase.nii").dataobj, dtype=np.float32)
    phase = torch.from_numpy(stored).movedim(-1, 0)  # (E, X, Y, Z), TE 4, 8, 12 ms
    out = rescale_phase(phase, name="phase.nii")
    assert out.kind == "arbitrary" and "(4096 levels)" in out.message
    assert out.scale == pytest.approx(854.79, rel=1e-3)
    assert _in_range(out.phase_rad)
    # equal echo spacing: phi1 - 2 phi2 + phi3 = 0 up to noise, but only at the right scale;
    # measured mean |.| over the brighter half: 0.083 at 1.0x, 0.154 at 0.95x, 0.158 at 1.05x
    magnitude = torch.from_numpy(np.asarray(
        nib.load(shared_data / "gre-invivo-small" / "mag.nii").dataobj, dtype=np.float32))[..., 0]
    bright = magnitude > magnitude.median()

    def curvature(factor: float) -> float:
        p = wrap_phase(out.phase_rad * factor)
        return float(wrap_phase(p[0] - 2 * p[1] + p[2])[bright].abs().mean())

    assert curvature(1.0) < 0.1
    assert curvature(1.0) < 0.7 * min(curvature(0.95), curvature(1.05))
