"""Inferers for the bundles."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import SimpleInferer

__all__ = ["PlainTensorInferer"]


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
