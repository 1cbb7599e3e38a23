r"""Training pairs simulated on the fly: a PyTorch ``IterableDataset`` for three learning tasks.

Each *volume* is one simulated subject: a hybrid head (labels warped by a random deformation,
χ drawn per tissue with texture, optional lesions) or a box of random shapes, a random B0
direction, its local field :math:`f_L = D(\chi\,m)`, a background field from the head outside
the brain, random external sources and a shim residual, and, for the phase task, the multi-echo
GRE signal (``simulate.signal``), simulated by :func:`~torchqsm.simulate.volume.simulate_volume`.
Several *patches* are cut from each volume (the expensive part, the dipole convolution, is then
shared).

Tasks (``SimulationConfig.task``) and the tensors of one sample (channels first):

=================  ======================================  ============================
task               ``input``                               ``target``
=================  ======================================  ============================
``local_to_chi``   local field (1, X, Y, Z), ppm, in mask  χ (1, X, Y, Z), ppm
``total_to_local`` total field (1, X, Y, Z), ppm, in mask  local field (1, X, Y, Z), ppm, in mask
``phase_to_chi``   wrapped phase (E, X, Y, Z), rad         χ (1, X, Y, Z), ppm
``total_to_chi``   total field (1, X, Y, Z), ppm, in mask  χ (1, X, Y, Z), ppm
=================  ======================================  ============================

Every sample also holds ``mask`` (1, X, Y, Z) float 0/1 (the brain), ``b0_dir`` (3,),
``voxel_size_mm`` (3,) and ``seed`` (the volume's seed); ``phase_to_chi`` adds ``magnitude``
(E, X, Y, Z), ``echo_times_s`` (E,) and ``b0_tesla`` (); ``total_to_chi`` (NeXtQSM trained end to
end) adds ``local`` (1, X, Y, Z), the true local field in the mask (ppm).

Seeds
-----
Volume :math:`i` of epoch :math:`e` is simulated from the seed
``derive_seed("train", seed, e, i)`` (BLAKE2b of the salt and the integers). Worker :math:`w`
of :math:`W` (``torch.utils.data.get_worker_info``) simulates volumes
:math:`i \equiv w \pmod W`, so workers never repeat each other and the whole stream is the same
for any number of workers. The evaluation suite (``torchqsm.bench.suite``) uses the salt
``"eval"``: its subjects are never training draws.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import ParameterError
from ..physics import DipoleOp
from .signal import add_complex_noise, complex_gre_signal
from .volume import BACKGROUND_PAD_MM, SimulatedVolume, _uniform, simulate_volume

# simulate_volume, SimulatedVolume and BACKGROUND_PAD_MM live in simulate.volume; importable from here as before.
__all__ = ["SimulationConfig", "SimulatedQSMDataset", "SimulatedVolume", "simulate_volume", "derive_seed",
           "BACKGROUND_PAD_MM"]

Task = Literal["local_to_chi", "total_to_local", "phase_to_chi", "total_to_chi"]
Source = Literal["head", "shapes"]


def derive_seed(salt: str, *parts: int) -> int:
    """A 63-bit seed from a salt and integers (BLAKE2b): independent streams for every tuple.

    >>> derive_seed("train", 0, 0, 1) == derive_seed("train", 0, 0, 1) != derive_seed("eval", 0, 0, 1)
    True
    """
    text = ":".join([salt, *(str(int(p)) for p in parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**63 - 1)


@dataclass(frozen=True)
class SimulationConfig:
    """What a :class:`SimulatedQSMDataset` draws. Ranges are drawn uniformly unless stated.

    Attributes
    ----------
    task
        ``"local_to_chi"``, ``"total_to_local"``, ``"phase_to_chi"`` or ``"total_to_chi"`` (see the module).
    source
        ``"head"``: the hybrid head model; ``"shapes"``: random shapes in an ellipsoidal mask.
    patch_size
        Patch grid ``(X, Y, Z)``; ``None`` for whole volumes (one sample per volume).
    patches_per_volume
        Patches cut from each simulated volume.
    min_mask_fraction
        A patch holds at least this fraction of brain voxels (best of 20 tries otherwise).
    region_size
        ``"head"`` source: each volume is a box of this many voxels centred on a random brain
        voxel, warped and simulated on its own (its field ignores brain outside the box);
        ``None`` for the whole head (slower: 185×231×207 voxels at 1 mm).
    shapes_volume
        Grid of the ``"shapes"`` source (voxels).
    voxel_size_mm
        Voxel size (mm); the head model is resampled to it.
    voxel_sizes_mm
        Several voxel sizes (mm), one drawn per volume (uniformly, before anything else of that volume,
        and replacing ``voxel_size_mm``), so a network sees several resolutions; empty: ``voxel_size_mm``.
    max_tilt_deg
        B0 tilt cap (degrees, uniform on the cap); ``None`` for the whole sphere.
    b0_tesla
        Field strengths (T), one picked per volume.
    echo_times_s
        Echo times (s) of the phase task.
    snr_range
        SNR of the phase task, log-uniform: complex noise σ = (largest M0 of the volume) / SNR
        per channel; ``None`` for noise-free signal.
    local_noise_ppm
        Range of the standard deviation (ppm) of Gaussian noise added to the input field of
        the field tasks.
    deform, texture
        Random deformation of the labels; χ texture (``hybrid_chi``) instead of one value
        per tissue (``sample_tissue_chi``).
    lesion_probability, lesion_count
        Chance that a volume gets lesions (kind uniform over haemorrhage, calcification,
        microbleed, MS) and how many (inclusive range).
    external_sources, shim_amplitude_ppm
        Number of random χ sources outside the brain and the peak of the polynomial shim residual.
    phase_offset_rad
        Peak of the polynomial receive-phase offset (rad).
    pad
        Zero padding (voxels per side) of the dipole convolution; the background's convolution
        (everything outside the brain) pads by at least :data:`BACKGROUND_PAD_MM`.
    wm_anisotropy_ppm
        Range of white matter's χ∥ − χ⊥ (ppm, ``simulate.anisotropy``): its field is added to the
        local and total fields while the truth stays the mean χ, so a network learns to tolerate
        the model error of real white matter. ``(0, 0)`` (default) is off; the suite's case uses
        0.015 ppm. ``"head"`` source only (the shapes have no white matter). Drawn after
        everything else, so turning it on leaves every other draw of a seed unchanged.
    veins
        Inclusive range of the number of veins painted into χ (``simulate.lesions.add_veins``,
        χ 0.2–0.45 ppm, radius 0.5–1.5 mm); their field joins the local and total fields. ``(0, 0)``
        (default) is off. Drawn after the anisotropy.
    vein_factor
        1 (default): veins are painted on the volume's own grid. An integer > 1: drawn that many times
        finer and their field computed there, both averaged into the voxels
        (``simulate.partial_volume.fine_veins``: sub-voxel partial volume, as the suite's ``vessels``
        case). Costs ``vein_factor``³ the volume's memory for that step. The GRE signal of
        ``phase_to_chi`` samples is still computed from the voxel-mean field (no intravoxel dephasing).
    residual_background_ppm
        Range of the rms (ppm, in the mask) of a residual background added to the input of the
        ``local_to_chi`` task: the field of random sources just outside the brain
        (:func:`~torchqsm.simulate.background.external_sources`, through the voxel-integrated
        kernel), harmonic in the brain and largest at its edge, as background removal leaves it. The
        target χ is unchanged. ``(0, 0)`` (default) is off. Drawn last.
    patch_dipole
        ``local_to_chi`` with patches: the input field of each patch is the dipole field of the
        patch's own χ, computed on the patch zero-padded by ``pad`` voxels (plus the volume's
        model errors: anisotropy and residual background, cropped), not a crop of the volume's
        field, which also holds the field of χ outside the patch. A data-consistent network sees
        then data that its own dipole operator explains. Draws no random numbers.
    """

    task: Task = "local_to_chi"
    source: Source = "head"
    patch_size: tuple[int, int, int] | None = (64, 64, 64)
    patches_per_volume: int = 16
    min_mask_fraction: float = 0.3
    region_size: tuple[int, int, int] | None = (128, 128, 128)
    shapes_volume: tuple[int, int, int] = (96, 96, 96)
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    voxel_sizes_mm: tuple[tuple[float, float, float], ...] = ()
    max_tilt_deg: float | None = 30.0
    b0_tesla: tuple[float, ...] = (3.0,)
    echo_times_s: tuple[float, ...] = (0.004, 0.012, 0.020, 0.028)
    snr_range: tuple[float, float] | None = (40.0, 200.0)
    local_noise_ppm: tuple[float, float] = (0.0, 0.002)
    deform: bool = True
    texture: bool = True
    lesion_probability: float = 0.3
    lesion_count: tuple[int, int] = (1, 3)
    external_sources: int = 40
    shim_amplitude_ppm: float = 1.0
    phase_offset_rad: float = math.pi
    pad: int = 32
    wm_anisotropy_ppm: tuple[float, float] = (0.0, 0.0)
    veins: tuple[int, int] = (0, 0)
    vein_factor: int = 1
    residual_background_ppm: tuple[float, float] = (0.0, 0.0)
    patch_dipole: bool = False

    def __post_init__(self) -> None:
        if self.task not in ("local_to_chi", "total_to_local", "phase_to_chi", "total_to_chi"):
            raise ParameterError(f"unknown task '{self.task}': local_to_chi, total_to_local, phase_to_chi or "
                                 "total_to_chi")
        if self.source not in ("head", "shapes"):
            raise ParameterError(f"unknown source '{self.source}': head or shapes")
        if self.patch_size is not None and (len(self.patch_size) != 3 or min(self.patch_size) < 1):
            raise ParameterError(f"patch_size must be 3 positive integers or None, got {self.patch_size}")
        if self.region_size is not None and (len(self.region_size) != 3 or min(self.region_size) < 1):
            raise ParameterError(f"region_size must be 3 positive integers or None, got {self.region_size}")
        if self.patches_per_volume < 1:
            raise ParameterError("patches_per_volume must be at least 1")
        if not 0.0 <= self.min_mask_fraction <= 1.0 or not 0.0 <= self.lesion_probability <= 1.0:
            raise ParameterError("min_mask_fraction and lesion_probability are fractions in [0, 1]")
        if not self.b0_tesla or min(self.b0_tesla) <= 0:
            raise ParameterError(f"b0_tesla needs at least one positive field strength (T), got {self.b0_tesla}")
        if not self.echo_times_s or min(self.echo_times_s) <= 0:
            raise ParameterError(f"echo_times_s needs at least one positive echo time (s), got {self.echo_times_s}")
        if self.snr_range is not None and not 0 < self.snr_range[0] <= self.snr_range[1]:
            raise ParameterError(f"snr_range must be two positive numbers, low ≤ high, got {self.snr_range}")
        if not 0 <= self.local_noise_ppm[0] <= self.local_noise_ppm[1]:
            raise ParameterError(f"local_noise_ppm must be 0 ≤ low ≤ high, got {self.local_noise_ppm}")
        if not 0 <= self.lesion_count[0] <= self.lesion_count[1]:
            raise ParameterError(f"lesion_count must be 0 ≤ low ≤ high, got {self.lesion_count}")
        if min(self.voxel_size_mm) <= 0 or self.pad < 0:
            raise ParameterError("voxel_size_mm must be positive and pad non-negative")
        sizes = tuple(tuple(float(v) for v in size) for size in self.voxel_sizes_mm)
        if any(len(size) != 3 or min(size) <= 0 for size in sizes):
            raise ParameterError(f"voxel_sizes_mm must be voxel sizes of 3 positive numbers (mm), got {sizes}")
        object.__setattr__(self, "voxel_sizes_mm", sizes)
        if len(self.wm_anisotropy_ppm) != 2 or not 0 <= self.wm_anisotropy_ppm[0] <= self.wm_anisotropy_ppm[1]:
            raise ParameterError(f"wm_anisotropy_ppm must be 0 ≤ low ≤ high, got {self.wm_anisotropy_ppm}")
        if len(self.veins) != 2 or not 0 <= self.veins[0] <= self.veins[1]:
            raise ParameterError(f"veins must be a count range 0 ≤ low ≤ high, got {self.veins}")
        if not isinstance(self.vein_factor, int) or not 1 <= self.vein_factor <= 4:
            raise ParameterError(f"vein_factor must be an integer from 1 to 4, got {self.vein_factor!r}")
        if len(self.residual_background_ppm) != 2 or \
                not 0 <= self.residual_background_ppm[0] <= self.residual_background_ppm[1]:
            raise ParameterError(f"residual_background_ppm must be 0 ≤ low ≤ high, got {self.residual_background_ppm}")


def _patch_corners(mask: torch.Tensor, size: tuple[int, ...], *, fraction: float,
                   generator: torch.Generator) -> tuple[int, ...]:
    """A random corner whose patch holds ≥ ``fraction`` mask voxels (best of 20 tries)."""
    best, best_fraction = (0, 0, 0), -1.0
    for _ in range(20):
        corner = tuple(int(torch.randint(0, max(n - s, 0) + 1, (), generator=generator))
                       for n, s in zip(mask.shape, size))
        covered = float(mask[tuple(slice(c, c + s) for c, s in zip(corner, size))].float().mean())
        if covered > best_fraction:
            best, best_fraction = corner, covered
        if covered >= fraction:
            break
    return best


def _crop(volume: torch.Tensor, corner: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    """The patch at ``corner`` (last three axes), zero-filled where the volume is smaller than the patch."""
    window = volume[(..., *(slice(c, c + s) for c, s in zip(corner, size)))]
    missing = [s - n for s, n in zip(size, window.shape[-3:])]
    if any(missing):
        window = torch.nn.functional.pad(window, [0, missing[2], 0, missing[1], 0, missing[0]])
    return window.contiguous()


def _sample(config: SimulationConfig, volume: SimulatedVolume, corner, size, seed: int,
            generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Cut one sample; the signal and the input noise are made on the patch only (they are voxel-wise)."""
    mask = _crop(volume.mask[None].float(), corner, size)
    sample = {"mask": mask, "b0_dir": torch.tensor(volume.b0_dir), "voxel_size_mm": torch.tensor(volume.voxel_size_mm),
              "seed": torch.tensor(seed, dtype=torch.int64)}
    if config.task == "phase_to_chi":
        signal = complex_gre_signal(_crop(volume.total_field_ppm, corner, size), echo_times_s=config.echo_times_s,
                                    b0_tesla=volume.b0_tesla, m0=_crop(volume.m0, corner, size),
                                    r2star_hz=_crop(volume.r2star_hz, corner, size),
                                    phase_offset_rad=_crop(volume.phase_offset_rad, corner, size))
        if volume.snr is not None:  # σ from the volume's peak M0, the same for every patch of it
            signal = add_complex_noise(signal, snr=volume.snr, generator=generator, reference=float(volume.m0.max()))
        sample.update(input=signal.angle(), magnitude=signal.abs(), target=_crop(volume.chi_ppm[None], corner, size),
                      echo_times_s=torch.tensor(config.echo_times_s), b0_tesla=torch.tensor(volume.b0_tesla))
        return sample
    # Fields are known only inside the brain (after masking and, for the local field, background removal).
    source, target = {"local_to_chi": (volume.local_field_ppm, volume.chi_ppm),
                      "total_to_local": (volume.total_field_ppm, volume.local_field_ppm * volume.mask),
                      "total_to_chi": (volume.total_field_ppm, volume.chi_ppm)}[config.task]
    if config.task == "total_to_chi":
        sample["local"] = _crop((volume.local_field_ppm * volume.mask)[None], corner, size)
    field = _crop(source[None], corner, size)
    if volume.model_error_ppm is not None:  # patch_dipole: the field of the patch's own χ, on the padded patch
        dipole = DipoleOp(size, voxel_size_mm=volume.voxel_size_mm, b0_dir=volume.b0_dir, pad=config.pad)
        patch_chi = _crop(volume.chi_ppm[None], corner, size)
        field = dipole(patch_chi) + _crop(volume.model_error_ppm[None], corner, size)
    sigma = _uniform(generator, *config.local_noise_ppm)
    if sigma > 0:
        field = field + sigma * torch.randn(field.shape, generator=generator)
    sample.update(input=field * mask, target=_crop(target[None], corner, size))
    return sample


class SimulatedQSMDataset(IterableDataset):
    """Training pairs simulated on the fly (see the module for tasks, tensors and seeds).

    Parameters
    ----------
    config
        What to simulate (:class:`SimulationConfig`).
    seed
        Base seed: the same seed gives the same samples, whatever the number of workers.
    volumes
        Volumes per epoch (each gives ``patches_per_volume`` samples); ``None`` for an endless stream.
    epoch
        Epoch number mixed into the seeds; change it (:meth:`set_epoch`) for new draws.

    Examples
    --------
    >>> config = SimulationConfig(source="shapes", shapes_volume=(24, 24, 24), patch_size=(16, 16, 16),
    ...                           patches_per_volume=2, pad=8)
    >>> samples = list(SimulatedQSMDataset(config, seed=0, volumes=1))
    >>> len(samples), tuple(samples[0]["input"].shape), tuple(samples[0]["target"].shape)
    (2, (1, 16, 16, 16), (1, 16, 16, 16))
    """

    def __init__(self, config: SimulationConfig, *, seed: int = 0, volumes: int | None = None, epoch: int = 0) -> None:
        super().__init__()
        if volumes is not None and volumes < 0:
            raise ParameterError(f"volumes must be non-negative or None, got {volumes}")
        self.config, self.seed, self.volumes, self.epoch = config, int(seed), volumes, int(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw a new stream of volumes for ``epoch``."""
        self.epoch = int(epoch)

    def volume_seed(self, index: int) -> int:
        """The seed of volume ``index`` of the current epoch (salt ``"train"``)."""
        return derive_seed("train", self.seed, self.epoch, index)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        return self.stream(*((0, 1) if info is None else (info.id, info.num_workers)))

    def stream(self, worker: int, workers: int, *, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The samples worker ``worker`` of ``workers`` yields (volumes ``worker``, ``worker + workers``, ...).

        ``skip`` drops that many of its first samples. Each volume has its own seed, so whole
        volumes are skipped without being simulated: a resumed run starts at once.
        """
        if skip < 0:
            raise ParameterError(f"skip must be non-negative, got {skip}")
        per_volume = 1 if self.config.patch_size is None else int(self.config.patches_per_volume)
        index = worker + (skip // per_volume) * workers
        skip %= per_volume
        while self.volumes is None or index < self.volumes:
            seed = self.volume_seed(index)
            generator = torch.Generator().manual_seed(seed)
            config = self.config
            if config.voxel_sizes_mm:  # this volume's resolution, drawn first
                chosen = config.voxel_sizes_mm[int(torch.randint(len(config.voxel_sizes_mm), (), generator=generator))]
                config = replace(config, voxel_size_mm=chosen, voxel_sizes_mm=())
            volume = simulate_volume(config, generator)
            if config.patch_size is None:
                yield _sample(config, volume, (0, 0, 0), tuple(volume.mask.shape), seed, generator)
            else:
                size = tuple(int(s) for s in config.patch_size)
                for patch in range(config.patches_per_volume):
                    corner = _patch_corners(volume.mask, size, fraction=config.min_mask_fraction,
                                            generator=generator)
                    sample = _sample(config, volume, corner, size, seed, generator)
                    if patch >= skip:
                        yield sample
            skip = 0
            index += workers
