"""Classical dipole inversions: local field (ppm) → χ (ppm), one function per method.

Every method shares ``method(local_field_ppm, mask, acquisition=None, *, voxel_size_mm=None,
b0_dir=None, pad=None, kernel_form=None, ...)``: the acquisition record
(:class:`torchqsm.Acquisition`) carries geometry, field strength, echo times, padding and
kernel form, and the keywords override it; without a record, ``voxel_size_mm`` and
``b0_dir`` are required. COSMOS takes ``N`` fields and the record's ``N`` orientations.
"""

from .cosmos import cosmos
from .direct import tikhonov, tkd, tsvd
from .iterative import l2, ndi
from .medi import edge_mask, medi
from .tv import tv

__all__ = ["tkd", "tsvd", "tikhonov", "l2", "tv", "ndi", "medi", "cosmos", "edge_mask"]
