"""VM-UNetV2 (Zhang et al., 2024): a VSS encoder with a CBAM + SDI neck and a convolutional decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vmunet_monai.layers import SDI, ChannelAttention, PatchEmbed2D, PatchMerging2D, SpatialAttention, TransLayer, VSSLayer
from vmunet_monai.networks.common import (RefusesForeignWeights, check_channels, check_dims, check_flag, check_rate,
                                          check_whole, crop_output, drop_path_rates, init_linear_and_norm,
                                          mixer_options, prepare_input, records_settings)

__all__ = ["VMUNetV2", "VSSEncoder"]


class VSSEncoder(nn.Module):
    """Patch embedding and the first three VSS stages (each followed by patch merging).

    Returns the four maps the VM-UNetV2 neck uses, channels-first: the patch embedding (H/4) and
    the output of each stage after merging (H/8, H/16, H/32). The official encoder also builds and
    runs a fourth stage whose output is thrown away; it is not built here, so every parameter
    gets a gradient (``depths[3]`` is accepted for configuration parity and ignored).
    """

    def __init__(self, in_chans: int, dims: Sequence[int], depths: Sequence[int], d_state: int, drop_path_rate: float,
                 mixer: str = "ss2d", scan_backend: str | None = None, recompute: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed2D(4, in_chans, dims[0])
        rates = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], depths[i], rates[i], d_state, downsample=PatchMerging2D(dims[i]),
                     **mixer_options("VMUNetV2", dropout, mixer=mixer, scan_backend=scan_backend, recompute=recompute))
            for i in range(3)
        )
        self.apply(init_linear_and_norm)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        feats = [x]
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return [f.permute(0, 3, 1, 2) for f in feats]


class VMUNetV2(RefusesForeignWeights):
    """VM-UNetV2 with the official layer names and defaults, returning logits.

    Neck: per level channel attention, spatial attention, a 1x1 conv + BN to ``mid_channels``, and
    an SDI block (Hadamard product of all levels resized to the level). Decoder: transposed convs
    from H/32 up to H/4 with additive SDI features; a 1x1 head on every level, upsampled x4.

    Output: with ``deep_supervision`` (the official default) the prediction is the H head plus a
    learned x2 upsampling of the H/2 head, which is what the official network computes before its
    sigmoid. In training mode with ``deep_supervision`` and gradients on, the forward returns a list: that prediction
    first, then the H/2, H/4 and H/8 heads, so ``monai.losses.DeepSupervisionLoss`` trains every
    head (the official code trains only the fused output). In eval mode, and in training mode under
    ``torch.no_grad``, it returns one tensor.
    Without ``deep_supervision`` the output is the H head alone.

    Args:
        in_channels: image channels (3, or 1 which is repeated to 3).
        out_channels: classes (logit channels).
        spatial_dims: must be 2.
        dims: channels of the encoder stages (4 values; the neck uses all four levels).
        depths: VSS blocks per encoder stage; the fourth value is ignored (see :class:`VSSEncoder`).
        d_state: SS2D state size.
        drop_path_rate: largest stochastic-depth rate of the encoder.
        mid_channels: channels of the neck and decoder (48 in the paper).
        deep_supervision: fuse the two finest heads and return all heads in training (with gradients on; under
            ``torch.no_grad`` a network in training mode returns the prediction alone, as dropout sampling
            such as MONAI Label's epistemic scoring runs it).
        mixer: token mixer name.
        scan_backend: selective-scan backend (None: automatic).
        recompute: rebuild cheap SS2D activations in the backward instead of storing them (about half
            the training activation memory, same results; see :class:`~vmunet_monai.layers.SS2D`).
        dropout: dropout on every SS2D's output in the encoder (the official ``attn_drop_rate``; 0, the default,
            adds no module and the state dict is unchanged). MONAI Label's epistemic scoring sets it
            (``epistemic_dropout``) to sample predictions with dropout on.

    Raises:
        ValueError: for unsupported arguments (the message names the argument, its value and the rule: for
            example ``mid_channels`` below 1, a ``deep_supervision`` or ``recompute`` that is not True or False),
            and in ``forward`` for input of the wrong rank or channel count.
    """

    stride = 32

    @records_settings
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        *,
        spatial_dims: int = 2,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 9, 2),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        mid_channels: int = 48,
        deep_supervision: bool = True,
        mixer: str = "ss2d",
        scan_backend: str | None = None,
        recompute: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"VMUNetV2 is a 2D network; spatial_dims={spatial_dims}")
        check_channels("VMUNetV2", in_channels, out_channels)
        dims = check_dims(dims, depths)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stem_channels = 3 if in_channels in (1, 3) else in_channels
        drop_path_rate = check_rate("VMUNetV2", "drop_path_rate", drop_path_rate)
        m = check_whole("VMUNetV2", "mid_channels", mid_channels)
        self.deep_supervision = check_flag("VMUNetV2", "deep_supervision", deep_supervision)
        mixer_options("VMUNetV2", dropout, mixer=mixer, recompute=recompute)  # refused before anything is built
        for i, c in enumerate(dims, start=1):
            setattr(self, f"ca_{i}", ChannelAttention(c, 16))
            setattr(self, f"sa_{i}", SpatialAttention())
            setattr(self, f"Translayer_{i}", TransLayer(c, m))
            setattr(self, f"sdi_{i}", SDI(m))
        self.seg_outs = nn.ModuleList(nn.Conv2d(m, out_channels, 1) for _ in range(4))
        self.deconv2 = nn.ConvTranspose2d(m, m, 4, stride=2, padding=1, bias=False)
        self.deconv3 = nn.ConvTranspose2d(m, m, 4, stride=2, padding=1, bias=False)
        self.deconv4 = nn.ConvTranspose2d(m, m, 4, stride=2, padding=1, bias=False)
        if self.deep_supervision:
            self.deconv6 = nn.ConvTranspose2d(out_channels, out_channels, 3, stride=2, padding=1, output_padding=1)
        self.encoder = VSSEncoder(self.stem_channels, dims, depths, d_state, drop_path_rate, mixer, scan_backend,
                                  recompute, dropout)

    def forward(self, x: torch.Tensor):
        """(B, C, H, W) -> logits (B, out_channels, H, W), or a list of heads in training with deep supervision
        (and gradients on)."""
        x, size = prepare_input(x, self.stem_channels, self.stride, type(self).__name__,
                                dtype=next(self.parameters()).dtype)
        if self.training and x.shape[0] == 1 and x.shape[-2] * x.shape[-1] == self.stride ** 2:
            raise ValueError(
                f"VMUNetV2: a training batch of one image of {size[0]}x{size[1]} reaches the BatchNorm of "
                f"Translayer_4 as a 1x1 map (the deepest level is H/32 x W/32, after padding to a multiple of 32), "
                f"which cannot be normalised: train on batches of 2 or more, or on images larger than 32x32 "
                f"(eval() runs any size)")
        feats = []
        for i, f in enumerate(self.encoder(x), start=1):
            f = getattr(self, f"ca_{i}")(f) * f
            f = getattr(self, f"sa_{i}")(f) * f
            feats.append(getattr(self, f"Translayer_{i}")(f))
        f1, f2, f3, f4 = feats
        y = self.sdi_4(feats, f4)
        heads = [self.seg_outs[0](y)]
        y = self.deconv2(y) + self.sdi_3(feats, f3)
        heads.append(self.seg_outs[1](y))
        y = self.deconv3(y) + self.sdi_2(feats, f2)
        heads.append(self.seg_outs[2](y))
        y = self.deconv4(y) + self.sdi_1(feats, f1)
        heads.append(self.seg_outs[3](y))
        heads = [F.interpolate(h, scale_factor=4.0, mode="bilinear") for h in heads]  # H/8, H/4, H/2, H
        if not self.deep_supervision:
            return crop_output(heads[3], size)
        main = crop_output(heads[3] + self.deconv6(heads[2]), size)
        if self.training and torch.is_grad_enabled():
            padded = (x.shape[-2], x.shape[-1])
            return [main] + [self._crop_head(h, size, padded) for h in heads[2::-1]]
        return main

    @staticmethod
    def _crop_head(h: torch.Tensor, size: tuple[int, int], padded: tuple[int, int]) -> torch.Tensor:
        """A coarser head covers the padded input: keep the rows and columns over the real image."""
        rows = -(-size[0] * h.shape[-2] // padded[0])
        cols = -(-size[1] * h.shape[-1] // padded[1])
        return h[..., :rows, :cols]
