r"""NeXtQSM's background stage: a U-Net from the total field to the local field.

Cognolato et al. (NeXtQSM, 2023, Sec. 2.3) remove the background field with a plain U-Net that
maps the total field of the whole brain to its local field, trained on hybrid heads with random
external sources; a variational network then inverts the local field
(:class:`~torchqsm.models.unrolled.VarNet`, architecture ``nextqsm``).

:class:`BackgroundUNet` is that U-Net with two choices of ours, both from the physics:

- Background removal is linear in the field (on a fixed mask): local(α·total) = α·local(total).
  The network sees the in-mask field divided by its own rms (after removing its mean) and its
  output is scaled back by the same number, so the map is exactly homogeneous of degree one: a
  field ten times stronger (7 T against 3 T, or a sinus closer to the brain) is not out of its range.
- The mask is a second input channel: where the brain ends decides what is harmonic.

``forward(total, mask)`` takes and returns fields in network units (the card's
:class:`~torchqsm.models.Normalization`); the output is the local field, zero outside the mask.
Spatial sizes are padded inside to a multiple of ``2**depth``. No weights ship and no pipeline
method runs it yet (docs/learned.md says why).
"""

from __future__ import annotations

import torch
from torch import nn

from .inference import crop, pad_to_multiple
from .unet import UNet3d

__all__ = ["BackgroundUNet", "LOCAL_TO_TOTAL"]

#: The network's output unit is this fraction of the input's in-mask rms: local fields of a head are a few
#: percent of its total field (0.012 against 0.31 ppm rms on the simulated heads at 2 mm).
LOCAL_TO_TOTAL = 0.05
_DIMS = (-3, -2, -1)


class BackgroundUNet(nn.Module):
    """Total field and brain mask → local field, a U-Net between a per-sample scaling (see the module).

    Examples
    --------
    >>> net = BackgroundUNet(base_channels=2, depth=2).eval()
    >>> total, mask = torch.randn(1, 1, 9, 10, 11), torch.ones(1, 1, 9, 10, 11)
    >>> local = net(total, mask)
    >>> local.shape, bool(torch.allclose(net(3 * total, mask), 3 * local, atol=1e-5))
    (torch.Size([1, 1, 9, 10, 11]), True)
    """

    #: Callers pass the mask; the task is ``total_to_local``.
    background = True

    def __init__(self, *, base_channels: int = 8, depth: int = 3, kernel_size: int = 3) -> None:
        super().__init__()
        self.unet = UNet3d(2, 1, base_channels=base_channels, depth=depth, kernel_size=kernel_size)

    @property
    def multiple(self) -> int:
        """Every spatial size is accepted (padded inside), as :func:`~torchqsm.models.build_model` networks report."""
        return 1

    def forward(self, total: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if total.ndim != 5 or mask.shape != total.shape or total.shape[1] != 1:
            raise ValueError(f"expected a total field and a mask of one shape (N, 1, X, Y, Z), got "
                             f"{tuple(total.shape)} and {tuple(mask.shape)}")
        inside = (mask != 0).to(total.dtype)
        count = inside.sum(_DIMS, keepdim=True).clamp_min(1.0)
        mean = (total * inside).sum(_DIMS, keepdim=True) / count
        centred = (total - mean) * inside
        scale = (centred.square().sum(_DIMS, keepdim=True) / count).sqrt().clamp_min(1e-12)
        x = torch.cat([centred / scale, inside], dim=1)
        padded, region = pad_to_multiple(x, self.unet.multiple)
        out = crop(self.unet(padded), region)
        return out * (LOCAL_TO_TOTAL * scale) * inside
