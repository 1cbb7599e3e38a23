"""Scoring dipole inversions on the evaluation suite: case loading, the field-noise model, evaluate, tables."""

from __future__ import annotations

import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from torchqsm.bench import build_suite
from torchqsm.bench.evaluate import EvaluationRow, evaluate, load_case, markdown_table, measured_field_noise_ppm
from torchqsm.errors import InputError, ParameterError
from torchqsm.physics.units import radians_per_ppm

CASES = ("baseline", "snr-30", "snr-300")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Three cases of the small suite (2 mm), built once for the module."""
    root = tmp_path_factory.mktemp("suite")
    build_suite(root, small=True, cases=CASES)
    return root


@pytest.fixture(scope="module")
def loaded(suite):
    return {name: load_case(suite / name) for name in CASES}


def test_load_case_shapes_units_and_geometry(loaded):
    case = loaded["baseline"]
    shape = case.chi_ppm.shape
    assert case.name == "baseline" and len(shape) == 3
    for volume in (case.local_field_ppm, case.true_local_field_ppm, case.mask, case.labels):
        assert volume.shape == shape
    assert case.mask.dtype == torch.bool and case.labels.dtype == torch.int64 and case.chi_ppm.dtype == torch.float32
    assert case.voxel_size_mm == (2.0, 2.0, 2.0) and case.b0_tesla == 3.0
    assert case.b0_dir == pytest.approx((0.0, 0.0, 1.0), abs=1e-6)
    outside = ~case.mask
    assert not case.local_field_ppm[outside].any() and not case.chi_ppm[outside].any()
    # ppm: brain χ spans tenths of a ppm, its local field hundredths.
    assert 0.05 < float(case.chi_ppm.abs().max()) < 2.0
    assert 0.002 < float(case.true_local_field_ppm[case.mask].square().mean().sqrt()) < 0.1


def test_noise_grows_as_snr_falls_and_stays_below_the_field(loaded):
    noise = {name: case.noise_rms_ppm for name, case in loaded.items()}
    field_rms = float(loaded["baseline"].true_local_field_ppm[loaded["baseline"].mask].square().mean().sqrt())
    # Measured (small suite): snr-30 4.96e-3, baseline (SNR 100) 1.47e-3, snr-300 4.96e-4 ppm; field rms 1.02e-2 ppm.
    assert noise["snr-30"] > noise["baseline"] > noise["snr-300"] > 0
    assert 7.0 < noise["snr-30"] / noise["snr-300"] < 13.0  # field noise ∝ 1 / SNR
    assert noise["baseline"] < 0.25 * field_rms and noise["snr-30"] < field_rms
    # With the int16 phase read unscaled (no scl_slope), the residuals would be radians-sized, not ppb.
    assert noise["snr-300"] < 1e-3
    difference = loaded["snr-30"].local_field_ppm - loaded["snr-30"].true_local_field_ppm
    assert float(difference.square().sum().sqrt()) == pytest.approx(
        noise["snr-30"] * math.sqrt(int(loaded["snr-30"].mask.sum())), rel=1e-4)


def test_measured_noise_matches_the_added_noise():
    """Three equally spaced echoes, unit magnitude, phase noise σ: δ ≈ (n₃ − n₁) / (2a), std σ / (√2 a)."""
    generator = torch.Generator().manual_seed(0)
    shape, times, b0, sigma = (32, 32, 32), (0.005, 0.015, 0.025), 3.0, 0.02
    x = torch.linspace(-1, 1, shape[0]).view(-1, 1, 1).expand(shape)
    field = 0.6 * x  # up to 12 rad at the last echo: the residual must not depend on unwrapping
    offset = 2.0 * x.flip(0)  # receive-phase offset, cancelled by the echo differences
    signal = torch.stack([torch.polar(torch.ones(shape), field * radians_per_ppm(echo_time_s=t, b0_tesla=b0) + offset)
                          for t in times])
    noisy = signal + sigma * torch.complex(torch.randn(signal.shape, generator=generator),
                                           torch.randn(signal.shape, generator=generator))
    noise = measured_field_noise_ppm(noisy.abs(), noisy.angle(), field, echo_times_s=times, b0_tesla=b0)
    a = radians_per_ppm(echo_time_s=0.01, b0_tesla=b0)
    expected = sigma / (math.sqrt(2.0) * a)
    assert float(noise.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(noise.mean())) < 0.02 * expected
    # Voxel by voxel ≈ (phase error of echo 3 − of echo 1) / (2a): equal weights up to the noisy magnitudes.
    errors = (noisy * signal.conj()).angle()
    direct = (errors[2] - errors[0]) / (2 * a)
    assert float((noise - direct).square().mean().sqrt()) < 0.1 * expected


def test_measured_noise_weights_dark_echoes_less():
    times, field = (0.005, 0.015, 0.025), torch.zeros(2, 2, 2)
    magnitude = torch.ones(3, 2, 2, 2)
    magnitude[2] = 1e-6  # the last echo is gone: only the first difference counts
    phase = torch.zeros(3, 2, 2, 2)
    phase[1], phase[2] = 0.1, 3.0
    noise = measured_field_noise_ppm(magnitude, phase, field, echo_times_s=times, b0_tesla=3.0)
    assert torch.allclose(noise, torch.full_like(noise, 0.1 / radians_per_ppm(echo_time_s=0.01, b0_tesla=3.0)),
                          rtol=1e-4)


def test_measured_noise_rejects_bad_shapes():
    with pytest.raises(InputError, match="E ≥ 2"):
        measured_field_noise_ppm(torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2), torch.ones(2, 2, 2),
                                 echo_times_s=[0.01], b0_tesla=3.0)
    with pytest.raises(InputError, match="echo times"):
        measured_field_noise_ppm(torch.ones(2, 2, 2, 2), torch.ones(2, 2, 2, 2), torch.ones(2, 2, 2),
                                 echo_times_s=[0.01], b0_tesla=3.0)


def test_evaluate_tkd_gives_finite_scores(suite):
    methods = ["tkd", ("tkd (threshold 0.25)", "tkd", {"threshold": 0.25})]
    rows = evaluate(suite, methods, cases=["baseline", "snr-30"], progress=False)
    assert [(r.case, r.method) for r in rows] == [("baseline", "tkd"), ("baseline", "tkd (threshold 0.25)"),
                                                  ("snr-30", "tkd"), ("snr-30", "tkd (threshold 0.25)")]
    for row in rows:
        assert all(math.isfinite(v) for v in (row.nrmse, row.hfen, row.ssim, row.seconds))
        assert 0 < row.nrmse < 100 and 0 < row.hfen < 100 and 0 < row.ssim <= 1 and row.seconds >= 0
    by = {(r.case, r.method): r for r in rows}
    assert by["snr-30", "tkd"].nrmse > by["baseline", "tkd"].nrmse  # more noise, larger error


def test_evaluate_rejects_unknown_methods_and_cases(suite, tmp_path):
    with pytest.raises(ParameterError, match="unknown method"):
        evaluate(suite, ["no-such-method"], progress=False)
    with pytest.raises(InputError, match="does not exist"):
        evaluate(suite, ["tkd"], cases=["tilt-60deg"], progress=False)
    with pytest.raises(InputError, match="suite.json"):
        evaluate(tmp_path, ["tkd"], progress=False)


def test_markdown_table_lists_every_method_and_case():
    rows = [EvaluationRow(case, method, 10.0 + i + j, 20.0 + i, 0.9 - 0.01 * i, 0.1 * j)
            for i, case in enumerate(["baseline", "snr-30", "b0-7T"]) for j, method in enumerate(["tkd", "tv", "x"])]
    for metric in ("nrmse", "hfen", "ssim", "seconds"):
        table = markdown_table(rows, metric)
        lines = table.splitlines()
        assert lines[0].split(" | ")[1:] == ["baseline", "snr-30", "b0-7T", "mean |"]
        assert [line.split(" | ")[0] for line in lines[2:]] == ["| tkd", "| tv", "| x"]
    assert "| tkd | **10.0** | **11.0** | **12.0** | **11.0** |" in markdown_table(rows, "nrmse")
    assert "—" in markdown_table(rows[:-1], "nrmse")  # x on b0-7T missing: no cell and no mean
    with pytest.raises(ValueError, match="metric"):
        markdown_table(rows, "psnr")  # type: ignore[arg-type]


def test_missing_case_or_file_names_it(suite, tmp_path):
    with pytest.raises(InputError, match="no-such-case"):
        load_case(suite / "no-such-case")
    copy = tmp_path / "baseline"
    shutil.copytree(suite / "baseline", copy)
    (copy / "derivatives" / "groundtruth" / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").unlink()
    with pytest.raises(InputError, match="sub-01_Chimap.nii.gz"):
        load_case(copy)
    for path in (copy / "sub-01" / "anat").glob("*part-mag*.nii.gz"):
        path.unlink()
    with pytest.raises(InputError, match="no mag echoes"):
        load_case(copy)


def test_unscaled_phase_is_rejected(suite, tmp_path):
    copy = tmp_path / "baseline"
    shutil.copytree(suite / "baseline", copy)
    path = copy / "sub-01" / "anat" / "sub-01_echo-1_part-phase_MEGRE.nii.gz"
    image = nib.load(path)
    counts = np.asarray(image.dataobj.get_unscaled())
    nib.save(nib.Nifti1Image(counts, image.affine), path)  # the int16 counts without their scl_slope
    with pytest.raises(InputError, match="not radians"):
        load_case(copy)
