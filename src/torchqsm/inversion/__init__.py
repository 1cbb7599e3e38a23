"""Classical dipole inversions: local field (ppm) → χ (ppm), one function per method.

Every method shares ``method(local_field_ppm, mask, *, voxel_size_mm, b0_dir,
pad, ...)``; COSMOS takes ``N`` fields and ``N`` directions.
"""

from .cosmos import cosmos
from .direct import tikhonov, tkd, tsvd
from .iterative import l2, ndi
from .medi import edge_mask, medi
from .tv import tv

__all__ = ["tkd", "tsvd", "tikhonov", "l2", "tv", "ndi", "medi", "cosmos", "edge_mask"]
