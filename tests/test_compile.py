"""torch.compile: the networks trace into one graph (the fused scans are one custom operator each),
and compiled forward and backward equal eager mode on fresh random inputs."""

import copy

import pytest
import torch

from vmunet_monai.layers import SS2D
from vmunet_monai.networks import MambaUNet, VMUNet, VMUNetV2
from vmunet_monai.ops import compiled, cross_selective_scan

from conftest import TINY

dynamo = pytest.importorskip("torch._dynamo", reason="this torch build has no torch.compile")

SMALL = dict(depths=(1, 1, 1, 1), drop_path_rate=0.0, **TINY)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def _net(cls, backend, **kw):
    extra = dict(depths_decoder=(1, 1, 1, 1)) if cls is VMUNet else {}
    if cls is VMUNetV2:
        extra = dict(mid_channels=8)
    return cls(in_channels=3, out_channels=2, scan_backend=backend, **SMALL, **extra, **kw)


@pytest.mark.parametrize("cls", [VMUNet, VMUNetV2, MambaUNet])
def test_networks_trace_into_one_graph(cls, one_thread):
    net = _net(cls, "cpu").train()
    x = torch.randn(2, 3, 32, 32)
    report = dynamo.explain(net)(x)
    assert report.graph_break_count == 0, [str(b.reason)[:300] for b in report.break_reasons]
    assert report.graph_count == 1


def _train_step(net, x):
    out = net(x)
    out = out[0] if isinstance(out, list) else out
    loss = (out.float() * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).square().mean()
    loss.backward()
    return out.detach(), [p.grad for p in net.parameters()]


def _compare_compiled(net, x, backend="aot_eager", rtol=1e-5, atol=1e-6):
    eager = copy.deepcopy(net)
    y0, g0 = _train_step(eager, x)
    y1, g1 = _train_step(torch.compile(net, backend=backend, fullgraph=True), x)
    torch.testing.assert_close(y1, y0, rtol=rtol, atol=atol)
    assert len(g1) == len(g0)
    for a, b in zip(g1, g0):
        if b is None:  # a parameter the loss does not reach (VM-UNetV2's deep-supervision heads)
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("cls", [VMUNet, VMUNetV2])
def test_compiled_training_step_equals_eager_cpu_kernel(cls, one_thread):
    """float64 through the cpu kernel: forward and every parameter gradient to rounding."""
    net = _net(cls, "cpu").double().train()
    _compare_compiled(net, torch.randn(2, 3, 32, 32, dtype=torch.float64), rtol=1e-9, atol=1e-11)


def test_compiled_torch_backend_is_traced_through(one_thread):
    """The pure-PyTorch backend has no operator: dynamo traces the scan itself."""
    blk = SS2D(8, d_state=4, scan_backend="torch").double()
    _compare_compiled(blk, torch.randn(1, 5, 6, 8, dtype=torch.float64), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_triton_equals_eager(channels_last, monkeypatch, one_thread, triton_device):
    """The triton kernels (interpreted on the CPU in CI) behind the operator, row-major and
    channels-last maps, with the step-size projection inside the kernels and the fused norm-gate
    option on (eager runs its kernel)."""
    monkeypatch.setattr(SS2D, "channels_last_scan", channels_last)
    monkeypatch.setattr(SS2D, "fused_dt_proj", True)
    monkeypatch.setattr(SS2D, "fused_norm_gate", True)  # left to the compiler while compiling
    blk = SS2D(8, d_state=4, scan_backend="triton").to(triton_device)
    _compare_compiled(blk, torch.randn(1, 4, 5, 8, device=triton_device), rtol=1e-4, atol=1e-5)


def test_compiled_under_bf16_autocast(one_thread):
    """Autocast casts around the operator as in eager mode (the scan computes in float32 either way)."""
    blk = SS2D(8, d_state=4, scan_backend="cpu")
    eager = copy.deepcopy(blk)
    x = torch.randn(2, 4, 5, 8)
    runs = []
    for m in (eager, torch.compile(blk, backend="aot_eager", fullgraph=True)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        y.float().square().sum().backward()
        runs.append((y.detach(), [p.grad for p in m.parameters()]))
    (y0, g0), (y1, g1) = runs
    assert y1.dtype == y0.dtype == torch.bfloat16
    torch.testing.assert_close(y1, y0, rtol=1e-2, atol=1e-2)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-3)


def test_inductor_compiles_an_ss2d_layer(one_thread):
    """The default compiler (inductor generates and builds C++ for the CPU) around the operator."""
    blk = SS2D(8, d_state=4, scan_backend="cpu").train()
    _compare_compiled(blk, torch.randn(2, 4, 5, 8), backend="inductor", rtol=1e-4, atol=1e-5)


def _scan_inputs(dtype=torch.float64, b=2, di=3, h=4, w=5, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_()

    return (r(b, di, h, w), r(b, 4, di, h, w, scale=0.5), (-torch.rand(4 * di, n, generator=g, dtype=dtype) - 0.1)
            .requires_grad_(), r(b, 4, n, h, w), r(b, 4, n, h, w), r(4 * di), r(4 * di, scale=0.1))


def test_operator_passes_torch_library_checks():
    """Schema, fake (shape-only) implementation, autograd registration and AOT dispatch, as
    torch.library.opcheck tests them."""
    u, delta, A, B, C, D, bias = _scan_inputs()
    torch.library.opcheck(torch.ops.vmunet_monai.cross_selective_scan.default,
                          (u, delta, A, B, C, D, bias, None, True, "cpu"))
    torch.library.opcheck(torch.ops.vmunet_monai.cross_selective_scan.default,
                          (u, delta, A, B, C, None, None, None, False, "cpu"))


def test_operator_gradients_equal_eager():
    """Every input's gradient through the operator equals the eager kernel's (float64)."""
    inputs = _scan_inputs()
    torch.autograd.grad(compiled.cross_selective_scan(*inputs, True, "cpu").sum(), inputs)  # warm the kernel
    w = torch.linspace(-1, 1, 2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    g_op = torch.autograd.grad((compiled.cross_selective_scan(*inputs, True, "cpu") * w).sum(), inputs)
    g_eager = torch.autograd.grad((cross_selective_scan(*inputs, True, backend="cpu") * w).sum(), inputs)
    for a, b in zip(g_op, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_operator_rejects_other_backends():
    u, delta, A, B, C, D, bias = _scan_inputs()
    with pytest.raises(ValueError, match="runs the backends"):
        compiled.cross_selective_scan(u, delta, A, B, C, D, bias, True, "torch")


def test_benchmark_compiled_row(monkeypatch, one_thread):
    """``benchmark --compile`` times the compiled model; on the CPU it reports the batch-1 latency
    (the compiler is swapped for aot_eager here: inductor's build is timed in the test above)."""
    import functools

    from vmunet_monai import benchmark

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    net = _net(VMUNet, "cpu")
    row = benchmark._compiled_row(net, "fp32", "vmunet", "cpu", torch.randn(1, 3, 32, 32),
                                  torch.randn(2, 3, 32, 32), 2, 1, "cpu", None)
    assert row["backend"] == "cpu+compile" and row["latency_b1_s"] > 0
    assert "train_img_s" not in row  # training throughput is timed on CUDA only
