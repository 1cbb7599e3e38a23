"""NeXtQSM end to end: the two-stage network, its task, its training options and its shipped stages."""

from __future__ import annotations

import json

import pytest
import torch

from torchqsm.cli.main import main
from torchqsm.errors import ParameterError
from torchqsm.models import END_TO_END_ARCHITECTURES, NeXtQSMPipeline, build_model, task_of
from torchqsm.models.weights import load_weights, model_card
from torchqsm.simulate import SimulatedQSMDataset, SimulationConfig
from torchqsm.train import config_from_dict, train

SMALL = {"background": {"base_channels": 2, "depth": 1, "smv_radii": [1, 2]},
         "inversion": {"stages": 2, "base_channels": 2, "depth": 1, "pad": 4}}
DATA = {"task": "total_to_chi", "source": "shapes", "shapes_volume": [20, 20, 20], "patch_size": [], "pad": 4,
        "local_noise_ppm": [0.0, 0.0]}


# tiny() as the TOML file `torchqsm train` reads.
CONFIG_TOML = """
[model]
architecture = "nextqsm-pipeline"
name = "tiny-e2e"
hyperparameters = { background = { base_channels = 2, depth = 1, smv_radii = [1, 2] }, inversion = { stages = 2, base_channels = 2, depth = 1, pad = 4 } }

[normalization]
input_scale_ppm = 0.01
output_scale_ppm = 0.05

[data]
task = "total_to_chi"
source = "shapes"
shapes_volume = [20, 20, 20]
patch_size = []
pad = 4
local_noise_ppm = [0.0, 0.0]

[training]
steps = 2
batch_size = 1
workers = 0
log_every = 1
learning_rate = 1e-2
loss = { mse = 1.0, local = 1.0 }
"""


def tiny(**training) -> dict:
    return {"model": {"architecture": "nextqsm-pipeline", "name": "tiny-e2e", "hyperparameters": SMALL},
            "normalization": {"input_scale_ppm": 0.01, "output_scale_ppm": 0.05}, "data": dict(DATA),
            "training": {"steps": 2, "batch_size": 1, "workers": 0, "log_every": 1, "learning_rate": 1e-2,
                         "loss": {"mse": 1.0, "local": 1.0}, **training}}


def test_registered_with_the_total_to_chi_task():
    assert END_TO_END_ARCHITECTURES == ("nextqsm-pipeline",) and task_of("nextqsm-pipeline") == "total_to_chi"
    assert isinstance(build_model("nextqsm-pipeline", **SMALL), NeXtQSMPipeline)


def test_forward_is_the_inversion_of_the_background_stages_local_field():
    """χ equals the variational network applied to the background stage's output, on any grid size."""
    torch.manual_seed(0)
    net = NeXtQSMPipeline(**SMALL).eval()
    with torch.no_grad():  # non-zero regularisers (the variational network starts them at zero)
        for p in net.inversion.parameters():
            p.add_(0.05 * torch.randn_like(p))
    total = torch.randn(1, 1, 10, 12, 8)
    mask = torch.zeros_like(total)
    mask[..., 2:7, 2:8, 2:6] = 1
    geometry = {"b0_dir": [0.0, 0.6, 0.8], "voxel_size_mm": [2.5, 2.5, 2.5], "chi_to_field": 5.0}
    with torch.no_grad():
        chi, local = net(total, mask, return_local=True, **geometry)
        assert torch.equal(local, net.background(total, mask))
        assert torch.allclose(chi, net.inversion(local, mask, **geometry), atol=1e-5)
        assert torch.equal(net(total, mask, **geometry), chi)
        odd = net(total[..., :9, :11, :7], mask[..., :9, :11, :7], **geometry)  # padded inside for the U-Nets
    assert odd.shape == (1, 1, 9, 11, 7) and bool(odd.isfinite().all())


def test_the_task_gives_the_total_field_the_local_field_and_chi():
    """Shapes source without external sources or shim: the total field is the local field, which is D χ."""
    config = SimulationConfig(external_sources=0, shim_amplitude_ppm=0.0,
                              **{k: (tuple(v) if isinstance(v, list) and v else None if v == [] else v)
                                 for k, v in DATA.items()})
    sample = next(iter(SimulatedQSMDataset(config, seed=1, volumes=1)))
    inside = sample["mask"] > 0
    assert sample["local"].shape == sample["input"].shape == sample["target"].shape
    assert torch.allclose(sample["input"][inside], sample["local"][inside], atol=1e-6)
    assert float(sample["local"][~inside].abs().max()) == 0.0
    assert float(sample["target"][inside].abs().max()) > 0.01  # ppm: χ, not a field
    with_sources = next(iter(SimulatedQSMDataset(SimulationConfig(**{**config.__dict__, "external_sources": 40}),
                                                 seed=1, volumes=1)))
    assert torch.equal(with_sources["local"], sample["local"])
    assert float((with_sources["input"] - sample["input"])[inside].abs().max()) > 0.01


@pytest.mark.parametrize("change, message", [
    ({"model": {"init": {"decoder": "nextqsm-hybrid-cpu"}}}, "not stages of the nextqsm-pipeline"),
    ({"training": {"freeze": ["background", "inversion"]}}, "nothing would train"),
    ({"training": {"freeze": ["head"]}}, "not stages"),
    ({"model": {"init": "nextqsm-hybrid-cpu"}}, "maps each stage"),
])
def test_bad_stage_options_are_named(change, message):
    values = tiny()
    for table, update in change.items():
        values[table].update(update)
    with pytest.raises(ParameterError, match=message):
        config_from_dict(values)


def test_init_card_paths_are_read_relative_to_the_configuration(tmp_path):
    values = tiny()
    values["model"]["init"] = {"inversion": "weights/e2e.json", "background": "nextqsm-background-cpu"}
    config = config_from_dict(values, base=tmp_path)
    assert config.model.init == {"inversion": str(tmp_path / "weights" / "e2e.json"),
                                 "background": "nextqsm-background-cpu"}


def test_local_loss_and_stages_are_refused_for_other_networks():
    plain = {"model": {"architecture": "unet"}, "training": {"loss": {"mse": 1.0, "local": 1.0}}}
    with pytest.raises(ParameterError, match="loss.local"):
        config_from_dict(plain)
    with pytest.raises(ParameterError, match="it has none"):
        config_from_dict({"model": {"architecture": "unet", "init": {"background": "x"}}})


def test_training_scores_the_local_field_and_keeps_a_frozen_stage(tmp_path):
    config = config_from_dict(tiny(freeze=["inversion"]))
    torch.manual_seed(config.training.seed)
    start = build_model("nextqsm-pipeline", **SMALL).state_dict()
    result = train(config, tmp_path / "run", progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(line["local"] > 0 and line["mse"] > 0 for line in logged)
    assert all(abs(line["loss"] - line["mse"] - line["local"]) < 1e-5 * line["loss"] for line in logged)
    after = result.model.state_dict()
    inversion = [k for k in start if k.startswith("inversion.")]
    background = [k for k in start if k.startswith("background.") and start[k].is_floating_point()]
    assert inversion and all(torch.equal(start[k], after[k]) for k in inversion)
    assert any(not torch.equal(start[k], after[k]) for k in background)


def test_init_loads_shipped_weights_into_each_stage_and_refuses_a_misfit(tmp_path):
    inversion = model_card("nextqsm-hybrid-cpu")
    hyper = {"background": SMALL["background"], "inversion": inversion["hyperparameters"]}
    values = tiny(steps=1, freeze=["inversion"])
    values["model"].update(hyperparameters=hyper, init={"inversion": "nextqsm-hybrid-cpu"})
    result = train(config_from_dict(values), tmp_path / "run", progress=False)
    shipped = load_weights("nextqsm-hybrid-cpu").model.state_dict()
    for key, value in result.model.inversion.state_dict().items():  # loaded, then kept (batch-norm statistics too)
        assert torch.equal(value, shipped[key]), key
    values["model"]["hyperparameters"] = SMALL  # another width: the shipped weights do not fit
    with pytest.raises(ParameterError, match="does not fit the inversion stage"):
        train(config_from_dict(values), tmp_path / "misfit", progress=False)
    values["model"]["hyperparameters"] = hyper
    values["normalization"] = {"input_scale_ppm": 0.01, "output_scale_ppm": 0.1}
    with pytest.raises(ParameterError, match="input/output scales"):
        train(config_from_dict(values), tmp_path / "units", progress=False)


def test_cli_ships_each_stage_as_its_own_network(tmp_path):
    config = tmp_path / "e2e.toml"
    config.write_text(CONFIG_TOML)
    out = tmp_path / "run"
    assert main(["train", str(config), "-o", str(out), "--quiet"]) == 0
    whole = load_weights(out / "tiny-e2e.json").model
    background = load_weights(out / "tiny-e2e-background.json")
    inversion = load_weights(out / "tiny-e2e-inversion.json")
    assert background.card["architecture"] == "background-unet" and inversion.card["architecture"] == "nextqsm"
    assert background.card["normalization"] == {"input_scale_ppm": 0.01, "output_scale_ppm": 0.01}
    assert inversion.card["normalization"] == {"input_scale_ppm": 0.01, "output_scale_ppm": 0.05}
    assert background.card["stage_of"] == "tiny-e2e" and inversion.card["training"]["steps"] == 2
    for stage, loaded in (("background", background), ("inversion", inversion)):
        for key, value in getattr(whole, stage).state_dict().items():
            assert torch.equal(value, loaded.model.state_dict()[key]), key
