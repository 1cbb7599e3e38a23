"""Every background method on CUDA gives the CPU result (runs only where a GPU is present: ``-m gpu``)."""

from __future__ import annotations

import pytest
import torch

from torchqsm.preprocess.background import BACKGROUND_METHODS
from torchqsm.simulate import ellipsoid, forward_field, sphere

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", sorted(BACKGROUND_METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(name, dtype):
    shape = (40, 36, 32)
    head = ellipsoid(shape, radii=(18, 16, 14), dtype=torch.float64)
    mask = ellipsoid(shape, radii=(14, 12, 11)) > 0.5
    chi = 9.4 * (1 - head) + 0.1 * sphere(shape, radius=3, dtype=torch.float64)
    field = forward_field(chi, pad=16, b0_dir=(0.0, 0.3, 0.954)).to(dtype)
    params = {"b0_dir": (0.0, 0.3, 0.954), "voxel_size_mm": (1.0, 1.0, 1.2)}
    if name in ("resharp", "pdf", "lbv", "ismv"):
        params.update(max_iterations=30, tolerance=0.0)  # the same 30 CG steps on both devices
    cpu = BACKGROUND_METHODS[name](field, mask, **params)
    gpu = BACKGROUND_METHODS[name](field.cuda(), mask.cuda(), **params)
    assert gpu.local_field_ppm.device.type == "cuda" and gpu.local_field_ppm.dtype == dtype
    assert torch.equal(gpu.mask.cpu(), cpu.mask)
    tolerance = 1e-3 if dtype == torch.float32 else 1e-9
    if name == "nextqsm":  # a network in float32 whatever the input, with TF32 convolutions on recent GPUs
        tolerance = 1e-2
    error = torch.linalg.vector_norm(gpu.local_field_ppm.cpu() - cpu.local_field_ppm) / torch.linalg.vector_norm(
        cpu.local_field_ppm)
    assert error < tolerance, f"{name}: relative CPU/CUDA difference {float(error):.2e}"
