"""GraphedInference: replayed CUDA graphs give the eager forward's output; CPU tensors take the plain path."""

import pytest
import torch

from vmunet_monai.cuda_graphs import GraphedInference
from vmunet_monai.networks import VMUNet

TINY = dict(dims=(8, 16, 32, 64), d_state=4)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_net(device="cpu"):
    return VMUNet(out_channels=2, depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), **TINY).to(device).eval()


def test_cpu_input_runs_the_plain_forward():
    net = tiny_net()
    fast = GraphedInference(net)
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        want = net(x)
    got = fast(x)
    assert torch.equal(got, want) and not got.requires_grad
    assert fast.captured_shapes == []


def test_bad_max_graphs_is_named():
    with pytest.raises(ValueError, match="max_graphs must be >= 1, got 0"):
        GraphedInference(tiny_net(), max_graphs=0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("autocast_dtype,tol", [(None, 1e-5), (torch.bfloat16, 3e-2)])
def test_replay_matches_eager_on_gpu(autocast_dtype, tol):
    net = tiny_net("cuda")
    fast = GraphedInference(net, autocast_dtype=autocast_dtype, max_graphs=1)
    for shape in [(1, 3, 64, 64), (2, 1, 50, 70), (1, 3, 64, 64)]:  # the last one is captured again (LRU of 1)
        x = torch.randn(shape, device="cuda")
        with torch.no_grad(), torch.autocast("cuda", dtype=autocast_dtype, enabled=autocast_dtype is not None):
            want = net(x).float()
        got = fast(x)
        assert got.shape == want.shape
        assert (got.float() - want).abs().max().item() <= tol * want.abs().max().item()
        assert fast.captured_shapes == [shape]
    # the output is a copy: a later replay does not overwrite it, and new weights are picked up in place
    first = fast(x)
    kept = first.clone()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.01)
    second = fast(x)
    assert torch.equal(first, kept) and not torch.equal(second, first)
