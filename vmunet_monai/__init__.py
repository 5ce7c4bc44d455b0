"""VM-UNet, VM-UNetV2 and Mamba-UNet for MONAI.

Importing the package registers the SS2D token mixer in a MONAI ``LayerFactory``
(:data:`vmunet_monai.layers.Mixer`) and makes the networks reachable from bundle configs by dotted
path (``vmunet_monai.networks.VMUNet``). Optional accelerators (the compiled CPU kernel, Triton,
mamba-ssm) are only loaded when first used; ``python -m vmunet_monai doctor`` reports them.
"""

from vmunet_monai import layers, networks, ops
from vmunet_monai.layers import Mixer
from vmunet_monai.networks import MambaUNet, VMUNet, VMUNetV2
from vmunet_monai.weights import load_official_checkpoint

__version__ = "0.1.0"

__all__ = ["Mixer", "MambaUNet", "VMUNet", "VMUNetV2", "layers", "load_official_checkpoint", "networks", "ops", "__version__"]
