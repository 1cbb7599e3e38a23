r"""Run a dipole-inversion network on a whole volume, in memory-bounded tiles if needed.

:func:`predict` masks and normalises the local field, zero-pads it to the network's
``multiple``, runs the network (whole, or in overlapping tiles when the estimated
memory exceeds a budget) and returns χ in ppm on the input's grid.

Tiling (:mod:`torchqsm.models.tiling`): cores overlap and carry a discarded context halo,
on the network's pooling grid, blended with sin² ramps; a 3×3×3 U-Net of depth 4 reaches
~100 voxels, with fast-decaying influence, so the halo only loses far context.
"""

from __future__ import annotations

import copy as _copy
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .. import validation
from ..errors import ParameterError
from .normalization import Normalization
from .tiling import Region, Tile, _round_up, _triple, plan_tiles, tiled

__all__ = ["predict", "predict_consistent", "estimate_memory_mb", "pad_to_multiple", "crop", "plan_tiles", "Tile",
           "inference_copy"]

logger = logging.getLogger(__name__)

#: Peak memory of a forward pass ÷ (activation values per voxel × voxels × 4 bytes).
#: Calibrated on CPU (growth of the maximum resident memory, ``torch.inference_mode``, float32):
#: 0.60 and 0.59 for the DF-QSM U-Net at 64³ and 96³, 0.49 and 0.42 for xQSM, as activations
#: are freed during the pass; 0.8 leaves a third in reserve.
MEMORY_SAFETY_FACTOR = 0.8


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int]) -> tuple[torch.Tensor, Region]:
    """Zero-pad the last three axes of ``x`` to multiples of ``multiple``, evenly on both sides.

    Returns the padded tensor and the region of the original inside it, for :func:`crop`.

    >>> padded, region = pad_to_multiple(torch.ones(5, 8, 3), 4)
    >>> padded.shape, region[0]
    (torch.Size([8, 8, 4]), slice(1, 6, None))
    >>> torch.equal(crop(padded, region), torch.ones(5, 8, 3))
    True
    """
    multiples = _triple(multiple, "multiple")
    before, after = [], []
    for size, m in zip(x.shape[-3:], multiples):
        extra = _round_up(size, m) - size
        before.append(extra // 2)
        after.append(extra - extra // 2)
    widths = [w for axis in (2, 1, 0) for w in (before[axis], after[axis])]  # F.pad: last axis first
    padded = F.pad(x, widths) if any(widths) else x
    region = tuple(slice(b, b + s) for b, s in zip(before, x.shape[-3:]))
    return padded, region  # type: ignore[return-value]


def crop(x: torch.Tensor, region: Region) -> torch.Tensor:
    """The ``region`` (three slices, from :func:`pad_to_multiple`) of the last three axes of ``x``."""
    return x[(..., *region)]


def estimate_memory_mb(model: nn.Module, shape: Sequence[int]) -> float:
    r"""Estimated peak memory (MiB) of one inference forward pass on a ``(X, Y, Z)`` volume.

    .. math:: M = s \cdot a \cdot XYZ \cdot 4\,\mathrm{B}, \qquad
              a = \frac{1}{V_\mathrm{probe}} \sum_{\text{layers}} \mathrm{numel}(\text{output})

    ``a`` (activation values per input voxel, summed over every layer that does not work
    in place) comes from one forward pass on a small probe (``2 * multiple`` voxels per
    axis); ``s`` is :data:`MEMORY_SAFETY_FACTOR`. The estimate is for float32; autocast
    on CUDA needs less.

    >>> from torchqsm.models import UNet3d
    >>> round(estimate_memory_mb(UNet3d(base_channels=4, depth=2), (64, 64, 64)))
    40
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is None:
        raise ParameterError("model has no convolution: cannot probe its activations")
    side = 2 * int(getattr(model, "multiple", 1))
    counted = 0

    def hook(module, inputs, output) -> None:
        nonlocal counted
        if isinstance(output, torch.Tensor) and not (inputs and isinstance(inputs[0], torch.Tensor)
                                                     and output.data_ptr() == inputs[0].data_ptr()):
            counted += output.numel()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    probe = torch.zeros(1, conv.in_channels, side, side, side, device=conv.weight.device, dtype=conv.weight.dtype)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            if getattr(model, "orientation_adaptive", False):  # OA-LFE: any unit direction probes the same sizes
                model(probe, torch.tensor([[0.0, 0.0, 1.0]], device=probe.device, dtype=probe.dtype))
            else:
                model(probe)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    per_voxel = counted / side ** 3 + 2 * conv.in_channels  # + input and output
    return MEMORY_SAFETY_FACTOR * per_voxel * math.prod(int(s) for s in shape) * 4 / 2 ** 20


def _default_budget_mb(device: torch.device) -> float:
    """Half the free RAM (CPU) or 80 % of the free GPU memory (CUDA); infinite when unknown."""
    try:
        if device.type == "cuda":
            return 0.8 * torch.cuda.mem_get_info(device)[0] / 2 ** 20
        return 0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (ValueError, OSError, AttributeError, RuntimeError):
        return math.inf


def field_and_mask(local_field_ppm, mask, *, min_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A network's inputs checked by :func:`torchqsm.validation.field_and_mask`: (field, boolean mask)
    on the field's device.

    :class:`InputError` for arrays that are not 3-D (or have fewer than ``min_size`` voxels along
    an axis), differing shapes, an empty mask, or a NaN/infinite field value inside the mask; such
    values outside the mask are set to zero (and logged).
    """
    return validation.field_and_mask(local_field_ppm, mask, name="local_field_ppm", min_size=min_size)


def _network_input(model: nn.Module, local_field_ppm, mask, normalization: Normalization, device):
    """Checked field and mask, the masked, normalised field zero-padded to the network's multiple (and the
    padded mask and the region to crop back), the device to run on and the multiple."""
    field, inside = field_and_mask(local_field_ppm, mask)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else field.device
    device = torch.device(device)
    multiple = int(getattr(model, "multiple", 1))
    x = normalization.to_network(torch.where(inside, field, 0).to(torch.float32))
    x, region = pad_to_multiple(x, multiple)
    padded_mask, _ = pad_to_multiple(inside, multiple)
    return field, inside, x, padded_mask, region, device, multiple


def predict(
    model: nn.Module,
    local_field_ppm: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    *,
    normalization: Normalization,
    tile_size: int | Sequence[int] | None = None,
    overlap: int = 16,
    halo: int = 48,
    max_memory_mb: float | None = None,
    device: torch.device | str | None = None,
    autocast: bool = True,
    channels_last: bool = True,
    progress: bool = False,
    b0_dir: Sequence[float] | None = None,
) -> torch.Tensor | np.ndarray:
    r"""χ (ppm) from a local field (ppm) by a network, whole or in memory-bounded tiles.

    The network sees :math:`x = P\,(m \odot f) / s_\mathrm{in}` (``P``: zero padding to its
    ``multiple``) and its output :math:`y` becomes :math:`\chi = m \odot C(s_\mathrm{out} y)`
    (``C``: crop back).

    Parameters
    ----------
    model
        A network with a ``multiple`` property (e.g. from :func:`~torchqsm.models.build_model`);
        it runs as :func:`inference_copy` (eval mode, batch norm folded; the model itself is not
        changed) under ``torch.inference_mode``.
    local_field_ppm
        Local field (ppm of B0), shape ``(X, Y, Z)``, tensor or numpy array; finite in the mask
        (NaN outside it is set to zero).
    mask
        Region of interest, shape ``(X, Y, Z)`` (non-zero = inside); the field is zeroed outside.
    normalization
        Units of the network's input and output (from its model card).
    tile_size
        Core tile size (voxels, one int or three). ``None``: run the whole volume unless its
        estimated memory (:func:`estimate_memory_mb`) exceeds ``max_memory_mb``, in which case
        the largest cubic tile that fits is used.
    overlap
        Voxels shared by neighbouring cores, blended smoothly.
    halo
        Context voxels added around each core and discarded. A U-Net of depth 4 with 3×3×3
        kernels has a receptive field of ~100 voxels in radius, but far context weighs
        little. Measured on a 96×80×64 smooth field, tiles of 32 along the first axis, the
        relative L2 difference from the whole volume was, for halos 0/16/32/48: 4e-4/5e-8/
        4e-8/4e-8 with PyTorch's default initialisation, and 4e-2/1e-2/3e-3/5e-4 with
        variance-preserving (He) weights, a pessimistic stand-in for a trained network
        whose deep levels matter. Hence 48; smaller halos save time but approximate more.
    max_memory_mb
        Memory budget (MiB) for one forward pass. ``None``: half the free RAM on CPU, 80 %
        of the free GPU memory on CUDA. On CUDA an out-of-memory error also falls back to
        tiles (halving the tile until it fits).
    device
        Where to run the network; default the device of its parameters.
    autocast
        On CUDA, run in bfloat16 (float16 where bf16 is unsupported). CPU stays float32.
    channels_last
        Run the 3-D convolutions in the channels-last (``NDHWC``) memory layout. On this
        project's 2-core CPU, 176×176×160, the shipped ``unet`` took 2.8 s against 4.7 s
        contiguous, ``qsmnet`` 4.0 against 5.4 s and ``xqsm`` 7.7 against 8.8 s (folding
        batch norm saved another ~10 % for ``unet``); outputs agree within 1e-6 relative
        (another summation order).
    progress
        Show a progress bar over the tiles (tqdm).
    b0_dir
        Unit B0 direction in the field's voxel coordinates, for an orientation-adaptive network
        (``model.orientation_adaptive``: OA-LFE modules), which needs it; ignored otherwise.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        χ (ppm), float32, shape ``(X, Y, Z)``, zero outside the mask: a tensor on the field's
        device for a tensor field, a numpy array for a numpy field.

    Raises
    ------
    InputError
        Not 3-D, shapes differ, empty mask, or a NaN/infinite field value in the mask.

    Examples
    --------
    >>> from torchqsm.models import UNet3d
    >>> net = UNet3d(base_channels=2, depth=2)
    >>> chi = predict(net, np.zeros((10, 9, 7)), np.ones((10, 9, 7)), normalization=Normalization())
    >>> type(chi).__name__, chi.shape, chi.dtype
    ('ndarray', (10, 9, 7), dtype('float32'))
    """
    as_numpy = not isinstance(local_field_ppm, torch.Tensor)
    field, inside, x, padded_mask, region, device, multiple = _network_input(model, local_field_ppm, mask,
                                                                            normalization, device)
    network = inference_copy(model, channels_last=channels_last)  # memory estimates below: the original model
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16

    extra = (b0_dir,) if getattr(model, "orientation_adaptive", False) else ()  # OA-LFE: the B0 direction

    def forward(window: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=autocast and device.type == "cuda"):
            return network(window.to(device)[None, None], *extra)[0, 0].float()

    budget = _default_budget_mb(device) if max_memory_mb is None else float(max_memory_mb)
    if tile_size is None and estimate_memory_mb(model, x.shape) > budget:
        tile_size = _fitting_tile(model, x.shape, budget, halo, multiple)
    output = _run(forward, x, padded_mask, tile_size=tile_size, overlap=overlap, halo=halo, multiple=multiple,
                  progress=progress, field_device=field.device)
    chi = torch.where(inside, crop(normalization.from_network(output), region).to(field.device), 0.0)
    return chi.cpu().numpy() if as_numpy else chi


def inference_copy(model: nn.Module, *, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` for inference: eval mode, batch norm folded into the convolution before it.

    Every ``Conv3d`` directly followed by a ``BatchNorm3d`` in an ``nn.Sequential`` (unless its
    ``foldable`` attribute is False: another module runs between them in its parent's forward) becomes one
    convolution with the normalisation's running statistics and affine folded in (the
    normalisation becomes an identity): one pass over the activations less per layer. With
    ``channels_last``, 5-D weights use the channels-last layout. The caller's model is not
    touched. Outputs agree with the original in eval mode to float32 rounding (~1e-6 relative).
    """
    copy = _copy.deepcopy(model).eval()
    for module in copy.modules():
        if not isinstance(module, nn.Sequential) or getattr(module, "foldable", True) is False:
            continue  # not foldable: something runs between its layers (OA-LFE in OAConvBlock)
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d) and norm.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    if channels_last:
        copy.to(memory_format=torch.channels_last_3d)
    return copy


def _run(forward, x: torch.Tensor, padded_mask: torch.Tensor, *, tile_size, overlap: int, halo: int, multiple: int,
         progress: bool, field_device: torch.device) -> torch.Tensor:
    """The network's output on the padded input, whole or tiled; on CUDA out of memory, smaller tiles."""
    while True:  # on CUDA, out of memory → tiles, halved until they fit
        try:
            if tile_size is None:
                return forward(x).to(field_device)
            return tiled(forward, x, padded_mask, tile_size=tile_size, overlap=overlap, halo=halo,
                          multiple=multiple, progress=progress)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            current = max(x.shape) if tile_size is None else min(_triple(tile_size, "tile_size"))
            if current <= multiple:
                raise
            tile_size = max(multiple, current // 2)
            logger.info("out of memory: retrying in tiles of %d voxels", tile_size)


def _fitting_tile(model: nn.Module, shape: Sequence[int], budget_mb: float, halo: int,
                  multiple: int) -> tuple[int, int, int]:
    """Core sizes whose window fits ``budget_mb``: shrink the axis with the longest window first."""
    per_voxel_mb = estimate_memory_mb(model, (1, 1, 1))
    halo = _round_up(halo, multiple)
    sizes = [int(s) for s in shape]

    def windows() -> list[int]:
        return [min(t + 2 * halo, s) for t, s in zip(sizes, shape)]

    while math.prod(windows()) * per_voxel_mb > budget_mb:
        shrinkable = [axis for axis in range(3) if sizes[axis] > multiple]
        if not shrinkable:
            logger.warning("even the smallest tile exceeds %.0f MiB; reduce the halo", budget_mb)
            break
        axis = max(shrinkable, key=lambda a: (windows()[a], sizes[a]))
        sizes[axis] -= multiple
    return tuple(sizes)  # type: ignore[return-value]


def predict_consistent(
    model: nn.Module,
    local_field_ppm: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    *,
    normalization: Normalization,
    b0_dir: Sequence[float],
    voxel_size_mm: Sequence[float],
    device: torch.device | str | None = None,
) -> torch.Tensor | np.ndarray:
    r"""χ (ppm) from a local field (ppm) by a data-consistent network, on the whole volume at its own geometry.

    The network (:mod:`torchqsm.models.unrolled`) applies the dipole operator of ``b0_dir`` and
    ``voxel_size_mm`` inside, so the volume is neither rotated nor resampled; it is not tiled
    either (the dipole field reaches across the whole volume). Input and output as :func:`predict`.

    Examples
    --------
    >>> from torchqsm.models import LPCNN
    >>> chi = predict_consistent(LPCNN(channels=2, blocks=1), np.zeros((10, 9, 7)), np.ones((10, 9, 7)),
    ...                          normalization=Normalization(), b0_dir=(0, 0, 1), voxel_size_mm=(1, 1, 1))
    >>> chi.shape, chi.dtype
    ((10, 9, 7), dtype('float32'))
    """
    as_numpy = not isinstance(local_field_ppm, torch.Tensor)
    field, inside, x, padded_mask, region, device, _ = _network_input(model, local_field_ppm, mask,
                                                                     normalization, device)
    network = _copy.deepcopy(model).eval()
    ratio = normalization.output_scale_ppm / normalization.input_scale_ppm
    with torch.inference_mode():
        y = network(x.to(device)[None, None], padded_mask.to(device)[None, None].float(), b0_dir=tuple(b0_dir),
                    voxel_size_mm=tuple(voxel_size_mm), chi_to_field=ratio)[0, 0].float()
    chi = torch.where(inside, crop(normalization.from_network(y), region).to(field.device), 0.0)
    return chi.cpu().numpy() if as_numpy else chi
