r"""Quality-guided region growing unwrapping as a maximum-quality spanning tree.

Region growing (Prim's algorithm) starts at a seed and repeatedly unwraps the
voxel joined to the unwrapped region by the best remaining edge; the edges it
uses form the *maximum-quality spanning tree* of the voxel graph (edge
weight :math:`1 - q`, minimum spanning tree). We compute that tree at once
(``scipy.sparse.csgraph``, Kruskal), orient it from the seed by a breadth-first
search, and unwrap every voxel relative to its parent,

.. math::

   k_v = \operatorname{round}\!\Big(\frac{\psi_{p(v)} - \psi_v}{2\pi}\Big), \qquad
   \varphi_v = \psi_v + 2\pi \sum_{u \in \mathrm{path}(v)} k_u ,

so that each voxel is within π of its parent. The path sums are taken by
pointer doubling (``offset[v] += offset[ancestor[v]]``, ``ancestor[v] =
ancestor[ancestor[v]]``): :math:`\lceil\log_2 \mathrm{depth}\rceil` vectorised
steps, no loop over voxels.

The tree path from the seed maximises the lowest edge quality among all paths
(the bottleneck property of maximum spanning trees). A voxel whose tree path
contains an edge below ``low_quality_threshold`` can therefore be reached
*only* across a bad edge; it is flagged in ``low_quality``: its 2π multiple
relative to the seed is a guess. Such regions are typically noise, signal
voids or aliased gradients (true steps above π per voxel), which a single echo
cannot tell from smaller steps; the second-echo and magnitude terms of
:func:`~torchqsm.preprocess.unwrap.romeo_quality` expose them.

The graph work runs on the CPU (scipy); the result is returned on the
input's device.

References
----------
Dymerska B, Eckstein K, Bachrata B, et al. Phase unwrapping with a rapid
opensource minimum spanning tree algorithm (ROMEO). MRM 2021;85:2294–2308.
doi:10.1002/mrm.28563

Abdul-Rahman HS, Gdeisat MA, Burton DR, et al. Fast and robust three-dimensional
best path phase unwrapping algorithm. Appl Opt 2007;46:6623–6635.
doi:10.1364/AO.46.006623
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
import torch
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree

from ...errors import InputError, ParameterError
from ._common import edge_mask, phase_and_mask
from .quality import romeo_quality, voxel_quality

__all__ = ["UnwrapResult", "region_growing_unwrap"]

# Added to 1 - q so that perfect edges (q = 1) are not taken for missing ones by scipy.
_EPSILON = 1e-6


@dataclass(frozen=True)
class UnwrapResult:
    """Unwrapped phase and its quality.

    Attributes
    ----------
    phase_rad
        ``(X, Y, Z)`` unwrapped phase (rad): the input plus exact multiples of
        2π inside the mask, the input unchanged outside.
    quality
        ``(X, Y, Z)`` voxel quality in [0, 1] (:func:`~torchqsm.preprocess.unwrap.voxel_quality`).
    low_quality
        ``(X, Y, Z)`` bool: voxels reached from their seed only across an edge
        below the threshold, and isolated mask voxels (no neighbour in the mask).
    """

    phase_rad: torch.Tensor
    quality: torch.Tensor
    low_quality: torch.Tensor


def _check_quality(quality, phase: torch.Tensor) -> torch.Tensor:
    if not isinstance(quality, torch.Tensor) or tuple(quality.shape) != (3,) + tuple(phase.shape):
        shape = tuple(quality.shape) if isinstance(quality, torch.Tensor) else type(quality)
        raise InputError(f"quality must be a (3, X, Y, Z) = {(3,) + tuple(phase.shape)} edge array, got {shape}")
    if not bool(torch.isfinite(quality).all()) or bool((quality < 0).any()) or bool((quality > 1).any()):
        raise InputError("quality must be finite and within [0, 1]")
    return quality.to(device=phase.device, dtype=phase.dtype)


def _check_seed(seed, mask: np.ndarray) -> int:
    try:
        index = tuple(int(i) for i in seed)
    except (TypeError, ValueError):
        raise ParameterError(f"seed must be a voxel index (i, j, k), got {seed!r}") from None
    if len(index) != 3 or any(not 0 <= i < n for i, n in zip(index, mask.shape)) or not mask[index]:
        raise ParameterError(f"seed {seed!r} is not a voxel inside the mask")
    return int(np.ravel_multi_index(index, mask.shape))


def _spanning_forest(edges: np.ndarray, quality: np.ndarray, node_of: np.ndarray, shape) -> tuple:
    """Edge endpoints (flat voxel indices) and the maximum-quality spanning forest over mask nodes."""
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    sources, targets, weights = [], [], []
    for axis in range(3):
        start = np.flatnonzero(edges[axis])
        sources.append(start)
        targets.append(start + strides[axis])
        weights.append(1.0 - quality[axis].reshape(-1)[start].astype(np.float64) + _EPSILON)
    source, target = np.concatenate(sources), np.concatenate(targets)
    n = int(node_of.max()) + 1
    graph = sparse.csr_matrix((np.concatenate(weights), (node_of[source], node_of[target])), shape=(n, n))
    return minimum_spanning_tree(graph)


def _tree_edge_quality(child: np.ndarray, parent: np.ndarray, quality: np.ndarray, shape) -> np.ndarray:
    """Quality of the edge between each voxel and its parent (flat indices; neighbours on the grid)."""
    step = np.abs(parent - child)
    low = np.minimum(parent, child)
    strides = (shape[1] * shape[2], shape[2], 1)
    axis = np.zeros(child.shape, dtype=np.int64)
    for a in (2, 1, 0):  # an axis of length 1 has no edges, and may share its stride with the next axis
        if shape[a] > 1:
            axis[step == strides[a]] = a
    return quality.reshape(3, -1)[axis, low]


def region_growing_unwrap(
    phase_rad: torch.Tensor,
    *,
    quality: torch.Tensor | None = None,
    magnitude: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    seed: Sequence[int] | None = None,
    low_quality_threshold: float = 0.2,
) -> UnwrapResult:
    r"""Quality-guided region-growing unwrapping (maximum-quality spanning tree).

    Each voxel is unwrapped to within π of its parent in the tree that
    maximises the edge qualities (module notes); every connected component
    of the mask is grown from its own seed, the voxel of highest quality.

    Parameters
    ----------
    phase_rad
        Wrapped phase (rad), ``(X, Y, Z)``.
    quality
        Edge quality ``(3, X, Y, Z)`` in [0, 1]; default
        ``romeo_quality(phase_rad, magnitude=magnitude, mask=mask)`` (pass your own
        to use a second echo).
    magnitude
        Magnitude ``(X, Y, Z)`` for the default quality; not used with ``quality``.
    mask
        ``(X, Y, Z)`` voxels to unwrap; default the whole box.
    seed
        Voxel index ``(i, j, k)`` in the mask where the component holding it
        starts (its phase is kept); other components start at their best voxel.
    low_quality_threshold
        Edge quality in [0, 1) below which an edge counts as bad.

    Returns
    -------
    UnwrapResult
        ``phase_rad`` (input + 2π k inside the mask), voxel ``quality`` and ``low_quality``.

    Examples
    --------
    >>> x = torch.arange(24, dtype=torch.float64)
    >>> phase = (0.02 * (x - 12.0) ** 2)[:, None, None] + 0.3 * x[None, :, None] + 0 * x
    >>> result = region_growing_unwrap(torch.angle(torch.exp(1j * phase)))
    >>> jumps = (result.phase_rad - phase) / (2 * torch.pi)
    >>> bool(torch.allclose(jumps, jumps.flatten()[0].round(), atol=1e-9)), bool(result.low_quality.any())
    (True, False)
    """
    phase, mask_b = phase_and_mask(phase_rad, mask)
    threshold = float(low_quality_threshold)
    if not (math.isfinite(threshold) and 0.0 <= threshold < 1.0):
        raise ParameterError(f"low_quality_threshold must be in [0, 1), got {low_quality_threshold!r}")
    if quality is None:
        quality_t = romeo_quality(phase, magnitude=magnitude, mask=mask_b)
    elif magnitude is not None:
        raise ParameterError("magnitude only builds the default quality; give quality or magnitude, not both")
    else:
        quality_t = _check_quality(quality, phase) * edge_mask(mask_b)
    shape = tuple(phase.shape)
    mask_np = mask_b.cpu().numpy()
    quality_np = quality_t.detach().cpu().numpy()
    wrapped = phase.detach().cpu().numpy().reshape(-1).astype(np.float64)
    voxels = np.flatnonzero(mask_np)  # node -> flat voxel index
    n = voxels.size
    index_type = np.int32 if n < 2**31 - 1 else np.int64  # int32 halves the sparse-graph build time
    node_of = np.full(mask_np.size, -1, dtype=index_type)
    node_of[voxels] = np.arange(n, dtype=index_type)
    forest = _spanning_forest(edge_mask(mask_b).cpu().numpy(), quality_np, node_of, shape)
    n_components, labels = connected_components(forest, directed=False)
    # One seed per component: its best voxel (or the user's seed), joined to a virtual root (node n).
    score = voxel_quality(quality_t).cpu().numpy().reshape(-1)[voxels]
    if seed is not None:
        score = score.copy()
        score[node_of[_check_seed(seed, mask_np)]] = np.inf
    if n_components == 1:
        seeds = np.array([np.argmax(score)])
    else:
        order = np.lexsort((-score, labels))
        seeds = order[np.flatnonzero(np.diff(labels[order], prepend=-1))]
    root_edges = sparse.csr_matrix((np.ones(n_components), (np.full(n_components, n), seeds)), shape=(n + 1, n + 1))
    tree = sparse.block_diag((forest, sparse.csr_matrix((1, 1))), format="csr") + root_edges
    _, predecessors = breadth_first_order(tree + tree.T, n, directed=False, return_predecessors=True)
    parent = predecessors[:n].astype(np.int64)
    is_seed = parent == n
    # Integer jump to each parent, and the quality of that tree edge (1 for seeds: no edge).
    parent_voxel = voxels[np.where(is_seed, np.arange(n), parent)]
    jump = np.round((wrapped[parent_voxel] - wrapped[voxels]) / (2 * math.pi)).astype(np.int64)
    edge_quality = np.where(is_seed, 1.0, _tree_edge_quality(voxels, parent_voxel, quality_np, shape).astype(np.float64))
    # Pointer doubling over the tree: offset = sum of jumps, worst = lowest quality on the path to the root.
    ancestor = np.append(parent, n)
    offset = np.append(jump, 0)
    worst = np.append(edge_quality, 1.0)
    while np.any(ancestor != n):
        offset = offset + offset[ancestor]
        worst = np.minimum(worst, worst[ancestor])
        ancestor = ancestor[ancestor]
    sizes = np.bincount(labels, minlength=n_components)
    low = (worst[:n] < threshold) | (sizes[labels] == 1)
    offset_volume = np.zeros(mask_np.size, dtype=np.float64)
    offset_volume[voxels] = offset[:n]
    low_volume = np.zeros(mask_np.size, dtype=bool)
    low_volume[voxels] = low
    two_pi_k = torch.from_numpy(2 * math.pi * offset_volume.reshape(shape)).to(device=phase.device, dtype=phase.dtype)
    return UnwrapResult(
        phase_rad=phase + two_pi_k,
        quality=voxel_quality(quality_t),
        low_quality=torch.from_numpy(low_volume.reshape(shape)).to(phase.device),
    )
