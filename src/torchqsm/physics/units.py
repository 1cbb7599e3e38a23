r"""Unit conversions between phase, frequency and field.

The conventions (see ``docs/conventions.md``):

* phase :math:`\varphi` in radians, accumulated at echo time :math:`T_E` (s);
* frequency offset :math:`\Delta f = \varphi / (2\pi T_E)` in Hz;
* field :math:`\Delta B / B_0` in ppm, with
  :math:`\Delta f = \frac{\gamma}{2\pi} B_0 \cdot 10^{-6}\,\mathrm{ppm}`.

The sign follows the physics: a positive field offset gives a positive phase.
Scanners that store the opposite sign are handled at the I/O edge.

Examples
--------
>>> round(ppm_to_hz(1.0, b0_tesla=3.0), 4)
127.7324
>>> round(phase_to_ppm(hz_to_phase(127.7324, echo_time_s=0.01), echo_time_s=0.01, b0_tesla=3.0), 6)
1.0
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch

__all__ = [
    "GAMMA_BAR_MHZ_PER_T",
    "hz_per_ppm",
    "phase_to_hz",
    "hz_to_phase",
    "hz_to_ppm",
    "ppm_to_hz",
    "phase_to_ppm",
    "ppm_to_phase",
    "radians_per_ppm",
    "rad_per_s_to_ppm",
]

#: Proton gyromagnetic ratio over 2π, in MHz/T (CODATA 2018, shielded in water ≈ this).
GAMMA_BAR_MHZ_PER_T: float = 42.577478

T = TypeVar("T", float, torch.Tensor)


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def hz_per_ppm(b0_tesla: float) -> float:
    """Frequency (Hz) of a 1 ppm field offset at field strength ``b0_tesla`` (T)."""
    return GAMMA_BAR_MHZ_PER_T * _positive(b0_tesla, "b0_tesla")


def radians_per_ppm(*, echo_time_s: float, b0_tesla: float) -> float:
    """Phase (rad) accumulated at ``echo_time_s`` (s) by a 1 ppm field at ``b0_tesla`` (T)."""
    return 2.0 * math.pi * hz_per_ppm(b0_tesla) * _positive(echo_time_s, "echo_time_s")


def phase_to_hz(phase_rad: T, *, echo_time_s: float) -> T:
    """Phase (rad) at echo time ``echo_time_s`` (s) → frequency offset (Hz)."""
    return phase_rad / (2.0 * math.pi * _positive(echo_time_s, "echo_time_s"))


def hz_to_phase(frequency_hz: T, *, echo_time_s: float) -> T:
    """Frequency offset (Hz) → phase (rad) at echo time ``echo_time_s`` (s)."""
    return frequency_hz * (2.0 * math.pi * _positive(echo_time_s, "echo_time_s"))


def hz_to_ppm(frequency_hz: T, *, b0_tesla: float) -> T:
    """Frequency offset (Hz) → field in ppm of B0 at ``b0_tesla`` (T)."""
    return frequency_hz / hz_per_ppm(b0_tesla)


def ppm_to_hz(field_ppm: T, *, b0_tesla: float) -> T:
    """Field in ppm of B0 → frequency offset (Hz) at ``b0_tesla`` (T)."""
    return field_ppm * hz_per_ppm(b0_tesla)


def phase_to_ppm(phase_rad: T, *, echo_time_s: float, b0_tesla: float) -> T:
    """Phase (rad) at ``echo_time_s`` (s) → field in ppm of B0 at ``b0_tesla`` (T)."""
    return phase_rad / radians_per_ppm(echo_time_s=echo_time_s, b0_tesla=b0_tesla)


def ppm_to_phase(field_ppm: T, *, echo_time_s: float, b0_tesla: float) -> T:
    """Field in ppm of B0 → phase (rad) at ``echo_time_s`` (s) and ``b0_tesla`` (T)."""
    return field_ppm * radians_per_ppm(echo_time_s=echo_time_s, b0_tesla=b0_tesla)


def rad_per_s_to_ppm(frequency_rad_per_s: T, *, b0_tesla: float) -> T:
    r"""Angular frequency offset :math:`\omega` (rad/s) → field in ppm of B0 at ``b0_tesla`` (T).

    :math:`\omega / (2\pi\,\bar\gamma B_0 \cdot 10^{-6})`: the unit of an echo fit's slope
    (phase per second) to the unit of every field map.

    >>> round(rad_per_s_to_ppm(2 * math.pi * 127.7324, b0_tesla=3.0), 6)
    1.0
    """
    return frequency_rad_per_s / (2.0 * math.pi * hz_per_ppm(b0_tesla))
