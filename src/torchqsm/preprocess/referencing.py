r"""Susceptibility referencing: fix the arbitrary constant of a QSM map.

The field determines χ only up to a constant (the dipole kernel is zero at
k = 0), so χ maps are reported relative to a reference region: the whole
brain mask (mean zero) or cerebrospinal fluid (CSF), the usual choice for
comparing subjects (Straub et al. 2017).

Examples
--------
>>> import torch
>>> chi = torch.full((4, 4, 4), 0.1)
>>> mask = torch.ones(4, 4, 4, dtype=torch.bool)
>>> float(reference(chi, mask).abs().max())
0.0
"""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import InputError, ParameterError
from ..validation import array_and_mask, as_tensor
from .masking import _as_mask

__all__ = ["reference", "reference_value"]


def _chi_and_mask(chi_ppm, mask, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """χ ``(..., X, Y, Z)`` and a 0/1 region by :mod:`torchqsm.validation` (NaN only outside the region)."""
    chi = as_tensor(chi_ppm, "chi_ppm")
    region = _as_mask(mask, name, chi.shape[-3:] if chi.ndim >= 3 else None)
    return array_and_mask(chi, region, name="chi_ppm", unit="ppm", leading=None)


def reference_value(chi_ppm: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    r"""Mean of χ over a region, :math:`\bar\chi_R = \frac{1}{|R|}\sum_{v \in R} \chi_v` (ppm).

    Parameters
    ----------
    chi_ppm
        Susceptibility (ppm), ``(..., X, Y, Z)``.
    region
        Boolean ``(X, Y, Z)``, not empty.

    Returns
    -------
    torch.Tensor
        Shape ``(...)`` (a 0-d tensor for a single volume), ppm.

    Examples
    --------
    >>> import torch
    >>> chi = torch.arange(8.0).reshape(2, 2, 2)
    >>> float(reference_value(chi, chi > 5))
    6.5
    """
    chi, r = _chi_and_mask(chi_ppm, region, "region")
    count = int(r.sum())
    # accumulate in float64: float32 sums over millions of voxels drift by ~1e-7 relative
    total = torch.where(r, chi, chi.new_zeros(())).sum(dim=(-3, -2, -1), dtype=torch.float64)
    return (total / count).to(chi.dtype)


def reference(
    chi_ppm: torch.Tensor,
    mask: torch.Tensor,
    *,
    method: Literal["mean", "csf", "none"] = "mean",
    csf_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Reference χ to a region: :math:`\chi' = (\chi - \bar\chi_R)\,M`.

    :math:`R` is the brain mask :math:`M` (``"mean"``: the mean over the
    brain becomes 0) or the CSF inside it (``"csf"``: the CSF becomes 0 ppm,
    so other tissues read as in the literature tables). Outside the mask the
    result is 0, as every inversion returns it. ``"none"`` returns the input
    unchanged.

    Parameters
    ----------
    chi_ppm
        Susceptibility (ppm), ``(..., X, Y, Z)``; leading axes (e.g. a batch)
        are referenced one by one.
    mask
        Brain mask, boolean or 0/1 ``(X, Y, Z)``.
    method
        ``"mean"``, ``"csf"`` or ``"none"``.
    csf_mask
        CSF region (boolean ``(X, Y, Z)``), e.g. the lateral ventricles;
        required for ``"csf"``. Only its voxels inside ``mask`` are used.

    Returns
    -------
    torch.Tensor
        Referenced χ (ppm), same shape, dtype and device.

    Raises
    ------
    ParameterError
        Unknown ``method``; ``"csf"`` without ``csf_mask``, or a ``csf_mask`` with another method.
    InputError
        Shapes that do not match, NaN, an empty mask or CSF region.

    References
    ----------
    Straub S, Schneider TM, Emmerich J, et al. Suitable reference tissues for
    quantitative susceptibility mapping of the brain. Magn Reson Med
    2017;78:204–214. doi:10.1002/mrm.26369

    Examples
    --------
    >>> import torch
    >>> chi = torch.zeros(6, 6, 6)
    >>> chi[1:5, 1:5, 1:5] = 0.2
    >>> chi[2:4, 2:4, 2:4] = -0.05
    >>> mask = chi != 0
    >>> csf = torch.zeros(6, 6, 6, dtype=torch.bool)
    >>> csf[2:4, 2:4, 2:4] = True
    >>> round(float(reference(chi, mask, method="csf", csf_mask=csf)[1, 1, 1]), 4)
    0.25
    """
    if method not in ("mean", "csf", "none"):
        raise ParameterError(f"method must be 'mean', 'csf' or 'none', got {method!r}")
    if method == "csf" and csf_mask is None:
        raise ParameterError("method='csf' needs csf_mask (a boolean CSF region, e.g. the lateral ventricles)")
    if method != "csf" and csf_mask is not None:
        raise ParameterError(f"csf_mask is only used with method='csf', not {method!r}")
    if method == "none":
        return chi_ppm
    chi, brain = _chi_and_mask(chi_ppm, mask, "mask")
    if method == "csf":
        region = _as_mask(csf_mask, "csf_mask", chi.shape[-3:]).to(chi.device) & brain
        if not bool(region.any()):
            raise InputError("csf_mask has no voxel inside mask")
    else:
        region = brain
    offset = reference_value(chi, region)[..., None, None, None]
    return torch.where(brain, chi - offset, chi.new_zeros(()))
