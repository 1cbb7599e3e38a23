r"""Region-of-interest statistics: mean susceptibility per label and linearity.

For each label :math:`\ell > 0` of an integer segmentation, the mean estimate
and mean reference (ppm) over its :math:`n_\ell` voxels are compared; across
labels, the estimated means are regressed on the reference means, whose
slope measures under- or over-estimation (the deep grey matter "linearity"
of QSM challenge 2.0 reports :math:`|1 - \text{slope}|`).

References
----------
.. [1] Langkammer C, Schweser F, Shmueli K, et al. Quantitative
   susceptibility mapping: Report from the 2016 reconstruction challenge.
   Magn Reson Med. 2018;79(3):1661-1673. doi:10.1002/mrm.26830
.. [2] QSM Challenge 2.0 Organization Committee (Bilgic B, Langkammer C,
   Marques JP, et al.). QSM reconstruction challenge 2.0: Design and report of
   results. Magn Reson Med. 2021;86(3):1241-1255. doi:10.1002/mrm.28754
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from torchqsm.metrics._validation import ArrayLike, as_float64, as_tensor

__all__ = ["RoiRow", "RoiStatistics", "roi_statistics"]


@dataclass(frozen=True)
class RoiRow:
    """Statistics of one label.

    Attributes
    ----------
    label
        The label value (> 0).
    voxel_count
        Number of voxels carrying the label.
    mean_estimate, mean_reference
        Mean susceptibility (ppm) of the estimate and the reference in the ROI.
    difference
        ``mean_estimate - mean_reference`` (ppm): the ROI error.
    """

    label: int
    voxel_count: int
    mean_estimate: float
    mean_reference: float
    difference: float


@dataclass(frozen=True)
class RoiStatistics:
    r"""Per-label rows and the regression of estimated on reference ROI means.

    The ordinary least-squares line :math:`\hat m_\ell = a\, m_\ell + b` over
    the labels (one point per ROI, unweighted), with :math:`m_\ell` the
    reference mean and :math:`\hat m_\ell` the estimated mean, and
    :math:`R^2 = 1 - \sum (\hat m_\ell - a m_\ell - b)^2 / \sum (\hat m_\ell - \bar{\hat m})^2`.

    Attributes
    ----------
    rows
        One :class:`RoiRow` per label, in increasing label order.
    slope, intercept
        :math:`a` (dimensionless) and :math:`b` (ppm); ``None`` with fewer than
        two labels or when all reference means are equal.
    r_squared
        Coefficient of determination; ``None`` when undefined (as above, or
        when all estimated means are equal).
    """

    rows: tuple[RoiRow, ...]
    slope: float | None
    intercept: float | None
    r_squared: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary: ``{"rows": [...], "slope", "intercept", "r_squared"}``."""
        return {
            "rows": [asdict(row) for row in self.rows],
            "slope": self.slope,
            "intercept": self.intercept,
            "r_squared": self.r_squared,
        }


def _regression(reference_means: torch.Tensor, estimate_means: torch.Tensor) -> tuple[float | None, ...]:
    """Slope, intercept and R² of ``estimate_means ≈ slope · reference_means + intercept``."""
    if reference_means.numel() < 2:
        return None, None, None
    reference_centred = reference_means - reference_means.mean()
    estimate_centred = estimate_means - estimate_means.mean()
    reference_power = float(torch.dot(reference_centred, reference_centred))
    if reference_power == 0.0:
        return None, None, None
    slope = float(torch.dot(reference_centred, estimate_centred)) / reference_power
    intercept = float(estimate_means.mean()) - slope * float(reference_means.mean())
    total = float(torch.dot(estimate_centred, estimate_centred))
    if total == 0.0:
        return slope, intercept, None
    residual = estimate_centred - slope * reference_centred
    return slope, intercept, 1.0 - float(torch.dot(residual, residual)) / total


def roi_statistics(estimate: ArrayLike, reference: ArrayLike, labels: ArrayLike) -> RoiStatistics:
    r"""Mean susceptibility per label and the linear fit of estimated on reference means.

    For each label :math:`\ell > 0` with voxel set :math:`R_\ell`:

    .. math::

        \hat m_\ell = \frac{1}{|R_\ell|} \sum_{R_\ell} x,\qquad
        m_\ell = \frac{1}{|R_\ell|} \sum_{R_\ell} y,\qquad
        \Delta_\ell = \hat m_\ell - m_\ell ,

    and, with at least two labels, the least-squares line
    :math:`\hat m_\ell \approx a\, m_\ell + b` with its :math:`R^2`
    (see :class:`RoiStatistics`).

    Parameters
    ----------
    estimate, reference
        Susceptibility maps (ppm), same shape, typically ``(X, Y, Z)``.
    labels
        Integer segmentation of the same shape; 0 is background and is
        skipped. Float volumes (as NIfTI often stores them) are accepted when
        every value is a whole number.

    Returns
    -------
    RoiStatistics
        Rows in increasing label order plus slope, intercept and R².

    Raises
    ------
    ValueError
        On a shape mismatch, negative or fractional labels, no label > 0, or a
        NaN/infinite value inside a labelled voxel.

    References
    ----------
    .. [1] Langkammer C, et al. Magn Reson Med. 2018;79:1661-1673.
       doi:10.1002/mrm.26830
    .. [2] QSM Challenge 2.0 Organization Committee. Magn Reson Med.
       2021;86:1241-1255. doi:10.1002/mrm.28754

    Examples
    --------
    >>> import torch
    >>> labels = torch.tensor([0, 1, 1, 2, 2])
    >>> reference = torch.tensor([9.0, 0.1, 0.3, 0.4, 0.6])
    >>> result = roi_statistics(0.5 * reference, reference, labels)
    >>> [row.voxel_count for row in result.rows], round(result.slope, 12)
    ([2, 2], 0.5)
    """
    y = as_float64(reference, name="reference")
    x = as_float64(estimate, name="estimate", device=y.device)
    label_volume = as_tensor(labels, name="labels").to(y.device)
    if x.shape != y.shape:
        raise ValueError(f"estimate has shape {tuple(x.shape)} but reference has shape {tuple(y.shape)}")
    if label_volume.shape != y.shape:
        raise ValueError(f"labels have shape {tuple(label_volume.shape)} but the images have shape {tuple(y.shape)}")
    if label_volume.is_floating_point():
        if not bool((torch.isfinite(label_volume) & (label_volume == label_volume.round())).all()):
            raise ValueError("labels must be whole numbers")
    label_volume = label_volume.to(torch.int64)
    if bool((label_volume < 0).any()):
        raise ValueError("labels must be non-negative (0 = background)")
    inside = label_volume > 0
    if not bool(inside.any()):
        raise ValueError("labels contain no region: every voxel is background (0)")
    for name, tensor in (("estimate", x), ("reference", y)):
        if not bool(torch.isfinite(tensor[inside]).all()):
            raise ValueError(f"{name} contains NaN or infinite values inside a labelled region")

    values, index = torch.unique(label_volume[inside], return_inverse=True)
    counts = torch.bincount(index, minlength=values.numel()).to(torch.float64)
    estimate_means = torch.zeros_like(counts).index_add_(0, index, x[inside]) / counts
    reference_means = torch.zeros_like(counts).index_add_(0, index, y[inside]) / counts
    rows = tuple(
        RoiRow(
            label=int(label),
            voxel_count=int(count),
            mean_estimate=float(mean_estimate),
            mean_reference=float(mean_reference),
            difference=float(mean_estimate - mean_reference),
        )
        for label, count, mean_estimate, mean_reference in zip(
            values.tolist(), counts.tolist(), estimate_means.tolist(), reference_means.tolist()
        )
    )
    slope, intercept, r_squared = _regression(reference_means, estimate_means)
    return RoiStatistics(rows=rows, slope=slope, intercept=intercept, r_squared=r_squared)
