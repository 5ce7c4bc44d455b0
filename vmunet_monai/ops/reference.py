"""Sequential selective scan: the oracle every other backend is tested against.

It follows the documented semantics of mamba-ssm's ``selective_scan_fn`` one time step at a time,
in the dtype it is given (float64 inputs stay float64), and is never chosen automatically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_reference", "expand_groups"]


def expand_groups(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Bring a variable B or C of shape (batch, N, L) or (batch, G, N, L) to (batch, dim, N, L).

    With G groups, channel ``d`` uses group ``d // (dim // G)`` (each group repeated contiguously).
    """
    if x.dim() == 3:
        x = x.unsqueeze(1)
    groups = x.shape[1]
    if dim % groups:
        raise ValueError(f"the channel count {dim} is not a multiple of the {groups} groups of B/C")
    return x.repeat_interleave(dim // groups, dim=1)


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Selective scan, one step at a time.

    Args:
        u: (batch, dim, L).
        delta: (batch, dim, L).
        A: (dim, N), real.
        B, C: (dim, N) constant, (batch, N, L) variable, or (batch, G, N, L) grouped.
        D: optional (dim,) skip.
        z: optional (batch, dim, L) gate: the output is multiplied by SiLU(z).
        delta_bias: optional (dim,) added to delta before the optional softplus.
        delta_softplus: apply softplus to delta (after the bias).
        return_last_state: also return the final state (batch, dim, N).
    """
    in_dtype = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u = u.to(compute)
    delta = delta.to(compute)
    A = A.to(compute)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    n_state = A.shape[1]
    B_var = B.dim() >= 3
    C_var = C.dim() >= 3
    Bx = expand_groups(B, dim).to(compute) if B_var else B.to(compute)
    Cx = expand_groups(C, dim).to(compute) if C_var else C.to(compute)
    h = u.new_zeros((batch, dim, n_state))
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]  # (b, d, 1)
        decay = torch.exp(dt * A)  # (b, d, n)
        b_t = Bx[:, :, :, t] if B_var else Bx  # (b, d, n) or (d, n)
        c_t = Cx[:, :, :, t] if C_var else Cx
        h = decay * h + dt * b_t * u[:, :, t, None]
        ys.append((h * c_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(compute)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(in_dtype)
    return (out, h) if return_last_state else out
