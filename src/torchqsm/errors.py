"""User-facing error hierarchy.

Every problem caused by the user's input (a file, a parameter, a shape) is
raised as a :class:`TorchQSMError`. The command line prints such errors as one
line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["TorchQSMError", "InputError", "ParameterError"]


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
