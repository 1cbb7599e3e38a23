"""The data-consistent networks: their dipole operator, their solves and their gradients."""

from __future__ import annotations

import pytest
import torch

from torchqsm.errors import ParameterError
from torchqsm.models import ARCHITECTURES, LPCNN, NoQSM, VarNet, build_model, is_physics
from torchqsm.models.inference import predict_consistent
from torchqsm.models.normalization import Normalization
from torchqsm.models.unrolled import BatchDipole
from torchqsm.physics import DipoleOp
from torchqsm.simulate import shapes_phantom


def _phantom(n: int = 16, b0=(0.0, 0.0, 1.0), voxel=(1.0, 1.0, 1.0), dtype=torch.float64):
    chi, mask = shapes_phantom((n, n, n))
    chi = chi.to(dtype)
    field = DipoleOp((n, n, n), b0_dir=b0, voxel_size_mm=voxel, pad=8, dtype=dtype)(chi)
    return chi, mask, field


def test_batch_dipole_is_each_samples_dipole_operator():
    chi = torch.randn(2, 1, 10, 12, 8, dtype=torch.float64)
    b0 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.5, 0.866]])
    voxel = torch.tensor([[1.0, 1.0, 1.0], [0.8, 0.8, 2.0]])
    batch = BatchDipole((10, 12, 8), b0, voxel, pad=6, dtype=torch.float64)(chi)
    for n in range(2):
        single = DipoleOp((10, 12, 8), b0_dir=b0[n].tolist(), voxel_size_mm=voxel[n].tolist(), pad=6,
                          fast_length=False, dtype=torch.float64)(chi[n, 0])
        assert torch.allclose(batch[n, 0], single, atol=1e-12)


def test_every_physics_architecture_is_registered_and_flagged():
    for name in ("lpcnn", "noqsm", "noqsm-sd", "nextqsm"):
        assert name in ARCHITECTURES
        assert is_physics(build_model(name, channels=2, blocks=1) if name != "nextqsm"
                          else build_model(name, stages=1, base_channels=2))
    assert not is_physics(build_model("unet", base_channels=2, depth=1))
    assert build_model("noqsm-sd", channels=2, blocks=1).solver == "sd"


def test_noqsm_solves_satisfy_the_normal_equations():
    """Identity prior: iterated Tikhonov, χ₀ = (DᴴMD + λ)⁻¹DᴴMf, then the same with λχ₀ added."""
    chi, mask, field = _phantom()
    net = NoQSM(channels=2, blocks=1, solver_iterations=200, regularization=0.05).double()
    x = field[None, None] * mask
    m = mask[None, None].double()
    out = net(x, m, b0_dir=(0, 0, 1), voxel_size_mm=(1, 1, 1)).detach()
    dipole = BatchDipole(mask.shape, torch.tensor([[0.0, 0.0, 1.0]]), torch.ones(1, 3), pad=16, dtype=torch.float64)
    lam = float(net.regularization.detach())

    def system(v):
        return dipole(m * dipole(v)) + lam * v

    data = dipole(m * x)
    first = net._solve(lambda v: dipole(m * dipole(v)), data, net.regularization.detach().double())
    assert float(torch.linalg.norm(system(first) - data) / torch.linalg.norm(data)) < 1e-6
    rhs = data + lam * first
    assert float(torch.linalg.norm(system(out) - rhs) / torch.linalg.norm(rhs)) < 1e-6


def test_physics_networks_follow_the_b0_direction():
    """The same field read at another B0 direction gives another χ: the geometry is applied, not ignored."""
    _, mask, field = _phantom(b0=(0.0, 0.5, 0.866))
    x, m = field[None, None].float(), mask[None, None].float()
    for net in (LPCNN(channels=2, blocks=1), NoQSM(channels=2, blocks=1), VarNet(stages=2, base_channels=2)):
        axial = net(x, m, b0_dir=(0, 0, 1), voxel_size_mm=(1, 1, 1)).detach()
        oblique = net(x, m, b0_dir=(0, 0.5, 0.866), voxel_size_mm=(1, 1, 1)).detach()
        assert float((axial - oblique).abs().max()) > 1e-3 * float(oblique.abs().max())


def test_noqsm_recovers_the_phantom_better_than_its_input_scaled():
    """Untrained, NoQSM is iterated Tikhonov: on a noise-free oblique phantom it lands within 60 % NRMSE."""
    chi, mask, field = _phantom(n=24, b0=(0.0, 0.5, 0.866))
    net = NoQSM(channels=2, blocks=1, solver_iterations=40, regularization=0.02).double()
    out = net(field[None, None] * mask, mask[None, None].double(), b0_dir=(0, 0.5, 0.866),
              voxel_size_mm=(1, 1, 1)).detach()
    err = torch.linalg.norm((out[0, 0] - chi) * mask) / torch.linalg.norm(chi * mask)
    assert float(err) < 0.6


@pytest.mark.parametrize("parameter", ["rhs", "lambda"])
def test_implicit_cg_gradient_matches_unrolled_cg(parameter):
    """Issue 13: the implicit CG gradient within 1e-4 relative of unrolled CG's, on a small converged case."""
    torch.manual_seed(0)
    _, mask, field = _phantom(n=12)
    x, m = field[None, None] * mask, mask[None, None].double()
    grads = []
    for implicit in (True, False):
        torch.manual_seed(1)
        net = NoQSM(channels=2, blocks=1, batch_norm=False, solver_iterations=60, regularization=0.3,
                    implicit=implicit).double()
        torch.nn.init.normal_(net.prior.tail.weight, std=0.1)  # a prior that is not the identity
        inputs = x.clone().requires_grad_(True)
        out = net(inputs, m, b0_dir=(0, 0, 1), voxel_size_mm=(1, 1, 1))
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        grads.append(inputs.grad.clone() if parameter == "rhs" else net.raw_regularization.grad.clone())
    implicit_grad, unrolled_grad = grads
    assert float(torch.linalg.norm(implicit_grad - unrolled_grad) / torch.linalg.norm(unrolled_grad)) < 1e-4


def _saved_bytes(net: NoQSM, x: torch.Tensor, m: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one forward (what training memory grows with)."""
    total = 0

    def pack(tensor: torch.Tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x, m, b0_dir=(0, 0, 1), voxel_size_mm=(1, 1, 1)).sum()
    return total


def test_implicit_cg_memory_does_not_grow_with_iterations():
    """Issue 13: training memory independent of the CG iteration count (implicit); unrolled grows."""
    _, mask, field = _phantom(n=16)
    x, m = (field[None, None] * mask).float(), mask[None, None].float()
    sizes = {}
    for implicit in (True, False):
        for iterations in (5, 20):
            net = NoQSM(channels=2, blocks=1, solver_iterations=iterations, implicit=implicit)
            sizes[implicit, iterations] = _saved_bytes(net, x, m)
    assert sizes[True, 5] == sizes[True, 20]
    assert sizes[False, 20] > 2 * sizes[False, 5]


def test_geometry_errors_are_one_clear_message():
    net = LPCNN(channels=2, blocks=1)
    x = torch.zeros(1, 1, 8, 8, 8)
    with pytest.raises(ParameterError, match="B0 direction and the voxel size"):
        net(x, x, b0_dir=None, voxel_size_mm=(1, 1, 1))
    with pytest.raises(ParameterError, match="non-zero"):
        net(x, x, b0_dir=(0, 0, 0), voxel_size_mm=(1, 1, 1))
    with pytest.raises(ParameterError, match="positive"):
        net(x, x, b0_dir=(0, 0, 1), voxel_size_mm=(1, 0, 1))


def test_predict_consistent_returns_ppm_inside_the_mask():
    chi, mask, field = _phantom(n=14)
    net = NoQSM(channels=2, blocks=1, solver_iterations=30, regularization=0.02)
    out = predict_consistent(net, field.float(), mask, normalization=Normalization(0.02, 0.1), b0_dir=(0, 0, 1),
                             voxel_size_mm=(1, 1, 1))
    assert out.shape == chi.shape and float(out[~mask].abs().max()) == 0.0
    err = torch.linalg.norm((out - chi) * mask) / torch.linalg.norm(chi * mask)
    assert float(err) < 0.7  # untrained: iterated Tikhonov, in ppm (the units' ratio is applied)
