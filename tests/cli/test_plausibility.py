"""Plausibility checks (issue 17, docs/conventions.md "Plausibility checks"): inputs that are valid
files but cannot be what they claim end in one line and exit 2, never in a silent wrong answer."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from torchqsm.io import load_nifti


def _scaled(case, tmp_path, factor):
    volume = load_nifti(case.field)
    image = nib.Nifti1Image(volume.data * factor, case.affine)
    path = tmp_path / f"field_x{factor:g}.nii.gz"
    nib.save(image, path)
    return path


@pytest.mark.parametrize("factor", [127.7, 1e6])  # Hz at 3 T; ppm written as parts (×1e6)
def test_a_local_field_in_hz_or_scaled_is_refused(cli, small_case, tmp_path, factor):
    field = _scaled(small_case, tmp_path, factor)
    result = cli("invert", field, small_case.mask, "-o", tmp_path / "chi.nii.gz")
    assert result.code == 2 and result.err.count("\n") == 1
    assert field.name in result.err and "far beyond a tissue field" in result.err and "in Hz" in result.err
    assert not (tmp_path / "chi.nii.gz").exists()


def test_a_local_field_in_ppm_passes(cli, small_case, tmp_path):
    assert cli("invert", small_case.field, small_case.mask, "-o", tmp_path / "chi.nii.gz", "--quiet").code == 0


def _run(cli, shared_data, tmp_path, *extra, phase="phase.nii", echo_times=("0.004", "0.008", "0.012"), b0="3"):
    data = shared_data / "gre-invivo-small"
    return cli("run", "--mag", data / "mag.nii", "--phase", data / phase, "--echo-times", *echo_times,
               "--b0-tesla", b0, "-o", tmp_path / "out", "--quiet", *extra)


def test_a_magnitude_given_as_phase_is_refused(cli, shared_data, tmp_path):
    result = _run(cli, shared_data, tmp_path, phase="mag.nii")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "mag.nii: the phase looks like a magnitude image" in result.err and "echo" in result.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("b0", ["300", "0.01", "-3"])
def test_field_strength_outside_any_scanner_is_refused(cli, shared_data, tmp_path, b0):
    result = _run(cli, shared_data, tmp_path, b0=b0)
    assert result.code == 2 and result.err.count("\n") == 1
    assert "b0-tesla" in result.err or "field strength" in result.err


@pytest.mark.parametrize(("times", "why"), [(("0.004", "0.3", "0.5"), "gradient echo's range"),
                                            (("0.00001", "0.00002", "0.00003"), "gradient echo's range"),
                                            (("4", "8", "12"), "milliseconds")])
def test_echo_times_outside_a_gradient_echo_are_refused(cli, shared_data, tmp_path, times, why):
    result = _run(cli, shared_data, tmp_path, echo_times=times)
    assert result.code == 2 and result.err.count("\n") == 1 and why in result.err


def test_a_bids_folder_without_its_description_is_refused(cli, tmp_path):
    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    result = cli("run", tmp_path / "bids", tmp_path / "derivatives")
    assert result.code == 2 and result.err.count("\n") == 1
    assert "bids: not a BIDS dataset: the folder has no dataset_description.json" in result.err


def test_score_with_a_constant_reference_names_no_missing_option(cli, small_case, tmp_path):
    constant = tmp_path / "constant.nii.gz"
    nib.save(nib.Nifti1Image(np.full(small_case.mask_data.shape, 0.1, np.float32), small_case.affine), constant)
    result = cli("score", small_case.field, constant, "--mask", small_case.mask)
    assert result.code == 2 and result.err.count("\n") == 1
    assert "constant inside the mask" in result.err and "data_range" not in result.err


def test_the_missing_field_strength_names_a_real_flag(cli, shared_data, tmp_path):
    data = shared_data / "gre-invivo-small"
    result = cli("run", "--mag", data / "mag.nii", "--phase", data / "phase.nii", "--echo-times", "0.004", "0.008",
                 "0.012", "-o", tmp_path / "out")
    assert result.code == 2 and "--b0-tesla" in result.err
    flags = json.dumps(result.err)
    assert "--b0 " not in flags and "--b0," not in flags


@pytest.mark.parametrize("factor", [127.7, 298.0])  # Hz at 3 T and 7 T (this phantom's field spans too little at 1.5 T)
def test_a_field_in_hz_is_refused_before_a_data_consistent_network(cli, small_case, tmp_path, factor):
    """Issue 13: the networks with the dipole inside take ppm; a field in Hz is one line, exit 2, no output."""
    field = _scaled(small_case, tmp_path, factor)
    result = cli("invert", field, small_case.mask, "-o", tmp_path / "chi.nii.gz", "--method", "noqsm")
    assert result.code == 2 and result.err.count("\n") == 1 and "in Hz" in result.err
    assert not (tmp_path / "chi.nii.gz").exists()
