"""The simulator's background field is harmonic in the brain whatever the configured padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torchqsm.preprocess.background._common import SMV
from torchqsm.simulate.dataset import SimulationConfig, simulate_volume


def _laplacian(x: torch.Tensor) -> torch.Tensor:
    k = torch.zeros(1, 1, 3, 3, 3)
    k[0, 0, 1, 1, :] = k[0, 0, 1, :, 1] = k[0, 0, :, 1, 1] = 1.0
    k[0, 0, 1, 1, 1] = -6.0
    return F.conv3d(x[None, None].double(), k.double(), padding=1)[0, 0]


def test_background_of_a_region_is_harmonic_in_the_brain_with_a_small_pad(one_thread) -> None:
    """With 16 voxels of padding for everything, the head's field in an 80³ region was 3-5 % non-harmonic
    (Laplacian in the brain eroded by 5 mm, against the local field's); the background now pads by 48 mm."""
    config = SimulationConfig(task="total_to_local", region_size=(80, 80, 80), patch_size=None, pad=16,
                              external_sources=0, shim_amplitude_ppm=0.0, lesion_probability=0.0, max_tilt_deg=None)
    volume = simulate_volume(config, torch.Generator().manual_seed(2))
    mask = volume.mask.bool()
    inner = SMV(tuple(mask.shape), 5, voxel_size_mm=(1, 1, 1)).erode(mask)
    background = volume.total_field_ppm - volume.local_field_ppm
    ratio = _laplacian(background)[inner].std() / _laplacian(volume.local_field_ppm)[inner].std()
    assert float(ratio) < 0.012, float(ratio)
