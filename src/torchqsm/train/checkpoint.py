"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the step, the network, Adam's moments, the learning-rate schedule, the
random-number states and the configuration. It is written to a temporary file and renamed,
so an interrupted save never leaves a broken checkpoint behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | Path, *, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, config: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write the training state atomically (``path`` is replaced only once fully written)."""
    path = Path(path)
    state = {
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": config,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "extra": extra or {},
    }
    temporary = path.with_name(f".{path.name}.partial")
    torch.save(state, temporary)
    os.replace(temporary, path)
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no checkpoint to resume from", source=str(path))
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated or foreign file: say so in one line
        raise InputError(f"not a readable torchqsm checkpoint ({type(error).__name__}: {error})",
                         source=str(path)) from None
    missing = {"step", "model", "optimizer", "scheduler", "config"} - set(state)
    if missing:
        raise InputError(f"checkpoint lacks {sorted(missing)}", source=str(path))
    return state
