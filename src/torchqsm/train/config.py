"""Training configuration: one TOML file → frozen dataclasses, validated before any work starts.

A configuration has five tables; every key is optional except ``model.architecture``::

    [model]
    name = "unet-hybrid-cpu"                 # the weights' name (file stem, card name)
    architecture = "unet"                    # torchqsm.models.ARCHITECTURES
    hyperparameters = { base_channels = 8 }  # keywords of the architecture
    init = {}                                # stage → shipped weights to start from (nextqsm-pipeline);
                                             # { network = "NAME" }: the whole network (fine-tuning)

    [normalization]                          # torchqsm.models.Normalization
    input_scale_ppm = 0.02
    output_scale_ppm = 0.1

    [data]                                   # torchqsm.simulate.SimulationConfig (the architecture's task)
    patch_size = [48, 48, 48]                # [] (TOML has no null): whole volumes
    region_size = [96, 96, 96]

    [training]
    steps = 2000
    batch_size = 4
    learning_rate = 5e-4
    milestones = [0.5, 0.75]                 # fractions of steps where the rate is multiplied by gamma
    gamma = 0.1
    loss = { mse = 1.0, l1 = 0.0, model = 0.0, gradient = 0.0, local = 0.0 }
    freeze = []                              # stages not trained (nextqsm-pipeline: "background", "inversion")
    relative_loss = false                    # divide each sample by its target's rms (NRMSE-like)
    demean_loss = false                      # blind to each sample's constant offset (demeaned NRMSE)
    clip_grad_norm = 0.0                     # clip the gradient's norm before each step (0: off)
    seed = 0

    [validation]
    suite_dir = ""                           # a built evaluation suite ("" = no validation)
    cases = ["baseline"]
    every = 500

Relative paths are read relative to the TOML file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from ..errors import InputError, ParameterError
from ..models import ARCHITECTURES, Normalization, task_of
from ..simulate import SimulationConfig

__all__ = ["ModelConfig", "LossWeights", "TrainingConfig", "ValidationConfig", "RunConfig", "load_config",
           "config_from_dict"]


@dataclass(frozen=True)
class ModelConfig:
    """Which network to train and what to call its weights."""

    architecture: str
    name: str = "model"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    #: Stage name → shipped weights (name or card path) that stage starts from, for a network made of
    #: stages (``nextqsm-pipeline``: ``background``, ``inversion``); each must match the stage's
    #: architecture and hyperparameters. The key ``network`` starts the whole network from weights whose
    #: tensors have the same shapes (fine-tuning, e.g. with another ``echo_weighting``); its card's
    #: normalization must be this run's. Empty: every weight starts at random.
    init: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LossWeights:
    r"""Weights of the loss terms (all computed inside the brain mask, in network units).

    ``mse``: :math:`\lVert\hat\chi-\chi\rVert_2^2`; ``l1``: :math:`\lVert\hat\chi-\chi\rVert_1`;
    ``model``: :math:`\lVert D(\hat\chi-\chi)\rVert_2^2` (the field of the error, each sample's own
    B0 direction and voxel size); ``gradient``: :math:`\lVert\nabla\hat\chi-\nabla\chi\rVert_1`;
    ``local``: :math:`\lVert\hat f_L-f_L\rVert_1`, the local field of an end-to-end network
    (``nextqsm-pipeline``, NeXtQSM's Algorithm 1) in field units. Each term is a mean over mask voxels.
    """

    mse: float = 1.0
    l1: float = 0.0
    model: float = 0.0
    gradient: float = 0.0
    local: float = 0.0

    def __post_init__(self) -> None:
        values = dataclasses.astuple(self)
        if any(v < 0 for v in values) or not any(v > 0 for v in values):
            raise ParameterError(f"loss weights must be ≥ 0 with at least one > 0, got {self}")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation: Adam with a step schedule, mini-batches of simulated patches."""

    steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    weight_decay: float = 0.0
    loss: LossWeights = field(default_factory=LossWeights)
    #: Each sample's error divided by its target's rms in the mask (the NRMSE the suite scores), so a
    #: lesion's large χ does not outweigh the rest of the batch.
    relative_loss: bool = False
    #: Each sample's estimate shifted by its mean error in the mask before the loss (an offset is free,
    #: as in demeaned NRMSE: a patch's field hardly determines its mean χ).
    demean_loss: bool = False
    #: Clip the gradient's global norm to this before each step (0: no clipping).
    clip_grad_norm: float = 0.0
    #: Stages of the network kept as they start (``nextqsm-pipeline``: ``"background"``, ``"inversion"``).
    freeze: tuple[str, ...] = ()
    seed: int = 0
    workers: int = 1
    amp: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = 200
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"training.{name} must be a positive integer, got {getattr(self, name)}")
        if self.workers < 0:
            raise ParameterError(f"training.workers must be ≥ 0, got {self.workers}")
        if not self.learning_rate > 0 or not 0 < self.gamma <= 1:
            raise ParameterError("training.learning_rate must be > 0 and training.gamma in (0, 1]")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ParameterError(f"training.milestones are fractions of the steps in (0, 1), got {self.milestones}")
        if not self.clip_grad_norm >= 0:
            raise ParameterError(f"training.clip_grad_norm must be ≥ 0 (0: off), got {self.clip_grad_norm}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ParameterError(f"training.device must be auto, cpu or cuda, got {self.device!r}")


@dataclass(frozen=True)
class ValidationConfig:
    """Validation on cases of a built evaluation suite (``torchqsm simulate suite``)."""

    suite_dir: str = ""
    cases: tuple[str, ...] = ("baseline",)
    every: int = 500

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ParameterError(f"validation.every must be a positive integer, got {self.every}")


@dataclass(frozen=True)
class RunConfig:
    """A whole training configuration (see the module for the TOML layout)."""

    model: ModelConfig
    normalization: Normalization = field(default_factory=Normalization)
    data: SimulationConfig = field(default_factory=SimulationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values (recorded in checkpoints and the model card)."""
        return dataclasses.asdict(self)


def _build(kind: type, table: Any, section: str):
    if not isinstance(table, dict):
        raise ParameterError(f"[{section}] must be a table")
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ParameterError(f"[{section}] has unknown keys {unknown} (known: {', '.join(known)})")
    values = {}
    for name, value in table.items():
        default = known[name].default
        if isinstance(value, list) and not value and "None" in str(known[name].type):
            value = None  # TOML has no null: an empty array is "none" (whole volumes for patch_size)
        elif isinstance(value, list):
            value = tuple(value)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        values[name] = value
    try:
        return kind(**values)
    except TypeError as error:
        raise ParameterError(f"[{section}]: {error}") from None
    except ValueError as error:
        raise ParameterError(f"[{section}]: {error}") from None


def config_from_dict(values: dict[str, Any], *, base: Path | None = None) -> RunConfig:
    """Build and validate a :class:`RunConfig` from nested tables (what a TOML file holds).

    >>> config = config_from_dict({"model": {"architecture": "unet", "hyperparameters": {"base_channels": 4}},
    ...                            "training": {"steps": 20, "loss": {"mse": 1.0, "model": 0.5}}})
    >>> config.training.loss.model, config.data.task
    (0.5, 'local_to_chi')
    """
    unknown = sorted(set(values) - {"model", "normalization", "data", "training", "validation"})
    if unknown:
        raise ParameterError(f"unknown tables {unknown} (known: model, normalization, data, training, validation)")
    if "model" not in values or "architecture" not in values.get("model", {}):
        raise ParameterError("the configuration needs [model] architecture = \"...\"")
    model = _build(ModelConfig, values["model"], "model")
    if model.architecture not in ARCHITECTURES:
        raise ParameterError(f"unknown architecture '{model.architecture}' (known: {', '.join(sorted(ARCHITECTURES))})")
    training_table = dict(values.get("training", {}))
    loss = _build(LossWeights, training_table.pop("loss", {}), "training.loss")
    training = _build(TrainingConfig, training_table, "training")
    training = dataclasses.replace(training, loss=loss)
    data = _build(SimulationConfig, values.get("data", {}), "data")
    wanted = task_of(model.architecture)
    if data.task != wanted:
        raise ParameterError(f"[data] task must be {wanted} for the {model.architecture} network, got '{data.task}'")
    stages = tuple(getattr(ARCHITECTURES[model.architecture], "STAGES", ()))
    if not isinstance(model.init, dict) or not all(isinstance(v, str) and v for v in model.init.values()):
        raise ParameterError(f"[model] init maps each stage to shipped weights (a name or a card path), got {model.init!r}")
    if base is not None:  # card paths relative to the TOML file, as every path here
        model = dataclasses.replace(model, init={k: (str((base / v).resolve()) if v.endswith(".json")
                                                     and not Path(v).is_absolute() else v)
                                                 for k, v in model.init.items()})
    if "network" in model.init and len(model.init) > 1:
        raise ParameterError(f"[model] init: 'network' starts the whole network; it takes no other stage, "
                             f"got {sorted(model.init)}")
    for what, names in (("[model] init", tuple(n for n in model.init if n != "network")),
                        ("[training] freeze", training.freeze)):
        strange = [n for n in names if n not in stages]
        if strange:
            raise ParameterError(f"{what} names {strange}, not stages of the {model.architecture} network "
                                 f"({', '.join(stages) if stages else 'it has none'})")
    if set(training.freeze) >= set(stages) and stages:
        raise ParameterError(f"[training] freeze holds every stage of {model.architecture}: nothing would train")
    if loss.local > 0 and wanted != "total_to_chi":
        raise ParameterError(f"[training] loss.local scores the local field of an end-to-end network "
                             f"(total_to_chi), not of {model.architecture}")
    validation = _build(ValidationConfig, values.get("validation", {}), "validation")
    if validation.suite_dir and base is not None and not Path(validation.suite_dir).is_absolute():
        validation = dataclasses.replace(validation, suite_dir=str((base / validation.suite_dir).resolve()))
    normalization = _build(Normalization, values.get("normalization", {}), "normalization")
    return RunConfig(model, normalization, data, training, validation)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a training configuration TOML file."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("configuration file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InputError(f"cannot read the configuration: {error}", source=str(path)) from None
    try:
        return config_from_dict(values, base=path.parent)
    except ParameterError as error:
        raise ParameterError(f"{path}: {error}") from None
