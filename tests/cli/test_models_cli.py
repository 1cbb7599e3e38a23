"""``torchqsm models``: the table of shipped models, one card, and one-line errors (shipped folder faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchqsm.models import UNet3d
from torchqsm.models import weights as weights_module
from torchqsm.models.weights import example_card, save_weights


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shipped folder holding two tiny models (one with metrics, one without)."""
    folder = tmp_path / "weights"
    card = example_card("tiny-a", base_channels=2, depth=2)
    card["training"].update(steps=1500, time_s=5400.0, hardware="2 CPU cores")
    card["metrics"] = {"suite": {"ssim": 0.8, "nrmse": 0.4567}}
    card["voxel_size_mm"] = [1.0, 1.0, 1.5]
    save_weights(UNet3d(base_channels=2, depth=2), card, folder, "tiny-a")
    save_weights(UNet3d(base_channels=1, depth=1), example_card("tiny-b", base_channels=1, depth=1), folder, "tiny-b")
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", folder)
    return folder


def test_table_lists_every_shipped_model(cli, shipped: Path) -> None:
    result = cli("models")
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[0].split() == ["name", "architecture", "parameters", "voxel", "(mm)", "training", "metric"]
    assert [line.split()[0] for line in lines[1:]] == ["tiny-a", "tiny-b"]
    parameters = sum(p.numel() for p in UNet3d(base_channels=2, depth=2).parameters())
    assert f"{parameters:,}" in lines[1] and "1×1×1.5" in lines[1]
    assert "1500 steps, 90 min, 2 CPU cores" in lines[1] and "suite.nrmse 0.4567" in lines[1]
    assert lines[2].rstrip().endswith("-")  # no metrics


def test_table_as_json(cli, shipped: Path) -> None:
    result = cli("models", "--json")
    assert result.code == 0
    cards = json.loads(result.out)
    assert [card["name"] for card in cards] == ["tiny-a", "tiny-b"]
    assert cards[0] == json.loads((shipped / "tiny-a.json").read_text())


def test_one_card(cli, shipped: Path) -> None:
    result = cli("models", "tiny-a")
    assert result.code == 0 and result.err == ""
    card = json.loads((shipped / "tiny-a.json").read_text())
    assert f"sha256: {card['sha256']}" in result.out
    assert "training:\n" in result.out and "  steps: 1500" in result.out
    assert "    nrmse: 0.4567" in result.out  # metrics → suite → nrmse, indented per level
    assert json.loads(cli("models", "tiny-a", "--json").out) == card


def test_one_card_by_path(cli, shipped: Path) -> None:
    result = cli("models", shipped / "tiny-b.safetensors", "--json")
    assert result.code == 0 and json.loads(result.out)["name"] == "tiny-b"


def test_unknown_name_is_a_one_line_error(cli, one_line_error, shipped: Path) -> None:
    one_line_error(cli("models", "nonesuch"), "nonesuch", "tiny-a, tiny-b")


def test_broken_shipped_card_is_a_one_line_error(cli, one_line_error, shipped: Path) -> None:
    (shipped / "tiny-b.json").write_text("{not json")
    one_line_error(cli("models"), "tiny-b.json", "not valid JSON")


def test_nothing_shipped(cli, one_line_error, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_module, "SHIPPED_DIR", tmp_path)
    result = cli("models")
    assert result.code == 0 and "no learned models are shipped yet" in result.out
    assert json.loads(cli("models", "--json").out) == []
    one_line_error(cli("models", "tiny-a"), "none yet")


def test_the_real_shipped_folder_lists(cli) -> None:
    """Whatever ships (possibly nothing), the table prints."""
    result = cli("models")
    assert result.code == 0 and result.out
