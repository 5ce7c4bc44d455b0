"""VM-UNet (Ruan et al., 2024): an asymmetric Vision-Mamba U-Net with additive skips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from vmunet_monai.layers import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D, VSSLayer
from vmunet_monai.networks.common import (RefusesForeignWeights, check_channels, check_dims, check_rate, crop_output,
                                          drop_path_rates, init_linear_and_norm, mixer_options, prepare_input,
                                          records_settings)

__all__ = ["VMUNet"]


class VMUNet(RefusesForeignWeights):
    """VM-UNet with the official layer names, initialisation and defaults.

    Encoder: patch embedding (4x4) and four VSS stages (patch merging after the first three).
    Decoder: four stages from the bottleneck up; stages 1-3 add the encoder feature of the same
    size, expand x2, then run their blocks. Head: x4 expansion to ``dims[0] // 4`` channels and a
    1x1 convolution. The output is logits (the official network applies a sigmoid when it has one
    class; here activation belongs to the loss and the post-processing).

    With the defaults the network has 27,427,561 parameters for ``out_channels=1``, like the official one.

    Args:
        in_channels: image channels (3, or 1 which is repeated to 3 as the official code does so that
            ImageNet weights still load; any other count builds a stem for that count).
        out_channels: classes (logit channels).
        spatial_dims: must be 2.
        dims: channels of the four encoder stages; the decoder mirrors them.
        depths: VSS blocks per encoder stage.
        depths_decoder: VSS blocks per decoder stage, from the bottleneck up.
        d_state: SS2D state size.
        drop_path_rate: largest stochastic-depth rate (encoder rises to it, decoder falls from it).
        dropout: dropout on every SS2D's output (the official ``attn_drop_rate``; 0, the default, adds no module
            and the state dict is unchanged). MONAI Label's epistemic scoring sets it (``epistemic_dropout``) to
            sample predictions with dropout on.
        mixer: token mixer name in :data:`vmunet_monai.layers.Mixer`.
        scan_backend: selective-scan backend (None: automatic).
        recompute: rebuild cheap SS2D activations in the backward instead of storing them (about half
            the training activation memory, same results; see :class:`~vmunet_monai.layers.SS2D`).

    Raises:
        ValueError: for unsupported arguments (the message names the argument, its value and the rule: for
            example ``drop_path_rate`` outside [0, 1), a ``mixer`` that is not registered, a ``recompute`` that is
            not True or False), and in ``forward`` for input of the wrong rank or channel count.

    Any input height and width work: the input is zero-padded to a multiple of 32 and the output cropped back.
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
        depths: Sequence[int] = (2, 2, 2, 2),
        depths_decoder: Sequence[int] = (2, 2, 2, 1),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        mixer: str = "ss2d",
        scan_backend: str | None = None,
        recompute: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"VMUNet is a 2D network; spatial_dims={spatial_dims} (use SliceInferer for volumes)")
        check_channels("VMUNet", in_channels, out_channels)
        dims = check_dims(dims, depths)
        check_dims(dims, depths_decoder, "depths_decoder")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stem_channels = 3 if in_channels in (1, 3) else in_channels
        drop_path_rate = check_rate("VMUNet", "drop_path_rate", drop_path_rate)
        kw = mixer_options("VMUNet", dropout, d_state=d_state, mixer=mixer, scan_backend=scan_backend,
                           recompute=recompute)

        self.patch_embed = PatchEmbed2D(4, self.stem_channels, dims[0])
        enc_rates = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList(
            VSSLayer(dims[i], depths[i], enc_rates[i], downsample=PatchMerging2D(dims[i]) if i < 3 else None, **kw)
            for i in range(4)
        )
        # decoder rates: their own linspace, walked from the largest down
        dec_flat = [r for stage in drop_path_rates(drop_path_rate, depths_decoder) for r in stage][::-1]
        dec_dims = dims[::-1]
        self.layers_up = nn.ModuleList()
        start = 0
        for i in range(4):
            rates = dec_flat[start : start + depths_decoder[i]]
            start += depths_decoder[i]
            up = PatchExpand2D(dec_dims[i - 1], dec_dims[i]) if i > 0 else None
            self.layers_up.append(VSSLayer(dec_dims[i], depths_decoder[i], rates, upsample=up, upsample_first=True, **kw))
        self.final_up = FinalPatchExpand2D(dims[0], scale=4)
        self.final_conv = nn.Conv2d(dims[0] // 4, out_channels, 1)
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
        for i, layer in enumerate(self.layers_up):
            x = layer(x if i == 0 else x + skips[-i])
        x = self.final_up(x).permute(0, 3, 1, 2)
        return crop_output(self.final_conv(x), size)
