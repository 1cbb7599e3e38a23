r"""LoT: the Laplacian of the unwrapped phase computed from the wrapped phase.

The phase is a smooth periodic 3-D sum of sinusoids on a (96, 96, 80) grid
(voxel 1 × 0.8 × 1.5 mm) spanning ±10.04 rad, so it wraps several times,
with at most 0.281 rad between neighbours. Periodic, so that the periodic
Laplacians see no jump at the grid's edge.

Measured ``max |LoT(wrapped) − L(phase)| / max |L(phase)|``:

==========  ========  =====
stencil     measured  bound
==========  ========  =====
``"7"``     0.0132    0.03
``"27"``    0.0323    0.05
``"fft"``   1.2e-12   1e-10
==========  ========  =====

The stencils' error is :math:`O(\Delta\varphi^2)` relative (it quarters when the
phase is halved); the continuous ("fft") Laplacian satisfies the identity exactly,
up to the band limit of :math:`\sin\varphi`, :math:`\cos\varphi`.
"""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.physics import LaplacianOp, laplacian_of_wrapped_phase

GRID = (96, 96, 80)
VOXEL_SIZE_MM = (1.0, 0.8, 1.5)
BOUNDS = {"7": 0.03, "27": 0.05, "fft": 1e-10}


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_phase(scale: float = 1.0, dtype=torch.float64) -> torch.Tensor:
    x, y, z = (torch.arange(n, dtype=dtype) * (2 * math.pi / n) for n in GRID)
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    return scale * (4.0 * torch.sin(x) + 3.5 * torch.sin(y) + 2.5 * torch.cos(z) + 0.3 * torch.sin(x + y + z))


def wrap(phase: torch.Tensor) -> torch.Tensor:
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


def laplacian(stencil: str, dtype=torch.float64) -> LaplacianOp:
    return LaplacianOp(GRID, voxel_size_mm=VOXEL_SIZE_MM, stencil=stencil, dtype=dtype)


def relative_error(stencil: str, scale: float = 1.0) -> float:
    phase = smooth_phase(scale)
    L = laplacian(stencil)
    reference = L(phase)
    error = laplacian_of_wrapped_phase(wrap(phase), L) - reference
    return float(error.abs().max() / reference.abs().max())


def test_phase_is_what_the_tests_claim():
    phase = smooth_phase()
    assert float(phase.max()) > 9.5 and float(phase.min()) < -9.5
    steps = max(float((phase - torch.roll(phase, 1, dims=a)).abs().max()) for a in range(3))
    assert steps < 0.3
    assert float((wrap(phase) - phase).abs().max()) > 3 * math.pi  # it wraps, more than once


@pytest.mark.parametrize("stencil", list(BOUNDS))
def test_lot_of_wrapped_phase_equals_laplacian_of_phase(stencil):
    assert relative_error(stencil) < BOUNDS[stencil]


@pytest.mark.parametrize("stencil", ["7", "27"])
def test_stencil_error_is_second_order_in_phase_steps(stencil):
    """Halving the phase quarters the relative error (measured ratio 3.99 for 7-point, 3.95 for 27-point)."""
    ratio = relative_error(stencil) / relative_error(stencil, scale=0.5)
    assert 3.5 < ratio < 4.5


@pytest.mark.parametrize("stencil", list(BOUNDS))
def test_lot_is_invariant_to_whole_wraps(stencil, torch_rng):
    """The key property: adding 2π·k(x) for any integer field k changes nothing.

    Measured change: < 1e-12 of max |LoT| (sin/cos of φ + 2πk are rounded differently).
    """
    phase = wrap(smooth_phase())
    k = torch.randint(-3, 4, GRID, generator=torch_rng).to(torch.float64)
    L = laplacian(stencil)
    lot = laplacian_of_wrapped_phase(phase, L)
    shifted = laplacian_of_wrapped_phase(phase + 2 * math.pi * k, L)
    assert float((shifted - lot).abs().max()) < 1e-11 * float(lot.abs().max())


def test_lot_keeps_dtype_and_batch_axes():
    L = laplacian("7", dtype=torch.float32)
    phase = torch.stack([smooth_phase(), smooth_phase(0.5)]).to(torch.float32)
    lot = laplacian_of_wrapped_phase(wrap(phase), L)
    assert lot.dtype == torch.float32 and tuple(lot.shape) == (2, *GRID)
    torch.testing.assert_close(lot[1], laplacian_of_wrapped_phase(wrap(phase[1]), L))
    reference = L(phase[0].double())
    assert float((lot[0].double() - reference).abs().max() / reference.abs().max()) < BOUNDS["7"]
