#!/usr/bin/env python
"""What training changed: a trained network against the same architecture untrained, on held-out patches.

Draws ``--patches`` patches from the training configuration's own simulator with a seed the run
never used (999), and prints the relative error ‖M(χ̂ − χ)‖ / ‖Mχ‖ (and its demeaned form, each of χ̂ and χ
minus its mean in the mask, as the suite scores) of the untrained network
(``torch.manual_seed(0)``, the initialisation the run started from) and of the checkpoint.
For the data-consistent networks the untrained network is already a physics solver (iterated
Tikhonov for ``noqsm``, gradient steps for ``lpcnn``/``nextqsm``), so the difference is what
the learned prior adds.

Example::

    python benchmarks/learned_vs_untrained.py configs/noqsm-hybrid-cpu.toml runs/noqsm-hybrid-cpu/checkpoint.pt
"""

from __future__ import annotations

import argparse

import torch

from torchqsm.metrics import nrmse
from torchqsm.models import build_model, is_physics
from torchqsm.simulate import SimulatedQSMDataset
from torchqsm.train import load_checkpoint, load_config


def trained_network(config, state: dict) -> torch.nn.Module:
    """The network of a run's configuration with a checkpoint's weights, in evaluation mode."""
    network = build_model(config.model.architecture, **config.model.hyperparameters)
    network.load_state_dict(state["model"])
    return network.eval()


def relative_errors(network, samples, config, *, demean: bool = False) -> list[float]:
    norm = config.normalization
    ratio = norm.output_scale_ppm / norm.input_scale_ppm
    errors = []
    with torch.no_grad():
        for s in samples:
            x, m = norm.to_network(s["input"][None]), s["mask"][None]
            target = norm.chi_to_network(s["target"][None])
            if is_physics(network):
                y = network(x, m, b0_dir=s["b0_dir"][None], voxel_size_mm=s["voxel_size_mm"][None], chi_to_field=ratio)
            else:
                y = network(x)
            errors.append(float(nrmse(y[0, 0], target[0, 0], m[0, 0], demean=demean)) / 100)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--patches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    state = load_checkpoint(args.checkpoint, map_location="cpu")
    torch.manual_seed(config.training.seed)
    untrained = build_model(config.model.architecture, **config.model.hyperparameters).eval()
    trained = trained_network(config, state)
    volumes = -(-args.patches // config.data.patches_per_volume)
    samples = list(SimulatedQSMDataset(config.data, seed=999, volumes=volumes))[: args.patches]
    for name, network in (("untrained", untrained), (f"trained ({state['step']} steps)", trained)):
        errors = relative_errors(network, samples, config)
        demeaned = relative_errors(network, samples, config, demean=True)
        print(f"{name:24s} mean {sum(errors) / len(errors):.3f} (demeaned {sum(demeaned) / len(demeaned):.3f})  "
              + " ".join(f"{e:.3f}" for e in errors))


if __name__ == "__main__":
    main()
