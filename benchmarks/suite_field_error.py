#!/usr/bin/env python
"""How hard is each suite case? The field error and the data-estimated σ̂ of every case, beside in vivo.

For each case of a built suite: the rms (ppb, in the brain) of the inversion's input minus the true
local field (noise plus every model error the case carries), and σ̂, the in-mask residual of the
GCV-Tikhonov fit (``torchqsm.inversion.regularization.gcv_residual_noise``, what tv's automatic α is
scaled to). σ̂ needs no ground truth, so it is also measured on the in vivo crop
``../shared/data/gre-invivo-small`` (the ``accurate`` recipe's local field), the only real data here.

Example::

    python benchmarks/suite_field_error.py --suite-dir /tmp/suite
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from torchqsm.bench.evaluate import load_case
from torchqsm.inversion.regularization import gcv_residual_noise
from torchqsm.physics import DipoleOp

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "gre-invivo-small"


def sigma_hat(field: torch.Tensor, mask: torch.Tensor, voxel_size_mm, b0_dir) -> float:
    dipole = DipoleOp(tuple(field.shape), voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, pad=16)
    return gcv_residual_noise(field, mask.float(), dipole)


def invivo() -> float | None:
    """σ̂ (ppm) of the in vivo crop: what tv's automatic rule measured on the accurate recipe's local field."""
    if not SHARED.is_dir():
        return None
    import json
    import tempfile

    from torchqsm.cli.main import main as torchqsm

    with tempfile.TemporaryDirectory() as folder:
        code = torchqsm(["run", "--mag", str(SHARED / "mag.nii"), "--phase", str(SHARED / "phase.nii"),
                         "--echo-times", "0.004", "0.008", "0.012", "--b0-tesla", "3", "--mask-method", "quality",
                         "--brain-extraction", "0", "--erode", "0", "--recipe", "accurate", "-o", folder,
                         "--quiet", "--no-qc"])
        if code != 0:
            return None
        sidecar = json.loads((Path(folder) / "phase_Chimap.json").read_text())
    return float(sidecar["Parameters"]["regularization_choice"][-1]["noise_ppm"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite-dir", type=Path, required=True)
    parser.add_argument("--cases", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = args.cases or sorted(p.name for p in args.suite_dir.iterdir() if (p / "sub-01").is_dir())
    print("| case | input − true local field, rms (ppb) | σ̂ (ppb) | true local field, rms (ppb) |")
    print("| --- | ---: | ---: | ---: |")
    for name in cases:
        case = load_case(args.suite_dir / name)
        mask = case.mask
        error = (case.local_field_ppm - case.true_local_field_ppm)[mask].double().square().mean().sqrt()
        local = case.true_local_field_ppm[mask].double().square().mean().sqrt()
        sigma = sigma_hat(case.local_field_ppm, mask, case.voxel_size_mm, case.b0_dir)
        print(f"| {name} | {1e3 * float(error):.1f} | {1e3 * sigma:.1f} | {1e3 * float(local):.1f} |", flush=True)
    measured = invivo()
    if measured is not None:
        print(f"| in vivo crop (accurate recipe's local field) | — | {1e3 * measured:.1f} | — |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
