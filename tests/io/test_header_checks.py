"""Inputs checked against each other before any work (issue 17): header size against the file and
the memory, voxel size from the affine against pixdim, sheared affines, writable output folders."""

from __future__ import annotations

import gzip
import os
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from torchqsm.cli.main import main
from torchqsm.errors import InputError, ResourceError
from torchqsm.io import load_nifti
from torchqsm.io import nifti as nifti_module
from torchqsm.io import limits as limits_module
from torchqsm.io._atomic import check_writable_folder
from torchqsm.io.acquisition import acquisition_from_nifti


def _header(shape, dtype=np.float32, affine=None) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4) if affine is None else affine, code=1)
    header.set_qform(np.eye(4) if affine is None else affine, code=1)
    return header


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_348_byte_header_claiming_5000_cubed_is_refused_at_once(tmp_path, capsys):
    path = tmp_path / "huge.nii"
    path.write_bytes(_header((5000, 5000, 5000)).binaryblock)
    assert path.stat().st_size == 348
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(InputError, match=r"claims a 5000×5000×5000 array of float32 \(500 GB\)"):
        load_nifti(path, role="field")
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 10e6  # measured 0.01 s and 0.02 MB
    assert main(["invert", str(path), str(path), "-o", str(tmp_path / "chi.nii.gz")]) == 2
    assert "huge.nii: the field header claims" in _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.nii"]


def test_a_gzipped_header_claiming_more_than_deflate_can_hold(tmp_path):
    path = tmp_path / "big.nii.gz"
    path.write_bytes(gzip.compress(_header((1200, 1200, 1200)).binaryblock + b"\0" * 1000))
    started = time.perf_counter()
    with pytest.raises(InputError, match="at most .* once decompressed"):
        load_nifti(path)
    assert time.perf_counter() - started < 1.0


def test_an_array_larger_than_the_memory_is_refused_before_reading(tmp_path, monkeypatch, capsys):
    path = tmp_path / "field.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), path)
    monkeypatch.setattr(limits_module, "_available_memory_bytes", lambda: 1000)
    monkeypatch.setattr(nifti_module, "_read_array", lambda *a, **k: pytest.fail("the array was read"))
    with pytest.raises(ResourceError, match="needs 4.1 kB of memory but 1 kB is available"):
        load_nifti(path)
    assert main(["invert", str(path), str(path), "-o", str(tmp_path / "chi.nii.gz")]) == 4
    assert "field.nii.gz: reading the field image needs" in _one_line(capsys)


def _with_pixdim(path: Path, pixdim) -> Path:
    """Patch pixdim[1:4] in the stored bytes (nibabel would "fix" zeros on save)."""
    data = bytearray(path.read_bytes())
    data[80:92] = np.asarray(pixdim, "<f4").tobytes()
    path.write_bytes(bytes(data))
    return path


def test_voxel_size_comes_from_the_affine_when_pixdim_is_empty(tmp_path, capsys):
    affine = np.diag([0.47, 0.47, 1.0, 1.0])
    path = tmp_path / "field.nii"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), affine), path)
    _with_pixdim(path, [0, 0, 0])
    assert load_nifti(path).voxel_size_mm == (0.47, 0.47, 1.0)
    assert acquisition_from_nifti(path).voxel_size_mm == (0.47, 0.47, 1.0)
    assert capsys.readouterr().err == ""  # nibabel's "setting 0 dims to 1" is not printed


def test_voxel_size_without_pixdim_nor_sform_is_refused(tmp_path):
    path = tmp_path / "field.nii"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), path)
    _with_pixdim(path, [0, 0, 0])
    data = bytearray(path.read_bytes())
    data[254:256] = np.asarray([0], "<i2").tobytes()  # sform_code 0: only the qform, scaled by pixdim
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="gives no voxel size: pixdim is"):
        load_nifti(path)


def test_pixdim_contradicting_the_affine_is_refused(tmp_path):
    path = tmp_path / "field.nii"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.diag([0.47, 0.47, 1.0, 1.0])), path)
    _with_pixdim(path, [1, 1, 1])
    with pytest.raises(InputError, match=r"pixdim gives 1×1×1 mm voxels but its affine 0.47×0.47×1 mm"):
        load_nifti(path)


def test_a_sheared_affine_is_refused(tmp_path, capsys):
    affine = np.eye(4)
    affine[0, 2] = 0.3  # the third voxel axis leans into x
    path = tmp_path / "field.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), affine), path)
    assert main(["invert", str(path), str(path), "-o", str(tmp_path / "chi.nii.gz")]) == 2
    assert "affine is sheared: voxel axes 1 and 3 are 73.3° apart" in _one_line(capsys)


def test_an_oblique_orthogonal_affine_passes():
    angle = np.radians(20)
    affine = np.eye(4)
    affine[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    nifti_module.check_orthogonal(affine @ np.diag([0.5, 0.7, 2.0, 1.0]))


def test_output_folder_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot be created: .* is a file"):
        check_writable_folder(tmp_path / "file" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unwritable_output_folder_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    """`torchqsm run` into a folder the OS refuses: one line, exit 2, before reading the inputs."""
    from torchqsm.pipeline import app

    locked = tmp_path / "locked"
    locked.mkdir()

    def refuse(folder):
        raise PermissionError(13, "Permission denied", str(folder / ".probe"))

    monkeypatch.setattr("torchqsm.io._atomic._probe", refuse)  # works as root too, unlike chmod
    monkeypatch.setattr(app, "load_gre", lambda *a, **k: pytest.fail("inputs read before the output check"))
    code = main(["run", "--mag", "m.nii", "--phase", "p.nii", "--echo-times", "0.01", "--b0-tesla", "3",
                 "-o", str(locked / "out")])
    assert code == 2
    assert "locked/out: the output folder is not writable" in _one_line(capsys)
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_folder_really_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(InputError, match="Permission denied"):
            check_writable_folder(locked / "out")
    finally:
        locked.chmod(0o700)


def test_train_output_that_is_a_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "tiny.toml"
    config.write_text('[model]\nname = "tiny"\narchitecture = "unet"\n[data]\nsource = "shapes"\n')
    existing = tmp_path / "run.txt"
    existing.write_text("not a folder")
    assert main(["train", str(config), "-o", str(existing), "--quiet"]) == 2
    assert "run.txt: the run folder is a file, not a folder" in _one_line(capsys)
