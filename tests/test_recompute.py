"""Recomputation of cheap activations in the backward: same results, less kept for the backward."""

import math

import pytest
import torch
import torch.nn.functional as F

from vmunet_monai.layers import SS2D
from vmunet_monai.layers.vss import VSSBlock
from vmunet_monai.networks import VMUNet
from vmunet_monai.ops import recompute as rc_mod
from vmunet_monai.ops.recompute import RecomputeSaved, recomputing

from conftest import TINY


def _kept(monkeypatch):
    """Record what every RecomputeSaved context keeps ('Tensor') or drops ('_Lazy') for the backward."""
    log = []
    original = RecomputeSaved._pack

    def pack(self, t):
        out = original(self, t)
        log.append((type(out).__name__, tuple(t.shape), t.untyped_storage().nbytes()))
        return out

    monkeypatch.setattr(RecomputeSaved, "_pack", pack)
    return log


def test_registered_tensor_is_rebuilt_not_kept(monkeypatch):
    log = _kept(monkeypatch)
    calls = []

    def run(lazy):
        a = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_()

        def recipe():
            calls.append(1)
            return torch.sin(a)

        with RecomputeSaved() if lazy else torch.enable_grad() as rc:
            s = torch.sin(a)
            if lazy:
                assert rc.register(s, recipe)
            out = (s * a).sum() + (s.t() @ a).square().sum()  # mul saves s; matmul saves the view s.t()
        out.backward()
        return a.grad

    torch.testing.assert_close(run(True), run(False), rtol=0, atol=0)
    assert sum(kind == "_Lazy" for kind, _, _ in log) == 2
    assert len(calls) == 2, "each dropped tensor is rebuilt when its backward needs it"


def test_register_refuses_views_and_checks_recipes():
    base = torch.randn(4, 6, requires_grad=True)
    with RecomputeSaved() as rc:
        y = base * 2
        assert not rc.register(y[:, :3], lambda: (base * 2)[:, :3])  # does not own its storage
        z = base * 3
        assert rc.register(z, lambda: (base * 3)[:2])  # wrong shape: found when the backward needs it
        loss = (z * z).sum()
    with pytest.raises(RuntimeError, match=r"recompute recipe returned \(2, 6\)"):
        loss.backward()


def test_inactive_without_grad_and_while_tracing():
    assert recomputing(True)
    assert not recomputing(False)
    with torch.no_grad():
        assert not recomputing(True)
        with RecomputeSaved() as rc:
            assert RecomputeSaved.current() is None and rc._hooks is None


def _block_run(recompute, backend, x0, dtype=torch.float64, autocast=None):
    torch.manual_seed(0)
    blk = VSSBlock(24, 0.0, 4, scan_backend=backend, recompute=recompute).to(dtype)
    x = x0.to(dtype).clone().requires_grad_()
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        y = blk(x)
    (y.float().square().sum() + y.float()[..., :3].sum()).backward()
    return y.detach(), x.grad, {n: p.grad for n, p in blk.named_parameters()}


@pytest.mark.parametrize("backend", ["torch", "cpu", "reference"])
def test_vss_block_recompute_matches_store_all(backend, one_thread):
    x0 = torch.randn(2, 6, 5, 24)
    y0, dx0, g0 = _block_run(False, backend, x0)
    y1, dx1, g1 = _block_run(True, backend, x0)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-12)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=0, atol=1e-11, msg=name)


def test_vss_block_recompute_under_bf16_autocast(one_thread):
    """Recipes rebuild under the forward's autocast state, so low-precision tensors come back identical."""
    x0 = torch.randn(2, 6, 5, 24)
    y0, dx0, g0 = _block_run(False, "torch", x0, torch.float32, torch.bfloat16)
    y1, dx1, g1 = _block_run(True, "torch", x0, torch.float32, torch.bfloat16)
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-5)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_large_activations_are_not_kept(backend, monkeypatch, one_thread):
    """The full-rank step sizes, the SiLU output and (composed path) the scan-order copies are dropped."""
    log = _kept(monkeypatch)
    blk = VSSBlock(16, 0.0, 4, scan_backend=backend)
    x = torch.randn(1, 8, 8, 16, requires_grad=True)
    blk(x).sum().backward()
    di, length = blk.self_attention.d_inner, 64
    delta_bytes = 4 * di * length * 4
    lazy = [(shape, nbytes) for kind, shape, nbytes in log if kind == "_Lazy"]
    kept = [(shape, nbytes) for kind, shape, nbytes in log if kind == "Tensor"]
    assert any(nbytes == delta_bytes for _, nbytes in lazy), lazy  # the (b, 4, Di, L) step sizes
    assert any(nbytes == di * length * 4 for _, nbytes in lazy), lazy  # SiLU output u
    assert any(nbytes == 16 * length * 4 for _, nbytes in lazy), lazy  # ln_1 output
    if backend == "cpu":  # the torch backend keeps per-chunk intermediates of its own; the C kernel does not
        assert not any(nbytes >= delta_bytes for _, nbytes in kept), kept


def test_networks_train_the_same_with_and_without_recompute(one_thread):
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        net = VMUNet(out_channels=2, scan_backend="torch", recompute=recompute, **TINY).double()
        net(x.double()).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=0, atol=1e-12, msg=name)


def test_recompute_attribute_and_inference_path():
    m = SS2D(8, d_state=4, scan_backend="torch")
    assert m.recompute is True
    x = torch.randn(1, 4, 4, 8)
    with torch.no_grad():
        a = m(x)
    m.recompute = False
    with torch.no_grad():
        b = m(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_silu_recipe_uses_the_convolution_output(monkeypatch):
    """The rebuilt SiLU output is SiLU of what the convolution produced in the forward."""
    seen = []
    original = F.silu

    def spy(t, *a, **k):
        seen.append(t.shape)
        return original(t, *a, **k)

    monkeypatch.setattr(F, "silu", spy)
    m = SS2D(8, d_state=4, scan_backend="torch")
    m(torch.randn(1, 4, 4, 8)).sum().backward()
    # forward: conv output and z; backward: the rebuilt conv output (at least once) and z (checkpoint)
    assert seen.count(torch.Size([1, 16, 4, 4])) >= 2
    assert rc_mod.RecomputeSaved.current() is None  # every context closed


def test_triton_recompute_matches_store_all(one_thread, monkeypatch, triton_device):
    """The fused triton scan (interpreted on the CPU in CI) keeps only rebuilt views of u and delta."""
    device = triton_device
    log = _kept(monkeypatch)
    x0 = torch.randn(1, 4, 6, 8, device=device)
    runs = []
    for recompute in (False, True):
        torch.manual_seed(0)
        blk = VSSBlock(8, 0.0, 4, scan_backend="triton", recompute=recompute).to(device)
        x = x0.clone().requires_grad_()
        y = blk(x)
        y.square().sum().backward()
        runs.append((y.detach(), x.grad, [p.grad for p in blk.parameters()]))
    (y0, dx0, g0), (y1, dx1, g1) = runs
    assert sum(kind == "_Lazy" for kind, _, _ in log) >= 3  # u, delta (in the kernel's saves) and ln_1's output
    torch.testing.assert_close(y1, y0, rtol=1e-6, atol=1e-7)  # float32 matmuls on other memory layouts
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _cl_run(backend, channels_last, recompute, x0, dtype, monkeypatch):
    monkeypatch.setattr(SS2D, "channels_last_scan", channels_last)
    torch.manual_seed(0)
    blk = VSSBlock(x0.shape[-1], 0.0, 4, scan_backend=backend, recompute=recompute).to(device=x0.device, dtype=dtype)
    x = x0.to(dtype).clone().requires_grad_()
    y = blk(x)
    y.square().sum().backward()
    return y.detach(), x.grad, [p.grad for p in blk.parameters()]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_channels_last_scan_matches_row_major(backend, monkeypatch, one_thread):
    """SS2D.channels_last_scan changes memory layouts only: float64 results and gradients agree."""
    x0 = torch.randn(2, 6, 5, 24)
    y0, dx0, g0 = _cl_run(backend, False, False, x0, torch.float64, monkeypatch)
    log = _kept(monkeypatch)
    y1, dx1, g1 = _cl_run(backend, True, True, x0, torch.float64, monkeypatch)
    torch.testing.assert_close(y1, y0, rtol=0, atol=1e-12)
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=1e-12)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    if backend == "torch":  # the composed path's scan-order copy of delta is rebuilt, not kept
        delta_bytes = 2 * 4 * 48 * 30 * 8  # (b, K, Di, L) float64
        assert any(kind == "_Lazy" and nbytes == delta_bytes for kind, _, nbytes in log)


def test_channels_last_scan_triton(monkeypatch, one_thread, triton_device):
    """The triton kernels read the channels-last maps in place (interpreted on the CPU in CI)."""
    device = triton_device
    x0 = torch.randn(1, 4, 6, 8, device=device)
    y0, dx0, g0 = _cl_run("triton", False, True, x0, torch.float32, monkeypatch)
    y1, dx1, g1 = _cl_run("triton", True, True, x0, torch.float32, monkeypatch)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_dt_proj_triton(monkeypatch, one_thread, triton_device):
    """SS2D.fused_dt_proj: the triton kernels project the step-size factors themselves; results and
    gradients match the path that forms the full-rank step sizes first, and nothing of their size is
    kept for the backward."""
    log = _kept(monkeypatch)
    x0 = torch.randn(1, 4, 6, 8, device=triton_device)
    runs = []
    for fused in (False, True):
        monkeypatch.setattr(SS2D, "fused_dt_proj", fused)
        log.clear()
        runs.append(_cl_run("triton", False, True, x0, torch.float32, monkeypatch) + (list(log),))
    (y0, dx0, g0, _), (y1, dx1, g1, kept) = runs
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx1, dx0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    delta_bytes = 4 * 16 * 24 * 4  # (1, 4, Di=16, 24 pixels) float32
    # neither kept nor even registered (views of the projection's output share a storage of that size)
    assert not any(nbytes == delta_bytes == 4 * math.prod(shape) for _, shape, nbytes in kept)
