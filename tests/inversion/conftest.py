"""The forward-simulated analytic brain phantom used by the inversion tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from torchqsm.physics import tilt_b0_dir
from torchqsm.simulate import add_noise, forward_field


@dataclass(frozen=True)
class PhantomProblem:
    chi: torch.Tensor
    mask: torch.Tensor
    field: torch.Tensor
    magnitude: torch.Tensor
    voxel_size_mm: tuple[float, float, float]
    b0_dir: tuple[float, float, float]


def synthetic_magnitude(chi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A magnitude whose edges coincide with χ's (darker where χ is paramagnetic), as MEDI assumes."""
    return (torch.clamp(1.0 - 2.0 * chi, 0.2, 1.5) * mask).to(chi.dtype)


def load_phantom_problem(data_dir: Path, *, tilt_deg: float, noise_fraction: float = 0.01,
                         seed: int = 0, crop_margin: int | None = 8) -> PhantomProblem:
    """χ, mask and a noisy field (σ = ``noise_fraction`` × the field's std in the mask) at a tilt about axis 0."""
    chi_img = nib.load(data_dir / "brain-phantom-analytic" / "chi_ppm.nii.gz")
    mask_img = nib.load(data_dir / "brain-phantom-analytic" / "mask.nii.gz")
    chi = torch.from_numpy(np.asarray(chi_img.dataobj, dtype=np.float32))
    mask = torch.from_numpy(np.asarray(mask_img.dataobj) != 0)
    voxel = tuple(float(v) for v in chi_img.header.get_zooms()[:3])
    b0 = tilt_b0_dir(tilt_deg)
    # Simulate with generous padding (the phantom fills the grid along z), then add noise.
    field = forward_field(chi.double(), voxel_size_mm=voxel, b0_dir=b0, pad=64).float()
    sigma = noise_fraction * float(field[mask].std())
    noisy = add_noise(field, sigma=sigma, mask=mask, generator=torch.Generator().manual_seed(seed))
    # Reconstruct on the mask's bounding box plus a margin: the field is zero outside the mask
    # anyway, and the smaller grid makes the iterative methods ~1.7x faster.
    box = _bounding_box(mask, margin=crop_margin) if crop_margin is not None else (slice(None),) * 3
    chi, mask, noisy = chi[box], mask[box], noisy[box]
    return PhantomProblem(chi * mask, mask, noisy * mask, synthetic_magnitude(chi, mask), voxel, b0)


def _bounding_box(mask: torch.Tensor, *, margin: int) -> tuple[slice, ...]:
    nonzero = torch.nonzero(mask)
    low = (nonzero.min(dim=0).values - margin).clamp(min=0)
    high = nonzero.max(dim=0).values + margin + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


@pytest.fixture(scope="module", params=[0.0, 30.0], ids=["axial", "tilt30"])
def phantom(request, shared_data) -> PhantomProblem:
    """The noisy phantom problem, B0 axial and tilted 30° about the first axis."""
    return load_phantom_problem(shared_data, tilt_deg=request.param)
