r"""The alternating direction method of multipliers (scaled form).

Solves :math:`\min_x F(x) + G(Kx)` through the split :math:`z = Kx`:

.. math::

   x_{k+1} &= \arg\min_x F(x) + \tfrac{\rho}{2}\lVert Kx - z_k + u_k\rVert^2 \\
   z_{k+1} &= \operatorname{prox}_{G/\rho}(K x_{k+1} + u_k) \\
   u_{k+1} &= u_k + K x_{k+1} - z_{k+1}

(Boyd et al. 2011, doi:10.1561/2200000016). The caller supplies the
:math:`x` step (often closed-form in k-space for QSM) and the proximal map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .status import SolverStatus, StatusCallback, relative_update

__all__ = ["admm"]


def admm(
    *,
    x_step: Callable[[torch.Tensor], torch.Tensor],
    prox: Callable[[torch.Tensor], torch.Tensor],
    split: Callable[[torch.Tensor], torch.Tensor],
    initial: torch.Tensor,
    max_iterations: int = 100,
    tolerance: float = 1e-3,
    callback: StatusCallback | None = None,
) -> torch.Tensor:
    r"""Scaled-form ADMM.

    Parameters
    ----------
    x_step
        Given :math:`v = z_k - u_k`, return :math:`\arg\min_x F(x) + \tfrac{\rho}{2}\lVert Kx - v\rVert^2`.
    prox
        :math:`\operatorname{prox}_{G/\rho}`; it must return a new tensor and leave its
        argument unchanged.
    split
        The linear map :math:`K`.
    initial
        :math:`x_0`; :math:`z_0 = K x_0`, :math:`u_0 = 0`.
    max_iterations
        Iteration limit.
    tolerance
        Stop when :math:`\lVert x_{k+1}-x_k\rVert / \lVert x_{k+1}\rVert` ≤ ``tolerance``
        (the stopping rule of FANSI, Milovic et al. 2018); an all-zero iterate never
        counts as converged.
    callback
        Called with a :class:`SolverStatus` (``residual`` = relative update);
        returning ``True`` stops.

    Examples
    --------
    Soft-thresholding recovers the lasso solution of :math:`\tfrac12(x-4)^2 + |x|`:

    >>> shrink = lambda v: torch.sign(v) * torch.clamp(v.abs() - 1.0, min=0.0)
    >>> x = admm(x_step=lambda v: (4.0 + v) / 2.0, prox=shrink, split=lambda x: x,
    ...          initial=torch.zeros(1, dtype=torch.float64), max_iterations=200, tolerance=0)
    >>> round(float(x), 4)
    3.0
    """
    x = initial.clone()
    z = split(x)
    u = torch.zeros_like(z)
    for iteration in range(1, max_iterations + 1):
        x_new = x_step(z - u)
        # u <- u + Kx; z = prox(u); u <- u - z: the textbook updates, with one buffer less.
        u.add_(split(x_new))
        z = prox(u)
        u.sub_(z)
        relative = relative_update(x_new - x, x_new)  # inf for ADMM's frequent all-zero first step
        x = x_new
        converged = relative <= tolerance
        if callback is not None and callback(SolverStatus(iteration, x, relative, converged)):
            break
        if tolerance > 0 and converged:
            break
    return x
