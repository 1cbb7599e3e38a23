"""Referencing χ: mean over the brain, mean over CSF, or nothing."""

from __future__ import annotations

import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.preprocess.referencing import reference, reference_value
from torchqsm.simulate import shapes_phantom, sphere

SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def phantom():
    """The shapes phantom shifted by an unknown constant, plus a CSF-like sphere at 0 ppm (true)."""
    chi, mask = shapes_phantom(SHAPE, dtype=torch.float64)
    mask = mask > 0.5
    csf = sphere(SHAPE, radius=2.5, center=(16, 22, 10)) > 0.5
    chi = torch.where(csf, 0.0, chi)
    return chi, mask, csf


def test_mean_reference_zeroes_the_brain_mean(phantom):
    chi, mask, _ = phantom
    shifted = torch.where(mask, chi + 0.37, 5.0)  # constant offset, rubbish outside the mask
    out = reference(shifted, mask)
    assert out.dtype == torch.float64 and out.shape == SHAPE
    assert abs(float(out[mask].mean())) < 1e-14
    assert not out[~mask].any()
    # referencing removes any constant: the result does not depend on the offset
    torch.testing.assert_close(out, reference(torch.where(mask, chi, 0.0), mask), rtol=0, atol=1e-14)


def test_csf_reference_recovers_true_values(phantom):
    chi, mask, csf = phantom
    shifted = torch.where(mask, chi - 0.12, 0.0).to(torch.float32)
    out = reference(shifted, mask, method="csf", csf_mask=csf)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.where(mask, chi, 0.0).float(), rtol=0, atol=1e-6)
    assert float(out[csf].abs().max()) < 1e-6
    # only CSF voxels inside the brain count: a CSF mask spilling outside changes nothing
    spill = csf.clone()
    spill[0, 0, 0] = True
    torch.testing.assert_close(reference(shifted, mask, method="csf", csf_mask=spill), out)


def test_none_and_batches(phantom):
    chi, mask, csf = phantom
    assert reference(chi, mask, method="none") is chi
    batch = torch.stack([chi + 1.0, chi - 2.0])
    out = reference(batch, mask, method="csf", csf_mask=csf)
    torch.testing.assert_close(out[0], out[1])
    torch.testing.assert_close(reference_value(batch, csf), torch.tensor([1.0, -2.0], dtype=torch.float64))


def test_validation(phantom):
    chi, mask, csf = phantom
    with pytest.raises(ParameterError, match="needs csf_mask"):
        reference(chi, mask, method="csf")
    with pytest.raises(ParameterError, match="only used with method='csf'"):
        reference(chi, mask, csf_mask=csf)
    with pytest.raises(ParameterError, match="method must be"):
        reference(chi, mask, method="median")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="mask is empty"):
        reference(chi, torch.zeros(SHAPE, dtype=torch.bool))
    with pytest.raises(InputError, match="csf_mask has no voxel inside mask"):
        outside = torch.zeros(SHAPE, dtype=torch.bool)
        outside[0, 0, 0] = True
        reference(chi, mask, method="csf", csf_mask=outside)
    with pytest.raises(InputError, match="mask shape"):
        reference(chi, mask[:8])
    with pytest.raises(InputError, match="csf_mask shape"):
        reference(chi, mask, method="csf", csf_mask=csf[:8])
    bad = chi.clone()
    bad[16, 16, 16] = float("nan")
    with pytest.raises(InputError, match="chi_ppm has 1 NaN"):
        reference(bad, mask)
    with pytest.raises(InputError, match="region is empty"):
        reference_value(chi, torch.zeros(SHAPE, dtype=torch.bool))


def test_nan_outside_the_mask_is_ignored(phantom):
    chi, mask, _ = phantom
    dirty = torch.where(mask, chi, torch.nan)
    torch.testing.assert_close(reference(dirty, mask), reference(chi, mask), rtol=0, atol=0)
