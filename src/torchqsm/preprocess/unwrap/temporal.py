r"""Multi-echo unwrapping: the first echo in space, the later echoes in time.

The phase of echo :math:`e` at echo time :math:`t_e` is
:math:`\varphi_e = \varphi_0 + \omega t_e` (offset :math:`\varphi_0`, frequency
:math:`\omega`). After the first echo is unwrapped spatially, each later
echo is predicted and rounded to the nearest 2π multiple of the prediction,

.. math::

   \varphi_e = \psi_e + 2\pi\,\operatorname{round}\!\Big(\frac{p_e - \psi_e}{2\pi}\Big),
   \qquad
   p_1 = \varphi_1^{(0)}\,\frac{t_1}{t_0}\ \text{(ROMEO's template)},\quad
   p_e = \varphi_{e-1} + (t_e - t_{e-1})\,\frac{\varphi_{e-1} - \varphi_{e-2}}{t_{e-1} - t_{e-2}} ,

writing :math:`\varphi^{(0)}` for the first (template) echo. From the third
echo on, the prediction is the line through the two previous echoes, which
the offset does not affect. The first echo's own 2π multiple is not
observable from one echo; it is chosen so that its median over the mask lies
in [-π, π), i.e. the scanner is assumed on resonance for most of the mask.

Limits: the second echo needs :math:`|\varphi_0|\,(t_1/t_0 - 1)` plus noise
below π (small phase offsets — remove large ones first, e.g. MCPC-3D-S, or
use ``mode="individual"``); every later echo needs the extrapolation error
(noise amplified about :math:`1 + 2\Delta t_e/\Delta t_{e-1}` times, plus any
departure from linear phase evolution) below π. With ``mode="individual"``
each echo is unwrapped spatially and only its global 2π multiple is set, by
the median mismatch with the prediction: robust to offsets, but each echo must
be spatially unwrappable on its own.

References
----------
Dymerska B, Eckstein K, Bachrata B, et al. Phase unwrapping with a rapid
opensource minimum spanning tree algorithm (ROMEO). MRM 2021;85:2294–2308.
doi:10.1002/mrm.28563
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ...errors import ParameterError
from ...validation import check_echo_times
from ._common import TWO_PI, as_magnitude, phase_and_mask
from .laplacian import laplacian_unwrap
from .quality import romeo_quality
from .region_growing import region_growing_unwrap

__all__ = ["unwrap_echoes"]


def _nearest(wrapped: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """``wrapped`` plus the multiple of 2π that brings it nearest to ``prediction``."""
    return wrapped + TWO_PI * torch.round((prediction - wrapped) / TWO_PI)


def _spatial(phase, magnitude, mask, *, method, voxel_size_mm, phase2=None, echo_times=None) -> torch.Tensor:
    if method == "region_growing":
        quality = romeo_quality(phase, magnitude=magnitude, phase2_rad=phase2, echo_times_s=echo_times, mask=mask)
        return region_growing_unwrap(phase, quality=quality, mask=mask).phase_rad
    # Laplacian: a smooth estimate, used as the template for exact multiples of 2π.
    smooth = laplacian_unwrap(phase, voxel_size_mm=voxel_size_mm, mask=mask)
    return torch.where(mask, _nearest(phase, smooth), phase)


def unwrap_echoes(
    phase_rad: torch.Tensor,
    *,
    echo_times_s: Sequence[float],
    magnitude: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    method: Literal["region_growing", "laplacian"] = "region_growing",
    mode: Literal["temporal", "individual"] = "temporal",
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
) -> torch.Tensor:
    r"""Unwrap multi-echo phase consistently across echoes.

    The first echo is unwrapped in space by ``method`` (region growing uses
    the ROMEO quality with the second echo's phase-gradient coherence); the
    others follow by temporal prediction (module notes).

    Parameters
    ----------
    phase_rad
        Wrapped phase (rad), ``(E, X, Y, Z)``, echoes first.
    echo_times_s
        The E echo times (s), increasing.
    magnitude
        Magnitude ``(E, X, Y, Z)`` or ``(X, Y, Z)`` (any unit); weights the quality.
    mask
        ``(X, Y, Z)`` voxels to unwrap; outside it the input is returned unchanged.
    method
        Spatial unwrapping of the first echo: ``"region_growing"`` (exact 2π
        multiples) or ``"laplacian"`` (its smooth estimate rounded to the
        nearest multiple of 2π of the wrapped phase).
    mode
        ``"temporal"``: later echoes from the prediction, voxel by voxel;
        ``"individual"``: every echo unwrapped spatially, then shifted by the
        global multiple of 2π that best matches the prediction.
    voxel_size_mm
        Voxel size (mm), used by the Laplacian method.

    Returns
    -------
    torch.Tensor
        ``(E, X, Y, Z)`` unwrapped phase (rad): the input plus multiples of 2π.

    Examples
    --------
    >>> x = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64)
    >>> frequency_hz = (120.0 * x)[:, None, None].expand(16, 4, 4)
    >>> times = (0.004, 0.008, 0.012)
    >>> phase = torch.stack([2 * torch.pi * frequency_hz * t for t in times])
    >>> unwrapped = unwrap_echoes(torch.angle(torch.exp(1j * phase)), echo_times_s=times)
    >>> bool(torch.allclose(unwrapped, phase))
    True
    """
    phase, mask_b = phase_and_mask(phase_rad, mask, leading=1)
    times = check_echo_times(echo_times_s, phase.shape[0])
    if method not in ("region_growing", "laplacian"):
        raise ParameterError(f"method must be 'region_growing' or 'laplacian', got {method!r}")
    if mode not in ("temporal", "individual"):
        raise ParameterError(f"mode must be 'temporal' or 'individual', got {mode!r}")
    magnitudes: list[torch.Tensor | None] = [None] * phase.shape[0]
    if magnitude is not None:
        if isinstance(magnitude, torch.Tensor) and magnitude.ndim == 3:
            magnitudes = [as_magnitude(magnitude, phase[0], mask_b)] * phase.shape[0]
        else:
            mag = as_magnitude(magnitude, phase, mask_b)
            magnitudes = list(mag)
    second = (phase[1], times[:2]) if phase.shape[0] > 1 else (None, None)
    first = _spatial(phase[0], magnitudes[0], mask_b, method=method, voxel_size_mm=voxel_size_mm,
                     phase2=second[0], echo_times=second[1])
    # The first echo's global multiple of 2pi: median in [-pi, pi) (on resonance over most of the mask).
    first = first - TWO_PI * torch.round(first[mask_b].median() / TWO_PI) * mask_b
    unwrapped = [first]
    for e in range(1, phase.shape[0]):
        if e == 1:
            prediction = unwrapped[0] * (times[1] / times[0])
        else:
            rate = (unwrapped[e - 1] - unwrapped[e - 2]) / (times[e - 1] - times[e - 2])
            prediction = unwrapped[e - 1] + (times[e] - times[e - 1]) * rate
        if mode == "temporal":
            echo = torch.where(mask_b, _nearest(phase[e], prediction), phase[e])
        else:
            spatial = _spatial(phase[e], magnitudes[e], mask_b, method=method, voxel_size_mm=voxel_size_mm)
            shift = torch.round((prediction - spatial)[mask_b].median() / TWO_PI)
            echo = spatial + TWO_PI * shift * mask_b
        unwrapped.append(echo)
    return torch.stack(unwrapped)
