"""Inferers for the bundles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["PlainTensorInferer", "FlipTTAInferer"]


def _plain(x):
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class PlainTensorInferer(SimpleInferer):
    """``SimpleInferer`` that hands the network plain ``torch.Tensor`` inputs instead of ``MetaTensor``.

    The network needs no metadata, and a ``MetaTensor`` would carry it through every operation of the
    forward (a measurable cost for small networks on CPU) and into custom autograd kernels, some of
    which accept plain tensors only. Metadata stays on the batch, so ``Invertd`` and the image
    writers still work on the prediction afterwards.
    """

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        return network(_plain(inputs), *args, **kwargs)


class FlipTTAInferer(Inferer):
    """Test-time augmentation by mirroring: the prediction averaged over the image and its in-plane flips.

    Each flip of the input goes through ``inferer`` (e.g. :class:`PlainTensorInferer`, or MONAI's
    ``SliceInferer`` for volumes), its output is flipped back, and the class probabilities are averaged.
    The result is returned as logits of that average (``logit(p)`` for ``sigmoid``, ``log(p)`` for
    ``softmax``), so a bundle's postprocessing (``Activationsd``, threshold or argmax) turns it into the
    averaged probabilities unchanged. Disabled, it is ``inferer`` itself.

    Args:
        inferer: the inferer to run on every flip (default :class:`PlainTensorInferer`).
        activation: ``sigmoid`` (one channel per class, independent), ``softmax`` (channels are classes) or
            ``none`` (average the raw outputs).
        flips: spatial axes to mirror, one entry per pass; ``[]`` is the image itself. The default, the image,
            its vertical and horizontal mirror and both, costs four network passes.
        enabled: ``false`` runs ``inferer`` once, unchanged (the bundles' ``--tta`` option).

    Raises:
        ValueError: an unknown activation, no flips, or a flip axis the input does not have.
    """

    ACTIVATIONS = ("sigmoid", "softmax", "none")

    def __init__(self, inferer: Inferer | None = None, activation: str = "sigmoid",
                 flips: Sequence[Sequence[int]] = ((), (0,), (1,), (0, 1)), enabled: bool = True) -> None:
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"FlipTTAInferer activation={activation!r}: choose one of {', '.join(self.ACTIVATIONS)}")
        self.flips = [tuple(int(a) for a in f) for f in flips]
        if not self.flips:
            raise ValueError("FlipTTAInferer needs at least one entry in flips ([] is the image itself)")
        self.inferer = inferer if inferer is not None else PlainTensorInferer()
        self.activation, self.enabled = activation, bool(enabled)

    def _to_probability(self, out: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return torch.sigmoid(out.float())
        if self.activation == "softmax":
            return torch.softmax(out.float(), dim=1)
        return out.float()

    def _to_logits(self, p: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return torch.logit(p, eps=1e-7)
        if self.activation == "softmax":
            return torch.log(p.clamp_min(1e-12))
        return p

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        if not self.enabled:
            return self.inferer(inputs, network, *args, **kwargs)
        spatial = inputs.ndim - 2
        total = None
        for axes in self.flips:
            if any(a < 0 or a >= spatial for a in axes):
                raise ValueError(f"FlipTTAInferer flip axes {list(axes)}: the input has spatial axes 0 to {spatial - 1}")
            dims = [2 + a for a in axes]
            x = torch.flip(inputs, dims) if dims else inputs
            out = self.inferer(x, network, *args, **kwargs)
            out = _plain(out)
            p = self._to_probability(torch.flip(out, dims) if dims else out)
            total = p if total is None else total + p
        return self._to_logits(total / len(self.flips))
