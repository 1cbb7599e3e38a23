"""User-facing error hierarchy.

Every problem caused by the user's input (a file, a parameter, a shape) is
raised as a :class:`TorchQSMError`. The command line prints such errors as one
line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math

__all__ = ["TorchQSMError", "InputError", "ParameterError", "check_positive", "check_voxel_size"]


class TorchQSMError(Exception):
    """Base class of every error that a user's input can cause.

    Parameters
    ----------
    message
        What is wrong, in one sentence.
    source
        The file (or parameter) the problem is in; printed before the message.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.message = message
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class InputError(TorchQSMError, ValueError):
    """An input array or file is unusable (shape, affine, NaN, empty mask ...)."""


class ParameterError(TorchQSMError, ValueError):
    """A method name or parameter is unknown or out of range."""


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """A finite positive (or non-negative) number, else :class:`ParameterError` naming ``name``.

    >>> check_positive("threshold", "0.2")
    0.2
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ParameterError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value!r}")
    return number


def check_voxel_size(voxel_size_mm) -> tuple[float, float, float]:
    """Three finite positive numbers (mm), else :class:`ParameterError`.

    >>> check_voxel_size([1, 1, 2])
    (1.0, 1.0, 2.0)
    """
    try:
        voxel = tuple(float(h) for h in voxel_size_mm)
    except (TypeError, ValueError):
        raise ParameterError(f"voxel_size_mm must be three numbers, got {voxel_size_mm!r}") from None
    if len(voxel) != 3 or any(not (math.isfinite(h) and h > 0) for h in voxel):
        raise ParameterError(f"voxel_size_mm must be three positive numbers, got {voxel_size_mm!r}")
    return voxel  # type: ignore[return-value]
