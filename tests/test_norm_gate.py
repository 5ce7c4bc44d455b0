"""The fused LayerNorm * SiLU gate against the PyTorch composition, forward and gradients.

On a CPU machine the Triton kernels run under the interpreter (conftest sets TRITON_INTERPRET=1
when there is no CUDA device); on a CUDA machine they also run compiled at SS2D's stage-1 size.
"""

import pytest
import torch

from vmunet_monai.layers import SS2D
from vmunet_monai.ops.norm_gate import fused_available, norm_gate, norm_gate_reference

needs_triton = pytest.mark.skipif(
    not fused_available(torch.empty(0, device="cuda" if torch.cuda.is_available() else "cpu")),
    reason="the fused kernel needs triton with a CUDA device or TRITON_INTERPRET=1 (set by conftest without CUDA)",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(shape, z_dtype, bias=True, strided=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[-1]
    if strided:  # rows not contiguous: a permuted view, as a row-major scan output gives
        y = torch.randn(shape[0], shape[2], shape[1], c, generator=g).permute(0, 2, 1, 3)
    else:
        y = torch.randn(*shape, generator=g)
    z = torch.randn(*shape, generator=g) * 2
    w = 1 + 0.1 * torch.randn(c, generator=g)
    b = 0.1 * torch.randn(c, generator=g) if bias else None
    go = torch.randn(*shape, generator=g)
    leaves = [t.to(DEVICE).requires_grad_() for t in (y, z.to(z_dtype), w)]
    leaves.append(b.to(DEVICE).requires_grad_() if bias else None)
    return leaves, go.to(DEVICE)


def _run(fused, leaves, go):
    y, z, w, b = leaves
    out = norm_gate(y, z, w, b, 1e-5, fused=fused)
    ins = [t for t in leaves if t is not None]
    return out, torch.autograd.grad((out * go).sum(), ins)


@needs_triton
@pytest.mark.parametrize("shape,bias,strided", [((2, 3, 5, 24), True, False), ((1, 4, 7, 40), False, True),
                                                 ((3, 2, 2, 192), True, True)])
def test_fused_matches_composition_float32(shape, bias, strided):
    leaves, go = _inputs(shape, torch.float32, bias, strided)
    out, grads = _run(True, leaves, go)
    ref, ref_grads = _run(False, leaves, go)
    assert out.dtype == ref.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_triton
def test_fused_bf16_gate():
    """A bf16 gate is rounded where the composition rounds it; the interpreter's bf16 casts truncate
    instead of rounding to nearest, so on the CPU the agreement is to bf16 precision only."""
    leaves, go = _inputs((2, 3, 5, 32), torch.bfloat16)
    out, grads = _run(True, leaves, go)
    ref, ref_grads = _run(False, leaves, go)
    tol = 1e-5 if DEVICE == "cuda" else 2e-2
    assert out.dtype == torch.float32 and grads[1].dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol * 4)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.float(), b.float(), rtol=tol * 2, atol=tol * 8)


def test_unfused_path_is_the_composition_and_errors():
    leaves, _ = _inputs((1, 2, 3, 8), torch.float32)
    y, z, w, b = leaves
    assert torch.equal(norm_gate(y, z, w, b, 1e-5, fused=False), norm_gate_reference(y, z, w, b, 1e-5))
    with pytest.raises(ValueError, match="same shape"):
        norm_gate(y, z[..., :4], w, b, 1e-5)
    with pytest.raises(ValueError, match="weight must be"):
        norm_gate(y, z, w[:4], b, 1e-5)
    if not fused_available(y):
        with pytest.raises(RuntimeError, match="cannot run here"):
            norm_gate(y, z, w, b, 1e-5, fused=True)


@needs_triton
def test_ss2d_fused_norm_gate_matches(monkeypatch):
    x0 = torch.randn(2, 4, 5, 16, device=DEVICE)
    runs = []
    for fused in (False, True):
        monkeypatch.setattr(SS2D, "fused_norm_gate", fused)
        torch.manual_seed(0)
        m = SS2D(16, d_state=4, scan_backend="torch").to(DEVICE)
        x = x0.clone().requires_grad_()
        y = m(x)
        y.square().sum().backward()
        runs.append((y.detach(), x.grad, [p.grad for p in m.parameters()]))
    (y0, dx0, g0), (y1, dx1, g1) = runs
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx1, dx0, rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)

