"""The ``triton`` scan backend: fused SS2D cross-scan + selective scan + merge, forward and backward.

:func:`cross_selective_scan` reads the feature map once, walks SS2D's four scan directions by index
arithmetic (no fourfold copy of the input), applies delta_bias, softplus and the D skip inside the
kernel, keeps the state in float32 and adds the four directions into one float32 output. Training
saves only the state at every chunk boundary and recomputes the rest in the backward kernel, so
memory stays proportional to the input. Given ``dt_weight``, the step sizes arrive as their rank-R
factors and are projected inside the kernels. :func:`selective_scan` is mamba-ssm's
``selective_scan_fn`` on the same kernels.

Importing this module never raises: Triton is imported when a kernel is first needed, and
:func:`status` says why the backend cannot run and what to do about it. Setting
``TRITON_INTERPRET=1`` before the first use runs the kernels on CPU tensors through Triton's
interpreter (slow; for tests).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import itertools
import math
import os

import torch
import torch.nn.functional as F

from vmunet_monai.ops.first_order import first_order_only

__all__ = ["status", "selective_scan", "cross_selective_scan", "KernelConfig", "kernel_config"]

# the last state comes back detached from the graph, as in mamba-ssm (dispatch guards it)
LAST_STATE_HAS_GRAD = False

INSTALL_HINT = "pip install triton (it comes with CUDA builds of torch on Linux)"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Set by ``vmunet_monai.ops.triton_aot.target_only``: every launch is handed to it (to be compiled for
# a GPU architecture, not run), and CPU tensors are accepted as stand-ins for the CUDA ones.
_LAUNCH_HOOK = None


def compiling_only() -> bool:
    """True while launches are compiled for a GPU instead of run (CPU tensors then stand in)."""
    return _LAUNCH_HOOK is not None


def launch(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, or the compile-only hook's handling of it."""
    if _LAUNCH_HOOK is not None:
        return _LAUNCH_HOOK(kernel, grid, args, kwargs)
    return kernel[grid](*args, **kwargs)


def status():
    """(available, detail, fix): Triton imports and a CUDA device is present (or the interpreter is on)."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed", INSTALL_HINT
    try:
        import triton
    except Exception as exc:  # a broken install is reported, not raised
        return False, f"import triton failed: {type(exc).__name__}: {exc}", INSTALL_HINT
    if _interpreting():
        return True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1: CPU tensors, slow)", ""
    if not torch.cuda.is_available():
        return False, (
            f"triton {triton.__version__} is installed but no CUDA device is visible "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
        ), "run on a machine with an NVIDIA GPU and a CUDA build of torch"
    name = torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    if major < 7:
        return False, f"{name} (sm_{major}{minor}) is older than Triton supports", "use a GPU of compute capability 7.0+"
    return True, f"triton {triton.__version__} on {name} (sm_{major}{minor})", ""


@functools.lru_cache(maxsize=1)
def _kernels():
    return importlib.import_module("vmunet_monai.ops.triton_kernels.scan")


class KernelConfig:
    """Tile sizes of the scan kernels.

    Args:
        block_d: channels per program of the forward kernel.
        chunk: steps per chunk (the backward's tile length and the spacing of the state checkpoints).
        num_warps: warps per forward program.
        bwd_block_d, bwd_num_warps: the same for the backward kernel.
        stepwise: forward as a loop of single steps (True) or as associative scans over chunks.
        keep_states: keep the chunk-boundary states from the forward for the backward (True), or
            keep nothing beyond the inputs and rebuild them in the backward by running the forward
            kernel once more (False): at VM-UNet's shapes the states are as large as delta
            (4 * Di * N / chunk values per pixel), so False saves that memory for one extra
            forward pass in each backward.
        segments: split each sequence into this many segments scanned by separate programs (a
            two-pass scan: segment end states first, then every segment from its true entering
            state), so that small batches still fill the GPU; 1 walks each sequence in one program;
            0 chooses per call (:func:`auto_segments`: 1 while a launch has at least half the
            programs the GPU holds at once, else enough segments to fill it). The step-loop forward
            (``stepwise``), and with ``bwd_stepwise`` the backward too (its phase 1 runs each
            segment's adjoint alone, phase 2 each segment's backward from its true entering adjoint).
        one_launch: the step-loop forward scans SS2D's four directions in one launch, each program
            taking its direction's walk order as a value (True), or launches once per direction with
            the order compiled in (False). At VM-UNet's stage 1 and batch 32 one launch has 384
            programs of 64 channels; one per direction has 96, fewer than an H100's 132 SMs, and the
            four run one after another.
        deterministic: add nothing atomically, so that results do not depend on the order the GPU
            runs programs in: the forward writes each direction's output and the backward each
            channel block's and batch's partial gradients to buffers of their own, summed in a fixed
            order afterwards (more memory: up to ``DET_PARTIAL_BYTES`` for the backward's partials
            besides four outputs' worth). Also on whenever ``torch.use_deterministic_algorithms(True)`` is.
        unroll: steps per iteration of the step loop (1: not unrolled). Unrolled twice, the next step's
            inputs, loaded while a step computes, land in registers of their own instead of being
            copied into the current step's every step: 304 -> 238 machine instructions per step for
            the default float32 forward on sm_90 (``python -m vmunet_monai kernels``).
        bwd_stepwise: backward as a loop of single steps (True), like the step-loop forward: per chunk
            the states are recomputed forwards from their checkpoint into a scratch buffer, then the
            adjoint runs back one step at a time with a thread per channel, so that only dB and dC sum
            over channels; or as associative scans over (channels, N, chunk) tiles (False). All four
            directions of SS2D's scan run in one launch. It compiles to about a third of the machine
            instructions per (channel, state, step) of the associative scans
            (``python -m vmunet_monai kernels --config bwd_stepwise=true``); off until timed on a GPU.
        bwd_step_block_d, bwd_step_num_warps: channels and warps per program of that backward (one warp:
            the sums over channels stay inside it, without shared memory or barriers).
        max_registers, bwd_max_registers: a cap on the registers per thread of the forward and
            backward kernels (ptx ``.maxnreg``, 24 to 255; None: the compiler's choice, up to 255).
            The backward takes all 255 and so runs 4 programs (8 warps) per SM; a lower cap lets
            more programs share an SM at the price of spills (``python -m vmunet_monai kernels
            --config bwd_max_registers=128`` shows them) and is for timing on a GPU.
    """

    def __init__(self, block_d: int = 64, chunk: int = 16, num_warps: int = 2, bwd_block_d: int = 4,
                 bwd_num_warps: int = 2, stepwise: bool = True, keep_states: bool = True, segments: int = 1,
                 one_launch: bool = True, deterministic: bool = False, max_registers: int | None = None,
                 bwd_max_registers: int | None = None, unroll: int = 2, bwd_stepwise: bool = False,
                 bwd_step_block_d: int = 32, bwd_step_num_warps: int = 1):
        for label, v in (("block_d", block_d), ("chunk", chunk), ("bwd_block_d", bwd_block_d),
                         ("bwd_step_block_d", bwd_step_block_d)):
            if v < 1 or v & (v - 1):
                raise ValueError(f"KernelConfig.{label}={v} must be a power of two")
        if int(segments) < 0:
            raise ValueError(f"KernelConfig.segments={segments} must be at least 1, or 0 to choose per call")
        self.block_d, self.chunk, self.num_warps = block_d, chunk, num_warps
        self.bwd_block_d, self.bwd_num_warps, self.stepwise = bwd_block_d, bwd_num_warps, stepwise
        self.keep_states = bool(keep_states)
        self.segments = int(segments)
        self.one_launch = bool(one_launch)
        self.deterministic = bool(deterministic)
        for label, v in (("max_registers", max_registers), ("bwd_max_registers", bwd_max_registers)):
            if v is not None and not 24 <= int(v) <= 255:
                raise ValueError(f"KernelConfig.{label}={v} must be between 24 and 255 registers, or None")
        self.max_registers = None if max_registers is None else int(max_registers)
        self.bwd_max_registers = None if bwd_max_registers is None else int(bwd_max_registers)
        if int(unroll) not in (1, 2, 4):
            raise ValueError(f"KernelConfig.unroll={unroll} must be 1, 2 or 4 steps per iteration")
        self.unroll = int(unroll)
        self.bwd_stepwise = bool(bwd_stepwise)
        self.bwd_step_block_d, self.bwd_step_num_warps = bwd_step_block_d, bwd_step_num_warps

    def bwd_tile(self) -> tuple[int, int]:
        """(channels, warps) per program of the backward in use (stepwise or chunked)."""
        if self.bwd_stepwise:
            return self.bwd_step_block_d, self.bwd_step_num_warps
        return self.bwd_block_d, self.bwd_num_warps

    def replace(self, **changes) -> "KernelConfig":
        """A copy with some fields changed, e.g. ``kernel_config().replace(keep_states=False)``."""
        fields = dict(block_d=self.block_d, chunk=self.chunk, num_warps=self.num_warps, bwd_block_d=self.bwd_block_d,
                      bwd_num_warps=self.bwd_num_warps, stepwise=self.stepwise, keep_states=self.keep_states,
                      segments=self.segments, one_launch=self.one_launch, deterministic=self.deterministic,
                      max_registers=self.max_registers, bwd_max_registers=self.bwd_max_registers,
                      unroll=self.unroll, bwd_stepwise=self.bwd_stepwise, bwd_step_block_d=self.bwd_step_block_d,
                      bwd_step_num_warps=self.bwd_step_num_warps)
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"KernelConfig has no field(s) {sorted(unknown)}; fields: {sorted(fields)}")
        return KernelConfig(**{**fields, **changes})

    def __repr__(self):
        return (f"KernelConfig(block_d={self.block_d}, chunk={self.chunk}, num_warps={self.num_warps}, "
                f"bwd_block_d={self.bwd_block_d}, bwd_num_warps={self.bwd_num_warps}, stepwise={self.stepwise}, "
                f"keep_states={self.keep_states}, segments={self.segments}, one_launch={self.one_launch}, "
                f"deterministic={self.deterministic}, max_registers={self.max_registers}, "
                f"bwd_max_registers={self.bwd_max_registers}, unroll={self.unroll}, "
                f"bwd_stepwise={self.bwd_stepwise}, bwd_step_block_d={self.bwd_step_block_d}, "
                f"bwd_step_num_warps={self.bwd_step_num_warps})")


_CONFIG = KernelConfig()


def kernel_config(config: KernelConfig | None = None) -> KernelConfig:
    """Return the tile configuration in use; with an argument, replace it first (benchmarks tune it)."""
    global _CONFIG
    if config is not None:
        _CONFIG = config
    return _CONFIG


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


class _Geometry:
    """How the kernels see one call: K groups of Dk channels, sequence length L on an (H, W) map."""

    def __init__(self, cross: bool, batch: int, K: int, Dk: int, N: int, H: int, W: int):
        self.cross, self.batch, self.K, self.Dk, self.N, self.H, self.W = cross, batch, K, Dk, N, H, W
        self.L = H * W


def _strides_bkn_t(t: torch.Tensor):
    """Strides (batch, group, state, step) of a (batch, K, N, L) view."""
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _strides4(geo, t, shared):
    """(batch, group, channel, step) strides of a kernel operand.

    Cross geometry: u, y and their gradients are (batch, Di, L) maps shared by the four directions
    (group stride 0); delta is (batch, 4, Di, L). Generic: every operand is (batch, K * Dk, L) and group
    k starts at row k * Dk."""
    if geo.cross:
        if shared:
            return t.stride(0), 0, t.stride(1), t.stride(2)
        return t.stride(0), t.stride(1), t.stride(2), t.stride(3)
    return t.stride(0), t.stride(1) * geo.Dk, t.stride(1), t.stride(2)


def _launches(geo, all4=False):
    """(first group, groups, reversed, column-major, all four) per launch. SS2D's four directions (0 rows,
    1 columns, 2 rows reversed, 3 columns reversed) get one launch each, with the walk order a
    compile-time constant, or with ``all4`` (step-loop forward kernels) one launch in which each
    program takes its direction's order; the generic scan runs every group forwards in one launch."""
    if geo.cross and all4:
        return [(0, 4, False, False, True)]
    if geo.cross:
        return [(k, 1, k >= 2, k % 2 == 1, False) for k in range(4)]
    return [(0, geo.K, False, False, False)]


# the most memory a deterministic backward gives its partial gradients at once (batches are processed
# in groups below it): its dB and dC are (channel blocks x batch x N x L) float32 partials per launch
# (one direction of SS2D's scan, all groups of the generic one), as the factors' gradient is with R for N
DET_PARTIAL_BYTES = 512 * 2**20


def deterministic(cfg: KernelConfig | None = None) -> bool:
    """Whether the kernels run without atomics: ``cfg.deterministic`` or torch's deterministic mode."""
    return bool((cfg or _CONFIG).deterministic or torch.are_deterministic_algorithms_enabled())


def _per_direction(t: torch.Tensor) -> torch.Tensor:
    """A (4, *t.shape) float32 buffer, one slice per scan direction, each with t's strides when t's
    memory is dense (row-major or channels-last maps), else row-major."""
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    if t.numel() and span == t.numel() and min(t.stride()) > 0:
        return torch.empty_strided((4, *t.shape), (t.numel(), *t.stride()), device=t.device, dtype=torch.float32)
    return torch.empty((4, *t.shape), device=t.device, dtype=torch.float32)


def _direction_strides(buf):
    """(batch, group, channel, step) strides of a :func:`_per_direction` buffer of (batch, Di, L) maps."""
    return buf.stride(1), buf.stride(0), buf.stride(2), buf.stride(3)


# the step-loop forward's programs resident on one SM at its ~250 registers and 2 warps (``kernels``),
# and the SM count assumed where no GPU says its own (compiling without one, the interpreter)
FWD_PROGRAMS_PER_SM = 4
DEFAULT_SMS = 132
# the step-loop backward's (one warp, ~250 registers: ``kernels --cases ss2d_bwd_steps``)
BWD_STEP_PROGRAMS_PER_SM = 8


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_SMS


def auto_segments(programs: int, sms: int, nchunks: int, per_sm: int = FWD_PROGRAMS_PER_SM) -> int:
    """Segments per sequence for ``KernelConfig(segments=0)``, given the programs of one forward
    launch without segments: 1 while they fill at least half of what ``sms`` SMs hold at once (the
    two-pass scan does about 1.6 times the work of one pass), else enough to fill them, at most one
    per chunk."""
    slots = sms * per_sm
    if 2 * programs >= slots:
        return 1
    return max(1, min(nchunks, -(-slots // max(programs, 1))))


def _segmentation(segments: int, programs: int, device, nchunks: int, per_sm: int) -> tuple[int, int]:
    """(chunks per segment, segments) for ``KernelConfig.segments`` over ``nchunks`` chunks; 0 asks
    :func:`auto_segments` for a launch of ``programs`` programs (without segments), ``per_sm`` of
    which an SM holds."""
    if segments == 0:
        segments = auto_segments(programs, _sm_count(device), nchunks, per_sm)
    seg_chunks = triton_cdiv(nchunks, max(1, segments))
    return seg_chunks, triton_cdiv(nchunks, seg_chunks)


def _run_forward(u, delta, A, Bv, Cv, D, bias, w, geo, softplus, cfg, T, nchunks, save_states, return_last,
                 det=False):
    """Launch the forward kernels; returns (y, chunk states or a dummy, last state or a dummy).
    With ``w`` (K * Dk, R), ``delta`` holds the R step-size factors of each group (low rank). With
    ``det`` the four directions of a cross scan write their own outputs, summed afterwards."""
    y4 = _per_direction(u) if geo.cross and det else None
    if geo.cross:  # u's layout; the directions add into it, or are summed into it from y4
        y = (torch.zeros_like if y4 is None else torch.empty_like)(u, dtype=torch.float32)
    else:
        y = torch.empty((geo.batch, geo.K * geo.Dk, geo.L), device=u.device, dtype=torch.float32)
    hs = torch.empty((geo.batch, geo.K, geo.Dk, nchunks, geo.N) if save_states else (1,), device=u.device,
                     dtype=torch.float32)
    last = torch.empty((geo.batch, geo.K * geo.Dk, geo.N) if return_last else (1,), device=u.device,
                       dtype=torch.float32)
    args = (u, delta, A, Bv, Cv, D if D is not None else A, bias if bias is not None else A,
            y if y4 is None else y4, hs, last, w if w is not None else A)
    strides = (*_strides4(geo, u, True), *_strides4(geo, delta, False), *_strides_bkn_t(Bv), *_strides_bkn_t(Cv),
               *(_strides4(geo, y, True) if y4 is None else _direction_strides(y4)))
    rank = w.shape[1] if w is not None else 1
    flags = dict(N=geo.N, NP=_next_pow2(geo.N), BD=cfg.block_d, T=T, HAS_D=D is not None, HAS_BIAS=bias is not None,
                 SOFTPLUS=bool(softplus), ATOMIC=geo.cross and y4 is None, SAVE_STATES=save_states,
                 SAVE_LAST=bool(return_last), RP=_next_pow2(rank), LOWRANK=w is not None, UNROLL=cfg.unroll,
                 num_warps=cfg.num_warps, maxnreg=cfg.max_registers)
    programs = triton_cdiv(geo.Dk, cfg.block_d) * ((4 if cfg.one_launch else 1) if geo.cross else geo.K) * geo.batch
    seg_chunks, nseg = _segmentation(cfg.segments, programs, u.device, nchunks, FWD_PROGRAMS_PER_SM)
    seg_len = seg_chunks * T
    if nseg > 1 and cfg.stepwise:
        _run_forward_split(args, strides, flags, geo, nchunks, nseg, seg_len, rank, cfg.one_launch)
    else:
        for k_base, groups, rev, col, all4 in _launches(geo, cfg.stepwise and cfg.one_launch):
            grid = (triton_cdiv(geo.Dk, cfg.block_d), groups, geo.batch)
            launch(_kernels().scan_fwd_kernel, grid, *args, geo.L, geo.H, geo.W, geo.Dk, nchunks, geo.K, k_base,
                   rank, 1, *strides, REV=rev, COL=col, STEPWISE=cfg.stepwise, ALL4=all4, **flags)  # 1: `one`
    if y4 is not None:
        torch.sum(y4, 0, out=y)  # the directions in a fixed order
    return y, hs, last


def _run_forward_split(args, strides, flags, geo, nchunks, nseg, seg_len, rank, one_launch):
    """The two-pass segmented forward (see ``scan_fwd_split_kernel``)."""
    u = args[0]
    agg_h = torch.empty((geo.batch, geo.K, nseg, geo.Dk, geo.N), device=u.device, dtype=torch.float32)
    agg_dt = torch.empty((geo.batch, geo.K, nseg, geo.Dk), device=u.device, dtype=torch.float32)
    kern = _kernels().scan_fwd_split_kernel
    for phase in (1, 2):
        for k_base, groups, rev, col, all4 in _launches(geo, one_launch):
            grid = (triton_cdiv(geo.Dk, flags["BD"]), groups * nseg, geo.batch)
            launch(kern, grid, *args, agg_h, agg_dt, geo.L, geo.H, geo.W, geo.Dk, nchunks, geo.K, k_base, rank,
                   1, nseg, seg_len, *strides, PHASE=phase, REV=rev, COL=col, ALL4=all4, **flags)


def _tiling(length, cfg):
    """(steps per chunk, chunks): the spacing and number of the chunk-boundary states of a scan of
    ``length`` steps. ``length`` may be symbolic (a traced graph's), as long as chunk <= 16."""
    T = cfg.chunk if cfg.chunk <= 16 else min(cfg.chunk, max(16, _next_pow2(int(length))))
    return T, (length + T - 1) // T


def _record(ctx, geo, softplus, cfg, D, bias):
    """What the forward tells the backward besides the saved tensors."""
    ctx.geo, ctx.softplus, ctx.cfg = geo, softplus, cfg
    ctx.det = deterministic(cfg)
    ctx.T, ctx.nchunks = _tiling(geo.L, cfg)
    ctx.has_D, ctx.has_bias = D is not None, bias is not None


def states_shape(u: torch.Tensor, n_state: int) -> tuple:
    """Shape of the chunk-boundary states a four-direction scan of the (batch, Di, H, W) map ``u``
    keeps for its backward (float32)."""
    b, di, h, w = u.shape
    return (b, 4, di, _tiling(h * w, _CONFIG)[1], n_state)


def record_forward(ctx, args, states):
    """Set up ``ctx`` for ``_ScanFunction.backward`` as its forward would have, from the Function's
    arguments and the chunk-boundary states a forward kept (no kernel runs)."""
    u, delta, A, Bv, Cv, D, bias, w, geo, softplus, _ = args
    _record(ctx, geo, softplus, _CONFIG, D, bias)
    ctx.save_for_backward(u, delta, A, Bv, Cv, D, bias, w, states)


class _ScanFunction(torch.autograd.Function):
    """Both geometries; every operand may have any strides (for example channels-last maps, whose
    step stride is the channel count and whose channel loads are then contiguous); Bv, Cv are
    (batch, K, N, L) views."""

    @staticmethod
    def forward(ctx, u, delta, A, Bv, Cv, D, bias, w, geo, softplus, return_last):
        needs_grad = any(ctx.needs_input_grad[:8])
        cfg = _CONFIG
        T, nchunks = _tiling(geo.L, cfg)
        keep = needs_grad and cfg.keep_states
        y, hs, last = _run_forward(u, delta, A, Bv, Cv, D, bias, w, geo, softplus, cfg, T, nchunks, keep,
                                   return_last, deterministic(cfg))
        _record(ctx, geo, softplus, cfg, D, bias)
        if needs_grad:
            ctx.save_for_backward(u, delta, A, Bv, Cv, D, bias, w, hs if keep else None)
        if return_last:
            ctx.mark_non_differentiable(last)
            return y, last
        return y

    @staticmethod
    @first_order_only("scan backend 'triton'")
    def backward(ctx, dy, *_unused_last):
        u, delta, A, Bv, Cv, D, bias, w, hs = ctx.saved_tensors
        geo, cfg, det = ctx.geo, ctx.cfg, ctx.det
        if hs is None:  # keep_states=False: rebuild the chunk-boundary states with the forward kernel
            _, hs, _ = _run_forward(u, delta, A, Bv, Cv, D, bias, w, geo, ctx.softplus, cfg, ctx.T, ctx.nchunks,
                                    True, False, det)
        dy = dy.float()
        dev = u.device
        f32 = torch.float32
        rank = w.shape[1] if w is not None else 1
        rows = geo.K * geo.Dk
        if det and w is not None:  # a compact layout for the partial gradients of the factors
            delta = delta.contiguous()
        # gradients in their inputs' memory layouts (the kernels take every operand's strides)
        du = (torch.zeros_like if geo.cross and not det else torch.empty_like)(u, dtype=f32)
        ddelta = torch.empty_like(delta, dtype=f32)
        if ddelta.stride() != delta.stride():  # the kernel writes ddelta with delta's strides
            ddelta = torch.empty_strided(delta.shape, delta.stride(), device=dev, dtype=f32)
        if w is not None and not det:  # low rank: gradients of the factors are accumulated, and of the projection
            ddelta.zero_()
        step = cfg.bwd_stepwise
        bd, warps = cfg.bwd_tile()
        npad = _next_pow2(geo.N)
        nblk = triton_cdiv(geo.Dk, bd)
        # the step-loop backward split into segments of whole chunks (KernelConfig.segments)
        seg_chunks, nseg = _segmentation(cfg.segments if step else 1, nblk * (4 if geo.cross else geo.K) * geo.batch,
                                         dev, ctx.nchunks, BWD_STEP_PROGRAMS_PER_SM)
        agg_g = torch.empty((geo.batch, geo.K, nseg, geo.Dk, geo.N) if nseg > 1 else (1,), device=dev, dtype=f32)
        agg_dt = torch.empty((geo.batch, geo.K, nseg, geo.Dk) if nseg > 1 else (1,), device=dev, dtype=f32)

        new = torch.empty if det else torch.zeros  # deterministic: partials, every element written once
        per = (geo.batch, nseg) if det else ()  # deterministic: a row of partials per batch and segment
        dA = new((*per, *A.shape), device=dev, dtype=f32)
        dD = new((*per, rows), device=dev, dtype=f32)
        dbias = new((*per, rows), device=dev, dtype=f32)
        dw = new((*per, *w.shape) if w is not None else (1,), device=dev, dtype=f32)
        dB = new((geo.batch, geo.K, geo.N, geo.L), device=dev, dtype=f32)  # deterministic: the partials' sums
        dC = new((geo.batch, geo.K, geo.N, geo.L), device=dev, dtype=f32)

        def run(launches, b, du_t, du_strides, ddl_t, dB_t, dC_t, part_strides, slot=False):
            # the batches b (a slice) of the launches' directions or groups; part_strides: between channel
            # blocks' partial dB, dC and factor gradients (zeros: one buffer, added into atomically);
            # slot: the launch's one group writes dB, dC and ddl at group index 0 (a stride of 0)
            for (k_base, groups, rev, col, all4), phase in itertools.product(
                    launches, (1, 2) if nseg > 1 else (0,)):
                grid = (nblk, groups * nseg, b.stop - b.start)
                # the step loop's scratch: (T, 2 N + 2, channels) per program, the kernels' _scratch_block (a
                # dummy for the chunked kernel)
                scratch = torch.empty((math.prod(grid) * ctx.T * (2 * npad + 2) * bd) if step and phase != 1 else 1,
                                      device=dev, dtype=f32)
                if det and w is not None:  # the factor gradients' partials, (blocks, batches, slots, R, L)
                    ddl_bk = (ddl_t.stride(1), 0 if slot else ddl_t.stride(2))
                else:  # d delta (or the factors' gradient) itself, with delta's strides
                    ddl_bk = _strides4(geo, delta, False)[:2]
                launch(
                    _kernels().scan_bwd_kernel, grid, u[b], delta[b], A, Bv[b], Cv[b],
                    D if D is not None else A, bias if bias is not None else A, dy[b], hs[b],
                    w if w is not None else A, du_t, ddl_t, dA[b] if det else dA, dB_t, dC_t,
                    dD[b] if det else dD, dbias[b] if det else dbias, dw[b] if det and w is not None else dw,
                    scratch, agg_g[b] if nseg > 1 else agg_g, agg_dt[b] if nseg > 1 else agg_dt,
                    geo.L, geo.H, geo.W, geo.Dk, ctx.nchunks, geo.K, k_base, rank, 1, nseg, seg_chunks,  # 1: `one`
                    *_strides4(geo, u, True), *_strides4(geo, delta, False),
                    *_strides_bkn_t(Bv), *_strides_bkn_t(Cv), *_strides4(geo, dy, True), *du_strides,
                    dB_t.stride(-4), 0 if slot else dB_t.stride(-3), dB_t.stride(-2), dC_t.stride(-4),
                    0 if slot else dC_t.stride(-3), dC_t.stride(-2), *part_strides[:2], *ddl_bk, part_strides[2],
                    N=geo.N, NP=npad, BD=bd, T=ctx.T, REV=rev, COL=col, HAS_D=ctx.has_D,
                    HAS_BIAS=ctx.has_bias, SOFTPLUS=bool(ctx.softplus), ATOMIC=geo.cross and not det,
                    RP=_next_pow2(rank), LOWRANK=w is not None, DET=det, STEPWISE=step, ALL4=all4,
                    UNROLL=cfg.unroll, PHASE=phase, num_warps=warps, maxnreg=cfg.bwd_max_registers,
                )

        everything = slice(0, geo.batch)
        if not det:
            run(_launches(geo, step), everything, du, _strides4(geo, du, True), ddelta, dB, dC, (0, 0, 0))
        else:
            # each channel block writes its own dB, dC (and factor gradients): partials for one launch's
            # directions (SS2D: one) at a time, batches in groups so that they stay under DET_PARTIAL_BYTES
            launches = _launches(geo, step)
            slots = max(groups for _, groups, *_ in launches)
            per_batch = 4 * nblk * slots * (2 * geo.N * geo.L + (rank * geo.L if w is not None else 0))
            group = max(1, min(geo.batch, DET_PARTIAL_BYTES // per_batch))
            if nblk * group * slots * geo.N * geo.L >= 2**31:  # the kernels index the partials with 32 bits
                raise RuntimeError(f"a deterministic triton backward of {geo.L} steps x {geo.Dk} channels per "
                                   f"direction needs partial gradients of over 2**31 elements even one batch at a "
                                   f"time ({nblk} channel blocks of {bd}); raise "
                                   f"KernelConfig.{'bwd_step_block_d' if step else 'bwd_block_d'} or turn "
                                   f"deterministic mode off")
            dB_p = torch.empty((nblk, group, slots, geo.N, geo.L), device=dev, dtype=f32)
            dC_p = torch.empty_like(dB_p)
            ddl_p = torch.empty((nblk, group, slots, rank, geo.L), device=dev, dtype=f32) if w is not None else None
            du4 = _per_direction(u) if geo.cross else None
            for one in launches:
                ks = slice(one[0], one[0] + one[1])
                for b0 in range(0, geo.batch, group):
                    b = slice(b0, min(geo.batch, b0 + group))
                    n = b.stop - b.start
                    du_t, du_strides = (du4[:, b], _direction_strides(du4)) if geo.cross else \
                        (du[b], _strides4(geo, du, True))
                    ddl_t = ddl_p[:, :n] if w is not None else ddelta[b]
                    run([one], b, du_t, du_strides, ddl_t, dB_p[:, :n], dC_p[:, :n],
                        (dB_p.stride(0), dC_p.stride(0), ddl_p.stride(0) if w is not None else 0),
                        slot=slots == 1)
                    groups = one[1]
                    torch.sum(dB_p[:, :n, :groups], 0, out=dB[b, ks])  # the partials in a fixed order
                    torch.sum(dC_p[:, :n, :groups], 0, out=dC[b, ks])
                    if w is not None:
                        torch.sum(ddl_p[:, :n, :groups], 0, out=ddelta[b, ks])
            if geo.cross:
                torch.sum(du4, 0, out=du)
            dA, dD, dbias = dA.sum((0, 1)), dD.sum((0, 1)), dbias.sum((0, 1))
            dw = dw.sum((0, 1)) if w is not None else dw
        return (du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB, dC,
                dD.to(D.dtype) if ctx.has_D else None, dbias.to(bias.dtype) if ctx.has_bias else None,
                dw if w is not None else None, None, None, None)


def _check_device(*tensors):
    for t in tensors:
        if t is not None and t.device.type != "cuda" and not _interpreting() and not compiling_only():
            raise RuntimeError(
                f"the triton scan backend runs on CUDA tensors, got a {t.device.type} tensor; "
                "use backend='torch' or 'cpu' for CPU tensors"
            )


def _param(t):
    # A, D and delta_bias enter the kernels in float32 (as in the official scan); autograd casts back
    return None if t is None else t.float().contiguous()


# cross_selective_scan takes delta as its rank-R factors with ``dt_weight`` (see dispatch)
LOWRANK_DELTA = True
# B and C are read fastest as (batch, K, N, L) views whose N values per pixel are contiguous and
# 16-value aligned (see dispatch.reads_pixel_major): vector loads in the step loop
PIXEL_MAJOR_BC = True


def cross_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, dt_weight=None):
    """SS2D's fused four-direction selective scan (semantics of ``dispatch.cross_selective_scan_composed``).

    Args:
        u: (batch, Di, H, W) feature map; float32, float16 or bfloat16.
        delta: (batch, 4, Di, H, W) step sizes of each direction, laid out on the map; with
            ``dt_weight``, their (batch, 4, R, H, W) factors instead.
        A: (4*Di, N); direction k owns rows k*Di .. (k+1)*Di-1.
        B, C: (batch, 4, N, H, W), one per direction, laid out on the map.
        D, delta_bias: optional (4*Di,).
        delta_softplus: apply softplus to ``delta + delta_bias``.
        dt_weight: optional (4, Di, R) projection: the kernels form the step sizes
            ``delta[b, k, :, p] = dt_weight[k] @ factors[b, k, :, p]`` in float32 as they go, so the
            full-rank (batch, 4, Di, H, W) tensor is neither written, read, nor kept for the backward.

    Any memory layout is read in place; the result has u's layout (channels-last in, channels-last out).

    Returns:
        (batch, Di, H, W) float32: the four directions' outputs summed on the map.

    Raises:
        ValueError: shapes that do not fit together.
        RuntimeError: tensors not on a CUDA device (unless ``TRITON_INTERPRET=1``).
    """
    if u.dim() != 4:
        raise ValueError(f"u must be (batch, Di, H, W), got shape {tuple(u.shape)}")
    b, di, h, w = u.shape
    n_state = A.shape[-1]
    rank = None
    if dt_weight is not None:
        if dt_weight.dim() != 3 or tuple(dt_weight.shape[:2]) != (4, di):
            raise ValueError(f"dt_weight must be (4, {di}, R), got {tuple(dt_weight.shape)}")
        rank = dt_weight.shape[2]
    expect = {"delta": (b, 4, di if rank is None else rank, h, w), "B": (b, 4, n_state, h, w),
              "C": (b, 4, n_state, h, w), "A": (4 * di, n_state)}
    for label, t in (("delta", delta), ("B", B), ("C", C), ("A", A)):
        if tuple(t.shape) != expect[label]:
            raise ValueError(f"{label} must be {expect[label]}, got {tuple(t.shape)}")
    for label, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (4 * di,):
            raise ValueError(f"{label} must be ({4 * di},), got {tuple(t.shape)}")
    _check_device(u, delta, A, B, C, D, delta_bias, dt_weight)
    if dt_weight is not None and not takes_factors():  # the chunked forward reads full-rank step sizes
        delta = torch.matmul(dt_weight.to(delta.dtype), delta.flatten(3)).unflatten(3, (h, w))
        dt_weight = None
    fn, args = cross_scan_function(u, delta, A, B, C, D, delta_bias, delta_softplus, dt_weight)
    y = fn.apply(*args)
    return y.reshape(b, di, h, w)


def takes_factors() -> bool:
    """Whether the kernels of the current configuration form the step sizes from rank-R factors
    (the step loop does; the chunked forward reads full-rank step sizes)."""
    return _CONFIG.stepwise


def cross_scan_function(u, delta, A, B, C, D, delta_bias, delta_softplus, dt_weight=None):
    """The autograd Function of a four-direction scan of checked inputs and its arguments: views of
    the inputs wherever their layout allows (row-major or channels-last maps; the kernels take
    strides), float32 parameters. Each gradient the Function returns reshapes to its input's shape
    (:mod:`vmunet_monai.ops.compiled` calls the Function's forward and backward directly)."""
    b, di, h, w = u.shape
    n_state, length = A.shape[-1], h * w
    if dt_weight is not None and not takes_factors():
        raise RuntimeError("the chunked triton forward (KernelConfig(stepwise=False)) needs full-rank step sizes")
    rank = None if dt_weight is None else dt_weight.shape[2]
    geo = _Geometry(True, b, 4, di, n_state, h, w)
    return _ScanFunction, (u.reshape(b, di, length), delta.reshape(b, 4, rank or di, length), _param(A),
            B.reshape(b, 4, n_state, length), C.reshape(b, 4, n_state, length), _param(D), _param(delta_bias),
            None if dt_weight is None else _param(dt_weight).reshape(4 * di, rank), geo, delta_softplus, False)


def _as_groups(t, batch, dim, length, K):
    """B or C as a (batch, K, N, L) view, and the function that folds its gradient back to t's shape."""
    if t.dim() == 2:  # constant (dim, N): one group per channel, never copied
        n = t.shape[1]
        view = t[None, :, :, None].expand(batch, dim, n, length)
        return view, lambda g: g.sum(dim=(0, 3))
    grouped = t if t.dim() == 4 else t.unsqueeze(1)
    groups, n = grouped.shape[1], grouped.shape[2]
    if groups == K:
        fold = (lambda g: g) if t.dim() == 4 else (lambda g: g[:, 0])
        return grouped, fold
    rep = K // groups
    view = grouped.repeat_interleave(rep, dim=1)

    def fold(g):
        g = g.reshape(batch, groups, rep, n, length).sum(2)
        return g if t.dim() == 4 else g[:, 0]

    return view, fold


class _FoldGrad(torch.autograd.Function):
    """Identity forward; backward folds a (batch, K, N, L) gradient back to the input's layout."""

    @staticmethod
    def forward(ctx, original, view, fold):
        ctx.fold = fold
        return view.detach()

    @staticmethod
    def backward(ctx, grad):
        return ctx.fold(grad).to(grad.dtype), None, None


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """mamba-ssm's ``selective_scan_fn`` on the Triton kernels (see ``dispatch.selective_scan``).

    Returns y (batch, dim, L) in u's dtype, and the last state (batch, dim, N) in float32 if asked for.
    """
    _check_device(u, delta, A, B, C, D, z, delta_bias)
    batch, dim, length = u.shape
    n_state = A.shape[1]

    def n_groups(t):
        return dim if t.dim() == 2 else (t.shape[1] if t.dim() == 4 else 1)

    gb, gc = n_groups(B), n_groups(C)
    K = gb * gc // _gcd(gb, gc)
    if dim % K:
        raise ValueError(f"the channel count {dim} is not a multiple of the {K} groups of B/C")
    Bv, fold_b = _as_groups(B, batch, dim, length, K)
    Cv, fold_c = _as_groups(C, batch, dim, length, K)
    if B.requires_grad:
        Bv = _FoldGrad.apply(B, Bv, fold_b)
    if C.requires_grad:
        Cv = _FoldGrad.apply(C, Cv, fold_c)
    geo = _Geometry(False, batch, K, dim // K, n_state, 1, length)
    out = _ScanFunction.apply(
        u.contiguous(), delta.contiguous(), _param(A), Bv, Cv, _param(D), _param(delta_bias), None, geo,
        delta_softplus, return_last_state,
    )
    y, last = out if return_last_state else (out, None)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(u.dtype)
    return (y, last) if return_last_state else y


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a
