"""NeXtQSM's background U-Net: shapes, and the two invariances of background removal it is built to keep."""

from __future__ import annotations

import pytest
import torch

from torchqsm.errors import ParameterError
from torchqsm.models import BACKGROUND_ARCHITECTURES, BackgroundUNet, build_model, task_of
from torchqsm.simulate import sphere
from torchqsm.train.config import config_from_dict


@pytest.fixture(scope="module")
def network() -> BackgroundUNet:
    torch.manual_seed(3)
    net = BackgroundUNet(base_channels=2, depth=2)
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for key, tensor in net.state_dict().items():
            if key.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif key.endswith("running_mean"):
                tensor.normal_(0.0, 0.1)
    net.eval().requires_grad_(False)
    return net


def _field_and_mask(shape=(13, 11, 10)):
    generator = torch.Generator().manual_seed(0)
    mask = (sphere(shape, radius=4.5) > 0.5).float()[None, None]
    total = torch.randn((1, 1, *shape), generator=generator) * mask
    return total, mask


def test_output_is_zero_outside_the_mask_and_keeps_any_shape(network) -> None:
    total, mask = _field_and_mask()
    local = network(total, mask)
    assert local.shape == total.shape
    assert float(local[mask == 0].abs().max()) == 0.0 and float(local[mask > 0].abs().max()) > 0.0


def test_linear_scaling_and_a_constant_offset_as_background_removal_requires(network) -> None:
    """local(α·total) = α·local(total) for α > 0, and a constant field is all background."""
    total, mask = _field_and_mask()
    local = network(total, mask)
    assert torch.allclose(network(7.5 * total, mask), 7.5 * local, rtol=1e-4, atol=1e-6)
    assert torch.allclose(network((total + 3.0) * mask, mask), local, rtol=1e-4, atol=1e-5)


def test_bad_shapes_are_refused(network) -> None:
    total, mask = _field_and_mask()
    with pytest.raises(ValueError, match="one shape"):
        network(total, mask[..., :-1])


def test_registered_with_its_task() -> None:
    assert BACKGROUND_ARCHITECTURES == ("background-unet",) and task_of("background-unet") == "total_to_local"
    assert isinstance(build_model("background-unet", base_channels=2, depth=1), BackgroundUNet)


def test_a_training_configuration_needs_the_total_field_task_and_may_use_whole_volumes() -> None:
    with pytest.raises(ParameterError, match="task must be total_to_local"):
        config_from_dict({"model": {"architecture": "background-unet"}})
    config = config_from_dict({"model": {"architecture": "background-unet"},
                               "data": {"task": "total_to_local", "patch_size": [], "region_size": []}})
    assert config.data.patch_size is None and config.data.region_size is None


def test_smv_inputs_make_a_harmonic_background_invisible():
    """With SHARP high-passes as inputs, a harmonic field added to the total field changes nothing
    (a quadratic harmonic: the discrete spheres' mean-value property is exact for it), and the map stays
    homogeneous of degree one; the raw-field design sees the harmonic field."""
    torch.manual_seed(0)
    shape = (1, 1, 20, 21, 22)
    mask = torch.zeros(shape, dtype=torch.float64)
    mask[..., 3:17, 3:18, 3:19] = 1
    x, y, z = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape[2:]), indexing="ij")
    harmonic = (0.3 * x - 0.2 * z + 0.05 * ((y - 10) ** 2 - (z - 11) ** 2) + 0.02 * x * y)[None, None]
    total = torch.randn(shape, dtype=torch.float64)
    smv = BackgroundUNet(base_channels=2, depth=2, smv_radii=(1, 2, 4)).double().eval()
    raw = BackgroundUNet(base_channels=2, depth=2).double().eval()
    with torch.no_grad():
        local = smv(total, mask)
        assert torch.allclose(smv(total + 10 * harmonic, mask), local, atol=1e-9)
        assert torch.allclose(smv(7 * total, mask), 7 * local, atol=1e-9)
        assert not torch.allclose(raw(total + 10 * harmonic, mask), raw(total, mask), atol=1e-3)
    assert bool((local[mask == 0] == 0).all())
    with pytest.raises(ValueError, match="smv_radii"):
        BackgroundUNet(smv_radii=(0, 2))
