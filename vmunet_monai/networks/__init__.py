"""The VM-UNet family with MONAI argument conventions (``in_channels``, ``out_channels``, logits out).

Bundle configs reach them by dotted path, e.g. ``"_target_": "vmunet_monai.networks.VMUNet"``.
"""

from vmunet_monai.networks.mamba_unet import MambaUNet
from vmunet_monai.networks.vmunet import VMUNet
from vmunet_monai.networks.vmunet_v2 import VMUNetV2, VSSEncoder

__all__ = ["MambaUNet", "VMUNet", "VMUNetV2", "VSSEncoder"]
