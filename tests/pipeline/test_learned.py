"""Learned methods in the registry: registered from shipped cards, with every refinement, through invert."""

from __future__ import annotations

import pytest
import torch

from torchqsm.cli.main import main
from torchqsm.metrics import nrmse
from torchqsm.models import build_model
from torchqsm.models import weights as weights_module
from torchqsm.models.weights import example_card, save_weights
from torchqsm.pipeline import learned, registry
from torchqsm.simulate import forward_field, shapes_phantom


@pytest.fixture()
def shipped_tiny(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("unet", base_channels=2, depth=2)
    save_weights(model, example_card("unet-tiny", base_channels=2, depth=2), tmp_path, "unet-tiny")
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", tmp_path)
    learned.load_cached.cache_clear()
    before = dict(registry.METHODS)
    names = registry.register_learned()
    yield names
    registry.METHODS.clear()
    registry.METHODS.update(before)
    learned.load_cached.cache_clear()


def test_each_shipped_architecture_gets_a_method_and_three_refinements(shipped_tiny):
    assert shipped_tiny == ["unet", "unet+dfqsm", "unet+dll2", "unet+fine"]
    spec = registry.get_method("unet+dfqsm")
    assert spec.kind == "learned"
    names = [p.name for p in spec.parameters]
    assert {"weights", "tile_size", "reorient", "tolerance", "max_iterations", "step_size"} <= set(names)
    assert [p.name for p in registry.get_method("unet").parameters] == ["weights", "tile_size", "reorient"]
    assert "learning_rate" in [p.name for p in registry.get_method("unet+fine").parameters]
    assert any("doi" in r.lower() for r in spec.references)


def test_learned_methods_run_through_invert(shipped_tiny):
    chi, mask = shapes_phantom((24, 24, 20))
    field = forward_field(chi, pad=8)
    network = registry.invert(field, mask, "unet")
    assert network.shape == field.shape and torch.all(network[mask == 0] == 0)
    refined = registry.invert(field, mask, "unet+dfqsm", max_iterations=30, tolerance=0.0)
    # An untrained network is far off; the data-fidelity refinement must bring it closer.
    assert nrmse(refined, chi, mask) < nrmse(network, chi, mask)
    regularised = registry.invert(field, mask, "unet+dll2", regularization=1e-3)
    assert nrmse(regularised, chi, mask) < nrmse(network, chi, mask)
    tuned = registry.invert(field, mask, "unet+fine", max_iterations=3)
    assert tuned.shape == field.shape and not torch.equal(tuned, network)
    tiled = registry.invert(field, mask, "unet", tile_size=16)
    assert torch.isfinite(tiled).all()


def test_methods_command_lists_learned_methods(shipped_tiny, capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "unet+dfqsm" in out and "unet+fine" in out
    assert main(["methods", "unet+dll2"]) == 0
    assert "regularization" in capsys.readouterr().out


def test_unknown_weights_is_a_clear_error(shipped_tiny):
    from torchqsm.errors import InputError
    chi, mask = shapes_phantom((16, 16, 16))
    with pytest.raises(InputError, match="no-such-net"):
        registry.invert(chi, mask, "unet", weights="no-such-net")


@pytest.mark.parametrize("name", sorted(n for n, s in registry.METHODS.items() if s.kind == "learned"))
def test_every_shipped_learned_method_runs(name):
    """The shipped weights load and every registered learned method (and refinement) runs by name."""
    chi, mask = shapes_phantom((20, 24, 16))
    field = forward_field(chi, pad=8)
    params = {"max_iterations": 2} if "+" in name else {}
    estimate = registry.invert(field, mask, name, **params)
    assert estimate.shape == field.shape and torch.isfinite(estimate).all()
    assert torch.all(estimate[mask == 0] == 0) and float(estimate.abs().max()) > 0
