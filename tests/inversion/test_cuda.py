"""Every method on CUDA gives the CPU result (runs only where a GPU is present: ``-m gpu``)."""

from __future__ import annotations

import pytest
import torch

from torchqsm import METHODS, invert
from torchqsm.simulate import forward_field, shapes_phantom

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LIMITS = {"l2": {"max_iterations": 20}, "tv": {"max_iterations": 20}, "ndi": {"max_iterations": 20},
          "medi": {"max_iterations": 2}, "cosmos": {"max_iterations": 10}}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(method, dtype):
    chi, mask = shapes_phantom((40, 36, 32), dtype=torch.float64)
    b0 = (0.0, 0.3, 0.954)
    if method == "cosmos":
        directions = [(0.0, 0.0, 1.0), (0.0, 0.4, 0.917), (0.4, 0.0, 0.917)]
        field = torch.stack([forward_field(chi, b0_dir=d, pad=16) for d in directions]).to(dtype)
        b0 = directions
    else:
        field = forward_field(chi, b0_dir=b0, pad=16).to(dtype)
    params = dict(LIMITS.get(method, {}))
    if method == "medi":
        params["magnitude"] = (1.0 - chi).clamp(0.2, 1.5).to(dtype)
    cpu = invert(field, mask, method, b0_dir=b0, **params)
    cuda_params = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in params.items()}
    gpu = invert(field.cuda(), mask.cuda(), method, b0_dir=b0, **cuda_params)
    assert gpu.device.type == "cuda" and gpu.dtype == dtype
    tolerance = 1e-3 if dtype == torch.float32 else 1e-9
    error = torch.linalg.vector_norm(gpu.cpu() - cpu) / torch.linalg.vector_norm(cpu)
    assert error < tolerance, f"{method}: relative CPU/CUDA difference {float(error):.2e}"
