#!/usr/bin/env python
"""Background removal judged by the χ it leads to: classical methods and NeXtQSM's U-Net on the suite.

For each case of a built evaluation suite: the ``fast`` recipe's front end (mask, congruent
Laplacian unwrapping, echo differences) runs once on the case's magnitude and wrapped phase and
gives the total field. Every background method then removes the background, and every inversion
inverts each local field. χ is scored (NRMSE demeaned, HFEN, %) against the truth in one region
for all: the brain ∩ every method's output mask, so no method is scored on voxels another dropped.
Each method's own fraction of the brain is listed too; the local-field NRMSE (demeaned, same region)
is listed for reference only (its harmonic part cannot be told from background by any method).

Example::

    torchqsm simulate suite /tmp/suite --case baseline --case tilt-30deg
    python benchmarks/bench_background.py --suite-dir /tmp/suite --cases baseline tilt-30deg
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from torchqsm.bench.runs import load_bench_case
from torchqsm.metrics import nrmse, score
from torchqsm.pipeline.recipes import get_recipe
from torchqsm.pipeline.registry import invert
from torchqsm.pipeline.subject import process_gre
from torchqsm.preprocess.background import BACKGROUND_METHODS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-dir", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=["baseline"])
    parser.add_argument("--backgrounds", nargs="+", default=["vsharp", "pdf", "ismv", "nextqsm"])
    parser.add_argument("--inversions", nargs="+", default=["tikhonov", "nextqsm"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    front = replace(get_recipe("fast"), inversion="tkd")
    print(f"torch {torch.__version__}, {args.threads} threads; χ NRMSE / HFEN (%) in the common region")
    for name in args.cases:
        case, gre, _ = load_bench_case(str(args.suite_dir / name))
        acquisition = gre.acquisition
        result = process_gre(gre.magnitude.clone(), gre.phase.clone(), acquisition, recipe=front)
        total, mask = result.total_field_ppm, result.mask.bool()
        locals_, seconds = {}, {}
        for background in args.backgrounds:
            started = time.perf_counter()
            out = BACKGROUND_METHODS[background](total, mask, voxel_size_mm=acquisition.voxel_size_mm,
                                                 b0_dir=acquisition.b0_dir)
            seconds[background] = time.perf_counter() - started
            locals_[background] = out
        common = case.mask.bool()
        for out in locals_.values():
            common = common & out.mask
        brain = int(case.mask.sum())
        print(f"\n{name}: common region {100 * int(common.sum()) / brain:.1f} % of the brain")
        print("| background | brain kept (%) | time (s) | local field NRMSE (%) | "
              + " | ".join(f"{inv} NRMSE | {inv} HFEN" for inv in args.inversions) + " |")
        print("| --- | ---: | ---: | ---: | " + " | ".join("---: | ---:" for _ in args.inversions) + " |")
        for background, out in locals_.items():
            kept = 100 * int((out.mask & case.mask.bool()).sum()) / brain
            field_error = float(nrmse(out.local_field_ppm, case.true_local_field_ppm, common, demean=True))
            cells = []
            for inversion in args.inversions:
                chi = invert(out.local_field_ppm, out.mask, inversion, acquisition)
                metrics = score(chi * common, case.chi_ppm, common, labels=case.labels * common)
                cells.append(f"{metrics['nrmse_demeaned']:.1f} | {metrics['hfen']:.1f}")
            print(f"| {background} | {kept:.1f} | {seconds[background]:.1f} | {field_error:.1f} | "
                  + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
