"""VM-UNet, VM-UNetV2 and Mamba-UNet for MONAI.

Importing the package registers the SS2D token mixer in a MONAI ``LayerFactory``
(:data:`vmunet_monai.layers.Mixer`) and makes the networks reachable from bundle configs by dotted
path (``vmunet_monai.networks.VMUNet``). Optional accelerators (the compiled CPU kernel, Triton,
mamba-ssm) are only loaded when first used; ``python -m vmunet_monai doctor`` reports them. An uncaught error
that one of the package's input checks caused ends with that check's message as its last line.
"""

from vmunet_monai import layers, networks, ops
from vmunet_monai.layers import Mixer
from vmunet_monai.networks import MambaUNet, VMUNet, VMUNetV2
from vmunet_monai.validation import show_input_errors_last
from vmunet_monai.weights import load_official_checkpoint

__version__ = "0.1.0"

show_input_errors_last()  # a bundle run stopped by one of our checks ends with the check's message

__all__ = ["Mixer", "MambaUNet", "VMUNet", "VMUNetV2", "layers", "load_official_checkpoint", "networks", "ops", "__version__"]
