"""Bad input gets one line naming the file, the value and the rule, never a traceback from the network.

Library: :class:`vmunet_monai.validation.InputError` (and its subclasses ``DatasetLayoutError``,
``CheckpointError``); CLI: ``error: <message>`` on stderr and exit status 1. ``prepare`` skips and
names unusable files and imports the rest.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import REPO, run_env
from PIL import Image
from reliability_helpers import truncate, write_ct_volume, write_dicom_series, write_rgb

from vmunet_monai.validation import (
    InputError,
    check_binary_mask,
    check_image_pair_2d,
    check_label_values,
    check_output_location,
    os_error_line,
    read_image_2d,
    read_volume,
)


def _one_line(exc: BaseException, *parts: str) -> str:
    message = str(exc)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


def _each_refused(reader, cases):
    """Every (path, problem) case raises one InputError line naming the path and the problem."""
    for path, problem in cases:
        with pytest.raises(InputError) as failure:
            reader(path)
        _one_line(failure.value, str(path), problem, "(")


# ----------------------------------------------------------------------------------------------------
# files


def test_unusable_2d_image_files_are_named_with_the_rule(tmp_path):
    good = write_rgb(tmp_path / "good.png", 30, 41)
    assert read_image_2d(good).shape == (30, 41, 3)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    frames = tmp_path / "stack.tif"
    Image.new("L", (8, 8)).save(frames, save_all=True, append_images=[Image.new("L", (8, 8))] * 2)
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.0, np.nan], [np.inf, 1.0]], dtype=np.float32)).save(nan)
    volume = write_ct_volume(tmp_path / "ct.nii.gz")
    huge = tmp_path / "slide.png"  # 196 million pixels (a whole-slide image), 24 KB as a 1-bit PNG
    Image.new("1", (14000, 14000)).save(huge)
    float_rgb = tmp_path / "float_rgb.tif"  # PIL cannot open it at all
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(6, 7, 3).astype(np.float32), isVector=True),
                    str(float_rgb))
    cases = [
        (float_rgb, "is a TIFF of 3 channels of 32-bit float samples, which the image reader (PIL) cannot decode "
                    "(save it with 8- or 16-bit samples, or as PNG)"),
        (empty, "the file is empty"),
        (huge, "holds 196,000,000 pixels, more than PIL decodes at once (178,956,970) (the network sees an image "
               "whole, resized; cut a whole-slide image into tiles)"),
        (truncate(write_rgb(tmp_path / "cut.png", 64, 64)), "cannot be decoded"),
        (truncate(write_rgb(tmp_path / "cut.jpg", 64, 64), 0.4), "cannot be decoded"),
        (text, "is not an image file"),
        (frames, "holds 3 frames"),
        (nan, "1 NaN and 1 Inf values"),
        (volume, "is a volume file (NIfTI, NRRD, MHA or DICOM)"),
        (tmp_path / "missing.png", "no such file"),
    ]
    _each_refused(read_image_2d, cases)


def test_unusable_volumes_are_named_with_the_rule(tmp_path):
    good = write_ct_volume(tmp_path / "good.nii.gz")
    shape, data = read_volume(good)
    assert shape == (48, 44, 10) and data.shape == shape
    singleton = tmp_path / "singleton.nii.gz"  # a trailing axis of size one is still one volume
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 4, 1), np.int16), np.eye(4)), singleton)
    assert read_volume(singleton)[0] == (8, 9, 4)
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.int16), np.eye(4)), flat)
    two = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.int16), np.eye(4)), two)
    nan = tmp_path / "nan.nii.gz"
    values = np.zeros((8, 8, 4), np.float32)
    values[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(values, np.eye(4)), nan)
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    single = write_dicom_series(good, tmp_path / "series")
    for extra in sorted(single.iterdir())[1:]:
        extra.unlink()
    cases = [
        (flat, "is 2D with shape (16, 16)"),
        (two, "has shape (8, 8, 4, 2): 2 channels or time points (one 3D volume with one channel is expected: save "
              "the frame or channel to segment as a file of its own"),
        (nan, "1 NaN and 0 Inf values"),
        (truncate(write_ct_volume(tmp_path / "cut.nii.gz", seed=1)), "cannot be read as NIfTI"),
        (empty, "the file is empty"),
        (write_rgb(tmp_path / "photo.png"), "is a 2D image file"),
        (single, "1 slice (a 2D image)"),
        (tmp_path / "missing.nii.gz", "no such file"),
    ]
    _each_refused(read_volume, cases)


def test_dicom_series_reads_as_one_volume(tmp_path):
    series = write_dicom_series(write_ct_volume(tmp_path / "ct.nii.gz"), tmp_path / "series")
    shape, data = read_volume(series)
    assert shape == (48, 44, 10) and data.size == 48 * 44 * 10


def test_mask_and_label_value_rules(tmp_path):
    check_binary_mask(np.array([0, 255], np.uint8), "m.png")
    check_binary_mask(np.array([0, 1], np.uint8), "m.png")
    check_binary_mask(np.array([0, 3, 7, 250, 255], np.uint8), "jpeg_mask.jpg")  # lossy grey levels are fine
    check_binary_mask(np.array([0, 65535, 0], np.uint16), "imagej_mask.png")  # a 16-bit binary mask
    for values, problem in (([0, 1, 2], "mask values are 0, 1, 2, none of them at least 128"),
                            ([-1, 0, 1], "mask values range from -1 to 1"),
                            ([0, 300, 40000], "mask values range from 0 to 40000"),  # 16-bit values
                            ([0, 1, 2, 300], "takes prepare's --foreground nonzero"),  # 16-bit instance masks
                            ([200, 65535], "mask values range from 200 to 65535"),
                            ([0.0, np.nan], "1 NaN")):
        with pytest.raises(InputError) as failure:
            check_binary_mask(np.array(values), "masks/a.png")
        _one_line(failure.value, "masks/a.png", problem, "binary mask" if "NaN" not in problem else "finite")
        assert ("--foreground nonzero" in str(failure.value)) == (values[0] == 0 and "NaN" not in problem)
    check_label_values(np.arange(9), "label.nii.gz", num_classes=9)
    for values, bad in (([0, 3, 9, 12], "9, 12"), ([0, 2.5], "2.5"), ([-1, 0], "-1")):
        with pytest.raises(InputError) as failure:
            check_label_values(np.array(values), "label.nii.gz", num_classes=9)
        _one_line(failure.value, "label.nii.gz", f"label values {bad} are outside the classes", "integers 0-8")


def test_image_and_mask_of_different_sizes(tmp_path):
    image = write_rgb(tmp_path / "a.png", 40, 52)
    mask = tmp_path / "a_mask.png"
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(mask)
    with pytest.raises(InputError) as failure:
        check_image_pair_2d(image, mask)
    _one_line(failure.value, str(mask), str(image), "mask is 40x50 (height x width)", "image", "is 40x52", "same size")
    Image.fromarray(np.zeros((40, 52, 3), np.uint8)).save(mask)  # an RGB mask of the right size is fine
    assert check_image_pair_2d(image, mask)[:4] == (40, 52, 1, False)  # height, width, no EXIF orientation, empty


def test_outputs_never_overwrite_or_mix_with_inputs(tmp_path):
    folder = tmp_path / "images"
    image = write_rgb(folder / "a.png")
    assert check_output_location([folder], tmp_path / "out") == (tmp_path / "out").resolve()
    for inputs, output, problem in (([folder], folder, "is the input folder"),
                                    ([folder], folder / "predictions", "is inside the input folder"),
                                    ([image], image, "is the input file itself")):
        with pytest.raises(InputError) as failure:
            check_output_location(inputs, output)
        _one_line(failure.value, problem, "outputs")
    with pytest.raises(InputError, match="would be written over an input file"):
        check_output_location([image], tmp_path / "out", outputs=[image])
    # a file where the output folder (or one above it) is to be: refused before any work, as making the folder at
    # the end would be (score scored every case first); the folder of an output file is checked alike
    (tmp_path / "afile").write_text("x")
    for output, is_file, folder_named in ((tmp_path / "afile", False, tmp_path / "afile"),
                                          (tmp_path / "afile" / "sub" / "out", False, tmp_path / "afile/sub/out"),
                                          (tmp_path / "afile" / "model.ts", True, tmp_path / "afile")):
        with pytest.raises(NotADirectoryError) as refused:
            check_output_location([folder], output, output_is_file=is_file)
        assert refused.value.filename == str(folder_named)
        assert os_error_line(refused.value).startswith(f"{tmp_path / 'afile'}: a file stands where a folder is needed")
    assert check_output_location([folder], tmp_path / "new" / "model.ts", output_is_file=True).name == "model.ts"


# ----------------------------------------------------------------------------------------------------
# prepare


def _isic_raw(tmp_path, num=8):
    from vmunet_monai.data import isic

    raw = tmp_path / "raw"
    isic.demo_data(str(raw), num=num, seed=2)
    return raw, raw / "ISIC-2017_Training_Data", raw / "ISIC-2017_Training_Part1_GroundTruth"


def test_prepare_skips_and_names_unusable_pairs(tmp_path, capsys):
    from vmunet_monai.data import prepare

    raw, images, masks = _isic_raw(tmp_path)
    truncate(images / "ISIC_0000001.jpg", 0.3)
    with Image.open(masks / "ISIC_0000002_segmentation.png") as m:
        m.resize((m.width + 3, m.height)).save(masks / "ISIC_0000002_segmentation.png")
    Image.fromarray((np.arange(64).reshape(8, 8) % 3).astype(np.uint8)).resize(
        Image.open(images / "ISIC_0000003.jpg").size).save(masks / "ISIC_0000003_segmentation.png")
    (masks / "ISIC_0000004_segmentation.png").write_bytes(b"")
    (masks / "ISIC_0000005_segmentation.png").unlink()
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "prepared"))
    doc = json.loads((tmp_path / "prepared" / "datalist.json").read_text())
    reasons = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in doc["meta"]["skipped"]}
    assert set(reasons) == {f"ISIC_000000{i}.jpg" for i in range(1, 6)}
    assert "cannot be decoded" in reasons["ISIC_0000001.jpg"]
    assert "must have the same size" in reasons["ISIC_0000002.jpg"]
    assert "mask values are 0, 1, 2" in reasons["ISIC_0000003.jpg"]
    assert "the file is empty" in reasons["ISIC_0000004.jpg"]
    assert "no mask" in reasons["ISIC_0000005.jpg"]
    imported = {i["name"] for k in ("training", "validation", "test") for i in doc[k]}
    assert len(imported) == 8 + 2 + 2 - 5 and not imported & {f"ISIC_000000{i}" for i in range(1, 6)}
    err = capsys.readouterr().err
    for name in reasons:
        assert f"skipped {images / name}:" in err
    assert "5 image(s) skipped" in err


def test_prepare_fails_only_when_nothing_is_usable_and_never_writes_inside_the_dataset(tmp_path):
    from vmunet_monai.data import prepare
    from vmunet_monai.data.common import DatasetLayoutError

    raw, images, masks = _isic_raw(tmp_path, num=2)
    with pytest.raises(InputError) as failure:
        prepare("isic_skin_lesion", str(raw), str(images / "prepared"))
    _one_line(failure.value, "inside the input folder", str(images))
    for mask in masks.iterdir():
        mask.write_bytes(b"")
    with pytest.raises(DatasetLayoutError) as failure:
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "prepared"))
    _one_line(failure.value, "no usable image/mask pair", "the file is empty")
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        prepare("isic_skin_lesion", str(tmp_path / "no_such_download"), str(tmp_path / "p2"))


def test_synapse_prepare_skips_broken_cases(tmp_path, capsys):
    from vmunet_monai.data import synapse

    raw = synapse.demo_data(str(tmp_path / "raw"), num=8, seed=1, shape=(24, 24, 8))
    img, lab = tmp_path / "raw" / "RawData" / "Training" / "img", tmp_path / "raw" / "RawData" / "Training" / "label"
    cases = sorted(p.name[3:7] for p in img.iterdir())
    bad = {}
    # label of another size
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 8), np.uint8), nib.load(lab / f"label{cases[0]}.nii.gz").affine),
             lab / f"label{cases[0]}.nii.gz")
    bad[cases[0]] = "must have the same size"
    # label values outside the 13 BTCV organs
    label = nib.load(lab / f"label{cases[1]}.nii.gz")
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 20
    nib.save(nib.Nifti1Image(values, label.affine), lab / f"label{cases[1]}.nii.gz")
    bad[cases[1]] = "label values 20 are outside the classes"
    # a 2D image
    nib.save(nib.Nifti1Image(np.zeros((24, 24), np.int16), np.eye(4)), img / f"img{cases[2]}.nii.gz")
    bad[cases[2]] = "is 2D"
    truncate(img / f"img{cases[3]}.nii.gz")
    bad[cases[3]] = "cannot be read as NIfTI"
    (lab / f"label{cases[4]}.nii.gz").unlink()
    bad[cases[4]] = "no such file"
    path = synapse.prepare(raw, str(tmp_path / "prepared"), num_val=1)
    doc = json.loads(open(path).read())
    reasons = {s["file"].rsplit("img", 1)[-1][:4]: s["reason"] for s in doc["skipped"]}
    assert set(reasons) == set(bad)
    for case, problem in bad.items():
        assert problem in reasons[case], reasons[case]
    kept = {e["case"] for k in ("training", "validation", "test") for e in doc[k]}
    assert kept == set(cases) - set(bad)
    assert "5 case(s) skipped" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# datalists and the checks on loaded data


def test_datalist_entries_and_dataset_folder_are_checked(tmp_path):
    from vmunet_monai.data.common import load_datalist

    with pytest.raises(FileNotFoundError, match="no such dataset folder"):
        load_datalist(tmp_path / "missing")
    write_rgb(tmp_path / "a.png")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [
        {"image": "a.png", "label": "a.png"}, {"image": "a.png"}, {"image": "b.png", "label": "a.png"}]}))
    assert len(load_datalist(tmp_path)) == 3  # without requirements the entries are returned as they are
    with pytest.raises(InputError) as failure:
        load_datalist(tmp_path, "training", ["image", "label"])
    _one_line(failure.value, "entry 1 of 'training' has no 'label'")
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "b.png", "label": "a.png"}]}))
    with pytest.raises(InputError) as failure:
        load_datalist(tmp_path, "training", ["image", "label"])
    _one_line(failure.value, str(tmp_path / "b.png"), "no such file", "entry 0", "rerun prepare")
    # a missing validation file is named when the training data is read, before hours of caching
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": "a.png", "label": "a.png"}],
                                                        "validation": [{"image": "c.png", "label": "a.png"}]}))
    with pytest.raises(InputError) as failure:
        load_datalist(tmp_path, "training", ["image", "label"])
    _one_line(failure.value, str(tmp_path / "c.png"), "no such file", "entry 0 of 'validation'")


def _meta(array, name):
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(array), meta={"filename_or_obj": name})


def test_loaded_images_and_labels_are_checked_before_training():
    from vmunet_monai.engine import ValidateInputd

    check_2d = ValidateInputd(["image", "label"], spatial_dims=2, channels=[3])
    check_ct = ValidateInputd(["image", "label"], spatial_dims=3, channels=[1], num_classes=9)
    good = {"image": _meta(np.zeros((3, 20, 30), np.float32), "i.png"),
            "label": _meta(np.zeros((1, 20, 30), np.float32), "m.png")}
    assert check_2d(good)["image"] is good["image"]
    nan_image = np.zeros((3, 20, 30), np.float32)
    nan_image[0, 1, 1] = np.nan
    cases = [
        (check_2d, {"image": _meta(np.zeros((3, 20, 30, 4)), "vol.nii"), "label": good["label"]},
         "vol.nii", "3 spatial dimensions", "2D image"),
        (check_2d, {"image": _meta(np.zeros((2, 20, 30)), "la.png"), "label": good["label"]},
         "la.png", "2 channels", "3-channel"),
        (check_2d, {"image": _meta(nan_image, "nan.tif"), "label": good["label"]}, "nan.tif", "1 NaN", "finite"),
        (check_2d, {"image": good["image"], "label": _meta(np.zeros((1, 20, 31)), "m.png")},
         "m.png", "label is 20x31 but its image i.png is 20x30", "same size"),
        (check_2d, {"image": good["image"], "label": _meta(np.full((1, 20, 30), 2.0), "m.png")},
         "m.png", "mask values are 2", "binary mask"),
        (check_ct, {"image": _meta(np.zeros((1, 20, 30)), "slice.nii.gz"), "label": _meta(np.zeros((1, 20, 30)), "l")},
         "slice.nii.gz", "2 spatial dimensions", "3D volume"),
        (check_ct, {"image": _meta(np.zeros((1, 8, 8, 4)), "ct.nii.gz"),
                    "label": _meta(np.full((1, 8, 8, 4), 11.0), "label.nii.gz")},
         "label.nii.gz", "label values 11", "integers 0-8"),
    ]
    for check, data, *parts in cases:
        with pytest.raises(InputError) as failure:
            check(data)
        _one_line(failure.value, *parts)


def test_ct_label_on_another_grid_than_its_image_is_refused_before_it_is_scored(tmp_path):
    """A label of a prepared dataset re-saved in another voxel order (or with the identity affine of an annotation
    tool that dropped the header): the CT evaluation compared its voxels with the prediction on the image's grid and
    scored other numbers without a word. The bundle's own transforms now stop at it, naming both files."""
    from bundle_helpers import tiny_overrides, workflow

    image = write_ct_volume(tmp_path / "ct.nii.gz")
    source = nib.load(str(image))
    voxels = np.zeros(source.shape, np.uint8)
    voxels[4:18, 4:16, 1:4] = 6  # the liver on the soft-tissue block
    (tmp_path / "datalist.json").write_text(json.dumps({
        "training": [{"image": str(image), "label": str(tmp_path / "same.nii.gz")}],
        "validation": [{"image": str(image), "label": str(tmp_path / "same.nii.gz")}],
        "test": [{"image": str(image), "label": str(tmp_path / "same.nii.gz")}]}))
    nib.save(nib.Nifti1Image(voxels, source.affine), str(tmp_path / "same.nii.gz"))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # the same voxels stored left-right and front-back mirrored (RAS order)
    flip[:2, 3] = [source.shape[0] - 1, source.shape[1] - 1]
    nib.save(nib.Nifti1Image(voxels[::-1, ::-1].copy(), source.affine @ flip), str(tmp_path / "ras.nii.gz"))
    nib.save(nib.Nifti1Image(voxels, np.eye(4)), str(tmp_path / "bare.nii.gz"))
    wf = workflow("synapse_multiorgan", ["train.json", "evaluate.json"], "eval", dataset_dir=str(tmp_path),
                  **tiny_overrides("synapse_multiorgan"))
    preprocessing = wf.parser.get_parsed_content("validate#preprocessing")
    same = preprocessing({"image": str(image), "label": str(tmp_path / "same.nii.gz")})
    assert same["label"].shape == same["image"].shape
    for label in ("ras.nii.gz", "bare.nii.gz"):
        with pytest.raises(Exception) as failure:
            preprocessing({"image": str(image), "label": str(tmp_path / label)})
        cause = failure.value
        while not isinstance(cause, InputError) and cause.__cause__ is not None:
            cause = cause.__cause__
        assert isinstance(cause, InputError), failure.value
        _one_line(cause, str(tmp_path / label), f"its affine differs from the image {image}", "share one grid")


def test_bundle_training_pipeline_names_a_mislabelled_mask(tmp_path):
    """The bundle's own training transforms stop at a label map given as a binary mask, naming the file."""
    from bundle_helpers import tiny_overrides, workflow
    from monai.transforms import Compose

    image = write_rgb(tmp_path / "a.jpg", 40, 40)
    mask = tmp_path / "a_mask.png"
    Image.fromarray(np.tile(np.arange(4, dtype=np.uint8), (40, 10))).save(mask)  # classes 0-3, not a binary mask
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [{"image": str(image), "label": str(mask)}],
                                                        "validation": [{"image": str(image), "label": str(mask)}]}))
    wf = workflow("isic_skin_lesion", ["train.json"], "train", dataset_dir=str(tmp_path),
                  **tiny_overrides("isic_skin_lesion"))
    preprocessing: Compose = wf.parser.get_parsed_content("train#preprocessing")
    with pytest.raises(Exception) as failure:
        preprocessing({"image": str(image), "label": str(mask)})
    cause = failure.value
    while cause is not None and not isinstance(cause, InputError):
        cause = cause.__cause__
    assert cause is not None, failure.value
    _one_line(cause, str(mask), "mask values are 0, 1, 2, 3", "binary mask")


@pytest.mark.parametrize("bundle", ["isic_skin_lesion", "synapse_multiorgan"])
def test_an_evaluation_without_its_weights_names_the_weights_the_bundle_has(bundle, tmp_path):
    """evaluate.json's weights (``--run_name seed01`` where the training ran as seed1, say): the missing file, the
    model.pt files ``models/`` holds, and how to get weights; before, a bare FileNotFoundError from the loader."""
    from bundle_helpers import workflow

    from vmunet_monai.engine import trained_weights

    (tmp_path / "models" / "seed1").mkdir(parents=True)
    torch.save({}, tmp_path / "models" / "seed1" / "model.pt")
    wf = workflow(bundle, ["train.json", "evaluate.json"], "eval", bundle_root=str(tmp_path), run_name="seed01",
                  dataset_dir=str(tmp_path))
    loader = wf.parser.get_parsed_content("validate#handlers")[0]  # parses without weights, as the zoo checks it
    with pytest.raises(InputError) as failure:
        loader(None)  # what the evaluator's start calls
    _one_line(failure.value, str(tmp_path / "models" / "seed01" / "model.pt"), "no trained weights",
              "models holds seed1/model.pt (--run_name", "give --ensemble_checkpoints PATH")
    infer = workflow(bundle, ["inference.json"], "infer", bundle_root=str(tmp_path), run_name="seed01")
    with pytest.raises(InputError) as failure:
        infer.parser.get_parsed_content("handlers")[0](None)
    _one_line(failure.value, "seed01/model.pt: no trained weights", "seed1/model.pt", "give --checkpoint PATH")
    assert trained_weights(tmp_path / "models" / "seed1" / "model.pt", tmp_path).endswith("seed1/model.pt")
    with pytest.raises(InputError, match="holds no model.pt yet") as failure:
        trained_weights(tmp_path / "elsewhere" / "model.pt", tmp_path / "elsewhere")
    assert "download_large_files" not in str(failure.value)  # large_files.yml names no url: nothing to download
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "large_files.yml").write_text(
        'large_files:\n  - path: "models/model.pt"\n    url: "https://example.org/model.pt"\n')
    with pytest.raises(InputError, match=r"download them \(python -m monai.bundle download_large_files --bundle_path "):
        trained_weights(tmp_path / "elsewhere" / "model.pt", tmp_path / "elsewhere")  # a packaged release's


# ----------------------------------------------------------------------------------------------------
# the command line


def _cli(*args, cwd):
    env = dict(run_env(), PYTHONIOENCODING="utf-8")  # progress bars print non-ASCII characters
    return subprocess.run([sys.executable, "-m", "vmunet_monai", *args], cwd=str(cwd), env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=300)


def test_cli_prints_one_line_and_exits_non_zero(tmp_path, capsys, monkeypatch):
    """A real ``python -m vmunet_monai`` process once (its exit status, no traceback); the other messages through
    the same entry point in this process."""
    from vmunet_monai.cli import main

    missing = _cli("prepare", "polyp_seg", str(tmp_path / "no_download"), str(tmp_path / "out"), cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'no_download'}: not a folder")

    def last_line(*argv):
        with pytest.raises(SystemExit) as exc:
            main(list(argv))
        assert exc.value.code == 1
        return capsys.readouterr().err.strip().splitlines()[-1]

    monkeypatch.chdir(tmp_path)
    wrong = last_line("prepare", "synapse_multiorgan", str(REPO / "bundles"), str(tmp_path / "x"))
    assert wrong.startswith("error: ") and "neither BTCV" in wrong
    inside = last_line("prepare", "synapse_multiorgan", str(REPO / "bundles"), str(REPO / "bundles" / "x"))
    assert inside == (
        f"error: {REPO / 'bundles' / 'x'}: the prepared folder (OUT) is inside the input folder {REPO / 'bundles'} "
        "(outputs are written outside the inputs, so they never overwrite an input or get read as one; choose "
        "another folder)")
    assert not (REPO / "bundles" / "x").exists()


def test_transunet_release_with_broken_cases_keeps_the_rest(tmp_path, capsys):
    h5py = pytest.importorskip("h5py", reason="the TransUNet test volumes are HDF5 files (pip install h5py)")
    from vmunet_monai.data import synapse

    root = tmp_path / "Synapse"
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    rng = np.random.default_rng(0)
    for case in (5, 6, 7):
        for z in range(3):
            np.savez(root / "train_npz" / f"case{case:04d}_slice{z:03d}.npz", image=rng.random((12, 12)),
                     label=rng.integers(0, 9, (12, 12)).astype(np.uint8))
    truncate(root / "train_npz" / "case0007_slice001.npz")
    for case, top in ((1, 8), (2, 12)):
        with h5py.File(root / "test_vol_h5" / f"case{case:04d}.npy.h5", "w") as f:
            f["image"] = rng.random((3, 12, 12)).astype(np.float32)
            f["label"] = np.full((3, 12, 12), top, np.uint8)
    doc = json.loads(open(synapse.prepare(str(tmp_path), str(tmp_path / "prepared"), num_val=1)).read())
    kept = {e["case"] for k in ("training", "validation", "test") for e in doc[k]}
    assert kept == {"0005", "0006", "0001"}
    reasons = [s["reason"] for s in doc["skipped"]]
    assert len(reasons) == 2
    assert "case0007_slice001.npz: cannot be read" in reasons[0]
    assert "case0002.npy.h5: label values 12 are outside the classes (labels must be integers 0-8)" in reasons[1]
    assert "2 case(s) skipped" in capsys.readouterr().err


def test_an_input_error_behind_another_is_repeated_as_the_last_line():
    """MONAI re-raises a failing config expression as ``RuntimeError: Failed to evaluate ...``; after importing the
    package, the message of an InputError behind an uncaught error is the last line of stderr, and other errors
    are left as they are."""
    wrapped = ("import vmunet_monai\nfrom vmunet_monai.validation import InputError\n"
               "try:\n    raise InputError('data.json: names 4 classes (add --num_classes 4)')\n"
               "except InputError as e:\n    raise RuntimeError('Failed to evaluate ConfigExpression') from e\n")
    plain = "import vmunet_monai\nraise RuntimeError('something else')\n"
    for code, last in ((wrapped, "error: data.json: names 4 classes (add --num_classes 4)"),
                       (plain, "RuntimeError: something else")):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=run_env())
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1] == last


def test_a_file_monai_finds_no_reader_for_is_described_as_the_last_line(tmp_path):
    """A file that broke after it was prepared (a truncated JPEG, a cut NIfTI): MONAI's LoadImage lists the readers
    it tried; the last line says what is wrong with the file, as prepare would. Also when the error comes from a
    DataLoader worker (its traceback carried inside the message), and never for a file that reads."""
    from PIL import Image

    from vmunet_monai.validation import unreadable_file_error

    rng = np.random.default_rng(0)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:400])
    code = ("import vmunet_monai\nfrom monai.transforms import LoadImage\n"
            f"LoadImage(reader='PILReader', image_only=True)({str(cut)!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=run_env())
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {cut}: cannot be decoded (Truncated File Read) (the file "
                                                    "must be a complete image; is it truncated?)")
    volume = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(32, 32, 16)).astype(np.float32), np.eye(4)), volume)
    volume.write_bytes(volume.read_bytes()[:2000])
    worker = RuntimeError(f"Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                          f"last):\n  File x\nRuntimeError: LoadImage cannot find a suitable reader for file: {volume}."
                          f"\n    Please install the reader libraries\n")
    assert unreadable_file_error(RuntimeError("Failed to evaluate ConfigExpression")) is None
    try:
        raise RuntimeError("Failed to evaluate ConfigExpression") from worker
    except RuntimeError as exc:
        described = unreadable_file_error(exc)
    assert described is not None and str(described).startswith(f"{volume}: ") and "truncated" in str(described)
    readable = RuntimeError(f"LoadImage cannot find a suitable reader for file: {whole}.\n    Please install ...")
    assert unreadable_file_error(readable) is None  # nothing to add about a file that reads


def test_training_on_a_batch_of_one_at_a_tiny_image_size_ends_with_what_to_change(monkeypatch):
    """At --image_size 32 the deepest stage of the polyp network is 1x1: a batch of one image (the last of an
    epoch) would stop in a BatchNorm layer. The network says so in its own terms; a bundle run or a command ends
    with the options that avoid it, and a user's own script gets no word about options it does not have."""
    from vmunet_monai import validation
    from vmunet_monai.networks import VMUNetV2

    net = VMUNetV2(spatial_dims=2, in_channels=3, out_channels=1, dims=[8, 16, 32, 64],
                                         depths=[1, 1, 1, 1], d_state=4, mid_channels=8)
    with pytest.raises(ValueError, match=r"^VMUNetV2: a training batch of one image of 30x20 .* batches of 2 or "
                                         r"more, or on images larger than 32x32") as raised:
        net.train()(torch.rand(1, 3, 30, 20))
    net(torch.rand(2, 3, 30, 20))  # two images, or a larger one, or eval mode: no error
    net(torch.rand(1, 3, 40, 20))
    net.eval()(torch.rand(1, 3, 30, 20))
    try:  # as a bundle run sees it: MONAI's wrapping of the error
        raise RuntimeError("Failed to evaluate ConfigExpression") from raised.value
    except RuntimeError as exc:
        wrapped = exc
    monkeypatch.setattr(validation, "_command_run", lambda: True)
    last = str(validation.last_line_for(wrapped))
    assert last.startswith("a training batch of one image reached a BatchNorm layer on a 1x1 feature map")
    assert "--image_size 64" in last and "--batch_size" in last
    torch_says = ValueError("Expected more than 1 value per channel when training, got input size [1, 8, 1, 1]")
    assert "(input size [1, 8, 1, 1])" in str(validation.last_line_for(torch_says))
    monkeypatch.setattr(validation, "_command_run", lambda: False)
    assert validation.last_line_for(wrapped) is None and validation.last_line_for(torch_says) is None


def test_a_users_own_script_gets_no_line_about_options(monkeypatch):
    """Importing the package leaves a plain script's BatchNorm error alone (no --image_size advice), and a
    process run as ``python -m vmunet_monai`` or ``python -m monai.bundle`` is told apart from it."""
    code = "import torch, vmunet_monai\ntorch.nn.BatchNorm1d(4).train()(torch.randn(1, 4))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=run_env())
    assert proc.returncode == 1 and "Expected more than 1 value per channel" in proc.stderr
    assert "--image_size" not in proc.stderr
    from types import SimpleNamespace

    from vmunet_monai.validation import _command_run

    assert _command_run() is False  # (pytest's __main__)
    for main, expected in (("monai.bundle.__main__", True), ("vmunet_monai.__main__", True), ("train_mine", False)):
        monkeypatch.setitem(sys.modules, "__main__", SimpleNamespace(__spec__=SimpleNamespace(name=main)))
        assert _command_run() is expected, main


def test_a_bundle_run_without_its_prepared_data_ends_with_what_to_give(tmp_path):
    """``--dataset_dir`` at the raw download instead of prepare's OUT: the line that says what --dataset_dir must be
    (a FileNotFoundError that is also an InputError), alone: the screens of MONAI's re-raised config expression
    behind it are shown with VMUNET_TRACEBACK=1 only."""
    from vmunet_monai.validation import MissingInputError

    import shutil

    configs = shutil.copytree(REPO / "bundles" / "isic_skin_lesion" / "configs", tmp_path / "bundle" / "configs")
    (tmp_path / "raw").mkdir()
    said = (f"error: {tmp_path / 'raw' / 'datalist.json'} not found: --dataset_dir must be the OUT folder of `python "
            f"-m vmunet_monai prepare <bundle> RAW OUT` (or of `demo_data` followed by `prepare`)")
    for shown in ("", "1"):
        proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file",
                               str(configs / "metadata.json"), "--config_file", str(configs / "train.json"),
                               "--bundle_root", str(tmp_path / "bundle"), "--dataset_dir", str(tmp_path / "raw")],
                              capture_output=True, text=True, timeout=300, env=dict(run_env(), VMUNET_TRACEBACK=shown),
                              cwd=str(tmp_path))
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1] == said
        assert ("Traceback" in proc.stderr) == bool(shown), proc.stderr[-2000:]
    assert issubclass(MissingInputError, FileNotFoundError)


def test_a_nan_loss_and_an_amp_asked_for_on_the_cpu_are_said_plainly(caplog):
    """A training stopped by a non-finite loss ended in MONAI's "Failed to evaluate ConfigExpression", the line
    naming the batch and what to change 38 lines up: it is repeated last. --amp true on the CPU computed in float32
    without a word."""
    import logging

    from vmunet_monai import validation
    from vmunet_monai.engine import amp_enabled
    from vmunet_monai.engine.guards import NonFiniteLossError
    from vmunet_monai.engine.utils import _AMP_NOTED

    try:
        try:
            raise NonFiniteLossError("non-finite training loss (nan) at epoch 1, iteration 2")
        except NonFiniteLossError as exc:
            raise RuntimeError("Failed to evaluate ConfigExpression") from exc
    except RuntimeError as wrapped:
        assert str(validation.last_line_for(wrapped)).startswith("non-finite training loss (nan) at epoch 1")
    assert validation.last_line_for(RuntimeError("something else")) is None
    _AMP_NOTED.clear()
    with caplog.at_level(logging.WARNING):
        assert amp_enabled(True, "cpu") is False and amp_enabled(True, "cpu") is False
        assert amp_enabled(False, "cpu") is False
    assert caplog.text.count("--amp true: mixed precision runs on CUDA devices only; this run on cpu computes in "
                             "float32") == 1
