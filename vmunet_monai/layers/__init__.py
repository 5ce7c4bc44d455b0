"""Building blocks of the VM-UNet family (channels-last unless stated)."""

from vmunet_monai.layers.attention import CBAM, SDI, ChannelAttention, SpatialAttention, TransLayer
from vmunet_monai.layers.factory import Mixer
from vmunet_monai.layers.patch import FinalPatchExpand2D, PatchEmbed2D, PatchExpand2D, PatchMerging2D
from vmunet_monai.layers.ss2d import SS2D
from vmunet_monai.layers.vss import VSSBlock, VSSLayer

__all__ = [
    "CBAM", "SDI", "SS2D", "ChannelAttention", "FinalPatchExpand2D", "Mixer", "PatchEmbed2D", "PatchExpand2D",
    "PatchMerging2D", "SpatialAttention", "TransLayer", "VSSBlock", "VSSLayer",
]
