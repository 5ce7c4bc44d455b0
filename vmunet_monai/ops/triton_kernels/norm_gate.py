"""SS2D's output LayerNorm and SiLU gate in one pass: ``out = LayerNorm(y) * silu(z)``.

One program normalises BR rows of C channels (C padded to a power of two). The forward reads y
(float32) and z once and writes the product; it keeps nothing (the statistics are recomputed).
For a low-precision z the gate and its gradient are rounded to z's dtype where the PyTorch
composition rounds them, so both agree to float32 rounding.
The backward reads y, z and d out once, recomputes the statistics, and writes dy, dz and one
partial sum of d weight and d bias per program (summed afterwards in a fixed order, so the result
does not depend on scheduling).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["norm_gate_fwd_kernel", "norm_gate_bwd_kernel"]


@triton.jit
def _rows(pid, R, C, BR: tl.constexpr, BC: tl.constexpr):
    r = pid * BR + tl.arange(0, BR)
    c = tl.arange(0, BC)
    rmask = r < R
    cmask = c < C
    return r, c, rmask[:, None] & cmask[None, :], cmask


@triton.jit
def _normalise(y, cmask, C, eps):
    mean = tl.sum(y, axis=1) / C
    centred = tl.where(cmask[None, :], y - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / C + eps)
    return centred * rstd[:, None], rstd


@triton.jit
def norm_gate_fwd_kernel(y_ptr, z_ptr, w_ptr, b_ptr, out_ptr, R, C, eps,
                         s_yr, s_yc, s_zr, s_zc, s_or,
                         BR: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr):
    r, c, m, cmask = _rows(tl.program_id(0), R, C, BR, BC)
    r = r.to(tl.int64)
    y = tl.load(y_ptr + r[:, None] * s_yr + c[None, :] * s_yc, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + r[:, None] * s_zr + c[None, :] * s_zc, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    yhat, _ = _normalise(y, cmask, C, eps)
    n = yhat * w[None, :]
    if HAS_BIAS:
        n += tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    # the gate is rounded to z's dtype, as silu(z) is in the composition under autocast
    gate = (z / (1.0 + tl.exp(-z))).to(z_ptr.dtype.element_ty).to(tl.float32)
    out = n * gate
    tl.store(out_ptr + r[:, None] * s_or + c[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def norm_gate_bwd_kernel(y_ptr, z_ptr, w_ptr, b_ptr, do_ptr, dy_ptr, dz_ptr, dw_ptr, db_ptr, R, C, eps,
                         s_yr, s_yc, s_zr, s_zc, s_dor, s_dyr, s_dzr,
                         BR: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr):
    pid = tl.program_id(0)
    r, c, m, cmask = _rows(pid, R, C, BR, BC)
    r = r.to(tl.int64)
    y = tl.load(y_ptr + r[:, None] * s_yr + c[None, :] * s_yc, mask=m, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + r[:, None] * s_zr + c[None, :] * s_zc, mask=m, other=0.0).to(tl.float32)
    do = tl.load(do_ptr + r[:, None] * s_dor + c[None, :], mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    yhat, rstd = _normalise(y, cmask, C, eps)
    n = yhat * w[None, :]
    if HAS_BIAS:
        n += tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    s = 1.0 / (1.0 + tl.exp(-z))
    gate = (z * s).to(z_ptr.dtype.element_ty).to(tl.float32)
    dn = do * gate
    # gradients through the gate are rounded where the composition rounds them (to z's dtype)
    dgate = (do * n).to(z_ptr.dtype.element_ty).to(tl.float32)
    dz = dgate * (s * (1.0 + z * (1.0 - s)))  # d silu(z) / dz = s + z s (1 - s)
    dyhat = dn * w[None, :]
    mean_dyhat = tl.sum(dyhat, axis=1) / C
    mean_dyhat_yhat = tl.sum(dyhat * yhat, axis=1) / C
    dy = rstd[:, None] * (dyhat - mean_dyhat[:, None] - yhat * mean_dyhat_yhat[:, None])
    tl.store(dy_ptr + r[:, None] * s_dyr + c[None, :], dy, mask=m)
    tl.store(dz_ptr + r[:, None] * s_dzr + c[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m)
    tl.store(dw_ptr + pid * C + c, tl.sum(tl.where(m, dn * yhat, 0.0), axis=0), mask=cmask)
    if HAS_BIAS:
        tl.store(db_ptr + pid * C + c, tl.sum(tl.where(m, dn, 0.0), axis=0), mask=cmask)
