"""The triton scan backend against the sequential reference, forward and gradients of every input.

On a CPU machine the kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, small shapes);
on a CUDA machine the compiled kernels are also checked at VM-UNet's stage-1 shape.
"""

import importlib.util
import os

import pytest
import torch

from vmunet_monai.ops import triton_scan
from vmunet_monai.ops.dispatch import cross_selective_scan_composed
from vmunet_monai.ops.reference import selective_scan_reference

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def cross_inputs(batch, di, h, w, n, dtype=torch.float64, device="cpu", with_d=True, seed=None):
    g = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**31, ()).item()) if seed is None else seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float64) * scale

    x = dict(
        u=r(batch, di, h, w),
        delta=r(batch, 4, di, h, w, scale=0.5),
        A=-torch.rand(4 * di, n, generator=g, device=device, dtype=torch.float64) * 2 - 0.1,
        B=r(batch, 4, n, h, w),
        C=r(batch, 4, n, h, w),
        D=r(4 * di) if with_d else None,
        delta_bias=r(4 * di, scale=0.3) if with_d else None,
    )
    return {k: (v.to(dtype) if k in ("u", "delta", "B", "C") else v) if v is not None else None for k, v in x.items()}


def leaf(x, dtype=None):
    return {k: None if v is None else v.detach().to(dtype or v.dtype).requires_grad_() for k, v in x.items()}


def fwd_and_grads(fn, x, gy_seed=0):
    y = fn(x)
    gy = torch.randn(y.shape, generator=torch.Generator(device=y.device).manual_seed(gy_seed), device=y.device)
    names = [k for k in NAMES if x[k] is not None]
    grads = torch.autograd.grad((y * gy.to(y.dtype)).sum(), [x[k] for k in names])
    return y, dict(zip(names, grads))


def fused(x, softplus=True):
    return triton_scan.cross_selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"],
                                            softplus)


def composed_reference(x, softplus=True):
    return cross_selective_scan_composed(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"],
                                         softplus, scan=selective_scan_reference)


@pytest.fixture(scope="module")
def interpreted():
    """triton_scan driving a private copy of the kernels compiled for Triton's CPU interpreter."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("needs the triton package (its interpreter runs the kernels on the CPU)")
    saved_env = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated and by triton_scan's device check
    path = os.path.join(os.path.dirname(triton_scan.__file__), "triton_kernels", "scan.py")
    spec = importlib.util.spec_from_file_location("_vmunet_scan_kernels_interpreted", path)
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)
    saved_kernels, saved_config = triton_scan._kernels, triton_scan.kernel_config()
    triton_scan._kernels = lambda: kernels
    yield triton_scan
    triton_scan._kernels = saved_kernels
    triton_scan.kernel_config(saved_config)
    if saved_env is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = saved_env


@pytest.mark.parametrize(
    "shape,config,with_d,softplus",
    [  # (the interpreter's time grows with programs x steps: maps of 20 steps in chunks of 8 keep 3 chunks)
        ((2, 8, 4, 5, 4), dict(block_d=4, chunk=8), True, True),  # 3 chunks (8 + 8 + 4 steps), 2 channel blocks, 2 maps
        ((1, 5, 3, 9, 3), dict(block_d=8, chunk=16), False, False),  # masked channels and states
        ((1, 3, 6, 4, 4), dict(block_d=2, chunk=32), True, True),  # one chunk longer than the map
        ((1, 8, 4, 5, 4), dict(block_d=4, chunk=8, stepwise=False), True, True),  # chunked forward
        ((1, 8, 4, 5, 4), dict(block_d=4, chunk=8, keep_states=False), True, True),  # states rebuilt in backward
        ((1, 8, 4, 5, 4), dict(block_d=4, chunk=8, segments=3), True, True),  # two-pass split into 3 segments
        ((1, 5, 3, 9, 3), dict(block_d=8, chunk=16, segments=4), False, False),  # 27 steps: 2 segments of 16
        ((1, 8, 4, 5, 4), dict(block_d=4, chunk=8, one_launch=False), True, True),  # a forward launch per direction
        ((1, 8, 4, 5, 4), dict(block_d=4, chunk=8, segments=3, one_launch=False), True, True),
        # deterministic: no atomics, per-direction outputs and per-block partial gradients
        ((1, 8, 4, 5, 4), dict(block_d=4, chunk=8, deterministic=True), True, True),
        ((1, 5, 3, 9, 3), dict(block_d=2, chunk=16, deterministic=True, segments=2, keep_states=False), False, False),
        # the step-loop backward: 2 channel blocks over 3 chunks; one chunk longer than the map with 3 of
        # 32 channels; after the chunked forward's checkpoints, without atomics and with the checkpoints
        # rebuilt; split into segments (KernelConfig.segments: both passes), 2 of 2 chunks and 1 with
        # masked channels and states, and one per chunk without atomics
        ((1, 8, 4, 5, 4), dict(block_d=4, chunk=8, bwd_stepwise=True, bwd_step_block_d=4), True, True),
        ((1, 3, 6, 4, 4), dict(block_d=2, chunk=32, bwd_stepwise=True), True, True),
        ((1, 8, 4, 5, 4), dict(block_d=4, chunk=8, stepwise=False, bwd_stepwise=True, bwd_step_block_d=4,
                               deterministic=True, keep_states=False), True, True),
        ((1, 5, 3, 9, 3), dict(block_d=8, chunk=8, bwd_stepwise=True, bwd_step_block_d=4, segments=2), False, False),
        ((1, 8, 4, 5, 4), dict(block_d=4, chunk=8, bwd_stepwise=True, bwd_step_block_d=4, segments=3,
                               deterministic=True), True, True),
    ],
)
def test_cross_scan_matches_reference_interpreted(interpreted, shape, config, with_d, softplus):
    interpreted.kernel_config(triton_scan.KernelConfig(**config))
    x = cross_inputs(*shape, with_d=with_d)
    y_ref, g_ref = fwd_and_grads(lambda v: composed_reference(v, softplus), leaf(x))
    y, g = fwd_and_grads(lambda v: fused(v, softplus), leaf(x, torch.float32))
    assert y.dtype == torch.float32 and y.shape == shape[:4]
    assert rel_err(y, y_ref) <= 1e-4
    assert set(g) == set(g_ref)
    for k in g_ref:
        assert g[k].dtype == torch.float32 and g[k].shape == g_ref[k].shape, k
        assert rel_err(g[k], g_ref[k]) <= 1e-4, k


@pytest.mark.parametrize("segments,det,step", [(1, False, False), (2, False, False), (1, True, False)])
def test_cross_scan_channels_last_inputs_interpreted(interpreted, segments, det, step):
    """Channels-last maps (and direction-last delta, B, C) are read in place; the output keeps u's layout."""
    interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=8, segments=segments, deterministic=det,
                                                       bwd_stepwise=step, bwd_step_block_d=4))
    x = cross_inputs(2, 8, 4, 5, 4)
    y_ref, g_ref = fwd_and_grads(composed_reference, leaf(x))

    def channels_last(v):  # same values, memory order (batch, H, W, [direction,] channel)
        if v.dim() == 4:
            return v.to(memory_format=torch.channels_last)
        return v.permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)

    xc = {k: None if v is None else (channels_last(v) if v.dim() >= 4 else v).float() for k, v in x.items()}
    xc = leaf(xc)
    assert xc["u"].stride(1) == 1 and xc["delta"].stride(2) == 1 and xc["B"].stride(2) == 1
    y, g = fwd_and_grads(fused, xc)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y, y_ref) <= 1e-4
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) <= 1e-4, k


@pytest.mark.parametrize("config,channels_last", [
    (dict(block_d=4, chunk=8), False),
    (dict(block_d=4, chunk=8, segments=2), False),
    (dict(block_d=4, chunk=8, keep_states=False), True),
    (dict(block_d=4, chunk=8, stepwise=False), False),  # chunked forward: full rank formed first
    (dict(block_d=4, chunk=8, deterministic=True), True),  # per-block partials of the factors' gradient
    # the step-loop backward (here in segments and without atomics, on channels-last maps)
    (dict(block_d=4, chunk=8, bwd_stepwise=True, bwd_step_block_d=8, segments=3, deterministic=True), True),
])
def test_cross_scan_low_rank_delta_interpreted(interpreted, config, channels_last):
    """delta given as rank-R factors and the dt projection: same result and gradients (also of the
    factors and the projection) as the composed reference on the full-rank step sizes."""
    interpreted.kernel_config(triton_scan.KernelConfig(**config))
    b, di, h, w, n, rank = 2, 8, 4, 5, 4, 3
    x = cross_inputs(b, di, h, w, n)
    g = torch.Generator().manual_seed(11)
    factors = torch.randn(b, 4, rank, h, w, generator=g, dtype=torch.float64) * 0.5
    weight = torch.randn(4, di, rank, generator=g, dtype=torch.float64) * 0.5
    names = ["u", "A", "B", "C", "D", "delta_bias"]
    gy = torch.randn(b, di, h, w, generator=g, dtype=torch.float64)

    def run(dtype, fused_call):
        v = leaf({k: x[k] for k in names}, dtype)
        f, wt = leaf({"f": factors, "w": weight}, dtype).values()
        if channels_last and dtype == torch.float32:
            v["u"] = v["u"].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
            f = f.detach().permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2).requires_grad_()
        if fused_call:
            y = triton_scan.cross_selective_scan(v["u"], f, v["A"], v["B"], v["C"], v["D"], v["delta_bias"], True,
                                                 dt_weight=wt)
        else:
            y = composed_reference(dict(v, delta=torch.einsum("kdr,bkrhw->bkdhw", wt, f)))
        grads = torch.autograd.grad((y * gy.to(y.dtype)).sum(), [v[k] for k in names] + [f, wt])
        return y, grads

    y_ref, g_ref = run(torch.float64, False)
    y, grads = run(torch.float32, True)
    assert rel_err(y, y_ref) <= 1e-4
    for label, a, ref in zip(names + ["factors", "dt_weight"], grads, g_ref):
        assert a.shape == ref.shape, label
        assert rel_err(a, ref) <= 1e-4, label
    with pytest.raises(ValueError, match="dt_weight must be"):
        triton_scan.cross_selective_scan(x["u"].float(), factors.float(), x["A"], x["B"].float(), x["C"].float(),
                                         dt_weight=weight[:2].float())


def test_cross_scan_bf16_inputs_interpreted(interpreted):
    interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=8))
    x = cross_inputs(2, 8, 4, 5, 4, dtype=torch.bfloat16)
    # same bf16 values, upcast: the kernel computes in float32, so only the gradients' rounding differs
    y_ref, g_ref = fwd_and_grads(composed_reference, leaf({k: None if v is None else v.double() for k, v in x.items()}))
    y, g = fwd_and_grads(fused, leaf(x))
    assert y.dtype == torch.float32
    assert rel_err(y, y_ref) <= 1e-4
    for k in g_ref:
        assert g[k].dtype == x[k].dtype, k
        assert rel_err(g[k], g_ref[k]) <= 2e-2, k


def test_a_second_derivative_through_the_kernels_is_refused_by_name_interpreted(interpreted):
    """Gradients taken with create_graph=True are the kernels' own; differentiating them again raises naming the
    backend (the kernels' backward is not differentiable, and the result would otherwise be silently wrong)."""
    interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=16))
    x = leaf(cross_inputs(1, 4, 3, 3, 2, dtype=torch.float32))
    gu, = torch.autograd.grad((fused(x) ** 2).sum(), [x["u"]], create_graph=True)
    with pytest.raises(RuntimeError, match="scan backend 'triton' computes gradients outside autograd"):
        gu.pow(2).sum().backward()
    want, = torch.autograd.grad((composed_reference(x) ** 2).sum(), [x["u"]])
    assert rel_err(gu, want) <= 1e-5


@pytest.mark.parametrize("bc,keep,segments,det,step", [
    ("grouped", True, 1, False, False), ("variable", True, 1, False, False), ("constant", True, 1, False, False),
    ("grouped", False, 1, False, False), ("variable", True, 3, False, False), ("grouped", False, 2, False, False),
    ("grouped", True, 1, True, False), ("variable", False, 3, True, True)])
def test_generic_scan_matches_reference_interpreted(interpreted, bc, keep, segments, det, step):
    interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=8, keep_states=keep, segments=segments,
                                                       deterministic=det, bwd_stepwise=step, bwd_step_block_d=4))
    batch, dim, length, n = 2, 8, 21, 4  # 3 chunks of 8
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    shapes = {"grouped": (batch, 2, n, length), "variable": (batch, n, length), "constant": (dim, n)}[bc]
    x = dict(u=r(batch, dim, length), delta=r(batch, dim, length, scale=0.5),
             A=-torch.rand(dim, n, generator=g, dtype=torch.float64) * 2 - 0.1, B=r(*shapes), C=r(*shapes),
             D=r(dim), z=r(batch, dim, length), delta_bias=r(dim, scale=0.3))

    def run(fn, v):
        y, last = fn(**v, delta_softplus=True, return_last_state=True)
        gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        grads = torch.autograd.grad((y * gy).sum(), list(v.values()))
        return y, last, dict(zip(v, grads))

    y_ref, h_ref, g_ref = run(selective_scan_reference, leaf(x))
    y, h, g_ = run(interpreted.selective_scan, leaf(x, torch.float32))
    assert y.dtype == torch.float32 and h.shape == (batch, dim, n)
    assert rel_err(y, y_ref) <= 1e-4 and rel_err(h, h_ref) <= 1e-4
    for k in g_ref:
        assert g_[k].shape == g_ref[k].shape, k
        assert rel_err(g_[k], g_ref[k]) <= 1e-4, k


def test_deterministic_mode_adds_nothing_atomically_interpreted(interpreted, monkeypatch):
    """Under torch.use_deterministic_algorithms(True) the kernels make no atomic add (the order of
    atomic float adds is the GPU's, so the last bits would vary run to run), also when batches go in
    several groups to bound the partials' memory; results equal the reference and repeat exactly."""
    from triton.runtime.interpreter import InterpreterBuilder

    interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=8))
    real_rmw, calls = InterpreterBuilder.create_atomic_rmw, []

    def counting(self, *args, **kwargs):  # every atomic read-modify-write the interpreter executes
        calls.append(1)
        return real_rmw(self, *args, **kwargs)

    monkeypatch.setattr(InterpreterBuilder, "create_atomic_rmw", counting)
    x = cross_inputs(2, 8, 4, 5, 4, seed=5)
    y_ref, g_ref = fwd_and_grads(composed_reference, leaf(x))
    fused(leaf(x, torch.float32))
    assert calls, "the default forward merges the four directions with atomic adds"
    calls.clear()
    # one batch per group: the partial-gradient buffers of a whole batch would exceed the budget
    monkeypatch.setattr(triton_scan, "DET_PARTIAL_BYTES", 1)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert triton_scan.deterministic()
        runs = [fwd_and_grads(fused, leaf(x, torch.float32)) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(was)
    assert not calls
    (y, g), (y2, g2) = runs
    assert rel_err(y, y_ref) <= 1e-4 and torch.equal(y, y2)
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) <= 1e-4, k
        assert torch.equal(g[k], g2[k]), k

    # the partials hold one direction at a time (SS2D's backward launches once per direction), so a
    # budget of two batches' partials for one direction takes both batches in one launch per
    # direction; sized for four directions, it would take one batch per launch
    per_batch = 4 * 2 * (2 * 4 * 20)  # float32 x 2 channel blocks x (dB and dC: N = 4, L = 20)
    monkeypatch.setattr(triton_scan, "DET_PARTIAL_BYTES", 2 * per_batch)
    grids, real_launch = [], triton_scan.launch
    monkeypatch.setattr(triton_scan, "launch", lambda kernel, grid, *a, **kw: (
        grids.append(grid) if kernel is triton_scan._kernels().scan_bwd_kernel else None,
        real_launch(kernel, grid, *a, **kw))[1])
    interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=8, deterministic=True))
    _, g3 = fwd_and_grads(fused, leaf(x, torch.float32))
    assert grids == [(2, 1, 2)] * 4, grids
    for k in g_ref:
        assert torch.equal(g3[k], g[k]), k  # the same sums in the same order, however batches are grouped


def test_auto_segments_interpreted(interpreted, monkeypatch):
    """KernelConfig(segments=0): one segment while a launch fills half the GPU, else enough to fill it
    (at most one per chunk); the result equals the reference."""
    auto = triton_scan.auto_segments
    assert auto(384, 132, 256) == 1  # stage 1 at batch 32: 384 programs, 528 resident on an H100
    assert auto(12, 132, 256) == 44  # batch 1: 12 programs
    assert auto(200, 132, 256) == 3 and auto(12, 132, 4) == 4 and auto(1, 1, 16) == 4
    with pytest.raises(ValueError, match=r"segments=-1 must be at least 1, or 0 to choose per call"):
        triton_scan.KernelConfig(segments=-1)
    interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=8, segments=0))
    chosen = []
    real = triton_scan._run_forward_split
    monkeypatch.setattr(triton_scan, "_run_forward_split", lambda *a: chosen.append(a[5]) or real(*a))
    x = cross_inputs(2, 8, 4, 5, 4)  # 20 steps = 3 chunks of 8; 2 channel blocks x 4 directions x 2 maps
    y_ref, g_ref = fwd_and_grads(composed_reference, leaf(x))
    y, g = fwd_and_grads(fused, leaf(x, torch.float32))
    assert chosen == [3]  # 16 programs on 132 x 4 slots: one segment per chunk
    assert rel_err(y, y_ref) <= 1e-4
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) <= 1e-4, k


def test_status_and_errors():
    ok, detail, fix = triton_scan.status()
    assert isinstance(ok, bool) and detail
    if not ok:
        assert fix
    x = cross_inputs(1, 4, 3, 3, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="delta must be"):
        triton_scan.cross_selective_scan(x["u"], x["delta"][:, :2], x["A"], x["B"], x["C"])
    with pytest.raises(ValueError, match="A must be"):
        triton_scan.cross_selective_scan(x["u"], x["delta"], x["A"][:4], x["B"], x["C"])
    if os.environ.get("TRITON_INTERPRET", "0") != "1":
        with pytest.raises(RuntimeError, match="CUDA tensors"):
            triton_scan.cross_selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"])


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_kernel_config_replace():
    cfg = triton_scan.KernelConfig(block_d=8).replace(keep_states=False)
    assert (cfg.block_d, cfg.keep_states) == (8, False)
    with pytest.raises(TypeError, match="no field"):
        cfg.replace(blockd=4)


def test_keep_states_false_saves_no_state_tensor(interpreted):
    """With keep_states=False the backward needs nothing beyond the inputs (the states are rebuilt)."""
    x = leaf(cross_inputs(1, 4, 5, 6, 4), torch.float32)
    sizes = {}
    for keep in (True, False):
        interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=16, keep_states=keep))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            y = fused(x)
        sizes[keep] = saved
        y.sum().backward()
    nchunks = -(-30 // 16)
    assert sum(sizes[True]) - sum(sizes[False]) == 4 * 4 * nchunks * 4  # (batch, K, Dk, chunks, N) states


@needs_cuda
@pytest.mark.parametrize("dtype,keep,segments,step", [
    (torch.float32, True, 1, False), (torch.bfloat16, True, 1, False), (torch.float32, False, 1, False),
    (torch.float32, True, 16, False), (torch.float32, True, 1, True), (torch.bfloat16, False, 1, True)])
def test_cross_scan_gpu_stage1_shape(dtype, keep, segments, step):
    """VM-UNet stage 1 at batch 32 (forward) against the composed torch path in float32; ``step``: the
    step-loop backward (KernelConfig(bwd_stepwise=True))."""
    from vmunet_monai.ops import dispatch

    saved = triton_scan.kernel_config()
    triton_scan.kernel_config(saved.replace(keep_states=keep, segments=segments, bwd_stepwise=step))
    try:
        _stage1_check(dtype, dispatch)
    finally:
        triton_scan.kernel_config(saved)


def _stage1_check(dtype, dispatch):
    """Fused forward at batch 32 and gradients at batch 2 against the composed torch path."""

    def composed_torch(v):
        return cross_selective_scan_composed(*(None if v[k] is None else v[k].float() for k in NAMES), True,
                                             scan=dispatch._module("torch").selective_scan)

    x = cross_inputs(32, 192, 64, 64, 16, dtype=dtype, device="cuda", seed=3)
    x = {k: v.float() if k not in ("u", "delta", "B", "C") else v for k, v in x.items()}
    with torch.no_grad():
        assert rel_err(fused(x), composed_torch(x)) <= 1e-4
    # gradients at batch 2 (the composed path's autograd graph at batch 32 does not fit beside it)
    x = leaf({k: v[:2] if k in ("u", "delta", "B", "C") else v for k, v in x.items()})
    y, g = fwd_and_grads(fused, x)
    y_ref, g_ref = fwd_and_grads(composed_torch, x)
    assert rel_err(y, y_ref) <= 1e-4
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) <= (1e-4 if dtype == torch.float32 else 1e-2), k


@needs_cuda
def test_cross_scan_gpu_low_rank_delta():
    """The low-rank step sizes (dt_weight=) at VM-UNet's stage-1 shape against the full-rank fused path."""
    x = cross_inputs(2, 192, 64, 64, 16, dtype=torch.float32, device="cuda", seed=5)
    g = torch.Generator(device="cuda").manual_seed(6)
    factors = torch.randn(2, 4, 6, 64, 64, generator=g, device="cuda") * 0.3
    weight = torch.randn(4, 192, 6, generator=g, device="cuda") * 0.3
    names = ["u", "A", "B", "C", "D", "delta_bias"]
    v = leaf({k: x[k].float() for k in names})
    f, w = leaf({"f": factors, "w": weight}).values()
    y = triton_scan.cross_selective_scan(v["u"], f, v["A"], v["B"], v["C"], v["D"], v["delta_bias"], True,
                                         dt_weight=w)
    grads = torch.autograd.grad(y.square().sum(), [v[k] for k in names] + [f, w])
    v2 = leaf({k: x[k].float() for k in names})
    f2, w2 = leaf({"f": factors, "w": weight}).values()
    y2 = triton_scan.cross_selective_scan(v2["u"], torch.einsum("kdr,bkrhw->bkdhw", w2, f2), v2["A"], v2["B"],
                                          v2["C"], v2["D"], v2["delta_bias"], True)
    grads2 = torch.autograd.grad(y2.square().sum(), [v2[k] for k in names] + [f2, w2])
    assert rel_err(y, y2) <= 1e-5
    for label, a, b in zip(names + ["factors", "dt_weight"], grads, grads2):
        assert rel_err(a, b) <= 1e-4, label


@needs_cuda
@pytest.mark.parametrize("step", [False, True])
def test_cross_scan_gpu_deterministic_repeats_bit_for_bit(step):
    """KernelConfig(deterministic=True) at VM-UNet's stage-1 shape (batch 4, fast options' rank-6
    step sizes): two runs give identical outputs and gradients, equal to the default kernels' within
    float32 rounding; the default kernels' atomics are what varies between runs. ``step``: both with
    the step-loop backward."""
    x = cross_inputs(4, 192, 64, 64, 16, dtype=torch.float32, device="cuda", seed=8)
    g = torch.Generator(device="cuda").manual_seed(9)
    factors = torch.randn(4, 4, 6, 64, 64, generator=g, device="cuda") * 0.3
    weight = torch.randn(4, 192, 6, generator=g, device="cuda") * 0.3
    names = ["u", "A", "B", "C", "D", "delta_bias"]
    gy = torch.randn(4, 192, 64, 64, generator=g, device="cuda")

    def run():
        v = leaf({k: x[k].float() for k in names})
        f, w = leaf({"f": factors, "w": weight}).values()
        y = triton_scan.cross_selective_scan(v["u"], f, v["A"], v["B"], v["C"], v["D"], v["delta_bias"], True,
                                             dt_weight=w)
        return [y.detach()] + list(torch.autograd.grad((y * gy).sum(), [v[k] for k in names] + [f, w]))

    saved = triton_scan.kernel_config()
    try:
        triton_scan.kernel_config(saved.replace(deterministic=True, bwd_stepwise=step))
        first, second = run(), run()
        triton_scan.kernel_config(saved.replace(deterministic=False, bwd_stepwise=step))
        default = run()
    finally:
        triton_scan.kernel_config(saved)
    for label, a, b, c in zip(["y"] + names + ["factors", "dt_weight"], first, second, default):
        assert torch.equal(a, b), label
        assert rel_err(a, c) <= 1e-5, label


def test_last_state_has_no_gradient_path_interpreted(interpreted, monkeypatch):
    """Like mamba-ssm, the triton scan returns its last state off the graph; backpropagating through it
    must raise instead of silently dropping that gradient, while y's gradient still flows."""
    from vmunet_monai.ops import dispatch, selective_scan

    real_resolve = dispatch.resolve_backend  # let dispatch hand CPU tensors to the interpreted kernels
    monkeypatch.setattr(dispatch, "resolve_backend", lambda dev, b=None: "triton" if b == "triton" else real_resolve(dev, b))
    g = torch.Generator().manual_seed(5)
    u, delta = torch.randn(1, 4, 9, generator=g), torch.randn(1, 4, 9, generator=g).requires_grad_()
    A = -torch.rand(4, 2, generator=g) - 0.1
    B, C = torch.randn(1, 1, 2, 9, generator=g), torch.randn(1, 1, 2, 9, generator=g)
    y, h = selective_scan(u, delta, A, B, C, delta_softplus=True, return_last_state=True, backend="triton")
    _, h_ref = selective_scan(u, delta, A, B, C, delta_softplus=True, return_last_state=True, backend="reference")
    assert torch.allclose(h, h_ref, atol=1e-5)
    with pytest.raises(RuntimeError, match="without a gradient"):
        h.sum().backward(retain_graph=True)
    y.sum().backward()
    assert delta.grad is not None and torch.isfinite(delta.grad).all()


def test_step_backward_runs_the_four_directions_in_one_launch_interpreted(interpreted, monkeypatch):
    """KernelConfig(bwd_stepwise=True): one backward launch of (channel blocks, 4 directions, batch)
    programs, each taking its direction's walk order as a value, with a scratch of (chunk, 2 N + 2,
    channels) float32 per program; deterministic, it adds nothing atomically, and its gradients equal
    the reference and repeat bit for bit."""
    det = True
    from triton.runtime.interpreter import InterpreterBuilder

    real_rmw, atomics = InterpreterBuilder.create_atomic_rmw, []
    monkeypatch.setattr(InterpreterBuilder, "create_atomic_rmw",
                        lambda self, *a, **kw: atomics.append(1) or real_rmw(self, *a, **kw))
    launches, real_launch = [], triton_scan.launch

    def record(kernel, grid, *args, **kwargs):
        if kernel is triton_scan._kernels().scan_bwd_kernel:
            launches.append((grid, args[18].numel(), kwargs["STEPWISE"], kwargs["ALL4"], kwargs["PHASE"]))
        return real_launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(triton_scan, "launch", record)
    interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=8, bwd_stepwise=True, bwd_step_block_d=4,
                                                       deterministic=det))
    x = cross_inputs(1, 8, 4, 5, 4, seed=9)
    y_ref, g_ref = fwd_and_grads(composed_reference, leaf(x))
    runs = []
    for _ in range(2):
        atomics.clear()
        runs.append(fwd_and_grads(fused, leaf(x, torch.float32)))
    # 2 channel blocks x 4 directions; scratch: 8 programs x 8 steps x (2 x 4 + 2) x 4 channels
    assert launches[-1] == ((2, 4, 1), 8 * 8 * 10 * 4, True, True, 0) and len(launches) == 2, launches
    assert bool(atomics) != det
    (y, g), (_, g2) = runs
    assert rel_err(y, y_ref) <= 1e-4
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) <= 1e-4, k
        if det:
            assert torch.equal(g[k], g2[k]), k


def test_step_backward_segments_interpreted(interpreted, monkeypatch):
    """KernelConfig(bwd_stepwise=True, segments=S): the backward in two launches of (blocks, 4 x S,
    batch) programs, the adjoint of each segment alone first (no scratch), then every segment from its
    true entering adjoint; segments=0 picks S per call, at most one per chunk."""
    launches, real_launch = [], triton_scan.launch

    def record(kernel, grid, *args, **kwargs):
        if kernel is triton_scan._kernels().scan_bwd_kernel:
            launches.append((grid, args[18].numel(), kwargs["PHASE"], args[30:32]))
        return real_launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(triton_scan, "launch", record)
    x = cross_inputs(1, 8, 4, 6, 4, seed=4)  # 24 steps: 3 chunks of 8
    y_ref, g_ref = fwd_and_grads(composed_reference, leaf(x))
    for segments, expect in ((2, (2, 2)), (0, (3, 1))):  # auto: 4 programs without segments -> one per chunk
        launches.clear()
        interpreted.kernel_config(triton_scan.KernelConfig(block_d=4, chunk=8, bwd_stepwise=True, bwd_step_block_d=8,
                                                           segments=segments))
        y, g = fwd_and_grads(fused, leaf(x, torch.float32))
        nseg, seg_chunks = expect
        grid = (1, 4 * nseg, 1)
        assert [(p[0], p[2], tuple(p[3])) for p in launches] == [(grid, 1, expect), (grid, 2, expect)], launches
        assert launches[0][1] == 1 and launches[1][1] == 4 * nseg * 8 * 10 * 8  # scratch in phase 2 only
        assert rel_err(y, y_ref) <= 1e-4
        for k in g_ref:
            assert rel_err(g[k], g_ref[k]) <= 1e-4, k
