"""Acceptance: every method on the brain-in-air phantom, against the known local field.

Background removal fixes the local field only up to a constant, so errors are
demeaned NRMSE (``nrmse(..., demean=True)``) in the mask each method returns.
"Near the boundary" is the band of voxels that every method keeps (the
intersection of the returned masks, SHARP's being the smallest) within 6
voxels (12 mm) of the brain-mask edge.
"""

from __future__ import annotations

import pytest
import torch

from torchqsm.metrics import nrmse
from torchqsm.physics import tilt_b0_dir
from torchqsm.preprocess.background import BACKGROUND_METHODS, BackgroundResult
from torchqsm.preprocess.background.lbv import _interior

from .conftest import brain_in_air

# PDF fits with the kernel the phantom was simulated with (see conftest).
PARAMS = {"pdf": {"form": "image"}}

# Demeaned NRMSE (%) in each method's own mask; measured axial / 30° tilt, bound with a margin.
BOUNDS = {
    "sharp": 14.0,    # 11.8 / 12.6
    "vsharp": 27.0,   # 19.3 / 24.0
    "resharp": 19.0,  # 14.8 / 16.8
    "pdf": 30.0,      # 19.8 / 25.7 (image-form fit)
    "lbv": 55.0,      # 33.2 / 49.6
    "ismv": 8.0,      # 5.3 / 6.4
}


@pytest.fixture(scope="module", params=[0.0, 30.0], ids=["axial", "tilt30"])
def solved(request, one_thread):
    phantom = brain_in_air(b0_dir=tilt_b0_dir(request.param))
    total = phantom.total.float()
    results = {name: method(total, phantom.mask, voxel_size_mm=phantom.voxel_size_mm, b0_dir=phantom.b0_dir,
                            **PARAMS.get(name, {}))
               for name, method in BACKGROUND_METHODS.items()}
    return phantom, results


def test_results_are_records_on_submasks(solved):
    phantom, results = solved
    for name, result in results.items():
        assert isinstance(result, BackgroundResult), name
        assert result.mask.dtype == torch.bool and result.local_field_ppm.dtype == torch.float32
        assert not bool((result.mask & ~phantom.mask).any()), f"{name} returned voxels outside the brain mask"
        assert bool((result.local_field_ppm[~result.mask] == 0).all())


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_local_field_nrmse(solved, name):
    phantom, results = solved
    result = results[name]
    error = nrmse(result.local_field_ppm, phantom.local, result.mask, demean=True)
    assert error < BOUNDS[name], f"{name}: local-field NRMSE {error:.2f} %"


def test_boundary_band_vsharp_resharp_pdf_beat_sharp(solved):
    phantom, results = solved
    common = phantom.mask.clone()
    for result in results.values():
        common &= result.mask
    deep = phantom.mask
    for _ in range(6):
        deep = _interior(deep)
    band = common & ~deep
    assert int(band.sum()) > 5000  # 8758 voxels
    error = {name: nrmse(r.local_field_ppm, phantom.local, band, demean=True) for name, r in results.items()}
    # Measured axial / 30°: SHARP 38.2 / 40.4, V-SHARP 37.2 / 32.3, RESHARP 33.0 / 37.0, PDF 25.4 / 32.7
    # (iSMV 14.2 / 14.2; LBV 49.7 / 72.7 does not beat SHARP here).
    for name in ("vsharp", "resharp", "pdf"):
        assert error[name] < error["sharp"], f"{name} {error[name]:.2f} % vs SHARP {error['sharp']:.2f} % in the band"
