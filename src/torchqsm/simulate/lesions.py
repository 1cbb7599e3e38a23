r"""Pathology for simulated brains: haemorrhages, calcifications, microbleeds, MS lesions, veins.

Networks trained on healthy tissue alone underestimate the strong sources
that matter clinically; these functions paint such sources into a χ map.
Every lesion *replaces* χ in its voxels by one value drawn uniformly from
its kind's range (ppm, relative to the same reference as the map, e.g. CSF):

================  ==============  =============  ==========  =============================
kind              χ (ppm)         radius (mm)    elongation  appearance
================  ==============  =============  ==========  =============================
haemorrhage       0.4 … 1.5       4 … 12         1.0 … 1.6   blood products [1]_
calcification     −2.0 … −0.2     1 … 4          1.0 … 1.5   diamagnetic [1]_
microbleed        0.4 … 1.5       1 … 2.5        1.0 … 1.2   small round foci [2]_
ms                0.0 … 0.05      2 … 7          1.5 … 3.0   ovoid, in white matter [3]_
================  ==============  =============  ==========  =============================

Each lesion is an ellipsoid of random orientation whose volume equals that of
a sphere of the drawn radius, stretched along one axis by the drawn
elongation. The MS range sits 30–80 ppb above normal-appearing white matter
(≈ −0.03 ppm): the non-enhancing, iron-accumulating lesions of [3]_; pass a white-matter
mask to place MS lesions there. Veins (:func:`add_veins`) are tubes along
smooth random curves with the paramagnetic χ of deoxygenated blood [4]_.

References
----------
.. [1] Deistung A, Schweser F, Wiestler B, et al. Quantitative susceptibility
   mapping differentiates between blood depositions and calcifications in
   patients with glioblastoma. PLoS One 2013;8:e57924.
   doi:10.1371/journal.pone.0057924
.. [2] Liu T, Surapaneni K, Lou M, et al. Cerebral microbleeds: burden
   assessment by using quantitative susceptibility mapping. Radiology
   2012;262:269–278. doi:10.1148/radiol.11110251
.. [3] Zhang Y, Gauthier SA, Gupta A, et al. Quantitative susceptibility
   mapping and R2* measured changes during white matter lesion development in
   multiple sclerosis: myelin breakdown, myelin debris degradation and
   removal, and iron accumulation. AJNR Am J Neuroradiol 2016;37:1629–1635.
   doi:10.3174/ajnr.A4825
.. [4] Fan AP, Bilgic B, Gagnon L, et al. Quantitative oxygenation venography
   from MRI phase. Magn Reson Med 2014;72:149–159. doi:10.1002/mrm.24918
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InputError, ParameterError
from .augment import _check_generator, _check_range, _check_voxel_size, _rand, _randn, _random_axes
from .shapes import _draw_count, _paint, _random_centres, _random_rotations

__all__ = ["LesionKind", "LESION_KINDS", "add_lesions", "add_veins"]

LesionName = Literal["haemorrhage", "calcification", "microbleed", "ms"]


@dataclass(frozen=True)
class LesionKind:
    """Parameters of one kind of lesion (see the module table)."""

    name: str
    chi_range_ppm: tuple[float, float]
    radius_range_mm: tuple[float, float]
    elongation_range: tuple[float, float]


LESION_KINDS: dict[str, LesionKind] = {
    k.name: k for k in (
        LesionKind("haemorrhage", (0.4, 1.5), (4.0, 12.0), (1.0, 1.6)),
        LesionKind("calcification", (-2.0, -0.2), (1.0, 4.0), (1.0, 1.5)),
        LesionKind("microbleed", (0.4, 1.5), (1.0, 2.5), (1.0, 1.2)),
        LesionKind("ms", (0.0, 0.05), (2.0, 7.0), (1.5, 3.0)),
    )
}


def _check_volume_and_mask(chi_ppm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(chi_ppm, torch.Tensor) or chi_ppm.dim() != 3 or not chi_ppm.is_floating_point():
        raise InputError(f"chi_ppm must be a floating 3-D tensor (X, Y, Z), got {getattr(chi_ppm, 'shape', None)}")
    if not isinstance(mask, torch.Tensor) or mask.shape != chi_ppm.shape:
        raise InputError(f"mask must be a tensor of chi_ppm's shape {tuple(chi_ppm.shape)}")
    return mask.to(device=chi_ppm.device, dtype=torch.bool)


def add_lesions(
    chi_ppm: torch.Tensor,
    mask: torch.Tensor,
    *,
    kind: LesionName,
    count: int | tuple[int, int],
    generator: torch.Generator,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    chi_range_ppm: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Paint ``count`` lesions of ``kind`` into χ, inside ``mask``.

    Lesion :math:`j` is the ellipsoid :math:`\lVert A_j^{-1}R_j^{T}(\mathbf r -
    \mathbf c_j)\rVert \le 1` (mm) with centre :math:`\mathbf c_j` uniform
    among the mask's voxels, :math:`R_j` uniform on SO(3) and semi-axes
    :math:`A_j = \rho_j\,\mathrm{diag}(e_j, 1, 1)/e_j^{1/3}` (radius
    :math:`\rho_j`, elongation :math:`e_j`, both uniform in the kind's ranges);
    its voxels inside the mask take :math:`\chi_j` uniform in the χ range.

    Parameters
    ----------
    chi_ppm
        Susceptibility, ppm, ``(X, Y, Z)``; not modified.
    mask
        Boolean ``(X, Y, Z)``: where lesions may lie (brain; white matter for MS).
    kind
        ``"haemorrhage"``, ``"calcification"``, ``"microbleed"`` or ``"ms"``.
    count
        Number of lesions, or an inclusive ``(min, max)`` range to draw it from.
    generator
        Source of randomness.
    voxel_size_mm
        Voxel size, mm (lesion sizes are in mm).
    chi_range_ppm
        Override of the kind's χ range, ppm.

    Returns
    -------
    chi_ppm, lesion_mask
        The new χ (ppm, a copy) and the boolean mask of lesion voxels (inside ``mask``).

    References
    ----------
    See the module docstring (Deistung 2013, doi:10.1371/journal.pone.0057924; Liu 2012,
    doi:10.1148/radiol.11110251; Zhang 2016, doi:10.3174/ajnr.A4825).

    Examples
    --------
    >>> chi, brain = torch.zeros(32, 32, 32), torch.zeros(32, 32, 32, dtype=torch.bool)
    >>> brain[4:28, 4:28, 4:28] = True
    >>> out, lesions = add_lesions(chi, brain, kind="calcification", count=3,
    ...                            generator=torch.Generator().manual_seed(0))
    >>> bool(out[lesions].max() <= -0.2) and bool(lesions.any()) and bool((lesions & ~brain).sum() == 0)
    True
    """
    mask = _check_volume_and_mask(chi_ppm, mask)
    _check_generator(generator)
    if kind not in LESION_KINDS:
        raise ParameterError(f"unknown lesion kind {kind!r}; choose one of {sorted(LESION_KINDS)}")
    spec = LESION_KINDS[kind]
    lo, hi = spec.chi_range_ppm if chi_range_ppm is None else _check_range("chi_range_ppm", chi_range_ppm)
    vox = _check_voxel_size(voxel_size_mm)
    n = _draw_count("count", count, generator)

    chi = chi_ppm.clone()
    lesions = torch.zeros(chi.shape, dtype=torch.bool, device=chi.device)
    if n == 0:
        return chi, lesions
    if not bool(mask.any()):
        raise InputError("mask is empty: there is nowhere to place lesions")
    r_lo, r_hi = spec.radius_range_mm
    e_lo, e_hi = spec.elongation_range
    radius = r_lo + (r_hi - r_lo) * _rand(generator, n).cpu()
    elongation = e_lo + (e_hi - e_lo) * _rand(generator, n).cpu()
    semi = radius[:, None] * torch.stack([elongation, torch.ones(n, dtype=torch.float64),
                                          torch.ones(n, dtype=torch.float64)], dim=1) / elongation[:, None] ** (1 / 3)
    rotations = _random_rotations(generator, n)
    values = (lo + (hi - lo) * _rand(generator, n).cpu()).tolist()
    centres = _random_centres(generator, n, chi.shape, mask)
    _paint(chi, kinds=[0] * n, centres=centres, semi_axes_mm=semi, rotations=rotations, values=values,
           voxel_size_mm=vox, region=mask, union=lesions)
    return chi, lesions


def add_veins(
    chi_ppm: torch.Tensor,
    mask: torch.Tensor,
    *,
    count: int | tuple[int, int],
    generator: torch.Generator,
    chi_range_ppm: tuple[float, float] = (0.2, 0.45),
    radius_range_mm: tuple[float, float] = (0.5, 1.5),
    length_range_mm: tuple[float, float] = (20.0, 80.0),
    persistence_mm: float = 30.0,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    r"""Paint ``count`` veins: tubes of venous χ along smooth random curves, inside ``mask``.

    Vein :math:`v` starts at a random mask voxel and follows
    :math:`\mathbf x_{t+1} = \mathbf x_t + h\,\hat{\mathbf d}_t` with step
    :math:`h` = half the smallest voxel size and direction
    :math:`\hat{\mathbf d}_t \propto \mathbf d_0 + \sqrt{h/L_p}\sum_{s\le t}
    \boldsymbol\varepsilon_s` (a random walk of the direction with
    persistence length :math:`L_p`), until its drawn length or the first
    step outside the mask. Voxels whose centres lie within the drawn radius
    of the curve (and the voxel holding each curve point) take the vein's χ,
    uniform in ``chi_range_ppm``. The default range is the venous χ of
    deoxygenated blood relative to tissue (0.2–0.45 ppm for haematocrit ≈
    0.4 and oxygenation 0.6–0.8).

    Parameters
    ----------
    chi_ppm
        Susceptibility, ppm, ``(X, Y, Z)``; not modified.
    mask
        Boolean ``(X, Y, Z)``: where veins may lie.
    count
        Number of veins, or an inclusive ``(min, max)`` range.
    generator
        Source of randomness.
    chi_range_ppm
        ``(min, max)`` vein χ, ppm.
    radius_range_mm
        ``(min, max)`` tube radius, mm.
    length_range_mm
        ``(min, max)`` curve length, mm.
    persistence_mm
        Persistence length :math:`L_p` of the direction, mm (> 0; larger is straighter).
    voxel_size_mm
        Voxel size, mm.

    Returns
    -------
    torch.Tensor
        The new χ (ppm), a copy; only voxels inside ``mask`` change.

    References
    ----------
    Fan AP, et al. Quantitative oxygenation venography from MRI phase. Magn Reson Med
    2014;72:149–159. doi:10.1002/mrm.24918

    Examples
    --------
    >>> chi, brain = torch.zeros(32, 32, 32), torch.zeros(32, 32, 32, dtype=torch.bool)
    >>> brain[2:30, 2:30, 2:30] = True
    >>> out = add_veins(chi, brain, count=4, generator=torch.Generator().manual_seed(0))
    >>> changed = out != 0
    >>> bool(changed.any()) and bool(out[changed].min() >= 0.2) and bool(out[changed].max() <= 0.45)
    True
    """
    mask = _check_volume_and_mask(chi_ppm, mask)
    _check_generator(generator)
    lo, hi = _check_range("chi_range_ppm", chi_range_ppm)
    r_lo, r_hi = _check_range("radius_range_mm", radius_range_mm, low=0.0)
    l_lo, l_hi = _check_range("length_range_mm", length_range_mm, low=0.0)
    persistence = float(persistence_mm)
    if not (math.isfinite(persistence) and persistence > 0):
        raise ParameterError(f"persistence_mm must be > 0, got {persistence_mm}")
    vox = _check_voxel_size(voxel_size_mm)
    n = _draw_count("count", count, generator)
    chi = chi_ppm.clone(memory_format=torch.contiguous_format)
    if n == 0:
        return chi
    if not bool(mask.any()):
        raise InputError("mask is empty: there is nowhere to place veins")

    shape = torch.tensor(chi.shape)
    vox_t = torch.tensor(vox, dtype=torch.float64)
    step = 0.5 * min(vox)
    steps = max(1, math.ceil(l_hi / step))
    start = _random_centres(generator, n, chi.shape, mask) * vox_t                  # mm
    walk = _randn(generator, n, steps, 3).cpu() * math.sqrt(step / persistence)
    direction = _random_axes(generator, n)[:, None, :] + torch.cumsum(walk, dim=1)
    direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp_min(1e-12)
    points = start[:, None, :] + step * torch.cumsum(direction, dim=1) - step * direction[:, :1]
    length = l_lo + (l_hi - l_lo) * _rand(generator, n).cpu()
    radius = r_lo + (r_hi - r_lo) * _rand(generator, n).cpu()
    values = lo + (hi - lo) * _rand(generator, n).cpu()

    # A vein ends at its length or where it first leaves the mask.
    index = torch.round(points / vox_t).long()
    in_grid = ((index >= 0) & (index < shape)).all(-1)
    flat = (index.clamp_min(0) * torch.tensor([chi.shape[1] * chi.shape[2], chi.shape[2], 1])).sum(-1)
    flat = torch.where(in_grid, flat.clamp_max(chi.numel() - 1), 0)
    inside = in_grid & mask.reshape(-1)[flat.to(mask.device)].cpu()
    keep = torch.cumprod(inside.long(), dim=1).bool() & (step * torch.arange(steps) <= length[:, None])

    # Rasterise: every voxel of a small cube around each kept point, within the radius.
    reach = [math.ceil(r_hi / v) for v in vox]
    offsets = torch.stack(torch.meshgrid(*[torch.arange(-k, k + 1) for k in reach], indexing="ij"), -1).reshape(-1, 3)
    p = points[keep]                                                               # (P, 3) mm
    vein = torch.arange(n)[:, None].expand(n, steps)[keep]
    cand = index[keep][:, None, :] + offsets[None]                                # (P, O, 3)
    dist = torch.linalg.vector_norm(cand * vox_t - p[:, None, :], dim=-1)
    hit = (dist <= radius[vein][:, None]) | (offsets == 0).all(-1)[None]
    hit &= ((cand >= 0) & (cand < shape)).all(-1)
    voxels = (cand[hit] * torch.tensor([chi.shape[1] * chi.shape[2], chi.shape[2], 1])).sum(-1)
    owner = vein[:, None].expand(-1, offsets.shape[0])[hit]
    in_mask = mask.reshape(-1)[voxels.to(mask.device)].cpu()
    voxels, owner = voxels[in_mask], owner[in_mask]
    # Where veins cross, the later one wins (deterministic on every device, unlike index_put).
    unique, inverse = torch.unique(voxels, return_inverse=True)
    last = torch.full((unique.numel(),), -1, dtype=torch.long).scatter_reduce(0, inverse, owner, "amax")
    chi.view(-1)[unique.to(chi.device)] = values[last].to(dtype=chi.dtype, device=chi.device)
    return chi
