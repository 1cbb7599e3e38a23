"""Brain extraction from a head mask: the scalp cut off by a morphological opening."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..errors import InputError, check_positive
from .masking import _as_mask, _erode

__all__ = ["extract_brain", "mask_depth_mm"]


def mask_depth_mm(mask: torch.Tensor, *, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """The largest distance (mm) from a mask voxel to the nearest background voxel or array edge.

    An erosion (or the opening of :func:`extract_brain`) by a ball of radius ``r`` leaves
    something iff ``r`` is below this depth; the mask is at most twice it thick.

    >>> import torch
    >>> slab = torch.ones(20, 20, 3, dtype=torch.bool)
    >>> mask_depth_mm(slab, voxel_size_mm=(1, 1, 2))
    4.0
    """
    binary = _as_mask(mask, "mask").cpu().numpy()
    spacing = tuple(float(h) for h in voxel_size_mm)
    distance = ndimage.distance_transform_edt(np.pad(binary, 1), sampling=spacing)
    return float(distance.max())


def extract_brain(
    head_mask: torch.Tensor,
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    radius_mm: float = 6.0,
) -> torch.Tensor:
    r"""The brain inside a head mask, by a morphological opening that cuts the scalp off.

    A magnitude mask of a head holds the brain and, across the dark skull, the scalp
    and face, joined to the brain only through thin bridges. Eroding by a ball of
    ``radius_mm`` breaks those bridges and removes the scalp (thinner than
    2·``radius_mm``); the largest piece left is the brain, which is then dilated back
    by the same ball and intersected with the head mask, so the brain's own outline
    is kept to the voxel:

    .. math::

       B = ig(\mathrm{largest}(M \ominus S_r) \oplus S_rig) \cap M .

    A simple stand-in for dedicated brain extraction (BET, HD-BET): it needs the
    skull to be dark and a scalp thinner than 2·``radius_mm``.

    Parameters
    ----------
    head_mask
        Boolean ``(X, Y, Z)`` mask of the head (e.g. :func:`magnitude_mask`).
    voxel_size_mm
        Voxel size (mm); the ball is round in millimetres.
    radius_mm
        Ball radius (mm).

    Returns
    -------
    torch.Tensor
        Boolean brain mask, on the input's device.

    Examples
    --------
    A ball (brain) inside a thin shell (scalp) touching it at one bridge:

    >>> import torch
    >>> g = torch.stack(torch.meshgrid(*[torch.arange(48.0)] * 3, indexing="ij")) - 23.5
    >>> r = g.norm(dim=0)
    >>> head = (r < 14) | ((r > 19) & (r < 22)) | ((g[0].abs() < 2) & (g[1].abs() < 2) & (g[2] > 0))
    >>> brain = extract_brain(head, radius_mm=4.0)
    >>> bool(brain[r < 14].all()), int(brain[r > 16].sum())   # the shell and all but a stub of the bridge go
    (True, 0)
    """
    mask = _as_mask(head_mask, "head_mask")
    radius = check_positive("radius_mm", radius_mm)
    spacing = tuple(float(h) for h in voxel_size_mm)
    binary = mask.cpu().numpy()
    core = _erode(binary, radius, spacing)
    labels, count = ndimage.label(core)
    if count == 0:
        raise InputError(f"mask is empty after brain extraction: nothing is thicker than {2 * radius:g} mm")
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    largest = labels == (1 + int(np.argmax(sizes)))
    grown = ndimage.distance_transform_edt(~largest, sampling=spacing) <= radius * (1 + 1e-9) + max(spacing)
    brain = ndimage.binary_fill_holes(grown & binary)
    return torch.from_numpy(brain).to(mask.device)
