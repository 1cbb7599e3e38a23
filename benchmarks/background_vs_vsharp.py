#!/usr/bin/env python
"""A background U-Net checkpoint against V-SHARP on held-out simulated whole heads.

Draws ``COUNT`` heads from the training configuration's own simulator with a seed the run never
used (999) and prints, per head, the local-field NRMSE (%, demeaned) of the network and of V-SHARP
(default radii) in the region where V-SHARP defines the local field; predicting zero scores 100 %.
In distribution only: the suite's cases are the test of a pipeline method.

Example::

    python benchmarks/background_vs_vsharp.py configs/nextqsm-background-cpu.toml \\
        runs/nextqsm-background-cpu/checkpoint.pt --count 6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from torchqsm.metrics import nrmse
from torchqsm.preprocess.background.sharp import vsharp
from torchqsm.simulate import SimulatedQSMDataset
from torchqsm.train import load_checkpoint, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learned_vs_untrained import trained_network  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, state = load_config(args.config), load_checkpoint(args.checkpoint)
    network = trained_network(config, state)
    norm = config.normalization
    samples = iter(SimulatedQSMDataset(config.data, seed=999))
    scores = []
    for index in range(args.count):
        sample = next(samples)
        total, local, mask = sample["input"][0], sample["target"][0], sample["mask"][0] > 0
        classical = vsharp(total, mask, voxel_size_mm=tuple(sample["voxel_size_mm"].tolist()),
                           b0_dir=tuple(sample["b0_dir"].tolist()))
        region = classical.mask.bool() & mask
        with torch.no_grad():
            learned = network(norm.to_network(sample["input"][None]), sample["mask"][None])[0, 0]
        learned = learned * norm.output_scale_ppm
        scores.append((float(nrmse(learned, local, region, demean=True)),
                       float(nrmse(classical.local_field_ppm, local, region, demean=True))))
        print(f"head {index}: network {scores[-1][0]:.1f} %   V-SHARP {scores[-1][1]:.1f} %", flush=True)
    network_mean, vsharp_mean = (sum(s[i] for s in scores) / len(scores) for i in (0, 1))
    print(f"mean over {len(scores)} heads (step {state['step']}): network {network_mean:.1f} %   "
          f"V-SHARP {vsharp_mean:.1f} %")


if __name__ == "__main__":
    main()
