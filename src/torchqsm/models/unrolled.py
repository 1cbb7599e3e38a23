r"""Data-consistent networks: the dipole physics inside the network, at the data's own geometry.

Three families from ``../shared/papers`` and their references, each an ``nn.Module`` whose
``forward(field, mask, b0_dir, voxel_size_mm, chi_to_field=...)`` applies the real dipole
operator of each sample's B0 direction and voxel size (:class:`BatchDipole`), so an oblique or
anisotropic acquisition needs no rotation or resampling of the data:

- :class:`LPCNN`: learned proximal gradient descent (Lai, Aggarwal, van Zijl, Li, Sulam 2020):
  :math:`\chi_{k+1} = R_\omega(\chi_k - \alpha D^H M (D\chi_k - f))`, ``iterations`` times from
  :math:`\chi_0 = 0`, one residual CNN :math:`R_\omega` shared by every iteration, learnable
  :math:`\alpha > 0`.
- :class:`NoQSM`: NoQSM-net (Zhang, Guo, Chen 2024): a data-consistency solve
  :math:`\chi = (D^H M D + \lambda I)^{-1}(D^H M f + \lambda\varphi)` alternating with the residual
  CNN :math:`\varphi = R_\omega(\chi)`, learnable :math:`\lambda > 0`. The solve is conjugate
  gradient with gradients by implicit differentiation
  (:func:`~torchqsm.solvers.implicit.implicit_cg`: training memory does not grow with the CG
  iterations) or, for ``solver="sd"`` (NoQSM-SD, the paper's ablation), unrolled steepest
  descent with exact line search.
- :class:`VarNet`: the dipole-inversion stage of NeXtQSM (Cognolato et al. 2023), a variational
  network: :math:`\chi_{s+1} = \chi_s - \lambda_s D^H M(D\chi_s - f) - \Psi_s(\chi_s)` for
  ``stages`` steps from :math:`\chi_0 = f`, a small U-Net :math:`\Psi_s` per stage, learnable
  :math:`\lambda_s > 0`. The paper's data term is an L1 norm; its gradient (a sign) carries no
  magnitude, so this uses the L2 term's gradient, as Hammernik's variational networks do.

Units. The networks see fields and χ in network units (:class:`~torchqsm.models.Normalization`):
:math:`x = f/s_\mathrm{in}`, :math:`y = \chi/s_\mathrm{out}`, so in network units the dipole model
reads :math:`x = r\,D y` with ``chi_to_field`` :math:`r = s_\mathrm{out}/s_\mathrm{in}`. Inside, the
data term is written for :math:`x/r = Dy`, so the Gram operator :math:`D^H M D` has eigenvalues in
[0, 4/9] whatever the normalisation, and the step sizes and λ below mean the same for every card.
The mask :math:`M` is the data weight: the field is known only inside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..physics.kernels import dipole_kernel
from ..solvers.implicit import implicit_cg
from .unet import UNet3d

__all__ = ["BatchDipole", "ResidualCNN", "LPCNN", "NoQSM", "VarNet", "PHYSICS_ARCHITECTURES"]

_DIMS = (-3, -2, -1)


def _next_even(n: int) -> int:
    return n + (n % 2)


class BatchDipole:
    r"""The dipole convolution of a batch, each sample at its own B0 direction and voxel size.

    ``x`` of shape ``(N, C, X, Y, Z)`` (χ) → :math:`P^\top F^{-1} D_n F P x_n` (field), zero padded
    by ``pad`` voxels per axis (at the end of each axis: a circular convolution commutes with
    shifts) with the point-sampled k-space kernel of sample ``n``, DC 0. Real and even, so
    self-adjoint.
    """

    def __init__(self, shape: Sequence[int], b0_dir: torch.Tensor, voxel_size_mm: torch.Tensor, *, pad: int = 16,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.grid = tuple(_next_even(n + 2 * int(pad)) for n in self.shape)
        b0 = torch.as_tensor(b0_dir, dtype=torch.float64).reshape(-1, 3)
        voxel = torch.as_tensor(voxel_size_mm, dtype=torch.float64).reshape(-1, 3)
        if len(voxel) == 1 and len(b0) > 1:
            voxel = voxel.expand(len(b0), 3)
        kernels = [dipole_kernel(self.grid, voxel_size_mm=v.tolist(), b0_dir=b.tolist(), dtype=dtype, device=device)
                   for b, v in zip(b0, voxel)]
        self.kernel = torch.stack(kernels)[:, None]  # (N, 1, X', Y', Z'//2+1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfftn(x, s=self.grid, dim=_DIMS) * self.kernel.to(x.device)
        out = torch.fft.irfftn(spectrum, s=self.grid, dim=_DIMS)
        return out[..., : self.shape[0], : self.shape[1], : self.shape[2]]


def _geometry(x: torch.Tensor, b0_dir, voxel_size_mm) -> tuple[torch.Tensor, torch.Tensor]:
    """B0 directions and voxel sizes as ``(N, 3)`` tensors, checked (one clear error for a bad record)."""
    from ..errors import ParameterError

    if b0_dir is None or voxel_size_mm is None:
        raise ParameterError("a data-consistent network needs the B0 direction and the voxel size of its input")
    b0 = torch.as_tensor(b0_dir, dtype=torch.float64).reshape(-1, 3)
    voxel = torch.as_tensor(voxel_size_mm, dtype=torch.float64).reshape(-1, 3)
    if len(b0) == 1:
        b0 = b0.expand(x.shape[0], 3)
    if len(voxel) == 1:
        voxel = voxel.expand(x.shape[0], 3)
    norms = torch.linalg.vector_norm(b0, dim=1)
    if not bool(torch.isfinite(b0).all()) or bool((norms < 1e-6).any()):
        raise ParameterError(f"the B0 direction must be a finite, non-zero vector, got {b0.tolist()}")
    if not bool(torch.isfinite(voxel).all()) or bool((voxel <= 0).any()):
        raise ParameterError(f"the voxel size must be positive (mm), got {voxel.tolist()}")
    if len(b0) != x.shape[0] or len(voxel) != x.shape[0]:
        raise ParameterError(f"{len(b0)} B0 directions and {len(voxel)} voxel sizes for a batch of {x.shape[0]}")
    return b0 / norms[:, None], voxel


class ResidualCNN(nn.Module):
    r"""The prior of LPCNN and NoQSM-net: :math:`R(x) = x + \mathrm{CNN}(x)`.

    A 3×3×3 convolution to ``channels``, ``blocks`` residual blocks (conv–[BN]–ReLU–conv–[BN],
    skip, ReLU), a 1×1×1 convolution to one channel: 18 convolutions for 8 blocks, as in
    NoQSM-net's Fig. 1(c). The last convolution starts at zero, so an untrained prior is the
    identity.
    """

    def __init__(self, channels: int = 32, blocks: int = 8, *, batch_norm: bool = True) -> None:
        super().__init__()
        if channels < 1 or blocks < 0:
            raise ValueError("channels must be positive and blocks non-negative")

        def norm() -> nn.Module:
            return nn.BatchNorm3d(channels) if batch_norm else nn.Identity()

        self.head = nn.Sequential(nn.Conv3d(1, channels, 3, padding=1), norm(), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv3d(channels, channels, 3, padding=1), norm(), nn.ReLU(inplace=True),
                          nn.Conv3d(channels, channels, 3, padding=1), norm()) for _ in range(blocks))
        self.tail = nn.Conv3d(channels, 1, 1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        for block in self.blocks:
            h = F.relu(h + block(h))
        return x + self.tail(h)


class _PhysicsNet(nn.Module):
    """Common parts: ``physics = True`` (callers pass the geometry), ``multiple``, the data term."""

    physics = True

    def __init__(self, pad: int) -> None:
        super().__init__()
        if pad < 0:
            raise ValueError(f"pad must be non-negative, got {pad}")
        self.pad = int(pad)

    @property
    def multiple(self) -> int:
        return 1

    def _operators(self, field, mask, b0_dir, voxel_size_mm, chi_to_field):
        b0, voxel = _geometry(field, b0_dir, voxel_size_mm)
        dipole = BatchDipole(field.shape[-3:], b0, voxel, pad=self.pad, device=field.device, dtype=field.dtype)
        weight = (mask > 0).to(field.dtype) if mask is not None else torch.ones_like(field)
        scale = float(chi_to_field)
        if not scale > 0:
            raise ValueError(f"chi_to_field must be positive, got {chi_to_field}")

        def gram(chi: torch.Tensor) -> torch.Tensor:  # Dᴴ M D
            return dipole(weight * dipole(chi))

        def adjoint_field(f: torch.Tensor) -> torch.Tensor:  # Dᴴ M (f / s): the field in χ's units
            return dipole(weight * f) / scale

        return dipole, gram, adjoint_field, weight


def _positive(value: float) -> nn.Parameter:
    """A parameter ``p`` with ``softplus(p) = value``."""
    return nn.Parameter(torch.tensor(math.log(math.expm1(value)), dtype=torch.float32))


class LPCNN(_PhysicsNet):
    r"""Learned proximal CNN: ``iterations`` proximal gradient steps, one shared residual-CNN prior.

    Parameters
    ----------
    iterations
        Unrolled proximal gradient steps (3 as published).
    channels, blocks, batch_norm
        Of the shared :class:`ResidualCNN` (32 channels, 8 blocks as published).
    step
        Initial gradient step :math:`\alpha` (learned, kept positive). The data term's Lipschitz
        constant is at most 4/9, so steps below 4.5 are stable; 3.5 scored best untrained on
        simulated patches (0.5 / 1 / 2 / 4: relative error 0.93 / 0.87 / 0.79 / 0.71).
    pad
        Zero padding (voxels per side) of the dipole operator inside the network.

    References
    ----------
    Lai K-W, Aggarwal M, van Zijl P, Li X, Sulam J. Learned proximal networks for quantitative
    susceptibility mapping. MICCAI 2020, LNCS 12262:125-135. doi:10.1007/978-3-030-59713-9_13

    Examples
    --------
    >>> net = LPCNN(channels=4, blocks=1)
    >>> field = torch.zeros(2, 1, 8, 8, 8)
    >>> net(field, torch.ones_like(field), b0_dir=[[0, 0, 1], [0, 0.6, 0.8]], voxel_size_mm=[1, 1, 1]).shape
    torch.Size([2, 1, 8, 8, 8])
    """

    def __init__(self, *, iterations: int = 3, channels: int = 32, blocks: int = 8, batch_norm: bool = True,
                 step: float = 3.5, pad: int = 16) -> None:
        super().__init__(pad)
        if iterations < 1 or not step > 0:
            raise ValueError("iterations must be ≥ 1 and step > 0")
        self.iterations = int(iterations)
        self.prior = ResidualCNN(channels, blocks, batch_norm=batch_norm)
        self.raw_step = _positive(step)

    @property
    def step(self) -> torch.Tensor:
        return F.softplus(self.raw_step)

    def forward(self, field: torch.Tensor, mask: torch.Tensor | None = None, *, b0_dir=None, voxel_size_mm=None,
                chi_to_field: float = 1.0) -> torch.Tensor:
        _, gram, adjoint_field, _ = self._operators(field, mask, b0_dir, voxel_size_mm, chi_to_field)
        target = adjoint_field(field)
        chi = self.prior(self.step * target)  # from χ₀ = 0
        for _ in range(self.iterations - 1):
            chi = self.prior(chi - self.step * (gram(chi) - target))
        return chi


class NoQSM(_PhysicsNet):
    r"""NoQSM-net: data-consistency solves alternating with a residual CNN.

    :math:`\chi_0 = (D^H M D + \lambda I)^{-1} D^H M f`; then ``iterations`` times
    :math:`\varphi = R_\omega(\chi_n)`, :math:`\chi_{n+1} = (D^H M D + \lambda I)^{-1}(D^H M f + \lambda\varphi)`.

    Parameters
    ----------
    iterations
        Outer (CNN + solve) iterations; the paper trains with 1 for time.
    solver_iterations
        Iterations of each solve (7 in the paper, its Fig. 7).
    solver
        ``"cg"``: conjugate gradient, differentiated implicitly (``implicit=True``) or unrolled;
        ``"sd"``: steepest descent with exact line search, unrolled (NoQSM-SD).
    channels, blocks, batch_norm
        Of the :class:`ResidualCNN` (32 channels, 8 blocks as published).
    regularization
        Initial :math:`\lambda` (learned, kept positive). Untrained (identity prior) on simulated
        patches, λ = 0.003 / 0.01 / 0.03 / 0.1 / 0.3 gave relative errors 0.63 / 0.62 / 0.62 /
        0.68 / 0.80; 0.05 leaves the prior room in the dipole's cone.
    pad
        Zero padding (voxels per side) of the dipole operator.

    References
    ----------
    Zhang Q, Guo Y, Chen W. NoQSM-net: combining convolutional neural network with numerical
    optimization algorithm for quantitative susceptibility mapping reconstruction. IEEE Access
    2024. doi:10.1109/ACCESS.2024.3368518

    Aggarwal HK, Mani MP, Jacob M. MoDL: model-based deep learning architecture for inverse
    problems. IEEE TMI 2019;38:394-405. doi:10.1109/TMI.2018.2865356

    Examples
    --------
    >>> net = NoQSM(channels=4, blocks=1, solver_iterations=3)
    >>> field = torch.zeros(1, 1, 8, 8, 8)
    >>> net(field, torch.ones_like(field), b0_dir=[0, 0, 1], voxel_size_mm=[1, 1, 1]).shape
    torch.Size([1, 1, 8, 8, 8])
    """

    def __init__(self, *, iterations: int = 1, solver_iterations: int = 7, solver: str = "cg", implicit: bool = True,
                 channels: int = 32, blocks: int = 8, batch_norm: bool = True, regularization: float = 0.05,
                 pad: int = 16) -> None:
        super().__init__(pad)
        if solver not in ("cg", "sd"):
            raise ValueError(f"solver must be 'cg' or 'sd', got {solver!r}")
        if iterations < 1 or solver_iterations < 1 or not regularization > 0:
            raise ValueError("iterations and solver_iterations must be ≥ 1 and regularization > 0")
        self.iterations, self.solver_iterations = int(iterations), int(solver_iterations)
        self.solver, self.implicit = solver, bool(implicit)
        self.prior = ResidualCNN(channels, blocks, batch_norm=batch_norm)
        self.raw_regularization = _positive(regularization)

    @property
    def regularization(self) -> torch.Tensor:
        return F.softplus(self.raw_regularization)

    def _solve(self, gram, rhs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        def system(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
            return gram(x) + lam * x

        if self.solver == "cg" and self.implicit:
            return implicit_cg(system, rhs, lam, max_iterations=self.solver_iterations, tolerance=0.0)
        if self.solver == "cg":
            return _unrolled_cg(lambda x: system(x, lam), rhs, self.solver_iterations)
        return _steepest_descent(lambda x: system(x, lam), rhs, self.solver_iterations)

    def forward(self, field: torch.Tensor, mask: torch.Tensor | None = None, *, b0_dir=None, voxel_size_mm=None,
                chi_to_field: float = 1.0) -> torch.Tensor:
        _, gram, adjoint_field, _ = self._operators(field, mask, b0_dir, voxel_size_mm, chi_to_field)
        lam = self.regularization.to(field.dtype)
        data = adjoint_field(field)
        chi = self._solve(gram, data, lam)
        for _ in range(self.iterations):
            chi = self._solve(gram, data + lam * self.prior(chi), lam)
        return chi


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner products, shaped to broadcast over ``(N, C, X, Y, Z)``."""
    return (a * b).sum(dim=tuple(range(1, a.dim())), keepdim=True)


def _unrolled_cg(operator, rhs: torch.Tensor, iterations: int) -> torch.Tensor:
    """CG from zero, per sample, with autograd through every iteration (the reference for the implicit one)."""
    x = torch.zeros_like(rhs)
    residual = rhs
    direction = residual
    rr = _dot(residual, residual)
    for _ in range(iterations):
        a_direction = operator(direction)
        alpha = rr / _dot(direction, a_direction).clamp_min(1e-30)
        x = x + alpha * direction
        residual = residual - alpha * a_direction
        rr_new = _dot(residual, residual)
        direction = residual + (rr_new / rr.clamp_min(1e-30)) * direction
        rr = rr_new
    return x


def _steepest_descent(operator, rhs: torch.Tensor, iterations: int) -> torch.Tensor:
    """Steepest descent from zero with exact line search, per sample, unrolled."""
    x = torch.zeros_like(rhs)
    residual = rhs
    for _ in range(iterations):
        a_residual = operator(residual)
        step = _dot(residual, residual) / _dot(residual, a_residual).clamp_min(1e-30)
        x = x + step * residual
        residual = residual - step * a_residual
    return x


class VarNet(_PhysicsNet):
    r"""NeXtQSM's variational network for local field → χ.

    Parameters
    ----------
    stages
        Gradient steps, each with its own regulariser :math:`\Psi_s`.
    base_channels, depth
        Of each stage's U-Net (16 channels, one pooling, as in the paper's Fig. 5).
    step
        Initial data-term weight :math:`\lambda_s` of every stage (learned, kept positive; stable
        below 4.5, see :class:`LPCNN`).
    pad
        Zero padding (voxels per side) of the dipole operator.

    References
    ----------
    Cognolato F, O'Brien K, Jin J, et al. NeXtQSM: a complete deep learning pipeline for
    data-consistent quantitative susceptibility mapping trained with hybrid data. Medical Image
    Analysis 2023;84:102700. doi:10.1016/j.media.2022.102700

    Examples
    --------
    >>> net = VarNet(stages=2, base_channels=2)
    >>> field = torch.zeros(1, 1, 8, 8, 8)
    >>> net(field, torch.ones_like(field), b0_dir=[0, 0.6, 0.8], voxel_size_mm=[1, 1, 2]).shape
    torch.Size([1, 1, 8, 8, 8])
    """

    def __init__(self, *, stages: int = 8, base_channels: int = 16, depth: int = 1, step: float = 3.5,
                 pad: int = 16) -> None:
        super().__init__(pad)
        if stages < 1 or not step > 0:
            raise ValueError("stages must be ≥ 1 and step > 0")
        self.regularizers = nn.ModuleList(UNet3d(base_channels=base_channels, depth=depth) for _ in range(stages))
        for unet in self.regularizers:
            nn.init.zeros_(unet.head.weight)
            nn.init.zeros_(unet.head.bias)
        self.raw_steps = nn.Parameter(torch.full((stages,), math.log(math.expm1(step))))
        self.depth = int(depth)

    @property
    def multiple(self) -> int:
        return 2 ** self.depth

    @property
    def steps(self) -> torch.Tensor:
        return F.softplus(self.raw_steps)

    def forward(self, field: torch.Tensor, mask: torch.Tensor | None = None, *, b0_dir=None, voxel_size_mm=None,
                chi_to_field: float = 1.0) -> torch.Tensor:
        _, gram, adjoint_field, _ = self._operators(field, mask, b0_dir, voxel_size_mm, chi_to_field)
        data = adjoint_field(field)
        chi = field / float(chi_to_field)  # the field in χ's units, as NeXtQSM starts from the local field
        for step, regularizer in zip(self.steps, self.regularizers):
            chi = chi - step * (gram(chi) - data) - regularizer(chi)
        return chi


def lpcnn(**hyperparameters) -> LPCNN:
    """LPCNN (see :class:`LPCNN`)."""
    return LPCNN(**hyperparameters)


def noqsm(**hyperparameters) -> NoQSM:
    """NoQSM-net with the CG data-consistency block (see :class:`NoQSM`)."""
    return NoQSM(**{"solver": "cg", **hyperparameters})


def noqsm_sd(**hyperparameters) -> NoQSM:
    """NoQSM-SD: the steepest-descent variant of the paper's ablation (see :class:`NoQSM`)."""
    return NoQSM(**{**hyperparameters, "solver": "sd"})


def nextqsm(**hyperparameters) -> VarNet:
    """NeXtQSM's variational network (see :class:`VarNet`)."""
    return VarNet(**hyperparameters)


#: Architecture name → factory, for :data:`torchqsm.models.ARCHITECTURES`.
PHYSICS_ARCHITECTURES = {"lpcnn": lpcnn, "noqsm": noqsm, "noqsm-sd": noqsm_sd, "nextqsm": nextqsm}
