"""JSON provenance sidecars: what produced an output, from which inputs, how.

Every output image gets a ``.json`` beside it (``chi.nii.gz`` → ``chi.json``,
as in BIDS) recording the method, its parameters, the inputs with their
SHA-256 digests, and the software versions, so a result can be traced and
reproduced.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.metadata
import json
import math
import os
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchqsm.errors import InputError, ParameterError
from torchqsm.io._atomic import write_atomically

__all__ = ["write_sidecar", "read_sidecar", "sidecar_path_for", "json_safe", "sha256_of_file"]

# Arrays up to this many elements are written out in full (a B0 direction, an
# affine); larger ones only by kind, shape and dtype.
_MAX_LISTED_ELEMENTS = 16

_RESERVED_KEYS = (
    "Software",
    "Version",
    "Method",
    "Parameters",
    "Inputs",
    "Outputs",
    "Created",
    "Torch",
    "Python",
    "Platform",
)


def sidecar_path_for(nifti_path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar beside a NIfTI file: ``.nii``/``.nii.gz`` replaced by ``.json``.

    Raises
    ------
    InputError
        The name does not end in ``.nii`` or ``.nii.gz``.

    Examples
    --------
    >>> sidecar_path_for("out/sub-01_Chimap.nii.gz").as_posix()
    'out/sub-01_Chimap.json'
    """
    path = Path(nifti_path)
    name = path.name
    for extension in (".nii.gz", ".nii"):
        if name.lower().endswith(extension) and len(name) > len(extension):
            return path.with_name(name[: -len(extension)] + ".json")
    raise InputError("is not a NIfTI file name (.nii or .nii.gz)", source=str(path))


def _describe_array(kind: str, shape: tuple[int, ...], dtype: object) -> str:
    dtype_name = str(dtype).removeprefix("torch.")
    return f"<{kind} {'x'.join(str(n) for n in shape)} {dtype_name}>"


def _json_float(value: float) -> float | str:
    """JSON has no NaN or infinity: write them as the strings Python's ``float`` reads back."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def json_safe(value: Any) -> Any:
    """Convert ``value`` to plain JSON types, for a provenance record.

    Tuples and sets become lists, numpy and torch scalars Python numbers,
    paths strings, dataclasses and mappings objects (keys as strings), and
    dtypes, devices, enums and callables their names. Arrays and tensors with
    at most 16 elements become (nested) lists; larger ones a description
    such as ``"<array 3x64x64x64 float32>"``. NaN and infinities become the
    strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``. Anything else becomes
    its ``repr``.

    Examples
    --------
    >>> json_safe({"pad": (8, 8, 8), "b0_dir": np.array([0.0, 0.0, 1.0]),
    ...            "field": np.zeros((3, 64, 64, 64), np.float32)})
    {'pad': [8, 8, 8], 'b0_dir': [0.0, 0.0, 1.0], 'field': '<array 3x64x64x64 float32>'}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _json_float(float(value))
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, complex):
        return {"real": _json_float(value.real), "imag": _json_float(value.imag)}
    if isinstance(value, np.ndarray):
        if value.size <= _MAX_LISTED_ELEMENTS:
            return json_safe(value.tolist())
        return _describe_array("array", value.shape, value.dtype)
    if isinstance(value, torch.Tensor):
        if value.numel() <= _MAX_LISTED_ELEMENTS:
            return json_safe(value.detach().cpu().tolist())
        return _describe_array("tensor", tuple(value.shape), value.dtype)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: json_safe(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        items = [json_safe(item) for item in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (np.dtype, torch.dtype, torch.device)):
        return str(value).removeprefix("torch.")
    if isinstance(value, type) or callable(value):
        module = getattr(value, "__module__", None)
        name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
        if name:
            return f"{module}.{name}" if module else name
    return repr(value)


def sha256_of_file(path: str | os.PathLike[str]) -> str:
    """Hexadecimal SHA-256 digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _torchqsm_version() -> str:
    import torchqsm  # at call time: the top-level package may import io

    version = getattr(torchqsm, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("torchqsm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _describe_inputs(inputs: Mapping[str, str | os.PathLike[str]]) -> dict[str, dict[str, str]]:
    described = {}
    for name, file in inputs.items():
        path = Path(file)
        if not path.is_file():
            raise InputError(f"the {name} input file does not exist", source=str(path))
        try:
            digest = sha256_of_file(path)
        except OSError as error:
            raise InputError(
                f"cannot read the {name} input file: {error.strerror or error}", source=str(path)
            ) from error
        described[str(name)] = {"path": str(path.resolve()), "sha256": digest}
    return described


def write_sidecar(
    path: str | os.PathLike[str],
    *,
    method: str,
    parameters: Mapping[str, Any],
    inputs: Mapping[str, str | os.PathLike[str]],
    outputs: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a JSON provenance record, atomically.

    Parameters
    ----------
    path
        The ``.json`` file (see :func:`sidecar_path_for`); missing folders are created.
    method
        The method's registry name, e.g. ``"tkd"``.
    parameters
        Every parameter the method ran with, units in the names
        (``voxel_size_mm``); made JSON-safe by :func:`json_safe`.
    inputs
        Input files by role (``{"field": "sub-01_field.nii.gz"}``); each is
        recorded with its absolute path and SHA-256 digest.
    outputs
        Output files or values by role, recorded as given (JSON-safe).
    extra
        More top-level entries (e.g. BIDS fields); they may not reuse the
        names written here.
    overwrite
        Replace ``path`` if it exists.

    Returns
    -------
    Path
        ``path``. The record holds ``Software``, ``Version``, ``Method``,
        ``Parameters``, ``Inputs``, ``Outputs``, ``Created`` (ISO 8601, UTC),
        ``Torch``, ``Python``, ``Platform`` and the entries of ``extra``.

    Raises
    ------
    InputError
        An input file is missing or unreadable, or ``path`` exists and
        ``overwrite`` is false.
    ParameterError
        ``extra`` reuses a reserved name.
    """
    extra = dict(extra or {})
    clashes = sorted(set(extra) & set(_RESERVED_KEYS))
    if clashes:
        raise ParameterError(f"extra sidecar entries may not replace {', '.join(clashes)}")
    record = {
        "Software": "torchqsm",
        "Version": _torchqsm_version(),
        "Method": str(method),
        "Parameters": json_safe(dict(parameters)),
        "Inputs": _describe_inputs(inputs),
        "Outputs": json_safe(dict(outputs or {})),
        "Created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "Torch": torch.__version__,
        "Python": platform.python_version(),
        "Platform": platform.platform(),
        **json_safe(extra),
    }
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"

    def write(temporary: Path) -> None:
        temporary.write_text(text, encoding="utf-8")

    return write_atomically(path, write, overwrite=overwrite)


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON sidecar (ours or a BIDS one) as a dictionary.

    Raises
    ------
    InputError
        The file is missing or unreadable, is not valid JSON, or does not
        hold a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("the sidecar file does not exist", source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the sidecar file: {error}", source=str(path)) from error
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(
            f"the sidecar is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})",
            source=str(path),
        ) from None
    if not isinstance(record, dict):
        raise InputError(
            f"the sidecar holds a JSON {type(record).__name__}, not an object", source=str(path)
        )
    return record
