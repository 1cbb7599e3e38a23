"""predict: padding, tiling (explicit and automatic), input validation, numpy/tensor round trips."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from torchqsm.errors import InputError
from torchqsm.models import Normalization, UNet3d
from torchqsm.models.inference import crop, estimate_memory_mb, pad_to_multiple, plan_tiles, predict

NORMALIZATION = Normalization(input_scale_ppm=0.02, output_scale_ppm=0.1)


def smooth_case(shape, seed=7):
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.standard_normal(shape), 4.0)
    field = 0.05 * field / field.std()
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    mask = (grid ** 2).sum(0) < 0.8
    return torch.tensor(field, dtype=torch.float32), torch.tensor(mask)


def relative_error(a, b, mask):
    return float((a - b)[mask].norm() / b[mask].norm())


@pytest.fixture(scope="module")
def dfqsm_case():
    """The DF-QSM-shaped U-Net (depth 4) at 4 base channels, random weights, a 160×48×32 smooth field."""
    torch.manual_seed(0)
    net = UNet3d(base_channels=4, depth=4).eval()
    field, mask = smooth_case((160, 48, 32))
    whole = predict(net, field, mask, normalization=NORMALIZATION, max_memory_mb=float("inf"))
    return net, field, mask, whole


def test_tiled_equals_whole_with_default_halo(dfqsm_case, caplog):
    net, field, mask, whole = dfqsm_case
    assert float(whole[mask].abs().max()) > 0
    with caplog.at_level(logging.INFO, logger="torchqsm.models.tiling"):
        tiled = predict(net, field, mask, normalization=NORMALIZATION, tile_size=(48, 48, 32))
    # cores at 0, 32, 64, 96, 112 along the first axis; each window (core + 48) is shorter than 160
    assert "tiled inference: 5 tiles" in caplog.text
    # measured 4e-8 (and 4e-4 without a halo, so the halo matters at this size)
    assert relative_error(tiled, whole, mask) < 1e-4
    assert torch.all(tiled[~mask] == 0)


def test_tiles_automatically_over_memory_budget(caplog):
    torch.manual_seed(1)
    net = UNet3d(base_channels=4, depth=2).eval()
    field, mask = smooth_case((64, 48, 32), seed=3)
    whole = predict(net, field, mask, normalization=NORMALIZATION, max_memory_mb=float("inf"))
    budget = 0.8 * estimate_memory_mb(net, (64, 48, 32))
    with caplog.at_level(logging.INFO, logger="torchqsm.models.tiling"):
        tiled = predict(net, field, mask, normalization=NORMALIZATION, max_memory_mb=budget, halo=8, overlap=8)
    assert "tiled inference: 3 tiles of (32, 48, 32)" in caplog.text  # windows of 48×48×32: 75 % of the volume
    assert relative_error(tiled, whole, mask) < 1e-4


def test_odd_sizes_padded_and_cropped_exactly():
    net = UNet3d(base_channels=2, depth=2).eval()
    field, mask = smooth_case((13, 10, 7))
    chi = predict(net, field, mask, normalization=NORMALIZATION)
    assert chi.shape == (13, 10, 7) and chi.dtype == torch.float32
    padded, region = pad_to_multiple(field, 4)
    assert padded.shape == (16, 12, 8)
    assert torch.equal(crop(padded, region), field)
    # the network sees exactly the padded, masked, normalised field
    with torch.inference_mode():
        direct = net(NORMALIZATION.to_network(pad_to_multiple(torch.where(mask, field, 0), 4)[0])[None, None])
    expected = torch.where(mask, crop(NORMALIZATION.from_network(direct[0, 0]), region), 0)
    torch.testing.assert_close(chi, expected)


def test_numpy_in_numpy_out_tensor_in_tensor_out():
    net = UNet3d(base_channels=2, depth=2)
    field, mask = smooth_case((12, 8, 8))
    from_numpy = predict(net, field.numpy().astype(np.float64), mask.numpy(), normalization=NORMALIZATION)
    from_tensor = predict(net, field.double(), mask, normalization=NORMALIZATION)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    assert isinstance(from_tensor, torch.Tensor) and from_tensor.dtype == torch.float32
    np.testing.assert_allclose(from_numpy, from_tensor.numpy(), rtol=1e-6, atol=1e-7)


def test_bad_inputs_raise_input_error():
    net = UNet3d(base_channels=2, depth=2)
    field, mask = smooth_case((8, 8, 8))
    with pytest.raises(InputError, match="empty"):
        predict(net, field, torch.zeros_like(mask), normalization=NORMALIZATION)
    nan_field = field.clone()
    nan_field[4, 4, 4] = float("nan")
    with pytest.raises(InputError, match="1 NaN or infinite voxels inside the mask"):
        predict(net, nan_field, mask, normalization=NORMALIZATION)
    with pytest.raises(InputError, match="3-D"):
        predict(net, field[None], mask, normalization=NORMALIZATION)
    with pytest.raises(InputError, match="does not match"):
        predict(net, field, mask[:, :, :4], normalization=NORMALIZATION)


def test_plan_tiles_cover_the_volume_on_the_pooling_grid():
    tiles, sizes, overlap, halo = plan_tiles((48, 32, 16), tile_size=(20, 16, 64), overlap=3, halo=5, multiple=4)
    assert sizes == (20, 16, 16) and overlap == 4 and halo == 8
    covered = torch.zeros(48, 32, 16, dtype=torch.int64)
    for tile in tiles:
        covered[tile.core] += 1
        for core, window in zip(tile.core, tile.window):
            assert window.start % 4 == 0 and window.stop % 4 == 0
            assert window.start <= core.start and window.stop >= core.stop
    assert int(covered.min()) >= 1


def test_channels_last_and_folded_batch_norm_give_the_same_chi(dfqsm_case):
    net, field, mask, whole = dfqsm_case
    contiguous = predict(net, field, mask, normalization=NORMALIZATION, max_memory_mb=float("inf"),
                         channels_last=False)
    assert relative_error(whole, contiguous, mask) < 1e-5  # default (channels-last): another summation order
    with torch.inference_mode():  # the unfolded network itself, eval mode
        x = (field * mask / NORMALIZATION.input_scale_ppm)[None, None]
        direct = net.eval()(x)[0, 0] * NORMALIZATION.output_scale_ppm * mask
    assert relative_error(whole, direct, mask) < 1e-5


def test_inference_copy_folds_batch_norm_and_leaves_the_model_alone():
    from torchqsm.models.inference import inference_copy

    torch.manual_seed(3)
    net = UNet3d(base_channels=2, depth=1).train()
    for module in net.modules():  # non-trivial running statistics and affine
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = inference_copy(net)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    conv = next(p for p in folded.parameters() if p.dim() == 5 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(folded(x), net.eval()(x), rtol=1e-4, atol=1e-5)


def test_inference_copy_of_an_oa_unet_equals_the_network():
    """OA-LFE runs between each convolution and its batch norm: folding them would edit the wrong features.
    (It did: `predict` of a U-Net+OA-LFE was off by 17 % of its range before `ConvBlock.foldable`.)"""
    from torchqsm.models.inference import inference_copy

    torch.manual_seed(4)
    net = UNet3d(base_channels=2, depth=1, orientation_adaptive=True)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    x, b0 = torch.randn(1, 1, 8, 8, 8), (0.0, 0.6, 0.8)
    with torch.inference_mode():
        reference = net.eval()(x, b0)
        assert torch.allclose(inference_copy(net)(x, b0), reference, rtol=1e-4, atol=1e-5)
