r"""xQSM: a 3-D U-Net built from octave convolutions (Gao et al. 2021).

An octave convolution (Chen et al. 2019) keeps two groups of feature maps: a
high-frequency group at full resolution and a low-frequency group (a fraction
:math:`\alpha` of the channels) at half resolution. Each layer mixes them along four
paths,

.. math::

    Y_H = \mathrm{ReLU}\big(\mathrm{BN}(W_{HH} * X_H) + \mathrm{BN}(\mathrm{up}(W_{LH} * X_L))\big),\qquad
    Y_L = \mathrm{ReLU}\big(\mathrm{BN}(W_{LL} * X_L) + \mathrm{BN}(W_{HL} * \mathrm{pool}(X_H))\big),

with 2×2×2 average pooling and nearest-neighbour upsampling. The low group sees twice
the field of view per voxel, which is why xQSM reconstructs the large-scale (low
spatial frequency) part of χ better than a plain U-Net of the same size.

The network here follows xQSM's layout: an input octave layer that splits the field
into the two groups, ``depth`` encoding levels of two octave layers each followed by
2×2×2 max pooling of both groups, a middle block of two octave layers (doubling then
restoring the channels), ``depth`` decoding levels (2×2×2 transposed convolution of
each group, concatenation with the skip of the same level, two octave layers), an
output octave layer that merges the groups into full resolution, a 1×1×1
convolution and, as in xQSM, a residual connection from the input.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["XQSM", "OctaveConv3d"]

Pair = tuple[torch.Tensor, "torch.Tensor | None"]


def _split(channels: int | tuple[int, int], alpha: float) -> tuple[int, int]:
    """(high, low) channel counts for a fraction ``alpha`` of low-frequency channels (pairs pass through)."""
    if isinstance(channels, tuple):
        return channels
    low = int(round(alpha * channels))
    return channels - low, low


class OctaveConv3d(nn.Module):
    r"""One octave layer: four convolution paths, batch norm per path, ReLU per group.

    Parameters
    ----------
    in_channels, out_channels
        Total channels (high + low) of the input and output, or ``(high, low)`` pairs.
    alpha_in, alpha_out
        Fraction of low-frequency channels in the input and output; 0 means a single
        full-resolution group (the first and last layers of the network).
    kernel_size
        Odd convolution kernel size ('same' padding).
    activation
        Apply ReLU after summing the paths (every layer of xQSM but the output one).
    """

    def __init__(self, in_channels: int | tuple[int, int], out_channels: int | tuple[int, int], *,
                 alpha_in: float, alpha_out: float, kernel_size: int = 3, activation: bool = True) -> None:
        super().__init__()
        in_high, in_low = _split(in_channels, alpha_in)
        out_high, out_low = _split(out_channels, alpha_out)
        self.out_low = out_low
        self.activation = activation

        def path(c_in: int, c_out: int) -> nn.Sequential | None:
            if c_in == 0 or c_out == 0:
                return None
            return nn.Sequential(nn.Conv3d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                                 nn.BatchNorm3d(c_out))

        self.high_to_high = path(in_high, out_high)
        self.high_to_low = path(in_high, out_low)
        self.low_to_high = path(in_low, out_high)
        self.low_to_low = path(in_low, out_low)

    def forward(self, x_high: torch.Tensor, x_low: torch.Tensor | None = None) -> Pair:
        y_high = self.high_to_high(x_high)
        y_low = None
        if self.high_to_low is not None:
            y_low = self.high_to_low(F.avg_pool3d(x_high, 2))
        if x_low is not None and self.low_to_high is not None:
            y_high = y_high + F.interpolate(self.low_to_high(x_low), scale_factor=2.0, mode="nearest")
        if x_low is not None and self.low_to_low is not None:
            from_low = self.low_to_low(x_low)
            y_low = from_low if y_low is None else y_low + from_low
        if self.activation:
            y_high = F.relu(y_high)
            y_low = None if y_low is None else F.relu(y_low)
        return y_high, y_low


class _OctaveBlock(nn.Module):
    """Two octave layers ``in → mid → out`` at the same ``alpha``."""

    def __init__(self, in_channels: int | tuple[int, int], mid_channels: int, out_channels: int,
                 alpha: float) -> None:
        super().__init__()
        self.first = OctaveConv3d(in_channels, mid_channels, alpha_in=alpha, alpha_out=alpha)
        self.second = OctaveConv3d(mid_channels, out_channels, alpha_in=alpha, alpha_out=alpha)

    def forward(self, x_high: torch.Tensor, x_low: torch.Tensor) -> Pair:
        return self.second(*self.first(x_high, x_low))


class XQSM(nn.Module):
    r"""xQSM, an octave-convolution U-Net: field (normalised) → χ (normalised).

    Parameters
    ----------
    in_channels, out_channels
        Channels of the input and output (1 and 1 for local field → χ).
    base_channels
        Channels of the first level (high + low); level ``l`` has
        ``base_channels * 2**l``. xQSM used 64.
    depth
        Number of max poolings; xQSM used 2. The low-frequency group is pooled once
        more, so sizes must be multiples of ``2**(depth + 1)`` (:attr:`multiple`).
    alpha
        Fraction of low-frequency (half-resolution) channels in every inner layer;
        xQSM and Chen et al. used 0.5.
    residual
        Add the input to the output, as xQSM does (needs ``in_channels == out_channels``).
    orientation_adaptive
        xQSM+ (iQSM+ paper, Sec. 4.5): an OA-LFE module (:class:`~torchqsm.models.oalfe.OALFE`)
        on the high- and the low-frequency features after every octave block; ``forward`` then
        needs ``b0_dir``.

    References
    ----------
    Gao Y, Zhu X, Moffat BA, et al. xQSM: quantitative susceptibility mapping with
    octave convolutional and noise-regularized neural networks. NMR Biomed
    2021;34:e4461. doi:10.1002/nbm.4461

    Chen Y, Fan H, Xu B, et al. Drop an octave: reducing spatial redundancy in
    convolutional neural networks with octave convolution. ICCV 2019:3435-3444.
    doi:10.1109/ICCV.2019.00353

    Examples
    --------
    >>> net = XQSM(base_channels=8, depth=2)
    >>> net.multiple
    8
    >>> net(torch.zeros(1, 1, 16, 8, 24)).shape
    torch.Size([1, 1, 16, 8, 24])
    >>> sum(p.numel() for p in XQSM().parameters())
    4291137
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *, base_channels: int = 64, depth: int = 2,
                 alpha: float = 0.5, residual: bool = True, orientation_adaptive: bool = False) -> None:
        super().__init__()
        if depth < 1 or base_channels < 2:
            raise ValueError(f"depth must be >= 1 and base_channels >= 2, got {depth}, {base_channels}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")
        if residual and in_channels != out_channels:
            raise ValueError("residual=True needs in_channels == out_channels")
        self.depth = depth
        self.residual = residual
        widths = [base_channels * 2 ** level for level in range(depth)]
        for width in widths:
            if min(_split(width, alpha)) < 1:
                raise ValueError(f"alpha={alpha} leaves a group of {width} channels empty")
        self.split = OctaveConv3d(in_channels, widths[0], alpha_in=0.0, alpha_out=alpha)
        self.encoders = nn.ModuleList()
        channels = widths[0]
        for width in widths:
            self.encoders.append(_OctaveBlock(channels, width, width, alpha))
            channels = width
        self.middle = _OctaveBlock(widths[-1], 2 * widths[-1], widths[-1], alpha)
        self.upsample_high = nn.ModuleList()
        self.upsample_low = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            high, low = _split(widths[level], alpha)
            self.upsample_high.append(nn.ConvTranspose3d(high, high, kernel_size=2, stride=2))
            self.upsample_low.append(nn.ConvTranspose3d(low, low, kernel_size=2, stride=2))
            out = widths[level - 1] if level > 0 else widths[0]
            self.decoders.append(_OctaveBlock((2 * high, 2 * low), widths[level], out, alpha))
        self.merge = OctaveConv3d(widths[0], widths[0], alpha_in=alpha, alpha_out=0.0)
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)
        self.orientation_adaptive = bool(orientation_adaptive)
        if self.orientation_adaptive:
            from .oalfe import OALFE

            outputs = [*widths, widths[-1], *(widths[level - 1] if level > 0 else widths[0]
                                               for level in reversed(range(depth)))]
            self.editors = nn.ModuleList(nn.ModuleList(OALFE(c) for c in _split(width, alpha)) for width in outputs)

    @property
    def multiple(self) -> int:
        """Every spatial size must be a multiple of this (the low group is pooled ``depth + 1`` times)."""
        return 2 ** (self.depth + 1)

    def forward(self, x: torch.Tensor, b0_dir: torch.Tensor | None = None) -> torch.Tensor:
        if any(size % self.multiple for size in x.shape[-3:]):
            raise ValueError(f"spatial sizes {tuple(x.shape[-3:])} must be multiples of {self.multiple}")
        editors = iter(self.editors) if self.orientation_adaptive else None
        if editors is not None:
            from .oalfe import unit_directions

            p = unit_directions(b0_dir, x.shape[0]).to(x.device)

        def run(block: nn.Module, high: torch.Tensor, low: torch.Tensor) -> Pair:
            high, low = block(high, low)
            if editors is None:
                return high, low
            edit_high, edit_low = next(editors)
            return edit_high(high, p), edit_low(low, p)

        high, low = self.split(x)
        skips = []
        for encoder in self.encoders:
            high, low = run(encoder, high, low)
            skips.append((high, low))
            high, low = F.max_pool3d(high, 2), F.max_pool3d(low, 2)
        high, low = run(self.middle, high, low)
        for up_high, up_low, decoder, (skip_high, skip_low) in zip(
                self.upsample_high, self.upsample_low, self.decoders, reversed(skips)):
            high = torch.cat([up_high(high), skip_high], dim=1)
            low = torch.cat([up_low(low), skip_low], dim=1)
            high, low = run(decoder, high, low)
        output = self.head(self.merge(high, low)[0])
        return output + x if self.residual else output
