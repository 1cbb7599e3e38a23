"""torchqsm: quantitative susceptibility mapping in PyTorch.

>>> import torchqsm
>>> sorted(torchqsm.METHODS)[:3]
['cosmos', 'l2', 'medi']
"""

from __future__ import annotations

__version__ = "0.1.0"

from .acquisition import Acquisition  # noqa: E402
from .errors import InputError, ParameterError, TorchQSMError  # noqa: E402
from .pipeline.registry import METHODS, get_method, invert  # noqa: E402

__all__ = ["__version__", "Acquisition", "invert", "METHODS", "get_method", "TorchQSMError", "InputError", "ParameterError"]
