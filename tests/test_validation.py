"""The one input policy (:mod:`torchqsm.validation`): NaN in the mask, masks, magnitudes, loop rules."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.validation import (
    array_and_mask,
    as_tensor,
    check_echo_times,
    check_finite,
    check_iterations,
    check_loop_parameter,
    check_magnitude,
    check_mask,
    check_tolerance,
    field_and_mask,
)

SHAPE = (6, 5, 4)


@pytest.fixture
def mask() -> torch.Tensor:
    inside = torch.zeros(SHAPE, dtype=torch.bool)
    inside[1:5, 1:4, 1:3] = True
    return inside


def test_nan_inside_the_mask_is_an_error_with_its_count(mask):
    field = torch.zeros(SHAPE)
    field[2, 2, 1] = float("nan")
    field[3, 2, 2] = float("inf")
    with pytest.raises(InputError, match="local_field_ppm has 2 NaN or infinite voxels inside the mask"):
        field_and_mask(field, mask)
    with pytest.raises(InputError, match="phase_rad has 2 NaN or infinite voxels inside the mask"):
        array_and_mask(field, mask, name="phase_rad", unit="radians")


def test_nan_outside_the_mask_is_zeroed_and_logged(mask, caplog):
    field = torch.ones(SHAPE, dtype=torch.float64)
    field[0, 0, 0] = float("nan")
    field[5, 4, 3] = -float("inf")
    with caplog.at_level(logging.INFO, logger="torchqsm"):
        clean, inside = field_and_mask(field, mask.to(torch.uint8), source="field.nii.gz")
    assert clean.dtype == torch.float64 and inside.dtype == torch.bool and torch.equal(inside, mask)
    assert bool(torch.isfinite(clean).all()) and float(clean[0, 0, 0]) == 0.0 and float(clean[1, 1, 1]) == 1.0
    assert torch.isnan(field[0, 0, 0])  # the caller's array is not changed
    records = [r for r in caplog.records if r.name == "torchqsm"]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    assert records[0].getMessage() == ("field.nii.gz: local_field_ppm: 2 NaN or infinite voxels outside the mask "
                                       "set to zero")


def test_finite_input_is_returned_without_a_log_line(mask, caplog):
    field = torch.rand(SHAPE)
    with caplog.at_level(logging.DEBUG, logger="torchqsm"):
        clean, _ = field_and_mask(field, mask)
    assert clean is field and not caplog.records


def test_without_a_mask_every_voxel_is_inside():
    phase = torch.zeros((2,) + SHAPE)
    phase[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="phase_rad has 1 NaN or infinite voxels$"):
        array_and_mask(phase, name="phase_rad", unit="radians", leading=None)
    clean, inside = array_and_mask(torch.zeros((2,) + SHAPE), name="phase_rad", unit="radians", leading=None)
    assert tuple(inside.shape) == SHAPE and bool(inside.all()) and tuple(clean.shape) == (2,) + SHAPE
    with pytest.raises(InputError, match="values has 1 NaN"):
        check_finite(torch.tensor([1.0, float("nan")]), name="values")


def test_masks(mask):
    field = torch.zeros(SHAPE)
    with pytest.raises(InputError, match=r"mask is empty \(no non-zero voxel\)"):
        field_and_mask(field, torch.zeros(SHAPE))
    with pytest.raises(InputError, match=r"mask shape \(6, 5\) does not match the field's grid \(6, 5, 4\)"):
        field_and_mask(field, mask[..., 0])
    with pytest.raises(InputError, match="mask has NaN"):
        check_mask(torch.full(SHAPE, float("nan")), SHAPE)
    # any non-zero value is inside; binary=True also refuses values other than 0 and 1
    assert int(check_mask(2 * mask.to(torch.int16), SHAPE).sum()) == int(mask.sum())
    with pytest.raises(InputError, match="hold only 0 and 1"):
        check_mask(0.5 * mask, SHAPE, binary=True)
    assert torch.equal(check_mask(mask.to(torch.float32), SHAPE, binary=True), mask)
    with pytest.raises(InputError, match="does not match the images' shape"):
        check_mask(mask, (6, 5, 3), grid="the images' shape")


def test_shapes_types_and_conversion(mask):
    with pytest.raises(InputError, match=r"local_field_ppm is 4-D \(1, 6, 5, 4\); a 3-D array is needed"):
        field_and_mask(torch.zeros((1,) + SHAPE), mask)
    with pytest.raises(InputError, match="a 4-D"):
        field_and_mask(torch.zeros(SHAPE), mask, leading=1)
    with pytest.raises(InputError, match="at least 3-D"):
        array_and_mask(torch.zeros(6, 5), name="phase_rad", unit="radians", leading=None)
    with pytest.raises(InputError, match=r"must be real \(ppm\), got a complex array"):
        field_and_mask(torch.zeros(SHAPE, dtype=torch.complex64), mask)
    with pytest.raises(InputError, match="shorter than 2 voxels"):
        field_and_mask(torch.zeros(6, 5, 1), torch.ones(6, 5, 1), min_size=2)
    with pytest.raises(InputError, match="is not an array"):
        field_and_mask("field", mask)
    integers, _ = field_and_mask(torch.ones(SHAPE, dtype=torch.int16), mask)
    assert integers.dtype == torch.float32
    booleans, _ = field_and_mask(np.ones(SHAPE, dtype=bool), mask)
    assert booleans.dtype == torch.float32
    stack, _ = field_and_mask(torch.zeros((3,) + SHAPE, dtype=torch.float64), mask, leading=1)
    assert stack.dtype == torch.float64


def test_numpy_arrays_big_endian_and_read_only():
    values = np.arange(24, dtype=">f4").reshape(2, 3, 4)
    values.flags.writeable = False
    tensor = as_tensor(values, "field")
    assert tensor.dtype == torch.float32 and torch.equal(tensor, torch.arange(24.0).reshape(2, 3, 4))
    native = np.zeros((2, 2, 2), dtype=np.float64)
    assert as_tensor(native, "field").data_ptr() == native.ctypes.data  # shared, not copied
    with pytest.raises(InputError, match="numeric array"):
        as_tensor(np.array(["a", "b"]), "field")


def test_magnitude(mask):
    mag = torch.ones(SHAPE)
    mag[0, 0, 0] = -1.0
    mag[5, 0, 0] = float("nan")
    clean = check_magnitude(mag, SHAPE, mask, dtype=torch.float64)
    assert clean.dtype == torch.float64 and float(clean[0, 0, 0]) == 0.0 and float(clean[5, 0, 0]) == 0.0
    with pytest.raises(InputError, match=r"magnitude must be finite and non-negative \(1 NaN or infinite voxels, "
                                         r"1 negative values\)"):
        check_magnitude(mag, SHAPE)
    inside = mag.clone()
    inside[2, 2, 1] = -3.0
    with pytest.raises(InputError, match=r"non-negative in the mask \(1 negative values\)"):
        check_magnitude(inside, SHAPE, mask)
    with pytest.raises(InputError, match="magnitude shape"):
        check_magnitude(torch.ones(6, 5, 3), SHAPE)
    with pytest.raises(InputError, match="complex"):
        check_magnitude(torch.ones(SHAPE, dtype=torch.complex64), SHAPE)


def test_iteration_and_tolerance_rules():
    assert check_iterations("max_iterations", 0) == 0
    assert check_iterations("max_iterations", np.int64(7)) == 7
    for bad in (-1, 2.5, True, "10", None):
        with pytest.raises(ParameterError, match="'max_iterations' must be a non-negative integer"):
            check_iterations("max_iterations", bad)
    assert check_tolerance("tolerance", 0) == 0.0 and check_tolerance("tolerance", "1e-3") == 1e-3
    for bad in (-1e-3, float("nan"), float("inf")):
        with pytest.raises(ParameterError, match="'tolerance' must be a non-negative number"):
            check_tolerance("tolerance", bad)
    with pytest.raises(ParameterError, match="must be a number"):
        check_tolerance("tolerance", "small")
    assert check_loop_parameter("cg_max_iterations", 3) == 3
    assert check_loop_parameter("cg_tolerance", 0.5) == 0.5
    assert check_loop_parameter("regularization", -1) == -1  # not a loop parameter: unchanged
    with pytest.raises(ParameterError, match="cg_max_iterations"):
        check_loop_parameter("cg_max_iterations", -2)


def test_echo_times():
    assert check_echo_times(torch.tensor([0.004, 0.008]), 2) == pytest.approx((0.004, 0.008))
    with pytest.raises(InputError, match="missing"):
        check_echo_times(None)
    with pytest.raises(InputError, match="1 echo times for 2 echoes"):
        check_echo_times([0.004], 2)
    for bad, match in (([0.0, 0.004], "positive"), ([4.0, 8.0], "milliseconds"), ([0.008, 0.004], "increasing"),
                       ("fast", "numbers")):
        with pytest.raises(ParameterError, match=match):
            check_echo_times(bad)
