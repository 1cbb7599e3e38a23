"""Acceptance: `torchqsm run` on BIDS data simulated by the independent `qsm-forward` package.

qsm-forward 0.32 (a test dependency only) writes multi-echo magnitude and phase
with a tilted B0 (in the affine), a smooth receive-phase offset and a 2nd-order
shimmed field; its ground-truth χ lands in ``derivatives/qsm-forward``.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from torchqsm.cli.main import main
from torchqsm.io.gre import load_gre
from torchqsm.metrics import nrmse, pearson
from torchqsm.simulate import shapes_phantom

qsm_forward = pytest.importorskip("qsm_forward")

TILT = math.radians(30.0)
B0_DIR = np.array([math.sin(TILT), 0.0, math.cos(TILT)])
ECHO_TIMES = np.array([4e-3, 12e-3, 20e-3, 28e-3])


def _simulate(bids: Path, chi: np.ndarray, *, subject: str = "1", seed: int = 7) -> None:
    tissue = qsm_forward.TissueParams(chi=chi)
    recon = qsm_forward.ReconParams(subject=subject, TEs=ECHO_TIMES, B0=3, B0_dir=B0_DIR, TR=50e-3,
                                    generate_phase_offset=True, generate_shim_field=True,
                                    voxel_size=np.array([1.0, 1.0, 1.0]), peak_snr=np.inf, random_seed=seed,
                                    suffix="MEGRE")
    with contextlib.redirect_stdout(io.StringIO()):  # qsm-forward prints its progress
        qsm_forward.generate_bids(tissue_params=tissue, recon_params=recon, bids_dir=str(bids))


def _simple_phantom() -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        return qsm_forward.generate_susceptibility_phantom(
            resolution=[64, 64, 64], background=0, large_cylinder_val=0.005,
            small_cylinder_radii=[3, 3, 3, 5], small_cylinder_vals=[0.05, 0.1, 0.2, 0.5])


@pytest.fixture(scope="module")
def simple_bids(tmp_path_factory) -> Path:
    bids = tmp_path_factory.mktemp("qsmforward-simple")
    _simulate(bids, _simple_phantom())
    return bids


def _score(out: Path, bids: Path, subject: str = "1") -> tuple[float, float]:
    chi = nib.load(out / f"sub-{subject}" / "anat" / f"sub-{subject}_Chimap.nii.gz").get_fdata()
    mask = nib.load(out / f"sub-{subject}" / "anat" / f"sub-{subject}_desc-eroded_mask.nii.gz").get_fdata() > 0
    truth = nib.load(bids / "derivatives" / "qsm-forward" / f"sub-{subject}" / "anat"
                     / f"sub-{subject}_Chimap.nii").get_fdata()
    truth = (truth - truth[mask].mean()) * mask  # our χ is referenced to its mask mean
    return float(nrmse(chi, truth, mask)), float(pearson(chi, truth, mask))


def test_b0_direction_from_qsm_forward_affine(simple_bids):
    run = simple_bids / "sub-1" / "anat"
    mags = sorted(run.glob("*part-mag*.nii*"))
    phases = sorted(run.glob("*part-phase*.nii*"))
    gre = load_gre(mags, phases)
    assert np.allclose(gre.b0_dir, B0_DIR / np.linalg.norm(B0_DIR), atol=1e-6)
    assert np.allclose(gre.echo_times_s, ECHO_TIMES)
    assert gre.b0_tesla == 3


# Measured 2026-12-04 with automatic regularization: fast 74.4 % (r 0.770; GCV λ 0.037),
# accurate 33.7 % (r 0.955; α 3.3e-3). With the former fixed values (λ 3e-3, α 3e-4), measured
# 2026-11-21: 61.4 % and 20.9 %. The automatic rules count what the dipole model cannot fit
# as noise; qsm-forward's oblique field carries a non-harmonic error of that kind (docs/
# conventions.md, "Oblique B0") and the simple phantom's 0.5 ppm cylinders reach the mask
# boundary, where every background method loses part of their field, so both rules smooth
# more here than the fixed values tuned for it.
# nextqsm (NeXtQSM's background U-Net and variational network, 2026-12-06): 47.7 % (r 0.908) in its
# mask eroded by 2.5 mm, fast 64.6 % (r 0.803) the same day; a phantom of cylinders, not a head, and
# a simulator the networks never saw. With the variational network retrained (clipped, demeaned
# loss; 2026-12-06): 46.8 % (r 0.922). With the two stages trained end to end (nextqsm-pipeline-cpu,
# 200 steps): 41.5 % (r 0.922); 600 steps: 49.7 % (r 0.885); 1000 steps (the recipe's weights since
# 2026-12-06): 51.1 % (r 0.876), while the suite and held-out heads improved (docs/learned.md, "End to end").
@pytest.mark.parametrize("recipe, bound", [("fast", 78.0), ("accurate", 37.0), ("nextqsm", 55.0)])
def test_run_on_qsm_forward_simple(simple_bids, tmp_path, recipe, bound):
    out = tmp_path / "derivatives"
    code = main(["run", str(simple_bids), str(out), "--recipe", recipe, "--quiet", "--no-qc"])
    assert code == 0
    error, correlation = _score(out, simple_bids)
    print(f"qsm-forward simple 64³, B0 30°, recipe {recipe}: NRMSE {error:.1f} %, r {correlation:.3f}")
    assert correlation > 0.75  # right sign and shape
    assert error < bound


def test_run_on_qsm_forward_from_our_phantom(tmp_path):
    chi, mask = shapes_phantom((64, 64, 64))
    # qsm-forward's mask (and magnitude) is χ ≠ 0: give the "brain" a small χ so the whole head is in it.
    chi = (chi + 0.01 * mask).numpy().astype(np.float64)
    bids = tmp_path / "bids"
    _simulate(bids, chi, subject="shapes")
    out = tmp_path / "out"
    assert main(["run", str(bids), str(out), "--quiet"]) == 0
    error, correlation = _score(out, bids, "shapes")
    print(f"qsm-forward shapes 64³, B0 30°, recipe fast: NRMSE {error:.1f} %, r {correlation:.3f}")
    assert correlation > 0.9
    assert error < 41.0  # measured 36.9 % (r 0.939)
    assert (out / "dataset_description.json").is_file()
    assert (out / "sub-shapes" / "anat" / "sub-shapes_desc-qc_Chimap.png").is_file()
