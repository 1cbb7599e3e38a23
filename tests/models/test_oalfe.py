"""The LoT layer and OA-LFE of iQSM+: against the physics LoT, the phase model, and as identities when fresh."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.errors import ParameterError
from torchqsm.models import UNet3d
from torchqsm.models.oalfe import OALFE, LoTLayer, laplacian_stencil_27, step_reliability
from torchqsm.physics.lot import laplacian_of_wrapped_phase
from torchqsm.physics.operators import LaplacianOp
from torchqsm.physics.units import GAMMA_BAR_MHZ_PER_T

INTERIOR = (slice(2, -2),) * 3


def _smooth_field(n: int = 48) -> torch.Tensor:
    """A smooth field (ppm) of a few tenths of ppm: several phase wraps at 3 T and TE ≥ 10 ms."""
    x = torch.arange(n, dtype=torch.float64) / n
    return 0.4 * torch.sin(2 * math.pi * x)[:, None, None] * torch.cos(2 * math.pi * x)[None, :, None] \
        + 0.1 * torch.cos(2 * math.pi * x)[None, None, :]


def test_stencil_is_the_27_point_laplacian():
    kernel = laplacian_stencil_27((1.0, 1.0, 1.0), dtype=torch.float64)
    assert float(kernel.sum()) == pytest.approx(0.0, abs=1e-12)  # annihilates constants
    x = torch.arange(5, dtype=torch.float64)
    quadratic = (x[:, None, None] ** 2).expand(5, 5, 5)  # ∇² x² = 2
    assert float((kernel * quadratic[1:4, 1:4, 1:4]).sum()) == pytest.approx(2.0, rel=1e-12)


def test_lot_layer_at_initialisation_equals_the_physics_lot():
    """Issue 15: at initialisation each channel equals physics LoT on wrapped phase (interior, one echo)."""
    field = _smooth_field()
    te, b0 = 0.02, 3.0
    phase = 2 * math.pi * GAMMA_BAR_MHZ_PER_T * b0 * te * field
    assert float(phase.abs().max()) > 2 * math.pi  # wrapped several times
    wrapped = torch.angle(torch.exp(1j * phase))
    layer = LoTLayer(out_channels=2).double()
    out = layer(wrapped[None, None], echo_times_s=[te], b0_tesla=b0).detach()
    reference = laplacian_of_wrapped_phase(wrapped, LaplacianOp(field.shape, stencil="27", dtype=torch.float64))
    reference = reference / (2 * math.pi * GAMMA_BAR_MHZ_PER_T * b0 * te)
    for channel in range(2):
        assert torch.allclose(out[0, channel][INTERIOR], reference[INTERIOR], rtol=1e-6, atol=1e-9)


def test_multi_echo_lot_recovers_the_laplacian_of_the_field_in_ppm():
    field = _smooth_field()
    echoes, b0 = [0.003, 0.006, 0.009, 0.012], 3.0
    phases = torch.stack([2 * math.pi * GAMMA_BAR_MHZ_PER_T * b0 * te * field for te in echoes])
    assert float(phases.abs().max()) > math.pi  # the later echoes wrap
    wrapped = torch.angle(torch.exp(1j * phases))
    out = LoTLayer(out_channels=1).double()(wrapped[None], echo_times_s=echoes, b0_tesla=b0)[0, 0].detach()
    truth = LaplacianOp(field.shape, stencil="27", dtype=torch.float64)(field)
    error = (out - truth)[INTERIOR].abs().max() / truth[INTERIOR].abs().max()
    assert float(error) < 0.05  # the LoT identity is exact only for small neighbour differences


def _steep_field(n: int = 40) -> torch.Tensor:
    """Gaussian blob (ppm): gentle steps at 4 ms, several radians per voxel at 28 ms near its flanks."""
    g = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) - n / 2] * 3, indexing="ij"))
    return 1.0 * torch.exp(-g.square().sum(0) / (2 * 3.0**2))


def test_reliability_weighting_equals_least_squares_where_the_steps_are_small():
    field = _smooth_field()
    echoes, b0 = [0.0015, 0.003, 0.0045, 0.006], 3.0  # steps up to 0.25 rad
    wrapped = torch.stack([torch.angle(torch.exp(1j * 2 * math.pi * GAMMA_BAR_MHZ_PER_T * b0 * te * field))
                           for te in echoes])
    reliability = step_reliability(wrapped)
    assert float(reliability[:, INTERIOR[0], INTERIOR[1], INTERIOR[2]].min()) > 0.5
    plain = LoTLayer(1).double()(wrapped[None], echo_times_s=echoes, b0_tesla=b0)[0, 0].detach()
    weighted = LoTLayer(1, echo_weighting="reliability").double()(wrapped[None], echo_times_s=echoes,
                                                                   b0_tesla=b0)[0, 0].detach()
    truth = LaplacianOp(field.shape, stencil="27", dtype=torch.float64)(field)
    scale = float(truth[INTERIOR].abs().max())
    assert float((weighted - plain)[INTERIOR].abs().max()) < 0.02 * scale  # nothing to correct: the same answer
    assert float((weighted - truth)[INTERIOR].abs().max()) < 0.05 * scale


def test_reliability_weighting_leans_on_early_echoes_where_late_ones_step_too_far():
    """A strong source (1 ppm): by 28 ms its flanks step more than π per voxel and least squares,
    led by the late echoes, loses the Laplacian there; the reliability weights keep it from the early
    echoes. Without noise, so the comparison is of the identity's bias alone."""
    field = _steep_field()
    echoes, b0 = [0.004, 0.012, 0.020, 0.028], 3.0
    wrapped = torch.stack([torch.angle(torch.exp(1j * 2 * math.pi * GAMMA_BAR_MHZ_PER_T * b0 * te * field))
                           for te in echoes])
    truth = LaplacianOp(field.shape, stencil="27", dtype=torch.float64)(field)
    errors = {}
    for weighting in ("least_squares", "reliability"):
        layer = LoTLayer(1, echo_weighting=weighting).double()
        out = layer(wrapped[None], echo_times_s=echoes, b0_tesla=b0)[0, 0].detach()
        errors[weighting] = float((out - truth)[INTERIOR].norm() / truth[INTERIOR].norm())
    assert errors["least_squares"] > 0.5  # the late echoes' wrapped steps wreck the plain fit
    assert errors["reliability"] < 0.5 * errors["least_squares"]


def test_echo_weighting_must_be_known():
    with pytest.raises(ValueError, match="echo_weighting"):
        LoTLayer(1, echo_weighting="median")


def test_lot_layer_refuses_unwrapped_phase_and_bad_echo_times():
    layer = LoTLayer()
    with pytest.raises(ParameterError, match="not wrapped"):
        layer(torch.full((1, 1, 4, 4, 4), 40.0), echo_times_s=[0.01], b0_tesla=3.0)
    with pytest.raises(ParameterError, match="echo times"):
        layer(torch.zeros(1, 2, 4, 4, 4), echo_times_s=[0.01], b0_tesla=3.0)


def test_oalfe_is_the_identity_when_fresh_and_then_follows_the_orientation():
    block = OALFE(3)
    h = torch.randn(2, 3, 5, 5, 5)
    axial, oblique = torch.tensor([[0.0, 0.0, 1.0]] * 2), torch.tensor([[0.0, 0.6, 0.8]] * 2)
    assert torch.equal(block(h, axial), h)
    for mlp in (block.kernel, block.scale, block.shift):
        torch.nn.init.normal_(mlp[-1].weight, std=0.5)
    assert not torch.allclose(block(h, axial), block(h, oblique))
    block(h, oblique).square().sum().backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in block.parameters())


def test_every_branch_of_a_fresh_oalfe_learns():
    """A fresh module is the identity, yet the gradient reaches the editing kernel's and the scale's last
    layers (with both starting at zero, V1·(H*K) had no gradient in either and only the shift learned)."""
    block = OALFE(3)
    h = torch.randn(2, 3, 5, 5, 5)
    oblique = torch.tensor([[0.0, 0.6, 0.8], [0.6, 0.0, 0.8]])
    assert torch.equal(block(h, oblique), h)
    (block(h, oblique) * torch.randn(2, 3, 5, 5, 5)).sum().backward()
    assert float(block.scale[-1].weight.grad.abs().sum()) > 0 and float(block.shift[-1].weight.grad.abs().sum()) > 0
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    optimizer.step()
    optimizer.zero_grad()
    (block(h, oblique) * torch.randn(2, 3, 5, 5, 5)).sum().backward()
    assert float(block.kernel[-1].weight.grad.abs().sum()) > 0  # once the scale moved, the kernel learns too


@pytest.mark.parametrize(("b0", "message"), [(None, "needs the B0"), ((0, 0, 0), "non-zero"), ((0, 0, 2), "unit")])
def test_bad_b0_direction_is_one_clear_error(b0, message):
    with pytest.raises(ParameterError, match=message):
        OALFE(2)(torch.zeros(1, 2, 4, 4, 4), b0)


def test_orientation_adaptive_unet_keeps_the_plain_unet_when_fresh():
    """OA-LFE plugged into the U-Net by a constructor argument: a fresh one computes what the backbone does."""
    torch.manual_seed(0)
    plain = UNet3d(base_channels=2, depth=2).eval()
    torch.manual_seed(0)
    adaptive = UNet3d(base_channels=2, depth=2, orientation_adaptive=True).eval()
    # copy the backbone weights by position (OA blocks wrap the plain ConvBlock as .block)
    backbone = dict(plain.state_dict())
    for name, target in adaptive.state_dict().items():
        if "editors" not in name:
            target.copy_(backbone[name.replace(".block.", ".")])
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(adaptive(x, torch.tensor([0.0, 0.6, 0.8])), plain(x), atol=1e-6)
    with pytest.raises(ParameterError, match="needs the B0"):
        adaptive(x)


@pytest.mark.parametrize("architecture", ["unet", "qsmnet", "xqsm"])
def test_oalfe_plugs_into_every_backbone_and_uses_the_orientation(architecture):
    """Issue 15: U-Net, QSMnet and xQSM take OA-LFE by a constructor argument; trained editors see B0."""
    from torchqsm.models import build_model

    sizes = {"unet": dict(base_channels=2, depth=2), "qsmnet": dict(base_channels=2, depth=1),
             "xqsm": dict(base_channels=4, depth=1)}[architecture]
    net = build_model(architecture, orientation_adaptive=True, **sizes).eval()
    editors = [m for m in net.modules() if isinstance(m, OALFE)]
    assert editors
    for editor in editors:
        torch.nn.init.normal_(editor.scale[-1].weight, std=0.5)
        torch.nn.init.normal_(editor.kernel[-1].weight, std=0.5)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        axial, tilted = net(x, torch.tensor([0.0, 0.0, 1.0])), net(x, torch.tensor([0.0, 0.6, 0.8]))
    assert axial.shape == x.shape and not torch.allclose(axial, tilted)


def test_iqsm_gives_its_unet_no_lot_on_the_faces_of_a_patch():
    """A patch that cuts the brain: the LoT of a face voxel misses a neighbour, so the U-Net never sees it."""
    from torchqsm.models.iqsm import IQSM, stencil_interior

    interior = stencil_interior(torch.ones(1, 1, 6, 6, 6))
    assert not bool(interior[0, 0, [0, -1]].any()) and not bool(interior[0, 0, :, :, [0, -1]].any())
    assert bool(interior[0, 0, 1:-1, 1:-1, 1:-1].all())
    seen = {}
    net = IQSM(base_channels=2, depth=1)
    net.unet.register_forward_hook(lambda module, args, out: seen.update(lot=args[0]))
    ramp = torch.linspace(-3.0, 3.0, 8)[None, None, :, None, None].expand(1, 2, 8, 8, 8)  # a steep phase ramp
    with torch.no_grad():
        net(ramp.contiguous(), torch.ones(1, 1, 8, 8, 8), echo_times_s=[0.004, 0.008], b0_tesla=3.0)
    lot = seen["lot"]
    assert float(lot[..., 0, :, :].abs().max()) == 0.0 and float(lot[..., -1, :, :].abs().max()) == 0.0
    assert float(lot[..., 1:-1, 1:-1, 1:-1].abs().max()) < 1e-3  # a linear phase has no Laplacian


def test_a_card_with_an_unknown_echo_weighting_is_one_clear_error(tmp_path):
    """A hand-edited card: loading says which card and which value, no traceback from deep in the LoT layer."""
    import json

    from torchqsm.errors import InputError
    from torchqsm.models import build_model
    from torchqsm.models.weights import example_card, load_weights, save_weights

    save_weights(build_model("iqsm+", base_channels=2, depth=2),
                 example_card("x", architecture="iqsm+", base_channels=2, depth=2), tmp_path, "x")
    card = json.loads((tmp_path / "x.json").read_text())
    card["hyperparameters"]["echo_weighting"] = "median"
    (tmp_path / "x.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match="x.json.*echo_weighting must be one of"):
        load_weights(str(tmp_path / "x.json"))
    with pytest.raises(ParameterError, match="architecture 'iqsm': echo_weighting"):
        build_model("iqsm", echo_weighting="median")
