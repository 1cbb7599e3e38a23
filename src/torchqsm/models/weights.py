"""Trained weights as safetensors plus a JSON model card; loading never touches the network.

A model ``NAME`` is two files side by side: ``NAME.safetensors`` (the ``state_dict``,
batch-norm statistics included) and ``NAME.json``, its card. The card says how to rebuild
the network (``architecture`` and ``hyperparameters`` for :func:`~torchqsm.models.build_model`),
which units and :class:`~torchqsm.models.Normalization` it expects, the voxel size and B0
handling of its training data, the training recipe, its metrics on the evaluation suite, the
commit that trained it and the SHA-256 of the weights (checked on every load). The shipped
models live in ``torchqsm/models/weights/``; its README describes the card field by field.

Examples
--------
>>> import tempfile
>>> from torchqsm.models import UNet3d
>>> card = example_card("tiny", base_channels=2, depth=2)
>>> with tempfile.TemporaryDirectory() as folder:
...     path = save_weights(UNet3d(base_channels=2, depth=2), card, folder, "tiny")
...     loaded = load_weights(path)
>>> path.name, loaded.name, loaded.card["parameters"], loaded.model.training
('tiny.safetensors', 'tiny', 5431, False)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from .. import __version__
from ..errors import InputError, ParameterError
from ..io._atomic import check_output_path, write_atomically
from . import ARCHITECTURES, build_model
from .normalization import Normalization

__all__ = ["FORMAT_VERSION", "REQUIRED_CARD_KEYS", "SHIPPED_DIR", "LoadedModel", "example_card", "list_models",
           "load_weights", "model_card", "save_weights"]

#: Version of the card layout written by :func:`save_weights`; newer cards are refused.
FORMAT_VERSION = 1
#: Folder of the weights shipped with torchqsm.
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
#: Keys every card must have (the caller fills them in); see ``weights/README.md``.
REQUIRED_CARD_KEYS = ("name", "architecture", "hyperparameters", "normalization", "units", "voxel_size_mm",
                      "orientation", "training", "metrics", "commit")
#: Keys :func:`save_weights` computes and :func:`load_weights` relies on.
COMPUTED_CARD_KEYS = ("parameters", "sha256", "file", "format_version")
_TRAINING_KEYS = ("recipe", "data", "steps", "samples", "time_s", "hardware", "seed", "config")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference with what its card says about it.

    Attributes
    ----------
    model
        The network, in evaluation mode, on the requested device.
    card
        The model card (a dict, as stored in ``NAME.json``).
    normalization
        Field (ppm) → network input and network output → χ (ppm).
    name
        The card's name.
    path
        The ``.safetensors`` file the weights came from.
    """

    model: nn.Module
    card: dict[str, Any]
    normalization: Normalization
    name: str
    path: Path


def example_card(name: str, *, architecture: str = "unet", **hyperparameters: Any) -> dict[str, Any]:
    """A complete card with placeholder training facts (for tests and as a template).

    >>> sorted(example_card("demo")) == sorted(REQUIRED_CARD_KEYS)
    True
    """
    return {
        "name": name, "architecture": architecture, "hyperparameters": dict(hyperparameters),
        "normalization": Normalization().as_dict(),
        "units": {"input": "ppm (local field)", "output": "ppm (chi)"},
        "voxel_size_mm": [1.0, 1.0, 1.0],
        "orientation": {"b0_dir_training": "along voxel axis 3", "reorient_at_inference": False},
        "training": {"recipe": "none (untrained example)", "data": "none", "steps": 0, "samples": 0, "time_s": 0.0,
                     "hardware": "none", "seed": 0, "config": {}},
        "metrics": {}, "commit": "unknown",
    }


def _card_problems(card: Any, *, computed: bool) -> list[str]:
    """What is missing or malformed in ``card`` (empty when it is complete)."""
    if not isinstance(card, dict):
        return [f"the card must be a JSON object, got {type(card).__name__}"]
    keys = REQUIRED_CARD_KEYS + (COMPUTED_CARD_KEYS if computed else ())
    missing = [key for key in keys if key not in card]
    if missing:
        return [f"the card lacks {', '.join(missing)}"]
    problems = [f"'{key}' must be a JSON object" for key in
                ("hyperparameters", "normalization", "units", "orientation", "training", "metrics")
                if not isinstance(card[key], dict)]
    if problems:
        return problems
    missing = [f"normalization.{k}" for k in ("input_scale_ppm", "output_scale_ppm") if k not in card["normalization"]]
    missing += [f"units.{k}" for k in ("input", "output") if k not in card["units"]]
    missing += [f"training.{k}" for k in _TRAINING_KEYS if k not in card["training"]]
    if missing:
        return [f"the card lacks {', '.join(missing)}"]
    if not isinstance(card["name"], str) or not _NAME.fullmatch(card["name"]):
        problems.append(f"'name' must be letters, digits, '.', '_' or '-', got {card['name']!r}")
    if not isinstance(card["commit"], str):
        problems.append("'commit' must be a string")
    voxel = card["voxel_size_mm"]
    if not (isinstance(voxel, (list, tuple)) and len(voxel) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in voxel)):
        problems.append(f"'voxel_size_mm' must be three positive numbers, got {voxel!r}")
    try:
        Normalization(**card["normalization"])
    except (TypeError, ValueError) as error:
        problems.append(f"'normalization': {error}")
    if "default" in card and not isinstance(card["default"], bool):
        problems.append(f"'default' must be true or false, got {card['default']!r}")
    return problems


def _state_dict_problem(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> str | None:
    """The first key (in the network's order) missing, unexpected or of another shape, or None."""
    for key, tensor in expected.items():
        if key not in found:
            return f"the weights lack '{key}' that {what} has"
        if tuple(found[key].shape) != tuple(tensor.shape):
            return (f"'{key}' has shape {tuple(found[key].shape)} in the weights but {tuple(tensor.shape)} "
                    f"in {what}")
    unexpected = [key for key in found if key not in expected]
    if unexpected:
        return f"the weights have '{unexpected[0]}' that {what} lacks"
    return None


def save_weights(model: nn.Module, card: dict[str, Any], directory: str | os.PathLike[str], name: str, *,
                 overwrite: bool = False) -> Path:
    """Write ``directory/NAME.safetensors`` and its card ``directory/NAME.json``, atomically.

    Parameters
    ----------
    model
        The trained network; its ``state_dict`` (batch-norm buffers included) is saved.
        It must match ``build_model(card["architecture"], **card["hyperparameters"])``
        key for key and shape for shape (unwrap DDP or ``torch.compile`` first).
    card
        Every key of :data:`REQUIRED_CARD_KEYS`; ``card["name"]`` must equal ``name``. Not
        modified: the written card adds ``parameters``, ``sha256`` (of the ``.safetensors``
        bytes), ``file``, ``format_version`` and ``torchqsm_version``.
    directory
        Output folder (created if missing).
    name
        File stem: letters, digits, ``.``, ``_`` and ``-``.
    overwrite
        Replace existing files; otherwise an existing file is an error.

    Returns
    -------
    Path
        The ``.safetensors`` file.

    Raises
    ------
    ParameterError
        The card is incomplete or malformed, or does not describe ``model``.
    InputError
        An output file exists (and not ``overwrite``) or cannot be written. Neither file is
        left half-written, and the weights are removed again if the card cannot be written.
    """
    problems = _card_problems(card, computed=False)
    if problems:
        raise ParameterError("; ".join(problems), source=f"model card '{name}'")
    if card["name"] != name:
        raise ParameterError(f"the card's name '{card['name']}' differs from the file name '{name}'")
    if card["architecture"] not in ARCHITECTURES:
        raise ParameterError(f"unknown architecture '{card['architecture']}' "
                             f"(known: {', '.join(sorted(ARCHITECTURES))})", source=f"model card '{name}'")
    state = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    what = f"architecture '{card['architecture']}' built from the card"
    problem = _state_dict_problem(build_model(card["architecture"], **card["hyperparameters"]).state_dict(),
                                  state, what)
    if problem:
        raise ParameterError(f"the model does not match its card: {problem}", source=f"model card '{name}'")

    data = safetensors.torch.save(state, metadata={"format": "pt", "torchqsm_card": name})
    full = copy.deepcopy(card)
    full.update(parameters=sum(p.numel() for p in model.parameters()), sha256=hashlib.sha256(data).hexdigest(),
                file=f"{name}.safetensors", format_version=FORMAT_VERSION, torchqsm_version=__version__)
    try:
        text = json.dumps(full, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise ParameterError(f"the card cannot be written as JSON: {error}", source=f"model card '{name}'") from None

    directory = Path(directory)
    weights_path = check_output_path(directory / f"{name}.safetensors", overwrite=overwrite)
    card_path = check_output_path(directory / f"{name}.json", overwrite=overwrite)
    write_atomically(weights_path, lambda temporary: temporary.write_bytes(data), overwrite=overwrite)
    try:
        write_atomically(card_path, lambda temporary: temporary.write_text(text, encoding="utf-8"),
                         overwrite=overwrite)
    except BaseException:
        weights_path.unlink(missing_ok=True)  # never weights without their card
        raise
    return weights_path


def _shipped_names() -> list[str]:
    return sorted(path.stem for path in Path(SHIPPED_DIR).glob("*.json"))


def _card_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The card of a shipped name or of a ``.json``/``.safetensors`` path; InputError if missing."""
    path = Path(name_or_path)
    if path.suffix in (".json", ".safetensors"):
        card_path = path.with_suffix(".json")
        if not path.is_file():
            raise InputError("no such model file", source=str(path))
        if not card_path.is_file():
            raise InputError(f"the model card {card_path.name} is missing beside the weights", source=str(path))
        return card_path
    name = str(name_or_path)
    card_path = Path(SHIPPED_DIR) / f"{name}.json"
    if not _NAME.fullmatch(name) or not card_path.is_file():
        shipped = ", ".join(_shipped_names()) or "none yet"
        raise InputError(f"no shipped model '{name}' and not a .safetensors or .json path (shipped: {shipped}, "
                         f"in {SHIPPED_DIR})")
    return card_path


def _read_card(card_path: Path) -> dict[str, Any]:
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"cannot read the model card: {error.strerror or error}", source=str(card_path)) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"the model card is not valid JSON: {error}", source=str(card_path)) from None
    problems = _card_problems(card, computed=True)
    if problems:
        raise InputError("; ".join(problems), source=str(card_path))
    if not isinstance(card["format_version"], int) or card["format_version"] > FORMAT_VERSION:
        raise InputError(f"card format {card['format_version']!r} is newer than this torchqsm reads "
                         f"({FORMAT_VERSION}); update torchqsm", source=str(card_path))
    if not isinstance(card["file"], str) or Path(card["file"]).name != card["file"]:
        raise InputError(f"'file' must be a file name beside the card, got {card['file']!r}", source=str(card_path))
    return card


def model_card(name_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The card of a shipped model (by name) or of a ``.json``/``.safetensors`` file.

    Raises
    ------
    InputError
        Unknown name (the message lists the shipped ones), missing file or malformed card.
    """
    return _read_card(_card_path(name_or_path))


def list_models() -> list[dict[str, Any]]:
    """The cards of the shipped models, sorted by name (empty when none are shipped).

    >>> isinstance(list_models(), list)
    True
    """
    return sorted((_read_card(Path(SHIPPED_DIR) / f"{name}.json") for name in _shipped_names()),
                  key=lambda card: card["name"])


def load_weights(name_or_path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a trained network from its card and weights, checking both on the way.

    Parameters
    ----------
    name_or_path
        A shipped model's name (see :func:`list_models`) or a ``NAME.safetensors`` or
        ``NAME.json`` path (the other file must lie beside it). Only local files are read.
    device
        Where to put the network: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    LoadedModel
        The network in evaluation mode, its card and its normalization.

    Raises
    ------
    InputError
        One line naming the file and the problem: missing file, card not valid JSON or
        incomplete, weights not valid safetensors (e.g. truncated), SHA-256 different from
        the card's, unknown architecture, or weights that do not fit the architecture built
        from the card (the first offending key and both shapes).
    """
    card_path = _card_path(name_or_path)
    card = _read_card(card_path)
    path = Path(name_or_path)
    weights_path = path if path.suffix == ".safetensors" else card_path.parent / card["file"]
    try:
        data = weights_path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the weights: {error.strerror or error}", source=str(weights_path)) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != card["sha256"]:
        raise InputError(f"SHA-256 {digest[:12]}… differs from the card's {str(card['sha256'])[:12]}…: the file is "
                         "corrupt, truncated or not the one the card describes", source=str(weights_path))
    try:
        state = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError, RuntimeError) as error:
        raise InputError(f"not a valid safetensors file ({error})", source=str(weights_path)) from None
    try:
        model = build_model(card["architecture"], **card["hyperparameters"])
    except ParameterError as error:
        raise InputError(error.message, source=str(card_path)) from None
    problem = _state_dict_problem(model.state_dict(), state, f"architecture '{card['architecture']}' built "
                                                             "from the card")
    if problem:
        raise InputError(problem, source=str(weights_path))
    model.load_state_dict(state, strict=True)
    try:
        target = torch.device(device)
    except RuntimeError:
        raise ParameterError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    model = model.to(target).eval()
    return LoadedModel(model=model, card=card, normalization=Normalization(**card["normalization"]),
                       name=card["name"], path=weights_path)
