"""Input and parameter validation, the registry, dtypes and the shared signature."""

from __future__ import annotations

import inspect

import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.preprocess.background import BACKGROUND_METHODS, BackgroundResult
from torchqsm.preprocess.background._common import SMV
from torchqsm.simulate import sphere

SHAPE = (24, 24, 24)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """One torch thread for these 24³ problems."""


@pytest.fixture(scope="module")
def data():
    mask = sphere(SHAPE, radius=10) > 0.5
    x = torch.arange(24.0)
    field = (0.01 * x[:, None, None] + 0.002 * x[None, None, :] ** 2).expand(SHAPE).clone()
    return field, mask


def test_registry_and_shared_signature():
    assert set(BACKGROUND_METHODS) == {"sharp", "vsharp", "resharp", "pdf", "lbv", "ismv", "nextqsm"}
    for name, method in BACKGROUND_METHODS.items():
        parameters = inspect.signature(method).parameters
        assert list(parameters)[:4] == ["total_field_ppm", "mask", "voxel_size_mm", "b0_dir"], name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(parameters.values())[2:]), name


@pytest.mark.parametrize("name", sorted(BACKGROUND_METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_kept_and_nan_outside_the_mask_ignored(name, dtype, data):
    field, mask = data
    field = field.to(dtype)
    # A 3 mm ball leaves room in the 10-voxel mask; PDF's limit keeps the test short.
    params = {"sharp": {"radius_mm": 3}, "resharp": {"radius_mm": 3}, "ismv": {"radius_mm": 3},
              "pdf": {"max_iterations": 30}}.get(name, {})
    method = BACKGROUND_METHODS[name]
    result = method(field, mask, voxel_size_mm=(1.0, 1.0, 1.2), **params)
    dirty = torch.where(mask, field, torch.nan)
    again = method(dirty, mask.to(torch.uint8), voxel_size_mm=(1.0, 1.0, 1.2), **params)
    assert isinstance(result, BackgroundResult)
    assert result.local_field_ppm.dtype == dtype and result.mask.dtype == torch.bool
    assert tuple(result.local_field_ppm.shape) == SHAPE
    assert torch.equal(result.mask, again.mask) and torch.allclose(result.local_field_ppm, again.local_field_ppm)


@pytest.mark.parametrize("name", sorted(BACKGROUND_METHODS))
def test_bad_inputs(name, data):
    field, mask = data
    method = BACKGROUND_METHODS[name]
    with pytest.raises(InputError, match="NaN"):
        method(torch.where(mask, torch.nan, field), mask)
    with pytest.raises(InputError, match="does not match"):
        method(field, mask[:-1])
    with pytest.raises(InputError, match="3-D"):
        method(field[None], mask)
    with pytest.raises(InputError, match="empty"):
        method(field, torch.zeros(SHAPE, dtype=torch.bool))
    with pytest.raises(InputError, match="complex"):
        method(field.to(torch.complex64), mask)
    with pytest.raises(ParameterError, match="voxel_size_mm"):
        method(field, mask, voxel_size_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ParameterError, match="b0_dir"):
        method(field, mask, b0_dir=(0.0, 0.0, 0.0))


@pytest.mark.parametrize("name", ["sharp", "resharp", "ismv"])
def test_radius_checks(name, data):
    field, mask = data
    method = BACKGROUND_METHODS[name]
    with pytest.raises(InputError, match="after erosion"):
        method(field, sphere(SHAPE, radius=3) > 0.5, radius_mm=5)
    with pytest.raises(ParameterError, match="radius_mm"):
        method(field, mask, radius_mm=0.5)  # only the centre voxel
    with pytest.raises(ParameterError, match="radius_mm"):
        method(field, mask, radius_mm=-2)
    with pytest.raises(ParameterError, match="larger than the grid"):
        method(field, mask, radius_mm=13)


def test_vsharp_radii(data):
    field, mask = data
    small = sphere(SHAPE, radius=3) > 0.5
    with pytest.raises(InputError, match="smallest sphere"):
        BACKGROUND_METHODS["vsharp"](field, small, radii_mm=(6, 5, 4))
    with pytest.raises(ParameterError, match="empty"):
        BACKGROUND_METHODS["vsharp"](field, mask, radii_mm=())
    with pytest.raises(ParameterError, match="radii_mm"):
        BACKGROUND_METHODS["vsharp"](field, mask, radii_mm=(4, float("nan")))
    # Order does not matter; duplicate balls are skipped; the mask is eroded by the smallest radius only.
    one = BACKGROUND_METHODS["vsharp"](field, mask, radii_mm=(2, 4, 4.1, 6))
    two = BACKGROUND_METHODS["vsharp"](field, mask, radii_mm=(6, 4, 2))
    assert torch.equal(one.local_field_ppm, two.local_field_ppm)
    assert torch.equal(one.mask, SMV(SHAPE, 2, voxel_size_mm=(1, 1, 1)).erode(mask))


@pytest.mark.parametrize("name, parameters, match", [
    ("sharp", {"threshold": 1.0}, "threshold"),
    ("vsharp", {"threshold": 0.0}, "threshold"),
    ("resharp", {"regularization": -1e-3}, "regularization"),
    ("resharp", {"max_iterations": -1}, "max_iterations"),
    ("pdf", {"tolerance": -1.0}, "tolerance"),
    ("pdf", {"pad": -1}, "pad"),
    ("pdf", {"pad": (1, 2)}, "pad"),
    ("pdf", {"form": "wavelet"}, "form"),
    ("lbv", {"peel": -1}, "peel"),
    ("lbv", {"max_iterations": 2.5}, "max_iterations"),
    ("ismv", {"tolerance": "small"}, "tolerance"),
])
def test_bad_parameters(name, parameters, match, data):
    field, mask = data
    with pytest.raises(ParameterError, match=match):
        BACKGROUND_METHODS[name](field, mask, **parameters)


def test_pdf_magnitude_and_full_mask(data):
    field, mask = data
    with pytest.raises(InputError, match="magnitude"):
        BACKGROUND_METHODS["pdf"](field, mask, magnitude=torch.ones(3, 3, 3))
    with pytest.raises(InputError, match="magnitude"):
        BACKGROUND_METHODS["pdf"](field, mask, magnitude=-torch.ones(SHAPE))
    with pytest.raises(InputError, match="no room"):
        BACKGROUND_METHODS["pdf"](field, torch.ones(SHAPE, dtype=torch.bool), pad=0)
    # A uniform magnitude is the same as no weights.
    plain = BACKGROUND_METHODS["pdf"](field, mask, max_iterations=20)
    weighted = BACKGROUND_METHODS["pdf"](field, mask, magnitude=3.0 * torch.ones(SHAPE), max_iterations=20)
    assert torch.allclose(plain.local_field_ppm, weighted.local_field_ppm, atol=1e-6)


def test_lbv_peel_and_interior(data):
    field, mask = data
    with pytest.raises(InputError, match="interior"):
        BACKGROUND_METHODS["lbv"](field, torch.zeros(SHAPE, dtype=torch.bool).index_fill_(0, torch.tensor([5]), True))
    base = BACKGROUND_METHODS["lbv"](field, mask)
    peeled = BACKGROUND_METHODS["lbv"](field, mask, peel=2)
    assert bool((peeled.mask & ~base.mask).sum() == 0) and int(peeled.mask.sum()) < int(base.mask.sum())
    with pytest.raises(InputError, match="peeling"):
        BACKGROUND_METHODS["lbv"](field, mask, peel=20)


def test_smv_kernel_and_erosion():
    smv = SMV((16, 16, 16), 1.0, voxel_size_mm=(1.0, 1.0, 1.0), dtype=torch.float64)
    assert smv.count == 7 and smv.reach == (1, 1, 1)
    assert abs(float(smv.symbol[0, 0, 0]) - 1.0) < 1e-12
    # Anisotropic voxels: a 2 mm ball reaches 2 voxels along 1 mm axes and 1 along the 2 mm axis.
    aniso = SMV((16, 16, 16), 2.0, voxel_size_mm=(1.0, 1.0, 2.0))
    assert aniso.reach == (2, 2, 1)
    # A mask touching the grid edge is eroded there too (no wrap-around).
    full = torch.ones(16, 16, 16, dtype=torch.bool)
    eroded = smv.erode(full)
    assert int(eroded.sum()) == 14**3 and not bool(eroded[0].any())


@pytest.mark.parametrize("name", ["resharp", "lbv", "ismv", "pdf"])
def test_zero_iterations_return_the_starting_point(name, data):
    """``max_iterations=0`` runs no CG step: the background (or, for RESHARP, the local field) stays 0."""
    field, mask = data
    params = {"resharp": {"radius_mm": 3}, "ismv": {"radius_mm": 3}}.get(name, {})
    method = BACKGROUND_METHODS[name]
    start = method(field, mask, max_iterations=0, **params)
    assert bool(start.mask.any())
    expected = torch.zeros_like(field) if name == "resharp" else torch.where(start.mask, field, 0.0)
    assert torch.equal(start.local_field_ppm, expected)
    # one iteration already moves away from it
    assert not torch.equal(method(field, mask, max_iterations=1, **params).local_field_ppm, expected)
