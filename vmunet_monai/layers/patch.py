"""Patch embedding, merging (downsampling) and expanding (upsampling) on channels-last maps."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["PatchEmbed2D", "PatchMerging2D", "PatchExpand2D", "FinalPatchExpand2D"]


class PatchEmbed2D(nn.Module):
    """Non-overlapping patches: Conv2d(kernel = stride = patch_size) then LayerNorm, channels-last out.

    Args:
        patch_size: side of a patch.
        in_chans: input channels.
        embed_dim: output channels.
        patch_norm: apply LayerNorm after the projection.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, patch_norm: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, H/p, W/p, embed_dim)."""
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """Halve H and W, double the channels: 2x2 neighbours concatenated, LayerNorm, Linear(4C -> 2C).

    The four sub-grids are concatenated in Swin order, (row, col) = (0,0), (1,0), (0,1), (1,1);
    pretrained ``reduction`` weights depend on it.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H/2, W/2, 2C); H and W must be even."""
        _, h, w, _ = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"PatchMerging2D needs an even height and width, got {h}x{w}")
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpand2D(nn.Module):
    """Upsample by ``scale``: Linear(in_dim -> scale^2 * out_dim), depth-to-space, LayerNorm(out_dim).

    The expanded channels are read in (row offset, column offset, channel) order, as in the
    official code, which is not ``nn.PixelShuffle``'s (channel, row, column) order.

    Args:
        in_dim: input channels.
        out_dim: output channels.
        scale: upsampling factor.
    """

    def __init__(self, in_dim: int, out_dim: int, scale: int = 2) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.scale = in_dim, out_dim, scale
        self.expand = nn.Linear(in_dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, in_dim) -> (B, scale*H, scale*W, out_dim)."""
        b, h, w, _ = x.shape
        s, c = self.scale, self.out_dim
        x = self.expand(x).reshape(b, h, w, s, s, c)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, c)
        return self.norm(x)


def FinalPatchExpand2D(dim: int, scale: int = 4, out_dim: int | None = None) -> PatchExpand2D:
    """The x4 head expansion: VM-UNet's keeps dim // 4 channels, Mamba-UNet's keeps ``dim``."""
    return PatchExpand2D(dim, dim // scale if out_dim is None else out_dim, scale)
