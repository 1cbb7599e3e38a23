"""The one method registry: every dipole inversion, reachable by name.

``torchqsm.invert(local_field_ppm, mask, method="tkd", **params)`` dispatches
here; the CLI (``torchqsm invert``, ``torchqsm methods``) and, later, the
pipeline recipes and benchmarks use the same table, so a method registered
once appears everywhere.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import numpy as np
import torch

from .. import inversion
from . import learned
from ..errors import ParameterError
from ..validation import check_loop_parameter

__all__ = ["MethodSpec", "ParameterSpec", "METHODS", "register", "get_method", "invert", "coerce_parameter", "describe"]

#: Parameters every method shares; they are set by the caller, not listed per method.
SHARED = ("local_field_ppm", "total_field_ppm", "mask", "voxel_size_mm", "b0_dir", "callback")
#: Parameters that take an image rather than a number (the CLI passes files for them).
IMAGE_PARAMETERS = ("magnitude",)


@dataclass(frozen=True)
class ParameterSpec:
    """One keyword parameter of a method: name, default, type and one-line description."""

    name: str
    default: Any
    annotation: Any
    description: str

    @property
    def type_name(self) -> str:
        choices = _literal_choices(self.annotation)
        if choices:
            return "|".join(choices)
        if self.name in IMAGE_PARAMETERS:
            return "image"
        return {bool: "bool", int: "int", float: "float", str: "str"}.get(type(self.default), "value")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method."""

    name: str
    function: Callable[..., torch.Tensor]
    kind: Literal["classical", "learned"] = "classical"
    multi_orientation: bool = False
    parameters: tuple[ParameterSpec, ...] = field(default=())

    @property
    def summary(self) -> str:
        return _docstring_summary(self.function)

    @property
    def references(self) -> list[str]:
        return _docstring_references(self.function)

    @property
    def needs_magnitude(self) -> bool:
        return any(p.name == "magnitude" and p.default is inspect.Parameter.empty for p in self.parameters) or (
            self.name == "medi")

    def parameter(self, name: str) -> ParameterSpec:
        for spec in self.parameters:
            if spec.name == name:
                return spec
        known = ", ".join(p.name for p in self.parameters)
        raise ParameterError(f"method '{self.name}' has no parameter '{name}' (it takes: {known})")


def _literal_choices(annotation: Any) -> tuple[str, ...]:
    if get_origin(annotation) is Literal:
        return tuple(str(a) for a in get_args(annotation))
    return ()


def _docstring_summary(function: Callable) -> str:
    doc = inspect.getdoc(function) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _section(function: Callable, title: str) -> list[str]:
    doc = inspect.getdoc(function) or ""
    lines = doc.splitlines()
    for index, line in enumerate(lines[:-1]):
        if line.strip() == title and set(lines[index + 1].strip()) == {"-"}:
            body = []
            for item in lines[index + 2:]:
                if index + 2 < len(lines) and item.strip() and set(item.strip()) == {"-"}:
                    body.pop()  # the previous line was the next section's title
                    break
                body.append(item)
            return body
    return []


def _docstring_references(function: Callable) -> list[str]:
    references, current = [], []
    for line in _section(function, "References"):
        if not line.strip():
            if current:
                references.append(" ".join(current))
                current = []
        else:
            current.append(line.strip())
    if current:
        references.append(" ".join(current))
    return references


def _parameter_descriptions(function: Callable) -> dict[str, str]:
    descriptions: dict[str, str] = {}
    names: list[str] = []
    for line in _section(function, "Parameters"):
        if line and not line.startswith(" "):
            names = [n.strip() for n in line.split(":")[0].split(",")]
        elif line.strip() and names:
            for name in names:
                descriptions.setdefault(name, line.strip())
            names = []
    return descriptions


#: Descriptions of parameters many methods share (their docstrings say "As tkd").
COMMON_DESCRIPTIONS = {
    "pad": "zero padding in voxels per side: one integer or X,Y,Z",
    "magnitude": "magnitude image for the data weights (CLI: --magnitude FILE)",
}


def _plain(text: str) -> str:
    """Docstring markup → plain text for the terminal."""
    text = re.sub(r":(?:math|func|class|mod):`~?([^`]*)`", r"\1", text)
    return text.replace("``", "").replace("\\", "")


def _parameters_of(function: Callable) -> tuple[ParameterSpec, ...]:
    signature = inspect.signature(function)
    descriptions = {name: _plain(text) for name, text in _parameter_descriptions(function).items()}
    for name, text in COMMON_DESCRIPTIONS.items():
        if descriptions.get(name, "").startswith("As ") or name not in descriptions:
            descriptions[name] = text
    hints = inspect.get_annotations(function, eval_str=True)
    specs = []
    for name, parameter in signature.parameters.items():
        if name in SHARED or parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        specs.append(ParameterSpec(name, parameter.default, hints.get(name, Any), descriptions.get(name, "")))
    return tuple(specs)


METHODS: dict[str, MethodSpec] = {}


def register(name: str, function: Callable[..., torch.Tensor], *, kind: Literal["classical", "learned"] = "classical",
             multi_orientation: bool = False) -> MethodSpec:
    """Add a method to the registry (its parameters are read from its signature and docstring)."""
    if not re.fullmatch(r"[a-z0-9_+\-]+", name):
        raise ValueError(f"method names are lower-case words, got {name!r}")
    spec = MethodSpec(name, function, kind, multi_orientation, _parameters_of(function))
    METHODS[name] = spec
    return spec


def describe(name: str, function: Callable[..., Any]) -> MethodSpec:
    """A :class:`MethodSpec` for any step function (not registered), e.g. a background method."""
    return MethodSpec(name, function, "classical", False, _parameters_of(function))


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``, or a :class:`ParameterError` listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ParameterError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})") from None


def coerce_parameter(spec: ParameterSpec, text: str) -> Any:
    """Turn a command-line string into the parameter's type (bool, int, float, choice, numbers)."""
    value = _coerce(spec, text)
    check_loop_parameter(spec.name, value)
    return value


def _coerce(spec: ParameterSpec, text: str) -> Any:
    value = text.strip()
    choices = _literal_choices(spec.annotation)
    if choices:
        if value not in choices:
            raise ParameterError(f"parameter '{spec.name}' must be one of {', '.join(choices)}, got '{value}'")
        return value
    default = spec.default
    if default is None and value.lower() in ("none", ""):
        return None  # `torchqsm methods` shows an unset optional parameter as "none"
    try:
        if isinstance(default, bool):
            lowered = value.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float) or default is None:
            return float(value)
        if isinstance(default, (tuple, list)):
            parts = [float(v) if "." in v or "e" in v.lower() else int(v) for v in value.split(",")]
            return parts[0] if len(parts) == 1 else tuple(parts)
    except ValueError:
        kind = spec.type_name
        article = "an" if kind[:1] in "aeiou" else "a"
        raise ParameterError(f"parameter '{spec.name}' needs {article} {kind} value, got '{value}'") from None
    return value


def invert(
    local_field_ppm: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    method: str = "tkd",
    *,
    voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] | Sequence[Sequence[float]] = (0.0, 0.0, 1.0),
    device: str | torch.device | None = None,
    **params: Any,
) -> torch.Tensor | np.ndarray:
    """Run the dipole inversion ``method`` on a local field (ppm) and return χ (ppm).

    Parameters
    ----------
    local_field_ppm
        Local field in ppm of B0, ``(X, Y, Z)`` (``(N, X, Y, Z)`` for COSMOS).
    mask
        Region of interest ``(X, Y, Z)``.
    method
        A registered name; ``torchqsm methods`` lists them.
    voxel_size_mm, b0_dir
        Geometry (B0 direction in voxel coordinates; one per orientation for COSMOS).
    device
        Where to compute (default: the field's device).
    **params
        The method's own parameters; an unknown name raises :class:`ParameterError`.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        χ in ppm, of the type (and, for tensors, the device) of ``local_field_ppm``.

    Examples
    --------
    >>> import torchqsm
    >>> from torchqsm.simulate import shapes_phantom, forward_field
    >>> chi, mask = shapes_phantom((32, 32, 32))
    >>> field = forward_field(chi, pad=16)
    >>> estimate = torchqsm.invert(field, mask, method="tkd", threshold=0.15)
    >>> estimate.shape
    torch.Size([32, 32, 32])
    """
    spec = get_method(method)
    for name in params:
        if name != "callback":  # progress reporting, accepted by every iterative method
            spec.parameter(name)
            check_loop_parameter(name, params[name])
    as_numpy = isinstance(local_field_ppm, np.ndarray)
    field = torch.as_tensor(local_field_ppm)
    mask_t = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    original_device = field.device
    if device is not None:
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError("device 'cuda' was asked for but no CUDA GPU is available")
        field, mask_t = field.to(target), mask_t.to(target)
        params = {k: (v.to(target) if isinstance(v, torch.Tensor) else v) for k, v in params.items()}
    params = {k: (torch.as_tensor(v, device=field.device) if isinstance(v, np.ndarray) else v)
              for k, v in params.items()}
    chi = spec.function(field, mask_t, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, **params)
    if as_numpy:
        return chi.detach().cpu().numpy()
    return chi.to(original_device)


for _name in ("tkd", "tsvd", "tikhonov", "l2", "tv", "ndi", "medi"):
    register(_name, getattr(inversion, _name))
register("cosmos", inversion.cosmos, multi_orientation=True)


def register_learned() -> list[str]:
    """Register the learned methods with shipped weights and their refinements (see ``pipeline.learned``)."""
    names = []
    for architecture, weights in learned.shipped_defaults().items():
        network = learned.learned_method(architecture, weights)
        register(architecture, network, kind="learned")
        names.append(architecture)
        for refinement in learned.REFINEMENTS:
            name = f"{architecture}+{refinement}"
            register(name, learned.refined_method(name, network, refinement), kind="learned")
            names.append(name)
    return names


register_learned()
