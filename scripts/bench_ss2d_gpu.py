"""Benchmark of SS2D's fused stage-1 scan (cross-scan + selective scan + merge) on one CUDA GPU.

Shape: VM-UNet's first stage at batch 32, 256x256 input: u (32, 192, 64, 64), four directions,
N = 16, i.e. the official (32, 768, 4096) scan. Everything is measured in this one run:

* the card's copy bandwidth (``clone`` of a 2 GiB tensor, bytes read + written / time);
* the triton backend's fused forward, for a few tile configurations, and forward + backward, with
  the chunk states kept for the backward and rebuilt in it (``KernelConfig.keep_states``), and the
  two-pass segmented forward (``KernelConfig.segments``) at batch 1 and at the full batch (and
  the forward launched once per direction, ``KernelConfig(one_launch=False)``), the
  forward on channels-last maps, B and C read per pixel (as SS2D gives them to these kernels) and
  along the map, the step loop unrolled (default) and rolled, and the step sizes as rank-6 factors projected inside the kernels,
  and forward + backward with ``KernelConfig(deterministic=True)`` (no atomics), run twice to check
  that its gradients repeat bit for bit;
* forward + backward with the step-loop backward (``KernelConfig(bwd_stepwise=True)``) for 32, 16
  and 8 channels per program, on row-major and channels-last maps and deterministic, against the
  associative-scan backward, with the gradients' agreement between the two, and each backward's
  time alone (forward + backward less a forward without autograd) with the cache traffic of the step
  loop's scratch per second (``step_scratch_bytes``: more than L2 can carry means the scratch, not
  the instructions, sets its time);
* bandwidth achieved = bytes that must move (read u, delta, B, C once, write y once) / time;
* the composed path (cross_scan copies + generic scan + merge) on the ``torch`` backend and, when
  its compiled kernel loads, on ``mamba_ssm``;
* agreement of the fused result and gradients with the composed torch path in float32.

Usage: ``python scripts/bench_ss2d_gpu.py [--batch 32] [--sweep | --quick] [--dry-run] [--layout channels_last]
[--out results.json]``.
Prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=192, help="Di, channels of the map (4*Di scanned rows)")
    p.add_argument("--size", type=int, default=64, help="H = W of the map")
    p.add_argument("--state", type=int, default=16, help="N")
    p.add_argument("--sweep", action="store_true", help="time several tile configurations")
    p.add_argument("--quick", action="store_true",
                   help="only what decides the defaults (about a third of the time): the default kernels in fp32 and "
                        "bf16, the segmented forward at batch 1, the step-loop backward (32 channels) against the "
                        "associative scans, and mamba-ssm's kernel")
    p.add_argument("--dry-run", action="store_true",
                   help="check the script, time nothing: every step it would take on a GPU, on the CPU through "
                        "Triton's interpreter at a tiny shape (batch 1, 8 channels, 3x3 map, N = 4; the kernels' "
                        "agreement over several chunks is the tests' part)")
    p.add_argument("--out", default="", help="write all numbers to this JSON file")
    p.add_argument("--config-from", default="", help="use the best tiles recorded in this JSON file")
    p.add_argument("--layout", default="row_major", choices=["row_major", "channels_last"],
                   help="memory layout of every input map (channels_last: as SS2D.channels_last_scan feeds them)")
    return p.parse_args()


LAYOUT = {"name": "row_major"}  # set from --layout in main()
DEVICE = "cuda"  # "cpu" for --dry-run (set in main())


def _cuda(call, default=0):
    """``torch.cuda.<call>()`` on the GPU; ``default`` in a --dry-run on the CPU (no device to ask)."""
    return getattr(torch.cuda, call)() if DEVICE == "cuda" else default


def make_inputs(batch, di, size, n, dtype, requires_grad=False, seed=0, layout=None, bc="pixel"):
    """Stage-1 inputs; channels-last layout: u (B, H, W, Di) and delta (B, H, W, 4, Di) in memory.

    ``bc="pixel"``: B and C as SS2D hands them to the triton kernels, views of one (B, H, W, 4, 48)
    buffer, each pixel's N values contiguous and aligned; ``"map"``: (B, 4, N, H, W) rows along the
    map (the layout SS2D gives the other backends, read with scalar loads)."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=DEVICE) * scale).to(dtype)

    x = dict(
        u=r(batch, di, size, size),
        delta=r(batch, 4, di, size, size, scale=0.5) - 1.0,
        A=-torch.exp(torch.log(torch.arange(1, n + 1, device=DEVICE, dtype=torch.float32)).repeat(4 * di, 1)),
        B=r(batch, 4, n, size, size),
        C=r(batch, 4, n, size, size),
        D=torch.ones(4 * di, device=DEVICE),
        delta_bias=torch.rand(4 * di, generator=g, device=DEVICE) * 0.1,
    )
    if (layout or LAYOUT["name"]) == "channels_last":
        x["u"] = x["u"].contiguous(memory_format=torch.channels_last)
        x["delta"] = x["delta"].permute(0, 3, 4, 1, 2).contiguous().permute(0, 3, 4, 1, 2)
    if bc == "pixel":  # B at rows 0..N-1 and C at N..2N-1 of each pixel's 48 (padded) rows per direction
        rows = torch.zeros(batch, size, size, 4, 48, device=DEVICE, dtype=dtype)
        rows[..., :n] = x["B"].permute(0, 3, 4, 1, 2)
        rows[..., n:2 * n] = x["C"].permute(0, 3, 4, 1, 2)
        x["B"], x["C"] = (rows[..., i:i + n].permute(0, 3, 4, 1, 2).detach() for i in (0, n))
    if requires_grad:
        for v in x.values():
            v.requires_grad_()
    return x


def bench(fn, warmup=25, rep=100):
    return timed(fn, warmup, rep)[1]


def timed(fn, warmup=25, rep=100):
    """``fn()``'s result and its median time in ms over ``rep`` calls after ``warmup``; in a --dry-run the time
    of the one call that gave the result (the interpreter is slow: each call counts)."""
    if DEVICE != "cuda":  # --dry-run: one call, timed for the table's sake only
        start = time.perf_counter()
        value = fn()
        return value, (time.perf_counter() - start) * 1e3
    import triton.testing

    value = fn()
    return value, triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def warm(fn):
    """Compile (and load) what ``fn`` launches before it is measured; nothing in a --dry-run, whose one timed
    call runs it anyway."""
    if DEVICE == "cuda":
        fn()
        torch.cuda.synchronize()


def copy_bandwidth():
    x = torch.randn(2**28 if DEVICE == "cuda" else 2**16, device=DEVICE)  # 1 GiB of float32 on a GPU
    ms = bench(lambda: x.clone())
    return 2 * x.numel() * 4 / (ms * 1e-3)


def moved_bytes(batch, di, size, n, in_bytes):
    L = size * size
    return (batch * di * L + batch * 4 * di * L + 2 * batch * 4 * n * L) * in_bytes + batch * di * L * 4


def step_scratch_bytes(batch, di, size, n):
    """Scratch traffic of the step-loop backward: per step each channel-thread writes its n states,
    delta and the softplus slope (pass 1), reads them and writes its n adjoints (pass 2), and pass 3
    reads the states, the adjoints and delta, 5 n + 5 float32 values, for 4 directions of di channels."""
    return 4 * (5 * n + 5) * batch * 4 * di * size * size


def raw_mamba_scan():
    """selective_scan_cuda called directly, for when the mamba_ssm package itself does not import."""
    try:
        import selective_scan_cuda
    except Exception:
        return None

    class Scan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, bias):
            out, x, *_ = selective_scan_cuda.fwd(u, delta, A, B, C, D, None, bias, True)
            ctx.save_for_backward(u, delta, A, B, C, D, bias, x)
            return out

        @staticmethod
        def backward(ctx, dout):
            u, delta, A, B, C, D, bias, x = ctx.saved_tensors
            grads = selective_scan_cuda.bwd(u, delta, A, B, C, D, None, bias, dout.contiguous(), x, None, None,
                                            True, False)
            return tuple(grads[:7])

    def scan(u, delta, A, B, C, D, z, bias, softplus, last):
        return Scan.apply(u.contiguous(), delta.contiguous(), A.float().contiguous(), B.contiguous(),
                          C.contiguous(), D.float().contiguous(), bias.float().contiguous())

    return scan


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    global DEVICE
    a = _args()
    if a.quick and a.sweep:
        sys.exit("bench_ss2d_gpu.py: --quick and --sweep exclude each other")
    LAYOUT["name"] = a.layout
    if a.dry_run:
        import os

        if "vmunet_monai.ops.triton_scan" in sys.modules:
            sys.exit("bench_ss2d_gpu.py --dry-run must set TRITON_INTERPRET before the kernels are imported")
        os.environ["TRITON_INTERPRET"] = "1"
        DEVICE = "cpu"
        a.batch, a.dim, a.size, a.state = 1, 8, 3, 4
    elif not torch.cuda.is_available():
        sys.exit("bench_ss2d_gpu.py needs a CUDA device (--dry-run checks the script on the CPU)")
    from vmunet_monai.ops import dispatch
    from vmunet_monai.ops import triton_scan as ts

    dev = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU, Triton interpreter (--dry-run, no timings)"
    res = {"device": dev, "torch": torch.__version__, "shape": [a.batch, a.dim, a.size, a.size, a.state],
           "layout": a.layout}
    import triton

    res["triton"] = triton.__version__
    bw = copy_bandwidth()
    res["copy_GBps"] = bw / 1e9
    print(f"{dev}: copy bandwidth {bw / 1e9:.0f} GB/s (read + write)", flush=True)
    lines = []

    def fused(x):
        return ts.cross_selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], True)

    raw = raw_mamba_scan()

    def composed(x, backend):
        scan = raw if backend == "mamba_ssm_raw" else dispatch._module(backend).selective_scan
        return dispatch.cross_selective_scan_composed(
            x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["delta_bias"], True, scan=scan)

    # 1. correctness of the fused kernel against the composed torch path, float32
    x = make_inputs(a.batch, a.dim, a.size, a.state, torch.float32)
    y = fused(x)
    y_ref = composed(x, "torch")
    res["fwd_rel_err_vs_torch"] = rel(y, y_ref)
    del y_ref
    _cuda("empty_cache")
    xb = make_inputs(2, a.dim, a.size, a.state, torch.float32, requires_grad=True, seed=1)
    gy = torch.randn(2, a.dim, a.size, a.size, device=DEVICE)
    g1 = torch.autograd.grad((fused(xb) * gy).sum(), list(xb.values()))
    g2 = torch.autograd.grad((composed(xb, "torch") * gy).sum(), list(xb.values()))
    res["grad_rel_err_vs_torch"] = {k: rel(p, q) for k, p, q in zip(xb, g1, g2)}
    print("fused vs composed torch (fp32): fwd", f"{res['fwd_rel_err_vs_torch']:.2e}", "grads",
          {k: f"{v:.1e}" for k, v in res["grad_rel_err_vs_torch"].items()}, flush=True)
    del xb, g1, g2
    _cuda("empty_cache")

    # 2. forward timings, tile sweep
    configs = [ts.KernelConfig()]
    if a.config_from:
        with open(a.config_from) as f:
            configs = [eval(json.load(f)["best_config"], {"KernelConfig": ts.KernelConfig})]
    if a.sweep:
        configs = [ts.KernelConfig(bd, 16, w) for bd, w in [(32, 1), (64, 2), (128, 4), (16, 1), (8, 1)]]
        configs.append(ts.KernelConfig(4, 16, 2, stepwise=False))
    best = None
    res["fwd_sweep"] = []
    for cfg in configs:
        ts.kernel_config(cfg)
        t0 = time.time()
        try:
            warm(lambda: fused(x))
            ms = bench(lambda: fused(x))
        except Exception as exc:  # a tile that does not compile is reported and skipped
            print(f"  {cfg}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            continue
        res["fwd_sweep"].append({"config": repr(cfg), "ms": ms, "compile_s": time.time() - t0})
        print(f"  fwd {cfg}: {ms:.3f} ms", flush=True)
        if best is None or ms < best[1]:
            best = (cfg, ms)
    ts.kernel_config(best[0])
    if a.sweep:  # backward tiles, timed as forward + backward
        xg = make_inputs(a.batch, a.dim, a.size, a.state, torch.float32, requires_grad=True)
        gy = torch.randn(a.batch, a.dim, a.size, a.size, device=DEVICE)
        bwd_best = None
        # (4, 4): 168 registers, not 255 (kernels); a register cap lets more programs share an SM
        # (168: 6 instead of 4, 128: 8) at the price of the spills `kernels --config bwd_max_registers=N` shows
        for bbd, bw_, cap in [(4, 2, None), (4, 4, None), (2, 1, None), (8, 4, None), (4, 1, None), (4, 2, 168),
                              (4, 2, 128), (4, 4, 128)]:
            cfg = ts.KernelConfig(best[0].block_d, 16, best[0].num_warps, bbd, bw_, best[0].stepwise,
                                  bwd_max_registers=cap)
            ts.kernel_config(cfg)
            try:
                ms = bench(lambda: torch.autograd.grad((fused(xg) * gy).sum(), list(xg.values())), warmup=3, rep=15)
            except Exception as exc:
                print(f"  {cfg}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            print(f"  fwd+bwd {cfg}: {ms:.3f} ms", flush=True)
            if bwd_best is None or ms < bwd_best[1]:
                bwd_best = (cfg, ms)
        best = (bwd_best[0], best[1])
        ts.kernel_config(best[0])
        xg = None
    res["best_config"] = repr(best[0])

    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        x = make_inputs(a.batch, a.dim, a.size, a.state, dtype)
        ms = bench(lambda: fused(x))
        nbytes = moved_bytes(a.batch, a.dim, a.size, a.state, x["u"].element_size())
        gbps = nbytes / (ms * 1e-3) / 1e9
        res[f"fused_fwd_{name}"] = {"ms": ms, "GBps": gbps, "pct_copy": 100 * gbps * 1e9 / bw, "bytes": nbytes}
        lines.append((f"triton fused fwd {name}", ms, f"{gbps:.0f} GB/s = {100 * gbps * 1e9 / bw:.0f}% of copy"))
        xg = make_inputs(a.batch, a.dim, a.size, a.state, dtype, requires_grad=True)
        gy = torch.randn(a.batch, a.dim, a.size, a.size, device=DEVICE)

        def fwd_bwd():
            return torch.autograd.grad((fused(xg) * gy).sum(), list(xg.values()))

        warm(fwd_bwd)
        _cuda("reset_peak_memory_stats")
        base = _cuda("memory_allocated")
        ms_fb = bench(fwd_bwd, warmup=5, rep=30)
        peak = (_cuda("max_memory_allocated") - base) / 2**30
        res[f"fused_fwd_bwd_{name}"] = {"ms": ms_fb, "extra_peak_GiB": peak}
        lines.append((f"triton fused fwd+bwd {name}", ms_fb, f"+{peak:.2f} GiB peak over inputs"))
        x = xg = None
        _cuda("empty_cache")

    # the two-pass segmented forward (KernelConfig.segments) at batch 1 and at the full batch
    res["segments_sweep"] = []
    for batch in sorted({1, a.batch}):
        xs_ = make_inputs(batch, a.dim, a.size, a.state, torch.float32)
        choices = ((1, False), (1, True), (4, True), (8, True), (16, True), (32, True), (0, True))
        if a.quick:
            choices = ((1, True), (0, True))
        elif a.dry_run:  # each kind of choice once: the interpreter takes seconds per run
            choices = ((1, False), (4, True), (0, True))
        for segs, one in choices:  # 0: auto
            ts.kernel_config(best[0].replace(segments=segs, one_launch=one))
            try:
                ms = bench(lambda: fused(xs_))
            except Exception as exc:
                print(f"  segments={segs}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            res["segments_sweep"].append({"batch": batch, "segments": segs, "one_launch": one, "ms": ms})
            lines.append((f"triton fwd float32 batch {batch} segments={segs or 'auto'}"
                          + ("" if one else ", one launch per direction"), ms, ""))
        xs_ = None  # free it before the next batch size
    ts.kernel_config(best[0])

    if not a.quick:
        section("options", res, lambda: _options(a, res, lines, fused, best))

    # the step-loop backward (KernelConfig(bwd_stepwise=True)) against the associative-scan backward
    section("bwd_steps", res, lambda: _bwd_steps(a, res, lines, fused, best))

    # 3. the composed paths, with B and C as SS2D gives them to those backends
    section("composed", res, lambda: _composed(a, res, lines, fused, composed, raw))
    ts.kernel_config(best[0])

    print(f"\n{dev}, torch {torch.__version__}, triton {triton.__version__}; stage-1 SS2D scan "
          f"{a.batch}x{a.dim}x{a.size}x{a.size}, N={a.state}; copy bandwidth {bw / 1e9:.0f} GB/s; "
          f"tiles {best[0]}" + (" (--quick)" if a.quick else ""))
    for label, ms, note in lines:
        print(f"  {label:36s} {ms:9.3f} ms   {note}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1, default=str)


def section(name, res, fn):
    """Run one part of the measurement; if it fails, record and print its error and go on, so that one option
    that does not compile or run on this GPU does not cost the numbers of the others."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        from vmunet_monai.validation import error_summary

        error = error_summary(exc)
        res.setdefault("errors", {})[name] = error
        print(f"  {name}: failed, {error}; going on", flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


def _options(a, res, lines, fused, best):
    """Timings of the options beside the defaults: B and C along the map, channels-last maps, the step
    loop rolled, low-rank step sizes, keep_states, and the deterministic kernels."""
    from vmunet_monai.ops import triton_scan as ts

    # the fused forward on other input layouts: B and C rows along the map (as before SS2D gave these
    # kernels each pixel's B and C together: scalar loads), and channels-last maps
    # (SS2D.channels_last_scan: channel loads are contiguous)
    for key, label, kwargs in (("bc_map", "B and C along the map (scalar loads)", dict(bc="map")),
                               ("channels_last", "channels-last", dict(layout="channels_last"))):
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).replace("torch.", "")
            xv = make_inputs(a.batch, a.dim, a.size, a.state, dtype, **kwargs)
            ms = bench(lambda: fused(xv))
            res[f"fused_fwd_{key}_{name}"] = ms
            lines.append((f"triton fused fwd {name}, {label}", ms,
                          f"--layout {a.layout}, B and C per pixel: {res[f'fused_fwd_{name}']['ms']:.3f} ms"))
            xv = None

    # the step loop rolled (KernelConfig(unroll=1)) against the default two steps per iteration
    x1 = make_inputs(a.batch, a.dim, a.size, a.state, torch.float32)
    ts.kernel_config(best[0].replace(unroll=1))
    ms = bench(lambda: fused(x1))
    ts.kernel_config(best[0])
    res["fused_fwd_unroll1_float32"] = ms
    lines.append(("triton fused fwd float32, step loop rolled (unroll=1)", ms,
                  f"unroll={best[0].unroll}: {res['fused_fwd_float32']['ms']:.3f} ms"))
    x1 = None

    # step sizes as rank-6 factors projected inside the kernels (SS2D.fused_dt_proj), against the
    # full-rank path including the projection it needs (a matmul before, its gradients after)
    rank = 6
    xl = make_inputs(a.batch, a.dim, a.size, a.state, torch.float32, requires_grad=True)
    fac = (torch.randn(a.batch, 4, rank, a.size, a.size, device=DEVICE) * 0.3).requires_grad_()
    wdt = (torch.randn(4, a.dim, rank, device=DEVICE) * 0.3).requires_grad_()
    gy = torch.randn(a.batch, a.dim, a.size, a.size, device=DEVICE)

    def lowrank():
        return ts.cross_selective_scan(xl["u"], fac, xl["A"], xl["B"], xl["C"], xl["D"], xl["delta_bias"], True,
                                       dt_weight=wdt)

    def fullrank():
        delta = torch.matmul(wdt, fac.flatten(3)).unflatten(3, (a.size, a.size))
        return ts.cross_selective_scan(xl["u"], delta, xl["A"], xl["B"], xl["C"], xl["D"], xl["delta_bias"], True)

    for label, fn in (("low-rank delta", lowrank), ("full-rank delta + projection", fullrank)):
        with torch.no_grad():
            ms = bench(fn)
        ms_fb = bench(lambda: torch.autograd.grad((fn() * gy).sum(), [xl["u"], fac, wdt]), warmup=5, rep=30)
        res[f"fused_{label.split()[0]}_fwd_ms"], res[f"fused_{label.split()[0]}_fwd_bwd_ms"] = ms, ms_fb
        lines.append((f"triton fwd float32, {label}", ms, f"fwd+bwd {ms_fb:.3f} ms"))
    xl = fac = wdt = None
    _cuda("empty_cache")

    # memory held between forward and backward, and the cost of rebuilding the states instead
    for keep in (True, False):
        ts.kernel_config(best[0].replace(keep_states=keep))
        xg = make_inputs(a.batch, a.dim, a.size, a.state, torch.float32, requires_grad=True)
        gy = torch.randn(a.batch, a.dim, a.size, a.size, device=DEVICE)
        _cuda("synchronize")
        before = _cuda("memory_allocated")
        y = fused(xg)
        held = (_cuda("memory_allocated") - before - y.numel() * y.element_size()) / 2**30
        del y
        ms_fb = bench(lambda: torch.autograd.grad((fused(xg) * gy).sum(), list(xg.values())), warmup=5, rep=30)
        res[f"fused_fwd_bwd_float32_keep_states_{keep}"] = {"ms": ms_fb, "held_for_backward_GiB": held}
        lines.append((f"triton fwd+bwd float32 keep_states={keep}", ms_fb, f"{held:.2f} GiB held for the backward"))
        xg = None
        _cuda("empty_cache")

    # deterministic kernels: per-direction outputs and per-block partial gradients instead of atomics
    xg = make_inputs(a.batch, a.dim, a.size, a.state, torch.float32, requires_grad=True)
    gy = torch.randn(a.batch, a.dim, a.size, a.size, device=DEVICE)

    def grads():
        return torch.autograd.grad((fused(xg) * gy).sum(), list(xg.values()))

    ts.kernel_config(best[0].replace(deterministic=True))
    _cuda("reset_peak_memory_stats")
    first, second = grads(), grads()
    repeat = all(torch.equal(p, q) for p, q in zip(first, second))
    peak = _cuda("max_memory_allocated") / 2**30
    ms_det = bench(grads, warmup=3, rep=20)
    del first, second
    ts.kernel_config(best[0])
    runs = [grads() for _ in range(2)]
    default_repeat = all(torch.equal(p, q) for p, q in zip(*runs))
    del runs
    ms_default = res["fused_fwd_bwd_float32_keep_states_True"]["ms"]
    res["fused_fwd_bwd_float32_deterministic"] = {"ms": ms_det, "peak_GiB": peak, "bit_identical_repeat": repeat,
                                                  "default_bit_identical_repeat": default_repeat}
    lines.append(("triton fwd+bwd float32 deterministic", ms_det,
                  f"{ms_det / ms_default:.2f}x the default; repeat bit-identical: {repeat} (default: {default_repeat})"))
    xg = None
    _cuda("empty_cache")
    ts.kernel_config(best[0])


def _bwd_steps(a, res, lines, fused, best):
    """Forward + backward with the step-loop backward against the associative scans, on both layouts."""
    from vmunet_monai.ops import triton_scan as ts

    res["bwd_steps"] = []
    for layout in ("row_major", "channels_last"):
        xg = make_inputs(a.batch, a.dim, a.size, a.state, torch.float32, requires_grad=True, layout=layout)
        gy = torch.randn(a.batch, a.dim, a.size, a.size, device=DEVICE)

        def grads():
            return torch.autograd.grad((fused(xg) * gy).sum(), list(xg.values()))

        ts.kernel_config(best[0])
        ref, ms_chunks = timed(grads, warmup=3, rep=20)
        with torch.no_grad():
            ms_fwd = bench(lambda: fused(xg), warmup=3, rep=20)  # the backward alone: fwd+bwd less this
        scratch = step_scratch_bytes(a.batch, a.dim, a.size, a.state)
        lines.append((f"triton fwd+bwd float32 {layout}, associative-scan backward", ms_chunks,
                      f"backward about {ms_chunks - ms_fwd:.3f} ms (forward without autograd {ms_fwd:.3f} ms)"))
        steps = ((32, False), (16, False), (8, False), (32, True))
        if a.quick or a.dry_run:  # (the dry run: one width and the deterministic mode)
            steps = ((32, False),) if a.quick else ((16, False), (32, True))
        for bd, det in steps:
            ts.kernel_config(best[0].replace(bwd_stepwise=True, bwd_step_block_d=bd, deterministic=det))
            try:
                got, ms = timed(grads, warmup=3, rep=20)
            except Exception as exc:
                print(f"  bwd_stepwise block {bd}: failed {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                continue
            err = max(rel(p, q) for p, q in zip(got, ref))
            bwd = max(ms - ms_fwd, 1e-3)
            res["bwd_steps"].append({"layout": layout, "block_d": bd, "deterministic": det, "ms": ms,
                                     "chunked_ms": ms_chunks, "forward_no_grad_ms": ms_fwd, "backward_ms": bwd,
                                     "scratch_GB": scratch / 1e9, "scratch_TBps": scratch / bwd / 1e9,
                                     "max_grad_rel_err_vs_chunked": err})
            lines.append((f"triton fwd+bwd float32 {layout}, step-loop backward, {bd} channels"
                          + (", deterministic" if det else ""), ms,
                          f"{ms_chunks / ms:.2f}x the associative scans ({ms_chunks:.3f} ms); grads vs them {err:.1e}; "
                          f"backward about {bwd:.3f} ms, scratch {scratch / 1e9:.1f} GB "
                          f"at {scratch / bwd / 1e9:.1f} TB/s"))
            del got
        xg = ref = None
        _cuda("empty_cache")
    ts.kernel_config(best[0])


def _composed(a, res, lines, fused, composed, raw):
    """The composed paths (cross_scan copies + a generic scan + merge) on torch and mamba-ssm."""
    from vmunet_monai.ops import dispatch

    x = make_inputs(a.batch, a.dim, a.size, a.state, torch.float32, bc="map")
    fused_ms = res["fused_fwd_float32"]["ms"]
    for backend in ("torch", "mamba_ssm", "mamba_ssm_raw"):
        if backend == "mamba_ssm_raw":
            if raw is None or dispatch.backend_status("mamba_ssm").available:
                continue
            st = None
        else:
            st = dispatch.backend_status(backend)
        if st is not None and not st.available:
            res[f"composed_{backend}"] = f"unavailable: {st.detail}"
            lines.append((f"composed {backend} fwd float32", float("nan"), f"unavailable: {st.detail[:80]}"))
            continue
        try:
            ms = bench(lambda: composed(x, backend), warmup=5, rep=20)
        except torch.cuda.OutOfMemoryError as exc:
            res[f"composed_{backend}"] = f"out of memory: {exc}"
            continue
        res[f"composed_{backend}_fwd_float32_ms"] = ms
        lines.append((f"composed {backend} fwd float32", ms, f"fused is {ms / fused_ms:.1f}x faster"))
        if backend.startswith("mamba_ssm"):
            y1, y2 = fused(x), composed(x, backend)
            res["fwd_rel_err_vs_mamba_ssm"] = rel(y1, y2)
            xg = make_inputs(a.batch, a.dim, a.size, a.state, torch.float32, requires_grad=True, bc="map")
            gy = torch.randn(a.batch, a.dim, a.size, a.size, device=DEVICE)
            ms_fb = bench(lambda: torch.autograd.grad((composed(xg, backend) * gy).sum(), list(xg.values())),
                          warmup=3, rep=20)
            res["composed_mamba_ssm_fwd_bwd_float32_ms"] = ms_fb
            lines.append((f"composed {backend} fwd+bwd float32", ms_fb,
                          f"fused is {ms_fb / res['fused_fwd_bwd_float32']['ms']:.1f}x faster"))
            xg = None
        _cuda("empty_cache")


if __name__ == "__main__":
    main()
