"""The status record every iterative solver passes to its callback."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["SolverStatus", "StatusCallback", "relative_update"]


@dataclass(frozen=True)
class SolverStatus:
    """One iteration's state, passed to ``callback`` after each iteration.

    Attributes
    ----------
    iteration
        1-based iteration count.
    solution
        The current iterate (not a copy: do not modify it).
    residual
        The solver's convergence measure (documented per solver).
    converged
        Whether ``residual`` has reached the tolerance.
    """

    iteration: int
    solution: torch.Tensor
    residual: float
    converged: bool


#: A status callback; returning ``True`` stops the solver early.
StatusCallback = Callable[[SolverStatus], "bool | None"]


def relative_update(step: torch.Tensor, solution: torch.Tensor) -> float:
    r""":math:`\lVert\delta\rVert / \lVert x\rVert`, the iterative methods' stopping measure.

    An all-zero iterate gives ``inf``: starting from zero, it has not converged.
    """
    norm = float(torch.linalg.vector_norm(solution))
    return float(torch.linalg.vector_norm(step)) / norm if norm > 0 else math.inf
