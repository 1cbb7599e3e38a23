"""``torchqsm score CHI REFERENCE --mask MASK [--labels LABELS] [--json]``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from torchqsm.io import load_nifti, save_nifti
from torchqsm.metrics import METRIC_DESCRIPTIONS, nrmse, score

#: The shapes phantom's compartments (ppm) → label; voxels within 0.005 ppm of the value.
COMPARTMENTS = {1: 0.3, 2: 0.10, 3: 0.15, 4: -0.05, 5: -0.2}


@pytest.fixture(scope="module")
def scored(oblique_case, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reference χ, an estimate (0.5 χ + smooth error), labels of the compartments."""
    folder = tmp_path_factory.mktemp("score")
    grid = load_nifti(oblique_case.mask, role="mask")
    chi = oblique_case.chi.astype(np.float32)
    x = np.linspace(-1.0, 1.0, chi.shape[0], dtype=np.float32)
    estimate = 0.5 * chi + 0.01 * x[:, None, None] * oblique_case.mask_data
    labels = np.zeros(chi.shape, np.int16)
    for label, value in COMPARTMENTS.items():
        labels[np.abs(chi - value) < 0.005] = label
    paths = {"reference": folder / "reference.nii.gz", "estimate": folder / "estimate.nii.gz",
             "labels": folder / "labels.nii.gz", "fractional_labels": folder / "fractional.nii.gz"}
    save_nifti(paths["reference"], chi, like=grid)
    save_nifti(paths["estimate"], estimate, like=grid)
    save_nifti(paths["labels"], labels, like=grid, dtype=np.int16)
    save_nifti(paths["fractional_labels"], labels + 0.5, like=grid)
    return {**paths, "mask": oblique_case.mask}


def _arrays(scored) -> tuple[np.ndarray, np.ndarray]:
    return load_nifti(scored["estimate"]).data, load_nifti(scored["reference"]).data


def test_json_matches_the_library(cli, scored, oblique_case) -> None:
    result = cli("score", scored["estimate"], scored["reference"], "--mask", scored["mask"], "--json")
    assert result.code == 0 and result.err == ""
    record = json.loads(result.out)
    estimate, reference = _arrays(scored)
    mask = oblique_case.mask_data
    assert list(record) == ["nrmse", "nrmse_demeaned", "dnrmse", "hfen", "ssim", "xsim", "psnr", "pearson"]
    assert record["nrmse"] == pytest.approx(nrmse(estimate, reference, mask), rel=1e-12)
    assert 45.0 < record["nrmse"] < 60.0  # half the reference, plus a small ramp
    expected = score(estimate, reference, mask)
    for key, value in expected.items():
        assert record[key] == pytest.approx(value, rel=1e-9), key


def test_table_shows_every_metric_with_its_description(cli, scored) -> None:
    result = cli("score", scored["estimate"], scored["reference"], "--mask", scored["mask"])
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[0].split() == ["metric", "value", "description"]
    rows = {line.split()[0]: line for line in lines[1:] if line.strip()}
    for key in ("nrmse", "nrmse_demeaned", "dnrmse", "hfen", "ssim", "xsim", "psnr", "pearson"):
        assert METRIC_DESCRIPTIONS[key] in rows[key]
        float(rows[key].split()[1])
    assert "label" not in result.out and "slope" not in result.out


def test_labels_give_roi_rows_and_slope(cli, scored) -> None:
    result = cli("score", scored["estimate"], scored["reference"], "--mask", scored["mask"],
                 "--labels", scored["labels"], "--json")
    assert result.code == 0
    roi = json.loads(result.out)["roi"]
    rows = {row["label"]: row for row in roi["rows"]}
    assert sorted(rows) == sorted(COMPARTMENTS)
    for label, value in COMPARTMENTS.items():
        assert rows[label]["mean_reference"] == pytest.approx(value, abs=0.005)
        assert rows[label]["voxel_count"] > 0
    # estimate = 0.5 χ + a ramp that is odd about the centre: slope close to 0.5.
    assert roi["slope"] == pytest.approx(0.5, abs=0.05)
    assert roi["r_squared"] > 0.95

    table = cli("score", scored["estimate"], scored["reference"], "--mask", scored["mask"],
                "--labels", scored["labels"])
    assert table.code == 0
    assert "label" in table.out and "slope" in table.out
    label_rows = [line.split() for line in table.out.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"],
                                                                                           ["4"], ["5"])]
    assert [int(r[0]) for r in label_rows] == sorted(COMPARTMENTS)


def test_identical_images_score_perfectly(cli, scored) -> None:
    result = cli("score", scored["reference"], scored["reference"], "--mask", scored["mask"],
                 "--labels", scored["labels"], "--json")
    record = json.loads(result.out)  # Python's json reads the psnr of identical images, Infinity
    assert record["nrmse"] == 0.0 and record["pearson"] == pytest.approx(1.0)
    assert record["roi"]["slope"] == pytest.approx(1.0) and record["roi"]["intercept"] == pytest.approx(0.0)


@pytest.mark.parametrize(("which", "words"), [
    ("fractional labels", ["fractional.nii.gz", "integers"]),
    ("shape", ["shape"]),
    ("missing reference", ["nothing.nii.gz", "does not exist"]),
    ("empty mask", ["empty"]),
])
def test_score_errors(which, words, cli, scored, small_case, tmp_path, one_line_error) -> None:
    args = [scored["estimate"], scored["reference"], "--mask", scored["mask"]]
    if which == "fractional labels":
        args += ["--labels", scored["fractional_labels"]]
    elif which == "shape":
        args[1] = small_case.field  # 16³ against 32³
    elif which == "missing reference":
        args[1] = tmp_path / "nothing.nii.gz"
    elif which == "empty mask":
        reference = nib.load(scored["mask"])
        empty = nib.Nifti1Image(np.zeros(reference.shape, np.uint8), reference.affine, reference.header)
        nib.save(empty, tmp_path / "empty.nii.gz")
        args[3] = tmp_path / "empty.nii.gz"
    one_line_error(cli("score", *args), *words)
