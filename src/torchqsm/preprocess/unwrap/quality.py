r"""ROMEO edge quality: how trustworthy the phase difference between neighbours is.

Each edge joins voxel :math:`i` and its next neighbour :math:`j = i + e_a`
along axis :math:`a`. Its quality in [0, 1] is the product of

* **phase coherence** :math:`1 - |W(\psi_j - \psi_i)|/\pi`: a wrapped
  difference near ±π is ambiguous (it may have wrapped either way);
* **phase-gradient coherence** (second echo :math:`\psi'` at
  :math:`t_2`, first at :math:`t_1`):
  :math:`\max\big(0,\ 1 - |W(\Delta\psi) - W(\Delta\psi')\,t_1/t_2|\big)` (radians):
  the phase grows linearly with echo time, so the two echoes must agree on
  the gradient; an aliased gradient (true step above π) breaks the agreement;
* **magnitude coherence** :math:`(m_{\min}/m_{\max})^2`: an edge across a
  strong magnitude change (vessels, tissue borders, signal voids) is suspect;
* **magnitude weight** :math:`\tfrac12 + \tfrac12\min\big(1, m_{\min}/(m_{\mathrm{ref}}/2)\big)`:
  low signal means noisy phase; :math:`m_{\mathrm{ref}}` is the 99th
  percentile of the magnitude in the mask (robust to a few bright voxels,
  where ROMEO takes the maximum).

:math:`W` wraps into [-π, π). Terms whose inputs are not given are 1. Edges
that leave the mask or the box have quality 0. These are the weights of
Dymerska et al. (without ROMEO's penalty on very bright voxels and its
quantisation into 255 bins).

References
----------
Dymerska B, Eckstein K, Bachrata B, et al. Phase unwrapping with a rapid
opensource minimum spanning tree algorithm (ROMEO). MRM 2021;85:2294–2308.
doi:10.1002/mrm.28563
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...errors import InputError, ParameterError
from ...validation import as_tensor
from ._common import as_magnitude, edge_mask, forward_differences, phase_and_mask, wrap

__all__ = ["romeo_quality", "voxel_quality"]


def _neighbour_min_max(volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edge arrays of ``min`` and ``max`` of the two voxels' values."""
    low = volume.new_zeros((3,) + tuple(volume.shape))
    high = volume.new_zeros((3,) + tuple(volume.shape))
    pairs = ((volume[:-1], volume[1:]), (volume[:, :-1], volume[:, 1:]), (volume[:, :, :-1], volume[:, :, 1:]))
    slices = ((slice(None, -1),), (slice(None), slice(None, -1)), (slice(None), slice(None), slice(None, -1)))
    for axis, ((a, b), where) in enumerate(zip(pairs, slices)):
        low[(axis,) + where] = torch.minimum(a, b)
        high[(axis,) + where] = torch.maximum(a, b)
    return low, high


def _echo_pair(echo_times_s) -> tuple[float, float]:
    try:
        times = tuple(float(t) for t in echo_times_s)
    except (TypeError, ValueError):
        raise ParameterError(f"echo_times_s must be two numbers (s), got {echo_times_s!r}") from None
    if len(times) != 2 or any(not (math.isfinite(t) and t > 0) for t in times) or times[0] == times[1]:
        raise ParameterError(f"echo_times_s must be two different positive echo times (s), got {echo_times_s!r}")
    return times  # type: ignore[return-value]


def romeo_quality(
    phase_rad: torch.Tensor,
    *,
    magnitude: torch.Tensor | None = None,
    phase2_rad: torch.Tensor | None = None,
    echo_times_s: Sequence[float] | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Per-edge unwrapping quality in [0, 1] (ROMEO weights), shape ``(3, X, Y, Z)``.

    The quality of the edge from voxel :math:`i` to :math:`i + e_a` is the
    product of phase coherence, phase-gradient coherence (with a second
    echo), magnitude coherence and magnitude weight (module notes).

    Parameters
    ----------
    phase_rad
        Wrapped phase (rad) of the echo to unwrap, ``(X, Y, Z)``.
    magnitude
        Magnitude of that echo (any unit), ``(X, Y, Z)``.
    phase2_rad
        Wrapped phase (rad) of a second echo, ``(X, Y, Z)``; needs ``echo_times_s``.
    echo_times_s
        ``(t1, t2)``: echo times (s) of ``phase_rad`` and ``phase2_rad``.
    mask
        ``(X, Y, Z)``; edges with a voxel outside have quality 0.

    Returns
    -------
    torch.Tensor
        ``(3, X, Y, Z)``; entry ``[a, i, j, k]`` is the edge to the next voxel along
        axis ``a`` (zero on the last slice along that axis).

    Examples
    --------
    A smooth ramp is trusted; the same ramp at π per voxel is not:

    >>> x = torch.arange(8.0)[:, None, None].expand(8, 2, 2)
    >>> q = romeo_quality(torch.angle(torch.exp(0.5j * x)))
    >>> round(float(q[0, 0, 0, 0]), 3), float(q[0, -1, 0, 0])
    (0.841, 0.0)
    >>> round(float(romeo_quality(torch.angle(torch.exp(3.1j * x)))[0, 0, 0, 0]), 3)
    0.013
    """
    phase, mask_b = phase_and_mask(phase_rad, mask)
    difference = wrap(forward_differences(phase))
    quality = 1.0 - difference.abs() / math.pi
    if phase2_rad is not None:
        if echo_times_s is None:
            raise ParameterError("phase2_rad needs echo_times_s = (t1, t2) in seconds")
        t1, t2 = _echo_pair(echo_times_s)
        phase2 = as_tensor(phase2_rad, "phase2_rad")
        if phase2.shape != phase.shape:
            raise InputError(f"phase2_rad shape {tuple(phase2.shape)} does not match phase_rad {tuple(phase.shape)}")
        phase2, _ = phase_and_mask(phase2, mask_b, name="phase2_rad")
        difference2 = wrap(forward_differences(phase2.to(device=phase.device, dtype=phase.dtype)))
        quality = quality * torch.clamp(1.0 - (difference - difference2 * (t1 / t2)).abs(), min=0.0)
    elif echo_times_s is not None:
        raise ParameterError("echo_times_s is only used with phase2_rad")
    if magnitude is not None:
        mag = as_magnitude(magnitude, phase, mask_b)
        inside = mag[mask_b]
        reference = inside.kthvalue(max(1, math.ceil(0.99 * inside.numel()))).values
        if float(reference) <= 0:
            raise InputError("magnitude is zero in (almost) the whole mask")
        low, high = _neighbour_min_max(mag)
        coherence = torch.where(high > 0, low / torch.where(high > 0, high, 1.0), 0.0) ** 2
        weight = 0.5 + 0.5 * torch.clamp(low / (0.5 * reference), max=1.0)
        quality = quality * coherence * weight
    return torch.clamp(quality, 0.0, 1.0) * edge_mask(mask_b)


def voxel_quality(edge_quality: torch.Tensor) -> torch.Tensor:
    """Quality of each voxel: the mean quality of the (up to six) edges that touch it.

    Parameters
    ----------
    edge_quality
        ``(3, X, Y, Z)`` edge quality, e.g. from :func:`romeo_quality`.

    Returns
    -------
    torch.Tensor
        ``(X, Y, Z)`` in [0, 1]. The mean runs over the voxel's neighbours
        inside the box; edges that leave the mask count with their quality 0,
        so voxels on the mask border score lower.

    Examples
    --------
    >>> q = torch.zeros(3, 3, 1, 1)
    >>> q[0, 0] = 1.0  # the edge (0) - (1) along x
    >>> voxel_quality(q).flatten().tolist()
    [1.0, 0.5, 0.0]
    """
    if not isinstance(edge_quality, torch.Tensor) or edge_quality.ndim != 4 or edge_quality.shape[0] != 3:
        shape = tuple(edge_quality.shape) if isinstance(edge_quality, torch.Tensor) else type(edge_quality)
        raise InputError(f"edge_quality must be a (3, X, Y, Z) tensor, got {shape}")
    total = edge_quality.sum(dim=0)
    total[1:] += edge_quality[0, :-1]
    total[:, 1:] += edge_quality[1, :, :-1]
    total[:, :, 1:] += edge_quality[2, :, :, :-1]
    # Number of neighbours inside the box: 2 per axis, 1 at either end, 0 for an axis of length 1.
    counts = []
    for n in edge_quality.shape[1:]:
        count = torch.full((n,), 2.0, dtype=edge_quality.dtype, device=edge_quality.device)
        count[0] -= 1
        count[-1] -= 1
        counts.append(count)
    neighbours = counts[0][:, None, None] + counts[1][None, :, None] + counts[2][None, None, :]
    return torch.where(neighbours > 0, total / torch.clamp(neighbours, min=1.0), 0.0)
