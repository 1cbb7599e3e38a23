"""NRMSE, dNRMSE, PSNR and Pearson against values worked out by hand or with numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchqsm.metrics import dnrmse, nrmse, pearson, psnr

# x = [1, 2, 3], y = [1, 2, 4] — the worked example of every closed form below.
ESTIMATE = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
REFERENCE = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)


def test_nrmse_by_hand():
    # ‖x − y‖ = 1, ‖y‖ = √21
    assert nrmse(ESTIMATE, REFERENCE) == pytest.approx(100 / math.sqrt(21), rel=1e-14)


def test_nrmse_demeaned_by_hand():
    # x − x̄ = [-1, 0, 1], y − ȳ = [-4, -1, 5]/3: ratio √(2/3) / (√42/3) = 1/√7
    assert nrmse(ESTIMATE, REFERENCE, demean=True) == pytest.approx(100 / math.sqrt(7), rel=1e-14)


def test_dnrmse_by_hand():
    # a = Σ x̃ỹ / Σ ỹ² = 3 / (42/9) = 9/14; x' − ȳ = x̃ · 14/9; error √14/9 over √42/3 = 1/(3√3)
    assert dnrmse(ESTIMATE, REFERENCE) == pytest.approx(100 / (3 * math.sqrt(3)), rel=1e-13)
    # c = Σ x̃ỹ / Σ x̃² = 3/2; residual [-1, 2, -1]/6, norm √6/6 over √42/3 = 1/(2√7)
    assert dnrmse(ESTIMATE, REFERENCE, fit="reference_on_estimate") == pytest.approx(
        100 / (2 * math.sqrt(7)), rel=1e-13
    )


def test_dnrmse_against_numpy_polyfit(rng):
    reference = rng.normal(size=(6, 5, 4))
    estimate = 0.7 * reference + 0.3 * rng.normal(size=reference.shape) + 0.05
    mask = rng.random(reference.shape) > 0.3
    x, y = estimate[mask], reference[mask]
    slope, intercept = np.polyfit(y, x, 1)
    corrected = (x - intercept) / slope
    expected = 100 * np.linalg.norm(corrected - y) / np.linalg.norm(y - y.mean())
    assert dnrmse(estimate, reference, mask) == pytest.approx(expected, rel=1e-10)
    slope, intercept = np.polyfit(x, y, 1)
    predicted = slope * x + intercept
    expected = 100 * np.linalg.norm(predicted - y) / np.linalg.norm(y - y.mean())
    assert dnrmse(estimate, reference, mask, fit="reference_on_estimate") == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("fit", ["estimate_on_reference", "reference_on_estimate"])
def test_dnrmse_invariant_to_affine_trend(rng, fit):
    reference = torch.from_numpy(rng.normal(size=(5, 5, 5)))
    estimate = reference + 0.2 * torch.from_numpy(rng.normal(size=(5, 5, 5)))
    base = dnrmse(estimate, reference, fit=fit)
    assert base > 1.0
    assert dnrmse(2 * estimate + 0.1, reference, fit=fit) == pytest.approx(base, rel=1e-12)
    assert dnrmse(2 * reference + 0.1, reference, fit=fit) == pytest.approx(0.0, abs=1e-12)


def test_psnr_by_hand():
    # L = 4 − 1 = 3, MSE = 1/3 → 10 log10(27)
    assert psnr(ESTIMATE, REFERENCE) == pytest.approx(10 * math.log10(27), rel=1e-14)


def test_pearson_against_numpy(rng):
    estimate, reference = rng.normal(size=(2, 4, 4, 4))
    assert pearson(estimate, reference) == pytest.approx(np.corrcoef(estimate.ravel(), reference.ravel())[0, 1])
    assert pearson(-reference, reference) == -1.0


def test_identical_images():
    reference = torch.linspace(-0.1, 0.2, 27, dtype=torch.float64).reshape(3, 3, 3)
    assert nrmse(reference, reference) == 0.0
    assert nrmse(reference, reference, demean=True) == 0.0
    assert dnrmse(reference, reference) == pytest.approx(0.0, abs=1e-12)
    assert psnr(reference, reference) == math.inf
    assert pearson(reference, reference) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize(
    "metric",
    [nrmse, lambda x, y, m: nrmse(x, y, m, demean=True), dnrmse, psnr, pearson],
    ids=["nrmse", "nrmse_demeaned", "dnrmse", "psnr", "pearson"],
)
def test_mask_restricts(rng, metric):
    reference = rng.normal(size=(4, 4, 4))
    estimate = reference + 0.3 * rng.normal(size=reference.shape)
    mask = np.zeros(reference.shape, dtype=bool)
    mask[1:3, :, 1:] = True
    changed = estimate.copy()
    changed[~mask] = rng.normal(size=int((~mask).sum())) * 100
    changed_reference = reference.copy()
    changed_reference[~mask] = np.nan  # never read
    value = metric(estimate, reference, mask)
    assert metric(changed, changed_reference, mask) == value
    # the mask result is the metric of the selected voxels alone
    assert metric(estimate[mask], reference[mask], None) == pytest.approx(value, rel=1e-12)


def test_mask_of_zeros_and_ones_equals_boolean_mask(rng):
    reference, estimate = rng.normal(size=(2, 3, 4, 5))
    mask = rng.random((3, 4, 5)) > 0.5
    assert nrmse(estimate, reference, mask.astype(np.float32)) == nrmse(estimate, reference, mask)
    assert nrmse(estimate, reference, torch.from_numpy(mask).to(torch.uint8)) == nrmse(estimate, reference, mask)


def test_numpy_and_torch_inputs_agree(rng):
    reference, estimate = rng.normal(size=(2, 4, 4, 4))
    big_endian = reference.astype(">f8")
    read_only = estimate.copy()
    read_only.flags.writeable = False
    expected = nrmse(torch.from_numpy(estimate), torch.from_numpy(reference))
    assert nrmse(read_only, big_endian) == pytest.approx(expected, rel=1e-15)
    # float32 inputs are promoted to float64 before any arithmetic
    assert isinstance(nrmse(estimate.astype(np.float32), reference.astype(np.float32)), float)


@pytest.mark.parametrize("metric", [nrmse, dnrmse, psnr, pearson])
def test_errors(metric):
    volume = torch.rand(3, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="shape"):
        metric(volume, torch.rand(3, 3, 4))
    with pytest.raises(ValueError, match="empty"):
        metric(volume, volume, torch.zeros(3, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask shape"):
        metric(volume, volume, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="0 and 1"):
        metric(volume, volume, 2 * torch.ones(3, 3, 3))
    nan_volume = volume.clone()
    nan_volume[0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        metric(nan_volume, volume)


def test_degenerate_references():
    estimate = torch.rand(3, 3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="zero everywhere"):
        nrmse(estimate, torch.zeros(3, 3, 3))
    constant = torch.full((3, 3, 3), 0.1)
    with pytest.raises(ValueError, match="zero everywhere"):
        nrmse(estimate, constant, demean=True)
    with pytest.raises(ValueError, match="constant"):
        dnrmse(estimate, constant)
    with pytest.raises(ValueError, match="constant"):
        dnrmse(constant, estimate, fit="reference_on_estimate")
    with pytest.raises(ValueError, match="constant"):
        psnr(estimate, constant)
    with pytest.raises(ValueError, match="constant"):
        pearson(estimate, constant)
    with pytest.raises(ValueError, match="fit must be"):
        dnrmse(estimate, estimate, fit="both")  # type: ignore[arg-type]
    # an estimate orthogonal to the (demeaned) reference has no trend to invert
    with pytest.raises(ValueError, match="uncorrelated"):
        dnrmse(torch.tensor([1.0, -2.0, 1.0]), torch.tensor([-1.0, 0.0, 1.0]))
