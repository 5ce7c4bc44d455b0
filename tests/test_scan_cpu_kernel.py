"""The compiled CPU scan kernel (backend ``cpu``): equal to the reference, and honest about its build."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmunet_monai import ops
from vmunet_monai.ops import cpu_kernel, selective_scan_reference

REPO = Path(__file__).resolve().parents[1]


def _need_kernel():
    ok, detail, _ = cpu_kernel.status()
    if not ok:
        pytest.skip(f"no working C compiler for the cpu scan kernel here: {detail}")


def make_inputs(batch, dim, length, n, bc, dtype, with_z=True, b_const=False):
    """Fresh random inputs; ``bc`` is ('grouped', G), ('variable',) or ('constant',)."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    def bc_tensor():
        if bc[0] == "grouped":
            return r(batch, bc[1], n, length)
        if bc[0] == "variable":
            return r(batch, n, length)
        return r(dim, n)

    return dict(
        u=r(batch, dim, length),
        delta=r(batch, dim, length, scale=0.5),
        A=(-torch.rand(dim, n, generator=g, dtype=torch.float64) * 3 - 0.05).to(dtype).requires_grad_(),
        B=r(dim, n) if b_const else bc_tensor(),
        C=bc_tensor(),
        D=r(dim),
        z=r(batch, dim, length) if with_z else None,
        delta_bias=r(dim, scale=0.3),
    )


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def outputs_and_grads(inputs, fn, softplus, last_state):
    out = fn(**inputs, delta_softplus=softplus, return_last_state=last_state)
    y, h = out if last_state else (out, None)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y.dtype)
    loss = (y * gy).sum()
    if h is not None:  # the last state gets a gradient of its own
        loss = loss + (h * torch.linspace(-1, 2, h.numel(), dtype=h.dtype).reshape(h.shape)).sum()
    names = [k for k, v in inputs.items() if v is not None]
    grads = torch.autograd.grad(loss, [inputs[k] for k in names])
    return y, h, dict(zip(names, grads))


def check_against_reference(inputs, softplus=True, last_state=False, tol=1e-10):
    y_ref, h_ref, g_ref = outputs_and_grads(inputs, selective_scan_reference, softplus, last_state)
    y, h, g = outputs_and_grads(inputs, cpu_kernel.selective_scan, softplus, last_state)
    assert y.dtype == inputs["u"].dtype and y.shape == y_ref.shape
    assert rel_err(y, y_ref) <= tol
    if last_state:
        assert h.shape == h_ref.shape and rel_err(h, h_ref) <= tol
    for k in g_ref:
        assert g[k].dtype == inputs[k].dtype and g[k].shape == inputs[k].shape, k
        assert rel_err(g[k], g_ref[k]) <= tol, (k, rel_err(g[k], g_ref[k]))


@pytest.mark.parametrize("bc", [("grouped", 1), ("grouped", 2), ("grouped", 4), ("variable",), ("constant",)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_matches_reference_every_bc_layout(bc, dtype, tol):
    _need_kernel()
    # 40 channels: 4 groups of 10, so tiles of 16 channels must stop at group borders
    check_against_reference(make_inputs(2, 40, 70, 4, bc, dtype), tol=tol)


@pytest.mark.parametrize("length", [1, 7, 33])
@pytest.mark.parametrize("softplus", [True, False])
def test_odd_lengths_last_state_softplus(length, softplus):
    _need_kernel()
    inputs = make_inputs(2, 12, length, 3, ("grouped", 2), torch.float64, with_z=length != 7)
    check_against_reference(inputs, softplus=softplus, last_state=True)


def test_many_chunks_large_state_mixed_layouts():
    """N = 40 makes the chunk 25 steps, so 203 steps cross 9 checkpoints; B constant with C grouped."""
    _need_kernel()
    check_against_reference(make_inputs(1, 20, 203, 40, ("grouped", 2), torch.float64, b_const=True),
                            last_state=True)


def test_b_and_c_with_different_group_counts():
    _need_kernel()
    inputs = make_inputs(2, 24, 19, 3, ("grouped", 4), torch.float64)
    inputs["B"] = torch.randn(2, 2, 3, 19, dtype=torch.float64, requires_grad=True)  # 2 groups of 12 for B
    check_against_reference(inputs, last_state=True)


def test_bad_shapes_raise_before_the_kernel_reads_memory():
    _need_kernel()
    x = {k: (v.detach() if v is not None else None) for k, v in
         make_inputs(1, 10, 9, 2, ("grouped", 2), torch.float64).items()}
    with pytest.raises(ValueError, match="G dividing"):
        cpu_kernel.selective_scan(**dict(x, B=torch.randn(1, 3, 2, 9, dtype=torch.float64)))
    with pytest.raises(ValueError, match="delta must"):
        cpu_kernel.cross_selective_scan(torch.randn(1, 2, 3, 3), torch.randn(1, 4, 2, 3, 4), -torch.ones(8, 2),
                                        torch.randn(1, 4, 2, 3, 3), torch.randn(1, 4, 2, 3, 3))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads):
    _need_kernel()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # batch 3 x 5 tiles: several threads add into the same grouped B/C rows and per-channel grads
        check_against_reference(make_inputs(3, 72, 45, 5, ("grouped", 2), torch.float64), last_state=True)
    finally:
        torch.set_num_threads(before)


def test_low_precision_inputs_compute_in_float32():
    _need_kernel()
    x32 = {k: (v.detach() if v is not None else None) for k, v in
           make_inputs(2, 16, 30, 4, ("grouped", 2), torch.float32).items()}
    want = selective_scan_reference(**x32, delta_softplus=True)
    for dtype in (torch.bfloat16, torch.float16):
        xl = {k: (v.to(dtype).requires_grad_() if v is not None else None) for k, v in x32.items()}
        y = cpu_kernel.selective_scan(**xl, delta_softplus=True)
        assert y.dtype == dtype
        assert rel_err(y, want) < 3e-2
        grads = torch.autograd.grad(y.float().sum(), [xl["u"], xl["A"], xl["B"]])
        assert all(gr.dtype == dtype and torch.isfinite(gr.float()).all() for gr in grads)


def test_dispatcher_picks_cpu_kernel(monkeypatch):
    _need_kernel()
    monkeypatch.delenv("VMUNET_SCAN_BACKEND", raising=False)
    assert ops.backend_status("cpu").available
    assert ops.resolve_backend("cpu") == "cpu"
    assert ops.resolve_backend("cpu", "cpu") == "cpu"
    x = {k: (v.detach() if v is not None else None) for k, v in
         make_inputs(1, 8, 9, 2, ("variable",), torch.float64).items()}
    assert torch.allclose(ops.selective_scan(**x), selective_scan_reference(**x), rtol=0, atol=1e-12)


def test_fresh_cache_builds_a_working_library(tmp_path, monkeypatch):
    _need_kernel()
    monkeypatch.setenv("VMUNET_CPU_KERNEL_CACHE", str(tmp_path))
    ok, detail, _ = cpu_kernel.status()  # builds here, then checks a tiny scan against the reference
    assert ok, detail
    (built,) = tmp_path.glob("selective_scan_cpu-*.so")
    assert str(built) in detail and "built" in detail
    assert not list(tmp_path.glob(".*.so"))  # the temporary file was renamed into place
    check_against_reference(make_inputs(1, 16, 20, 3, ("grouped", 2), torch.float64))
    again, detail = cpu_kernel.build_library()
    assert again == built and detail.startswith("cached")


def test_concurrent_builds_compile_once(tmp_path):
    """Two processes starting on an empty cache at once: one compiles, the other waits and loads its result.

    The compiler is a stand-in that logs each call, sleeps, then copies the library built for this
    session, so the test checks the lock and the atomic rename without paying for two compilations.
    """
    _need_kernel()
    real, _ = cpu_kernel.build_library()
    log = tmp_path / "calls.log"
    fake = tmp_path / "slowcc"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then echo "slowcc 1.0"; exit 0; fi\n'
        'out=""; prev=""\n'
        'for arg in "$@"; do if [ "$prev" = "-o" ]; then out="$arg"; fi; prev="$arg"; done\n'
        f'echo "$out" >> "{log}"\n'
        "sleep 1\n"
        f'cp "{real}" "$out"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    cache = tmp_path / "cache"
    code = "from vmunet_monai.ops import cpu_kernel; ok, d, _ = cpu_kernel.status(); print(d); assert ok, d"
    env = dict(os.environ, VMUNET_CPU_KERNEL_CACHE=str(cache), CC=str(fake), PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert len(log.read_text().splitlines()) == 1  # the second process found the finished library
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock", ".so"]
    details = [out.strip().splitlines()[-1] for out, _ in results]
    assert sorted("(cached" in d for d in details) == [False, True]
    assert sorted("(built" in d for d in details) == [False, True]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("b,di,h,w", [(2, 3, 4, 5), (1, 18, 7, 3), (2, 17, 1, 6)])
def test_fused_cross_scan_matches_composed_reference(dtype, tol, b, di, h, w):
    """The fused SS2D scan (four orders walked by index arithmetic) equals cross-scan + reference + merge."""
    _need_kernel()
    from vmunet_monai.ops.dispatch import cross_selective_scan_composed

    n = 4
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    x = dict(u=r(b, di, h, w), delta=r(b, 4, di, h, w, scale=0.5),
             A=(-torch.rand(4 * di, n, generator=g, dtype=torch.float64) - 0.2).to(dtype).requires_grad_(),
             B=r(b, 4, n, h, w), C=r(b, 4, n, h, w), D=r(4 * di), delta_bias=r(4 * di, scale=0.2))
    want = cross_selective_scan_composed(**x, delta_softplus=True, scan=selective_scan_reference)
    got = ops.cross_selective_scan(**x, delta_softplus=True, backend="cpu")  # the dispatcher takes the fused path
    assert got.shape == want.shape and got.dtype == dtype
    assert rel_err(got, want) <= tol
    gy = torch.randn(want.shape, generator=g, dtype=torch.float64).to(dtype)
    g_want = torch.autograd.grad((want * gy).sum(), list(x.values()))
    g_got = torch.autograd.grad((got * gy).sum(), list(x.values()))
    for name, a, e in zip(x, g_got, g_want):
        assert a.shape == e.shape and rel_err(a, e) <= tol, name


def test_fused_cross_scan_low_precision_returns_float32():
    _need_kernel()
    b, di, h, w, n = 1, 8, 4, 4, 4
    x = dict(u=torch.randn(b, di, h, w), delta=torch.randn(b, 4, di, h, w) * 0.5, A=-torch.rand(4 * di, n) - 0.2,
             B=torch.randn(b, 4, n, h, w), C=torch.randn(b, 4, n, h, w), D=torch.randn(4 * di),
             delta_bias=torch.randn(4 * di) * 0.2)
    want = cpu_kernel.cross_selective_scan(**x)
    half = dict(x, u=x["u"].bfloat16(), delta=x["delta"].bfloat16(), B=x["B"].bfloat16(), C=x["C"].bfloat16())
    got = ops.cross_selective_scan(**half, backend="cpu")
    assert got.dtype == torch.float32
    assert rel_err(got, want) < 3e-2


def test_missing_compiler_is_reported_not_raised(tmp_path, monkeypatch):
    monkeypatch.setenv("VMUNET_CPU_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    ok, detail, fix = cpu_kernel.status()
    assert ok is False
    assert "/nonexistent/cc" in detail
    assert "CC" in fix and "gcc" in fix
    assert not list(tmp_path.glob("*.so"))


def test_failing_compile_reports_compiler_message(tmp_path, monkeypatch):
    fake = tmp_path / "fakecc"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "fakecc 1.0"; exit 0; fi\n'
                    'echo "fakecc: error: this compiler refuses to work" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("VMUNET_CPU_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(fake))
    ok, detail, fix = cpu_kernel.status()
    assert ok is False
    assert "this compiler refuses to work" in detail and "fakecc" in detail
    assert fix
    assert not list((tmp_path / "cache").glob("*.so*"))


def test_an_unwritable_kernel_cache_gets_its_own_fix(tmp_path, monkeypatch):
    """A cache path that cannot be a folder (a file stands there): the fix names the cache, not a missing compiler."""
    import shutil

    from vmunet_monai.ops import cpu_kernel

    if cpu_kernel._compiler() is None or shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler here: the compiler fix is the right one")
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    monkeypatch.setenv(cpu_kernel.CACHE_ENV, str(blocked / "cache"))
    available, detail, fix = cpu_kernel.status()
    assert not available and detail.startswith("cannot create the kernel cache directory")
    assert fix.startswith(f"set ${cpu_kernel.CACHE_ENV} to a folder you can write") and "compiler" not in fix


def test_a_second_derivative_through_the_kernel_is_refused_by_name():
    """The kernel's backward runs outside autograd: a gradient penalty through it (create_graph=True, then
    backward) raises naming the backend, where it would otherwise return gradients missing part of the second
    derivative; first-order gradients taken with create_graph=True still equal the reference."""
    from vmunet_monai.layers import SS2D

    _need_kernel()
    layer = SS2D(4, d_state=2).double()
    x = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    layer.scan_backend = "cpu"
    g, = torch.autograd.grad((layer(x) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="scan backend 'cpu' computes gradients outside autograd.*backend='torch'"):
        g.pow(2).sum().backward()
    layer.scan_backend = "reference"
    want, = torch.autograd.grad((layer(x) ** 2).sum(), x)
    assert torch.allclose(g, want, rtol=1e-9, atol=1e-12)
    layer.zero_grad()
    g, = torch.autograd.grad((layer(x) ** 2).sum(), x, create_graph=True)
    g.pow(2).sum().backward()  # the reference has a second derivative
    assert layer.in_proj.weight.grad.abs().sum() > 0


def test_the_self_check_passes_inside_torch_func_transforms():
    """The kernel's self-check may run at the first scan of a process, whatever transform is active then: it
    draws no random numbers (vmap refuses them by default) and no transform or autocast applies to it."""
    lib, detail = cpu_kernel._library()
    assert lib is not None, detail

    def checked(t):
        assert cpu_kernel._self_check(lib) == ""
        return t * 2

    ones = torch.ones(2, 3)
    assert torch.equal(torch.func.vmap(checked)(ones), 2 * ones)
    assert torch.equal(torch.func.grad(lambda t: checked(t).sum())(ones), torch.full_like(ones, 2))
    assert torch.equal(torch.func.jvp(checked, (ones,), (ones,))[1], 2 * ones)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_kernel._self_check(lib) == ""


FIRST_SCAN_IN_VMAP = """
import json, sys
import torch
torch.set_num_threads(1)
from vmunet_monai import ops
from vmunet_monai.layers import SS2D
torch.manual_seed(0)
x = torch.randn(1, 3, 3, 4)
batch = torch.stack([x, 2 * x])
if sys.argv[1] == "status":  # the kernel is loaded and checked inside vmap
    torch.func.vmap(lambda t: t * ops.backend_status("cpu").available)(batch)
layer = SS2D(4, recompute=False).eval()
with torch.no_grad():
    mapped = torch.func.vmap(layer)(batch)
    looped = torch.stack([layer(b) for b in batch])
status = ops.backend_status("cpu")
print(json.dumps({"available": status.available, "detail": status.detail, "fix": status.fix,
                  "error": (mapped - looped).abs().max().item()}))
"""


@pytest.mark.parametrize("first", ["ss2d", "status"])
def test_a_first_scan_inside_vmap_keeps_the_kernel_available(first):
    """In a fresh process whose first scan (or first kernel check) runs inside torch.func.vmap, the kernel stays
    available for the rest of the process, and vmap over SS2D gives what a loop over the batch gives."""
    import json

    ok, detail, _ = cpu_kernel.status()  # built here first: the child finds it in the same cache
    assert ok, detail
    env = dict(os.environ, VMUNET_CPU_KERNEL_CACHE=str(cpu_kernel.cache_dir()), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", FIRST_SCAN_IN_VMAP, first], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["available"] is True and result["fix"] == "", result
    assert result["error"] < 1e-6, result


def test_a_program_exported_with_the_first_scan_of_the_process_loads(tmp_path, monkeypatch):
    """When torch.export traces the process's first scan, the kernel's self-check runs inside the trace: nothing
    of it may enter the program (a no_grad region did, and the saved program failed its check when loaded)."""
    from vmunet_monai.networks import VMUNet
    from vmunet_monai.ops import dispatch

    _need_kernel()
    monkeypatch.setattr(cpu_kernel, "_LIBRARIES", {})  # as in a fresh process: loaded and checked at first use
    dispatch._load.cache_clear()
    try:
        net = VMUNet(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4).eval()
        x = torch.rand(1, 3, 32, 32)
        program = torch.export.export(net, (x,))
        torch.export.save(program, tmp_path / "net.pt2")
        loaded = torch.export.load(tmp_path / "net.pt2")
        assert cpu_kernel._LIBRARIES  # the kernel was loaded (and checked) during the trace
        with torch.no_grad():
            assert torch.allclose(loaded.module()(x), net(x), atol=1e-5)
    finally:
        dispatch._load.cache_clear()


def test_a_fall_back_to_the_slow_scan_is_said_once(tmp_path):
    """Without a C compiler the automatic choice runs the pure-PyTorch scan, about three times slower: a training
    said nothing of why; a warning now names the missing kernel and the fix, once."""
    code = ("import logging, torch; logging.basicConfig(); from vmunet_monai.ops.dispatch import resolve_backend; "
            "print(resolve_backend('cpu'), resolve_backend('cpu'))")
    env = dict(os.environ, VMUNET_CPU_KERNEL_CACHE=str(tmp_path / "cache"), CC="/nonexistent/cc",
               PYTHONPATH=str(REPO))
    env.pop("VMUNET_SCAN_BACKEND", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["torch", "torch"]
    assert done.stderr.count("scan backend 'cpu', the fast one for cpu tensors, is not available here (") == 1
    assert "/nonexistent/cc" in done.stderr and "Fix: " in done.stderr
    env["CC"] = os.environ.get("CC", "")  # a compiler (and the kernel cache the other tests built): no word
    env.pop("VMUNET_CPU_KERNEL_CACHE")
    if "VMUNET_CPU_KERNEL_CACHE" in os.environ:
        env["VMUNET_CPU_KERNEL_CACHE"] = os.environ["VMUNET_CPU_KERNEL_CACHE"]
    if cpu_kernel.status()[0]:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.stdout.split() == ["cpu", "cpu"] and "not available here" not in done.stderr
