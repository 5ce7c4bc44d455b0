"""Backward passes that are not themselves differentiable, refusing a second derivative by name.

The compiled CPU kernel and the Triton kernels compute gradients outside autograd; a gradient penalty or a Hessian
taken through them would be silently wrong (the saved inputs' part of the second derivative missing). A backward
decorated with :func:`first_order_only` returns gradients that raise, when differentiated, an error naming the
backend and the ones that can."""

from __future__ import annotations

import functools

import torch

__all__ = ["first_order_only"]


def first_order_only(what: str, instead: str = "backend='torch' or 'reference'"):
    """Decorator for an ``autograd.Function.backward`` that ``what`` (``"scan backend 'cpu'"``) computes outside
    autograd.

    Without ``create_graph`` nothing changes. With it, the gradients returned are marked so that differentiating
    them raises ``RuntimeError`` saying that ``what`` has first derivatives only and to use ``instead``."""
    message = (f"{what} computes gradients outside autograd and has no second derivative (create_graph=True: "
               f"a gradient penalty, a Hessian); use {instead} for them")

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                out = backward(ctx, *grads)
            if not torch.is_grad_enabled():
                return out
            if not (any(ctx.needs_input_grad) or any(isinstance(g, torch.Tensor) and g.requires_grad for g in grads)):
                return out
            many = isinstance(out, tuple)
            outputs = out if many else (out,)
            marked = [i for i, g in enumerate(outputs) if isinstance(g, torch.Tensor)]
            if not marked:
                return out
            refuse = torch._C._functions.DelayedError(message.encode(), len(marked))
            leaves = []
            for i in marked:
                leaf = outputs[i].detach()
                leaf.requires_grad_(True)
                leaves.append(leaf)
            refused = refuse(*leaves)
            refused = refused if isinstance(refused, tuple) else (refused,)
            result = list(outputs)
            for i, g in zip(marked, refused):
                result[i] = g
            return tuple(result) if many else result[0]

        return wrapper

    return decorate
