#!/usr/bin/env python
"""Phase networks (iQSM, iQSM+) on held-out whole heads and on the suite, beside the ``fast`` recipe.

Two scores for each ``--weights`` (shipped names or card paths of ``iqsm``/``iqsm+`` networks):

- **held-out heads**: ``--heads`` whole heads of ``--config``'s simulator (seed 999, never a
  training draw) at its voxel size: the wrapped phase of each echo, its magnitude, B0 over the
  sphere. Each network runs through :func:`torchqsm.pipeline.phase_networks.phase_network_inversion`
  in the true brain mask (resampled to the card's voxel size where it differs); ``fast`` runs on
  the magnitude and phase from its own mask.
- **suite**: each ``--cases`` case of a built evaluation suite (1 mm), the same way.

χ NRMSE (demeaned, %) in one region per head or case: the brain ∩ the network's eroded mask ∩
``fast``'s final mask, so no method is scored where another has no value.

Example::

    torchqsm simulate suite /tmp/suite --case baseline --case tilt-30deg --case haemorrhage
    python benchmarks/bench_phase_heads.py --config configs/iqsm-plus-head-cpu.toml \\
        --weights iqsm-plus-hybrid-cpu runs/iqsm-plus-head-cpu/iqsm-plus-head-cpu.json \\
        --suite-dir /tmp/suite --cases baseline tilt-30deg haemorrhage
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from torchqsm.acquisition import Acquisition
from torchqsm.bench.evaluate import _echo_files, load_case
from torchqsm.io import load_gre
from torchqsm.metrics import nrmse
from torchqsm.pipeline.phase_networks import phase_network_inversion
from torchqsm.pipeline.recipes import get_recipe
from torchqsm.pipeline.subject import process_gre


def score_one(magnitude: torch.Tensor, phase: torch.Tensor, record: Acquisition, brain: torch.Tensor,
              truth: torch.Tensor, weights: list[str], lot: list[str] = ()) -> dict[str, float]:
    """NRMSE (demeaned, %) of ``fast`` and each network on one head, in the region all of them cover.

    ``lot``: regularizations (``auto`` or numbers) of :func:`torchqsm.refine.lot_consistency` (the L2 pull) on
    the data's grid, each scored after each network as ``NAME+lot(λ)``; ``recipe``: the refinement as the
    recipes run it (:func:`torchqsm.refine.lot_tv_consistency` on the data's grid, α by the phase's noise).
    """
    from torchqsm.refine import lot_consistency

    fast = process_gre(magnitude, phase, record, recipe=get_recipe("fast"))
    maps = {"fast": fast.chi_ppm}
    region = brain & (fast.local_mask > 0)
    for name in weights:
        chi, eroded = phase_network_inversion(phase, brain, record, network=name)
        maps[name] = chi
        for value in lot:
            if value == "recipe":
                maps[f"{name}+lot(recipe)"] = phase_network_inversion(phase, brain, record, network=name, refine="lot")[0]
                continue
            maps[f"{name}+lot({value})"] = lot_consistency(chi, phase, eroded, record,
                                                           regularization=value if value == "auto" else float(value))
        region = region & eroded
    return {name: nrmse(chi, truth, region, demean=True) for name, chi in maps.items()}


def held_out(config_path: Path, weights: list[str], heads: int, lot: list[str] = ()) -> dict[str, list[float]]:
    from torchqsm.simulate import SimulatedQSMDataset
    from torchqsm.train import load_config

    config = load_config(config_path)
    scores: dict[str, list[float]] = {}
    for sample in SimulatedQSMDataset(config.data, seed=999, volumes=heads):
        record = Acquisition(voxel_size_mm=tuple(sample["voxel_size_mm"].tolist()),
                             b0_dir=tuple(sample["b0_dir"].tolist()), b0_tesla=float(sample["b0_tesla"]),
                             echo_times_s=tuple(sample["echo_times_s"].tolist()))
        row = score_one(sample["magnitude"], sample["input"], record, sample["mask"][0] > 0, sample["target"][0],
                        weights, lot)
        print("head", {k: round(v, 1) for k, v in row.items()}, flush=True)
        for name, value in row.items():
            scores.setdefault(name, []).append(value)
    return scores


def suite(suite_dir: Path, cases: list[str], weights: list[str], lot: list[str] = ()) -> dict[str, dict[str, float]]:
    out = {}
    for case in cases:
        data = load_case(suite_dir / case)
        anat = suite_dir / case / "sub-01" / "anat"
        gre = load_gre(_echo_files(anat, "mag"), _echo_files(anat, "phase"))
        out[case] = score_one(gre.magnitude, gre.phase, gre.acquisition, data.mask, data.chi_ppm, weights, lot)
        print(case, {k: round(v, 1) for k, v in out[case].items()}, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the training config whose simulator gives the heads")
    parser.add_argument("--weights", nargs="+", required=True, help="phase networks: shipped names or card paths")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--suite-dir", type=Path)
    parser.add_argument("--cases", nargs="+", default=["baseline", "tilt-30deg", "haemorrhage"])
    parser.add_argument("--lot", nargs="*", default=[], metavar="LAMBDA",
                        help="also score each network refined by LoT data consistency at these regularizations "
                             "(auto, or numbers) on the data's grid, or 'recipe': as the iqsm/iqsm+ recipes run it")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    heads = held_out(args.config, args.weights, args.heads, args.lot) if args.heads else {}
    cases = suite(args.suite_dir, args.cases, args.weights, args.lot) if args.suite_dir else {}
    names = ["fast", *(f"{w}{suffix}" for w in args.weights for suffix in ["", *(f"+lot({v})" for v in args.lot)])]
    print(f"\n{time.perf_counter() - started:.0f} s; NRMSE demeaned (%), region: brain ∩ every method's mask\n")
    print("| weights | held-out heads (mean) |" + "".join(f" {c} |" for c in cases))
    print("| --- | ---: |" + " ---: |" * len(cases))
    for name in names:
        mean = sum(heads[name]) / len(heads[name]) if heads else float("nan")
        print(f"| {name} | {mean:.1f} |" + "".join(f" {cases[c][name]:.1f} |" for c in cases))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
