"""VSS block (pre-norm SS2D with stochastic depth) and VSS stages of several blocks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import DropPath

from vmunet_monai.layers.factory import accepted_options, mixer_class
from vmunet_monai.ops.recompute import RecomputeSaved, recomputing

__all__ = ["VSSBlock", "VSSLayer"]


class VSSBlock(nn.Module):
    """``x + DropPath(mixer(LayerNorm(x)))`` on channels-last maps; no MLP branch (VMamba v0).

    Args:
        hidden_dim: channels.
        drop_path: stochastic-depth rate.
        d_state: SS2D state size.
        mixer: token mixer name in the :data:`vmunet_monai.layers.Mixer` factory.
        norm_eps: LayerNorm epsilon (the official networks use PyTorch's default 1e-5).
        mixer_kwargs: extra arguments for the mixer (e.g. ``scan_backend``). ``d_state``, ``scan_backend`` and
            ``recompute`` reach a mixer only if its constructor takes them (see :mod:`vmunet_monai.layers.factory`).

    Raises:
        ValueError: ``mixer`` is not a registered token mixer.
    """

    def __init__(
        self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16, mixer: str = "ss2d",
        norm_eps: float = 1e-5, **mixer_kwargs,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=norm_eps)
        cls = mixer_class(mixer, "VSSBlock")
        self.self_attention = cls(d_model=hidden_dim, **accepted_options(cls, {"d_state": d_state, **mixer_kwargs}))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if recomputing(getattr(self.self_attention, "recompute", False)):
            # the normalised input is rebuilt from x (which LayerNorm keeps) instead of being stored
            with RecomputeSaved() as rc:
                h = self.ln_1(x)
                rc.register(h, lambda: self.ln_1(x))
                return x + self.drop_path(self.self_attention(h))
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class VSSLayer(nn.Module):
    """A stage: optional upsample first (VM-UNet decoder), the blocks, optional down/upsample after.

    Args:
        dim: channels of the blocks.
        depth: number of blocks.
        drop_path: one rate per block (or one rate for all).
        d_state: SS2D state size.
        downsample: module applied after the blocks (``downsample`` key).
        upsample: module applied before the blocks if ``upsample_first`` else after (``upsample`` key).
        upsample_first: VM-UNet expands then runs the blocks; Mamba-UNet runs the blocks then expands.
        mixer, mixer_kwargs: passed to every block.
    """

    def __init__(
        self, dim: int, depth: int, drop_path: float | Sequence[float] = 0.0, d_state: int = 16,
        downsample: nn.Module | None = None, upsample: nn.Module | None = None, upsample_first: bool = True,
        mixer: str = "ss2d", **mixer_kwargs,
    ) -> None:
        super().__init__()
        rates = list(drop_path) if isinstance(drop_path, Sequence) else [drop_path] * depth
        if len(rates) != depth:
            raise ValueError(f"{len(rates)} drop-path rates for {depth} blocks")
        self.upsample_first = upsample_first
        self.blocks = nn.ModuleList(
            [VSSBlock(dim, rates[i], d_state, mixer=mixer, **mixer_kwargs) for i in range(depth)]
        )
        if upsample is not None:  # registered after the blocks: the official state-dict order
            self.upsample = upsample
        if downsample is not None:
            self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = getattr(self, "upsample", None)
        if up is not None and self.upsample_first:
            x = up(x)
        for block in self.blocks:
            x = block(x)
        if up is not None and not self.upsample_first:
            x = up(x)
        down = getattr(self, "downsample", None)
        if down is not None:
            x = down(x)
        return x
