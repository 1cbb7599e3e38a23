r"""The acquisition record: the physics of one data set, made once and passed to every method.

An :class:`Acquisition` holds what the dipole model and the nonlinear data terms need to
know about the scan — voxel size (mm), B0 direction (voxel coordinates), field strength
(T), echo times (s) — and how the dipole operator is discretised (zero padding, kernel
form). It is frozen and validated once, when it is made; :mod:`torchqsm.io` makes it from a
NIfTI header and BIDS sidecars (:func:`torchqsm.io.acquisition_from_nifti`), the CLI from
its flags, and every inversion, refinement and network receives it, so no method falls
back on a silent 1 mm, axial, 3 T or 20 ms. ``sources`` says where each value came from
(``header``, ``sidecar``, ``flag``, ``given``); the JSON sidecar of every output records it.

>>> acq = Acquisition(voxel_size_mm=(1, 1, 2), b0_dir=(0, 0, 2), b0_tesla=7.0, echo_times_s=(0.004, 0.008))
>>> acq.b0_dir, acq.echo_time_s
((0.0, 0.0, 1.0), 0.004)
>>> round(acq.radians_per_ppm(), 3)
7.491
>>> Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1)).radians_per_ppm(method="ndi")
Traceback (most recent call last):
...
torchqsm.errors.ParameterError: ndi needs the field strength and echo times of the acquisition ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np
import torch

from .errors import InputError, ParameterError, check_voxel_size
from .physics import DipoleOp, normalize_b0_dir
from .physics.kernels import KernelForm
from .physics.units import radians_per_ppm
from .validation import check_echo_times

__all__ = ["Acquisition", "DEFAULT_PAD", "KernelForm", "as_acquisition", "pad_tuple"]

#: Zero padding (voxels per side) of the dipole operator unless the record says otherwise.
DEFAULT_PAD: tuple[int, int, int] = (16, 16, 16)

#: Field strengths a human scanner can have (T): anything outside is a unit mistake.
_B0_RANGE_T = (0.05, 21.1)
Vector3 = tuple[float, float, float]
Source = Literal["header", "sidecar", "flag", "given", "default"]


def pad_tuple(pad: Any) -> tuple[int, int, int]:
    """Zero padding as three non-negative integers (one integer means the same on each axis).

    >>> pad_tuple(8), pad_tuple([0, 4, 4])
    ((8, 8, 8), (0, 4, 4))
    """
    if isinstance(pad, (int, float)) and not isinstance(pad, bool):
        pad = (pad, pad, pad)
    try:
        values = tuple(int(p) for p in pad)
    except (TypeError, ValueError):
        raise ParameterError(f"pad must be an integer or three integers, got {pad!r}") from None
    if len(values) != 3 or any(p < 0 for p in values) or any(float(p) != float(q) for p, q in zip(values, pad)):
        raise ParameterError(f"pad must be three non-negative integers, got {pad!r}")
    return values  # type: ignore[return-value]


def _directions(b0_dir: Any) -> tuple[Vector3, ...]:
    """One B0 direction or several (one per orientation), each scaled to unit length."""
    try:
        array = np.asarray(b0_dir.detach().cpu() if isinstance(b0_dir, torch.Tensor) else b0_dir, dtype=np.float64)
        rows = array if array.ndim == 2 else array.reshape(1, -1)
        if rows.shape[0] == 0:
            raise ValueError("no direction given")
        return tuple(normalize_b0_dir(b) for b in rows)
    except (TypeError, ValueError) as error:
        raise ParameterError(f"b0_dir must be a 3-vector (or one per orientation), not zero: {error}") from None


@dataclass(frozen=True)
class Acquisition:
    """The physics of one acquisition, validated once.

    Parameters
    ----------
    voxel_size_mm
        Voxel size (mm) along the three array axes.
    b0_dir
        B0 direction in voxel coordinates (any non-zero length; stored as a unit vector).
        For multi-orientation data (COSMOS) one direction per orientation: ``orientations``
        holds them all and ``b0_dir`` the first.
    b0_tesla
        Field strength (T), or None when unknown (methods that need it then refuse to run).
    echo_times_s
        Echo times (s), increasing, or None when unknown.
    pad
        Zero padding (voxels per side) of the dipole operator: one integer or three.
    kernel_form
        ``kspace`` (the continuous kernel sampled at the FFT frequencies) or ``image``
        (the voxel-integrated kernel, transformed); see :func:`torchqsm.physics.dipole_kernel`.
    sources
        Where each value came from (``header``, ``sidecar``, ``flag``, ``given``); recorded
        in output sidecars. Not part of equality.
    """

    voxel_size_mm: Vector3
    b0_dir: Vector3
    b0_tesla: float | None = None
    echo_times_s: tuple[float, ...] | None = None
    pad: tuple[int, int, int] = DEFAULT_PAD
    kernel_form: KernelForm = "kspace"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    orientations: tuple[Vector3, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "voxel_size_mm", check_voxel_size(self.voxel_size_mm))
        directions = _directions(self.orientations if self.orientations else self.b0_dir)
        object.__setattr__(self, "orientations", directions)
        object.__setattr__(self, "b0_dir", directions[0])
        if self.b0_tesla is not None:
            try:
                tesla = float(self.b0_tesla)
            except (TypeError, ValueError):
                raise ParameterError(f"field strength must be a number of tesla, got {self.b0_tesla!r}") from None
            if not (math.isfinite(tesla) and _B0_RANGE_T[0] <= tesla <= _B0_RANGE_T[1]):
                raise ParameterError(f"field strength must be between {_B0_RANGE_T[0]} and {_B0_RANGE_T[1]} T, "
                                     f"got {self.b0_tesla!r}")
            object.__setattr__(self, "b0_tesla", tesla)
        if self.echo_times_s is not None:
            object.__setattr__(self, "echo_times_s", _echo_times(self.echo_times_s))
        object.__setattr__(self, "pad", pad_tuple(self.pad))
        if self.kernel_form not in get_args(KernelForm):
            raise ParameterError(f"kernel_form must be one of {', '.join(get_args(KernelForm))}, "
                                 f"got {self.kernel_form!r}")
        object.__setattr__(self, "sources", MappingProxyType(dict(self.sources)))

    # -- derived values ----------------------------------------------------------------

    @property
    def is_oblique(self) -> bool:
        """Whether B0 is off the third voxel axis by more than 0.1°."""
        return abs(self.b0_dir[2]) < math.cos(math.radians(0.1))

    @property
    def echo_time_s(self) -> float | None:
        r"""The echo time (s) at which nonlinear data terms (``tv`` nonlinear, ``ndi``, ``medi``) see the field.

        One echo: its TE. Several: the shortest, :math:`\min_e TE_e`. The combined field's
        phase error is no larger than at the first echo, and there the exponential model is
        least wrapped; for echoes at :math:`TE_e = e\,\Delta TE` this is the echo spacing,
        the scale at which the MEDI toolbox evaluates its nonlinear term.
        """
        return None if not self.echo_times_s else min(self.echo_times_s)

    def require(self, *names: str, method: str) -> None:
        """Raise one :class:`ParameterError` if ``method`` needs values this record lacks."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            words = {"b0_tesla": "field strength", "echo_times_s": "echo times"}
            raise ParameterError(
                f"{method} needs the {' and '.join(words.get(n, n) for n in missing)} of the acquisition "
                "(Acquisition(b0_tesla=..., echo_times_s=...); on the command line: BIDS sidecars or "
                "--b0-tesla / --echo-times)")

    def radians_per_ppm(self, *, method: str = "this method") -> float:
        """rad/ppm at :attr:`echo_time_s` and :attr:`b0_tesla` (the scale of the nonlinear data terms)."""
        self.require("b0_tesla", "echo_times_s", method=method)
        return radians_per_ppm(echo_time_s=self.echo_time_s, b0_tesla=self.b0_tesla)  # type: ignore[arg-type]

    def dipole(self, shape: Sequence[int], *, b0_dir: Sequence[float] | None = None,
               pad: int | Sequence[int] | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> DipoleOp:
        """The dipole operator χ (ppm) → field (ppm) on ``shape`` with this record's padding and kernel."""
        return DipoleOp(shape, voxel_size_mm=self.voxel_size_mm, b0_dir=self.b0_dir if b0_dir is None else b0_dir,
                        pad=self.pad if pad is None else pad, form=self.kernel_form, dtype=dtype, device=device)

    # -- changes and records -----------------------------------------------------------

    def with_values(self, source: str = "given", **changes: Any) -> Acquisition:
        """A copy with some values replaced (None leaves a value as it is), noting their source."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "b0_dir" in changes:
            changes["orientations"] = ()
        if not changes:
            return self
        sources = {**self.sources, **{k: source for k in changes if k != "orientations"}}
        return replace(self, **changes, sources=sources)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values and their sources (for sidecars and logs)."""
        out: dict[str, Any] = {
            "voxel_size_mm": list(self.voxel_size_mm),
            "b0_dir": list(self.b0_dir) if len(self.orientations) == 1 else [list(b) for b in self.orientations],
            "b0_tesla": self.b0_tesla,
            "echo_times_s": None if self.echo_times_s is None else list(self.echo_times_s),
            "pad": list(self.pad),
            "kernel_form": self.kernel_form,
        }
        if self.sources:
            out["sources"] = dict(self.sources)
        return out

    def describe(self) -> str:
        """One log line: the values and where they came from."""
        def value(name: str, text: str) -> str:
            source = self.sources.get(name)
            return f"{text} ({source})" if source else text

        parts = [value("voxel_size_mm", "voxel " + "x".join(f"{h:g}" for h in self.voxel_size_mm) + " mm"),
                 value("b0_dir", "B0 dir (" + ", ".join(f"{b:.3f}" for b in self.b0_dir) + ")")]
        if self.b0_tesla is not None:
            parts.append(value("b0_tesla", f"{self.b0_tesla:g} T"))
        if self.echo_times_s:
            parts.append(value("echo_times_s", "TE " + ", ".join(f"{t * 1e3:g}" for t in self.echo_times_s) + " ms"))
        return "acquisition: " + ", ".join(parts)


def _echo_times(values: Any) -> tuple[float, ...]:
    try:
        return check_echo_times(values)
    except InputError as error:  # an empty list: a bad value here, not missing data
        raise ParameterError(str(error)) from None


def as_acquisition(acquisition: Acquisition | None = None, *, method: str = "invert", **values: Any) -> Acquisition:
    """The record a method runs with: ``acquisition`` with keyword ``values`` replacing its own.

    Without a record, ``voxel_size_mm`` and ``b0_dir`` are required: no method assumes 1 mm
    or an axial B0. Keyword values are ``voxel_size_mm``, ``b0_dir``, ``b0_tesla``,
    ``echo_times_s``, ``pad`` and ``kernel_form``; None means "the record's".

    >>> as_acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), pad=0).pad
    (0, 0, 0)
    >>> as_acquisition(method="tkd")
    Traceback (most recent call last):
    ...
    torchqsm.errors.ParameterError: tkd needs the voxel size and the B0 direction...
    """
    if acquisition is not None and not isinstance(acquisition, Acquisition):
        raise ParameterError(f"acquisition must be a torchqsm.Acquisition, got {type(acquisition).__name__}")
    if acquisition is None:
        missing = [w for n, w in (("voxel_size_mm", "voxel size"), ("b0_dir", "B0 direction"))
                   if values.get(n) is None]
        if missing:
            raise ParameterError(
                f"{method} needs the {' and the '.join(missing)}: pass acquisition=Acquisition(voxel_size_mm=..., "
                "b0_dir=...), or voxel_size_mm= and b0_dir=, or build the record from a NIfTI file with "
                "torchqsm.io.acquisition_from_nifti(path)")
        given = {k: v for k, v in values.items() if v is not None}
        return Acquisition(**given, sources={k: "given" for k in given})
    return acquisition.with_values("given", **values)
