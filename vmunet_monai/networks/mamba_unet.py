"""Mamba-UNet (Wang et al., 2024): a symmetric Swin-UNet-style U-Net of VSS blocks with concatenated skips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from vmunet_monai.layers import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D, VSSLayer
from vmunet_monai.networks.common import (RefusesForeignWeights, check_channels, check_dims, check_rate, crop_output,
                                          drop_path_rates, init_linear_and_norm, mixer_options, prepare_input,
                                          records_settings)

__all__ = ["MambaUNet"]


class MambaUNet(RefusesForeignWeights):
    """Mamba-UNet with the official layer names and defaults, returning logits.

    Encoder: as VM-UNet's plus a final LayerNorm (``norm``). Decoder: a bare x2 patch expansion at
    the bottleneck, then three stages that concatenate the encoder feature of the same size
    (H/16, H/8, H/4), project back with a Linear (``concat_back_dim``), run their blocks and expand
    (the last stage does not expand). Head: LayerNorm, x4 expansion keeping ``dims[0]`` channels,
    and a bias-free 1x1 convolution. Decoder stages reuse the stochastic-depth rates of their mirror
    encoder stage. 19,121,664 parameters with the defaults and ``out_channels=4``.

    Args:
        in_channels: image channels (3, or 1 which is repeated to 3).
        out_channels: classes (logit channels).
        spatial_dims: must be 2.
        dims: channels of the four encoder stages.
        depths: VSS blocks per encoder stage; decoder stage i has ``depths[3 - i]`` blocks.
        d_state: SS2D state size.
        drop_path_rate: largest stochastic-depth rate.
        dropout: dropout on every SS2D's output (the official ``attn_drop_rate``; 0, the default, adds no module
            and the state dict is unchanged). MONAI Label's epistemic scoring sets it (``epistemic_dropout``) to
            sample predictions with dropout on.
        mixer: token mixer name.
        scan_backend: selective-scan backend (None: automatic).
        recompute: rebuild cheap SS2D activations in the backward instead of storing them (about half
            the training activation memory, same results; see :class:`~vmunet_monai.layers.SS2D`).

    Raises:
        ValueError: for unsupported arguments (the message names the argument, its value and the rule), and in
            ``forward`` for input of the wrong rank or channel count.
    """

    stride = 32

    @records_settings
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 4,
        *,
        spatial_dims: int = 2,
        dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 2, 2),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        mixer: str = "ss2d",
        scan_backend: str | None = None,
        recompute: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"MambaUNet is a 2D network; spatial_dims={spatial_dims}")
        check_channels("MambaUNet", in_channels, out_channels)
        dims = check_dims(dims, depths)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stem_channels = 3 if in_channels in (1, 3) else in_channels
        drop_path_rate = check_rate("MambaUNet", "drop_path_rate", drop_path_rate)
        kw = mixer_options("MambaUNet", dropout, d_state=d_state, mixer=mixer, scan_backend=scan_backend,
                           recompute=recompute)
        rates = drop_path_rates(drop_path_rate, depths)

        self.patch_embed = PatchEmbed2D(4, self.stem_channels, dims[0])
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], depths[i], rates[i], downsample=PatchMerging2D(dims[i]) if i < 3 else None, **kw)
            for i in range(4)
        )
        self.layers_up = nn.ModuleList([PatchExpand2D(dims[3], dims[2])])
        self.concat_back_dim = nn.ModuleList([nn.Identity()])
        for i in range(1, 4):
            c = dims[3 - i]
            self.concat_back_dim.append(nn.Linear(2 * c, c))
            up = PatchExpand2D(c, c // 2) if i < 3 else None
            self.layers_up.append(VSSLayer(c, depths[3 - i], rates[3 - i], upsample=up, upsample_first=False, **kw))
        self.norm = nn.LayerNorm(dims[3])
        self.norm_up = nn.LayerNorm(dims[0])
        self.up = FinalPatchExpand2D(dims[0], scale=4, out_dim=dims[0])
        self.output = nn.Conv2d(dims[0], out_channels, 1, bias=False)
        self.apply(init_linear_and_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels or 1, H, W) -> logits (B, out_channels, H, W)."""
        x, size = prepare_input(x, self.stem_channels, self.stride, type(self).__name__,
                                dtype=next(self.parameters()).dtype)
        x = self.patch_embed(x)
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        x = self.norm(x)
        for i, layer in enumerate(self.layers_up):
            if i > 0:
                x = self.concat_back_dim[i](torch.cat([x, skips[3 - i]], dim=-1))
            x = layer(x)
        x = self.up(self.norm_up(x)).permute(0, 3, 1, 2)
        return crop_output(self.output(x), size)
