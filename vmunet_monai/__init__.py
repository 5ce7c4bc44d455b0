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


def _no_gpu_dicom_notice(record) -> bool:
    """A logging filter that drops MONAI 1.6's notice that nvImageCodec, its GPU DICOM decoder, is unavailable.
    With pydicom installed (the label extra) every ``LoadImage`` builds that reader and says so twice, as a log
    warning and as a Python warning, though it then uses pydicom's own decoders; the bundles read PNG, JPEG and
    NIfTI through it."""
    return "nvImageCodec is not available" not in record.getMessage()


def _quiet_gpu_dicom_notice() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").addFilter(_no_gpu_dicom_notice)


show_input_errors_last()  # a bundle run stopped by one of our checks ends with the check's message
_quiet_gpu_dicom_notice()

__all__ = ["Mixer", "MambaUNet", "VMUNet", "VMUNetV2", "layers", "load_official_checkpoint", "networks", "ops", "__version__"]
