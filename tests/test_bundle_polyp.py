"""polyp_seg bundle (VMUNetV2 with deep supervision): properties, network I/O, a deep-supervised training
epoch and the per-test-set evaluation in-process; then the CLI (train -> evaluate -> infer, torchrun with gloo)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import bundle_run, config_path, copy_bundle, make_prepared, tiny_overrides, workflow
from PIL import Image

from vmunet_monai.data.polyp import TEST_SETS
from vmunet_monai.engine.curves import read_log

BUNDLE = "polyp_seg"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(BUNDLE, tmp_path_factory.mktemp("polyp_data"), num=16)  # 2 validation images for 2 ranks


def test_metadata_and_recipe():
    meta = json.loads(open(config_path(BUNDLE, "metadata.json")).read())
    assert meta["version"] in meta["changelog"] and int(meta["numpy_version"].split(".")[0]) < 2
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "polyp"}
    train = json.loads(open(config_path(BUNDLE, "train.json")).read())
    assert train["network_def"]["_target_"] == "vmunet_monai.networks.VMUNetV2"
    assert train["network_def"]["deep_supervision"] is True and train["network_def"]["depths"] == [2, 2, 9, 2]
    assert train["loss"]["_target_"] == "DeepSupervisionLoss"


@pytest.mark.parametrize("configs,kind", [(["train.json"], "train"), (["inference.json"], "infer")])
def test_check_properties_is_empty(configs, kind, prepared):
    wf = workflow(BUNDLE, configs, kind, dataset_dir=str(prepared))
    wf.initialize()
    assert wf.check_properties() == []


def test_verify_net_in_out_and_training_heads():
    from monai.bundle import verify_net_in_out

    tiny = {k: v for k, v in tiny_overrides(BUNDLE).items() if k.startswith("network_def")}
    verify_net_in_out(net_id="network_def", meta_file=config_path(BUNDLE, "metadata.json"),
                      config_file=config_path(BUNDLE, "inference.json"), device="cpu", **tiny)
    # in training mode the network gives every head, and the bundle's loss trains all of them
    wf = workflow(BUNDLE, ["train.json"], "train", **tiny)
    net, loss = wf.parser.get_parsed_content("network_def").train(), wf.parser.get_parsed_content("loss")
    heads = net(torch.rand(2, 3, 64, 64))
    assert isinstance(heads, list) and [h.shape[-1] for h in heads] == [64, 32, 16, 8]
    loss(heads, (torch.rand(2, 1, 64, 64) > 0.5).float()).backward()
    assert all(head.weight.grad is not None and head.weight.grad.abs().sum() > 0 for head in net.seg_outs[1:])


def test_train_then_evaluate_per_test_set(prepared, tmp_path):
    root = copy_bundle(BUNDLE, tmp_path)
    over = tiny_overrides(BUNDLE, epochs=1)
    for configs, kind in ((["train.json"], "train"), (["train.json", "evaluate.json"], "eval")):
        wf = workflow(BUNDLE, configs, kind, bundle_root=str(root), dataset_dir=str(prepared), **over)
        wf.initialize()
        wf.run()
        wf.finalize()
    log = read_log(root / "runs" / "training_log.csv")  # the curves of the one epoch trained, validated
    assert [r["epoch"] for r in log] == [1] and log[0]["train_loss"] > 0 and 0 <= log[0]["val_mean_dice"] <= 1
    assert (root / "runs" / "training_curves.png").is_file()
    summary = json.loads((root / "eval" / "metrics_test_summary.json").read_text())
    assert list(summary["groups"]) == list(TEST_SETS)
    assert all(summary["groups"][s]["n_images"] == 2 for s in TEST_SETS)
    assert summary["overall"]["n_images"] == 10
    assert Image.open(root / "eval" / "metrics_test_worst.png").size[0] > 500  # a one-epoch model's worst images
    with open(root / "eval" / "metrics_test_per_image.csv") as f:
        assert {row["group"] for row in csv.DictReader(f)} == set(TEST_SETS)
    # at each image's own size: the same sets and images, every pixel of the original mask counted
    wf = workflow(BUNDLE, ["train.json", "evaluate.json", "evaluate_native.json"], "eval", bundle_root=str(root),
                  dataset_dir=str(prepared), **over)
    wf.initialize()
    wf.run()
    wf.finalize()
    native = json.loads((root / "eval" / "native" / "metrics_test_summary.json").read_text())
    assert list(native["groups"]) == list(TEST_SETS) and native["title"].endswith("scored at its own size")
    # beside it, the PraNet lineage's metrics from the probability maps, per test set and labelled as such
    pranet = json.loads((root / "eval" / "native" / "metrics_test_pranet_summary.json").read_text())
    assert list(pranet["groups"]) == list(TEST_SETS) and pranet["overall"]["n_images"] == 10
    assert pranet["title"].endswith("(PraNet protocol)") and "256 thresholds" in pranet["protocol"]
    for key in ("mean_dice", "mean_iou", "weighted_f", "s_alpha", "mae"):
        assert 0.0 <= pranet["overall"][key] <= 1.0, key
    with open(root / "eval" / "native" / "metrics_test_pranet_per_image.csv") as f:
        assert {row["group"] for row in csv.DictReader(f)} == set(TEST_SETS)
    # every set's numbers also as the evaluator's metrics (what StatsHandler and --tracking mlflow log)
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    for name in TEST_SETS:
        assert metrics[f"{name}/pranet_mean_dice"] == pytest.approx(pranet["groups"][name]["mean_dice"])
        assert metrics[f"{name}/pooled_dsc"] == pytest.approx(native["groups"][name]["pooled"]["dsc"])
    assert metrics["calibration_ece"] == pytest.approx(json.loads(
        (root / "eval" / "native" / "metrics_test_calibration.json").read_text())["ece"])
    # and the calibration of those maps, over every pixel of the test labels
    calibration = json.loads((root / "eval" / "native" / "metrics_test_calibration.json").read_text())
    labels = [prepared / i["label"] for i in json.loads((prepared / "datalist.json").read_text())["test"]]
    assert calibration["pixels"] == sum(np.prod(Image.open(p).size) for p in labels)
    assert 0.0 <= calibration["ece"] <= 1.0 and (root / "eval" / "native" / "metrics_test_calibration.png").is_file()
    test_items = {(i["dataset"], Path(i["image"]).stem): i
                  for i in json.loads((prepared / "datalist.json").read_text())["test"]}
    with open(root / "eval" / "native" / "metrics_test_per_image.csv") as f:
        for row in csv.DictReader(f):
            width, height = Image.open(prepared / test_items[row["group"], row["name"]]["label"]).size
            assert sum(int(row[k]) for k in ("tp", "fp", "fn", "tn")) == width * height != 32 * 32


@pytest.mark.slow
def test_cli_train_evaluate_infer(prepared, tmp_path):
    root = copy_bundle(BUNDLE, tmp_path)
    over = tiny_overrides(BUNDLE, epochs=1)
    bundle_run(BUNDLE, ["train.json"], root, prepared, over, run_id="training")
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "checkpoint_latest.pt").is_file()
    over.pop("epochs")
    bundle_run(BUNDLE, ["train.json", "evaluate.json"], root, prepared, over, run_id="evaluating")
    assert (root / "eval" / "metrics_test_summary.json").is_file()
    infer_over = {k: v for k, v in over.items() if k.startswith("network_def") or k in ("image_size", "device")}
    bundle_run(BUNDLE, ["inference.json"], root, prepared, dict(infer_over, num_workers=0), run_id="inferring")
    # masks keep the test-set folders, so the recurring file names of different sets do not collide
    for name in TEST_SETS:
        folder = root / "eval" / "masks" / name / "images"
        masks = sorted(folder.glob("*_mask.png"))
        assert [m.name for m in masks] == ["1_mask.png", "2_mask.png"]
        source = next((prepared.parent / f"{BUNDLE}_raw" / "TestDataset" / name / "images").glob("1.*"))
        assert Image.open(masks[0]).size == Image.open(source).size
        assert (root / "eval" / "overlays" / name / "images" / "1_overlay.png").is_file()


@pytest.mark.slow
def test_torchrun_two_processes_gloo(prepared, tmp_path):
    root = copy_bundle(BUNDLE, tmp_path)
    # the multi-GPU config picks cpu + gloo itself when there is no GPU
    overrides = {k: v for k, v in tiny_overrides(BUNDLE, epochs=1).items() if k != "device"}
    proc = bundle_run(BUNDLE, ["train.json", "multi_gpu_train.json"], root, prepared, overrides, processes=2)
    assert (root / "models" / "model.pt").is_file()
    assert "val_mean_dice" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_verify_net_in_out_full_size_network():
    """The bundle's own network (the paper's size) at the metadata's 256x256 on CPU, as the zoo CI runs it."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=config_path(BUNDLE, "metadata.json"),
                      config_file=config_path(BUNDLE, "inference.json"), device="cpu")


@pytest.mark.parametrize("bundle", ["polyp_seg", "isic_skin_lesion"])
def test_image_size_of_one_number_is_a_square_and_a_bad_one_is_named(bundle):
    """``--image_size 64`` (as the README writes it) resizes to 64x64 in training and inference: it reached MONAI's
    ``Resized`` as a size of one axis and stopped the run inside the transforms. A size of three numbers is refused
    naming the option."""
    from monai.bundle import ConfigParser

    from vmunet_monai.validation import InputError

    def resized(config: str, key: str, size):
        parser = ConfigParser()
        parser.read_config(config_path(bundle, config))
        parser["image_size"], parser["bundle_root"] = size, "."
        found = parser.get_parsed_content(key)
        return [t.resizer.spatial_size for t in getattr(found, "transforms", found) if type(t).__name__ == "Resized"]

    assert resized("train.json", "train#deterministic_transforms", 64) == [[64, 64]]
    assert resized("inference.json", "preprocessing", 64) == [[64, 64]]
    assert resized("inference.json", "preprocessing", [64, 48]) == [[64, 48]]
    with pytest.raises(RuntimeError) as refused:  # MONAI wraps the error of a config expression
        resized("train.json", "train#deterministic_transforms", [64, 64, 3])
    assert isinstance(refused.value.__cause__, InputError)
    assert "--image_size [64, 64, 3]: give one whole number (a square) or two, height and width" in str(
        refused.value.__cause__)
