"""``LayerNorm(y) * silu(z)`` over the last dimension: SS2D's output normalisation and gate.

:func:`norm_gate` runs one fused Triton kernel each way on CUDA tensors (or under
``TRITON_INTERPRET=1``) and the PyTorch composition everywhere else; both give the same values
(the fused forward keeps only y and z for its backward and recomputes the statistics).
"""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F

from vmunet_monai.ops import triton_scan
from vmunet_monai.ops.first_order import first_order_only

__all__ = ["norm_gate", "norm_gate_reference", "fused_available"]


def norm_gate_reference(y, z, weight, bias, eps):
    """The PyTorch composition (what SS2D computes without the fused kernel)."""
    return F.layer_norm(y, (y.shape[-1],), weight, bias, eps) * F.silu(z)


@functools.lru_cache(maxsize=1)
def _kernels():
    return importlib.import_module("vmunet_monai.ops.triton_kernels.norm_gate")


def fused_available(t: torch.Tensor) -> bool:
    """Whether the fused kernel can run on tensors like ``t`` here."""
    if triton_scan.compiling_only():  # compiling for a GPU, not running
        return True
    if t.device.type != "cuda" and not triton_scan._interpreting():
        return False
    return triton_scan.status()[0]


def _tiles(C: int):
    bc = triton_scan._next_pow2(C)
    return max(1, 4096 // bc), bc


class _NormGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, bias, eps):
        R, C = y.shape
        out = torch.empty((R, C), device=y.device, dtype=torch.promote_types(y.dtype, z.dtype))
        br, bc = _tiles(C)
        triton_scan.launch(
            _kernels().norm_gate_fwd_kernel, (triton_scan.triton_cdiv(R, br),),
            y, z, weight, bias if bias is not None else weight, out, R, C, float(eps),
            y.stride(0), y.stride(1), z.stride(0), z.stride(1), out.stride(0),
            BR=br, BC=bc, HAS_BIAS=bias is not None, num_warps=4,
        )
        ctx.eps = float(eps)
        ctx.save_for_backward(y, z, weight, bias)
        return out

    @staticmethod
    @first_order_only("the fused norm-gate kernel", "SS2D(fused_norm_gate=False)")
    def backward(ctx, dout):
        y, z, weight, bias = ctx.saved_tensors
        R, C = y.shape
        dout = dout.contiguous()
        br, bc = _tiles(C)
        grid = triton_scan.triton_cdiv(R, br)
        dy = torch.empty((R, C), device=y.device, dtype=torch.float32)
        dz = torch.empty((R, C), device=y.device, dtype=z.dtype)
        dw = torch.empty((grid, C), device=y.device, dtype=torch.float32)
        db = torch.empty((grid, C), device=y.device, dtype=torch.float32) if bias is not None else dw
        triton_scan.launch(
            _kernels().norm_gate_bwd_kernel, (grid,),
            y, z, weight, bias if bias is not None else weight, dout, dy, dz, dw, db, R, C, ctx.eps,
            y.stride(0), y.stride(1), z.stride(0), z.stride(1), dout.stride(0), dy.stride(0), dz.stride(0),
            BR=br, BC=bc, HAS_BIAS=bias is not None, num_warps=4,
        )
        return (dy.to(y.dtype), dz, dw.sum(0).to(weight.dtype),
                db.sum(0).to(bias.dtype) if bias is not None else None, None)


def norm_gate(y, z, weight, bias, eps, *, fused: bool | None = None):
    """``LayerNorm(y) * silu(z)`` over the last dimension (size C), for y and z of the same shape.

    Args:
        y: (..., C), normally the float32 scan output.
        z: (..., C) gate, any float dtype.
        weight, bias: LayerNorm affine parameters (C,); bias may be None.
        eps: LayerNorm epsilon.
        fused: True forces the Triton kernel (raises where it cannot run), False the PyTorch
            composition, None picks the kernel where :func:`fused_available`.

    Returns:
        (..., C) in the promoted dtype of y and z (float32 for a float32 y), as the composition gives.
    """
    if y.shape != z.shape:
        raise ValueError(f"y and z must have the same shape, got {tuple(y.shape)} and {tuple(z.shape)}")
    if weight.shape != (y.shape[-1],):
        raise ValueError(f"weight must be ({y.shape[-1]},), got {tuple(weight.shape)}")
    use = fused_available(y) if fused is None else fused
    if fused and not fused_available(y):
        raise RuntimeError(f"the fused norm-gate kernel cannot run here: {triton_scan.status()[1]}")
    if not use or torch.jit.is_tracing() or torch.jit.is_scripting():
        return norm_gate_reference(y, z, weight, bias, eps)
    C = y.shape[-1]
    out = _NormGate.apply(y.reshape(-1, C), z.reshape(-1, C), weight, bias, eps)
    return out.reshape(y.shape)
