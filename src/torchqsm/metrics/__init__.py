"""Image-quality metrics for susceptibility maps (ppm).

Every metric takes ``(estimate, reference, mask=None)`` as tensors or numpy
arrays, computes in float64, restricts itself to the mask and returns a
Python ``float`` (or a frozen dataclass for the ROI statistics).

==================  ==========================================================
``nrmse``           normalized RMSE (%), optionally demeaned
``dnrmse``          detrended NRMSE of QSM challenge 2.0 (%)
``psnr``            peak signal-to-noise ratio (dB)
``pearson``         Pearson correlation coefficient
``hfen``            high-frequency error norm, LoG σ = 1.5 voxels (%)
``ssim``            structural similarity (Gaussian window σ = 1.5 voxels)
``xsim``            SSIM for QSM of challenge 2.0 (k2 = 0.001, L = 1 ppm)
``roi_statistics``  per-label means and the linearity slope
``score``           all of the above in one dictionary
==================  ==========================================================
"""

from torchqsm.metrics.error import dnrmse, nrmse, pearson, psnr
from torchqsm.metrics.roi import RoiRow, RoiStatistics, roi_statistics
from torchqsm.metrics.structure import hfen, laplacian_of_gaussian_kernel, ssim, xsim
from torchqsm.metrics.summary import METRIC_DESCRIPTIONS, score

__all__ = [
    "METRIC_DESCRIPTIONS",
    "RoiRow",
    "RoiStatistics",
    "dnrmse",
    "hfen",
    "laplacian_of_gaussian_kernel",
    "nrmse",
    "pearson",
    "psnr",
    "roi_statistics",
    "score",
    "ssim",
    "xsim",
]
