"""DeepQSM-style random shapes and the bounding-box painter they share with lesions and sources."""

from __future__ import annotations

import math

import pytest
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.simulate import ellipsoid
from torchqsm.simulate.augment import rotation_matrix
from torchqsm.simulate.shapes import SHAPE_KINDS, _paint, random_shapes

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def paint_one(kind: int, semi, *, rotation=None, centre=(20, 20, 20), voxel_size_mm=(1.0, 1.0, 1.0)):
    volume = torch.zeros(40, 40, 40)
    r = torch.eye(3, dtype=torch.float64) if rotation is None else rotation.to(torch.float64)
    _paint(volume, kinds=[kind], centres=torch.tensor([centre], dtype=torch.float64),
           semi_axes_mm=torch.tensor([semi], dtype=torch.float64), rotations=r[None], values=[1.0],
           voxel_size_mm=voxel_size_mm)
    return volume


def extent(volume):
    index = volume.nonzero()
    return index.min(0).values.tolist(), index.max(0).values.tolist()


def test_painted_geometry():
    box = paint_one(2, (3, 4, 5))
    assert int(box.sum()) == 7 * 9 * 11 and extent(box) == ([17, 16, 15], [23, 24, 25])
    # A quarter turn about z swaps the box's x and y extents (axis order and rotation sense).
    turned = paint_one(2, (3, 4, 5), rotation=rotation_matrix((0, 0, 1), 90.0))
    assert extent(turned) == ([16, 17, 15], [24, 23, 25])
    ell = paint_one(0, (6, 8, 10))
    assert abs(float(ell.sum()) / (4 / 3 * math.pi * 480) - 1) < 0.03       # measured 1988 vs 2010.6
    cyl = paint_one(1, (5, 5, 8))
    assert abs(float(cyl.sum()) / (math.pi * 25 * 16) - 1) < 0.07           # measured 1309 vs 1256.6
    # Sizes are in mm: on 2 mm slices a 6 mm sphere spans 7 slices, 13 voxels in-plane.
    aniso = paint_one(0, (6, 6, 6), voxel_size_mm=(1.0, 1.0, 2.0))
    assert extent(aniso) == ([14, 14, 17], [25, 25, 23])


def test_shapes_within_range_and_mask():
    mask = ellipsoid((48, 48, 48), radii=(18, 20, 16), supersample=1) > 0.5
    for seed in range(3):
        chi = random_shapes((48, 48, 48), generator=gen(seed), chi_range_ppm=(0.05, 0.3), mask=mask)
        nonzero = chi != 0
        assert bool(nonzero.any()) and not bool((nonzero & ~mask).any())
        assert float(chi[nonzero].min()) >= 0.05 and float(chi[nonzero].max()) <= 0.3
    free = random_shapes((48, 48, 48), generator=gen(), count=30)
    values = free.unique()
    assert values.numel() <= 31 and float(values.min()) >= -0.2 and float(values.max()) <= 0.2
    assert 0.05 < float((free != 0).float().mean()) < 0.6                    # measured 0.19


@pytest.mark.parametrize("kind", SHAPE_KINDS)
def test_each_kind_alone(kind):
    chi = random_shapes((32, 32, 32), generator=gen(), kinds=(kind,), count=5)
    assert bool((chi != 0).any())


def test_count_and_seeds():
    assert not bool(random_shapes((16, 16, 16), generator=gen(), count=0).any())
    a = random_shapes((32, 32, 32), generator=gen(1))
    assert torch.equal(a, random_shapes((32, 32, 32), generator=gen(1)))
    assert not torch.equal(a, random_shapes((32, 32, 32), generator=gen(2)))
    exact = random_shapes((32, 32, 32), generator=gen(1), count=4, size_range=(0.05, 0.1))
    assert exact.unique().numel() <= 5


def test_tiny_mask_falls_back_to_its_voxels():
    mask = torch.zeros(32, 32, 32, dtype=torch.bool)
    mask[3, 4, 5] = True
    chi = random_shapes((32, 32, 32), generator=gen(), count=3, mask=mask)
    assert bool(chi[3, 4, 5] != 0) and int((chi != 0).sum()) == 1


@pytest.mark.parametrize("kwargs", [dict(count=-1), dict(count=(5, 2)), dict(count=(1.5, 3)),
                                    dict(chi_range_ppm=(0.2, -0.2)), dict(kinds=("sphere",)), dict(kinds=()),
                                    dict(size_range=(0.0, 0.1)), dict(shape=(8, 8))])
def test_bad_parameters(kwargs):
    with pytest.raises(ParameterError):
        random_shapes(**{"shape": (16, 16, 16), "generator": gen(), **kwargs})


def test_bad_mask():
    with pytest.raises(InputError):
        random_shapes((16, 16, 16), generator=gen(), mask=torch.ones(8, 8, 8, dtype=torch.bool))
    with pytest.raises(InputError):
        random_shapes((16, 16, 16), generator=gen(), count=2, mask=torch.zeros(16, 16, 16, dtype=torch.bool))
