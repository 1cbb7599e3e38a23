"""``torchqsm train``: a tiny run end to end, in-process, writes loadable weights and a complete card."""

from __future__ import annotations

import json

import torch

from torchqsm.cli.main import main
from torchqsm.models.weights import load_weights

CONFIG = """
[model]
name = "tiny-unet"
architecture = "unet"
hyperparameters = { base_channels = 2, depth = 2 }

[data]
source = "shapes"
shapes_volume = [24, 24, 24]
patch_size = [16, 16, 16]
patches_per_volume = 2
pad = 8

[training]
steps = 4
batch_size = 2
workers = 0
log_every = 1
checkpoint_every = 2
"""


def test_train_writes_weights_and_card(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    out = tmp_path / "run"
    assert main(["train", str(config), "-o", str(out), "--quiet", "--stop-after", "2"]) == 0
    assert not (out / "tiny-unet.safetensors").exists()  # stopped early: no weights yet
    assert main(["train", str(config), "-o", str(out), "--quiet", "--resume"]) == 0
    loaded = load_weights(out / "tiny-unet.json")
    card = loaded.card
    assert card["training"]["steps"] == 4 and card["training"]["samples"] == 8
    assert card["training"]["config"]["training"]["batch_size"] == 2
    assert card["hyperparameters"] == {"base_channels": 2, "depth": 2}
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    capsys.readouterr()
    assert main(["models", str(out / "tiny-unet.json")]) == 0
    assert "tiny-unet" in capsys.readouterr().out


def test_bad_configuration_is_one_line_exit_2(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[model]\narchitecture = "transformer"\n')
    assert main(["train", str(config), "-o", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert "unknown architecture" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err
