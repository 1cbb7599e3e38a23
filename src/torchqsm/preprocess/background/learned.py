r"""NeXtQSM's learned background removal: the background U-Net of a shipped card, on the data's grid.

:func:`nextqsm` runs a :class:`~torchqsm.models.background.BackgroundUNet` (architecture
``background-unet``, NeXtQSM's first stage) on a total field. The network was trained at its
card's voxel size (2.5 mm for the shipped ``nextqsm-background-cpu``). Data at another voxel size
is resampled to it (trilinear, normalised by the mask: :func:`torchqsm.models.to_model_frame`
with B0 left where it is, since the network saw B0 over the whole sphere). The network's
*background* estimate (total minus local on the coarse grid) is brought back, not its local field:
the background is smooth inside the brain, so the local field keeps the data's own resolution.

Near the mask's edge the background is steep and its interpolation error large. Measured on the
evaluation suite's baseline head (1 mm, true background, 1 mm → 2.5 mm → 1 mm): the rms error is
4.4× the local field's rms over the whole mask, 0.50× in the mask eroded by 2 voxels and 0.07× by
5 voxels. The local field is therefore returned on the mask eroded by ``erode_mm`` (default: one
network voxel when the data is resampled, none when it is not).

The network was trained on whole heads. On a brain cut by the field of view it is outside what it
learned: the suite's baseline head, local field NRMSE (demeaned, in the region both keep) of this
method against V-SHARP: whole head 51.7 / 52.0 %, central 100 mm cube 59.8 / 38.3 %, 80 mm
65.0 / 40.3 %, 60 mm 72.5 / 60.5 %, 40 mm 80.7 / 68.5 % (2026-12-06). When the mask spans less
than :data:`WHOLE_BRAIN_MM` along an axis (an adult brain spans more along every axis; the suite's
spans 128–186 mm), :func:`nextqsm` says so in one warning line.

References
----------
Cognolato F, O'Brien K, Jin J, et al. NeXtQSM: a complete deep learning pipeline for data-consistent
quantitative susceptibility mapping trained with hybrid data. Med Image Anal 2023;84:102700.
doi:10.1016/j.media.2022.102700
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...errors import InputError, ParameterError
from ...validation import LOG
from ._common import SMV, BackgroundResult, prepare

__all__ = ["nextqsm", "DEFAULT_WEIGHTS", "WHOLE_BRAIN_MM"]

#: The shipped background network :func:`nextqsm` loads unless told otherwise.
DEFAULT_WEIGHTS = "nextqsm-background-cpu"
#: A mask shorter than this (mm) along any axis is not a whole brain: the network warns it was not trained so.
WHOLE_BRAIN_MM = 100.0

Vector3 = Sequence[float]


def nextqsm(
    total_field_ppm: torch.Tensor,
    mask: torch.Tensor,
    *,
    voxel_size_mm: Vector3 = (1.0, 1.0, 1.0),
    b0_dir: Vector3 = (0.0, 0.0, 1.0),
    weights: str = "",
    erode_mm: float | None = None,
) -> BackgroundResult:
    r"""Local field (ppm) from the total field by NeXtQSM's background U-Net.

    Parameters
    ----------
    total_field_ppm, mask, voxel_size_mm, b0_dir
        Total field (ppm of B0) and brain mask, shape ``(X, Y, Z)``, and the geometry. B0 is not
        needed by the network (it was trained over the whole sphere) and is only validated.
    weights
        Shipped model name or path to its ``.json`` card (``torchqsm models``); default
        :data:`DEFAULT_WEIGHTS`. Its architecture must be ``background-unet``.
    erode_mm
        Depth (mm) of the edge band left out of the result, where the resampled background is
        unreliable. Default: the card's largest voxel dimension when the data is resampled, 0 when
        the data is at the card's voxel size.

    Returns
    -------
    BackgroundResult
        The local field on the (eroded) mask.

    Raises
    ------
    InputError
        The weights cannot be read or are not a background network, or the mask is empty after erosion.
    """
    from ...models.reorient import same_voxel_size, to_model_frame
    from ...pipeline.learned import load_cached

    field = prepare(total_field_ppm, mask, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir)
    name = weights or DEFAULT_WEIGHTS
    device = field.field.device
    loaded = load_cached(name, str(device))
    if loaded.card["architecture"] != "background-unet":
        raise InputError(f"'{name}' is a '{loaded.card['architecture']}' network, not a background network "
                         "(architecture 'background-unet')", source=str(loaded.path))
    model_voxel = tuple(float(v) for v in loaded.card["voxel_size_mm"])
    same = same_voxel_size(field.voxel_size_mm, model_voxel)
    if erode_mm is None:
        erode_mm = 0.0 if same else max(model_voxel)
    if not (math.isfinite(erode_mm) and erode_mm >= 0):
        raise ParameterError(f"erode_mm must be a finite number ≥ 0 (mm), got {erode_mm}")
    extent = _extent_mm(field.mask, field.voxel_size_mm)
    if min(extent) < WHOLE_BRAIN_MM:
        LOG.warning("nextqsm background: the mask spans %s mm, not a whole brain, but '%s' was trained on whole "
                    "heads; on cropped heads it did worse than vsharp (suite head cut to a 100 mm cube: 59.8 %% "
                    "against 38.3 %% local-field NRMSE): consider --background vsharp or pdf",
                    "×".join(f"{e:.0f}" for e in extent), name)
    dtype = torch.float32
    total = field.field.to(dtype)
    if same:
        coarse, coarse_mask, frame = total, field.mask, None
    else:
        coarse, coarse_mask, frame = to_model_frame(total, field.mask, voxel_size_mm=field.voxel_size_mm,
                                                    b0_dir=(0.0, 0.0, 1.0), model_voxel_size_mm=model_voxel)
        if not bool(coarse_mask.any()):
            raise InputError(f"the mask holds no voxel of the network's {model_voxel} mm grid")
    norm = loaded.normalization
    with torch.no_grad():
        local = loaded.model(norm.to_network(coarse[None, None]), coarse_mask[None, None].to(dtype))[0, 0]
    local = local * norm.output_scale_ppm
    if frame is None:
        result = local
    else:
        background = frame.to_original(torch.where(coarse_mask, coarse - local, 0.0))
        result = total - background
    region = field.mask
    if erode_mm > 0 and any(erode_mm >= h for h in field.voxel_size_mm):
        try:
            ball = SMV(field.shape, erode_mm, voxel_size_mm=field.voxel_size_mm, device=device)
            region = region & ball.erode(field.mask)
        except ParameterError:  # the ball does not fit the grid: nothing is left
            region = torch.zeros_like(region)
    if not bool(region.any()):
        raise InputError(f"the mask is empty after erosion by {erode_mm:g} mm; use a smaller erode_mm or a larger mask")
    return field.result(result.to(field.field.dtype), region)


def _extent_mm(mask: torch.Tensor, voxel_size_mm: Sequence[float]) -> tuple[float, ...]:
    """The size (mm) of the mask's bounding box along each axis."""
    inside = mask.nonzero()
    return tuple(float(inside[:, axis].max() - inside[:, axis].min() + 1) * float(h)
                 for axis, h in enumerate(voxel_size_mm))
