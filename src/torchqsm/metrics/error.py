r"""Voxel-wise error metrics: NRMSE, detrended NRMSE, PSNR and Pearson correlation.

Notation: :math:`x` is the estimate and :math:`y` the reference (ground truth)
susceptibility, both in ppm, restricted to the :math:`N` voxels of the mask
:math:`M`; :math:`\bar x, \bar y` are their means in the mask and
:math:`\lVert\cdot\rVert` the Euclidean norm over the mask.

All functions compute in float64 and return a Python ``float``.

References
----------
.. [1] Langkammer C, Schweser F, Shmueli K, et al. Quantitative susceptibility
   mapping: Report from the 2016 reconstruction challenge. Magn Reson Med.
   2018;79(3):1661-1673. doi:10.1002/mrm.26830
.. [2] QSM Challenge 2.0 Organization Committee (Bilgic B, Langkammer C,
   Marques JP, et al.). QSM reconstruction challenge 2.0: Design and report of
   results. Magn Reson Med. 2021;86(3):1241-1255. doi:10.1002/mrm.28754
.. [3] Marques JP, Meineke J, Milovic C, et al. QSM reconstruction challenge
   2.0: A realistic in silico head phantom for MRI data simulation and
   evaluation of susceptibility mapping procedures. Magn Reson Med.
   2021;86(1):526-542. doi:10.1002/mrm.28716
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from torchqsm.metrics._validation import ArrayLike, prepare, relative_error_percent

__all__ = ["nrmse", "dnrmse", "psnr", "pearson"]

DetrendFit = Literal["estimate_on_reference", "reference_on_estimate"]


def nrmse(
    estimate: ArrayLike,
    reference: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    demean: bool = False,
) -> float:
    r"""Normalized root-mean-square error in percent.

    .. math::

        \mathrm{NRMSE} = 100\,\frac{\lVert x - y \rVert}{\lVert y \rVert}
        \quad\text{over the mask.}

    With ``demean=True`` each image first loses its mean in the mask,
    :math:`x \leftarrow x - \bar x`, :math:`y \leftarrow y - \bar y`, so the
    denominator is :math:`\lVert y - \bar y \rVert` (the "demeaned RMSE" of
    challenge 2.0 [3]_); QSM is defined up to an offset, which this removes.

    Parameters
    ----------
    estimate, reference
        Susceptibility maps (ppm), same shape, typically ``(X, Y, Z)``;
        tensors or numpy arrays.
    mask
        Boolean or 0/1 volume of the same shape; ``None`` uses every voxel.
    demean
        Subtract each image's mean in the mask first.

    Returns
    -------
    float
        NRMSE in percent (0 for a perfect estimate).

    Raises
    ------
    ValueError
        On a shape mismatch, an empty mask, or a reference that is zero in the
        mask (constant, with ``demean=True``).

    References
    ----------
    .. [1] Langkammer C, et al. Magn Reson Med. 2018;79:1661-1673.
       doi:10.1002/mrm.26830
    .. [3] Marques JP, et al. Magn Reson Med. 2021;86:526-542.
       doi:10.1002/mrm.28716

    Examples
    --------
    >>> import torch
    >>> round(nrmse(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0])), 4)
    21.8218
    """
    x, y, m = prepare(estimate, reference, mask)
    xv, yv = x[m], y[m]
    if demean:
        xv, yv = xv - xv.mean(), yv - yv.mean()
        return relative_error_percent(xv - yv, yv, what="the demeaned reference")
    return relative_error_percent(xv - yv, yv, what="the reference")


def dnrmse(
    estimate: ArrayLike,
    reference: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    fit: DetrendFit = "estimate_on_reference",
) -> float:
    r"""Detrended (and demeaned) NRMSE in percent, as in QSM challenge 2.0.

    Regularized inversions often scale susceptibility down uniformly; the
    detrended error ignores an affine trend between estimate and reference.
    With the default ``fit="estimate_on_reference"`` the estimate is
    regressed on the reference by least squares in the mask,

    .. math::

        (a, b) = \arg\min_{a, b} \lVert x - (a\,y + b) \rVert^2 ,\qquad
        a = \frac{\sum (x-\bar x)(y-\bar y)}{\sum (y-\bar y)^2},\quad
        b = \bar x - a\,\bar y ,

    the trend is inverted, :math:`x' = (x - b)/a`, and

    .. math::

        \mathrm{dNRMSE} = 100\,\frac{\lVert x' - y \rVert}{\lVert y - \bar y \rVert} .

    Since :math:`\bar{x'} = \bar y`, this is the demeaned NRMSE of :math:`x'`
    (``nrmse(x', y, demean=True)``). ``fit="reference_on_estimate"`` instead
    regresses the reference on the estimate,
    :math:`(c, d) = \arg\min \lVert y - (c\,x + d) \rVert^2`, and uses
    :math:`x' = c\,x + d` (the best affine predictor of :math:`y`; never larger
    than the default). The published evaluation scripts
    (``compute_rmse_detrend``) exist in both variants; both demean and both are
    invariant to :math:`x \to \alpha x + \beta` for :math:`\alpha \ne 0`.

    Parameters
    ----------
    estimate, reference
        Susceptibility maps (ppm), same shape, typically ``(X, Y, Z)``.
    mask
        Boolean or 0/1 volume of the same shape; ``None`` uses every voxel.
    fit
        Direction of the least-squares line: ``"estimate_on_reference"``
        (invert :math:`x \approx a y + b`) or ``"reference_on_estimate"``
        (predict :math:`y \approx c x + d`).

    Returns
    -------
    float
        dNRMSE in percent.

    Raises
    ------
    ValueError
        On a shape mismatch, an empty mask, a reference (or, for
        ``"reference_on_estimate"``, an estimate) that is constant in the mask,
        or an estimate uncorrelated with the reference (:math:`a = 0`).

    References
    ----------
    .. [2] QSM Challenge 2.0 Organization Committee. Magn Reson Med.
       2021;86:1241-1255. doi:10.1002/mrm.28754
    .. [3] Marques JP, et al. Magn Reson Med. 2021;86:526-542.
       doi:10.1002/mrm.28716

    Examples
    --------
    >>> import torch
    >>> reference = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    >>> dnrmse(2.0 * reference + 0.1, reference) < 1e-12  # an affine trend costs nothing
    True
    >>> round(dnrmse(torch.tensor([1.0, 2.0, 3.0]), reference), 4)  # 100 / (3√3)
    19.245
    """
    if fit not in ("estimate_on_reference", "reference_on_estimate"):
        raise ValueError(f"fit must be 'estimate_on_reference' or 'reference_on_estimate', got {fit!r}")
    x, y, m = prepare(estimate, reference, mask)
    # After demeaning, the least-squares intercept is 0 and only the slope is left.
    xv, yv = x[m], y[m]
    xc, yc = xv - xv.mean(), yv - yv.mean()
    if fit == "estimate_on_reference":
        reference_power = float(torch.dot(yc, yc))
        if reference_power == 0.0:
            raise ValueError("the reference is constant in the mask: the detrended NRMSE is undefined")
        slope = float(torch.dot(xc, yc)) / reference_power
        if slope == 0.0:
            raise ValueError("the estimate is uncorrelated with the reference (slope 0): cannot detrend")
        corrected = xc / slope
    else:
        estimate_power = float(torch.dot(xc, xc))
        if estimate_power == 0.0:
            raise ValueError("the estimate is constant in the mask: cannot regress the reference on it")
        corrected = xc * (float(torch.dot(xc, yc)) / estimate_power)
    return relative_error_percent(corrected - yc, yc, what="the demeaned reference")


def psnr(estimate: ArrayLike, reference: ArrayLike, mask: ArrayLike | None = None) -> float:
    r"""Peak signal-to-noise ratio in decibels.

    .. math::

        \mathrm{PSNR} = 10 \log_{10} \frac{L^2}{\mathrm{MSE}},\qquad
        L = \max_M y - \min_M y,\quad
        \mathrm{MSE} = \frac1N \sum_M (x - y)^2 .

    Identical images (MSE = 0) give ``math.inf``; no epsilon is added, so the
    value is never an arbitrary large number.

    Parameters
    ----------
    estimate, reference
        Susceptibility maps (ppm), same shape, typically ``(X, Y, Z)``.
    mask
        Boolean or 0/1 volume of the same shape; ``None`` uses every voxel.

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the images agree in every mask voxel.

    Raises
    ------
    ValueError
        On a shape mismatch, an empty mask, or a reference that is constant in
        the mask (peak :math:`L = 0`).

    References
    ----------
    .. [1] Langkammer C, et al. Magn Reson Med. 2018;79:1661-1673.
       doi:10.1002/mrm.26830

    Examples
    --------
    >>> import torch
    >>> round(psnr(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 4.0])), 4)  # 10 log10(27)
    14.3136
    """
    x, y, m = prepare(estimate, reference, mask)
    xv, yv = x[m], y[m]
    peak = float(yv.max() - yv.min())
    if peak == 0.0:
        raise ValueError("the reference is constant in the mask: the PSNR peak value is zero")
    mse = float(torch.mean((xv - yv) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak**2 / mse)


def pearson(estimate: ArrayLike, reference: ArrayLike, mask: ArrayLike | None = None) -> float:
    r"""Pearson correlation coefficient in the mask (dimensionless).

    .. math::

        r = \frac{\sum (x-\bar x)(y-\bar y)}
                 {\sqrt{\sum (x-\bar x)^2 \, \sum (y-\bar y)^2}} \in [-1, 1] .

    Parameters
    ----------
    estimate, reference
        Susceptibility maps (ppm), same shape, typically ``(X, Y, Z)``.
    mask
        Boolean or 0/1 volume of the same shape; ``None`` uses every voxel.

    Returns
    -------
    float
        Correlation coefficient, clipped to [-1, 1] against rounding.

    Raises
    ------
    ValueError
        On a shape mismatch, an empty mask, or an image that is constant in the
        mask (the coefficient is undefined).

    References
    ----------
    .. [1] Langkammer C, et al. Magn Reson Med. 2018;79:1661-1673.
       doi:10.1002/mrm.26830

    Examples
    --------
    >>> import torch
    >>> pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0]))
    1.0
    """
    x, y, m = prepare(estimate, reference, mask)
    xv, yv = x[m], y[m]
    xc, yc = xv - xv.mean(), yv - yv.mean()
    denominator = math.sqrt(float(torch.dot(xc, xc)) * float(torch.dot(yc, yc)))
    if denominator == 0.0:
        raise ValueError("an image is constant in the mask: the correlation coefficient is undefined")
    return min(1.0, max(-1.0, float(torch.dot(xc, yc)) / denominator))
