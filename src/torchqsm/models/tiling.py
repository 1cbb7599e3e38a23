r"""Overlapping tiles of a volume on a network's pooling grid, and their smooth blending.

Cores of ``tile_size`` voxels overlap by ``overlap``; each runs with ``halo`` voxels of
context per side (clipped at the volume's edge), then discarded. Starts, sizes, overlap and
halo are multiples of the network's ``multiple``, so poolings fall on the whole volume's grid
and the volume's edge is padded as in a whole pass; only the context beyond the halo is lost.
Overlaps are blended by the separable weight :math:`w(t) = \sin^2(\pi (t + \tfrac12) / 2O)`
over the ``O`` voxels next to a neighbour, normalised by the summed weights. Used by
:func:`torchqsm.models.inference.predict`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ParameterError

__all__ = ["Tile", "plan_tiles", "tiled", "Region"]

logger = logging.getLogger(__name__)

Region = tuple[slice, slice, slice]


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != 3 or any(int(v) != v or v < 1 for v in values):
        raise ParameterError(f"{name} must be a positive integer or three, got {value!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class Tile:
    """One tile: ``core`` (kept, blended) inside ``window`` (run through the network), in padded voxels."""

    core: Region
    window: Region


def plan_tiles(shape: Sequence[int], *, tile_size: int | Sequence[int], overlap: int, halo: int,
               multiple: int) -> tuple[list[Tile], tuple[int, int, int], int, int]:
    """Tiles covering ``shape`` (each a multiple of ``multiple``).

    ``tile_size``, ``overlap`` and ``halo`` are rounded up to multiples of ``multiple``;
    the tile is clipped to the volume and the overlap to ``tile - multiple``.
    Returns the tiles and the tile size, overlap and halo used.

    >>> tiles, size, overlap, halo = plan_tiles((64, 32, 32), tile_size=32, overlap=8, halo=8, multiple=8)
    >>> len(tiles), size, overlap, tiles[1].core[0], tiles[1].window[0]
    (3, (32, 32, 32), 8, slice(24, 56, None), slice(16, 64, None))
    """
    if any(s % multiple for s in shape):
        raise ParameterError(f"shape {tuple(shape)} is not a multiple of {multiple}")
    if overlap < 0 or halo < 0:
        raise ParameterError(f"overlap and halo must be non-negative, got {overlap}, {halo}")
    sizes = tuple(min(_round_up(t, multiple), s) for t, s in zip(_triple(tile_size, "tile_size"), shape))
    tiled = [t for t, s in zip(sizes, shape) if t < s]
    overlap = min(_round_up(overlap, multiple), min(tiled, default=multiple) - multiple)
    halo = _round_up(halo, multiple)
    starts = []
    for size, length in zip(sizes, shape):
        step = size - overlap if size < length else length
        axis = list(range(0, length - size, step)) + [length - size]
        starts.append(sorted(set(axis)))
    tiles = []
    for corner in itertools.product(*starts):
        core = tuple(slice(a, a + t) for a, t in zip(corner, sizes))
        window = tuple(slice(max(c.start - halo, 0), min(c.stop + halo, s)) for c, s in zip(core, shape))
        tiles.append(Tile(core, window))  # type: ignore[arg-type]
    return tiles, sizes, overlap, halo  # type: ignore[return-value]


def _blend_weight(core: Region, shape: Sequence[int], overlap: int, device: torch.device) -> torch.Tensor:
    """Separable weight over a core: sin² ramps of ``overlap`` voxels towards each neighbour."""
    profiles = []
    for c, length in zip(core, shape):
        w = torch.ones(c.stop - c.start, device=device)
        if overlap:
            ramp = torch.sin(math.pi * (torch.arange(overlap, device=device) + 0.5) / (2 * overlap)) ** 2
            if c.start > 0:
                w[:overlap] = ramp
            if c.stop < length:
                w[-overlap:] = w[-overlap:] * ramp.flip(0)
        profiles.append(w)
    return profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]


def tiled(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mask: torch.Tensor, *, tile_size, overlap: int, halo: int, multiple: int,
           progress: bool) -> torch.Tensor:
    """Blend ``forward``'s outputs on overlapping tiles of the padded input ``x`` (tiles whose core
    holds no ``mask`` voxel are skipped)."""
    tiles, sizes, overlap, halo = plan_tiles(x.shape, tile_size=tile_size, overlap=overlap, halo=halo,
                                             multiple=multiple)
    tiles = [tile for tile in tiles if bool(mask[tile.core].any())]
    logger.info("tiled inference: %d tiles of %s voxels, overlap %d, halo %d", len(tiles), sizes, overlap, halo)
    output = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    weight = torch.zeros_like(output)
    if progress:
        from tqdm.auto import tqdm

        tiles = tqdm(tiles, desc="tiles", unit="tile")
    for tile in tiles:
        result = forward(x[tile.window]).to(x.device)
        inner = tuple(slice(c.start - w.start, c.stop - w.start) for c, w in zip(tile.core, tile.window))
        w = _blend_weight(tile.core, x.shape, overlap, x.device)
        output[tile.core] += w * result[inner]
        weight[tile.core] += w
    return torch.where(weight > 0, output / weight.clamp_min(1e-12), 0.0)
