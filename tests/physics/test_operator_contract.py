"""The operator contract: every linear operator in ``torchqsm.physics`` joins ``CASES``.

Each case is a small factory ``(grid, dtype) -> (operator, input shape, output shape)``
and runs on an all-odd, an all-even and a mixed grid, in float32 and float64.
For every case the tests assert the stated output shape and dtype, adjointness,
``gram == H @ A``, agreement of the hand-written adjoint with autograd of the
forward, linearity, and leading batch axes.

Adjointness is measured as ``|<Ax, y> - <x, A^H y>| / (||Ax|| ||y||)`` with
seeded random ``x``, ``y`` (the Cauchy–Schwarz bound of the inner product: a
plain ``/ |<Ax, y>|`` is ill-conditioned when the random inner product happens
to be near zero).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from torchqsm.physics import (
    DipoleOp,
    FourierMultiplierOp,
    GradientOp,
    IdentityOp,
    LaplacianOp,
    LinearOperator,
    MaskOp,
    PadOp,
    WeightOp,
)

Grid = tuple[int, int, int]
Built = tuple[LinearOperator, tuple[int, ...], tuple[int, ...]]

GRIDS: dict[str, Grid] = {"odd": (9, 7, 5), "even": (10, 8, 6), "mixed": (8, 9, 7)}
DTYPES = {"f32": torch.float32, "f64": torch.float64}
OBLIQUE_B0 = (0.3, -0.5, 0.81)
ANISOTROPIC_MM = (1.0, 0.8, 1.5)

# Tolerances per dtype: adjointness, gram/autograd/linearity (relative).
ADJOINT_RTOL = {torch.float32: 1e-4, torch.float64: 1e-6}
MATCH_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@dataclass(frozen=True)
class Case:
    """One contract case."""

    build: Callable[[Grid, torch.dtype], Built]


def _seeded(grid: Grid, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(grid, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------
# Factories: each returns (operator, input shape, output shape).
# ---------------------------------------------------------------------------

def dipole(**options) -> Callable[[Grid, torch.dtype], Built]:
    def build(grid, dtype):
        op = DipoleOp(grid, dtype=dtype, **options)
        return op, grid, grid
    return build


def pad(grid, dtype):
    op = PadOp(grid, before=(1, 2, 0), after=(0, 3, 2))
    return op, grid, (grid[0] + 1, grid[1] + 5, grid[2] + 2)


def crop(grid, dtype):
    op = PadOp(grid, before=(2, 0, 1), after=(1, 1, 3)).H
    padded = (grid[0] + 3, grid[1] + 1, grid[2] + 4)
    return op, padded, grid


def weight(grid, dtype):
    return WeightOp(0.5 + _seeded(grid, dtype, 7).abs()), grid, grid


def mask(grid, dtype):
    return MaskOp(_seeded(grid, dtype, 8) > 0), grid, grid


def gradient(boundary, voxel_size_mm=ANISOTROPIC_MM, with_shape=True):
    def build(grid, dtype):
        op = GradientOp(voxel_size_mm=voxel_size_mm, boundary=boundary, shape=grid if with_shape else None)
        return op, grid, (3, *grid)
    return build


def laplacian(stencil):
    def build(grid, dtype):
        return LaplacianOp(grid, voxel_size_mm=ANISOTROPIC_MM, stencil=stencil, dtype=dtype), grid, grid
    return build


def fourier_multiplier(grid, dtype):
    # A real kernel made even (h(n) = h(-n), indices mod N) has a real, even symbol.
    h = _seeded(grid, torch.float64, 9)
    h = 0.5 * (h + torch.roll(torch.flip(h, dims=(0, 1, 2)), shifts=(1, 1, 1), dims=(0, 1, 2)))
    symbol = torch.fft.rfftn(h).real.to(dtype)
    return FourierMultiplierOp(symbol, grid), grid, grid


def dipole_after_mask(grid, dtype):
    op = DipoleOp(grid, b0_dir=OBLIQUE_B0, pad=2, dtype=dtype) @ mask(grid, dtype)[0]
    return op, grid, grid


def weight_after_dipole(grid, dtype):
    op = weight(grid, dtype)[0] @ DipoleOp(grid, voxel_size_mm=ANISOTROPIC_MM, dtype=dtype)
    return op, grid, grid


def scaled_sum(grid, dtype):
    op = 2 * DipoleOp(grid, b0_dir=OBLIQUE_B0, pad=3, dtype=dtype) + laplacian("27")(grid, dtype)[0]
    return op, grid, grid


def difference(grid, dtype):
    op = gradient("periodic")(grid, dtype)[0] - gradient("neumann")(grid, dtype)[0]
    return op, grid, (3, *grid)


def weighted_laplacian(grid, dtype):
    # G^H W G: a gradient-domain operator as used by TV/MEDI-type terms.
    G = gradient("neumann")(grid, dtype)[0]
    return G.H @ weight(grid, dtype)[0] @ G, grid, grid


CASES = [
    pytest.param(Case(dipole()), id="dipole"),
    pytest.param(Case(dipole(pad=3)), id="dipole-padded"),
    pytest.param(Case(dipole(pad=(2, 0, 3), fast_length=False)), id="dipole-padded-exact"),
    pytest.param(Case(dipole(form="image", pad=2)), id="dipole-image"),
    pytest.param(Case(dipole(form="image", b0_dir=OBLIQUE_B0, voxel_size_mm=ANISOTROPIC_MM)),
                 id="dipole-image-oblique-anisotropic"),
    pytest.param(Case(dipole(b0_dir=OBLIQUE_B0)), id="dipole-oblique"),
    pytest.param(Case(dipole(b0_dir=OBLIQUE_B0, pad=2)), id="dipole-oblique-padded"),
    pytest.param(Case(dipole(voxel_size_mm=ANISOTROPIC_MM)), id="dipole-anisotropic"),
    pytest.param(Case(dipole(voxel_size_mm=ANISOTROPIC_MM, b0_dir=OBLIQUE_B0, pad=2, dc=1 / 3)),
                 id="dipole-anisotropic-oblique-padded"),
    pytest.param(Case(pad), id="pad"),
    pytest.param(Case(crop), id="pad.H"),
    pytest.param(Case(weight), id="weight"),
    pytest.param(Case(mask), id="mask"),
    pytest.param(Case(gradient("periodic")), id="gradient-periodic"),
    pytest.param(Case(gradient("periodic", with_shape=False)), id="gradient-periodic-noshape"),
    pytest.param(Case(gradient("neumann")), id="gradient-neumann"),
    pytest.param(Case(laplacian("fft")), id="laplacian-fft"),
    pytest.param(Case(laplacian("7")), id="laplacian-7"),
    pytest.param(Case(laplacian("27")), id="laplacian-27"),
    pytest.param(Case(fourier_multiplier), id="fourier-multiplier"),
    pytest.param(Case(dipole_after_mask), id="dipole@mask"),
    pytest.param(Case(weight_after_dipole), id="weight@dipole"),
    pytest.param(Case(scaled_sum), id="2*dipole+laplacian"),
    pytest.param(Case(difference), id="gradient-difference"),
    pytest.param(Case(weighted_laplacian), id="G.H@W@G"),
    pytest.param(Case(lambda grid, dtype: (IdentityOp(), grid, grid)), id="identity"),
]


def _crossed() -> list:
    """Every case on every grid."""
    params = []
    for case_param in CASES:
        (case,) = case_param.values
        for grid_name, grid in GRIDS.items():
            marks = list(case_param.marks)
            params.append(pytest.param(case, grid, id=f"{case_param.id}-{grid_name}", marks=marks))
    return params


pytestmark = pytest.mark.usefixtures("one_thread")


dtypes = pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _random(shape, dtype, generator, leading=()) -> torch.Tensor:
    return torch.randn((*leading, *shape), generator=generator, dtype=dtype)


@dtypes
@pytest.mark.parametrize(("case", "grid"), _crossed())
def test_shape_and_dtype(case, grid, dtype, torch_rng):
    op, in_shape, out_shape = case.build(grid, dtype)
    x = _random(in_shape, dtype, torch_rng)
    y = _random(out_shape, dtype, torch_rng)
    out, back = op(x), op.H(y)
    assert tuple(out.shape) == out_shape
    assert tuple(back.shape) == in_shape
    assert out.dtype == dtype and back.dtype == dtype


@dtypes
@pytest.mark.parametrize(("case", "grid"), _crossed())
def test_adjointness(case, grid, dtype, torch_rng):
    op, in_shape, out_shape = case.build(grid, dtype)
    x = _random(in_shape, dtype, torch_rng)
    y = _random(out_shape, dtype, torch_rng)
    ax = op(x)
    forward = (ax * y).sum()
    backward = (x * op.H(y)).sum()
    assert abs(float(forward - backward)) / float(ax.norm() * y.norm()) < ADJOINT_RTOL[dtype]


@dtypes
@pytest.mark.parametrize(("case", "grid"), _crossed())
def test_gram_equals_adjoint_after_forward(case, grid, dtype, torch_rng):
    op, in_shape, _ = case.build(grid, dtype)
    x = _random(in_shape, dtype, torch_rng)
    assert _rel(op.gram(x), op.H(op(x))) < MATCH_RTOL[dtype]


@dtypes
@pytest.mark.parametrize(("case", "grid"), _crossed())
def test_adjoint_matches_autograd(case, grid, dtype, torch_rng):
    """The hand-written adjoint equals the vector-Jacobian product of the forward."""
    op, in_shape, out_shape = case.build(grid, dtype)
    x = _random(in_shape, dtype, torch_rng).requires_grad_(True)
    y = _random(out_shape, dtype, torch_rng)
    (vjp,) = torch.autograd.grad((op(x) * y).sum(), x)
    assert _rel(vjp, op.H(y)) < MATCH_RTOL[dtype] * 10


@dtypes
@pytest.mark.parametrize(("case", "grid"), _crossed())
def test_linearity(case, grid, dtype, torch_rng):
    op, in_shape, _ = case.build(grid, dtype)
    x = _random(in_shape, dtype, torch_rng)
    z = _random(in_shape, dtype, torch_rng)
    a, b = 0.7, -1.3
    assert _rel(op(a * x + b * z), a * op(x) + b * op(z)) < MATCH_RTOL[dtype] * 10


@dtypes
@pytest.mark.parametrize(("case", "grid"), _crossed())
def test_leading_batch_axes(case, grid, dtype, torch_rng):
    op, in_shape, out_shape = case.build(grid, dtype)
    x = _random(in_shape, dtype, torch_rng, leading=(2,))
    y = _random(out_shape, dtype, torch_rng, leading=(2,))
    out, back = op(x), op.H(y)
    assert tuple(out.shape) == (2, *out_shape)
    assert tuple(back.shape) == (2, *in_shape)
    for i in range(2):
        assert _rel(out[i], op(x[i])) < MATCH_RTOL[dtype]
        assert _rel(back[i], op.H(y[i])) < MATCH_RTOL[dtype]


# ---------------------------------------------------------------------------
# The algebra.
# ---------------------------------------------------------------------------

GRID = GRIDS["mixed"]


@pytest.fixture
def ops() -> dict[str, LinearOperator]:
    f64 = torch.float64
    return {
        "dipole": DipoleOp(GRID, b0_dir=OBLIQUE_B0, voxel_size_mm=ANISOTROPIC_MM, pad=2, dtype=f64),
        "weight": weight(GRID, f64)[0],
        "mask": mask(GRID, f64)[0],
        "gradient": gradient("neumann")(GRID, f64)[0],
        "laplacian": laplacian("7")(GRID, f64)[0],
    }


@pytest.mark.parametrize(("outer", "inner"), [("weight", "dipole"), ("gradient", "mask"),
                                               ("dipole", "laplacian"), ("gradient", "dipole")])
def test_adjoint_of_composition_reverses_order(ops, outer, inner, torch_rng):
    A, B = ops[outer], ops[inner]
    y = _random(A(B(_random(GRID, torch.float64, torch_rng))).shape, torch.float64, torch_rng)
    assert _rel((A @ B).H(y), (B.H @ A.H)(y)) < 1e-12
    assert _rel((A @ B).H(y), B.H(A.H(y))) < 1e-12


@pytest.mark.parametrize("name", ["dipole", "weight", "mask", "gradient", "laplacian"])
def test_double_adjoint_is_the_operator(ops, name):
    A = ops[name]
    assert A.H.H is A
    composed = ops["weight"] @ A if name != "gradient" else A @ ops["weight"]
    assert composed.H.H is composed


@pytest.mark.parametrize("name", ["dipole", "gradient", "laplacian"])
@pytest.mark.parametrize("scalar", [2.5, -0.3])
def test_scaled_adjoint(ops, name, scalar, torch_rng):
    A = ops[name]
    y = _random(A(_random(GRID, torch.float64, torch_rng)).shape, torch.float64, torch_rng)
    assert _rel((scalar * A).H(y), (scalar * A.H)(y)) < 1e-12
    assert _rel((A * scalar).H(y), scalar * A.H(y)) < 1e-12
    assert _rel((-A)(A.H(y)), -(A(A.H(y)))) < 1e-12


def test_sum_and_difference_apply_termwise(ops, torch_rng):
    A, B = ops["dipole"], ops["laplacian"]
    x = _random(GRID, torch.float64, torch_rng)
    assert _rel((2 * A + B)(x), 2 * A(x) + B(x)) < 1e-12
    assert _rel((A - B)(x), A(x) - B(x)) < 1e-12
    assert _rel((A - B).H(x), A.H(x) - B.H(x)) < 1e-12


def test_matmul_with_tensor_applies_forward(ops, torch_rng):
    x = _random(GRID, torch.float64, torch_rng)
    assert torch.equal(ops["dipole"] @ x, ops["dipole"](x))


def test_identity(ops, torch_rng):
    identity = IdentityOp()
    x = _random(GRID, torch.float64, torch_rng)
    assert identity(x) is x and identity.H(x) is x
    assert identity.gram is identity
    A = ops["dipole"]
    assert torch.equal((A @ identity)(x), A(x))
    assert torch.equal((identity @ A).H(x), A.H(x))


def test_bad_operands_raise(ops):
    A = ops["dipole"]
    with pytest.raises(TypeError):
        A + 1.0  # noqa: B018
    with pytest.raises(TypeError):
        A * A  # noqa: B018
    with pytest.raises(TypeError):
        A @ 3.0  # noqa: B018


def test_cheap_gram_forms(ops):
    """An unpadded DipoleOp's gram is one multiplication by D², a mask's gram is itself."""
    D = DipoleOp(GRID, dtype=torch.float64)
    assert isinstance(D.gram, FourierMultiplierOp)
    torch.testing.assert_close(D.gram.symbol, D.kernel**2, rtol=0, atol=0)
    assert ops["mask"].gram is ops["mask"]
    assert isinstance(PadOp(GRID, before=1, after=2).gram, IdentityOp)
    assert isinstance(GradientOp(shape=GRID).gram, FourierMultiplierOp)


def test_buffers_follow_the_input_dtype(torch_rng):
    """Operators built in float32 accept float64 input and return float64 (and vice versa)."""
    D32 = DipoleOp(GRID, b0_dir=OBLIQUE_B0, pad=2, dtype=torch.float32)
    D64 = DipoleOp(GRID, b0_dir=OBLIQUE_B0, pad=2, dtype=torch.float64)
    x = _random(GRID, torch.float64, torch_rng)
    out = D32(x)
    assert out.dtype == torch.float64
    assert _rel(out, D64(x)) < 1e-6
    assert D64(x.float()).dtype == torch.float32
    W = WeightOp(torch.rand(GRID, generator=torch_rng, dtype=torch.float64))
    assert W(x.float()).dtype == torch.float32


def test_complex_input_acts_on_real_and_imaginary_parts(torch_rng):
    D = DipoleOp(GRID, b0_dir=OBLIQUE_B0, pad=2, dtype=torch.float64)
    re, im = _random(GRID, torch.float64, torch_rng), _random(GRID, torch.float64, torch_rng)
    out = D(torch.complex(re, im))
    assert out.is_complex()
    assert _rel(out.real, D(re)) < 1e-12 and _rel(out.imag, D(im)) < 1e-12


def test_grid_mismatch_raises():
    D = DipoleOp(GRID)
    with pytest.raises(ValueError, match="grid"):
        D(torch.zeros(GRID[0], GRID[1], GRID[2] + 1))
    with pytest.raises(ValueError, match="symbol shape"):
        FourierMultiplierOp(torch.zeros(GRID), GRID)
    with pytest.raises(ValueError, match="boundary"):
        GradientOp(boundary="reflect")
    with pytest.raises(ValueError, match="pad"):
        PadOp(GRID, before=-1, after=0)
    with pytest.raises(ValueError, match="real"):
        WeightOp(torch.ones(GRID, dtype=torch.complex64))


def test_neumann_gradient_is_zero_at_the_last_voxel_and_exact_on_ramps():
    """Forward differences of a linear ramp give its slope (mm⁻¹); the last difference is zero."""
    h = ANISOTROPIC_MM
    index = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in GRID), indexing="ij")
    ramp = sum(c * i * hh for c, i, hh in zip((2.0, -1.0, 0.5), index, h))
    g = GradientOp(voxel_size_mm=h, boundary="neumann")(ramp)
    for axis, slope in enumerate((2.0, -1.0, 0.5)):
        interior = g[axis].narrow(axis, 0, GRID[axis] - 1)
        torch.testing.assert_close(interior, torch.full_like(interior, slope))
        assert torch.all(g[axis].narrow(axis, GRID[axis] - 1, 1) == 0)


def test_bounding_box_holds_every_mask_voxel_and_nothing_more():
    from torchqsm.physics.operators import bounding_box

    mask = torch.zeros(9, 8, 7, dtype=torch.bool)
    mask[2, 5, 1] = mask[6, 3, 4] = True
    assert bounding_box(mask) == (slice(2, 7), slice(3, 6), slice(1, 5))
    assert bounding_box(torch.stack([mask.float(), torch.zeros(9, 8, 7)])) == bounding_box(mask)  # leading axes
    with pytest.raises(ValueError, match="empty"):
        bounding_box(torch.zeros(4, 4, 4))
