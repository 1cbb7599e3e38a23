"""Unit conversions (phase, Hz, ppm) and the B0 direction / voxel size from a NIfTI affine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchqsm.physics import (
    GAMMA_BAR_MHZ_PER_T,
    b0_dir_from_affine,
    hz_per_ppm,
    hz_to_phase,
    hz_to_ppm,
    normalize_b0_dir,
    phase_to_hz,
    phase_to_ppm,
    ppm_to_hz,
    ppm_to_phase,
    radians_per_ppm,
    tilt_b0_dir,
    voxel_size_from_affine,
)

# ---------------------------------------------------------------------------
# Units.
# ---------------------------------------------------------------------------


def test_one_ppm_at_three_tesla():
    assert GAMMA_BAR_MHZ_PER_T == pytest.approx(42.577478, abs=1e-6)
    assert ppm_to_hz(1.0, b0_tesla=3.0) == pytest.approx(127.7324, abs=5e-5)
    assert hz_per_ppm(3.0) == pytest.approx(3 * 42.577478, rel=1e-15)
    assert hz_to_ppm(127.732434, b0_tesla=3.0) == pytest.approx(1.0, rel=1e-12)


def test_phase_at_ten_milliseconds():
    """1 ppm at 3 T for TE = 10 ms: 2π · 127.732434 Hz · 0.01 s = 8.025666 rad."""
    expected = 2 * math.pi * 127.732434 * 0.01
    assert ppm_to_phase(1.0, echo_time_s=0.01, b0_tesla=3.0) == pytest.approx(expected, rel=1e-12)
    assert radians_per_ppm(echo_time_s=0.01, b0_tesla=3.0) == pytest.approx(8.025666, abs=1e-6)
    assert hz_to_phase(100.0, echo_time_s=0.01) == pytest.approx(2 * math.pi, rel=1e-15)
    assert phase_to_hz(math.pi, echo_time_s=0.01) == pytest.approx(50.0, rel=1e-15)


def test_positive_field_gives_positive_phase():
    assert ppm_to_phase(0.2, echo_time_s=0.02, b0_tesla=7.0) > 0
    assert ppm_to_phase(-0.2, echo_time_s=0.02, b0_tesla=7.0) < 0


@pytest.mark.parametrize("b0_tesla", [1.5, 3.0, 7.0])
@pytest.mark.parametrize("echo_time_s", [0.004, 0.02])
def test_round_trips_on_tensors(b0_tesla, echo_time_s, torch_rng):
    phase = 3 * torch.randn(4, 5, 6, generator=torch_rng, dtype=torch.float64)
    hz = phase_to_hz(phase, echo_time_s=echo_time_s)
    ppm = hz_to_ppm(hz, b0_tesla=b0_tesla)
    assert isinstance(ppm, torch.Tensor) and ppm.dtype == torch.float64
    torch.testing.assert_close(phase_to_ppm(phase, echo_time_s=echo_time_s, b0_tesla=b0_tesla), ppm,
                               rtol=1e-14, atol=0)
    torch.testing.assert_close(hz_to_phase(ppm_to_hz(ppm, b0_tesla=b0_tesla), echo_time_s=echo_time_s), phase,
                               rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(ppm_to_phase(ppm, echo_time_s=echo_time_s, b0_tesla=b0_tesla), phase,
                               rtol=1e-14, atol=1e-15)


def test_round_trips_keep_float32():
    phase = torch.linspace(-3, 3, 7, dtype=torch.float32)
    ppm = phase_to_ppm(phase, echo_time_s=0.01, b0_tesla=3.0)
    assert ppm.dtype == torch.float32
    torch.testing.assert_close(ppm_to_phase(ppm, echo_time_s=0.01, b0_tesla=3.0), phase)


def test_round_trips_on_floats_and_arrays():
    assert phase_to_ppm(ppm_to_phase(0.37, echo_time_s=0.015, b0_tesla=3.0),
                        echo_time_s=0.015, b0_tesla=3.0) == pytest.approx(0.37, rel=1e-14)
    array = np.array([-1.0, 0.5, 2.0])
    np.testing.assert_allclose(hz_to_ppm(ppm_to_hz(array, b0_tesla=7.0), b0_tesla=7.0), array, rtol=1e-14)


@pytest.mark.parametrize("bad", [0.0, -0.01, float("nan"), float("inf")])
def test_bad_echo_time_raises(bad):
    with pytest.raises(ValueError, match="echo_time_s"):
        phase_to_hz(1.0, echo_time_s=bad)
    with pytest.raises(ValueError, match="echo_time_s"):
        hz_to_phase(1.0, echo_time_s=bad)
    with pytest.raises(ValueError, match="echo_time_s"):
        phase_to_ppm(1.0, echo_time_s=bad, b0_tesla=3.0)
    with pytest.raises(ValueError, match="echo_time_s"):
        ppm_to_phase(1.0, echo_time_s=bad, b0_tesla=3.0)


@pytest.mark.parametrize("bad", [0.0, -3.0, float("nan"), float("inf")])
def test_bad_field_strength_raises(bad):
    with pytest.raises(ValueError, match="b0_tesla"):
        hz_per_ppm(bad)
    with pytest.raises(ValueError, match="b0_tesla"):
        ppm_to_hz(1.0, b0_tesla=bad)
    with pytest.raises(ValueError, match="b0_tesla"):
        hz_to_ppm(1.0, b0_tesla=bad)
    with pytest.raises(ValueError, match="b0_tesla"):
        phase_to_ppm(1.0, echo_time_s=0.01, b0_tesla=bad)


# ---------------------------------------------------------------------------
# Geometry.
# ---------------------------------------------------------------------------


def rotation_about_x(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])


def affine_from(rotation: np.ndarray, voxel_size_mm) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(voxel_size_mm)
    affine[:3, 3] = (-90.0, 12.5, 40.0)  # the translation must not matter
    return affine


def test_identity_affine():
    assert b0_dir_from_affine(np.eye(4)) == (0.0, 0.0, 1.0)
    assert voxel_size_from_affine(np.eye(4)) == (1.0, 1.0, 1.0)


def test_rotated_anisotropic_affine():
    """Voxel axes rotated 30° about x: world z in voxel coordinates is Rᵀẑ = (0, sin 30°, cos 30°)."""
    affine = affine_from(rotation_about_x(30.0), (0.5, 0.7, 1.2))
    b = b0_dir_from_affine(affine)
    np.testing.assert_allclose(b, (0.0, 0.5, math.sqrt(3) / 2), atol=1e-12)
    np.testing.assert_allclose(voxel_size_from_affine(affine), (0.5, 0.7, 1.2), rtol=1e-12)
    assert np.linalg.norm(b) == pytest.approx(1.0, rel=1e-15)


def test_rotation_about_y_and_x():
    """R = R_y(β) R_x(α): Rᵀẑ = (-sin β, cos β sin α, cos β cos α), computed by hand."""
    alpha, beta = math.radians(20.0), math.radians(-35.0)
    r_y = np.array([[math.cos(beta), 0.0, math.sin(beta)], [0.0, 1.0, 0.0], [-math.sin(beta), 0.0, math.cos(beta)]])
    affine = affine_from(r_y @ rotation_about_x(20.0), (1.0, 2.0, 3.0))
    expected = (-math.sin(beta), math.cos(beta) * math.sin(alpha), math.cos(beta) * math.cos(alpha))
    np.testing.assert_allclose(b0_dir_from_affine(affine), expected, atol=1e-12)


def test_flipped_lps_like_affine():
    """diag(-1, -1, 1): x and y flipped, z kept, so B0 is still along the third array axis."""
    affine = affine_from(np.diag([-1.0, -1.0, 1.0]), (0.9, 0.9, 2.0))
    assert b0_dir_from_affine(affine) == (0.0, 0.0, 1.0)
    np.testing.assert_allclose(voxel_size_from_affine(affine), (0.9, 0.9, 2.0), rtol=1e-15)


def test_flipped_slice_axis():
    affine = affine_from(np.diag([1.0, 1.0, -1.0]), (1.0, 1.0, 1.0))
    assert b0_dir_from_affine(affine) == (0.0, 0.0, -1.0)


def test_sagittal_axis_order():
    """Array axes (y, z, x) of the world, e.g. a sagittal acquisition: B0 is along array axis 1."""
    permutation = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    affine = affine_from(permutation, (1.0, 0.8, 2.5))
    assert b0_dir_from_affine(affine) == (0.0, 1.0, 0.0)
    np.testing.assert_allclose(voxel_size_from_affine(affine), (1.0, 0.8, 2.5), rtol=1e-15)


def test_b0_dir_does_not_depend_on_voxel_size():
    rotation = rotation_about_x(-17.0)
    np.testing.assert_allclose(b0_dir_from_affine(affine_from(rotation, (1.0, 1.0, 1.0))),
                               b0_dir_from_affine(affine_from(rotation, (0.3, 2.0, 5.0))), atol=1e-14)


@pytest.mark.parametrize("bad", [np.eye(3), np.full((4, 4), np.nan), np.diag([1.0, 0.0, 1.0, 1.0])])
def test_bad_affine_raises(bad):
    with pytest.raises(ValueError):
        voxel_size_from_affine(bad)
    with pytest.raises(ValueError):
        b0_dir_from_affine(bad)


def test_normalize_b0_dir():
    assert normalize_b0_dir((0.0, 0.0, 2.0)) == (0.0, 0.0, 1.0)
    np.testing.assert_allclose(normalize_b0_dir([3.0, 0.0, 4.0]), (0.6, 0.0, 0.8), rtol=1e-15)
    np.testing.assert_allclose(normalize_b0_dir(np.array([[1.0], [1.0], [1.0]])), [1 / math.sqrt(3)] * 3)


@pytest.mark.parametrize("bad", [(0.0, 0.0, 0.0), (0.0, float("nan"), 1.0), (float("inf"), 0.0, 1.0),
                                 (0.0, 1.0), (1.0, 0.0, 0.0, 0.0)])
def test_normalize_b0_dir_rejects(bad):
    with pytest.raises(ValueError, match="b0_dir"):
        normalize_b0_dir(bad)


@pytest.mark.parametrize("angle", [0.0, 15.0, 30.0, 90.0, -45.0])
@pytest.mark.parametrize("about", [0, 1])
def test_tilt_b0_dir(angle, about):
    b = tilt_b0_dir(angle, about=about)
    assert np.linalg.norm(b) == pytest.approx(1.0, rel=1e-15)
    assert math.degrees(math.acos(b[2])) == pytest.approx(abs(angle), abs=1e-9)
    assert b[about] == 0.0  # the rotation axis' component stays zero
    a = math.radians(angle)
    expected = (0.0, -math.sin(a), math.cos(a)) if about == 0 else (math.sin(a), 0.0, math.cos(a))
    np.testing.assert_allclose(b, expected, atol=1e-15)


def test_tilt_b0_dir_rejects_third_axis():
    with pytest.raises(ValueError, match="about"):
        tilt_b0_dir(10.0, about=2)
