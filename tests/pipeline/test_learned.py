"""Learned methods in the registry: read lazily from shipped cards, composed with every refinement, in the record's geometry."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from torchqsm.acquisition import Acquisition
from torchqsm.cli.main import main
from torchqsm.errors import InputError
from torchqsm.metrics import nrmse
from torchqsm.models import build_model
from torchqsm.models import weights as weights_module
from torchqsm.models.weights import example_card, save_weights
from torchqsm.physics import tilt_b0_dir
from torchqsm.pipeline import learned, registry
from torchqsm.simulate import forward_field, shapes_phantom

AXIAL = Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), pad=8)


@pytest.fixture()
def shipped_tiny(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("unet", base_channels=2, depth=2)
    save_weights(model, example_card("unet-tiny", base_channels=2, depth=2), tmp_path, "unet-tiny")
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", tmp_path)
    names = registry.register_learned()
    yield names
    registry.METHODS.forget_learned()  # the next lookup reads the real cards again
    learned.load_cached.cache_clear()


def test_each_shipped_architecture_gets_a_method_and_three_refinements(shipped_tiny):
    assert shipped_tiny == ["unet", "unet+dfqsm", "unet+dll2", "unet+fine"]
    spec = registry.get_method("unet+dfqsm")
    assert spec.kind == "learned"
    names = spec.parameters.names()
    assert {"weights", "tile_size", "reorient", "tolerance", "max_iterations", "step_size", "pad"} <= set(names)
    assert registry.get_method("unet").parameters.names() == ("weights", "tile_size", "reorient")
    assert registry.get_method("unet").parameter("weights").default == "unet-tiny"
    assert "learning_rate" in registry.get_method("unet+fine").parameters.names()
    assert any("doi" in r.lower() for r in spec.references)


def test_learned_methods_run_through_invert(shipped_tiny):
    chi, mask = shapes_phantom((24, 24, 20))
    field = forward_field(chi, pad=8)
    network = registry.invert(field, mask, "unet", AXIAL)
    assert network.shape == field.shape and torch.all(network[mask == 0] == 0)
    refined = registry.invert(field, mask, "unet+dfqsm", AXIAL, max_iterations=30, tolerance=0.0)
    # An untrained network is far off; the data-fidelity refinement must bring it closer.
    assert nrmse(refined, chi, mask) < nrmse(network, chi, mask)
    regularised = registry.invert(field, mask, "unet+dll2", AXIAL, regularization=1e-3)
    assert nrmse(regularised, chi, mask) < nrmse(network, chi, mask)
    tuned = registry.invert(field, mask, "unet+fine", AXIAL, max_iterations=3)
    assert tuned.shape == field.shape and not torch.equal(tuned, network)
    tiled = registry.invert(field, mask, "unet", AXIAL, tile_size=16)
    assert torch.isfinite(tiled).all()


def test_an_oblique_field_is_reoriented_by_default(shipped_tiny, caplog):
    """The tiny card records no training tilt (0°): an oblique field is rotated onto axis 3 first."""
    chi, mask = shapes_phantom((24, 24, 20))
    tilt = tilt_b0_dir(30.0, about=0)
    field = forward_field(chi, b0_dir=tilt, pad=8)
    oblique = AXIAL.with_values("test", b0_dir=tilt)
    as_axial = registry.invert(field, mask, "unet", AXIAL)
    reoriented = registry.invert(field, mask, "unet", oblique)
    assert float((reoriented - as_axial).abs().max()) > 1e-3 * float(as_axial.abs().max())
    torch.testing.assert_close(reoriented, registry.invert(field, mask, "unet", oblique, reorient=True))
    with caplog.at_level(logging.WARNING, logger="torchqsm"):
        kept = registry.invert(field, mask, "unet", oblique, reorient=False)
    torch.testing.assert_close(kept, as_axial)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "trained with B0 within 0°" in warnings[0] and "30.0° tilt" in warnings[0]


def test_an_orientation_adaptive_card_is_its_own_method_told_b0(tmp_path, monkeypatch, caplog):
    """A card with ``orientation_adaptive`` makes ``unet+oalfe`` beside ``unet``: it runs on the data's grid at any
    direction (no reorientation, no warning), with the record's B0 direction handed to its OA-LFE modules."""
    torch.manual_seed(0)
    plain = build_model("unet", base_channels=2, depth=2)
    save_weights(plain, example_card("unet-tiny", base_channels=2, depth=2), tmp_path, "unet-tiny")
    adaptive = build_model("unet", base_channels=2, depth=2, orientation_adaptive=True)
    with torch.no_grad():  # a fresh OA-LFE is the identity: move every weight so that B0 matters
        for parameter in adaptive.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    card = example_card("unet-oalfe-tiny", base_channels=2, depth=2, orientation_adaptive=True)
    save_weights(adaptive, card, tmp_path, "unet-oalfe-tiny")
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", tmp_path)
    try:
        names = registry.register_learned()
        assert "unet+oalfe" in names and "unet+oalfe+dfqsm" not in names and "unet+dfqsm" in names
        assert registry.get_method("unet+oalfe").parameter("weights").default == "unet-oalfe-tiny"
        assert learned.shipped_defaults() == {"unet": "unet-tiny", "unet+oalfe": "unet-oalfe-tiny"}
        chi, mask = shapes_phantom((24, 24, 20))
        tilt = tilt_b0_dir(60.0, about=0)
        field = forward_field(chi, b0_dir=tilt, pad=8)
        with caplog.at_level(logging.WARNING, logger="torchqsm"):
            oblique = registry.invert(field, mask, "unet+oalfe", AXIAL.with_values("test", b0_dir=tilt),
                                      reorient=False)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        axial = registry.invert(field, mask, "unet+oalfe", AXIAL)
        assert float((oblique - axial).abs().max()) > 1e-3 * float(axial.abs().max())
        from torchqsm.models.inference import predict
        loaded = learned.load_cached("unet-oalfe-tiny", "cpu")
        direct = predict(loaded.model, field, mask, normalization=loaded.normalization, b0_dir=tilt)
        torch.testing.assert_close(oblique, direct * mask)
        record = AXIAL.with_values("test", b0_dir=tilt)  # every refinement takes the OA weights, told B0 too
        untuned = registry.invert(field, mask, "unet+fine", record, weights="unet-oalfe-tiny", max_iterations=0)
        torch.testing.assert_close(untuned, oblique, atol=1e-6 * float(oblique.abs().max()), rtol=0)
        refined = registry.invert(field, mask, "unet+dfqsm", record, weights="unet-oalfe-tiny", max_iterations=5,
                                  tolerance=0.0)
        assert nrmse(refined, chi, mask) < nrmse(oblique, chi, mask)
    finally:
        registry.METHODS.forget_learned()
        learned.load_cached.cache_clear()


def test_a_card_marked_default_wins_over_file_name_order(tmp_path, monkeypatch):
    """Two cards of one method: the first by file name is the default unless another says `"default": true`;
    a `default` that is not a boolean is a broken card."""
    plain = build_model("unet", base_channels=2, depth=2)
    save_weights(plain, example_card("unet-a", base_channels=2, depth=2), tmp_path, "unet-a")
    save_weights(plain, example_card("unet-b", base_channels=2, depth=2), tmp_path, "unet-b")
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", tmp_path)
    assert learned.shipped_defaults()["unet"] == "unet-a"
    card = json.loads((tmp_path / "unet-b.json").read_text())
    (tmp_path / "unet-b.json").write_text(json.dumps({**card, "default": True}))
    assert learned.shipped_defaults()["unet"] == "unet-b"
    (tmp_path / "unet-b.json").write_text(json.dumps({**card, "default": "yes"}))
    with pytest.raises(InputError, match="'default' must be true or false"):
        weights_module.model_card(str(tmp_path / "unet-b.json"))
    assert learned.shipped_defaults()["unet"] == "unet-a"


def test_training_tilt_comes_from_the_card():
    card = {"training": {"config": {"data": {"max_tilt_deg": 45.0}}}}
    assert learned.training_tilt_deg(card) == 45.0
    assert learned.training_tilt_deg({}) == 0.0


def test_methods_command_lists_learned_methods(shipped_tiny, capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "unet+dfqsm" in out and "unet+fine" in out
    assert main(["methods", "unet+dll2"]) == 0
    assert "regularization" in capsys.readouterr().out


def test_unknown_weights_is_a_clear_error(shipped_tiny):
    chi, mask = shapes_phantom((16, 16, 16))
    with pytest.raises(InputError, match="no-such-net"):
        registry.invert(chi, mask, "unet", AXIAL, weights="no-such-net")


def test_a_corrupt_card_breaks_only_its_own_method(shipped_tiny, tmp_path):
    (tmp_path / "xqsm-broken.json").write_text("{not json", encoding="utf-8")
    names = registry.register_learned()
    assert "xqsm" in names and "unet" in names
    chi, mask = shapes_phantom((16, 16, 16))
    field = forward_field(chi, pad=8)
    with pytest.raises(InputError, match="xqsm-broken.json") as info:
        registry.invert(field, mask, "xqsm", AXIAL)
    assert "not valid JSON" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(InputError, match="xqsm-broken.json"):
        registry.invert(field, mask, "xqsm+dfqsm", AXIAL)
    assert torch.isfinite(registry.invert(field, mask, "unet", AXIAL)).all()
    assert torch.isfinite(registry.invert(field, mask, "tkd", AXIAL)).all()


def test_importing_the_physics_reads_no_card(tmp_path):
    """`import torchqsm.physics` (and every classical method) works with a corrupt shipped card, and loads no weights."""
    code = (
        "import sys, torchqsm.models.weights as w; from pathlib import Path\n"
        f"w.SHIPPED_DIR = Path({str(tmp_path)!r})\n"
        f"Path({str(tmp_path)!r}, 'unet-bad.json').write_text('{{oops')\n"
        "import torchqsm, torchqsm.physics\n"
        "from torchqsm.simulate import shapes_phantom, forward_field\n"
        "chi, mask = shapes_phantom((16, 16, 16)); f = forward_field(chi, pad=8)\n"
        "a = torchqsm.Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), pad=8)\n"
        "print(float(torchqsm.invert(f, mask, 'tikhonov', a).abs().max()) > 0)\n"
        "try:\n    torchqsm.invert(f, mask, 'unet', a)\nexcept torchqsm.InputError as e:\n    print('ERR', e)\n"
    )
    plain = subprocess.run([sys.executable, "-c", "import sys, torchqsm.physics, torchqsm\n"
                            "print(json.dumps(['safetensors' in sys.modules, 'torchqsm.models.weights' in sys.modules]))"
                            .replace("json.dumps", "__import__('json').dumps")],
                           capture_output=True, text=True, check=True)
    assert json.loads(plain.stdout) == [False, False]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[0] == "True"
    assert lines[1].startswith("ERR") and "unet-bad.json" in lines[1]


@pytest.mark.parametrize("name", sorted(n for n, s in registry.METHODS.items() if s.kind == "learned"))
def test_every_shipped_learned_method_runs(name):
    """The shipped weights load and every registered learned method (and refinement) runs by name."""
    chi, mask = shapes_phantom((20, 24, 16))
    field = forward_field(chi, pad=8)
    params = {"max_iterations": 2} if learned.split_method(name)[1] else {}
    estimate = registry.invert(field, mask, name, AXIAL, **params)
    assert estimate.shape == field.shape and torch.isfinite(estimate).all()
    assert torch.all(estimate[mask == 0] == 0) and float(estimate.abs().max()) > 0


def test_fine_runs_in_the_networks_frame_like_the_network(shipped_tiny):
    """Beyond the card's training tilt the network is reoriented; FINE fine-tunes it in that same frame, so
    with 0 steps it returns exactly the reoriented network's χ (it returned the un-rotated network's)."""
    chi, mask = shapes_phantom((24, 24, 24))
    tilt = tilt_b0_dir(40.0, about=0)
    field = forward_field(chi, b0_dir=tilt, pad=8)
    oblique = AXIAL.with_values("test", b0_dir=tilt)
    network = registry.invert(field, mask, "unet", oblique)
    untuned = registry.invert(field, mask, "unet+fine", oblique, max_iterations=0)
    assert torch.allclose(untuned, network, atol=1e-6 * float(network.abs().max()))
    unrotated = registry.invert(field, mask, "unet", oblique, reorient=False)
    assert float((untuned - unrotated).abs().max()) > 1e-3 * float(unrotated.abs().max())
    tuned = registry.invert(field, mask, "unet+fine", oblique, max_iterations=2)
    assert tuned.shape == chi.shape and bool(torch.isfinite(tuned).all()) and float(tuned[~mask].abs().max()) == 0


def test_weights_the_suite_scores_weak_warn_and_strong_ones_do_not(caplog):
    """A card with a suite NRMSE above 1/√2 warns on every use of the plain network; refinements and better cards stay quiet."""
    chi, mask = shapes_phantom((20, 24, 16))
    field = forward_field(chi, pad=8)

    def warnings_of(name: str, **params) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="torchqsm"):
            registry.invert(field, mask, name, AXIAL, **params)
        return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "NRMSE" in r.getMessage()]

    cards = {name: learned.load_cached(learned.shipped_defaults()[name], "cpu") for name in ("xqsm", "noqsm", "unet")}
    scores = {name: loaded.card["metrics"]["suite"]["nrmse"] for name, loaded in cards.items()}
    assert scores["xqsm"] > learned.WEAK_NRMSE_PERCENT > max(scores["noqsm"], scores["unet"])  # as shipped today
    weak = warnings_of("xqsm")
    assert len(weak) == 1 and cards["xqsm"].name in weak[0] and f"{scores['xqsm']:.0f} % NRMSE" in weak[0]
    assert "baseline" in weak[0]
    assert warnings_of("noqsm") == [] and warnings_of("unet") == []
    assert warnings_of("xqsm+dfqsm", max_iterations=2) == []
