r"""Laplacian of the wrapped phase through the trigonometric identity (LoT).

For a phase :math:`\varphi` known only modulo :math:`2\pi`,

.. math:: \nabla^2\varphi = \cos\varphi\,\nabla^2\sin\varphi - \sin\varphi\,\nabla^2\cos\varphi ,

which is insensitive to the wraps (Schofield & Zhu 2003; the "LoT" layer of
iQSM, Gao et al. 2022). With a discrete Laplacian the identity holds up to
:math:`O(\Delta\varphi^3)` per neighbour (it sums :math:`\sin\Delta\varphi` where the
Laplacian sums :math:`\Delta\varphi`), so it is accurate where neighbouring voxels
differ by well under π.

References
----------
Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric
applications. Opt Lett 2003;28:1194–1196. doi:10.1364/OL.28.001194

Gao Y, Xiong Z, Fazlollahi A, et al. Instant tissue field and magnetic
susceptibility mapping from MRI raw phase using Laplacian enhanced deep neural
networks. NeuroImage 2022;259:119410. doi:10.1016/j.neuroimage.2022.119410
"""

from __future__ import annotations

import torch

from .operators import LinearOperator

__all__ = ["laplacian_of_wrapped_phase"]


def laplacian_of_wrapped_phase(wrapped_phase_rad: torch.Tensor, laplacian: LinearOperator) -> torch.Tensor:
    """LoT: the Laplacian (rad/mm²) of the unwrapped phase from the wrapped phase (rad).

    Parameters
    ----------
    wrapped_phase_rad
        Wrapped phase (rad), shape ``(..., X, Y, Z)``.
    laplacian
        A Laplacian operator, e.g. :class:`~torchqsm.physics.operators.LaplacianOp`.

    Examples
    --------
    Phase spanning ±12 rad (several wraps), at most 0.6 rad between neighbours
    (the error is then a few per cent):

    >>> from torchqsm.physics.operators import LaplacianOp
    >>> x = torch.arange(128, dtype=torch.float64) / 128
    >>> phase = (12.0 * torch.sin(2 * torch.pi * x))[:, None, None].expand(128, 4, 4)
    >>> wrapped = torch.angle(torch.exp(1j * phase))
    >>> L = LaplacianOp((128, 4, 4), stencil="7", dtype=torch.float64)
    >>> error = laplacian_of_wrapped_phase(wrapped, L) - L(phase)
    >>> bool(error.abs().max() < 0.1 * L(phase).abs().max())
    True
    """
    sin, cos = torch.sin(wrapped_phase_rad), torch.cos(wrapped_phase_rad)
    return cos * laplacian(sin) - sin * laplacian(cos)
