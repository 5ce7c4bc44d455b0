"""Benchmark of the selective-scan backends at VM-UNet's stage-1 shape, all measured in this one run.

Shape (default): batch 1, dim 768 (4 directions x 192 channels), L 4096 (a 64x64 map), N 16, B/C in
4 groups (one per direction), delta_softplus with delta_bias, D, float32: the scan VM-UNet runs in its
first stage for one 256x256 image. For every available backend it prints the median time of the
forward and of forward + backward, and their ratios to the ``reference`` backend (the sequential
oracle) timed in the same run, plus the agreement of each output with the reference.

Usage::

    PYTHONPATH=. python scripts/bench_scan.py [--device cpu] [--backends reference,torch,cpu]
        [--repeats 5] [--dim 768] [--length 4096] [--state 16] [--batch 1] [--groups 4] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from vmunet_monai import ops


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", default="", help="comma-separated; default: every backend available on the device")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (the median is printed)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--groups", type=int, default=4, help="groups of B/C (0: constant (dim, N) B and C)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--no-backward", action="store_true", help="time the forward only")
    p.add_argument("--reference-repeats", type=int, default=1, help="timed runs of the slow reference backend")
    p.add_argument("--reference-backward", action="store_true",
                   help="also time the reference's forward + backward (autograd through L steps: minutes, GiBs)")
    return p.parse_args()


def make_inputs(args, dtype, requires_grad):
    g = torch.Generator().manual_seed(0)
    b, d, length, n = args.batch, args.dim, args.length, args.state

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype)

    bc_shape = (b, args.groups, n, length) if args.groups else (d, n)
    x = dict(
        u=r(b, d, length),
        delta=r(b, d, length, scale=0.5, shift=-1.0),
        A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),  # the S4D-real initialisation
        B=r(*bc_shape),
        C=r(*bc_shape),
        D=torch.ones(d),
        z=None,
        delta_bias=torch.rand(d, generator=g) * 0.1,
    )
    out = {}
    for k, v in x.items():
        if v is not None:
            v = v.to(args.device)
            if requires_grad:
                v.requires_grad_()
        out[k] = v
    return out


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats, device):
    fn()  # warm-up (and the first-use build of compiled backends)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    args = _args()
    dtype = getattr(torch, args.dtype)
    device_type = torch.device(args.device).type
    names = [s for s in args.backends.split(",") if s] or [
        s.name for s in ops.backend_status() if device_type in s.devices and s.available
    ]
    if "reference" not in names:
        names.insert(0, "reference")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(
        f"shape: batch {args.batch}, dim {args.dim}, L {args.length}, N {args.state}, "
        f"B/C {'(dim, N)' if not args.groups else f'{args.groups} groups'}, {args.dtype}, softplus + bias + D"
    )
    results, outputs = {}, {}
    for name in names:
        st = ops.backend_status(name)
        if not st.available or device_type not in st.devices:
            print(f"{name:>10}: not available ({st.detail})")
            continue
        repeats = args.reference_repeats if name == "reference" else args.repeats
        x = make_inputs(args, dtype, requires_grad=False)

        def fwd():
            return ops.selective_scan(**x, delta_softplus=True, backend=name)

        with torch.no_grad():
            outputs[name] = fwd().float()
            t_fwd = timed(fwd, repeats, args.device)
        t_bwd = None
        if not args.no_backward and (name != "reference" or args.reference_backward):
            xg = make_inputs(args, dtype, requires_grad=True)
            leaves = [v for v in xg.values() if v is not None]

            def fwd_bwd():
                y = ops.selective_scan(**xg, delta_softplus=True, backend=name)
                torch.autograd.grad(y.float().square().mean(), leaves)

            t_bwd = timed(fwd_bwd, repeats, args.device)
        results[name] = (t_fwd, t_bwd)
    ref_fwd, ref_bwd = results.get("reference", (None, None))
    torch_bwd = results.get("torch", (None, None))[1]
    want = outputs.get("reference")

    def ratio(base, t):
        return f"{base / t:8.1f}" if (base and t) else f"{'-':>8}"

    print(f"{'backend':>10} {'forward':>11} {'x ref':>8} {'fwd+bwd':>11} {'x ref':>8} {'x torch':>8} {'rel. error':>11}")
    for name, (t_fwd, t_bwd) in results.items():
        bwd = f"{t_bwd * 1e3:9.2f}ms" if t_bwd is not None else f"{'-':>11}"
        err = ((outputs[name] - want).norm() / want.norm()).item() if want is not None else float("nan")
        print(f"{name:>10} {t_fwd * 1e3:9.2f}ms {ratio(ref_fwd, t_fwd)} {bwd} {ratio(ref_bwd, t_bwd)} "
              f"{ratio(torch_bwd, t_bwd)} {err:11.2e}")
    print("x ref / x torch: how many times faster than that backend, timed in this run (fwd+bwd of the reference "
          "only with --reference-backward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
