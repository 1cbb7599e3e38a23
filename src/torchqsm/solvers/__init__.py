"""Iterative solvers written against operators: CG, implicit-differentiation CG, ADMM, gradient descent."""

from .admm import admm
from .cg import cg
from .gradient_descent import gradient_descent
from .implicit import implicit_cg
from .status import SolverStatus, StatusCallback, relative_update

__all__ = ["cg", "implicit_cg", "admm", "gradient_descent", "SolverStatus", "StatusCallback", "relative_update"]
