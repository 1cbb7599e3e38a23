"""Background-field removal: total field (ppm) → local field (ppm) on a (possibly eroded) mask.

Every method shares ``method(total_field_ppm, mask, *, voxel_size_mm, b0_dir,
...) -> BackgroundResult``; :data:`BACKGROUND_METHODS` maps names to them.
"""

from collections.abc import Callable

from ._common import BackgroundResult
from .lbv import ismv, lbv
from .learned import nextqsm
from .pdf import pdf
from .sharp import resharp, sharp, vsharp

__all__ = ["BackgroundResult", "BACKGROUND_METHODS", "sharp", "vsharp", "resharp", "pdf", "lbv", "ismv", "nextqsm"]

#: Every background-removal method by name.
BACKGROUND_METHODS: dict[str, Callable[..., BackgroundResult]] = {
    "sharp": sharp,
    "vsharp": vsharp,
    "resharp": resharp,
    "pdf": pdf,
    "lbv": lbv,
    "ismv": ismv,
    "nextqsm": nextqsm,
}
