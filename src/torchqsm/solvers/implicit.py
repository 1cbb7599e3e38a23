r"""A conjugate-gradient solve that autograd differentiates implicitly.

For :math:`x^\star = A(\theta)^{-1} b` with :math:`A` symmetric positive
definite, the vector-Jacobian products follow from the implicit function
theorem rather than from the unrolled iterations:

.. math::

   \bar b = A^{-1}\bar x, \qquad
   \bar\theta = -\Big(\frac{\partial (A(\theta) x^\star)}{\partial\theta}\Big)^{\!\top} \bar b .

So a network can hold a data-consistency solve (NoQSM-net, MoDL) with memory
independent of the number of CG iterations; the backward pass costs one more
CG solve. Cf. mrpro's ``ConjugateGradientOp`` and Aggarwal et al., MoDL,
IEEE TMI 2019;38:394, doi:10.1109/TMI.2018.2865356.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .cg import cg

__all__ = ["implicit_cg"]

GramFunction = Callable[..., torch.Tensor]


class _ImplicitCG(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gram, max_iterations, tolerance, rhs, *params):  # noqa: D102
        def apply(x):
            return gram(x, *params)

        solution = cg(apply, rhs.detach(), max_iterations=max_iterations, tolerance=tolerance)
        ctx.gram, ctx.max_iterations, ctx.tolerance = gram, max_iterations, tolerance
        ctx.save_for_backward(solution, *params)
        return solution

    @staticmethod
    def backward(ctx, grad_solution):  # noqa: D102
        solution, *params = ctx.saved_tensors
        gram = ctx.gram

        def apply(x):
            return gram(x, *params)

        adjoint_solution = cg(apply, grad_solution, max_iterations=ctx.max_iterations, tolerance=ctx.tolerance)
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        wanted = [i for i, p in enumerate(params) if ctx.needs_input_grad[4 + i]]
        if wanted:
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_(i in wanted) for i, p in enumerate(params)]
                applied = gram(solution.detach(), *leaves)
                grads = torch.autograd.grad(applied, [leaves[i] for i in wanted], grad_outputs=-adjoint_solution,
                                            allow_unused=True)
            for i, g in zip(wanted, grads):
                grad_params[i] = g
        grad_rhs = adjoint_solution if ctx.needs_input_grad[3] else None
        return (None, None, None, grad_rhs, *grad_params)


def implicit_cg(
    gram: GramFunction,
    rhs: torch.Tensor,
    *params: torch.Tensor,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
) -> torch.Tensor:
    r"""Solve :math:`A(\theta)\,x = b` by CG, differentiable in :math:`b` and :math:`\theta`.

    Parameters
    ----------
    gram
        ``gram(x, *params)`` applies the symmetric positive definite :math:`A(\theta)`;
        it must be differentiable in ``params`` (plain torch operations).
    rhs
        :math:`b`.
    *params
        Tensors :math:`\theta` that :math:`A` depends on (e.g. a learned
        regularisation weight); gradients reach them implicitly.
    max_iterations, tolerance
        Of both the forward and the backward CG solve (see :func:`cg`).

    Returns
    -------
    torch.Tensor
        :math:`x^\star`, with a backward pass by implicit differentiation.

    Examples
    --------
    >>> lam = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    >>> b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    >>> x = implicit_cg(lambda x, lam: (1.0 + lam) * x, b, lam)   # x = b / (1 + λ)
    >>> x.backward()
    >>> round(float(b.grad), 6), round(float(lam.grad), 6)          # 1/(1+λ), -b/(1+λ)²
    (0.333333, -0.333333)
    """
    return _ImplicitCG.apply(gram, max_iterations, tolerance, rhs, *params)
