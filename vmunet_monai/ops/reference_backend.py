"""Backend entry for the sequential reference scan."""

from vmunet_monai.ops.reference import selective_scan_reference as selective_scan

__all__ = ["selective_scan", "status"]


def status():
    return True, "sequential loop in PyTorch (test oracle; slow by design)", ""
