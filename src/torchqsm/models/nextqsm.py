r"""NeXtQSM end to end: the background U-Net and the variational network as one network.

Cognolato et al. (NeXtQSM, 2023, Sec. 2.5, Algorithm 1) train the two stages apart, then
together: the total field goes through the background U-Net (:class:`~torchqsm.models.BackgroundUNet`),
its local field through the variational network (:class:`~torchqsm.models.VarNet`), and one
loss, :math:`|\hat\chi - \chi| + |\hat f_L - f_L|`, updates both. The χ term tells the
background stage which errors of its local field the inversion cannot forgive.

:class:`NeXtQSMPipeline` holds the two stages as ``background`` and ``inversion``. It trains on
the ``total_to_chi`` task of :class:`~torchqsm.simulate.SimulatedQSMDataset` (whole heads); the
training configuration's ``[model] init`` table starts each stage from shipped weights, and
``[training] loss.local`` weighs the local-field term. The two stages are shipped as two networks
(``background-unet`` and ``nextqsm``), so the ``nextqsm`` recipe and background method run them as
before, each at its own resolution.

Units: the total field and the local field share the network's field unit
(``input_scale_ppm``); χ is in ``output_scale_ppm`` (``chi_to_field`` is their ratio), as for
the other data-consistent networks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .background import BackgroundUNet
from .inference import crop, pad_to_multiple
from .unrolled import VarNet

__all__ = ["NeXtQSMPipeline"]


class NeXtQSMPipeline(nn.Module):
    """Total field, mask and geometry → χ (and the local field on the way), both stages trainable.

    Parameters
    ----------
    background, inversion
        Keyword hyperparameters of the :class:`BackgroundUNet` and of the :class:`VarNet`.

    Examples
    --------
    >>> net = NeXtQSMPipeline(background={"base_channels": 2, "depth": 1},
    ...                       inversion={"stages": 1, "base_channels": 2})
    >>> total, mask = torch.randn(1, 1, 8, 9, 7), torch.ones(1, 1, 8, 9, 7)
    >>> chi, local = net(total, mask, b0_dir=[0, 0, 1], voxel_size_mm=[2, 2, 2], return_local=True)
    >>> chi.shape == local.shape == total.shape
    True
    """

    #: Its stages, by attribute name (``[model] init`` and ``[training] freeze`` name them).
    STAGES = ("background", "inversion")
    #: Each stage's input and output unit: the network's field unit or its χ unit (its card must agree).
    STAGE_UNITS = {"background": ("field", "field"), "inversion": ("field", "chi")}
    #: The architecture each stage is shipped as.
    STAGE_ARCHITECTURES = {"background": "background-unet", "inversion": "nextqsm"}

    def __init__(self, *, background: dict[str, Any] | None = None, inversion: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.background = BackgroundUNet(**(background or {}))
        self.inversion = VarNet(**(inversion or {}))

    @property
    def multiple(self) -> int:
        """Every spatial size is accepted: both stages pad inside."""
        return 1

    def forward(self, total: torch.Tensor, mask: torch.Tensor, *, b0_dir=None, voxel_size_mm=None,
                chi_to_field: float = 1.0, return_local: bool = False):
        local = self.background(total, mask)
        padded, region = pad_to_multiple(torch.cat([local, mask.to(local.dtype)], dim=1), self.inversion.multiple)
        chi = self.inversion(padded[:, :1], padded[:, 1:], b0_dir=b0_dir, voxel_size_mm=voxel_size_mm,
                             chi_to_field=chi_to_field)
        chi = crop(chi, region)
        return (chi, local) if return_local else chi
