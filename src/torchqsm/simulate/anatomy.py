r"""Anatomical head model in MNI space: tissue labels, literature χ, M0 and R2*.

The shipped label volume (``data/head_labels.nii.gz``, 1 mm, 185×231×207,
MNI ICBM 2009a axes) labels the brain from atlases (GM/WM/CSF from the ICBM152
template, deep nuclei from CIT168 and AAL3, dentate from SUIT) and a head built
around it (skull, scalp, face and neck, paranasal sinuses, mastoids, ear canals,
pharynx, dural venous sinuses). ``scripts/build_head_model.py`` rebuilds it;
``data/ATTRIBUTION.md`` lists sources and licences.

χ is in ppm relative to CSF (≈ water), so air is +9.2…+9.4 ppm. A subject draws
one value per tissue uniformly in its literature range, without texture within
a tissue (``hybrid.hybrid_chi`` adds texture). The field depends only on χ
differences; to simulate it, reference χ to the outside air
(``chi - chi_air``) so that the head sits in zero χ and the zero padding of
:func:`~torchqsm.simulate.forward_field` stands for the air around it:

.. math:: \Delta B / B_0 = \mathcal{F}^{-1}\{D(k)\,\mathcal{F}\{\chi - \chi_\mathrm{air}\}\}.

References
----------
Fonov V et al. Unbiased average age-appropriate atlases for pediatric studies.
NeuroImage 2011;54:313. doi:10.1016/j.neuroimage.2010.07.033
Pauli WM, Nili AN, Tyszka JM. A high-resolution probabilistic in vivo atlas of
human subcortical brain nuclei. Sci Data 2018;5:180063. doi:10.1038/sdata.2018.63
Deistung A et al. Toward in vivo histology: a comparison of quantitative
susceptibility mapping (QSM) with magnitude-, phase-, and R2*-imaging at
ultra-high magnetic field strength. NeuroImage 2013;65:299.
doi:10.1016/j.neuroimage.2012.09.055
Schenck JF. The role of magnetic susceptibility in magnetic resonance imaging.
Med Phys 1996;23:815. doi:10.1118/1.597854
Gelman N et al. MR imaging of human brain at 3.0 T: preliminary report on
transverse relaxation rates and relation to estimated iron content. Radiology
1999;210:759. doi:10.1148/radiology.210.3.r99fe41759
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import nibabel as nib
import numpy as np
import torch

from ..errors import InputError, ParameterError

__all__ = ["Tissue", "TISSUES", "tissue", "HeadModel", "load_head_model", "sample_tissue_chi",
           "tissue_parameters"]


@dataclass(frozen=True)
class Tissue:
    """One labelled tissue: its label number, literature χ range and relaxation at 3 T.

    Parameters
    ----------
    name
        Tissue name (``"globus_pallidus_internus"``, ...).
    label
        Value of the tissue in the label volume (0…255).
    chi_range_ppm
        ``(low, high)`` susceptibility in ppm relative to CSF; a subject draws
        uniformly in it.
    m0
        Proton density relative to CSF = 1 (0 for air).
    r2star_hz_3t
        R2* at 3 T in s⁻¹, scaled linearly with B0 for other field strengths.
    """

    name: str
    label: int
    chi_range_ppm: tuple[float, float]
    m0: float
    r2star_hz_3t: float


# χ ranges: ../shared/data/README.md literature list (Deistung 2013, Langkammer
# 2012, Schenck 1996 for air). Single literature values get a small spread, said
# in the comment. R2* = R2 + R2' at 3 T from Gelman 1999 for globus pallidus
# (38), frontal WM (22) and prefrontal cortex (18); the other nuclei are placed
# between by their iron content (approximate). M0 from typical water contents
# (WM 0.69, GM 0.80). Veins, bone and soft tissue are order-of-magnitude values:
# bone's signal is gone by any GRE echo time.
TISSUES: tuple[Tissue, ...] = (
    Tissue("air", 0, (9.2, 9.4), 0.0, 0.0),
    Tissue("csf", 1, (-0.01, 0.01), 1.0, 2.0),            # reference ≈ 0, ±0.01 spread
    Tissue("ventricles", 2, (-0.01, 0.01), 1.0, 2.0),     # reference ≈ 0, ±0.01 spread
    Tissue("white_matter", 3, (-0.04, -0.02), 0.69, 22.0),  # −0.03 ± 0.01
    Tissue("grey_matter", 4, (0.01, 0.03), 0.80, 18.0),     # cortical 0.02 ± 0.01
    Tissue("caudate", 5, (0.04, 0.06), 0.80, 19.0),
    Tissue("putamen", 6, (0.04, 0.08), 0.80, 25.0),
    Tissue("globus_pallidus_externus", 7, (0.13, 0.19), 0.75, 38.0),
    Tissue("globus_pallidus_internus", 8, (0.13, 0.19), 0.75, 38.0),
    Tissue("substantia_nigra_compacta", 9, (0.11, 0.17), 0.78, 35.0),
    Tissue("substantia_nigra_reticulata", 10, (0.11, 0.17), 0.78, 35.0),
    Tissue("red_nucleus", 11, (0.09, 0.10), 0.78, 30.0),
    Tissue("subthalamic_nucleus", 12, (0.08, 0.12), 0.78, 32.0),  # Deistung 2013, not in the shared list
    Tissue("thalamus", 13, (0.01, 0.03), 0.78, 19.0),             # 0.02 ± 0.01
    Tissue("dentate_nucleus", 14, (0.12, 0.15), 0.78, 28.0),
    Tissue("veins", 15, (0.2, 0.45), 0.85, 40.0),                 # venous blood, T2* ≈ 25 ms
    Tissue("soft_tissue", 16, (-0.05, 0.05), 0.80, 30.0),         # scalp/muscle ≈ water; fat not separate
    Tissue("bone", 17, (-2.2, -2.0), 0.05, 1000.0),               # −2.1 ± 0.1
    Tissue("sinus_air", 18, (9.2, 9.4), 0.0, 0.0),
)

_NOT_BRAIN = ("air", "soft_tissue", "bone", "sinus_air")


def tissue(name: str) -> Tissue:
    """The :class:`Tissue` called ``name``.

    >>> tissue("globus_pallidus_internus").chi_range_ppm
    (0.13, 0.19)
    """
    for entry in TISSUES:
        if entry.name == name:
            return entry
    raise ParameterError(f"unknown tissue {name!r}; known tissues: {', '.join(t.name for t in TISSUES)}")


@dataclass(frozen=True)
class HeadModel:
    """A labelled head: ``labels`` (X, Y, Z) of :data:`TISSUES` label numbers on a grid.

    Parameters
    ----------
    labels
        Integer labels, shape ``(X, Y, Z)``.
    voxel_size_mm
        Voxel size (mm) along X, Y, Z.
    affine
        4×4 voxel → MNI (mm) matrix (numpy).

    Notes
    -----
    The modelled neck ends at the bottom of the grid (z = −108 mm in MNI), so
    its cut end adds a background field there, more than 35 mm below the
    cerebellum.

    Examples
    --------
    >>> head = load_head_model(voxel_size_mm=4.0)
    >>> bool((head.brain_mask & ~head.head_mask).any())
    False
    """

    labels: torch.Tensor
    voxel_size_mm: tuple[float, float, float]
    affine: np.ndarray

    @property
    def brain_mask(self) -> torch.Tensor:
        """Intracranial tissue: brain, CSF, ventricles and dural sinuses (no scalp, bone or air)."""
        return _isin(self.labels, [t.label for t in TISSUES if t.name not in _NOT_BRAIN])

    @property
    def head_mask(self) -> torch.Tensor:
        """Everything but the air outside the head (sinus air included)."""
        return self.labels != tissue("air").label


def _isin(labels: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    return torch.isin(labels.long(), torch.tensor(list(values), dtype=torch.long, device=labels.device))


def _voxel_size(voxel_size_mm: float | Sequence[float]) -> tuple[float, float, float]:
    size = (voxel_size_mm,) * 3 if isinstance(voxel_size_mm, (int, float)) else tuple(voxel_size_mm)
    if len(size) != 3 or not all(np.isfinite(s) and s > 0 for s in size):
        raise ParameterError(f"voxel_size_mm must be a positive number or three, got {voxel_size_mm!r}")
    return tuple(float(s) for s in size)


@functools.lru_cache(maxsize=1)
def _native_labels() -> tuple[np.ndarray, np.ndarray]:
    """The shipped 1 mm labels and affine, read once per process (read-only arrays)."""
    with resources.as_file(resources.files(__package__) / "data" / "head_labels.nii.gz") as path:
        image = nib.load(str(path))
        labels = np.asarray(image.dataobj, dtype=np.uint8)
        affine = np.asarray(image.affine, dtype=np.float64)
    labels.flags.writeable = False
    affine.flags.writeable = False
    return labels, affine


def load_head_model(*, voxel_size_mm: float | Sequence[float] | None = None) -> HeadModel:
    """Load the shipped MNI head model, optionally resampled by nearest neighbour.

    Parameters
    ----------
    voxel_size_mm
        ``None`` for the native 1 mm grid; else the new voxel size (mm, one
        number or three). The new grid covers the same field of view, starting
        at its corner; each new voxel takes the label at its centre.

    Returns
    -------
    HeadModel
        ``labels`` as uint8 on the CPU.

    Examples
    --------
    >>> head = load_head_model(voxel_size_mm=4.0)
    >>> tuple(head.labels.shape), head.voxel_size_mm
    ((46, 57, 51), (4.0, 4.0, 4.0))
    """
    labels, affine = _native_labels()
    native = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    if voxel_size_mm is None:
        return HeadModel(torch.from_numpy(labels.copy()), native, affine.copy())
    size = _voxel_size(voxel_size_mm)
    index, shape = [], []
    for axis in range(3):
        n = int(np.floor(labels.shape[axis] * native[axis] / size[axis]))
        # centre of new voxel j, in old voxel index units (old voxel i spans i ± 0.5)
        centres = (np.arange(n) + 0.5) * size[axis] / native[axis] - 0.5
        index.append(np.clip(np.rint(centres).astype(np.int64), 0, labels.shape[axis] - 1))
        shape.append(n)
    resampled = labels[np.ix_(*index)]  # fancy indexing copies
    scale = np.diag([size[a] / native[a] for a in range(3)] + [1.0])
    shift = np.eye(4)
    shift[:3, 3] = [(size[a] / native[a] - 1.0) / 2.0 for a in range(3)]
    return HeadModel(torch.from_numpy(np.ascontiguousarray(resampled)), size, affine @ shift @ scale)


def _lookup(labels: torch.Tensor, tissues: Sequence[Tissue], values: torch.Tensor) -> torch.Tensor:
    """Map each label to ``values[i]`` of the tissue with that label; unknown labels raise."""
    if labels.is_floating_point() or labels.is_complex():
        raise InputError(f"labels must be an integer tensor, got {labels.dtype}")
    numbers = torch.tensor([t.label for t in tissues], dtype=torch.long)
    if len(set(numbers.tolist())) != len(tissues):
        raise ParameterError("tissues must have distinct labels")
    present = torch.unique(labels).long().cpu()
    missing = sorted(set(present.tolist()) - set(numbers.tolist()))
    if missing:
        raise InputError(f"labels {missing} have no tissue in `tissues`")
    table = torch.zeros(int(max(numbers.max(), present.max())) + 1, dtype=values.dtype)
    table[numbers] = values
    return table.to(labels.device)[labels.long()]


def sample_tissue_chi(labels: torch.Tensor, *, generator: torch.Generator,
                      tissues: Sequence[Tissue] = TISSUES) -> torch.Tensor:
    r"""One subject's χ map (ppm, relative to CSF): each tissue uniform in its literature range.

    :math:`\chi_t = a_t + (b_t - a_t)\,u_t`, :math:`u_t \sim U(0, 1)` drawn in
    the order of ``tissues``; constant within a tissue (no texture).

    Parameters
    ----------
    labels
        Integer labels, shape ``(..., X, Y, Z)``; every label must have a tissue.
    generator
        Random generator (CPU); the same seed gives the same subject.
    tissues
        Tissue table (default :data:`TISSUES`).

    Returns
    -------
    torch.Tensor
        χ in ppm, float32, shape and device of ``labels``.

    Examples
    --------
    >>> head = load_head_model(voxel_size_mm=4.0)
    >>> chi_ppm = sample_tissue_chi(head.labels, generator=torch.Generator().manual_seed(0))
    >>> gp = chi_ppm[head.labels == tissue("globus_pallidus_externus").label]
    >>> 0.13 <= float(gp[0]) <= 0.19 and bool((gp == gp[0]).all())
    True
    """
    low = torch.tensor([t.chi_range_ppm[0] for t in tissues], dtype=torch.float64)
    high = torch.tensor([t.chi_range_ppm[1] for t in tissues], dtype=torch.float64)
    if bool((high < low).any()):
        raise ParameterError("every chi_range_ppm must be (low, high) with low <= high")
    u = torch.rand(len(tissues), dtype=torch.float64, generator=generator)
    return _lookup(labels, tissues, low + (high - low) * u).to(torch.float32)


def tissue_parameters(labels: torch.Tensor, *, b0_tesla: float, generator: torch.Generator | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Proton density M0 and R2* (s⁻¹) maps of a labelled head at field ``b0_tesla``.

    :math:`R_2^*(B_0) = R_{2,3T}^* \, B_0 / 3\,\mathrm{T}`: linear scaling, as for
    the iron-dominated R2* of deep grey matter (Yao et al. NeuroImage
    2009;44:1259, doi:10.1016/j.neuroimage.2008.10.029); an approximation for
    tissues whose R2* is mostly R2.

    Parameters
    ----------
    labels
        Integer labels, shape ``(..., X, Y, Z)``.
    b0_tesla
        Main field (T), > 0.
    generator
        If given, each tissue's M0 and R2* are scaled by independent factors
        uniform in [0.9, 1.1] (per-subject variability); ``None``: table values.

    Returns
    -------
    tuple of torch.Tensor
        M0 (relative to CSF) and R2* (s⁻¹), float32, shape of ``labels``.

    Examples
    --------
    >>> m0, r2star = tissue_parameters(torch.tensor([3, 8]), b0_tesla=7.0)
    >>> [round(float(v), 1) for v in r2star]
    [51.3, 88.7]
    """
    if not (np.isfinite(b0_tesla) and b0_tesla > 0):
        raise ParameterError(f"b0_tesla must be positive, got {b0_tesla!r}")
    m0 = torch.tensor([t.m0 for t in TISSUES], dtype=torch.float64)
    r2 = torch.tensor([t.r2star_hz_3t for t in TISSUES], dtype=torch.float64) * (float(b0_tesla) / 3.0)
    if generator is not None:
        factors = 0.9 + 0.2 * torch.rand(2, len(TISSUES), dtype=torch.float64, generator=generator)
        m0, r2 = m0 * factors[0], r2 * factors[1]
    return (_lookup(labels, TISSUES, m0).to(torch.float32), _lookup(labels, TISSUES, r2).to(torch.float32))
