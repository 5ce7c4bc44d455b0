"""Latency of a bundle's network on the CPU as each export runs it, all measured in this one run.

Builds the bundle's ``network_def`` with random weights (saved to a temporary checkpoint), exports it with
``python -m vmunet_monai export`` to TorchScript, ONNX and ``torch.export`` (pt2), and times batch-1 inference at
the bundle's input size: eager PyTorch on the compiled ``cpu`` scan backend and on the portable ``torch`` backend
(the one traced into TorchScript and ONNX), the TorchScript file, the ONNX file in onnxruntime, and the pt2
program. Prints the median latency of each and its ratio to eager on the ``cpu`` backend.

Usage::

    PYTHONPATH=. python scripts/bench_export_cpu.py [--bundle isic_skin_lesion] [--repeats 5]
        [--formats torchscript,onnx,pt2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="isic_skin_lesion")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model (the median is printed)")
    p.add_argument("--formats", default="torchscript,onnx,pt2")
    return p.parse_args()


def _median_seconds(run, repeats: int) -> float:
    run()  # warm-up: first-call compilation and allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = _args()
    from monai.bundle import ConfigParser

    from vmunet_monai import ops
    from vmunet_monai.engine.exported import load_exported
    from vmunet_monai.engine.utils import find_bundle
    from vmunet_monai.export import _input_shape, export

    root = find_bundle(args.bundle)
    shape = _input_shape(root / "configs" / "metadata.json", None)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    image = torch.rand(*shape)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        checkpoint = Path(tmp) / "model.pt"
        torch.save(network.state_dict(), checkpoint)
        for backend in ("cpu", "torch"):
            status = ops.backend_status(backend)
            if not status.available:
                print(f"skipped eager {backend}: {status.detail}")
                continue
            os.environ[ops.dispatch.ENV_VAR] = backend  # the scans' backend for this timing only
            try:
                rows.append((f"eager PyTorch, {backend} scan backend",
                             _median_seconds(lambda: network(image), args.repeats)))
            finally:
                del os.environ[ops.dispatch.ENV_VAR]
        for fmt in [f for f in args.formats.split(",") if f]:
            if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
                print("skipped onnx: pip install 'vmunet-monai[export]'")
                continue
            suffix = {"torchscript": "ts", "onnx": "onnx", "pt2": "pt2"}[fmt]
            with torch.inference_mode(False):
                result = export(args.bundle, fmt, checkpoint=str(checkpoint), output=str(Path(tmp) / f"m.{suffix}"))
            model = load_exported(result.path, torch.device("cpu"))
            rows.append((f"{fmt} export (max abs diff {result.max_abs_diff:.1e})",
                         _median_seconds(lambda: model(image), args.repeats)))
    base = rows[0][1]
    print(f"\n{args.bundle}: batch-1 latency at {tuple(shape)}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__} (median of {args.repeats})")
    for name, seconds in rows:
        print(f"  {name:<52} {seconds * 1000:9.1f} ms   {seconds / base:5.2f}x the eager cpu backend")


if __name__ == "__main__":
    main()
