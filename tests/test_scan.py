"""Every scan backend against the sequential reference, forward and gradients, on fresh random inputs."""

import pytest
import torch

from vmunet_monai import ops
from vmunet_monai.ops import backend_status, selective_scan, selective_scan_reference

CPU_BACKENDS = [s.name for s in backend_status() if "cpu" in s.devices and s.name != "reference"]


def _available(name):
    st = backend_status(name)
    if not st.available:
        pytest.skip(f"scan backend {name} not available here: {st.detail}")


def make_inputs(batch=2, dim=8, length=37, n=4, groups=2, dtype=torch.float64, bc="grouped", with_z=True):
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    if bc == "grouped":
        B, C = r(batch, groups, n, length), r(batch, groups, n, length)
    elif bc == "variable":
        B, C = r(batch, n, length), r(batch, n, length)
    else:
        B, C = r(dim, n), r(dim, n)
    return dict(
        u=r(batch, dim, length),
        delta=r(batch, dim, length, scale=0.5),
        A=(-torch.rand(dim, n, generator=g, dtype=dtype) * 2 - 0.1).requires_grad_(),
        B=B,
        C=C,
        D=r(dim),
        z=r(batch, dim, length) if with_z else None,
        delta_bias=r(dim, scale=0.3),
    )


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_and_grads(inputs, backend, softplus=True, last_state=False, state_in_loss=True):
    out = selective_scan(**inputs, delta_softplus=softplus, return_last_state=last_state, backend=backend)
    y, h = out if last_state else (out, None)
    gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)
    loss = (y * gy).sum() + (h.sum() if h is not None and state_in_loss else 0)
    names = [k for k, v in inputs.items() if v is not None]
    grads = torch.autograd.grad(loss, [inputs[k] for k in names])
    return y, h, dict(zip(names, grads))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bc", ["grouped", "variable", "constant"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_backend_matches_reference(backend, bc, dtype, tol):
    _available(backend)
    inputs = make_inputs(dtype=dtype, bc=bc)
    y_ref, _, g_ref = run_and_grads(inputs, "reference")
    y, _, g = run_and_grads(inputs, backend)
    assert y.dtype == dtype
    assert rel_err(y, y_ref) <= tol
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) <= tol, k


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("length", [1, 7, 64, 130])
def test_backend_last_state_no_softplus_no_z(backend, length):
    _available(backend)
    inputs = make_inputs(length=length, groups=4, with_z=False)
    y_ref, h_ref, g_ref = run_and_grads(inputs, "reference", softplus=False, last_state=True)
    y, h, g = run_and_grads(inputs, backend, softplus=False, last_state=True)
    assert h.shape == (2, 8, 4)
    assert rel_err(y, y_ref) <= 1e-10 and rel_err(h, h_ref) <= 1e-10
    for k in g_ref:
        assert rel_err(g[k], g_ref[k]) <= 1e-10, k


def test_reference_formula_by_hand():
    """One channel, two steps, computed by hand: h1 = dt1*b1*u1, h2 = e^(dt2*a)*h1 + dt2*b2*u2."""
    u = torch.tensor([[[2.0, -1.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[[3.0, 4.0]]]], dtype=torch.float64)
    C = torch.tensor([[[[1.5, -2.0]]]], dtype=torch.float64)
    D = torch.tensor([0.1], dtype=torch.float64)
    h1 = 0.5 * 3.0 * 2.0
    h2 = torch.exp(torch.tensor(0.25 * -2.0, dtype=torch.float64)) * h1 + 0.25 * 4.0 * -1.0
    want = torch.tensor([[[1.5 * h1 + 0.1 * 2.0, (-2.0 * h2 + 0.1 * -1.0).item()]]], dtype=torch.float64)
    for backend in ["reference"] + [b for b in CPU_BACKENDS if backend_status(b).available]:
        got = selective_scan(u, delta, A, B, C, D, backend=backend)
        assert torch.allclose(got, want, atol=1e-12), backend


def test_low_precision_input_returns_input_dtype():
    inputs = {k: (v.detach().float() if v is not None else None) for k, v in make_inputs(dtype=torch.float64).items()}
    ref = selective_scan(**inputs, delta_softplus=True, backend="reference")
    half = dict(inputs, u=inputs["u"].bfloat16(), delta=inputs["delta"].bfloat16())
    out = selective_scan(**half, delta_softplus=True, backend="torch")
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) < 5e-2


def test_bad_shapes_are_named():
    inputs = {k: (v.detach() if v is not None else None) for k, v in make_inputs().items()}
    with pytest.raises(ValueError, match="B has shape"):
        selective_scan(**dict(inputs, B=inputs["B"][:, :, :, :5]), backend="torch")
    with pytest.raises(ValueError, match="not a multiple|G dividing"):
        selective_scan(**dict(inputs, B=torch.randn(2, 3, 4, 37, dtype=torch.float64)), backend="torch")
    with pytest.raises(ValueError, match="delta must have"):
        selective_scan(**dict(inputs, delta=inputs["delta"][..., :3]), backend="torch")
    for backend in ("cpu", "torch"):  # integers were truncated on one backend and refused deep in another
        with pytest.raises(ValueError, match="u must be floating-point, got torch.int64"):
            selective_scan(**dict(inputs, u=inputs["u"].long()), backend=backend)
    from vmunet_monai.ops import cross_selective_scan

    b, di, h, w, n = 1, 3, 4, 5, 2
    args = (torch.randn(b, di, h, w), torch.rand(b, 4, di, h, w), -torch.rand(4 * di, n), torch.randn(b, 4, n, h, w),
            torch.randn(b, 4, n, h, w))
    assert cross_selective_scan(*args, torch.ones(4 * di), backend="torch").shape == (b, di, h, w)
    for backend in ("cpu", "torch"):  # a D of the wrong length: named on every backend
        with pytest.raises(ValueError, match=r"D must be \(12,\), got \(3,\)"):
            cross_selective_scan(*args, torch.ones(di), backend=backend)


def test_backend_selection(monkeypatch):
    monkeypatch.delenv("VMUNET_SCAN_BACKEND", raising=False)
    assert ops.resolve_backend("cpu") in ("cpu", "torch")
    assert ops.resolve_backend("cpu", "reference") == "reference"
    monkeypatch.setenv("VMUNET_SCAN_BACKEND", "reference")
    assert ops.resolve_backend("cpu") == "reference"
    assert ops.resolve_backend("cpu", "torch") == "torch"  # the argument wins over the environment
    monkeypatch.setenv("VMUNET_SCAN_BACKEND", "fastest")
    with pytest.raises(ValueError, match="VMUNET_SCAN_BACKEND='fastest' is not a scan backend"):
        ops.resolve_backend("cpu")
    monkeypatch.delenv("VMUNET_SCAN_BACKEND")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter would accept CPU tensors
    with pytest.raises(RuntimeError, match="runs on cuda tensors"):
        ops.resolve_backend("cpu", "triton")


def test_unavailable_backend_explains_itself():
    st = backend_status("mamba_ssm")
    if st.available:
        pytest.skip("mamba-ssm is available here")
    assert st.detail and st.fix
    assert "mamba" in st.detail


def test_cross_scan_orders_and_merge():
    x = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(1, 2, 3, 4)
    xs = ops.cross_scan(x)
    assert xs.shape == (1, 4, 2, 12)
    h, w = 3, 4
    for i in range(h):
        for j in range(w):
            v = x[0, :, i, j]
            assert torch.equal(xs[0, 0, :, i * w + j], v)  # row-major
            assert torch.equal(xs[0, 1, :, j * h + i], v)  # column-major
            assert torch.equal(xs[0, 2, :, h * w - 1 - (i * w + j)], v)
            assert torch.equal(xs[0, 3, :, h * w - 1 - (j * h + i)], v)
    merged = ops.cross_merge(xs, h, w)
    assert torch.equal(merged, 4 * x.reshape(1, 2, 12))
    per_dir = torch.stack([x] * 4, dim=1)
    assert torch.equal(ops.to_scan_order(per_dir), xs)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_cross_selective_scan_equals_per_direction_scans(backend):
    """The SS2D scan = four independent scans, each over the map in its own order, summed on the map."""
    _available(backend)
    b, di, h, w, n = 2, 3, 4, 5, 4
    dt = torch.float64
    u = torch.randn(b, di, h, w, dtype=dt)
    delta = torch.randn(b, 4, di, h, w, dtype=dt) * 0.5
    A = -torch.rand(4 * di, n, dtype=dt) - 0.5
    B = torch.randn(b, 4, n, h, w, dtype=dt)
    C = torch.randn(b, 4, n, h, w, dtype=dt)
    D = torch.randn(4 * di, dtype=dt)
    bias = torch.randn(4 * di, dtype=dt) * 0.2
    got = ops.cross_selective_scan(u, delta, A, B, C, D, bias, True, backend=backend)
    orders = [
        lambda t: t.flatten(-2),
        lambda t: t.transpose(-1, -2).flatten(-2),
        lambda t: t.flatten(-2).flip(-1),
        lambda t: t.transpose(-1, -2).flatten(-2).flip(-1),
    ]
    want = torch.zeros(b, di, h * w, dtype=dt)
    for k, order in enumerate(orders):
        sl = slice(k * di, (k + 1) * di)
        y = selective_scan_reference(order(u), order(delta[:, k]), A[sl], order(B[:, k]), order(C[:, k]), D[sl],
                                     None, bias[sl], True)
        index = order(torch.arange(h * w).reshape(h, w))  # map position of each scan step
        want[:, :, index] += y
    assert torch.allclose(got, want.reshape(b, di, h, w), atol=1e-10)


CUDA_BACKENDS = [s.name for s in backend_status() if "cuda" in s.devices and s.name != "reference"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("bc", ["grouped", "variable"])
@pytest.mark.parametrize("last_state", [False, True])
def test_cuda_backend_matches_reference(backend, bc, last_state):
    """The CUDA backends (mamba-ssm's kernel, triton, torch) on the GPU against the reference in float64
    on the CPU, fp32 inputs, with z, delta bias and softplus; gradients of every input."""
    _available(backend)
    inputs = make_inputs(batch=2, dim=16, length=300, n=16, groups=4, dtype=torch.float32, bc=bc)
    ref_in = {k: None if v is None else v.detach().double().requires_grad_() for k, v in inputs.items()}
    gpu_in = {k: None if v is None else v.detach().cuda().requires_grad_() for k, v in inputs.items()}
    y_ref, h_ref, g_ref = run_and_grads(ref_in, "reference", last_state=last_state, state_in_loss=False)
    y, h, g = run_and_grads(gpu_in, backend, last_state=last_state, state_in_loss=False)
    assert y.is_cuda and y.dtype == torch.float32
    assert rel_err(y.double().cpu(), y_ref) <= 1e-4
    if last_state:
        assert rel_err(h.double().cpu(), h_ref) <= 1e-4
    for k in g_ref:
        assert rel_err(g[k].double().cpu(), g_ref[k]) <= 1e-4, k
    if last_state and backend in ("triton", "mamba_ssm"):  # no gradient path through the last state
        y, h = selective_scan(**gpu_in, delta_softplus=True, return_last_state=True, backend=backend)
        with pytest.raises(RuntimeError, match="without a gradient"):
            h.sum().backward()


@pytest.mark.parametrize("backend", ["reference", "torch", "cpu"])
def test_cross_scan_low_rank_delta_matches_full_rank(backend):
    """dt_weight= gives the scan the step sizes as factors; backends without a low-rank kernel
    project them first, with the same result and gradients as passing the full-rank tensor."""
    from vmunet_monai.ops import cross_selective_scan

    g = torch.Generator().manual_seed(4)
    b, di, h, w, n, rank = 1, 6, 4, 5, 3, 2
    u = torch.randn(b, di, h, w, generator=g, dtype=torch.float64)
    factors = torch.randn(b, 4, rank, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(4, di, rank, generator=g, dtype=torch.float64, requires_grad=True)
    A = -torch.rand(4 * di, n, generator=g, dtype=torch.float64) - 0.1
    B = torch.randn(b, 4, n, h, w, generator=g, dtype=torch.float64)
    C = torch.randn(b, 4, n, h, w, generator=g, dtype=torch.float64)
    y1 = cross_selective_scan(u, factors, A, B, C, dt_weight=weight, backend=backend)
    g1 = torch.autograd.grad(y1.sum(), weight)[0]
    y2 = cross_selective_scan(u, torch.einsum("kdr,bkrhw->bkdhw", weight, factors), A, B, C, backend=backend)
    g2 = torch.autograd.grad(y2.sum(), weight)[0]
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="dt_weight must be"):
        cross_selective_scan(u, factors, A, B, C, dt_weight=weight[:, :3], backend=backend)
