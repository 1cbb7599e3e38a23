"""Guards that run before a NIfTI image's voxels are read: the file can hold them, memory can take them.

A header can claim any shape. Reading it blindly turns a truncated download into a traceback deep
in zlib, or a 10¹² voxel claim into the kernel's OOM killer. These checks refuse such files from
the header and the file's size alone, in one sentence naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from torchqsm.errors import InputError, ResourceError

__all__ = ["format_shape", "check_stored_size", "check_memory"]


def format_shape(shape: Sequence[int]) -> str:
    """``(64, 64, 60)`` → ``"64×64×60"``, the way shapes appear in messages."""
    return "×".join(str(int(n)) for n in shape)


def _human(count: int | float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} PB"  # pragma: no cover


#: Deflate never compresses more than 1032:1, so a .nii.gz holds at most this many bytes per stored byte.
_GZIP_MAX_RATIO = 1032


def check_stored_size(image: nib.Nifti1Image, path: Path, role: str) -> int:
    """The array's size (bytes) as the header claims it, refused when the file cannot hold it."""
    header = image.header
    shape = tuple(int(n) for n in header.get_data_shape())
    count = math.prod(shape)
    nbytes = count * header.get_data_dtype().itemsize
    stored_offset = float(header["vox_offset"])  # get_data_offset() reads 0 for some values nibabel reads at
    if not math.isfinite(stored_offset) or stored_offset < 0:
        raise InputError(f"the {role} header's vox_offset is {stored_offset:g}, not a byte position", source=str(path))
    offset = max(int(stored_offset), 352)  # a single-file NIfTI-1 has its data after byte 352
    stored = path.stat().st_size
    compressed = path.name.lower().endswith(".gz")
    room = stored * _GZIP_MAX_RATIO + 65536 if compressed else stored - offset
    if offset + nbytes > (room if compressed else stored):
        holds = f"at most {_human(room)} once decompressed" if compressed else f"{_human(max(room, 0))} of data"
        raise InputError(
            f"the {role} header claims a {format_shape(shape)} array of {header.get_data_dtype()} "
            f"({_human(nbytes)}) but the file holds {holds}: it is truncated or its header is wrong",
            source=str(path))
    return count


def _available_memory_bytes() -> int:
    """Memory the system can give this process now (bytes)."""
    import psutil  # a dependency of dask.distributed

    return int(psutil.virtual_memory().available)


def check_memory(count: int, dtype: np.dtype, on_disk: np.dtype, *, role: str, source: str) -> None:
    """Refuse (:class:`~torchqsm.errors.ResourceError`) an array that would not fit in available memory."""
    need = count * (np.dtype(dtype).itemsize + np.dtype(on_disk).itemsize)  # the raw read and the result
    available = _available_memory_bytes()
    if need > available:
        raise ResourceError(f"reading the {role} image needs {_human(need)} of memory but {_human(available)} "
                            "is available", source=source)
