"""User-facing error hierarchy.

Every problem caused by the user's input (a file, a parameter, a shape) is
raised as a :class:`TorchQSMError`. The command line prints such errors as one
line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math

__all__ = ["TorchQSMError", "InputError", "ParameterError", "ResourceError", "check_positive", "check_voxel_size",
           "EXIT_CODES", "describe_failure"]

#: Exit status of the ``torchqsm`` command for each kind of ending (also in the README).
EXIT_CODES = {
    "ok": 0,
    "failed": 1,        # torchqsm run on BIDS: some subjects failed (each listed), the others finished
    "input": 2,         # a bad input file, parameter or usage: one line naming the file or option
    "system": 3,        # the operating system refused: permission, disk full, missing path, I/O error
    "memory": 4,        # not enough memory (CPU or GPU) for the volume
    "bug": 70,          # an internal error: traceback and a request to report it (EX_SOFTWARE)
    "interrupted": 130,  # Ctrl-C / SIGINT (128 + 2)
}


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


class ResourceError(TorchQSMError):
    """The input is valid but the machine lacks what it needs (memory); exit status 4 on the command line."""


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


def _is_out_of_memory(error: BaseException) -> bool:
    # torch raises RuntimeError (torch.OutOfMemoryError on CUDA) when an allocation fails.
    text = str(error)
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and (
        type(error).__name__ == "OutOfMemoryError" or "out of memory" in text
        or "can't allocate memory" in text or "not enough memory" in text))


def describe_failure(error: BaseException) -> tuple[str, str] | None:
    """``(kind, one line)`` for a failure the user or the machine caused; ``None`` for a bug.

    ``kind`` is a key of :data:`EXIT_CODES`: ``input`` (:class:`TorchQSMError`), ``system``
    (:class:`OSError`: permission, disk full, a path that vanished), ``memory``
    (:class:`MemoryError` and torch's allocation failures) or ``interrupted``.

    >>> describe_failure(PermissionError(13, "Permission denied", "/out/chi.nii.gz"))
    ('system', '/out/chi.nii.gz: Permission denied')
    >>> describe_failure(ZeroDivisionError("division by zero")) is None
    True
    """
    if isinstance(error, ResourceError):
        return "memory", str(error)
    if isinstance(error, TorchQSMError):
        return "input", str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", "interrupted"
    if _is_out_of_memory(error):
        detail = str(error).splitlines()[0][:200] if str(error) else "an allocation failed"
        return "memory", (f"not enough memory ({detail}); use a smaller volume, fewer parallel "
                          "workers or a machine with more memory")
    if isinstance(error, OSError):
        where = error.filename if error.filename is not None else None
        what = error.strerror or str(error) or type(error).__name__
        return "system", f"{where}: {what}" if where else what
    return None
