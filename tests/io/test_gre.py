"""load_gre: echo layouts, echo times and field strength from sidecars or arguments, every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.io import load_nifti, save_nifti
from torchqsm.io.gre import load_gre
from torchqsm.physics import b0_dir_from_affine

SHAPE = (5, 6, 7)
ECHO_TIMES_S = (0.004, 0.009, 0.014)


def _json(nifti: Path, **entries) -> Path:
    path = nifti.with_name(nifti.name.split(".nii")[0] + ".json")
    path.write_text(json.dumps(entries))
    return path


def _echoes(
    rng: np.random.Generator, count: int = len(ECHO_TIMES_S), *, offset: float = 0.0
) -> np.ndarray:
    """(X, Y, Z, E) values whose echo e is recognisable: offset + e + 1 + small noise."""
    values = rng.uniform(0.0, 0.1, SHAPE + (count,)) + offset
    return (values + np.arange(1, count + 1)).astype(np.float32)


@pytest.fixture
def four_d(tmp_path: Path, rng: np.random.Generator, write_nifti) -> tuple[Path, Path]:
    """One 4-D file per part on the oblique grid, each with a BIDS JSON listing every echo."""
    magnitude = write_nifti(tmp_path / "sub-1_part-mag_MEGRE.nii.gz", _echoes(rng, offset=10.0))
    phase = write_nifti(tmp_path / "sub-1_part-phase_MEGRE.nii.gz", _echoes(rng))
    for path in (magnitude, phase):
        _json(path, EchoTime=list(ECHO_TIMES_S), MagneticFieldStrength=3)
    return magnitude, phase


@pytest.fixture
def per_echo(
    tmp_path: Path, rng: np.random.Generator, write_nifti
) -> tuple[list[Path], list[Path]]:
    """One 3-D file per echo and part, BIDS style, each with its own EchoTime."""
    magnitudes, phases = [], []
    for part, files, offset in (("mag", magnitudes, 10.0), ("phase", phases, 0.0)):
        data = _echoes(rng, offset=offset)
        for echo, echo_time in enumerate(ECHO_TIMES_S):
            path = write_nifti(
                tmp_path / f"sub-1_echo-{echo + 1}_part-{part}_MEGRE.nii", data[..., echo]
            )
            _json(path, EchoTime=echo_time, MagneticFieldStrength=7.0)
            files.append(path)
    return magnitudes, phases


def test_four_dimensional_files_put_echoes_first(four_d, oblique: np.ndarray) -> None:
    gre = load_gre(*four_d)
    assert gre.magnitude.shape == gre.phase.shape == (3,) + SHAPE
    assert gre.magnitude.dtype == gre.phase.dtype == torch.float32
    # Echo e holds the values e + 1 + [0, 0.1): the echo axis moved to the front intact.
    for echo in range(3):
        assert (
            echo + 1 <= float(gre.phase[echo].min()) and float(gre.phase[echo].max()) < echo + 1.1
        )
        assert (
            echo + 11 <= float(gre.magnitude[echo].min())
            and float(gre.magnitude[echo].max()) < echo + 11.1
        )
    stored = load_nifti(four_d[1], ndim=4).data
    np.testing.assert_array_equal(gre.phase.numpy(), np.moveaxis(stored, -1, 0))
    assert gre.echo_times_s == ECHO_TIMES_S and gre.echo_count == 3
    assert gre.b0_tesla == 3.0 and isinstance(gre.b0_tesla, float)
    np.testing.assert_allclose(gre.affine, oblique, atol=1e-5)
    assert gre.voxel_size_mm == (0.5, 0.7, 1.2)
    assert gre.b0_dir == pytest.approx(b0_dir_from_affine(oblique), abs=1e-6)
    assert gre.b0_dir[1] == pytest.approx(0.5, abs=1e-6)  # 30° about x: sin 30°
    assert gre.reference.shape == SHAPE and gre.header.get_data_shape() == SHAPE
    assert set(gre.sources) == {"magnitude", "phase", "magnitude_json", "phase_json"}
    assert gre.sidecar["EchoTime"] == list(ECHO_TIMES_S)
    assert gre.notes == ()


def test_outputs_land_on_the_input_grid(four_d, tmp_path: Path) -> None:
    gre = load_gre(*four_d)
    chi = save_nifti(tmp_path / "out" / "chi.nii.gz", torch.zeros(SHAPE), like=gre.reference)
    written = load_nifti(chi)
    np.testing.assert_allclose(written.affine, gre.affine, atol=1e-6)
    assert written.shape == SHAPE


def test_one_file_per_echo(per_echo) -> None:
    magnitudes, phases = per_echo
    gre = load_gre(magnitudes, phases)
    assert gre.phase.shape == (3,) + SHAPE
    for echo in range(3):
        np.testing.assert_array_equal(gre.phase[echo].numpy(), load_nifti(phases[echo]).data)
    assert gre.echo_times_s == ECHO_TIMES_S and gre.b0_tesla == 7.0
    assert gre.sources["phase_echo-2"] == str(phases[1])
    assert gre.sources["magnitude_echo-3_json"].endswith("sub-1_echo-3_part-mag_MEGRE.json")
    assert gre.sidecar["EchoTime"] == ECHO_TIMES_S[0]


def test_single_three_dimensional_echo(
    tmp_path: Path, rng: np.random.Generator, write_nifti
) -> None:
    magnitude = write_nifti(tmp_path / "mag.nii", _echoes(rng, 1)[..., 0])
    phase = write_nifti(tmp_path / "phase.nii", _echoes(rng, 1)[..., 0])
    gre = load_gre(magnitude, [phase], echo_times_s=[0.02], b0_tesla=1.5)
    assert gre.magnitude.shape == gre.phase.shape == (1,) + SHAPE
    assert gre.echo_times_s == (0.02,) and gre.b0_tesla == 1.5
    assert gre.sidecar == {} and set(gre.sources) == {"magnitude", "phase"}


def test_arguments_win_over_sidecars_and_leave_a_note(four_d) -> None:
    gre = load_gre(*four_d, echo_times_s=[0.005, 0.010, 0.015], b0_tesla=2.89)
    assert gre.echo_times_s == (0.005, 0.010, 0.015) and gre.b0_tesla == 2.89
    assert len(gre.notes) == 2
    assert "override EchoTime" in gre.notes[0] and "sub-1_part-phase_MEGRE.json" in gre.notes[0]
    assert "overrides MagneticFieldStrength 3 T" in gre.notes[1]
    # Agreeing arguments are no news.
    assert load_gre(*four_d, echo_times_s=ECHO_TIMES_S, b0_tesla=3.0).notes == ()


def test_magnitude_sidecar_is_used_when_phase_has_none(four_d) -> None:
    magnitude, phase = four_d
    phase.with_name("sub-1_part-phase_MEGRE.json").unlink()
    gre = load_gre(magnitude, phase)
    assert gre.echo_times_s == ECHO_TIMES_S and gre.b0_tesla == 3.0
    assert "phase_json" not in gre.sources and gre.sidecar["MagneticFieldStrength"] == 3


def _raises(error: type[Exception], *fragments: str, **kwargs):
    """Call load_gre and check the message holds every fragment."""

    def check(magnitude, phase) -> None:
        with pytest.raises(error) as caught:
            load_gre(magnitude, phase, **kwargs)
        for fragment in fragments:
            assert fragment in str(caught.value)

    return check


def test_shape_mismatch(tmp_path: Path, four_d, rng: np.random.Generator, write_nifti) -> None:
    phase = write_nifti(
        tmp_path / "short_phase.nii.gz", rng.uniform(1, 2, (5, 6, 6, 3)).astype(np.float32)
    )
    _raises(
        InputError,
        "short_phase.nii.gz",
        "shape 5×6×6 does not match",
        "sub-1_part-mag_MEGRE.nii.gz",
    )(four_d[0], phase)


def test_affine_mismatch(
    tmp_path: Path, four_d, rng: np.random.Generator, oblique: np.ndarray, write_nifti
) -> None:
    moved = oblique.copy()
    moved[0, 3] += 1.0
    phase = write_nifti(tmp_path / "moved_phase.nii.gz", _echoes(rng), moved)
    _raises(InputError, "moved_phase.nii.gz", "affine differs", "not on one grid")(four_d[0], phase)


def test_echo_count_mismatch(tmp_path: Path, four_d, rng: np.random.Generator, write_nifti) -> None:
    phase = write_nifti(tmp_path / "two_echo_phase.nii.gz", _echoes(rng, 2))
    _raises(
        InputError,
        "two_echo_phase.nii.gz",
        "phase has 2 echoes",
        "magnitude (sub-1_part-mag_MEGRE.nii.gz) 3",
    )(four_d[0], phase)


def test_missing_echo_times(four_d) -> None:
    for path in four_d:
        _json(path, MagneticFieldStrength=3)
    _raises(
        InputError,
        "sub-1_part-phase_MEGRE.nii.gz",
        "no echo times: give --echo-times or EchoTime in sub-1_part-phase_MEGRE.json",
    )(*four_d)


def test_echo_time_count_mismatch(four_d) -> None:
    _raises(InputError, "2 echo times (given) for 3 echoes", echo_times_s=[0.004, 0.008])(*four_d)
    _json(four_d[1], EchoTime=[0.004, 0.008], MagneticFieldStrength=3)
    _raises(
        InputError,
        "sub-1_part-phase_MEGRE.nii.gz",
        "2 echo times (EchoTime in sub-1_part-phase_MEGRE.json)",
    )(*four_d)


def test_missing_field_strength(four_d) -> None:
    for path in four_d:
        _json(path, EchoTime=list(ECHO_TIMES_S))
    _raises(
        InputError,
        "sub-1_part-phase_MEGRE.nii.gz",
        "no field strength: give --b0-tesla or MagneticFieldStrength",
    )(*four_d)
    assert load_gre(*four_d, b0_tesla=3.0).b0_tesla == 3.0


def test_sidecars_that_disagree(per_echo) -> None:
    magnitudes, phases = per_echo
    _json(phases[2], EchoTime=ECHO_TIMES_S[2], MagneticFieldStrength=3.0)
    _raises(InputError, "sub-1_echo-3_part-phase_MEGRE.json", "3 T disagrees with 7 T")(
        magnitudes, phases
    )
    phases[1].with_name("sub-1_echo-2_part-phase_MEGRE.json").unlink()
    _raises(InputError, "sub-1_echo-2_part-phase_MEGRE.json", "no EchoTime for this echo")(
        magnitudes, phases
    )
    # Arguments win over broken sidecars, which leave a note.
    gre = load_gre(magnitudes, phases, echo_times_s=ECHO_TIMES_S, b0_tesla=7.0)
    assert gre.echo_times_s == ECHO_TIMES_S and gre.b0_tesla == 7.0
    assert (
        "sidecar EchoTime ignored" in gre.notes[0] and "no EchoTime for this echo" in gre.notes[0]
    )
    assert "sidecar MagneticFieldStrength ignored" in gre.notes[1] and "disagrees" in gre.notes[1]


def test_nan_and_infinite_phase(
    tmp_path: Path, four_d, rng: np.random.Generator, write_nifti
) -> None:
    values = _echoes(rng)
    values[1, 1, 1, 0], values[2, 2, 2, 1] = np.nan, np.inf
    phase = write_nifti(tmp_path / "nan_phase.nii.gz", values)
    _raises(InputError, "nan_phase.nii.gz", "2 voxels that are not finite (1 NaN, 1 infinite)")(
        four_d[0], phase
    )


def test_all_zero_phase(
    tmp_path: Path, four_d, per_echo, rng: np.random.Generator, write_nifti
) -> None:
    phase = write_nifti(tmp_path / "zero_phase.nii.gz", np.zeros(SHAPE + (3,), np.float32))
    _raises(InputError, "zero_phase.nii.gz", "echo 1 of the phase image is all zero")(
        four_d[0], phase
    )
    magnitudes, phases = per_echo
    write_nifti(phases[1], np.zeros(SHAPE, np.float32))
    _raises(InputError, "sub-1_echo-2_part-phase_MEGRE.nii", "image is all zero")(
        magnitudes, phases
    )


def test_corrupt_and_missing_files(tmp_path: Path, four_d) -> None:
    corrupt = tmp_path / "corrupt_phase.nii.gz"
    corrupt.write_bytes(four_d[1].read_bytes()[:200])  # truncated gzip stream
    _raises(InputError, "corrupt_phase.nii.gz")(four_d[0], corrupt)
    garbage = tmp_path / "garbage_phase.nii"
    garbage.write_bytes(b"not a nifti file at all" * 20)
    _raises(InputError, "garbage_phase.nii", "cannot be read as NIfTI")(four_d[0], garbage)
    _raises(InputError, "absent.nii.gz", "does not exist")(four_d[0], tmp_path / "absent.nii.gz")
    broken_json = four_d[1].with_name("sub-1_part-phase_MEGRE.json")
    broken_json.write_text("{EchoTime: 0.004")
    _raises(InputError, "sub-1_part-phase_MEGRE.json", "not valid JSON")(*four_d)


def test_per_echo_files_on_different_grids(
    per_echo, rng: np.random.Generator, oblique: np.ndarray, write_nifti
) -> None:
    magnitudes, phases = per_echo
    moved = oblique.copy()
    moved[2, 3] += 2.0
    write_nifti(phases[2], _echoes(rng, 1)[..., 0], moved)
    _raises(InputError, "sub-1_echo-3_part-phase_MEGRE.nii", "affine differs")(magnitudes, phases)
    write_nifti(magnitudes[1], np.ones((5, 6, 8), np.float32))
    _raises(InputError, "sub-1_echo-2_part-mag_MEGRE.nii", "shape 5×6×8 does not match")(
        magnitudes, phases
    )


def test_per_echo_files_must_be_three_dimensional(per_echo, four_d) -> None:
    _raises(InputError, "sub-1_part-phase_MEGRE.nii.gz", "4-D", "3-D image is needed")(
        per_echo[0][:1] * 2, [four_d[1], four_d[1]]
    )


def test_wrong_dimensions(tmp_path: Path, write_nifti) -> None:
    flat = write_nifti(tmp_path / "flat.nii", np.ones((5, 6), np.float32))
    five = write_nifti(tmp_path / "five.nii", np.ones((5, 6, 7, 2, 2), np.float32))
    _raises(InputError, "flat.nii", "2-D", "3-D or 4-D image is needed")(flat, flat)
    _raises(InputError, "five.nii", "5-D", "3-D or 4-D image is needed")(five, five)


def test_bad_echo_times(four_d) -> None:
    _raises(ParameterError, "must increase", echo_times_s=[0.004, 0.014, 0.009])(*four_d)
    _raises(ParameterError, "looks like milliseconds", echo_times_s=[4, 9, 14])(*four_d)
    _raises(ParameterError, "positive and finite", echo_times_s=[0.0, 0.004, 0.009])(*four_d)
    _raises(ParameterError, "b0_tesla must be positive", b0_tesla=-3.0)(*four_d)
    _json(four_d[1], EchoTime=[0.014, 0.009, 0.004], MagneticFieldStrength=3)
    _raises(ParameterError, "sub-1_part-phase_MEGRE.nii.gz", "must increase")(*four_d)
    with pytest.raises(ParameterError, match="no magnitude file given"):
        load_gre([], four_d[1])
