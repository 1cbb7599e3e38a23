"""Masks and grid checks: boolean masks, empty masks, shape and affine mismatches."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from torchqsm.errors import InputError
from torchqsm.io import check_same_grid, load_mask, load_nifti


def test_mask_is_boolean_nonzero(tmp_path: Path, field_file: Path, mask_data: np.ndarray, write_nifti) -> None:
    values = mask_data.astype(np.float32)
    values[1, 2, 2] = 0.25  # soft and label masks: any nonzero voxel is inside
    values[2, 3, 3] = 7.0
    values[3, 3, 3] = -1.0
    path = write_nifti(tmp_path / "mask.nii.gz", values)
    mask = load_mask(path, like=load_nifti(field_file, role="field"))
    assert mask.data.dtype == np.bool_
    assert mask.role == "mask"
    np.testing.assert_array_equal(mask.data, values != 0)


def test_mask_with_trailing_singleton_axis(tmp_path: Path, mask_data: np.ndarray, write_nifti) -> None:
    path = write_nifti(tmp_path / "mask.nii", mask_data[..., None])
    assert load_mask(path).shape == (6, 7, 8)


def test_mask_matches_the_spatial_grid_of_a_four_dimensional_image(
    tmp_path: Path, mask_data: np.ndarray, write_nifti
) -> None:
    echoes = write_nifti(tmp_path / "phase.nii.gz", np.ones((6, 7, 8, 4), np.float32))
    mask = write_nifti(tmp_path / "mask.nii.gz", mask_data)
    assert load_mask(mask, like=load_nifti(echoes, ndim=4, role="phase")).data.sum() == mask_data.sum()


def test_empty_mask(tmp_path: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "blank_mask.nii.gz", np.zeros((6, 7, 8), np.uint8))
    with pytest.raises(InputError) as caught:
        load_mask(path)
    assert "blank_mask.nii.gz" in str(caught.value)
    assert "mask is empty" in str(caught.value)


def test_shape_mismatch(tmp_path: Path, field_file: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "small_mask.nii.gz", np.ones((6, 7, 5), np.uint8))
    with pytest.raises(InputError) as caught:
        load_mask(path, like=load_nifti(field_file, role="field"))
    message = str(caught.value)
    assert "small_mask.nii.gz" in message
    assert "shape 6×7×5 does not match the field's 6×7×8 (field.nii.gz)" in message


def test_affine_mismatch(tmp_path: Path, field_file: Path, mask_data: np.ndarray, oblique: np.ndarray, write_nifti) -> None:
    shifted = oblique.copy()
    shifted[1, 3] += 0.5
    path = write_nifti(tmp_path / "moved_mask.nii.gz", mask_data, shifted)
    with pytest.raises(InputError) as caught:
        load_mask(path, like=load_nifti(field_file, role="field"))
    message = str(caught.value)
    assert "moved_mask.nii.gz" in message
    assert "affine differs from the field's (field.nii.gz) by up to 0.5 mm" in message


def test_affine_within_tolerance(field_file: Path) -> None:
    field = load_nifti(field_file, role="field")
    nudged = replace(field, affine=field.affine + 5e-5, role="mask", path=None)
    check_same_grid(nudged, field)
    with pytest.raises(InputError, match="by up to 5e-05 mm"):
        check_same_grid(nudged, field, atol_mm=1e-5)
