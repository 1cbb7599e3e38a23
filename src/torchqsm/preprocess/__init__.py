"""Pre-processing: phase scaling, masking, unwrapping, echo combination, background removal, referencing.

Each stage is a folder or module of its own, in the order the pipeline runs them:
:mod:`~torchqsm.preprocess.phase` (detect the stored scaling, rescale to radians),
:mod:`~torchqsm.preprocess.masking`, :mod:`~torchqsm.preprocess.unwrap`,
:mod:`~torchqsm.preprocess.echoes` and :mod:`~torchqsm.preprocess.differences` (phase against
echo time → frequency),
:mod:`~torchqsm.preprocess.background` (total field → local field) and
:mod:`~torchqsm.preprocess.referencing`.
"""

from .background import BACKGROUND_METHODS, BackgroundResult, ismv, lbv, pdf, resharp, sharp, vsharp
from .brain import extract_brain
from .differences import EchoDifferences, combine_differences, echo_differences
from .echoes import EchoFit, combine_echoes, field_ppm_from_frequency, per_echo_frequencies
from .masking import erode_mask, magnitude_mask, quality_mask
from .phase import PhaseScaling, apply_phase_sign, rescale_phase, wrap_phase
from .referencing import reference, reference_value
from .unwrap import UnwrapResult, laplacian_unwrap, region_growing_unwrap, romeo_quality, unwrap_echoes, voxel_quality

__all__ = [
    "PhaseScaling", "rescale_phase", "apply_phase_sign", "wrap_phase",
    "magnitude_mask", "quality_mask", "erode_mask", "extract_brain",
    "UnwrapResult", "laplacian_unwrap", "region_growing_unwrap", "romeo_quality", "voxel_quality", "unwrap_echoes",
    "EchoFit", "combine_echoes", "per_echo_frequencies", "field_ppm_from_frequency",
    "EchoDifferences", "echo_differences", "combine_differences",
    "BACKGROUND_METHODS", "BackgroundResult", "sharp", "vsharp", "resharp", "pdf", "lbv", "ismv",
    "reference", "reference_value",
]
