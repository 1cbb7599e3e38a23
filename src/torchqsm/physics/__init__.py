"""QSM physics: units, geometry, dipole kernels, linear operators, LoT.

This package imports nothing else of torchqsm.
"""

from .geometry import b0_dir_from_affine, normalize_b0_dir, tilt_b0_dir, voxel_size_from_affine
from .kernels import dipole_kernel, gradient_gram_symbol, kspace_frequencies, laplacian_symbol
from .lot import laplacian_of_wrapped_phase
from .operators import (
    DipoleOp,
    FourierMultiplierOp,
    GradientOp,
    IdentityOp,
    LaplacianOp,
    LinearOperator,
    MaskOp,
    PadOp,
    WeightOp,
    padding_for,
)
from .units import (
    GAMMA_BAR_MHZ_PER_T,
    hz_per_ppm,
    hz_to_phase,
    hz_to_ppm,
    phase_to_hz,
    phase_to_ppm,
    ppm_to_hz,
    ppm_to_phase,
    radians_per_ppm,
)

__all__ = [
    "GAMMA_BAR_MHZ_PER_T", "hz_per_ppm", "hz_to_phase", "hz_to_ppm", "phase_to_hz", "phase_to_ppm",
    "ppm_to_hz", "ppm_to_phase", "radians_per_ppm",
    "b0_dir_from_affine", "normalize_b0_dir", "tilt_b0_dir", "voxel_size_from_affine",
    "dipole_kernel", "gradient_gram_symbol", "kspace_frequencies", "laplacian_symbol",
    "laplacian_of_wrapped_phase",
    "LinearOperator", "IdentityOp", "FourierMultiplierOp", "DipoleOp", "PadOp", "WeightOp", "MaskOp",
    "GradientOp", "LaplacianOp", "padding_for",
]
