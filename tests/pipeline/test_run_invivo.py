"""Real data: `torchqsm run` end to end on ../shared/data/gre-invivo-small (no ground truth).

51×51×41 voxels × 3 echoes (4, 8, 12 ms), phase stored in arbitrary units
(±0.00367). The crop lies inside the brain, so Otsu has no background to find:
the phase-quality mask is used. The field strength is not recorded with the
data; 3 T is assumed, which scales χ (ppm) by 3/B0 if wrong. There is no scalp to cut
and no edge to erode: brain extraction and erosion are off.

Regression values (recorded 2026-12-04, fast recipe: identity Tikhonov with λ chosen by
GCV, 0.136, on the eroded mask of 86,151 voxels): χ standard deviation 0.0242 ppm,
1st/99th percentiles −0.0647/+0.0689 ppm; local field standard deviation 0.0203 ppm;
total field standard deviation 0.304 ppm. (With the former fixed λ = 3e-3: χ standard
deviation 0.0785 ppm, percentiles −0.205/+0.213.)
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from torchqsm.cli.main import main

RECORDED = {"chi_std": 0.0242, "chi_p1": -0.0647, "chi_p99": 0.0689, "local_std": 0.0203, "total_std": 0.304}


@pytest.fixture(scope="module")
def invivo_run(shared_data, tmp_path_factory):
    data = shared_data / "gre-invivo-small"
    out = tmp_path_factory.mktemp("invivo")
    code = main(["run", "--mag", str(data / "mag.nii"), "--phase", str(data / "phase.nii"),
                 "--echo-times", "0.004", "0.008", "0.012", "--b0-tesla", "3", "--mask-method", "quality",
                 "--brain-extraction", "0", "--erode", "0",
                 "-o", str(out), "--quiet"])
    assert code == 0
    return out


def _load(out, suffix):
    return nib.load(out / f"phase_{suffix}.nii.gz").get_fdata()


def test_rescaling_detected_and_recorded(invivo_run):
    record = json.loads((invivo_run / "phase_Chimap.json").read_text())
    assert "arbitrary units" in record["PhaseScaling"]
    assert "854.79" in record["PhaseScaling"]  # 2π over the 4096 levels spanning ±0.00367
    assert record["Recipe"] == "fast+custom" and record["Parameters"]["mask"] == "quality"


def test_automatic_regularization_recorded(invivo_run):
    parameters = json.loads((invivo_run / "phase_Chimap.json").read_text())["Parameters"]
    chosen = parameters["inversion_params"]["regularization"]
    (choice,) = parameters["regularization_choice"]
    assert choice == {"method": "tikhonov", "parameter": "regularization", "value": chosen,
                      "rule": "generalized cross-validation (in the mask)"}
    assert chosen == pytest.approx(0.128, rel=0.05)  # recorded 2026-12-05 (masked GCV; whole-grid GCV gave 0.136)


def test_regression_values(invivo_run):
    chi = _load(invivo_run, "Chimap")
    mask = _load(invivo_run, "desc-eroded_mask") > 0
    assert mask.sum() > 0.8 * mask.size  # the crop is all brain
    assert np.isfinite(chi).all()
    measured = {
        "chi_std": chi[mask].std(), "chi_p1": np.percentile(chi[mask], 1), "chi_p99": np.percentile(chi[mask], 99),
        "local_std": _load(invivo_run, "desc-local_fieldmap")[mask].std(),
        "total_std": _load(invivo_run, "desc-total_fieldmap")[mask].std(),
    }
    for key, value in RECORDED.items():
        assert measured[key] == pytest.approx(value, rel=0.05), (key, measured[key])
    assert abs(chi[mask].mean()) < 1e-6  # referenced to the mask mean
