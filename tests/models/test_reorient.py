"""to_model_frame / ModelFrame.to_original: identity, round trip, rotated dipole physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.models.reorient import rotation_to_z, to_model_frame
from torchqsm.physics import tilt_b0_dir
from torchqsm.simulate import forward_field


def radius_mm(shape, voxel_size_mm):
    """Distance (mm) of each voxel from the grid's centre."""
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * h for n, h in zip(shape, voxel_size_mm)]
    return torch.sqrt(sum(x ** 2 for x in torch.meshgrid(*axes, indexing="ij")))


def soft_sphere(shape, voxel_size_mm, *, radius=7.0, edge=2.0):
    """χ (ppm) of a sphere with a smooth edge, centred on the grid: rotation-invariant."""
    return 0.1 * 0.5 * (1 - torch.tanh((radius_mm(shape, voxel_size_mm) - radius) / edge))


def relative_error(estimate, reference, mask):
    return float((estimate - reference)[mask].norm() / reference[mask].norm())


@pytest.mark.parametrize("b0_dir", [(0.3, -0.2, 0.9), (0.0, 1.0, 1.0), (0.5, 0.1, -0.8), (0.0, 0.0, -1.0)])
def test_rotation_is_minimal_and_proper(b0_dir):
    rotation = rotation_to_z(b0_dir)
    b = np.asarray(b0_dir) / np.linalg.norm(b0_dir)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    np.testing.assert_allclose(np.abs(rotation @ b), [0, 0, 1], atol=1e-12)
    angle = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
    assert angle == pytest.approx(np.degrees(np.arccos(abs(b[2]))), abs=1e-6)  # at most 90°


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_identity_when_already_in_the_model_frame(torch_rng, dtype, tolerance):
    field = torch.randn(20, 18, 16, generator=torch_rng, dtype=dtype)
    mask = torch.ones(20, 18, 16, dtype=torch.bool)
    mask[:3] = False
    rotated, rotated_mask, frame = to_model_frame(field, mask, voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1))
    assert rotated.shape == field.shape and rotated.dtype == dtype
    assert torch.equal(rotated_mask, mask)
    expected = torch.where(mask, field, 0)
    assert float((rotated - expected).abs().max()) < tolerance * float(field.abs().max())
    assert float((frame.to_original(rotated) - expected).abs().max()) < tolerance * float(field.abs().max())


def test_smooth_volume_round_trip():
    shape, voxel = (40, 40, 28), (1.0, 1.0, 1.5)
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * h for n, h in zip(shape, voxel)]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    field = 0.05 * torch.exp(-((x - 3) ** 2 + (y + 2) ** 2 + (z - 1) ** 2) / 72) * torch.cos(x / 5)
    field = field + 0.02 * torch.sin(y / 7 + z / 9)
    mask = radius_mm(shape, voxel) < 16
    rotated, rotated_mask, frame = to_model_frame(field.numpy(), mask.numpy(), voxel_size_mm=voxel,
                                                  b0_dir=tilt_b0_dir(25.0))
    assert isinstance(rotated, np.ndarray) and rotated.shape == frame.model_shape
    back = frame.to_original(rotated)
    assert isinstance(back, np.ndarray) and back.shape == shape
    back = torch.from_numpy(back)
    assert relative_error(back, field, mask) < 0.02  # measured 1.2 %
    assert relative_error(back, field, radius_mm(shape, voxel) < 13) < 0.01  # measured 0.7 % inside
    assert torch.all(back[~mask] == 0)


@pytest.mark.parametrize("voxel, tolerance", [((1.0, 1.0, 1.0), 0.025), ((1.0, 1.0, 1.25), 0.03)])
def test_tilted_sphere_field_matches_field_along_z_on_rotated_grid(voxel, tolerance):
    """Rotating a field into the model frame equals simulating with B0 along z there."""
    shape, b0_dir = (48, 48, 40), tilt_b0_dir(25.0)
    field = forward_field(soft_sphere(shape, voxel), voxel_size_mm=voxel, b0_dir=b0_dir, pad=24)
    mask = radius_mm(shape, voxel) < 16
    rotated, rotated_mask, frame = to_model_frame(field, mask, voxel_size_mm=voxel, b0_dir=b0_dir)
    assert frame.model_voxel_size_mm == (1.0, 1.0, 1.0)
    model_chi = soft_sphere(frame.model_shape, (1, 1, 1))
    along_z = forward_field(model_chi, b0_dir=(0, 0, 1), pad=24)
    # measured 1.4 % (1 mm) and 1.8 % (1×1×1.25 mm); without the rotation 73 %
    assert relative_error(rotated, along_z, rotated_mask) < tolerance
    unrotated = forward_field(model_chi, b0_dir=b0_dir, pad=24)
    assert relative_error(unrotated, along_z, rotated_mask) > 0.5


def test_bad_inputs():
    field, mask = torch.zeros(8, 8, 8), torch.ones(8, 8, 8)
    with pytest.raises(InputError, match="empty"):
        to_model_frame(field, 0 * mask, voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1))
    with pytest.raises(InputError, match="does not match"):
        to_model_frame(field, mask[:4], voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1))
    with pytest.raises(InputError, match="3-D"):
        to_model_frame(field[0], mask[0], voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1))
    with pytest.raises(ParameterError):
        to_model_frame(field, mask, voxel_size_mm=(1, 0, 1), b0_dir=(0, 0, 1))
    with pytest.raises(ParameterError):
        to_model_frame(field, mask, voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 0))
    _, _, frame = to_model_frame(field, mask, voxel_size_mm=(1, 1, 1), b0_dir=(0, 1, 1))
    with pytest.raises(InputError, match="model grid"):
        frame.to_original(field)
