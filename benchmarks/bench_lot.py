#!/usr/bin/env python
"""How close the LoT layer's Laplacian is to the Laplacian of the tissue field, per echo combination.

For each case of a built evaluation suite, :class:`torchqsm.models.oalfe.LoTLayer` (at its
initialisation: the 27-point stencil) turns the case's wrapped multi-echo phase into ∇²(field)
(ppm/mm²). The reference is the same 27-point Laplacian of the case's true local field: inside
the brain the background field is harmonic, so its Laplacian vanishes and the LoT should equal it
there, away from the mask's edge (where the stencil reaches non-brain voxels). Reported: the
relative error ‖LoT − L f_local‖ / ‖L f_local‖ in the brain mask eroded by 2, 3 and 5 voxels, for

- ``least squares``: every echo, weighted by TE (iQSM's combination, the layer's);
- ``echo n``: each echo alone;

on the measured phase (noise, receive-phase offsets) and on noise-free phase made from the case's
true total field (ω·TE·f, wrapped, no offset): what the LoT itself costs without noise (the
trigonometric identity sums sin Δ where the Laplacian sums Δ, and aliases beyond π). The row
``L(total)`` is the Laplacian of the true total field: what is left of the background's in the
eroded mask.

Example::

    torchqsm simulate suite /tmp/suite --case baseline --case tilt-30deg --case snr-30
    python benchmarks/bench_lot.py --suite-dir /tmp/suite --cases baseline tilt-30deg snr-30
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import platform
import sys
from pathlib import Path

import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_regularization import update_markdown  # noqa: E402

BEGIN, END = "<!-- bench-lot -->", "<!-- /bench-lot -->"
EROSIONS = (2, 3, 5)


def case_errors(case_dir: Path) -> dict[str, dict[str, list[float]]]:
    """``{"measured"|"noise-free": {combination: [error at each erosion]}}`` for one suite case."""
    from torchqsm.bench.evaluate import _echo_files
    from torchqsm.io import load_gre, load_mask, load_nifti
    from torchqsm.models.oalfe import LoTLayer
    from torchqsm.physics.operators import LaplacianOp
    from torchqsm.physics.units import GAMMA_BAR_MHZ_PER_T

    anat = case_dir / "sub-01" / "anat"
    truth = case_dir / "derivatives" / "groundtruth" / "sub-01" / "anat"
    gre = load_gre(_echo_files(anat, "mag"), _echo_files(anat, "phase"))
    mask = load_mask(truth / "sub-01_desc-brain_mask.nii.gz", like=gre.reference).data.astype(bool)
    local = torch.from_numpy(load_nifti(truth / "sub-01_desc-local_fieldmap.nii.gz").data).double()
    total = torch.from_numpy(load_nifti(truth / "sub-01_desc-total_fieldmap.nii.gz").data).double()
    voxel = tuple(float(v) for v in gre.voxel_size_mm)
    te = [float(t) for t in gre.echo_times_s]
    b0 = float(gre.b0_tesla)
    reference = LaplacianOp(tuple(local.shape), voxel_size_mm=voxel, stencil="27", dtype=torch.float64)(local)
    omega = 2 * math.pi * GAMMA_BAR_MHZ_PER_T * b0  # rad/s per ppm
    phases = {"measured": gre.phase.double(),
              "noise-free": torch.stack([torch.angle(torch.exp(1j * omega * t * total)) for t in te])}
    regions = [torch.from_numpy(ndimage.binary_erosion(mask, iterations=n)) for n in EROSIONS]

    def errors(laplacian: torch.Tensor) -> list[float]:
        return [100 * float((laplacian - reference)[r].norm() / reference[r].norm()) for r in regions]

    layer = LoTLayer(1, voxel_size_mm=voxel).double()
    adaptive = LoTLayer(1, voxel_size_mm=voxel, echo_weighting="reliability").double()
    out: dict[str, dict[str, list[float]]] = {}
    for kind, phase in phases.items():
        out[kind] = {}
        phase = phase * torch.from_numpy(mask)  # as the network sees it: nothing outside the mask
        for name, echoes in [("least squares", slice(None))] + [(f"echo {e + 1}", slice(e, e + 1)) for e in range(len(te))]:
            with torch.no_grad():
                lot = layer(phase[None, echoes], echo_times_s=te[echoes], b0_tesla=b0)[0, 0]
            out[kind][name] = errors(lot)
        with torch.no_grad():
            out[kind]["reliability"] = errors(adaptive(phase[None], echo_times_s=te, b0_tesla=b0)[0, 0])
    total_laplacian = LaplacianOp(tuple(total.shape), voxel_size_mm=voxel, stencil="27", dtype=torch.float64)(total)
    out["L(total)"] = {"least squares": errors(total_laplacian)}
    out["echo_times_ms"] = [1e3 * t for t in te]
    return out


def table(results: dict[str, dict], suite_dir: Path, cases: list[str]) -> str:
    columns = list(results[cases[0]]["measured"])
    echo_times = "/".join(f"{t:g}" for t in results[cases[0]]["echo_times_ms"])
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "## The LoT layer against the Laplacian of the tissue field", "",
             f"- Suite 1.4 (1 mm, 3 T, TE {echo_times} ms), cases {', '.join(cases)}. `LoTLayer` at initialisation "
             "(27-point stencil) on the wrapped phase; the reference is the same stencil applied to the true "
             "local field. Relative error (%) in the brain mask eroded by 2 / 3 / 5 voxels.",
             "- `measured`: the case's phase (noise, receive-phase offsets). `noise-free`: ω·TE·(true total "
             "field), wrapped. `L(total)`: the stencil on the true total field (the background's Laplacian "
             "left in the eroded mask). `reliability`: all echoes, each voxel's weighted by "
             "`models.oalfe.step_reliability` (`echo_weighting=\"reliability\"`).",
             f"- {when}, {platform.machine()}, torch {torch.__version__}.",
             f"- Reproduce: `python benchmarks/bench_lot.py --suite-dir {suite_dir} --cases {' '.join(cases)}`",
             "", "| case | phase | " + " | ".join(columns) + " |", "| --- | --- |" + " ---: |" * len(columns)]
    for case in cases:
        for kind in ("measured", "noise-free", "L(total)"):
            cells = [" / ".join(f"{v:.0f}" for v in results[case][kind][c]) if c in results[case][kind] else ""
                     for c in columns]
            lines.append(f"| {case} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", END, ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-dir", type=Path, required=True, help="a built suite (torchqsm simulate suite)")
    parser.add_argument("--cases", nargs="+", default=["baseline", "tilt-30deg", "snr-30"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {case: case_errors(args.suite_dir / case) for case in args.cases}
    section = table(results, args.suite_dir, args.cases)
    print(section)
    if not args.no_write:
        update_markdown(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", section, begin=BEGIN, end=END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
