r"""The dipole kernel and the Laplacian symbols against analytic answers.

:math:`D(\mathbf k) = 1/3 - (\mathbf k\cdot\hat b)^2/\lVert\mathbf k\rVert^2`,
:math:`k_a = n_a/(N_a h_a)` (cycles/mm): -2/3 along B0, 1/3 across it; it
depends on the direction of B0 only; rotating B0 rotates the kernel.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from torchqsm.physics import DipoleOp, dipole_kernel, gradient_gram_symbol, kspace_frequencies, laplacian_symbol
from torchqsm.physics.kernels import _box_integrals

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def kernel(shape, **options) -> torch.Tensor:
    options.setdefault("rfft", False)
    return dipole_kernel(shape, dtype=F64, **options)


def by_hand(n, shape, voxel_size_mm, b0_dir) -> float:
    """The formula at signed bin ``n``, computed with plain floats."""
    k = [n_a / (N_a * h_a) for n_a, N_a, h_a in zip(n, shape, voxel_size_mm)]
    norm_b = math.sqrt(sum(b * b for b in b0_dir))
    kb = sum(k_a * b_a for k_a, b_a in zip(k, b0_dir)) / norm_b
    return 1.0 / 3.0 - kb**2 / sum(k_a * k_a for k_a in k)


def at(D: torch.Tensor, n) -> float:
    """Kernel value at the signed bin ``n`` of a full spectrum."""
    return float(D[tuple(n_a % N for n_a, N in zip(n, D.shape))])


# ---------------------------------------------------------------------------
# -2/3 along B0, 1/3 across it.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 8, 8), (9, 7, 5), (10, 12, 6)])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_b0_parallel_and_perpendicular(shape, axis):
    b = [0.0, 0.0, 0.0]
    b[axis] = 1.0
    D = kernel(shape, b0_dir=b, voxel_size_mm=(1.0, 0.7, 1.3))
    others = [a for a in range(3) if a != axis]
    for n in (1, 2, -2):
        along = [0, 0, 0]
        along[axis] = n
        assert at(D, along) == pytest.approx(-2 / 3, abs=1e-15)
        across = [0, 0, 0]
        across[others[0]] = n
        across[others[1]] = 1  # any k in the plane perpendicular to b
        assert at(D, across) == pytest.approx(1 / 3, abs=1e-15)


@pytest.mark.parametrize("shape", [(8, 9, 7), (10, 8, 6)])
@pytest.mark.parametrize("form", ["kspace", "image"])
def test_half_spectrum_is_the_first_half_of_the_full_one(shape, form):
    b = (0.3, -0.5, 0.81) if form == "image" else (0.0, 0.6, 0.8)
    full = kernel(shape, b0_dir=b, form=form)
    half = kernel(shape, b0_dir=b, form=form, rfft=True)
    assert tuple(half.shape) == (shape[0], shape[1], shape[2] // 2 + 1)
    # The k-space Nyquist plane of an even last axis sits at +k_N in rfft order, at -k_N in fft order.
    last = shape[2] // 2 + (1 if shape[2] % 2 else 0)
    torch.testing.assert_close(half[..., :last], full[..., :last], rtol=0, atol=1e-14)


def test_diagonal_b0_on_cubic_grid():
    b = (1 / math.sqrt(2), 1 / math.sqrt(2), 0.0)
    D = kernel((8, 8, 8), b0_dir=b)
    assert at(D, (1, 1, 0)) == pytest.approx(-2 / 3, abs=1e-15)
    assert at(D, (2, 2, 0)) == pytest.approx(-2 / 3, abs=1e-15)
    assert at(D, (-1, -1, 0)) == pytest.approx(-2 / 3, abs=1e-15)
    assert at(D, (1, -1, 0)) == pytest.approx(1 / 3, abs=1e-15)
    assert at(D, (0, 0, 3)) == pytest.approx(1 / 3, abs=1e-15)
    assert at(D, (2, -2, 1)) == pytest.approx(1 / 3, abs=1e-15)


def test_parallel_bin_on_anisotropic_grid():
    """Voxel (1, 1, 2) mm on (16, 16, 8): bin (1, 0, 1) has k = (1/16, 0, 1/16) ∥ (1, 0, 1)."""
    D = kernel((16, 16, 8), voxel_size_mm=(1.0, 1.0, 2.0), b0_dir=(1.0, 0.0, 1.0))
    assert at(D, (1, 0, 1)) == pytest.approx(-2 / 3, abs=1e-15)
    assert at(D, (1, 0, -1)) == pytest.approx(1 / 3, abs=1e-15)
    assert at(D, (0, 5, 0)) == pytest.approx(1 / 3, abs=1e-15)


@pytest.mark.parametrize(
    ("shape", "voxel", "b"),
    [((16, 16, 8), (1.0, 1.0, 2.0), (0.0, 0.0, 1.0)),
     ((16, 16, 8), (1.0, 1.0, 2.0), (0.3, 0.2, 0.9)),
     ((9, 10, 7), (1.0, 0.8, 1.5), (0.3, -0.5, 0.81))],
)
def test_anisotropic_kernel_matches_formula_by_hand(shape, voxel, b):
    D = kernel(shape, voxel_size_mm=voxel, b0_dir=b)
    for n in [(1, 0, 1), (0, 1, 0), (2, -3, 1), (-1, 2, -2), (3, 3, 3), (0, 0, 1)]:
        assert at(D, n) == pytest.approx(by_hand(n, shape, voxel, b), abs=1e-14)


def test_anisotropic_grid_samples_the_isotropic_kernel():
    """(16, 16, 8) voxels of (1, 1, 2) mm span the same box as 16³ of 1 mm: same k on shared bins."""
    b = (0.3, 0.2, 0.9)
    aniso = kernel((16, 16, 8), voxel_size_mm=(1.0, 1.0, 2.0), b0_dir=b)
    iso = kernel((16, 16, 16), b0_dir=b)
    # fftfreq(8, 2) * 16 = (0, 1, 2, 3, -4, -3, -2, -1); index 4 of the 8-grid is its Nyquist bin,
    # where the kernel averages ±k_N, so it is compared with the average of the 16-grid's ±4 bins.
    shared = [0, 1, 2, 3, 13, 14, 15]
    torch.testing.assert_close(aniso[:, :, [0, 1, 2, 3, 5, 6, 7]], iso[:, :, shared], rtol=0, atol=1e-15)
    # At the Nyquist plane, averaging over ±k_N in the 8-grid equals averaging the 16-grid's bins +4 and -4
    # only on the axes where the 16-grid is not itself at Nyquist (rows 8 on axes 0 and 1 are excluded).
    rows = [i for i in range(16) if i != 8]
    average = 0.5 * (iso[:, :, 4] + iso[:, :, 12])
    torch.testing.assert_close(aniso[rows][:, rows, 4], average[rows][:, rows], rtol=0, atol=1e-14)


def _impulse_cases():
    cases = []
    for shape in [(9, 7, 5), (10, 8, 6), (9, 7, 6), (10, 8, 7)]:
        for b in [(0.0, 0.0, 1.0), (0.6, 0.0, 0.8), (0.0, -0.5, math.sqrt(3) / 2), (0.3, -0.5, 0.81)]:
            for form in ["kspace", "image"]:
                cases.append(pytest.param(shape, b, form, id=f"{form}-{shape}-{b}"))
    return cases


@pytest.mark.parametrize(("shape", "b", "form"), _impulse_cases())
def test_operator_applies_its_stored_kernel(shape, b, form):
    """The spectrum of DipoleOp's impulse response is ``DipoleOp.kernel`` (what TKD & co. divide by).

    A regression test: the k-space kernel once sampled (k·b)² at one sign of the Nyquist
    frequency, so for oblique B0 on even grids it was not even and irfftn applied another kernel.
    """
    op = DipoleOp(shape, b0_dir=b, form=form, dtype=F64)
    impulse = torch.zeros(shape, dtype=F64)
    impulse[0, 0, 0] = 1.0
    applied = torch.fft.rfftn(op(impulse))
    assert float(applied.imag.abs().max()) < 1e-12
    torch.testing.assert_close(applied.real, op.kernel, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# The DC value.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["kspace", "image"])
@pytest.mark.parametrize("dc", [0.0, 1 / 3, -0.25])
@pytest.mark.parametrize("rfft", [False, True])
def test_dc_value_is_the_argument(form, dc, rfft):
    D = kernel((8, 9, 6), b0_dir=(0.3, -0.5, 0.81), form=form, dc=dc, rfft=rfft)
    assert float(D[0, 0, 0]) == pytest.approx(dc, abs=1e-15)


def test_kspace_dc_none_is_zero():
    assert float(kernel((8, 9, 6), dc=None)[0, 0, 0]) == 0.0


@pytest.mark.parametrize("shape", [(8, 8, 8), (9, 9, 9), (16, 16, 16), (15, 15, 15), (16, 16, 8), (9, 7, 5)])
@pytest.mark.parametrize("b", [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.3, 0.2, 0.9)])
def test_image_form_dc_none_is_kernel_sum(shape, b):
    """Measured: 0 to 1e-16 for odd cubes (any b) and even cubes (axis b); 0.004 at 8³ oblique."""
    unit = tuple(v / math.sqrt(sum(w * w for w in b)) for v in b)
    total = float(_box_integrals(shape, (1.0, 1.0, 1.0), unit, None).sum())
    assert float(kernel(shape, b0_dir=b, form="image", dc=None)[0, 0, 0]) == pytest.approx(total, abs=1e-14)
    cubic = len(set(shape)) == 1
    if cubic and (shape[0] % 2 == 1 or max(b) == 1.0):
        # A cube centred on the origin voxel: the demagnetising factor 1/3 cancels the Lorentz 1/3.
        assert abs(total) < 1e-12
    elif cubic:
        assert abs(total) < 1e-2  # the even cube is off-centre by half a voxel


# ---------------------------------------------------------------------------
# Rotating B0 equals rotating k; only the direction of B0 matters.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["kspace", "image"])
@pytest.mark.parametrize("n", [8, 9])
def test_swapping_b0_x_and_z_swaps_kernel_axes(form, n):
    Dz = kernel((n, n, n), b0_dir=(0, 0, 1), form=form)
    Dx = kernel((n, n, n), b0_dir=(1, 0, 0), form=form)
    torch.testing.assert_close(Dz, Dx.transpose(0, 2), rtol=0, atol=1e-14)


@pytest.mark.parametrize("form", ["kspace", "image"])
@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_permuting_b0_permutes_kernel_axes(form, perm):
    """Permuting b, the grid and the voxel size together permutes the kernel's axes."""
    shape, voxel, b = (8, 6, 7), (1.0, 0.8, 1.5), (0.3, 0.2, 0.9)
    D = kernel(shape, voxel_size_mm=voxel, b0_dir=b, form=form)
    Dp = kernel([shape[p] for p in perm], voxel_size_mm=[voxel[p] for p in perm],
                b0_dir=[b[p] for p in perm], form=form)
    torch.testing.assert_close(Dp, D.permute(perm), rtol=0, atol=1e-14)


@pytest.mark.parametrize("form", ["kspace", "image"])
def test_quarter_turn_of_b0_is_a_quarter_turn_of_k(form):
    """Rotating b by 90° about z, (x, y) → (-y, x), rotates the kernel: D'(k) = D(Rᵀk).

    An odd cube, so that negating an index (n → -n mod N) is exact.
    """
    n, b = 9, (0.3, 0.2, 0.9)
    D = kernel((n, n, n), b0_dir=b, form=form)
    Dr = kernel((n, n, n), b0_dir=(-b[1], b[0], b[2]), form=form)
    minus = [(-i) % n for i in range(n)]
    # Rᵀk for k = (k0, k1, k2) is (k1, -k0, k2).
    expected = D.permute(1, 0, 2)[minus, :, :]
    torch.testing.assert_close(Dr, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("form", ["kspace", "image"])
def test_kernel_depends_only_on_b0_direction(form):
    shape, voxel, b = (8, 9, 6), (1.0, 0.8, 1.5), (0.3, -0.5, 0.81)
    D = kernel(shape, voxel_size_mm=voxel, b0_dir=b, form=form)
    for scaled in ([3 * v for v in b], [-v for v in b], [0.01 * v for v in b]):
        torch.testing.assert_close(kernel(shape, voxel_size_mm=voxel, b0_dir=scaled, form=form), D,
                                   rtol=0, atol=1e-14)


# ---------------------------------------------------------------------------
# k-space form against the voxel-integrated image-space form.
# ---------------------------------------------------------------------------

def _band(n: int) -> torch.Tensor:
    """Bins between 10% and 50% of the Nyquist radius (0.5 cycles/mm at 1 mm)."""
    kx, ky, kz = kspace_frequencies((n, n, n), rfft=False)
    radius = torch.sqrt(kx**2 + ky**2 + kz**2)
    return (radius >= 0.05) & (radius <= 0.25)


@pytest.mark.parametrize("b", [(0, 0, 1), (1, 0, 0)])
def test_kspace_and_image_forms_agree_axis_aligned(b):
    """64³, 1 mm, B0 along an axis: measured max |ΔD| = 0.0031 in the band; bound 0.012."""
    band = _band(64)
    diff = (kernel((64,) * 3, b0_dir=b) - kernel((64,) * 3, b0_dir=b, form="image"))[band]
    assert float(diff.abs().max()) < 0.012


def test_kspace_and_image_forms_agree_oblique():
    """64³, 1 mm, b = (0.3, 0.2, 0.9): measured rms |ΔD| = 0.027 (max 0.083); bound rms < 0.04.

    The image form integrates the dipole over each voxel, so it aliases
    differently from the sampled continuous kernel; the difference grows
    with the obliquity of B0.
    """
    b = (0.3, 0.2, 0.9)
    band = _band(64)
    diff = (kernel((64,) * 3, b0_dir=b) - kernel((64,) * 3, b0_dir=b, form="image"))[band]
    assert float(diff.pow(2).mean().sqrt()) < 0.04
    assert float(diff.abs().max()) < 0.12


# ---------------------------------------------------------------------------
# The image-space kernel's box integrals.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("b", "voxel_index"),
    [((1.0, 0.0, 0.0), (8, 0, 0)), ((1.0, 0.0, 0.0), (0, 8, 0)), ((1.0, 0.0, 0.0), (6, 6, 0)),
     ((0.0, 0.6, 0.8), (5, -6, 7)), ((0.3, 0.2, 0.9), (-9, 4, 2))],
)
def test_far_voxel_matches_point_dipole(b, voxel_index):
    """Far from the origin the voxel integral is the point dipole times the voxel volume.

    Measured relative error at (8, 0, 0) for b = x: 5.3e-5.
    """
    norm = math.sqrt(sum(v * v for v in b))
    b = tuple(v / norm for v in b)  # the private worker takes a unit vector
    spatial = _box_integrals((32, 32, 32), (1.0, 1.0, 1.0), b, None)
    value = float(spatial[tuple(i % 32 for i in voxel_index)])
    r = math.sqrt(sum(i * i for i in voxel_index))
    cos = sum(i * v for i, v in zip(voxel_index, b)) / r
    point = (3 * cos**2 - 1) / (4 * math.pi * r**3) * 1.0
    assert value == pytest.approx(point, rel=1e-3)


def test_far_voxel_matches_point_dipole_anisotropic():
    """Voxel (1, 0.8, 1.5) mm: the point dipole at the voxel centre, times the volume 1.2 mm³.

    The elongated boxes make the quadrupole correction larger: measured 0.35% at (8, 0, 0).
    """
    voxel = (1.0, 0.8, 1.5)
    spatial = _box_integrals((32, 32, 32), voxel, (1.0, 0.0, 0.0), None)
    point = 2 / (4 * math.pi * 8.0**3) * math.prod(voxel)
    assert float(spatial[8, 0, 0]) == pytest.approx(point, rel=1e-2)


def test_origin_voxel_is_lorentz_corrected():
    """The voxel's own field: -1/3 (a cube's demagnetising factor) + 1/3 (Lorentz sphere) = 0."""
    for b in [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.6, 0.0, 0.8)]:
        assert float(_box_integrals((9, 9, 9), (1.0, 1.0, 1.0), b, None)[0, 0, 0]) == pytest.approx(0.0, abs=1e-14)


# ---------------------------------------------------------------------------
# Laplacian symbols.
# ---------------------------------------------------------------------------

def _stencil_spectrum(shape, stencil_1d_per_axis) -> torch.Tensor:
    """FFT of a periodic separable-sum stencil: sum over terms of outer products of 3-tap stencils."""
    image = torch.zeros(shape, dtype=F64)
    for term in stencil_1d_per_axis:
        for offsets in itertools.product((-1, 0, 1), repeat=3):
            weight = math.prod(term[a][o + 1] for a, o in enumerate(offsets))
            image[tuple(o % n for o, n in zip(offsets, shape))] += weight
    return torch.fft.fftn(image)


@pytest.mark.parametrize("shape", [(8, 9, 7), (10, 8, 6)])
def test_seven_point_symbol_is_fft_of_stencil(shape):
    h = (1.0, 0.8, 1.5)
    second = [[1 / ha**2, -2 / ha**2, 1 / ha**2] for ha in h]
    delta = [0.0, 1.0, 0.0]
    terms = [[second[0], delta, delta], [delta, second[1], delta], [delta, delta, second[2]]]
    spectrum = _stencil_spectrum(shape, terms)
    assert float(spectrum.imag.abs().max()) < 1e-12
    symbol = laplacian_symbol(shape, voxel_size_mm=h, stencil="7", rfft=False, dtype=F64)
    torch.testing.assert_close(symbol, spectrum.real, rtol=0, atol=1e-12)
    half = laplacian_symbol(shape, voxel_size_mm=h, stencil="7", dtype=F64)
    torch.testing.assert_close(half, spectrum.real[..., : shape[2] // 2 + 1], rtol=0, atol=1e-12)
    torch.testing.assert_close(gradient_gram_symbol(shape, voxel_size_mm=h, dtype=F64), -half)


@pytest.mark.parametrize("shape", [(8, 9, 7), (10, 8, 6)])
def test_twenty_seven_point_symbol_is_fft_of_tensor_product_stencil(shape):
    """Each axis' second difference smoothed by [1, 4, 1]/6 along the other two."""
    h = (1.0, 0.8, 1.5)
    second = [[1 / ha**2, -2 / ha**2, 1 / ha**2] for ha in h]
    smooth = [1 / 6, 4 / 6, 1 / 6]
    terms = [[second[0], smooth, smooth], [smooth, second[1], smooth], [smooth, smooth, second[2]]]
    spectrum = _stencil_spectrum(shape, terms)
    symbol = laplacian_symbol(shape, voxel_size_mm=h, stencil="27", rfft=False, dtype=F64)
    torch.testing.assert_close(symbol, spectrum.real, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rfft", [False, True])
def test_fft_symbol_is_continuous_laplacian(rfft):
    shape, h = (10, 9, 6), (1.0, 0.8, 1.5)
    kx, ky, kz = kspace_frequencies(shape, voxel_size_mm=h, rfft=rfft)
    expected = -4 * math.pi**2 * (kx**2 + ky**2 + kz**2)
    symbol = laplacian_symbol(shape, voxel_size_mm=h, stencil="fft", rfft=rfft, dtype=F64)
    torch.testing.assert_close(symbol, expected, rtol=1e-15, atol=0)
    # Spot check one bin by hand: n = (1, -2, 3).
    k2 = (1 / 10) ** 2 + (-2 / (9 * 0.8)) ** 2 + (3 / (6 * 1.5)) ** 2
    full = laplacian_symbol(shape, voxel_size_mm=h, stencil="fft", rfft=False, dtype=F64)
    assert float(full[1, -2, 3]) == pytest.approx(-4 * math.pi**2 * k2, rel=1e-14)


def test_stencils_agree_at_low_frequency():
    """All three symbols are second-order accurate: equal to O(k⁴) near k = 0."""
    shape = (64, 64, 64)
    fft, seven, twenty_seven = (laplacian_symbol(shape, stencil=s, rfft=False, dtype=F64)
                                for s in ("fft", "7", "27"))
    low = (1, 1, 1)
    for s in (seven, twenty_seven):
        assert float(s[low]) == pytest.approx(float(fft[low]), rel=5e-3)


# ---------------------------------------------------------------------------
# Argument checks.
# ---------------------------------------------------------------------------

def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="b0_dir"):
        dipole_kernel((8, 8, 8), b0_dir=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="b0_dir"):
        dipole_kernel((8, 8, 8), b0_dir=(0.0, float("nan"), 1.0))
    with pytest.raises(ValueError, match="b0_dir"):
        dipole_kernel((8, 8, 8), b0_dir=(0.0, 1.0))
    with pytest.raises(ValueError, match="form"):
        dipole_kernel((8, 8, 8), form="spatial")
    with pytest.raises(ValueError, match="voxel_size_mm"):
        dipole_kernel((8, 8, 8), voxel_size_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        dipole_kernel((8, 8))
    with pytest.raises(ValueError, match="stencil"):
        laplacian_symbol((8, 8, 8), stencil="5")
