"""ROI means, differences and the linear regression of estimated on reference means."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from torchqsm.metrics import RoiRow, RoiStatistics, roi_statistics


@pytest.fixture
def phantom():
    """A 4×4×4 reference with three labelled blocks of known means and a background."""
    labels = torch.zeros(4, 4, 4, dtype=torch.int64)
    labels[:2, :2, :2] = 1  # 8 voxels
    labels[2:, :2, :] = 3  # 16 voxels
    labels[:, 2:, :1] = 7  # 8 voxels
    reference = torch.full((4, 4, 4), 5.0, dtype=torch.float64)  # background, never read
    reference[labels == 1] = torch.linspace(0.0, 0.2, 8, dtype=torch.float64)  # mean 0.1
    reference[labels == 3] = -0.05
    reference[labels == 7] = torch.tensor([0.2, 0.4] * 4, dtype=torch.float64)  # mean 0.3
    return reference, labels


def test_rows_by_hand(phantom):
    reference, labels = phantom
    estimate = reference + 0.01
    result = roi_statistics(estimate, reference, labels)
    assert [row.label for row in result.rows] == [1, 3, 7]
    assert [row.voxel_count for row in result.rows] == [8, 16, 8]
    for row, mean in zip(result.rows, [0.1, -0.05, 0.3]):
        assert row.mean_reference == pytest.approx(mean, abs=1e-15)
        assert row.mean_estimate == pytest.approx(mean + 0.01, abs=1e-15)
        assert row.difference == pytest.approx(0.01, abs=1e-15)
    assert result.slope == pytest.approx(1.0, rel=1e-12)
    assert result.intercept == pytest.approx(0.01, rel=1e-10)
    assert result.r_squared == pytest.approx(1.0, rel=1e-12)


def test_slope_one_for_identical_and_half_for_half(phantom):
    reference, labels = phantom
    identical = roi_statistics(reference, reference, labels)
    assert identical.slope == pytest.approx(1.0, rel=1e-12)
    assert identical.intercept == pytest.approx(0.0, abs=1e-15)
    assert identical.r_squared == pytest.approx(1.0, rel=1e-12)
    assert all(row.difference == 0.0 for row in identical.rows)
    half = roi_statistics(0.5 * reference, reference, labels)
    assert half.slope == pytest.approx(0.5, rel=1e-12)
    assert half.intercept == pytest.approx(0.0, abs=1e-15)


def test_regression_against_numpy_polyfit(rng):
    labels = rng.integers(0, 6, size=(6, 6, 6))
    reference = rng.normal(size=labels.shape)
    estimate = 0.6 * reference + 0.2 * rng.normal(size=labels.shape)
    result = roi_statistics(estimate, reference, labels)
    present = [value for value in range(1, 6) if (labels == value).any()]
    reference_means = np.array([reference[labels == value].mean() for value in present])
    estimate_means = np.array([estimate[labels == value].mean() for value in present])
    slope, intercept = np.polyfit(reference_means, estimate_means, 1)
    r_squared = np.corrcoef(reference_means, estimate_means)[0, 1] ** 2
    assert [row.label for row in result.rows] == present
    np.testing.assert_allclose([row.mean_estimate for row in result.rows], estimate_means, rtol=1e-12)
    assert result.slope == pytest.approx(slope, rel=1e-10)
    assert result.intercept == pytest.approx(intercept, rel=1e-10, abs=1e-14)
    assert result.r_squared == pytest.approx(r_squared, rel=1e-10)


def test_single_label_has_no_regression(phantom):
    reference, labels = phantom
    result = roi_statistics(reference, reference, (labels == 3).to(torch.uint8))
    assert len(result.rows) == 1 and result.rows[0].label == 1
    assert (result.slope, result.intercept, result.r_squared) == (None, None, None)


def test_float_labels_and_numpy_inputs(phantom):
    reference, labels = phantom
    from_numpy = roi_statistics(reference.numpy(), reference.numpy(), labels.numpy().astype(np.float32))
    assert from_numpy == roi_statistics(reference, reference, labels)


def test_result_is_frozen_and_json_ready(phantom):
    reference, labels = phantom
    result = roi_statistics(0.5 * reference, reference, labels)
    assert isinstance(result, RoiStatistics) and isinstance(result.rows[0], RoiRow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.slope = 2.0  # type: ignore[misc]
    as_dict = json.loads(json.dumps(result.as_dict()))
    assert set(as_dict) == {"rows", "slope", "intercept", "r_squared"}
    assert as_dict["rows"][0] == {
        "label": 1,
        "voxel_count": 8,
        "mean_estimate": pytest.approx(0.05),
        "mean_reference": pytest.approx(0.1),
        "difference": pytest.approx(-0.05),
    }


def test_errors(phantom):
    reference, labels = phantom
    with pytest.raises(ValueError, match="shape"):
        roi_statistics(reference[:3], reference, labels)
    with pytest.raises(ValueError, match="labels have shape"):
        roi_statistics(reference, reference, labels[:3])
    with pytest.raises(ValueError, match="no region"):
        roi_statistics(reference, reference, torch.zeros_like(labels))
    with pytest.raises(ValueError, match="non-negative"):
        roi_statistics(reference, reference, -labels)
    with pytest.raises(ValueError, match="whole numbers"):
        roi_statistics(reference, reference, labels + 0.5)
    broken = reference.clone()
    broken[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        roi_statistics(broken, reference, labels)
