"""``score`` gathers every metric under stable keys; every key is described."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.metrics import METRIC_DESCRIPTIONS, dnrmse, hfen, nrmse, pearson, psnr, score, ssim, xsim

KEYS = ["nrmse", "nrmse_demeaned", "dnrmse", "hfen", "ssim", "xsim", "psnr", "pearson"]


def test_keys_and_values(rng):
    reference = torch.from_numpy(0.1 * rng.normal(size=(10, 9, 8)))
    estimate = 0.8 * reference + torch.from_numpy(0.02 * rng.normal(size=(10, 9, 8)))
    mask = reference > -0.1
    result = score(estimate, reference, mask)
    assert list(result) == KEYS
    assert all(isinstance(value, float) for value in result.values())
    assert result["nrmse"] == nrmse(estimate, reference, mask)
    assert result["nrmse_demeaned"] == nrmse(estimate, reference, mask, demean=True)
    assert result["dnrmse"] == dnrmse(estimate, reference, mask)
    assert result["hfen"] == hfen(estimate, reference, mask)
    assert result["ssim"] == ssim(estimate, reference, mask)
    assert result["xsim"] == xsim(estimate, reference, mask)
    assert result["psnr"] == psnr(estimate, reference, mask)
    assert result["pearson"] == pearson(estimate, reference, mask)


def test_identical_images(rng):
    reference = torch.from_numpy(0.1 * rng.normal(size=(8, 8, 8)))
    labels = (reference > 0).to(torch.int64) + 1
    result = score(reference, reference, labels=labels)
    assert list(result) == [*KEYS, "roi"]
    assert result["nrmse"] == result["nrmse_demeaned"] == result["hfen"] == 0.0
    assert result["dnrmse"] == pytest.approx(0.0, abs=1e-12)
    assert result["ssim"] == pytest.approx(1.0) and result["xsim"] == pytest.approx(1.0)
    assert result["pearson"] == pytest.approx(1.0)
    assert result["psnr"] == math.inf
    assert result["roi"]["slope"] == pytest.approx(1.0)


def test_every_key_is_described():
    assert set(METRIC_DESCRIPTIONS) == {*KEYS, "roi"}
    assert all(isinstance(text, str) and text and "\n" not in text for text in METRIC_DESCRIPTIONS.values())
