"""The VM-UNetV2 neck: CBAM-style channel/spatial attention, 1x1 translation layers and SDI fusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM", "TransLayer", "SDI"]


class ChannelAttention(nn.Module):
    """Sigmoid of a shared 1x1-conv MLP applied to the average- and max-pooled map.

    Args:
        channels: input channels.
        reduction: hidden channels = channels // reduction (16 in VM-UNetV2).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, 1, 1) weights."""
        avg = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        mx = self.fc2(F.relu(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """Sigmoid of a 7x7 conv over the channel-mean and channel-max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 1, H, W) weights."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(pooled))


class CBAM(nn.Module):
    """Channel then spatial attention, each applied multiplicatively."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.ca = ChannelAttention(channels, reduction)
        self.sa = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ca(x) * x
        return self.sa(x) * x


class TransLayer(nn.Module):
    """Conv2d(1x1, no bias) + BatchNorm2d. The official module also defines a ReLU it never applies."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SDI(nn.Module):
    """Semantics and detail infusion: every level resized to the anchor's size, 3x3 conv, Hadamard product.

    Larger maps are average-pooled to the anchor's size, smaller ones upsampled bilinearly with
    ``align_corners=True``.

    Args:
        channels: channels of every level.
        levels: number of levels fused.
    """

    def __init__(self, channels: int, levels: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in range(levels)])

    def forward(self, features: Sequence[torch.Tensor], anchor: torch.Tensor) -> torch.Tensor:
        # plain ints: exporters need a constant pooling size (traced models are fixed-size anyway)
        size = (int(anchor.shape[-2]), int(anchor.shape[-1]))
        out = torch.ones_like(anchor)
        for conv, f in zip(self.convs, features):
            if f.shape[-2] > size[0] or f.shape[-1] > size[1]:
                f = F.adaptive_avg_pool2d(f, size)
            elif f.shape[-2] < size[0] or f.shape[-1] < size[1]:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=True)
            out = out * conv(f)
        return out
