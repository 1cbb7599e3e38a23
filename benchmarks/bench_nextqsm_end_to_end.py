#!/usr/bin/env python
"""NeXtQSM trained apart against trained end to end: held-out heads and the evaluation suite.

Each ``--pair LABEL=BACKGROUND,INVERSION`` names the weights of the two stages (shipped names or
card paths). Two scores per pair:

- **held-out heads**: ``--heads`` whole heads of the end-to-end training simulator
  (``configs/nextqsm-pipeline-cpu.toml``'s data, seed 999, never a training draw), at its 2.5 mm,
  both stages run on the true total field as in training. Local-field and χ NRMSE (demeaned, %) in
  the brain mask.
- **suite**: the ``nextqsm`` recipe's path on each case: the ``fast`` recipe's front end gives the
  total field from the raw phase; the background stage runs at its card's voxel size (the
  pipeline resamples), the inversion at the data's. χ NRMSE demeaned and HFEN (%) in the brain ∩
  the background method's output mask (the same region for every pair: the mask does not depend
  on the weights).

Example::

    torchqsm simulate suite /tmp/suite --case baseline --case tilt-30deg
    python benchmarks/bench_nextqsm_end_to_end.py --suite-dir /tmp/suite --cases baseline tilt-30deg \\
        --pair apart=nextqsm-background-cpu,nextqsm-hybrid-cpu \\
        --pair e2e=runs/nextqsm-pipeline-cpu/nextqsm-pipeline-cpu-background.json,runs/nextqsm-pipeline-cpu/nextqsm-pipeline-cpu-inversion.json
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from torchqsm.bench.runs import load_bench_case
from torchqsm.metrics import nrmse, score
from torchqsm.models import NeXtQSMPipeline
from torchqsm.models.weights import load_weights
from torchqsm.pipeline.recipes import get_recipe
from torchqsm.pipeline.registry import invert
from torchqsm.pipeline.subject import process_gre
from torchqsm.preprocess.background import BACKGROUND_METHODS
from torchqsm.simulate import SimulatedQSMDataset
from torchqsm.train import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "nextqsm-pipeline-cpu.toml"


def _pair(text: str) -> tuple[str, str, str]:
    label, _, weights = text.partition("=")
    background, _, inversion = weights.partition(",")
    if not (label and background and inversion):
        raise argparse.ArgumentTypeError(f"expected LABEL=BACKGROUND,INVERSION, got {text!r}")
    return label, background, inversion


def _pipeline(background: str, inversion: str) -> tuple[NeXtQSMPipeline, float, float]:
    """The two stages' weights in one network, with its field unit and χ unit (ppm)."""
    stages = load_weights(background), load_weights(inversion)
    net = NeXtQSMPipeline(background=stages[0].card["hyperparameters"], inversion=stages[1].card["hyperparameters"])
    net.background.load_state_dict(stages[0].model.state_dict())
    net.inversion.load_state_dict(stages[1].model.state_dict())
    return net.eval(), stages[1].normalization.input_scale_ppm, stages[1].normalization.output_scale_ppm


def held_out(pairs, heads: int) -> dict[str, tuple[float, float]]:
    config = load_config(CONFIG)
    samples = list(SimulatedQSMDataset(config.data, seed=999, volumes=heads))
    results = {}
    for label, background, inversion in pairs:
        net, field_unit, chi_unit = _pipeline(background, inversion)
        local_errors, chi_errors = [], []
        for sample in samples:
            mask = sample["mask"][None]
            with torch.no_grad():
                chi, local = net(sample["input"][None] / field_unit, mask, b0_dir=sample["b0_dir"][None],
                                 voxel_size_mm=sample["voxel_size_mm"][None], chi_to_field=chi_unit / field_unit,
                                 return_local=True)
            inside = mask[0, 0] > 0
            local_errors.append(float(nrmse(local[0, 0] * field_unit, sample["local"][0], inside, demean=True)))
            chi_errors.append(float(nrmse(chi[0, 0] * chi_unit, sample["target"][0], inside, demean=True)))
        results[label] = (sum(local_errors) / len(local_errors), sum(chi_errors) / len(chi_errors))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=_pair, action="append", required=True, metavar="LABEL=BACKGROUND,INVERSION")
    parser.add_argument("--suite-dir", type=Path)
    parser.add_argument("--cases", nargs="+", default=["baseline"])
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    if args.heads:
        print(f"\nheld-out heads ({args.heads}, 2.5 mm, seed 999): NRMSE demeaned (%) in the brain mask")
        print("| pair | local field | χ |\n| --- | ---: | ---: |")
        for label, (local_error, chi_error) in held_out(args.pair, args.heads).items():
            print(f"| {label} | {local_error:.1f} | {chi_error:.1f} |", flush=True)
    if args.suite_dir is None:
        return
    front = replace(get_recipe("fast"), inversion="tkd")
    print("\nsuite, the nextqsm recipe's path: χ NRMSE demeaned / HFEN (%)")
    print("| case | " + " | ".join(label for label, _, _ in args.pair) + " |")
    print("| --- | " + " | ".join("---:" for _ in args.pair) + " |")
    for name in args.cases:
        case, gre, _ = load_bench_case(str(args.suite_dir / name))
        acquisition = gre.acquisition
        total = process_gre(gre.magnitude.clone(), gre.phase.clone(), acquisition, recipe=front)
        cells = []
        for _, background, inversion in args.pair:
            out = BACKGROUND_METHODS["nextqsm"](total.total_field_ppm, total.mask.bool(), weights=background,
                                                voxel_size_mm=acquisition.voxel_size_mm, b0_dir=acquisition.b0_dir)
            region = case.mask.bool() & out.mask
            chi = invert(out.local_field_ppm, out.mask, "nextqsm", acquisition, weights=inversion)
            metrics = score(chi * region, case.chi_ppm, region, labels=case.labels * region)
            cells.append(f"{metrics['nrmse_demeaned']:.1f} / {metrics['hfen']:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
