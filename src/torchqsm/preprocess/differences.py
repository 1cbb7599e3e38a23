"""Echo combination by phase differences of consecutive echoes.

The difference of two echoes' phases holds no receive phase offset and has the
spatial gradient of the field times ΔTE rather than TE, so it aliases less than
late echoes do: unwrap the differences (:mod:`torchqsm.preprocess.unwrap`),
then fit the frequency by weighted least squares. The alternative, fitting the
unwrapped echoes themselves, is :func:`torchqsm.preprocess.echoes.combine_echoes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import InputError, ParameterError
from ..validation import array_and_mask, check_magnitude
from .echoes import _echo_times
from .unwrap._common import wrap

__all__ = ["EchoDifferences", "echo_differences", "combine_differences"]


@dataclass(frozen=True)
class EchoDifferences:
    """Wrapped phase differences of consecutive echoes (see :func:`echo_differences`).

    Attributes
    ----------
    phase_rad
        :math:`W(\\varphi_{e+1} - \\varphi_e)` (rad), ``(E - 1, X, Y, Z)``, wrapped to [−π, π).
    delta_te_s
        :math:`T_{E,e+1} - T_{E,e}` (s), ``E - 1`` values.
    weights
        Inverse noise variance of each difference, ``(E - 1, X, Y, Z)``:
        :math:`m_e^2 m_{e+1}^2 / (m_e^2 + m_{e+1}^2)` (ones without magnitude).
    """

    phase_rad: torch.Tensor
    delta_te_s: tuple[float, ...]
    weights: torch.Tensor


def echo_differences(
    phase_rad: torch.Tensor,
    *,
    echo_times_s: Sequence[float],
    magnitude: torch.Tensor | None = None,
) -> EchoDifferences:
    r"""Phase differences of consecutive echoes: no receive offset, smaller phase gradients.

    :math:`\Delta\varphi_e = W(\varphi_{e+1} - \varphi_e) = W(\omega\,\Delta T_{E,e})` holds no
    receive phase offset :math:`\varphi_0` (it cancels), and its spatial gradient is that of
    the field times :math:`\Delta T_E` rather than :math:`T_E`, so it violates the Itoh
    condition (a step above π per voxel) less often than the late echoes themselves do.
    Unwrap each difference, then :func:`combine_differences` gives the frequency.

    Parameters
    ----------
    phase_rad
        Wrapped phase (rad), ``(E, X, Y, Z)``, ``E`` ≥ 2.
    echo_times_s
        ``E`` echo times (s), increasing.
    magnitude
        ``(E, X, Y, Z)`` magnitudes for the weights, or None (equal weights).

    Examples
    --------
    >>> import torch
    >>> phase = torch.tensor([0.5, 2.5, 4.5]).reshape(3, 1, 1, 1)   # ω = 200 rad/s, φ0 = -0.5
    >>> d = echo_differences(phase, echo_times_s=[0.005, 0.015, 0.025])
    >>> [round(v, 3) for v in d.phase_rad.flatten().tolist()], [round(t, 6) for t in d.delta_te_s]
    ([2.0, 2.0], [0.01, 0.01])
    """
    phase, _ = array_and_mask(phase_rad, name="phase_rad", unit="radians", leading=None)
    if phase.ndim != 4 or phase.shape[0] < 2:
        raise InputError(f"echo differences need (E, X, Y, Z) phase with at least 2 echoes, got {tuple(phase.shape)}")
    times = _echo_times(echo_times_s, phase.shape[0])
    difference = wrap(phase[1:] - phase[:-1])
    if magnitude is None:
        weights = torch.ones_like(difference)
    else:
        mag = check_magnitude(magnitude, tuple(phase.shape), dtype=phase.dtype, device=phase.device)
        a, b = mag[:-1].square(), mag[1:].square()
        weights = a * b / (a + b).clamp_min(torch.finfo(phase.dtype).tiny)
    delta = tuple(t1 - t0 for t0, t1 in zip(times[:-1], times[1:]))
    return EchoDifferences(difference, delta, weights)


def combine_differences(
    unwrapped_difference_rad: torch.Tensor,
    *,
    delta_te_s: Sequence[float],
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Frequency (rad/s) from unwrapped echo differences by weighted least squares.

    .. math::

       \hat\omega = \frac{\sum_e w_e\,\Delta T_{E,e}\,\Delta\varphi_e}{\sum_e w_e\,\Delta T_{E,e}^2}

    Voxels where every weight is zero get equal weights.

    Examples
    --------
    >>> import torch
    >>> combine_differences(torch.full((2, 1, 1, 1), 2.0), delta_te_s=[0.01, 0.01]).item()
    200.0
    """
    difference, _ = array_and_mask(unwrapped_difference_rad, name="unwrapped_difference_rad", unit="radians",
                                   leading=None)
    delta = torch.tensor([float(t) for t in delta_te_s], dtype=difference.dtype, device=difference.device)
    if delta.numel() != difference.shape[0] or bool((delta <= 0).any()):
        raise ParameterError(f"need {difference.shape[0]} positive echo spacings, got {list(delta_te_s)}")
    delta = delta.reshape(-1, *([1] * (difference.ndim - 1)))
    w = torch.ones_like(difference) if weights is None else weights.to(difference)
    denominator = (w * delta.square()).sum(0)
    flat = denominator <= 0
    if bool(flat.any()):
        w = torch.where(flat, torch.ones_like(w), w)
        denominator = (w * delta.square()).sum(0)
    return (w * delta * difference).sum(0) / denominator
