"""TorchScript, ONNX and torch.export (pt2) export of the three bundles: the exported model equals eager
PyTorch within 1e-4, through ``python -m vmunet_monai export`` and through MONAI's own ``ckpt_export`` /
``onnx_export``."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from bundle_helpers import run_env
from PIL import Image
from tiny_bundles import (
    BUNDLE_NAMES,
    final_layer,
    make_tiny_bundle,
    save_weights,
    tiny_network,
    write_ct_volume,
    write_rgb_image,
)

from vmunet_monai.cli import Commands
from vmunet_monai.export import DEFAULT_TOLERANCE, ExportVerificationError, export, verify_export

SIZE = 32


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Tiny copies of the three bundles with random weights (VMUNetV2's made image-dependent)."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name in BUNDLE_NAMES:
        path = make_tiny_bundle(name, root, size=SIZE)
        save_weights(path, seed=1)
        out[name] = path
    return out


def _eager(bundle_root):
    net = tiny_network(bundle_root)
    net.load_state_dict(torch.load(bundle_root / "models" / "model.pt", weights_only=True))
    return net


def _channels(bundle_root) -> int:
    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    return meta["network_data_format"]["inputs"]["image"]["num_channels"]


def _assert_image_dependent(run, channels: int):
    """The comparison means something only if the output moves with the input far more than the tolerance."""
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(1, channels, SIZE, SIZE, generator=g), torch.rand(1, channels, SIZE, SIZE, generator=g)
    assert (run(a) - run(b)).abs().max() > 100 * DEFAULT_TOLERANCE


# VM-UNet (isic_skin_lesion) and VM-UNetV2 (polyp_seg); the CT bundle's VM-UNet on one channel is exported as
# TorchScript by the predict test below and as ONNX here
TWO_NETWORKS = ("isic_skin_lesion", "polyp_seg")


@pytest.mark.parametrize("name", TWO_NETWORKS)
def test_torchscript_export_equals_eager(name, bundles):
    from monai.data import load_net_with_metadata

    root = bundles[name]
    result = export(str(root), "torchscript")
    assert result.path == root / "models" / "model.ts" and result.path.is_file()
    assert result.input_shape == (2, _channels(root), SIZE, SIZE)  # batch 2 against a trace made with batch 1
    assert result.max_abs_diff <= 1e-4

    module, meta, extra = load_net_with_metadata(str(result.path), more_extra_files=["inference.json"])
    assert meta["version"] == json.loads((root / "configs" / "metadata.json").read_text())["version"]
    assert "network_def" in json.loads(extra["inference.json"])
    eager = _eager(root)
    x = torch.rand(3, _channels(root), SIZE, SIZE)
    with torch.no_grad():
        assert (module(x) - eager(x)).abs().max() <= 1e-4
        _assert_image_dependent(module, _channels(root))


@pytest.mark.parametrize("name", TWO_NETWORKS)
def test_torch_export_program_equals_eager(name, bundles, tmp_path):
    """pt2: a torch.export program with the scan as the vmunet_monai operator, any batch size, the
    bundle's configs embedded; loaded in a fresh process that only imports vmunet_monai (VM-UNetV2's: the
    process's check is of the operator's registration on import, the same for both networks)."""
    root = bundles[name]
    out = tmp_path / f"{name}.pt2"
    result = export(str(root), "pt2", output=str(out))
    assert result.path == out and out.is_file() and result.max_abs_diff <= 1e-4
    assert "cross_selective_scan operator" in result.summary()
    program = torch.export.load(str(out), extra_files=(extra := {"metadata.json": "", "inference.json": ""}))
    assert json.loads(extra["metadata.json"])["version"] == json.loads(
        (root / "configs" / "metadata.json").read_text())["version"]
    assert "network_def" in json.loads(extra["inference.json"])
    assert any("vmunet_monai.cross_selective_scan" in str(n.target) for n in program.graph.nodes)
    eager = _eager(root)
    x = torch.rand(3, _channels(root), SIZE, SIZE)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(eager(x), tmp_path / "expected.pt")
        _assert_image_dependent(program.module(), _channels(root))
        if name != "polyp_seg":
            assert (program.module()(x) - torch.load(tmp_path / "expected.pt")).abs().max() <= 1e-4
            return
    code = ("import torch, vmunet_monai, sys; d = sys.argv[1]; "
            "m = torch.export.load(d + '/" + out.name + "').module(); "
            "y = m(torch.load(d + '/x.pt')); print(float((y - torch.load(d + '/expected.pt')).abs().max()))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=run_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) <= 1e-4


@pytest.mark.parametrize("name", BUNDLE_NAMES)
def test_onnx_export_equals_eager_in_onnxruntime(name, bundles, tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'vmunet-monai[export]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'vmunet-monai[export]')")
    root = bundles[name]
    result = export(str(root), "onnx", output=str(tmp_path / "net.onnx"))
    assert result.max_abs_diff <= 1e-4

    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == ["pred"]
    eager = _eager(root)
    x = torch.rand(3, _channels(root), SIZE, SIZE)
    got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        assert (got - eager(x)).abs().max() <= 1e-4
    _assert_image_dependent(lambda t: torch.from_numpy(session.run(None, {"image": t.numpy()})[0]), _channels(root))


def test_the_check_sees_a_different_network(bundles):
    root = bundles["isic_skin_lesion"]
    result = export(str(root), "torchscript")
    other = _eager(root)
    with torch.no_grad():
        other.final_conv.bias.add_(0.01)
    assert verify_export(result.path, "torchscript", other, result.input_shape) > 5e-3


def test_cli_export_prints_the_difference_and_fails_above_the_tolerance(bundles, tmp_path, capsys):
    root = bundles["synapse_multiorgan"]
    Commands().export(str(root), format="torchscript", output=str(tmp_path / "ct.ts"))
    printed = capsys.readouterr().out
    diff = float(re.search(r"max abs diff .*: ([0-9.e+-]+) \(tolerance 1e-04\)", printed).group(1))
    assert diff <= 1e-4 and (tmp_path / "ct.ts").is_file()
    # eager runs the selected CPU scan backend, the export the torch backend: float32 rounding differs a little
    assert diff > 0
    with pytest.raises(SystemExit, match="export check failed: .* differs from eager PyTorch by") as raised:
        Commands().export(str(root), format="torchscript", output=str(tmp_path / "ct2.ts"), tolerance=diff / 10)
    # the setting that accepts it, the power of ten above the difference
    assert str(raised.value).endswith(f"accept it with --tolerance {10 ** math.ceil(math.log10(diff)):.0e}")


def test_clear_errors(bundles, tmp_path):
    with pytest.raises(ValueError, match="--format 'tflite': choose one of torchscript, onnx, pt2"):
        export(str(bundles["polyp_seg"]), "tflite")
    # a --checkpoint that is not there: what its folder holds, the closest name first (not the bundle's models/)
    (tmp_path / "w").mkdir()
    for name in ("model.pt", "model_best.pt", "notes.txt"):
        (tmp_path / "w" / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=rf"^--checkpoint {tmp_path}/w/modle.pt: no such file; {tmp_path}/w "
                                                r"holds model.pt, model_best.pt$"):
        export(str(bundles["polyp_seg"]), "torchscript", checkpoint=str(tmp_path / "w" / "modle.pt"))
    with pytest.raises(FileNotFoundError, match=rf"^--checkpoint {tmp_path}/gone/model.pt: no such file; there is no "
                                                rf"folder {tmp_path}/gone \(the nearest that exists: {tmp_path}\)$"):
        export(str(bundles["polyp_seg"]), "torchscript", checkpoint=str(tmp_path / "gone" / "model.pt"))
    from vmunet_monai.predict import predict

    with pytest.raises(FileNotFoundError, match=r"--checkpoint .*missing.pt: no such file; .* holds no weights file"):
        predict(str(bundles["polyp_seg"]), str(tmp_path / "w"), str(tmp_path / "out"),
                checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises(ExportVerificationError, match=r"limit is 1e-30 \(nothing written\)"):
        export(str(bundles["isic_skin_lesion"]), "torchscript", output=str(tmp_path / "x.ts"), tolerance=1e-30)
    assert not (tmp_path / "x.ts").exists()  # an export that fails its check is not left where predict would take it


def test_an_export_onto_a_full_disk_keeps_the_earlier_file(bundles, tmp_path, monkeypatch, capsys):
    """The checked export is copied beside OUTPUT and renamed over it: a disk that fills while it is copied leaves
    the earlier export whole (a move across disks truncated it first) and the command names the file."""
    import shutil
    from pathlib import Path

    from vmunet_monai.cli import main

    out = tmp_path / "model.ts"
    out.write_bytes(b"the earlier export")

    def full(source, target, *args, **kwargs):
        Path(target).write_bytes(Path(source).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(SystemExit) as stop:
        main(["export", str(bundles["polyp_seg"]), "--format", "torchscript", "--output", str(out)])
    assert stop.value.code == 1
    assert out.read_bytes() == b"the earlier export" and [p.name for p in tmp_path.iterdir()] == ["model.ts"]
    assert re.match(rf"error: {re.escape(str(out))}: could not be written \(No space left on device; [0-9.]+ MiB free "
                    r"on its disk\); what stood there before is kept$", capsys.readouterr().err.strip())


def _monai_bundle(args, cwd):
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=str(cwd), env=run_env(),
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, f"monai.bundle {args[0]} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_monai_bundle_ckpt_export_command_from_the_model_card(bundles, tmp_path):
    """The command the synapse model card gives, run as written (from the bundle folder)."""
    root = bundles["synapse_multiorgan"]
    out = tmp_path / "model.ts"
    _monai_bundle(["ckpt_export", "network_def", "--filepath", str(out), "--ckpt_file", "models/model.pt",
                   "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
                   "--bundle_root", ".", "--use_trace", "True"], cwd=root)
    module = torch.jit.load(str(out))
    x = torch.rand(4, 1, SIZE, SIZE)
    with torch.no_grad():
        assert (module(x) - _eager(root)(x)).abs().max() <= 1e-4


def test_monai_bundle_onnx_export_command_with_onnxruntime_check(bundles, tmp_path):
    """``onnx_export`` with MONAI's own onnxruntime comparison (it raises if the outputs differ)."""
    pytest.importorskip("onnx", reason="onnx is not installed (pip install 'vmunet-monai[export]')")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'vmunet-monai[export]')")
    root = bundles["polyp_seg"]
    out = tmp_path / "model.onnx"
    kwargs = "{'dynamo': False, 'verify': True, 'use_ort': True, 'rtol': 1e-4, 'atol': 1e-4}"
    _monai_bundle(["onnx_export", "network_def", "--filepath", str(out), "--ckpt_file", "models/model.pt",
                   "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
                   "--bundle_root", ".", "--use_trace", "True", "--converter_kwargs", kwargs], cwd=root)
    import onnx

    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[1].dim_value == 3


def _segment(name, root, inputs, out, **kwargs):
    """Masks (2D) or label volumes (Synapse) that predict writes, as arrays by file name."""
    import nibabel as nib

    from vmunet_monai.predict import predict

    predict(str(root), str(inputs), str(out), device="cpu", **kwargs)
    if name == "synapse_multiorgan":
        return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(out.glob("*.nii.gz"))}
    return {p.name: np.asarray(Image.open(p)) for p in sorted((out / "masks").glob("*.png"))}


@pytest.mark.parametrize("name,format", [("isic_skin_lesion", "torchscript"), ("polyp_seg", "pt2"),
                                         ("synapse_multiorgan", "torchscript"), ("isic_skin_lesion", "onnx")])
def test_predict_with_the_exported_model_writes_what_the_checkpoint_writes(name, format, bundles, tmp_path):
    """predict --model runs the export in the bundle's own pipeline (inference_exported.json): the same files,
    the same masks as with the trained weights, but for pixels the export's float rounding puts across 0.5."""
    if format == "onnx":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'vmunet-monai[export]')")
    root = make_tiny_bundle(name, tmp_path / "bundle", size=SIZE)
    save_weights(root, seed=1)
    if name != "synapse_multiorgan":  # one logit: centre it on the images, so that the masks hold both classes
        net = _eager(root)
        images = torch.stack([torch.from_numpy(np.asarray(Image.open(write_rgb_image(tmp_path / "probe.png", seed=s))))
                              .permute(2, 0, 1).float() / 255 for s in range(2)])
        with torch.no_grad():
            median = net(torch.nn.functional.interpolate(images, size=(SIZE, SIZE))).median()
            final_layer(net).bias.sub_(median)
        torch.save(net.state_dict(), root / "models" / "model.pt")
    suffix = {"torchscript": ".ts", "pt2": ".pt2", "onnx": ".onnx"}[format]
    exported = export(str(root), format, output=str(tmp_path / f"net{suffix}")).path
    inputs = tmp_path / "in"
    for i in range(2):
        if name == "synapse_multiorgan":
            write_ct_volume(inputs / f"ct_{i}.nii.gz", seed=i)
        else:
            write_rgb_image(inputs / f"img_{i}.png", height=40 + 7 * i, width=52, seed=i)
    plain = _segment(name, root, inputs, tmp_path / "plain")
    from_export = _segment(name, root, inputs, tmp_path / "exported", model=str(exported))
    assert sorted(plain) == sorted(from_export) and len(plain) == 2
    for key in plain:
        assert plain[key].shape == from_export[key].shape
        assert np.mean(plain[key] != from_export[key]) <= 1e-3, key
        assert len(np.unique(plain[key])) > 1, key  # the masks show something: the comparison means something
    import json

    record = json.loads((tmp_path / "exported" / "prediction.json").read_text())
    assert record["exported_model"] and record["environment"]["scan_backend"] == f"the exported model's own ({suffix})"


def test_an_export_carries_the_scale_its_weights_were_trained_at(tmp_path, capsys):
    """Weights of a training before 0.1.17 saw images on 0..1 (their network.json records no scale): their export
    carries that scale in its inference.json, predict --model feeds it so (the masks of the weights themselves), and
    the bundle's inference_exported.json at 0..255 warns with the setting to give."""
    import logging

    from vmunet_monai.engine.exported import exported_intensity_max, load_exported
    from vmunet_monai.engine.handlers import write_network_settings

    root = make_tiny_bundle("isic_skin_lesion", tmp_path / "bundle", size=SIZE)
    save_weights(root, seed=1)
    net = _eager(root)
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(write_rgb_image(tmp_path / "probe.png", seed=s))))
                          .permute(2, 0, 1).float() / 255 for s in range(2)])
    with torch.no_grad():  # both classes in the masks of images on 0..1
        final_layer(net).bias.sub_(net(torch.nn.functional.interpolate(images, size=(SIZE, SIZE))).median())
    torch.save(net.state_dict(), root / "models" / "model.pt")
    write_network_settings(root / "models", net, input_size=(SIZE, SIZE))  # an older training's record: no scale
    bundle_config = json.loads((root / "configs" / "inference.json").read_text())
    assert bundle_config["intensity_max"] == 255
    inputs = tmp_path / "in"
    for i in range(2):
        write_rgb_image(inputs / f"img_{i}.png", height=40 + 7 * i, width=52, seed=i)
    plain = _segment("isic_skin_lesion", root, inputs, tmp_path / "plain")
    assert all(len(np.unique(mask)) > 1 for mask in plain.values())
    for format, suffix in (("torchscript", ".ts"), ("pt2", ".pt2")):
        exported = export(str(root), format, output=str(tmp_path / f"old{suffix}")).path
        assert exported_intensity_max(exported, bundle_config) == 1.0, format
        capsys.readouterr()
        masks = _segment("isic_skin_lesion", root, inputs, tmp_path / f"from{suffix}", model=str(exported))
        assert f"{exported} holds weights trained with intensity_max 1 (the inference.json it carries)" in (
            capsys.readouterr().out)
        assert all(np.mean(plain[k] != masks[k]) <= 1e-3 for k in plain), format
        # (predict's logging.conf took pytest's capture off the root logger: the module's own logger is watched)
        warned = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: warned.append(record.getMessage())
        logging.getLogger("vmunet_monai.engine.exported").addHandler(handler)
        try:
            load_exported(exported, intensity_max=255)
            assert ("holds weights trained with intensity_max 1 (the inference.json it carries) and this run uses "
                    "intensity_max 255: its results are wrong; give --intensity_max 1") in warned[0]
            load_exported(exported, intensity_max=1)
            assert len(warned) == 1
        finally:
            logging.getLogger("vmunet_monai.engine.exported").removeHandler(handler)
    assert exported_intensity_max(exported, {}) is None  # a bundle without the setting (the CT bundle)
    write_network_settings(root / "models", net, input_size=(SIZE, SIZE), intensity_max=255)
    exported = export(str(root), "pt2", output=str(tmp_path / "new.pt2")).path
    assert exported_intensity_max(exported, bundle_config) == 255.0
    exported = export(str(root), "onnx", output=str(tmp_path / "new.onnx")).path if _has_onnx() else None
    assert exported is None or exported_intensity_max(exported, bundle_config) is None  # carries no config
    inference_exported = json.loads((root / "configs" / "inference_exported.json").read_text())
    assert "intensity_max=@intensity_max" in inference_exported["network"]


def _weights_for_classes(root, classes: int, folder):
    """The bundle's network built for ``classes`` classes (seeded by the count) and its weights in
    ``folder/model.pt``, as a training with --num_classes leaves them (without the network.json)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["num_classes"] = classes
    torch.manual_seed(classes)
    net = parser.get_parsed_content("network_def").eval()
    folder.mkdir()
    torch.save(net.state_dict(), folder / "model.pt")
    return net, folder / "model.pt"


def test_a_ct_export_carries_its_classes_and_scaling(bundles, tmp_path, capsys):
    """An export of CT-bundle weights trained on MRI with 4 classes (ACDC's: their network.json records both)
    segments with the export alone: synapse predict --model takes the class count and the scaling from the
    inference.json it carries, and options given win."""
    from vmunet_monai.engine.handlers import write_network_settings
    from vmunet_monai.predict import predict

    root = bundles["synapse_multiorgan"]
    parser_config = json.loads((root / "configs" / "inference.json").read_text())
    assert parser_config["num_classes"] == 9 and parser_config["intensity"] == "ct"
    net, weights = _weights_for_classes(root, 4, tmp_path / "acdc")
    write_network_settings(weights.parent, net, input_size=(SIZE, SIZE), scaling={"intensity": "mri"})
    model = export(str(root), checkpoint=str(weights), output=str(tmp_path / "acdc.ts")).path
    volume = write_ct_volume(tmp_path / "in" / "heart.nii.gz", seed=2)
    capsys.readouterr()
    predict(str(root), str(volume), str(tmp_path / "out"), model=str(model), device="cpu")
    said = capsys.readouterr().out
    assert "acdc.ts holds weights trained with num_classes 4, intensity mri (the inference.json it carries)" in said
    record = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert record["num_classes"] == 4 and record["settings"]["overrides"]["intensity"] == "mri"
    import nibabel as nib

    labels = np.asarray(nib.load(next((tmp_path / "out").glob("*.nii.gz"))).dataobj)
    assert labels.max() <= 3
    predict(str(root), str(volume), str(tmp_path / "ct"), model=str(model), device="cpu", intensity="ct")
    record = json.loads((tmp_path / "ct" / "prediction.json").read_text())
    assert record["settings"]["overrides"]["intensity"] == "ct" and record["num_classes"] == 4
    # the bundle's inference_exported.json run by MONAI with the bundle's settings is warned with the options to give
    import logging

    from vmunet_monai.engine.exported import load_exported

    warned = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.append(record.getMessage())
    logging.getLogger("vmunet_monai.engine.exported").addHandler(handler)
    try:
        load_exported(model, num_classes=9, intensity="ct", hu_window=[-125, 275])
        load_exported(model, num_classes=4, intensity="mri", hu_window=[-125, 275])
    finally:
        logging.getLogger("vmunet_monai.engine.exported").removeHandler(handler)
    assert len(warned) == 1 and ("trained with num_classes 4, intensity mri (the inference.json it carries) and this "
                                 "run uses num_classes 9, intensity ct: its results are wrong; give --num_classes 4 "
                                 "--intensity mri") in warned[0]
    exported_config = json.loads((root / "configs" / "inference_exported.json").read_text())
    assert "num_classes=@num_classes, intensity=@intensity, hu_window=@hu_window" in exported_config["network"]


def _has_onnx() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def test_an_exported_model_is_checked_before_anything_is_written(bundles, tmp_path):
    from vmunet_monai.predict import predict
    from vmunet_monai.validation import InputError

    root = bundles["isic_skin_lesion"]
    exported = export(str(root), "torchscript", output=str(tmp_path / "net.ts")).path
    image = write_rgb_image(tmp_path / "in" / "a.png")
    ct = export(str(bundles["synapse_multiorgan"]), "torchscript", output=str(tmp_path / "ct.ts")).path
    with pytest.raises(InputError, match=r"ct.ts: an export of the bundle 'VM-UNet Synapse multi-organ CT "
                                         r"segmentation' \(its metadata.json\), whose network or classes differ"):
        predict(str(root), str(image), str(tmp_path / "o1"), model=str(ct))
    import zipfile

    bare = tmp_path / "bare.ts"  # the same model without the metadata it carries (another tool's export)
    with zipfile.ZipFile(ct) as zin, zipfile.ZipFile(bare, "w") as zout:
        for info in zin.infolist():
            if "/extra/" not in info.filename:
                zout.writestr(info, zin.read(info.filename))
    with pytest.raises(InputError, match=r"bare.ts: gives \(1, 9, 32, 32\) for a \(1, 3, 32, 32\) input; this "
                                         r"bundle's network gives \(1, 1, 32, 32\)"):
        predict(str(root), str(image), str(tmp_path / "o1"), model=str(bare))
    with pytest.raises(InputError, match="--model .* and --checkpoint .*: an exported model carries its weights; give one of them"):
        predict(str(root), str(image), str(tmp_path / "o2"), model=str(exported), checkpoint=str(exported))
    with pytest.raises(InputError, match="--model .* and --baseline unet: .*give one of them"):
        predict(str(root), str(image), str(tmp_path / "o3"), model=str(exported), baseline="unet")
    with pytest.raises(InputError, match=r"model.pt: an exported model ends in .ts, .onnx, .pt2"):
        predict(str(root), str(image), str(tmp_path / "o4"), model=str(root / "models" / "model.pt"))
    with pytest.raises(FileNotFoundError, match="nothere.ts: no such exported model"):
        predict(str(root), str(image), str(tmp_path / "o5"), model=str(tmp_path / "nothere.ts"))
    big = make_tiny_bundle("isic_skin_lesion", tmp_path / "big", size=64)  # metadata: 64x64; the trace: 32x32
    with pytest.raises(InputError, match=r"net.ts: does not run on a \(1, 3, 64, 64\) input, the size this bundle"):
        predict(str(big), str(image), str(tmp_path / "o6"), model=str(exported))
    # the polyp network takes and gives the same shapes as the ISIC one: told apart by the metadata it carries
    polyp = export(str(bundles["polyp_seg"]), "torchscript", output=str(tmp_path / "polyp.ts")).path
    with pytest.raises(InputError, match=r"polyp.ts: an export of the bundle '.*olyp.*' \(its metadata.json\), whose "
                                         r"network or classes differ from this bundle's"):
        predict(str(root), str(image), str(tmp_path / "o7"), model=str(polyp))
    from vmunet_monai.engine.exported import load_exported

    with pytest.raises(InputError, match="polyp.ts: an export of the bundle"):  # inference_exported.json's way
        load_exported(polyp, meta_file=root / "configs" / "metadata.json")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 8))


def _saved_on_a_gpu(source, target):
    """``source`` (a torch.save file) as a GPU machine writes it: every storage's location tag says cuda:0, so
    torch.load without map_location fails on a machine without one."""
    import zipfile

    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert data.count(b"X\x03\x00\x00\x00cpu")
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, data)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(target, weights_only=True)
    return target


def test_export_and_predict_take_wrapped_weights_saved_on_a_gpu(bundles, tmp_path):
    from vmunet_monai.engine.exported import load_exported
    from vmunet_monai.predict import predict

    root = bundles["isic_skin_lesion"]
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    wrapped = tmp_path / "ddp.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 4}, wrapped)
    gpu = _saved_on_a_gpu(wrapped, tmp_path / "ddp_gpu.pt")
    exported = export(str(root), "torchscript", checkpoint=str(gpu), output=str(tmp_path / "w.ts")).path
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(load_exported(exported)(x), _eager(root)(x), atol=DEFAULT_TOLERANCE)
    image = write_rgb_image(tmp_path / "in" / "a.png")
    maps = [np.asarray(Image.open(predict(str(root), str(image), str(tmp_path / name), probabilities=True,
                                          **kw)["probabilities"][0]))
            for name, kw in (("plain", {}), ("gpu", {"checkpoint": str(gpu)}))]
    assert np.array_equal(*maps) and len(np.unique(maps[0])) > 1  # the same weights: the same probabilities


def test_exported_models_are_read_by_content_and_refused_in_one_line(bundles, tmp_path):
    from vmunet_monai.engine.exported import load_exported
    from vmunet_monai.validation import InputError

    ts = export(str(bundles["polyp_seg"]), "torchscript", output=str(tmp_path / "net.ts")).path
    as_pt = tmp_path / "net.pt"  # torch.jit.save(model, "model.pt") is common
    as_pt.write_bytes(ts.read_bytes())
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(load_exported(as_pt)(x), load_exported(ts)(x))
    cut = tmp_path / "cut.ts"
    cut.write_bytes(ts.read_bytes()[: ts.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut.ts: cannot be loaded as a torchscript model \(RuntimeError: .*cut short"):
        load_exported(cut)
    weights = tmp_path / "weights.ts"
    weights.write_bytes((bundles["polyp_seg"] / "models" / "model.pt").read_bytes())
    with pytest.raises(InputError, match=r"weights.ts: cannot be loaded .*trained weights \(a state dict\) go to "):
        load_exported(weights)


class _OneAtATime(torch.nn.Module):
    """An export fixed to a batch of 1, as MONAI's plain onnx_export writes one without dynamic axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != 1:
            raise RuntimeError("Got invalid dimensions for input: index 0 Got 2 Expected 1")
        return torch.zeros(1, 1, x.shape[2], x.shape[3])


def test_an_export_is_checked_at_the_batch_predict_will_feed_it(bundles, tmp_path):
    from vmunet_monai.engine.exported import check_exported
    from vmunet_monai.validation import InputError

    path = tmp_path / "one.ts"
    torch.jit.save(torch.jit.script(_OneAtATime()), str(path))
    meta = bundles["isic_skin_lesion"] / "configs" / "metadata.json"
    check_exported(path, meta)  # a batch of 1 runs
    with pytest.raises(InputError, match=r"one.ts: does not run on a \(2, 3, 32, 32\) input.*an export fixed to a "
                                         r"batch of 1 runs with --batch_size 1"):
        check_exported(path, meta, batch=2)


def test_weights_trained_for_more_classes_export_with_num_classes(bundles, tmp_path, capsys):
    """Weights of a training run with --num_classes 3 are refused with the option to give, and export with it."""
    from vmunet_monai.weights import CheckpointError

    root = bundles["isic_skin_lesion"]
    net, weights = _weights_for_classes(root, 3, tmp_path / "three")
    with pytest.raises(CheckpointError, match=r"its output layer has 3 classes against 2 here: it was trained with "
                                              r"--num_classes 3, so give the same --num_classes"):
        export(str(root), checkpoint=str(weights), output=str(tmp_path / "refused.ts"))
    result = export(str(root), checkpoint=str(weights), output=str(tmp_path / "three.ts"), num_classes=3)
    assert result.max_abs_diff <= DEFAULT_TOLERANCE
    assert torch.jit.load(str(tmp_path / "three.ts"))(torch.rand(1, 3, SIZE, SIZE)).shape[1] == 3
    # with the network.json a training writes beside its weights, the class count is read from it
    from vmunet_monai.engine.handlers import write_network_settings

    write_network_settings(weights.parent, net)
    export(str(root), checkpoint=str(weights), output=str(tmp_path / "recorded.ts"))
    assert "note: --num_classes 3, the classes the weights were trained for" in capsys.readouterr().out
    assert torch.jit.load(str(tmp_path / "recorded.ts"))(torch.rand(1, 3, SIZE, SIZE)).shape[1] == 3
    # predict --model reads the class count from the inference.json the export carries, --mask_values checked by it
    from vmunet_monai.predict import predict
    from vmunet_monai.validation import InputError

    image = write_rgb_image(tmp_path / "in" / "a.png")
    model = str(tmp_path / "recorded.ts")
    with pytest.raises(InputError, match=r"--mask_values \[0, 255\]: 2 values for 3 classes"):
        predict(str(root), str(image), str(tmp_path / "refused"), model=model, mask_values=[0, 255])
    assert "holds weights trained with intensity_max 1, num_classes 3 (the inference.json it carries)" in (
        capsys.readouterr().out)
    with pytest.raises(InputError, match=r"recorded.ts: gives \(1, 3, 32, 32\) for a \(1, 3, 32, 32\) input; this "
                                         r"bundle's network gives \(1, 1, 32, 32\) .*a model of another number of "
                                         r"classes runs with --num_classes"):
        predict(str(root), str(image), str(tmp_path / "two"), model=model, num_classes=2)
    with pytest.raises(InputError, match=r"recorded.ts: gives \(1, 3, 32, 32\) for a \(1, 3, 32, 32\) input; the "
                                         r"classes asked for need \(1, 4, 32, 32\) \(--num_classes, else"):
        predict(str(root), str(image), str(tmp_path / "four"), model=model, num_classes=4)
    predict(str(root), str(image), str(tmp_path / "out"), model=model, mask_values=[0, 100, 200])
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "a_mask.png"))
    assert set(np.unique(mask)) <= {0, 100, 200}
    record = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert record["num_classes"] == 3 and record["mask_values"] == [0, 100, 200]


def test_export_output_rules_are_checked_before_tracing(bundles, tmp_path):
    """--output never replaces the weights it exports or a file that is no export, a folder given with a trailing
    slash is made and gets the usual file name, and a file without the format's suffix is refused (MONAI would write
    another name)."""
    from vmunet_monai.validation import InputError

    root = bundles["isic_skin_lesion"]
    weights = root / "models" / "model.pt"
    before = weights.read_bytes()
    with pytest.raises(InputError, match=r"model.pt: the export is the input file itself"):
        export(str(root), output=str(weights))
    assert weights.read_bytes() == before
    for output, format in (("net.ts", "onnx"), ("net.onnx", "pt2")):
        with pytest.raises(InputError, match=rf"--output .*{output}: a {format} export is a file ending in"):
            export(str(root), format, output=str(tmp_path / output))
    with pytest.raises(InputError, match=r"--output .*mymodel: a torchscript export is a file with a suffix of its "
                                         r"own, such as .ts or .pt \(not none: MONAI's exporter would add one\)"):
        export(str(root), output=str(tmp_path / "mymodel"))
    # any suffix may name a TorchScript file, so a file there that is none is kept, not written over
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(InputError, match=r"notes.txt: a file that is not a TorchScript export stands there"):
        export(str(root), output=str(tmp_path / "notes.txt"))
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    made = export(str(root), output=str(tmp_path / "new") + "/").path
    assert made == tmp_path / "new" / "model.ts" and made.is_file()
