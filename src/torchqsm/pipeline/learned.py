r"""Learned dipole inversions in the method registry, alone and composed with a refinement.

Each shipped model card (``torchqsm models``) whose architecture is one of
:data:`LEARNED_ARCHITECTURES` makes a method of that name (the first card of the architecture, by name, gives
the default ``weights``), and every such method ``NET`` also appears as ``NET+dfqsm``,
``NET+dll2`` and ``NET+fine`` (the plain networks only): a composition of the network's spec and the refinement's
(:func:`torchqsm.refine.dfqsm`, :func:`~torchqsm.refine.dll2`, :func:`~torchqsm.refine.fine`).
The registry reads the cards on the first lookup of a learned method (:func:`learned_specs`),
never at import; a card that cannot be read makes its method raise one
:class:`~torchqsm.errors.InputError` naming the file, and leaves every other method working.

Geometry. Every method takes the acquisition record. The data-consistent networks
(:data:`CONSISTENT_ARCHITECTURES`) apply the record's dipole operator inside, on the whole
volume at its own B0 direction and voxel size. The refinements always apply the
record's dipole operator (its B0 direction, voxel size, padding). The plain network runs on
the data's own grid when B0 lies within the tilt the network was trained on (the card's
``training.config.data.max_tilt_deg``; 0 when the card does not say), and otherwise, by
default (``reorient`` = none), first rotates B0 onto the third axis and resamples to the
card's voxel size, and back after (AFTER-QSM style, :func:`torchqsm.models.to_model_frame`).
``reorient=true`` always does so; ``reorient=false`` never, and then says in one warning line
that the network was not trained at this direction.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Any

import torch

from ..acquisition import Acquisition
from ..errors import InputError
from ..inversion._common import prepare
from ..validation import LOG
from .methods import DFQSMParameters, DLL2Parameters, FINEParameters
from .specs import Parameters, param

__all__ = ["LEARNED_ARCHITECTURES", "CONSISTENT_ARCHITECTURES", "ORIENTATION_ADAPTIVE", "REFINEMENTS",
           "WeightsParameters", "NetworkParameters", "learned_specs", "method_of_card", "split_method",
           "check_field_units", "load_cached", "network_inversion", "shipped_defaults", "training_tilt_deg"]

LEARNED_ARCHITECTURES = ("unet", "xqsm", "qsmnet", "lpcnn", "noqsm", "noqsm-sd", "nextqsm")
#: The data-consistent networks (:mod:`torchqsm.models.unrolled`): the record's dipole operator is
#: applied inside them, on the whole volume; they are not tiled, reoriented or composed with a refinement.
CONSISTENT_ARCHITECTURES = ("lpcnn", "noqsm", "noqsm-sd", "nextqsm")
#: The method name of a backbone trained with an OA-LFE module after each convolution
#: (``hyperparameters.orientation_adaptive`` in its card; iQSM+ paper): it takes the record's B0 direction
#: at call time, runs at any orientation on the data's own grid, and is not composed with a refinement.
ORIENTATION_ADAPTIVE = {"unet": "unet+oalfe", "xqsm": "xqsm+", "qsmnet": "qsmnet+oalfe"}

_NOQSM = ("Zhang Q, Guo Y, Chen W. NoQSM-net: combining convolutional neural network with numerical optimization "
          "algorithm for quantitative susceptibility mapping reconstruction. IEEE Access 2024. "
          "doi:10.1109/ACCESS.2024.3368518")
_REFERENCES = {
    "unet": "Paluru N, Mathew RS, Yalavarthy PK. DF-QSM: data fidelity based hybrid approach for improved "
            "generalization of deep learning based quantitative susceptibility mapping. NMR Biomed 2024;e5163 "
            "(the 3-D U-Net of its prediction stage). doi:10.1002/nbm.5163",
    "xqsm": "Gao Y, Zhu X, Moffat BA, et al. xQSM: quantitative susceptibility mapping with octave convolutional and "
            "noise-regularized neural networks. NMR Biomed 2021;34:e4461. doi:10.1002/nbm.4461",
    "qsmnet": "Yoon J, Gong E, Chatnuntawech I, et al. Quantitative susceptibility mapping using deep neural network: "
              "QSMnet. NeuroImage 2018;179:199-206. doi:10.1016/j.neuroimage.2018.06.030",
    "lpcnn": "Lai K-W, Aggarwal M, van Zijl P, Li X, Sulam J. Learned proximal networks for quantitative "
             "susceptibility mapping. MICCAI 2020, LNCS 12262:125-135. doi:10.1007/978-3-030-59713-9_13",
    "noqsm": _NOQSM,
    "noqsm-sd": _NOQSM + " (its steepest-descent ablation, NoQSM-SD)",
    "nextqsm": "Cognolato F, O'Brien K, Jin J, et al. NeXtQSM: a complete deep learning pipeline for data-consistent "
               "quantitative susceptibility mapping trained with hybrid data. Med Image Anal 2023;84:102700. "
               "doi:10.1016/j.media.2022.102700 (its variational network)",
}
_OALFE = ("Gao Y, Xiong Z, Shan S, et al. Plug-and-play latent feature editing for orientation-adaptive quantitative "
          "susceptibility mapping neural networks. Med Image Anal 2024;94:103160. doi:10.1016/j.media.2024.103160")
for _backbone, _name in ORIENTATION_ADAPTIVE.items():
    _REFERENCES[_name] = f"{_REFERENCES[_backbone]}; with OA-LFE: {_OALFE}"


@dataclass(frozen=True, kw_only=True)
class WeightsParameters(Parameters):
    weights: str = param("", description="shipped weights name, or path to a .json card (torchqsm models)")


@dataclass(frozen=True, kw_only=True)
class NetworkParameters(WeightsParameters):
    tile_size: int = param(0, ge=0, unit="voxels",
                           description="tile edge for memory-bounded inference; 0: whole volume (tiled if needed)")
    reorient: bool | None = param(None, description="rotate B0 onto axis 3 and resample to the card's voxels first; "
                                                    "none: when B0 is tilted beyond the training range")


@dataclass(frozen=True)
class Refinement:
    """A refinement stage of a composed method: its parameters, summary and reference."""

    name: str
    parameters: type[Parameters]
    summary: str
    reference: str


REFINEMENTS: dict[str, Refinement] = {
    "dfqsm": Refinement("dfqsm", DFQSMParameters, "refined by DF-QSM (early-stopped gradient descent on the data "
                        "fidelity)", "Paluru N, Mathew RS, Yalavarthy PK. NMR Biomed 2024;e5163. doi:10.1002/nbm.5163"),
    "dll2": Refinement("dll2", DLL2Parameters, "refined by DLL2 (data fidelity + distance to the network's χ)",
                       "Liu Z, Zhang J, Zhang S, et al. QSM using a deep learning prior. Proc ISMRM 2019;27:4933"),
    "fine": Refinement("fine", FINEParameters, "fine-tuned on the data by FINE (test-time network weight update)",
                       "Zhang J, Liu Z, Zhang S, et al. NeuroImage 2020;211:116579. "
                       "doi:10.1016/j.neuroimage.2020.116579"),
}


def method_of_card(card: dict[str, Any]) -> str:
    """The registry method a model card makes: its architecture, or its orientation-adaptive variant's name.

    >>> method_of_card({"architecture": "xqsm", "hyperparameters": {"orientation_adaptive": True}})
    'xqsm+'
    >>> method_of_card({"architecture": "unet", "hyperparameters": {}})
    'unet'
    """
    architecture = card["architecture"]
    if (card.get("hyperparameters") or {}).get("orientation_adaptive") and architecture in ORIENTATION_ADAPTIVE:
        return ORIENTATION_ADAPTIVE[architecture]
    return architecture


def split_method(name: str) -> tuple[str, str | None]:
    """A learned method (with its ``:key=value`` parameters) split into the network's method and its refinement.

    The parameters stay with the refinement when there is one, else with the network.

    >>> split_method("unet+dfqsm"), split_method("xqsm+"), split_method("unet+oalfe")
    (('unet', 'dfqsm'), ('xqsm+', None), ('unet+oalfe', None))
    >>> split_method("unet+fine:max_iterations=3")
    ('unet', 'fine:max_iterations=3')
    """
    method, colon, parameters = name.partition(":")
    head, _, tail = method.rpartition("+")
    if head and tail in REFINEMENTS:
        return head, tail + colon + parameters
    return name, None


@functools.lru_cache(maxsize=8)
def load_cached(weights: str, device: str):
    """Shipped weights by name on a device, loaded once per process."""
    from ..models.weights import load_weights

    return load_weights(weights, device=device)


def training_tilt_deg(card: dict[str, Any]) -> float:
    """The largest B0 tilt from the third axis (degrees) the card's network was trained on; 0 if unknown."""
    try:
        return float(card["training"]["config"]["data"]["max_tilt_deg"])
    except (KeyError, TypeError, ValueError):
        return 0.0


def _tilt_deg(acquisition: Acquisition) -> float:
    return math.degrees(math.acos(min(1.0, abs(acquisition.b0_dir[2]))))


#: The largest 99th percentile of |local field| (ppm) in the mask a network accepts. Tissue local fields
#: stay well below 1 ppm (veins and haemorrhage reach a few tenths); the same field in Hz is γ̄B0 ≈ 64-298
#: times larger (1.5-7 T), so it lands far above.
FIELD_LIMIT_PPM = 3.0


def check_field_units(field_ppm: torch.Tensor, mask: torch.Tensor, method: str) -> None:
    """Refuse a field that cannot be a local field in ppm: a network, unlike a linear solver, gives silently
    wrong χ for a field in other units.

    >>> field = torch.full((4, 4, 4), 0.2)                # ppm; × 128 below: the same field in Hz at 3 T
    >>> check_field_units(field, torch.ones(4, 4, 4, dtype=torch.bool), "unet")
    >>> check_field_units(field * 128, torch.ones(4, 4, 4, dtype=torch.bool), "unet")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    torchqsm.errors.InputError: unet: the local field reaches 25.6 in the mask (99th percentile of |field|), but ...
    """
    inside = field_ppm[mask.bool()].detach().abs().float()
    if inside.numel() == 0:
        return
    level = float(torch.quantile(inside[:: max(1, inside.numel() // 1_000_000)], 0.99))
    if level > FIELD_LIMIT_PPM:
        raise InputError(f"{method}: the local field reaches {level:.3g} in the mask (99th percentile of |field|), but "
                         f"a local field in ppm of B0 stays below {FIELD_LIMIT_PPM:g} ppm: is it in Hz or radians? "
                         "Convert it to ppm (torchqsm.physics.units.hz_to_ppm: divide Hz by γ̄B0 = 42.58 Hz/ppm/T × B0)")


#: A network whose card scores a demeaned NRMSE above this (%) on the evaluation suite gets a warning:
#: NRMSE² is the error's variance over χ's, so above 1/√2 its error carries more than half of χ's variance.
WEAK_NRMSE_PERCENT = 100 / math.sqrt(2)


def warn_if_weak(loaded, method: str) -> bool:
    """Log one warning when the card of ``loaded`` records a suite NRMSE above :data:`WEAK_NRMSE_PERCENT`.

    Returns whether it warned. Cards without suite metrics stay silent: nothing is known to warn about.

    >>> from types import SimpleNamespace
    >>> weak = SimpleNamespace(name="w", card={"metrics": {"suite": {"nrmse": 101.2}, "suite_case_of_headline": "baseline"}})
    >>> warn_if_weak(weak, "xqsm"), warn_if_weak(SimpleNamespace(name="s", card={"metrics": {"suite": {"nrmse": 42.3}}}), "noqsm")
    (True, False)
    """
    metrics = loaded.card.get("metrics") or {}
    try:
        score = float(metrics["suite"]["nrmse"])
    except (KeyError, TypeError, ValueError):
        return False
    if not score > WEAK_NRMSE_PERCENT:
        return False
    case = metrics.get("suite_case_of_headline", "baseline")
    LOG.warning("%s: the weights '%s' score %.0f %% NRMSE on the evaluation suite's %s case (their card: torchqsm "
                "models); above %.0f %% an error carries more than half of χ's variance. Compare with a classical "
                "inversion (torchqsm invert --method tv, or torchqsm run --recipe fast) before reading this map",
                method, loaded.name, score, case, WEAK_NRMSE_PERCENT)
    return True


def network_inversion(local_field_ppm: torch.Tensor, mask: torch.Tensor, acquisition: Acquisition | None = None, *,
                      weights: str, tile_size: int = 0, reorient: bool | None = None,
                      method: str = "network", warn_weak: bool = True) -> torch.Tensor:
    """χ (ppm) of the shipped network ``weights`` on a local field (ppm), in the record's geometry.

    ``warn_weak``: warn when the card scores the network weak on the suite (:func:`warn_if_weak`);
    a refinement, which goes on from the network's χ, turns it off.
    """
    from ..models.inference import predict

    problem = prepare(local_field_ppm, mask, acquisition, method=method, pad=0)
    check_field_units(problem.field, problem.mask, method)
    loaded = load_cached(weights, str(problem.field.device))
    if loaded.card["architecture"] not in LEARNED_ARCHITECTURES:  # a background or phase network
        raise InputError(f"{method}: '{weights}' is a '{loaded.card['architecture']}' network, not a dipole inversion "
                         f"(local field → χ: {', '.join(LEARNED_ARCHITECTURES)})", source=str(loaded.path))
    if warn_weak:
        warn_if_weak(loaded, method)
    record = problem.acquisition
    if loaded.card["architecture"] in CONSISTENT_ARCHITECTURES:
        from ..models.inference import predict_consistent

        return problem.finish(predict_consistent(loaded.model, problem.field.float(), problem.mask,
                                                 normalization=loaded.normalization, b0_dir=record.b0_dir,
                                                 voxel_size_mm=record.voxel_size_mm, device=problem.field.device))
    field = problem.field.float()
    options = {"normalization": loaded.normalization, "tile_size": tile_size or None, "device": field.device}
    if getattr(loaded.model, "orientation_adaptive", False):
        # Told B0 (OA-LFE): runs at any direction on the data's grid; reorient=true rotates B0 onto axis 3 first.
        if not reorient:
            return problem.finish(predict(loaded.model, field, problem.mask, b0_dir=record.b0_dir, **options))
        rotated, rotated_mask, frame = _to_network_frame(loaded, record, field, problem.mask)
        return problem.finish(frame.to_original(predict(loaded.model, rotated, rotated_mask, b0_dir=(0.0, 0.0, 1.0),
                                                        **options)))
    trained = training_tilt_deg(loaded.card)
    beyond = _beyond_training_tilt(loaded, record)
    if reorient is None:
        reorient = beyond
    elif not reorient and beyond:
        LOG.warning("%s: the network '%s' was trained with B0 within %.0f° of axis 3; it runs at this %.1f° tilt as "
                    "given (reorient=true rotates the field first)", method, loaded.name, trained, _tilt_deg(record))
    if not reorient:
        return problem.finish(predict(loaded.model, field, problem.mask, **options))
    rotated, rotated_mask, frame = _to_network_frame(loaded, record, field, problem.mask)
    return problem.finish(frame.to_original(predict(loaded.model, rotated, rotated_mask, **options)))


def _beyond_training_tilt(loaded, record: Acquisition) -> bool:
    """Whether B0 is tilted beyond what the (plain) network was trained on: it then runs in its own frame."""
    return _tilt_deg(record) > training_tilt_deg(loaded.card) + 0.1


def _to_network_frame(loaded, record: Acquisition, image: torch.Tensor, mask: torch.Tensor):
    """``image`` and ``mask`` rotated so that B0 lies along axis 3, on the network's voxels, and the frame back."""
    from ..models.reorient import to_model_frame

    voxel = tuple(loaded.card.get("voxel_size_mm", (1.0, 1.0, 1.0)))
    return to_model_frame(image, mask, voxel_size_mm=record.voxel_size_mm, b0_dir=record.b0_dir,
                          model_voxel_size_mm=voxel)


def refined_inversion(local_field_ppm: torch.Tensor, mask: torch.Tensor, acquisition: Acquisition | None = None, *,
                      refinement: str, method: str, callback=None, **values: Any) -> torch.Tensor:
    """The network's χ refined by ``refinement``: the composition the registry runs for ``NET+REFINEMENT``."""
    from .. import refine

    network_names = set(NetworkParameters.names() if refinement != "fine" else WeightsParameters.names())
    network = {k: v for k, v in values.items() if k in network_names}
    rest = {k: v for k, v in values.items() if k not in network_names}
    if refinement == "fine":
        problem = prepare(local_field_ppm, mask, acquisition, method=method, pad=rest.get("pad"))
        check_field_units(problem.field, problem.mask, method)
        loaded = load_cached(network["weights"], str(problem.field.device))
        record = problem.acquisition
        if (loaded.card["architecture"] in CONSISTENT_ARCHITECTURES or getattr(loaded.model, "orientation_adaptive", False)
                or not _beyond_training_tilt(loaded, record)):  # told B0, or trained at this tilt: the data's grid
            return refine.fine(loaded.model, local_field_ppm, mask, record, normalization=loaded.normalization,
                               callback=callback, **rest)
        # Beyond the tilts it was trained on, the network runs in its own frame (as `network_inversion` does):
        # FINE fine-tunes it there, on the rotated field, against the dipole of that frame (B0 along axis 3).
        rotated, rotated_mask, frame = _to_network_frame(loaded, record, problem.field.float(), problem.mask)
        if rest.get("magnitude") is not None:
            rest["magnitude"] = _to_network_frame(loaded, record, torch.as_tensor(rest["magnitude"]).float(),
                                                  problem.mask)[0]
        network_frame = Acquisition(voxel_size_mm=frame.model_voxel_size_mm, b0_dir=(0.0, 0.0, 1.0))
        chi = refine.fine(loaded.model, rotated, rotated_mask, network_frame, normalization=loaded.normalization,
                          callback=callback, **rest)
        return problem.finish(frame.to_original(chi))
    chi0 = network_inversion(local_field_ppm, mask, acquisition, method=method, warn_weak=False, **network)
    return getattr(refine, refinement)(chi0, local_field_ppm, mask, acquisition, callback=callback, **rest)


def _composed_parameters(architecture: str, refinement: Refinement, weights: str) -> type[Parameters]:
    network = NetworkParameters if refinement.name != "fine" else WeightsParameters
    name = f"{architecture.capitalize()}{refinement.name.upper()}Parameters"
    composed = make_dataclass(name, [], bases=(refinement.parameters, network), frozen=True, kw_only=True,
                              namespace={"__module__": __name__})
    return composed.with_defaults(name, weights=weights)


def _broken(error: InputError) -> Callable[..., torch.Tensor]:
    def unavailable(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise error
    return unavailable


def _shipped_cards() -> tuple[dict[str, str], dict[str, InputError]]:
    """Method → its default shipped card's name; method → an unreadable card's error.

    The default is the card marked ``"default": true``, else the first by file name.
    """
    from ..models.weights import SHIPPED_DIR, model_card

    defaults: dict[str, str] = {}
    marked: dict[str, str] = {}
    broken: dict[str, InputError] = {}
    for path in sorted(Path(SHIPPED_DIR).glob("*.json")):
        try:
            card = model_card(path.stem)
        except InputError as error:
            stem = path.stem.split("-hybrid")[0] if "-hybrid" in path.stem else path.stem.split("-")[0]
            broken.setdefault({"unet-oalfe": "unet+oalfe", "xqsm-plus": "xqsm+"}.get(stem, stem), error)
            continue
        defaults.setdefault(method_of_card(card), card["name"])
        if card.get("default") is True:
            marked.setdefault(method_of_card(card), card["name"])
    return {**defaults, **marked}, broken


def shipped_defaults() -> dict[str, str]:
    """Method (``unet``, ``xqsm+`` ...) → the name of its default shipped weights (what the registry loads)."""
    return _shipped_cards()[0]


def learned_specs() -> list:
    """The learned methods of the shipped cards (read now), as registry specs: each network and its compositions.

    A card that cannot be read gives its architecture (from the file name ``ARCH-...``) a method
    that raises the card's :class:`InputError`, unless another card of that architecture reads.
    """
    from .registry import MethodSpec

    defaults, broken = _shipped_cards()
    specs = []
    for architecture in (*LEARNED_ARCHITECTURES, *ORIENTATION_ADAPTIVE.values()):
        if architecture not in defaults and architecture not in broken:
            continue
        weights = defaults.get(architecture, "")
        network = functools.partial(network_inversion, method=architecture)
        if architecture not in defaults:
            network = _broken(broken[architecture])
        summary = f"The {architecture} network (shipped weights '{weights or 'unavailable'}'): local field → χ."
        title = architecture.replace("-", " ").title().replace(" ", "")
        if architecture in CONSISTENT_ARCHITECTURES:
            summary = (f"The data-consistent {architecture} network (shipped weights '{weights or 'unavailable'}'): "
                       "local field → χ with the record's dipole operator inside.")
            specs.append(MethodSpec(architecture, network, WeightsParameters.with_defaults(
                f"{title}Parameters", weights=weights), kind="learned", summary=summary,
                references=(_REFERENCES[architecture],)))
            continue
        if architecture in ORIENTATION_ADAPTIVE.values():
            summary = (f"The orientation-adaptive {architecture.split('+')[0]} network with OA-LFE (shipped weights "
                       f"'{weights or 'unavailable'}'): local field and the record's B0 direction → χ.")
        title = title.replace("+", "Oa")
        specs.append(MethodSpec(architecture, network, NetworkParameters.with_defaults(
            f"{title}Parameters", weights=weights), kind="learned", summary=summary,
            references=(_REFERENCES[architecture],)))
        if architecture in ORIENTATION_ADAPTIVE.values():
            continue
        for refinement in REFINEMENTS.values():
            name = f"{architecture}+{refinement.name}"
            function = functools.partial(refined_inversion, refinement=refinement.name, method=name)
            specs.append(MethodSpec(name, function if architecture in defaults else network,
                                    _composed_parameters(architecture, refinement, weights), kind="learned",
                                    summary=f"The {architecture} network, {refinement.summary}.",
                                    references=(_REFERENCES[architecture], refinement.reference), progress=True))
    return specs
