"""isic_skin_lesion bundle: config properties, network I/O, resume and pretrained loading in-process;
then the CLI the way users and the model zoo run it (train -> evaluate -> infer, torchrun with gloo)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import (
    bundle_run,
    config_path,
    copy_bundle,
    make_prepared,
    run_workflow,
    tiny_overrides,
    workflow,
)
from ignite.engine import Events
from PIL import Image

BUNDLE = "isic_skin_lesion"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(BUNDLE, tmp_path_factory.mktemp("isic_data"), num=8)


def test_metadata_follows_the_zoo_rules():
    meta = json.loads(open(config_path(BUNDLE, "metadata.json")).read())
    assert meta["version"] in meta["changelog"]
    assert int(meta["numpy_version"].split(".")[0]) < 2  # the zoo CI runs Python 3.10 and MONAI Label needs numpy<2
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert (image["num_channels"], image["format"]) == (3, "RGB")
    assert pred["num_channels"] == 1 and pred["channel_def"] == {"0": "background", "1": "lesion"}  # mask values
    train = json.loads(open(config_path(BUNDLE, "train.json")).read())
    assert train["training"] == "%run" and isinstance(train["train"]["handlers"], list)
    assert (train["epochs"], train["batch_size"], train["learning_rate"], train["weight_decay"]) == (300, 32, 1e-3, 1e-2)
    assert train["lr_scheduler"]["eta_min"] == "@min_learning_rate" and train["min_learning_rate"] == 1e-5
    assert train["image_size"] == [256, 256]


@pytest.mark.parametrize("configs,kind", [(["train.json"], "train"), (["train.json", "multi_gpu_train.json"], "train"),
                                          (["inference.json"], "infer")])
def test_check_properties_is_empty(configs, kind, prepared, monkeypatch):
    if "multi_gpu_train.json" in configs:  # a one-process group is enough to resolve the DDP config
        for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": "29517"}.items():
            monkeypatch.setenv(key, value)
    wf = workflow(BUNDLE, configs, kind, dataset_dir=str(prepared))
    wf.initialize()
    try:
        assert wf.check_properties() == []
    finally:
        wf.finalize()
        import ignite.distributed as idist

        idist.sync()  # ignite caches the (now destroyed) process group; make it see a serial run again


def test_multi_gpu_config_without_torchrun_says_how_to_start_it(prepared, monkeypatch):
    """multi_gpu_train.json run as one plain process (no torchrun): one line with the command, where torch said
    only that the environment variable RANK was not set."""
    from vmunet_monai.validation import input_error_in

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    wf = workflow(BUNDLE, ["train.json", "multi_gpu_train.json"], "train", dataset_dir=str(prepared))
    with pytest.raises(Exception) as raised:
        wf.initialize()
    error = input_error_in(raised.value)
    assert error is not None and str(error).startswith(
        "multi_gpu_train.json: runs one process per GPU and this process was not started as one of them (RANK, "
        "WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set): start it with torchrun --standalone"), raised.value


def test_other_ranks_log_warnings_alone():
    """Every process of a multi-GPU run logged each of ignite's "Got new best metric" and "Epoch[1] Complete"
    lines; the processes after the first keep warnings and errors."""
    import io
    import logging

    from vmunet_monai.engine import quiet_other_ranks

    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        engine = logging.getLogger("ignite.engine.engine.SupervisedTrainer")
        quiet_other_ranks(0)
        engine.info("first rank's information")
        quiet_other_ranks(1)
        quiet_other_ranks(1)  # once is enough: a second call adds no second filter
        engine.info("another rank's information")
        engine.warning("another rank's warning")
        assert stream.getvalue().splitlines() == ["first rank's information", "another rank's warning"]
        assert len(handler.filters) == 1
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    config = json.loads(Path(config_path(BUNDLE, "multi_gpu_train.json")).read_text())
    init = config["initialize"]
    assert init.index("$vmunet_monai.engine.quiet_other_ranks()") > next(
        i for i, step in enumerate(init) if "init_process_group" in step)


def test_multi_gpu_validation_with_fewer_cases_than_processes_names_both(prepared, monkeypatch):
    """Each process validates cases of its own: a validation split smaller than the process count is named with
    what to change, where MONAI's sampler said only "the dataset length is less than the number of participating
    ranks"."""
    import torch.distributed as dist

    from vmunet_monai.validation import input_error_in

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29523"}.items():
        monkeypatch.setenv(key, value)
    wf = workflow(BUNDLE, ["train.json", "multi_gpu_train.json"], "train", dataset_dir=str(prepared), cache_rate=0.0)
    wf.initialize()
    try:
        cases = len(wf.parser.get_parsed_content("validate#dataset"))
        assert len(wf.parser.get_parsed_content("validate#sampler")) >= 1  # one process: every case its own
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: cases + 1)
        with pytest.raises(Exception) as raised:
            wf.parser.get_parsed_content("validate#sampler", lazy=False)
        error = input_error_in(raised.value)
        assert error is not None and str(error).startswith(
            f"the validation split holds {cases} case{'s' if cases != 1 else ''} for {cases + 1} processes")
        assert "--nproc_per_node" in str(error) and "--val_fraction" in str(error)
    finally:
        wf.finalize()
        import ignite.distributed as idist

        idist.sync()


@pytest.mark.parametrize("bundle", ["isic_skin_lesion", "polyp_seg", "synapse_multiorgan"])
def test_multi_gpu_processes_above_0_open_no_tensorboard_files(bundle, tmp_path, monkeypatch):
    """Under torchrun only process 0 logs: the others build no TensorBoard handler (whose writer opened an empty
    event file in runs/ at once, which process 0 then set aside as 'an earlier training's'), and keep the same
    handlers as before, the console ones dropped. The same where a handler is put first in train#handlers, as MONAI
    Label puts its CheckpointLoader (the TensorBoard handler was disabled by its place in the list)."""
    import torch.distributed as dist

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "29519"}.items():
        monkeypatch.setenv(key, value)
    prepared = make_prepared(bundle, tmp_path / "data", num=6)
    names = {}
    no_samplers = {"train#dataloader#sampler": None, "validate#dataloader#sampler": None}  # they ask the group
    for rank, first in ((0, False), (1, False), (1, True)):
        with pytest.MonkeyPatch.context() as as_rank:
            as_rank.setattr(dist, "get_rank", lambda group=None, r=rank: r)
            configs = ["train.json", "multi_gpu_train.json"]
            if first:  # MONAI Label's BundleTrainTask puts a CheckpointLoader first into train.json's handlers
                own = json.loads(Path(config_path(bundle, "train.json")).read_text())
                own["train"]["handlers"].insert(0, {"_target_": "CheckpointLoader", "load_path": "model.pt",
                                                    "load_dict": {"model": "@network"}})
                configs[0] = str(tmp_path / "train_label.json")
                Path(configs[0]).write_text(json.dumps(own))
            wf = workflow(bundle, configs, "train", bundle_root=str(tmp_path / f"{rank}{first}"),
                          dataset_dir=str(prepared), cache_rate=0.0, **no_samplers)
            wf.initialize()
            try:
                train = wf.parser.get_parsed_content("train#trainer#train_handlers")
                val = wf.parser.get_parsed_content("validate#evaluator#val_handlers")
                names[rank, first] = [type(h).__name__ for h in train], [type(h).__name__ for h in val or []]
            finally:
                wf.finalize()
                import ignite.distributed as idist

                idist.sync()
    kept = names[0, False]
    assert "TensorBoardStatsHandler" in kept[0] and "TensorBoardStatsHandler" in kept[1]
    console = {"TqdmProgressBar", "StatsHandler", "TensorBoardStatsHandler"}
    assert names[1, False] == ([n for n in kept[0] if n not in console], [])
    assert names[1, True] == (["CheckpointLoader", *names[1, False][0]], [])
    for folder in ("1False", "1True"):
        assert not list((tmp_path / folder).rglob("events.out.tfevents.*")), folder


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    tiny = {k: v for k, v in tiny_overrides(BUNDLE).items() if k.startswith("network_def")}
    verify_net_in_out(net_id="network_def", meta_file=config_path(BUNDLE, "metadata.json"),
                      config_file=config_path(BUNDLE, "inference.json"), device="cpu", **tiny)


def test_train_resume_and_pretrained_in_process(prepared, tmp_path):
    root = copy_bundle(BUNDLE, tmp_path)
    over = tiny_overrides(BUNDLE, epochs=1)
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    latest = root / "models" / "checkpoint_latest.pt"
    assert (root / "models" / "model.pt").is_file() and latest.is_file()
    saved = torch.load(latest, weights_only=True)
    assert saved["trainer"]["iteration"] == 2
    assert set(saved) == {"model", "optimizer", "lr_scheduler", "trainer", "rng", "validation"}

    # resuming continues at epoch 1 up to the new epoch count, with the saved weights
    over2 = dict(over, epochs=2, resume_checkpoint=str(latest))
    wf = workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over2)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    epochs_run = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    wf.run()
    assert epochs_run == [2]
    assert torch.load(latest, weights_only=True)["trainer"]["iteration"] == 4

    # an official-format checkpoint given as pretrained_checkpoint initialises the network
    source = workflow(BUNDLE, ["train.json"], "train", **over).parser.get_parsed_content("network_def")
    ckpt = tmp_path / "official.pth"
    torch.save({"model": source.state_dict()}, ckpt)
    wf = workflow(BUNDLE, ["train.json"], "train", dataset_dir=str(prepared), pretrained_checkpoint=str(ckpt), **over)
    net = wf.parser.get_parsed_content("network")
    for key, value in source.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    with pytest.raises(RuntimeError) as failure:  # the bundle parser wraps the cause
        workflow(BUNDLE, ["train.json"], "train", pretrained_checkpoint=str(tmp_path / "none.pth"),
                 **over).parser.get_parsed_content("network")
    assert "none.pth: no such file" in str(failure.value.__cause__)


def test_weights_a_checkpoint_loader_starts_from_stay_in_place_until_replaced(prepared, tmp_path, capfd):
    """MONAI Label's BundleTrainTask puts a CheckpointLoader of models/model.pt first and trains on: that file stays
    in place (MONAI Label serves it meanwhile; moved away, the server answered with the network at its random
    start until the first validation), a copy goes to previous_run/, the rest of the earlier run is moved there."""
    import hashlib

    root = copy_bundle(BUNDLE, tmp_path)
    over = tiny_overrides(BUNDLE, epochs=1)
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    models = root / "models"
    before = hashlib.sha256((models / "model.pt").read_bytes()).hexdigest()
    own = json.loads((root / "configs" / "train.json").read_text())
    own["train"]["handlers"].insert(0, {"_target_": "CheckpointLoader", "load_path": str(models / "model.pt"),
                                        "load_dict": {"model": "@network"}, "strict": True})
    (tmp_path / "train_label.json").write_text(json.dumps(own))
    wf = workflow(BUNDLE, [str(tmp_path / "train_label.json")], "train", bundle_root=str(root),
                  dataset_dir=str(prepared), **over)
    wf.initialize()
    at_start = []
    wf.parser.get_parsed_content("train#trainer").add_event_handler(  # after the handlers' own STARTED steps
        Events.STARTED, lambda e: at_start.append(sorted(p.name for p in models.iterdir() if p.is_file())))
    capfd.readouterr()
    wf.run()
    wf.finalize()
    printed = "".join(capfd.readouterr())
    assert "model.pt" in at_start[0] and "checkpoint_latest.pt" not in at_start[0]
    previous = models / "previous_run"
    assert hashlib.sha256((previous / "model.pt").read_bytes()).hexdigest() == before
    assert (previous / "checkpoint_latest.pt").is_file()
    assert "except model.pt, copied there and left in place: this run goes on from those weights" in printed


def test_weights_trained_with_other_settings_are_predicted_and_exported_as_trained(prepared, tmp_path, capfd):
    """A training with network_def overrides writes network.json beside its weights; predict and export with the
    unchanged bundle build the network as it was trained (they refused the weights before), with a note naming
    the settings; without the file the refusal says which settings to give."""
    from vmunet_monai.export import export
    from vmunet_monai.predict import predict
    from vmunet_monai.weights import CheckpointError

    root = copy_bundle(BUNDLE, tmp_path)
    over = tiny_overrides(BUNDLE, epochs=1)
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    saved = json.loads((root / "models" / "network.json").read_text())
    assert saved["_target_"] == "vmunet_monai.networks.VMUNet"
    assert all(saved[k.split("#")[1]] == v for k, v in over.items() if k.startswith("network_def#"))
    assert saved["out_channels"] == 1 and "scan_backend" not in saved
    # predict resizes to the size, not to the bundle's 256, and scales images as the training did
    name = json.loads((root / "configs" / "metadata.json").read_text())["name"]  # the bundle that trained them
    assert saved["_desc_"] == {"trained_input_size": [32, 32], "intensity_max": 255.0, "bundle": name}
    raw_test = prepared.parent / f"{BUNDLE}_raw" / "ISIC-2017_Test_v2_Data"
    # in the polyp bundle (VM-UNetV2) these VM-UNet weights were rebuilt as recorded and segmented endoscopy frames
    polyp = copy_bundle("polyp_seg", tmp_path)
    refused = rf"model.pt: weights of the bundle '{re.escape(name)}' \(.*network.json\), whose network \(VMUNet\) "
    with pytest.raises(CheckpointError, match=refused + r"is not this bundle's \(VMUNetV2, 'Polyp "):
        predict(str(polyp), str(raw_test), str(tmp_path / "other"), device="cpu",
                checkpoint=str(root / "models" / "model.pt"))
    capfd.readouterr()
    written = predict(str(root), str(raw_test), str(tmp_path / "pred"), device="cpu")
    assert len(written["masks"]) == len(list(raw_test.glob("*.jpg")))
    note = capfd.readouterr().out
    assert f"note: the network is built as it was trained ({root / 'models' / 'network.json'}): image_size [32, 32], " \
        f"dims [8, 16, 32, 64]" \
        in note and "depths [1, 1, 1, 1]" in note and "d_state 4" in note and "drop_path_rate" not in note
    result = export(str(root), "torchscript", output=str(tmp_path / "model.ts"))
    assert result.max_abs_diff <= result.tolerance
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    size = meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
    said = capfd.readouterr().out
    assert "note: the weights were trained on 32x32 images and the export is made for metadata.json's " \
        f"{size[0]}x{size[1]}" in said  # what the bundle's inference feeds it; predict resizes
    assert f"export a copy set up for the weights: python -m vmunet_monai copy_bundle {root} OUT --checkpoint " in said
    (root / "models" / "network.json").unlink()
    with pytest.raises(CheckpointError, match="of other settings"):
        predict(str(root), str(raw_test), str(tmp_path / "pred2"), device="cpu")


def test_predict_and_demo_bundle(prepared, tmp_path):
    """``make_demo_bundle`` writes a self-consistent bundle; ``predict`` segments a raw folder with it."""
    from monai.bundle import ConfigWorkflow

    from vmunet_monai.demo import make_demo_bundle
    from vmunet_monai.predict import predict

    tiny = {k.split("#")[1]: v for k, v in tiny_overrides(BUNDLE).items() if k.startswith("network_def")}
    root = make_demo_bundle(tmp_path / "bundle", size=32, epochs=1, batch_size=4, network=tiny)
    wf = ConfigWorkflow(config_file=str(root / "configs" / "train.json"), workflow_type="train",
                        meta_file=str(root / "configs" / "metadata.json"), bundle_root=str(root),
                        dataset_dir=str(prepared), device="cpu")
    wf.initialize()
    wf.run()
    raw_test = prepared.parent / f"{BUNDLE}_raw" / "ISIC-2017_Test_v2_Data"
    written = predict(str(root), str(raw_test), str(tmp_path / "pred"), device="cpu")
    images = sorted(p for p in raw_test.glob("*.jpg"))
    assert len(written["masks"]) == len(images) == len(written["overlays"])
    for image in images:
        mask = Image.open(tmp_path / "pred" / "masks" / f"{image.stem}_mask.png")
        overlay = Image.open(tmp_path / "pred" / "overlays" / f"{image.stem}_overlay.png")
        assert mask.size == overlay.size == Image.open(image).size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        predict(str(root), str(raw_test), str(tmp_path / "p2"), checkpoint=str(tmp_path / "missing.pt"))
    # evaluate_native.json scores exactly the masks predict writes, at each image's own size, with and without
    # flip test-time augmentation (--tta true on the bundle command, --tta on predict)
    from vmunet_monai.evaluation.binary import make_record

    test_items = json.loads((prepared / "datalist.json").read_text())["test"]
    for tta in (False, True):
        pred = tmp_path / f"pred_tta{int(tta)}"
        if tta:
            predict(str(root), str(raw_test), str(pred), device="cpu", tta=True)
        else:
            pred = tmp_path / "pred"
        wf = ConfigWorkflow(config_file=[str(root / "configs" / c) for c in ("train.json", "evaluate.json",
                                                                             "evaluate_native.json")],
                            workflow_type="eval", meta_file=str(root / "configs" / "metadata.json"),
                            bundle_root=str(root), dataset_dir=str(prepared), device="cpu", tta=tta,
                            **({"eval_dir": str(tmp_path / "eval_tta")} if tta else {}))
        wf.initialize()
        ensemble = wf.parser.get_parsed_content("validate#evaluator").inferer  # of one member: the checkpoint
        assert ensemble.inferer.enabled == tta and not ensemble.members
        wf.run()
        wf.finalize()
        # with --eval_dir DIR the report goes to DIR/native, as by default to eval/native (it went into DIR itself,
        # over the report of evaluate.json alone of the same names)
        report = (tmp_path / "eval_tta" if tta else root / "eval") / "native"
        # the metrics are named after the split scored, not after the training's validation
        scored = wf.parser.get_parsed_content("validate#evaluator").state.metrics
        assert {"test_mean_dice", "test_mean_iou"} <= set(scored) and not any(n.startswith("val_") for n in scored)
        assert (report / "test_mean_dice_raw.csv").is_file() and not list(report.glob("val_*"))
        with open(report / "metrics_test_per_image.csv") as f:
            rows = {row["name"]: row for row in csv.DictReader(f)}
        assert not tta or not (tmp_path / "eval_tta" / "metrics_test_per_image.csv").exists()
        assert sorted(rows) == sorted(Path(i["image"]).stem for i in test_items)
        for item in test_items:
            name = Path(item["image"]).stem
            mask = np.asarray(Image.open(pred / "masks" / f"{name}_mask.png")) > 127
            truth = np.asarray(Image.open(prepared / item["label"])) > 127
            expected = make_record(name, mask.astype(np.float32), truth.astype(np.float32))
            assert {k: int(rows[name][k]) for k in ("tp", "fp", "fn", "tn")} == \
                {k: expected[k] for k in ("tp", "fp", "fn", "tn")}, (tta, name)
        # the calibration of the same probabilities, as counted from predict's 8-bit maps (bins may differ at
        # their edges by the rounding)
        from vmunet_monai.evaluation.calibration import Calibration

        maps = predict(str(root), str(raw_test), str(tmp_path / f"maps_tta{int(tta)}"), device="cpu", tta=tta,
                       probabilities=True)["probabilities"]
        again = Calibration()
        for item in test_items:
            prob = next(m for m in maps if Path(m).name == f"{Path(item['image']).stem}_prob.png")
            again.add(np.asarray(Image.open(prob), np.float64) / 255, np.asarray(Image.open(prepared / item["label"])) > 127)
        native = json.loads((report / "metrics_test_calibration.json").read_text())
        assert native["pixels"] == again.summary()["pixels"]
        assert native["brier"] == pytest.approx(again.summary()["brier"], abs=1e-3)
        assert native["ece"] == pytest.approx(again.summary()["ece"], abs=0.02)


@pytest.mark.slow
def test_cli_train_evaluate_infer(prepared, tmp_path):
    root = copy_bundle(BUNDLE, tmp_path)
    over = tiny_overrides(BUNDLE, epochs=1)
    over.pop("epochs")
    train = bundle_run(BUNDLE, ["train.json"], root, prepared, dict(over, epochs=1), run_id="training")
    assert "val_mean_dice" in train.stdout + train.stderr
    assert (root / "models" / "model.pt").is_file()

    bundle_run(BUNDLE, ["train.json", "evaluate.json"], root, prepared, over)
    summary = json.loads((root / "eval" / "metrics_test_summary.json").read_text())
    from vmunet_monai.package import sha256

    weights = root / "models" / "model.pt"  # which weights made these numbers
    assert summary["weights"] == [{"path": str(weights.resolve()), "sha256": sha256(weights)}]
    with open(root / "eval" / "metrics_test_per_image.csv") as f:
        rows = list(csv.DictReader(f))
    test_items = json.loads((prepared / "datalist.json").read_text())["test"]
    assert len(rows) == len(test_items) == summary["overall"]["n_images"]
    dice = [float(r["dice"]) for r in rows]
    assert summary["overall"]["per_image"]["dice_mean"] == pytest.approx(np.mean(dice))
    assert set(summary["overall"]["pooled"]) == {"miou", "dsc", "accuracy", "sensitivity", "specificity"}
    assert (root / "eval" / "metrics_test.png").is_file() and (root / "eval" / "metrics.csv").is_file()

    infer_over = {k: v for k, v in over.items() if k.startswith("network_def") or k in ("image_size", "device")}
    bundle_run(BUNDLE, ["inference.json"], root, prepared, dict(infer_over, num_workers=0), run_id="inferring")
    for item in test_items:
        source = (prepared / item["image"]).resolve()
        mask = Image.open(root / "eval" / "masks" / f"{source.stem}_mask.png")
        assert mask.size == Image.open(source).size
        assert (root / "eval" / "overlays" / f"{source.stem}_overlay.png").is_file()


@pytest.mark.slow
def test_torchrun_two_processes_gloo(prepared, tmp_path):
    root = copy_bundle(BUNDLE, tmp_path)
    # the multi-GPU config picks cpu + gloo itself when there is no GPU
    overrides = {k: v for k, v in tiny_overrides(BUNDLE, epochs=1).items() if k != "device"}
    proc = bundle_run(BUNDLE, ["train.json", "multi_gpu_train.json"], root, prepared, overrides, processes=2)
    assert (root / "models" / "model.pt").is_file(), proc.stdout[-3000:]
    assert "val_mean_dice" in proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("Current learning rate") == 1  # once, not once per process


def test_demo_runs_and_prints_dice(tmp_path, capsys, monkeypatch):
    """The README's main command on the smallest settings: it must finish and print the validation Dice; with
    --baseline unet it trains MONAI's U-Net through the bundle's overlay too and compares the two."""
    import vmunet_monai.demo as demo

    monkeypatch.setattr(demo, "DEMO_NETWORK", {k.split("#")[1]: v for k, v in tiny_overrides(BUNDLE).items()
                                               if k.startswith("network_def")})
    result = demo.run_demo(out=str(tmp_path / "demo"), epochs=1, num=4, size=32, baseline="unet")
    printed = capsys.readouterr().out
    assert f"VM-UNet: validation Dice (best, epoch 1 of 1): {result['best_val_dice']:.4f}" in printed
    assert 0.0 <= result["best_val_dice"] <= 1.0 and result["test_summary"]["n_images"] == 2
    root = tmp_path / "demo" / BUNDLE
    assert (root / "models" / "model.pt").is_file()
    # what the README's quick start points to; the baseline's curves in its own folder
    for picture in ("runs/training_curves.png", "runs/baseline_unet/training_curves.png", "../prepared/preview.png"):
        assert (root / picture).is_file(), picture
    assert f"curves: {root / 'runs' / 'training_curves.png'}" in printed
    # the baseline: its own weights and evaluation, the demo's shrunk widths, compared on the same test images
    weights = torch.load(root / "models" / "baseline_unet" / "model.pt", map_location="cpu")
    assert weights["conv_0.conv_0.conv.weight"].shape[0] == demo.DEMO_BASELINES["unet"]["features"][0]
    assert f"unet: validation Dice (best, epoch 1 of 1): {result['baseline']['best_val_dice']:.4f}" in printed
    pair = result["comparison"]["overall"]["against_first"][0]
    assert pair["label"] == "unet" and pair["n_paired"] == 2
    assert pair["mean_diff"] == pytest.approx(result["baseline"]["test_summary"]["per_image"]["dice_mean"]
                                              - result["test_summary"]["per_image"]["dice_mean"])
    assert (root / "eval" / "compare" / "compare.png").is_file()
    # and it segments new images through the same overlay (default weights models/baseline_unet/model.pt)
    from vmunet_monai.predict import predict

    images = tmp_path / "demo" / "raw"
    done = predict(str(root), str(images), str(tmp_path / "unet_masks"), baseline="unet", device="cpu")
    assert done["masks"] and all(Path(m).is_file() for m in done["masks"])
    # the baseline's network.json holds its input size alone, which predict resizes to at another bundle size
    from vmunet_monai.predict import trained_network

    record = root / "models" / "baseline_unet" / "network.json"
    assert json.loads(record.read_text()) == {"_desc_": {"trained_input_size": [32, 32], "intensity_max": 255.0,
                                                         "bundle": json.loads((root / "configs" / "metadata.json")
                                                                              .read_text())["name"]}}
    larger = tmp_path / "larger.json"
    larger.write_text(json.dumps({"image_size": [64, 64]}))
    capsys.readouterr()
    configs = [str(root / "configs" / "train.json"), str(root / "configs" / "baseline_unet.json"), str(larger)]
    assert trained_network(configs, record.parent / "model.pt") == {"image_size": [32, 32], "intensity_max": 255.0}
    assert f"note: the network is built as it was trained ({record}): image_size [32, 32]" in capsys.readouterr().out


@pytest.mark.slow
def test_verify_net_in_out_full_size_network():
    """The bundle's own network (the paper's size) at the metadata's 256x256 on CPU, as the zoo CI runs it."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=config_path(BUNDLE, "metadata.json"),
                      config_file=config_path(BUNDLE, "inference.json"), device="cpu")


def test_demo_repeats_exactly_in_deterministic_mode(tmp_path, monkeypatch):
    """The demo trains in deterministic mode by default: two runs give bit-identical weights and the same Dice;
    --nodeterminism writes the bundle's default into the copy; the process's own mode is given back."""
    import vmunet_monai.demo as demo
    from vmunet_monai.validation import InputError

    monkeypatch.setattr(demo, "DEMO_NETWORK", {k.split("#")[1]: v for k, v in tiny_overrides(BUNDLE).items()
                                               if k.startswith("network_def")})
    assert not torch.are_deterministic_algorithms_enabled()
    runs = [demo.run_demo(out=str(tmp_path / f"run{i}"), epochs=2, num=4, size=32) for i in range(2)]
    assert not torch.are_deterministic_algorithms_enabled()
    assert runs[0]["best_val_dice"] == runs[1]["best_val_dice"]
    assert runs[0]["test_summary"]["per_image"] == runs[1]["test_summary"]["per_image"]
    first, second = (torch.load(tmp_path / f"run{i}" / BUNDLE / "models" / "model.pt", map_location="cpu")
                     for i in range(2))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    copy = json.loads((tmp_path / "run0" / BUNDLE / "configs" / "train.json").read_text())
    assert copy["determinism"] is True
    with pytest.raises(InputError, match="demo --determinism 'yes': true or false"):
        demo.run_demo(out=str(tmp_path / "bad"), determinism="yes")
    # the bundle's default written back by --nodeterminism (only the copy is made here: no training)
    calls = []
    monkeypatch.setattr(demo, "_train_and_evaluate", lambda *a: calls.append(a) or (0.5, 1, runs[0]["test_summary"]))
    stale = tmp_path / "free" / "predictions"  # what an earlier demo's closing hint wrote, with earlier weights
    stale.mkdir(parents=True)
    (stale / "prediction.json").write_text("{}")
    (tmp_path / "free" / demo.DEMO_MARK).write_text("")
    earlier = [tmp_path / "free" / BUNDLE / "runs" / "previous_run", tmp_path / "free" / BUNDLE / "eval"]
    for folder in earlier:  # an earlier demo's curves and evaluation
        folder.mkdir(parents=True)
        (folder / "training_log.csv").write_text("epoch\n1\n")
    demo.run_demo(out=str(tmp_path / "free"), epochs=1, num=4, size=32, determinism=False)
    assert not any(folder.exists() for folder in earlier)  # a demo run again starts from nothing
    assert calls and json.loads((tmp_path / "free" / BUNDLE / "configs" / "train.json").read_text())["determinism"] is False
    assert not stale.exists()  # the hint's predict goes into a fresh folder again


def test_a_stopped_demo_does_not_offer_a_resume_it_lacks(tmp_path, monkeypatch):
    """A training stopped by Ctrl-C says "the same command plus --resume true goes on from there"; the demo has no
    --resume, and says so instead, while it runs alone."""
    import vmunet_monai.demo as demo
    from vmunet_monai.engine import handlers

    said = []

    def stopped(*args):
        said.append(handlers.RESUME_HINT)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_run_demo", stopped)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(out=str(tmp_path / "demo"))
    assert said == ["the demo has no --resume: run it again to start over (it takes minutes)"]
    assert handlers.RESUME_HINT == "the same command plus --resume true goes on from there"


def test_the_demo_works_only_in_a_folder_of_its_own(tmp_path):
    """The demo deletes and rewrites raw/, prepared/ and its bundle folder in OUT: a folder holding anything else
    (a dataset in raw/) is refused before anything is touched; new, empty and earlier demo folders are taken."""
    import vmunet_monai.demo as demo
    from vmunet_monai.validation import InputError

    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "scan.png").write_bytes(b"a dataset of one's own")
    with pytest.raises(InputError, match=rf"demo --out {data}: holds raw, and no \.vmunet_monai_demo that marks"):
        demo.run_demo(out=str(data), epochs=1, num=4, size=32)
    assert (data / "raw" / "scan.png").read_bytes() == b"a dataset of one's own"
    assert not (data / demo.DEMO_MARK).exists()
    for folder in (tmp_path / "new", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        demo.claim_folder(folder)
        (folder / "raw").mkdir()  # what the demo writes
        demo.claim_folder(folder)  # a later demo in the same folder
        assert (folder / demo.DEMO_MARK).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        demo.claim_folder(tmp_path / "file")


def test_a_bundle_name_is_found_in_the_working_folders_bundles_first(tmp_path, monkeypatch):
    """A copy of the repository one works in (./bundles) wins over the installed checkout's bundles, and
    $VMUNET_BUNDLES_DIR over both; a folder is taken as given; a name found nowhere lists every place searched."""
    from vmunet_monai.engine import find_bundle
    from vmunet_monai.engine.utils import BUNDLES_ENV

    monkeypatch.delenv(BUNDLES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    installed = find_bundle(BUNDLE)
    assert installed == Path(config_path(BUNDLE, "train.json")).resolve().parents[1]
    (tmp_path / "bundles" / BUNDLE / "configs").mkdir(parents=True)
    assert find_bundle(BUNDLE) == (tmp_path / "bundles" / BUNDLE).resolve()
    (tmp_path / "mine" / BUNDLE / "configs").mkdir(parents=True)
    monkeypatch.setenv(BUNDLES_ENV, str(tmp_path / "mine"))
    assert find_bundle(BUNDLE) == (tmp_path / "mine" / BUNDLE).resolve()
    assert find_bundle(installed) == installed
    with pytest.raises(FileNotFoundError, match=r"bundle 'nope' not found \(searched .*mine/nope, .*bundles/nope, "):
        find_bundle("nope")


def test_weights_run_at_another_size_than_trained_are_warned_of(tmp_path, caplog):
    """evaluate.json and inference.json resize to their image_size; weights whose network.json records another
    training size are loaded with a warning naming both sizes and the option (results at another size are worse)."""
    import logging

    from vmunet_monai.engine import WeightsLoader
    from vmunet_monai.networks import VMUNet

    net = VMUNet(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4)
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    (tmp_path / "models" / "network.json").write_text(json.dumps({"_desc_": {"trained_input_size": [64, 48]}}))
    with caplog.at_level(logging.WARNING):
        for size in ([64, 48], None, [256, 256]):
            WeightsLoader(str(tmp_path / "models" / "model.pt"), {"model": net}, bundle_root=str(tmp_path),
                          image_size=size)(None)
    warned = [r.getMessage() for r in caplog.records if "was trained on" in r.getMessage()]
    assert warned == [f"{tmp_path / 'models' / 'model.pt'} was trained on 64x48 images "
                      f"({tmp_path / 'models' / 'network.json'}) and this run resizes to 256x256: results differ from "
                      f"the trained size's; give --image_size \"[64, 48]\" (predict uses the trained size itself)"]
    for bundle in ("isic_skin_lesion", "polyp_seg"):
        for config, key in (("evaluate.json", "validate#handlers"), ("inference.json", "handlers")):
            loader = json.loads(open(config_path(bundle, config)).read())[key][0]
            assert loader["image_size"] == "@image_size", (bundle, config)
