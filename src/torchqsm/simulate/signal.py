r"""Multi-echo gradient-echo (GRE) signal from a field map: magnitude, wrapped phase, noise, resolution.

The signal of echo :math:`e` at echo time :math:`T_{E,e}` (s) is

.. math::

    S_e(\mathbf r) = M_0(\mathbf r)\, e^{-T_{E,e} R_2^*(\mathbf r)}\,
        \exp\!\big(i\,[\varphi_0(\mathbf r) + 2\pi\,\bar\gamma B_0 T_{E,e}\, \Delta b(\mathbf r)\cdot 10^{-6}]\big)
        + \varepsilon_e(\mathbf r),

with :math:`\Delta b` the total field in ppm of :math:`B_0`, :math:`\bar\gamma = \gamma/2\pi`
(``physics.units.GAMMA_BAR_MHZ_PER_T``), :math:`\varphi_0` a receive-phase offset that does not
depend on :math:`T_E`, and :math:`\varepsilon_e` complex white Gaussian noise. The sign follows
``physics.units``: a positive field gives a positive phase. :math:`M_0` already holds any
steady-state (flip angle, :math:`T_R`, :math:`T_1`) weighting. The phase returned is
:math:`\arg S_e \in (-\pi, \pi]`, i.e. wrapped.

References
----------
Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge 2.0: A realistic in silico
head phantom for MRI data simulation and evaluation of susceptibility mapping procedures.
Magn Reson Med 2021;86:526-542. doi:10.1002/mrm.28716
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import InputError, ParameterError
from ..physics.units import radians_per_ppm

__all__ = ["gre_signal", "complex_gre_signal", "add_complex_noise", "smooth_phase_offset", "truncate_kspace"]

_DIMS = (-3, -2, -1)


def _echo_times(echo_times_s: Sequence[float]) -> tuple[float, ...]:
    try:
        times = tuple(float(t) for t in echo_times_s)
    except TypeError:
        times = (float(echo_times_s),)  # type: ignore[arg-type]
    if not times:
        raise ParameterError("echo_times_s is empty: give at least one echo time (s)")
    if any(not math.isfinite(t) or t <= 0 for t in times):
        raise ParameterError(f"echo times must be positive and finite (seconds), got {times}")
    if max(times) > 1.0:
        raise ParameterError(f"echo times are in seconds; {max(times)} s is not a GRE echo time")
    return times


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ParameterError(f"{name} must be a positive finite number, got {value}")
    return value


def _as_map(value: float | torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if not torch.all(torch.isfinite(tensor)) or torch.any(tensor < 0):
        raise InputError(f"{name} must be finite and non-negative")
    try:
        torch.broadcast_shapes(tensor.shape, like.shape)
    except RuntimeError:
        raise InputError(f"{name} of shape {tuple(tensor.shape)} does not fit the field {tuple(like.shape)}") from None
    return tensor


def complex_gre_signal(
    total_field_ppm: torch.Tensor,
    *,
    echo_times_s: Sequence[float],
    b0_tesla: float,
    m0: float | torch.Tensor = 1.0,
    r2star_hz: float | torch.Tensor = 0.0,
    phase_offset_rad: torch.Tensor | None = None,
) -> torch.Tensor:
    """The noise-free complex signal :math:`S_e` of the module's model, shape ``(..., E, X, Y, Z)``.

    Parameters are those of :func:`gre_signal`. The result is complex64 for
    float32 input and complex128 for float64.

    >>> s = complex_gre_signal(torch.zeros(2, 2, 2), echo_times_s=[0.01, 0.02], b0_tesla=3.0, r2star_hz=20.0)
    >>> s.shape, round(float(s[1, 0, 0, 0].real), 4)
    (torch.Size([2, 2, 2, 2]), 0.6703)
    """
    if not torch.is_floating_point(total_field_ppm):
        raise InputError(f"the field must be a real floating-point tensor (ppm), got {total_field_ppm.dtype}")
    if total_field_ppm.ndim < 3:
        raise InputError(f"the field must have at least 3 dimensions (X, Y, Z), got {total_field_ppm.ndim}")
    times = _echo_times(echo_times_s)
    b0_tesla = _positive(b0_tesla, "b0_tesla")
    field = total_field_ppm.unsqueeze(-4)  # echoes go before the three spatial axes
    te = torch.tensor(times, dtype=field.dtype, device=field.device).view(-1, 1, 1, 1)
    # Maps gain an echo axis; numbers broadcast as they are.
    m0_map, r2 = (_as_map(v, total_field_ppm, name) for v, name in ((m0, "m0"), (r2star_hz, "r2star_hz")))
    m0_map = m0_map.unsqueeze(-4) if m0_map.ndim >= 3 else m0_map
    r2 = r2.unsqueeze(-4) if r2.ndim >= 3 else r2
    # radians_per_ppm is linear in TE: one factor per tesla-second, times each TE.
    phase = field * (te * radians_per_ppm(echo_time_s=1.0, b0_tesla=b0_tesla))
    if phase_offset_rad is not None:
        offset = torch.as_tensor(phase_offset_rad, dtype=field.dtype, device=field.device)
        phase = phase + (offset.unsqueeze(-4) if offset.ndim >= 3 else offset)
    magnitude = m0_map * torch.exp(-te * r2)
    return torch.polar(magnitude.expand_as(phase).contiguous(), phase)


def gre_signal(
    total_field_ppm: torch.Tensor,
    *,
    echo_times_s: Sequence[float],
    b0_tesla: float,
    m0: float | torch.Tensor,
    r2star_hz: float | torch.Tensor,
    phase_offset_rad: torch.Tensor | None = None,
    snr: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Magnitude and wrapped phase of a multi-echo GRE acquisition of a field map.

    Parameters
    ----------
    total_field_ppm
        Field (ppm of B0), shape ``(..., X, Y, Z)``, real float32/float64.
    echo_times_s
        Echo times (s), one or more, each in (0, 1].
    b0_tesla
        Main field strength (T), e.g. 1.5, 3 or 7.
    m0
        Proton density / steady-state magnitude (arbitrary units, ≥ 0), a number or a map
        broadcastable to ``(..., X, Y, Z)``.
    r2star_hz
        :math:`R_2^*` (s⁻¹, ≥ 0), a number or a map like ``m0``.
    phase_offset_rad
        Receive-phase offset :math:`\\varphi_0` (rad), the same at every echo (see
        :func:`smooth_phase_offset`); ``None`` for none.
    snr
        Peak SNR: the noise σ (per real and imaginary channel, equal for all echoes) is the
        largest :math:`|S_e|` over all echoes divided by ``snr`` (see :func:`add_complex_noise`).
        ``None`` or ``inf`` for no noise.
    generator
        Random generator of the noise (CPU), for reproducible draws.

    Returns
    -------
    magnitude, phase_rad
        Both shape ``(..., E, X, Y, Z)``; phase wrapped to ``(-π, π]``.

    Raises
    ------
    ParameterError
        No or non-positive echo times, non-positive ``b0_tesla`` or ``snr``.
    InputError
        A non-float field, negative or non-finite ``m0``/``r2star_hz``.

    Examples
    --------
    >>> field = torch.full((4, 4, 4), 0.05)   # ppm
    >>> mag, phase = gre_signal(field, echo_times_s=[0.005, 0.01], b0_tesla=3.0, m0=1.0, r2star_hz=20.0)
    >>> tuple(mag.shape), round(float(phase[0, 0, 0, 0]), 4)    # 2π · 42.58 MHz/T · 3 T · 5 ms · 0.05e-6
    ((2, 4, 4, 4), 0.2006)
    """
    signal = complex_gre_signal(total_field_ppm, echo_times_s=echo_times_s, b0_tesla=b0_tesla, m0=m0,
                                r2star_hz=r2star_hz, phase_offset_rad=phase_offset_rad)
    if snr is not None:
        snr = float(snr)
        if not snr > 0:
            raise ParameterError(f"snr must be positive, got {snr}")
        if not math.isinf(snr):
            signal = add_complex_noise(signal, snr=snr, generator=generator)
    return signal.abs(), signal.angle()


def add_complex_noise(
    signal: torch.Tensor,
    *,
    snr: float,
    generator: torch.Generator | None = None,
    reference: float | None = None,
) -> torch.Tensor:
    """Add complex white Gaussian noise at a peak signal-to-noise ratio.

    :math:`S + \\sigma (n_r + i\\,n_i)` with :math:`n_r, n_i \\sim \\mathcal N(0, 1)` and
    :math:`\\sigma = \\text{reference} / \\text{snr}`. The magnitude of pure noise is then
    Rician (Rayleigh) with mean :math:`\\sigma\\sqrt{\\pi/2}`.

    Parameters
    ----------
    signal
        Complex signal, any shape.
    snr
        Peak SNR (> 0).
    generator
        CPU random generator; noise is drawn on the CPU so that a seed gives the same
        noise on every device.
    reference
        Signal level that ``snr`` refers to; default ``max |signal|``.

    >>> s = torch.ones(64, 64, 64, dtype=torch.complex64)
    >>> n = add_complex_noise(s, snr=10.0, generator=torch.Generator().manual_seed(0)) - s
    >>> round(float(n.real.std()), 2), round(float(n.imag.std()), 2)
    (0.1, 0.1)
    """
    snr = float(snr)
    if not snr > 0 or math.isnan(snr):
        raise ParameterError(f"snr must be positive, got {snr}")
    if not signal.is_complex():
        raise InputError("add_complex_noise needs a complex signal")
    level = float(signal.abs().max()) if reference is None else _positive(reference, "reference")
    real_dtype = signal.real.dtype
    noise = torch.randn((2, *signal.shape), dtype=real_dtype, generator=generator).to(signal.device)
    return signal + torch.complex(noise[0], noise[1]) * (level / snr)


def smooth_phase_offset(
    shape: Sequence[int],
    *,
    generator: torch.Generator,
    amplitude_rad: float = math.pi,
    order: int = 2,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A random smooth receive-phase offset :math:`\\varphi_0` (rad): a constant plus a low-order polynomial.

    :math:`\\varphi_0 = c + \\sum_{1 \\le a+b+c' \\le \\text{order}} w_{abc'}\\, u^a v^b w^{c'}`
    in coordinates :math:`u, v, w \\in [-1, 1]` across the grid, with :math:`c \\sim U[-\\pi, \\pi)`,
    Gaussian weights rescaled so that the polynomial part peaks at exactly ``amplitude_rad`` in
    absolute value over the grid. Coil-combined receive phase is smooth like this
    (Robinson et al. 2017, doi:10.1002/nbm.3601).

    Parameters
    ----------
    shape
        Grid ``(X, Y, Z)``.
    generator
        CPU random generator.
    amplitude_rad
        Largest |polynomial part| (rad, ≥ 0).
    order
        Polynomial degree (≥ 1).

    >>> phi = smooth_phase_offset((8, 8, 8), generator=torch.Generator().manual_seed(0), amplitude_rad=1.0)
    >>> tuple(phi.shape), round(float(phi.max() - phi.min()), 3) <= 2.0
    ((8, 8, 8), True)
    """
    amplitude_rad = float(amplitude_rad)
    if not math.isfinite(amplitude_rad) or amplitude_rad < 0:
        raise ParameterError(f"amplitude_rad must be finite and non-negative, got {amplitude_rad}")
    if int(order) < 1:
        raise ParameterError(f"order must be at least 1, got {order}")
    shape = tuple(int(n) for n in shape)
    u, v, w = (torch.linspace(-1.0, 1.0, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
               for n in shape)
    powers = [(a, b, c) for a in range(order + 1) for b in range(order + 1 - a) for c in range(order + 1 - a - b)
              if a + b + c >= 1]
    weights = torch.randn(len(powers), dtype=torch.float64, generator=generator)
    constant = (2.0 * torch.rand(1, dtype=torch.float64, generator=generator) - 1.0) * math.pi
    # Separable evaluation: sum over c first (1-D), then one broadcast product per (a, b).
    along_z: dict[tuple[int, int], torch.Tensor] = {}
    for weight, (a, b, c) in zip(weights, powers):
        along_z[a, b] = along_z.get((a, b), torch.zeros_like(w)) + weight * w**c
    poly = torch.zeros(shape, dtype=torch.float64)
    for (a, b), q in along_z.items():
        poly += (u[:, None] ** a * v[None, :] ** b)[:, :, None] * q
    peak = float(poly.abs().max())
    poly = poly * (amplitude_rad / peak) if peak > 0 else poly
    return (poly + constant).to(dtype=dtype, device=device)


def truncate_kspace(
    volume: torch.Tensor,
    *,
    voxel_size_mm: Sequence[float],
    target_voxel_size_mm: Sequence[float],
) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """Keep the central k-space of ``volume``: what a scanner acquiring coarser voxels would see.

    Along each axis the grid shrinks from :math:`N` to :math:`N' = \\mathrm{round}(N h / h')`
    samples; the new voxel size is :math:`h N / N'` (equal to the target when it divides
    evenly). With the DFT normalised by the sample count, a constant keeps its value and a
    band-limited volume (every frequency below :math:`N'/2`) is sampled exactly at the new
    grid points :math:`x' = j\\,N/N'` (old voxel units). Truncate the *complex* signal,
    not magnitude or phase, to model partial-volume and Gibbs effects correctly.

    Parameters
    ----------
    volume
        Real or complex, shape ``(..., X, Y, Z)``. Real input gives real output.
    voxel_size_mm
        Voxel size (mm) of ``volume``.
    target_voxel_size_mm
        Wanted voxel size (mm), each ≥ the current one.

    Returns
    -------
    volume, voxel_size_mm
        The truncated volume ``(..., X', Y', Z')`` and its voxel size (mm).

    >>> x = torch.arange(8.0).view(8, 1, 1).expand(8, 4, 4)
    >>> y, h = truncate_kspace(torch.cos(2 * torch.pi * x / 8), voxel_size_mm=(1, 1, 1), target_voxel_size_mm=(2, 1, 1))
    >>> tuple(y.shape), h, [round(float(v), 4) + 0.0 for v in y[:, 0, 0]]
    ((4, 4, 4), (2.0, 1.0, 1.0), [1.0, 0.0, -1.0, 0.0])
    """
    source = [_positive(h, "voxel_size_mm") for h in voxel_size_mm]
    target = [_positive(h, "target_voxel_size_mm") for h in target_voxel_size_mm]
    if len(source) != 3 or len(target) != 3:
        raise ParameterError("voxel_size_mm and target_voxel_size_mm need 3 values each")
    if any(t < s * (1 - 1e-6) for s, t in zip(source, target)):
        raise ParameterError(f"k-space truncation only coarsens: target voxel {tuple(target)} mm is finer "
                             f"than {tuple(source)} mm")
    shape = tuple(volume.shape[-3:])
    new_shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, source, target))
    new_voxel = tuple(s * n / m for s, n, m in zip(source, shape, new_shape))
    if new_shape == shape:
        return volume, new_voxel  # type: ignore[return-value]
    # norm="forward" divides by N on the way in and not on the way out: values keep their level.
    spectrum = torch.fft.fftshift(torch.fft.fftn(volume, dim=_DIMS, norm="forward"), dim=_DIMS)
    starts = [n // 2 - m // 2 for n, m in zip(shape, new_shape)]
    cropped = spectrum[..., starts[0]:starts[0] + new_shape[0], starts[1]:starts[1] + new_shape[1],
                       starts[2]:starts[2] + new_shape[2]]
    result = torch.fft.ifftn(torch.fft.ifftshift(cropped, dim=_DIMS), dim=_DIMS, norm="forward")
    return (result if volume.is_complex() else result.real.contiguous()), new_voxel  # type: ignore[return-value]
