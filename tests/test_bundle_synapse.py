"""The synapse_multiorgan bundle: config properties, the input-space round trip (NIfTI and DICOM), and
train -> evaluate -> infer through ``python -m monai.bundle`` plus a two-process gloo run, on tiny volumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from reliability_helpers import write_dicom_series

from vmunet_monai.data import synapse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLE = os.path.join(REPO, "bundles", "synapse_multiorgan")
CONFIGS = os.path.join(BUNDLE, "configs")
TINY_NET = {
    "network_def#dims": [8, 16, 32, 64],
    "network_def#depths": [1, 1, 1, 1],
    "network_def#depths_decoder": [1, 1, 1, 1],
    "network_def#d_state": 4,
}
SMALL_RUN = {
    "epochs": 1,
    "iterations_per_epoch": 2,
    "val_interval": 1,
    "num_workers": 0,
    "roi_size": [32, 32],
    "slices_per_volume": 2,
    "volumes_per_batch": 2,
    "sw_batch_size": 4,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Six synthetic 48x48x12 CT cases: 2 training, 2 validation, 2 test."""
    root = tmp_path_factory.mktemp("synapse")
    raw = synapse.demo_data(str(root / "raw"), num=6, seed=0, shape=(48, 48, 12))
    synapse.prepare(raw, str(root / "prepared"), num_val=2)
    return {
        "root": root,
        "raw": raw,
        "images": os.path.join(raw, "Training", "img"),
        "prepared": str(root / "prepared"),
    }


def _workflow(config_file, workflow_type, **overrides):
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(
        config_file=config_file,
        meta_file=os.path.join(CONFIGS, "metadata.json"),
        logging_file=os.path.join(CONFIGS, "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )


def test_configs_are_formatted_as_the_model_zoo_requires():
    for name in sorted(os.listdir(CONFIGS)):
        if name.endswith(".json"):
            text = open(os.path.join(CONFIGS, name)).read()
            assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{name}: not 4-space JSON"
    meta = json.load(open(os.path.join(CONFIGS, "metadata.json")))
    assert meta["version"] in meta["changelog"]
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [224, 224]
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channels["0"] == "background" and len(channels) == 9
    assert [channels[str(k)] for k in synapse.ORGANS] == [v.replace("_", " ") for v in synapse.ORGANS.values()]
    for name in ("LICENSE", "large_files.yml", os.path.join("docs", "README.md")):
        assert os.path.isfile(os.path.join(BUNDLE, name)), name


def test_check_properties_is_empty(data, tmp_path):
    common = dict(bundle_root=str(tmp_path), dataset_dir=data["prepared"], **TINY_NET, **SMALL_RUN)
    train = _workflow(os.path.join(CONFIGS, "train.json"), "train", **common)
    train.initialize()
    assert train.check_properties() == []
    evaluate = _workflow(
        [os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")], "train", **common
    )
    evaluate.initialize()
    assert evaluate.check_properties() == []
    infer = _workflow(
        os.path.join(CONFIGS, "inference.json"),
        "infer",
        bundle_root=str(tmp_path),
        dataset_dir=data["images"],
        **TINY_NET,
    )
    infer.initialize()
    assert infer.check_properties() == []
    ensemble = infer.parser.get_parsed_content("inferer")  # of one member unless ensemble_checkpoints are given
    assert type(ensemble).__name__ == "EnsembleInferer" and not ensemble.members
    inferer = ensemble.inferer  # flip TTA around the slice inferer, off by default
    assert type(inferer).__name__ == "FlipTTAInferer" and not inferer.enabled and inferer.activation == "softmax"
    assert type(inferer.inferer).__name__ == "SliceInferer" and inferer.inferer.spatial_dim == 2


class IntensityBands(torch.nn.Module):
    """A stand-in segmenter that labels each pixel by its windowed intensity: 1 below -112.5 HU (gas),
    0 from there to 0 HU, 5 above. Its output in the input space can be checked voxel by voxel."""

    def __init__(self):
        super().__init__()
        self.register_buffer("edges", torch.tensor([-112.5, 0.0]).add(125.0).div(400.0))  # HU -> [0, 1]

    def forward(self, x):
        x = x[:, :1]
        low, high = self.edges
        logits = torch.full((x.shape[0], 9, *x.shape[2:]), -50.0, dtype=x.dtype, device=x.device)
        logits[:, 1:2] = 400.0 * (low - x)
        logits[:, 0:1] = 400.0 * torch.minimum(x - low, high - x)
        logits[:, 5:6] = 400.0 * (x - high)
        return logits


def _bands(hu):
    return np.where(hu < -112.5, 1, np.where(hu < 0, 0, 5))


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _checkpoint(tmp_path, network):
    path = str(tmp_path / "bands.pt")
    torch.save(network.state_dict(), path)
    return path


def _asymmetric_volume(path):
    """A 48x44x10 volume (0.8 x 0.7 x 3 mm, stored LPS-like) of fat (-100 HU) with an off-centre block
    of soft tissue (60 HU) and one of gas (-1000 HU); no intensity path between them crosses a third band."""
    hu = np.full((48, 44, 10), -100, dtype=np.int16)
    hu[4:18, 4:16, 1:4] = 60
    hu[30:42, 26:40, 6:9] = -1000
    affine = np.diag([-0.8, -0.7, 3.0, 1.0])
    affine[:3, 3] = [20.0, 15.0, -12.0]
    nib.save(nib.Nifti1Image(hu, affine), path)
    return path


def test_prediction_returns_to_the_input_space(tmp_path):
    """Orientation, resampling and Invertd: the segmentation lands on the input's voxels, not a flipped copy."""
    from vmunet_monai.predict_volume import predict_volumes

    network = IntensityBands()
    image_path = _asymmetric_volume(str(tmp_path / "blocks.nii.gz"))
    written = predict_volumes(
        image_path,
        str(tmp_path / "out"),
        checkpoint=_checkpoint(tmp_path, network),
        device="cpu",
        network_def=network,
        roi_size=[32, 32],
        num_workers=0,
    )
    assert [os.path.basename(w) for w in written] == ["blocks_seg.nii.gz"]
    source, seg = nib.load(image_path), nib.load(written[0])
    assert seg.shape == source.shape and np.allclose(seg.affine, source.affine, atol=1e-5)
    assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(source.affine) == ("L", "P", "S")
    expected, got = _bands(np.asarray(source.dataobj)), np.asarray(seg.dataobj)
    for organ in (1, 5):  # resampled to 1.8 mm in-plane and back: only the block borders may move
        assert _dice(got == organ, expected == organ) > 0.85
        for axis in range(3):  # any flip of an axis would be caught
            assert _dice(np.flip(got, axis) == organ, expected == organ) < 0.3


def test_a_nifti_without_orientation_codes_gets_a_segmentation_without_them(tmp_path):
    """A NIfTI whose qform and sform codes are both 0 (no orientation stored): its segmentation is written the same
    way, so ITK-based viewers (Slicer, ITK-SNAP) and nibabel each place it on its scan (with codes 1 and nibabel's
    default affine, ITK put it at another origin, mirrored)."""
    import SimpleITK as sitk

    from vmunet_monai.predict_volume import predict_volumes

    network = IntensityBands()
    source = nib.load(_asymmetric_volume(str(tmp_path / "blocks.nii.gz")))
    bare = nib.Nifti1Image(np.asarray(source.dataobj), None)
    bare.header.set_zooms(source.header.get_zooms())
    bare.header.set_qform(None, code=0)
    bare.header.set_sform(None, code=0)
    image_path = str(tmp_path / "bare.nii.gz")
    nib.save(bare, image_path)
    written = predict_volumes(image_path, str(tmp_path / "out"), checkpoint=_checkpoint(tmp_path, network),
                              device="cpu", network_def=network, roi_size=[32, 32], num_workers=0,
                              probabilities=True, uncertainty=True)
    seg = nib.load(written[0])
    image_itk = sitk.ReadImage(image_path)
    outputs = sorted((tmp_path / "out").glob("bare_*.nii.gz"))
    assert [p.name for p in outputs] == ["bare_prob.nii.gz", "bare_seg.nii.gz", "bare_uncertainty.nii.gz"]
    for path in outputs:  # the segmentation, its probabilities and its uncertainty
        header = nib.load(path).header
        assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 0), path.name
        assert np.allclose(nib.load(path).affine, nib.load(image_path).affine), path.name
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        for geometry in ("GetOrigin", "GetSpacing"):
            assert np.allclose(getattr(reader, geometry)()[:3], getattr(image_itk, geometry)(), atol=1e-4), path.name
        assert np.allclose(np.reshape(reader.GetDirection(), (reader.GetDimension(),) * 2)[:3, :3],
                           np.reshape(image_itk.GetDirection(), (3, 3)), atol=1e-4), path.name
    expected = _bands(np.asarray(source.dataobj))
    assert _dice(np.asarray(seg.dataobj) == 5, expected == 5) > 0.85


def test_outputs_carry_the_scan_s_qform_and_sform(tmp_path):
    """A scan whose qform (code 1, scanner) and sform (code 2, aligned) place it differently: its segmentation,
    probabilities and uncertainty are written with both forms and codes of the scan, so ITK (which reads the qform
    here) places each output where it places the scan, as nibabel does by the sform. MONAI wrote the sform as both,
    with codes 1: ITK then put the segmentation 15 mm from its scan."""
    import SimpleITK as sitk

    from vmunet_monai.predict_volume import predict_volumes

    network = IntensityBands()
    source = nib.load(_asymmetric_volume(str(tmp_path / "blocks.nii.gz")))
    scan = nib.Nifti1Image(np.asarray(source.dataobj), None)
    shifted = source.affine.copy()
    shifted[:3, 3] += (15.0, 0.0, 0.0)
    scan.set_qform(shifted, code=1)
    scan.set_sform(source.affine, code=2)
    image_path = str(tmp_path / "two_forms.nii.gz")
    nib.save(scan, image_path)
    predict_volumes(image_path, str(tmp_path / "out"), checkpoint=_checkpoint(tmp_path, network), device="cpu",
                    network_def=network, roi_size=[32, 32], num_workers=0, probabilities=True, uncertainty=True)
    outputs = sorted((tmp_path / "out").glob("two_forms_*.nii.gz"))
    assert [p.name for p in outputs] == ["two_forms_prob.nii.gz", "two_forms_seg.nii.gz",
                                         "two_forms_uncertainty.nii.gz"]
    scan_itk = sitk.ReadImage(image_path)
    for path in outputs:
        header = nib.load(path).header
        assert (int(header["qform_code"]), int(header["sform_code"])) == (1, 2), path.name
        assert np.allclose(header.get_qform(), shifted, atol=1e-4), path.name
        assert np.allclose(header.get_sform(), source.affine, atol=1e-4), path.name
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        assert np.allclose(reader.GetOrigin()[:3], scan_itk.GetOrigin(), atol=1e-3), path.name
    seg = np.asarray(nib.load(tmp_path / "out" / "two_forms_seg.nii.gz").dataobj)
    assert _dice(seg == 5, _bands(np.asarray(source.dataobj)) == 5) > 0.85  # placed by the sform, as training


def test_dicom_series_through_itk(tmp_path):
    from monai.transforms import LoadImage

    from vmunet_monai.predict_volume import find_volumes, predict_volumes

    series = str(tmp_path / "series" / "ct_series")
    # the shared writer puts back the locale that GDCM switches to C (ASCII) while writing
    write_dicom_series(Path(_asymmetric_volume(str(tmp_path / "blocks.nii.gz"))), Path(series))
    assert find_volumes(str(tmp_path / "series")) == [series]
    network = IntensityBands()
    written = predict_volumes(
        str(tmp_path / "series"),
        str(tmp_path / "out"),
        checkpoint=_checkpoint(tmp_path, network),
        device="cpu",
        network_def=network,
        roi_size=[32, 32],
        spacing=[1.0, 1.0, -1.0],
        num_workers=0,
    )
    assert [os.path.basename(w) for w in written] == ["ct_series_seg.nii.gz"]
    loaded = LoadImage(reader="ITKReader", image_only=True)(series)
    seg = nib.load(written[0])
    assert seg.shape == tuple(loaded.shape) and np.allclose(seg.affine, loaded.affine.numpy(), atol=1e-3)
    assert _dice(np.asarray(seg.dataobj) == 1, _bands(loaded.numpy()) == 1) > 0.85
    assert (
        _dice(np.asarray(seg.dataobj) == 1, _bands(np.asarray(nib.load(str(tmp_path / "blocks.nii.gz")).dataobj)) == 1)
        > 0.85
    )


def test_baseline_overlay_trains_and_evaluates_in_its_own_folders(data, tmp_path):
    """train.json + baseline_unet.json trains MONAI's U-Net on the same slices and validates it with the same
    sliding window; evaluate.json + the overlay scores it per organ into eval/baseline_unet, which compare
    reads. The bundle's own models/ and eval/ files are not written."""
    from vmunet_monai.evaluation.compare import run_compare

    overlay = os.path.join(CONFIGS, "baseline_unet.json")
    common = dict(bundle_root=str(tmp_path), dataset_dir=data["prepared"], **SMALL_RUN,
                  **{"network_def#features": [8, 8, 16, 32, 64, 8]})
    train = _workflow([os.path.join(CONFIGS, "train.json"), overlay], "train", **common)
    train.initialize()
    assert type(train.parser.get_parsed_content("network")).__name__ == "BasicUNet"
    train.run()
    train.finalize()
    assert (tmp_path / "models" / "baseline_unet" / "model.pt").is_file()
    evaluate = _workflow([os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json"), overlay],
                         "train", **common)
    evaluate.initialize()
    evaluate.run()
    evaluate.finalize()
    assert not (tmp_path / "models" / "model.pt").exists() and not (tmp_path / "eval" / "per_case.csv").exists()
    result = run_compare([str(tmp_path / "eval" / "baseline_unet")], metric="dice")
    assert result["overall"]["n_cases"] == 2 and set(result["organs"]) == set(synapse.ORGANS.values())
    # predict with the baseline: the overlay is merged after inference.json, so its weights load strictly
    from vmunet_monai.predict_volume import predict_volumes

    volume = os.path.join(data["images"], sorted(os.listdir(data["images"]))[0])
    written = predict_volumes(volume, str(tmp_path / "segs"), bundle_root=BUNDLE, baseline="unet", device="cpu",
                              tta=True,
                              checkpoint=str(tmp_path / "models" / "baseline_unet" / "model.pt"),
                              roi_size=[32, 32], **{"network_def#features": [8, 8, 16, 32, 64, 8]})
    assert nib.load(written[0]).shape == nib.load(volume).shape


def test_find_volumes_rejects_empty_folders(tmp_path):
    from vmunet_monai.predict_volume import find_volumes

    with pytest.raises(FileNotFoundError, match="no volumes"):
        find_volumes(str(tmp_path))


def test_label_folders_beside_their_images_are_not_segmented(tmp_path):
    """An imagesTr/labelsTr folder (a Decathlon task, BTCV) and Synapse's Training/img + label: the label maps are
    left out and named (segmented, their results replaced the images' own under the same names); the bundle's
    inference datalist also keeps one volume per output name, naming the other."""
    import warnings

    from vmunet_monai.predict_volume import find_volumes, inference_volumes

    volume = np.zeros((8, 8, 4), np.int16)
    for folder in ("task/imagesTr", "task/labelsTr", "task/imagesTs", "raw/Training/img", "raw/Training/label",
                   "twice/a", "twice/b"):
        (tmp_path / folder).mkdir(parents=True)
    for path in ("task/imagesTr/c1.nii.gz", "task/labelsTr/c1.nii.gz", "task/imagesTs/c2.nii.gz",
                 "raw/Training/img/img0001.nii.gz", "raw/Training/label/label0001.nii.gz", "twice/a/case1.nii.gz",
                 "twice/b/case1.nii.gz"):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / path))
    skipped = []
    assert find_volumes(str(tmp_path / "task"), skipped=skipped) == [str(tmp_path / "task/imagesTr/c1.nii.gz"),
                                                                      str(tmp_path / "task/imagesTs/c2.nii.gz")]
    assert [s["file"] for s in skipped] == [str(tmp_path / "task/labelsTr")]
    assert skipped[0]["reason"].endswith("labelsTr: the labels of imagesTr/ beside it, not segmented (give the folder "
                                         "itself to segment what it holds)")
    with pytest.warns(UserWarning, match="label: the labels of img/ beside it"):
        assert find_volumes(str(tmp_path / "raw")) == [str(tmp_path / "raw/Training/img/img0001.nii.gz")]
    assert find_volumes(str(tmp_path / "task/labelsTr")) == [str(tmp_path / "task/labelsTr/c1.nii.gz")]  # asked for
    with pytest.warns(UserWarning, match=r"skipped .*b/case1.nii.gz: its output case1_seg.nii.gz is already the "
                                         r"output of .*a/case1.nii.gz"):
        assert inference_volumes(str(tmp_path / "twice")) == [str(tmp_path / "twice/a/case1.nii.gz")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(inference_volumes(str(tmp_path / "task/imagesTr"))) == 1


def _cli_args(overrides):
    args = []
    for key, value in overrides.items():
        # fire reads True and False as booleans; JSON's false would arrive as the text 'false'
        args += [f"--{key}", value if isinstance(value, str) else str(value) if isinstance(value, bool) else
                 json.dumps(value)]
    return args


def _run(cmd, cwd, timeout=300):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env["PYTHONIOENCODING"] = "utf-8"  # progress bars print non-ASCII characters
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.mark.slow
def test_train_evaluate_infer_through_monai_bundle(data, tmp_path):
    root = str(tmp_path / "bundle")
    common = _cli_args({"bundle_root": root, "dataset_dir": data["prepared"], **TINY_NET, **SMALL_RUN})
    train_json, eval_json = os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")
    _run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", train_json] + common, tmp_path)
    assert os.path.isfile(os.path.join(root, "models", "model.pt"))

    _run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "evaluating",
            "--config_file",
            json.dumps([train_json, eval_json]),
        ]
        + common,
        tmp_path,
    )
    summary = json.load(open(os.path.join(root, "eval", "summary.json")))
    assert summary["num_cases"] == 2 and "hd95_mm" in summary and "transunet_hd95_voxel" in summary
    assert [w["path"] for w in summary["weights"]] == [os.path.abspath(os.path.join(root, "models", "model.pt"))]
    assert len(summary["weights"][0]["sha256"]) == 64
    with open(os.path.join(root, "eval", "per_case.csv")) as f:
        cases = [line.split(",")[0] for line in f.read().splitlines()[1:]]
    test_cases = json.load(open(os.path.join(data["prepared"], "datalist.json")))["split"]["test"]
    assert cases == [f"img{c}" for c in test_cases]
    assert os.path.isfile(os.path.join(root, "eval", "organ_boxplot.png"))
    assert os.path.isfile(os.path.join(root, "eval", f"montage_img{test_cases[0]}.png"))
    # the top-label calibration of the class probabilities, over every voxel of the test volumes
    calibration = json.load(open(os.path.join(root, "eval", "calibration.json")))
    voxels = sum(int(np.prod(nib.load(os.path.join(data["prepared"], item["label"])).shape))
                 for item in json.load(open(os.path.join(data["prepared"], "datalist.json")))["test"])
    assert calibration["kind"] == "top_label" and calibration["pixels"] == voxels
    assert os.path.isfile(os.path.join(root, "eval", "calibration.png"))

    out = str(tmp_path / "segmentations")
    infer = _cli_args(
        {
            "bundle_root": root,
            "dataset_dir": data["images"],
            "output_dir": out,
            "roi_size": [32, 32],
            "num_workers": 0,
            "probabilities": True,
            **TINY_NET,
        }
    )
    _run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "inferring",
            "--config_file",
            os.path.join(CONFIGS, "inference.json"),
        ]
        + infer,
        tmp_path,
    )
    for name in sorted(os.listdir(data["images"])):
        source = nib.load(os.path.join(data["images"], name))
        seg = nib.load(os.path.join(out, name.replace(".nii.gz", "_seg.nii.gz")))
        assert seg.shape == source.shape
        assert np.allclose(seg.affine, source.affine, atol=1e-5)
        assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(source.affine)
        assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(9))
    # the written segmentations, scored from disk, give the evaluation's numbers case by case
    from vmunet_monai.evaluation.compare import read_table
    from vmunet_monai.evaluation.score import score

    scored = score(out, data["prepared"], out=str(tmp_path / "scored"), montage=False)
    assert scored["num_cases"] == 2 and scored["missing_prediction"] == []
    assert len(scored["unused_predictions"]) == len(os.listdir(data["images"])) - 2  # the other splits' volumes
    evaluated, from_disk = read_table(os.path.join(root, "eval")), read_table(tmp_path / "scored")
    assert set(evaluated.values) == set(from_disk.values)
    for case, row in evaluated.values.items():
        for column in ("mean_dice", "dice_liver", "hd95_mm_liver"):
            assert from_disk.values[case][column] == pytest.approx(row[column], nan_ok=True), (case, column)
    # and the calibration counted from the written 8-bit probability volumes is the evaluation's, to their rounding
    assert scored["calibration"]["pixels"] == voxels and scored["calibration"]["cases"] == 2
    assert scored["calibration"]["brier"] == pytest.approx(calibration["brier"], abs=0.01)
    assert scored["calibration"]["ece"] == pytest.approx(calibration["ece"], abs=0.02)


@pytest.mark.slow
def test_multi_gpu_config_with_two_gloo_processes(data, tmp_path):
    root = str(tmp_path / "bundle")
    configs = json.dumps([os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "multi_gpu_train.json")])
    args = _cli_args(
        {"bundle_root": root, "dataset_dir": data["prepared"], **TINY_NET, **SMALL_RUN, "volumes_per_batch": 1}
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    result = _run(torchrun + ["-m", "monai.bundle", "run", "training", "--config_file", configs] + args, tmp_path)
    assert os.path.isfile(os.path.join(root, "models", "model.pt")), result.stdout[-2000:]


def test_channel_argmax_is_asdiscrete_argmax():
    """The bundle's label maps come from ChannelArgmaxd: AsDiscreted(argmax=True)'s result (first of equal maxima,
    dtype and meta kept) on MetaTensors, tensors and arrays."""
    import numpy as np
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted

    from vmunet_monai.engine import ChannelArgmaxd

    torch.manual_seed(0)
    scores = torch.rand(9, 24, 20, 6)
    scores[:, :4] = scores[:, :4].round(decimals=1)  # many exact ties
    for value in (MetaTensor(scores, affine=torch.diag(torch.tensor([0.7, 0.7, 2.5, 1.0])),
                             meta={"filename_or_obj": "case.nii.gz"}), scores.clone(), scores.numpy()):
        ours = ChannelArgmaxd("pred")({"pred": value})["pred"]
        theirs = AsDiscreted("pred", argmax=True)({"pred": value})["pred"]
        assert type(ours) is type(theirs) and ours.dtype == theirs.dtype and ours.shape == (1, 24, 20, 6)
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
        if isinstance(value, MetaTensor):
            assert torch.equal(ours.affine, theirs.affine) and ours.meta["filename_or_obj"] == "case.nii.gz"
