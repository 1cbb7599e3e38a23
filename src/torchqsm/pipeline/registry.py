"""The one method registry: every dipole inversion, reachable by name, with its parameter record.

``torchqsm.invert(local_field_ppm, mask, method, acquisition, **params)`` dispatches here; the
CLI (``torchqsm invert``, ``torchqsm run``, ``torchqsm methods``), the pipeline's invert step
and the benchmarks use the same table, so a method registered once appears everywhere.

A :class:`MethodSpec` pairs a function ``f(local_field_ppm, mask, acquisition, **values)``
with a frozen :class:`~torchqsm.pipeline.specs.Parameters` dataclass (defaults, units,
bounds, required images): the listing, ``--param`` coercion and the sidecar all come from
that one declaration (:mod:`torchqsm.pipeline.methods`). The learned methods are read from
the shipped model cards on the first lookup that needs them, not at import
(:mod:`torchqsm.pipeline.learned`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .. import inversion
from ..acquisition import Acquisition, as_acquisition
from ..errors import ParameterError
from . import methods as records
from .specs import Parameters, ParameterSpec, coerce_parameter

__all__ = ["MethodSpec", "ParameterSpec", "METHODS", "register", "get_method", "invert", "coerce_parameter",
           "register_learned"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function, its parameter record, and what the listing says about it.

    ``function(local_field_ppm, mask, acquisition, **values)`` gets every value of
    ``parameters`` (defaults filled in) and, when ``progress``, a ``callback``.
    """

    name: str
    function: Callable[..., torch.Tensor]
    parameters: type[Parameters]
    kind: Literal["classical", "learned"] = "classical"
    summary: str = ""
    references: tuple[str, ...] = ()
    multi_orientation: bool = False
    progress: bool = False

    @property
    def specs(self) -> tuple[ParameterSpec, ...]:
        """Every parameter, in order (what ``torchqsm methods`` lists)."""
        return self.parameters.specs()

    @property
    def needs_magnitude(self) -> bool:
        return any(spec.name == "magnitude" and spec.required for spec in self.specs)

    @property
    def takes_magnitude(self) -> bool:
        return any(spec.name == "magnitude" for spec in self.specs)

    def parameter(self, name: str) -> ParameterSpec:
        return self.parameters.spec(name, owner=self.name)

    def values(self, params: Mapping[str, Any]) -> Parameters:
        """The method's parameter record of ``params`` (defaults for the rest), checked."""
        return self.parameters.from_values(params, owner=self.name)


class _Registry(Mapping[str, MethodSpec]):
    """Name → :class:`MethodSpec`; the learned methods are read from the model cards on first need."""

    def __init__(self) -> None:
        self._classical: dict[str, MethodSpec] = {}
        self._learned: dict[str, MethodSpec] | None = None

    def _all(self) -> dict[str, MethodSpec]:
        if self._learned is None:
            from .learned import learned_specs

            self._learned = {}
            for spec in learned_specs():
                self._learned[spec.name] = spec
        return {**self._learned, **self._classical}

    def __getitem__(self, name: str) -> MethodSpec:
        if name in self._classical:
            return self._classical[name]
        return self._all()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classical or name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def add(self, spec: MethodSpec) -> None:
        self._classical[spec.name] = spec

    def forget_learned(self) -> None:
        """Forget the learned methods: the next lookup reads the model cards again."""
        self._learned = None

    def reload_learned(self) -> list[str]:
        """Read the model cards again now; the names of the learned methods."""
        self.forget_learned()
        self._all()
        return list(self._learned or {})


METHODS = _Registry()


def register(name: str, function: Callable[..., torch.Tensor], parameters: type[Parameters], *,
             summary: str, references: Sequence[str] = (), multi_orientation: bool = False,
             progress: bool = False) -> MethodSpec:
    """Add a classical method to the registry."""
    if not re.fullmatch(r"[a-z0-9_+\-]+", name):
        raise ValueError(f"method names are lower-case words, got {name!r}")
    spec = MethodSpec(name, function, parameters, "classical", summary, tuple(references), multi_orientation,
                      progress)
    METHODS.add(spec)
    return spec


def register_learned() -> list[str]:
    """Read the shipped model cards again and register their learned methods; returns the names."""
    from .learned import load_cached

    load_cached.cache_clear()
    return METHODS.reload_learned()


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``, or a :class:`ParameterError` listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ParameterError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})") from None


def _record(acquisition, method: str, voxel_size_mm, b0_dir) -> Acquisition:
    if isinstance(acquisition, (str, os.PathLike)):
        from ..io.acquisition import acquisition_from_nifti

        acquisition = acquisition_from_nifti(acquisition)
    return as_acquisition(acquisition, method=method, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir)


def invert(
    local_field_ppm: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    method: str = "tkd",
    acquisition: Acquisition | str | os.PathLike[str] | None = None,
    *,
    voxel_size_mm: Sequence[float] | None = None,
    b0_dir: Sequence[float] | Sequence[Sequence[float]] | None = None,
    device: str | torch.device | None = None,
    callback: Callable[..., Any] | None = None,
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
    acquisition
        The :class:`~torchqsm.acquisition.Acquisition` record (voxel size, B0 direction, field
        strength, echo times, padding, kernel form), or the path of a NIfTI file to read it
        from (:func:`torchqsm.io.acquisition_from_nifti`: header and JSON sidecar).
    voxel_size_mm, b0_dir
        Override the record's geometry, or, without a record, give it (both required then:
        there is no silent 1 mm / axial default). COSMOS takes one direction per orientation.
    device
        Where to compute (default: the field's device).
    callback
        Progress: receives a :class:`~torchqsm.solvers.SolverStatus` per iteration of an
        iterative method (ignored by the others).
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
    >>> axial = torchqsm.Acquisition(voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1))
    >>> torchqsm.invert(field, mask, "tkd", axial, threshold=0.15).shape
    torch.Size([32, 32, 32])
    >>> torchqsm.invert(field, mask, "tkd")
    Traceback (most recent call last):
    ...
    torchqsm.errors.ParameterError: tkd needs the voxel size and the B0 direction: ...
    """
    spec = get_method(method)
    record = _record(acquisition, method, voxel_size_mm, b0_dir)
    values = spec.values(params).as_kwargs()
    as_numpy = isinstance(local_field_ppm, np.ndarray)
    field = torch.as_tensor(local_field_ppm)
    mask_t = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    original_device = field.device
    if device is not None:
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError("device 'cuda' was asked for but no CUDA GPU is available")
        field, mask_t = field.to(target), mask_t.to(target)
    values = {k: (torch.as_tensor(v).to(field.device) if isinstance(v, (torch.Tensor, np.ndarray)) else v)
              for k, v in values.items()}
    if spec.progress and callback is not None:
        values["callback"] = callback
    chi = spec.function(field, mask_t, record, **values)
    if as_numpy:
        return chi.detach().cpu().numpy()
    return chi.to(original_device)


_SHMUELI = ("Shmueli K, de Zwart JA, van Gelderen P, et al. Magnetic susceptibility mapping of brain tissue in vivo "
            "using MRI phase data. MRM 2009;62:1510-1522. doi:10.1002/mrm.22135")
_WHARTON = ("Wharton S, Schäfer A, Bowtell R. Susceptibility mapping in the human brain using threshold-based k-space "
            "division. MRM 2010;63:1292-1304. doi:10.1002/mrm.22334")
_CLASSICAL = (
    ("tkd", inversion.tkd, records.TKDParameters, "Truncated k-space division.", False, (
        _SHMUELI, _WHARTON,
        "Schweser F, Deistung A, Sommer K, Reichenbach JR. Toward online reconstruction of quantitative "
        "susceptibility maps: superfast dipole inversion. MRM 2013;69:1582-1594. doi:10.1002/mrm.24405")),
    ("tsvd", inversion.tsvd, records.TSVDParameters,
     "Truncated singular value decomposition of the dipole convolution.", False, (_WHARTON,)),
    ("tikhonov", inversion.tikhonov, records.TikhonovParameters, "Closed-form Tikhonov-regularised inversion.", False, (
        "Bilgic B, Chatnuntawech I, Fan AP, et al. Fast image reconstruction with L2-regularization. "
        "JMRI 2014;40:181-191. doi:10.1002/jmri.24365",)),
    ("l2", inversion.l2, records.L2Parameters,
     "Weighted least squares with optional gradient regularisation, solved by CG.", True, (
         "Li W, Wang N, Yu F, et al. A method for estimating and removing streaking artifacts in quantitative "
         "susceptibility mapping (iLSQR). NeuroImage 2015;108:111-122. doi:10.1016/j.neuroimage.2014.12.043",
         "Kressler B, de Rochefort L, Liu T, et al. Nonlinear regularization for per voxel estimation of magnetic "
         "susceptibility distributions from MRI field maps. IEEE TMI 2010;29:273-281. doi:10.1109/TMI.2009.2023787")),
    ("tv", inversion.tv, records.TVParameters, "Weighted total-variation inversion (FANSI) by ADMM.", True, (
        "Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear susceptibility inversion with "
        "variational regularization. MRM 2018;80:814-821. doi:10.1002/mrm.27073",
        "Bilgic B, Fan AP, Polimeni JR, et al. Fast quantitative susceptibility mapping with L1-regularization and "
        "automatic parameter selection. MRM 2014;72:1444-1459. doi:10.1002/mrm.25029")),
    ("ndi", inversion.ndi, records.NDIParameters, "Nonlinear dipole inversion by gradient descent.", True, (
        "Polak D, Chatnuntawech I, Yoon J, et al. Nonlinear dipole inversion (NDI) enables robust quantitative "
        "susceptibility mapping (QSM). NMR Biomed 2020;33:e4271. doi:10.1002/nbm.4271",)),
    ("medi", inversion.medi, records.MEDIParameters,
     "MEDI: TV weighted by the magnitude's edges, nonlinear data term, Gauss–Newton with CG.", True, (
         "Liu J, Liu T, de Rochefort L, et al. Morphology enabled dipole inversion for quantitative susceptibility "
         "mapping using structural consistency between the magnitude image and the susceptibility map. "
         "NeuroImage 2012;59:2560-2568. doi:10.1016/j.neuroimage.2011.08.082",
         "Liu T, Wisnieff C, Lou M, et al. Nonlinear formulation of the magnetic field to source relationship for "
         "robust quantitative susceptibility mapping. MRM 2013;69:467-476. doi:10.1002/mrm.24272")),
)
for _name, _function, _parameters, _summary, _progress, _references in _CLASSICAL:
    register(_name, _function, _parameters, summary=_summary, references=_references, progress=_progress)
register("cosmos", inversion.cosmos, records.COSMOSParameters, summary="Least squares over several head orientations.",
         references=("Liu T, Spincemaille P, de Rochefort L, Kressler B, Wang Y. Calculation of susceptibility through "
                     "multiple orientation sampling (COSMOS). MRM 2009;61:196-204. doi:10.1002/mrm.21828",),
         multi_orientation=True, progress=True)
