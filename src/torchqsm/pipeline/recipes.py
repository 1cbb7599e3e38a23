"""Named recipes: one choice per pipeline step, with its parameters.

A recipe says which method runs at each step (masking, unwrapping, echo
combination, background removal, dipole inversion, referencing) and with what
parameters. ``fast`` and ``accurate`` ship; every field can be overridden on
its own (``torchqsm run --unwrap laplacian --inversion tv ...``), and any
registered inversion method may be named. Later issues add learned recipes to
:data:`RECIPES` by the same mechanism.

>>> RECIPES["fast"].background
'vsharp'
>>> r = with_overrides(RECIPES["fast"], inversion="tv", inversion_params={"max_iterations": 20})
>>> (r.name, r.inversion, r.inversion_params["max_iterations"])
('fast+custom', 'tv', 20)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from ..errors import ParameterError

__all__ = ["Recipe", "RECIPES", "PHASE_NETWORK_SKIPS", "PHASE_REFINEMENTS", "get_recipe", "with_overrides"]


#: What may follow a phase network: nothing, or LoT data consistency (:mod:`torchqsm.refine.lot_tv`).
PHASE_REFINEMENTS = ("none", "lot")
#: The recipe fields a phase-network recipe does not use (its network replaces those steps).
PHASE_NETWORK_SKIPS = ("unwrap", "unwrap_params", "combine", "background", "background_params", "inversion",
                       "inversion_params")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Recipe:
    """The method and parameters of every pipeline step (the choices: the tables of :mod:`~torchqsm.pipeline.steps`).

    Attributes
    ----------
    name
        Recipe name, recorded in the sidecar.
    description
        One line for ``torchqsm run --list-recipes``.
    mask
        ``otsu`` or ``threshold`` (magnitude-based) or ``quality`` (ROMEO phase quality);
        a mask file given by the user replaces this step.
    mask_erode_voxels
        Voxels eroded from the brain mask after it is made (before background removal).
    brain_extraction_mm
        When positive, cut the scalp off a magnitude mask by an opening with a ball of this
        radius (:func:`torchqsm.preprocess.brain.extract_brain`); 0 keeps the head mask.
    unwrap
        ``laplacian`` (FFT, via LoT; smooth, not exact 2π multiples) or
        ``region_growing`` (quality-guided, exact 2π multiples).
    unwrap_params
        Parameters of the unwrapper (e.g. ``max_iterations`` of the Laplacian's CG on the mask).
    combine
        ``phase_difference`` (consecutive echoes' phase differences are unwrapped and fitted:
        no receive offset, gradients scaled by ΔTE rather than TE, so late echoes alias less),
        ``weighted_fit`` (magnitude-weighted fit of unwrapped phase against TE with the receive
        offset removed) or ``per_echo`` (each echo's field through background removal, then a
        TE-weighted average of the local fields).
    background, background_params
        A name in :data:`torchqsm.preprocess.background.BACKGROUND_METHODS` and its parameters.
    inversion, inversion_params
        A name in the method registry (``torchqsm methods``) and its parameters.
    reference
        ``mean``: subtract the mean χ over the final mask; ``region``: over a given region
        (e.g. a CSF mask: ``--reference-mask``); ``none``.
    phase_network
        When set (``iqsm``, ``iqsm+``, or a phase network's weights name or card), the mask step is
        followed by this network, wrapped phase → χ (:mod:`torchqsm.pipeline.phase_networks`), and
        then referencing: unwrapping, echo combination, background removal and inversion do not run.
    phase_refine
        After a phase network: ``lot`` corrects its χ so that its field's Laplacian matches the
        congruent Laplacian of the wrapped phase (:func:`torchqsm.refine.lot_tv_consistency`: a
        TV-regularised correction on the data's grid, α by the phase's noise; no unwrapping or background
        removal); ``none`` keeps the network's output.
    """

    name: str
    description: str
    mask: str = "otsu"
    mask_erode_voxels: int = 0
    brain_extraction_mm: float = 0.0
    unwrap: str = "laplacian"
    unwrap_params: Mapping[str, Any] = field(default_factory=dict)
    combine: str = "weighted_fit"
    background: str = "vsharp"
    background_params: Mapping[str, Any] = field(default_factory=dict)
    inversion: str = "tikhonov"
    inversion_params: Mapping[str, Any] = field(default_factory=dict)
    reference: str = "mean"
    phase_network: str = ""
    phase_refine: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "unwrap_params", _frozen(self.unwrap_params))
        object.__setattr__(self, "background_params", _frozen(self.background_params))
        object.__setattr__(self, "inversion_params", _frozen(self.inversion_params))
        from . import steps  # the step tables are the one list of choices

        for stage, table in (("mask", steps.MASK), ("unwrap", steps.UNWRAP), ("combine", steps.COMBINE),
                             ("reference", steps.REFERENCE)):
            _check_choice(stage, getattr(self, stage), tuple(table))
        _check_choice("phase refinement", self.phase_refine, PHASE_REFINEMENTS)
        if self.phase_refine != "none" and not self.phase_network:
            raise ParameterError(f"phase refinement '{self.phase_refine}' follows a phase network; the recipe "
                                 f"'{self.name}' has none")
        if not (isinstance(self.brain_extraction_mm, (int, float)) and self.brain_extraction_mm >= 0):
            raise ParameterError(f"brain extraction radius must be >= 0 mm, got {self.brain_extraction_mm!r}")
        if not isinstance(self.mask_erode_voxels, int) or self.mask_erode_voxels < 0:
            raise ParameterError(f"mask erosion must be a non-negative number of voxels, got {self.mask_erode_voxels!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (for the sidecar)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if self.phase_network and f.name in PHASE_NETWORK_SKIPS:
                continue  # steps the phase network replaces: not run, not recorded
            if not self.phase_network and f.name in ("phase_network", "phase_refine"):
                continue
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out


def _check_choice(step: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParameterError(f"unknown {step} method '{value}'; choose one of {', '.join(choices)}")


# Choices measured on benchmarks/bench_pipeline.py's 176×176×160 × 4-echo acquisition (χ NRMSE):
# the Laplacian box solve alone (max_iterations=0) leaves a harmonic error that background
# removal discards (29.7 % vs 29.8 % with 20 CG steps, 2.5× less unwrapping time); echo
# differences beat the per-echo weighted fit after region growing (TV 6.1 % vs 34 %); TV with
# regularization 3e-4 beat 1e-4 and 1e-3 (6.1 / 14.8 / 6.8 %) and 30 iterations matched 50.
# Both recipes regularize automatically (the methods' default "auto": GCV for Tikhonov, noise
# scaling for TV; torchqsm.inversion.regularization), not with a value fitted to one phantom.
# On the evaluation suite's atlas head (1 mm, baseline case): the Otsu mask holds the scalp
# (2.45 M voxels vs the brain's 2.03 M); brain extraction by a 6 mm opening gives Dice 0.998,
# and 2 voxels of erosion drop the edge voxels whose phase aliases near the air cavities
# (fast 240 -> 67.5 %, accurate 49 -> 46 %). Tikhonov with the identity regulariser beat the
# gradient one from the true local field there (45 % vs 79 %).
# fast unwraps congruently (laplacian_unwrap congruent=True, 20 CG steps on the mask): the
# least-squares Laplacian estimate flattens phase that aliases next to strong sources, and the
# suite's haemorrhage came out at 0.736 ppm against 1.451 (NRMSE 58.8 %); congruent 1.224 ppm
# (39.8 %; region growing 1.123 ppm, 45.8 %). Near neutral elsewhere: baseline 63.8 -> 64.2 %, tilt-30deg 65.4 -> 66.2 %,
# snr-30 75.9 -> 76.2 %, vessels 61.5 -> 61.6 %; on the in vivo crop it equals region growing up to
# a smooth 0.010 ppm (no voxel half a wrap apart). The congruent box solve alone (no CG) made 2π
# jumps (baseline 114 %). accurate unwraps the same way, in place of quality-guided region growing:
# haemorrhage 33.3 -> 25.8 % (lesion 1.316 -> 1.378 ppm), baseline 48.8, tilt-60deg 44.4 and snr-30
# 60.0 % unchanged, each run 1-25 s faster (2026-12-06, 1 thread).
_MASKING: Mapping[str, Any] = {"mask": "otsu", "brain_extraction_mm": 6.0, "mask_erode_voxels": 2}
#: What the field recipes share before background removal: masking, unwrapping, echo combination.
_FIELD_FRONT_END: Mapping[str, Any] = {**_MASKING, "unwrap": "laplacian", "combine": "phase_difference",
                                       "unwrap_params": {"max_iterations": 20, "congruent": True}}
RECIPES: Mapping[str, Recipe] = MappingProxyType({
    "fast": Recipe(
        name="fast",
        description="Otsu mask, scalp cut, congruent Laplacian unwrapping of echo differences, V-SHARP, Tikhonov",
        **_FIELD_FRONT_END,
        background="vsharp", inversion="tikhonov",
    ),
    "accurate": Recipe(
        name="accurate",
        description="Otsu mask, scalp cut, congruent Laplacian unwrapping of echo differences, iSMV, total variation "
                    "(FANSI)",
        **_FIELD_FRONT_END,
        background="ismv", inversion="tv", inversion_params={"max_iterations": 30},
    ),
    "nextqsm": Recipe(
        name="nextqsm",
        description="Otsu mask, scalp cut, congruent Laplacian unwrapping of echo differences, then NeXtQSM's two "
                    "networks trained end to end: the background U-Net and the variational network",
        **_FIELD_FRONT_END,
        background="nextqsm", background_params={"weights": "nextqsm-pipeline-cpu-background"},
        inversion="nextqsm", inversion_params={"weights": "nextqsm-pipeline-cpu-inversion"},
    ),
    "iqsm": Recipe(
        name="iqsm",
        description="Otsu mask, scalp cut, then the iQSM network: wrapped multi-echo phase → χ (LoT + U-Net), "
                    "then LoT data consistency",
        **_MASKING, phase_network="iqsm", phase_refine="lot",
    ),
    "iqsm+": Recipe(
        name="iqsm+",
        description="Otsu mask, scalp cut, then the iQSM+ network: wrapped phase and B0 direction → χ (OA-LFE), "
                    "then LoT data consistency",
        **_MASKING, phase_network="iqsm+", phase_refine="lot",
    ),
})


#: ``NAME`` + this suffix: a phase-network recipe without its refinement (``iqsm+-bare``: the network alone).
BARE_SUFFIX = "-bare"


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; :class:`ParameterError` listing the names otherwise.

    A phase-network recipe's name with :data:`BARE_SUFFIX` (``iqsm-bare``, ``iqsm+-bare``) is that
    recipe with ``phase_refine="none"``: the bare network, for benchmarks that compare the two.

    >>> get_recipe("iqsm+-bare").phase_refine
    'none'
    """
    base = name[: -len(BARE_SUFFIX)] if name.endswith(BARE_SUFFIX) else None
    if base in RECIPES and RECIPES[base].phase_network:
        return replace(RECIPES[base], name=name, phase_refine="none",
                       description=RECIPES[base].description.replace(", then LoT data consistency", ""))
    try:
        return RECIPES[name]
    except KeyError:
        raise ParameterError(f"unknown recipe '{name}'; choose one of {', '.join(sorted(RECIPES))} (a phase-network "
                             f"recipe also as NAME{BARE_SUFFIX}: without its refinement)") from None


def with_overrides(recipe: Recipe, **changes: Any) -> Recipe:
    """``recipe`` with some fields replaced; the name gains ``+custom`` when anything changed.

    Parameters given for the recipe's own background or inversion method are merged
    with the recipe's; naming another method drops the old method's parameters.
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = set(changes) - {f.name for f in fields(Recipe)}
    if unknown:
        raise ParameterError(f"unknown recipe field(s): {', '.join(sorted(unknown))}")
    skipped = sorted(set(changes) & set(PHASE_NETWORK_SKIPS)) if changes.get("phase_network", recipe.phase_network) else []
    if skipped:
        raise ParameterError(f"the recipe '{recipe.name}' runs the phase network "
                             f"'{changes.get('phase_network', recipe.phase_network)}' on the wrapped phase: it has no "
                             f"{', '.join(s.replace('_params', ' parameters') for s in skipped)} to change")
    for step in ("unwrap", "background", "inversion"):
        key = f"{step}_params"
        same_method = changes.get(step, getattr(recipe, step)) == getattr(recipe, step)
        # Parameters of an unchanged method merge with the recipe's; a new method starts afresh.
        base = dict(getattr(recipe, key)) if same_method else {}
        base.update(changes.get(key) or {})
        if key in changes or not same_method:
            changes[key] = base
    updated = replace(recipe, **changes)
    if updated != recipe and not recipe.name.endswith("+custom"):
        updated = replace(updated, name=f"{recipe.name}+custom")
    return updated
