"""Automatic regularization (torchqsm.inversion.regularization): GCV, the noise estimate, the tv rule, reporting."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm import Acquisition, invert
from torchqsm.errors import ParameterError
from torchqsm.inversion import tikhonov, tv
from torchqsm.inversion.regularization import (
    TV_KAPPA,
    RegularizationChoice,
    choices_record,
    collect_choices,
    gcv_residual_noise,
    gcv_tikhonov,
    is_auto,
    record_choices,
)
from torchqsm.metrics import nrmse
from torchqsm.physics import dipole_kernel
from torchqsm.pipeline.methods import TikhonovParameters, TVParameters
from torchqsm.simulate import forward_field, shapes_phantom

ACQ = Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), pad=8)


@pytest.fixture(scope="module")
def problem():
    chi, mask = shapes_phantom((48, 48, 48))
    field = forward_field(chi, pad=16) * mask
    return chi, mask, field


def _noisy(field, mask, relative: float, seed: int = 0):
    sigma = relative * float(field[mask].std())
    noise = sigma * torch.randn(field.shape, generator=torch.Generator().manual_seed(seed))
    return (field + noise) * mask, sigma


def _brute_force_gcv(field, mask, lam: float) -> float:
    """GCV on the full complex spectrum, no bins: the definition."""
    dipole = ACQ.dipole(tuple(field.shape))
    spectrum = torch.fft.fftn(dipole.pad.forward(field).double())
    kernel = dipole_kernel(dipole.pad.padded_shape, rfft=False, dtype=torch.float64)
    one_minus = lam / (kernel * kernel + lam)
    n = spectrum.numel()
    residual = (one_minus.square() * spectrum.abs().square()).sum() / n
    return float(n * residual / one_minus.sum().square())


def test_gcv_minimum_matches_the_definition(problem):
    chi, mask, field = problem
    noisy, _ = _noisy(field, mask, 0.05)
    dipole = ACQ.dipole(tuple(field.shape))
    chosen = gcv_tikhonov(dipole.spectrum(noisy), dipole.kernel, torch.ones(()), dipole.pad.padded_shape)
    grid = [float(v) for v in torch.logspace(-5, 0, 81)]
    scores = [_brute_force_gcv(noisy, mask, lam) for lam in grid]
    best = grid[min(range(len(grid)), key=scores.__getitem__)]
    assert abs(math.log10(chosen / best)) < 0.1  # within 26 %: binning and grid resolution


def _brute_force_masked_gcv(field, mask, lam: float) -> float:
    """GCV over the mask's voxels, by the definition: the in-mask residual of the fit and the
    influence matrix's (constant) diagonal tr(A)/N, on the full complex spectrum."""
    dipole = ACQ.dipole(tuple(field.shape))
    shape = dipole.pad.padded_shape
    spectrum = torch.fft.fftn(field.double(), s=shape)
    kernel = dipole_kernel(shape, rfft=False, dtype=torch.float64)
    phi = kernel * kernel / (kernel * kernel + lam)
    fit = torch.fft.ifftn(spectrum * phi).real[: field.shape[0], : field.shape[1], : field.shape[2]]
    residual = (fit - field.double())[mask]
    m, n = residual.numel(), spectrum.numel()
    return float(residual.square().sum()) / (m * (1.0 - float(phi.sum()) / n) ** 2)


def test_masked_gcv_minimum_matches_the_definition(problem):
    chi, mask, field = problem
    noisy, _ = _noisy(field, mask, 0.05)
    dipole = ACQ.dipole(tuple(field.shape))
    chosen = gcv_tikhonov(dipole.spectrum(noisy), dipole.kernel, torch.ones(()), dipole.pad.padded_shape,
                          mask=mask.float(), image=dipole.image)
    grid = [float(v) for v in torch.logspace(-5, 0, 81)]
    scores = [_brute_force_masked_gcv(noisy, mask, lam) for lam in grid]
    best = grid[min(range(len(grid)), key=scores.__getitem__)]
    assert abs(math.log10(chosen / best)) < 0.1
    whole = gcv_tikhonov(dipole.spectrum(noisy), dipole.kernel, torch.ones(()), dipole.pad.padded_shape)
    assert chosen < whole  # the zeros outside the mask, counted as data, pull the whole-grid GCV up


def test_masked_gcv_without_zeros_is_the_whole_grid_gcv(problem):
    # Mask = the whole grid, no padding: every voxel is data, so the two GCVs are one function.
    _, mask, field = problem
    noisy, _ = _noisy(field, mask, 0.05)
    noisy = noisy + 0.01 * torch.randn(noisy.shape, generator=torch.Generator().manual_seed(3))
    dipole = Acquisition(voxel_size_mm=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), pad=0).dipole(tuple(field.shape))
    spectrum = dipole.spectrum(noisy)
    whole = gcv_tikhonov(spectrum, dipole.kernel, torch.ones(()), dipole.pad.padded_shape)
    masked = gcv_tikhonov(spectrum, dipole.kernel, torch.ones(()), dipole.pad.padded_shape,
                          mask=torch.ones_like(noisy), image=dipole.image)
    assert abs(math.log10(masked / whole)) < 0.05, (masked, whole)


def test_gcv_tracks_the_noise_and_lands_near_the_best(problem):
    chi, mask, field = problem
    chosen = []
    # Measured (48³ shapes, noise relative to the field's std; GCV vs the best of a sweep):
    # 5 % 22.5 vs 21.3, 20 % 41.4 vs 41.4, 50 % 61.5 vs 61.2. At 1 % GCV smooths more than
    # the best (18.3 vs 13.9): there the error is the model's, not the noise's.
    for relative in (0.05, 0.2, 0.5):
        noisy, _ = _noisy(field, mask, relative)
        with collect_choices() as made:
            estimate = tikhonov(noisy, mask, ACQ)
        (choice,) = made
        assert choice.method == "tikhonov" and choice.rule == "generalized cross-validation (in the mask)"
        chosen.append(choice.value)
        sweep = [nrmse(tikhonov(noisy, mask, ACQ, regularization=float(v)), chi, mask)
                 for v in torch.logspace(-4, 0, 17)]
        assert nrmse(estimate, chi, mask) < min(sweep) + 2.0, (relative, nrmse(estimate, chi, mask), min(sweep))
    assert chosen[0] < chosen[1] < chosen[2]  # more noise, more regularization


def test_noise_estimate_grows_with_the_noise(problem):
    # σ̂ is what the GCV fit leaves unexplained, not an unbiased noise estimate: the fit absorbs
    # part of white noise (measured σ̂/σ 0.39-0.65 at 5-50 %) and the model's error adds to it.
    _, mask, field = problem
    dipole = ACQ.dipole(tuple(field.shape))
    estimates = []
    for relative in (0.05, 0.2, 0.5):
        noisy, sigma = _noisy(field, mask, relative, seed=1)
        estimates.append(gcv_residual_noise(noisy, mask.float(), dipole))
        assert 0.3 * sigma < estimates[-1] < 1.0 * sigma, (relative, estimates[-1] / sigma)
    assert estimates[0] < estimates[1] < estimates[2]


def test_tv_rule_scales_with_the_noise_and_voxel_size(problem):
    _, mask, field = problem
    noisy, _ = _noisy(field, mask, 0.05)
    coarse = Acquisition(voxel_size_mm=(2.0, 2.0, 2.0), b0_dir=(0.0, 0.0, 1.0), pad=8)
    with collect_choices() as made:
        tv(noisy, mask, ACQ, noise_ppm=0.002, max_iterations=2)
        tv(noisy, mask, coarse, noise_ppm=0.002, max_iterations=2)
        tv(noisy, mask, ACQ, max_iterations=2)
    given, doubled, estimated = made
    assert given.value == pytest.approx(TV_KAPPA * 0.002) and given.noise_source == "given"
    assert doubled.value == pytest.approx(2 * given.value)
    assert estimated.noise_source.startswith("estimated") and estimated.noise_ppm > 0
    assert estimated.value == pytest.approx(TV_KAPPA * estimated.noise_ppm)


def test_fixed_values_report_nothing_and_words_are_checked(problem):
    _, mask, field = problem
    with collect_choices() as made:
        tikhonov(field, mask, ACQ, regularization=1e-3)
    assert made == []
    with pytest.raises(ParameterError, match="number or 'auto'"):
        tikhonov(field, mask, ACQ, regularization="automatic")
    assert is_auto("auto") and is_auto(" AUTO ") and not is_auto(0.1)


def test_specs_take_numbers_and_auto():
    spec = TikhonovParameters.spec("regularization")
    assert spec.default == "auto" and spec.type_name == "float|auto"
    assert spec.coerce("Auto") == "auto" and spec.coerce("3e-3") == 3e-3
    with pytest.raises(ParameterError, match="positive"):
        spec.coerce("-1")
    with pytest.raises(ParameterError):
        spec.coerce("fast")
    assert TVParameters.spec("noise_ppm").default is None


def test_records():
    choice = RegularizationChoice("tv", "noise scaling (kappa 0.11)", 2e-4, 0.0015, "given")
    assert record_choices({"regularization": "auto", "pad": 8}, [choice]) == {"regularization": 2e-4, "pad": 8}
    assert record_choices({"regularization": 1e-3}, []) == {"regularization": 1e-3}
    assert choices_record([choice]) == [{"method": "tv", "parameter": "regularization", "value": 2e-4,
                                         "rule": "noise scaling (kappa 0.11)", "noise_ppm": 0.0015,
                                         "noise_source": "given"}]
    assert "1.5 ppb" in choice.describe()


def test_registry_passes_auto_through(problem):
    _, mask, field = problem
    with collect_choices() as made:
        invert(field, mask, "l2", ACQ, max_iterations=3)
    assert [c.method for c in made] == ["l2"] and made[0].value > 0
