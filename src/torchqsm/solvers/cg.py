r"""Conjugate gradient for symmetric positive (semi-)definite operators.

Solves :math:`A x = b` by minimising :math:`\tfrac12 x^\top A x - b^\top x`
(Hestenes & Stiefel 1952, doi:10.6028/jres.049.044). Inner products run over
all axes, so a batch is solved as one block-diagonal system.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .status import SolverStatus, StatusCallback

__all__ = ["cg"]

Operator = Callable[[torch.Tensor], torch.Tensor]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.vdot(a.reshape(-1), b.reshape(-1)).real if a.is_complex() else torch.dot(a.reshape(-1), b.reshape(-1))


def cg(
    operator: Operator,
    rhs: torch.Tensor,
    *,
    initial: torch.Tensor | None = None,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    callback: StatusCallback | None = None,
    preconditioner: Operator | None = None,
) -> torch.Tensor:
    r"""Conjugate gradient for :math:`A x = b`, :math:`A` symmetric positive definite.

    Parameters
    ----------
    operator
        The operator :math:`A` (a :class:`~torchqsm.physics.LinearOperator` or any callable).
    rhs
        Right-hand side :math:`b`, any shape :math:`A` accepts.
    initial
        Starting point :math:`x_0` (default zeros).
    max_iterations
        Iteration limit (each iteration applies :math:`A` once).
    tolerance
        Stop when :math:`\lVert b - A x_k\rVert \le \text{tolerance}\,\lVert b\rVert`.
    callback
        Called with a :class:`SolverStatus` (``residual`` = relative residual norm)
        after each iteration; returning ``True`` stops.
    preconditioner
        :math:`P \approx A^{-1}`, symmetric positive definite (preconditioned CG: the search
        directions are :math:`A`-conjugate in the :math:`P`-weighted residuals). The stopping
        rule and ``residual`` stay the plain :math:`\lVert b - A x_k\rVert / \lVert b\rVert`.

    Returns
    -------
    torch.Tensor
        The approximate solution :math:`x`.

    Examples
    --------
    >>> A = lambda x: torch.tensor([4.0, 2.0], dtype=torch.float64) * x
    >>> cg(A, torch.tensor([8.0, 2.0], dtype=torch.float64)).tolist()
    [2.0, 1.0]
    """
    if max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    x = torch.zeros_like(rhs) if initial is None else initial.clone()
    residual = rhs - operator(x) if initial is not None else rhs.clone()
    rhs_norm = torch.linalg.vector_norm(rhs)
    if float(rhs_norm) == 0.0:
        return torch.zeros_like(rhs)
    rr = _dot(residual, residual)
    z = residual if preconditioner is None else preconditioner(residual)
    direction = z.clone()
    rz = rr if preconditioner is None else _dot(residual, z)
    threshold = (tolerance * rhs_norm) ** 2
    for iteration in range(1, max_iterations + 1):
        if rr <= threshold:
            break
        a_direction = operator(direction)
        curvature = _dot(direction, a_direction)
        if curvature <= 0:  # not positive definite along this direction, or converged exactly
            break
        alpha = rz / curvature
        x.add_(alpha * direction)
        residual.sub_(alpha * a_direction)
        rr = _dot(residual, residual)
        z = residual if preconditioner is None else preconditioner(residual)
        rz_new = rr if preconditioner is None else _dot(residual, z)
        direction.mul_(rz_new / rz).add_(z)
        rz = rz_new
        if callback is not None:
            relative = float(torch.sqrt(rr) / rhs_norm)
            if callback(SolverStatus(iteration, x, relative, relative <= tolerance)):
                break
    return x
