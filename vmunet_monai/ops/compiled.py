"""``torch.compile`` support: the fused four-direction scans as opaque custom operators.

Dynamo cannot look inside a scan kernel (ctypes calls into the ``cpu`` kernel, Triton launches),
and each such call used to split the network into separate graphs (48 for one VM-UNet forward).
While compiling, :func:`vmunet_monai.ops.cross_selective_scan` calls
``torch.ops.vmunet_monai.cross_selective_scan`` instead: one node with a shape-only fake
implementation, so everything around it (norms, gates, projections, layout changes) is compiled and
fused into one graph per network, forward and backward.

For the backward the operator keeps its inputs and, with the triton backend under the default
``KernelConfig(keep_states=True)``, the chunk-boundary states its forward kernel wrote (a second
output of ``vmunet_monai::cross_selective_scan_keep_states``), as eager mode does; otherwise the
backward operator runs the forward kernel once more to rebuild them. The arithmetic is eager mode's. Under compilation SS2D's own recomputation hooks are off:
AOTAutograd's partitioner decides what to keep and what to recompute around the operator.

Backends whose fused scan is one of this package's autograd Functions (``cpu``, ``triton``) go
through the operator; the pure-PyTorch ones (``torch``, ``reference``) are traced like any other
code, and ``mamba_ssm`` runs eagerly between graphs. ``torch.export`` records the operator with the
backend asked for, or ``"auto"``, which a saved program resolves on the machine that runs it.
"""

import hashlib
import importlib
from pathlib import Path
from typing import Optional  # no postponed annotations: custom_op reads these at registration

import torch
from torch import Tensor

__all__ = ["OP_BACKENDS", "cross_selective_scan", "takes_factors"]

OP_BACKENDS = ("cpu", "triton")


def _code_hash() -> str:
    """A digest of the code behind the operators. It is an argument of every forward call, so a
    compiled graph differs, and torch's compile caches (keyed on the graph, not on an operator's
    autograd or backward code) miss, whenever this package's scan code changes."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha1()
    for name in ("compiled.py", "triton_scan.py", "cpu_kernel.py", "triton_kernels/scan.py", "csrc"):
        path = here / name
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


CODE = _code_hash()


def _backend_module(name: str):
    if name not in OP_BACKENDS:
        raise ValueError(f"the scan operator runs the kernels of the backends {OP_BACKENDS}, not {name!r}")
    return importlib.import_module({"cpu": "vmunet_monai.ops.cpu_kernel", "triton": "vmunet_monai.ops.triton_scan"}[name])


def takes_factors(name: str) -> bool:
    """Whether backend ``name`` takes rank-R step-size factors with ``dt_weight`` (else the operator
    projects them to full rank inside, where nothing of the projection is kept)."""
    return name == "triton" and _backend_module(name).takes_factors()


def _resolve(backend: str, u: Tensor) -> str:
    """The backend that runs now: ``backend``, or for ``"auto"`` (saved programs) the automatic choice
    for u's device."""
    from vmunet_monai.ops.dispatch import resolve_backend

    return resolve_backend(u.device, None if backend == "auto" else backend)


def _function(backend, u, delta, A, B, C, D, delta_bias, delta_softplus, dt_weight):
    """The backend's Function and arguments; factors are projected here for backends that take full rank."""
    if dt_weight is not None and not takes_factors(backend):
        from vmunet_monai.ops.dispatch import full_rank_delta

        delta, dt_weight = full_rank_delta(delta, dt_weight), None
    return _backend_module(backend).cross_scan_function(u, delta, A, B, C, D, delta_bias, delta_softplus, dt_weight)


class _Ctx:
    """Stands in for autograd's context when a Function's forward and backward are called directly."""

    def __init__(self, n_inputs: int, grad: bool):
        self.needs_input_grad = (grad,) * n_inputs
        self.saved_tensors = ()

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def mark_non_differentiable(self, *tensors):
        pass


def _out_dtype(u: Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _settle(t: Tensor, like: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` with ``like``'s shape, ``dtype`` and the strides ``empty_like(like)`` gives, which is what the
    fake implementations promise the compiler."""
    t = t.reshape(like.shape).to(dtype)
    out = torch.empty_like(like, dtype=dtype)
    return t if t.stride() == out.stride() else out.copy_(t)


@torch.library.custom_op("vmunet_monai::cross_selective_scan", mutates_args=())
def _scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
          delta_bias: Optional[Tensor], dt_weight: Optional[Tensor], delta_softplus: bool, backend: str,
          code: str) -> Tensor:
    name = _resolve(backend, u)
    with torch.no_grad():
        if name in OP_BACKENDS:
            fn, args = _function(name, u, delta, A, B, C, D, delta_bias, delta_softplus, dt_weight)
            y = fn.forward(_Ctx(len(args), grad=False), *args)
        else:  # a saved program on a machine whose automatic choice is another backend: inference only
            from vmunet_monai.ops.dispatch import cross_selective_scan as eager

            y = eager(u, delta, A, B, C, D, delta_bias, delta_softplus, backend=name, dt_weight=dt_weight)
    return _settle(y, u, _out_dtype(u))


@_scan.register_fake
def _scan_fake(u, delta, A, B, C, D, delta_bias, dt_weight, delta_softplus, backend, code):
    return torch.empty_like(u, dtype=_out_dtype(u))


@torch.library.custom_op("vmunet_monai::cross_selective_scan_keep_states", mutates_args=())
def _scan_keep(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
               delta_bias: Optional[Tensor], dt_weight: Optional[Tensor], delta_softplus: bool,
               backend: str, code: str) -> tuple[Tensor, Tensor]:
    """The triton scan for training with ``KernelConfig(keep_states=True)``: also returns the chunk
    states its forward kernel wrote, so the backward starts from them instead of a second forward."""
    fn, args = _function(backend, u, delta, A, B, C, D, delta_bias, delta_softplus, dt_weight)
    ctx = _Ctx(len(args), grad=True)
    with torch.no_grad():
        y = fn.forward(ctx, *args)
    return _settle(y, u, _out_dtype(u)), ctx.saved_tensors[-1]


@_scan_keep.register_fake
def _scan_keep_fake(u, delta, A, B, C, D, delta_bias, dt_weight, delta_softplus, backend, code):
    shape = _backend_module(backend).states_shape(u, A.shape[-1])
    return torch.empty_like(u, dtype=_out_dtype(u)), u.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("vmunet_monai::cross_selective_scan_backward", mutates_args=())
def _scan_backward(dy: Tensor, states: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Optional[Tensor], delta_bias: Optional[Tensor], dt_weight: Optional[Tensor],
                   delta_softplus: bool, backend: str) -> list[Tensor]:
    inputs = (u, delta, A, B, C, D, delta_bias, dt_weight)
    name = _resolve(backend, u)
    if name not in OP_BACKENDS:
        raise RuntimeError(f"the scan operator differentiates through the backends {OP_BACKENDS}; here it runs "
                           f"{name!r} (requested: {backend!r}): pass scan_backend='cpu' or 'triton' to train through it")
    fn, args = _function(name, *inputs[:7], delta_softplus, dt_weight)
    ctx = _Ctx(len(args), grad=True)
    module = _backend_module(name)
    with torch.no_grad():
        if hasattr(module, "record_forward"):  # triton: its backward rebuilds states it was not given
            module.record_forward(ctx, args, states)
            y_shape = args[0].shape
        else:  # run the forward kernel again: it rebuilds the chunk states the backward reads
            y_shape = fn.forward(ctx, *args).shape
        grads = list(fn.backward(ctx, dy.reshape(y_shape)))
        if dt_weight is not None and not takes_factors(name):  # back through the projection
            wide = torch.promote_types(delta.dtype, torch.float32)
            g = grads[1].reshape(delta.shape[0], 4, dt_weight.shape[1], -1).to(wide)  # (b, 4, Di, L)
            grads[1] = torch.matmul(dt_weight.to(wide).transpose(1, 2), g)  # d factors, (b, 4, R, L)
            grads[7] = torch.matmul(g, delta.flatten(3).to(wide).transpose(2, 3)).sum(0)  # d dt_weight, (4, Di, R)
    out = []
    for g, t in zip(grads, inputs):
        if t is None:
            out.append(dy.new_empty(0))
        else:
            if g is None:
                raise RuntimeError(f"scan backend {name!r} returned no gradient for an input of shape {tuple(t.shape)}")
            out.append(_settle(g, t, t.dtype))
    return out


@_scan_backward.register_fake
def _scan_backward_fake(dy, states, u, delta, A, B, C, D, delta_bias, dt_weight, delta_softplus, backend):
    return [dy.new_empty(0) if t is None else torch.empty_like(t)
            for t in (u, delta, A, B, C, D, delta_bias, dt_weight)]


def _setup_context(ctx, inputs, output):
    *tensors, softplus, backend, _code = inputs
    states = output[1] if isinstance(output, tuple) else None
    ctx.save_for_backward(states, *tensors)
    ctx.softplus, ctx.backend = softplus, backend


def _backward(ctx, dy, *_states_grad):
    states, *saved = ctx.saved_tensors
    grads = _scan_backward(dy, states, *saved, ctx.softplus, ctx.backend)
    out = [g if (t is not None and need) else None for g, t, need in zip(grads, saved, ctx.needs_input_grad)]
    return (*out, None, None, None)


_scan.register_autograd(_backward, setup_context=_setup_context)
_scan_keep.register_autograd(_backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result
def _keeps_states(backend: str) -> bool:
    """Whether a compiled training step keeps the forward's chunk states (triton with
    ``KernelConfig(keep_states=True)``, the default); a constant of the traced graph."""
    return backend == "triton" and _backend_module(backend).kernel_config().keep_states


def cross_selective_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, backend, dt_weight=None):
    """The operator, for checked inputs of :func:`vmunet_monai.ops.cross_selective_scan`; with
    ``dt_weight``, ``delta`` holds the rank-R factors. ``backend``: ``cpu`` or ``triton``, or
    ``"auto"`` (what ``torch.export`` records, so a saved program picks the backend of the machine
    and device it runs on; forward on any backend, gradients through ``cpu`` and ``triton``)."""
    tensors = (u, delta, A, B, C, D, delta_bias, dt_weight)
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if training and backend != "auto" and _keeps_states(backend):
        return _scan_keep(*tensors, bool(delta_softplus), backend, CODE)[0]
    return _scan(*tensors, bool(delta_softplus), backend, CODE)
