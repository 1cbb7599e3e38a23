"""torchqsm: quantitative susceptibility mapping in PyTorch.

>>> import torchqsm
>>> sorted(torchqsm.METHODS)[:3]
['cosmos', 'l2', 'lpcnn']

The public names load on first use (PEP 562), so ``import torchqsm`` and the command
line's start-up stay light until torch is needed: the ``torchqsm`` command installs its
error handling (one line and an exit status for an interrupt or an I/O error) before
torch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import InputError, ParameterError, TorchQSMError  # noqa: E402  (light: no torch)

if TYPE_CHECKING:  # pragma: no cover
    from .acquisition import Acquisition
    from .pipeline.registry import METHODS, get_method, invert

__all__ = ["__version__", "Acquisition", "invert", "METHODS", "get_method", "TorchQSMError", "InputError", "ParameterError"]

_LAZY = {"Acquisition": ".acquisition", "METHODS": ".pipeline.registry", "get_method": ".pipeline.registry",
         "invert": ".pipeline.registry"}


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    try:  # torchqsm.io, torchqsm.simulate, ...: a subpackage, imported on first use
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
