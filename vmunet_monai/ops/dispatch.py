"""Backend registry and selection for the selective scan."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from dataclasses import dataclass

import torch

from vmunet_monai.ops import compiled
from vmunet_monai.ops.cross_scan import cross_merge, cross_scan, to_scan_order
from vmunet_monai.ops.recompute import RecomputeSaved, in_functorch_transform
from vmunet_monai.ops.recompute import exporting as _exporting

__all__ = ["BACKENDS", "BackendStatus", "backend_status", "resolve_backend", "selective_scan", "cross_selective_scan",
           "full_rank_delta", "reads_pixel_major"]

ENV_VAR = "VMUNET_SCAN_BACKEND"

# name -> (module implementing it, devices it runs on)
BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "reference": ("vmunet_monai.ops.reference_backend", ("cpu", "cuda")),
    "torch": ("vmunet_monai.ops.torch_backend", ("cpu", "cuda")),
    "cpu": ("vmunet_monai.ops.cpu_kernel", ("cpu",)),
    "triton": ("vmunet_monai.ops.triton_scan", ("cuda",)),
    "mamba_ssm": ("vmunet_monai.ops.mamba_ssm_backend", ("cuda",)),
}
# measured on an H100 (docs/PERFORMANCE.md): VM-UNet trains 1.2x faster on mamba-ssm's kernel than on ours,
# so an installed mamba-ssm comes first; triton is the CUDA default everywhere else
AUTO_ORDER = {"cuda": ("mamba_ssm", "triton", "torch"), "cpu": ("cpu", "torch")}
# backends whose results do not depend on thread or GPU scheduling: mamba_ssm's CUDA kernels sum
# gradients with float atomics, so under torch.use_deterministic_algorithms(True) the automatic choice
# skips them; the triton kernels then add nothing atomically (KernelConfig.deterministic) and the cpu
# kernel runs on one thread
DETERMINISTIC_BACKENDS = ("reference", "torch", "cpu", "triton")


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here; ``detail`` says why (not), ``fix`` what to do about it."""

    name: str
    available: bool
    detail: str
    fix: str = ""
    devices: tuple[str, ...] = ()


@functools.lru_cache(maxsize=None)
def _load(name: str):
    """Import a backend module; returns (module or None, BackendStatus). Never raises for a broken backend."""
    if name not in BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; choose one of {sorted(BACKENDS)}")
    module_name, devices = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a backend that cannot even be imported is reported, not raised
        return None, BackendStatus(name, False, f"import of {module_name} failed: {exc!r}", "", devices)
    try:
        ok, detail, fix = module.status()
    except Exception as exc:
        ok, detail, fix = False, f"status check failed: {exc!r}", ""
    if ok:
        _LOADED[name] = module
    return (module if ok else None), BackendStatus(name, bool(ok), detail, fix, devices)


_LOADED: dict = {}  # name -> module of the backends that loaded and reported themselves available


def backend_status(name: str | None = None):
    """Status of one backend, or a list of all of them (as ``doctor`` prints them)."""
    if name is not None:
        return _load(name)[1]
    return [_load(n)[1] for n in BACKENDS]


def _compiling_for_gpu() -> bool:
    """True inside :func:`vmunet_monai.ops.triton_aot.target_only`: triton launches are compiled for a
    GPU architecture instead of run, and CPU tensors stand in for CUDA ones."""
    module = sys.modules.get(BACKENDS["triton"][0])
    return module is not None and module.compiling_only()


def check_backend_name(name: str | None, source: str = "scan_backend") -> None:
    """``ValueError`` naming ``source`` unless ``name`` is a scan backend, ``'auto'`` or None."""
    if name is not None and name != "auto" and name not in BACKENDS:
        raise ValueError(f"{source}={name!r} is not a scan backend; choose one of {sorted(BACKENDS)}, 'auto' or None")


def resolve_backend(device: torch.device | str, backend: str | None = None) -> str:
    """The backend that will run for tensors on ``device``: argument > $VMUNET_SCAN_BACKEND > automatic
    (limited to :data:`DETERMINISTIC_BACKENDS` while ``torch.use_deterministic_algorithms(True)`` is on); always
    ``torch`` while torch.jit or ONNX export traces the model, whatever was chosen (a compiled kernel cannot be
    traced, and the reference loop would be unrolled step by step into the graph), and inside a ``torch.func``
    transform unless ``reference`` was chosen."""
    if backend == "triton" and _compiling_for_gpu():
        return backend
    device_type = torch.device(device).type
    requested, source = backend, "backend argument"
    if requested is None and os.environ.get(ENV_VAR):
        requested, source = os.environ[ENV_VAR].strip(), f"${ENV_VAR}"
    check_backend_name(requested, source)
    if _exporting():
        return "torch"
    if requested not in ("torch", "reference") and in_functorch_transform():
        return "torch"  # the compiled kernels read raw memory: no batched (vmap) or dual (jvp) tensors
    if requested is not None and requested != "auto":
        _, st = _load(requested)
        if device_type not in st.devices:
            raise RuntimeError(
                f"{source}={requested!r} runs on {'/'.join(st.devices)} tensors, but the input is on {device_type}; "
                f"use one of {[n for n, (_, d) in BACKENDS.items() if device_type in d]}"
            )
        if not st.available:
            raise RuntimeError(f"scan backend {requested!r} ({source}) is not available: {st.detail}. Fix: {st.fix}")
        return requested
    order = AUTO_ORDER.get(device_type, ("torch",))
    if torch.are_deterministic_algorithms_enabled():
        order = tuple(n for n in order if n in DETERMINISTIC_BACKENDS)
    for name in order:
        if _load(name)[1].available:
            if name == "torch" and order[0] != "torch":
                _say_slow_fallback(device_type, order[0])
            return name
    return "torch"


_FALLBACKS_SAID: set = set()


def _say_slow_fallback(device_type: str, fastest: str) -> None:
    """Warn once per device type that the automatic choice fell back to the pure-PyTorch scan, several times
    slower than the compiled one it would have taken (a CPU without a C compiler, a GPU without Triton): a
    training that took three times as long otherwise said nothing of why."""
    if device_type in _FALLBACKS_SAID:
        return
    _FALLBACKS_SAID.add(device_type)
    import logging

    status = _load(fastest)[1]
    logging.getLogger(__name__).warning(
        "scan backend %r, the fast one for %s tensors, is not available here (%s): the pure-PyTorch 'torch' backend "
        "runs instead, several times slower. Fix: %s (python -m vmunet_monai doctor lists the backends)",
        fastest, device_type, status.detail, status.fix or "see python -m vmunet_monai doctor")


def _is_exporting() -> bool:
    """True while torch.export traces (torch.compiler.is_exporting exists from torch 2.5 on)."""
    probe = getattr(torch.compiler, "is_exporting", None)
    return bool(probe is not None and probe())


@torch.compiler.assume_constant_result
def _backend_while_compiling(device_type: str, backend: str | None) -> str:
    """:func:`resolve_backend`, evaluated once while a graph is traced (its result is a constant of the graph).

    A backend's first status check may run its self-test (the ``cpu`` kernel compiles and checks
    itself); that must see real tensors, not the tracer's fake or proxy ones (the dispatch modes
    are suspended), or the backend would be reported broken for the rest of the process."""
    try:
        from torch.utils._python_dispatch import _disable_current_modes as real_tensors
    except ImportError:  # a torch without dispatch modes has no fake tensors either
        real_tensors = contextlib.nullcontext
    with real_tensors():
        return resolve_backend(device_type, backend)


def _module(name: str):
    loaded = _LOADED.get(name)
    if loaded is not None:  # a plain dict lookup: traceable while compiling
        return loaded
    if name == "triton" and _compiling_for_gpu():
        return sys.modules[BACKENDS[name][0]]
    module, st = _load(name)
    if module is None:
        raise RuntimeError(f"scan backend {name!r} is not available: {st.detail}. Fix: {st.fix}")
    return module


def _check_scan_args(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    if not u.is_floating_point():
        raise ValueError(f"u must be floating-point, got {u.dtype}")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    n_state = A.shape[1]
    for label, t in (("B", B), ("C", C)):
        if t.dim() == 2:
            ok = tuple(t.shape) == (dim, n_state)
        elif t.dim() == 3:
            ok = tuple(t.shape) == (batch, n_state, length)
        elif t.dim() == 4:
            ok = t.shape[0] == batch and t.shape[2:] == (n_state, length) and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"{label} has shape {tuple(t.shape)}; expected ({dim}, {n_state}), ({batch}, {n_state}, {length}) "
                f"or ({batch}, G, {n_state}, {length}) with G dividing {dim}"
            )
    for label, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{label} must be ({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, *, backend=None
):
    """Selective scan with the semantics of mamba-ssm's ``selective_scan_fn``.

    ``h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t`` and ``y_t = <C_t, h_t> + D * u_t`` with
    ``dt = softplus(delta + delta_bias)`` (softplus only if ``delta_softplus``), then ``y * silu(z)``.

    Args:
        u: (batch, dim, L) input.
        delta: (batch, dim, L) step sizes.
        A: (dim, N) state matrix (diagonal, real).
        B: (dim, N) constant, (batch, N, L) variable or (batch, G, N, L) grouped input projection;
            with G groups channel ``d`` uses group ``d // (dim // G)``.
        C: same layouts as ``B``, output projection.
        D: optional (dim,) skip connection.
        z: optional (batch, dim, L) gate.
        delta_bias: optional (dim,) bias added to ``delta``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state, (batch, dim, N). As in mamba-ssm, the
            ``mamba_ssm`` and ``triton`` backends return it without a gradient path: backpropagating
            through it raises (use ``torch``, ``cpu`` or ``reference`` for that).
        backend: ``"reference"``, ``"torch"``, ``"cpu"``, ``"triton"``, ``"mamba_ssm"`` or None (automatic).

    Returns:
        y (batch, dim, L) in u's dtype, and the last state if asked for.

    Raises:
        ValueError: shapes that do not fit together (the message names them).
        RuntimeError: an explicitly requested backend that cannot run here (the message says why and how to fix it).
    """
    _check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(u.device, backend)
    module = _module(name)
    out = module.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if return_last_state and not getattr(module, "LAST_STATE_HAS_GRAD", True) and torch.is_grad_enabled():
        y, last = out
        return y, _NoGradientThrough.apply(last, name, y)  # y ties the state to the graph when y has one
    return out


class _NoGradientThrough(torch.autograd.Function):
    """Identity whose backward refuses: marks a last state that its backend cannot differentiate."""

    @staticmethod
    def forward(ctx, x, backend, anchor):
        ctx.backend = backend
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(
            f"scan backend {ctx.backend!r} returns the last state without a gradient (as mamba-ssm does); "
            "to backpropagate through return_last_state use backend='torch', 'cpu' or 'reference'"
        )


def _reordered(source, reorder, shape):
    return lambda: reorder(source()).reshape(shape)


def cross_selective_scan_composed(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *, scan=None):
    """Cross-scan, selective scan, merge, composed from the generic pieces (the semantics every fused kernel matches)."""
    b, di, h, w = u.shape
    length = h * w
    xs = cross_scan(u).reshape(b, 4 * di, length)
    dts = to_scan_order(delta).reshape(b, 4 * di, length)
    Bs = to_scan_order(B)
    Cs = to_scan_order(C)
    rc = RecomputeSaved.current()
    if rc is not None:  # in training under SS2D's recompute: rebuild the scan-order copies in the backward
        for copy, src, reorder in ((xs, u, cross_scan), (dts, delta, to_scan_order), (Bs, B, to_scan_order),
                                   (Cs, C, to_scan_order)):
            rc.register(copy, _reordered(rc.source(src), reorder, copy.shape))
    ys = scan(xs, dts, A, Bs, Cs, D, None, delta_bias, delta_softplus, False)
    return cross_merge(ys.reshape(b, 4, di, length), h, w).reshape(b, di, h, w)


def reads_pixel_major(device: torch.device | str, backend: str | None = None) -> bool:
    """Whether the backend that :func:`cross_selective_scan` will run for tensors on ``device`` reads B
    and C fastest with each pixel's N values contiguous and 16-value aligned (the triton kernels: a few
    vector loads per step instead of 2N scalar ones). The others copy B and C to their own layout, for
    which (N, L) rows are the cheaper source."""
    device_type = torch.device(device).type
    if torch.compiler.is_compiling():
        name = "torch" if _is_exporting() else _backend_while_compiling(device_type, backend)
    else:
        name = resolve_backend(device_type, backend)
    return bool(getattr(_module(name), "PIXEL_MAJOR_BC", False))


def full_rank_delta(factors, dt_weight):
    """(batch, 4, R, H, W) step-size factors and a (4, Di, R) projection -> (batch, 4, Di, H, W) step sizes.

    Inside a :class:`RecomputeSaved` context the result is registered to be rebuilt, not kept, when
    a backward needs it."""
    def project():
        return torch.matmul(dt_weight.to(factors.dtype), factors.flatten(3))

    full = project()
    rc = RecomputeSaved.current()
    if rc is not None:
        rc.register(full, project)
    b, k, _, h, w = factors.shape
    return full.reshape(b, k, full.shape[2], h, w)


def cross_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *, backend=None,
                         dt_weight=None):
    """SS2D's scan: the four directions of a feature map, scanned and merged back.

    Args:
        u: (batch, Di, H, W) feature map.
        delta: (batch, 4, Di, H, W) step sizes of each direction, laid out on the map (row-major); with
            ``dt_weight``, their (batch, 4, R, H, W) rank-R factors instead.
        A: (4*Di, N); direction k owns rows k*Di .. (k+1)*Di-1.
        B, C: (batch, 4, N, H, W), one per direction, laid out on the map.
        D, delta_bias: optional (4*Di,).
        delta_softplus: apply softplus to ``delta + delta_bias`` (SS2D does).
        backend: as for :func:`selective_scan`.
        dt_weight: optional (4, Di, R) projection of the factors to the step sizes (SS2D's dt_projs):
            the triton kernels apply it as they scan, so the full-rank step sizes never exist; other
            backends get them from :func:`full_rank_delta`.

    Returns:
        (batch, Di, H, W): the sum over the four directions of the scan output put back on the map,
        in float32 for low-precision inputs (the official SS2D computes its scan in float32).
    """
    if u.dim() != 4:
        raise ValueError(f"u must be (batch, Di, H, W), got shape {tuple(u.shape)}")
    b, di, h, w = u.shape
    n_state = A.shape[1]
    if dt_weight is not None and (dt_weight.dim() != 3 or tuple(dt_weight.shape[:2]) != (4, di)):
        raise ValueError(f"dt_weight must be (4, {di}, R), got {tuple(dt_weight.shape)}")
    rows = di if dt_weight is None else dt_weight.shape[2]
    expect = {"delta": (b, 4, rows, h, w), "B": (b, 4, n_state, h, w), "C": (b, 4, n_state, h, w)}
    for label, t in (("delta", delta), ("B", B), ("C", C)):
        if tuple(t.shape) != expect[label]:
            raise ValueError(f"{label} must be {expect[label]}, got {tuple(t.shape)}")
    if tuple(A.shape) != (4 * di, n_state):
        raise ValueError(f"A must be ({4 * di}, N), got {tuple(A.shape)}")
    if not u.is_floating_point():
        raise ValueError(f"u must be floating-point, got {u.dtype}")
    for label, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (4 * di,):
            raise ValueError(f"{label} must be ({4 * di},), got {tuple(t.shape)}")
    if torch.compiler.is_compiling():
        name = _backend_while_compiling(u.device.type, backend)
        if _is_exporting():  # a saved program chooses its backend where it runs
            return compiled.cross_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, backend or "auto",
                                                 dt_weight)
        if name in compiled.OP_BACKENDS:  # one opaque operator in the graph (see ops.compiled)
            return compiled.cross_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, name, dt_weight)
    else:
        name = resolve_backend(u.device, backend)
    module = _module(name)
    fused = getattr(module, "cross_selective_scan", None)
    if dt_weight is not None:
        if fused is not None and getattr(module, "LOWRANK_DELTA", False):
            return fused(u, delta, A, B, C, D, delta_bias, delta_softplus, dt_weight=dt_weight)
        delta = full_rank_delta(delta, dt_weight)
    if fused is not None:
        return fused(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if u.dtype in (torch.float16, torch.bfloat16):
        rc = RecomputeSaved.current()
        wide = []
        for t in (u, delta, B, C):
            f = t.float()
            if rc is not None:
                rc.register(f, _reordered(rc.source(t), torch.Tensor.float, f.shape))
            wide.append(f)
        u, delta, B, C = wide
    return cross_selective_scan_composed(u, delta, A, B, C, D, delta_bias, delta_softplus, scan=module.selective_scan)
