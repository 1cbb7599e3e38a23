r"""Regularization chosen from the data: ``regularization="auto"``.

Every regularised inversion takes ``regularization="auto"`` (the default) or a number. The
rule depends on what is cheap and what measured well on the evaluation suite
(``docs/benchmarks.md``, "Automatic regularization"):

* **tikhonov**: generalized cross-validation (GCV; Golub, Heath & Wahba 1979). The solution
  is one diagonal operation in k-space, so the residual norm and the trace of the influence
  matrix are sums over the spectrum (Parseval) for every candidate λ, without an inverse FFT:

  .. math::

     \mathrm{GCV}(\lambda) = \frac{N \lVert (1-\phi_\lambda) \hat f\rVert^2 / N}{\big(\sum_k 1-\phi_\lambda(k)\big)^2},
     \qquad \phi_\lambda = \frac{D^2}{D^2 + \lambda |R|^2},

  on the padded grid of :math:`N` voxels. λ is the minimum over a grid of 8 values per
  decade, refined by a parabola through the three around it. That whole-grid GCV counts the
  zeros outside the mask (and the padding) as perfectly fitted data and chooses too large a λ
  (1.7–2.8× the best of a sweep on the suite; +2.5 NRMSE points at 30°). So it only starts the
  search: the value returned minimises the GCV of the voxels actually measured,

  .. math::

     \mathrm{GCV}_M(\lambda) = \frac{\lVert M(A_\lambda f - f)\rVert^2}{m\,(1 - \operatorname{tr}A_\lambda/N)^2},

  with :math:`m` voxels in the mask :math:`M` (the influence matrix is a convolution, so its
  diagonal is :math:`\operatorname{tr}A_\lambda/N` everywhere). Each candidate costs one
  inverse FFT (9 candidates, 4 per decade around the start, then a parabola). On suite 1.4 it lands
  within 0.5 NRMSE points of the sweep's best on every case (``docs/benchmarks.md``).

* **l2**: the masked GCV of the same objective without the support constraint and the weights,
  which is the closed-form Tikhonov problem with the gradient regulariser (the same λ in mm²).

* **tv**: scaled to the noise of the data, :math:`\alpha = \kappa\,\hat\sigma\,\bar h`, with
  :math:`\bar h` the geometric mean voxel size (mm). :math:`\hat\sigma` (ppm) is ``noise_ppm`` when given (for instance the
  field noise of a multi-echo fit); otherwise the root mean square, in the mask, of what the
  GCV-Tikhonov solution leaves unexplained, :math:`\lVert M(D\chi_{\mathrm{GCV}} - f)\rVert / \sqrt{n}`:
  measurement noise and every model error the dipole model cannot fit (residual background,
  anisotropy), which is what the regularization has to suppress. It is not an unbiased
  estimate of white noise (the fit absorbs part of it: 0.4–0.65 σ on a 48³ phantom at 5–50 %
  noise; 0.74–2.6 σ on the suite, where model error adds to it). :math:`\kappa` was measured
  on the suite (:data:`TV_KAPPA`; see the benchmark section), so the rule costs one
  closed-form GCV and one solve.

* **medi**: the tv rule for a data weight, :math:`\lambda = 1/(\kappa\hat\sigma\bar h)` (MEDI's
  objective divided by λ is tv's with α = 1/λ for small residuals).

* **dll2**: GCV of λ on the field the estimate :math:`\chi_0` leaves unexplained: with
  :math:`u = \chi - \chi_0` the problem is identity Tikhonov on :math:`f - D\chi_0`.

* **ndi, dfqsm** (early-stopped gradient descent, where the iteration count is the
  regulariser): the discrepancy principle (Morozov 1966). Stop once the in-mask residual rms
  :math:`\lVert M(D\chi_k - f)\rVert/\sqrt n` is at most :math:`\tau\hat\sigma`
  (:data:`DISCREPANCY_TAU`), with :math:`\hat\sigma` = ``noise_ppm`` or tv's estimate (the
  in-mask residual of the GCV-Tikhonov fit). On the suite that estimate is 0.7–1.0 of the input's
  field error wherever noise dominates it (baseline 1.5 / 1.5 ppb, snr-30 3.7 / 5.0, vessels
  10.0 / 14.9, res-1x1x2mm 4.0 / 4.9; ``benchmarks/suite_field_error.py``). The GCV variance
  estimate (the same residual divided by :math:`1 - \operatorname{tr}A_\lambda/N`) stopped ndi
  after 5 iterations on the baseline (51.9 % NRMSE against 38.1 % at the best iteration), so it
  is not used. The choice is reported as the tolerance of the method's own rule at the iteration where it
  stopped, so that number reproduces the result.

The choice is logged (INFO, logger ``torchqsm.inversion``) and reported to any
:func:`collect_choices` block, which is how the registry puts it in the sidecar.

References
----------
Morozov VA. On the solution of functional equations by the method of regularization. Soviet Math
Dokl 1966;7:414–417.

Golub GH, Heath M, Wahba G. Generalized cross-validation as a method for choosing a good ridge
parameter. Technometrics 1979;21:215–223. doi:10.1080/00401706.1979.10489751
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import ParameterError, check_positive

__all__ = ["AUTO", "Regularization", "RegularizationChoice", "collect_choices", "report", "is_auto",
           "half_weights", "gcv_tikhonov", "gcv_residual_noise", "noise_scaled", "record_choices",
           "choices_record", "TV_KAPPA", "DISCREPANCY_TAU", "discrepancy_noise"]

log = logging.getLogger("torchqsm.inversion")

AUTO = "auto"
#: The type of every ``regularization`` parameter: a number, or ``"auto"``.
Regularization = float | Literal["auto"]

#: κ of the tv rule (dimensionless): α = κ σ̂ h̄ (docs/benchmarks.md, "Automatic regularization").
TV_KAPPA = 0.11

#: τ of the discrepancy principle (dimensionless): iterate until the in-mask residual rms ≤ τ σ̂ (Morozov).
DISCREPANCY_TAU = 1.0

_GRID = torch.logspace(-7, 2, 73, dtype=torch.float64)  # 8 per decade

_COLLECTORS: ContextVar[tuple[list, ...]] = ContextVar("torchqsm_regularization_collectors", default=())


@dataclass(frozen=True)
class RegularizationChoice:
    """One automatic choice: the method, the rule, the value and what it was computed from.

    ``parameter`` names the parameter the value stands for (``"regularization"``, or for instance
    ``"tolerance"`` for a stopping rule).
    """

    method: str
    rule: str
    value: float
    noise_ppm: float | None = None
    noise_source: str | None = None
    parameter: str = "regularization"

    def as_record(self) -> dict[str, Any]:
        """JSON-ready, for the sidecar."""
        out: dict[str, Any] = {"method": self.method, "parameter": self.parameter, "value": self.value,
                               "rule": self.rule}
        if self.noise_ppm is not None:
            out["noise_ppm"] = self.noise_ppm
            out["noise_source"] = self.noise_source
        return out

    def describe(self) -> str:
        text = f"{self.method}: {self.parameter} {self.value:.3g} chosen by {self.rule}"
        if self.noise_ppm is not None:
            text += f" (noise {self.noise_ppm * 1e3:.3g} ppb, {self.noise_source})"
        return text


@contextmanager
def collect_choices() -> Iterator[list[RegularizationChoice]]:
    """Collect the automatic choices made inside the block (nested blocks each see them all).

    >>> with collect_choices() as made:
    ...     report(RegularizationChoice("tikhonov", "GCV", 0.01))
    >>> made[0].value
    0.01
    """
    made: list[RegularizationChoice] = []
    token = _COLLECTORS.set((*_COLLECTORS.get(), made))
    try:
        yield made
    finally:
        _COLLECTORS.reset(token)


def report(choice: RegularizationChoice) -> None:
    """Log an automatic choice and hand it to every open :func:`collect_choices` block."""
    log.info(choice.describe())
    for collector in _COLLECTORS.get():
        collector.append(choice)


def is_auto(value: Any, *, name: str = "regularization") -> bool:
    """True for ``"auto"``; False for a number; :class:`ParameterError` for any other string."""
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return True
        raise ParameterError(f"{name} must be a number or 'auto', got {value!r}")
    return False


def half_weights(length: int, last_axis_length: int, *, dtype, device) -> torch.Tensor:
    """Multiplicity of each rfft bin in the full spectrum (1 for the DC and Nyquist planes, else 2)."""
    weights = torch.full((length,), 2.0, dtype=dtype, device=device)
    weights[0] = 1.0
    if last_axis_length % 2 == 0:
        weights[-1] = 1.0
    return weights


def _binned(values: torch.Tensor, bins: int) -> tuple[torch.Tensor, int]:
    """Bin index of each value on a log scale (about 0.5 % wide at 4096 bins over 9 decades); 0 for zeros."""
    positive = values > 0
    top = float(values.max()) if bool(positive.any()) else 1.0
    logs = torch.log10(torch.where(positive, values, top) / top)  # (-inf, 0]
    index = torch.clamp((-logs / 9.0 * (bins - 1)).long(), max=bins - 2) + 1
    return torch.where(positive, index, 0), bins


def gcv_tikhonov(spectrum: torch.Tensor, kernel: torch.Tensor, penalty: torch.Tensor, padded_shape, *,
                 mask: torch.Tensor | None = None, image=None) -> float:
    r"""The GCV-optimal λ of :math:`\min \lVert D\chi - f\rVert^2 + \lambda\lVert R\chi\rVert^2` (module notes).

    With ``mask`` and ``image`` (the inverse transform onto the image grid, ``dipole.image``),
    the GCV of the data actually measured: the residual is summed over the mask only
    (:func:`_masked_gcv`), starting from the whole-grid minimum.

    The spectrum is summarised once into bins of :math:`(D^2, |R|^2)` (log-spaced, with the
    bin's weighted mean as its value), so every candidate λ costs a sum over the bins, not
    over the grid.

    Parameters
    ----------
    spectrum
        rfft of the zero-padded field, ``(X, Y, Z//2+1)``.
    kernel, penalty
        :math:`D` and :math:`|R|^2` on the same half grid (``penalty`` may be a scalar).
    padded_shape
        The full padded grid (for the rfft multiplicities).
    """
    weights = half_weights(kernel.shape[-1], padded_shape[-1], dtype=kernel.dtype, device=kernel.device)
    weights = weights.expand_as(kernel).flatten()
    k2 = (kernel * kernel).flatten()
    p = penalty.to(kernel.dtype).expand_as(kernel).flatten()
    power = (spectrum.real.square() + spectrum.imag.square()).flatten() * weights
    k_index, k_bins = _binned(k2, 4096)
    constant_penalty = penalty.numel() == 1
    if constant_penalty:
        index = k_index
        size = k_bins
    else:
        p_index, p_bins = _binned(p, 512)
        index = k_index * p_bins + p_index
        size = k_bins * p_bins
    count = torch.bincount(index, weights=weights.double(), minlength=size)
    used = count > 0
    energy = torch.bincount(index, weights=power.double(), minlength=size)[used]
    k2_mean = (torch.bincount(index, weights=(weights * k2).double(), minlength=size)[used] / count[used])
    p_mean = (torch.bincount(index, weights=(weights * p).double(), minlength=size)[used] / count[used])
    count = count[used]
    n = float(math.prod(padded_shape))

    def score(lam: float) -> float:
        denominator = k2_mean + lam * p_mean
        one_minus = torch.where(denominator > 0, lam * p_mean / torch.where(denominator > 0, denominator, 1.0), 1.0)
        residual = (one_minus.square() * energy).sum() / n
        trace = (count * one_minus).sum()
        return float(n * residual / trace.square())

    lam = _grid_minimum(score, _GRID.tolist())
    if mask is None:
        return lam
    if image is None:
        raise ParameterError("gcv_tikhonov: a mask needs the image transform (image=dipole.image)")
    return _masked_gcv(spectrum, kernel, penalty, weights.reshape(kernel.shape), n, mask, image, lam)


def _masked_gcv(spectrum, kernel, penalty, weights, n, mask, image, start: float) -> float:
    r"""GCV over the measured voxels: :math:`\lVert M(A_\lambda f - f)\rVert^2 / (m\,(1 - \operatorname{tr}A_\lambda/N)^2)`.

    The field is known only in the mask (:math:`m` voxels); outside it the padded grid holds
    zeros that are not data, and the whole-grid GCV counts them as perfectly fitted
    measurements. The influence matrix :math:`A_\lambda = \mathcal F^{-1}\phi_\lambda\mathcal F`
    is a convolution, so its diagonal is :math:`\operatorname{tr}A_\lambda/N` at every voxel and
    the masked trace is :math:`m\operatorname{tr}A_\lambda/N`. The residual needs one inverse FFT
    per λ: 9 values, 4 per decade, from 1.5 decades below to half a decade above the
    whole-grid choice (which is larger whenever the zeros pull it), refined by a parabola.
    On the suite this moved tikhonov from +2.5 to within 0.5 NRMSE points of the best λ of a
    sweep at 30° (``docs/benchmarks.md``).
    """
    inside = (mask > 0).to(kernel.dtype)
    m = int(inside.sum())
    if m == 0:
        return start
    k2 = kernel * kernel
    p = penalty.to(kernel.dtype)

    def score(lam: float) -> float:
        denominator = k2 + lam * p
        one_minus = torch.where(denominator > 0, lam * p / torch.where(denominator > 0, denominator, 1.0), 1.0)
        trace = float((weights * (1.0 - one_minus)).sum())
        residual = float(torch.linalg.vector_norm(image(spectrum * one_minus) * inside, dtype=torch.float64))
        return residual ** 2 / (m * (1.0 - trace / n) ** 2)

    return _grid_minimum(score, [start * 10.0 ** (i / 4.0) for i in range(-6, 3)])


def _grid_minimum(score, grid: list[float]) -> float:
    """The λ of a log-spaced ``grid`` with the lowest ``score``, refined by a parabola in log λ through it
    and its neighbours (at most one grid step away)."""
    scores = [score(lam) for lam in grid]
    best = min(range(len(grid)), key=scores.__getitem__)
    if not 0 < best < len(grid) - 1:
        return grid[best]
    y0, y1, y2 = (math.log(v) for v in scores[best - 1:best + 2])
    curvature = y0 - 2 * y1 + y2
    shift = 0.5 * (y0 - y2) / curvature if curvature > 0 else 0.0
    return grid[best] * math.exp(max(-1.0, min(1.0, shift)) * math.log(grid[1] / grid[0]))


def gcv_residual_noise(field: torch.Tensor, mask: torch.Tensor, dipole) -> float:
    r"""σ̂ (ppm): rms in the mask of :math:`D\chi_{\mathrm{GCV}} - f` for the identity-Tikhonov GCV solution.

    This uses the whole-grid GCV λ (no mask), the estimate that tv's κ, medi's rule and the
    discrepancy stops' τ were measured with; tikhonov's own choice is the masked GCV.
    """
    spectrum = dipole.spectrum(field)
    kernel = dipole.kernel
    lam = gcv_tikhonov(spectrum, kernel, torch.ones((), dtype=kernel.dtype, device=kernel.device),
                       dipole.pad.padded_shape)
    fit = dipole.image(spectrum * (kernel * kernel / (kernel * kernel + lam)))
    inside = mask > 0
    residual = (fit - field)[..., inside]
    return float(residual.double().square().mean().sqrt())


def discrepancy_noise(method: str, noise_ppm: float | None, field: torch.Tensor, mask: torch.Tensor,
                      dipole) -> tuple[float, str]:
    """σ̂ (ppm) and where it came from, for a discrepancy-principle stop: ``noise_ppm``, or
    :func:`gcv_residual_noise` (tv's estimate)."""
    if noise_ppm is not None:
        return check_positive("noise_ppm", noise_ppm), "given"
    sigma = gcv_residual_noise(field, mask, dipole)
    if not sigma > 0:
        raise ParameterError(f"{method}: the field is fitted exactly (noise estimate 0): give tolerance "
                             "or noise_ppm explicitly")
    return sigma, "estimated: residual of the GCV-Tikhonov fit"


def noise_scaled(method: str, noise_ppm: float | None, field: torch.Tensor, mask: torch.Tensor, dipole, *,
                 kappa: float, voxel_size_mm, inverse: bool = False) -> float:
    """The tv rule: α = κ σ̂ h̄, reported; ``inverse``: a data weight λ = 1/α (MEDI's).

    ``noise_ppm`` None: σ̂ from :func:`gcv_residual_noise`.
    """
    if noise_ppm is None:
        sigma, source = gcv_residual_noise(field, mask, dipole), "estimated: residual of the GCV-Tikhonov fit"
    else:
        sigma, source = check_positive("noise_ppm", noise_ppm), "given"
    if not sigma > 0:
        raise ParameterError(f"{method}: the field is fitted exactly (noise estimate 0): give regularization "
                             "or noise_ppm explicitly")
    h = math.prod(float(v) for v in voxel_size_mm) ** (1.0 / 3.0)
    value = kappa * sigma * h
    rule = f"noise scaling (kappa {kappa:g})"
    if inverse:
        value, rule = 1.0 / value, f"inverse noise scaling, 1/(kappa sigma h) (kappa {kappa:g})"
    report(RegularizationChoice(method, rule, value, sigma, source))
    return value


def record_choices(parameters: dict[str, Any], choices: list[RegularizationChoice]) -> dict[str, Any]:
    """A parameter record (``Parameters.record``) with each automatic parameter set to the value chosen.

    >>> record_choices({"regularization": "auto"}, [RegularizationChoice("tikhonov", "GCV", 0.01)])
    {'regularization': 0.01}
    """
    out = dict(parameters)
    for choice in choices:  # the last choice of each parameter wins (nested solves report first)
        out[choice.parameter] = choice.value
    return out


def choices_record(choices: list[RegularizationChoice]) -> list[dict[str, Any]]:
    """How each automatic value was chosen, JSON-ready (the sidecar's ``RegularizationChoice``)."""
    return [c.as_record() for c in choices]
