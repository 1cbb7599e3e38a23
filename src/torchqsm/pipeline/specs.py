r"""Parameter records for any step: a frozen dataclass per step, one annotated field per parameter.

A step (an inversion, a refinement, a background remover, an unwrapper ...) declares its
own parameters once, as a subclass of :class:`Parameters` whose fields are made by
:func:`param`: default, unit, bounds, description, and whether the value is an image.
Choices come from ``Literal[...]`` annotations. From that one declaration follow

- validation: constructing the record checks every value (type, bounds, choices, the loop
  rule of :func:`torchqsm.validation.check_loop_parameter`) and raises
  :class:`~torchqsm.errors.ParameterError` naming the parameter;
- the listing (:class:`ParameterSpec`: ``name``, ``default``, ``type_name``, ``unit``,
  ``description``) that ``torchqsm methods`` prints;
- command-line coercion (:func:`coerce_parameter`, :func:`parse_assignments`);
- the values a sidecar records (:meth:`Parameters.record`: every value actually used,
  images by file name).

No docstring is parsed and no signature is synthesised.

>>> from dataclasses import dataclass
>>> from typing import Literal
>>> @dataclass(frozen=True, kw_only=True)
... class Smoothing(Parameters):
...     radius_mm: float = param(2.0, gt=0, unit="mm", description="kernel radius")
...     shape: Literal["ball", "cube"] = param("ball", description="kernel shape")
...     max_iterations: int = param(10, description="iteration limit")
>>> Smoothing(radius_mm=3).radius_mm
3.0
>>> [(p.name, p.type_name) for p in Smoothing.specs()]
[('radius_mm', 'float'), ('shape', 'ball|cube'), ('max_iterations', 'int')]
>>> Smoothing.from_values({"radius_mm": coerce_parameter(Smoothing.spec("radius_mm"), "1.5")}, owner="smooth")
Smoothing(radius_mm=1.5, shape='ball', max_iterations=10)
>>> Smoothing(radius_mm=-1)
Traceback (most recent call last):
...
torchqsm.errors.ParameterError: parameter 'radius_mm' must be positive, got -1.0
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import operator
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import numpy as np
import torch

from ..errors import ParameterError
from ..validation import check_loop_parameter

__all__ = ["REQUIRED", "Parameters", "ParameterSpec", "param", "coerce_parameter", "parse_assignments",
           "parameters_from_signature"]

#: The default of a parameter that has none (the caller must give it).
REQUIRED = inspect.Parameter.empty
_KEY = "torchqsm"


@dataclass(frozen=True)
class _Meta:
    description: str
    unit: str = ""
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    image: bool = False
    required: bool = False


def param(default: Any = None, *, description: str, unit: str = "", gt: float | None = None,
          ge: float | None = None, lt: float | None = None, le: float | None = None, image: bool = False,
          required: bool = False) -> Any:
    """A field of a :class:`Parameters` record.

    Parameters
    ----------
    default
        The value when the caller gives none (a plain value: use tuples, not lists).
    description
        One line of plain text for ``torchqsm methods`` (no markup).
    unit
        The unit of the value (``mm``, ``ppm``, ``voxels`` ...), empty when dimensionless.
    gt, ge, lt, le
        Bounds: greater than, at least, less than, at most.
    image
        The value is an image (array or tensor): the command line passes a file for it, the
        sidecar records the file name.
    required
        The caller must give a value (the default, None, is refused): e.g. MEDI's magnitude.
    """
    meta = _Meta(description, unit, gt, ge, lt, le, image, required)
    return dataclasses.field(default=default, metadata={_KEY: meta})


def _literal_choices(annotation: Any) -> tuple[str, ...]:
    for option in _options(annotation):
        if get_origin(option) is Literal:
            return tuple(str(a) for a in get_args(option))
    return ()


def _options(annotation: Any) -> tuple[Any, ...]:
    """The members of a union (``X | None`` → ``(X, NoneType)``), or the annotation alone."""
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter of a step: what ``torchqsm methods`` lists and ``--param`` coerces.

    ``default`` is :data:`REQUIRED` for a parameter the caller must give. ``annotation`` is
    the field's type (``float``, ``bool | None``, ``Literal["a", "b"]`` ...); with ``Any``
    the default's type decides.
    """

    name: str
    default: Any
    annotation: Any = Any
    description: str = ""
    unit: str = ""
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    image: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def choices(self) -> tuple[str, ...]:
        """The words allowed: all values of a choice, or the words beside a number (``float | Literal["auto"]``)."""
        return _literal_choices(self.annotation)

    @property
    def number_or_word(self) -> bool:
        """A number that also takes words (``regularization: float | Literal["auto"]``)."""
        return bool(self.choices) and float in _options(self.annotation)

    @property
    def allows_none(self) -> bool:
        return self.default is None or type(None) in _options(self.annotation) or self.image

    @property
    def kind(self) -> str:
        """``choice``, ``image``, ``bool``, ``int``, ``float``, ``str``, ``integers`` (one or X,Y,Z) or ``value``."""
        if self.choices and not self.number_or_word:
            return "choice"
        if self.image:
            return "image"
        options = [o for o in _options(self.annotation) if o is not type(None)]
        if options == [Any] or not options:
            default = self.default
            if isinstance(default, bool):
                return "bool"
            if isinstance(default, tuple):
                return "integers" if all(isinstance(v, int) for v in default) else "value"
            return {int: "int", float: "float", str: "str"}.get(type(default), "float" if default is None else "value")
        if any(get_origin(o) in (tuple, typing.Sequence) or o is tuple for o in options):
            return "integers"
        for kind in (bool, int, float, str):
            if kind in options:
                return kind.__name__
        return "value"

    @property
    def type_name(self) -> str:
        kind = self.kind
        if self.number_or_word:
            return "|".join((kind, *self.choices))
        return {"choice": "|".join(self.choices), "integers": "X[,Y,Z]"}.get(kind, kind)

    @property
    def bounds(self) -> str:
        """The bounds in words, e.g. ``positive and at most 0.6667``; empty without bounds."""
        parts = []
        if self.gt is not None:
            parts.append("positive" if self.gt == 0 else f"> {self.gt:g}")
        if self.ge is not None:
            parts.append("non-negative" if self.ge == 0 else f">= {self.ge:g}")
        if self.lt is not None:
            parts.append(f"< {self.lt:g}")
        if self.le is not None:
            parts.append(f"at most {self.le:g}")
        return " and ".join(parts)

    # -- values ------------------------------------------------------------------------

    def _fail(self, want: str, value: Any) -> ParameterError:
        return ParameterError(f"parameter '{self.name}' must be {want}, got {value!r}")

    def check(self, value: Any) -> Any:
        """``value`` validated and normalised (``int`` → ``float`` for a float, one pad → three ...)."""
        if value is None:
            if self.allows_none:
                return None
            raise self._fail(f"a {self.type_name} value", value)
        kind = self.kind
        if self.number_or_word and isinstance(value, str):
            if value.strip().lower() not in self.choices:
                raise ParameterError(f"parameter '{self.name}' must be a number or one of {', '.join(self.choices)}, "
                                     f"got {value!r}")
            return value.strip().lower()
        value = check_loop_parameter(self.name, value)
        if kind == "choice":
            if value not in self.choices:
                raise ParameterError(f"parameter '{self.name}' must be one of {', '.join(self.choices)}, "
                                     f"got {value!r}")
        elif kind == "image":
            if not isinstance(value, (torch.Tensor, np.ndarray)):
                raise self._fail("an image (array or tensor)", type(value).__name__)
        elif kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise self._fail("true or false", value)
            value = bool(value)
        elif kind == "int":
            if isinstance(value, (bool, np.bool_)):
                raise self._fail("an integer", value)
            try:
                value = int(operator.index(value))
            except TypeError:
                raise self._fail("an integer", value) from None
        elif kind == "float":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise self._fail("a number", value)
            value = float(value)
            if not math.isfinite(value):
                raise self._fail("a finite number", value)
        elif kind == "integers":
            value = self._integers(value)
        elif kind == "str" and not isinstance(value, str):
            raise self._fail("a string", value)
        self._check_bounds(value)
        return value

    def _integers(self, value: Any) -> tuple[int, int, int]:
        items = (value, value, value) if isinstance(value, numbers.Integral) else value
        try:
            numbers_ = tuple(items)
        except TypeError:
            raise self._fail("one non-negative integer or three", value) from None
        if len(numbers_) != 3 or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral)
                                     or v < 0 for v in numbers_):
            raise self._fail("one non-negative integer or three", value)
        return tuple(int(v) for v in numbers_)  # type: ignore[return-value]

    def _check_bounds(self, value: Any) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not self.bounds:
            return
        ok = ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
              and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le))
        if not ok:
            raise ParameterError(f"parameter '{self.name}' must be {self.bounds}, got {value!r}")

    def coerce(self, text: str) -> Any:
        """A command-line string → the parameter's value (then :meth:`check`)."""
        return self.check(_coerce(self, text))


def _coerce(spec: ParameterSpec, text: str) -> Any:
    value = text.strip()
    kind = spec.kind
    if kind == "image":
        raise ParameterError(f"'{spec.name}' is an image: pass it as a file (e.g. --{spec.name} FILE)")
    if spec.allows_none and value.lower() in ("none", ""):
        return None  # `torchqsm methods` shows an unset optional parameter as "none"
    if spec.number_or_word and value.lower() in spec.choices:
        return value.lower()
    if kind == "choice":
        if value not in spec.choices:
            raise ParameterError(f"parameter '{spec.name}' must be one of {', '.join(spec.choices)}, got '{value}'")
        return value
    try:
        if kind == "bool":
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "integers" or (kind == "value" and ("," in value or isinstance(spec.default, tuple))):
            parts = [float(v) if "." in v or "e" in v.lower() else int(v) for v in value.split(",")]
            return parts[0] if len(parts) == 1 else tuple(parts)
    except ValueError:
        kind_name = spec.type_name
        article = "an" if kind_name[:1] in "aeiou" else "a"
        raise ParameterError(f"parameter '{spec.name}' needs {article} {kind_name} value, got '{value}'") from None
    return value


def coerce_parameter(spec: ParameterSpec, text: str) -> Any:
    """Turn a command-line string into the parameter's type (bool, int, float, choice, X,Y,Z) and check it.

    >>> coerce_parameter(ParameterSpec("pad", None, int | tuple[int, int, int] | None, "padding"), "8,8,4")
    (8, 8, 4)
    """
    return spec.coerce(text)


@dataclass(frozen=True)
class Parameters:
    """Base of every step's parameter record (subclass it as a frozen, keyword-only dataclass).

    Subclasses declare fields with :func:`param`. ``NEEDS`` names the acquisition values the
    step needs (``"b0_tesla"``, ``"echo_times_s"``); :meth:`acquisition_needs` may depend on
    the values (TV needs them only when nonlinear).
    """

    NEEDS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for spec in self.specs():
            object.__setattr__(self, spec.name, spec.check(getattr(self, spec.name)))

    @classmethod
    def specs(cls) -> tuple[ParameterSpec, ...]:
        """Every parameter, in declaration order (inherited ones first)."""
        cached = cls.__dict__.get("_specs_cache")
        if cached is None:
            cached = tuple(_spec_of(f, hint) for f, hint in _fields(cls))
            type.__setattr__(cls, "_specs_cache", cached)
        return cached

    @classmethod
    def spec(cls, name: str, *, owner: str | None = None) -> ParameterSpec:
        """The parameter ``name``, or a :class:`ParameterError` listing the known ones."""
        for spec in cls.specs():
            if spec.name == name:
                return spec
        known = ", ".join(p.name for p in cls.specs()) or "no parameters"
        raise ParameterError(f"{_owner(owner, cls)} has no parameter '{name}' (it takes: {known})")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(spec.name for spec in cls.specs())

    @classmethod
    def from_values(cls, values: Mapping[str, Any], *, owner: str | None = None) -> Parameters:
        """The record of ``values`` (defaults for the rest); unknown or missing names are errors."""
        for name in values:
            cls.spec(name, owner=owner)
        for spec in cls.specs():
            if spec.required and values.get(spec.name) is None:
                what = "the image" if spec.image else "the parameter"
                flag = f", CLI --{spec.name}" if spec.image else ""
                raise ParameterError(f"{_owner(owner, cls)} needs {what} '{spec.name}' ({spec.description}{flag})")
        return cls(**values)

    @classmethod
    def with_defaults(cls, name: str, **defaults: Any) -> type[Parameters]:
        """A subclass ``name`` with other defaults (e.g. each learned method's own weights)."""
        fields = []
        for field_, hint in _fields(cls):
            if field_.name in defaults:
                meta = field_.metadata[_KEY]
                fields.append((field_.name, hint, dataclasses.field(default=defaults.pop(field_.name),
                                                                    metadata={_KEY: meta})))
        if defaults:
            raise ValueError(f"{cls.__name__} has no parameters {', '.join(defaults)}")
        return dataclasses.make_dataclass(name, fields, bases=(cls,), frozen=True, kw_only=True,
                                          namespace={"__module__": cls.__module__})

    def as_kwargs(self) -> dict[str, Any]:
        """The values as keyword arguments (not copied: tensors stay the caller's)."""
        return {spec.name: getattr(self, spec.name) for spec in self.specs()}

    def acquisition_needs(self) -> tuple[str, ...]:
        """The acquisition values (``b0_tesla``, ``echo_times_s``) these parameters need."""
        return self.NEEDS

    def record(self, *, acquisition: Any = None, images: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every parameter actually used, JSON-ready: images by file (``images``), ``None`` geometry
        keywords (``pad``, ``kernel_form``) resolved to the acquisition's values."""
        images = images or {}
        out: dict[str, Any] = {}
        for spec in self.specs():
            value = getattr(self, spec.name)
            if spec.image:
                value = None if value is None else str(images.get(spec.name, "array given in Python"))
            elif value is None and acquisition is not None and spec.name in ("pad", "kernel_form"):
                value = getattr(acquisition, spec.name)
            out[spec.name] = list(value) if isinstance(value, tuple) else value
        return out


def _owner(owner: str | None, cls: type) -> str:
    return f"method '{owner}'" if owner else cls.__name__


def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass (decorate it with @dataclass(frozen=True, kw_only=True))")
    hints = typing.get_type_hints(cls)
    out = []
    for field_ in dataclasses.fields(cls):
        if _KEY not in field_.metadata:
            raise TypeError(f"{cls.__name__}.{field_.name} must be declared with param(...)")
        out.append((field_, hints.get(field_.name, Any)))
    return out


def _spec_of(field_: dataclasses.Field, hint: Any) -> ParameterSpec:
    meta: _Meta = field_.metadata[_KEY]
    default = REQUIRED if meta.required else field_.default
    return ParameterSpec(field_.name, default, hint, meta.description, meta.unit, meta.gt, meta.ge, meta.lt, meta.le,
                         meta.image)


def parse_assignments(parameters: type[Parameters] | Iterable[ParameterSpec], items: Iterable[str], *,
                      flag: str = "--param", owner: str | None = None) -> dict[str, Any]:
    """``KEY=VALUE`` strings (a repeatable flag) → coerced values; images refused (they come as files).

    ``parameters`` is a :class:`Parameters` subclass or any iterable of :class:`ParameterSpec`.
    Dashes in keys become underscores.
    """
    specs = {s.name: s for s in (parameters.specs() if isinstance(parameters, type) else parameters)}
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ParameterError(f"{flag} takes KEY=VALUE, got '{item}'")
        if key not in specs:
            known = ", ".join(specs) or "no parameters"
            where = f"method '{owner}'" if owner else "this step"
            raise ParameterError(f"{where} has no parameter '{key}' (it takes: {known})")
        if specs[key].image:
            raise ParameterError(f"'{key}' is an image: pass it with --{key} FILE")
        values[key] = coerce_parameter(specs[key], text)
    return values


def parameters_from_signature(function: Any, *, skip: Iterable[str] = ()) -> tuple[ParameterSpec, ...]:
    """:class:`ParameterSpec` of a function's keyword-only parameters, from its signature alone
    (defaults and annotations; no descriptions). For steps not yet declared with :class:`Parameters`."""
    skipped = set(skip)
    hints = typing.get_type_hints(function)
    return tuple(ParameterSpec(name, p.default, hints.get(name, Any), "")
                 for name, p in inspect.signature(function).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in skipped)
