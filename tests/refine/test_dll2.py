"""DLL2: the closed form solves its normal equations and equals CG with W = I; limits in λ; errors."""

from __future__ import annotations

import pytest
import torch

from torchqsm.acquisition import Acquisition
from torchqsm.errors import InputError, ParameterError
from torchqsm.metrics import nrmse
from torchqsm.physics import DipoleOp
from torchqsm.refine import dll2

AXIAL = Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0))

PAD = 8


@pytest.fixture
def everywhere(phantom):
    """The phantom with a mask of ones: W = I on the image grid, and no masking of the result."""
    chi, field, mask, chi0 = phantom
    return chi, field, torch.ones_like(mask), chi0


def test_closed_form_solves_the_normal_equations(everywhere):
    _, field, ones, chi0 = everywhere
    lam = 0.01
    chi = dll2(chi0, field, ones, AXIAL, pad=0, regularization=lam)
    dipole = DipoleOp(tuple(ones.shape), dtype=torch.float64)
    residual = dipole.gram(chi) + lam * chi - (dipole(field) + lam * chi0)
    assert float(torch.linalg.vector_norm(residual)) < 1e-10 * float(torch.linalg.vector_norm(dipole(field)))


@pytest.mark.parametrize("pad", [0, PAD])
def test_cg_with_identity_weights_equals_closed_form(everywhere, pad):
    _, field, ones, chi0 = everywhere
    if pad:  # the closed form with padding is W = I on the padded grid: compare there
        field, chi0 = (torch.nn.functional.pad(v, (pad,) * 6) for v in (field, chi0))
        ones = torch.ones(field.shape, dtype=torch.bool)
    options = {"pad": 0, "regularization": 0.1, "tolerance": 1e-10, "max_iterations": 200}
    closed = dll2(chi0, field, ones, AXIAL, pad=0, regularization=0.1)
    by_cg = dll2(chi0, field, ones, AXIAL, weighting="mask", **options)
    torch.testing.assert_close(by_cg, closed, rtol=0, atol=1e-9)
    if not pad:  # unit weights are W = M too: the same CG iterates
        options["max_iterations"] = 3
        weighted = dll2(chi0, field, ones, AXIAL, weighting="mask", magnitude=torch.ones_like(field), **options)
        torch.testing.assert_close(weighted, dll2(chi0, field, ones, AXIAL, weighting="mask", **options), rtol=0, atol=1e-12)


@pytest.mark.parametrize("weighting", ["identity", "mask"])
def test_large_regularization_returns_the_estimate(phantom, weighting):
    _, field, mask, chi0 = phantom
    out = dll2(chi0, field, mask, AXIAL, pad=PAD, regularization=1e8, weighting=weighting)
    torch.testing.assert_close(out, chi0, rtol=0, atol=1e-8)


def test_small_regularization_approaches_the_data_fit(phantom, everywhere):
    _, field, mask, chi0 = phantom
    dipole = DipoleOp(tuple(mask.shape), pad=PAD, dtype=torch.float64)
    misfit = []
    for lam in (1.0, 1e-2, 1e-3):  # CG with W = M: the misfit inside the mask falls with λ
        chi = dll2(chi0, field, mask, AXIAL, pad=PAD, regularization=lam, weighting="mask", max_iterations=30)
        misfit.append(float(torch.linalg.vector_norm((dipole(chi) - field) * mask)))
    assert all(b < a for a, b in zip(misfit, misfit[1:]))
    assert misfit[-1] < 0.1 * float(torch.linalg.vector_norm(field))
    # closed form on the whole grid: Dχ → f except where D = 0 (k = 0 and the cone)
    _, field, ones, chi0 = everywhere
    dipole = DipoleOp(tuple(ones.shape), dtype=torch.float64)
    closed = [float(torch.linalg.vector_norm(dipole(dll2(chi0, field, ones, AXIAL, pad=0, regularization=lam)) - field))
              for lam in (1.0, 1e-2, 1e-4, 1e-8)]
    assert all(b < a for a, b in zip(closed, closed[1:]))
    assert closed[-1] < 0.02 * float(torch.linalg.vector_norm(field))


def test_refinement_lowers_nrmse(phantom):
    chi, field, mask, chi0 = phantom
    closed = dll2(chi0, field, mask, AXIAL, pad=PAD)
    by_cg = dll2(chi0, field, mask, AXIAL, pad=PAD, weighting="mask")
    # measured: 80.5 % → 29.0 % (closed form), 31.1 % (CG with W = M)
    assert nrmse(closed, chi, mask) < 0.5 * nrmse(chi0, chi, mask)
    assert nrmse(by_cg, chi, mask) < 0.5 * nrmse(chi0, chi, mask)
    assert bool((closed[~mask] == 0).all()) and bool((by_cg[~mask] == 0).all())


def test_magnitude_weights_run_through_cg(phantom):
    _, field, mask, chi0 = phantom
    magnitude = torch.linspace(0.5, 1.5, field.numel(), dtype=torch.float64).reshape(field.shape)
    steps = []
    out = dll2(chi0, field, mask, AXIAL, pad=PAD, weighting="mask", magnitude=magnitude, callback=steps.append,
               max_iterations=20)
    assert 0 < len(steps) <= 20 and out.shape == field.shape


@pytest.mark.parametrize(("keywords", "error", "match"), [
    ({"regularization": 0.0}, ParameterError, "regularization"),
    ({"regularization": -1.0}, ParameterError, "regularization"),
    ({"weighting": "magnitude"}, ParameterError, "weighting"),
    ({"magnitude": torch.ones(32, 32, 32)}, ParameterError, "weighting='mask'"),
    ({"weighting": "mask", "magnitude": -torch.ones(32, 32, 32)}, InputError, "magnitude"),
    ({"weighting": "mask", "magnitude": torch.ones(8, 8, 8)}, InputError, "magnitude shape"),
    ({"weighting": "mask", "tolerance": -1.0}, ParameterError, "tolerance"),
])
def test_bad_parameters(phantom, keywords, error, match):
    _, field, mask, chi0 = phantom
    with pytest.raises(error, match=match):
        dll2(chi0, field, mask, AXIAL, pad=PAD, **keywords)


def test_bad_inputs(phantom):
    _, field, mask, chi0 = phantom
    with pytest.raises(InputError, match="chi_ppm shape"):
        dll2(chi0[:-1], field, mask, AXIAL, pad=PAD)
    with pytest.raises(InputError, match="empty"):
        dll2(chi0, field, torch.zeros_like(mask), AXIAL, pad=PAD)
    bad = field.clone()
    bad[tuple(torch.nonzero(mask)[0])] = float("inf")  # inside the mask: an error (outside: zeroed)
    with pytest.raises(InputError, match="NaN or infinite"):
        dll2(chi0, bad, mask, AXIAL, pad=PAD)
