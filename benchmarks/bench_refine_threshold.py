#!/usr/bin/env python
"""DF-QSM stopping rule: the paper's absolute gradient norm 0.75 against the scale-free one.

Paper-like setup (Paluru et al. 2024, Dataset I): 1 mm brains on a 176×176×160 grid,
local field in ppm of B0 (the units of the QSMnet data the paper used), B0 along the
third axis, the default padding of 16 voxels. Each subject is the shipped head model
with random textured χ (``simulate.hybrid_chi``) and 40 veins, its brain-only field
computed on the whole head (padding 32) and cropped to the top 160 slices and the
central 176×176 of the brain, plus white noise of 0.0015 ppm (phase noise 0.03 rad
at 3 T, TE 25 ms). The initial estimate imitates a network's output: χ blurred
(Gaussian σ voxels), scaled down (networks under-estimate contrast) plus smooth noise.

For each subject the script records, per DF-QSM iteration (α = 1, ``tolerance=0``),
the gradient norm :math:`\\lVert\\nabla E\\rVert` and :math:`\\rho = \\lVert\\nabla E\\rVert /
\\lVert SDMf\\rVert`, and reports

* the calibration :math:`0.75/\\lVert SDMf\\rVert` (the relative threshold equal to the
  paper's absolute one on that volume) and its mean over subjects;
* the iteration at which the absolute rule (0.75) and the relative rule
  (``DEFAULT_TOLERANCE``) stop, and the NRMSE (%) there;
* the ρ at which the absolute rule would fire with the same data in radians (TE 25 ms,
  3 T; ×20.06) or Hz (3 T; ×127.7), and where that is reached within the run: the
  relative rule does not move.

Usage (about 3 minutes on 2 busy cores)::

    python benchmarks/bench_refine_threshold.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from torchqsm.metrics import nrmse
from torchqsm.physics import DipoleOp, MaskOp, radians_per_ppm
from torchqsm.refine import DEFAULT_TOLERANCE, dfqsm
from torchqsm.simulate import TISSUES, add_veins, forward_field, hybrid_chi, load_head_model

PAPER_THRESHOLD = 0.75
SHAPE = (176, 176, 160)
PAD = 16
NOISE_PPM = 0.0015
#: per subject: (seed, blur σ in voxels, contrast scale of the network-like estimate)
SUBJECTS = ((0, 1.0, 0.75), (1, 1.5, 0.85), (2, 0.7, 0.65))


def _blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=volume.dtype) ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    out = volume[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = taps.numel()
        padding = [radius if a == axis else 0 for a in range(3)]
        out = F.conv3d(out, taps.view(shape), padding=padding)
    return out[0, 0]


def subject(seed: int, sigma: float, scale: float):
    """(true χ, noisy local field, mask, network-like χ0) on the 176×176×160 grid."""
    g = torch.Generator().manual_seed(seed)
    head = load_head_model()
    brain = head.brain_mask
    chi = hybrid_chi(head.labels, chi_ranges_ppm={t.label: t.chi_range_ppm for t in TISSUES}, generator=g) * brain
    chi = add_veins(chi, brain, count=40, generator=g) * brain
    field = forward_field(chi, pad=32)
    voxels = brain.nonzero()
    centre = ((voxels.min(0).values + voxels.max(0).values) // 2).tolist()
    top = int(voxels[:, 2].max()) + 6
    crop = (slice(centre[0] - SHAPE[0] // 2, centre[0] + SHAPE[0] // 2),
            slice(centre[1] - SHAPE[1] // 2, centre[1] + SHAPE[1] // 2), slice(top - SHAPE[2], top))
    chi, field, mask = chi[crop], field[crop], brain[crop]
    field = (field + NOISE_PPM * torch.randn(field.shape, generator=g)) * mask
    chi0 = (scale * _blur(chi, sigma) + 0.005 * _blur(torch.randn(chi.shape, generator=g), 1.5)) * mask
    return chi, field, mask, chi0


def first_below(values: list[float], threshold: float) -> int | None:
    return next((k for k, v in enumerate(values) if v < threshold), None)


def run(max_iterations: int) -> None:
    radians = radians_per_ppm(echo_time_s=0.025, b0_tesla=3.0)
    hertz = 42.577478 * 3.0
    print(f"DEFAULT_TOLERANCE = {DEFAULT_TOLERANCE}; grid {SHAPE}, pad {PAD}, noise {NOISE_PPM} ppm")
    header = ("seed", "sigma", "scale", "mask", "|SDMf|", "0.75/|SDMf|", "rho0", "k_abs", "k_rel",
              "NRMSE0", "NRMSE@abs", "NRMSE@rel", "rho@0.75(rad)", "k_abs(rad)", "rho@0.75(Hz)", "k_abs(Hz)")
    print(" | ".join(header))
    calibrations = []
    for seed, sigma, scale in SUBJECTS:
        start = time.perf_counter()
        chi, field, mask, chi0 = subject(seed, sigma, scale)
        inside = MaskOp(mask.float())
        data = inside @ DipoleOp(SHAPE, pad=PAD) @ inside
        reference = float(torch.linalg.vector_norm(data.H(field)))
        rho = [float(torch.linalg.vector_norm(data.H(data(chi0) - field))) / reference]
        errors = [nrmse(chi0, chi, mask)]
        calibrations.append(PAPER_THRESHOLD / reference)

        def record(status) -> bool:
            rho.append(status.residual)
            errors.append(nrmse(status.solution, chi, mask))
            # stop once both rules have fired (with a margin for the one-iteration lookahead)
            return status.residual < 0.95 * min(DEFAULT_TOLERANCE, PAPER_THRESHOLD / reference)

        dfqsm(chi0, field, mask, pad=PAD, tolerance=0.0, max_iterations=max_iterations, callback=record)
        absolute = [r * reference for r in rho]
        k_abs = first_below(absolute, PAPER_THRESHOLD)
        k_rel = next((k for k, r in enumerate(rho) if r <= DEFAULT_TOLERANCE), None)
        k_rad = first_below([a * radians for a in absolute], PAPER_THRESHOLD)
        k_hz = first_below([a * hertz for a in absolute], PAPER_THRESHOLD)

        def show(k):
            return str(k) if k is not None else f">{len(rho) - 1}"

        row = (seed, sigma, scale, int(mask.sum()), f"{reference:.3f}", f"{PAPER_THRESHOLD / reference:.4f}",
               f"{rho[0]:.3f}", show(k_abs), show(k_rel), f"{errors[0]:.1f}",
               f"{errors[k_abs]:.1f}" if k_abs is not None else "-",
               f"{errors[k_rel]:.1f}" if k_rel is not None else "-", f"{PAPER_THRESHOLD / (radians * reference):.4f}",
               show(k_rad), f"{PAPER_THRESHOLD / (hertz * reference):.5f}", show(k_hz))
        print(" | ".join(str(v) for v in row), f"({time.perf_counter() - start:.0f} s)", flush=True)
    mean = sum(calibrations) / len(calibrations)
    print(f"mean calibration 0.75/|SDMf| = {mean:.4f} (range {min(calibrations):.4f}-{max(calibrations):.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iterations", type=int, default=40)
    run(parser.parse_args().max_iterations)


if __name__ == "__main__":
    main()
