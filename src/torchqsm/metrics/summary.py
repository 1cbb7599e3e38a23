"""All metrics of one estimate in one dictionary, with stable keys.

:data:`METRIC_DESCRIPTIONS` gives each key a one-line description with its
unit, for tables in the command line and in reports.
"""

from __future__ import annotations

from typing import Any

from torchqsm.metrics._validation import ArrayLike, prepare
from torchqsm.metrics.error import dnrmse, nrmse, pearson, psnr
from torchqsm.metrics.roi import roi_statistics
from torchqsm.metrics.structure import _ssim_and_xsim, hfen

__all__ = ["METRIC_DESCRIPTIONS", "score"]

#: Key of :func:`score`'s result → one-line description with unit.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "nrmse": "normalized RMSE, 100·‖x−y‖/‖y‖ in the mask (%; lower is better)",
    "nrmse_demeaned": "NRMSE after removing each image's mean in the mask (%; lower is better)",
    "dnrmse": "detrended, demeaned NRMSE of QSM challenge 2.0 (%; lower is better)",
    "hfen": "high-frequency error norm, NRMSE of LoG-filtered images, σ=1.5 voxels (%; lower is better)",
    "ssim": "structural similarity, Gaussian window σ=1.5 voxels, L=range of reference (1 = identical)",
    "xsim": "SSIM for QSM of challenge 2.0, k1=0.01, k2=0.001, L=1 ppm (1 = identical)",
    "psnr": "peak signal-to-noise ratio, L=range of reference in the mask (dB; inf = identical)",
    "pearson": "Pearson correlation coefficient in the mask (1 = perfectly correlated)",
    "roi": "per-label mean susceptibility (ppm) and slope/intercept/R² of estimated on reference means",
}


def score(
    estimate: ArrayLike,
    reference: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    labels: ArrayLike | None = None,
) -> dict[str, Any]:
    """Every metric of ``estimate`` against ``reference`` in one dictionary.

    Keys, in this order: ``"nrmse"``, ``"nrmse_demeaned"``, ``"dnrmse"``,
    ``"hfen"``, ``"ssim"``, ``"xsim"``, ``"psnr"``, ``"pearson"`` (floats, see
    :data:`METRIC_DESCRIPTIONS` for units), and ``"roi"`` (the JSON-ready
    :meth:`RoiStatistics.as_dict`) when ``labels`` is given. Every metric uses
    its default options.

    Parameters
    ----------
    estimate, reference
        Susceptibility maps (ppm) of shape ``(X, Y, Z)``.
    mask
        Boolean or 0/1 volume of the same shape; ``None`` uses every voxel.
        It restricts every voxel-wise metric, not the ROI statistics.
    labels
        Optional integer segmentation (0 = background) for the ROI statistics,
        used as given.

    Returns
    -------
    dict
        Metric name → value. ``"psnr"`` is ``inf`` for identical images.

    Raises
    ------
    ValueError
        Whatever the individual metrics raise (shape mismatch, empty mask,
        zero or constant reference in the mask ...).

    References
    ----------
    .. [1] Langkammer C, et al. Quantitative susceptibility mapping: Report
       from the 2016 reconstruction challenge. Magn Reson Med.
       2018;79:1661-1673. doi:10.1002/mrm.26830
    .. [2] Marques JP, et al. QSM reconstruction challenge 2.0. Magn Reson Med.
       2021;86:526-542. doi:10.1002/mrm.28716

    Examples
    --------
    >>> import torch
    >>> reference = torch.randn(12, 12, 12, generator=torch.Generator().manual_seed(0))
    >>> result = score(reference, reference)
    >>> list(result)
    ['nrmse', 'nrmse_demeaned', 'dnrmse', 'hfen', 'ssim', 'xsim', 'psnr', 'pearson']
    >>> result["nrmse"], result["psnr"]
    (0.0, inf)
    """
    # Convert and validate once; the metrics below then receive float64 tensors and a boolean mask.
    estimate, reference, mask = prepare(estimate, reference, mask)
    structural_similarity, susceptibility_similarity = _ssim_and_xsim(estimate, reference, mask)
    result: dict[str, Any] = {
        "nrmse": nrmse(estimate, reference, mask),
        "nrmse_demeaned": nrmse(estimate, reference, mask, demean=True),
        "dnrmse": dnrmse(estimate, reference, mask),
        "hfen": hfen(estimate, reference, mask),
        "ssim": structural_similarity,
        "xsim": susceptibility_similarity,
        "psnr": psnr(estimate, reference, mask),
        "pearson": pearson(estimate, reference, mask),
    }
    if labels is not None:
        result["roi"] = roi_statistics(estimate, reference, labels).as_dict()
    return result
