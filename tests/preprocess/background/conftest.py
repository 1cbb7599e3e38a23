"""A brain-in-air phantom for the background-removal tests.

Susceptibility is relative to water (tissue ≈ water ≈ 0 ppm), the usual QSM
convention: air is +9.4 ppm (diamagnetism of water −9.05 ppm vs air +0.36 ppm)
and cortical bone −2.1 ppm. On a 64³ grid of 2 mm voxels (128 mm field of
view): air outside an ellipsoidal head; a skull shell; a sinus-like air pocket
in the skull below the frontal brain; CSF and brain at 0 ppm; inside the brain
±0.1 ppm structures, one near its edge. The background sources are zeroed in
the brain mask and the local sources outside it, so the two fields are exact
parts of the total field (no source is shared).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from torchqsm.simulate import ellipsoid, forward_field, sphere

AIR_PPM = 9.4
BONE_PPM = -2.1


@dataclass(frozen=True)
class BrainInAir:
    total: torch.Tensor       # total field (ppm), every voxel
    local: torch.Tensor       # field of the brain sources alone (ppm), every voxel
    background: torch.Tensor  # field of the sources outside the brain (ppm)
    mask: torch.Tensor        # brain mask (bool)
    voxel_size_mm: tuple[float, float, float]
    b0_dir: tuple[float, float, float]


def _mm(values, voxel):
    return tuple(v / h for v, h in zip(values, voxel))


def brain_in_air(shape=(64, 64, 64), voxel_size_mm=(2.0, 2.0, 2.0), b0_dir=(0.0, 0.0, 1.0),
                 dtype=torch.float64, form="image") -> BrainInAir:
    v = voxel_size_mm
    c = [n / 2 for n in shape]

    def at(offset_mm):
        return tuple(ci + o / h for ci, o, h in zip(c, offset_mm, v))

    head = ellipsoid(shape, radii=_mm((58, 60, 56), v), center=c, dtype=dtype)
    skull_out = ellipsoid(shape, radii=_mm((52, 56, 50), v), center=c, dtype=dtype)
    skull_in = ellipsoid(shape, radii=_mm((46, 50, 44), v), center=c, dtype=dtype)
    sinus = ellipsoid(shape, radii=_mm((12, 8, 4), v), center=at((0, 36, -34)), dtype=dtype)
    brain = ellipsoid(shape, radii=_mm((42, 46, 40), v), center=c, dtype=dtype)
    mask = brain > 0.5
    background = AIR_PPM * (1 - head) + BONE_PPM * (skull_out - skull_in) * (1 - sinus) + AIR_PPM * sinus
    local = (0.1 * sphere(shape, radius=5 / v[0], center=at((-12, 8, 6)), dtype=dtype)
             - 0.1 * ellipsoid(shape, radii=_mm((8, 5, 6), v), center=at((12, -6, 0)), dtype=dtype)
             + 0.1 * ellipsoid(shape, radii=_mm((5, 12, 4), v), center=at((0, -10, -18)), dtype=dtype)
             + 0.1 * sphere(shape, radius=4 / v[0], center=at((30, 0, 8)), dtype=dtype))  # near the edge
    background = background * ~mask
    local = local * mask
    # One padded dipole operator for both parts; the periodic images of the padded box lie
    # outside the brain, so they only add harmonic (removable) background.
    local_field, background_field = forward_field(torch.stack([local, background]), voxel_size_mm=v,
                                                  b0_dir=b0_dir, pad=32, form=form)
    return BrainInAir(local_field + background_field, local_field, background_field, mask, tuple(v), b0_dir)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on 64³ grids a thread pool costs more than it saves on 2 shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
