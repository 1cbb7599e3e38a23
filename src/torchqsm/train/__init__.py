"""Training of the learned dipole inversions on simulated data (``torchqsm train CONFIG.toml``).

:mod:`~torchqsm.train.config` reads and validates the TOML configuration,
:mod:`~torchqsm.train.losses` holds the loss terms, :mod:`~torchqsm.train.loop` the loop with
checkpoints, resume, AMP and DDP, :mod:`~torchqsm.train.checkpoint` the checkpoint files.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import LossWeights, ModelConfig, RunConfig, TrainingConfig, ValidationConfig, config_from_dict, load_config
from .loop import TrainResult, Validator, train
from .losses import masked_losses, total_loss

__all__ = ["train", "TrainResult", "Validator", "load_config", "config_from_dict", "RunConfig", "ModelConfig",
           "TrainingConfig", "ValidationConfig", "LossWeights", "masked_losses", "total_loss", "save_checkpoint",
           "load_checkpoint"]
