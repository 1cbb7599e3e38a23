"""Solvers against closed-form answers; implicit CG against finite differences."""

from __future__ import annotations

import pytest
import torch

from torchqsm.physics import DipoleOp, GradientOp, MaskOp
from torchqsm.solvers import SolverStatus, admm, cg, gradient_descent, implicit_cg


def _spd(n: int, generator: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, n, dtype=torch.float64, generator=generator)
    return q @ q.T + n * torch.eye(n, dtype=torch.float64)


def test_cg_matches_dense_solve(torch_rng):
    a = _spd(30, torch_rng)
    b = torch.randn(30, dtype=torch.float64, generator=torch_rng)
    x = cg(lambda v: a @ v, b, max_iterations=100, tolerance=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-9)


def test_cg_callback_reports_decreasing_residual_and_can_stop(torch_rng):
    a = _spd(40, torch_rng)
    b = torch.randn(40, dtype=torch.float64, generator=torch_rng)
    seen: list[SolverStatus] = []
    cg(lambda v: a @ v, b, max_iterations=50, tolerance=1e-14, callback=lambda s: seen.append(s) or s.iteration == 5)
    assert [s.iteration for s in seen] == [1, 2, 3, 4, 5]
    assert seen[-1].residual < seen[0].residual < 1.0


def test_cg_respects_tolerance_and_initial_guess(torch_rng):
    a = _spd(20, torch_rng)
    b = torch.randn(20, dtype=torch.float64, generator=torch_rng)
    exact = torch.linalg.solve(a, b)
    x = cg(lambda v: a @ v, b, tolerance=1e-3, max_iterations=100)
    relative = torch.linalg.norm(b - a @ x) / torch.linalg.norm(b)
    assert relative <= 1e-3
    iterations = []
    cg(lambda v: a @ v, b, initial=exact, tolerance=1e-8, callback=lambda s: iterations.append(s.iteration))
    assert iterations == []  # the exact initial guess needs no iteration
    assert torch.all(cg(lambda v: a @ v, torch.zeros(20, dtype=torch.float64)) == 0)


def test_preconditioned_cg_matches_dense_solve_in_fewer_iterations(torch_rng):
    # A badly scaled system (diagonal spanning 6 decades plus a coupling): the Jacobi
    # preconditioner makes it well conditioned, so PCG needs far fewer steps than CG.
    n = 60
    scale = torch.logspace(0, 6, n, dtype=torch.float64)
    q = torch.randn(n, n, dtype=torch.float64, generator=torch_rng) / n
    a = torch.diag(scale) + scale.sqrt()[:, None] * (q @ q.T) * scale.sqrt()[None, :]
    b = torch.randn(n, dtype=torch.float64, generator=torch_rng)
    exact = torch.linalg.solve(a, b)
    steps = {}
    for name, pre in (("plain", None), ("jacobi", lambda r: r / torch.diagonal(a))):
        seen = []
        x = cg(lambda v: a @ v, b, max_iterations=500, tolerance=1e-10, preconditioner=pre,
               callback=lambda s: seen.append(s.iteration) and False)
        torch.testing.assert_close(x, exact, rtol=1e-6, atol=1e-9)
        steps[name] = len(seen)
    assert steps["jacobi"] * 3 < steps["plain"], steps


def test_cg_inverts_regularised_dipole_normal_equations(torch_rng):
    shape = (12, 10, 9)
    dipole = DipoleOp(shape, voxel_size_mm=(1.0, 1.0, 1.5), b0_dir=(0.2, 0.3, 0.93), dtype=torch.float64)
    grad = GradientOp(voxel_size_mm=(1.0, 1.0, 1.5))
    chi = torch.randn(shape, dtype=torch.float64, generator=torch_rng)
    normal = dipole.gram + 0.05 * grad.gram + 1e-3 * MaskOp(torch.ones(shape, dtype=torch.bool))
    rhs = normal(chi)
    x = cg(normal, rhs, max_iterations=500, tolerance=1e-10)
    torch.testing.assert_close(x, chi, rtol=1e-6, atol=1e-6)


def test_implicit_cg_gradient_matches_finite_differences(torch_rng):
    n = 6
    a = _spd(n, torch_rng)

    def gram(x, lam, w):
        return a @ x + lam * x + w * w * x

    b = torch.randn(n, dtype=torch.float64, generator=torch_rng, requires_grad=True)
    lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    w = torch.rand(n, dtype=torch.float64, generator=torch_rng).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda b, lam, w: implicit_cg(gram, b, lam, w, max_iterations=200, tolerance=1e-13),
        (b, lam, w), eps=1e-6, atol=1e-6,
    )


def test_implicit_cg_backward_memory_is_independent_of_iterations(torch_rng):
    # The graph holds the solution, not the iterations: one node regardless of max_iterations.
    a = _spd(5, torch_rng)
    b = torch.randn(5, dtype=torch.float64, generator=torch_rng, requires_grad=True)
    x = implicit_cg(lambda v: a @ v, b, max_iterations=500, tolerance=1e-12)
    assert x.grad_fn is not None and len(x.grad_fn.next_functions) == 1
    (x.sum()).backward()
    torch.testing.assert_close(b.grad, torch.linalg.solve(a, torch.ones(5, dtype=torch.float64)))


def test_admm_solves_lasso_in_closed_form():
    shrink = lambda v: torch.sign(v) * torch.clamp(v.abs() - 0.5, min=0.0)  # prox of |z| with rho = 2
    target = torch.tensor([3.0, 0.2, -2.0], dtype=torch.float64)
    # min 1/2|x - t|^2 + |x|  ->  soft(t, 1); x-step with rho = 2: (t + 2 v) / 3
    x = admm(x_step=lambda v: (target + 2.0 * v) / 3.0, prox=shrink, split=lambda x: x,
             initial=torch.zeros(3, dtype=torch.float64), max_iterations=500, tolerance=0)
    torch.testing.assert_close(x, torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64), atol=1e-8, rtol=0)


def test_gradient_descent_converges_and_stops_on_tolerance():
    calls = []
    x = gradient_descent(lambda x: 2.0 * (x - 1.5), torch.zeros(4, dtype=torch.float64), step_size=0.25,
                         max_iterations=1000, tolerance=1e-10, callback=lambda s: calls.append(s.iteration))
    torch.testing.assert_close(x, torch.full((4,), 1.5, dtype=torch.float64))
    assert len(calls) < 100


@pytest.mark.parametrize("bad", [dict(step_size=0.0), dict(step_size=-1.0)])
def test_gradient_descent_rejects_bad_step(bad):
    with pytest.raises(ValueError, match="step_size"):
        gradient_descent(lambda x: x, torch.zeros(1), **bad)


def test_cg_rejects_bad_limits():
    with pytest.raises(ValueError, match="max_iterations"):
        cg(lambda x: x, torch.ones(2), max_iterations=-1)


def test_admm_does_not_stop_on_its_first_all_zero_iterate():
    # The first x step from zero returns zero; that is no convergence (a regression: TV returned zeros).
    iterations = []
    target = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x = admm(x_step=lambda v: v, prox=lambda v: 0.5 * (v + target), split=lambda x: x,
             initial=torch.zeros(2, dtype=torch.float64), max_iterations=200, tolerance=1e-9,
             callback=lambda s: iterations.append(s.iteration))
    assert len(iterations) >= 2
    torch.testing.assert_close(x, target, atol=1e-6, rtol=0)
