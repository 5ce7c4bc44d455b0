#!/usr/bin/env python
"""Time the synapse_multiorgan bundle's inference on one synthetic 512x512x100 CT volume on this device.

Runs the bundle's own inference.json (NIfTI read -> RAS -> 1.8 mm in-plane -> SliceInferer with
224x224 Gaussian-blended windows -> Invertd -> NIfTI write) with the bundle's default VM-UNet and
randomly initialised weights (speed does not depend on the weights). Needs only torch, monai,
nibabel (+ itk for the bundle's reader) and this package. Prints one JSON line with the timings.

    PYTHONPATH=. python scripts/bench_synapse_inference.py [--device cuda] [--sw_batch_size 16] [--amp]

It also times the label-map step alone (the class of the highest softmax channel at each of the volume's voxels)
as MONAI's ``AsDiscreted(argmax=True)`` and as the bundle's ``ChannelArgmaxd``, on the same scores, and prints the
ratio; ``--label_map_only`` times just that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_volume(path: str, shape, spacing) -> None:
    import nibabel as nib
    import numpy as np

    from vmunet_monai.data.synapse import _phantom

    hu, _ = _phantom(tuple(shape), tuple(spacing), np.random.default_rng(0))
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    nib.save(nib.Nifti1Image(hu[::-1, ::-1].copy(), affine), path)


def _time_label_map(classes: int, shape, device) -> dict:
    """Seconds for the label map of ``classes`` x ``shape`` random scores on ``device``, by MONAI's argmax and by the
    bundle's :class:`vmunet_monai.engine.ChannelArgmaxd` (the faster of two calls each), and whether they agree."""
    import torch
    from monai.transforms import AsDiscreted

    from vmunet_monai.engine import ChannelArgmaxd

    scores = torch.softmax(torch.rand(classes, *shape, device=device), dim=0)
    timed, maps = {}, {}
    for name, transform in (("AsDiscreted", AsDiscreted("pred", argmax=True)), ("ChannelArgmaxd", ChannelArgmaxd("pred"))):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            maps[name] = transform({"pred": scores})["pred"]
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        timed[f"{name}_s"] = round(best, 5)
    timed["ratio"] = round(timed["AsDiscreted_s"] / max(timed["ChannelArgmaxd_s"], 1e-9), 2)
    timed["identical"] = bool(torch.equal(torch.as_tensor(maps["AsDiscreted"]), torch.as_tensor(maps["ChannelArgmaxd"])))
    return timed


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--sw_batch_size", type=int, default=None, help="windows per network call (bundle default 16)")
    parser.add_argument("--shape", default="512,512,100", help="volume size x,y,z")
    parser.add_argument("--spacing", default="0.78,0.78,2.5", help="voxel spacing in mm (a typical Synapse scan)")
    parser.add_argument("--amp", action="store_true", help="autocast (CUDA only), as the bundle's amp option")
    parser.add_argument("--reader", default=None,
                        help="image reader instead of the bundle's ITKReader (e.g. NibabelReader where itk is absent)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--label_map_only", action="store_true",
                        help="time only the label-map step (AsDiscreted argmax against ChannelArgmaxd)")
    args = parser.parse_args(argv)

    import torch

    from vmunet_monai.networks import VMUNet
    from vmunet_monai.ops.dispatch import resolve_backend
    from vmunet_monai.predict_volume import default_bundle_root, predict_volumes

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shape = [int(v) for v in args.shape.split(",")]
    spacing = [float(v) for v in args.spacing.split(",")]
    bundle_root = default_bundle_root()
    config = json.load(open(os.path.join(bundle_root, "configs", "inference.json")))
    label_map = _time_label_map(config["num_classes"], shape, device)
    print(f"label map of {config['num_classes']} x {'x'.join(map(str, shape))} scores: AsDiscreted(argmax) "
          f"{label_map['AsDiscreted_s']:.2f} s, ChannelArgmaxd {label_map['ChannelArgmaxd_s']:.2f} s "
          f"({label_map['ratio']:.1f}x)", flush=True)
    if args.label_map_only:
        result = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "volume": shape, "label_map": label_map}
        print(json.dumps(result))
        return result
    sw_batch = args.sw_batch_size or config["sw_batch_size"]
    roi = config["roi_size"]
    net_args = {k: v for k, v in config["network_def"].items() if k != "_target_"}
    net_args["out_channels"] = config["num_classes"]

    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "ct.nii.gz")
        t0 = time.perf_counter()
        _write_volume(image, shape, spacing)
        print(f"synthetic volume {shape} at {spacing} mm written in {time.perf_counter() - t0:.1f} s", flush=True)
        network = VMUNet(**net_args)
        checkpoint = os.path.join(tmp, "model.pt")
        torch.save(network.state_dict(), checkpoint)

        # the network alone at the window batch size, after a warm-up call (kernel selection, allocator)
        network = network.to(device).eval()
        x = torch.rand(sw_batch, 1, *roi, device=device)
        with torch.no_grad(), torch.autocast(device.type, enabled=args.amp and device.type == "cuda"):
            times = []
            for _ in range(3):  # the first call warms up; the faster of the next two is kept
                t0 = time.perf_counter()
                network(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            window_s = min(times[1:]) / sw_batch
        del network, x
        print(f"network alone: {window_s * 1000:.1f} ms per {roi[0]}x{roi[1]} window at batch {sw_batch}", flush=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        t0 = time.perf_counter()
        written = predict_volumes(
            image,
            os.path.join(tmp, "out"),
            checkpoint=checkpoint,
            device=str(device),
            sw_batch_size=sw_batch,
            amp=bool(args.amp),
            **({"preprocessing#transforms#0#reader": args.reader} if args.reader else {}),
        )
        total_s = time.perf_counter() - t0
        assert len(written) == 1

    # windows SliceInferer runs: the resampled slice is padded to the window when smaller
    resampled = [max(round(shape[i] * spacing[i] / config["spacing"][i]), roi[i]) for i in range(2)]
    windows = 1
    for size, r in zip(resampled, roi):
        stride = max(int(r * (1 - config["sw_overlap"])), 1)
        windows *= 1 if size <= r else -(-(size - r) // stride) + 1
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "scan_backend": resolve_backend(device),
        "volume": shape,
        "spacing_mm": spacing,
        "resampled_slice": resampled,
        "windows_per_slice": windows,
        "network_calls": -(-windows * shape[2] // sw_batch),
        "sw_batch_size": sw_batch,
        "amp": bool(args.amp),
        "reader": args.reader or "ITKReader",
        "total_s": round(total_s, 2),
        "per_slice_s": round(total_s / shape[2], 3),
        "network_alone_per_window_ms": round(window_s * 1000, 1),
        "network_share": round(window_s * windows * shape[2] / total_s, 3),
    }
    result["label_map"] = label_map
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
