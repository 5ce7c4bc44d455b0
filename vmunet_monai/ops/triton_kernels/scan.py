"""Selective-scan kernels: forward with chunk checkpoints, backward by recomputation.

One program owns (batch b, group k, a block of BD channels) and walks the sequence in chunks of T
steps. Inside a chunk the recurrence ``h_t = a_t h_{t-1} + b_t`` runs as an associative scan over
the (BD, N, T) tile, in float32 whatever the input dtype; the state entering each chunk is carried
in registers and, when a backward will follow, written out as a checkpoint.

Two geometries share the kernels:

* cross: SS2D's four directions of one (H, W) map. Group k is the direction. The step-loop forward
  runs all four in one launch (``ALL4``: the walk order is a value of each program, so a batch of 32
  at VM-UNet's stage 1 gives 384 programs per launch, not 96); the chunked forward and the backward
  launch once per direction with the walk order (``REV``, ``COL``) as compile-time constants
  (associative scans need their direction at compile time). The program reads the map
  where direction k is at each step (index arithmetic instead of a fourfold copy) and adds its output
  into the shared (batch, Di, H, W) result with atomics. Every operand comes with its strides
  (batch, group, channel, step), so row-major and channels-last maps are read in place. In the
  chunked mode, reversed directions load their chunk in map order and run the scan backwards.
* generic: k is the B/C group of mamba-ssm's ``selective_scan_fn``; each output is written once.

With ``LOWRANK`` (cross geometry, step loop), ``dl`` holds each direction's R step-size factors and
every program keeps its channels' rows of the (4 * Di, R) projection, so delta is formed in float32
from R loads per position instead of read; the backward accumulates the factors' gradient across
channel blocks with atomics and the projection's per program.

Backward, per chunk in reverse order: recompute the states from the checkpoint, run the adjoint
recurrence ``g_t = C_t dy_t + a_{t+1} g_{t+1}`` backwards, and form every gradient from ``h`` and
``g``. Reductions over channels (dB, dC), over directions (du) and over batch and time (dA, dD,
d delta_bias) use float32 atomics, so their last bits depend on the order the GPU runs programs in;
with ``DET`` (``KernelConfig(deterministic=True)``) every program writes partial results of its own
instead, which the caller sums in a fixed order, and the kernels contain no atomic instruction.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["scan_fwd_kernel", "scan_fwd_split_kernel", "scan_bwd_kernel"]

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2): h -> a2 * (a1 * h + b1) + b2
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # log1p(exp(x)) without log1p: log(w) * e / (w - 1) is exact to rounding even when w rounds to 1
    e = tl.exp(x)
    w = 1.0 + e
    lp = tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _step_size(x, SOFTPLUS: tl.constexpr):
    """delta from the projected value plus bias: softplus(x), or x itself."""
    dt = x
    if SOFTPLUS:
        dt = _softplus(x)
    return dt


@triton.jit
def _positions(c, L, H, W, T: tl.constexpr, REV: tl.constexpr, COL: tl.constexpr):
    """Scan indices ``s`` of chunk ``c`` in increasing order, their map positions, and validity."""
    if REV:
        s = L - (c + 1) * T + tl.arange(0, T)
        valid = s >= 0
    else:
        s = c * T + tl.arange(0, T)
        valid = s < L
    if COL:
        pos = (s % H) * W + s // H  # walking the transposed map row by row
    else:
        pos = s
    return s, pos, valid


@triton.jit
def _position_of(s, H, W, COL):
    # COL: compile-time constant, or (one forward launch for all four directions) a value per program
    pos = s
    if COL:
        pos = (s % H) * W + s // H  # walking the transposed map row by row
    return pos


@triton.jit
def _fwd_run(
    u_base, dl_base, B_base, C_base, y_base, hs_base, last_base,
    d, dmask, A2, Dv, bias, L, H, W, nchunks, one,
    s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    REV: tl.constexpr, COL: tl.constexpr, HAS_D: tl.constexpr, SOFTPLUS: tl.constexpr,
    ATOMIC: tl.constexpr, SAVE_STATES: tl.constexpr, SAVE_LAST: tl.constexpr,
):
    n = tl.arange(0, NP)
    nmask = n < N
    tt = tl.arange(0, T)
    hmask = dmask[:, None] & nmask[None, :]
    h = tl.zeros([BD, NP], dtype=tl.float32)
    for c in range(nchunks):
        s, pos, valid = _positions(c, L, H, W, T, REV, COL)
        m2 = dmask[:, None] & valid[None, :]
        mb = nmask[:, None] & valid[None, :]
        u = tl.load(u_base + d[:, None] * s_ud + pos[None, :] * s_ul, mask=m2, other=0.0).to(tl.float32)
        x = tl.load(dl_base + d[:, None] * s_dd + pos[None, :] * s_dl, mask=m2, other=0.0).to(tl.float32)
        x = x + bias[:, None]
        dt = _step_size(x, SOFTPLUS)
        dt = tl.where(m2, dt, 0.0)  # padded steps: a = 1, b = 0, the state passes through
        Bt = tl.load(B_base + n[:, None] * s_Bn + pos[None, :] * s_Bt, mask=mb, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + n[:, None] * s_Cn + pos[None, :] * s_Ct, mask=mb, other=0.0).to(tl.float32)
        if SAVE_STATES:
            tl.store(hs_base + d[:, None] * (nchunks * N) + c * N + n[None, :] * one, h, mask=hmask)
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        bx = (dt * u)[:, None, :] * Bt[None, :, :]
        P, S = tl.associative_scan((a, bx), 2, _combine, reverse=REV)
        hh = P * h[:, :, None] + S
        y = tl.sum(hh * Ct[None, :, :], axis=1)
        if HAS_D:
            y += Dv[:, None] * u
        if REV:
            last = tt == 0
        else:
            last = tt == T - 1
        h = tl.sum(tl.where(last[None, None, :], hh, 0.0), axis=2)
        if ATOMIC:
            tl.atomic_add(y_base + d[:, None] * s_yd + pos[None, :] * s_yl, y, mask=m2, sem="relaxed")
        else:
            tl.store(y_base + d[:, None] * s_yd + pos[None, :] * s_yl, y, mask=m2)
    if SAVE_LAST:
        tl.store(last_base + d[:, None] * N + n[None, :], h, mask=hmask)


@triton.jit
def _walk_start(t, L, H, W, REV, COL):
    """Scan index ``s`` of step ``t``, for the column-major walk its map column ``s // H`` and row
    ``s % H``, and its map position (REV, COL: compile-time constants or values per program)."""
    s = t
    if REV:
        s = L - 1 - t
    return s, s // H, s % H, _position_of(s, H, W, COL)


@triton.jit
def _walk_next(s, q, r, H, W, REV, COL):
    """(s, q, r) of the next step and its map position, by counting instead of dividing by H every
    step (REV, COL: compile-time constants or values per program)."""
    if REV:
        s1 = s - 1
        r1 = r - 1
        wrap = r1 < 0
        r1 = tl.where(wrap, H - 1, r1)
        q1 = tl.where(wrap, q - 1, q)
    else:
        s1 = s + 1
        r1 = r + 1
        wrap = r1 == H
        r1 = tl.where(wrap, 0, r1)
        q1 = tl.where(wrap, q + 1, q)
    pos = s1
    if COL:
        pos = r1 * W + q1
    return s1, q1, r1, pos


@triton.jit
def _fwd_steps(
    u_base, dl_base, B_base, C_base, y_base, hs_base, last_base,
    d, dmask, A2t, Dv, bias, L, H, W, nchunks, one,
    s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, Wt, R,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    REV, COL, HAS_D: tl.constexpr, SOFTPLUS: tl.constexpr,
    ATOMIC: tl.constexpr, SAVE_STATES: tl.constexpr, SAVE_LAST: tl.constexpr, RP: tl.constexpr,
    LOWRANK: tl.constexpr, UNROLL: tl.constexpr,
):
    """One step at a time over the whole sequence; the state tile is (N, channels) so the sum over N
    stays inside a thread when a thread owns a whole channel."""
    h = tl.zeros([NP, BD], dtype=tl.float32)
    h, _ = _segment_steps(u_base, dl_base, B_base, C_base, y_base, hs_base, d, dmask, A2t,
                          Dv[None, :], bias[None, :], h, 0, L, L, H, W, nchunks, one,
                          s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, Wt, R, N, NP, T, REV, COL,
                          HAS_D, SOFTPLUS, ATOMIC, True, SAVE_STATES, RP, LOWRANK, UNROLL)
    if SAVE_LAST:
        n = tl.arange(0, NP)[:, None]
        tl.store(last_base + d[None, :] * N + n, h, mask=dmask[None, :] & (n < N))


@triton.jit
def _walk(k, REV: tl.constexpr, COL: tl.constexpr, ALL4: tl.constexpr):
    """(reversed, column-major) walk order of group k: with ALL4 (SS2D's four directions in one
    launch) direction k's, 0 rows, 1 columns, 2 rows reversed, 3 columns reversed, as values of the
    program; otherwise the launch's compile-time (REV, COL)."""
    if ALL4:
        return k >= 2, (k % 2) == 1
    else:
        return REV, COL


@triton.jit
def _program(k_base, nseg, Dk, BD: tl.constexpr, REV: tl.constexpr, COL: tl.constexpr, ALL4: tl.constexpr):
    """Who this program is, in a grid (ceil(Dk / BD), groups * nseg, batch): its channel block, group
    ``k``, segment, batch, walk order (``_walk``), channels ``d`` with their mask, and the channels' rows
    ``k * Dk + d`` of the per-channel parameters (A, D, delta_bias, the dt projection)."""
    pid_d = tl.program_id(0)
    k = k_base + (tl.program_id(1) // nseg).to(tl.int64)
    seg = tl.program_id(1) % nseg
    rev, col = _walk(k, REV, COL, ALL4)
    d = pid_d * BD + tl.arange(0, BD)
    return pid_d, k, seg, tl.program_id(2).to(tl.int64), rev, col, d, d < Dk, k * Dk + d


@triton.jit
def _columns(ptr, row, dmask, count, NI: tl.constexpr, BD: tl.constexpr):
    """(NI, BD) tile of ``ptr[row[j] * count + i]`` for i < count (zeros beyond): the channels' rows of
    a (rows, count) matrix as columns. Built from NI one-dimensional loads so that its layout is the
    state's: a two-dimensional load gets the layout Triton's coalescing picks, which differs between
    Triton versions when no dimension is contiguous, and the step loop then converted between layouts
    every step or computed the recurrence twice (found with ``python -m vmunet_monai kernels``)."""
    i_col = tl.arange(0, NI)[:, None]
    cols = tl.zeros([NI, BD], dtype=tl.float32)
    for i in tl.static_range(NI):
        vi = tl.load(ptr + row * count + i, mask=dmask & (tl.full([BD], i, tl.int32) < count),
                     other=0.0).to(tl.float32)
        cols = tl.where(i_col == i, vi[None, :], cols)
    return cols


@triton.jit
def _projection_rows(w_ptr, row, dmask, R, RP: tl.constexpr):
    """The channels' rows of the step-size projection, (BD, RP) (zeros beyond R)."""
    r = tl.arange(0, RP)
    return tl.load(w_ptr + row[:, None] * R + r[None, :], mask=dmask[:, None] & (r[None, :] < R),
                   other=0.0).to(tl.float32)


@triton.jit
def _channel_params(A_ptr, D_ptr, bias_ptr, row, dmask, N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr,
                    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A * log2(e) as (BD, NP), and D and delta_bias (BD,) of the channels ``row`` (zeros if absent)."""
    n = tl.arange(0, NP)
    A2 = tl.load(A_ptr + row[:, None] * N + n[None, :], mask=dmask[:, None] & (n[None, :] < N), other=0.0)
    A2 = A2.to(tl.float32) * LOG2E
    if HAS_D:
        Dv = tl.load(D_ptr + row, mask=dmask, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros([BD], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + row, mask=dmask, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BD], dtype=tl.float32)
    return A2, Dv, bias


# ``one`` is the integer 1, passed unspecialised, as the stride between state indices of the chunk
# states: knowing them contiguous, Triton stored the states with vectors, in a layout other than the
# state's, and then either converted the state through shared memory (8 barriers every T steps) or
# computed the recurrence twice, once in each layout (found with ``python -m vmunet_monai kernels``).
# The step loop's per-channel parameters (A, the projection) come from ``_columns`` for the same reason.
@triton.jit(do_not_specialize=["one"])
def scan_fwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, hs_ptr, last_ptr, w_ptr,
    L, H, W, Dk, nchunks, K, k_base, R, one,
    s_ub, s_uk, s_ud, s_ul, s_db, s_dk, s_dd, s_dl,
    s_Bb, s_Bk, s_Bn, s_Bt, s_Cb, s_Ck, s_Cn, s_Ct,
    s_yb, s_yk, s_yd, s_yl,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    REV: tl.constexpr, COL: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ATOMIC: tl.constexpr, SAVE_STATES: tl.constexpr, SAVE_LAST: tl.constexpr, STEPWISE: tl.constexpr,
    RP: tl.constexpr, LOWRANK: tl.constexpr, ALL4: tl.constexpr, UNROLL: tl.constexpr,
):
    """Grid (ceil(Dk / BD), groups, batch) over the groups k_base, k_base + 1, ... of K, all walked in
    the (REV, COL) order; see the module docstring. ``ALL4`` (step loop only): SS2D's four directions
    in one launch, group k walked in direction k's order. ``STEPWISE``: step loop, not chunk scans
    (which do not take LOWRANK). ``LOWRANK``: ``dl`` holds the R step-size factors of each direction
    and ``w`` (K * Dk, R) the projection to delta."""
    pid_d, k, _, b, rev, col, d, dmask, row = _program(k_base, 1, Dk, BD, REV, COL, ALL4)
    A2, Dv, bias = _channel_params(A_ptr, D_ptr, bias_ptr, row, dmask, N, NP, BD, HAS_D, HAS_BIAS)
    u_base = u_ptr + b * s_ub + k * s_uk
    dl_base = dl_ptr + b * s_db + k * s_dk
    B_base = B_ptr + b * s_Bb + k * s_Bk
    C_base = C_ptr + b * s_Cb + k * s_Ck
    y_base = y_ptr + b * s_yb + k * s_yk
    hs_base = hs_ptr + (b * K + k) * Dk * nchunks * N
    last_base = last_ptr + (b * K + k) * Dk * N
    if LOWRANK:
        Wt = _columns(w_ptr, row, dmask, R, RP, BD)
    else:
        Wt = tl.zeros([RP, BD], dtype=tl.float32)
    if STEPWISE:
        A2t = _columns(A_ptr, row, dmask, N, NP, BD) * LOG2E  # as A2, transposed, in the state's layout
        _fwd_steps(u_base, dl_base, B_base, C_base, y_base, hs_base, last_base, d, dmask, A2t, Dv, bias,
                   L, H, W, nchunks, one, s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, Wt, R,
                   N, NP, BD, T, rev, col, HAS_D, SOFTPLUS, ATOMIC, SAVE_STATES, SAVE_LAST, RP, LOWRANK, UNROLL)
    else:
        _fwd_run(u_base, dl_base, B_base, C_base, y_base, hs_base, last_base, d, dmask, A2, Dv, bias,
                 L, H, W, nchunks, one, s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl,
                 N, NP, BD, T, REV, COL, HAS_D, SOFTPLUS, ATOMIC, SAVE_STATES, SAVE_LAST)


@triton.jit
def _add_into(ptr, value, mask, DET: tl.constexpr):
    """Add ``value`` into memory other programs also add into (atomically), or with ``DET`` store it
    into this program's own slice of a partial buffer, summed in a fixed order afterwards."""
    if DET:
        tl.store(ptr, value, mask=mask)
    else:
        tl.atomic_add(ptr, value, mask=mask, sem="relaxed")


@triton.jit
def _bwd_run(
    u_base, dl_base, B_base, C_base, dy_base, hs_base,
    du_base, ddl_base, dB_base, dC_base, dA_base, dD_base, dbias_base, dW_base, row0,
    d, dmask, A2, Dv, bias, W2, R, L, H, W, nchunks,
    s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, s_dud, s_dul, s_dBn, s_dCn,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    REV: tl.constexpr, COL: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, ATOMIC: tl.constexpr, RP: tl.constexpr, LOWRANK: tl.constexpr, DET: tl.constexpr,
):
    n = tl.arange(0, NP)
    nmask = n < N
    tt = tl.arange(0, T)
    hmask = dmask[:, None] & nmask[None, :]
    A_nat = A2 / LOG2E
    g = tl.zeros([BD, NP], dtype=tl.float32)  # adjoint of the state entering the chunk after this one
    dA_acc = tl.zeros([BD, NP], dtype=tl.float32)
    dD_acc = tl.zeros([BD], dtype=tl.float32)
    dbias_acc = tl.zeros([BD], dtype=tl.float32)
    dW_acc = tl.zeros([BD, RP], dtype=tl.float32)
    rr = tl.arange(0, RP)
    for i in range(nchunks):
        c = nchunks - 1 - i
        s, pos, valid = _positions(c, L, H, W, T, REV, COL)
        m2 = dmask[:, None] & valid[None, :]
        mb = nmask[:, None] & valid[None, :]
        u = tl.load(u_base + d[:, None] * s_ud + pos[None, :] * s_ul, mask=m2, other=0.0).to(tl.float32)
        x, factors = _delta_tile(dl_base, d, pos, m2, valid, s_dd, s_dl, W2, R, RP, LOWRANK)
        x = x + bias[:, None]
        dt = _step_size(x, SOFTPLUS)
        dt = tl.where(m2, dt, 0.0)
        Bt = tl.load(B_base + n[:, None] * s_Bn + pos[None, :] * s_Bt, mask=mb, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + n[:, None] * s_Cn + pos[None, :] * s_Ct, mask=mb, other=0.0).to(tl.float32)
        dy = tl.load(dy_base + d[:, None] * s_yd + pos[None, :] * s_yl, mask=m2, other=0.0).to(tl.float32)
        h0 = tl.load(hs_base + d[:, None] * (nchunks * N) + c * N + n[None, :], mask=hmask, other=0.0)
        # recompute the states of this chunk from its checkpoint
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        dtu = dt * u
        bx = dtu[:, None, :] * Bt[None, :, :]
        P, S = tl.associative_scan((a, bx), 2, _combine, reverse=REV)
        hh = P * h0[:, :, None] + S
        # decay of the step after each step, in scan order (zero past the end of the sequence)
        if REV:
            s1 = s - 1
        else:
            s1 = s + 1
        valid1 = (s1 >= 0) & (s1 < L)
        pos1 = _position_of(s1, H, W, COL)
        m21 = dmask[:, None] & valid1[None, :]
        x1, _ = _delta_tile(dl_base, d, pos1, m21, valid1, s_dd, s_dl, W2, R, RP, LOWRANK)
        x1 = x1 + bias[:, None]
        dt1 = _step_size(x1, SOFTPLUS)
        dt1 = tl.where(m21, dt1, 0.0)
        a1 = tl.where(valid1[None, None, :], tl.exp2(dt1[:, None, :] * A2[:, :, None]), 0.0)
        # adjoint recurrence, backwards in scan order: g_t = C_t dy_t + a_{t+1} g_{t+1}
        xg = Ct[None, :, :] * dy[:, None, :]
        Pg, G = tl.associative_scan((a1, xg), 2, _combine, reverse=not REV)
        gg = G + Pg * g[:, :, None]
        if REV:
            first = tt == T - 1
        else:
            first = tt == 0
        g = tl.sum(tl.where(first[None, None, :], gg, 0.0), axis=2)
        hb = hh - bx  # a_t * h_{t-1}, without dividing by a_t
        ddt = tl.sum(gg * (hb * A_nat[:, :, None] + Bt[None, :, :] * u[:, None, :]), axis=1)
        du = dt * tl.sum(gg * Bt[None, :, :], axis=1)
        if HAS_D:
            du += Dv[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)
        dA_acc += tl.sum(gg * hb * dt[:, None, :], axis=2)
        dBp = tl.sum(gg * dtu[:, None, :], axis=0)
        dCp = tl.sum(hh * dy[:, None, :], axis=0)
        if SOFTPLUS:
            ddx = ddt / (1.0 + tl.exp(-x))
        else:
            ddx = ddt
        ddx = tl.where(m2, ddx, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddx, axis=1)
        if LOWRANK:  # d factors = W^T d delta (summed over every channel block), d W = d delta factors^T
            dfac = tl.sum(W2[:, :, None] * ddx[:, None, :], axis=0)
            _add_into(ddl_base + rr[:, None] * s_dd + pos[None, :] * s_dl, dfac,
                      (rr[:, None] < R) & valid[None, :], DET)
            dW_acc += tl.sum(ddx[:, None, :] * factors[None, :, :], axis=2)
        else:
            tl.store(ddl_base + d[:, None] * s_dd + pos[None, :] * s_dl, ddx, mask=m2)
        _add_into(dB_base + n[:, None] * s_dBn + pos[None, :], dBp, mb, DET)
        _add_into(dC_base + n[:, None] * s_dCn + pos[None, :], dCp, mb, DET)
        if ATOMIC:
            tl.atomic_add(du_base + d[:, None] * s_dud + pos[None, :] * s_dul, du, mask=m2, sem="relaxed")
        else:
            tl.store(du_base + d[:, None] * s_dud + pos[None, :] * s_dul, du, mask=m2)
    # the per-channel gradients, at rows row0 + d (pointers formed only now, to keep registers free in the loop)
    row = row0 + d
    _add_into(dA_base + row[:, None] * N + n[None, :], dA_acc, hmask, DET)
    if HAS_D:
        _add_into(dD_base + row, dD_acc, dmask, DET)
    if HAS_BIAS:
        _add_into(dbias_base + row, dbias_acc, dmask, DET)
    if LOWRANK:
        _add_into(dW_base + row[:, None] * R + rr[None, :], dW_acc, dmask[:, None] & (rr[None, :] < R), DET)


@triton.jit
def _walk_prev(s, q, r, H, W, REV, COL):
    """(s, q, r) of the previous step in scan order and its map position: the next step of the
    opposite walk."""
    return _walk_next(s, q, r, H, W, REV == 0, COL)


# the parts of one step's block in the step-loop backward's scratch (``_scratch``)
SC_STATE = tl.constexpr(0)
SC_ADJOINT = tl.constexpr(1)
SC_DELTA = tl.constexpr(2)
SC_SLOPE = tl.constexpr(3)


@triton.jit
def _scratch_block(sc_base, j, NP: tl.constexpr, BD: tl.constexpr):
    """Step ``j``'s block in a program's scratch of the step-loop backward: 2 NP + 2 rows of BD float32
    values, the state after the step (NP rows), its adjoint (NP rows), delta and the softplus slope."""
    return sc_base + j * ((2 * NP + 2) * BD)


@triton.jit
def _scratch(block, PART: tl.constexpr, rows, NP: tl.constexpr, BD: tl.constexpr):
    """Rows ``rows`` (a tile of row indices, or 0) of part ``PART`` of a scratch block."""
    first = 0  # SC_STATE
    if PART == SC_ADJOINT:
        first = NP
    if PART == SC_DELTA:
        first = 2 * NP
    if PART == SC_SLOPE:
        first = 2 * NP + 1
    return block + (first + rows) * BD


@triton.jit
def _adjoint_inputs(blk, sc_col, u_base, dl_base, B_base, C_base, dy_base, dd, dm, n, nm, r, rm, pos,
                    s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl,
                    NP: tl.constexpr, BD: tl.constexpr, LOWRANK: tl.constexpr):
    """What step 2 of ``_bwd_steps`` reads for one step: the state, delta and softplus slope from its
    scratch block ``blk``, and u, B, C, dy and (LOWRANK) the step-size factors at map position ``pos``."""
    hv = tl.load(_scratch(blk, SC_STATE, n, NP, BD) + sc_col)
    dt = tl.load(_scratch(blk, SC_DELTA, 0, NP, BD) + sc_col)
    slope = tl.load(_scratch(blk, SC_SLOPE, 0, NP, BD) + sc_col)
    u = tl.load(u_base + dd * s_ud + pos * s_ul, mask=dm, other=0.0).to(tl.float32)
    Bv = tl.load(B_base + n * s_Bn + pos * s_Bt, mask=nm, other=0.0).to(tl.float32)
    Cv = tl.load(C_base + n * s_Cn + pos * s_Ct, mask=nm, other=0.0).to(tl.float32)
    dy = tl.load(dy_base + dd * s_yd + pos * s_yl, mask=dm, other=0.0).to(tl.float32)
    if LOWRANK:
        f = tl.load(dl_base + r * s_dd + pos * s_dl, mask=rm, other=0.0).to(tl.float32)
    else:
        f = tl.zeros([1, 1], dtype=tl.float32)
    return hv, dt, slope, u, Bv, Cv, dy, f


@triton.jit
def _adjoint_local(dl_base, C_base, dy_base, dd, dm, n, nm, A2t, bias2, Wt, R, t_lo, t_hi, L, H, W,
                   s_dd, s_dl, s_Cn, s_Ct, s_yd, s_yl, RP: tl.constexpr, SOFTPLUS: tl.constexpr,
                   LOWRANK: tl.constexpr, REV, COL, UNROLL: tl.constexpr):
    """Phase 1 of the segmented step-loop backward: the adjoint recurrence ``g <- a_t (g + C_t dy_t)``
    over steps t_hi - 1 down to t_lo from zero (no states needed), and the sum of the step sizes."""
    g = tl.zeros(A2t.shape, dtype=tl.float32)
    sdt = tl.zeros(bias2.shape, dtype=tl.float32)
    s, q, rw, pos = _walk_start(t_hi - 1, L, H, W, REV, COL)
    for jr in tl.range(0, t_hi - t_lo, loop_unroll_factor=UNROLL):
        x = _delta_row(dl_base, dd, dm, pos, s_dd, s_dl, Wt, R, RP, LOWRANK) + bias2
        dt = _step_size(x, SOFTPLUS)
        Cv = tl.load(C_base + n * s_Cn + pos * s_Ct, mask=nm, other=0.0).to(tl.float32)
        dy = tl.load(dy_base + dd * s_yd + pos * s_yl, mask=dm, other=0.0).to(tl.float32)
        g = tl.exp2(dt * A2t) * (g + Cv * dy)
        sdt += tl.where(dm, dt, 0.0)
        s, q, rw, pos = _walk_prev(s, q, rw, H, W, REV, COL)
    return g, sdt


@triton.jit
def _bwd_steps(
    u_base, dl_base, B_base, C_base, dy_base, hs_base, sc_base,
    du_base, ddl_base, dB_base, dC_base, dA_base, dD_base, dbias_base, dW_base, row0,
    d, dmask, A2t, Dv2, bias2, Wt, g, c_lo, c_hi, R, L, H, W, nchunks, one,
    s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, s_dud, s_dul, s_dBn, s_dCn,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    REV, COL, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, ATOMIC: tl.constexpr, RP: tl.constexpr, LOWRANK: tl.constexpr, DET: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """The backward one step at a time, the state tile (N, channels) as in the step-loop forward (a
    thread owns whole channels, so sums over N stay inside it). Per chunk, in reverse:

    1. the chunk's states are recomputed forwards from its checkpoint into this program's scratch,
       with each step's delta and softplus slope;
    2. the adjoint runs backwards one step at a time, reading them back, and leaves each step's adjoint
       in the scratch too;
    3. after a barrier, dB and dC, the only sums over channels, are formed from the states and adjoints
       read back as (channels, N) tiles, with the channels spread over fewer threads: a few in-thread
       adds and 3 shuffle rounds per value instead of 5 rounds for each of the 16 values every thread
       holds (``python -m vmunet_monai kernels`` counts the difference).

    The scratch holds a block per step of the chunk (``_scratch_block``, ``_scratch``)."""
    n = tl.arange(0, NP)[:, None]
    nm = n < N
    dd = d[None, :]
    dm = dmask[None, :]
    # the scratch accesses of steps 1 and 2 must keep the state's layout (a thread per channel), so that
    # each thread reads back what it wrote without converting layouts through shared memory every step.
    # Triton lays memory accesses out along their most contiguous dimension, vectorised as far as the
    # alignment it can prove: the channels, contiguous here, offset by ``one - 1`` (zero, but not known
    # to be) are the most contiguous dimension with no alignment to vectorise by, which both Triton 3.6
    # and 3.9 then lay out a channel per thread (a channel stride of ``one``, neither contiguous nor
    # aligned, did that on 3.9 only; 3.6 spread the states over threads: 777 instead of 594.5
    # instructions per step, ``kernels --cases ss2d_bwd_steps``). The barrier before step 2 stays.
    sc_col = tl.arange(0, BD)[None, :] + (one - 1)
    # step 3 reads the products as (channels, N) tiles, contiguous along the channels: Triton then spreads
    # the channels over fewer threads (its choice; a tile of the same shape and order as the state's
    # would pull steps 1 and 2 into that layout too)
    sc_d = tl.arange(0, BD)[:, None]
    n_r = tl.arange(0, NP)[None, :]
    nm_r = n_r < N
    d_r = d[:, None]
    dm_r = dmask[:, None]
    r = tl.arange(0, RP)[:, None]
    rm = r < R
    # g: the adjoint of the state after the chunk range, times the decay of the step after it
    dA_acc = tl.zeros([NP, BD], dtype=tl.float32)
    dD_acc = tl.zeros_like(Dv2)
    dbias_acc = tl.zeros_like(Dv2)
    dW_acc = tl.zeros([RP, BD], dtype=tl.float32)
    for i in range(0, c_hi - c_lo):
        c = c_hi - 1 - i
        t0 = c * T
        steps = tl.minimum(t0 + T, L) - t0
        h = tl.load(hs_base + dd * (nchunks * N) + c * N + n * one, mask=dm & nm, other=0.0)
        # 1. recompute (each step's inputs loaded while the step before computes)
        s, q, rw, pos = _walk_start(t0, L, H, W, REV, COL)
        u, x, Bv, _ = _step_inputs(u_base, dl_base, B_base, B_base, dd, dm, n, nm, pos, s_ud, s_ul, s_dd, s_dl,
                                   s_Bn, s_Bt, s_Bn, s_Bt, Wt, R, NP, False, RP, LOWRANK)
        for j in tl.range(0, steps, loop_unroll_factor=UNROLL):
            s, q, rw, nxt = _walk_next(s, q, rw, H, W, REV, COL)
            nxt = tl.where(j + 1 < steps, nxt, pos)
            u1, x1, B1, _ = _step_inputs(u_base, dl_base, B_base, B_base, dd, dm, n, nm, nxt, s_ud, s_ul, s_dd,
                                         s_dl, s_Bn, s_Bt, s_Bn, s_Bt, Wt, R, NP, False, RP, LOWRANK)
            x = x + bias2
            if SOFTPLUS:
                dt = _softplus(x)
                slope = 1.0 / (1.0 + tl.exp(-x))
            else:
                dt = x
                slope = tl.full(x.shape, 1.0, tl.float32)
            h = tl.exp2(dt * A2t) * h + (dt * u) * Bv
            blk = _scratch_block(sc_base, j, NP, BD)
            tl.store(_scratch(blk, SC_STATE, n, NP, BD) + sc_col, h)
            tl.store(_scratch(blk, SC_DELTA, 0, NP, BD) + sc_col, dt)
            tl.store(_scratch(blk, SC_SLOPE, 0, NP, BD) + sc_col, slope)
            pos = nxt
            u, x, Bv = u1, x1, B1
        tl.debug_barrier()  # the states are in the scratch, whichever thread stored them
        # 2. the adjoint, backwards (again each step's inputs loaded while the step after computes)
        s, q, rw, pos = _walk_start(t0 + steps - 1, L, H, W, REV, COL)
        hv, dt, slope, u, Bv, Cv, dy, f = _adjoint_inputs(
            _scratch_block(sc_base, steps - 1, NP, BD), sc_col, u_base, dl_base, B_base, C_base, dy_base, dd, dm,
            n, nm, r, rm, pos, s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, NP, BD, LOWRANK)
        for jr in tl.range(0, steps, loop_unroll_factor=UNROLL):
            j = steps - 1 - jr
            blk = _scratch_block(sc_base, j, NP, BD)
            s, q, rw, prv = _walk_prev(s, q, rw, H, W, REV, COL)
            prv = tl.where(jr + 1 < steps, prv, pos)
            hv1, dt1, slope1, u1, B1, C1, dy1, f1 = _adjoint_inputs(
                _scratch_block(sc_base, tl.maximum(j - 1, 0), NP, BD), sc_col, u_base, dl_base, B_base, C_base,
                dy_base, dd, dm, n, nm, r, rm, prv, s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, NP, BD,
                LOWRANK)
            g += Cv * dy  # the adjoint of this step's state
            dtu = dt * u
            hb = hv - dtu * Bv  # a_t h_{t-1}, without dividing by a_t
            ghb = g * hb
            # d delta: A a h_{t-1} + B u against the adjoint (A = A2t / log2(e), applied once per channel)
            gB = tl.sum(g * Bv, axis=0, keep_dims=True)
            ddt = tl.sum(ghb * A2t, axis=0, keep_dims=True) * (1.0 / LOG2E) + u * gB
            du = dt * gB
            if HAS_D:
                du += Dv2 * dy
                dD_acc += dy * u
            dA_acc += ghb * dt
            tl.store(_scratch(blk, SC_ADJOINT, n, NP, BD) + sc_col, g)
            ddx = tl.where(dm, ddt * slope, 0.0)
            if HAS_BIAS:
                dbias_acc += ddx
            if LOWRANK:  # d factors = W^T d delta (over every channel block), d W = d delta factors^T
                _add_into(ddl_base + r * s_dd + pos * s_dl, tl.sum(Wt * ddx, axis=1, keep_dims=True), rm, DET)
                dW_acc += f * ddx
            else:
                tl.store(ddl_base + dd * s_dd + pos * s_dl, ddx, mask=dm)
            if ATOMIC:
                tl.atomic_add(du_base + dd * s_dud + pos * s_dul, du, mask=dm, sem="relaxed")
            else:
                tl.store(du_base + dd * s_dud + pos * s_dul, du, mask=dm)
            g = tl.exp2(dt * A2t) * g  # carried to the step before: a_t g_t
            pos = prv
            hv, dt, slope, u, Bv, Cv, dy, f = hv1, dt1, slope1, u1, B1, C1, dy1, f1
        tl.debug_barrier()  # every thread's products are in the scratch
        s, q, rw, pos = _walk_start(t0, L, H, W, REV, COL)
        for j in range(0, steps):
            blk = _scratch_block(sc_base, j, NP, BD)
            dtu_r = tl.load(_scratch(blk, SC_DELTA, 0, NP, BD) + sc_d) * \
                tl.load(u_base + d_r * s_ud + pos * s_ul, mask=dm_r, other=0.0).to(tl.float32)
            dy_r = tl.load(dy_base + d_r * s_yd + pos * s_yl, mask=dm_r, other=0.0).to(tl.float32)
            dBv = tl.sum(tl.load(_scratch(blk, SC_ADJOINT, n_r, NP, BD) + sc_d) * dtu_r, axis=0, keep_dims=True)
            dCv = tl.sum(tl.load(_scratch(blk, SC_STATE, n_r, NP, BD) + sc_d) * dy_r, axis=0, keep_dims=True)
            _add_into(dB_base + n_r * s_dBn + pos, dBv, nm_r, DET)
            _add_into(dC_base + n_r * s_dCn + pos, dCv, nm_r, DET)
            s, q, rw, pos = _walk_next(s, q, rw, H, W, REV, COL)
        tl.debug_barrier()  # read before the next chunk writes its states
    rows = row0 + dd
    _add_into(dA_base + rows * N + n, dA_acc, dm & nm, DET)
    if HAS_D:
        _add_into(dD_base + rows, dD_acc, dm, DET)
    if HAS_BIAS:
        _add_into(dbias_base + rows, dbias_acc, dm, DET)
    if LOWRANK:
        _add_into(dW_base + rows * R + r, dW_acc, dm & rm, DET)


@triton.jit
def _segment_slot(agg_base, agg_dt_base, seg, Dk, dd, dm, N: tl.constexpr, NP: tl.constexpr):
    """Segment ``seg``'s result in a (batch, group)'s slice of the segment buffers (``agg`` (batch, K,
    nseg, Dk, N) and ``agg_dt`` (batch, K, nseg, Dk), at ``(b * K + k) * nseg`` rows): pointers to its
    (NP, channels) state or adjoint, with their mask, and to its summed step sizes."""
    n = tl.arange(0, NP)[:, None]
    return agg_base + seg * Dk * N + dd * N + n, dm & (n < N), agg_dt_base + seg * Dk + dd


@triton.jit
def _fold_segments(x, agg_base, agg_dt_base, first, count, step, Dk, dd, dm, A2t, N: tl.constexpr,
                   NP: tl.constexpr):
    """Fold ``count`` segments' results into ``x``, from segment ``first`` on in steps of ``step``
    (forward: the earlier segments' end states, +1; backward: the later segments' adjoints, -1, from
    the last): x <- exp(A * sum of the segment's step sizes) x + the segment's result."""
    for i in range(0, count):
        at, mask, at_dt = _segment_slot(agg_base, agg_dt_base, first + i * step, Dk, dd, dm, N, NP)
        sdt = tl.load(at_dt, mask=dm, other=0.0)
        x = tl.exp2(sdt * A2t) * x + tl.load(at, mask=mask, other=0.0)
    return x


@triton.jit(do_not_specialize=["one"])  # as scan_fwd_kernel
def scan_bwd_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, hs_ptr, w_ptr,
    du_ptr, ddl_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dw_ptr, sc_ptr, agg_g_ptr, agg_dt_ptr,
    L, H, W, Dk, nchunks, K, k_base, R, one, nseg, seg_chunks,
    s_ub, s_uk, s_ud, s_ul, s_db, s_dk, s_dd, s_dl,
    s_Bb, s_Bk, s_Bn, s_Bt, s_Cb, s_Ck, s_Cn, s_Ct,
    s_yb, s_yk, s_yd, s_yl, s_dub, s_duk, s_dud, s_dul,
    s_dBb, s_dBk, s_dBn, s_dCb, s_dCk, s_dCn, s_dBp, s_dCp, s_ddlb, s_ddlk, s_ddlp,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    REV: tl.constexpr, COL: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ATOMIC: tl.constexpr, RP: tl.constexpr, LOWRANK: tl.constexpr, DET: tl.constexpr,
    STEPWISE: tl.constexpr, ALL4: tl.constexpr, UNROLL: tl.constexpr, PHASE: tl.constexpr,
):
    """Grid (ceil(Dk / BD), groups * nseg, batch) as the forward's. ``ddl`` has the strides of ``dl`` (delta,
    or with LOWRANK its factors, then accumulated) within a (batch, group), and batch and group strides
    ``s_ddlb``, ``s_ddlk`` of its own; dA, dD, d bias and d w start at zero.

    ``DET`` (deterministic): nothing is added atomically. Channel block ``j`` writes its dB and dC
    (and with LOWRANK its factors' gradient) at offset ``j * s_dBp`` (``s_dCp``, ``s_ddlp``) of
    partial buffers, and batch ``b`` its dA, dD, d bias and d w at row ``b`` of (batch, ...) partials;
    the caller sums the partials in a fixed order. Pass ``ATOMIC=False`` and a per-group du. A group
    stride of 0 for dB, dC and ddl puts every group of the launch in one slot of the partials (a launch
    of one group, as SS2D's per-direction launches are, needs no more).

    ``STEPWISE`` (the step-loop backward) may split each sequence into ``nseg`` segments of
    ``seg_chunks`` chunks, one program each: ``PHASE`` 1 runs each segment's adjoint recurrence alone,
    from zero, and writes its result and the segment's summed step sizes to ``agg_g`` (batch, K, nseg,
    Dk, N) and ``agg_dt`` (batch, K, nseg, Dk); ``PHASE`` 2 folds the later segments' results into the
    adjoint entering its segment and runs the full backward over it. With DET, batch ``b``'s segment
    ``s`` writes its per-channel partials at row ``b * nseg + s``. ``PHASE`` 0: one segment."""
    pid_d, k, seg, b, rev, col, d, dmask, row = _program(k_base, nseg, Dk, BD, REV, COL, ALL4)
    A2, Dv, bias = _channel_params(A_ptr, D_ptr, bias_ptr, row, dmask, N, NP, BD, HAS_D, HAS_BIAS)
    u_base = u_ptr + b * s_ub + k * s_uk
    dl_base = dl_ptr + b * s_db + k * s_dk
    B_base = B_ptr + b * s_Bb + k * s_Bk
    C_base = C_ptr + b * s_Cb + k * s_Ck
    dy_base = dy_ptr + b * s_yb + k * s_yk
    hs_base = hs_ptr + (b * K + k) * Dk * nchunks * N
    du_base = du_ptr + b * s_dub + k * s_duk
    ddl_base = ddl_ptr + b * s_ddlb + k * s_ddlk + pid_d * s_ddlp
    dB_base = dB_ptr + b * s_dBb + k * s_dBk + pid_d * s_dBp
    dC_base = dC_ptr + b * s_dCb + k * s_dCk + pid_d * s_dCp
    row0 = k * Dk  # the first of this group's rows of A, D, delta_bias and w
    if DET:  # in this batch's (and segment's) slice of the (batch, nseg, K * Dk, ...) partials
        row0 += (b * nseg + seg) * (K * Dk)
    if STEPWISE:
        # this program's scratch: (T, 2 NP + 2, BD) float32 (see _bwd_steps)
        pid = pid_d + tl.num_programs(0) * (tl.program_id(1) + tl.num_programs(1) * tl.program_id(2))
        sc_base = _scratch_block(sc_ptr, pid.to(tl.int64) * T, NP, BD)  # T steps' blocks per program
        A2t = _columns(A_ptr, row, dmask, N, NP, BD) * LOG2E  # as in scan_fwd_kernel
        if LOWRANK:
            Wt = _columns(w_ptr, row, dmask, R, RP, BD)
        else:
            Wt = tl.zeros([RP, BD], dtype=tl.float32)
        n2 = tl.arange(0, NP)[:, None]
        dd = d[None, :]
        dm = dmask[None, :]
        agg_g_base = agg_g_ptr + (b * K + k) * nseg * Dk * N  # this (batch, group)'s segment results
        agg_dt_base = agg_dt_ptr + (b * K + k) * nseg * Dk
        c_lo = seg * seg_chunks
        c_hi = tl.minimum(c_lo + seg_chunks, nchunks)
        g0 = tl.zeros([NP, BD], dtype=tl.float32)
        if PHASE == 1:
            g0, sdt = _adjoint_local(dl_base, C_base, dy_base, dd, dm, n2, n2 < N, A2t, bias[None, :], Wt, R,
                                     c_lo * T, tl.minimum(c_hi * T, L), L, H, W, s_dd, s_dl, s_Cn, s_Ct, s_yd,
                                     s_yl, RP, SOFTPLUS, LOWRANK, rev, col, UNROLL)
            at, mask, at_dt = _segment_slot(agg_g_base, agg_dt_base, seg, Dk, dd, dm, N, NP)
            tl.store(at, g0, mask=mask)
            tl.store(at_dt, sdt, mask=dm)
        else:  # the adjoint entering this segment, from the later ones' (the last first)
            g0 = _fold_segments(g0, agg_g_base, agg_dt_base, nseg - 1, nseg - 1 - seg, -1, Dk, dd, dm, A2t, N, NP)
            _bwd_steps(u_base, dl_base, B_base, C_base, dy_base, hs_base, sc_base, du_base, ddl_base, dB_base,
                       dC_base, dA_ptr, dD_ptr, dbias_ptr, dw_ptr, row0, d, dmask, A2t, Dv[None, :], bias[None, :],
                       Wt, g0, c_lo, c_hi, R, L, H, W, nchunks, one, s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct,
                       s_yd, s_yl, s_dud, s_dul, s_dBn, s_dCn, N, NP, BD, T, rev, col, HAS_D, HAS_BIAS, SOFTPLUS,
                       ATOMIC, RP, LOWRANK, DET, UNROLL)
    else:
        if LOWRANK:
            W2 = _projection_rows(w_ptr, row, dmask, R, RP)
        else:
            W2 = tl.zeros([BD, RP], dtype=tl.float32)
        _bwd_run(u_base, dl_base, B_base, C_base, dy_base, hs_base, du_base, ddl_base, dB_base, dC_base,
                 dA_ptr, dD_ptr, dbias_ptr, dw_ptr, row0, d, dmask, A2, Dv, bias, W2, R,
                 L, H, W, nchunks, s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, s_dud, s_dul, s_dBn, s_dCn,
                 N, NP, BD, T, REV, COL, HAS_D, HAS_BIAS, SOFTPLUS, ATOMIC, RP, LOWRANK, DET)


@triton.jit
def _delta_row(dl_base, dd, dm, pos, s_dd, s_dl, Wt, R, RP: tl.constexpr, LOWRANK: tl.constexpr):
    """delta (1, channels) at one map position: loaded, or (LOWRANK) the channels' rows of the
    projection (Wt, (RP, channels)) times the R step-size factors stored there."""
    if LOWRANK:
        r = tl.arange(0, RP)[:, None]
        f = tl.load(dl_base + r * s_dd + pos * s_dl, mask=r < R, other=0.0).to(tl.float32)
        return tl.sum(Wt * f, axis=0, keep_dims=True)
    else:
        return tl.load(dl_base + dd * s_dd + pos * s_dl, mask=dm, other=0.0).to(tl.float32)


@triton.jit
def _delta_tile(dl_base, d, pos, m2, valid, s_dd, s_dl, W2, R, RP: tl.constexpr, LOWRANK: tl.constexpr):
    """delta (channels, steps) of one chunk, and (LOWRANK) the (RP, steps) factors it came from."""
    if LOWRANK:
        r = tl.arange(0, RP)
        f = tl.load(dl_base + r[:, None] * s_dd + pos[None, :] * s_dl, mask=(r[:, None] < R) & valid[None, :],
                    other=0.0).to(tl.float32)
        return tl.sum(W2[:, :, None] * f[None, :, :], axis=1), f
    else:
        x = tl.load(dl_base + d[:, None] * s_dd + pos[None, :] * s_dl, mask=m2, other=0.0).to(tl.float32)
        return x, x


@triton.jit
def _step_inputs(u_base, dl_base, B_base, C_base, dd, dm, n, nm, pos,
                 s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, Wt, R, NP: tl.constexpr, WITH_C: tl.constexpr,
                 RP: tl.constexpr, LOWRANK: tl.constexpr):
    """u, delta (1, channels), B and (if WITH_C, else zeros) C (N, 1) at map position ``pos``, in float32."""
    u = tl.load(u_base + dd * s_ud + pos * s_ul, mask=dm, other=0.0).to(tl.float32)
    x = _delta_row(dl_base, dd, dm, pos, s_dd, s_dl, Wt, R, RP, LOWRANK)
    Bv = tl.load(B_base + n * s_Bn + pos * s_Bt, mask=nm, other=0.0).to(tl.float32)
    if WITH_C:
        Cv = tl.load(C_base + n * s_Cn + pos * s_Ct, mask=nm, other=0.0).to(tl.float32)
    else:
        Cv = tl.zeros([NP, 1], dtype=tl.float32)
    return u, x, Bv, Cv


@triton.jit
def _segment_steps(
    u_base, dl_base, B_base, C_base, y_base, hs_base,
    d, dmask, A2t, Dv2, bias2, h, t0, t1, L, H, W, nchunks, one,
    s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, Wt, R,
    N: tl.constexpr, NP: tl.constexpr, T: tl.constexpr,
    REV, COL, HAS_D: tl.constexpr, SOFTPLUS: tl.constexpr,
    ATOMIC: tl.constexpr, OUTPUT: tl.constexpr, SAVE_STATES: tl.constexpr, RP: tl.constexpr, LOWRANK: tl.constexpr,
    UNROLL: tl.constexpr,
):
    """Steps t0 .. t1-1 (scan order) from the state ``h`` (N, channels); returns the state after them
    and the per-channel sum of the step sizes. Without OUTPUT, C is not read and nothing is written.
    UNROLL steps per loop iteration: unrolled, the prefetched next step's inputs need no register
    copies (a rolled loop moved all 2N + 2 of them every step)."""
    n = tl.arange(0, NP)[:, None]
    nm = n < N
    dd = d[None, :]
    dm = dmask[None, :]
    sdt = tl.zeros_like(Dv2)
    s, q, r, pos = _walk_start(t0, L, H, W, REV, COL)
    u, x, Bv, Cv = _step_inputs(u_base, dl_base, B_base, C_base, dd, dm, n, nm, pos,
                                s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, Wt, R, NP, OUTPUT, RP, LOWRANK)
    for t in tl.range(t0, t1, loop_unroll_factor=UNROLL):
        if SAVE_STATES:
            if t % T == 0:
                tl.store(hs_base + dd * (nchunks * N) + (t // T) * N + n * one, h, mask=dm & nm)
        # the next step's inputs are loaded before this step computes (past the last step: this one's again)
        s, q, r, nxt = _walk_next(s, q, r, H, W, REV, COL)
        nxt = tl.where(t + 1 < L, nxt, pos)
        u1, x1, B1, C1 = _step_inputs(u_base, dl_base, B_base, C_base, dd, dm, n, nm, nxt,
                                      s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, Wt, R, NP, OUTPUT, RP,
                                      LOWRANK)
        xb = x + bias2
        dt = _step_size(xb, SOFTPLUS)
        sdt += dt
        h = tl.exp2(dt * A2t) * h + (dt * u) * Bv
        if OUTPUT:
            y = tl.sum(h * Cv, axis=0, keep_dims=True)
            if HAS_D:
                y += Dv2 * u
            if ATOMIC:
                tl.atomic_add(y_base + dd * s_yd + pos * s_yl, y, mask=dm, sem="relaxed")
            else:
                tl.store(y_base + dd * s_yd + pos * s_yl, y, mask=dm)
        pos = nxt
        u, x, Bv, Cv = u1, x1, B1, C1
    return h, sdt


@triton.jit(do_not_specialize=["one"])  # as scan_fwd_kernel
def scan_fwd_split_kernel(
    u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, hs_ptr, last_ptr, w_ptr, agg_h_ptr, agg_dt_ptr,
    L, H, W, Dk, nchunks, K, k_base, R, one, nseg, seg_len,
    s_ub, s_uk, s_ud, s_ul, s_db, s_dk, s_dd, s_dl,
    s_Bb, s_Bk, s_Bn, s_Bt, s_Cb, s_Ck, s_Cn, s_Ct,
    s_yb, s_yk, s_yd, s_yl,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, PHASE: tl.constexpr,
    REV: tl.constexpr, COL: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ATOMIC: tl.constexpr, SAVE_STATES: tl.constexpr, SAVE_LAST: tl.constexpr, RP: tl.constexpr,
    LOWRANK: tl.constexpr, ALL4: tl.constexpr, UNROLL: tl.constexpr,
):
    """The forward with the sequence split into ``nseg`` segments of ``seg_len`` steps (a multiple of
    T), one program each, so that few or short sequences still fill the GPU. Grid
    (ceil(Dk / BD), groups * nseg, batch) over the groups k_base, k_base + 1, ... of K; every group of
    one launch walks the same (REV, COL) order, or with ``ALL4`` its own direction's.

    PHASE 1: each segment scans from a zero state and writes its end state and the sum of its step
    sizes (its decay over the segment is exp(A * sum)). PHASE 2: each segment folds the earlier
    segments' results into the state entering it, then scans again writing the outputs, the chunk
    states (every T steps) and, in the last segment, the last state.
    """
    pid_d, k, seg, b, rev, col, d, dmask, row = _program(k_base, nseg, Dk, BD, REV, COL, ALL4)
    _, Dv, bias = _channel_params(A_ptr, D_ptr, bias_ptr, row, dmask, N, NP, BD, HAS_D, HAS_BIAS)
    A2t = _columns(A_ptr, row, dmask, N, NP, BD) * LOG2E  # see scan_fwd_kernel
    if LOWRANK:
        Wt = _columns(w_ptr, row, dmask, R, RP, BD)
    else:
        Wt = tl.zeros([RP, BD], dtype=tl.float32)
    u_base = u_ptr + b * s_ub + k * s_uk
    dl_base = dl_ptr + b * s_db + k * s_dk
    B_base = B_ptr + b * s_Bb + k * s_Bk
    C_base = C_ptr + b * s_Cb + k * s_Ck
    y_base = y_ptr + b * s_yb + k * s_yk
    n = tl.arange(0, NP)[:, None]
    nm = n < N
    dd = d[None, :]
    dm = dmask[None, :]
    t0 = seg * seg_len
    agg_h_base = agg_h_ptr + (b * K + k) * nseg * Dk * N  # this (batch, group)'s segment results
    agg_dt_base = agg_dt_ptr + (b * K + k) * nseg * Dk
    t1 = tl.minimum(t0 + seg_len, L)
    h = tl.zeros([NP, BD], dtype=tl.float32)
    if PHASE == 1:
        h, sdt = _segment_steps(u_base, dl_base, B_base, C_base, y_base, hs_ptr, d, dmask, A2t,
                                Dv[None, :], bias[None, :], h, t0, t1, L, H, W, nchunks, one,
                                s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, Wt, R, N, NP, T, rev,
                                col, HAS_D, SOFTPLUS, ATOMIC, False, False, RP, LOWRANK, UNROLL)
        at, mask, at_dt = _segment_slot(agg_h_base, agg_dt_base, seg, Dk, dd, dm, N, NP)
        tl.store(at, h, mask=mask)
        tl.store(at_dt, sdt, mask=dm)
    else:  # the state entering this segment, from the earlier segments' results
        h = _fold_segments(h, agg_h_base, agg_dt_base, 0, seg, 1, Dk, dd, dm, A2t, N, NP)
        hs_base = hs_ptr + (b * K + k) * Dk * nchunks * N
        h, sdt = _segment_steps(u_base, dl_base, B_base, C_base, y_base, hs_base, d, dmask, A2t,
                                Dv[None, :], bias[None, :], h, t0, t1, L, H, W, nchunks, one,
                                s_ud, s_ul, s_dd, s_dl, s_Bn, s_Bt, s_Cn, s_Ct, s_yd, s_yl, Wt, R, N, NP, T, rev,
                                col, HAS_D, SOFTPLUS, ATOMIC, True, SAVE_STATES, RP, LOWRANK, UNROLL)
        if SAVE_LAST:
            if seg == nseg - 1:
                tl.store(last_ptr + (b * K + k) * Dk * N + dd * N + n, h, mask=dm & nm)
