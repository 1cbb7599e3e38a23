"""FINE: the data loss falls, the caller's network is untouched, the iteration limit holds."""

from __future__ import annotations

import pytest
import torch

from torchqsm.acquisition import Acquisition
from torchqsm.errors import InputError, ParameterError
from torchqsm.models import Normalization, UNet3d
from torchqsm.physics import DipoleOp
from torchqsm.refine import fine
from torchqsm.simulate import forward_field, shapes_phantom

AXIAL = Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0))

PAD = 4
NORMALIZATION = Normalization(input_scale_ppm=0.02, output_scale_ppm=0.1)


@pytest.fixture
def network() -> UNet3d:
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the global stream
        torch.manual_seed(0)
        net = UNet3d(base_channels=2, depth=2)
    return net


@pytest.fixture
def volume():
    chi, mask = shapes_phantom((22, 20, 18))  # not multiples of 4: padded for the network
    return chi, forward_field(chi, pad=16) * mask, mask


def _misfit(chi, field, mask):
    dipole = DipoleOp(tuple(mask.shape), pad=PAD)
    return float(torch.linalg.vector_norm((dipole(chi) - field) * mask) / torch.linalg.vector_norm(field))


def test_data_loss_decreases(network, volume):
    _, field, mask = volume
    residuals = []
    before = fine(network, field, mask, AXIAL, normalization=NORMALIZATION, pad=PAD, max_iterations=0)
    after = fine(network, field, mask, AXIAL, normalization=NORMALIZATION, pad=PAD, learning_rate=1e-2, max_iterations=8,
                 callback=lambda s: residuals.append(s.residual))
    assert residuals[0] == pytest.approx(_misfit(before, field, mask), rel=1e-4)
    assert residuals[-1] < residuals[0]
    # measured (untrained network): relative misfit 1.005 → 0.947
    assert _misfit(after, field, mask) < 0.97 * _misfit(before, field, mask)
    assert after.shape == mask.shape and bool((after[~mask] == 0).all())


def test_original_network_is_untouched(network, volume):
    _, field, mask = volume
    network.train()  # even a network left in training mode: its batch-norm statistics must not move
    state = {name: value.clone() for name, value in network.state_dict().items()}
    fine(network, field, mask, AXIAL, normalization=NORMALIZATION, pad=PAD, learning_rate=1e-2, max_iterations=3)
    assert network.training
    for name, value in network.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_runs_in_evaluation_mode(network, volume):
    # zero iterations: the copy's output is the network's evaluation-mode output (running statistics)
    _, field, mask = volume
    out = fine(network, field, mask, AXIAL, normalization=NORMALIZATION, pad=PAD, max_iterations=0)
    network.eval()
    with torch.no_grad():
        padded = torch.nn.functional.pad(NORMALIZATION.to_network(field)[None, None], (1, 1, 0, 0, 1, 1))
        expected = NORMALIZATION.from_network(network(padded)[0, 0, 1:-1, :, 1:-1]) * mask
    torch.testing.assert_close(out, expected)


def test_respects_max_iterations(network, volume):
    _, field, mask = volume
    steps = []
    fine(network, field, mask, AXIAL, normalization=NORMALIZATION, pad=PAD, max_iterations=4, callback=steps.append)
    assert [s.iteration for s in steps] == [1, 2, 3, 4]
    stopped = []
    fine(network, field, mask, AXIAL, normalization=NORMALIZATION, pad=PAD, max_iterations=4,
         callback=lambda s: stopped.append(s.iteration) or s.iteration == 2)
    assert stopped == [1, 2]


@pytest.mark.parametrize(("keywords", "error", "match"), [
    ({"learning_rate": -1e-3}, ParameterError, "learning_rate"),
    ({"max_iterations": -1}, ParameterError, "max_iterations"),
    ({"normalization": {"input_scale_ppm": 0.02}}, ParameterError, "Normalization"),
    ({"mask": torch.ones(4, 4, 4)}, InputError, "mask shape"),
    ({"mask": torch.zeros(22, 20, 18)}, InputError, "empty"),
])
def test_bad_inputs(network, volume, keywords, error, match):
    _, field, mask = volume
    args = {"mask": mask, "normalization": NORMALIZATION, **keywords}
    with pytest.raises(error, match=match):
        fine(network, field, args.pop("mask"), AXIAL, pad=PAD, max_iterations=args.pop("max_iterations", 1), **args)


def test_model_must_be_a_module(volume):
    _, field, mask = volume
    with pytest.raises(ParameterError, match="nn.Module"):
        fine(lambda x: x, field, mask, AXIAL, normalization=NORMALIZATION)
