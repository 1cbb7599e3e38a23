r"""Linear operators that read like the maths.

A :class:`LinearOperator` maps tensors shaped ``(..., X, Y, Z)`` (some to
``(..., 3, X, Y, Z)``). It knows its ``forward`` and hand-written ``adjoint``;
``A.H`` is the adjoint operator, ``A.gram`` is :math:`A^H A`, ``A @ B`` composes,
``A + B`` adds, ``s * A`` scales. Operators hold no learned weights, only fixed
buffers (kernels, masks, weights), and work on CPU and CUDA in float32 or
float64: buffers follow the input's device and real dtype.

Every operator below joins the contract list in
``tests/physics/test_operator_contract.py`` (adjointness, ``gram == H @ A``,
autograd agreement with the adjoint, odd/even sizes, anisotropic voxels,
oblique B0, float32/float64).

Examples
--------
>>> import torch
>>> x = torch.randn(8, 8, 8, dtype=torch.float64)
>>> A = DipoleOp((8, 8, 8), voxel_size_mm=(1.0, 1.0, 2.0), b0_dir=(0.0, 0.6, 0.8))
>>> y = torch.randn(8, 8, 8, dtype=torch.float64)
>>> bool(torch.isclose((A(x) * y).sum(), (x * A.H(y)).sum()))
True
"""

from .base import IdentityOp, LinearOperator
from .fourier import DipoleOp, FourierMultiplierOp, LaplacianOp
from .gradient import GradientOp
from .pointwise import MaskOp, PadOp, WeightOp, bounding_box, padding_for

__all__ = [
    "LinearOperator",
    "IdentityOp",
    "FourierMultiplierOp",
    "DipoleOp",
    "PadOp",
    "padding_for",
    "bounding_box",
    "WeightOp",
    "MaskOp",
    "GradientOp",
    "LaplacianOp",
]
