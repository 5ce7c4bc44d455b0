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


def test_compiled_with_dynamic_shapes_equals_eager(one_thread):
    """One graph with symbolic sizes serves several map sizes (the operator's fakes take them)."""
    blk = SS2D(8, d_state=4, scan_backend="cpu")
    eager = copy.deepcopy(blk)
    compiled_blk = torch.compile(blk, backend="aot_eager", dynamic=True)
    for b, h, w in ((2, 5, 6), (3, 7, 4)):
        x = torch.randn(b, h, w, 8)
        y0, g0 = _train_step(eager, x)
        y1, g1 = _train_step(compiled_blk, x)
        torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
        for a, c in zip(g1, g0):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_compiled_torch_backend_is_traced_through(one_thread):
    """The pure-PyTorch backend has no operator: dynamo traces the scan itself."""
    blk = SS2D(8, d_state=4, scan_backend="torch").double()
    _compare_compiled(blk, torch.randn(1, 5, 6, 8, dtype=torch.float64), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("channels_last,deterministic", [(False, False), (True, False), (True, True)])
def test_compiled_triton_equals_eager(channels_last, deterministic, monkeypatch, one_thread, triton_device):
    """The triton kernels (interpreted on the CPU in CI) behind the operator, row-major and
    channels-last maps, with the step-size projection inside the kernels and the fused norm-gate
    option on (eager runs its kernel); also in their deterministic form, without atomics."""
    from vmunet_monai.ops import triton_scan

    monkeypatch.setattr(triton_scan, "_CONFIG", triton_scan.kernel_config().replace(deterministic=deterministic))
    monkeypatch.setattr(SS2D, "channels_last_scan", channels_last)
    monkeypatch.setattr(SS2D, "fused_dt_proj", True)
    monkeypatch.setattr(SS2D, "fused_norm_gate", True)  # left to the compiler while compiling
    blk = SS2D(8, d_state=4, scan_backend="triton").to(triton_device)
    _compare_compiled(blk, torch.randn(1, 4, 5, 8, device=triton_device), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("keep_states", [True, False])
def test_compiled_triton_backward_reuses_kept_states(keep_states, monkeypatch, one_thread, triton_device):
    """With keep_states (the default) the compiled backward starts from the states the forward kernel
    wrote, as eager mode does: one forward kernel run per step; without, it runs the forward again."""
    from vmunet_monai.ops import triton_scan

    config = triton_scan.kernel_config()
    monkeypatch.setattr(triton_scan, "_CONFIG", config.replace(keep_states=keep_states))
    runs = []
    real = triton_scan._run_forward
    monkeypatch.setattr(triton_scan, "_run_forward", lambda *a, **k: runs.append(1) or real(*a, **k))
    blk = SS2D(8, d_state=4, scan_backend="triton").to(triton_device)
    eager = copy.deepcopy(blk)
    x = torch.randn(1, 4, 5, 8, device=triton_device)
    _compare_compiled(blk, x, rtol=1e-4, atol=1e-5)  # eager step (1 or 2 runs), then the compiled one
    eager_runs = 1 if keep_states else 2
    assert len(runs) == 2 * eager_runs
    runs.clear()
    eager(x).sum().backward()
    assert len(runs) == eager_runs


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
                          (u, delta, A, B, C, D, bias, None, True, "cpu", compiled.CODE))
    torch.library.opcheck(torch.ops.vmunet_monai.cross_selective_scan.default,
                          (u, delta, A, B, C, None, None, None, False, "cpu", compiled.CODE))
    factors, dt_weight = _factors()
    torch.library.opcheck(torch.ops.vmunet_monai.cross_selective_scan.default,
                          (u, factors, A, B, C, D, bias, dt_weight, True, "cpu", compiled.CODE))


def test_keep_states_operator_passes_torch_library_checks(triton_device):
    """The triton training operator with its second output, the chunk states (fake shape included); one image of
    a 3x4 map (opcheck runs the interpreted kernels many times over)."""
    u, delta, A, B, C, D, bias = (t.detach().float().to(triton_device).requires_grad_()
                                  for t in _scan_inputs(b=1, h=3, w=4))
    torch.library.opcheck(torch.ops.vmunet_monai.cross_selective_scan_keep_states.default,
                          (u, delta, A, B, C, D, bias, None, True, "triton", compiled.CODE))


def _factors(dtype=torch.float64, b=2, di=3, h=4, w=5, rank=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, rank, h, w, generator=g, dtype=dtype).requires_grad_(),
            (torch.randn(4, di, rank, generator=g, dtype=dtype) * 0.5).requires_grad_())


@pytest.mark.parametrize("low_rank", [False, True])
def test_operator_gradients_equal_eager(low_rank):
    """Every input's gradient through the operator equals the eager kernel's (float64); with rank-R
    step-size factors the operator projects them inside and differentiates through the projection."""
    inputs = list(_scan_inputs())
    extra = {}
    if low_rank:
        inputs[1], extra["dt_weight"] = _factors()
    leaves = inputs + list(extra.values())
    w = torch.linspace(-1, 1, 2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    g_op = torch.autograd.grad((compiled.cross_selective_scan(*inputs, True, "cpu", **extra) * w).sum(), leaves)
    g_eager = torch.autograd.grad((cross_selective_scan(*inputs, True, backend="cpu", **extra) * w).sum(), leaves)
    for a, b in zip(g_op, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_operator_on_other_backends_runs_forward_only():
    """A saved program whose backend resolves to a composed one (``torch`` here) still infers; its
    backward names the backends it can differentiate through."""
    inputs = _scan_inputs()
    y = compiled.cross_selective_scan(*inputs, True, "torch")
    torch.testing.assert_close(y, cross_selective_scan(*inputs, True, backend="torch"), rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="differentiates through the backends"):
        y.sum().backward()
    with pytest.raises(ValueError, match="runs the kernels of the backends"):
        compiled._backend_module("torch")


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


def test_benchmark_deterministic_row(one_thread):
    """``benchmark --deterministic`` times the model under torch's deterministic algorithms (the
    flag is restored afterwards); on the CPU it reports the batch-1 latency."""
    from vmunet_monai import benchmark

    net = _net(VMUNet, "cpu")
    assert not torch.are_deterministic_algorithms_enabled()
    row = benchmark._deterministic_row(net, "fp32", "vmunet", "cpu", torch.randn(1, 3, 32, 32),
                                       torch.randn(2, 3, 32, 32), 2, 1, "cpu", None)
    assert row["backend"] == "cpu+deterministic" and row["latency_b1_s"] > 0
    assert not torch.are_deterministic_algorithms_enabled()


def test_compile_network_in_place_keeps_state_dict_keys(one_thread):
    """The bundles' ``compile`` switch: in place, same module type and state_dict keys (checkpoints
    and resuming read it as before), same outputs; a bad value names itself and the choices."""
    from vmunet_monai.engine import compile_network

    net = _net(VMUNet, "cpu").eval()
    keys = list(net.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        y0 = net(x)
    assert compile_network(net, False) is net and compile_network(net, "false") is net
    assert getattr(net, "_compiled_call_impl", None) is None
    assert compile_network(net, "aot_eager") is net
    assert getattr(net, "_compiled_call_impl", None) is not None
    assert isinstance(net, VMUNet) and list(net.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(net(x), y0, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="compile='fastest'.*inductor"):
        compile_network(net, "fastest")


@pytest.mark.parametrize("bundle", ["isic_skin_lesion", "polyp_seg", "synapse_multiorgan"])
def test_bundle_train_configs_have_the_compile_switch(bundle):
    from bundle_helpers import workflow

    wf = workflow(bundle, ["train.json"], "train", compile="aot_eager")
    net = wf.parser.get_parsed_content("network")
    assert getattr(net, "_compiled_call_impl", None) is not None
    wf = workflow(bundle, ["train.json"], "train")
    assert wf.parser.get_parsed_content("compile") is False
    assert getattr(wf.parser.get_parsed_content("network"), "_compiled_call_impl", None) is None


def test_bundle_trains_compiled_and_saves_plain_keys(tmp_path, one_thread):
    """One epoch of the ISIC bundle with its network compiled (aot_eager: the CPU test of the
    plumbing; inductor is the default of ``compile: true``): training, validation in eval mode
    and the checkpoint, whose keys load into an uncompiled network."""
    from bundle_helpers import copy_bundle, make_prepared, tiny_overrides, workflow

    bundle = "isic_skin_lesion"
    prepared = make_prepared(bundle, tmp_path / "data", num=8)
    root = copy_bundle(bundle, tmp_path)
    over = dict(tiny_overrides(bundle, epochs=1), compile="aot_eager")
    wf = workflow(bundle, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    wf.initialize()
    wf.run()
    wf.finalize()
    saved = torch.load(root / "models" / "model.pt", weights_only=True)
    plain = workflow(bundle, ["train.json"], "train", **tiny_overrides(bundle, epochs=1)).parser.get_parsed_content(
        "network_def")
    plain.load_state_dict(saved)  # strict: the same keys, no compile prefix
