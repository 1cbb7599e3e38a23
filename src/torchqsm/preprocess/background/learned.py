r"""NeXtQSM's learned background removal (:class:`~torchqsm.models.background.BackgroundUNet`).

The network was trained on whole heads at one voxel size (its card's, 2.5 mm for the shipped
weights). The data is taken to that grid by a masked (normalised) Gaussian average and trilinear
sampling, the network gives the local field there, and the background it implies
(:math:`b = f_\mathrm{total} - f_\mathrm{local}`, smooth by nature: harmonic in the brain) is
carried back to the data's grid, extended past the coarse mask by its nearest value and sampled
trilinearly. The local field on the data's grid is the total field minus that background, so every
detail finer than the network's grid comes from the data itself, not from the network.

Units: ppm in, ppm out. The mask is not eroded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ...errors import InputError, ParameterError
from ._common import BackgroundResult, prepare

__all__ = ["nextqsm", "to_grid", "from_grid"]

Vector3 = Sequence[float]


def _coordinates(shape: Sequence[int], ratio: Sequence[float]) -> np.ndarray:
    """Index coordinates (in the source grid) of the centres of a grid whose voxels are ``ratio`` source voxels."""
    axes = [(np.arange(n) + 0.5) * r - 0.5 for n, r in zip(shape, ratio)]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def to_grid(field: np.ndarray, mask: np.ndarray, voxel_size_mm: Vector3,
            target_mm: Vector3) -> tuple[np.ndarray, np.ndarray]:
    """``field`` (zero outside ``mask``) and ``mask`` on the grid of ``target_mm`` voxels spanning the same extent.

    A masked average: the field and the mask are smoothed alike (Gaussian, σ = half the size ratio
    where the target is coarser) and divided, so the brain's edge does not pull the field to zero.
    The coarse mask keeps the voxels at least half inside the brain.
    """
    ratio = [t / h for t, h in zip(target_mm, voxel_size_mm)]
    shape = [max(1, int(round(n / r))) for n, r in zip(field.shape, ratio)]
    sigma = [0.5 * r if r > 1 else 0.0 for r in ratio]
    weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="constant")
    smooth = ndimage.gaussian_filter((field * mask).astype(np.float32), sigma, mode="constant")
    points = _coordinates(shape, ratio)
    weight_c = ndimage.map_coordinates(weight, points, order=1, mode="constant")
    field_c = ndimage.map_coordinates(smooth, points, order=1, mode="constant")
    coarse_mask = weight_c >= 0.5
    return np.where(coarse_mask, field_c / np.maximum(weight_c, 1e-6), 0.0).astype(np.float32), coarse_mask


def from_grid(values: np.ndarray, mask: np.ndarray, shape: Sequence[int], voxel_size_mm: Vector3,
              source_mm: Vector3) -> np.ndarray:
    """``values`` (defined in ``mask``) of a ``source_mm`` grid, sampled trilinearly on the ``shape`` grid of
    ``voxel_size_mm`` voxels over the same extent, after extending them past ``mask`` by the nearest value."""
    _, nearest = ndimage.distance_transform_edt(~mask, return_indices=True)
    filled = values[tuple(nearest)]
    ratio = [h / s for h, s in zip(voxel_size_mm, source_mm)]
    return ndimage.map_coordinates(filled.astype(np.float32), _coordinates(shape, ratio), order=1,
                                   mode="nearest").astype(np.float32)


def nextqsm(total_field_ppm: torch.Tensor, mask: torch.Tensor, *, voxel_size_mm: Vector3 = (1.0, 1.0, 1.0),
            b0_dir: Vector3 = (0.0, 0.0, 1.0), weights: str = "") -> BackgroundResult:
    """The local field (ppm) by NeXtQSM's background U-Net.

    Parameters
    ----------
    total_field_ppm
        Unwrapped total field (ppm), ``(X, Y, Z)``.
    mask
        Brain mask ``(X, Y, Z)``.
    voxel_size_mm, b0_dir
        Geometry of the data; the network is not told B0 (as in the paper), the grid is resampled
        to the network's voxel size.
    weights
        Shipped weights name or card path of a ``background-unet``; ``""``: the shipped default.
    """
    from ...models import BACKGROUND_ARCHITECTURES
    from ...pipeline.learned import load_cached, shipped_defaults

    data = prepare(total_field_ppm, mask, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir)
    if not weights:
        weights = shipped_defaults().get(BACKGROUND_ARCHITECTURES[0], "")
        if not weights:
            raise ParameterError("no weights for the background network are shipped (torchqsm models lists them)")
    loaded = load_cached(weights, "cpu")
    if loaded.card["architecture"] not in BACKGROUND_ARCHITECTURES:
        raise ParameterError(f"'{weights}' is a {loaded.card['architecture']} network, not a background network "
                             f"({', '.join(BACKGROUND_ARCHITECTURES)})")
    trained = tuple(float(v) for v in loaded.card.get("voxel_size_mm", (2.5, 2.5, 2.5)))
    field = data.field.detach().cpu().double().numpy()
    inside = data.mask.cpu().numpy()
    coarse, coarse_mask = to_grid(field, inside, data.voxel_size_mm, trained)
    if not coarse_mask.any():
        raise InputError(f"the mask holds no voxel at the background network's {trained[0]:g} mm grid "
                         "(too small a brain or too thin a slab for it)")
    model = loaded.model.eval()
    normalization = loaded.normalization
    with torch.inference_mode():
        x = normalization.to_network(torch.from_numpy(coarse))[None, None]
        m = torch.from_numpy(coarse_mask).float()[None, None]
        local_c = normalization.from_network(model(x, m))[0, 0].numpy()
    background = from_grid(coarse - local_c, coarse_mask, field.shape, data.voxel_size_mm, trained)
    local = torch.from_numpy(np.where(inside, field - background, 0.0)).to(total_field_ppm.device,
                                                                           data.field.dtype)
    if not bool(torch.isfinite(local).all()):
        raise InputError("the background network produced non-finite values")
    return BackgroundResult(local, data.mask.to(total_field_ppm.device))
