r"""Training losses for dipole-inversion networks, all restricted to the brain mask.

With :math:`e = \hat\chi - \chi` (network units) and the mask :math:`M` of :math:`n` voxels:

* ``mse`` :math:`\frac1n\lVert Me\rVert_2^2` and ``l1`` :math:`\frac1n\lVert Me\rVert_1`;
* ``model`` :math:`\frac1n\lVert M D e\rVert_2^2`, the data-consistency ("model") loss of
  QSMnet (Yoon et al. 2018): the field the error would make, with each sample's own B0
  direction and voxel size (no padding: patches are small and the error is local);
* ``gradient`` :math:`\frac1{3n}\sum_i\lVert M(\partial_i\hat\chi-\partial_i\chi)\rVert_1`, the
  gradient-difference loss (forward differences, voxel units), which favours sharp edges.

With ``relative=True`` each sample's estimate and target are first divided by the target's rms in
the sample's mask (held constant), so every term is relative, as NRMSE is, and a patch with a
haemorrhage (χ up to 1.5 ppm) weighs as much as one of normal tissue (χ rms about 0.03 ppm).
With ``demean=True`` each sample's estimate is first shifted by the mean of its error in the
mask: the terms are blind to a constant offset, as demeaned NRMSE is. The dipole kernel has no DC
term and the LoT's operator :math:`(\tfrac13\nabla^2-\partial_{\hat b}^2)` none either, so a
patch's mean χ is barely determined by its field; without this the loss spends its gradient on
an offset the network cannot know.
"""

from __future__ import annotations

import torch

from ..physics import DipoleOp
from .config import LossWeights

__all__ = ["masked_losses", "total_loss"]


def _dipole_error(error: torch.Tensor, b0_dir: torch.Tensor, voxel_size_mm: torch.Tensor) -> torch.Tensor:
    """D e per sample (N, 1, X, Y, Z), each with its own geometry."""
    fields = []
    for sample, direction, voxel in zip(error, b0_dir, voxel_size_mm):
        op = DipoleOp(tuple(sample.shape[-3:]), voxel_size_mm=voxel.tolist(), b0_dir=direction.tolist(), pad=0,
                      dtype=torch.float32, device=sample.device)
        fields.append(op(sample.float()))
    return torch.stack(fields)


def _gradient_difference(estimate: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    total = estimate.new_zeros(())
    for axis in (-3, -2, -1):
        d_estimate = torch.diff(estimate, dim=axis)
        d_target = torch.diff(target, dim=axis)
        both = mask.narrow(axis, 0, mask.shape[axis] - 1) * mask.narrow(axis, 1, mask.shape[axis] - 1)
        total = total + ((d_estimate - d_target).abs() * both).sum() / both.sum().clamp_min(1.0)
    return total / 3.0


def masked_losses(estimate: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weights: LossWeights, *,
                  b0_dir: torch.Tensor | None = None,
                  voxel_size_mm: torch.Tensor | None = None, relative: bool = False,
                  demean: bool = False) -> dict[str, torch.Tensor]:
    """Each loss term with a non-zero weight (unweighted values), keyed by name.

    Parameters
    ----------
    estimate, target
        Network output and target, ``(N, 1, X, Y, Z)``, network units.
    mask
        Brain mask ``(N, 1, X, Y, Z)``, 0/1.
    weights
        Which terms to compute (:class:`~torchqsm.train.config.LossWeights`).
    b0_dir, voxel_size_mm
        ``(N, 3)`` per-sample geometry; needed by the ``model`` term.
    relative
        Divide each sample by its target's rms in its mask first (see the module's text).
    demean
        Shift each sample's estimate by the mean of its error in its mask first, so no term sees a
        constant offset (see the module's text).

    Examples
    --------
    >>> x = torch.zeros(1, 1, 4, 4, 4); m = torch.ones_like(x)
    >>> {k: float(v) for k, v in masked_losses(x + 1, x, m, LossWeights(mse=1, l1=1)).items()}
    {'mse': 1.0, 'l1': 1.0}
    >>> {k: float(v) for k, v in masked_losses(x + 1, x + 2, m, LossWeights(mse=1), relative=True).items()}
    {'mse': 0.25}
    >>> {k: float(v) for k, v in masked_losses(x + 1, x, m, LossWeights(mse=1), demean=True).items()}
    {'mse': 0.0}
    """
    estimate, target = estimate.float(), target.float()
    dims = tuple(range(1, target.dim()))
    count_each = mask.sum(dim=dims, keepdim=True).clamp_min(1.0)

    def masked_mean(x: torch.Tensor) -> torch.Tensor:
        return (x * mask).sum(dim=dims, keepdim=True) / count_each

    if demean:
        estimate = estimate - masked_mean(estimate - target)
    if relative:
        spread = target - masked_mean(target) if demean else target
        rms = masked_mean(spread.square()).sqrt().clamp_min(1e-6).detach()
        estimate, target = estimate / rms, target / rms
    error = (estimate - target) * mask
    count = mask.sum().clamp_min(1.0)
    losses: dict[str, torch.Tensor] = {}
    if weights.mse > 0:
        losses["mse"] = error.square().sum() / count
    if weights.l1 > 0:
        losses["l1"] = error.abs().sum() / count
    if weights.model > 0:
        if b0_dir is None or voxel_size_mm is None:
            raise ValueError("the model loss needs each sample's b0_dir and voxel_size_mm")
        losses["model"] = (_dipole_error(error, b0_dir, voxel_size_mm) * mask).square().sum() / count
    if weights.gradient > 0:
        losses["gradient"] = _gradient_difference(estimate * mask, target * mask, mask)
    return losses


def total_loss(losses: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """The weighted sum of the terms of :func:`masked_losses`."""
    return sum(getattr(weights, name) * value for name, value in losses.items())  # type: ignore[return-value]
