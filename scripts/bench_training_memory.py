"""Peak memory of one training step on the CPU: ours with and without SS2D recomputation, and the
official VM-UNet, all measured in this one run, each in a fresh process.

What is measured: the process's peak resident memory during one step (forward, loss, backward)
above its resident memory just before the step, after a warm-up step that allocated the weights'
gradients and compiled the scan kernel. Large allocations are forced onto mmap
(``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave the resident set at once and the peak is the
allocator-independent high-water mark of live tensors: the activations kept for the backward plus
the backward's working set, which is what dominates a GPU's peak training memory too.

The official model runs with a scan that keeps exactly what mamba-ssm's CUDA ``SelectiveScanFn``
keeps for its backward (:func:`vmunet_monai.official.mamba_shaped_scan`), computed by our CPU
kernel; with ``--reference`` unset it is left out.

Usage::

    PYTHONPATH=. python scripts/bench_training_memory.py [--size 256] [--batch 2] [--network vmunet]
        [--reference PATH/TO/VM-UNet] [--threads 2] [--compile]

Prints one JSON line per configuration, then a table with the ratios to the official model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = ("ours_recompute", "ours_store_all", "ours_compiled", "official")


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def _child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from vmunet_monai import networks

    name = {"vmunet": "VMUNet", "vmunet_v2": "VMUNetV2", "mamba_unet": "MambaUNet"}[args.network]
    if args.config == "official":
        from vmunet_monai.official import copy_weights_to_official, load_official_vmunet, mamba_shaped_scan

        model, _ = load_official_vmunet(args.reference, scan_fn=mamba_shaped_scan)
        copy_weights_to_official(networks.VMUNet(out_channels=1, scan_backend="cpu"), model)
        loss_fn = torch.nn.BCELoss()  # the official VM-UNet ends in a sigmoid
    else:
        model = getattr(networks, name)(out_channels=1, scan_backend="cpu",
                                        recompute=args.config != "ours_store_all")
        if args.config == "ours_compiled":  # inductor; the warm-up step below compiles it
            model = torch.compile(model)
        loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    target = (torch.rand(args.batch, 1, args.size, args.size) > 0.5).float()

    def step():
        out = model(x)
        out = out[0] if isinstance(out, (list, tuple)) else out
        loss_fn(out, target).backward()

    step()  # warm-up: gradients allocated, kernel compiled (and the model, for ours_compiled)
    base = _rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    return {"config": args.config, "network": args.network, "size": args.size, "batch": args.batch,
            "peak_above_start_mib": (_rss("VmHWM") - base) / 2**20, "step_s": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--network", default="vmunet", choices=["vmunet", "vmunet_v2", "mamba_unet"])
    p.add_argument("--reference", default=None, help="checkout of the official JCruan519/VM-UNet (adds its row)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true",
                   help="add ours under torch.compile (inductor; compiling takes minutes on a CPU)")
    p.add_argument("--config", choices=CONFIGS, help=argparse.SUPPRESS)  # set in the child processes
    args = p.parse_args(argv)
    if args.config:
        print(json.dumps(_child(args)))
        return 0
    if args.reference and args.network != "vmunet":
        p.error("--reference compares against the official VM-UNet: use --network vmunet")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
    rows = []
    for config in CONFIGS:
        if (config == "official" and not args.reference) or (config == "ours_compiled" and not args.compile):
            continue
        cmd = [sys.executable, __file__, "--config", config, "--size", str(args.size), "--batch", str(args.batch),
               "--network", args.network, "--threads", str(args.threads)]
        if args.reference:
            cmd += ["--reference", args.reference]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr[-3000:])
            raise SystemExit(f"{config}: the measuring process failed (exit {done.returncode})")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(row))
        rows.append(row)
    by = {r["config"]: r for r in rows}
    base = by.get("official") or by["ours_store_all"]
    print(f"\n{args.network}, batch {args.batch}, {args.size}x{args.size}, one training step on the CPU "
          f"({args.threads} threads); ratios to {base['config']}")
    for r in rows:
        print(f"  {r['config']:<16} peak {r['peak_above_start_mib']:9.1f} MiB "
              f"({r['peak_above_start_mib'] / base['peak_above_start_mib']:.2f}x)   step time {r['step_s']:6.2f} s "
              f"({r['step_s'] / base['step_s']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
