"""Inference through captured CUDA graphs: one capture per input shape, then replays.

A batch-1 VM-UNet forward launches several hundred small kernels, so on a fast GPU its latency is set
by the CPU's launch overhead, not by the GPU. Capturing the forward once as a CUDA graph and replaying
it removes that overhead. ``GraphedInference`` wraps a network for inference only (no gradients);
tensors not on a CUDA device go through the plain forward.

Example::

    net = VMUNet(out_channels=1).cuda().eval()
    fast = GraphedInference(net, autocast_dtype=torch.bfloat16)
    y = fast(x)          # first call per shape captures (a few forward passes), later calls replay
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["GraphedInference"]


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    static_input: torch.Tensor
    static_output: torch.Tensor


class GraphedInference(nn.Module):
    """Eval-mode forward of ``network`` through CUDA graphs, cached per (shape, dtype, device).

    Args:
        network: the model; it is put in eval mode. Its parameters must not change between calls
            (the graphs read them in place, so loading new weights with ``load_state_dict`` is fine,
            replacing parameter tensors is not).
        autocast_dtype: run the captured forward under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16``); None for the parameters' precision.
        max_graphs: how many input shapes to keep captured (least recently used is dropped).
        warmup: plain forward passes on a side stream before capturing (lazy initialisation, autotuning).

    The returned tensor is a fresh copy, safe to keep across calls.
    """

    def __init__(self, network: nn.Module, *, autocast_dtype: torch.dtype | None = None, max_graphs: int = 4,
                 warmup: int = 2):
        super().__init__()
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.network = network.eval()
        self.autocast_dtype = autocast_dtype
        self.max_graphs = int(max_graphs)
        self.warmup = int(warmup)
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()

    @property
    def captured_shapes(self) -> list[tuple]:
        return [k[0] for k in self._graphs]

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(x.device.type, dtype=self.autocast_dtype,
                                             enabled=self.autocast_dtype is not None):
            return self.network(x)

    def _capture(self, x: torch.Tensor) -> _Captured:
        static_input = x.detach().clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._plain(static_input)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                static_output = self._plain(static_input)
        except RuntimeError as err:
            raise RuntimeError(
                f"could not capture {type(self.network).__name__} for input {tuple(x.shape)} as a CUDA graph "
                f"(something in its forward synchronises with the CPU or allocates outside the graph): {err}"
            ) from err
        if not isinstance(static_output, torch.Tensor):
            raise TypeError(f"GraphedInference needs a network returning one tensor, got {type(static_output).__name__}")
        return _Captured(graph, static_input, static_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            return self._plain(x)
        if self.network.training:
            raise RuntimeError("GraphedInference is for inference; the wrapped network was put back in training mode")
        x = x.as_tensor() if hasattr(x, "as_tensor") else x  # MONAI MetaTensor -> plain tensor
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(x)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        entry.static_input.copy_(x)
        entry.graph.replay()
        return entry.static_output.clone()
