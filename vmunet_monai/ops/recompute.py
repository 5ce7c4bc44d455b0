"""Drop cheap activations from the autograd graph and recompute them when the backward asks for them.

A training step keeps every tensor an op saved for its backward alive until that backward runs.
In SS2D the largest of them are cheap to rebuild: the full-rank step sizes (a rank-R projection of
a tensor that is saved anyway), and the SiLU output that feeds the scan (one elementwise op away
from the convolution output, which SiLU's own backward keeps). :class:`RecomputeSaved` is a
``saved_tensors_hooks`` context: a tensor registered with a recipe is not stored when an op inside
the context saves it (or any view of its storage); the backward gets the recipe's result instead,
computed under the autocast state of the forward.

Recipes must be deterministic functions of tensors that stay alive anyway, and must return a tensor
with the registered tensor's shape, strides and dtype; the registered tensor must not be modified
in place afterwards.
"""

from __future__ import annotations

import threading

import torch

__all__ = ["RecomputeSaved", "exporting", "recomputing"]


def exporting() -> bool:
    """True while torch.jit or ONNX export is tracing or scripting the model."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    onnx = getattr(torch, "onnx", None)
    return bool(onnx is not None and hasattr(onnx, "is_in_onnx_export") and onnx.is_in_onnx_export())


def recomputing(enabled: bool) -> bool:
    """Whether a module with recomputation ``enabled`` should use it now: only while autograd
    records a graph, never while the model is being exported, not under ``torch.compile``
    (whose partitioner chooses what to recompute), and not inside a ``torch.func`` transform (which does not
    support the saved-tensor hooks it works with)."""
    return (bool(enabled) and torch.is_grad_enabled() and not exporting() and not torch.compiler.is_compiling()
            and not in_functorch_transform())


_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)


def in_functorch_transform() -> bool:
    """True inside a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``, ``jvp``...) run eagerly (under
    ``torch.compile`` the compiler handles the transform and this is False). One C call."""
    return _functorch_active is not None and not torch.compiler.is_compiling() and _functorch_active()


class _Lazy:
    """What the graph holds instead of a saved tensor: how to rebuild it."""

    __slots__ = ("recipe", "shape", "stride", "offset")

    def __init__(self, recipe, shape, stride, offset):
        self.recipe, self.shape, self.stride, self.offset = recipe, shape, stride, offset


class _Recipe:
    """A registered tensor's rebuild function with the autocast state it was made under."""

    __slots__ = ("fn", "device_type", "autocast", "dtype", "shape", "stride", "out_dtype")

    def __init__(self, fn, ref: torch.Tensor):
        self.fn = fn
        self.device_type = ref.device.type
        self.autocast = torch.is_autocast_enabled(self.device_type)
        self.dtype = torch.get_autocast_dtype(self.device_type)
        self.shape, self.stride, self.out_dtype = tuple(ref.shape), ref.stride(), ref.dtype

    def __call__(self) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(self.device_type, dtype=self.dtype, enabled=self.autocast):
            out = self.fn()
        if tuple(out.shape) != self.shape or out.dtype != self.out_dtype:
            raise RuntimeError(
                f"recompute recipe returned {tuple(out.shape)} {out.dtype}, expected {self.shape} {self.out_dtype}"
            )
        if out.stride() != self.stride or out.storage_offset() != 0:
            out = torch.empty_strided(self.shape, self.stride, dtype=out.dtype, device=out.device).copy_(out)
        return out


def _owns_storage(t: torch.Tensor) -> bool:
    """True if ``t`` is dense, starts at its storage's first element and covers all of it (a fresh op
    output, in any dimension order such as channels-last)."""
    if t.storage_offset() != 0 or t.numel() * t.element_size() != t.untyped_storage().nbytes():
        return False
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


_ACTIVE = threading.local()


class RecomputeSaved:
    """``with RecomputeSaved() as rc: rc.register(t, fn); ...ops...``: see the module docstring.

    Outside grad mode the context does nothing (inference saves no tensors).
    """

    def __init__(self):
        self._entries: dict[int, tuple[torch.Tensor, _Recipe]] = {}
        self._hooks = None

    def register(self, tensor: torch.Tensor, fn) -> bool:
        """Rebuild saved views of ``tensor``'s storage with ``fn()`` instead of keeping them.

        Only a tensor that owns its whole dense storage (a fresh op output, in any dimension order) is
        taken; returns whether it was."""
        if not _owns_storage(tensor):
            return False
        self._entries[tensor.untyped_storage().data_ptr()] = (tensor, _Recipe(fn, tensor))
        return True

    def _lookup(self, t: torch.Tensor):
        """The entry of ``t``'s storage in this context or an enclosing one (hooks do not nest, so the
        innermost context answers for all)."""
        ptr = t.untyped_storage().data_ptr()
        entry = self._entries.get(ptr)
        if entry is None:
            for outer in reversed(getattr(_ACTIVE, "stack", ())):
                entry = outer._entries.get(ptr)
                if entry is not None:
                    break
        return entry

    def source(self, tensor: torch.Tensor):
        """A function returning ``tensor``: its recipe if it has one (so a new recipe built on it does
        not keep it alive), else a closure over the tensor itself."""
        entry = self._lookup(tensor)
        if entry is None:
            return lambda: tensor
        ref, recipe = entry
        if ref is tensor:
            return recipe
        if tensor.dtype != ref.dtype:
            return lambda: tensor
        # a view of a registered tensor: rebuild the base, then take the same view of it
        shape, stride, offset = tuple(tensor.shape), tensor.stride(), tensor.storage_offset()
        return lambda: recipe().as_strided(shape, stride, offset)

    def _pack(self, t: torch.Tensor):
        entry = self._lookup(t) if t.device.type != "meta" else None
        if entry is None:
            return t
        ref, recipe = entry
        if t.dtype != ref.dtype or t.untyped_storage().nbytes() != ref.untyped_storage().nbytes():
            return t
        return _Lazy(recipe, tuple(t.shape), t.stride(), t.storage_offset())

    @staticmethod
    def _unpack(x):
        if not isinstance(x, _Lazy):
            return x
        return x.recipe().as_strided(x.shape, x.stride, x.offset)

    @staticmethod
    def current() -> "RecomputeSaved | None":
        """The innermost active context of this thread, so ops deeper down can register their own
        copies (for example the scan-order copies of a composed cross-scan)."""
        if torch.compiler.is_compiling():  # no context is entered in a compiled graph
            return None
        stack = getattr(_ACTIVE, "stack", None)
        return stack[-1] if stack else None

    def __enter__(self):
        if torch.is_grad_enabled():
            self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
            self._hooks.__enter__()
            if not hasattr(_ACTIVE, "stack"):
                _ACTIVE.stack = []
            _ACTIVE.stack.append(self)
        return self

    def __exit__(self, *exc):
        if self._hooks is not None:
            _ACTIVE.stack.pop()
            self._hooks.__exit__(*exc)
            self._hooks = None
        self._entries.clear()  # drop the references: the registered tensors may now be freed
        return False
