"""Backend entry for the chunked pure-PyTorch scan."""

from vmunet_monai.ops.torch_scan import selective_scan_torch as selective_scan

__all__ = ["selective_scan", "status"]


def status():
    return True, "chunked pure PyTorch; any device; traceable for TorchScript/ONNX export", ""
