#!/usr/bin/env python
"""A phase network (iQSM / iQSM+) on cases of the evaluation suite, from the wrapped multi-echo phase.

The network reads each case's wrapped phase, echo times, field strength and B0 direction (from
its files, as ``torchqsm.io.load_gre`` reads them) and the true brain mask, and returns χ; the
score is the NRMSE (%) after demeaning, in the brain mask eroded by one voxel (the LoT stencil's
reach, where the network's input is defined). This is the measurement the registry method and
``torchqsm run --recipe iqsm+`` will be built on; it prints a Markdown table and writes nothing.

Example::

    python benchmarks/iqsm_suite.py training/iqsm-plus-hybrid-cpu/iqsm-plus-hybrid-cpu.safetensors \\
        --suite-dir SUITE --cases baseline tilt-30deg tilt-60deg
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from torchqsm.bench.evaluate import _echo_files, load_case
from torchqsm.io import load_gre
from torchqsm.metrics import nrmse
from torchqsm.models.weights import load_weights


def run_case(loaded, case_dir: Path) -> tuple[float, float]:
    """NRMSE (%, demeaned, eroded mask) and seconds of the network on one case."""
    case = load_case(case_dir)
    trained = tuple(float(v) for v in loaded.card.get("hyperparameters", {}).get("voxel_size_mm", (1.0, 1.0, 1.0)))
    if any(abs(a - b) > 1e-6 for a, b in zip(case.voxel_size_mm, trained)):
        raise SystemExit(f"{case_dir}: voxel size {tuple(case.voxel_size_mm)} mm, but the network's LoT stencil is "
                         f"for {trained} mm (use the 1 mm suite)")
    anat = case_dir / "sub-01" / "anat"
    gre = load_gre(_echo_files(anat, "mag"), _echo_files(anat, "phase"))
    phase = gre.phase.float()
    mask = case.mask
    multiple = loaded.model.multiple
    pads = []
    for n in reversed(phase.shape[-3:]):
        pads += [0, (-n) % multiple]
    started = time.perf_counter()
    with torch.no_grad():
        out = loaded.model(F.pad(phase[None], pads), F.pad(mask.float()[None, None], pads),
                           echo_times_s=list(gre.echo_times_s), b0_tesla=float(gre.b0_tesla),
                           b0_dir=list(case.b0_dir))
    seconds = time.perf_counter() - started
    chi = loaded.normalization.from_network(out)[0, 0][tuple(slice(0, n) for n in mask.shape)]
    inner = -F.max_pool3d(-mask.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    estimate = (chi - chi[inner].mean()) * inner
    truth = (case.chi_ppm - case.chi_ppm[inner].mean()) * inner
    return nrmse(estimate.double(), truth.double(), inner), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", help="NAME.safetensors (its card beside it) or a shipped name")
    parser.add_argument("--suite-dir", type=Path, required=True)
    parser.add_argument("--cases", nargs="+", default=["baseline", "tilt-30deg", "tilt-60deg"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_weights(args.weights)
    print(f"| case | NRMSE (%) | seconds |\n| --- | ---: | ---: |")
    for name in args.cases:
        error, seconds = run_case(loaded, args.suite_dir / name)
        print(f"| {name} | {error:.1f} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
