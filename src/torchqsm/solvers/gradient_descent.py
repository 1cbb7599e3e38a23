r"""Gradient descent with a fixed step and a relative-update stopping rule."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .status import SolverStatus, StatusCallback, relative_update

__all__ = ["gradient_descent"]


def gradient_descent(
    gradient: Callable[[torch.Tensor], torch.Tensor],
    initial: torch.Tensor,
    *,
    step_size: float,
    max_iterations: int = 100,
    tolerance: float = 0.0,
    callback: StatusCallback | None = None,
) -> torch.Tensor:
    r"""Iterate :math:`x_{k+1} = x_k - \tau \nabla E(x_k)`.

    Parameters
    ----------
    gradient
        :math:`x \mapsto \nabla E(x)`.
    initial
        :math:`x_0`.
    step_size
        :math:`\tau > 0`.
    max_iterations
        Iteration limit.
    tolerance
        Stop when the relative update :math:`\lVert x_{k+1}-x_k\rVert/\lVert x_{k+1}\rVert`
        falls to ``tolerance`` (0 runs all iterations).
    callback
        Called with a :class:`SolverStatus` (``residual`` = relative update);
        returning ``True`` stops (early stopping rules live here).

    Examples
    --------
    >>> x = gradient_descent(lambda x: x - 3.0, torch.zeros(2, dtype=torch.float64),
    ...                      step_size=0.5, max_iterations=60)
    >>> [round(v, 6) for v in x.tolist()]
    [3.0, 3.0]
    """
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    x = initial.clone()
    for iteration in range(1, max_iterations + 1):
        update = gradient(x) * step_size
        x = x - update
        relative = relative_update(update, x)
        converged = relative <= tolerance
        if callback is not None and callback(SolverStatus(iteration, x, relative, converged)):
            break
        if tolerance > 0 and converged:
            break
    return x
