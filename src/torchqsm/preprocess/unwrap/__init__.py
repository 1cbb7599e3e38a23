"""Phase unwrapping: Laplacian (smooth), quality-guided region growing (exact 2π multiples), echoes in time.

* :func:`laplacian_unwrap` — least-squares estimate through an FFT Poisson solve;
* :func:`romeo_quality`, :func:`voxel_quality` — ROMEO edge and voxel quality;
* :func:`region_growing_unwrap` — maximum-quality spanning tree, returns :class:`UnwrapResult`;
* :func:`unwrap_echoes` — first echo spatially, later echoes by temporal prediction.
"""

from .laplacian import laplacian_unwrap
from .quality import romeo_quality, voxel_quality
from .region_growing import UnwrapResult, region_growing_unwrap
from .temporal import unwrap_echoes

__all__ = ["laplacian_unwrap", "romeo_quality", "voxel_quality", "region_growing_unwrap", "UnwrapResult",
           "unwrap_echoes"]
