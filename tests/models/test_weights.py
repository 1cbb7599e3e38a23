"""Weights as safetensors + JSON card: exact round trip, and one-line errors for every broken file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.models import Normalization, UNet3d
from torchqsm.models import weights as weights_module
from torchqsm.models.weights import (
    FORMAT_VERSION,
    REQUIRED_CARD_KEYS,
    LoadedModel,
    example_card,
    list_models,
    load_weights,
    model_card,
    save_weights,
)

HYPERPARAMETERS = {"base_channels": 2, "depth": 2}


def trained_tiny_model(seed: int = 7) -> UNet3d:
    """A tiny U-Net with random weights and non-trivial batch-norm statistics (set, not trained: fast)."""
    generator = torch.Generator().manual_seed(seed)
    model = UNet3d(**HYPERPARAMETERS)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                tensor.fill_(2)
            elif key.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
            else:
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def tiny_card(name: str = "tiny", **changes) -> dict:
    card = example_card(name, **HYPERPARAMETERS)
    card["normalization"] = {"input_scale_ppm": 0.05, "output_scale_ppm": 0.2}
    card["metrics"] = {"suite": {"nrmse": 0.5}}
    card.update(changes)
    return card


@pytest.fixture
def saved(tmp_path: Path) -> tuple[UNet3d, Path]:
    model = trained_tiny_model()
    return model, save_weights(model, tiny_card(), tmp_path, "tiny")


def test_round_trip_is_bit_identical(saved) -> None:
    model, path = saved
    loaded = load_weights(path)
    assert isinstance(loaded, LoadedModel) and loaded.name == "tiny" and loaded.path == path
    expected, found = model.state_dict(), loaded.model.state_dict()
    assert list(found) == list(expected)
    assert any("running_var" in key for key in expected) and any("num_batches_tracked" in key for key in expected)
    for key, tensor in expected.items():
        assert found[key].dtype == tensor.dtype and torch.equal(found[key], tensor), key
    assert int(found["encoders.0.1.num_batches_tracked"]) == 2
    assert not loaded.model.training
    field = torch.randn(1, 1, 8, 8, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded.model(field), model(field))
    assert loaded.normalization == Normalization(input_scale_ppm=0.05, output_scale_ppm=0.2)


def test_files_and_computed_card_fields(saved) -> None:
    model, path = saved
    card_path = path.with_suffix(".json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.json", "tiny.safetensors"]  # no temporaries
    card = json.loads(card_path.read_text())
    assert set(REQUIRED_CARD_KEYS) <= set(card)
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["file"] == "tiny.safetensors" and card["format_version"] == FORMAT_VERSION
    assert len(card["sha256"]) == 64
    assert model_card(card_path) == card == load_weights(card_path).card
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "torchqsm_card": "tiny"}


def test_card_argument_is_not_modified(tmp_path: Path) -> None:
    card = tiny_card()
    before = json.dumps(card, sort_keys=True)
    save_weights(trained_tiny_model(), card, tmp_path, "tiny")
    assert json.dumps(card, sort_keys=True) == before


def test_no_overwrite_without_permission(saved) -> None:
    model, path = saved
    before = path.read_bytes()
    with pytest.raises(InputError, match="exists"):
        save_weights(trained_tiny_model(seed=8), tiny_card(), path.parent, "tiny")
    assert path.read_bytes() == before
    save_weights(trained_tiny_model(seed=8), tiny_card(), path.parent, "tiny", overwrite=True)
    assert path.read_bytes() != before
    load_weights(path)  # the card was replaced too: the new SHA-256 matches


@pytest.mark.parametrize("key", ["commit", "orientation", "normalization"])
def test_missing_card_key_is_a_parameter_error(tmp_path: Path, key: str) -> None:
    card = tiny_card()
    del card[key]
    with pytest.raises(ParameterError, match=key):
        save_weights(trained_tiny_model(), card, tmp_path, "tiny")
    assert list(tmp_path.iterdir()) == []


def test_missing_training_field_is_named(tmp_path: Path) -> None:
    card = tiny_card()
    del card["training"]["time_s"]
    with pytest.raises(ParameterError, match=r"training\.time_s"):
        save_weights(trained_tiny_model(), card, tmp_path, "tiny")


def test_card_that_does_not_describe_the_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="encoders.0.0.weight"):
        save_weights(trained_tiny_model(), tiny_card(hyperparameters={"base_channels": 3, "depth": 2}),
                     tmp_path, "tiny")
    with pytest.raises(ParameterError, match="differs from the file name"):
        save_weights(trained_tiny_model(), tiny_card(), tmp_path, "other")
    assert list(tmp_path.iterdir()) == []


def test_truncated_weights(saved) -> None:
    _, path = saved
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="SHA-256") as error:
        load_weights(path)
    assert str(path) in str(error.value)


def test_truncated_weights_with_matching_checksum_are_not_valid_safetensors(saved) -> None:
    import hashlib
    _, path = saved
    data = path.read_bytes()[:-100]
    path.write_bytes(data)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["sha256"] = hashlib.sha256(data).hexdigest()
    card_path.write_text(json.dumps(card))
    with pytest.raises(InputError, match="not a valid safetensors file"):
        load_weights(path)


def test_flipped_byte_fails_the_checksum(saved) -> None:
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="differs from the card's"):
        load_weights(path.with_suffix(".json"))


def test_card_with_other_hyperparameters_names_the_key_and_shapes(saved) -> None:
    _, path = saved
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["hyperparameters"]["base_channels"] = 4
    card_path.write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"'encoders\.0\.0\.weight' has shape \(2, 1, 3, 3, 3\) in the weights "
                                         r"but \(4, 1, 3, 3, 3\)"):
        load_weights(path)


def test_card_with_other_depth_names_the_missing_key(saved) -> None:
    _, path = saved
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["hyperparameters"]["depth"] = 3
    card_path.write_text(json.dumps(card))
    with pytest.raises(InputError, match="the weights lack 'encoders.2"):
        load_weights(path)


@pytest.mark.parametrize("edit, message", [
    (lambda text: text[:-20], "not valid JSON"),
    (lambda text: text.replace('"commit"', '"kommit"'), "lacks commit"),
    (lambda text: text.replace('"unet"', '"nonesuch"'), "unknown architecture 'nonesuch'"),
    (lambda text: text.replace('"format_version": 1', '"format_version": 99'), "newer"),
])
def test_broken_card(saved, edit, message) -> None:
    _, path = saved
    card_path = path.with_suffix(".json")
    card_path.write_text(edit(card_path.read_text()))
    with pytest.raises(InputError, match=message) as error:
        load_weights(path)
    assert "tiny.json" in str(error.value) and "\n" not in str(error.value)


def test_missing_files(saved, tmp_path: Path) -> None:
    _, path = saved
    with pytest.raises(InputError, match="no such model file"):
        load_weights(tmp_path / "absent.safetensors")
    path.with_suffix(".json").unlink()
    with pytest.raises(InputError, match="card tiny.json is missing"):
        load_weights(path)


def test_shipped_names_resolve_in_the_shipped_folder(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    model, path = saved
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", path.parent)
    assert [card["name"] for card in list_models()] == ["tiny"]
    assert model_card("tiny")["architecture"] == "unet"
    loaded = load_weights("tiny")
    assert torch.equal(loaded.model.state_dict()["bottleneck.1.running_mean"],
                       model.state_dict()["bottleneck.1.running_mean"])
    with pytest.raises(InputError, match=r"no shipped model 'absent'.*\(shipped: tiny, in "):
        load_weights("absent")


def test_nothing_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", tmp_path)
    assert list_models() == []
    with pytest.raises(InputError, match="none yet"):
        model_card("anything")


def test_shipped_cards_are_loadable() -> None:
    """Whatever ships (possibly nothing) must load and match its card."""
    for card in list_models():
        loaded = load_weights(card["name"])
        assert loaded.card["parameters"] == sum(p.numel() for p in loaded.model.parameters())
