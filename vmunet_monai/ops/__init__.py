"""Selective scan and the SS2D cross-scan, one API over several backends.

Backends (see :func:`backend_status`):

=============  ======  ================================================================
``reference``  any     sequential loop, the test oracle; never chosen automatically
``torch``      any     chunked pure PyTorch; traceable (TorchScript / ONNX export)
``cpu``        CPU     C kernel compiled at first use with the system C compiler
``triton``     CUDA    fused Triton kernels (cross-scan + scan + merge, forward and backward)
``mamba_ssm``  CUDA    mamba-ssm's compiled ``selective_scan_cuda``, imported lazily
=============  ======  ================================================================

Choice: ``backend=`` argument, else the ``VMUNET_SCAN_BACKEND`` environment variable, else
automatic (CUDA tensors: mamba_ssm if installed, else triton, else torch; CPU tensors: cpu, torch). While tracing or
exporting, the automatic choice is always ``torch``.
"""

from vmunet_monai.ops.cross_scan import cross_merge, cross_scan, to_scan_order
from vmunet_monai.ops.dispatch import (
    BACKENDS,
    BackendStatus,
    backend_status,
    cross_selective_scan,
    full_rank_delta,
    reads_pixel_major,
    resolve_backend,
    selective_scan,
)
from vmunet_monai.ops.reference import selective_scan_reference
from vmunet_monai.ops.torch_scan import selective_scan_torch

__all__ = [
    "BACKENDS",
    "BackendStatus",
    "backend_status",
    "cross_merge",
    "cross_scan",
    "cross_selective_scan",
    "full_rank_delta",
    "resolve_backend",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
    "to_scan_order",
]
