"""The model card of a training run: what was trained, on what, for how long, and how well."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from ..models.unrolled import PHYSICS_ARCHITECTURES
from .config import RunConfig
from .loop import TrainResult

__all__ = ["training_card", "stage_cards", "git_commit", "hardware_description"]


def git_commit(path: str | Path | None = None) -> str:
    """The repository's commit (``+dirty`` with local changes), or ``"unknown"`` outside git."""
    folder = Path(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def hardware_description(device: str) -> str:
    """One line: the GPU's name, or the CPU's architecture and thread count."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def training_card(config: RunConfig, result: TrainResult, *, metrics: dict[str, Any] | None = None,
                  commit: str | None = None) -> dict[str, Any]:
    """A complete model card (``torchqsm.models.weights`` keys) for the network ``result`` holds.

    >>> from torchqsm.train.config import config_from_dict
    >>> config = config_from_dict({"model": {"architecture": "unet", "name": "demo"}})
    >>> result = TrainResult(model=None, step=3, losses=(1.0, 0.5, 0.25), seconds=2.0, total_seconds=2.0,
    ...                      samples_per_second=6.0, device="cpu", world_size=1, validation={})
    >>> card = training_card(config, result, commit="abc")
    >>> card["training"]["steps"], card["training"]["samples"], card["normalization"]["input_scale_ppm"]
    (3, 12, 0.02)
    """
    data, training = config.data, config.training
    tilt = "uniform on the sphere" if data.max_tilt_deg is None else f"uniform within {data.max_tilt_deg:g}° of axis 3"
    phase = data.task == "phase_to_chi"
    if data.task == "total_to_chi":
        note = ("the background stage reads the field's pattern; the dipole operator of the data's B0 direction "
                "and voxel size is applied inside the inversion stage")
    elif data.task == "total_to_local":
        note = "no B0 direction: the network reads the field's pattern; applied at the data's own orientation"
    elif config.model.architecture in PHYSICS_ARCHITECTURES:
        note = "the dipole operator of the data's B0 direction and voxel size is applied inside the network"
    elif config.model.hyperparameters.get("orientation_adaptive") or config.model.architecture == "iqsm+":
        note = "told the data's B0 direction (OA-LFE modules), applied at the data's own orientation"
    else:
        note = "trained on oblique B0, applied at the data's own orientation"
    if phase:
        source = (f"simulate.SimulatedQSMDataset phase_to_chi (wrapped phase of echoes at "
                  f"{', '.join(f'{1e3 * t:g}' for t in data.echo_times_s)} ms, {'/'.join(f'{b:g}' for b in data.b0_tesla)} T, "
                  "background fields, receive-phase offsets, "
                  + (f"SNR {data.snr_range[0]:g}-{data.snr_range[1]:g})" if data.snr_range else "no noise)"))
        units = {"input": "rad (wrapped phase of each echo; with the echo times and field strength)",
                 "output": "ppm (chi, relative to CSF)"}
    elif data.task == "total_to_chi":
        source = (f"simulate.SimulatedQSMDataset total_to_chi ({data.external_sources} external sources, "
                  f"shim residual up to {data.shim_amplitude_ppm:g} ppm)"
                  + (f", stages started from {', '.join(f'{k} {v}' for k, v in config.model.init.items())}"
                     if config.model.init else "")
                  + (f", {', '.join(training.freeze)} frozen" if training.freeze else ""))
        units = {"input": "ppm (total field, unwrapped, zero outside the mask)", "output": "ppm (chi, relative to CSF)"}
    elif data.task == "total_to_local":
        source = (f"simulate.SimulatedQSMDataset total_to_local ({data.external_sources} external sources, "
                  f"shim residual up to {data.shim_amplitude_ppm:g} ppm)")
        units = {"input": "ppm (total field, unwrapped, zero outside the mask)",
                 "output": "ppm (local field, zero outside the mask)"}
    else:
        source = "simulate.SimulatedQSMDataset local_to_chi"
        units = {"input": "ppm (local field, zero outside the mask)", "output": "ppm (chi, relative to CSF)"}
    return {
        "name": config.model.name,
        "architecture": config.model.architecture,
        "hyperparameters": dict(config.model.hyperparameters),
        "normalization": config.normalization.as_dict(),
        "units": units,
        "voxel_size_mm": list(data.voxel_size_mm),
        "orientation": {"b0_dir_training": f"B0 {tilt}, in voxel coordinates",
                        "reorient_at_inference": False, "note": note},
        "training": {
            "recipe": (f"Adam lr {training.learning_rate:g} (×{training.gamma:g} at "
                       f"{', '.join(f'{m:g}' for m in training.milestones)} of the steps), batch {training.batch_size}, "
                       f"loss {', '.join(f'{k} {v:g}' for k, v in vars(training.loss).items() if v)}"
                       + (", relative to each sample's rms" if training.relative_loss else "")
                       + (", demeaned per sample" if training.demean_loss else "")
                       + (f", gradient norm clipped to {training.clip_grad_norm:g}" if training.clip_grad_norm else "")),
            "data": (f"{source}, source {data.source}, "
                     + (f"patches {'x'.join(map(str, data.patch_size))}" if data.patch_size else "whole volumes")
                     + " at "
                     f"{' or '.join('x'.join(f'{h:g}' for h in v) for v in (data.voxel_sizes_mm or (data.voxel_size_mm,)))}"
                     " mm, "
                     f"lesion probability {data.lesion_probability:g}"
                     + ("" if phase else f", input noise {data.local_noise_ppm} ppm")
                     + (f", white-matter anisotropy {data.wm_anisotropy_ppm} ppm" if max(data.wm_anisotropy_ppm) > 0
                        else "")
                     + (", each patch's field from its own padded χ" if data.patch_dipole else "")),
            "steps": result.step,
            "samples": result.step * training.batch_size * result.world_size,
            "time_s": round(result.total_seconds, 1),
            "hardware": result.hardware or (hardware_description(result.device)
                                            + (f" × {result.world_size}" if result.world_size > 1 else "")),
            "seed": training.seed,
            "final_loss": result.losses[-1] if result.losses else None,
            "config": config.as_dict(),
        },
        "metrics": dict(metrics or {}),
        "commit": commit if commit is not None else git_commit(),
    }


def stage_cards(card: dict[str, Any], model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Cards for each stage of a network made of stages (``nextqsm-pipeline``), shipped as its own network.

    Each stage's card is the whole network's, named ``NAME-STAGE``, with the stage's architecture,
    hyperparameters and units (input and output scales from the run's normalization); the
    training record is the whole run's. Networks without stages give ``{}``.

    >>> from torchqsm.models import NeXtQSMPipeline
    >>> card = {"name": "e2e", "hyperparameters": {"background": {"depth": 2}, "inversion": {"stages": 2}},
    ...         "normalization": {"input_scale_ppm": 0.01, "output_scale_ppm": 0.05}, "units": {}}
    >>> cards = stage_cards(card, NeXtQSMPipeline())
    >>> cards["background"]["name"], cards["background"]["normalization"]["output_scale_ppm"]
    ('e2e-background', 0.01)
    >>> cards["inversion"]["architecture"], cards["inversion"]["hyperparameters"]
    ('nextqsm', {'stages': 2})
    """
    architectures = getattr(model, "STAGE_ARCHITECTURES", {})
    scales = {"field": card["normalization"]["input_scale_ppm"], "chi": card["normalization"]["output_scale_ppm"]}
    # The first stage reads the network's input, the last one writes its output, and the local field lies between.
    local = "ppm (local field, zero outside the mask)"
    names = list(architectures)
    cards = {}
    for stage, architecture in architectures.items():
        source, target = model.STAGE_UNITS[stage]
        cards[stage] = {**card, "name": f"{card['name']}-{stage}", "architecture": architecture,
                        "hyperparameters": dict(card["hyperparameters"].get(stage, {})),
                        "normalization": {"input_scale_ppm": scales[source], "output_scale_ppm": scales[target]},
                        "units": {"input": card["units"].get("input", local) if stage == names[0] else local,
                                  "output": card["units"].get("output", local) if stage == names[-1] else local},
                        "stage_of": card["name"]}
    return cards
