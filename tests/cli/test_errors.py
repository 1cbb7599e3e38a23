"""Bad input to ``torchqsm invert``: status 2, one line naming the file or parameter, nothing written.

Every case runs without ``--quiet`` so that a stray progress bar or summary
would show up on stderr, and writes into an existing, empty output folder
that must still be empty afterwards (no χ, no sidecar, no temporary file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import torchqsm
from torchqsm.io import load_nifti


@dataclass(frozen=True)
class BadFiles:
    folder: Path

    def __getitem__(self, name: str) -> Path:
        return self.folder / name


@pytest.fixture(scope="session")
def bad(small_case, tmp_path_factory: pytest.TempPathFactory) -> BadFiles:
    """Broken variants of the small case's field and mask, on its grid unless said otherwise."""
    folder = tmp_path_factory.mktemp("bad")
    affine = small_case.affine
    field = load_nifti(small_case.field).data
    mask = small_case.mask_data

    def write(name: str, data: np.ndarray, grid: np.ndarray = affine) -> None:
        image = nib.Nifti1Image(np.asarray(data), grid)
        image.header.set_qform(grid, code=1)
        image.header.set_sform(grid, code=1)
        nib.save(image, folder / name)

    write("mask_shape.nii.gz", mask[:, :, :15].astype(np.uint8))
    shifted = affine.copy()
    shifted[0, 3] += 2.0
    write("mask_shifted.nii.gz", mask.astype(np.uint8), shifted)
    for name, value in (("field_nan.nii.gz", np.nan), ("field_inf.nii.gz", np.inf)):
        broken = field.copy()
        broken[8, 8, 8] = value
        write(name, broken)
    write("mask_empty.nii.gz", np.zeros(mask.shape, np.uint8))
    write("field_4d.nii.gz", np.stack([field] * 3, axis=-1))
    write("magnitude.nii.gz", (mask + 0.5).astype(np.float32))
    write("magnitude_negative.nii.gz", field)
    write("magnitude_shape.nii.gz", np.ones((16, 16, 15), np.float32))
    (folder / "x.nii.gz").write_bytes(b"\x1f\x8b not really gzip, not NIfTI" * 8)
    (folder / "plain.nii").write_bytes(b"garbage bytes" * 40)
    return BadFiles(folder)


def _cases():
    """(id, arguments after FIELD MASK -o OUT, words the error must contain); {x} is a file in ``bad``."""
    good = ("{field}", "{mask}")
    return [
        ("mask shape", ("{field}", "{bad}/mask_shape.nii.gz"), ["mask_shape.nii.gz", "shape", "16×16×15"]),
        ("mask affine", ("{field}", "{bad}/mask_shifted.nii.gz"), ["mask_shifted.nii.gz", "affine"]),
        ("field NaN", ("{bad}/field_nan.nii.gz", "{mask}"), ["field_nan.nii.gz", "NaN"]),
        ("field inf", ("{bad}/field_inf.nii.gz", "{mask}"), ["field_inf.nii.gz", "infinite"]),
        ("empty mask", ("{field}", "{bad}/mask_empty.nii.gz"), ["mask_empty.nii.gz", "empty"]),
        ("b0-dir zero", (*good, "--b0-dir", "0", "0", "0"), ["--b0-dir", "non-zero"]),
        ("b0-dir nan", (*good, "--b0-dir", "nan", "0", "1"), ["--b0-dir", "finite"]),
        ("b0-dir inf", (*good, "--b0-dir", "inf", "0", "1"), ["--b0-dir", "finite"]),
        ("b0-dir two numbers", (*good, "--b0-dir", "0", "1"), ["--b0-dir", "3 numbers"]),
        ("b0-dir not a number", (*good, "--b0-dir", "z", "0", "1"), ["--b0-dir", "'z'"]),
        ("voxel-size zero", (*good, "--voxel-size", "1", "0", "1"), ["--voxel-size", "positive"]),
        ("voxel-size two numbers", (*good, "--voxel-size", "1", "1"), ["--voxel-size", "3"]),
        ("4-D field for tkd", ("{bad}/field_4d.nii.gz", "{mask}"), ["field_4d.nii.gz", "4-D", "3-D"]),
        ("unknown method", (*good, "--method", "qsmnet9"), ["qsmnet9", "unknown method", "tkd"]),
        ("unknown parameter", (*good, "--param", "lambda=1"), ["lambda", "no parameter", "threshold"]),
        ("garbage .nii.gz field", ("{bad}/x.nii.gz", "{mask}"), ["x.nii.gz", "cannot be read"]),
        ("garbage .nii mask", ("{field}", "{bad}/plain.nii"), ["plain.nii", "mask", "cannot be read"]),
        ("missing field", ("{bad}/missing.nii.gz", "{mask}"), ["missing.nii.gz", "does not exist"]),
        ("missing mask", ("{field}", "{bad}/nomask.nii.gz"), ["nomask.nii.gz", "does not exist"]),
        ("medi without magnitude", (*good, "--method", "medi"), ["medi", "--magnitude"]),
        ("missing magnitude", (*good, "--method", "medi", "--magnitude", "{bad}/nomag.nii.gz"),
         ["nomag.nii.gz", "does not exist"]),
        ("magnitude shape", (*good, "--method", "medi", "--magnitude", "{bad}/magnitude_shape.nii.gz"),
         ["magnitude_shape.nii.gz", "shape"]),
        ("negative magnitude", (*good, "--method", "l2", "--magnitude", "{bad}/magnitude_negative.nii.gz"),
         ["magnitude_negative.nii.gz", "negative"]),
        ("magnitude as --param", (*good, "--method", "l2", "--param", "magnitude=1"), ["magnitude", "--magnitude"]),
        ("device unknown", (*good, "--device", "tpu"), ["--device", "tpu"]),
    ]


def _format(items, case, bad) -> list[str]:
    return [item.format(field=case.field, mask=case.mask, bad=bad.folder) for item in items]


@pytest.mark.parametrize(("arguments", "words"), [pytest.param(a, w, id=i) for i, a, w in _cases()])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(arguments, words, cli, small_case, bad, tmp_path,
                                                         one_line_error) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = cli("invert", *_format(arguments, small_case, bad), "-o", out / "chi.nii.gz")
    one_line_error(result, *words)
    assert sorted(p.name for p in out.iterdir()) == []  # iterdir lists hidden temporary files too


@pytest.mark.parametrize(("method", "item", "words"), [
    ("tkd", "threshold=abc", ["threshold", "float", "'abc'"]),
    ("tkd", "threshold=-1", ["threshold", "positive"]),
    ("tkd", "threshold=nan", ["threshold"]),
    ("tkd", "correct_bias=maybe", ["correct_bias", "bool"]),
    ("tkd", "pad=1,2", ["pad", "three"]),
    ("tkd", "pad=-1", ["pad", "non-negative"]),
    ("tkd", "pad=eight", ["pad", "'eight'"]),
    ("tkd", "pad=1.5", ["pad", "integer"]),
    ("tkd", "threshold", ["KEY=VALUE", "'threshold'"]),
    ("tkd", "=0.1", ["KEY=VALUE"]),
    ("tikhonov", "regularizer=laplacian", ["regularizer", "identity", "gradient", "'laplacian'"]),
    ("tikhonov", "regularization=-0.1", ["regularization", "positive"]),
    ("l2", "max_iterations=2.5", ["max_iterations", "an int", "'2.5'"]),
    ("l2", "max_iterations=-1", ["max_iterations", "non-negative"]),
    ("l2", "tolerance=nan", ["tolerance", "non-negative"]),
    ("l2", "regularization=-1", ["regularization", "non-negative"]),
    ("tv", "max_iterations=-3", ["max_iterations", "non-negative"]),
    ("medi", "cg_tolerance=-1", ["cg_tolerance", "non-negative"]),
])
def test_invalid_param_value_names_the_parameter(method, item, words, cli, small_case, tmp_path,
                                                 one_line_error) -> None:
    result = cli("invert", small_case.field, small_case.mask, "-o", tmp_path / "chi.nii.gz",
                 "--method", method, "--param", item)
    one_line_error(result, *words)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_and_left_unchanged(cli, small_case, tmp_path, one_line_error) -> None:
    output = tmp_path / "chi.nii.gz"
    output.write_bytes(b"precious")
    result = cli("invert", small_case.field, small_case.mask, "-o", output)
    one_line_error(result, "chi.nii.gz", "exists", "--overwrite")
    assert output.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chi.nii.gz"]


def test_existing_sidecar_is_refused_too(cli, small_case, tmp_path, one_line_error) -> None:
    sidecar = tmp_path / "chi.json"
    sidecar.write_text('{"keep": true}')
    result = cli("invert", small_case.field, small_case.mask, "-o", tmp_path / "chi.nii.gz")
    one_line_error(result, "chi.json", "exists")
    assert sidecar.read_text() == '{"keep": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chi.json"]


@pytest.mark.parametrize("name", ["chi.mgz", "chi.nii.bz2", "chi", "chi.json"])
def test_output_must_be_nifti(name, cli, small_case, tmp_path, one_line_error) -> None:
    result = cli("invert", small_case.field, small_case.mask, "-o", tmp_path / name)
    one_line_error(result, name, ".nii")
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_folder_is_refused(cli, small_case, tmp_path, one_line_error) -> None:
    folder = tmp_path / "chi.nii.gz"
    folder.mkdir()
    one_line_error(cli("invert", small_case.field, small_case.mask, "-o", folder), "chi.nii.gz", "folder")
    assert list(folder.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_device_cuda_without_gpu(device, cli, small_case, tmp_path, one_line_error) -> None:
    result = cli("invert", small_case.field, small_case.mask, "-o", tmp_path / "chi.nii.gz", "--device", device)
    one_line_error(result, "--device", "cuda", "no CUDA GPU")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["invert"],
    ["invert", "field.nii.gz", "mask.nii.gz"],  # no -o
    ["invert", "field.nii.gz", "mask.nii.gz", "-o", "chi.nii.gz", "--no-such-option"],
    ["score", "a.nii.gz", "b.nii.gz"],  # no --mask
], ids=["nothing", "unknown command", "invert alone", "no output", "unknown option", "score without mask"])
def test_usage_errors_return_2_with_one_line(argv, cli, tmp_path, monkeypatch, one_line_error) -> None:
    monkeypatch.chdir(tmp_path)
    one_line_error(cli(*argv))
    assert list(tmp_path.iterdir()) == []


def test_help_and_version_return_0(cli) -> None:
    version = cli("--version")
    assert (version.code, version.out.strip()) == (0, f"torchqsm {torchqsm.__version__}")
    for argv in (["--help"], ["invert", "--help"], ["methods", "--help"], ["score", "--help"]):
        result = cli(*argv)
        assert result.code == 0 and result.out.startswith("usage: torchqsm"), argv
        assert result.err == ""
    assert "--b0-dir" in cli("invert", "--help").out
