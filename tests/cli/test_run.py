"""`torchqsm run`, in-process: file and BIDS forms, recipes, reruns, and every bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from torchqsm.cli.main import main
from torchqsm.physics.units import ppm_to_phase
from torchqsm.simulate import forward_field, shapes_phantom

ECHO_TIMES = (0.004, 0.008, 0.012)
SHAPE = (32, 32, 32)


def _gre(shape=SHAPE, echo_times=ECHO_TIMES, b0=3.0):
    """Magnitude and wrapped phase (E, X, Y, Z) of the shapes phantom, with a linear background.

    The background (±3 ppm across the box) wraps the phase several times, as in real data,
    so stored integers cover the whole ±4096 range.
    """
    chi, mask = shapes_phantom(shape, dtype=torch.float64)
    field = forward_field(chi, pad=16)
    x = torch.linspace(-1, 1, shape[0], dtype=torch.float64)[:, None, None]
    total = (field + 3.0 * x) * mask
    mags, phases = [], []
    for te in echo_times:
        phase = ppm_to_phase(total, echo_time_s=te, b0_tesla=b0) + 0.4
        phases.append(torch.angle(torch.exp(1j * phase)) * mask)
        mags.append(mask * math.exp(-te * 25.0) + 0.002)
    return torch.stack(mags).numpy(), torch.stack(phases).numpy(), mask.numpy()


def _save(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4) if affine is None else affine), path)
    return path


@pytest.fixture
def gre_files(tmp_path):
    mag, phase, mask = _gre()
    # 4-D files, echoes last, phase stored as ±4096 integers like many scanners.
    mag_file = _save(tmp_path / "mag.nii.gz", np.moveaxis(mag, 0, -1))
    phase_file = _save(tmp_path / "phase.nii.gz", np.round(np.moveaxis(phase, 0, -1) / math.pi * 4096))
    mask_file = _save(tmp_path / "mask.nii.gz", mask.astype(np.float32))
    return mag_file, phase_file, mask_file


def _run(*args) -> int:
    return main(["run", *map(str, args)])


def test_file_form_writes_every_output(gre_files, tmp_path, capsys):
    mag, phase, _ = gre_files
    out = tmp_path / "out"
    assert _run("--mag", mag, "--phase", phase, "--echo-times", *ECHO_TIMES, "--b0-tesla", 3, "-o", out) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["phase_Chimap.json", "phase_Chimap.nii.gz", "phase_desc-brain_mask.nii.gz",
                     "phase_desc-eroded_mask.nii.gz", "phase_desc-local_fieldmap.nii.gz",
                     "phase_desc-qc_Chimap.png", "phase_desc-total_fieldmap.nii.gz"]
    record = json.loads((out / "phase_Chimap.json").read_text())
    assert record["Status"] == "finished" and record["Recipe"] == "fast"
    assert "4096" in record["PhaseScaling"]
    assert set(record["TimingsSeconds"]) >= {"mask", "unwrap", "background removal", "dipole inversion"}
    err = capsys.readouterr().err
    assert "unwrap (laplacian, echo differences)" in err and "rescaled" in err.lower()
    chi = nib.load(out / "phase_Chimap.nii.gz")
    assert chi.shape == SHAPE and np.isfinite(chi.get_fdata()).all()


def test_refuses_to_overwrite_and_leaves_nothing_partial(gre_files, tmp_path):
    mag, phase, _ = gre_files
    out = tmp_path / "out"
    args = ("--mag", mag, "--phase", phase, "--echo-times", *ECHO_TIMES, "--b0-tesla", 3, "-o", out, "--quiet")
    assert _run(*args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _run(*args) == 2
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert _run(*args, "--overwrite") == 0


def _expect_error(capsys, code, *fragments):
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], err[0]


@pytest.mark.parametrize("case", ["shape", "affine", "echo_count", "no_echo_times", "zero_phase", "unreadable",
                                  "te_count", "empty_mask"])
def test_bad_input_one_line_nothing_written(case, gre_files, tmp_path, capsys):
    mag, phase, mask = gre_files
    te = [str(t) for t in ECHO_TIMES]
    data = nib.load(phase).get_fdata()
    if case == "shape":
        phase = _save(tmp_path / "bad.nii.gz", data[:-1])
    elif case == "affine":
        affine = np.eye(4)
        affine[0, 3] = 5.0
        phase = _save(tmp_path / "bad.nii.gz", data, affine)
    elif case == "echo_count":
        phase = _save(tmp_path / "bad.nii.gz", data[..., :2])
    elif case == "no_echo_times":
        te = []
    elif case == "zero_phase":
        phase = _save(tmp_path / "bad.nii.gz", np.zeros_like(data))
    elif case == "unreadable":
        phase = tmp_path / "bad.nii.gz"
        phase.write_bytes(b"not a nifti file")
    elif case == "te_count":
        te = te[:2]
    elif case == "empty_mask":
        mask = _save(tmp_path / "empty.nii.gz", np.zeros(SHAPE))
    out = tmp_path / "out"
    args = ["--mag", mag, "--phase", phase, "-o", out, "--b0-tesla", 3, "--mask", mask, "--quiet"]
    if te:
        args += ["--echo-times", *te]
    code = _run(*args)
    expected = {"shape": ("bad.nii.gz",), "affine": ("bad.nii.gz",), "echo_count": ("bad.nii.gz",),
                "no_echo_times": ("echo times",), "zero_phase": ("bad.nii.gz",), "unreadable": ("bad.nii.gz",),
                "te_count": ("echo",), "empty_mask": ("empty",)}[case]
    _expect_error(capsys, code, *expected)
    assert not out.exists() or not any(out.iterdir())


def test_unknown_step_method_is_a_one_line_error(gre_files, tmp_path, capsys):
    mag, phase, _ = gre_files
    code = _run("--mag", mag, "--phase", phase, "--echo-times", *ECHO_TIMES, "--b0-tesla", 3, "-o", tmp_path / "o",
                "--background", "magic")
    _expect_error(capsys, code, "magic")
    code = _run("--mag", mag, "--phase", phase, "--echo-times", *ECHO_TIMES, "--b0-tesla", 3, "-o", tmp_path / "o",
                "--inversion-param", "nonsense=1")
    _expect_error(capsys, code, "nonsense")


def test_list_recipes(capsys):
    assert _run("--list-recipes") == 0
    out = capsys.readouterr().out
    assert "fast" in out and "accurate" in out


def _write_bids_subject(root: Path, subject: str, *, broken: bool = False) -> None:
    mag, phase, _ = _gre()
    anat = root / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True)
    for e, te in enumerate(ECHO_TIMES, start=1):
        for part, data in (("mag", mag[e - 1]), ("phase", phase[e - 1])):
            stem = anat / f"sub-{subject}_echo-{e}_part-{part}_MEGRE"
            if broken and part == "phase":
                data = np.zeros_like(data)
            _save(stem.with_name(stem.name + ".nii.gz"), data)
            stem.with_name(stem.name + ".json").write_text(json.dumps({"EchoTime": te, "MagneticFieldStrength": 3}))


def test_bids_form_one_failure_does_not_stop_the_others_and_rerun_skips(tmp_path, capsys):
    bids = tmp_path / "bids"
    _write_bids_subject(bids, "01")
    _write_bids_subject(bids, "02", broken=True)
    _write_bids_subject(bids, "03")
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    out = tmp_path / "derivatives"
    assert _run(bids, out, "--workers", 2, "--quiet") == 1
    err = capsys.readouterr().err
    assert "2 finished, 0 skipped, 1 failed" in err and "sub-02" in err
    for subject in ("01", "03"):
        assert (out / f"sub-{subject}" / "anat" / f"sub-{subject}_Chimap.nii.gz").is_file()
    assert not (out / "sub-02").exists() or not any((out / "sub-02").rglob("*.nii.gz"))
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert _run(bids, out, "--participant-label", "01", "03", "--quiet") == 0
    assert "0 finished, 2 skipped, 0 failed" in capsys.readouterr().err


def test_reference_region_sets_its_mean_to_zero(gre_files, tmp_path):
    mag, phase, mask = gre_files
    region = np.zeros(SHAPE, dtype=np.float32)
    region[12:20, 12:20, 12:20] = 1
    region_file = _save(tmp_path / "csf.nii.gz", region)
    out = tmp_path / "out"
    assert _run("--mag", mag, "--phase", phase, "--echo-times", *ECHO_TIMES, "--b0-tesla", 3, "-o", out,
                "--reference-mask", region_file, "--quiet", "--no-qc") == 0
    chi = nib.load(out / "phase_Chimap.nii.gz").get_fdata()
    eroded = nib.load(out / "phase_desc-eroded_mask.nii.gz").get_fdata() > 0
    inside = (region > 0) & eroded
    assert abs(chi[inside].mean()) < 1e-6
    assert abs(chi[eroded].mean()) > 1e-4  # the mask mean is no longer the zero
    record = json.loads((out / "phase_Chimap.json").read_text())
    assert record["Parameters"]["reference"] == "region" and "reference_mask" in record["Inputs"]


def test_report_writes_one_offline_page_per_subject(gre_files, tmp_path, capsys):
    from html.parser import HTMLParser

    mag, phase, _ = gre_files
    out = tmp_path / "out"
    assert _run("--mag", mag, "--phase", phase, "--echo-times", *ECHO_TIMES, "--b0-tesla", 3, "-o", out,
                "--report", "--no-qc") == 0
    page = out / "phase_Chimap_report.html"
    assert f"report {page}" in capsys.readouterr().err
    text = page.read_text(encoding="utf-8")
    sources: list[str] = []

    class Images(HTMLParser):
        def handle_starttag(self, tag, attrs):
            sources.extend(value for name, value in attrs if name in ("src", "href"))

    Images().feed(text)
    # total field, local field, χ, brain mask, eroded mask: every map embedded, nothing fetched.
    assert len(sources) == 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    method = json.loads((out / "phase_Chimap.json").read_text())["Method"]
    assert "http" not in text and "dipole inversion" in text and f"<code>{method}</code>" in text
