"""BIDS discovery of GRE runs, derivative names, the derivatives' dataset_description.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from torchqsm.errors import InputError, ParameterError
from torchqsm.io.bids import GreRun, discover_gre
from torchqsm.io.derivatives import BIDS_VERSION, DERIVATIVE_SUFFIXES, derivative_path, write_dataset_description
from torchqsm.io.gre import load_gre


def _write(
    root: Path,
    relative: str,
    *,
    echoes: int = 0,
    echo_time_s=None,
    b0_tesla: float = 3.0,
    write_nifti,
) -> Path:
    """A tiny 4³ (or 4³×echoes) image at ``root/relative`` with a BIDS JSON beside it."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.8.0"}))
    shape = (4, 4, 4, echoes) if echoes else (4, 4, 4)
    write_nifti(path, np.full(shape, 0.5, np.float32), np.eye(4))
    if echo_time_s is not None:
        sidecar = path.with_name(path.name.split(".nii")[0] + ".json")
        sidecar.write_text(json.dumps({"EchoTime": echo_time_s, "MagneticFieldStrength": b0_tesla}))
    return path


@pytest.fixture
def dataset(tmp_path: Path, write_nifti) -> Path:
    """sub-01 without sessions (per-echo MEGRE, 4-D T2starw, a magnitude-only run, distractors);
    sub-02 with two sessions and acq/run entities."""
    root = tmp_path / "bids"

    def write(relative: str, **kwargs) -> Path:
        return _write(root, relative, write_nifti=write_nifti, **kwargs)

    anat = "sub-01/anat/sub-01"
    for echo in (1, 2, 10):  # echo-10 sorts after echo-2
        for part in ("mag", "phase"):
            write(f"{anat}_echo-{echo}_part-{part}_MEGRE.nii.gz", echo_time_s=0.002 * echo)
    for part in ("mag", "phase"):
        write(f"{anat}_acq-fast_part-{part}_T2starw.nii", echoes=2, echo_time_s=[0.005, 0.010])
    write(f"{anat}_acq-magonly_T2starw.nii.gz", echo_time_s=0.02)  # no phase: skipped
    write(f"{anat}_T1w.nii.gz")  # not GRE
    write(f"{anat}_echo-1_part-real_MEGRE.nii.gz")  # real/imaginary parts are not used
    (root / "sub-01/anat/.tmp-1234-sub-01_echo-1_part-phase_MEGRE.nii.gz").write_bytes(b"")
    for session in (1, 2):
        for run in (1, 2):
            for echo in (1, 2):
                for part in ("mag", "phase"):
                    write(
                        f"sub-02/ses-{session}/anat/sub-02_ses-{session}_acq-qsm_run-{run}"
                        f"_echo-{echo}_part-{part}_MEGRE.nii",
                        echo_time_s=0.004 * echo,
                        b0_tesla=7.0,
                    )
    (root / "derivatives" / "sub-01" / "anat").mkdir(parents=True)  # never scanned
    return root


def test_discovers_every_run(dataset: Path) -> None:
    runs = discover_gre(dataset)
    assert [run.key for run in runs] == [
        "sub-01",
        "sub-01_acq-fast",
        "sub-02_ses-1_acq-qsm_run-1",
        "sub-02_ses-1_acq-qsm_run-2",
        "sub-02_ses-2_acq-qsm_run-1",
        "sub-02_ses-2_acq-qsm_run-2",
    ]
    megre, t2starw, session_run = runs[0], runs[1], runs[4]
    assert (megre.subject, megre.session, megre.entities, megre.suffix) == ("01", None, {}, "MEGRE")
    assert [p.name for p in megre.phase_files] == [
        "sub-01_echo-1_part-phase_MEGRE.nii.gz",
        "sub-01_echo-2_part-phase_MEGRE.nii.gz",
        "sub-01_echo-10_part-phase_MEGRE.nii.gz",
    ]
    assert [p.name for p in megre.magnitude_files] == [
        p.name.replace("part-phase", "part-mag") for p in megre.phase_files
    ]
    assert t2starw.suffix == "T2starw" and t2starw.entities == {"acq": "fast"}
    assert [p.name for p in t2starw.phase_files] == ["sub-01_acq-fast_part-phase_T2starw.nii"]
    assert (session_run.subject, session_run.session) == ("02", "2")
    assert session_run.entities == {"acq": "qsm", "run": "1"}
    assert all(p.parent == dataset / "sub-02" / "ses-2" / "anat" for p in session_run.phase_files)


def test_discovered_runs_load(dataset: Path) -> None:
    megre, t2starw, *_, last = discover_gre(dataset)
    gre = load_gre(megre.magnitude_files, megre.phase_files)
    assert gre.echo_times_s == pytest.approx((0.002, 0.004, 0.020)) and gre.b0_tesla == 3.0
    assert load_gre(t2starw.magnitude_files, t2starw.phase_files).echo_times_s == (0.005, 0.010)
    assert load_gre(last.magnitude_files, last.phase_files).b0_tesla == 7.0


@pytest.mark.parametrize("labels", ["02", "sub-02", ["sub-02"], ("02",)])
def test_participant_labels_with_and_without_prefix(dataset: Path, labels) -> None:
    assert {run.subject for run in discover_gre(dataset, participant_labels=labels)} == {"02"}


def test_session_filter(dataset: Path) -> None:
    for sessions in ("ses-1", ["1"]):
        runs = discover_gre(dataset, sessions=sessions)
        assert [run.key for run in runs] == [
            "sub-02_ses-1_acq-qsm_run-1",
            "sub-02_ses-1_acq-qsm_run-2",
        ]


def _fails(match: str, bids_dir: Path, **kwargs) -> str:
    with pytest.raises(InputError, match=match) as caught:
        discover_gre(bids_dir, **kwargs)
    return str(caught.value)


def test_missing_and_empty_datasets(tmp_path: Path, dataset: Path) -> None:
    assert str(tmp_path / "absent") in _fails("the BIDS folder does not exist", tmp_path / "absent")
    (tmp_path / "file").write_text("")
    _fails("is a file, not a folder", tmp_path / "file")
    (tmp_path / "empty").mkdir()
    _fails("not a BIDS dataset: the folder has no dataset_description.json", tmp_path / "empty")
    (tmp_path / "empty" / "dataset_description.json").write_text('{"Name": "e", "BIDSVersion": "1.8.0"}')
    _fails("no sub-\\* folders: this is not a BIDS dataset", tmp_path / "empty")
    (dataset / "dataset_description.json").unlink()  # a dataset without its description is refused
    _fails("has no dataset_description.json", dataset)
    (dataset / "dataset_description.json").write_text('{"Name": "d", "BIDSVersion": "1.8.0"}')
    message = _fails("participant sub-03 not found", dataset, participant_labels=["01", "sub-03"])
    assert "the dataset has sub-01, sub-02" in message
    _fails("session ses-3 not found", dataset, sessions=["3"])


def test_no_gre_found(tmp_path: Path, write_nifti) -> None:
    _write(tmp_path, "sub-1/anat/sub-1_T1w.nii.gz", write_nifti=write_nifti)
    _fails("no GRE run with phase found", tmp_path)
    _write(tmp_path, "sub-1/anat/sub-1_echo-1_part-mag_MEGRE.nii.gz", write_nifti=write_nifti)
    _fails("1 magnitude-only run", tmp_path)


def test_runs_that_do_not_pair_up(tmp_path: Path, write_nifti) -> None:
    def write(name: str) -> Path:
        return _write(tmp_path, f"sub-1/anat/{name}", write_nifti=write_nifti)

    write("sub-1_echo-1_part-phase_MEGRE.nii")
    _fails("run sub-1 \\(MEGRE\\) has phase but no magnitude files", tmp_path)
    write("sub-1_echo-1_part-mag_MEGRE.nii")
    write("sub-1_echo-2_part-phase_MEGRE.nii")
    _fails("magnitude echoes \\[1\\] but phase echoes \\[1, 2\\]", tmp_path)
    write("sub-1_echo-2_part-mag_MEGRE.nii")
    write("sub-1_echo-2_part-mag_MEGRE.nii.gz")
    _fails("two magnitude files for echo 2 of run sub-1", tmp_path)
    (tmp_path / "sub-1/anat/sub-1_echo-2_part-mag_MEGRE.nii.gz").unlink()
    write("sub-1_part-mag_MEGRE.nii")
    write("sub-1_part-phase_MEGRE.nii")
    _fails("mixes magnitude files with and without an echo entity", tmp_path)


def test_derivative_paths(dataset: Path, tmp_path: Path) -> None:
    runs = discover_gre(dataset)
    out = tmp_path / "derivatives" / "torchqsm"
    assert derivative_path(out, runs[0], "Chimap") == out / "sub-01/anat/sub-01_Chimap.nii.gz"
    assert derivative_path(out, runs[2], DERIVATIVE_SUFFIXES["mask"]) == (
        out / "sub-02/ses-1/anat/sub-02_ses-1_acq-qsm_run-1_desc-brain_mask.nii.gz"
    )
    assert (
        derivative_path(out, runs[1], "desc-local_fieldmap", ext=".json").name
        == "sub-01_acq-fast_desc-local_fieldmap.json"
    )
    assert derivative_path(out, runs[5], DERIVATIVE_SUFFIXES["qc"], ext=".png").name == (
        "sub-02_ses-2_acq-qsm_run-2_desc-qc_Chimap.png"
    )
    for bad in ("", "Chi map", "../Chimap", "desc-_mask", "Chimap_"):
        with pytest.raises(ParameterError, match="not a BIDS suffix"):
            derivative_path(out, runs[0], bad)
    with pytest.raises(ParameterError, match="not a file extension"):
        derivative_path(out, runs[0], "Chimap", ext="nii.gz")


def test_dataset_description(tmp_path: Path) -> None:
    out = tmp_path / "derivatives" / "torchqsm"
    path = write_dataset_description(
        out, version="0.1.0", code_url="https://example.org/torchqsm", source_datasets=["../.."]
    )
    record = json.loads(path.read_text())
    assert record == {
        "Name": "torchqsm QSM derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {"Name": "torchqsm", "Version": "0.1.0", "CodeURL": "https://example.org/torchqsm"}
        ],
        "SourceDatasets": [{"URL": "../.."}],
    }
    assert [p.name for p in out.iterdir()] == ["dataset_description.json"]  # no temporary file left
    # A later run into the same folder keeps ours; --overwrite replaces it; a foreign one is refused.
    assert (
        write_dataset_description(out, version="9.9") == path
        and json.loads(path.read_text()) == record
    )
    write_dataset_description(out, version="0.2.0", overwrite=True)
    assert json.loads(path.read_text())["GeneratedBy"] == [{"Name": "torchqsm", "Version": "0.2.0"}]
    path.write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.9.0"}))
    with pytest.raises(InputError, match="not made by torchqsm exists; pass --overwrite"):
        write_dataset_description(out, version="0.2.0")
    with pytest.raises(ParameterError, match="version must not be empty"):
        write_dataset_description(out, version=" ")


def test_qsm_forward_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dataset written by qsm-forward (simple phantom, 2 echoes at 3 T) is found and loads."""
    qsm_forward = pytest.importorskip("qsm_forward")
    chi = qsm_forward.generate_susceptibility_phantom(
        resolution=[16, 16, 16],
        background=0,
        large_cylinder_val=0.005,
        small_cylinder_radii=[2, 2, 2, 3],
        small_cylinder_vals=[0.05, 0.1, 0.2, 0.5],
    )
    recon = qsm_forward.ReconParams(
        subject="1",
        session="2",
        acq="x",
        run=1,
        TEs=np.array([0.004, 0.012]),
        B0=3,
        voxel_size=np.array([1.0, 1.0, 1.0]),
        generate_shim_field=False,
        peak_snr=100,
        random_seed=42,
    )
    qsm_forward.generate_bids(
        qsm_forward.TissueParams(chi=chi), recon, str(tmp_path / "bids"), save_segmentation=False
    )
    capsys.readouterr()  # qsm-forward prints its progress

    (run,) = discover_gre(tmp_path / "bids")
    assert isinstance(run, GreRun)
    assert (run.key, run.subject, run.session, run.entities, run.suffix) == (
        "sub-1_ses-2_acq-x_run-1",
        "1",
        "2",
        {"acq": "x", "run": "1"},
        "MEGRE",
    )
    gre = load_gre(run.magnitude_files, run.phase_files)
    assert gre.echo_times_s == (0.004, 0.012) and gre.b0_tesla == 3.0
    assert gre.phase.shape == gre.magnitude.shape == (2, 16, 16, 16)
    assert float(gre.phase.abs().max()) <= np.pi + 1e-5  # qsm-forward stores wrapped radians
    assert gre.voxel_size_mm == (1.0, 1.0, 1.0) and gre.b0_dir == (0.0, 0.0, 1.0)
    assert gre.sidecar["ConversionSoftware"] == "qsm-forward"
