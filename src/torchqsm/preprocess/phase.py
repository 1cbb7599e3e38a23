r"""Phase scaling and sign: stored phase values → radians in :math:`[-\pi, \pi)`.

Scanners and converters store phase in many units: radians, 12-bit integers
(Siemens: 0…4095 stored, −4096…4094 after DICOM rescale slope 2, intercept
−4096), 16-bit integers, or floats scaled by some unknown factor. Every later
step needs radians, so :func:`rescale_phase` looks at the value range, decides
what it is, maps it onto the circle and says in one line what it did.

Examples
--------
>>> import torch
>>> stored = torch.tensor([-4096.0, -2048.0, 0.0, 2048.0, 4094.0])
>>> scaling = rescale_phase(stored)
>>> scaling.kind, scaling.phase_rad.tolist()[:3]
('integer_4096', [-3.1415927410125732, -1.5707963705062866, 0.0])
>>> scaling.message
'phase looked like integers in [-4096, 4094]; rescaled by π/4096'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InputError, ParameterError
from ..validation import as_tensor, check_finite

__all__ = ["magnitude_as_phase", "PhaseScaling", "rescale_phase", "apply_phase_sign", "wrap_phase"]

PhaseKind = Literal["radians", "integer_4096", "integer_other", "arbitrary"]

#: Relative slack on ±π when deciding that values are already radians (float32 π rounds up).
RADIANS_TOLERANCE = 1e-3
#: Integer data must span at least this fraction of its power-of-two range to be read as n-bit.
INTEGER_COVERAGE = 0.9
#: Quantized floats with more levels than this are treated as continuous.
MAX_LEVELS = 2**16
#: Values sampled to find the quantization lattice (the extremes are always included).
_LATTICE_SAMPLE = 2**20


@dataclass(frozen=True)
class PhaseScaling:
    r"""What :func:`rescale_phase` found and did.

    The mapping is :math:`\varphi = \operatorname{wrap}\big(\text{scale}\cdot(v - \text{offset})\big)`
    for a stored value :math:`v`, with wrap onto :math:`[-\pi, \pi)`.

    Attributes
    ----------
    phase_rad
        Phase (rad) in :math:`[-\pi, \pi)`, same shape as the input.
    kind
        ``"radians"``, ``"integer_4096"`` (Siemens 12-bit), ``"integer_other"``
        (another n-bit integer range) or ``"arbitrary"`` (linear map of min…max).
    scale
        Radians per stored unit.
    offset
        The stored value that maps to 0 rad.
    message
        One human-readable line saying what was detected and done.
    """

    phase_rad: torch.Tensor
    kind: PhaseKind
    scale: float
    offset: float
    message: str


def wrap_phase(phase_rad: torch.Tensor) -> torch.Tensor:
    r"""Wrap phase (rad) onto :math:`[-\pi, \pi)`; values already there are returned bit-exact.

    >>> import torch
    >>> wrap_phase(torch.tensor([math.pi, -math.pi, 4.0, 0.5])).tolist()
    [-3.1415927410125732, -3.1415927410125732, -2.2831852436065674, 0.5]
    """
    outside = (phase_rad >= math.pi) | (phase_rad < -math.pi)
    if not bool(outside.any()):
        return phase_rad
    wrapped = torch.remainder(phase_rad + math.pi, 2 * math.pi) - math.pi
    # remainder can round up to exactly 2π - π = π; that point is -π on the circle
    wrapped = torch.where(wrapped >= math.pi, wrapped - 2 * math.pi, wrapped)
    return torch.where(outside, wrapped, phase_rad)


def _lattice_levels(values: torch.Tensor, vmin: float, vmax: float) -> int | None:
    """Number of levels of a uniform quantization lattice on [vmin, vmax], or None if continuous."""
    flat = values.reshape(-1)
    if flat.numel() > _LATTICE_SAMPLE:  # a strided sample finds the step; the extremes fix the span
        flat = flat[:: flat.numel() // _LATTICE_SAMPLE + 1]
    unique = torch.unique(torch.cat([flat, flat.new_tensor([vmin, vmax])]))
    if unique.numel() > MAX_LEVELS or unique.numel() < 3:
        return None
    gaps = torch.diff(unique)
    # single gaps carry float rounding (1e-4 relative in float32 data); their mean does not
    step = float(gaps[gaps < 1.5 * gaps.min()].mean())
    levels = round((vmax - vmin) / step) + 1
    if levels > MAX_LEVELS:
        return None
    step = (vmax - vmin) / (levels - 1)  # the mean step is free of the float rounding of single gaps
    position = (unique - vmin) / step
    return levels if float((position - position.round()).abs().max()) < 0.05 else None


def _integer_range(vmin: float, vmax: float) -> tuple[int, bool] | None:
    """Smallest ``(bits, signed)`` whose n-bit range holds [vmin, vmax] well covered, else None."""
    signed = vmin < 0
    bound = max(-vmin, vmax + 1) if signed else vmax + 1
    bits = max(8, math.ceil(math.log2(bound)) + (1 if signed else 0))
    if bits > 32 or (vmax - vmin) < INTEGER_COVERAGE * (2**bits - 1):
        return None
    return bits, signed


def _describe(value: float) -> str:
    return f"{value:.4g}"


def rescale_phase(
    phase,
    *,
    name: str = "phase",
    assume: Literal["auto", "radians", "integer", "arbitrary"] = "auto",
) -> PhaseScaling:
    r"""Detect how a phase image is stored and rescale it to radians in :math:`[-\pi, \pi)`.

    Rules, in order (``assume="auto"``):

    1. **radians** — values within :math:`\pm\pi(1+10^{-3})` that span at least
       half the circle, or that are not quantized (continuous floats, e.g.
       simulated phase); also continuous values in :math:`[0, 2\pi)`, which
       are wrapped. Left unchanged apart from the wrap.
    2. **integers** — integer values that cover at least 90 % of an n-bit
       range (n ≥ 8): unsigned :math:`[0, 2^n)` is centred on :math:`2^{n-1}`
       and scaled by :math:`\pi/2^{n-1}`; signed :math:`[-2^{n-1}, 2^{n-1})`
       is scaled by :math:`\pi/2^{n-1}`. Siemens' 0…4095 and −4096…4094 give
       ``kind="integer_4096"``, any other n gives ``"integer_other"``.
    3. **arbitrary** — anything else: the observed min…max is assumed to be
       the full circle mapped linearly by the scaler (true for wrapped phase
       of a whole head, which visits every angle). If the values sit on a
       uniform lattice of :math:`L \le 2^{16}` levels with step :math:`s`,
       the circle is :math:`L s` wide (each level one bin of :math:`2\pi/L`);
       otherwise :math:`\max - \min`. The midpoint maps to 0 rad.

    A wrong guess on rule 3 only matters if the data do not use the whole
    circle; a constant global offset is removed later by echo combination
    and background-field removal. Force a reading with ``assume``.

    Parameters
    ----------
    phase
        Stored phase values, any shape, any real dtype (integers included).
    name
        What to call the input in messages (e.g. ``"phase.nii"``).
    assume
        ``"auto"`` (the rules above), or force ``"radians"`` (wrap only),
        ``"integer"`` (rule 2, error if the range is not n-bit) or
        ``"arbitrary"`` (rule 3).

    Returns
    -------
    PhaseScaling
        ``phase_rad`` (the input's dtype if floating, else float32, same
        device), ``kind``, ``scale``, ``offset`` and a one-line ``message``.

    Raises
    ------
    InputError
        Empty, complex, NaN/infinite or constant input; not n-bit with ``assume="integer"``.

    Examples
    --------
    >>> import torch
    >>> out = rescale_phase(torch.tensor([0, 1024, 2048, 3072, 4095], dtype=torch.int32))
    >>> out.kind, round(out.scale * 2048 / math.pi, 6), out.offset
    ('integer_4096', 1.0, 2048.0)
    >>> rescale_phase(torch.tensor([-0.00367, 0.0, 0.00367])).kind
    'arbitrary'
    """
    if assume not in ("auto", "radians", "integer", "arbitrary"):
        raise ParameterError(f"assume must be 'auto', 'radians', 'integer' or 'arbitrary', got {assume!r}")
    data = as_tensor(phase, name)
    if data.is_complex():
        raise InputError(f"{name} is complex; pass the phase angle (or torch.angle of the signal)")
    if data.numel() == 0:
        raise InputError(f"{name} is empty")
    out_dtype = data.dtype if data.is_floating_point() else torch.float32
    # No mask exists yet at this stage, so every voxel must be finite (torchqsm.validation's policy).
    values = check_finite(data.to(torch.float64), name=name)
    vmin, vmax = float(values.min()), float(values.max())
    if vmin == vmax:
        raise InputError(f"{name} is constant (all values {_describe(vmin)}): there is no phase to rescale")

    span = vmax - vmin
    limit = math.pi * (1 + RADIANS_TOLERANCE)
    integer_valued = bool((values == values.round()).all())
    levels = _lattice_levels(values, vmin, vmax)
    where = f"[{_describe(vmin)}, {_describe(vmax)}]"

    kind: PhaseKind
    if assume == "radians" or (assume == "auto" and -limit <= vmin and vmax <= limit
                               and (span >= math.pi or levels is None)):
        kind, scale, offset = "radians", 1.0, 0.0
        message = f"{name} is in radians (range {where}); wrapped onto [-π, π)"
    elif assume == "auto" and not integer_valued and levels is None and vmin >= -limit + math.pi \
            and vmax <= 2 * limit and span >= math.pi:
        kind, scale, offset = "radians", 1.0, 0.0
        message = f"{name} looked like radians in [0, 2π) (range {where}); wrapped onto [-π, π)"
    elif assume in ("auto", "integer") and integer_valued and _integer_range(vmin, vmax) is not None:
        bits, signed = _integer_range(vmin, vmax)  # type: ignore[misc]
        half = 2 ** (bits - 1)
        scale, offset = math.pi / half, (0.0 if signed else float(half))
        siemens = (bits, signed) in ((12, False), (13, True))
        kind = "integer_4096" if siemens else "integer_other"
        what = "integers" if siemens else f"{bits}-bit {'signed' if signed else 'unsigned'} integers"
        centred = "" if signed else f"centred on {half} and "
        message = f"{name} looked like {what} in [{int(vmin)}, {int(vmax)}]; {centred}rescaled by π/{half}"
    elif assume == "integer":
        raise InputError(f"{name} is not n-bit integer phase (range {where}); use assume='arbitrary'")
    else:
        kind = "arbitrary"
        width = span * levels / (levels - 1) if levels is not None else span
        scale, offset = 2 * math.pi / width, (vmin + vmax) / 2
        lattice = f" ({levels} levels)" if levels is not None else ""
        message = (f"{name} looked like arbitrary units in {where}{lattice}; mapped linearly onto [-π, π) "
                   f"(scale {scale:.6g} rad per unit, {_describe(offset)} → 0 rad)")

    if kind == "radians":
        # floating input is wrapped as given, so values already in [-π, π) stay bit-exact
        phase_rad = wrap_phase(data if data.is_floating_point() else values.to(out_dtype))
    else:
        # wrap again after the cast: π - ε in float64 may round to float32 π
        phase_rad = wrap_phase(wrap_phase((values - offset) * scale).to(out_dtype))
    return PhaseScaling(phase_rad=phase_rad, kind=kind, scale=scale, offset=offset, message=message)


def magnitude_as_phase(phase: torch.Tensor, magnitude: torch.Tensor | None = None) -> str | None:
    """Why ``phase`` (``(E, X, Y, Z)``, stored values) looks like a magnitude image, or ``None``.

    A magnitude is non-negative and decays with echo time (T2*), so in most voxels each
    echo is below the one before; a wrapped phase is as often above as below. With one
    echo, a "phase" that correlates with the magnitude almost perfectly is the magnitude.
    Signed data (any negative value) is never taken for a magnitude.

    >>> import torch
    >>> mag = (torch.rand(1, 8, 8, 8) + 0.1) * torch.tensor([1.0, 0.7, 0.5])[:, None, None, None]
    >>> magnitude_as_phase(mag) is not None, magnitude_as_phase(torch.rand(3, 8, 8, 8) * 4095)
    (True, None)
    """
    values = phase.detach().to(torch.float64)
    if values.numel() == 0 or bool((values < 0).any()):
        return None
    if values.ndim == 4 and values.shape[0] >= 2:
        both = (values[1:] != 0) & (values[:-1] != 0)
        if int(both.sum()) < 100:
            return None
        falling = float(((values[1:] < values[:-1]) & both).sum() / both.sum())
        if falling > 0.8:
            return (f"it is non-negative and falls from each echo to the next in {falling:.0%} of the voxels, "
                    "as a magnitude decays with echo time (a phase would in about half)")
    if magnitude is not None and magnitude.shape == phase.shape:
        a = values.reshape(-1) - values.mean()
        b = magnitude.detach().to(torch.float64).reshape(-1)
        b = b - b.mean()
        denominator = float(a.norm() * b.norm())
        correlation = float(a @ b) / denominator if denominator > 0 else 0.0
        if correlation > 0.95:
            return f"it is non-negative and correlates with the magnitude (r = {correlation:.3f})"
    return None


def apply_phase_sign(phase_rad: torch.Tensor, *, sign: Literal[1, -1]) -> torch.Tensor:
    r"""Flip the phase convention if needed: :math:`\varphi \mapsto \operatorname{wrap}(s\,\varphi)`.

    torchqsm's convention is that a positive field offset gives a positive
    phase (``physics.units``). Some vendors store the opposite (left-handed)
    sign; such phase must be multiplied by ``sign=-1`` before unwrapping,
    otherwise χ comes out with the wrong sign (paramagnetic veins dark).

    Parameters
    ----------
    phase_rad
        Phase (rad), any shape.
    sign
        ``1`` (keep) or ``-1`` (negate).

    Returns
    -------
    torch.Tensor
        Phase (rad) in :math:`[-\pi, \pi)` if the input was; −π stays −π.

    Examples
    --------
    >>> import torch
    >>> apply_phase_sign(torch.tensor([-math.pi, 0.5]), sign=-1).tolist()
    [-3.1415927410125732, -0.5]
    """
    if isinstance(sign, bool) or sign not in (1, -1):
        raise ParameterError(f"sign must be 1 or -1, got {sign!r}")
    if not isinstance(phase_rad, torch.Tensor) or phase_rad.is_complex() or not phase_rad.is_floating_point():
        raise InputError("phase_rad must be a real floating-point tensor (radians)")
    if sign == 1:
        return phase_rad
    # -(-π) = π is the same angle as -π: wrap keeps the result in [-π, π)
    return wrap_phase(-phase_rad)
