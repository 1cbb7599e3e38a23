"""QC figure: a PNG of the expected size, true voxel aspect, atomic writing, bad inputs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.io.qc import FIGURE_WIDTH_IN, ROW_HEIGHT_IN, TITLE_HEIGHT_IN, qc_figure

SHAPE = (16, 16, 12)
DPI = 40


@pytest.fixture
def maps(torch_rng: torch.Generator) -> dict[str, torch.Tensor]:
    mask = torch.zeros(SHAPE, dtype=torch.bool)
    mask[3:13, 2:14, 2:10] = True
    chi = torch.randn(SHAPE, generator=torch_rng) * 0.05 * mask
    return {
        "magnitude": torch.rand((3,) + SHAPE, generator=torch_rng)
        + mask,  # (E, X, Y, Z): first echo shown
        "total_field_ppm": chi * 0.3 + torch.linspace(-1, 1, SHAPE[0])[:, None, None],
        "local_field_ppm": chi * 0.3,
        "chi_ppm": chi,
        "mask": mask,
    }


def _size_in_pixels(rows: int) -> tuple[int, int]:
    return round((rows * ROW_HEIGHT_IN + TITLE_HEIGHT_IN) * DPI), round(FIGURE_WIDTH_IN * DPI)


def test_png_of_the_expected_size(tmp_path: Path, maps) -> None:
    settings = dict(matplotlib.rcParams)
    path = qc_figure(
        tmp_path / "qc" / "sub-1_desc-qc_Chimap.png",
        **maps,
        voxel_size_mm=(1.0, 1.0, 2.0),
        title="sub-1",
        dpi=DPI,
    )
    assert path == tmp_path / "qc" / "sub-1_desc-qc_Chimap.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == _size_in_pixels(4) == (416, 360)
    assert image[..., :3].std() > 0.1  # something was drawn
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert dict(matplotlib.rcParams) == settings  # no global settings changed


def test_rows_can_be_left_out_and_numpy_works(tmp_path: Path, maps) -> None:
    path = qc_figure(
        tmp_path / "chi.png",
        magnitude=None,
        total_field_ppm=None,
        local_field_ppm=maps["local_field_ppm"].numpy(),
        chi_ppm=maps["chi_ppm"].double().numpy(),
        voxel_size_mm=(1, 1, 1),
        dpi=DPI,
    )
    assert matplotlib.image.imread(path).shape[:2] == _size_in_pixels(2)


def test_slices_keep_the_voxel_aspect(tmp_path: Path) -> None:
    """The mask outline (the only red in the figure) of an 8-voxel cube with 3 mm slices
    is square in the axial view and three times taller than wide in the other two."""
    shape = (16, 16, 12)
    mask = np.zeros(shape, bool)
    mask[4:12, 4:12, 2:10] = True
    path = qc_figure(
        tmp_path / "cube.png",
        magnitude=mask * 1.0 + 0.5,
        total_field_ppm=None,
        local_field_ppm=None,
        chi_ppm=None,
        mask=mask,
        voxel_size_mm=(1.0, 1.0, 3.0),
        dpi=60,
    )
    image = matplotlib.image.imread(path)
    red = (image[..., 0] - image[..., 1] > 0.15) & (image[..., 0] - image[..., 2] > 0.15)
    ratios = []
    for panel in np.array_split(red, 3, axis=1):  # the three columns
        rows, columns = np.nonzero(panel)
        ratios.append((np.ptp(rows) + 1) / (np.ptp(columns) + 1))
    # Measured: 1.0, 2.89, 2.89 (the outline's antialiasing blurs a pixel at each end).
    assert ratios[0] == pytest.approx(1.0, rel=0.1)
    assert ratios[1] == pytest.approx(3.0, rel=0.1) and ratios[2] == pytest.approx(3.0, rel=0.1)


def test_never_clobbers_without_overwrite(tmp_path: Path, maps) -> None:
    path = tmp_path / "qc.png"
    path.write_bytes(b"keep me")
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        qc_figure(path, **maps, voxel_size_mm=(1, 1, 1), dpi=DPI)
    assert path.read_bytes() == b"keep me"
    only_chi = dict(
        magnitude=None, total_field_ppm=None, local_field_ppm=None, chi_ppm=maps["chi_ppm"]
    )
    qc_figure(path, **only_chi, voxel_size_mm=(1, 1, 1), dpi=DPI, overwrite=True)
    assert matplotlib.image.imread(path).shape[:2] == _size_in_pixels(1)


def test_mismatched_shapes(tmp_path: Path, maps) -> None:
    bad = dict(maps, chi_ppm=torch.zeros(16, 16, 11))
    with pytest.raises(
        InputError, match="the chi_ppm shape 16×16×11 does not match the magnitude shape 16×16×12"
    ):
        qc_figure(tmp_path / "qc.png", **bad, voxel_size_mm=(1, 1, 1))
    with pytest.raises(InputError, match="the mask shape 16×16×13 does not match"):
        qc_figure(
            tmp_path / "qc.png", **dict(maps, mask=torch.ones(16, 16, 13)), voxel_size_mm=(1, 1, 1)
        )
    with pytest.raises(InputError, match="the local_field_ppm must be a 3-D volume"):
        qc_figure(
            tmp_path / "qc.png",
            **dict(maps, local_field_ppm=torch.zeros(2, 16, 16, 12)),
            voxel_size_mm=(1, 1, 1),
        )
    assert not (tmp_path / "qc.png").exists()


def test_bad_arguments(tmp_path: Path, maps) -> None:
    with pytest.raises(InputError, match="must end in .png"):
        qc_figure(tmp_path / "qc.jpg", **maps, voxel_size_mm=(1, 1, 1))
    with pytest.raises(InputError, match="the mask is empty"):
        qc_figure(
            tmp_path / "qc.png", **dict(maps, mask=torch.zeros(SHAPE)), voxel_size_mm=(1, 1, 1)
        )
    with pytest.raises(ParameterError, match="voxel_size_mm must be three positive numbers"):
        qc_figure(tmp_path / "qc.png", **maps, voxel_size_mm=(1, 0, 1))
    with pytest.raises(ParameterError, match="at least one map"):
        qc_figure(
            tmp_path / "qc.png",
            magnitude=None,
            total_field_ppm=None,
            local_field_ppm=None,
            chi_ppm=None,
            voxel_size_mm=(1, 1, 1),
        )
