"""Loading and saving NIfTI: round trips, geometry, overwrite refusal, atomic writes, errors."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.io import Volume, load_nifti, save_nifti


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- loading


def test_load_returns_data_affine_and_geometry(field_file: Path, oblique: np.ndarray) -> None:
    volume = load_nifti(field_file, role="field")
    expected = np.asarray(nib.load(field_file).get_fdata(), dtype=np.float32)
    assert isinstance(volume, Volume)
    assert volume.data.dtype == np.float32
    assert volume.shape == (6, 7, 8)
    np.testing.assert_array_equal(volume.data, expected)
    np.testing.assert_allclose(volume.affine, oblique, atol=1e-5)
    assert volume.voxel_size_mm == (0.5, 0.7, 1.2)
    assert volume.path == field_file
    assert volume.role == "field"


def test_b0_dir_of_oblique_image_is_rotated_z(field_file: Path) -> None:
    # affine = R_x(30°) diag(h): B0 (world z) in voxel axes is R^T z = (0, sin 30°, cos 30°).
    b0_dir = load_nifti(field_file).b0_dir
    expected = (0.0, math.sin(math.radians(30.0)), math.cos(math.radians(30.0)))
    np.testing.assert_allclose(b0_dir, expected, atol=1e-6)


def test_load_applies_scaling_and_dtype(tmp_path: Path, write_nifti) -> None:
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, tmp_path / "scaled.nii")
    volume = load_nifti(tmp_path / "scaled.nii", dtype=np.float64)
    assert volume.data.dtype == np.float64
    np.testing.assert_allclose(volume.data, np.arange(24).reshape(2, 3, 4) * 0.5 + 10.0)


def test_trailing_singleton_axes_are_dropped(tmp_path: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "single.nii.gz", np.ones((6, 7, 8, 1, 1), np.float32))
    volume = load_nifti(path)
    assert volume.shape == (6, 7, 8)
    assert volume.header.get_data_shape() == (6, 7, 8)


def test_allowed_dimension_counts(tmp_path: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "echoes.nii.gz", np.ones((6, 7, 8, 3), np.float32))
    assert load_nifti(path, ndim=(3, 4)).shape == (6, 7, 8, 3)
    assert load_nifti(path, ndim=None).shape == (6, 7, 8, 3)


# --------------------------------------------------------------------------- load errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        load_nifti(tmp_path / "absent.nii.gz", role="field")
    assert "absent.nii.gz" in str(caught.value)
    assert "field file does not exist" in str(caught.value)


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii"])
def test_garbage_bytes(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an image\x00\x01\x02" * 40)
    with pytest.raises(InputError) as caught:
        load_nifti(path, role="phase")
    assert name in str(caught.value)
    assert "cannot be read as NIfTI" in str(caught.value)


def test_truncated_file(tmp_path: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "cut.nii", np.ones((20, 20, 20), np.float32))
    path.write_bytes(path.read_bytes()[:20_000])
    with pytest.raises(InputError) as caught:
        load_nifti(path)
    assert "cut.nii" in str(caught.value)
    # refused from the header and the file size, before reading (issue 17)
    assert "claims a 20×20×20 array of float32 (32 kB)" in str(caught.value) and "truncated" in str(caught.value)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "folder.nii").mkdir()
    with pytest.raises(InputError, match="folder.nii: the image path is a folder"):
        load_nifti(tmp_path / "folder.nii")


def test_other_image_format(tmp_path: Path) -> None:
    nib.save(nib.MGHImage(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / "brain.mgz")
    with pytest.raises(InputError, match="brain.mgz: the image file is a MGHImage, not a NIfTI"):
        load_nifti(tmp_path / "brain.mgz")


def test_four_dimensional_where_three_are_needed(tmp_path: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "field4d.nii.gz", np.ones((6, 7, 8, 3), np.float32))
    with pytest.raises(InputError) as caught:
        load_nifti(path, role="field")
    message = str(caught.value)
    assert "field4d.nii.gz" in message
    assert "is 4-D (6×7×8×3); a 3-D image is needed" in message


def test_wrong_dimensions_with_several_allowed(tmp_path: Path, write_nifti) -> None:
    path = write_nifti(tmp_path / "flat.nii.gz", np.ones((6, 7), np.float32))
    with pytest.raises(InputError, match="is 2-D \\(6×7\\); a 3-D or 4-D image is needed"):
        load_nifti(path, ndim=(3, 4))


def test_non_finite_values_are_counted(tmp_path: Path, write_nifti) -> None:
    data = np.zeros((6, 7, 8), np.float32)
    data[0, 0, 0] = data[1, 2, 3] = np.nan
    data[2, 2, 2] = -np.inf
    path = write_nifti(tmp_path / "holes.nii.gz", data)
    with pytest.raises(InputError) as caught:
        load_nifti(path, role="field")
    message = str(caught.value)
    assert "holes.nii.gz" in message
    assert "3 voxels that are not finite (2 NaN, 1 infinite)" in message


def test_complex_image_needs_a_complex_dtype(tmp_path: Path) -> None:
    values = np.full((2, 3, 4), 1 + 2j, dtype=np.complex64)
    nib.save(nib.Nifti1Image(values, np.eye(4)), tmp_path / "signal.nii")
    with pytest.raises(InputError, match="signal.nii: the signal image holds complex values"):
        load_nifti(tmp_path / "signal.nii", role="signal")
    np.testing.assert_array_equal(load_nifti(tmp_path / "signal.nii", dtype=np.complex64).data, values)


# --------------------------------------------------------------------------- saving


def _header_with_fields(affine: np.ndarray) -> nib.Nifti1Header:
    image = nib.Nifti1Image(np.zeros((6, 7, 8), np.int16), affine)
    header = image.header
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=4)
    header["descrip"] = b"phase from the scanner"
    header.set_xyzt_units("mm", "msec")
    header.set_dim_info(freq=0, phase=1, slice=2)
    header["toffset"] = 1.5
    header["intent_name"] = b"phase"
    header["cal_min"], header["cal_max"] = -4096, 4096
    return header


def _set_stored_scaling(path: Path, *, slope: float, intercept: float) -> None:
    """Write scl_slope/scl_inter into a .nii file (nibabel recomputes them when saving)."""
    raw = bytearray(path.read_bytes())
    raw[112:120] = np.array([slope, intercept], dtype="<f4").tobytes()
    path.write_bytes(bytes(raw))


def test_round_trip_preserves_data_affine_codes_and_header(
    tmp_path: Path, oblique: np.ndarray, rng: np.random.Generator
) -> None:
    header = _header_with_fields(oblique)
    source_data = rng.integers(-100, 100, (6, 7, 8)).astype(np.int16)
    nib.save(nib.Nifti1Image(source_data, oblique, header=header), tmp_path / "phase.nii")
    _set_stored_scaling(tmp_path / "phase.nii", slope=2.0, intercept=0.0)
    source = load_nifti(tmp_path / "phase.nii", role="phase")
    np.testing.assert_array_equal(source.data, source_data * 2.0)

    chi = rng.standard_normal((6, 7, 8)).astype(np.float32)
    written = save_nifti(tmp_path / "out" / "chi.nii.gz", chi, like=source)
    assert written == tmp_path / "out" / "chi.nii.gz"

    saved = nib.load(written)
    np.testing.assert_array_equal(saved.get_fdata(dtype=np.float32), chi)
    assert saved.get_data_dtype() == np.float32
    np.testing.assert_allclose(saved.affine, oblique, atol=1e-5)
    np.testing.assert_allclose(saved.get_qform(), oblique, atol=1e-5)
    np.testing.assert_allclose(saved.get_sform(), oblique, atol=1e-5)
    out = saved.header
    assert (int(out["qform_code"]), int(out["sform_code"])) == (1, 4)
    assert out["descrip"].item() == b"phase from the scanner"
    assert out.get_xyzt_units() == ("mm", "msec")
    assert out.get_dim_info() == (0, 1, 2)
    assert float(out["toffset"]) == 1.5
    assert out["intent_name"].item() == b"phase"
    assert out.get_slope_inter() in ((None, None), (1.0, 0.0))
    assert (float(out["cal_min"]), float(out["cal_max"])) == (0.0, 0.0)
    assert out.get_zooms() == pytest.approx((0.5, 0.7, 1.2))

    reloaded = load_nifti(written)
    np.testing.assert_array_equal(reloaded.data, chi)
    assert reloaded.voxel_size_mm == (0.5, 0.7, 1.2)
    np.testing.assert_allclose(reloaded.b0_dir, source.b0_dir, atol=1e-7)
    # The source volume's header is not changed by saving.
    assert source.header.get_data_dtype() == np.int16


def test_save_tensor_with_gradient_and_other_dtype(tmp_path: Path, field_file: Path) -> None:
    like = load_nifti(field_file)
    tensor = torch.linspace(-1.0, 1.0, 6 * 7 * 8, dtype=torch.float64).reshape(6, 7, 8)
    tensor.requires_grad_(True)
    path = save_nifti(tmp_path / "chi.nii", tensor * 1.0, like=like, dtype=np.float64)
    saved = nib.load(path)
    assert saved.get_data_dtype() == np.float64
    np.testing.assert_array_equal(saved.get_fdata(), tensor.detach().numpy())


def test_save_boolean_mask_as_uint8(tmp_path: Path, field_file: Path, mask_data: np.ndarray) -> None:
    path = save_nifti(tmp_path / "mask.nii.gz", mask_data.astype(bool), like=load_nifti(field_file), dtype=bool)
    saved = nib.load(path)
    assert saved.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(saved.dataobj), mask_data)


def test_save_four_dimensional_on_three_dimensional_grid(tmp_path: Path, field_file: Path) -> None:
    like = load_nifti(field_file)
    path = save_nifti(tmp_path / "echoes.nii.gz", np.ones((6, 7, 8, 3)), like=like)
    volume = load_nifti(path, ndim=4)
    assert volume.shape == (6, 7, 8, 3)
    np.testing.assert_allclose(volume.affine, like.affine, atol=1e-6)


def test_save_with_affine_only(tmp_path: Path, oblique: np.ndarray) -> None:
    path = save_nifti(tmp_path / "phantom.nii.gz", np.zeros((4, 5, 6)), affine=oblique)
    saved = nib.load(path)
    np.testing.assert_allclose(saved.affine, oblique, atol=1e-5)
    assert (int(saved.header["qform_code"]), int(saved.header["sform_code"])) == (1, 1)
    assert saved.header.get_xyzt_units() == ("mm", "sec")


def test_explicit_affine_overrides_like(tmp_path: Path, field_file: Path) -> None:
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    path = save_nifti(tmp_path / "new.nii.gz", np.zeros((6, 7, 8)), like=load_nifti(field_file), affine=affine)
    volume = load_nifti(path)
    np.testing.assert_allclose(volume.affine, affine)
    assert volume.voxel_size_mm == (1.0, 2.0, 3.0)


def test_save_needs_like_or_affine(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="needs `like`"):
        save_nifti(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)))
    assert _leftovers(tmp_path) == []


def test_save_refuses_a_degenerate_affine(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="unusable affine"):
        save_nifti(tmp_path / "x.nii.gz", np.zeros((2, 2, 2)), affine=np.diag([1.0, 0.0, 1.0, 1.0]))
    assert _leftovers(tmp_path) == []


def test_save_refuses_other_extensions(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="chi.img: the output file name must end in .nii or .nii.gz"):
        save_nifti(tmp_path / "chi.img", np.zeros((2, 2, 2)), affine=np.eye(4))


def test_save_refuses_complex_as_real(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="complex"):
        save_nifti(tmp_path / "z.nii", np.zeros((2, 2, 2), np.complex64), affine=np.eye(4))


# --------------------------------------------------------------------------- overwrite and atomicity


def test_no_overwrite_without_the_flag(tmp_path: Path) -> None:
    path = save_nifti(tmp_path / "chi.nii.gz", np.ones((3, 3, 3)), affine=np.eye(4))
    original = path.read_bytes()
    with pytest.raises(InputError) as caught:
        save_nifti(path, np.zeros((3, 3, 3)), affine=np.eye(4))
    assert "chi.nii.gz" in str(caught.value)
    assert "exists; pass --overwrite to replace it" in str(caught.value)
    assert path.read_bytes() == original
    assert _leftovers(tmp_path) == ["chi.nii.gz"]

    save_nifti(path, np.zeros((3, 3, 3)), affine=np.eye(4), overwrite=True)
    np.testing.assert_array_equal(load_nifti(path).data, np.zeros((3, 3, 3)))
    assert _leftovers(tmp_path) == ["chi.nii.gz"]


def test_temporary_file_sits_beside_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real_save = nib.save

    def spy(image, filename):
        seen.append(Path(filename))
        real_save(image, filename)

    monkeypatch.setattr(nib, "save", spy)
    save_nifti(tmp_path / "chi.nii.gz", np.ones((3, 3, 3)), affine=np.eye(4))
    (temporary,) = seen
    assert temporary.parent == tmp_path
    assert temporary.name.startswith(".tmp-") and temporary.name.endswith("-chi.nii.gz")
    assert _leftovers(tmp_path) == ["chi.nii.gz"]


def _failing_save(image, filename):
    Path(filename).write_bytes(b"half a file")
    raise RuntimeError("disk fell off")


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nib, "save", _failing_save)
    with pytest.raises(RuntimeError, match="disk fell off"):
        save_nifti(tmp_path / "chi.nii.gz", np.ones((3, 3, 3)), affine=np.eye(4))
    assert _leftovers(tmp_path) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_nifti(tmp_path / "chi.nii.gz", np.ones((3, 3, 3)), affine=np.eye(4))
    original = path.read_bytes()
    monkeypatch.setattr(nib, "save", _failing_save)
    with pytest.raises(RuntimeError):
        save_nifti(path, np.zeros((3, 3, 3)), affine=np.eye(4), overwrite=True)
    assert path.read_bytes() == original
    assert _leftovers(tmp_path) == ["chi.nii.gz"]


def test_operating_system_error_becomes_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(image, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib, "save", no_space)
    with pytest.raises(InputError, match="chi.nii.gz: cannot write the output file: No space left"):
        save_nifti(tmp_path / "chi.nii.gz", np.ones((3, 3, 3)), affine=np.eye(4))
    assert _leftovers(tmp_path) == []
