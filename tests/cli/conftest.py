"""Fixtures for the in-process CLI tests: phantom fields on disk and a runner for ``torchqsm.cli.main.main``.

The inputs are written once per session (read-only afterwards); every test
writes its outputs into its own ``tmp_path``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from torchqsm.cli.main import main
from torchqsm.physics import b0_dir_from_affine
from torchqsm.physics.geometry import voxel_size_from_affine
from torchqsm.simulate import forward_field, shapes_phantom

#: Oblique acquisition: 20° about x, anisotropic voxels (mm).
ANGLE_DEG = 20.0
VOXEL_SIZE_MM = (1.0, 1.0, 1.5)
#: qform and sform codes written into the inputs (scanner, aligned); outputs must keep them.
QFORM_CODE, SFORM_CODE = 1, 2


def oblique_affine(
    angle_deg: float = ANGLE_DEG, voxel_size_mm: tuple[float, float, float] = VOXEL_SIZE_MM
) -> np.ndarray:
    """Rotation about x times anisotropic voxels, with a translation (mm)."""
    a = math.radians(angle_deg)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(voxel_size_mm)
    affine[:3, 3] = (-10.0, 5.5, 3.25)
    return affine


def write_nifti(path: Path, data: np.ndarray | torch.Tensor, affine: np.ndarray) -> Path:
    """Write with nibabel directly, so that the CLI is tested against files it did not write."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    data = np.asarray(data)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    elif data.dtype.kind == "f":
        data = data.astype(np.float32)
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=QFORM_CODE)
    image.header.set_sform(affine, code=SFORM_CODE)
    nib.save(image, path)
    return path


@dataclass(frozen=True)
class Case:
    """A simulated problem on disk: true χ (ppm), mask and geometry, and the files."""

    field: Path
    mask: Path
    chi: np.ndarray
    mask_data: np.ndarray
    affine: np.ndarray
    voxel_size_mm: tuple[float, float, float]
    b0_dir: tuple[float, float, float]


def _make_case(folder: Path, shape: tuple[int, int, int], affine: np.ndarray) -> Case:
    folder.mkdir(parents=True, exist_ok=True)
    voxel = voxel_size_from_affine(affine)
    b0_dir = b0_dir_from_affine(affine)
    chi, mask = shapes_phantom(shape, dtype=torch.float64)
    # The field the scanner would see: B0 along world z, i.e. along b0_dir in voxel coordinates.
    field = forward_field(chi, voxel_size_mm=voxel, b0_dir=b0_dir, pad=16)
    return Case(
        field=write_nifti(folder / "field.nii.gz", field, affine),
        mask=write_nifti(folder / "mask.nii.gz", mask, affine),
        chi=chi.numpy(),
        mask_data=mask.numpy(),
        affine=affine,
        voxel_size_mm=voxel,
        b0_dir=b0_dir,
    )


@pytest.fixture(scope="session")
def oblique_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """32³ shapes phantom, oblique (20° about x) with 1×1×1.5 mm voxels, noise-free field."""
    return _make_case(tmp_path_factory.mktemp("oblique"), (32, 32, 32), oblique_affine())


@pytest.fixture(scope="session")
def small_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """16³ shapes phantom on the same oblique grid: for tests about plumbing, not accuracy."""
    return _make_case(tmp_path_factory.mktemp("small"), (16, 16, 16), oblique_affine())


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``cli("invert", field, ...)`` runs ``torchqsm`` in-process and returns its status and output."""

    def run(*argv: object) -> Result:
        capsys.readouterr()  # drop anything printed before
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def assert_one_line_error(result: Result, *needles: str) -> None:
    """Exit status 2, nothing on stdout, one line on stderr containing every needle, no traceback."""
    assert result.code == 2, result
    assert result.out == ""
    # One line, and only that: no progress bar (its carriage returns), no usage text, no traceback.
    assert result.err.startswith("torchqsm") and len(result.err.splitlines()) == 1, repr(result.err)
    assert result.err.endswith("\n")
    assert "Traceback" not in result.err
    assert "error:" in result.err
    for needle in needles:
        assert needle in result.err, (needle, result.err)


@pytest.fixture
def one_line_error() -> Callable[..., None]:
    return assert_one_line_error


@pytest.fixture(scope="session")
def write() -> Callable[[Path, np.ndarray | torch.Tensor, np.ndarray], Path]:
    """:func:`write_nifti`: write an image with nibabel (qform code 1, sform code 2)."""
    return write_nifti
