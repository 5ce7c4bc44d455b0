"""MONAI Label with the three bundles: ``BundleInferTask`` and ``BundleTrainTask`` driven from Python, and the
``monaibundle`` sample app served by a real MONAI Label server on 127.0.0.1, asked for labels over HTTP.

The bundles are tiny copies (see ``tiny_bundles``) whose weights make one class win everywhere, so the
label that comes back must carry exactly the value ``channel_def`` gives that class.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "monailabel",
    reason="monailabel is not installed (the [label] extra: pip install 'vmunet-monai[label]' && "
    "pip install --no-deps monailabel==0.8.5 pydicom-seg==0.4.1)",
)

from bundle_helpers import run_env  # noqa: E402
from tiny_bundles import (  # noqa: E402
    BUNDLE_NAMES,
    _rewrite,
    make_tiny_bundle,
    save_weights,
    tiny_network,
    write_ct_volume,
    write_mask,
    write_rgb_image,
)

from vmunet_monai.label import install_torchvision_fallback, remove_torchvision_fallback  # noqa: E402
from vmunet_monai.validation import InputError  # noqa: E402

# the class each tiny bundle's weights predict everywhere, by name
WINNER = {"isic_skin_lesion": "lesion", "polyp_seg": "polyp", "synapse_multiorgan": "liver"}
IMAGE = {"isic_skin_lesion": "img0.jpg", "polyp_seg": "polyp0.png", "synapse_multiorgan": "ct0.nii.gz"}
IMAGE_ID = {name: IMAGE[name].split(".")[0] for name in BUNDLE_NAMES}
RGB_SHAPE = (40, 52)  # (H, W) of the 2D test images
CT_SHAPE = (36, 30, 5)


@pytest.fixture(scope="module", autouse=True)
def _monailabel_importable():
    """Where torchvision cannot be imported, monailabel gets the two functions it needs, for this module only."""
    installed = install_torchvision_fallback()
    yield
    if installed:
        remove_torchvision_fallback()


def _labels(bundle: Path) -> dict[str, int]:
    """What MONAI Label should report: channel_def without background, names lower-cased."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    return {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}


def _read_label(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if str(path).endswith((".nii", ".nii.gz")):
        import nibabel as nib

        image = nib.load(str(path))
        return np.asarray(image.dataobj), image.affine
    from PIL import Image

    return np.asarray(Image.open(path)), None


def _check_label(name: str, bundle: Path, path: Path, label_names: dict) -> None:
    assert label_names == _labels(bundle)
    value = label_names[WINNER[name]]
    data, affine = _read_label(path)
    if name == "synapse_multiorgan":
        assert data.shape == CT_SHAPE
        np.testing.assert_allclose(affine, np.diag([1.5, 1.5, 3.0, 1.0]))  # the input's own space
    else:
        assert data.shape == RGB_SHAPE
    assert set(np.unique(data).tolist()) == {value}


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    write_rgb_image(root / IMAGE["isic_skin_lesion"], *RGB_SHAPE, seed=0)
    write_rgb_image(root / IMAGE["polyp_seg"], *RGB_SHAPE, seed=1)
    write_ct_volume(root / IMAGE["synapse_multiorgan"], CT_SHAPE)
    return root


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Tiny bundles whose output is one class everywhere (lesion, polyp, liver)."""
    root = tmp_path_factory.mktemp("label_bundles")
    out = {}
    for name in BUNDLE_NAMES:
        path = make_tiny_bundle(name, root)
        save_weights(path, constant_class=_labels(path)[WINNER[name]])
        out[name] = path
    return out


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_bundle_infer_task_returns_channel_def_values(name, bundles, studies):
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = bundles[name]
    task = BundleInferTask(str(bundle), {"preload": "false"})
    assert task.is_valid()
    assert task.labels == _labels(bundle) and task.dimension == 2
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert task.version == meta["version"] and task.description == meta["description"]
    request = {"image": str(studies / IMAGE[name]), "device": "cpu"}
    if name != "synapse_multiorgan":
        request["result_extension"] = ".png"  # a label mask must not go through JPEG compression
    label_file, result = task(request)
    _check_label(name, bundle, Path(label_file), result["label_names"])


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_bundle_train_task_trains_and_saves_weights_that_load(name, tmp_path):
    from monailabel.tasks.train.bundle import BundleTrainTask

    bundle = make_tiny_bundle(name, tmp_path / "model")
    model = save_weights(bundle, seed=3)
    before = torch.load(model, weights_only=True)
    items = []
    for i in range(5):  # 4 to train on in batches of 2 (VMUNetV2's 1x1 bottleneck at 32 px needs 2 for BatchNorm)
        if name == "synapse_multiorgan":
            image = write_ct_volume(tmp_path / "data" / f"ct{i}.nii.gz", CT_SHAPE, seed=i)
            label = write_ct_volume(tmp_path / "data" / "labels" / f"ct{i}.nii.gz", CT_SHAPE, label=True)
        else:
            image = write_rgb_image(tmp_path / "data" / f"img{i}.jpg", *RGB_SHAPE, seed=i)
            label = write_mask(tmp_path / "data" / "labels" / f"img{i}.png", *RGB_SHAPE)
        items.append({"image": str(image), "label": str(label)})

    class Datastore:  # what BundleTrainTask reads from a datastore
        def datalist(self, full_path=True):
            return items

    task = BundleTrainTask(str(bundle), {})
    assert task.is_valid()
    # with mlflow at hand (the [tracking] extra), MONAI Label's own tracking option, which it passes to the bundle
    tracking = {"tracking": "mlflow"} if importlib.util.find_spec("mlflow") else {}
    task({"model": name, "max_epochs": 1, "device": "cpu", "multi_gpu": False, "val_split": 0.2,
          "pretrained": True, **tracking}, Datastore())
    after = torch.load(model, weights_only=True)  # the bundle's CheckpointSaver wrote the trained weights
    assert after.keys() == before.keys() and any(not torch.equal(after[k], before[k]) for k in after)
    tiny_network(bundle).load_state_dict(after, strict=True)
    if tracking:  # one finished run in the bundle's store, in the experiment MONAI Label names after the model
        from mlflow.tracking import MlflowClient

        from vmunet_monai.engine import store_uri

        client = MlflowClient(store_uri(bundle / "eval"))
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert [(r.info.status, r.data.tags["workflow"]) for r in runs] == [("FINISHED", "training")]
        assert "train_loss" in runs[0].data.metrics


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, cwd, timeout=300):
    proc = subprocess.run([sys.executable, *args], cwd=str(cwd), env=run_env(), capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_real_server_serves_the_three_bundles(bundles, studies, tmp_path):
    import requests

    # the monaibundle sample app as MONAI Label ships it, with the local bundles in its model folder
    _run(["-m", "vmunet_monai.label", "apps", "--download", "--name", "monaibundle", "--output", str(tmp_path)],
         cwd=tmp_path)
    app = tmp_path / "monaibundle"
    assert (app / "main.py").is_file()
    for name, path in bundles.items():
        shutil.copytree(path, app / "model" / name)
    work = tmp_path / "studies"
    shutil.copytree(studies, work)

    port = _free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "vmunet_monai.label", "start_server", "--app", str(app), "--studies", str(work),
               "--conf", "models", ",".join(BUNDLE_NAMES), "--conf", "zoo_source", "github",  # local bundles only
               "--conf", "sam2", "false", "--conf", "preload", "false", "--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, cwd=str(tmp_path), env=run_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        info, deadline = None, time.monotonic() + 240
        while time.monotonic() < deadline and server.poll() is None:
            try:
                reply = requests.get(f"{base}/info/", timeout=5)
                if reply.status_code == 200:
                    info = reply.json()
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        assert info is not None, f"the server did not come up:\n{log_path.read_text()[-6000:]}"
        for name, path in bundles.items():
            assert info["models"][name]["labels"] == _labels(path)
            meta = json.loads((path / "configs" / "metadata.json").read_text())
            assert info["models"][name]["version"] == meta["version"]
            assert name in info["trainers"]

        for name, path in bundles.items():
            params = {} if name == "synapse_multiorgan" else {"result_extension": ".png"}
            reply = requests.post(f"{base}/infer/{name}", params={"image": IMAGE_ID[name], "output": "image"},
                                  files={"params": (None, json.dumps(params))}, timeout=120)
            assert reply.status_code == 200, f"{name}: HTTP {reply.status_code} {reply.text[:2000]}"
            suffix = ".nii.gz" if name == "synapse_multiorgan" else ".png"
            label_file = tmp_path / f"{name}_label{suffix}"
            label_file.write_bytes(reply.content)
            names = requests.post(f"{base}/infer/{name}", params={"image": IMAGE_ID[name], "output": "json"},
                                  files={"params": (None, json.dumps(params))}, timeout=120).json()["label_names"]
            _check_label(name, path, label_file, names)

        # batch inference runs in a process of its own (as training and scoring do), which needs the stand-in too;
        # over the studies of its kind only (it reads the datastore afresh)
        for other in ("polyp_seg", "synapse_multiorgan"):
            (work / IMAGE[other]).unlink()
        reply = requests.post(f"{base}/batch/infer/isic_skin_lesion", params={"run_sync": "false"},
                              json={"device": "cpu", "multi_gpu": False}, timeout=60)
        assert reply.status_code == 200, f"HTTP {reply.status_code} {reply.text[:2000]}"
        status, deadline = {}, time.monotonic() + 300
        while time.monotonic() < deadline and status.get("status") not in ("DONE", "ERROR"):
            time.sleep(1)
            status = requests.get(f"{base}/batch/infer", timeout=10).json()
        assert status.get("status") == "DONE", f"{status}\n{log_path.read_text()[-6000:]}"
        assert "\nModuleNotFoundError: No module named 'torchvision'" not in log_path.read_text()
        assert [p.stem for p in (work / "labels" / "original").iterdir()] == [IMAGE_ID["isic_skin_lesion"]]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def test_torchvision_stand_in_tiles_like_torchvision(tmp_path):
    """The two functions monailabel imports from torchvision, as the stand-in provides them."""
    from PIL import Image

    from vmunet_monai.label import make_grid, save_image

    images = torch.arange(5 * 8 * 10, dtype=torch.float32).reshape(5, 1, 8, 10)
    grid = make_grid(images, nrow=2, padding=2, normalize=True, pad_value=7.0)
    assert grid.shape == (3, 3 * (8 + 2) + 2, 2 * (10 + 2) + 2)  # 3 rows of 2, padded around every image
    assert torch.equal(grid[:, 2:10, 14:24], (images[1].expand(3, -1, -1) / images.max()))  # second image, top right
    assert grid[0, 0, 0] == 7.0 and grid[0, -1, -1] == 7.0  # padding and the empty sixth cell
    save_image(grid[:, :10, :12] / 7.0, tmp_path / "grid.png")
    assert np.asarray(Image.open(tmp_path / "grid.png")).shape == (10, 12, 3)


def test_a_bundle_copy_of_several_2d_classes_serves_them(tmp_path, studies):
    """The model card's recipe for your own 2D classes: a copy with num_classes in inference.json and the classes
    in metadata.json's channel_def; MONAI Label then names them and returns class numbers."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = make_tiny_bundle("isic_skin_lesion", tmp_path)
    _rewrite(bundle / "configs" / "inference.json", lambda c: c.update(num_classes=3))

    def classes(meta):
        pred = meta["network_data_format"]["outputs"]["pred"]
        pred.update(num_channels=3, channel_def={"0": "background", "1": "lesion", "2": "dark_core"})

    _rewrite(bundle / "configs" / "metadata.json", classes)
    save_weights(bundle, constant_class=2)
    task = BundleInferTask(str(bundle), {"preload": "false"})
    assert task.labels == {"lesion": 1, "dark_core": 2}
    label_file, result = task({"image": str(studies / IMAGE["isic_skin_lesion"]), "device": "cpu",
                               "result_extension": ".png"})
    data, _ = _read_label(Path(label_file))
    assert result["label_names"] == {"lesion": 1, "dark_core": 2}
    assert data.shape == RGB_SHAPE and set(np.unique(data).tolist()) == {2}


def test_copy_bundle_writes_a_bundle_monai_label_serves_for_weights_of_own_classes(tmp_path, studies):
    """Weights trained with --num_classes 3 at another size do not fit the bundle's configs (MONAI Label would
    stop on a raw size mismatch); copy_bundle writes a copy set up from the network.json beside them, and the copy
    names and returns the trained classes."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    from vmunet_monai.engine.handlers import write_network_settings
    from vmunet_monai.package import copy_for_weights

    bundle = make_tiny_bundle("isic_skin_lesion", tmp_path / "original")
    trained = make_tiny_bundle("isic_skin_lesion", tmp_path / "training")  # the run: 3 classes at 48 pixels
    _rewrite(trained / "configs" / "inference.json", lambda c: c.update(num_classes=3, image_size=[48, 48]))
    weights = save_weights(trained, constant_class=2)
    write_network_settings(weights.parent, tiny_network(trained), [48, 48], ["background", "lesion", "dark_core"],
                           255.0)
    copy, done = copy_for_weights(bundle, tmp_path / "lesion_core", checkpoint=weights)
    assert done[0].startswith("configs/inference.json: image_size [48, 48]") and "num_classes 3" in done[0]
    assert "outputs.pred.channel_def {'0': 'background', '1': 'lesion', '2': 'dark_core'}" in done[-2]
    assert done[-1].startswith("model-zoo checks: bundle folder layout and name;") and "verify_net_in_out" in done[-1]
    meta = json.loads((copy / "configs" / "metadata.json").read_text())["network_data_format"]
    assert meta["inputs"]["image"]["spatial_shape"] == meta["outputs"]["pred"]["spatial_shape"] == [48, 48]
    assert json.loads((copy / "configs" / "baseline_unet.json").read_text()) == json.loads(
        (bundle / "configs" / "baseline_unet.json").read_text())  # another network's overlay: left as it is
    task = BundleInferTask(str(copy), {"preload": "false"})
    assert task.labels == {"lesion": 1, "dark_core": 2}
    label_file, result = task({"image": str(studies / IMAGE["isic_skin_lesion"]), "device": "cpu",
                               "result_extension": ".png"})
    data, _ = _read_label(Path(label_file))
    assert data.shape == RGB_SHAPE and set(np.unique(data).tolist()) == {2}
    with pytest.raises(InputError, match=r"lesion_core: holds files already"):
        copy_for_weights(bundle, copy, checkpoint=weights)
    (weights.parent / "network.json").unlink()
    with pytest.raises(InputError, match=r"model.pt: no network.json beside it"):
        copy_for_weights(bundle, tmp_path / "other", checkpoint=weights)


def test_copy_bundle_keeps_the_bundle_s_spelling_of_a_class_the_training_named_with_underscores(tmp_path):
    """A datalist names its classes without spaces (prepare's left_kidney); where the bundle names that class
    already ("left kidney"), its copy keeps the bundle's spelling, which MONAI Label takes as the label's name: a
    datastore labelled with the shipped bundle matches the copy. A class of the training's own keeps its name."""
    from vmunet_monai.engine.handlers import write_network_settings
    from vmunet_monai.package import copy_for_weights

    bundle = make_tiny_bundle("isic_skin_lesion", tmp_path / "original")
    _rewrite(bundle / "configs" / "metadata.json", lambda m: m["network_data_format"]["outputs"]["pred"].update(
        channel_def={"0": "background", "1": "skin lesion"}))
    trained = make_tiny_bundle("isic_skin_lesion", tmp_path / "training")
    _rewrite(trained / "configs" / "inference.json", lambda c: c.update(num_classes=3))
    weights = save_weights(trained, constant_class=2)
    write_network_settings(weights.parent, tiny_network(trained), None, ["background", "skin_lesion", "dark_core"],
                           255.0)
    copy, _ = copy_for_weights(bundle, tmp_path / "lesion_core", checkpoint=weights)
    meta = json.loads((copy / "configs" / "metadata.json").read_text())["network_data_format"]
    assert meta["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "skin lesion", "2": "dark_core"}


@pytest.mark.parametrize("name", ["isic_skin_lesion", "polyp_seg"])
def test_epistemic_scoring_samples_the_2d_bundles_with_dropout(name, tmp_path):
    """The monaibundle app's active learning (``--conf epistemic_model NAME``): MONAI Label builds the bundle's
    network with ``dropout`` (its ``epistemic_dropout``), runs it in training mode under ``torch.no_grad`` several
    times per unlabelled image and records the entropy of the samples; each image then has a finite score."""
    from monai.transforms import Invertd, SaveImaged
    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.infer.bundle import BundleInferTask
    from monailabel.tasks.scoring.epistemic_v2 import EpistemicScoring

    bundle = make_tiny_bundle(name, tmp_path / "bundle", size=64)  # VM-UNetV2's BatchNorm trains on 2x2 maps
    save_weights(bundle)
    studies = tmp_path / "studies"
    for i in range(2):
        write_rgb_image(studies / f"img{i}.png", *RGB_SHAPE, seed=i)
    # as the app's init_scoring_methods builds it
    task = BundleInferTask(str(bundle), {"preload": "false"}, train_mode=True, skip_writer=True, dropout=0.2,
                           post_filter=[SaveImaged, Invertd])
    assert task.is_valid()
    network = task.bundle_config.get_parsed_content("network_def", instantiate=True)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in network.modules())
    datastore = LocalDatastore(str(studies), extensions=("*.png",))
    summary = EpistemicScoring(task, simulation_size=3)({"device": "cpu", "max_workers": 1}, datastore)
    assert summary["executed"] == 2 and summary["total"] == 2
    for image_id in datastore.get_unlabeled_images():
        entropy = datastore.get_image_info(image_id)["epistemic_entropy"]
        assert np.isfinite(entropy) and entropy >= 0.0


def test_another_networks_model_pt_is_refused_not_served_at_random(tmp_path, studies):
    """MONAI Label loads a bundle's model.pt with strict=False: the weights of another bundle's network (a VM-UNetV2's
    in the VMUNet bundle) loaded nothing and served masks of a network at its random start, the one sign a warning in
    the server's log. The network refuses the load, naming whose weights they are."""
    from monailabel.tasks.infer.bundle import BundleInferTask

    bundle = make_tiny_bundle("isic_skin_lesion", tmp_path / "a")
    other = save_weights(make_tiny_bundle("polyp_seg", tmp_path / "b"))
    (bundle / "models").mkdir(exist_ok=True)
    shutil.copyfile(other, bundle / "models" / "model.pt")
    task = BundleInferTask(str(bundle), {"preload": "false"})
    with pytest.raises(Exception) as refused:
        task({"image": str(studies / IMAGE["isic_skin_lesion"]), "device": "cpu", "result_extension": ".png"})
    assert "so a load with strict=False (as MONAI Label loads a bundle's model.pt) would leave the network at its " \
           "random start; it is a VM-UNetV2 checkpoint" in str(refused.value)
