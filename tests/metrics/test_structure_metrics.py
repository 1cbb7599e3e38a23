"""HFEN (LoG kernel, zero-padded filtering), SSIM and XSIM against independent numpy/scipy code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from torchqsm.metrics import hfen, laplacian_of_gaussian_kernel, ssim, xsim

SIGMA = 1.5


def test_log_kernel_sums_to_zero_and_is_symmetric():
    kernel = laplacian_of_gaussian_kernel()
    assert kernel.shape == (15, 15, 15) and kernel.dtype == torch.float64
    assert float(kernel.sum()) == pytest.approx(0.0, abs=1e-15)
    for dims in [(0,), (1,), (2,)]:
        torch.testing.assert_close(kernel.flip(dims), kernel, rtol=0, atol=0)
    torch.testing.assert_close(kernel.permute(2, 0, 1), kernel, rtol=0, atol=0)


def test_log_kernel_matches_closed_form():
    # The Gaussian sum factorizes over axes: S = s³, Σ g r² = 3 s² q / S with s = Σ e_t, q = Σ t² e_t.
    t = np.arange(-7, 8, dtype=np.float64)
    e = np.exp(-(t**2) / (2 * SIGMA**2))
    s, q = e.sum(), (t**2 * e).sum()
    total = s**3
    sum_unshifted = (3 * s**2 * q / total - 3 * SIGMA**2) / SIGMA**4  # Σ g (r² − 3σ²)/σ⁴ with Σ g = 1
    shift = sum_unshifted / 15**3

    def closed_form(i, j, k):
        r2 = i * i + j * j + k * k
        return math.exp(-r2 / (2 * SIGMA**2)) / total * (r2 - 3 * SIGMA**2) / SIGMA**4 - shift

    kernel = laplacian_of_gaussian_kernel(size=15, sigma=SIGMA)
    for i, j, k in [(0, 0, 0), (1, 0, 0), (2, -1, 3), (7, 7, 7)]:
        assert float(kernel[7 + i, 7 + j, 7 + k]) == pytest.approx(closed_form(i, j, k), rel=1e-12, abs=1e-18)
    # the centre is the most negative value: -3/(Sσ²) before the shift
    assert float(kernel[7, 7, 7]) == pytest.approx(-3 / (total * SIGMA**2) - shift, rel=1e-12)


def test_log_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        laplacian_of_gaussian_kernel(size=14)
    with pytest.raises(ValueError, match="sigma"):
        laplacian_of_gaussian_kernel(sigma=0.0)


def _reference_hfen(estimate, reference, mask, kernel):
    """Straightforward HFEN: mask, scipy correlate with zeros outside, norm in the mask."""
    filtered_x = scipy.ndimage.correlate(estimate * mask, kernel, mode="constant", cval=0.0)
    filtered_y = scipy.ndimage.correlate(reference * mask, kernel, mode="constant", cval=0.0)
    return 100 * np.linalg.norm((filtered_x - filtered_y)[mask]) / np.linalg.norm(filtered_y[mask])


def test_hfen_against_scipy_correlate(rng):
    reference = rng.normal(size=(18, 16, 14))
    estimate = reference + 0.3 * rng.normal(size=reference.shape)
    mask = np.zeros(reference.shape, dtype=bool)
    mask[3:15, 2:14, 2:12] = True
    kernel = laplacian_of_gaussian_kernel().numpy()
    expected = _reference_hfen(estimate, reference, mask, kernel)
    assert hfen(estimate, reference, mask) == pytest.approx(expected, rel=1e-10)
    assert hfen(estimate, reference) == pytest.approx(
        _reference_hfen(estimate, reference, np.ones_like(mask), kernel), rel=1e-10
    )


def test_hfen_filtering_equals_direct_conv3d(rng):
    # The FFT path reproduces a direct 15³ zero-padded conv3d to float64 rounding.
    from torchqsm.metrics.structure import _correlate_zero_padded

    volume = torch.from_numpy(rng.normal(size=(11, 20, 9)))
    kernel = laplacian_of_gaussian_kernel()
    direct = F.conv3d(volume[None, None], kernel[None, None], padding=7)[0, 0]
    torch.testing.assert_close(_correlate_zero_padded(volume, kernel), direct, rtol=0, atol=1e-13)
    # and an asymmetric kernel checks correlation (not convolution) orientation
    asymmetric = torch.from_numpy(rng.normal(size=(3, 5, 3)))
    expected = scipy.ndimage.correlate(volume.numpy(), asymmetric.numpy(), mode="constant")
    np.testing.assert_allclose(_correlate_zero_padded(volume, asymmetric).numpy(), expected, atol=1e-12)


def test_hfen_simple_cases(rng):
    reference = torch.from_numpy(rng.normal(size=(10, 10, 10)))
    assert hfen(reference, reference) == 0.0
    assert hfen(-reference, reference) == pytest.approx(200.0, rel=1e-12)
    # filtering is linear: LoG(3y) − LoG(y) = 2 LoG(y)
    assert hfen(3 * reference, reference) == pytest.approx(200.0, rel=1e-12)


def _gaussian_truncate(sigma: float) -> float:
    """``truncate`` giving scipy the radius ceil(3σ), i.e. a 2·ceil(3σ)+1 = 11-wide window."""
    return math.ceil(3 * sigma) / sigma


def _reference_ssim(estimate, reference, mask, k1, k2, data_range, sigma=SIGMA):
    """Textbook SSIM with scipy Gaussian filtering ('nearest' = MATLAB 'replicate')."""
    x, y = estimate * mask, reference * mask
    truncate = _gaussian_truncate(sigma)

    def smooth(volume):
        return scipy.ndimage.gaussian_filter(volume, sigma, mode="nearest", truncate=truncate)

    mu_x, mu_y = smooth(x), smooth(y)
    var_x = smooth(x * x) - mu_x**2
    var_y = smooth(y * y) - mu_y**2
    cov = smooth(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map[mask].mean()


def test_scipy_window_is_eleven_wide():
    impulse = np.zeros(31)
    impulse[15] = 1
    response = scipy.ndimage.gaussian_filter1d(impulse, SIGMA, truncate=_gaussian_truncate(SIGMA))
    assert np.count_nonzero(response) == 11


def test_ssim_against_scipy(rng):
    reference = rng.normal(size=(12, 12, 12))
    estimate = reference + 0.5 * rng.normal(size=reference.shape)
    mask = rng.random(reference.shape) > 0.2
    data_range = reference[mask].max() - reference[mask].min()
    expected = _reference_ssim(estimate, reference, mask, 0.01, 0.03, data_range)
    assert ssim(estimate, reference, mask) == pytest.approx(expected, rel=1e-10)
    full = np.ones_like(mask)
    expected = _reference_ssim(estimate, reference, full, 0.01, 0.03, reference.max() - reference.min())
    assert ssim(estimate, reference) == pytest.approx(expected, rel=1e-10)
    expected = _reference_ssim(estimate, reference, full, 0.02, 0.05, 3.0, sigma=1.0)
    assert ssim(estimate, reference, k1=0.02, k2=0.05, data_range=3.0, sigma=1.0) == pytest.approx(expected, rel=1e-10)


def test_xsim_against_scipy(rng):
    reference = 0.05 * rng.normal(size=(12, 12, 12))
    estimate = 0.8 * reference + 0.01 * rng.normal(size=reference.shape)
    mask = rng.random(reference.shape) > 0.2
    expected = _reference_ssim(estimate, reference, mask, 0.01, 0.001, 1.0)
    assert xsim(estimate, reference, mask) == pytest.approx(expected, rel=1e-10)
    assert xsim(estimate, reference, mask) == ssim(estimate, reference, mask, k2=0.001, data_range=1.0)


def test_identical_images_give_one(rng):
    reference = torch.from_numpy(0.1 * rng.normal(size=(9, 8, 7)))
    assert ssim(reference, reference) == pytest.approx(1.0, abs=1e-14)
    assert xsim(reference, reference) == pytest.approx(1.0, abs=1e-14)
    assert ssim(reference.float(), reference.float()) == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("metric", [hfen, ssim, xsim])
def test_mask_restricts(rng, metric):
    reference = rng.normal(size=(10, 10, 10))
    estimate = reference + 0.3 * rng.normal(size=reference.shape)
    mask = np.zeros(reference.shape, dtype=bool)
    mask[2:8, 3:9, 1:7] = True
    changed_estimate, changed_reference = estimate.copy(), reference.copy()
    changed_estimate[~mask] = 50 * rng.normal(size=int((~mask).sum()))
    changed_reference[~mask] = np.nan
    assert metric(changed_estimate, changed_reference, mask) == metric(estimate, reference, mask)


@pytest.mark.parametrize("metric", [hfen, ssim, xsim])
def test_errors(metric):
    volume = torch.rand(6, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="shape"):
        metric(volume, torch.rand(6, 6, 5))
    with pytest.raises(ValueError, match="3-D"):
        metric(volume[0], volume[0])
    with pytest.raises(ValueError, match="empty"):
        metric(volume, volume, np.zeros((6, 6, 6), dtype=bool))


def test_degenerate_inputs():
    volume = torch.rand(6, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="zero everywhere"):
        hfen(volume, torch.zeros(6, 6, 6))
    with pytest.raises(ValueError, match="data_range"):
        ssim(volume, torch.ones(6, 6, 6))
    with pytest.raises(ValueError, match="data_range"):
        ssim(volume, volume, data_range=0.0)
    with pytest.raises(ValueError, match="k2"):
        ssim(volume, volume, k2=-0.1)
