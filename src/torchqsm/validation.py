"""One validator for the arrays every method takes: fields, masks, magnitudes, phases; one loop rule.

The policy, the same for every inversion, background remover, unwrapper, network and
refinement:

- a field must be real, floating (integers become float32) and have the expected number of
  axes; its grid must equal the mask's;
- a mask must have a non-zero voxel; it becomes boolean (``binary=True``: it must also hold
  only 0 and 1, for masks that come from files, where a probability map is a mistake);
- a NaN or infinite value **inside the mask** is an error naming the array and the count;
  **outside the mask** it is set to zero (such voxels are ignored by every method) and the
  ``torchqsm`` logger says how many;
- a magnitude must be real, finite and non-negative in the mask, on the field's grid;
- without a mask (phase before masking, magnitudes for a mask) every voxel counts as inside;
- iteration limits (``max_iterations`` and every ``*_max_iterations``) are non-negative
  integers (0: no iteration, the starting point is returned); tolerances are numbers ≥ 0.

>>> import torch
>>> field = torch.zeros(4, 4, 4); field[0, 0, 0] = float("nan")
>>> mask = torch.zeros(4, 4, 4); mask[1:3, 1:3, 1:3] = 1
>>> clean, inside = field_and_mask(field, mask)
>>> bool(torch.isfinite(clean).all()), int(inside.sum())
(True, 8)
>>> check_iterations("max_iterations", 2.5)
Traceback (most recent call last):
...
torchqsm.errors.ParameterError: parameter 'max_iterations' must be a non-negative integer, got 2.5
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
from typing import Any

import numpy as np
import torch

from .errors import InputError, ParameterError

__all__ = ["check_local_field_units", "MIN_ECHO_TIME_S", "MAX_ECHO_TIME_S", "MAX_LOCAL_FIELD_SPAN_PPM", "as_tensor", "field_and_mask", "array_and_mask", "check_finite", "check_mask", "check_magnitude",
           "check_echo_times", "check_iterations", "check_tolerance", "check_loop_parameter", "LOG"]

LOG = logging.getLogger("torchqsm")


def as_tensor(value: Any, name: str, *, source: str | None = None) -> torch.Tensor:
    """``value`` as a tensor (numpy arrays and nested lists accepted), else :class:`InputError`.

    A numpy array is shared where it can be; big-endian or read-only ones (NIfTI memory maps)
    are copied into native, writable memory, which is all torch takes.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise InputError(f"{name} must be a numeric array, got dtype {value.dtype}", source=source)
        array = value.astype(value.dtype.newbyteorder("="), order="C", copy=False)
        return torch.from_numpy(array if array.flags.writeable else array.copy())
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{name} is not an array: {error}", source=source) from None


def _real_float(array: torch.Tensor, name: str, unit: str, source: str | None) -> torch.Tensor:
    if array.is_complex():
        raise InputError(f"{name} must be real ({unit}), got a complex array", source=source)
    if array.dtype == torch.bool or not array.is_floating_point():
        array = array.to(torch.float32)
    return array


def check_mask(mask: Any, shape: tuple[int, ...], *, device: torch.device | str | None = None,
               name: str = "mask", binary: bool = False, grid: str = "the field's grid",
               source: str | None = None) -> torch.Tensor:
    """A boolean mask on the grid ``shape`` with at least one voxel, else :class:`InputError`.

    ``binary``: values other than 0 and 1 are an error too. ``grid`` names ``shape`` in the message.
    """
    mask_t = as_tensor(mask, name, source=source)
    if tuple(mask_t.shape) != tuple(shape):
        raise InputError(f"{name} shape {tuple(mask_t.shape)} does not match {grid} {tuple(shape)}",
                         source=source)
    if mask_t.is_floating_point() and not bool(torch.isfinite(mask_t).all()):
        raise InputError(f"{name} has NaN or infinite voxels", source=source)
    if binary and mask_t.dtype != torch.bool and (mask_t.is_complex() or not bool(((mask_t == 0) | (mask_t == 1)).all())):
        raise InputError(f"{name} must be boolean or hold only 0 and 1", source=source)
    inside = (mask_t != 0).to(device if device is not None else mask_t.device)
    if not bool(inside.any()):
        raise InputError(f"{name} is empty (no non-zero voxel)", source=source)
    return inside


def _grid_array(array: Any, name: str, unit: str, leading: int | None, min_size: int,
                source: str | None) -> torch.Tensor:
    """A real floating tensor with the grid as its last three axes (after ``leading`` ones; None: any)."""
    array_t = _real_float(as_tensor(array, name, source=source), name, unit, source)
    if (array_t.ndim < 3) if leading is None else (array_t.ndim != 3 + leading):
        if leading is None:
            want = "at least 3-D (leading axes first)"
        else:
            want = "3-D" if leading == 0 else f"{3 + leading}-D ({leading} leading axis first)"
        raise InputError(f"{name} is {array_t.ndim}-D {tuple(array_t.shape)}; a {want} array is needed",
                         source=source)
    if min(array_t.shape[-3:]) < min_size:
        raise InputError(f"{name} has an axis shorter than {min_size} voxels: {tuple(array_t.shape)}", source=source)
    return array_t


def check_finite(array: torch.Tensor, inside: torch.Tensor | None = None, *, name: str,
                 source: str | None = None) -> torch.Tensor:
    """The NaN policy on ``array``: non-finite values inside ``inside`` (None: anywhere) are an
    :class:`InputError` with their count; outside they become zero and the log says how many."""
    finite = torch.isfinite(array)
    if bool(finite.all()):
        return array
    bad_inside = int((~finite).sum()) if inside is None else int((~finite & inside).sum())
    if bad_inside:
        where = "" if inside is None else " inside the mask"
        raise InputError(f"{name} has {bad_inside} NaN or infinite voxels{where}", source=source)
    LOG.info("%s%s: %d NaN or infinite voxels outside the mask set to zero",
             f"{source}: " if source else "", name, int((~finite).sum()))
    return torch.where(finite, array, torch.zeros((), dtype=array.dtype, device=array.device))


def field_and_mask(field: Any, mask: Any, *, name: str = "local_field_ppm", unit: str = "ppm", leading: int = 0,
                   min_size: int = 1, source: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A field and its mask, checked by the policy above: (floating field zero where not finite outside, bool mask).

    Parameters
    ----------
    field
        ``(X, Y, Z)``, or with ``leading`` axes before the grid (``(N, X, Y, Z)`` for COSMOS).
    mask
        ``(X, Y, Z)``.
    name, unit
        Named in error messages (``local_field_ppm``, ``ppm``; ``phase_rad``, ``radians`` ...).
    min_size
        Smallest length of a grid axis.
    source
        The file the arrays came from, named in the message.
    """
    field_t = _grid_array(field, name, unit, leading, min_size, source)
    inside = check_mask(mask, tuple(field_t.shape[-3:]), device=field_t.device, source=source)
    return check_finite(field_t, inside, name=name, source=source), inside


def array_and_mask(array: Any, mask: Any | None = None, *, name: str, unit: str, leading: int | None = 0,
                   min_size: int = 1, source: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`field_and_mask` for any array on a grid (phase, χ, quality) whose mask may be absent.

    ``mask=None``: every voxel is inside (so any NaN is an error) and the mask returned is all True.
    ``leading=None`` allows any number of leading axes (echoes, a batch).

    >>> phase, inside = array_and_mask(torch.zeros(2, 3, 3, 3), name="phase_rad", unit="radians", leading=None)
    >>> tuple(phase.shape), bool(inside.all())
    ((2, 3, 3, 3), True)
    """
    array_t = _grid_array(array, name, unit, leading, min_size, source)
    if mask is None:
        everywhere = torch.ones(array_t.shape[-3:], dtype=torch.bool, device=array_t.device)
        return check_finite(array_t, name=name, source=source), everywhere
    inside = check_mask(mask, tuple(array_t.shape[-3:]), device=array_t.device, source=source)
    return check_finite(array_t, inside, name=name, source=source), inside


def check_magnitude(magnitude: Any, shape: tuple[int, ...], mask: torch.Tensor | None = None, *,
                    name: str = "magnitude", dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None, source: str | None = None) -> torch.Tensor:
    """A real magnitude of ``shape``, finite and non-negative (in ``mask`` when given; zero elsewhere)."""
    mag = _real_float(as_tensor(magnitude, name, source=source), name, "arbitrary units", source)
    if tuple(mag.shape) != tuple(shape):
        raise InputError(f"{name} shape {tuple(mag.shape)} does not match the field's grid {tuple(shape)}",
                         source=source)
    mag = mag.to(device=device if device is not None else mag.device, dtype=dtype or mag.dtype)
    region = torch.ones_like(mag, dtype=torch.bool) if mask is None else mask.to(mag.device).expand_as(mag) != 0
    nonfinite, negative = ~torch.isfinite(mag), mag < 0
    bad = nonfinite | negative
    if bool((bad & region).any()):
        counts = ((int((nonfinite & region).sum()), "NaN or infinite voxels"),
                  (int((negative & region).sum()), "negative values"))
        what = ", ".join(f"{count} {kind}" for count, kind in counts if count)
        raise InputError(f"{name} must be finite and non-negative{' in the mask' if mask is not None else ''} "
                         f"({what})", source=source)
    if bool(bad.any()):
        mag = torch.where(bad, torch.zeros((), dtype=mag.dtype, device=mag.device), mag)
    return mag


#: Echo times a gradient echo acquisition can have (s): ultra-short TE sequences start near
#: 0.1 ms; T2* of tissue (< 100 ms at 1.5 T) leaves no signal to QSM beyond 200 ms.
MIN_ECHO_TIME_S, MAX_ECHO_TIME_S = 1e-4, 0.2

#: A local field whose 1st-99th percentile span inside the mask exceeds this (ppm) is not a
#: tissue field: the shared in vivo crop spans 0.11 ppm, veins (0.45 ppm χ) and haemorrhage
#: (up to 1.2 ppm χ) make fields of a fraction of their χ. The same field in Hz at 3 T is
#: 128× larger (14 Hz), at 1.5 T 64× (6.8), and ppm written as parts (×1e6) a million times.
MAX_LOCAL_FIELD_SPAN_PPM = 3.0


def check_local_field_units(field_ppm, mask, *, source: str | None = None) -> float:
    """The 1st-99th percentile span (ppm) of a local field inside ``mask``; :class:`InputError`
    when it is beyond any tissue (:data:`MAX_LOCAL_FIELD_SPAN_PPM`): a field in Hz or scaled.

    >>> import torch
    >>> field = torch.linspace(-0.1, 0.1, 1000).reshape(10, 10, 10)
    >>> round(check_local_field_units(field, torch.ones(10, 10, 10, dtype=torch.bool)), 3)
    0.196
    """
    values = torch.as_tensor(field_ppm)
    inside = values[torch.as_tensor(mask).to(torch.bool)] if values.shape == torch.as_tensor(mask).shape else values
    if inside.numel() == 0:
        return 0.0
    sample = inside.reshape(-1).to(torch.float64)
    if sample.numel() > 1_000_000:  # the span of a strided subsample is as good and costs nothing
        sample = sample[:: sample.numel() // 1_000_000]
    low, high = torch.quantile(sample, torch.tensor([0.01, 0.99], dtype=torch.float64)).tolist()
    span = high - low
    if span > MAX_LOCAL_FIELD_SPAN_PPM:
        raise InputError(f"the local field spans {span:.4g} ppm (1st to 99th percentile in the mask), far beyond "
                         f"a tissue field (under {MAX_LOCAL_FIELD_SPAN_PPM:g} ppm): is it in Hz (divide by 42.58 × B0 in T), "
                         "scaled (×1e6), or a total field with its background? torchqsm invert takes a local field "
                         "in ppm of B0", source=source)
    return span


def check_echo_times(echo_times_s: Any, count: int | None = None) -> tuple[float, ...]:
    """Echo times (s): positive, finite, under 1 s (milliseconds are a mistake), strictly increasing.

    ``count``: the number of echoes of the data. Missing times or the wrong number of them are an
    :class:`InputError` (the data and its sidecars disagree); bad values a :class:`ParameterError`.

    >>> check_echo_times([0.004, 0.008], 2)
    (0.004, 0.008)
    """
    if echo_times_s is None:
        raise InputError("echo times are missing: pass echo_times_s, one per echo, in seconds")
    if isinstance(echo_times_s, numbers.Real) and not isinstance(echo_times_s, bool):
        echo_times_s = (echo_times_s,)  # one echo
    try:
        values = echo_times_s.reshape(-1).tolist() if isinstance(echo_times_s, torch.Tensor) else echo_times_s
        times = tuple(float(t) for t in values)
    except (TypeError, ValueError):
        raise ParameterError(f"echo_times_s must be a sequence of numbers (s), got {echo_times_s!r}") from None
    if not times:
        raise InputError("echo times are missing: echo_times_s is empty")
    if count is not None and len(times) != count:
        raise InputError(f"{len(times)} echo times for {count} echoes (echo_times_s must have one per echo)")
    if not all(math.isfinite(t) and t > 0 for t in times):
        raise ParameterError(f"echo times must be positive and finite (s), got {list(times)}")
    if any(t > 1.0 for t in times):
        raise ParameterError(f"echo times are in seconds; {max(times):g} s looks like milliseconds "
                             "(e.g. 0.004, not 4)")
    if any(t < MIN_ECHO_TIME_S or t > MAX_ECHO_TIME_S for t in times):
        raise ParameterError(f"echo times must lie in a gradient echo's range, {MIN_ECHO_TIME_S * 1e3:g} to "
                             f"{MAX_ECHO_TIME_S * 1e3:g} ms; got {', '.join(f'{t * 1e3:g}' for t in times)} ms "
                             "(are they in seconds?)")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ParameterError(f"echo times must increase from echo to echo (be strictly increasing), got {list(times)}")
    return times


def check_iterations(name: str, value: Any) -> int:
    """An iteration limit: a non-negative integer (0: no iteration), else :class:`ParameterError`."""
    try:
        count = operator.index(value)
    except TypeError:
        raise ParameterError(f"parameter '{name}' must be a non-negative integer, got {value!r}") from None
    if isinstance(value, bool) or count < 0:
        raise ParameterError(f"parameter '{name}' must be a non-negative integer, got {value!r}")
    return int(count)


def check_tolerance(name: str, value: Any) -> float:
    """A stopping tolerance: a finite number ≥ 0, else :class:`ParameterError`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"parameter '{name}' must be a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ParameterError(f"parameter '{name}' must be a non-negative number, got {value!r}")
    return number


def check_loop_parameter(name: str, value: Any) -> Any:
    """The one loop rule, by name: ``*max_iterations`` by :func:`check_iterations`, ``*tolerance`` by
    :func:`check_tolerance`; anything else is returned unchanged."""
    if name == "max_iterations" or name.endswith("_max_iterations"):
        return check_iterations(name, value)
    if name == "tolerance" or name.endswith("_tolerance"):
        return check_tolerance(name, value)
    return value
