r"""3-D U-Nets for dipole inversion: the DF-QSM U-Net and a QSMnet-style U-Net.

Both map a normalised local field ``(N, 1, X, Y, Z)`` to a normalised χ of the same
shape; :mod:`torchqsm.models.inference` does the normalisation, padding and tiling.
Each spatial size must be a multiple of ``2**depth`` (inference pads to it).

* DF-QSM U-Net (Paluru, Mathew, Yalavarthy, NMR Biomed 2024, doi:10.1002/nbm.5163, Fig. 3):
  four encoding and four decoding levels, two 3×3×3 convolutions + batch norm + ReLU per level, 2×2×2 max pooling, 2×2×2 transposed
  convolutions, 16 → 256 channels, skip connections by concatenation, a 1×1×1 output
  convolution. ``UNet3d()`` with the defaults is that network (5.6 M parameters).
* QSMnet-style (Yoon et al. 2018): the same shape with 5×5×5 kernels
  (``UNet3d(kernel_size=5)``); QSMnet itself used 32 → 512 channels.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet3d", "ConvBlock", "OAConvBlock"]


class ConvBlock(nn.Sequential):
    """Two (convolution, batch norm, ReLU) layers with 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        padding = kernel_size // 2
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, kernel_size, padding=padding, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class OAConvBlock(nn.Module):
    """A :class:`ConvBlock` with an OA-LFE module after each convolution (iQSM+, Fig. 2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        from .oalfe import OALFE

        self.block = ConvBlock(in_channels, out_channels, kernel_size)
        self.block.foldable = False  # an editor runs between each convolution and its batch norm
        self.editors = nn.ModuleList([OALFE(out_channels), OALFE(out_channels)])

    def forward(self, x: torch.Tensor, b0_dir: torch.Tensor) -> torch.Tensor:
        conv1, norm1, act1, conv2, norm2, act2 = self.block
        x = act1(norm1(self.editors[0](conv1(x), b0_dir)))
        return act2(norm2(self.editors[1](conv2(x), b0_dir)))


class UNet3d(nn.Module):
    r"""A 3-D U-Net: field (normalised) → χ (normalised).

    Parameters
    ----------
    in_channels, out_channels
        Channels of the input and output (1 and 1 for local field → χ).
    base_channels
        Channels of the first level; level ``l`` has ``base_channels * 2**l``
        (16 → 256 for the DF-QSM network with ``depth=4``).
    depth
        Number of poolings (encoding levels below the first); sizes must be
        multiples of ``2**depth``.
    kernel_size
        Convolution kernel (3: DF-QSM, 5: QSMnet-style).
    orientation_adaptive
        Put an OA-LFE module (:class:`~torchqsm.models.oalfe.OALFE`) after every 3×3×3
        convolution, as iQSM+ does; ``forward`` then needs ``b0_dir``.

    Examples
    --------
    >>> net = UNet3d(base_channels=4, depth=2)
    >>> net(torch.zeros(1, 1, 8, 8, 12)).shape
    torch.Size([1, 1, 8, 8, 12])
    >>> sum(p.numel() for p in UNet3d().parameters())
    5646385
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *, base_channels: int = 16, depth: int = 4,
                 kernel_size: int = 3, orientation_adaptive: bool = False) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1 or kernel_size % 2 == 0:
            raise ValueError("depth and base_channels must be positive and kernel_size odd")
        self.depth = depth
        self.orientation_adaptive = bool(orientation_adaptive)
        block = OAConvBlock if orientation_adaptive else ConvBlock
        widths = [base_channels * 2 ** level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        channels = in_channels
        for width in widths[:-1]:
            self.encoders.append(block(channels, width, kernel_size))
            channels = width
        self.pool = nn.MaxPool3d(2)
        self.bottleneck = block(widths[-2], widths[-1], kernel_size)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamplers.append(nn.ConvTranspose3d(width * 2, width, kernel_size=2, stride=2))
            self.decoders.append(block(width * 2, width, kernel_size))
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)

    @property
    def multiple(self) -> int:
        """Every spatial size must be a multiple of this."""
        return 2 ** self.depth

    def forward(self, x: torch.Tensor, b0_dir: torch.Tensor | None = None) -> torch.Tensor:
        if self.orientation_adaptive:
            from .oalfe import unit_directions

            p = unit_directions(b0_dir, x.shape[0]).to(x.device)

            def run(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
                return block(h, p)
        else:
            def run(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
                return block(h)
        skips = []
        for encoder in self.encoders:
            x = run(encoder, x)
            skips.append(x)
            x = self.pool(x)
        x = run(self.bottleneck, x)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = run(decoder, torch.cat([upsample(x), skip], dim=1))
        return self.head(x)
