"""Command line: ``python -m vmunet_monai <command>`` (also installed as ``vmunet-monai``).

Every command is a thin wrapper over a library function; ``--help`` after a command shows its options.
"""

from __future__ import annotations

import sys

__all__ = ["Commands", "main"]


class Commands:
    """VM-UNet family for MONAI: set-up checks, benchmarks, data preparation, training demo and prediction."""

    def doctor(self):
        """Versions, devices and every selective-scan backend: available or not, why, and the exact fix."""
        from vmunet_monai.doctor import report

        print(report())

    def benchmark(self, device: str = "cpu", networks: str = "vmunet", size: int = 256, batch: int = 1,
                  repeats: int = 5, backends: str = "auto", reference: str | None = None,
                  scan_only: bool = False, out: str | None = None, cuda_graphs: bool = False):
        """Time the networks (and the stage-1 scan) on this machine; prints ratios measured in this run.

        Args:
            device: cpu or cuda.
            networks: comma-separated subset of vmunet, vmunet_v2, mamba_unet.
            size: square input size in pixels.
            batch: batch size for the throughput numbers.
            repeats: timed repetitions (the median is reported).
            backends: comma-separated scan backends, or auto.
            reference: path to a checkout of the official VM-UNet, timed beside ours in the same run.
            scan_only: only time the stage-1 scan of every backend.
            out: also write the results as JSON to this file.
            cuda_graphs: on CUDA, also time inference replayed from captured CUDA graphs
                (vmunet_monai.cuda_graphs.GraphedInference).
        """
        from vmunet_monai.benchmark import run_benchmark

        run_benchmark(device=device, networks=networks, size=size, batch=batch, repeats=repeats,
                      backends=backends, reference=reference, scan_only=scan_only, out=out,
                      cuda_graphs=cuda_graphs)

    def demo(self, out: str = "demo_run", epochs: int = 30, num: int = 48, size: int = 64):
        """The main job on embedded defaults: synthetic ISIC-layout data -> prepare -> train -> validation Dice.

        Args:
            out: working folder (demo data, prepared datalist, bundle copy with the trained model).
            epochs: training epochs.
            num: number of synthetic images.
            size: network input size used by the demo (the bundle default stays the paper's 256).
        """
        from vmunet_monai.demo import run_demo

        run_demo(out=out, epochs=epochs, num=num, size=size)

    def prepare(self, bundle: str, raw: str, out: str, **options):
        """Read a dataset as its owners distribute it (RAW) and write OUT/datalist.json for BUNDLE."""
        from vmunet_monai.data import prepare

        prepare(bundle, raw, out, **options)

    def demo_data(self, bundle: str, out: str, num: int | None = None, seed: int = 0):
        """Write a small synthetic dataset for BUNDLE in the real dataset's raw layout under OUT."""
        from vmunet_monai.data import demo_data

        demo_data(bundle, out, num=num, seed=seed)

    def predict(self, bundle: str, input: str, output: str, checkpoint: str | None = None, device: str | None = None):
        """Segment a file or a folder with BUNDLE's network and write masks (and overlays) to OUTPUT."""
        from vmunet_monai.predict import predict

        predict(bundle, input, output, checkpoint=checkpoint, device=device)


def main(argv=None):
    import fire

    fire.Fire(Commands, command=argv if argv is not None else sys.argv[1:], name="vmunet_monai")


if __name__ == "__main__":
    main()
