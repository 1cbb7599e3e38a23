"""Training: configuration, losses, determinism, checkpoints and exact resume (tiny networks, CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.physics import DipoleOp
from torchqsm.train import LossWeights, config_from_dict, load_checkpoint, load_config, masked_losses, train

TINY = {
    "model": {"architecture": "unet", "name": "tiny", "hyperparameters": {"base_channels": 2, "depth": 2}},
    "data": {"source": "shapes", "shapes_volume": [24, 24, 24], "patch_size": [16, 16, 16], "pad": 8,
             "patches_per_volume": 3},
    "training": {"steps": 12, "batch_size": 2, "workers": 0, "learning_rate": 1e-3, "checkpoint_every": 5,
                 "log_every": 1, "loss": {"mse": 1.0, "model": 0.5, "gradient": 0.1}},
}


def tiny(**training) -> dict:
    values = json.loads(json.dumps(TINY))
    values["training"].update(training)
    return values


def test_same_seed_same_first_ten_losses(tmp_path):
    config = config_from_dict(tiny(steps=10))
    first = train(config, tmp_path / "a", progress=False).losses
    second = train(config, tmp_path / "b", progress=False).losses
    assert len(first) == 10 and first == second
    other = train(config_from_dict(tiny(steps=10, seed=1)), tmp_path / "c", progress=False).losses
    assert other != first


def test_resume_continues_the_same_loss_curve(tmp_path):
    config = config_from_dict(tiny())
    straight = train(config, tmp_path / "straight", progress=False)
    part = train(config, tmp_path / "split", progress=False, stop_after=5)
    assert part.step == 5
    rest = train(config, tmp_path / "split", resume=True, progress=False)
    assert rest.step == 12
    assert part.losses + rest.losses == pytest.approx(straight.losses, rel=1e-5, abs=1e-7)
    log = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))  # no duplicated or missing step after the resume


def test_resume_with_two_workers_skips_each_workers_share(tmp_path):
    config = config_from_dict(tiny(workers=2, steps=8))
    straight = train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "split", progress=False, stop_after=3)
    rest = train(config, tmp_path / "split", resume=True, progress=False)
    assert rest.losses == pytest.approx(straight.losses[3:], rel=1e-5, abs=1e-7)


def test_checkpoint_round_trip_is_exact(tmp_path):
    config = config_from_dict(tiny(steps=5))
    result = train(config, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 5 and state["config"] == config.as_dict()
    for key, value in result.model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    assert state["optimizer"]["state"], "Adam moments are saved"


def test_resume_refuses_another_configuration(tmp_path):
    train(config_from_dict(tiny(steps=3)), tmp_path, progress=False)
    with pytest.raises(ParameterError, match="another configuration"):
        train(config_from_dict(tiny(steps=3, learning_rate=5e-4)), tmp_path, resume=True, progress=False)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no checkpoint"):
        train(config_from_dict(tiny(steps=3)), tmp_path, resume=True, progress=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable"):
        train(config_from_dict(tiny(steps=3)), tmp_path, resume=True, progress=False)


def test_training_lowers_the_loss(tmp_path):
    config = config_from_dict(tiny(steps=40, learning_rate=3e-3, checkpoint_every=40, log_every=40))
    losses = train(config, tmp_path, progress=False).losses
    assert sum(losses[-8:]) / 8 < 0.8 * sum(losses[:8]) / 8


@pytest.mark.parametrize(("values", "message"), [
    ({"training": {"steps": 1}}, "architecture"),
    ({"model": {"architecture": "resnet"}}, "unknown architecture"),
    ({"model": {"architecture": "unet"}, "training": {"steps": 0}}, "steps"),
    ({"model": {"architecture": "unet"}, "training": {"stepz": 3}}, "unknown keys"),
    ({"model": {"architecture": "unet"}, "training": {"loss": {"mse": 0.0}}}, "loss weights"),
    ({"model": {"architecture": "unet"}, "data": {"task": "phase_to_chi"}}, "local_to_chi"),
    ({"model": {"architecture": "unet"}, "optimiser": {}}, "unknown tables"),
    ({"model": {"architecture": "unet"}, "training": {"milestones": [1.5]}}, "milestones"),
    ({"model": {"architecture": "unet"}, "training": {"clip_grad_norm": -1.0}}, "clip_grad_norm"),
])
def test_bad_configurations_are_named(values, message):
    with pytest.raises(ParameterError, match=message):
        config_from_dict(values)


def test_load_config_reads_toml_and_names_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\narchitecture = "qsmnet"\nhyperparameters = { base_channels = 2 }\n'
                    '[training]\nsteps = 3\nlearning_rate = 1\n[validation]\nsuite_dir = "suite"\n')
    config = load_config(path)
    assert config.model.architecture == "qsmnet" and config.training.learning_rate == 1.0
    assert config.validation.suite_dir == str((tmp_path / "suite").resolve())
    path.write_text("[model\n")
    with pytest.raises(InputError, match="run.toml"):
        load_config(path)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_losses_against_hand_computed_values():
    generator = torch.Generator().manual_seed(0)
    estimate, target = torch.randn(2, 1, 8, 8, 8, generator=generator), torch.randn(2, 1, 8, 8, 8, generator=generator)
    mask = (torch.rand(2, 1, 8, 8, 8, generator=generator) > 0.3).float()
    b0 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]])
    voxel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 2.0]])
    terms = masked_losses(estimate, target, mask, LossWeights(mse=1, l1=1, model=1, gradient=1), b0_dir=b0,
                          voxel_size_mm=voxel)
    error = (estimate - target) * mask
    n = mask.sum()
    assert float(terms["mse"]) == pytest.approx(float(error.square().sum() / n), rel=1e-6)
    assert float(terms["l1"]) == pytest.approx(float(error.abs().sum() / n), rel=1e-6)
    fields = torch.stack([DipoleOp((8, 8, 8), voxel_size_mm=v.tolist(), b0_dir=d.tolist())(e)
                          for e, d, v in zip(error, b0, voxel)])
    assert float(terms["model"]) == pytest.approx(float((fields * mask).square().sum() / n), rel=1e-5)
    assert float(masked_losses(target, target, mask, LossWeights(gradient=1))["gradient"]) == 0.0
    assert float(terms["gradient"]) > 0


def _estimate_target_mask(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random target, an estimate off by 30 % noise, and a random mask, each ``(samples, 1, 8, 8, 8)``."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(samples, 1, 8, 8, 8, generator=generator)
    estimate = target + 0.3 * torch.randn(samples, 1, 8, 8, 8, generator=generator)
    mask = (torch.rand(samples, 1, 8, 8, 8, generator=generator) > 0.3).float()
    return estimate, target, mask


def test_relative_losses_weigh_every_sample_by_its_own_rms():
    """A sample ten times larger (a haemorrhage) adds the same relative loss as its unscaled copy."""
    estimate, target, mask = _estimate_target_mask(1, seed=1)
    weights = LossWeights(mse=1, l1=1, gradient=1)
    one = masked_losses(estimate, target, mask, weights, relative=True)
    both = masked_losses(torch.cat([estimate, 10 * estimate]), torch.cat([target, 10 * target]), mask.repeat(2, 1, 1, 1, 1),
                         weights, relative=True)
    for name in ("mse", "l1", "gradient"):
        assert float(both[name]) == pytest.approx(float(one[name]), rel=1e-5)
    rms = float(((target * mask).square().sum() / mask.sum()).sqrt())
    expected = float(((estimate - target) * mask).square().sum() / mask.sum()) / rms ** 2
    assert float(one["mse"]) == pytest.approx(expected, rel=1e-5)
    absolute = masked_losses(torch.cat([estimate, 10 * estimate]), torch.cat([target, 10 * target]),
                             mask.repeat(2, 1, 1, 1, 1), weights)
    assert float(absolute["mse"]) > 40 * float(both["mse"]) * rms ** 2


def test_demeaned_losses_ignore_each_samples_offset():
    estimate, target, mask = _estimate_target_mask(2, seed=2)
    weights = LossWeights(mse=1, l1=1, gradient=1)
    offset = torch.tensor([5.0, -3.0]).reshape(2, 1, 1, 1, 1)
    plain = masked_losses(estimate, target, mask, weights, demean=True, relative=True)
    shifted = masked_losses(estimate + offset, target, mask, weights, demean=True, relative=True)
    for name in ("mse", "l1", "gradient"):
        assert float(shifted[name]) == pytest.approx(float(plain[name]), rel=1e-5)
    error = (estimate - target)[0][mask[0] > 0]
    std = float(target[0][mask[0] > 0].std(unbiased=False))
    one = masked_losses(estimate[:1], target[:1], mask[:1], LossWeights(mse=1), demean=True, relative=True)
    assert float(one["mse"]) == pytest.approx(float(error.var(unbiased=False)) / std ** 2, rel=1e-5)
    assert float(masked_losses(estimate + offset, target, mask, weights)["mse"]) > 10 * float(plain["mse"])


def test_clipping_changes_the_steps_only_when_the_norm_exceeds_it(tmp_path):
    plain = train(config_from_dict(tiny(steps=4)), tmp_path / "plain", progress=False).losses
    loose = train(config_from_dict(tiny(steps=4, clip_grad_norm=1e9)), tmp_path / "loose", progress=False).losses
    tight = train(config_from_dict(tiny(steps=4, clip_grad_norm=1e-4)), tmp_path / "tight", progress=False).losses
    assert loose == plain
    assert tight[0] == plain[0]  # measured before the first step
    assert tight[1:] != pytest.approx(plain[1:], rel=1e-6)
    records = [json.loads(line) for line in (tmp_path / "tight" / "metrics.jsonl").read_text().splitlines()]
    norms = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert len(norms) == 4 and min(norms) > 1e-4  # logged before clipping


@pytest.mark.parametrize("architecture", ["lpcnn", "noqsm", "noqsm-sd", "nextqsm"])
def test_data_consistent_networks_train_and_resume(tmp_path, architecture):
    """Each data-consistent network trains on patches with their own field, and resumes on the same curve."""
    values = tiny(steps=6, checkpoint_every=3)
    hyper = {"stages": 2, "base_channels": 2} if architecture == "nextqsm" else {"channels": 2, "blocks": 1}
    values["model"] = {"architecture": architecture, "name": "tiny", "hyperparameters": hyper}
    values["data"]["patch_dipole"] = True
    values["data"]["max_tilt_deg"] = 90.0
    whole = train(config_from_dict(values), tmp_path / "whole", progress=False).losses
    assert all(math.isfinite(v) for v in whole)
    train(config_from_dict(values), tmp_path / "parts", progress=False, stop_after=3)
    rest = train(config_from_dict(values), tmp_path / "parts", resume=True, progress=False).losses
    assert rest == pytest.approx(whole[3:], rel=1e-5)


@pytest.mark.parametrize("architecture", ["iqsm", "iqsm+"])
def test_phase_networks_train_on_wrapped_phase(tmp_path, architecture):
    """iQSM and iQSM+ train on phase_to_chi samples (wrapped phase, echo times, B0 strength and direction)."""
    values = tiny(steps=4, checkpoint_every=4, loss={"mse": 1.0})
    values["model"] = {"architecture": architecture, "name": "tiny",
                       "hyperparameters": {"base_channels": 2, "depth": 2}}
    values["data"].update(task="phase_to_chi", max_tilt_deg=90.0)
    losses = train(config_from_dict(values), tmp_path, progress=False).losses
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("architecture", ["unet", "iqsm+"])
def test_whole_volumes_of_any_size_train(tmp_path, architecture):
    """Whole volumes (patch_size []) whose sizes are no multiple of the U-Net's 2**depth are padded, not a crash."""
    values = tiny(steps=2, checkpoint_every=2, batch_size=1, loss={"mse": 1.0})
    values["model"] = {"architecture": architecture, "name": "tiny", "hyperparameters": {"base_channels": 2, "depth": 2}}
    values["data"].update(shapes_volume=[18, 21, 19], patch_size=[], pad=4)
    if architecture == "iqsm+":
        values["data"].update(task="phase_to_chi", max_tilt_deg=90.0)
    losses = train(config_from_dict(values), tmp_path, progress=False).losses
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)


def test_padding_a_batch_leaves_the_loss_unchanged():
    """The zeros around a padded whole volume lie outside its mask: every loss term is the same."""
    from torchqsm.train.loop import _pad_batch

    generator = torch.Generator().manual_seed(0)
    shape = (1, 1, 9, 10, 11)
    mask = (torch.rand(shape, generator=generator) > 0.3).float()
    batch = {"input": torch.randn(shape, generator=generator), "target": torch.randn(shape, generator=generator) * mask,
             "mask": mask, "b0_dir": torch.tensor([[0.0, 0.0, 1.0]]), "voxel_size_mm": torch.ones(1, 3)}
    padded = _pad_batch(batch, 4)
    assert padded["mask"].shape[-3:] == (12, 12, 12) and padded["b0_dir"] is batch["b0_dir"]
    weights = LossWeights(mse=1.0, l1=0.5, gradient=0.1)
    before = masked_losses(batch["input"] * mask, batch["target"], mask, weights)
    after = masked_losses(padded["input"] * padded["mask"], padded["target"], padded["mask"], weights)
    for name in before:
        assert float(after[name]) == pytest.approx(float(before[name]), rel=1e-5), name
    assert _pad_batch(padded, 4) is padded


def test_phase_networks_refuse_a_field_task():
    values = tiny()
    values["model"] = {"architecture": "iqsm+", "name": "tiny"}
    with pytest.raises(ParameterError, match="phase_to_chi"):
        config_from_dict(values)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_builds_its_network(path):
    """A config in configs/ is what a user trains from: it must read and its network must build."""
    from torchqsm.models import build_model

    config = load_config(path)
    model = build_model(config.model.architecture, **config.model.hyperparameters)
    assert config.model.name == path.stem
    assert sum(p.numel() for p in model.parameters()) > 0


def test_an_orientation_adaptive_network_trains_and_predicts_with_the_b0_direction(tmp_path):
    """U-Net + OA-LFE on local fields (the ablation of iQSM+): each sample's B0 direction reaches the OA-LFE
    modules in training, and prediction needs it."""
    from torchqsm.models.inference import predict

    values = tiny(steps=4)
    values["model"]["hyperparameters"]["orientation_adaptive"] = True
    values["data"]["max_tilt_deg"] = 90.0
    result = train(config_from_dict(values), tmp_path, progress=False)
    assert len(result.losses) == 4 and all(math.isfinite(v) for v in result.losses)
    model = result.model
    assert any(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if "editors" in n and p.grad is not None)
    field, mask = torch.randn(16, 16, 16) * 0.01, torch.ones(16, 16, 16, dtype=torch.bool)
    axial = predict(model, field, mask, normalization=config_from_dict(values).normalization, b0_dir=(0.0, 0.0, 1.0))
    oblique = predict(model, field, mask, normalization=config_from_dict(values).normalization, b0_dir=(0.6, 0.0, 0.8))
    assert axial.shape == (16, 16, 16) and bool(torch.isfinite(oblique).all())
    with pytest.raises(ParameterError, match="needs the B0 direction"):
        predict(model, field, mask, normalization=config_from_dict(values).normalization)


def test_resume_with_more_steps_extends_the_schedule(tmp_path):
    """A finished run goes on when only training.steps grows: the milestones move, the rate follows them."""
    short = tiny(steps=6, milestones=[0.5], gamma=0.1, learning_rate=1e-3)
    train(config_from_dict(short), tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    longer = config_from_dict({**short, "training": {**short["training"], "steps": 20}})
    rest = train(longer, tmp_path, resume=True, progress=False)
    assert rest.step == 20 and len(rest.losses) == 14
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = {r["step"]: r["learning_rate"] for r in log}
    assert rates[7] == pytest.approx(1e-3) and rates[9] == pytest.approx(1e-3)  # the milestone is at 10 now
    assert rates[10] == pytest.approx(1e-4) and rates[20] == pytest.approx(1e-4)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["extra"]["extended_from"] == [6] and state["config"]["training"]["steps"] == 20
    with pytest.raises(ParameterError, match="another configuration"):  # fewer steps is not an extension
        train(config_from_dict(short), tmp_path, resume=True, progress=False)
    # Going on at the annealed rate: a milestone before the checkpoint's step.
    annealed = config_from_dict({**short, "training": {**short["training"], "steps": 30, "milestones": [0.1, 0.9]}})
    train(annealed, tmp_path, resume=True, progress=False)
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rates = {r["step"]: r["learning_rate"] for r in log}
    assert rates[21] == pytest.approx(1e-4) and rates[27] == pytest.approx(1e-5)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["extra"]["extended_from"] == [6, 20]


def test_resume_accepts_a_checkpoint_written_before_an_option_existed(tmp_path):
    """Options added later with their default (here the data's vein_factor) do not orphan a saved run."""
    config = config_from_dict(tiny(steps=4))
    train(config, tmp_path, progress=False, stop_after=2)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state["config"]["data"]["vein_factor"]
    torch.save(state, tmp_path / "checkpoint.pt")
    assert train(config, tmp_path, resume=True, progress=False).step == 4


def test_a_run_resumed_only_to_write_its_weights_keeps_the_hardware_it_trained_on(tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        trained = train(config_from_dict(tiny(steps=2)), tmp_path, progress=False)
        torch.set_num_threads(2)
        written = train(config_from_dict(tiny(steps=2)), tmp_path, resume=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert "1 threads" in trained.hardware and written.losses == ()
    assert written.hardware == trained.hardware


def test_network_init_starts_the_whole_network_from_shipped_weights(tmp_path):
    """`init = { network = CARD }` fine-tunes: an iQSM+ with another echo weighting starts from a first
    run's weights (every tensor equal at step 0), and a card of other shapes is refused by name."""
    from torchqsm.models import build_model
    from torchqsm.models.weights import example_card, load_weights, save_weights
    from torchqsm.train.loop import _init_stages

    values = {"model": {"architecture": "iqsm+", "name": "first",
                        "hyperparameters": {"base_channels": 2, "depth": 2}},
              "data": {"task": "phase_to_chi", "source": "shapes", "shapes_volume": [24, 24, 24],
                       "patch_size": [16, 16, 16], "pad": 8, "patches_per_volume": 1},
              "training": {"steps": 2, "batch_size": 1, "workers": 0, "log_every": 1}}
    first_run = config_from_dict(values)
    trained = train(first_run, tmp_path / "first", progress=False).model
    card = save_weights(trained, {**example_card("first", architecture="iqsm+", base_channels=2, depth=2),
                                  "normalization": first_run.normalization.as_dict()}, tmp_path, "first")
    card = Path(card).with_suffix(".json")
    values["model"].update(name="second", init={"network": str(card)},
                           hyperparameters={"base_channels": 2, "depth": 2, "echo_weighting": "reliability"})
    config = config_from_dict(values)
    model = build_model("iqsm+", **config.model.hyperparameters)
    _init_stages(model, config)
    first = json.loads(card.read_text())
    expected = load_weights(str(card)).model.state_dict()
    assert first["name"] == "first" and all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert train(config, tmp_path / "second", progress=False).step == 2
    values["model"]["hyperparameters"] = {"base_channels": 4, "depth": 2}
    with pytest.raises(ParameterError, match="does not fit"):
        _init_stages(build_model("iqsm+", base_channels=4, depth=2), config_from_dict(values))
    values["model"]["init"] = {"network": str(card), "background": "x"}
    with pytest.raises(ParameterError, match="no other stage"):
        config_from_dict(values)
