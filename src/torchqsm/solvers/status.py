"""The status record every iterative solver passes to its callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["SolverStatus", "StatusCallback"]


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
