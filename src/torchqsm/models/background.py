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
- ``smv_radii`` (voxels; default none, the paper's input): the network sees, instead of the total
  field, its SHARP high-passes :math:`f - s_r * f` for each radius, each kept where the sphere
  lies inside the mask, where the background (harmonic) cancels exactly. The local field is 3-4 %
  of the total field's in-mask rms on the simulated heads at 2.5 mm, so from the raw field the
  network must cancel the background to a few percent of itself before any local field shows;
  the high-passes hold the local field at its own scale. Their rms (the largest radius') sets
  the scale, so the map stays homogeneous of degree one and blind to a constant.

``forward(total, mask)`` takes and returns fields in network units (the card's
:class:`~torchqsm.models.Normalization`); the output is the local field, zero outside the mask.
Spatial sizes are padded inside to a multiple of ``2**depth``. The shipped weights
``nextqsm-background-cpu`` run in the pipeline as the background method ``nextqsm``
(:func:`torchqsm.preprocess.background.nextqsm`) and in the ``nextqsm`` recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

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

    def __init__(self, *, base_channels: int = 8, depth: int = 3, kernel_size: int = 3,
                 smv_radii: Sequence[int] = ()) -> None:
        super().__init__()
        self.smv_radii = tuple(int(r) for r in smv_radii)
        if any(r < 1 for r in self.smv_radii):
            raise ValueError(f"smv_radii are sphere radii in voxels (>= 1), got {self.smv_radii}")
        channels = (len(self.smv_radii) or 1) + 1
        self.unet = UNet3d(channels, 1, base_channels=base_channels, depth=depth, kernel_size=kernel_size)

    @property
    def multiple(self) -> int:
        """Every spatial size is accepted (padded inside), as :func:`~torchqsm.models.build_model` networks report."""
        return 1

    def forward(self, total: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if total.ndim != 5 or mask.shape != total.shape or total.shape[1] != 1:
            raise ValueError(f"expected a total field and a mask of one shape (N, 1, X, Y, Z), got "
                             f"{tuple(total.shape)} and {tuple(mask.shape)}")
        inside = (mask != 0).to(total.dtype)
        if self.smv_radii:
            passes = [_high_pass(total * inside, inside, r) for r in self.smv_radii]
            kept = passes[-1][1]
            passes = [p for p, _ in passes]
            scale = (passes[-1].square().sum(_DIMS, keepdim=True)
                     / kept.sum(_DIMS, keepdim=True).clamp_min(1.0)).sqrt().clamp_min(1e-12)
            x = torch.cat([p / scale for p in passes] + [inside], dim=1)
            unit = scale
        else:
            count = inside.sum(_DIMS, keepdim=True).clamp_min(1.0)
            mean = (total * inside).sum(_DIMS, keepdim=True) / count
            centred = (total - mean) * inside
            scale = (centred.square().sum(_DIMS, keepdim=True) / count).sqrt().clamp_min(1e-12)
            x = torch.cat([centred / scale, inside], dim=1)
            unit = LOCAL_TO_TOTAL * scale
        padded, region = pad_to_multiple(x, self.unet.multiple)
        out = crop(self.unet(padded), region)
        return out * unit * inside


def _sphere(radius: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    axis = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    ball = (x.square() + y.square() + z.square() <= radius**2 + 1e-6).to(dtype)
    return ball / ball.sum()


def _high_pass(field: torch.Tensor, inside: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``f - s_r * f`` where the sphere of ``radius`` voxels lies inside the mask (zero elsewhere), and that region.

    A direct convolution of the batch with a small ball (radius in voxels), not
    :class:`~torchqsm.preprocess.background._common.SMV`, which builds an FFT symbol per grid for
    one volume and radii in mm.
    """
    kernel = _sphere(radius, field.dtype, field.device)[None, None]
    mean = F.conv3d(field, kernel, padding=radius)
    covered = F.conv3d(inside, kernel, padding=radius)
    kept = (covered > 1 - 1e-4).to(field.dtype) * inside
    return (field - mean) * kept, kept
