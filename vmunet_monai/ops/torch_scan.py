"""Chunked selective scan in plain PyTorch: the portable backend.

The sequence is cut into chunks of ``chunk`` steps, and the recurrence runs for all chunks at once: a loop of
``chunk`` steps over states of shape (batch, dim, N, chunks). The inputs are laid out time-major first, so each
step reads one contiguous slice, and a step's decay ``exp(delta * A)`` is formed inside the step rather than
stored for the whole sequence. Three passes:

1. every chunk from a zero state, keeping only the state it ends with;
2. a loop over the chunks carrying the state from one chunk to the next;
3. every chunk again from its true entering state, reading the outputs ``C . h``.

Every factor is a decay of a *forward* time interval, so nothing is divided by a decay and nothing overflows.
The code uses only tensor operations, so it runs on any device, differentiates through autograd, and traces
for TorchScript and ONNX (the loops unroll into ``2 * chunk + chunks`` steps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_torch"]


def selective_scan_torch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    chunk: int = 64,
):
    """Selective scan with mamba-ssm ``selective_scan_fn`` semantics; see :func:`vmunet_monai.ops.selective_scan`."""
    in_dtype = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, length = u.shape
    n_state = A.shape[1]
    u_c = u.to(compute)
    dt = delta.to(compute)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        dt = F.softplus(dt)

    # channels as (groups, channels per group) so grouped B/C broadcast without a copy
    groups = 1
    if B.dim() == 4:
        groups = B.shape[1]
    elif C.dim() == 4:
        groups = C.shape[1]
    if dim % groups:
        raise ValueError(f"the channel count {dim} is not a multiple of the {groups} groups of B/C")
    per_group = dim // groups

    chunk = max(1, min(chunk, length))
    n_chunks = math.ceil(length / chunk)
    pad = n_chunks * chunk - length

    def time_major(x):  # (..., L) -> (T, ..., chunks), contiguous per step; padded steps carry delta 0
        if pad:
            x = F.pad(x, (0, pad))
        x = x.reshape(*x.shape[:-1], n_chunks, chunk)
        last = x.dim() - 1  # spelled out: ONNX's Transpose takes no negative axes
        return x.permute([last] + list(range(last))).contiguous()

    def per_step(x):  # B or C: a function of the step giving (batch, G, 1, N, chunks), or (1, G, pg, N, 1)
        if x.dim() == 2:  # constant over time, one row per channel
            constant = x.to(compute).view(1, groups, per_group, n_state, 1)
            return lambda t: constant
        if x.dim() == 3:
            x = x.unsqueeze(1).expand(batch, groups, n_state, length)
        steps = time_major(x.to(compute).unsqueeze(2))
        return lambda t: steps[t]

    A5 = A.to(compute).view(1, groups, per_group, n_state, 1)
    dt_t = time_major(dt.view(batch, groups, per_group, 1, length))  # (T, b, G, pg, 1, chunks)
    dtu_t = time_major((dt * u_c).view(batch, groups, per_group, 1, length))
    B_at, C_at = per_step(B), per_step(C)

    def step(h, t):
        return torch.exp(dt_t[t] * A5) * h + dtu_t[t] * B_at(t)

    # 1) the state each chunk ends with from a zero start, all chunks at once
    h = dt_t.new_zeros(batch, groups, per_group, n_state, n_chunks)
    for t in range(chunk):
        h = step(h, t)
    # 2) carried across chunks: the state entering each chunk
    chunk_decay = torch.exp(dt_t.sum(0) * A5)  # (b, G, pg, N, chunks)
    carried = [h.new_zeros(h.shape[:-1])]
    for c in range(n_chunks - 1):
        carried.append(chunk_decay[..., c] * carried[-1] + h[..., c])
    last_state = chunk_decay[..., -1] * carried[-1] + h[..., -1]
    # 3) every chunk again from its true entering state, reading the outputs
    h = torch.stack(carried, dim=-1)
    ys = []
    for t in range(chunk):
        h = step(h, t)
        ys.append((h * C_at(t)).sum(3))  # (b, G, pg, chunks)
    y = torch.stack(ys, dim=-1).reshape(batch, dim, n_chunks * chunk)[..., :length]

    if D is not None:
        y = y + u_c * D.to(compute)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(in_dtype)
    if return_last_state:
        return out, last_state.reshape(batch, dim, n_state)
    return out
