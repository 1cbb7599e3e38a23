"""Learned dipole inversion: network architectures, weights and inference.

``build_model(architecture, **hyperparameters)`` makes an untrained network by name;
the architectures are listed in :data:`ARCHITECTURES`. Every network maps a normalised
local field ``(N, 1, X, Y, Z)`` to a normalised χ of the same shape and has a
``multiple`` property (spatial sizes must be multiples of it). The data-consistent networks
(:mod:`torchqsm.models.unrolled`: ``lpcnn``, ``noqsm``, ``noqsm-sd``, ``nextqsm``) also take the
mask, the B0 direction and the voxel size (:func:`is_physics`); ``iqsm`` and ``iqsm+``
(:mod:`torchqsm.models.iqsm`) take the wrapped multi-echo phase (:data:`PHASE_ARCHITECTURES`);
``background-unet`` (:mod:`torchqsm.models.background`, NeXtQSM's first stage) maps the total field
and the mask to the local field (:data:`BACKGROUND_ARCHITECTURES`); ``nextqsm-pipeline``
(:mod:`torchqsm.models.nextqsm`) holds both NeXtQSM stages, total field → χ, for end-to-end
training (:data:`END_TO_END_ARCHITECTURES`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import ParameterError
from .inference import crop, estimate_memory_mb, pad_to_multiple, predict
from .normalization import Normalization
from .reorient import ModelFrame, to_model_frame
from .unet import UNet3d
from .background import BackgroundUNet
from .iqsm import IQSM, iqsm, iqsm_plus
from .nextqsm import NeXtQSMPipeline
from .unrolled import LPCNN, PHYSICS_ARCHITECTURES, NoQSM, VarNet
from .xqsm import XQSM

__all__ = ["ARCHITECTURES", "build_model", "Normalization", "UNet3d", "qsmnet", "XQSM",
           "LPCNN", "NoQSM", "VarNet", "IQSM", "is_physics",
           "PHASE_ARCHITECTURES", "BACKGROUND_ARCHITECTURES", "END_TO_END_ARCHITECTURES", "BackgroundUNet",
           "NeXtQSMPipeline", "task_of",
           "predict", "estimate_memory_mb", "pad_to_multiple", "crop", "to_model_frame", "ModelFrame"]


def qsmnet(*, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32, depth: int = 4,
           kernel_size: int = 5, orientation_adaptive: bool = False) -> UNet3d:
    """A QSMnet-style U-Net (Yoon et al. 2018): 5×5×5 kernels, 32 → 512 channels by default.

    References
    ----------
    Yoon J, Gong E, Chatnuntawech I, et al. Quantitative susceptibility mapping using deep
    neural network: QSMnet. NeuroImage 2018;179:199-206. doi:10.1016/j.neuroimage.2018.06.030
    """
    return UNet3d(in_channels, out_channels, base_channels=base_channels, depth=depth, kernel_size=kernel_size,
                  orientation_adaptive=orientation_adaptive)


#: Architecture name → factory taking keyword hyperparameters.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"unet": UNet3d, "qsmnet": qsmnet, "xqsm": XQSM,
                                                      **PHYSICS_ARCHITECTURES,
                                                      "iqsm": iqsm, "iqsm+": iqsm_plus,
                                                      "background-unet": BackgroundUNet,
                                                      "nextqsm-pipeline": NeXtQSMPipeline}
#: Architectures whose input is the wrapped multi-echo phase (``phase_to_chi``), not a local field.
PHASE_ARCHITECTURES = ("iqsm", "iqsm+")
#: Architectures that remove the background: total field and mask → local field (``total_to_local``).
BACKGROUND_ARCHITECTURES = ("background-unet",)
#: Architectures from the total field to χ, trained end to end (``total_to_chi``).
END_TO_END_ARCHITECTURES = ("nextqsm-pipeline",)


def task_of(architecture: str) -> str:
    """The simulation task (``SimulationConfig.task``) an architecture trains on.

    >>> task_of("unet"), task_of("iqsm+"), task_of("background-unet"), task_of("nextqsm-pipeline")
    ('local_to_chi', 'phase_to_chi', 'total_to_local', 'total_to_chi')
    """
    if architecture in PHASE_ARCHITECTURES:
        return "phase_to_chi"
    if architecture in END_TO_END_ARCHITECTURES:
        return "total_to_chi"
    return "total_to_local" if architecture in BACKGROUND_ARCHITECTURES else "local_to_chi"


def is_physics(model: nn.Module) -> bool:
    """Whether ``model`` applies the dipole operator inside (it takes the mask, B0 direction and voxel size)."""
    return bool(getattr(model, "physics", False))


def build_model(architecture: str, **hyperparameters) -> nn.Module:
    """An untrained network ``architecture`` (a key of :data:`ARCHITECTURES`).

    >>> build_model("unet", base_channels=4, depth=2).multiple
    4
    """
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise ParameterError(f"unknown architecture '{architecture}' (known: {', '.join(sorted(ARCHITECTURES))})") from None
    try:
        return factory(**hyperparameters)
    except ParameterError:
        raise
    except (TypeError, ValueError) as error:  # an unknown keyword, a value out of range
        raise ParameterError(f"architecture '{architecture}': {error}") from None
