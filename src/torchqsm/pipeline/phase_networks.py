r"""Phase networks in the pipeline: wrapped multi-echo phase → χ in one network (iQSM, iQSM+).

A recipe with ``phase_network`` set (``torchqsm run --recipe iqsm+``) runs only the mask step
before the network: no unwrapping, echo combination, background removal or dipole inversion
(:class:`~torchqsm.models.iqsm.IQSM`: its LoT layer replaces the first three). The network reads
the record's echo times and field strength (the LoT is scaled by them) and, for iQSM+, its B0
direction in voxel coordinates; it applies at any orientation without rotating the data. Its U-Net
saw one voxel size (the card's) and its LoT stencil is that grid's: data whose voxels differ by more
than 5 % is resampled to it through each echo's complex signal (trilinear cos φ and sin φ, no
rotation), and χ back. χ is defined in the mask eroded by one voxel (the reach of the LoT stencil).

Units: wrapped phase in radians in; χ in ppm out.
"""

from __future__ import annotations

import math

import torch

from ..acquisition import Acquisition
from ..errors import InputError, ParameterError
from ..validation import LOG

__all__ = ["PHASE_ARCHITECTURES", "phase_network_inversion", "weights_for"]

#: Architectures of :mod:`torchqsm.models` that take wrapped phase (``phase_to_chi``).
PHASE_ARCHITECTURES = ("iqsm", "iqsm+")
_WRAPPED_LIMIT = math.pi + 1e-3


def _to_network_grid(phase_rad: torch.Tensor, mask: torch.Tensor, voxel_size_mm, network_voxel_mm):
    """Each echo's wrapped phase resampled to the network's voxel size through its complex signal (no rotation).

    Returns the phase on the network's grid, its mask and the :class:`~torchqsm.models.reorient.ModelFrame`
    that maps χ back. Trilinear interpolation of cos φ and sin φ, normalised by the mask, keeps the phase
    wrapped; B0's direction in voxel coordinates does not change when only the voxel size does.
    """
    from ..models.reorient import to_model_frame

    echoes = []
    for echo in phase_rad:
        cos, grid_mask, frame = to_model_frame(torch.cos(echo), mask, voxel_size_mm=voxel_size_mm, b0_dir=(0.0, 0.0, 1.0),
                                               model_voxel_size_mm=network_voxel_mm)
        sin = to_model_frame(torch.sin(echo), mask, voxel_size_mm=voxel_size_mm, b0_dir=(0.0, 0.0, 1.0),
                             model_voxel_size_mm=network_voxel_mm)[0]
        echoes.append(torch.atan2(sin, cos) * grid_mask)
    return torch.stack(echoes), grid_mask, frame


def _lot_pass(chi: torch.Tensor, phase: torch.Tensor, mask: torch.Tensor, record: Acquisition,
              network: str) -> torch.Tensor:
    """:func:`torchqsm.refine.lot_tv_consistency` of ``chi`` on ``mask`` with a progress bar, or ``chi`` with a
    warning where the mask leaves it no data voxel."""
    from tqdm.auto import tqdm

    from ..refine.lot import data_region
    from ..refine.lot_tv import DEFAULT_ITERATIONS, lot_tv_consistency

    if not bool(data_region(mask).any()):
        LOG.warning("%s: the mask has no voxel 2 voxels inside its edge; LoT data consistency is skipped", network)
        return chi
    # disable=None: no bar when stderr is not a terminal (logs, CI)
    with tqdm(total=DEFAULT_ITERATIONS, desc=f"{network}: LoT data consistency", unit="it", leave=False,
              dynamic_ncols=True, disable=None) as bar:
        return lot_tv_consistency(chi * mask, phase, mask, record, progress=bar.update)


def weights_for(name: str) -> str:
    """A phase-network method (``iqsm``, ``iqsm+``) → its shipped weights; else ``name`` as weights or a card path."""
    from .learned import shipped_defaults

    if name in PHASE_ARCHITECTURES:
        defaults = shipped_defaults()
        if name not in defaults:
            raise ParameterError(f"no weights for the phase network '{name}' are shipped (torchqsm models lists them)")
        return defaults[name]
    return name


def phase_network_inversion(phase_rad: torch.Tensor, mask: torch.Tensor, acquisition: Acquisition, *,
                            network: str, source: str | None = None,
                            refine: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """χ (ppm) of a phase network on wrapped multi-echo phase, and the mask it is defined on.

    Parameters
    ----------
    phase_rad
        ``(E, X, Y, Z)`` wrapped phase in radians, in [-π, π] (the pipeline's phase scaling gives it).
    mask
        ``(X, Y, Z)`` brain mask.
    acquisition
        The record: ``E`` echo times (s), field strength (T), B0 direction (voxel coordinates) and voxel size.
    network
        ``iqsm`` or ``iqsm+`` (their shipped weights), or a weights name or card path of such a network.
    source
        Named in error messages.
    refine
        ``lot``: the network's χ, on the data's grid, plus a TV-regularised correction that makes its
        field's Laplacian match the congruent Laplacian of the same wrapped phase
        (:func:`torchqsm.refine.lot_tv_consistency`, α by the phase's noise); ``none``: the bare network.

    Returns
    -------
    tuple of Tensor
        χ (ppm, zero outside the returned mask) and the mask eroded by one voxel.
    """
    from ..models.inference import crop, pad_to_multiple
    from ..models.iqsm import stencil_interior
    from ..models.reorient import SAME_VOXEL_TOLERANCE, same_voxel_size
    from .learned import load_cached, warn_if_weak

    from .recipes import PHASE_REFINEMENTS

    if refine not in PHASE_REFINEMENTS:
        raise ParameterError(f"unknown phase refinement '{refine}'; choose one of {', '.join(PHASE_REFINEMENTS)}")
    acquisition.require("echo_times_s", "b0_tesla", "b0_dir", "voxel_size_mm", method=network)
    record = acquisition
    if phase_rad.ndim != 4 or tuple(phase_rad.shape[1:]) != tuple(mask.shape):
        raise InputError(f"the phase network needs phase (echoes, X, Y, Z) and a mask (X, Y, Z); got "
                         f"{tuple(phase_rad.shape)} and {tuple(mask.shape)}", source=source)
    if len(record.echo_times_s) != phase_rad.shape[0]:
        raise InputError(f"{len(record.echo_times_s)} echo times for {phase_rad.shape[0]} echoes", source=source)
    if not bool(torch.isfinite(phase_rad).all()):
        raise InputError("the phase has NaN or infinite values", source=source)
    largest = float(phase_rad.abs().max())
    if largest > _WRAPPED_LIMIT:
        raise InputError(f"the phase network needs wrapped phase in radians, in [-π, π]; the phase reaches "
                         f"{largest:.4g} (rescale it, or pass the raw scanner phase to `torchqsm run`)", source=source)
    loaded = load_cached(weights_for(network), str(phase_rad.device))
    architecture = loaded.card["architecture"]
    if architecture not in PHASE_ARCHITECTURES:
        raise ParameterError(f"'{network}' is a {architecture} network (local field → χ); a phase network is one of "
                             f"{', '.join(PHASE_ARCHITECTURES)}")
    if refine == "none":  # the card scores the bare network; the refined χ is scored apart (docs/refine.md)
        warn_if_weak(loaded, network)
    trained = tuple(float(v) for v in loaded.card.get("voxel_size_mm", (1.0, 1.0, 1.0)))
    model = loaded.model.eval()
    inside = (mask != 0).to(phase_rad.device)
    eroded = stencil_interior(inside[None, None])[0, 0] > 0  # where the network sees its LoT input
    if not bool(eroded.any()):
        raise InputError("the mask is empty after the one-voxel erosion of the phase network", source=source)
    same = same_voxel_size(record.voxel_size_mm, trained)
    if same:
        phase, net_mask, frame = phase_rad.float() * inside, inside, None
    else:
        phase, net_mask, frame = _to_network_grid(phase_rad.float(), inside, record.voxel_size_mm, trained)
        coarser = any(t > (1 + SAME_VOXEL_TOLERANCE) * v for t, v in zip(trained, record.voxel_size_mm))
        (LOG.warning if coarser and refine == "none" else LOG.info)(
            "%s: the network '%s' was trained at %s mm voxels; the phase is resampled from %s mm to them and χ "
            "back%s", network, loaded.name, "×".join(f"{v:g}" for v in trained),
            "×".join(f"{v:g}" for v in record.voxel_size_mm),
            "" if not coarser else ", so χ has the network's coarser resolution" if refine == "none"
            else "; LoT data consistency on the data's grid then adds the finer detail from the phase")
    padded, region = pad_to_multiple(phase[None], model.multiple)
    padded_mask, _ = pad_to_multiple(net_mask.float()[None, None], model.multiple)
    with torch.inference_mode():
        out = model(padded, padded_mask, echo_times_s=list(record.echo_times_s), b0_tesla=float(record.b0_tesla),
                    b0_dir=list(record.b0_dir))
    chi = crop(loaded.normalization.from_network(out)[0], region)[0]
    if frame is not None:
        seen = stencil_interior(net_mask[None, None].float())[0, 0]  # where the network read its LoT input
        chi = frame.to_original(chi * seen)
        eroded = eroded & (frame.to_original(seen) > 0.5)
        if not bool(eroded.any()):
            raise InputError(f"the mask holds no interior voxel of the network's {trained} mm grid", source=source)
    if refine == "lot":  # on the data's own grid: the detail finer than the network's comes from the data
        chi = _lot_pass(chi, phase_rad.float(), eroded, record, network)
    if not bool(torch.isfinite(chi).all()):
        raise InputError(f"the phase network '{network}' produced non-finite values", source=source)
    return chi * eroded, eroded
