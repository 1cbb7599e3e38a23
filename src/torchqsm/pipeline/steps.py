r"""The pipeline as a table of steps: per stage, a name → (function, parameters) entry.

:func:`~torchqsm.pipeline.subject.process_gre` is a fold over :data:`STAGES`: each stage's
chosen :class:`Step` takes the :class:`State` (the arrays computed so far and the
:class:`~torchqsm.acquisition.Acquisition`) and returns it with its own result added.

============  ==================================  =============================================
stage         table                               adds to the state
============  ==================================  =============================================
mask          :data:`MASK` (+ a given mask)       ``mask`` (brain, boolean)
unwrap        :data:`UNWRAP`                      ``unwrapped_rad``
combine       :data:`COMBINE`                     ``fields_ppm`` (one field, or one per echo),
                                                  ``total_field_ppm``
background    :data:`BACKGROUND`                  ``local_field_ppm``, ``local_mask``
invert        the method registry                 ``chi_ppm``
reference     :data:`REFERENCE`                   ``chi_ppm`` referenced
============  ==================================  =============================================

A step's parameters are :class:`~torchqsm.pipeline.specs.ParameterSpec`\ s (from the library
function's signature, less what the pipeline sets: the mask, the geometry, the magnitude), so
recipes, ``--unwrap-param``/``--background-param`` and the sidecar use one list. A combination
may first change what the unwrapper sees (``phase_difference`` unwraps consecutive echo
differences): its :attr:`Step.prepare` runs at the start of the unwrap stage. The tables are
the one list of choices: :mod:`~torchqsm.pipeline.recipes` and ``torchqsm run`` read them.

>>> sorted(UNWRAP), sorted(COMBINE)
(['laplacian', 'region_growing'], ['per_echo', 'phase_difference', 'weighted_fit'])
>>> [p.name for p in UNWRAP["laplacian"].parameters]
['max_iterations', 'tolerance', 'congruent']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from ..acquisition import Acquisition
from ..errors import InputError, ParameterError
from ..inversion.regularization import collect_choices, record_choices
from ..physics.units import rad_per_s_to_ppm
from ..preprocess.background import BACKGROUND_METHODS
from ..preprocess.brain import extract_brain, mask_depth_mm
from ..preprocess.differences import EchoDifferences, combine_differences, echo_differences
from ..preprocess.echoes import combine_echoes, per_echo_frequencies
from ..preprocess.masking import NO_BACKGROUND_CONTRAST, background_contrast, erode_mask, magnitude_mask, quality_mask
from ..preprocess.referencing import reference
from ..preprocess.unwrap import laplacian_unwrap, region_growing_unwrap, romeo_quality, unwrap_echoes, voxel_quality
from .registry import get_method, invert
from .specs import ParameterSpec, parameters_from_signature

if TYPE_CHECKING:
    from .recipes import Recipe

__all__ = ["State", "Step", "Planned", "STAGES", "STAGE_LABELS", "MASK", "GIVEN_MASK", "UNWRAP", "COMBINE",
           "BACKGROUND", "REFERENCE", "plan", "inversion_record"]

#: The stages in the order they run, and their names in logs and timings.
STAGES = ("mask", "unwrap", "combine", "background", "invert", "reference")
STAGE_LABELS: Mapping[str, str] = MappingProxyType({
    "mask": "mask", "unwrap": "unwrap", "combine": "echo combination", "background": "background removal",
    "invert": "dipole inversion", "reference": "referencing", "network": "phase network"})


@dataclass(frozen=True, eq=False)
class State:
    """What the pipeline knows so far: inputs (on the compute device) and each stage's result.

    ``magnitude`` and ``phase_rad`` (wrapped, radians) are ``(E, X, Y, Z)``; ``magnitude_rss``
    their root sum of squares ``(X, Y, Z)``. Fields are in ppm of B0.
    """

    acquisition: Acquisition
    magnitude: torch.Tensor
    phase_rad: torch.Tensor
    magnitude_rss: torch.Tensor
    given_mask: torch.Tensor | None = None
    reference_mask: torch.Tensor | None = None
    source: str | None = None
    mask: torch.Tensor | None = None
    differences: EchoDifferences | None = None
    unwrapped_rad: torch.Tensor | None = None
    fields_ppm: torch.Tensor | None = None
    field_weights: torch.Tensor | None = None
    total_field_ppm: torch.Tensor | None = None
    local_field_ppm: torch.Tensor | None = None
    local_mask: torch.Tensor | None = None
    chi_ppm: torch.Tensor | None = None
    regularization: tuple = ()  # automatic choices of the inversion (RegularizationChoice)
    notes: tuple[str, ...] = ()  # what a step adapted (logged by process_gre, kept in the sidecar)

    @property
    def echo_times_s(self) -> tuple[float, ...]:
        return self.acquisition.echo_times_s  # type: ignore[return-value]


Run = Callable[[State, dict[str, Any]], State]


@dataclass(frozen=True)
class Step:
    """One choice of one stage: the function that runs it on the :class:`State` and its parameters."""

    name: str
    run: Run
    parameters: tuple[ParameterSpec, ...] = ()
    function: Callable[..., Any] | None = field(default=None, compare=False)
    prepare: Callable[[State], State] | None = field(default=None, compare=False)

    def values(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every parameter, ``given`` checked and the rest at their defaults (what the sidecar records)."""
        given = dict(given or {})
        specs = {spec.name: spec for spec in self.parameters}
        unknown = sorted(set(given) - set(specs))
        if unknown:
            known = ", ".join(specs) or "no parameters"
            raise ParameterError(f"step '{self.name}' has no parameter '{unknown[0]}' (it takes: {known})")
        return {name: spec.check(given[name]) if name in given else spec.default for name, spec in specs.items()}


def _signature(function: Callable[..., Any], *pipeline_sets: str) -> tuple[ParameterSpec, ...]:
    """The keyword parameters of ``function`` a user may set (not the ones the pipeline passes, nor images)."""
    return parameters_from_signature(function, skip=(*pipeline_sets, "callback", "magnitude", "quality"))


# -- mask --------------------------------------------------------------------------------

_CLEANUP = (ParameterSpec("brain_extraction_mm", 0.0, float, "radius of the opening that cuts the scalp off; 0: off",
                          unit="mm", ge=0),
            ParameterSpec("erode_voxels", 0, int, "voxels eroded from the brain mask", unit="voxels", ge=0))


def _noted(state: State, text: str) -> State:
    return replace(state, notes=(*state.notes, text))


def _cleaned(state: State, brain: torch.Tensor, p: Mapping[str, Any], *, extract: bool = True) -> State:
    """Brain extraction and erosion, each adapted to a thin or partial acquisition (with a note)."""
    voxel = state.acquisition.voxel_size_mm
    radius = p.get("brain_extraction_mm", 0)
    if extract and radius > 0:
        depth = mask_depth_mm(brain, voxel_size_mm=voxel)
        if depth <= radius:  # thin slab or partial coverage: no 2r-thick brain to keep, no scalp to cut
            state = _noted(state, f"brain extraction skipped: the mask is at most {2 * depth:.3g} mm thick "
                                  f"(thin slab or partial coverage), the {radius:g} mm scalp cut needs "
                                  f"more than {2 * radius:g} mm")
        else:
            brain = extract_brain(brain, voxel_size_mm=voxel, radius_mm=radius)
    erode = p["erode_voxels"]
    if erode:
        depth_voxels = mask_depth_mm(brain, voxel_size_mm=(1.0, 1.0, 1.0))
        kept = min(erode, max(0, math.ceil(depth_voxels) - 1))
        if kept < erode:
            state = _noted(state, f"mask erosion shrunk from {erode} to {kept} voxel(s): the mask is at most "
                                  f"{2 * depth_voxels:.3g} voxels thick")
        if kept:
            brain = erode_mask(brain, voxels=kept)
    return replace(state, mask=brain)


def _own(p: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k not in ("brain_extraction_mm", "erode_voxels")}


def _magnitude_mask(method: str) -> Run:
    def run(s: State, p: dict[str, Any]) -> State:
        if method == "otsu":
            ratio = background_contrast(s.magnitude_rss)
            if ratio > NO_BACKGROUND_CONTRAST:
                # The field of view lies inside the head: Otsu would split tissue classes.
                s = _noted(s, f"the magnitude has no dark background (Otsu's dark class is {ratio:.0%} as "
                              "bright as its bright class: the field of view lies inside the head); the "
                              "phase-quality mask is used and brain extraction skipped")
                return _cleaned(s, _quality(s), p, extract=False)
        return _cleaned(s, magnitude_mask(s.magnitude_rss, method=method, **_own(p)), p)
    return run


def _quality(s: State, **p: Any) -> torch.Tensor:
    second = s.phase_rad[1] if s.phase_rad.shape[0] > 1 else None
    edges = romeo_quality(s.phase_rad[0], magnitude=s.magnitude[0], phase2_rad=second,
                          echo_times_s=s.echo_times_s[:2] if second is not None else None)
    return quality_mask(voxel_quality(edges), **p)


def _quality_mask(s: State, p: dict[str, Any]) -> State:
    return _cleaned(s, _quality(s, **_own(p)), p)


def _given_mask(s: State, p: dict[str, Any]) -> State:
    if not bool(s.given_mask.any()):
        raise InputError("the given mask is empty", source=s.source)
    return _cleaned(s, s.given_mask, p)


_MASK_OWN = ("method", "echoes", "erode_voxels")
MASK: Mapping[str, Step] = MappingProxyType({
    "otsu": Step("otsu", _magnitude_mask("otsu"), _signature(magnitude_mask, *_MASK_OWN, "threshold") + _CLEANUP,
                 magnitude_mask),
    "threshold": Step("threshold", _magnitude_mask("threshold"), _signature(magnitude_mask, *_MASK_OWN) + _CLEANUP,
                      magnitude_mask),
    "quality": Step("quality", _quality_mask, _signature(quality_mask, "erode_voxels") + _CLEANUP, quality_mask),
})
#: The mask stage when the user gives a mask: only erosion applies.
GIVEN_MASK = Step("given", _given_mask, _CLEANUP[1:])


# -- unwrap ------------------------------------------------------------------------------

def _to_unwrap(s: State) -> torch.Tensor:
    return s.phase_rad if s.differences is None else s.differences.phase_rad


def _laplacian(s: State, p: dict[str, Any]) -> State:
    return replace(s, unwrapped_rad=laplacian_unwrap(_to_unwrap(s), voxel_size_mm=s.acquisition.voxel_size_mm,
                                                     mask=s.mask, **p))


def _region_growing(s: State, p: dict[str, Any]) -> State:
    if s.differences is not None:
        unwrapped = torch.stack([region_growing_unwrap(d, magnitude=s.magnitude_rss, mask=s.mask, **p).phase_rad
                                 for d in s.differences.phase_rad])
    else:
        if p != UNWRAP["region_growing"].values():
            raise ParameterError("region growing of single echoes (--combine weighted_fit or per_echo) takes no "
                                 "--unwrap-param")
        # Each echo unwrapped spatially, then per-echo global 2π fixed: the temporal template
        # (φ1·TE_e/TE_1) fails where the receive offset exceeds ±π/(TE_2/TE_1 - 1).
        unwrapped = unwrap_echoes(s.phase_rad, echo_times_s=s.echo_times_s, magnitude=s.magnitude, mask=s.mask,
                                  method="region_growing", mode="individual",
                                  voxel_size_mm=s.acquisition.voxel_size_mm)
    return replace(s, unwrapped_rad=unwrapped)


UNWRAP: Mapping[str, Step] = MappingProxyType({
    "laplacian": Step("laplacian", _laplacian, _signature(laplacian_unwrap, "voxel_size_mm", "mask"),
                      laplacian_unwrap),
    "region_growing": Step("region_growing", _region_growing, _signature(region_growing_unwrap, "mask"),
                           region_growing_unwrap),
})


# -- combine -----------------------------------------------------------------------------

def _one_field(s: State, frequency_rad_per_s: torch.Tensor) -> State:
    total = rad_per_s_to_ppm(frequency_rad_per_s, b0_tesla=s.acquisition.b0_tesla) * s.mask
    return replace(s, fields_ppm=total[None], field_weights=torch.ones(1, device=total.device), total_field_ppm=total)


def _differences(s: State) -> State:
    return replace(s, differences=echo_differences(s.phase_rad, echo_times_s=s.echo_times_s, magnitude=s.magnitude))


def _phase_difference(s: State, p: dict[str, Any]) -> State:
    return _one_field(s, combine_differences(s.unwrapped_rad, delta_te_s=s.differences.delta_te_s,
                                             weights=s.differences.weights))


def _weighted_fit(s: State, p: dict[str, Any]) -> State:
    return _one_field(s, combine_echoes(s.unwrapped_rad, echo_times_s=s.echo_times_s, magnitude=s.magnitude,
                                        mask=s.mask).frequency_rad_per_s)


def _per_echo(s: State, p: dict[str, Any]) -> State:
    """Each echo's field goes through background removal; the local fields are averaged with weights TE²."""
    frequencies = per_echo_frequencies(s.unwrapped_rad, echo_times_s=s.echo_times_s)
    fields = rad_per_s_to_ppm(frequencies, b0_tesla=s.acquisition.b0_tesla) * s.mask
    weights = torch.tensor(s.echo_times_s, device=fields.device).square()
    return replace(s, fields_ppm=fields, field_weights=weights, total_field_ppm=fields.mean(0))


COMBINE: Mapping[str, Step] = MappingProxyType({
    "phase_difference": Step("phase_difference", _phase_difference, (), combine_differences, prepare=_differences),
    "weighted_fit": Step("weighted_fit", _weighted_fit, (), combine_echoes),
    "per_echo": Step("per_echo", _per_echo, (), per_echo_frequencies),
})


# -- background --------------------------------------------------------------------------

def _background(function: Callable[..., Any]) -> Run:
    def run(s: State, p: dict[str, Any]) -> State:
        acquisition = s.acquisition
        results = [function(f, s.mask, voxel_size_mm=acquisition.voxel_size_mm, b0_dir=acquisition.b0_dir, **p)
                   for f in s.fields_ppm]
        if len(results) == 1:
            local, local_mask = results[0].local_field_ppm, results[0].mask
        else:  # one field per echo: their weighted mean where every echo's mask holds
            local_mask = torch.stack([r.mask for r in results]).all(0)
            weights = s.field_weights.to(results[0].local_field_ppm.dtype)
            local = sum(w * r.local_field_ppm for w, r in zip(weights, results)) / weights.sum() * local_mask
        if not bool(local_mask.any()):
            raise InputError(f"the mask is empty after background removal ({function.__name__}); "
                             "use a smaller radius or a larger mask", source=s.source)
        return replace(s, local_field_ppm=local, local_mask=local_mask.bool())
    return run


BACKGROUND: Mapping[str, Step] = MappingProxyType({
    name: Step(name, _background(function), _signature(function, "voxel_size_mm", "b0_dir"), function)
    for name, function in BACKGROUND_METHODS.items()})


# -- invert ------------------------------------------------------------------------------

def _inversion_step(name: str) -> Step:
    """The invert stage for a registered method: the registry's :func:`invert` with the acquisition record."""
    method = get_method(name)

    def run(s: State, p: dict[str, Any]) -> State:
        images = {"magnitude": s.magnitude_rss} if method.needs_magnitude else {}
        with collect_choices() as made:
            chi = invert(s.local_field_ppm, s.local_mask, name, s.acquisition, **images, **p)
        if not bool(torch.isfinite(chi).all()):
            raise InputError(f"the inversion '{name}' produced non-finite values", source=s.source)
        return replace(s, chi_ppm=chi, regularization=tuple(made))

    return Step(name, run, tuple(spec for spec in method.parameters.specs() if not spec.image))


def _phase_network_step(name: str, refine: str) -> Step:
    """The one stage of a phase-network recipe after masking: wrapped phase → χ on the mask eroded by one voxel,
    refined (``refine="lot"``) on the network's grid."""
    from .phase_networks import phase_network_inversion

    def run(s: State, p: dict[str, Any]) -> State:
        chi, inner = phase_network_inversion(s.phase_rad, s.mask, s.acquisition, network=name, source=s.source,
                                             refine=refine)
        return replace(s, chi_ppm=chi, local_mask=inner)

    return Step(name, run, ())


def inversion_record(name: str, params: Mapping[str, Any], acquisition: Acquisition,
                     choices: Sequence[Any] = ()) -> dict[str, Any]:
    """Every parameter of inversion ``name`` as run (defaults included, the magnitude as the pipeline's,
    an automatic regularization as the value chosen: :func:`~torchqsm.inversion.regularization.record_choices`)."""
    record = get_method(name).parameters(**params).record(acquisition=acquisition,
                                                          images={"magnitude": "combined magnitude (RSS)"})
    record = record_choices(record, list(choices))
    return {k: v for k, v in record.items() if not (k == "magnitude" and v is None)}


# -- reference ---------------------------------------------------------------------------

def _region(s: State, p: dict[str, Any]) -> State:
    if s.reference_mask is None:
        raise ParameterError("referencing to a region needs its mask (--reference-mask FILE)")
    region = s.reference_mask & s.local_mask
    if not bool(region.any()):
        raise InputError("the reference region does not overlap the final mask", source=s.source)
    return replace(s, chi_ppm=reference(s.chi_ppm, s.local_mask, method="csf", csf_mask=region))


REFERENCE: Mapping[str, Step] = MappingProxyType({
    "mean": Step("mean", lambda s, p: replace(s, chi_ppm=reference(s.chi_ppm, s.local_mask, method="mean")),
                 (), reference),
    "region": Step("region", _region, (), reference),
    "none": Step("none", lambda s, p: s, ()),
})


# -- the plan ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Planned:
    """One stage as it will run: its step, every parameter value, and its log label and detail."""

    stage: str
    step: Step
    values: Mapping[str, Any]
    detail: str

    @property
    def label(self) -> str:
        return STAGE_LABELS[self.stage]

    def __call__(self, state: State) -> State:
        return self.step.run(state, dict(self.values))


def _with_prepare(unwrap: Step, combine: Step) -> Step:
    if combine.prepare is None:
        return unwrap
    prepare = combine.prepare
    return replace(unwrap, run=lambda s, p: unwrap.run(prepare(s), p))


def plan(recipe: Recipe, *, echo_count: int, given_mask: bool,
         note: Callable[[str], None] = lambda text: None) -> list[Planned]:
    """The steps ``recipe`` runs, in :data:`STAGES` order, with every parameter value resolved.

    A mask given by the user replaces the mask step (only ``erode_voxels`` applies). With one
    echo, ``phase_difference`` falls back to ``weighted_fit`` (``note`` says so).
    """
    mask = GIVEN_MASK if given_mask else MASK[recipe.mask]
    cleanup = {"brain_extraction_mm": recipe.brain_extraction_mm, "erode_voxels": recipe.mask_erode_voxels}
    masking = Planned("mask", mask, MappingProxyType(mask.values({k: v for k, v in cleanup.items()
                                                                  if k in mask.values()})), mask.name)
    if recipe.phase_network:  # the network replaces unwrapping, combination, background removal and inversion
        from ..refine.lot_tv import DEFAULT_ITERATIONS, TV_KAPPA

        network = _phase_network_step(recipe.phase_network, recipe.phase_refine)
        detail = recipe.phase_network + (", then LoT data consistency (TV correction on the data's grid, α by the "
                                         "phase's noise)" if recipe.phase_refine == "lot" else "")
        values = {"phase_refine": recipe.phase_refine}
        if recipe.phase_refine == "lot":
            values.update(prior="tv", regularization="auto", kappa=TV_KAPPA, max_iterations=DEFAULT_ITERATIONS)
        return [masking, Planned("network", network, MappingProxyType(values), detail),
                Planned("reference", REFERENCE[recipe.reference], MappingProxyType({}), recipe.reference)]
    combine_name = recipe.combine
    if combine_name == "phase_difference" and echo_count < 2:
        combine_name = "weighted_fit"  # one echo: nothing to difference; the fit is then φ/TE
        note("one echo: phase_difference falls back to the single-echo fit (no offset removal)")
    combine = COMBINE[combine_name]
    inversion = _inversion_step(recipe.inversion)
    per_echo = combine_name == "per_echo"
    chosen: Sequence[tuple[str, Step, Mapping[str, Any], str]] = (
        ("mask", mask, {k: v for k, v in cleanup.items() if k in mask.values()}, mask.name),
        ("unwrap", _with_prepare(UNWRAP[recipe.unwrap], combine), recipe.unwrap_params,
         recipe.unwrap + (", echo differences" if combine.prepare else "")),
        ("combine", combine, {}, combine_name.replace("_", " ")),
        ("background", BACKGROUND[recipe.background], recipe.background_params,
         recipe.background + (", per echo" if per_echo else "")),
        ("invert", inversion, recipe.inversion_params, recipe.inversion),
        ("reference", REFERENCE[recipe.reference], {}, recipe.reference),
    )
    return [Planned(stage, step, MappingProxyType(step.values(given)), detail)
            for stage, step, given, detail in chosen]
