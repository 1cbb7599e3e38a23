r"""Multi-echo combination: unwrapped phase of E echoes → one frequency map.

Each voxel's unwrapped phase grows linearly with echo time,
:math:`\varphi_e = \varphi_0 + \omega T_{E,e} + \varepsilon_e`, where
:math:`\omega` (rad/s) is the off-resonance caused by the field,
:math:`\varphi_0` (rad) the receive-coil phase offset and the noise
:math:`\varepsilon_e` has standard deviation :math:`\approx \sigma / m_e`
(:math:`m_e` the magnitude). :func:`combine_echoes` solves this line for every
voxel at once in closed form; :func:`field_ppm_from_frequency` turns
:math:`\omega` into the field in ppm of B0.

Examples
--------
>>> import torch
>>> te = [0.005, 0.010, 0.015]
>>> phase = torch.stack([0.3 + 200.0 * t * torch.ones(2, 2, 2) for t in te])
>>> fit = combine_echoes(phase, echo_times_s=te, method="fit")
>>> round(float(fit.frequency_rad_per_s[0, 0, 0]), 3), round(float(fit.phase_offset_rad[0, 0, 0]), 4)
(200.0, 0.3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import InputError, ParameterError
from ..physics.units import rad_per_s_to_ppm
from ..validation import array_and_mask, as_tensor, check_echo_times, check_magnitude
from .masking import _as_mask

__all__ = ["EchoFit", "combine_echoes", "per_echo_frequencies", "field_ppm_from_frequency"]

_ECHO_DIM = -4  # echoes sit just before (X, Y, Z)


def field_ppm_from_frequency(frequency_rad_per_s: torch.Tensor, *, b0_tesla: float) -> torch.Tensor:
    r"""Angular frequency offset (rad/s) → field in ppm of B0: :math:`\omega / (2\pi \cdot \bar\gamma B_0 \cdot 10^{-6})`.

    Parameters
    ----------
    frequency_rad_per_s
        :math:`\omega` (rad/s), any shape.
    b0_tesla
        Main field strength (T).

    Returns
    -------
    torch.Tensor
        Field (ppm of B0), same shape and dtype.

    Examples
    --------
    >>> import torch
    >>> omega = torch.tensor(2 * math.pi * 127.7324, dtype=torch.float64)  # 1 ppm at 3 T
    >>> round(float(field_ppm_from_frequency(omega, b0_tesla=3.0)), 6)
    1.0
    """
    if isinstance(b0_tesla, bool) or not isinstance(b0_tesla, (int, float)) \
            or not math.isfinite(b0_tesla) or b0_tesla <= 0:
        raise ParameterError(f"b0_tesla must be a positive number of tesla, got {b0_tesla!r}")
    return rad_per_s_to_ppm(frequency_rad_per_s, b0_tesla=float(b0_tesla))


@dataclass(frozen=True)
class EchoFit:
    r"""Per-voxel result of :func:`combine_echoes`.

    Attributes
    ----------
    frequency_rad_per_s
        :math:`\omega` (rad/s), shape ``(..., X, Y, Z)``; zero outside the mask.
    phase_offset_rad
        :math:`\varphi_0` (rad) that was removed; zero when not fitted.
    residual_rad
        Root-mean-square fit residual (rad), weighted by the fit's weights:
        :math:`\sqrt{\sum_e w_e r_e^2 / \sum_e w_e}`; a quality measure
        (large where unwrapping failed or the signal is noise).
    """

    frequency_rad_per_s: torch.Tensor
    phase_offset_rad: torch.Tensor
    residual_rad: torch.Tensor

    def field_ppm(self, *, b0_tesla: float) -> torch.Tensor:
        """The total field (ppm of B0) at ``b0_tesla`` (T); see :func:`field_ppm_from_frequency`."""
        return field_ppm_from_frequency(self.frequency_rad_per_s, b0_tesla=b0_tesla)


def _echo_times(echo_times_s, echo_count: int | None) -> list[float]:
    return list(check_echo_times(echo_times_s, echo_count))


def _phase_and_times(unwrapped_phase_rad, echo_times_s, mask=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated phase ``(..., E, X, Y, Z)`` (a 3-D single echo gains E = 1), its mask (all True if
    None, from a 0/1 array) and TEs shaped to broadcast."""
    phase = as_tensor(unwrapped_phase_rad, "unwrapped_phase_rad")
    if phase.ndim == 3:  # one echo
        phase = phase.unsqueeze(0)
    if phase.ndim < 4:
        raise InputError(f"unwrapped_phase_rad must be (E, X, Y, Z) with echoes first, got shape {tuple(phase.shape)}")
    region = None if mask is None else _as_mask(mask, "mask", phase.shape[-3:])
    phase, inside = array_and_mask(phase, region, name="unwrapped_phase_rad", unit="radians", leading=None)
    times = _echo_times(echo_times_s, phase.shape[_ECHO_DIM])
    te = torch.tensor(times, dtype=phase.dtype, device=phase.device).reshape(-1, 1, 1, 1)
    return phase, inside, te


def per_echo_frequencies(unwrapped_phase_rad: torch.Tensor, *, echo_times_s: Sequence[float]) -> torch.Tensor:
    r"""Frequency of every echo on its own, :math:`\omega_e = \varphi_e / T_{E,e}` (rad/s).

    For per-echo processing (each echo through background removal and
    inversion separately) and for checking consistency between echoes. The
    receive phase offset :math:`\varphi_0` is *not* removed: it adds
    :math:`\varphi_0 / T_{E,e}`, largest at the first echo.

    Parameters
    ----------
    unwrapped_phase_rad
        Unwrapped phase (rad), ``(..., E, X, Y, Z)``.
    echo_times_s
        ``E`` echo times (s), increasing.

    Returns
    -------
    torch.Tensor
        :math:`\omega_e` (rad/s), same shape as the phase.

    Examples
    --------
    >>> import torch
    >>> per_echo_frequencies(torch.ones(2, 1, 1, 1), echo_times_s=[0.01, 0.02]).flatten().tolist()
    [100.0, 50.0]
    """
    phase, _, te = _phase_and_times(unwrapped_phase_rad, echo_times_s)
    return (phase / te).reshape(unwrapped_phase_rad.shape)


def combine_echoes(
    unwrapped_phase_rad: torch.Tensor,
    *,
    echo_times_s: Sequence[float],
    magnitude: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    method: Literal["weighted_fit", "fit", "average"] = "weighted_fit",
    fit_offset: bool | None = None,
) -> EchoFit:
    r"""Fit :math:`\varphi_e = \varphi_0 + \omega T_{E,e}` per voxel: the frequency map of a multi-echo scan.

    Weighted least squares, in closed form for all voxels at once:

    .. math::

       \hat\omega, \hat\varphi_0 = \arg\min_{\omega, \varphi_0}
       \sum_e w_e \big(\varphi_e - \varphi_0 - \omega T_{E,e}\big)^2, \qquad
       \hat\omega = \frac{\sum_e w_e (T_{E,e} - \bar T)\,\varphi_e}{\sum_e w_e (T_{E,e} - \bar T)^2},
       \quad \hat\varphi_0 = \bar\varphi - \hat\omega \bar T,

    with weighted means :math:`\bar T, \bar\varphi`. Without the offset
    (``fit_offset=False``) the line goes through the origin:
    :math:`\hat\omega = \sum_e w_e T_{E,e}\varphi_e / \sum_e w_e T_{E,e}^2`.

    ``method="weighted_fit"`` uses :math:`w_e = m_e^2`, the inverse variance
    of the phase noise (:math:`\sigma_{\varphi,e} \approx \sigma / m_e`), so
    :math:`\hat\omega` is the minimum-variance linear estimate. Through the
    origin this is exactly the average of the per-echo frequencies
    :math:`\varphi_e / T_{E,e}` weighted by :math:`m_e^2 T_{E,e}^2`, the
    SNR-optimal echo combination (Wu et al. 2012; Robinson et al. 2017).
    ``"fit"`` uses :math:`w_e = 1`; ``"average"`` is the plain mean of
    :math:`\varphi_e / T_{E,e}` (no offset). Where a voxel's weights cannot
    identify the line (all magnitudes zero, or all weight on one echo) the
    unweighted fit is used there.

    Single echo: :math:`\varphi_0` cannot be separated from :math:`\omega`,
    so :math:`\omega = \varphi / T_E` and any receive phase offset stays in
    the field (remove it by complex coil combination, e.g. MCPC-3D-S, before).

    Parameters
    ----------
    unwrapped_phase_rad
        Unwrapped phase (rad), ``(..., E, X, Y, Z)`` with echoes at dim −4; a
        3-D ``(X, Y, Z)`` array is one echo. Echoes must be unwrapped
        consistently (no 2π jumps between echoes). Finite in the mask; NaN
        outside it is set to zero (and logged).
    echo_times_s
        ``E`` echo times (s), positive and strictly increasing.
    magnitude
        Magnitude (arbitrary units, ≥ 0), same shape as the phase; required by ``"weighted_fit"``.
    mask
        Boolean ``(X, Y, Z)``; outputs are zero outside. Default: every voxel.
    method
        ``"weighted_fit"``, ``"fit"`` or ``"average"``.
    fit_offset
        Fit :math:`\varphi_0` (default: yes for the fits with two or more
        echoes, no for ``"average"`` or one echo, where it cannot be fitted:
        ``True`` there is a :class:`ParameterError`).

    Returns
    -------
    EchoFit
        ``frequency_rad_per_s``, ``phase_offset_rad``, ``residual_rad``, each
        ``(..., X, Y, Z)`` in the phase's dtype and device.

    Raises
    ------
    InputError
        Missing echo times, wrong number of them, shape mismatch, NaN,
        negative magnitude, missing magnitude for ``"weighted_fit"``.
    ParameterError
        Non-positive, non-increasing or millisecond echo times; unknown
        ``method``; ``fit_offset=True`` where it cannot be fitted.

    References
    ----------
    Wu B, Li W, Avram AV, Gho SM, Liu C. Fast and tissue-optimized mapping of
    magnetic susceptibility and T2* with multi-echo and multi-shot spirals.
    NeuroImage 2012;59:297–305. doi:10.1016/j.neuroimage.2011.07.019

    Robinson SD, Bredies K, Khabipova D, Dymerska B, Marques JP, Schweser F.
    An illustrated comparison of processing methods for MR phase imaging and
    QSM: combining array coil signals and phase unwrapping. NMR Biomed
    2017;30:e3601. doi:10.1002/nbm.3601

    Examples
    --------
    >>> import torch
    >>> te = torch.tensor([0.004, 0.008, 0.012])
    >>> phase = 0.5 + 300.0 * te.reshape(3, 1, 1, 1) * torch.ones(3, 4, 4, 4)
    >>> magnitude = torch.exp(-te / 0.03).reshape(3, 1, 1, 1) * torch.ones(3, 4, 4, 4)
    >>> fit = combine_echoes(phase, echo_times_s=te, magnitude=magnitude)
    >>> round(float(fit.frequency_rad_per_s.mean()), 2), round(float(fit.phase_offset_rad.mean()), 4)
    (300.0, 0.5)
    """
    if method not in ("weighted_fit", "fit", "average"):
        raise ParameterError(f"method must be 'weighted_fit', 'fit' or 'average', got {method!r}")
    phase, inside, te = _phase_and_times(unwrapped_phase_rad, echo_times_s, mask)
    echo_count = phase.shape[_ECHO_DIM]
    if fit_offset is None:
        fit_offset = method != "average" and echo_count > 1
    elif fit_offset and echo_count == 1:
        raise ParameterError("fit_offset=True needs at least two echoes: one echo cannot separate φ0 from ω")
    elif fit_offset and method == "average":
        raise ParameterError("fit_offset=True is not possible with method='average'; use method='fit'")

    if method == "weighted_fit":
        if magnitude is None:
            raise InputError("magnitude is required for method='weighted_fit'; pass it or use method='fit'")
        mag = check_magnitude(magnitude, tuple(phase.shape), None if mask is None else inside, dtype=phase.dtype,
                              device=phase.device)
        weights = mag**2
    else:
        weights = torch.ones_like(phase)
    region = None if mask is None else inside

    if method == "average":
        frequency = (phase / te).mean(dim=_ECHO_DIM)
        offset = torch.zeros_like(frequency)
        fit_weights = torch.ones_like(phase)
    else:
        frequency, offset, fit_weights = _weighted_line(phase, te, weights, fit_offset=bool(fit_offset))
    residual = phase - offset.unsqueeze(_ECHO_DIM) - frequency.unsqueeze(_ECHO_DIM) * te
    residual_rms = torch.sqrt((fit_weights * residual**2).sum(_ECHO_DIM) / fit_weights.sum(_ECHO_DIM))
    if region is not None:
        zero = frequency.new_zeros(())
        frequency, offset, residual_rms = (torch.where(region, t, zero) for t in (frequency, offset, residual_rms))
    return EchoFit(frequency_rad_per_s=frequency, phase_offset_rad=offset, residual_rad=residual_rms)


def _weighted_line(phase: torch.Tensor, te: torch.Tensor, weights: torch.Tensor, *, fit_offset: bool):
    """Closed-form weighted line fit along the echo axis; unweighted where the weights are degenerate."""
    total = weights.sum(_ECHO_DIM, keepdim=True)
    # normalized weights; voxels with no signal at all fall back to equal weights
    w = torch.where(total > 0, weights / total.clamp_min(torch.finfo(weights.dtype).tiny),
                    torch.full_like(weights, 1.0 / phase.shape[_ECHO_DIM]))
    if fit_offset:
        uniform_spread = float(((te - te.mean()) ** 2).mean())
        spread = (w * (te - (w * te).sum(_ECHO_DIM, keepdim=True)) ** 2).sum(_ECHO_DIM, keepdim=True)
        # all weight on (nearly) one echo: the slope is not identified, use equal weights there
        w = torch.where(spread > 1e-6 * uniform_spread, w, torch.full_like(w, 1.0 / phase.shape[_ECHO_DIM]))
        t_mean = (w * te).sum(_ECHO_DIM, keepdim=True)
        p_mean = (w * phase).sum(_ECHO_DIM, keepdim=True)
        centred = te - t_mean
        frequency = (w * centred * phase).sum(_ECHO_DIM) / (w * centred**2).sum(_ECHO_DIM)
        offset = (p_mean - frequency.unsqueeze(_ECHO_DIM) * t_mean).squeeze(_ECHO_DIM)
    else:
        frequency = (w * te * phase).sum(_ECHO_DIM) / (w * te**2).sum(_ECHO_DIM)
        offset = torch.zeros_like(frequency)
    return frequency, offset, w

