"""xQSM: shapes, the size multiple, octave groups, residual, registry."""

from __future__ import annotations

import pytest
import torch

from torchqsm.errors import ParameterError
from torchqsm.models import build_model
from torchqsm.models.xqsm import XQSM, OctaveConv3d


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_shape_preserved_at_multiples(depth):
    net = XQSM(base_channels=4, depth=depth).eval()
    m = net.multiple
    assert m == 2 ** (depth + 1)
    x = torch.randn(2, 1, m, 2 * m, 3 * m, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert net(x).shape == x.shape


def test_size_not_a_multiple_fails():
    net = XQSM(base_channels=4, depth=2)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 1, 8, 8, 12))  # 12 is a multiple of 2**depth = 4 but not of 8


def test_octave_layer_groups_and_paths():
    layer = OctaveConv3d(8, 6, alpha_in=0.5, alpha_out=0.5)
    high, low = layer(torch.randn(1, 4, 8, 8, 8), torch.randn(1, 4, 4, 4, 4))
    assert high.shape == (1, 3, 8, 8, 8) and low.shape == (1, 3, 4, 4, 4)
    assert all(path is not None for path in (layer.high_to_high, layer.high_to_low, layer.low_to_high,
                                             layer.low_to_low))
    first = OctaveConv3d(1, 8, alpha_in=0.0, alpha_out=0.25)
    high, low = first(torch.randn(1, 1, 8, 8, 8))
    assert high.shape[1] == 6 and low.shape[1] == 2 and first.low_to_high is None
    last = OctaveConv3d(8, 4, alpha_in=0.5, alpha_out=0.0, activation=False)
    high, low = last(torch.randn(1, 4, 8, 8, 8), torch.randn(1, 4, 4, 4, 4))
    assert high.shape == (1, 4, 8, 8, 8) and low is None


def test_residual_and_low_frequency_path():
    torch.manual_seed(0)
    net = XQSM(base_channels=4, depth=1).eval()
    zero_weights = XQSM(base_channels=4, depth=1).eval()
    for p in zero_weights.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(zero_weights(x), x)  # only the residual path remains
        plain = XQSM(base_channels=4, depth=1, residual=False).eval()
        plain.load_state_dict(net.state_dict())
        torch.testing.assert_close(net(x) - plain(x), x)


def test_gradients_reach_every_parameter():
    net = XQSM(base_channels=4, depth=2, alpha=0.25)
    net(torch.randn(2, 1, 8, 8, 16)).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_registry_and_parameter_checks():
    assert isinstance(build_model("xqsm", base_channels=4, depth=1), XQSM)
    with pytest.raises(ParameterError):
        build_model("xqsm", kernel=5)
    with pytest.raises(ValueError):
        XQSM(alpha=1.0)
    with pytest.raises(ValueError):
        XQSM(base_channels=2, alpha=0.1)
