"""One subject from multi-echo magnitude and phase to χ: the steps of a :class:`Recipe`, in memory.

Reading and writing live elsewhere (:mod:`torchqsm.pipeline.outputs`); this
module only computes, so the same function serves the CLI, the BIDS app, the
benchmark and Python users.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError, ParameterError
from ..physics.units import hz_per_ppm
from ..preprocess.background import BACKGROUND_METHODS
from ..preprocess.differences import combine_differences, echo_differences
from ..preprocess.echoes import combine_echoes, per_echo_frequencies
from ..preprocess.brain import extract_brain
from ..preprocess.masking import erode_mask, magnitude_mask, quality_mask
from ..preprocess.phase import rescale_phase
from ..preprocess.referencing import reference
from ..preprocess.unwrap import laplacian_unwrap, region_growing_unwrap, romeo_quality, unwrap_echoes, voxel_quality
from .recipes import Recipe
from .registry import get_method, invert

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
    ``local_mask`` (the mask after background removal's erosion).
    """

    magnitude: torch.Tensor
    mask: torch.Tensor
    total_field_ppm: torch.Tensor
    local_field_ppm: torch.Tensor
    local_mask: torch.Tensor
    chi_ppm: torch.Tensor
    recipe: Recipe
    phase_scaling: str
    timings_s: dict[str, float]
    notes: tuple[str, ...]


def _rss(magnitude: torch.Tensor) -> torch.Tensor:
    return magnitude.square().sum(0).sqrt()


def process_gre(
    magnitude: torch.Tensor,
    phase: torch.Tensor,
    *,
    echo_times_s: Sequence[float],
    b0_tesla: float,
    voxel_size_mm: Sequence[float],
    b0_dir: Sequence[float],
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

    Parameters
    ----------
    magnitude, phase
        ``(E, X, Y, Z)`` echoes first; the phase in any scaling (rescaled to radians, with a note).
    echo_times_s
        ``E`` echo times in seconds, increasing.
    b0_tesla
        Field strength in tesla.
    voxel_size_mm, b0_dir
        Geometry; ``b0_dir`` in voxel coordinates (from the affine).
    recipe
        The steps to run (:data:`torchqsm.pipeline.recipes.RECIPES`).
    mask
        A brain mask ``(X, Y, Z)`` replacing the masking step.
    reference_mask
        With ``recipe.reference == "region"``: the region (e.g. CSF) whose mean χ is set to zero.
    phase_sign
        ``+1`` or ``-1``: multiply the phase by this first (scanners that store the opposite sign).
    device
        Where to compute.
    log
        Called with one line per finished step (name, detail, seconds).
    source
        Named in error messages (e.g. the phase file).

    Returns
    -------
    PipelineResult
    """
    if phase_sign not in (1, -1):
        raise ParameterError(f"phase sign must be 1 or -1, got {phase_sign!r}")
    if magnitude.shape != phase.shape or phase.ndim != 4:
        raise InputError(f"magnitude {tuple(magnitude.shape)} and phase {tuple(phase.shape)} must both be "
                         "(echoes, X, Y, Z)", source=source)
    echo_times = tuple(float(t) for t in echo_times_s)
    if len(echo_times) != phase.shape[0]:
        raise InputError(f"{len(echo_times)} echo times for {phase.shape[0]} echoes", source=source)
    if not (math.isfinite(b0_tesla) and b0_tesla > 0):
        raise ParameterError(f"field strength must be positive (T), got {b0_tesla!r}")
    device = torch.device(device)
    steps = StepLog(log=log, prefix=prefix)
    magnitude = magnitude.to(device=device, dtype=torch.float32)

    with steps.step("phase scaling"):
        scaling = rescale_phase(phase.to(device=device, dtype=torch.float32), name=source or "phase")
        wrapped = scaling.phase_rad * phase_sign
    steps.note(scaling.message + ("; sign flipped" if phase_sign == -1 else ""))

    combined_magnitude = _rss(magnitude)
    with steps.step("mask", "given" if mask is not None else recipe.mask):
        if mask is not None:
            brain = mask.to(device) != 0
            if not bool(brain.any()):
                raise InputError("the given mask is empty", source=source)
        elif recipe.mask == "quality":
            second = wrapped[1] if wrapped.shape[0] > 1 else None
            edges = romeo_quality(wrapped[0], magnitude=magnitude[0], phase2_rad=second,
                                  echo_times_s=echo_times[:2] if second is not None else None)
            brain = quality_mask(voxel_quality(edges))
        else:
            brain = magnitude_mask(combined_magnitude, method=recipe.mask)
        if mask is None and recipe.brain_extraction_mm > 0:
            brain = extract_brain(brain, voxel_size_mm=voxel_size_mm, radius_mm=recipe.brain_extraction_mm)
        if recipe.mask_erode_voxels:
            brain = erode_mask(brain, voxels=recipe.mask_erode_voxels)

    combine = recipe.combine
    if combine == "phase_difference" and wrapped.shape[0] < 2:
        combine = "weighted_fit"  # one echo: nothing to difference; the fit is then φ/TE
        steps.note("one echo: phase_difference falls back to the single-echo fit (no offset removal)")
    to_unwrap = wrapped
    if combine == "phase_difference":
        differences = echo_differences(wrapped, echo_times_s=echo_times, magnitude=magnitude)
        to_unwrap = differences.phase_rad
    with steps.step("unwrap", recipe.unwrap + (", echo differences" if combine == "phase_difference" else "")):
        unwrap_params = dict(recipe.unwrap_params)
        if recipe.unwrap == "laplacian":
            unwrapped = laplacian_unwrap(to_unwrap, voxel_size_mm=voxel_size_mm, mask=brain, **unwrap_params)
        elif combine == "phase_difference":
            unwrapped = torch.stack([region_growing_unwrap(d, magnitude=combined_magnitude, mask=brain,
                                                           **unwrap_params).phase_rad for d in to_unwrap])
        else:
            # Each echo unwrapped spatially, then per-echo global 2π fixed: the temporal template
            # (φ1·TE_e/TE_1) fails where the receive offset exceeds ±π/(TE_2/TE_1 - 1).
            unwrapped = unwrap_echoes(wrapped, echo_times_s=echo_times, magnitude=magnitude, mask=brain,
                                      method="region_growing", mode="individual", voxel_size_mm=voxel_size_mm)

    ppm_per_rad_per_s = 1.0 / (2 * math.pi * hz_per_ppm(b0_tesla))
    background = BACKGROUND_METHODS.get(recipe.background)
    if background is None:
        raise ParameterError(f"unknown background method '{recipe.background}'; choose one of "
                             f"{', '.join(sorted(BACKGROUND_METHODS))}")
    bg_params = dict(recipe.background_params)
    if combine in ("weighted_fit", "phase_difference"):
        with steps.step("echo combination", combine.replace("_", " ")):
            if combine == "phase_difference":
                frequency = combine_differences(unwrapped, delta_te_s=differences.delta_te_s,
                                                weights=differences.weights)
            else:
                frequency = combine_echoes(unwrapped, echo_times_s=echo_times, magnitude=magnitude,
                                           mask=brain).frequency_rad_per_s
            total = frequency * ppm_per_rad_per_s * brain
        with steps.step("background removal", recipe.background):
            removed = background(total, brain, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, **bg_params)
            local, local_mask = removed.local_field_ppm, removed.mask
    else:
        with steps.step("echo combination", "per echo"):
            per_echo = per_echo_frequencies(unwrapped, echo_times_s=echo_times) * ppm_per_rad_per_s * brain
            total = per_echo.mean(0)
        with steps.step("background removal", f"{recipe.background}, per echo"):
            weights = torch.tensor(echo_times, device=device).square()
            local = torch.zeros_like(total)
            local_mask = torch.ones_like(brain)
            for e in range(per_echo.shape[0]):
                removed = background(per_echo[e], brain, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, **bg_params)
                local = local + weights[e] * removed.local_field_ppm
                local_mask = local_mask & removed.mask
            local = local / weights.sum() * local_mask

    if not bool(local_mask.any()):
        raise InputError(f"the mask is empty after background removal ({recipe.background}); "
                         "use a smaller radius or a larger mask", source=source)
    spec = get_method(recipe.inversion)
    params: dict[str, Any] = dict(recipe.inversion_params)
    if spec.needs_magnitude:
        params["magnitude"] = combined_magnitude
    with steps.step("dipole inversion", recipe.inversion):
        chi = invert(local, local_mask, recipe.inversion, voxel_size_mm=voxel_size_mm, b0_dir=b0_dir, **params)
    with steps.step("referencing", recipe.reference):
        if recipe.reference == "region":
            if reference_mask is None:
                raise ParameterError("referencing to a region needs its mask (--reference-mask FILE)")
            region = (reference_mask.to(device) != 0) & local_mask.bool()
            if not bool(region.any()):
                raise InputError("the reference region does not overlap the final mask", source=source)
            chi = reference(chi, local_mask, method="csf", csf_mask=region)
        else:
            chi = reference(chi, local_mask, method=recipe.reference)
    if not bool(torch.isfinite(chi).all()):
        raise InputError(f"the inversion '{recipe.inversion}' produced non-finite values", source=source)
    cpu = torch.device("cpu")
    return PipelineResult(
        magnitude=combined_magnitude.to(cpu), mask=brain.to(cpu), total_field_ppm=total.to(cpu),
        local_field_ppm=local.to(cpu), local_mask=local_mask.to(cpu).bool(), chi_ppm=chi.to(cpu),
        recipe=recipe, phase_scaling=scaling.message, timings_s=dict(steps.timings_s), notes=tuple(steps.notes),
    )
