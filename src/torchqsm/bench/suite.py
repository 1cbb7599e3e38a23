r"""The evaluation suite: a fixed, versioned set of simulated BIDS datasets with ground truth.

One subject (the head model warped and given χ from the seed's ``"eval"`` stream, so never a
training draw: see ``simulate.dataset``) is acquired in cases that each vary one thing from the
baseline (3 T, B0 along the third voxel axis, peak SNR 100, 1 mm isotropic, healthy):

* ``tilt-15deg`` … ``tilt-90deg``: B0 tilted about the first voxel axis;
* ``snr-30``, ``snr-300``: peak SNR (complex noise σ = max|S| / SNR, per channel);
* ``res-0.7mm``: χ, labels and smooth maps resampled to 0.7 mm (nearest neighbour for χ);
* ``res-1x1x2mm``: the 1 mm signal and ground truth truncated in k-space to 1×1×2 mm;
* ``haemorrhage``, ``calcification``: lesions added to the baseline χ;
* ``b0-7T``: 7 T, R2* scaled with B0, shorter echo times;
* ``wm-anisotropy``: white matter's susceptibility is a tensor with χ∥ − χ⊥ = 0.015 ppm about a
  smooth random fibre field (``simulate.anisotropy``); its truth is the mean susceptibility, so the
  scalar dipole model meets a field it does not explain, as in real white matter.
* ``vessels``: ``VEIN_COUNT`` veins of sub-voxel to 2 mm diameter (χ 0.2–0.45 ppm, R2* of venous
  blood) drawn on a grid ``FINE_FACTOR`` times finer; the brain's field and the GRE signal are
  computed there and the complex signal summed into the 1 mm voxels (``simulate.partial_volume``:
  simulate fine, sample coarse). Its truth is the voxel mean of χ and of the fields, so the
  intravoxel dephasing next to each vein is a model error in the measured field.
* ``residual-background``: the baseline acquisition, but the inversion's input is what PDF
  background removal (``preprocess.background.pdf``, in the true brain mask) leaves of the total
  field plus its measured noise, not the true local field (``SuiteCase.field_input``): the residual
  background every real local field carries.

Layout of ``OUT_DIR`` (``<case>`` as above)::

    suite.json                                              version, seeds, every case and its files
    <case>/dataset_description.json
    <case>/sub-01/anat/sub-01_echo-<n>_part-{mag,phase}_MEGRE.nii.gz (+ .json: EchoTime s, MagneticFieldStrength T)
    <case>/derivatives/groundtruth/sub-01/anat/sub-01_{Chimap, desc-local_fieldmap, desc-total_fieldmap,
                                               desc-brain_mask, dseg[, desc-lesion_mask]}.nii.gz

χ and fields are in ppm, phase in radians, magnitude in arbitrary units. The data stay in
voxel space; the affine is rotated (``simulate.orientation.affine_for_b0_dir``) so that
``physics.b0_dir_from_affine`` gives each case's B0 direction. ``small=True`` doubles every
voxel size (2 mm baseline) for a build of seconds.

Simulation: fields on the whole head (zero padding ``PAD_MM``, the head in air), χ relative to
CSF; the GRE signal with tissue M0 and R2*, a smooth receive-phase offset and complex noise
(σ = peak |S| / SNR). The coarser case truncates the complex signal and the ground truth in
k-space; the finer case resamples the subject (nearest neighbour).

Size (the full suite must stay under 500 MB): what is written is the brain's bounding box plus
``MARGIN_MM``, at most ``FOV_Z_MM`` down from its top (the finer case: an axial slab of
``SLAB_MM``), so the brain below it contributes field, as outside a real field of view; three
echoes; magnitude and phase as int16 counts with a NIfTI ``scl_slope`` (quantised to at most
the noise σ of the brightest voxel, like a scanner's ADC); no signal (and no noise) in the air
outside the head; ground truth as float32 rounded to ``GROUND_TRUTH_BITS`` mantissa bits
(relative error ≤ 1.5e-5), the fields and χ inside the brain mask only.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import nibabel as nib
import torch
import torch.nn.functional as F

from .. import __version__
from ..errors import InputError, ParameterError
from ..io import save_nifti
from ..io._atomic import write_atomically
from ..physics import DipoleOp, tilt_b0_dir
from ..simulate.anatomy import TISSUES, load_head_model, tissue, tissue_parameters
from ..simulate.anisotropy import WM_ANISOTROPY_PPM, anisotropic_field, random_fibre_directions
from ..simulate.background import external_sources, shim_field
from ..simulate.dataset import derive_seed
from ..simulate.forward import HEAD_KERNEL_FORM
from ..simulate.hybrid import hybrid_chi, random_deformation
from ..simulate.lesions import add_lesions
from ..simulate.lesions import add_veins
from ..simulate.orientation import affine_for_b0_dir
from ..simulate.partial_volume import block_mean, block_summed_signal, upsample
from ..simulate.signal import add_complex_noise, complex_gre_signal, smooth_phase_offset, truncate_kspace
from .evaluate import measured_field_noise_ppm

__all__ = ["SUITE_VERSION", "SuiteCase", "suite_cases", "build_suite"]

#: Bump when any case, parameter or draw changes: results on different versions do not compare.
# 1.4: vessels (simulated fine, sampled coarse) and residual-background; earlier cases unchanged.
# 1.3: res-1x1x2mm acquired over the whole head, its total field as its signal carries it; wm-anisotropy.
# 1.2: head field through the voxel-integrated kernel; 1.1: harmonic shim residual.
SUITE_VERSION = "1.4"
ECHO_TIMES_S = {3.0: (0.005, 0.015, 0.025), 7.0: (0.004, 0.010, 0.016)}  # 3 echoes: size (see the module)
PAD_MM = 48.0  # zero padding of the dipole convolution: images of the head ≥ 96 mm away
MARGIN_MM = 4.0  # written field of view: the brain's bounding box plus this
FOV_Z_MM = 128.0  # ... down to this far below its top (cerebrum, cerebellum; not the neck)
SLAB_MM = 48.0  # finer-than-baseline cases are written as an axial slab this thick (size)
GROUND_TRUTH_BITS = 15  # χ and fields stored to a relative precision of 2^-16 = 1.5e-5
LESION_COUNT = {"haemorrhage": 1, "calcification": 3}
VEIN_COUNT = 80  # the vessels case: veins of 0.25-1 mm radius, 20-80 mm long
VEIN_RADIUS_MM = (0.25, 1.0)
VEIN_R2STAR_3T_HZ = 45.0  # deoxygenated venous blood at 3 T (scaled with B0 like tissue)
FINE_FACTOR = 2  # the vessels case is simulated on a grid this many times finer per axis
FINE_PAD_MM = 32.0  # zero padding of the fine grid's (brain-only) dipole convolution


@dataclass(frozen=True)
class SuiteCase:
    """One acquisition of the suite's subject; ``varies`` names the one thing changed from the baseline."""

    name: str
    varies: Literal["baseline", "b0_tilt", "snr", "resolution", "pathology", "field_strength", "anisotropy",
                    "partial_volume", "background"]
    tilt_deg: float = 0.0
    snr: float = 100.0
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pathology: Literal["healthy", "haemorrhage", "calcification"] = "healthy"
    b0_tesla: float = 3.0
    wm_anisotropy_ppm: float = 0.0
    veins: int = 0
    #: What the inversion is given: the true local field plus the measured noise, or what PDF background
    #: removal leaves of the true total field plus the measured noise (``bench.evaluate.load_case``).
    field_input: Literal["truth", "pdf"] = "truth"

    @property
    def b0_dir(self) -> tuple[float, float, float]:
        return tilt_b0_dir(self.tilt_deg)


def suite_cases(*, small: bool = False) -> tuple[SuiteCase, ...]:
    """The suite's cases (``small``: every voxel size doubled).

    >>> [c.name for c in suite_cases()][:3], len(suite_cases())
    (['baseline', 'tilt-15deg', 'tilt-30deg'], 16)
    """
    base = SuiteCase("baseline", "baseline")
    cases = [base, *(replace(base, name=f"tilt-{t}deg", varies="b0_tilt", tilt_deg=float(t)) for t in (15, 30, 45, 60, 90)),
             replace(base, name="snr-30", varies="snr", snr=30.0), replace(base, name="snr-300", varies="snr", snr=300.0),
             replace(base, name="res-0.7mm", varies="resolution", voxel_size_mm=(0.7, 0.7, 0.7)),
             replace(base, name="res-1x1x2mm", varies="resolution", voxel_size_mm=(1.0, 1.0, 2.0)),
             replace(base, name="haemorrhage", varies="pathology", pathology="haemorrhage"),
             replace(base, name="calcification", varies="pathology", pathology="calcification"),
             replace(base, name="b0-7T", varies="field_strength", b0_tesla=7.0),
             replace(base, name="wm-anisotropy", varies="anisotropy", wm_anisotropy_ppm=WM_ANISOTROPY_PPM),
             replace(base, name="vessels", varies="partial_volume", veins=VEIN_COUNT),
             replace(base, name="residual-background", varies="background", field_input="pdf")]
    factor = 2.0 if small else 1.0
    return tuple(replace(c, voxel_size_mm=tuple(factor * h for h in c.voxel_size_mm)) for c in cases)


@dataclass
class _Subject:
    """The suite's subject on the baseline grid: labels, χ (ppm; relative to CSF and to the air outside), masks, smooth maps."""

    labels: torch.Tensor
    chi: torch.Tensor
    chi_in_air: torch.Tensor
    brain: torch.Tensor
    external_chi: torch.Tensor
    shim_ppm: torch.Tensor
    phase_offset_rad: torch.Tensor
    voxel_size_mm: tuple[float, float, float]


def _subject(seed: int, voxel_size_mm: tuple[float, float, float]) -> _Subject:
    g = torch.Generator().manual_seed(derive_seed("eval", seed, 0))
    model = load_head_model(voxel_size_mm=voxel_size_mm)
    is_brain = torch.zeros(256, dtype=torch.bool)
    is_brain[torch.unique(model.labels[model.brain_mask]).long()] = True
    labels = random_deformation(model.labels, generator=g, voxel_size_mm=voxel_size_mm)
    brain = is_brain[labels.long()]
    chi = hybrid_chi(labels, chi_ranges_ppm={t.label: t.chi_range_ppm for t in TISSUES}, generator=g,
                     voxel_size_mm=voxel_size_mm).float()
    outside = labels == tissue("air").label
    chi_in_air = torch.where(outside, 0.0, chi - chi[outside].mean())  # the head in air: zero padding is air
    shape = tuple(labels.shape)
    external = external_sources(shape, brain, generator=g, voxel_size_mm=voxel_size_mm).float() * outside
    shim = shim_field(shape, generator=g).float()
    offset = smooth_phase_offset(shape, generator=g)
    return _Subject(labels, chi, chi_in_air, brain, external, shim, offset, voxel_size_mm)


def _resample(volume: torch.Tensor, shape: Sequence[int], mode: str) -> torch.Tensor:
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(volume[None, None].float(), size=tuple(shape), mode=mode, **kwargs)[0, 0]
    return out.to(volume.dtype)


def _field_of_view(brain: torch.Tensor, grid: tuple[float, ...], *, slab: bool) -> tuple[slice, ...]:
    """The written box: the brain's bounding box plus ``MARGIN_MM``, at most ``FOV_Z_MM`` down from its top
    (``SLAB_MM`` about the middle of that for ``slab``)."""
    index = torch.nonzero(brain).float()
    # Robust extent: a few stray voxels (warped label islands) do not widen the box.
    low = torch.quantile(index[:: max(1, len(index) // 100_000)], 0.0005, dim=0).floor().long().tolist()
    high = torch.quantile(index[:: max(1, len(index) // 100_000)], 0.9995, dim=0).ceil().long().tolist()
    box = []
    for axis, (lo, hi, h, n) in enumerate(zip(low, high, grid, brain.shape)):
        margin = round(MARGIN_MM / h)
        lo, hi = max(lo - margin, 0), min(hi + margin + 1, n)
        if axis == 2:
            lo = max(lo, hi - round(FOV_Z_MM / h))
            if slab:
                half, centre = round(SLAB_MM / h / 2), (lo + hi) // 2
                lo, hi = max(centre - half, 0), min(centre + half, n)
        box.append(slice(lo, hi))
    return tuple(box)


def _simulate_case(case: SuiteCase, subject: _Subject, seed: int, index: int) -> dict[str, torch.Tensor]:
    labels, chi, chi_in_air, brain = subject.labels, subject.chi, subject.chi_in_air, subject.brain
    external, shim, offset = subject.external_chi, subject.shim_ppm, subject.phase_offset_rad
    base = subject.voxel_size_mm
    grid = tuple(min(h, b) for h, b in zip(case.voxel_size_mm, base))  # simulate at least as fine as the baseline
    if grid != base:  # finer: resample the subject (nearest for χ and labels, linear for smooth maps)
        shape = [round(n * b / h) for n, b, h in zip(labels.shape, base, grid)]
        labels, chi, chi_in_air, external = (_resample(v, shape, "nearest") for v in (labels, chi, chi_in_air, external))
        brain = _resample(brain.to(torch.uint8), shape, "nearest").bool()
        shim, offset = (_resample(v, shape, "trilinear") for v in (shim, offset))
    lesions = torch.zeros_like(brain)
    if case.pathology != "healthy":
        g = torch.Generator().manual_seed(derive_seed("eval", seed, 1, ("haemorrhage", "calcification").index(case.pathology)))
        lesioned, lesions = add_lesions(chi, brain, kind=case.pathology, count=LESION_COUNT[case.pathology],
                                        generator=g, voxel_size_mm=grid)
        chi_in_air = chi_in_air + (lesioned.float() - chi)
        chi = lesioned.float()
    pad = [round(PAD_MM / h) for h in grid]
    # Everything outside the brain (the head's 9.4 ppm air-tissue edge, external sources) through the
    # voxel-integrated kernel: the point-sampled one rings into the brain at oblique B0
    # (docs/conventions.md, "Oblique B0"). The brain's own field keeps the k-space kernel.
    local_dipole = DipoleOp(tuple(chi.shape), voxel_size_mm=grid, b0_dir=case.b0_dir, pad=pad)
    head_dipole = DipoleOp(tuple(chi.shape), voxel_size_mm=grid, b0_dir=case.b0_dir, pad=pad, form=HEAD_KERNEL_FORM)
    local = local_dipole(chi * brain)
    if case.wm_anisotropy_ppm:  # the tensor's traceless part in white matter: a field the scalar model lacks
        wm = brain & (labels == tissue("white_matter").label)
        fibres = random_fibre_directions(wm, generator=torch.Generator().manual_seed(derive_seed("eval", seed, 4)),
                                         voxel_size_mm=grid)
        local = local + anisotropic_field(case.wm_anisotropy_ppm * wm.float(), fibres, b0_dir=case.b0_dir,
                                          voxel_size_mm=grid, pad=pad)
    fields = torch.stack([local, local + head_dipole(chi_in_air + external - chi * brain)])  # the whole head, then the box
    if case.veins:  # simulate fine, sample coarse (module notes)
        signal, truth, labels = _vessels(case, seed, chi * brain, brain, labels, fields[1] - fields[0] + shim, offset)
    else:
        coarse = tuple(case.voxel_size_mm) != grid
        # The coarser case is acquired over the whole head and cropped afterwards: truncating k-space on
        # the cropped box would join its top and bottom through the periodic DFT and ring (suite ≤ 1.2).
        if coarse:  # whole coarse voxels: trim the low end of each axis (the neck, in z)
            box = tuple(slice(n % max(1, round(t / h)), n) for n, h, t in zip(brain.shape, grid, case.voxel_size_mm))
        else:
            box = _field_of_view(brain, grid, slab=grid != base)
        labels, brain, lesions, offset = labels[box], brain[box], lesions[box], offset[box]
        truth = {"chi": chi[box] * brain,
                 "local": fields[0][box], "total": (fields[1] + shim)[box], "brain": brain.float(), "lesions": lesions.float()}
        m0, r2star = tissue_parameters(labels, b0_tesla=case.b0_tesla,
                                       generator=torch.Generator().manual_seed(derive_seed("eval", seed, 2)))
        signal = complex_gre_signal(truth["total"], echo_times_s=ECHO_TIMES_S[case.b0_tesla], b0_tesla=case.b0_tesla,
                                    m0=m0.float(), r2star_hz=r2star.float(), phase_offset_rad=offset)
        if coarse:  # what the scanner acquires is the central k-space of the whole object
            signal, _ = truncate_kspace(signal, voxel_size_mm=grid, target_voxel_size_mm=case.voxel_size_mm)
            truth = {k: truncate_kspace(v, voxel_size_mm=grid, target_voxel_size_mm=case.voxel_size_mm)[0]
                     for k, v in truth.items()}
            labels = _resample(labels, signal.shape[-3:], "nearest")
            box = _field_of_view(truth["brain"] > 0.5, tuple(case.voxel_size_mm), slab=False)
            signal, labels = signal[(slice(None), *box)], labels[box]
            truth = {k: v[box] for k, v in truth.items()}
            # The phase of a coarse voxel is that of its summed complex signal, not the truncated field:
            # the two differ by partial-volume mixing (suite 1.2: 41 ppb rms in the brain, 4× the local
            # field). The total field's truth is the field the noise-free coarse signal carries, so the
            # mixing is part of the background and the evaluation's field error is the acquisition noise.
            truth["total"] = truth["total"] + measured_field_noise_ppm(
                signal.abs(), signal.angle(), truth["total"], echo_times_s=ECHO_TIMES_S[case.b0_tesla],
                b0_tesla=case.b0_tesla)
    brain, head = truth["brain"] > 0.5, labels != tissue("air").label
    noise = torch.Generator().manual_seed(derive_seed("eval", seed, 3, index))
    signal = add_complex_noise(signal, snr=case.snr, generator=noise) * head  # air outside the head: no data
    return {"chi": truth["chi"] * brain, "local": truth["local"] * brain, "total": truth["total"] * brain,
            "brain": brain, "lesions": truth["lesions"] > 0.5, "labels": labels,
            "magnitude": signal.abs(), "phase": signal.angle()}


def _vessels(case: SuiteCase, seed: int, chi: torch.Tensor, brain: torch.Tensor, labels: torch.Tensor,
             background: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The ``vessels`` case on its written box: veins drawn ``FINE_FACTOR`` times finer, the brain's field and the
    signal computed there, the signal and the truth averaged back into the baseline voxels.

    ``chi`` is the brain's χ (zero outside), ``background`` the field of everything else (ppm), both on the
    baseline grid of the whole head. The fine grid covers the brain's bounding box (all its sources), so the
    cost is that box's, not the head's: about 34 M fine voxels at 1 mm.
    """
    factor, grid = FINE_FACTOR, case.voxel_size_mm
    fine_grid = tuple(h / factor for h in grid)
    index = torch.nonzero(brain)
    margin = [round(MARGIN_MM / h) for h in grid]
    domain = tuple(slice(max(int(lo) - m, 0), min(int(hi) + m + 1, n)) for lo, hi, m, n in
                   zip(index.min(0).values, index.max(0).values, margin, brain.shape))
    written = _field_of_view(brain, grid, slab=False)
    inner = tuple(slice(w.start - d.start, w.stop - d.start) for w, d in zip(written, domain))
    chi_fine = upsample(chi[domain], factor)
    brain_fine = upsample(brain[domain].to(torch.uint8), factor).bool()
    g = torch.Generator().manual_seed(derive_seed("eval", seed, 5))
    veined = add_veins(chi_fine, brain_fine, count=case.veins, generator=g, radius_range_mm=VEIN_RADIUS_MM,
                       voxel_size_mm=fine_grid)
    is_vein = veined != chi_fine
    del chi_fine
    pad = [round(FINE_PAD_MM / h) for h in fine_grid]
    local = DipoleOp(tuple(veined.shape), voxel_size_mm=fine_grid, b0_dir=case.b0_dir, pad=pad)(veined)
    total = local + upsample(background[domain], factor, mode="trilinear")
    m0, r2star = tissue_parameters(labels[domain], b0_tesla=case.b0_tesla,
                                   generator=torch.Generator().manual_seed(derive_seed("eval", seed, 2)))
    r2star = torch.where(is_vein, VEIN_R2STAR_3T_HZ * case.b0_tesla / 3.0, upsample(r2star.float(), factor))
    signal = block_summed_signal(total, factor=factor, echo_times_s=ECHO_TIMES_S[case.b0_tesla],
                                 b0_tesla=case.b0_tesla, m0=upsample(m0.float(), factor), r2star_hz=r2star,
                                 phase_offset_rad=upsample(offset[domain], factor, mode="trilinear"))
    truth = {"chi": block_mean(veined, factor), "local": block_mean(local, factor),
             "total": block_mean(total, factor), "brain": brain[domain].float(),
             "lesions": torch.zeros(brain[domain].shape)}
    return signal[(slice(None), *inner)], {k: v[inner] for k, v in truth.items()}, labels[domain][inner]


def _round_mantissa(values: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 rounded to ``bits`` mantissa bits (relative error ≤ 2^-(bits+1)): the zero low byte gzips away."""
    drop = 23 - bits
    raw = values.float().contiguous().view(torch.int32)
    return (((raw + (1 << (drop - 1))) >> drop) << drop).view(torch.float32)


def _save_12bit(path: Path, data: torch.Tensor, affine, *, step: float, overwrite: bool) -> None:
    """Write ``data`` as int16 counts of ``step`` (NIfTI ``scl_slope``): 12-bit like a scanner, and 2-3× smaller
    gzipped than float32 noise. Readers that apply the slope (nibabel, torchqsm.io) get radians / magnitude back."""
    counts = torch.round(data / step).to(torch.int16).numpy()
    image = nib.Nifti1Image(counts, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_slope_inter(step, 0.0)
    # gzip level 6 (nibabel writes level 1): 7-13 % smaller noisy data; mtime 0 keeps rebuilds byte-identical.
    payload = gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)
    write_atomically(path, lambda temporary: temporary.write_bytes(payload), overwrite=overwrite)


def _write_json(path: Path, payload: dict, *, overwrite: bool) -> None:
    text = json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite)


def _write_case(root: Path, case: SuiteCase, data: dict[str, torch.Tensor], *, overwrite: bool) -> dict[str, object]:
    shape = tuple(data["chi"].shape)
    affine = affine_for_b0_dir(case.b0_dir, voxel_size_mm=case.voxel_size_mm, shape=shape)
    folder = root / case.name
    description = {"Name": f"torchqsm evaluation suite {SUITE_VERSION}: {case.name}", "BIDSVersion": "1.9.0",
                   "DatasetType": "raw", "GeneratedBy": [{"Name": "torchqsm", "Version": __version__}]}
    _write_json(folder / "dataset_description.json", description, overwrite=overwrite)
    files: dict[str, object] = {"magnitude": [], "phase": []}
    anat = folder / "sub-01" / "anat"
    # Quantised like a scanner's ADC, to the largest power-of-two fraction of the range that is at most the noise
    # σ of the brightest voxel: adds ≤ 1/12 of the noise variance there (less elsewhere) and keeps the files small.
    peak = float(data["magnitude"].max())
    steps = {"magnitude": peak / 2 ** math.ceil(math.log2(case.snr)),
             "phase": math.pi / 2 ** math.ceil(math.log2(math.pi * case.snr))}
    for n, te in enumerate(ECHO_TIMES_S[case.b0_tesla], start=1):
        for part, key in (("mag", "magnitude"), ("phase", "phase")):
            path = anat / f"sub-01_echo-{n}_part-{part}_MEGRE.nii.gz"
            _save_12bit(path, data[key][n - 1], affine, step=steps[key], overwrite=overwrite)
            sidecar = {"EchoTime": te, "EchoNumber": n, "MagneticFieldStrength": case.b0_tesla}
            if part == "phase":
                sidecar["Units"] = "rad"
            _write_json(path.with_name(path.name.replace(".nii.gz", ".json")), sidecar, overwrite=overwrite)
            files[key].append(str(path.relative_to(root)))  # type: ignore[union-attr]
    truth = folder / "derivatives" / "groundtruth"
    _write_json(truth / "dataset_description.json", description | {"DatasetType": "derivative",
                "Name": f"ground truth of {case.name}"}, overwrite=overwrite)
    outputs = {"chi": ("Chimap", "chi", "ppm"), "local_field": ("desc-local_fieldmap", "local", "ppm"),
               "total_field": ("desc-total_fieldmap", "total", "ppm"), "brain_mask": ("desc-brain_mask", "brain", None),
               "labels": ("dseg", "labels", None)}
    if case.pathology != "healthy":
        outputs["lesion_mask"] = ("desc-lesion_mask", "lesions", None)
    for name, (suffix, key, unit) in outputs.items():
        path = truth / "sub-01" / "anat" / f"sub-01_{suffix}.nii.gz"
        dtype = "float32" if unit else ("uint8" if key != "labels" else "int16")
        values = _round_mantissa(data[key], GROUND_TRUTH_BITS) if unit else data[key]
        save_nifti(path, values, affine=affine, overwrite=overwrite, dtype=dtype)
        if unit:
            _write_json(path.with_name(path.name.replace(".nii.gz", ".json")), {"Units": unit}, overwrite=overwrite)
        files[name] = str(path.relative_to(root))
    return {**asdict(case), "b0_dir": list(case.b0_dir), "shape": list(shape),
            "echo_times_s": list(ECHO_TIMES_S[case.b0_tesla]), "files": files}


def build_suite(
    out_dir: str | Path,
    *,
    small: bool = False,
    seed: int = 0,
    cases: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: Callable[[SuiteCase], None] | None = None,
) -> Path:
    """Simulate and write the evaluation suite (see the module for its cases and layout).

    Parameters
    ----------
    out_dir
        Output folder (created).
    small
        Voxel sizes doubled (2 mm baseline): a build of seconds, for CI.
    seed
        Suite seed; the subject and noise come from its ``"eval"`` stream (disjoint from training).
    cases
        Names of the cases to build (default all); ``suite.json`` lists those built.
    overwrite
        Replace existing files; without it an existing ``suite.json`` or file is an error.
    progress
        Called with each case before it is built.

    Returns
    -------
    Path
        ``out_dir/suite.json``.
    """
    out = Path(out_dir)
    index_path = out / "suite.json"
    if index_path.exists() and not overwrite:
        raise InputError("an evaluation suite exists here; pass --overwrite to rebuild it", source=str(index_path))
    chosen = suite_cases(small=small)
    if cases is not None:
        known = {c.name for c in chosen}
        unknown = [name for name in cases if name not in known]
        if unknown:
            raise ParameterError(f"unknown suite case(s) {unknown}; known: {sorted(known)}")
        chosen = tuple(c for c in chosen if c.name in set(cases))
    subject = _subject(int(seed), suite_cases(small=small)[0].voxel_size_mm)
    records = []
    for index, case in enumerate(suite_cases(small=small)):
        if case not in chosen:
            continue
        if progress is not None:
            progress(case)
        record = _write_case(out, case, _simulate_case(case, subject, int(seed), index), overwrite=overwrite)
        record["seeds"] = {"subject": derive_seed("eval", seed, 0), "tissue_parameters": derive_seed("eval", seed, 2),
                           "noise": derive_seed("eval", seed, 3, index)}
        if case.pathology != "healthy":
            record["seeds"]["lesions"] = derive_seed("eval", seed, 1, ("haemorrhage", "calcification").index(case.pathology))
        records.append(record)
    index = {"name": "torchqsm evaluation suite", "version": SUITE_VERSION, "small": small, "seed": int(seed),
             "seed_salt": "eval", "torchqsm_version": __version__, "pad_mm": PAD_MM,
             "baseline": "3 T, B0 along voxel axis 3, peak SNR 100, 1 mm isotropic (2 mm if small), healthy",
             "units": {"chi": "ppm", "field": "ppm", "phase": "rad"}, "cases": records}
    _write_json(index_path, index, overwrite=overwrite)
    return index_path
