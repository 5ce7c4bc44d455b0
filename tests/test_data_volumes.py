"""Your own CT volumes and classes through the synapse_multiorgan bundle: the Decathlon / nnU-Net layouts,
class names, skipped cases, and a bundle trained, evaluated and run on two classes of its own."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vmunet_monai.data import prepare, synapse
from vmunet_monai.data.common import DatasetLayoutError, check_num_classes, datalist_classes
from vmunet_monai.validation import InputError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "synapse_multiorgan" / "configs"
TINY = {"network_def#dims": [8, 16, 32, 64], "network_def#depths": [1, 1, 1, 1],
        "network_def#depths_decoder": [1, 1, 1, 1], "network_def#d_state": 4, "epochs": 1, "iterations_per_epoch": 2,
        "val_interval": 1, "num_workers": 0, "roi_size": [32, 32], "slices_per_volume": 2, "volumes_per_batch": 2,
        "sw_batch_size": 4}


def _own_dataset(root: Path, cases: int = 6, naming: str = "nnunet", shape=(40, 40, 10), seed: int = 0) -> Path:
    """Synthetic CT whose labels keep two organs of their own: 1 liver, 2 spleen (BTCV 6 and 1)."""
    demo = synapse.demo_data(str(root / "demo"), num=max(cases, 4), seed=seed, shape=shape)
    raw = root / "own" / "Task01_Abdomen"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for i, name in enumerate(sorted(os.listdir(os.path.join(demo, "Training", "img")))[:cases]):
        image = nib.load(os.path.join(demo, "Training", "img", name))
        btcv = np.asarray(nib.load(os.path.join(demo, "Training", "label", name.replace("img", "label"))).dataobj)
        own = np.zeros_like(btcv, dtype=np.uint8)
        own[btcv == 6], own[btcv == 1] = 1, 2
        case = f"abd_{i:03d}"
        image_name = f"{case}_0000.nii.gz" if naming == "nnunet" else f"{case}.nii.gz"
        nib.save(image, raw / "imagesTr" / image_name)
        nib.save(nib.Nifti1Image(own, image.affine), raw / "labelsTr" / f"{case}.nii.gz")
    return raw


def _datalist(out: Path) -> dict:
    return json.loads((out / "datalist.json").read_text())


def test_nnunet_layout_with_dataset_json_names(tmp_path, capsys):
    raw = _own_dataset(tmp_path, cases=7)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2}}))
    first = raw / "imagesTr" / "abd_000_0000.nii.gz"
    (raw / "imagesTr" / "abd_000_0001.nii.gz").write_bytes(first.read_bytes())  # a second channel
    third = nib.load(raw / "imagesTr" / "abd_003_0000.nii.gz")  # case abd_003 twice: uncompressed beside
    nib.save(nib.Nifti1Image(np.asarray(third.dataobj), third.affine), raw / "imagesTr" / "abd_003_0000.nii")
    for folder in ("imagesTr", "labelsTr"):  # macOS archive companions: hidden, not volumes, not reported
        (raw / folder / "._abd_002.nii.gz").write_bytes(b"\0" * 4096)
    label = nib.load(raw / "labelsTr" / "abd_001.nii.gz")
    bad = np.asarray(label.dataobj).copy()
    bad[0, 0, 0] = 3  # a value that dataset.json does not name
    nib.save(nib.Nifti1Image(bad, label.affine), raw / "labelsTr" / "abd_001.nii.gz")
    out = tmp_path / "out"
    prepare("synapse_multiorgan", str(tmp_path / "own"), str(out), num_val=1)  # the folder above is enough
    doc = _datalist(out)
    assert doc["meta"]["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert doc["meta"]["num_classes"] == 3
    assert datalist_classes(out) == {1: "liver", 2: "spleen"}
    cases = [c["case"] for k in ("training", "validation", "test") for c in doc[k]]
    assert sorted(cases) == [f"abd_{i:03d}" for i in (0, 2, 3, 4, 5, 6)]
    assert [len(doc[k]) for k in ("training", "validation", "test")] == [4, 1, 1]
    reasons = {Path(s["file"]).name: s["reason"] for s in doc["meta"]["skipped"]}
    assert "channel 1 of case abd_000" in reasons["abd_000_0001.nii.gz"]
    assert "label values 3 are outside the classes" in reasons["abd_001_0000.nii.gz"]
    # one volume per case, so that a scan cannot land in two splits: the first by name, the other named
    assert "is the label of" in reasons["abd_003_0000.nii.gz"] and "two volumes of case 'abd_003'" in reasons[
        "abd_003_0000.nii.gz"]
    assert [c["image"] for k in doc if k in ("training", "validation", "test") for c in doc[k]
            if c["case"] == "abd_003"][0].endswith("abd_003_0000.nii")
    out_text = capsys.readouterr().out
    assert "train, evaluate and predict with --num_classes 3" in out_text
    assert f"preview: {out / 'preview.png'}" in out_text and (out / "preview.png").stat().st_size > 10_000
    check_num_classes(out, 3)
    with pytest.raises(InputError, match=r"names 3 classes \(background, liver, spleen\) but num_classes is 9 "
                                         r"\(the network's outputs\): add --num_classes 3"):
        check_num_classes(out, 9)


def test_dataset_json_values_other_than_0_to_k_are_written_as_the_classes_0_to_k(tmp_path, capsys):
    """dataset.json naming liver 1, spleen 2, tumour 5 (as nnU-Net's may): four classes, not six with a class_3 and
    class_4 that no voxel holds; the labels are written into OUT/labels with 5 as 3 (header and affine kept), the
    datalist records the raw values, a case holding 3 (not named) is skipped and named, and a perfect prediction
    scores a Dice of 1 against the prepared dataset."""
    from vmunet_monai.evaluation.score import score_volumes

    raw = _own_dataset(tmp_path, cases=7)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                  "labels": {"background": 0, "liver": 1, "spleen": 2, "tumour": 5}}))
    originals = {}
    for path in sorted((raw / "labelsTr").iterdir()):
        label = nib.load(path)
        voxels = np.asarray(label.dataobj).copy()
        liver = np.argwhere(voxels == 1)
        voxels[tuple(liver[: len(liver) // 3].T)] = 5  # a tumour inside the liver
        if path.name == "abd_006.nii.gz":
            voxels[0, 0, 0] = 3  # a value that dataset.json does not name
        saved = nib.Nifti1Image(voxels, label.affine)
        saved.set_qform(label.affine, code=1)
        nib.save(saved, path)
        originals[path.name[: -len(".nii.gz")]] = voxels
    out = tmp_path / "out"
    prepare("synapse_multiorgan", str(raw), str(out), num_val=1)
    printed = capsys.readouterr().out
    assert "4 classes (background, liver, spleen, tumour)" in printed
    assert "train, evaluate and predict with --num_classes 4" in printed
    assert (f"note: dataset.json names the label values 0, 1, 2, 5, not 0-3: the labels are written into "
            f"{out / 'labels'} as the classes 0 -> 0 background, 1 -> 1 liver, 2 -> 2 spleen, 5 -> 3 tumour") in printed
    doc = _datalist(out)
    assert doc["meta"]["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "tumour"}
    assert doc["meta"]["num_classes"] == 4 and doc["meta"]["label_values"] == [0, 1, 2, 5]
    check_num_classes(out, 4)
    reasons = {Path(s["file"]).name: s["reason"] for s in doc["meta"]["skipped"]}
    assert list(reasons) == ["abd_006_0000.nii.gz"]
    assert "label values 3 are outside the classes (dataset.json names the values 0, 1, 2, 5)" in reasons[
        "abd_006_0000.nii.gz"]
    entries = {c["case"]: c for k in ("training", "validation", "test") for c in doc[k]}
    assert sorted(entries) == [f"abd_{i:03d}" for i in range(6)]
    for case, entry in entries.items():
        assert (out / entry["label"]).resolve() == (out / "labels" / f"{case}_label.nii.gz").resolve()
        written = nib.load(out / entry["label"])
        expected = originals[case].copy()
        expected[expected == 5] = 3
        assert np.array_equal(np.asarray(written.dataobj), expected) and 3 in expected
        assert written.get_data_dtype() == np.uint8
        assert np.allclose(written.affine, nib.load(raw / "labelsTr" / f"{case}.nii.gz").affine)
        assert int(written.header["qform_code"]) == 1
    pred = tmp_path / "pred"  # a network trained on the prepared classes predicts 0..3
    pred.mkdir()
    for entry in doc["test"]:
        (pred / f"{entry['case']}.nii.gz").write_bytes((out / entry["label"]).read_bytes())
    summary = score_volumes(pred, out, out=tmp_path / "scored", montage=False)
    assert summary["organs"] == ["liver", "spleen", "tumour"]
    assert summary["transunet_dice"]["mean_over_organs"] == 1.0 and summary["dice"]["mean_over_organs"] == 1.0


def test_class_names_from_the_values_or_the_option_and_a_labelled_test_folder(tmp_path):
    raw = _own_dataset(tmp_path, cases=6, naming="plain")
    (raw / "imagesTs").mkdir()
    (raw / "labelsTs").mkdir()
    for name in ("abd_004", "abd_005"):  # move two cases into a labelled test set
        (raw / "imagesTr" / f"{name}.nii.gz").rename(raw / "imagesTs" / f"{name}.nii.gz")
        (raw / "labelsTr" / f"{name}.nii.gz").rename(raw / "labelsTs" / f"{name}_seg.nii.gz")
    prepare("synapse_multiorgan", str(raw), str(tmp_path / "a"))
    doc = _datalist(tmp_path / "a")
    assert doc["meta"]["labels"] == {"0": "background", "1": "class_1", "2": "class_2"}
    assert [c["case"] for c in doc["test"]] == ["abd_004", "abd_005"]
    assert len(doc["training"]) == 3 and len(doc["validation"]) == 1
    prepare("synapse_multiorgan", str(raw), str(tmp_path / "b"), classes="liver,spleen,kidney left")
    assert datalist_classes(tmp_path / "b") == {1: "liver", 2: "spleen", 3: "kidney_left"}
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organs": [1, 2]}}))
    with pytest.raises(InputError, match=r"dataset.json: labels entry 'organs': \[1, 2\] is not one value and one "
                                         r"name .*give --classes"):
        prepare("synapse_multiorgan", str(raw), str(tmp_path / "c"))


def test_layout_choice_and_options_of_the_other_layout(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match=r"neither BTCV .* nor your own folders \(imagesTr/ and labelsTr/"):
        prepare("synapse_multiorgan", str(empty), str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="not a Synapse dataset"):
        prepare("synapse_multiorgan", str(empty), str(tmp_path / "o"), layout="btcv")
    demo = synapse.demo_data(str(tmp_path / "btcv"), num=4, seed=0, shape=(24, 24, 8))
    with pytest.raises(InputError, match=r"--classes 'a,b': only for the folders layout.*read as btcv"):
        prepare("synapse_multiorgan", demo, str(tmp_path / "o"), classes="a,b")
    raw = _own_dataset(tmp_path / "x", cases=4)
    with pytest.raises(InputError, match=r"--spacing .*only for the TransUNet release's layout.*read as folders"):
        prepare("synapse_multiorgan", str(raw), str(tmp_path / "o"), spacing="1,1,3")
    with pytest.raises(DatasetLayoutError, match=r"4 usable cases cannot give test, validation \(--num_val 3\)"):
        prepare("synapse_multiorgan", str(raw), str(tmp_path / "o"), num_val=3)
    with pytest.raises(InputError, match=r"--test_fraction 0: must be above 0 and below 1"):
        prepare("synapse_multiorgan", str(raw), str(tmp_path / "o"), test_fraction=0)
    for label in (raw / "labelsTr").iterdir():
        label.write_bytes(b"")  # every label broken
    with pytest.raises(DatasetLayoutError, match=r"no usable case; 4 skipped \(first: .*abd_000"):
        prepare("synapse_multiorgan", str(raw), str(tmp_path / "o"))
    from PIL import Image

    photos = tmp_path / "photos"  # a 2D dataset given to the volume bundle: said, not "0 skipped" alone
    for folder in ("imagesTr", "labelsTr"):
        (photos / folder).mkdir(parents=True)
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(photos / folder / "a.png")
    with pytest.raises(DatasetLayoutError, match=r"no usable case; 0 skipped: it holds no NIfTI volumes but 2 2D "
                                                 r"image file\(s\) \(first: .*a.png\), which the 2D bundles "
                                                 r"\(isic_skin_lesion, polyp_seg\) take"):
        prepare("synapse_multiorgan", str(photos), str(tmp_path / "o"))


def test_bundle_trains_evaluates_and_predicts_your_own_classes(tmp_path, capsys):
    from monai.bundle import ConfigWorkflow

    from vmunet_monai.predict import predict
    from vmunet_monai.weights import CheckpointError

    raw = _own_dataset(tmp_path, cases=6, shape=(48, 48, 12))
    prepared = tmp_path / "prepared"
    prepare("synapse_multiorgan", str(raw), str(prepared), classes="liver,spleen", num_val=2)

    def workflow(configs, **over):
        return ConfigWorkflow(config_file=[str(CONFIGS / c) for c in configs], meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=str(CONFIGS / "logging.conf"), workflow_type="train",
                              bundle_root=str(tmp_path / "bundle"), dataset_dir=str(prepared), **TINY, **over)

    wrong = workflow(["train.json"])
    with pytest.raises(RuntimeError) as caught:  # MONAI wraps what a config expression raises
        wrong.initialize()
    assert isinstance(caught.value.__cause__, InputError)
    assert "add --num_classes 3 to the bundle command" in str(caught.value.__cause__)
    for configs in (["train.json"], ["train.json", "evaluate.json"]):
        wf = workflow(configs, num_classes=3)
        wf.initialize()
        wf.run()
        wf.finalize()
    summary = json.loads((tmp_path / "bundle" / "eval" / "summary.json").read_text())
    assert summary["organs"] == ["liver", "spleen"] and summary["num_cases"] == 1
    header = (tmp_path / "bundle" / "eval" / "per_case.csv").read_text().splitlines()[0].split(",")
    assert {"dice_liver", "dice_spleen", "hd95_mm_spleen"} <= set(header) and "dice_aorta" not in header
    from vmunet_monai.predict_volume import predict_volumes

    volume = next((raw / "imagesTr").glob("*.nii.gz"))
    weights = tmp_path / "bundle" / "models" / "model.pt"
    tiny_net = {k: v for k, v in TINY.items() if k.startswith("network_def#")}
    capsys.readouterr()
    # the class count comes from the network.json the training wrote beside the weights
    written = predict_volumes(str(volume), str(tmp_path / "segs"), checkpoint=str(weights), device="cpu",
                              roi_size=[32, 32], **tiny_net)
    assert "note: --num_classes 3, the classes the weights were trained for" in capsys.readouterr().out
    seg = np.asarray(nib.load(written[0]).dataobj)
    assert seg.shape == nib.load(volume).shape and set(np.unique(seg)) <= {0, 1, 2}
    alone = tmp_path / "alone" / "model.pt"  # the weights without their network.json: the mismatch is named
    alone.parent.mkdir()
    alone.write_bytes(weights.read_bytes())
    with pytest.raises(CheckpointError, match="its output layer has 3 classes against 9 here: it was trained with "
                                              "--num_classes 3, so give the same --num_classes, or set num_classes in "
                                              "a copy of the bundle's configs"):
        predict_volumes(str(volume), str(tmp_path / "segs0"), checkpoint=str(alone), device="cpu", **tiny_net)
    # the same through the MRI scaling (as a model trained with --intensity mri would be run)
    mri = predict_volumes(str(volume), str(tmp_path / "segs_mri"), checkpoint=str(weights), device="cpu",
                          num_classes=3, roi_size=[32, 32], intensity="mri", **tiny_net)
    assert np.asarray(nib.load(mri[0]).dataobj).shape == seg.shape
    with pytest.raises(InputError, match="num_classes 1: give the number of classes including background"):
        predict("polyp_seg", str(volume), str(tmp_path / "segs2"), num_classes=1)


@pytest.mark.parametrize("config, pipeline", [("train.json", "train#preprocessing"), ("inference.json", "preprocessing")])
def test_hu_window_and_intensity_set_the_scaling_of_training_and_inference(config, pipeline):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    assert parser["hu_window"] == [-125, 275] and parser["intensity"] == "ct"  # the Synapse protocol's window
    parser["hu_window"] = [-200, 300]
    transforms = parser.get_parsed_content(pipeline).transforms
    scale = next(t for t in transforms if type(t).__name__ == "ScaleToUnitd").scaler
    assert (scale.a_min, scale.a_max, scale.b_min, scale.b_max, scale.clip) == (-200, 300, 0.0, 1.0, True)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser["intensity"] = "mri"
    transforms = parser.get_parsed_content(pipeline).transforms
    scale = next(t for t in transforms if type(t).__name__ == "ScaleToUnitd").scaler
    assert type(scale).__name__ == "ScaleIntensityRangePercentiles" and (scale.lower, scale.upper) == (0.5, 99.5)


def test_scale_to_unit_ct_window_and_mri_percentiles():
    import torch

    from vmunet_monai.engine import ScaleToUnitd

    rng = np.random.default_rng(0)
    hu = torch.as_tensor(rng.uniform(-1000, 1000, (1, 8, 8, 4)), dtype=torch.float32)
    ct = ScaleToUnitd("image", "ct", window=(-125, 275))({"image": hu})["image"]
    np.testing.assert_allclose(ct, np.clip((hu.numpy() + 125) / 400, 0, 1), atol=1e-6)
    # MRI: no absolute unit; a scanner's gain and offset do not change what the network sees
    mr = torch.as_tensor(rng.gamma(2.0, 100.0, (1, 16, 16, 6)), dtype=torch.float32)
    first = ScaleToUnitd("image", "mri")({"image": mr})["image"]
    second = ScaleToUnitd("image", "mri")({"image": mr * 3.5 + 40})["image"]
    np.testing.assert_allclose(first, second, atol=1e-5)
    assert float(first.min()) == 0.0 and float(first.max()) == 1.0
    assert 0 < float((first == 1.0).float().mean()) < 0.02  # only the brightest 0.5% clipped
    # minmax (Mamba-UNet's ACDC preprocessing): each volume's own minimum and maximum, nothing clipped
    spread = ScaleToUnitd("image", "minmax")({"image": mr * 3.5 + 40})["image"]
    np.testing.assert_allclose(spread, (mr.numpy() - mr.numpy().min()) / np.ptp(mr.numpy()), atol=1e-5)
    with pytest.raises(InputError, match="intensity 'pet': choose ct"):
        ScaleToUnitd("image", "pet")


def test_an_mri_dataset_json_asks_for_intensity_mri(tmp_path, capsys):
    raw = _own_dataset(tmp_path, cases=5)
    (raw / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "background",
                                                                                      "1": "liver", "2": "spleen"}}))
    out = tmp_path / "out"
    prepare("synapse_multiorgan", str(raw), str(out), num_val=1)
    meta = _datalist(out)["meta"]
    assert meta["intensity"] == "mri" and "your own MRI volumes" in meta["dataset"]
    assert "--num_classes 3 --intensity mri (dataset.json names the modality 'MRI'" in capsys.readouterr().out
    assert (out / "preview.png").stat().st_size > 10_000
    # the bundle refuses to put MRI through the CT window, and trains with --intensity mri
    from monai.bundle import ConfigWorkflow

    from vmunet_monai.data.common import check_intensity

    check_intensity(out, "mri")
    check_intensity(out, "minmax")  # MRI takes either per-volume scaling
    with pytest.raises(InputError, match=r"records intensity 'mri' .* add --intensity mri"):
        check_intensity(out, "ct")

    def workflow(**over):
        return ConfigWorkflow(config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"),
                              logging_file=str(CONFIGS / "logging.conf"), workflow_type="train",
                              bundle_root=str(tmp_path / "bundle"), dataset_dir=str(out), num_classes=3, **TINY,
                              **over)

    with pytest.raises(RuntimeError) as caught:
        workflow().initialize()
    assert "add --intensity mri to the bundle command" in str(caught.value.__cause__)
    trained = workflow(intensity="mri")
    trained.initialize()
    trained.run()
    trained.finalize()
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()
    from vmunet_monai.data.volumes import dataset_modality

    for named, found in (({"channel_names": {"0": "T2"}}, "T2"), ({"modality": {"0": "CT"}}, None), ({}, None)):
        (raw / "dataset.json").write_text(json.dumps(named))
        assert dataset_modality(raw) == found


def test_volumes_without_air_are_scaled_per_volume_and_named(tmp_path, capsys):
    """Volumes whose 1st percentile is far above air's -1000 HU (MRI without a dataset.json, CT stored without its
    intercept) would be turned into one grey by the CT window: auto records per-volume scaling and says why;
    --intensity ct keeps the window and names them; CT in HU stays ct without a note."""
    raw = _own_dataset(tmp_path, cases=5)
    prepare("synapse_multiorgan", str(raw), str(tmp_path / "hu"), num_val=1)
    assert _datalist(tmp_path / "hu")["meta"]["intensity"] == "ct"
    assert "hold no air" not in capsys.readouterr().out
    for path in sorted((raw / "imagesTr").iterdir()):  # as stored before the rescale intercept -1024
        volume = nib.load(path)
        nib.save(nib.Nifti1Image((np.asarray(volume.dataobj) + 1024).astype(np.int16), volume.affine), path)
    prepare("synapse_multiorgan", str(raw), str(tmp_path / "auto"), num_val=1)
    meta = _datalist(tmp_path / "auto")["meta"]
    assert meta["intensity"] == "mri" and "(your own volumes)" in meta["dataset"]
    out = capsys.readouterr().out
    assert "--intensity mri (5 of 5 volumes hold no air, so they are not CT in Hounsfield units" in out
    assert "abd_000_0000.nii.gz (1st to 99th percentile " in out and "--intensity ct keeps the CT window" in out
    from vmunet_monai.data.common import check_intensity

    with pytest.raises(InputError, match=r"records intensity 'mri' .* add --intensity mri"):
        check_intensity(tmp_path / "auto", "ct")
    prepare("synapse_multiorgan", str(raw), str(tmp_path / "ct"), num_val=1, intensity="ct")
    assert _datalist(tmp_path / "ct")["meta"]["intensity"] == "ct"
    assert "note: 5 of 5 volumes hold no air (1st percentile above -300 HU; first: " in capsys.readouterr().out
    prepare("synapse_multiorgan", str(raw), str(tmp_path / "minmax"), num_val=1, intensity="minmax")
    assert _datalist(tmp_path / "minmax")["meta"]["intensity"] == "minmax"
    assert "--intensity minmax (as given: each volume is scaled by its own minimum and maximum" in \
        capsys.readouterr().out
    with pytest.raises(InputError, match=r"--intensity 'hu': auto \(mri for MRI, else ct\), ct"):
        prepare("synapse_multiorgan", str(raw), str(tmp_path / "bad"), intensity="hu")
    demo = synapse.demo_data(str(tmp_path / "btcv"), num=4, seed=0, shape=(24, 24, 8))
    with pytest.raises(InputError, match=r"--intensity 'mri': only for the folders layout.*read as btcv"):
        prepare("synapse_multiorgan", demo, str(tmp_path / "o"), intensity="mri")


def test_predict_hu_window_values(tmp_path):
    from vmunet_monai.predict import _window, predict

    assert _window("-200,300") == _window("[-200, 300]") == _window((-200, 300)) == [-200.0, 300.0]
    for bad, rule in (("300,-200", "low end must be below"), ("1,2,3", "two numbers"), ("a,b", "two numbers")):
        with pytest.raises(InputError, match=rule):
            _window(bad)
    with pytest.raises(InputError, match=r"--window \[-200, 300\]: only for synapse_multiorgan"):
        predict("isic_skin_lesion", str(tmp_path), str(tmp_path / "out"), window=[-200, 300])
    with pytest.raises(InputError, match=r"--intensity mri: only for synapse_multiorgan"):
        predict("isic_skin_lesion", str(tmp_path), str(tmp_path / "out"), intensity="mri")
    with pytest.raises(InputError, match=r"--intensity 'pet': choose ct, mri or minmax"):
        predict("synapse_multiorgan", str(tmp_path), str(tmp_path / "out"), intensity="pet")


def test_a_bundle_copy_with_your_classes_exports_and_predicts_without_options(tmp_path):
    """The model card's recipe for sharing a model of your own classes: a copy of the bundle with num_classes
    and channel_def set; export and predict then need no option."""
    import torch
    from tiny_bundles import make_tiny_bundle, save_weights

    from vmunet_monai.export import export
    from vmunet_monai.predict_volume import predict_volumes

    root = make_tiny_bundle("synapse_multiorgan", tmp_path / "copy", size=32)
    for name in ("train.json", "inference.json"):
        config = json.loads((root / "configs" / name).read_text())
        config["num_classes"] = 3
        (root / "configs" / name).write_text(json.dumps(config, indent=4) + "\n")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"].update(
        num_channels=3, channel_def={"0": "background", "1": "liver", "2": "spleen"})
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
    save_weights(root)
    result = export(str(root), format="torchscript")
    assert result.max_abs_diff <= 1e-4
    traced = torch.jit.load(str(result.path))
    assert traced(torch.rand(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    raw = _own_dataset(tmp_path, cases=4, shape=(32, 32, 8))
    volume = next((raw / "imagesTr").glob("*.nii.gz"))
    written = predict_volumes(str(volume), str(tmp_path / "segs"), bundle_root=str(root), device="cpu")
    assert set(np.unique(np.asarray(nib.load(written[0]).dataobj))) <= {0, 1, 2}


def test_several_decathlon_tasks_are_not_guessed(tmp_path):
    first = _own_dataset(tmp_path / "a", cases=4, shape=(24, 24, 8))
    second = tmp_path / "a" / "own" / "Task02_Other"
    (second / "imagesTr").mkdir(parents=True)
    (second / "labelsTr").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"several datasets of volumes and labels \(.*Task01_Abdomen, "
                                                 r".*Task02_Other\); give one of them as RAW"):
        prepare("synapse_multiorgan", str(first.parent), str(tmp_path / "o"))


def test_nrrd_and_metaimage_volumes_are_read_with_their_geometry(tmp_path):
    import SimpleITK as sitk
    from monai.bundle import ConfigParser

    from vmunet_monai.data.volumes import volume_affine

    raw = _own_dataset(tmp_path, cases=5, naming="plain", shape=(32, 32, 8))
    for i, path in enumerate(sorted((raw / "imagesTr").glob("*.nii.gz"))):
        for folder, ext in (("imagesTr", ".nrrd"), ("labelsTr", ".mha" if i % 2 else ".nrrd")):
            source = raw / folder / path.name
            converted = raw / folder / (path.name[: -len(".nii.gz")] + ext)
            sitk.WriteImage(sitk.ReadImage(str(source)), str(converted))
            assert np.allclose(volume_affine(converted), nib.load(source).affine, atol=1e-4)  # LPS -> RAS
            source.unlink()
    shifted = sitk.ReadImage(str(raw / "labelsTr" / "abd_002.nrrd"))
    shifted.SetOrigin(tuple(o + 5 for o in shifted.GetOrigin()))  # another grid than its image
    sitk.WriteImage(shifted, str(raw / "labelsTr" / "abd_002.nrrd"))
    out = tmp_path / "out"
    prepare("synapse_multiorgan", str(raw), str(out), num_val=1)
    doc = _datalist(out)
    assert sorted(c["case"] for k in ("training", "validation", "test") for c in doc[k]) == [
        "abd_000", "abd_001", "abd_003", "abd_004"]
    reason = doc["meta"]["skipped"][0]["reason"]
    assert "its affine differs from the image" in reason  # by how much, and the rule's tolerance
    assert f"origins {5 * 3 ** 0.5:.4g} mm apart, voxel axes by up to 0 mm" in reason and "within 0.001 mm" in reason
    assert (out / "preview.png").stat().st_size > 10_000
    # the bundle's training pipeline reads them
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["roi_size"] = [32, 32]
    item = {k: str(out / v) if k in ("image", "label") else v for k, v in doc["training"][0].items()}
    sample = parser.get_parsed_content("train#deterministic_transforms")
    from monai.transforms import Compose

    result = Compose(sample)(item)
    assert result["image"].shape[0] == 1 and set(np.unique(result["label"].numpy())) <= {0, 1, 2}


def test_demo_data_in_the_folders_layout_is_your_own_ct(tmp_path):
    from vmunet_monai.data import demo_data

    raw = demo_data("synapse_multiorgan", str(tmp_path / "raw"), num=6, seed=1, shape=(32, 32, 8), layout="folders")
    assert sorted(p.name for p in Path(raw).iterdir()) == ["dataset.json", "imagesTr", "labelsTr"]
    prepare("synapse_multiorgan", raw, str(tmp_path / "out"))
    doc = _datalist(tmp_path / "out")
    assert doc["meta"]["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
    assert doc["meta"]["importer"] == "vmunet_monai.data.volumes" and not doc["meta"]["skipped"]
    label = np.asarray(nib.load(tmp_path / "out" / doc["training"][0]["label"]).dataobj)
    assert set(np.unique(label)) == {0, 1, 2, 3}


def test_acdc_patient_folders_split_by_patient_with_their_classes(tmp_path, capsys):
    """ACDC ships one folder per patient (training/, testing/) with each labelled frame's _gt beside it and a 4D
    cine series: the frames are the cases, a patient's frames stay in one split, the 4D series are left out, and the
    challenge's classes and MRI scaling are recorded."""
    from vmunet_monai.data.common import check_intensity

    raw = Path(synapse.demo_data(str(tmp_path / "acdc"), num=10, seed=3, layout="acdc"))
    assert (raw / "training" / "patient001" / "Info.cfg").is_file()
    frame = next(p for p in sorted((raw / "training" / "patient001").glob("*_frame??.nii.gz")))
    twin = frame.with_name(frame.name[: -len(".gz")])  # the same frame uncompressed beside it: read once, named
    twin.write_bytes(nib.load(frame).to_bytes())
    out = tmp_path / "prepared"
    prepare("synapse_multiorgan", str(tmp_path / "acdc"), str(out))
    printed = capsys.readouterr().out
    assert "ACDC recognised" in printed and "left out 10 4D series" in printed
    doc = json.loads((out / "datalist.json").read_text())
    assert doc["meta"]["labels"] == {"0": "background", "1": "RV", "2": "MYO", "3": "LV"}
    assert doc["meta"]["intensity"] == "mri"
    splits = {k: {item["patient"] for item in doc[k]} for k in ("training", "validation", "test")}
    assert splits["test"] == {"patient101", "patient102"}  # the testing folder's patients
    with pytest.raises(InputError, match=rf"--test_fraction 0.3: not used, since the labelled test folder "
                                         rf"\({raw / 'testing'}\) is the test split"):
        prepare("synapse_multiorgan", str(tmp_path / "acdc"), str(tmp_path / "again"), test_fraction=0.3)
    assert not splits["training"] & splits["validation"] and len(splits["training"] | splits["validation"]) == 8
    for key in ("training", "validation", "test"):
        for item in doc[key]:
            assert Path(item["label"]).name == Path(item["image"]).name.replace(".nii.gz", "_gt.nii.gz")
            assert item["case"].startswith(item["patient"] + "_frame")
    assert sum(len(doc[k]) for k in ("training", "validation", "test")) == 20  # two frames per patient
    (twin_skipped,) = [s for s in doc["meta"]["skipped"] if s["file"] == str(twin)]
    assert f"{frame.name} has its name in" in twin_skipped["reason"]
    # each frame's phase from its patient's Info.cfg: evaluation reports ED and ES apart as well
    from vmunet_monai.data.common import datalist_groups
    from vmunet_monai.data.volumes import acdc_phases

    for split, items in (("training", doc["training"]), ("testing", doc["test"])):
        for item in items:
            assert item["group"] == acdc_phases(raw / split / item["patient"])[item["case"]]
    groups = datalist_groups(out)
    assert sorted(groups.values()) == ["ED", "ED", "ES", "ES"] and set(groups) == {i["case"] for i in doc["test"]}
    check_num_classes(out, 4)
    with pytest.raises(InputError, match="add --intensity mri"):
        check_intensity(out, "ct")
    # the same layout without Info.cfg nor testing/: your own patients, classes by --classes, test patients drawn
    for cfg in raw.rglob("Info.cfg"):
        cfg.unlink()
    own = tmp_path / "own"
    prepare("synapse_multiorgan", str(raw / "training"), str(own), classes="rv,myo,lv", test_fraction=0.25)
    doc = json.loads((own / "datalist.json").read_text())
    # no Info.cfg to say it is MRI, but its volumes hold no air as CT would: scaled per volume all the same
    assert doc["meta"]["intensity"] == "mri" and doc["meta"]["labels"]["3"] == "lv"
    units = [{item["patient"] for item in doc[k]} for k in ("training", "validation", "test")]
    assert len(units[2]) == 2 and not (units[0] & units[2]) and not (units[1] & units[2])


def _tiny_acdc(root: Path, patients, testing=()) -> Path:
    """ACDC's folders with two labelled 8x8x2 frames per patient and an Info.cfg naming ED and ES."""
    rng = np.random.default_rng(0)
    for split, numbers in (("training", patients), ("testing", testing)):
        for n in numbers:
            folder = root / "database" / split / f"patient{n:03d}"
            folder.mkdir(parents=True)
            (folder / "Info.cfg").write_text("ED: 1\nES: 9\nGroup: NOR\nNbFrame: 20\n")
            for frame in (1, 9):
                label = np.zeros((8, 8, 2), np.uint8)
                label[2:6, 2:6] = rng.integers(1, 4)
                stem = f"patient{n:03d}_frame{frame:02d}"
                nib.save(nib.Nifti1Image(rng.random((8, 8, 2)).astype(np.float32), np.eye(4)), folder / f"{stem}.nii.gz")
                nib.save(nib.Nifti1Image(label, np.eye(4)), folder / f"{stem}_gt.nii.gz")
    return root


def test_mamba_unet_split_of_acdc_takes_its_patient_lists(tmp_path):
    """--split mamba_unet: ACDC's 100 training patients split as Mamba-UNet's lists (70/10/20, disjoint, two frames
    each), the testing folder left out; refused for other data, beside draw options, and with a listed patient
    missing."""
    from vmunet_monai.data.volumes import MAMBA_UNET_ACDC_SPLIT

    val, test = set(MAMBA_UNET_ACDC_SPLIT["validation"]), set(MAMBA_UNET_ACDC_SPLIT["test"])
    assert len(val) == 10 and len(test) == 20 and not val & test and val | test <= set(range(1, 101))
    raw = _tiny_acdc(tmp_path / "acdc", range(1, 101), testing=(101, 102))
    prepare("synapse_multiorgan", str(raw), str(tmp_path / "out"), split="mamba_unet", verify=False)
    doc = json.loads((tmp_path / "out" / "datalist.json").read_text())
    numbers = {k: {int(item["patient"][7:]) for item in doc[k]} for k in ("training", "validation", "test")}
    assert numbers["validation"] == val and numbers["test"] == test
    assert numbers["training"] == set(range(1, 101)) - val - test
    assert [len(doc[k]) for k in ("training", "validation", "test")] == [140, 20, 40]  # Mamba-UNet's volume counts
    assert doc["meta"]["split"] == "mamba_unet" and doc["meta"]["patients_left_out"] == ["patient101", "patient102"]
    assert "Mamba-UNet's ACDC split" in doc["meta"]["how"]
    assert {item["group"] for item in doc["test"]} == {"ED", "ES"}
    with pytest.raises(InputError, match="--num_val 5: --split mamba_unet takes its patients from lists"):
        prepare("synapse_multiorgan", str(raw), str(tmp_path / "o2"), split="mamba_unet", num_val=5)
    with pytest.raises(InputError, match="--split 'paper': auto .* or mamba_unet"):
        prepare("synapse_multiorgan", str(raw), str(tmp_path / "o3"), split="paper")
    few = _tiny_acdc(tmp_path / "few", range(1, 8))
    with pytest.raises(DatasetLayoutError, match=r"lists 27 patient\(s\) that the training folder does not hold usable "
                                                 r"\(first: patient008\)"):
        prepare("synapse_multiorgan", str(few), str(tmp_path / "o4"), split="mamba_unet", verify=False)
    for cfg in few.rglob("Info.cfg"):
        cfg.unlink()
    with pytest.raises(InputError, match="--split mamba_unet: only for ACDC"):
        prepare("synapse_multiorgan", str(few), str(tmp_path / "o5"), split="mamba_unet", classes="a,b,c")
    synapse.demo_data(str(tmp_path / "btcv"), num=4, seed=0, shape=(24, 24, 8))
    with pytest.raises(InputError, match="--split 'mamba_unet': only for the folders layout"):
        prepare("synapse_multiorgan", str(tmp_path / "btcv"), str(tmp_path / "o6"), split="mamba_unet")


def _kits_and_lits(tmp_path: Path, cases: int = 6) -> tuple[Path, Path]:
    """The same synthetic volumes as KiTS ships them (case_00000/imaging.nii.gz and segmentation.nii.gz) and as
    LiTS does (two batch folders of volume-N.nii beside segmentation-N.nii)."""
    own = _own_dataset(tmp_path / "src", cases=cases)
    images = sorted((own / "imagesTr").iterdir())
    kits, lits = tmp_path / "kits19" / "data", tmp_path / "lits"
    for i, image in enumerate(images):
        label = own / "labelsTr" / image.name.replace("_0000", "")
        case = kits / f"case_{i:05d}"
        case.mkdir(parents=True)
        (case / "imaging.nii.gz").write_bytes(image.read_bytes())
        (case / "segmentation.nii.gz").write_bytes(label.read_bytes())
        batch = lits / f"Training Batch {1 + i * 2 // len(images)}"
        batch.mkdir(parents=True, exist_ok=True)
        nib.save(nib.load(image), batch / f"volume-{i}.nii")
        nib.save(nib.load(label), batch / f"segmentation-{i}.nii")
    return kits.parent, lits


def test_kits_and_lits_layouts_pair_each_volume_with_its_segmentation(tmp_path):
    """KiTS names every case's files imaging and segmentation, in a folder named after the case; LiTS puts numbered
    volume-N and segmentation-N files side by side in batch folders. Both are read: KiTS's cases are named after
    their folders (as predict and the evaluation name them), LiTS's volumes are patients of their own, not one
    patient per batch folder."""
    from vmunet_monai.data.volumes import labels_beside, label_names
    from vmunet_monai.evaluation.ct import _case_name

    kits, lits = _kits_and_lits(tmp_path)
    assert "segmentation" in label_names("imaging") and "segmentation-3" in label_names("volume-3")
    assert "segmentation" not in label_names("volumes") and "abd_seg" in label_names("abd")
    prepare("synapse_multiorgan", str(kits), str(tmp_path / "kits_out"), num_val=1)
    doc = _datalist(tmp_path / "kits_out")
    items = [i for k in ("training", "validation", "test") for i in doc[k]]
    assert sorted(i["case"] for i in items) == [f"case_{i:05d}" for i in range(6)]
    for item in items:
        image, label = Path(item["image"]), Path(item["label"])
        assert (image.name, label.name, image.parent.name) == ("imaging.nii.gz", "segmentation.nii.gz", item["case"])
        assert _case_name(item["image"]) == _case_name(item["label"]) == item["case"] and "patient" not in item
    prepare("synapse_multiorgan", str(lits), str(tmp_path / "lits_out"), num_val=1)
    doc = _datalist(tmp_path / "lits_out")
    items = {i["case"]: i for k in ("training", "validation", "test") for i in doc[k]}
    assert sorted(items) == [f"volume-{i}" for i in range(6)]
    assert all(Path(i["label"]).name == i["case"].replace("volume", "segmentation") + ".nii" and "patient" not in i
               for i in items.values())
    assert len(doc["test"]) == 1 and len(doc["validation"]) == 1  # drawn per volume, not per batch folder
    # predict on a KiTS folder leaves the labels out and names each output after its case
    from reliability_helpers import tiny_bundle_with_weights

    from vmunet_monai.predict import predict

    assert set(labels_beside(kits / "data" / "case_00000")[0]) == {"segmentation"}
    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    written = predict(str(bundle), str(kits / "data"), str(tmp_path / "segs"), device="cpu", num_classes=9)
    assert sorted(Path(w).name for w in written) == [f"case_{i:05d}_seg.nii.gz" for i in range(6)]


def test_channel_chooses_the_volume_read_of_a_case_with_several(tmp_path):
    """BraTS keeps each case's channels beside one label (X_t1, X_t2, X_flair, X_seg); nnU-Net numbers them
    (X_0000, X_0001). The bundle reads one: --channel names it (by its name, nnU-Net's number, or the name
    dataset.json gives that number); without it BraTS's cases are skipped, naming the channels to choose from."""
    from vmunet_monai.data.common import DatasetLayoutError

    own = _own_dataset(tmp_path / "src", cases=6)
    brats, nnunet = tmp_path / "brats", tmp_path / "nnunet"
    shutil.copytree(own, nnunet)
    for i, image in enumerate(sorted((own / "imagesTr").iterdir())):
        case = brats / f"BraTS2021_{i:05d}"
        case.mkdir(parents=True)
        volume = nib.load(image)
        for k, modality in enumerate(("t1", "t2", "flair")):
            nib.save(nib.Nifti1Image(np.asarray(volume.dataobj) + 100 * k, volume.affine),
                     case / f"{case.name}_{modality}.nii.gz")
        label = own / "labelsTr" / image.name.replace("_0000", "")
        (case / f"{case.name}_seg.nii.gz").write_bytes(label.read_bytes())
        (nnunet / "imagesTr" / image.name.replace("_0000", "_0001")).write_bytes(image.read_bytes())
    with pytest.raises(DatasetLayoutError, match=r"no usable case; 18 skipped \(first: .*BraTS2021_00000_flair.*"
                                                 r"one of 3 channels sharing the label BraTS2021_00000_seg.nii.gz.*"
                                                 r"choose it with --channel flair\|t1\|t2"):
        prepare("synapse_multiorgan", str(brats), str(tmp_path / "none"))
    prepare("synapse_multiorgan", str(brats), str(tmp_path / "flair"), num_val=1, channel="flair")
    doc = _datalist(tmp_path / "flair")
    items = [i for k in ("training", "validation", "test") for i in doc[k]]
    assert len(items) == 6 and all(Path(i["image"]).name.endswith("_flair.nii.gz") for i in items)
    assert all(Path(i["label"]).name == i["case"].replace("_flair", "_seg") + ".nii.gz" for i in items)
    skipped = doc["meta"]["skipped"]
    assert len(skipped) == 12 and "--channel flair reads that one" in skipped[0]["reason"]
    # nnU-Net: the channel's number, or its name in dataset.json
    (nnunet / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "late"},
                                                     "labels": {"background": 0, "liver": 1, "spleen": 2}}))
    for channel in (1, "late"):
        out = tmp_path / f"nnunet_{channel}"
        prepare("synapse_multiorgan", str(nnunet), str(out), num_val=1, channel=channel)
        doc = _datalist(out)
        assert all(Path(i["image"]).name.endswith("_0001.nii.gz") for k in ("training", "validation", "test")
                   for i in doc[k])
        assert all("_0000.nii.gz" in s["file"] and "the _0001 file" in s["reason"] for s in doc["meta"]["skipped"])
    with pytest.raises(InputError, match=r"--channel 'flair': no dataset.json beside .* names a channel so"):
        prepare("synapse_multiorgan", str(nnunet), str(tmp_path / "bad"), channel="flair")


def test_a_label_storing_its_images_grid_in_another_axis_order_is_taken_on_the_images_grid(tmp_path, capsys):
    """A label that covers its image's voxels with the axes stored in another order or direction (flipped left to
    right, or x and y swapped) is written onto the image's grid into OUT/labels and used (it was refused as
    'another affine'); one shifted by a voxel is still refused; RawData's mapped labels come out on the image grid."""
    raw = _own_dataset(tmp_path, cases=6, naming="plain")
    originals = {}
    for case, turn in (("abd_001", "flip"), ("abd_002", "swap")):
        path = raw / "labelsTr" / f"{case}.nii.gz"
        label = nib.load(path)
        voxels, affine = np.asarray(label.dataobj), label.affine.copy()
        originals[case] = voxels.copy()
        if turn == "flip":  # the same voxels, the x axis stored from the other end
            stored = voxels[::-1]
            affine[:3, 3] += affine[:3, 0] * (voxels.shape[0] - 1)
            affine[:3, 0] *= -1
        else:
            stored = np.transpose(voxels, (1, 0, 2))
            affine = affine[:, [1, 0, 2, 3]]
        nib.save(nib.Nifti1Image(np.ascontiguousarray(stored), affine), path)
    shifted = nib.load(raw / "labelsTr" / "abd_003.nii.gz")
    moved = shifted.affine.copy()
    moved[:3, 3] += moved[:3, 0]  # one voxel along x: not the image's grid
    nib.save(nib.Nifti1Image(np.asarray(shifted.dataobj), moved), raw / "labelsTr" / "abd_003.nii.gz")
    out = tmp_path / "out"
    prepare("synapse_multiorgan", str(raw), str(out), num_val=1)
    doc = _datalist(out)
    entries = {c["case"]: c for k in ("training", "validation", "test") for c in doc[k]}
    assert "abd_003" not in entries
    assert "its affine differs from the image" in doc["meta"]["skipped"][0]["reason"]
    for case, voxels in originals.items():
        written = nib.load(out / entries[case]["label"])  # paths relative to OUT
        assert (out / entries[case]["label"]).resolve() == (out / "labels" / f"{case}_label.nii.gz").resolve()
        assert np.array_equal(np.asarray(written.dataobj), voxels)
        assert np.allclose(written.affine, nib.load(out / entries[case]["image"]).affine)
    assert "note: 2 label(s) store their image's grid with the voxel axes in another order" in capsys.readouterr().out
    # the Synapse RawData layout: the label, stored flipped, comes out mapped on the image's grid
    demo = Path(synapse.demo_data(str(tmp_path / "rawdata"), num=4, seed=1, shape=(24, 24, 8)))
    path = demo / "Training" / "label" / "label0001.nii.gz"
    label = nib.load(path)
    voxels, affine = np.asarray(label.dataobj), label.affine.copy()
    affine[:3, 3] += affine[:3, 1] * (voxels.shape[1] - 1)
    affine[:3, 1] *= -1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(voxels[:, ::-1]), affine), path)
    raw_doc = json.loads(Path(synapse.prepare(str(demo), str(tmp_path / "rawout"))).read_text())
    entry = [c for k in ("training", "validation", "test") for c in raw_doc[k] if c["case"] == "0001"][0]
    mapped = nib.load(tmp_path / "rawout" / entry["label"])
    assert np.array_equal(np.asarray(mapped.dataobj), synapse.map_btcv_labels(voxels))
    assert np.allclose(mapped.affine, nib.load(demo / "Training" / "img" / "img0001.nii.gz").affine)


def test_the_scaling_a_ct_training_used_travels_with_its_weights(tmp_path, capsys):
    """train.json hands its intensity (and, under ct, its hu_window) to the checkpoint handler, which records them
    in the network.json beside the weights; predict then builds its pipeline with them, so an MRI model (ACDC) is
    run without --intensity mri, and a CT model with its own window."""
    from monai.bundle import ConfigParser

    from vmunet_monai.engine.handlers import trained_scaling, write_network_settings
    from vmunet_monai.networks import VMUNet
    from vmunet_monai.predict import trained_network

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    handler = next(h for h in parser.get("train#handlers") if h["_target_"].endswith("TrainingCheckpoint"))
    assert (handler["intensity"], handler["hu_window"]) == ("@intensity", "@hu_window")
    net = VMUNet(in_channels=1, out_channels=4, dims=[8, 16, 32, 64], depths=[1, 1, 1, 1])
    for scaling, expected in (({"intensity": "mri"}, {"intensity": "mri"}),
                              ({"intensity": "ct", "hu_window": (-160, 240)},
                               {"intensity": "ct", "hu_window": [-160.0, 240.0]})):
        folder = tmp_path / scaling["intensity"]
        write_network_settings(folder, net, [32, 32], scaling=scaling)
        weights = folder / "model.pt"
        assert trained_scaling(weights) == expected
        overrides = trained_network([str(CONFIGS / "inference.json")], weights)
        assert {k: overrides[k] for k in expected} == expected
        said = capsys.readouterr().out  # what differs from the bundle's ct at [-125, 275] is named
        assert ("intensity mri" in said) if scaling["intensity"] == "mri" else ("hu_window [-160.0, 240.0]" in said)
    assert trained_scaling(tmp_path / "none" / "model.pt") == {}  # no record: the bundle's own scaling
