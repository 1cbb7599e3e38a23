"""torchqsm bench on any BIDS dataset with ground truth under derivatives/: qsm-forward's layout,
a suite case read as BIDS, several runs, runs without truth, and the errors."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from torchqsm.bench import build_suite, run_bench, write_report
from torchqsm.bench.bids import bids_cases, load_bids_case
from torchqsm.bench.evaluate import load_case
from torchqsm.bench.runner import read_suite
from torchqsm.cli.main import main
from torchqsm.errors import InputError
from torchqsm.physics.units import radians_per_ppm

qsm_forward = pytest.importorskip("qsm_forward")

TILT = math.radians(20.0)
B0_DIR = np.array([0.0, math.sin(TILT), math.cos(TILT)])
ECHO_TIMES = np.array([4e-3, 8e-3, 12e-3])


def _phantom(n: int = 40) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        return qsm_forward.generate_susceptibility_phantom(
            resolution=[n, n, n], background=0, large_cylinder_val=0.005,
            small_cylinder_radii=[2, 2, 2, 3], small_cylinder_vals=[0.05, 0.1, 0.2, 0.3])


def _simulate(bids: Path, *, subject: str, snr: float) -> None:
    """Noise-free (snr inf) runs also have no shim field and no receive-phase offset."""
    clean = bool(np.isinf(snr))
    recon = qsm_forward.ReconParams(subject=subject, TEs=ECHO_TIMES, B0=3, B0_dir=B0_DIR, TR=50e-3,
                                    voxel_size=np.array([1.0, 1.0, 1.0]), peak_snr=snr, random_seed=3,
                                    suffix="MEGRE", generate_shim_field=not clean, generate_phase_offset=not clean)
    with contextlib.redirect_stdout(io.StringIO()):
        qsm_forward.generate_bids(tissue_params=qsm_forward.TissueParams(chi=_phantom()), recon_params=recon,
                                  bids_dir=str(bids))


@pytest.fixture(scope="module")
def bids(tmp_path_factory) -> Path:
    """sub-1 noise-free, sub-2 with noise, shim field and phase offset (both with truth), sub-3 without truth."""
    root = tmp_path_factory.mktemp("qsmforward")
    _simulate(root, subject="1", snr=np.inf)
    _simulate(root, subject="2", snr=100)
    _simulate(root, subject="3", snr=100)
    shutil.rmtree(root / "derivatives" / "qsm-forward" / "sub-3")
    return root


def test_cases_are_the_runs_with_truth(bids):
    index, cases = read_suite(bids)
    assert [c["name"] for c in cases] == ["sub-1", "sub-2"]
    assert index["runs_without_truth"] == ["sub-3"]
    assert {c["input"] for c in cases} == {"forward field of the true χ"}
    assert {c["noise"] for c in cases} == {"none"}


def test_input_field_is_qsm_forwards_field(bids):
    """Independent check of the geometry: the field qsm-forward put into its noise-free phase
    (echo difference, no wrap at these χ) equals our forward field of its χ at the affine's B0."""
    case, gre, _ = load_bids_case(str(bids), "sub-1")
    assert np.allclose(case.b0_dir, B0_DIR, atol=1e-6)
    difference = torch.angle(torch.polar(torch.ones((), dtype=torch.float64), gre.phase[1].double() - gre.phase[0].double()))
    measured = difference / radians_per_ppm(echo_time_s=ECHO_TIMES[1] - ECHO_TIMES[0], b0_tesla=3.0)
    inside = case.mask
    measured = measured - measured[inside].mean()
    ours = case.local_field_ppm.double() - case.local_field_ppm.double()[inside].mean()
    error = float((measured - ours)[inside].norm() / ours[inside].norm())
    assert error < 1e-3, error  # measured 2026-12-05: 5.9e-5 (the phase is stored as float32)
    assert case.noise_rms_ppm == 0.0


def test_bench_scores_every_run_with_truth(bids, tmp_path):
    result = run_bench(bids, tmp_path, ["tkd", "tikhonov"], workers=1)
    assert [(r["case"], r["method"], r["status"]) for r in result.records] == [
        ("sub-1", "tkd", "ok"), ("sub-1", "tikhonov", "ok"), ("sub-2", "tkd", "ok"), ("sub-2", "tikhonov", "ok")]
    for record in result.records:
        assert 0 < record["nrmse_demeaned"] < 80
        assert record["input"] == "forward field of the true χ"
    files = write_report(result)
    page = files.html.read_text(encoding="utf-8")
    assert "sub-1, sub-2: the forward field of the true χ without noise" in page
    again = run_bench(bids, tmp_path, ["tkd", "tikhonov"], workers=1)
    assert again.computed == [] and len(again.reused) == 4


def test_from_raw_on_bids(bids, tmp_path):
    result = run_bench(bids, tmp_path, ["fast"], cases=["sub-2"], workers=1, source="raw")
    (record,) = result.records
    assert record["status"] == "ok", record.get("error")
    assert 0.3 < record["brain_fraction"] <= 1.0
    assert record["nrmse_demeaned"] < 100


@pytest.fixture(scope="module")
def suite_case(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    build_suite(root, small=True, cases=("haemorrhage",))
    return root / "haemorrhage"


def test_suite_case_read_as_bids_is_the_same_case(suite_case):
    """A suite case is a BIDS dataset with every truth file: the generic reader gives the same input."""
    assert [c["noise"] for c in bids_cases(suite_case)[0]] == ["measured"]
    generic, _, lesion = load_bids_case(str(suite_case), "sub-01")
    suite = load_case(suite_case)
    for name in ("local_field_ppm", "chi_ppm", "mask", "labels"):
        assert torch.equal(getattr(generic, name), getattr(suite, name)), name
    assert generic.noise_rms_ppm == pytest.approx(suite.noise_rms_ppm, rel=1e-9)
    assert lesion is not None and bool(lesion.any())


def _copy_without(case: Path, tmp_path: Path, *patterns: str) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(case, root)
    for pattern in patterns:
        for path in root.rglob(pattern):
            path.unlink()
    return root


def test_truth_without_mask_is_one_error(suite_case, tmp_path, capsys):
    root = _copy_without(suite_case, tmp_path, "*_desc-brain_mask.nii*")
    shutil.move(root / "derivatives" / "groundtruth", root / "derivatives" / "truth")  # not the suite layout
    with pytest.raises(InputError, match="no brain mask beside the ground-truth χ"):
        read_suite(root)
    assert main(["bench", str(root), "-o", str(tmp_path / "out"), "--methods", "tkd", "--quiet"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "sub-01_Chimap.nii.gz" in error[0] and "Traceback" not in error[0]
    assert not (tmp_path / "out" / "runs").exists()


def test_dataset_without_truth_is_one_error(suite_case, tmp_path, capsys):
    root = _copy_without(suite_case, tmp_path, "*_Chimap.nii*")
    shutil.move(root / "derivatives" / "groundtruth", root / "derivatives" / "truth")
    assert main(["bench", str(root), "-o", str(tmp_path / "out"), "--methods", "tkd", "--quiet"]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no GRE run has a ground-truth χ" in error[0] and "sub-01" in error[0]


def test_truth_on_another_grid_fails_the_run_not_the_bench(suite_case, tmp_path):
    root = _copy_without(suite_case, tmp_path)
    shutil.move(root / "derivatives" / "groundtruth", root / "derivatives" / "truth")
    chi_path = next((root / "derivatives" / "truth").rglob("*_Chimap.nii.gz"))
    image = nib.load(chi_path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-1], image.affine), chi_path)
    result = run_bench(root, tmp_path / "out", ["tkd"], workers=1)
    (record,) = result.records
    assert record["status"] == "failed" and "Chimap" in record["error"]
    assert json.loads((tmp_path / "out" / "runs" / "sub-01" / "tkd.json").read_text())["status"] == "failed"
