"""Benchmark (not a test): how many epochs and minutes VM-UNet needs on this CPU to reach a validation
Dice target on the synthetic ISIC data, trained through the real isic_skin_lesion bundle
(``--bundle polyp_seg``: VMUNetV2 with deep supervision on the synthetic polyp data).

    python scripts/bench_isic_cpu_training.py --epochs 30 --num 96 --target 0.90

Prints one line per validation (epoch, minutes since training started, validation Dice) and a
summary: the first epoch and minute at which the target was reached, the best Dice, the network
and the machine. ``--json PATH`` also writes the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="isic_skin_lesion", choices=["isic_skin_lesion", "polyp_seg"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--num", type=int, default=96, help="synthetic training images")
    parser.add_argument("--size", type=int, default=64, help="network input size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dims", default="16,32,64,128")
    parser.add_argument("--depths", default="1,1,1,1")
    parser.add_argument("--d_state", type=int, default=8)
    parser.add_argument("--mid_channels", type=int, default=16, help="VMUNetV2 neck width (polyp_seg)")
    parser.add_argument("--target", type=float, default=0.90)
    parser.add_argument("--stop_at_target", action="store_true", help="stop once the target is reached")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    from vmunet_monai.data import demo_data, prepare
    from vmunet_monai.demo import make_demo_bundle

    work = Path(args.work or tempfile.mkdtemp(prefix=f"bench_{args.bundle}_"))
    raw, prepared = work / "raw", work / "prepared"
    if not (prepared / "datalist.json").is_file():
        shutil.rmtree(raw, ignore_errors=True)  # what an interrupted run left
        demo_data(args.bundle, str(raw), num=args.num, seed=0)
        prepare(args.bundle, str(raw), str(prepared))
    depths = [int(d) for d in args.depths.split(",")]
    network = {"dims": [int(d) for d in args.dims.split(",")], "depths": depths, "d_state": args.d_state,
               "drop_path_rate": 0.0}
    network.update({"mid_channels": args.mid_channels} if args.bundle == "polyp_seg" else {"depths_decoder": depths})
    bundle_root = make_demo_bundle(work / args.bundle, size=args.size, epochs=args.epochs,
                                   batch_size=args.batch, network=network, bundle=args.bundle)
    configs = bundle_root / "configs"
    wf = ConfigWorkflow(config_file=str(configs / "train.json"), meta_file=str(configs / "metadata.json"),
                        logging_file=str(configs / "logging.conf"), workflow_type="train",
                        bundle_root=str(bundle_root), dataset_dir=str(prepared), learning_rate=args.lr)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    history, reached = [], {}
    start = {}

    @trainer.on(Events.STARTED)
    def _start(engine):
        start["t"] = time.perf_counter()

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _record(engine):
        minutes = (time.perf_counter() - start["t"]) / 60
        dice = float(engine.state.metrics["val_mean_dice"])
        epoch = trainer.state.epoch
        history.append({"epoch": epoch, "minutes": round(minutes, 3), "val_dice": round(dice, 4)})
        print(f"BENCH epoch {epoch:3d}  {minutes:6.2f} min  val Dice {dice:.4f}", flush=True)
        if dice >= args.target and not reached:
            reached.update(epoch=epoch, minutes=round(minutes, 2), val_dice=round(dice, 4))
            if args.stop_at_target:
                trainer.terminate()

    wf.run()
    wf.finalize()
    params = sum(p.numel() for p in wf.parser.get_parsed_content("network").parameters())
    result = {
        "bundle": args.bundle, "network_class": wf.parser["network_def"]["_target_"], "target": args.target, "reached": reached or None, "best_val_dice": max(h["val_dice"] for h in history),
        "epochs_run": len(history), "minutes_total": history[-1]["minutes"] if history else None,
        "network": network, "parameters": params, "size": args.size, "batch": args.batch, "lr": args.lr,
        "train_images": args.num, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads", "history": history,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
