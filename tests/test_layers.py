"""Building blocks: layouts that pretrained weights depend on, SS2D semantics and initialisation."""

import math

import pytest
import torch
import torch.nn.functional as F

from vmunet_monai import ops
from vmunet_monai.layers import SDI, SS2D, ChannelAttention, Mixer, PatchExpand2D, PatchMerging2D, SpatialAttention


def test_patch_merging_swin_order():
    m = PatchMerging2D(2)
    seen = {}
    m.norm = torch.nn.Identity()
    m.reduction = torch.nn.Identity()
    x = torch.randn(1, 4, 6, 2)
    y = m(x)
    assert y.shape == (1, 2, 3, 8)
    for i in range(2):
        for j in range(3):
            want = torch.cat([x[0, 2 * i, 2 * j], x[0, 2 * i + 1, 2 * j], x[0, 2 * i, 2 * j + 1], x[0, 2 * i + 1, 2 * j + 1]])
            seen[(i, j)] = torch.equal(y[0, i, j], want)
    assert all(seen.values())
    with pytest.raises(ValueError, match="even height and width"):
        PatchMerging2D(2)(torch.randn(1, 3, 4, 2))


def test_patch_expand_channel_order_is_p1_p2_c():
    m = PatchExpand2D(in_dim=3, out_dim=2, scale=2)
    m.norm = torch.nn.Identity()
    x = torch.randn(1, 2, 3, 3)
    y = m(x)
    e = m.expand(x)  # (1, 2, 3, 8): channel index = (p1 * 2 + p2) * c_out + c
    assert y.shape == (1, 4, 6, 2)
    for i in range(2):
        for j in range(3):
            for p1 in range(2):
                for p2 in range(2):
                    for c in range(2):
                        assert y[0, 2 * i + p1, 2 * j + p2, c] == e[0, i, j, (p1 * 2 + p2) * 2 + c]


def _official_order_ss2d_scan(layer: SS2D, x: torch.Tensor) -> torch.Tensor:
    """The official computation order: cross-scan first, projections on the scanned sequences."""
    b, di, h, w = x.shape
    n, r = layer.d_state, layer.dt_rank
    xs = ops.cross_scan(x)  # (b, 4, di, L)
    x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, layer.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, layer.dt_projs_weight)
    y = ops.selective_scan_reference(
        xs.reshape(b, -1, h * w), dts.reshape(b, -1, h * w), -torch.exp(layer.A_logs), Bs, Cs, layer.Ds, None,
        layer.dt_projs_bias.reshape(-1), True,
    )
    return ops.cross_merge(y.reshape(b, 4, di, h * w), h, w).reshape(b, di, h, w)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_ss2d_scan_matches_official_order(backend):
    layer = SS2D(d_model=8, d_state=4, scan_backend=backend).double()
    x = torch.randn(2, layer.d_inner, 5, 6, dtype=torch.float64)
    assert torch.allclose(layer.scan(x), _official_order_ss2d_scan(layer, x), atol=1e-10)
    y = layer(torch.randn(2, 5, 6, 8, dtype=torch.float64))
    assert y.shape == (2, 5, 6, 8)


@pytest.mark.parametrize("channels_last", [False, True])
def test_ss2d_pixel_major_projection_changes_the_layout_only(channels_last):
    """x_proj for the triton kernels: each pixel's B and C contiguous and 16-value aligned; the same
    values, and the same gradients, as the official (factors, B, C) rows."""
    torch.manual_seed(0)
    layer = SS2D(d_model=8, d_state=4, scan_backend="torch").double()  # R = 1, 4 directions x (1 + 8) rows
    x0 = torch.randn(2, layer.d_inner, 5, 6, dtype=torch.float64)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    runs = []
    for pixel_major in (False, True):
        x = x0.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        parts = layer._project(x, pixel_major)
        weights = [torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(i))
                   for i, p in enumerate(parts)]
        layer.zero_grad()
        sum((p * wt).sum() for p, wt in zip(parts, weights)).backward()
        runs.append(([p.detach() for p in parts], x.grad, layer.x_proj_weight.grad.clone()))
        if pixel_major:
            for p in parts[1:]:  # B, C: (b, K, N, H, W) with N innermost, 16-value aligned pixel rows
                assert p.stride(2) == 1 and p.stride(4) % 16 == 0 and p.stride(1) % 16 == 0, p.stride()
            # B at the start of each direction's 16-value row, C right after it (N = 4 here)
            assert parts[1].storage_offset() % 16 == 0 and parts[2].storage_offset() == parts[1].storage_offset() + 4
    (p0, dx0, dw0), (p1, dx1, dw1) = runs
    for a, b in zip(p0, p1):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(dx0, dx1, rtol=0, atol=1e-12)
    torch.testing.assert_close(dw0, dw1, rtol=0, atol=1e-12)


def test_pixel_major_layout_only_for_the_triton_kernels(triton_device):
    assert not ops.reads_pixel_major("cpu", "torch") and not ops.reads_pixel_major("cpu", "cpu")
    assert ops.reads_pixel_major(triton_device, "triton")


def test_ss2d_initialisation():
    layer = SS2D(d_model=96, d_state=16)
    di, r = 192, 6
    assert layer.dt_rank == r and layer.d_inner == di
    assert layer.x_proj_weight.shape == (4, r + 32, di)
    assert torch.allclose(layer.A_logs, torch.log(torch.arange(1, 17.0)).expand(4 * di, 16))
    assert torch.equal(layer.Ds, torch.ones(4 * di))
    dt = F.softplus(layer.dt_projs_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert layer.dt_projs_weight.abs().max() <= r**-0.5
    assert layer.x_proj_weight.abs().max() <= 1 / math.sqrt(di)
    assert layer.A_logs._no_weight_decay and layer.Ds._no_weight_decay
    assert [k for k in layer.state_dict()] == [
        "x_proj_weight", "dt_projs_weight", "dt_projs_bias", "A_logs", "Ds", "in_proj.weight", "conv2d.weight",
        "conv2d.bias", "out_norm.weight", "out_norm.bias", "out_proj.weight",
    ]


def test_ss2d_names_wrong_input_and_an_even_kernel():
    layer = SS2D(d_model=8, d_state=4)
    message = r"SS2D\(d_model=8\) takes floating-point \(B, H, W, 8\) channels-last input, got "
    with pytest.raises(ValueError, match=message + r"torch.float32 of shape \(1, 8, 6, 6\)"):
        layer(torch.randn(1, 8, 6, 6))  # channels first
    with pytest.raises(ValueError, match=message + r"torch.int64"):
        layer(torch.ones(1, 6, 6, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"SS2D d_conv=4 must be odd"):
        SS2D(d_model=8, d_conv=4)


def test_mixer_factory():
    assert Mixer["ss2d", 2] is SS2D
    assert Mixer.SS2D == "SS2D"
    with pytest.raises(ValueError, match="spatial_dims=3"):
        Mixer["ss2d", 3]


def test_attention_and_sdi():
    x = torch.randn(2, 32, 8, 8)
    ca, sa = ChannelAttention(32), SpatialAttention()
    assert ca(x).shape == (2, 32, 1, 1) and sa(x).shape == (2, 1, 8, 8)
    assert ca.fc1.weight.shape == (2, 32, 1, 1)
    sdi = SDI(4)
    feats = [torch.randn(1, 4, s, s) for s in (16, 8, 4, 2)]
    out = sdi(feats, feats[1])
    assert out.shape == (1, 4, 8, 8)
    # the Hadamard product: zeroing one conv's output zeroes the result
    torch.nn.init.zeros_(sdi.convs[2].weight)
    torch.nn.init.zeros_(sdi.convs[2].bias)
    assert torch.count_nonzero(sdi(feats, feats[1])) == 0


@pytest.mark.parametrize("args,kw,message", [
    ((8.5,), {}, "SS2D d_model=8.5 must be a whole number"),
    ((0,), {}, "SS2D d_model=0 must be at least 1"),
    ((8,), {"d_state": 2.5}, "SS2D d_state=2.5 must be a whole number"),
    ((8,), {"d_conv": "3"}, "SS2D d_conv='3' must be a whole number"),
    ((8,), {"expand": 0}, "SS2D expand=0 must be a number above 0"),
    ((8,), {"expand": "2"}, "SS2D expand='2' must be a number above 0"),
    ((8,), {"dt_rank": 0}, "SS2D dt_rank=0 must be at least 1"),
    ((8,), {"dropout": 1.5}, "SS2D dropout=1.5: a rate from 0 up to but not including 1"),
    ((8,), {"dropout": -0.1}, "SS2D dropout=-0.1: a rate from 0 up to but not including 1"),
    ((8,), {"dt_min": 0.5, "dt_max": 0.1},
     "SS2D dt_min=0.5 and dt_max=0.1: the initial step sizes need 0 < dt_min <= dt_max"),
    ((8,), {"dt_min": 0.0}, "SS2D dt_min=0.0 must be a number above 0"),
    ((8,), {"recompute": "no"}, "SS2D recompute='no' must be True or False"),
])
def test_ss2d_arguments_are_refused_by_name(args, kw, message):
    with pytest.raises(ValueError) as exc:
        SS2D(*args, **kw)
    assert str(exc.value) == message


def test_ss2d_takes_whole_floats_and_numpy_sizes():
    import numpy as np

    layer = SS2D(8.0, d_state=np.int64(4), dt_min=0.01, dt_max=0.01, dropout=np.float64(0.1), recompute=np.bool_(False))
    assert type(layer.d_model) is int and layer.d_model == 8 and layer.d_state == 4 and layer.d_inner == 16
    assert layer.recompute is False and layer.dropout.p == pytest.approx(0.1)
    assert torch.allclose(F.softplus(layer.dt_projs_bias), torch.full_like(layer.dt_projs_bias, 0.01), rtol=1e-4)


def test_ss2d_refuses_input_of_another_dtype_outside_autocast():
    layer = SS2D(8, d_state=4)
    x = torch.randn(1, 4, 4, 8, dtype=torch.float64)
    with pytest.raises(ValueError) as exc:
        layer(x)
    assert str(exc.value) == ("SS2D(d_model=8) got torch.float64 input but its weights are torch.float32: convert the "
                              "input (x.to(torch.float32)) or the layer (layer.to(torch.float64)), or run it under "
                              "torch.autocast")
    assert torch.allclose(layer.double()(x).float(), layer.float()(x.float()), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts the operands itself
        half = layer(x.to(torch.bfloat16))
        full = layer(x.float())
    assert half.shape == full.shape == (1, 4, 4, 8) and torch.isfinite(half).all()
    assert (half.float() - full.float()).abs().mean() < 0.05 * full.float().abs().mean()


@pytest.mark.parametrize("block", [False, True])
def test_torch_func_transforms_over_ss2d_with_recompute_on(block):
    """vmap and jacrev go through SS2D (and a VSS block) built with the default recompute=True: inside a
    torch.func transform it stores everything (its saved-tensor hooks are not supported there) and scans on
    the torch backend (the compiled kernels have no batching rule); the results are those of plain calls."""
    from vmunet_monai.layers import VSSBlock

    torch.manual_seed(0)
    layer = (VSSBlock(4, 0.0, 2) if block else SS2D(4, d_state=2)).double().train()
    assert getattr(layer, "self_attention", layer).recompute is True
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64)
    batch = torch.stack([x, 2 * x])
    mapped = torch.func.vmap(layer)(batch)
    looped = torch.stack([layer(b) for b in batch])
    assert torch.allclose(mapped, looped, rtol=1e-10, atol=1e-12)
    jac = torch.func.jacrev(layer)(x)
    want = torch.autograd.functional.jacobian(layer, x)  # plain autograd, with recomputation, on the automatic backend
    assert jac.shape == (1, 3, 3, 4, 1, 3, 3, 4) and torch.allclose(jac, want, rtol=1e-9, atol=1e-12)


def test_the_scan_op_itself_runs_on_torch_inside_torch_func_transforms():
    """ops.cross_selective_scan called directly under vmap (the automatic choice, or an explicit compiled backend)
    scans on the torch backend, whose operations the transform batches; the result is that of a plain loop."""
    from vmunet_monai import ops
    from vmunet_monai.ops.dispatch import in_functorch_transform, resolve_backend

    g = torch.Generator().manual_seed(3)
    b, d, h, w, n = 2, 3, 2, 3, 2
    u, delta = torch.randn(b, d, h, w, generator=g), torch.randn(b, 4, d, h, w, generator=g) * 0.5
    A = -torch.rand(4 * d, n, generator=g) - 0.1
    B, C = torch.randn(b, 4, n, h, w, generator=g), torch.randn(b, 4, n, h, w, generator=g)
    seen = []

    def scan(u1, delta1, B1, C1, backend=None):
        seen.append((in_functorch_transform(), resolve_backend("cpu", backend)))
        return ops.cross_selective_scan(u1[None], delta1[None], A, B1[None], C1[None], backend=backend)[0]

    looped = torch.stack([scan(u[i], delta[i], B[i], C[i], "reference") for i in range(b)])
    for backend in (None, "cpu"):
        if backend == "cpu" and not ops.backend_status("cpu").available:
            continue
        mapped = torch.func.vmap(lambda *t: scan(*t, backend=backend))(u, delta, B, C)
        assert torch.allclose(mapped, looped, rtol=1e-5, atol=1e-6), backend
    assert all(b == "torch" for inside, b in seen if inside) and any(inside for inside, _ in seen)
    assert not in_functorch_transform()
