r"""One simulated subject: ground truth, fields and signal maps (what the training dataset cuts into samples).

:func:`simulate_volume` draws, in a fixed order from one generator, a hybrid head (labels warped
by a random deformation, χ per tissue with texture) or a box of random shapes, a B0 direction and
field strength, optional lesions, the local field :math:`f_L = D(\chi\,m)`, for the tasks that
need it the background (the head outside the brain, external sources, a shim residual) and, for
the phase task, M0, R2*, a receive-phase offset and an SNR; then white-matter anisotropy, veins
and a residual background, each only when configured. :class:`~torchqsm.simulate.dataset.SimulationConfig`
says what to draw; :mod:`torchqsm.simulate.dataset` cuts the patches.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..physics import DipoleOp
from .anatomy import TISSUES, HeadModel, load_head_model, sample_tissue_chi, tissue, tissue_parameters
from .anisotropy import anisotropic_field, random_fibre_directions
from .background import external_sources, shim_field
from .forward import HEAD_KERNEL_FORM
from .hybrid import hybrid_chi, random_deformation
from .lesions import add_lesions, add_veins
from .orientation import random_b0_dir
from .partial_volume import fine_veins
from .phantoms import ellipsoid
from .shapes import random_shapes
from .signal import smooth_phase_offset

if TYPE_CHECKING:
    from .dataset import SimulationConfig

__all__ = ["BACKGROUND_PAD_MM", "LESION_KINDS", "SimulatedVolume", "simulate_volume"]

LESION_KINDS: tuple[str, ...] = ("haemorrhage", "calcification", "microbleed", "ms")
#: Least zero padding (mm per side) of the convolution of everything outside the brain (the head's
#: 9 ppm air-tissue edge, external sources): with less, the periodic images and the cut of the
#: kernel leave a field that is not harmonic in the brain, which no background removal (and no
#: network) can separate from the local field. Measured on 80³ regions at 1 mm (the iQSM configs),
#: the Laplacian of the background in the brain eroded by 5 mm was 3.1-4.6 % of the local field's
#: with 16 voxels, 0.4-0.6 % with 48 or 80; on whole heads V-SHARP's local field error fell from
#: 154 % to 75 % (64 voxels). The suite pads by the same 48 mm.
BACKGROUND_PAD_MM = 48.0


@dataclass(frozen=True)
class SimulatedVolume:
    """One simulated subject on its grid (X, Y, Z): ground truth, fields and signal parameters.

    ``chi_ppm`` is the brain's χ (relative to CSF, zero outside ``mask``);
    ``local_field_ppm`` its field; ``total_field_ppm`` adds the head outside the brain
    (referenced to air), external sources and the shim residual; ``m0``, ``r2star_hz`` and
    ``phase_offset_rad`` feed :func:`~torchqsm.simulate.signal.complex_gre_signal`. Fields and
    signal maps not needed by the task are ``None``.
    """

    chi_ppm: torch.Tensor
    mask: torch.Tensor
    local_field_ppm: torch.Tensor
    total_field_ppm: torch.Tensor | None
    m0: torch.Tensor | None
    r2star_hz: torch.Tensor | None
    phase_offset_rad: torch.Tensor | None
    b0_dir: tuple[float, float, float]
    b0_tesla: float
    snr: float | None
    voxel_size_mm: tuple[float, float, float]
    model_error_ppm: torch.Tensor | None = None


@functools.lru_cache(maxsize=4)
def _head_model(voxel_size_mm: tuple[float, float, float]) -> tuple[HeadModel, torch.Tensor, torch.Tensor]:
    """The head model, a lookup table label → is brain, and the brain's voxel indices (once per process)."""
    model = load_head_model(voxel_size_mm=voxel_size_mm)
    is_brain = torch.zeros(256, dtype=torch.bool)
    is_brain[torch.unique(model.labels[model.brain_mask]).long()] = True
    return model, is_brain, torch.nonzero(is_brain[model.labels.long()]).to(torch.int16)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), dtype=torch.float64, generator=generator))


def _region(model: HeadModel, size: tuple[int, ...] | None, brain: torch.Tensor,
            generator: torch.Generator) -> torch.Tensor:
    """The labels of a box of ``size`` centred on a random brain voxel (``brain``: indices; whole head for ``None``)."""
    if size is None:
        return model.labels
    centre = brain[int(torch.randint(len(brain), (), generator=generator))].tolist()
    corner = [min(max(c - s // 2, 0), max(n - s, 0)) for c, s, n in zip(centre, size, model.labels.shape)]
    return model.labels[tuple(slice(c, c + s) for c, s in zip(corner, size))].contiguous()


def _head_chi(config: SimulationConfig, generator: torch.Generator):
    """Labels, χ (ppm, relative to CSF), χ relative to the air outside, and brain mask of one random subject."""
    model, is_brain, brain_voxels = _head_model(tuple(config.voxel_size_mm))
    labels = _region(model, config.region_size, brain_voxels, generator)
    if config.deform:
        labels = random_deformation(labels, generator=generator, voxel_size_mm=config.voxel_size_mm)
    mask = is_brain[labels.long()]
    if config.texture:
        ranges = {t.label: t.chi_range_ppm for t in TISSUES}
        chi = hybrid_chi(labels, chi_ranges_ppm=ranges, generator=generator, voxel_size_mm=config.voxel_size_mm)
    else:
        chi = sample_tissue_chi(labels, generator=generator)
    outside = labels == tissue("air").label
    air = chi[outside].mean() if bool(outside.any()) else chi.new_tensor(tissue("air").chi_range_ppm).mean()
    return labels, chi.float(), torch.where(outside, 0.0, chi - air).float(), mask


def _shapes_chi(config: SimulationConfig, generator: torch.Generator):
    shape = config.shapes_volume
    radii = [n * _uniform(generator, 0.32, 0.45) for n in shape]
    mask = ellipsoid(shape, radii=radii, supersample=1, dtype=torch.float64) > 0.5
    chi = random_shapes(shape, generator=generator, mask=mask).float()
    return None, chi, chi, mask


def _background_pad(config: SimulationConfig) -> tuple[int, int, int]:
    """Padding (voxels per side) of the background's convolution: ``pad``, at least :data:`BACKGROUND_PAD_MM`."""
    return tuple(max(config.pad, math.ceil(BACKGROUND_PAD_MM / h - 1e-9)) for h in config.voxel_size_mm)  # type: ignore


def simulate_volume(config: SimulationConfig, generator: torch.Generator) -> SimulatedVolume:
    """Simulate one random subject as ``config`` asks: ground truth, fields and signal maps.

    The draws come from ``generator`` in a fixed order, so one seed gives one subject. The
    background (head outside the brain referenced to air, external sources, shim residual) is
    made only for ``total_to_local`` and ``phase_to_chi``; M0, R2* and the receive-phase offset
    only for ``phase_to_chi``.
    """
    labels, chi, chi_in_air, mask = (_head_chi if config.source == "head" else _shapes_chi)(config, generator)
    b0_dir = random_b0_dir(generator=generator, max_tilt_deg=config.max_tilt_deg)
    b0_tesla = float(config.b0_tesla[int(torch.randint(len(config.b0_tesla), (), generator=generator))])
    if float(torch.rand((), generator=generator)) < config.lesion_probability and config.lesion_count[1] > 0:
        kind = LESION_KINDS[int(torch.randint(len(LESION_KINDS), (), generator=generator))]
        count = int(torch.randint(config.lesion_count[0], config.lesion_count[1] + 1, (), generator=generator))
        lesioned, _ = add_lesions(chi, mask, kind=kind, count=count, generator=generator,
                                  voxel_size_mm=config.voxel_size_mm)
        chi_in_air = chi_in_air + (lesioned.float() - chi)
        chi = lesioned.float()
    shape = tuple(chi.shape)
    needs_background = config.task != "local_to_chi"
    dipole = DipoleOp(shape, voxel_size_mm=config.voxel_size_mm, b0_dir=b0_dir, pad=config.pad)
    local = dipole(chi * mask)
    total = m0 = r2star = offset = snr = None
    if needs_background:
        # Everything outside the brain (the head's air-tissue edge, external sources) through the
        # voxel-integrated kernel: harmonic in the brain at any B0 (docs/conventions.md, "Oblique B0").
        head = DipoleOp(shape, voxel_size_mm=config.voxel_size_mm, b0_dir=b0_dir, pad=_background_pad(config),
                        form=HEAD_KERNEL_FORM)
        outside = chi_in_air + external_sources(shape, mask, generator=generator, count=config.external_sources,
                                                voxel_size_mm=config.voxel_size_mm).float() - chi * mask
        total = local + head(outside) + shim_field(shape, generator=generator,
                                                   amplitude_ppm=config.shim_amplitude_ppm).float()
    if config.task == "phase_to_chi":
        if labels is not None:
            m0, r2star = tissue_parameters(labels, b0_tesla=b0_tesla, generator=generator)
        else:
            m0, r2star = mask.float(), (20.0 * b0_tesla / 3.0) * mask.float()
        offset = smooth_phase_offset(shape, generator=generator, amplitude_rad=config.phase_offset_rad)
        if config.snr_range is not None:
            low, high = (math.log(v) for v in config.snr_range)
            snr = math.exp(_uniform(generator, low, high))
    if config.wm_anisotropy_ppm[1] > 0 and labels is not None:  # last: earlier draws of a seed stay as they were
        anisotropy = _uniform(generator, *config.wm_anisotropy_ppm)
        wm = mask & (labels == tissue("white_matter").label)
        fibres = random_fibre_directions(wm, generator=generator, voxel_size_mm=config.voxel_size_mm)
        extra = anisotropic_field(anisotropy * wm.float(), fibres, b0_dir=b0_dir, voxel_size_mm=config.voxel_size_mm,
                                  pad=config.pad)
        local = local + extra
        total = None if total is None else total + extra
    if config.veins[1] > 0:  # after the anisotropy: earlier draws of a seed stay as they were
        count = int(torch.randint(config.veins[0], config.veins[1] + 1, (), generator=generator))
        if config.vein_factor > 1:
            veined, extra = fine_veins(chi * mask, mask, count=count, factor=config.vein_factor, generator=generator,
                                       voxel_size_mm=config.voxel_size_mm, b0_dir=b0_dir, pad=config.pad)
        else:
            veined = add_veins(chi, mask, count=count, generator=generator, voxel_size_mm=config.voxel_size_mm).float()
            extra = dipole((veined - chi) * mask)
        chi, local = veined, local + extra
        total = None if total is None else total + extra
    if config.residual_background_ppm[1] > 0 and config.task == "local_to_chi":  # last
        rms = _uniform(generator, *config.residual_background_ppm)
        sources = external_sources(shape, mask, generator=generator, count=(5, 20), chi_range_ppm=(-1.0, 1.0),
                                   voxel_size_mm=config.voxel_size_mm).float()
        head = DipoleOp(shape, voxel_size_mm=config.voxel_size_mm, b0_dir=b0_dir, pad=_background_pad(config),
                        form=HEAD_KERNEL_FORM)
        residual = head(sources) * mask
        residual = residual - residual[mask].mean() if bool(mask.any()) else residual
        size = float(residual[mask].square().mean().sqrt()) if bool(mask.any()) else 0.0
        if size > 0:
            local = local + (rms / size) * residual * mask
    model_error = None
    if config.patch_dipole and config.task == "local_to_chi":  # what the scalar dipole model does not explain
        model_error = local - dipole(chi * mask)
    return SimulatedVolume(chi_ppm=chi * mask, mask=mask, local_field_ppm=local, total_field_ppm=total, m0=m0,
                           r2star_hz=r2star, phase_offset_rad=offset, b0_dir=b0_dir, b0_tesla=b0_tesla, snr=snr,
                           voxel_size_mm=tuple(float(h) for h in config.voxel_size_mm), model_error_ppm=model_error)
