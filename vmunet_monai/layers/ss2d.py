"""SS2D: the 2D selective-scan token mixer of VMamba v0, as used by VM-UNet, VM-UNetV2 and Mamba-UNet."""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vmunet_monai import ops
from vmunet_monai.ops.norm_gate import fused_available, norm_gate
from vmunet_monai.ops.recompute import RecomputeSaved, exporting, in_functorch_transform, recomputing

__all__ = ["SS2D"]

K_DIRECTIONS = 4
# the scan backends made of PyTorch operations only, which torch.func transforms go through
_COMPOSABLE_BACKENDS = ("torch", "reference")


class SS2D(nn.Module):
    """Four-direction selective scan over a channels-last feature map.

    in_proj splits into a branch x (depthwise conv, SiLU, cross-scan, selective scan, merge,
    LayerNorm) and a gate z (SiLU); their product goes through out_proj. Parameter names, shapes
    and initialisation follow the official v0 code, so its checkpoints load unchanged.

    Args:
        d_model: channels C of the input (B, H, W, C).
        d_state: state size N per channel.
        d_conv: depthwise convolution kernel size.
        expand: inner channels Di = expand * C.
        dt_rank: rank R of the step-size projection; "auto" gives ceil(C / 16).
        dt_min, dt_max: range of the initial step sizes (log-uniform).
        dt_init: "random" (uniform in +-R^-0.5 * dt_scale) or "constant" for the dt projection weight.
        dt_scale: scale of that initial weight.
        dt_init_floor: smallest initial step size.
        conv_bias: bias in the depthwise convolution.
        bias: bias in in_proj and out_proj.
        dropout: dropout after out_proj (0 keeps no module, as the official code).
        scan_backend: scan backend name, or None for the automatic choice (see :mod:`vmunet_monai.ops`).
        recompute: in training, keep only the activations that are expensive to rebuild and recompute
            the rest in the backward pass (the full-rank step sizes, the SiLU output, the output
            LayerNorm, gate and out_proj input; in a VSS block also the input LayerNorm): about half
            the activation memory for a few elementwise ops and two small matrix products per block.
            Results and gradients are unchanged; False stores everything. Also settable later as the
            ``recompute`` attribute. Not used inside ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``...),
            which do not support the saved-tensor hooks it works with: there everything is stored.

    Inside a ``torch.func`` transform the scan runs on the ``torch`` backend (``reference`` if chosen): the
    compiled kernels (``cpu``, ``triton``, ``mamba_ssm``) have no batching or forward-mode rules.

    Raises:
        ValueError: for an argument out of its range (a size that is not a whole number of at least 1, a
            ``dropout`` outside [0, 1), ``dt_min``/``dt_max`` not 0 < dt_min <= dt_max, a ``recompute`` that is
            not True or False, an unknown ``scan_backend``), and in ``forward`` for input of the wrong shape, or
            of another floating-point dtype than the weights outside ``torch.autocast``.

    Attributes:
        channels_last_scan: run the convolution, projections and scan on channels-last maps (class
            default False; set it on the class or on one layer). Channels are then innermost, so the
            triton kernels' per-step loads of a block of channels are contiguous and the output
            LayerNorm reads the scan result without a transposing copy. Same results either way;
            the other backends copy to their own layout.
        fused_norm_gate: compute the output LayerNorm and SiLU gate in one Triton kernel each way
            where Triton runs (:func:`vmunet_monai.ops.norm_gate.norm_gate`; class default False).
        fused_dt_proj: hand the scan the step sizes' rank-R factors and the dt projection (class
            default False). The triton kernels then form each step size in float32 as they scan, so
            the (B, 4, Di, H, W) step-size tensor, the largest input of the scan, is never written,
            read or kept; other backends project first, as without it.
    """

    channels_last_scan = False
    fused_norm_gate = False
    fused_dt_proj = False

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        dropout: float = 0.0,
        scan_backend: str | None = None,
        recompute: bool = True,
    ) -> None:
        super().__init__()
        from vmunet_monai.networks.common import check_flag, check_rate, check_whole

        d_model, d_state, d_conv = (check_whole("SS2D", k, v) for k, v in
                                    (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)))
        if d_conv % 2 == 0:  # padded by (d_conv - 1) // 2 on each side: an even kernel changes the size
            raise ValueError(f"SS2D d_conv={d_conv} must be odd (the convolution keeps the map's size)")
        if isinstance(expand, bool) or not isinstance(expand, numbers.Real) or not expand > 0:
            raise ValueError(f"SS2D expand={expand!r} must be a number above 0")
        if int(expand * d_model) < 1:
            raise ValueError(f"SS2D expand={expand} leaves no inner channels for d_model={d_model}")
        if dt_rank != "auto":
            dt_rank = check_whole("SS2D", "dt_rank", dt_rank)
        for name, value in (("dt_min", dt_min), ("dt_max", dt_max)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"SS2D {name}={value!r} must be a number above 0")
        if dt_min > dt_max:
            raise ValueError(f"SS2D dt_min={dt_min} and dt_max={dt_max}: the initial step sizes need "
                             "0 < dt_min <= dt_max")
        dropout = check_rate("SS2D", "dropout", dropout)
        recompute = check_flag("SS2D", "recompute", recompute)
        from vmunet_monai.ops.dispatch import check_backend_name

        check_backend_name(scan_backend)
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self.recompute = recompute
        di, n, r = self.d_inner, d_state, self.dt_rank

        # the official code registers these raw parameters first; kept in that order
        self.x_proj_weight = nn.Parameter(torch.empty(K_DIRECTIONS, r + 2 * n, di))
        self.dt_projs_weight = nn.Parameter(torch.empty(K_DIRECTIONS, di, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(K_DIRECTIONS, di))
        self.A_logs = nn.Parameter(torch.empty(K_DIRECTIONS * di, n))
        self.Ds = nn.Parameter(torch.empty(K_DIRECTIONS * di))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True

        self.in_proj = nn.Linear(d_model, 2 * di, bias=bias)
        self.conv2d = nn.Conv2d(di, di, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=di, bias=conv_bias)
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._init_ssm(dt_min, dt_max, dt_init, dt_scale, dt_init_floor)

    @torch.no_grad()
    def _init_ssm(self, dt_min, dt_max, dt_init, dt_scale, dt_init_floor) -> None:
        di, n, r = self.d_inner, self.d_state, self.dt_rank
        # x_proj: nn.Linear's default init (kaiming-uniform, a=sqrt(5)) = U(+-1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(di)
        self.x_proj_weight.uniform_(-bound, bound)
        std = r**-0.5 * dt_scale
        if dt_init == "constant":
            self.dt_projs_weight.fill_(std)
        elif dt_init == "random":
            self.dt_projs_weight.uniform_(-std, std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], floored
        dt = torch.exp(torch.rand(K_DIRECTIONS, di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A = -(1..N) for every channel and direction
        self.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(K_DIRECTIONS * di, 1))
        self.Ds.fill_(1.0)

    def _project(self, x: torch.Tensor, pixel_major: bool):
        """x_proj of the (B, Di, H, W) map -> the step-size factors (B, 4, R, H, W), B and C (B, 4, N, H, W).

        All three are views of one product. ``pixel_major`` (for the triton kernels): each pixel's rows
        per direction are ordered B, C, factors and padded to a multiple of 16 values, so a step's B and
        C are 16 contiguous, aligned values each (a few vector loads instead of 2N scalar ones).
        Otherwise the official order (factors, B, C), and for a row-major map (rows, L) products whose
        B and C rows are contiguous along the map, the cheaper source for the other backends' copies."""
        b, di, h, w = x.shape
        n, r, K, L = self.d_state, self.dt_rank, K_DIRECTIONS, h * w
        w_x = self.x_proj_weight.to(x.dtype)
        rows = -(-(r + 2 * n) // 16) * 16 if pixel_major else r + 2 * n
        if pixel_major:
            w_x = torch.cat([w_x[:, r:], w_x[:, :r], w_x.new_zeros(K, rows - r - 2 * n, di)], 1)
        w_x = w_x.reshape(K * rows, di)
        if x.stride(1) == 1 and not x.is_contiguous():  # channels-last map: (B, L, Di) rows
            x_dbl = F.linear(x.permute(0, 2, 3, 1).reshape(b, L, di), w_x)
            x_dbl = x_dbl.view(b, L, K, rows).permute(0, 2, 3, 1)  # (b, K, rows, L) view, rows innermost
        elif pixel_major:
            # bmm of the transposed map with the expanded weight keeps x itself for the backward
            # (linear/matmul would save a transposed copy)
            x_dbl = torch.bmm(x.reshape(b, di, L).transpose(1, 2), w_x.t().expand(b, -1, -1))
            x_dbl = x_dbl.view(b, L, K, rows).permute(0, 2, 3, 1)
        else:  # as above: bmm keeps x, not a copy
            x_dbl = torch.bmm(w_x.expand(b, -1, -1), x.reshape(b, di, L)).view(b, K, rows, L)
        # (b, K, rows, H, W) views; reshape with the traced sizes, not unflatten, keeps an exported
        # graph's batch size symbolic
        if pixel_major:
            Bs, Cs, dts, _ = torch.split(x_dbl, [n, n, r, rows - r - 2 * n], dim=2)
        else:
            dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
        return tuple(t.reshape(b, K, t.shape[2], h, w) for t in (dts, Bs, Cs))

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Di, H, W) after the conv -> merged scan output (B, Di, H, W), float32.

        A channels-last ``x`` is projected and scanned in that layout (the result is channels-last
        too); otherwise row-major. The full-rank step sizes are rebuilt in the backward, not kept,
        under recomputation; with ``fused_dt_proj`` the scan gets their rank-R factors and the dt
        projection instead (the triton kernels project as they scan)."""
        backend = self.scan_backend
        if backend not in _COMPOSABLE_BACKENDS and in_functorch_transform():
            backend = "torch"  # the compiled kernels read raw memory: no batched or dual tensors
        dts, Bs, Cs = self._project(x, ops.reads_pixel_major(x.device, backend))
        # the factors and the projection go to the scan (under torch.compile always: the scan operator
        # projects inside, so the full-rank step sizes are not kept for the backward)
        if self.fused_dt_proj or torch.compiler.is_compiling():
            delta, dt_weight = dts, self.dt_projs_weight
        else:
            delta, dt_weight = ops.full_rank_delta(dts, self.dt_projs_weight), None
        return ops.cross_selective_scan(
            x, delta, -torch.exp(self.A_logs.float()), Bs, Cs, self.Ds.float(),
            self.dt_projs_bias.float().reshape(-1), delta_softplus=True, backend=backend,
            dt_weight=dt_weight,
        )

    def _norm_gate_out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y.permute(0, 2, 3, 1)
        # under torch.compile the composition is left to the compiler, which fuses it itself
        if self.fused_norm_gate and not torch.compiler.is_compiling() and fused_available(y) and not exporting():
            norm = self.out_norm
            gated = norm_gate(y, z, norm.weight, norm.bias, norm.eps, fused=True)
        else:  # the modules themselves: static shapes for tracing and export
            weight = self.out_norm.weight
            if weight is not None and y.dtype != weight.dtype and not torch.is_autocast_enabled(y.device.type):
                y = y.to(weight.dtype)  # the float32 scan output into a network cast to bf16/fp16
            gated = self.out_norm(y) * F.silu(z)
        return self.out_proj(gated)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) channels-last -> (B, H, W, C)."""
        if x.dim() != 4 or x.shape[-1] != self.d_model or not x.is_floating_point():
            raise ValueError(f"SS2D(d_model={self.d_model}) takes floating-point (B, H, W, {self.d_model}) "
                             f"channels-last input, got {x.dtype} of shape {tuple(x.shape)}")
        weight = self.in_proj.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"SS2D(d_model={self.d_model}) got {x.dtype} input but its weights are {weight.dtype}: "
                             f"convert the input (x.to({weight.dtype})) or the layer (layer.to({x.dtype})), "
                             "or run it under torch.autocast")
        # in_proj as two products into separate dense tensors: no strided halves of one (B, H, W, 2Di)
        # output to copy later (a channels-last map feeds the convolution as it is, z the gate)
        # torch.split, not two slices: its backward writes the weight's gradient once (each slice's
        # would be scattered into a zeroed full-size copy, and the two copies added)
        di, bias = self.d_inner, self.in_proj.bias
        w_x, w_z = self.in_proj.weight.split(di)
        b_x, b_z = (None, None) if bias is None else bias.split(di)
        z = F.linear(x, w_z, b_z)
        x = F.linear(x, w_x, b_x)
        layout = torch.channels_last if self.channels_last_scan else torch.contiguous_format
        conv = self.conv2d(x.permute(0, 3, 1, 2).contiguous(memory_format=layout))
        lean = recomputing(self.recompute)
        with RecomputeSaved() if lean else contextlib.nullcontext() as rc:
            u = F.silu(conv)
            if rc is not None:
                rc.register(u, lambda: F.silu(conv))  # SiLU's backward keeps `conv` anyway
            y = self.scan(u)
        if lean:
            # keep y and z only; LayerNorm, gate and out_proj's input are rebuilt in the backward
            out = checkpoint(self._norm_gate_out, y, z, use_reentrant=False, preserve_rng_state=False)
        else:
            out = self._norm_gate_out(y, z)
        return self.dropout(out)
