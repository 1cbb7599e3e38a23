"""``torchqsm simulate phantom|dataset|suite``: parsed and run in-process; user errors are TorchQSMErrors."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from torchqsm.cli.simulate import add_simulate_parser
from torchqsm.errors import InputError, ParameterError, TorchQSMError
from torchqsm.physics import b0_dir_from_affine


def run(*argv: object) -> int:
    parser = argparse.ArgumentParser(prog="torchqsm")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(a) for a in argv])
    args.argv = [str(a) for a in argv]
    return args.handler(args)


def test_phantom(tmp_path):
    out = tmp_path / "chi.nii.gz"
    assert run("simulate", "phantom", out, "--voxel-size", 3, 3, 3, "--seed", 4, "--max-tilt", 30, "--quiet") == 0
    chi = nib.load(out)
    field = nib.load(tmp_path / "chi_localfield.nii.gz")
    mask = np.asarray(nib.load(tmp_path / "chi_mask.nii.gz").dataobj) > 0
    sidecar = json.loads((tmp_path / "chi.json").read_text())
    assert chi.shape == field.shape == mask.shape and chi.shape[0] > 50  # the whole head at 3 mm
    assert np.allclose(b0_dir_from_affine(chi.affine), sidecar["B0Direction"], atol=1e-6)
    assert np.degrees(np.arccos(sidecar["B0Direction"][2])) <= 30.0
    data = chi.get_fdata()
    assert np.all(data[~mask] == 0) and data[mask].std() > 0.01 and np.abs(field.get_fdata()).max() > 0.01
    again = tmp_path / "again.nii.gz"
    run("simulate", "phantom", again, "--voxel-size", 3, 3, 3, "--seed", 4, "--max-tilt", 30, "--quiet")
    assert np.array_equal(nib.load(again).get_fdata(), data)  # same seed, same phantom
    with pytest.raises(InputError, match="overwrite"):
        run("simulate", "phantom", out, "--voxel-size", 3, 3, 3, "--quiet")


def test_dataset(tmp_path):
    assert run("simulate", "dataset", tmp_path, "--count", 2, "--source", "shapes", "--patch-size", 16, 16, 16,
               "--patches-per-volume", 2, "--task", "phase_to_chi", "--quiet") == 0
    for n in range(2):
        phase = nib.load(tmp_path / f"pair-{n:05d}_input.nii.gz")
        assert phase.shape == (16, 16, 16, 4)  # echoes last in the file
        assert nib.load(tmp_path / f"pair-{n:05d}_target.nii.gz").shape == (16, 16, 16)
        meta = json.loads((tmp_path / f"pair-{n:05d}.json").read_text())
        assert np.allclose(b0_dir_from_affine(phase.affine), meta["B0Direction"], atol=1e-6)
        assert len(meta["echo_times_s"]) == 4
    assert not (tmp_path / "pair-00002_input.nii.gz").exists()
    assert json.loads((tmp_path / "dataset.json").read_text())["SeedSalt"] == "train"


def test_suite_one_case(tmp_path):
    assert run("simulate", "suite", tmp_path, "--small", "--case", "baseline", "--quiet") == 0
    index = json.loads((tmp_path / "suite.json").read_text())
    assert [c["name"] for c in index["cases"]] == ["baseline"]


@pytest.mark.parametrize("argv, error, needle", [
    (["dataset", "{tmp}", "--count", "0"], ParameterError, "--count"),
    (["dataset", "{tmp}", "--count", "2", "--max-tilt", "200"], ParameterError, "--max-tilt"),
    (["phantom", "{tmp}/chi.txt"], ParameterError, ".nii"),
    (["phantom", "{tmp}/chi.nii.gz", "--voxel-size", "1", "0", "1"], ParameterError, "--voxel-size"),
    (["suite", "{tmp}", "--small", "--case", "nonsense"], ParameterError, "unknown suite case"),
])
def test_user_errors(tmp_path, argv, error, needle):
    with pytest.raises(error, match=needle) as caught:
        run("simulate", *[a.format(tmp=tmp_path) for a in argv])
    assert isinstance(caught.value, TorchQSMError)


def test_parser_requires_a_subcommand():
    with pytest.raises(SystemExit):
        run("simulate")
