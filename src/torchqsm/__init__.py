"""torchqsm: quantitative susceptibility mapping in PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import InputError, ParameterError, TorchQSMError  # noqa: E402

__all__ = ["__version__", "TorchQSMError", "InputError", "ParameterError"]
