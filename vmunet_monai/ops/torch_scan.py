"""Chunked selective scan in plain PyTorch: the portable backend.

The sequence is cut into chunks of ``chunk`` steps. Inside every chunk the recurrence runs for all
chunks at once (a loop of ``chunk`` steps over tensors of shape (batch, dim, chunks, N)); a second
loop over the chunks carries the state from one chunk to the next. Every factor is a decay
``exp(delta * A)`` of a *forward* time interval, so nothing is ever divided by a decay and nothing
overflows, unlike the ``exp(-cumsum)`` trick. The code uses only tensor operations, so it runs on
any device, differentiates through autograd, and traces for TorchScript and ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_torch"]


def _variable_bc(x: torch.Tensor, batch: int, groups_dim: int, dim: int, length: int) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) -> (batch, G, 1, N, L) broadcastable over channels."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.unsqueeze(2)


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

    def as_state(x):  # B or C -> (batch, G, per_group|1, N, L) or constant (1, G, per_group, N, 1)
        if x.dim() == 2:
            return x.to(compute).view(1, groups, per_group, n_state, 1)
        if x.dim() == 3:
            x = x.unsqueeze(1).expand(batch, groups, n_state, length)
        return x.to(compute).unsqueeze(2)

    Bs, Cs = as_state(B), as_state(C)
    A5 = A.to(compute).view(1, groups, per_group, n_state, 1)
    u5 = u_c.view(batch, groups, per_group, 1, length)
    dt5 = dt.view(batch, groups, per_group, 1, length)

    chunk = max(1, min(chunk, length))
    n_chunks = math.ceil(length / chunk)
    pad = n_chunks * chunk - length

    def chunked(x):  # (..., L) -> (..., n_chunks, chunk); padded steps carry delta 0: decay 1, input 0
        if x.shape[-1] == 1:
            return x.unsqueeze(-1)
        if pad:
            x = F.pad(x, (0, pad))
        return x.reshape(*x.shape[:-1], n_chunks, chunk)

    dA = chunked(dt5 * A5)  # (b, G, pg, N, nc, T) log-decay per step
    dBu = chunked(dt5 * Bs * u5)  # (b, G, pg, N, nc, T) input per step
    Cc = chunked(Cs)

    # 1) state inside each chunk from a zero start, all chunks at once
    h = dBu.new_zeros(dBu.shape[:-1])
    ys = []
    decay = torch.exp(dA)
    for t in range(chunk):
        h = decay[..., t] * h + dBu[..., t]
        ys.append((h * Cc[..., min(t, Cc.shape[-1] - 1)]).sum(3))
    y_local = torch.stack(ys, dim=-1)  # (b, G, pg, nc, T)
    h_end = h  # (b, G, pg, N, nc) state at the end of each chunk from a zero start

    # 2) carry the state across chunks: state entering chunk c
    log_decay_chunk = dA.sum(-1)  # (b, G, pg, N, nc)
    chunk_decay = torch.exp(log_decay_chunk)
    carried = [h_end.new_zeros(h_end.shape[:-1])]
    for c in range(n_chunks - 1):
        carried.append(chunk_decay[..., c] * carried[-1] + h_end[..., c])
    h_in = torch.stack(carried, dim=-1)  # (b, G, pg, N, nc)
    last_state = chunk_decay[..., -1] * carried[-1] + h_end[..., -1]

    # 3) contribution of the entering state to every step of the chunk
    within = torch.exp(torch.cumsum(dA, dim=-1))  # decay from chunk start to step t inclusive
    y = y_local + (Cc * within * h_in.unsqueeze(-1)).sum(3)
    y = y.reshape(batch, dim, n_chunks * chunk)[..., :length]

    if D is not None:
        y = y + u_c * D.to(compute)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(in_dtype)
    if return_last_state:
        return out, last_state.reshape(batch, dim, n_state)
    return out
