"""One subject from multi-echo magnitude and phase to χ: the steps of a :class:`Recipe`, in memory.

Reading and writing live elsewhere (:mod:`torchqsm.pipeline.outputs`); this
module only computes, so the same function serves the CLI, the BIDS app, the
benchmark and Python users.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..acquisition import Acquisition
from ..errors import InputError, ParameterError
from ..inversion.regularization import choices_record
from ..preprocess.phase import magnitude_as_phase, rescale_phase
from .recipes import Recipe
from .steps import State, inversion_record, plan

__all__ = ["PipelineResult", "process_gre", "StepLog"]

Logger = Callable[[str], None]


@dataclass
class StepLog:
    """Per-step wall time (s) and notes; ``log`` receives one line per finished step."""

    log: Logger | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    prefix: str = ""

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.log is not None:
            self.log(f"{self.prefix}{text}")

    def step(self, name: str, detail: str = "") -> _Timer:
        return _Timer(self, name, detail)


class _Timer:
    def __init__(self, owner: StepLog, name: str, detail: str) -> None:
        self.owner, self.name, self.detail = owner, name, detail

    def __enter__(self) -> _Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        elapsed = time.perf_counter() - self.started
        self.owner.timings_s[self.name] = round(elapsed, 3)
        if kind is None and self.owner.log is not None:
            detail = f" ({self.detail})" if self.detail else ""
            self.owner.log(f"{self.owner.prefix}{self.name}{detail}: {elapsed:.2f} s")


@dataclass(frozen=True)
class PipelineResult:
    """Everything one run computed, on the input grid (tensors on the CPU).

    ``total_field_ppm`` is defined on ``mask``; ``local_field_ppm`` and ``chi_ppm`` on
    ``local_mask`` (the mask after background removal's erosion). A phase-network recipe computes
    no field: both fields are then None. ``parameters`` holds, per
    stage, the step that ran and every parameter value it used (defaults included);
    ``acquisition`` the record it ran with.
    """

    magnitude: torch.Tensor
    mask: torch.Tensor
    total_field_ppm: torch.Tensor | None
    local_field_ppm: torch.Tensor | None
    local_mask: torch.Tensor
    chi_ppm: torch.Tensor
    recipe: Recipe
    phase_scaling: str
    timings_s: dict[str, float]
    notes: tuple[str, ...]
    acquisition: Acquisition | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


def _cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(torch.device("cpu"))


def _rss(magnitude: torch.Tensor) -> torch.Tensor:
    return magnitude.square().sum(0).sqrt()


def process_gre(
    magnitude: torch.Tensor,
    phase: torch.Tensor,
    acquisition: Acquisition,
    *,
    recipe: Recipe,
    mask: torch.Tensor | None = None,
    reference_mask: torch.Tensor | None = None,
    phase_sign: int = 1,
    device: str | torch.device = "cpu",
    log: Logger | None = None,
    prefix: str = "",
    source: str | None = None,
) -> PipelineResult:
    """Run ``recipe`` on multi-echo GRE data: magnitude and raw phase → χ (ppm).

    ``magnitude`` and ``phase`` are ``(E, X, Y, Z)``, echoes first (the phase in any scaling:
    rescaled to radians, with a note). ``acquisition`` holds the voxel size, B0 direction (voxel
    coordinates), field strength and the ``E`` echo times (:attr:`torchqsm.io.GreData.acquisition`);
    every step reads it. The stages run as :func:`torchqsm.pipeline.steps.plan` resolves them;
    ``mask`` replaces the masking step; ``reference_mask`` is the region of ``reference="region"``;
    ``phase_sign`` (±1) multiplies the phase first; ``log`` gets one line per finished stage and
    ``source`` is named in error messages.
    """
    if phase_sign not in (1, -1):
        raise ParameterError(f"phase sign must be 1 or -1, got {phase_sign!r}")
    if magnitude.shape != phase.shape or phase.ndim != 4:
        raise InputError(f"magnitude {tuple(magnitude.shape)} and phase {tuple(phase.shape)} must both be "
                         "(echoes, X, Y, Z)", source=source)
    acquisition.require("echo_times_s", "b0_tesla", method="the pipeline")
    if len(acquisition.echo_times_s) != phase.shape[0]:
        raise InputError(f"{len(acquisition.echo_times_s)} echo times for {phase.shape[0]} echoes", source=source)
    device, steps = torch.device(device), StepLog(log=log, prefix=prefix)
    planned = plan(recipe, echo_count=phase.shape[0], given_mask=mask is not None, note=steps.note)
    magnitude = magnitude.to(device=device, dtype=torch.float32)
    looks = magnitude_as_phase(phase, magnitude)
    if looks is not None:  # rescaling would map it onto [-π, π) and give a χ map of nothing
        raise InputError(f"the phase looks like a magnitude image: {looks}; check that the phase file is the "
                         "phase (not the magnitude, nor swapped with it)", source=source)
    with steps.step("phase scaling"):
        scaling = rescale_phase(phase.to(device=device, dtype=torch.float32), name=source or "phase")
    steps.note(scaling.message + ("; sign flipped" if phase_sign == -1 else ""))
    state = State(acquisition, magnitude, scaling.phase_rad * phase_sign, _rss(magnitude), source=source,
                  given_mask=None if mask is None else mask.to(device) != 0,
                  reference_mask=None if reference_mask is None else reference_mask.to(device) != 0)
    for stage in planned:
        seen = len(state.notes)
        with steps.step(stage.label, stage.detail):
            state = stage(state)
        for text in state.notes[seen:]:  # what the stage adapted: one log line each
            steps.note(text)
    used = {p.stage: {"step": p.step.name, "parameters": dict(p.values)} for p in planned}
    if "invert" in used:
        invert = next(p for p in planned if p.stage == "invert")
        used["invert"]["parameters"] = inversion_record(recipe.inversion, invert.values, acquisition,
                                                        state.regularization)
    if state.regularization:
        used["invert"]["regularization_choice"] = choices_record(list(state.regularization))
    cpu = torch.device("cpu")
    return PipelineResult(
        magnitude=state.magnitude_rss.to(cpu), mask=state.mask.to(cpu), total_field_ppm=_cpu(state.total_field_ppm),
        local_field_ppm=_cpu(state.local_field_ppm), local_mask=state.local_mask.to(cpu).bool(),
        chi_ppm=state.chi_ppm.to(cpu), recipe=recipe, phase_scaling=scaling.message, timings_s=dict(steps.timings_s),
        notes=tuple(steps.notes), acquisition=acquisition, parameters=used)
