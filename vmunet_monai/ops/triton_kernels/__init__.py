"""Triton kernels of the ``triton`` scan backend.

Importing this package imports Triton; :mod:`vmunet_monai.ops.triton_scan` imports it lazily, so a
machine without Triton only sees a status line. ``TRITON_INTERPRET=1`` must be set before the first
import for the kernels to run on CPU tensors through Triton's interpreter.
"""
