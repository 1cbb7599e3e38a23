r"""Learned dipole inversions in the method registry, alone and with a refinement.

Each shipped model card (``torchqsm models``) whose architecture is ``unet``, ``xqsm`` or
``qsmnet`` makes a method of that name (the first card of the architecture, by name, is the
default ``weights``), and every such method ``NET`` also appears as ``NET+dfqsm``,
``NET+dll2`` and ``NET+fine``: the network's χ refined by
:func:`torchqsm.refine.dfqsm` / :func:`~torchqsm.refine.dll2`, or the network itself
fine-tuned on the data by :func:`~torchqsm.refine.fine`. An architecture without shipped
weights is not registered, so every listed method runs.

Orientation and resolution: by default the network runs on the data's own grid and B0
direction (the shipped networks were trained on oblique B0 and apply at any direction; a
voxel size other than the training one is used as is). ``reorient=True`` instead rotates
B0 onto the third axis and resamples to the card's voxel size first and back after
(AFTER-QSM style, :func:`torchqsm.models.reorient.to_model_frame`), at the cost of two
interpolations.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..inversion._common import prepare
from ..models.inference import predict
from ..models.reorient import to_model_frame
from ..models.weights import LoadedModel, list_models, load_weights
from ..refine import dfqsm, dll2, fine

__all__ = ["LEARNED_ARCHITECTURES", "REFINEMENTS", "learned_method", "refined_method", "shipped_defaults",
           "load_cached"]

LEARNED_ARCHITECTURES = ("unet", "xqsm", "qsmnet")
REFINEMENTS: dict[str, Callable[..., torch.Tensor]] = {"dfqsm": dfqsm, "dll2": dll2, "fine": fine}
_SHARED = ("local_field_ppm", "mask", "voxel_size_mm", "b0_dir", "callback", "chi_ppm", "model", "normalization")


def shipped_defaults() -> dict[str, str]:
    """Architecture → the name of its default shipped weights (first by name)."""
    defaults: dict[str, str] = {}
    for card in list_models():
        defaults.setdefault(card["architecture"], card["name"])
    return {a: defaults[a] for a in LEARNED_ARCHITECTURES if a in defaults}


@functools.lru_cache(maxsize=8)
def load_cached(weights: str, device: str) -> LoadedModel:
    """Shipped weights by name on a device, loaded once per process."""
    return load_weights(weights, device=device)


def _network_chi(loaded: LoadedModel, field: torch.Tensor, mask: torch.Tensor, *, voxel_size_mm, b0_dir,
                 tile_size: int, reorient: bool) -> torch.Tensor:
    options = {"normalization": loaded.normalization, "tile_size": tile_size or None, "device": field.device}
    if not reorient:
        return predict(loaded.model, field, mask, **options)
    voxel = tuple(loaded.card.get("voxel_size_mm", (1.0, 1.0, 1.0)))
    rotated, rotated_mask, frame = to_model_frame(field, mask, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir,
                                                  model_voxel_size_mm=voxel)
    return frame.to_original(predict(loaded.model, rotated, rotated_mask, **options)) * mask


def learned_method(architecture: str, default_weights: str) -> Callable[..., torch.Tensor]:
    """The registry function of a learned method (shared signature, see the module)."""

    def method(local_field_ppm: torch.Tensor, mask: torch.Tensor, *, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
               b0_dir: Sequence[float] = (0.0, 0.0, 1.0), weights: str = default_weights, tile_size: int = 0,
               reorient: bool = False) -> torch.Tensor:
        problem = prepare(local_field_ppm, mask, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, pad=0)
        loaded = load_cached(weights, str(problem.field.device))
        chi = _network_chi(loaded, problem.field.float(), problem.mask, voxel_size_mm=problem.voxel_size_mm,
                           b0_dir=problem.b0_dir, tile_size=tile_size, reorient=reorient)
        return problem.finish(chi)

    method.__name__ = method.__qualname__ = architecture
    method.__doc__ = f"""The {architecture} network (shipped weights '{default_weights}'): local field → χ.

    Parameters
    ----------
    weights
        Shipped weights name or path to a .json card (``torchqsm models`` lists them).
    tile_size
        Tile edge in voxels for memory-bounded inference (0: whole volume, tiled automatically
        when it would not fit).
    reorient
        Rotate B0 onto the third axis and resample to the card's voxel size first (and back).

    Returns
    -------
    torch.Tensor
        χ (ppm), zero outside the mask.

    References
    ----------
    {_REFERENCES[architecture]}
    """
    return method


_REFERENCES = {
    "unet": "Paluru N, Mathew RS, Yalavarthy PK. DF-QSM: data fidelity based hybrid approach for improved "
            "generalization of deep learning based quantitative susceptibility mapping. NMR Biomed 2024;e5163 "
            "(the 3-D U-Net of its prediction stage). doi:10.1002/nbm.5163",
    "xqsm": "Gao Y, Zhu X, Moffat BA, et al. xQSM: quantitative susceptibility mapping with octave convolutional and "
            "noise-regularized neural networks. NMR Biomed 2021;34:e4461. doi:10.1002/nbm.4461",
    "qsmnet": "Yoon J, Gong E, Chatnuntawech I, et al. Quantitative susceptibility mapping using deep neural network: "
              "QSMnet. NeuroImage 2018;179:199-206. doi:10.1016/j.neuroimage.2018.06.030",
}


def _keyword_parameters(function: Callable) -> list[inspect.Parameter]:
    return [p for name, p in inspect.signature(function).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _SHARED]


def refined_method(name: str, network: Callable[..., torch.Tensor], refinement: str) -> Callable[..., torch.Tensor]:
    """``network`` followed by ``refinement`` (``dfqsm``, ``dll2`` or ``fine``), as one registry function."""
    refine_function = REFINEMENTS[refinement]
    network_parameters = _keyword_parameters(network)
    refine_parameters = [p for p in _keyword_parameters(refine_function)
                         if p.name not in {q.name for q in network_parameters}]
    network_names = {p.name for p in network_parameters}

    def method(local_field_ppm: torch.Tensor, mask: torch.Tensor, *, voxel_size_mm: Sequence[float] = (1.0, 1.0, 1.0),
               b0_dir: Sequence[float] = (0.0, 0.0, 1.0), callback=None, **params: Any) -> torch.Tensor:
        own = {k: v for k, v in params.items() if k in network_names}
        rest = {k: v for k, v in params.items() if k not in network_names}
        geometry = {"voxel_size_mm": voxel_size_mm, "b0_dir": b0_dir}
        if refinement == "fine":
            problem = prepare(local_field_ppm, mask, pad=0, **geometry)
            weights = own.get("weights", inspect.signature(network).parameters["weights"].default)
            loaded = load_cached(weights, str(problem.field.device))
            return fine(loaded.model, local_field_ppm, mask, normalization=loaded.normalization, callback=callback,
                        **geometry, **rest)
        chi0 = network(local_field_ppm, mask, **geometry, **own)
        return refine_function(chi0, local_field_ppm, mask, callback=callback, **geometry, **rest)

    shared = [inspect.Parameter("local_field_ppm", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("mask", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              *(inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
                for n, d in (("voxel_size_mm", (1.0, 1.0, 1.0)), ("b0_dir", (0.0, 0.0, 1.0)), ("callback", None)))]
    keep = network_parameters if refinement != "fine" else [p for p in network_parameters if p.name == "weights"]
    method.__signature__ = inspect.Signature([*shared, *keep, *refine_parameters])  # type: ignore[attr-defined]
    method.__annotations__ = {**inspect.get_annotations(network, eval_str=True),
                              **inspect.get_annotations(refine_function, eval_str=True)}
    method.__name__ = method.__qualname__ = name.replace("+", "_")
    summary = {"dfqsm": "refined by DF-QSM (early-stopped gradient descent on the data fidelity)",
               "dll2": "refined by DLL2 (data fidelity + distance to the network's χ)",
               "fine": "fine-tuned on the data by FINE (test-time network weight update)"}[refinement]
    network_doc = inspect.getdoc(network) or ""
    refine_doc = inspect.getdoc(refine_function) or ""
    method.__doc__ = (f"The {network.__name__} network, {summary}.\n\n"
                      + _parameters_block(network_doc, refine_doc) + "\n\nReferences\n----------\n"
                      + "\n\n".join(_references(doc) for doc in (network_doc, refine_doc)))
    return method


def _section_lines(doc: str, title: str) -> list[str]:
    lines = doc.splitlines()
    for index, line in enumerate(lines[:-1]):
        if line.strip() == title and set(lines[index + 1].strip()) == {"-"}:
            body = []
            for item in lines[index + 2:]:
                if body and item.strip() and set(item.strip()) == {"-"}:
                    body.pop()
                    break
                body.append(item)
            return body
    return []


def _parameters_block(*docs: str) -> str:
    return "Parameters\n----------\n" + "\n".join(line for doc in docs for line in _section_lines(doc, "Parameters"))


def _references(doc: str) -> str:
    return "\n".join(_section_lines(doc, "References")).strip()
