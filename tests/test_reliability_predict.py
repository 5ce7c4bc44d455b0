"""``predict`` over folders with broken files: the bad ones are skipped and named, the rest is segmented,
the exit status is non-zero only when nothing could be done. CT: NIfTI files and a DICOM series are
read, and each segmentation is NIfTI with its input's shape and affine."""

from __future__ import annotations

import json
import os

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import run_env
from PIL import Image
from reliability_helpers import tiny_bundle_with_weights, truncate, write_ct_volume, write_dicom_series, write_rgb

from vmunet_monai.validation import InputError


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks in-process: see conftest


@pytest.fixture(scope="module")
def lesion_bundle(tmp_path_factory):
    return tiny_bundle_with_weights("isic_skin_lesion", tmp_path_factory.mktemp("lesion"))


def _cli(*args, cwd):
    env = dict(run_env(), PYTHONIOENCODING="utf-8")  # progress bars print non-ASCII characters
    return subprocess.run([sys.executable, "-m", "vmunet_monai", *args], cwd=str(cwd), env=env, capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=300)


def _mixed_folder(folder):
    """Four usable images (odd sizes, grey, RGBA, 16-bit, WebP) and six unusable files."""
    good = {
        "odd.png": write_rgb(folder / "odd.png", 37, 53),
        "photo.webp": write_rgb(folder / "photo.webp", 41, 47, seed=2),
        "grey.jpg": folder / "sub" / "grey.jpg",
        "rgba16.png": folder / "sub" / "deep" / "wide16.png",
    }
    good["grey.jpg"].parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 33), dtype=np.uint8)).save(good["grey.jpg"])
    good["rgba16.png"].parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 65535, (45, 64), dtype=np.uint16)).save(good["rgba16.png"])
    bad = {
        "cut.png": truncate(write_rgb(folder / "cut.png", 64, 64)),
        "text.png": folder / "text.png",
        "empty.jpg": folder / "empty.jpg",
        "ct.nii.gz": write_ct_volume(folder / "ct.nii.gz"),
        "nan.tif": folder / "nan.tif",
        "odd.bmp": write_rgb(folder / "odd.bmp", 40, 40),  # a second odd_mask.png: the PNG is segmented
    }
    bad["text.png"].write_text("hello")
    bad["empty.jpg"].write_bytes(b"")
    Image.fromarray(np.array([[0.0, np.nan], [0.5, 1.0]], np.float32)).save(bad["nan.tif"])
    return good, bad


def test_predict_skips_and_names_bad_files_and_segments_the_rest(lesion_bundle, tmp_path, capsys):
    from vmunet_monai.predict import predict

    good, bad = _mixed_folder(tmp_path / "in")
    result = predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), device="cpu")
    assert len(result["masks"]) == len(result["overlays"]) == len(good)
    for source in good.values():
        rel = source.parent.relative_to(tmp_path / "in")
        mask = tmp_path / "out" / "masks" / rel / f"{source.stem}_mask.png"
        assert str(mask) in result["masks"]
        with Image.open(source) as image, Image.open(mask) as written:
            assert written.size == image.size
            assert set(np.unique(np.asarray(written))) <= {0, 255}
    skipped = {s["file"].rsplit("/", 1)[-1]: s["reason"] for s in result["skipped"]}
    assert set(skipped) == set(bad)
    assert "cannot be decoded" in skipped["cut.png"] and "not an image file" in skipped["text.png"]
    assert "empty" in skipped["empty.jpg"] and "NaN" in skipped["nan.tif"]
    assert "is a volume file (NIfTI" in skipped["ct.nii.gz"]  # a 2D NIfTI too: not "a 3D volume"
    assert f"its mask masks/odd_mask.png is already the output of {good['odd.png']}" in skipped["odd.bmp"]
    err = capsys.readouterr().err
    assert all(f"skipped {bad[name]}" in err for name in bad) and "6 file(s) skipped" in err


def test_predict_leaves_out_masks_beside_their_images(lesion_bundle, tmp_path):
    """BUSI's and GlaS's folders hold each image's masks beside it (X_mask.png, X_mask_1.png, X_anno.bmp): only the
    images are segmented; a file with a mask's name but no image of its stem is an image."""
    from vmunet_monai.predict import predict

    busi, glas = tmp_path / "in" / "benign", tmp_path / "in" / "glas"
    for name in ("a.png", "a_mask.png", "a_mask_1.png", "b.png", "b_mask.png", "c_mask.png"):
        write_rgb(busi / name, 40, 40)
    for name in ("testA_1.bmp", "testA_1_anno.bmp", "testA_2.bmp", "testA_2_anno.bmp"):
        write_rgb(glas / name, 40, 40)
    result = predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), device="cpu")
    written = sorted(p.rsplit("/", 1)[-1] for p in result["masks"])
    assert written == ["a_mask.png", "b_mask.png", "c_mask_mask.png", "testA_1_mask.png", "testA_2_mask.png"]
    assert not result["skipped"]


def test_predict_refuses_outputs_inside_the_inputs_and_nothing_to_do(lesion_bundle, tmp_path):
    from vmunet_monai.predict import NothingToPredictError, predict

    image = write_rgb(tmp_path / "in" / "a.png")
    for output, problem in ((tmp_path / "in", "is the input folder"), (tmp_path / "in" / "out", "inside the input"),
                            (image, "is the input file itself")):
        with pytest.raises(InputError, match=problem):
            predict(str(lesion_bundle), str(image if output == image else tmp_path / "in"), str(output), device="cpu")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png"]  # nothing was written there
    truncate(image)
    with pytest.raises(NothingToPredictError, match="no image could be segmented .*/a.png: cannot be decoded"):
        predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), device="cpu")
    with pytest.raises(InputError, match="no such file or folder"):
        predict(str(lesion_bundle), str(tmp_path / "nothing_here"), str(tmp_path / "out"), device="cpu")


def test_predict_refuses_corrupt_and_foreign_checkpoints(lesion_bundle, tmp_path):
    from vmunet_monai.predict import predict
    from vmunet_monai.weights import CheckpointError

    write_rgb(tmp_path / "in" / "a.png")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((lesion_bundle / "models" / "model.pt").read_bytes()[:500])
    foreign = tiny_bundle_with_weights("polyp_seg", tmp_path / "other") / "models" / "model.pt"  # a VM-UNetV2
    wider = tmp_path / "wider.pt"
    state = torch.load(lesion_bundle / "models" / "model.pt", weights_only=True)
    state["final_conv.weight"] = torch.zeros(2, *state["final_conv.weight"].shape[1:])
    state["final_conv.bias"] = torch.zeros(2)
    torch.save(state, wider)
    for path, problem in ((corrupt, "cannot be read as a PyTorch checkpoint"),
                          (foreign, "does not fit this VMUNet"),
                          (wider, "shapes differ (e.g. final_conv.weight (2, 2, 1, 1) vs (1, 2, 1, 1)"),
                          # not "2 classes against 2 here: give the same --num_classes"
                          (wider, "its output layer gives 2 channel(s) where this network gives 1, both for 2 "
                                  "classes: one channel is the 2D bundles' binary head (sigmoid)")):
        with pytest.raises(CheckpointError) as failure:
            predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), checkpoint=str(path),
                    device="cpu")
        assert str(path) in str(failure.value) and problem in str(failure.value)
        assert "\n" not in str(failure.value)
    assert not (tmp_path / "out" / "masks").exists()


def test_predict_refuses_weights_of_a_bundle_for_other_input_channels(lesion_bundle, tmp_path):
    """The CT bundle's VM-UNet (one CT channel in, nine organs out) is the ISIC bundle's network class too: rebuilt
    as its network.json records it, it segmented dermoscopy images into organs. Its record names the bundle that
    trained it, so predict in the ISIC bundle refuses it and names the channels."""
    from monai.bundle import ConfigParser

    from vmunet_monai.engine.handlers import bundle_name_above, write_network_settings
    from vmunet_monai.predict import predict
    from vmunet_monai.weights import CheckpointError

    ct = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "ct")
    parser = ConfigParser()
    parser.read_config(str(ct / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(ct / "models" / "model.pt", weights_only=True))
    name = bundle_name_above(ct / "models")
    write_network_settings(ct / "models", network, [32, 32], bundle=name)
    write_rgb(tmp_path / "in" / "a.png")
    with pytest.raises(CheckpointError) as failure:
        predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), device="cpu",
                checkpoint=str(ct / "models" / "model.pt"))
    assert f"weights of the bundle {name!r}" in str(failure.value)
    assert "whose network takes 1 input channel(s) against 3 in this bundle" in str(failure.value)
    assert not (tmp_path / "out" / "masks").exists()


def test_predict_refuses_a_scan_backend_that_cannot_run_before_writing(lesion_bundle, tmp_path, monkeypatch):
    """$VMUNET_SCAN_BACKEND misspelt, or naming a GPU backend on the CPU: predict stopped at the first image in a
    traceback and left an unfinished prediction.json, so the same command then asked for --resume."""
    from vmunet_monai.predict import predict

    write_rgb(tmp_path / "in" / "a.png")
    for value, said in (("fooo", "$VMUNET_SCAN_BACKEND='fooo' is not a scan backend; choose one of "),
                        ("triton", "$VMUNET_SCAN_BACKEND='triton' runs on cuda tensors, but the input is on cpu")):
        monkeypatch.setenv("VMUNET_SCAN_BACKEND", value)
        with pytest.raises(InputError) as failure:
            predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), device="cpu")
        assert said in str(failure.value) and "unset $VMUNET_SCAN_BACKEND" in str(failure.value)
        assert not (tmp_path / "out").exists()
    monkeypatch.setenv("VMUNET_SCAN_BACKEND", "torch")
    predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), device="cpu")
    assert (tmp_path / "out" / "masks" / "a_mask.png").is_file()


def test_cli_predict_exit_status(lesion_bundle, tmp_path, capsys, monkeypatch):
    """Some images skipped: the command ends normally (exit status 0; through the entry point in this process);
    none segmented: a real process ends with status 1 and the reason as its last line."""
    from vmunet_monai.cli import main

    write_rgb(tmp_path / "in" / "good.png", 29, 31)
    (tmp_path / "in" / "bad.png").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    main(["predict", str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu"])
    assert f"skipped {tmp_path / 'in' / 'bad.png'}: is not an image file" in capsys.readouterr().err
    assert (tmp_path / "out" / "masks" / "good_mask.png").is_file()
    (tmp_path / "in" / "good.png").write_bytes(b"")
    nothing = _cli("predict", str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out2"), cwd=tmp_path)
    assert nothing.returncode == 1 and "Traceback" not in nothing.stderr
    last = nothing.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no image could be segmented (2 file(s) skipped" in last


def test_ct_predict_reads_nifti_and_dicom_and_writes_the_input_space(tmp_path):
    """Through the command line: NIfTI and DICOM in, NIfTI with the input's shape and affine out; a 2D
    file, a two-channel volume and a NaN volume in the same folder are skipped and named."""
    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    folder = tmp_path / "scans"
    nifti = write_ct_volume(folder / "ct_a.nii.gz")
    write_dicom_series(write_ct_volume(tmp_path / "b_source.nii.gz", shape=(40, 36, 7), seed=3),
                       folder / "ct_b_dicom")
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), folder / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4, 2), np.int16), np.eye(4)), folder / "dual.nii.gz")
    nan = np.zeros((16, 16, 4), np.float32)
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), folder / "nan.nii.gz")
    proc = _cli("predict", str(bundle), str(folder), str(tmp_path / "segs"), "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, problem in (("flat.nii.gz", "is 2D"), ("dual.nii.gz", "2 channels or time points"),
                          ("nan.nii.gz", "1 NaN")):
        line = next(line for line in proc.stderr.splitlines() if line.startswith(f"skipped {folder / name}"))
        assert problem in line
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == ["ct_a_seg.nii.gz", "ct_b_dicom_seg.nii.gz",
                                                                      "montages", "prediction.json", "volumes.csv"]
    # a picture of each, the DICOM series read back on the grid of its segmentation
    assert sorted(p.name for p in (tmp_path / "segs" / "montages").iterdir()) == ["ct_a_seg.png", "ct_b_dicom_seg.png"]
    assert "montage not drawn" not in proc.stderr
    record = json.loads((tmp_path / "segs" / "prediction.json").read_text())
    assert (record["num_classes"], record["written"], len(record["skipped"])) == (9, 2, 3)
    assert record["class_names"][1] == "aorta" and "mask_values" not in record
    assert any("flat.nii.gz" in reason and "is 2D" in reason for reason in record["skipped"])
    for source, seg_name in ((nifti, "ct_a_seg.nii.gz"), (tmp_path / "b_source.nii.gz", "ct_b_dicom_seg.nii.gz")):
        src, seg = nib.load(source), nib.load(tmp_path / "segs" / seg_name)
        assert seg.shape == src.shape, seg_name
        assert np.allclose(seg.affine, src.affine, atol=1e-3), (seg_name, seg.affine, src.affine)
        assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(src.affine) == ("L", "P", "S")
        assert set(np.unique(np.asarray(seg.dataobj))) <= set(range(9))


def test_ct_predict_reads_nifti_as_training_and_score_do(tmp_path):
    """A NIfTI whose sform and qform disagree (FSL writes such files) is placed by its sform, as nibabel, the bundle's
    training and score place it; read by ITK it came out 15 mm away, on the qform's grid."""
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    source = nib.load(write_ct_volume(tmp_path / "source.nii.gz"))
    image = nib.Nifti1Image(np.asarray(source.dataobj), source.affine)
    shifted = source.affine.copy()
    shifted[:3, 3] += 15
    image.set_sform(source.affine, code=2)
    image.set_qform(shifted, code=1)
    (tmp_path / "scans").mkdir()
    nib.save(image, tmp_path / "scans" / "disagree.nii.gz")
    predict(str(bundle), str(tmp_path / "scans"), str(tmp_path / "segs"), device="cpu")
    seg = nib.load(tmp_path / "segs" / "disagree_seg.nii.gz")
    assert np.allclose(seg.affine, source.affine, atol=1e-3), (seg.affine, source.affine)


def test_ct_predict_refuses_two_inputs_with_one_output_name(tmp_path):
    from vmunet_monai.predict_volume import predict_volumes

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    write_ct_volume(tmp_path / "scans" / "case.nii.gz")
    write_ct_volume(tmp_path / "scans" / "case.nii", seed=2)
    written = predict_volumes(str(tmp_path / "scans"), str(tmp_path / "segs"), device="cpu", bundle_root=str(bundle),
                              montage=False)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["case_seg.nii.gz"]
    assert not (tmp_path / "segs" / "montages").exists()
    assert nib.load(written[0]).shape == (48, 44, 10)


def test_ct_predict_reads_patient_folders_and_leaves_out_labels_beside_their_volumes(tmp_path, capsys):
    """ACDC's testing/ folder: one folder per patient with two frames, each frame's _gt label beside it and a 4D cine
    series: the frames are segmented, the labels left out, the 4D series skipped and named."""
    from vmunet_monai.data import synapse
    from vmunet_monai.predict import predict

    import csv

    from vmunet_monai.data.volumes import acdc_phases

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle", num_classes=4)
    raw = Path(synapse.demo_data(str(tmp_path / "acdc"), num=5, seed=0, layout="acdc", shape=(32, 32, 4)))
    written = predict(str(bundle), str(raw / "testing"), str(tmp_path / "segs"), device="cpu")
    frames = sorted(p.name for p in (raw / "testing").rglob("*_frame??.nii.gz"))
    assert len(frames) == 2 and sorted(Path(p).name for p in written) == [
        f.replace(".nii.gz", "_seg.nii.gz") for f in frames]
    captured = capsys.readouterr()
    assert f"skipped {raw / 'testing' / 'patient101' / 'patient101_4d.nii.gz'}" in captured.err
    # what the predictions measure: each class's volume per frame, and the patient's clinical indices from the
    # ED and ES frames that Info.cfg names (four classes read as ACDC's RV 1, MYO 2, LV 3), checked by hand
    volumes = {r["case"]: r for r in csv.DictReader(open(tmp_path / "segs" / "volumes.csv"))}
    counted = {}
    for seg in written:
        image = nib.load(seg)
        voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000
        counted[Path(seg).name[: -len("_seg.nii.gz")]] = {
            c: float((np.asarray(image.dataobj) == c).sum()) * voxel_ml for c in (1, 2, 3)}
    assert set(volumes) == set(counted)
    for case, row in volumes.items():
        assert [float(row[f"class_{c}_ml"]) for c in (1, 2, 3)] == pytest.approx(
            [counted[case][c] for c in (1, 2, 3)], abs=1e-3)
    phases = {p: c for c, p in acdc_phases(raw / "testing" / "patient101").items()}
    (row,) = list(csv.DictReader(open(tmp_path / "segs" / "clinical_indices.csv")))
    ed, es = counted[phases["ED"]], counted[phases["ES"]]
    assert (row["patient"], row["ed_case"], row["es_case"]) == ("patient101", phases["ED"], phases["ES"])
    assert float(row["LV_EDV"]) == pytest.approx(ed[3], abs=1e-3)
    assert float(row["RV_ESV"]) == pytest.approx(es[1], abs=1e-3)
    assert float(row["MYO_mass"]) == pytest.approx(ed[2] * 1.05, abs=1e-3)
    assert ed[3] > 0 and float(row["LV_EF"]) == pytest.approx(100 * (ed[3] - es[3]) / ed[3], abs=1e-3)
    assert "clinical indices of 1 patient(s) from the predictions" in captured.out


def test_predict_writes_probability_maps_that_score_reads(lesion_bundle, tmp_path):
    """``--probabilities``: each image's foreground probability at its own size, upright, whose half-scale
    threshold is the mask predict writes; ``score`` pairs ``_prob.png`` with its image, gives the masks' numbers at
    half scale and adds the PraNet protocol."""
    from PIL import Image

    from vmunet_monai.data import demo_data, prepare
    from vmunet_monai.evaluation.score import score
    from vmunet_monai.predict import predict

    demo_data("isic_skin_lesion", str(tmp_path / "raw"), num=8)
    prepare("isic_skin_lesion", str(tmp_path / "raw"), str(tmp_path / "prepared"))
    images = tmp_path / "prepared" / json.loads((tmp_path / "prepared" / "datalist.json").read_text())["test"][0][
        "image"]
    folder = images.resolve().parent
    result = predict(str(lesion_bundle), str(folder), str(tmp_path / "out"), device="cpu", probabilities=True)
    assert len(result["probabilities"]) == len(result["masks"]) > 0
    for mask_path, prob_path in zip(result["masks"], result["probabilities"]):
        mask, prob = np.asarray(Image.open(mask_path)), np.asarray(Image.open(prob_path))
        source = folder / Path(mask_path).name.replace("_mask.png", ".jpg")
        assert prob.shape == mask.shape == Image.open(source).size[::-1]  # the image's own (H, W)
        assert np.array_equal(mask > 127, prob >= 128)  # the mask is the map at half scale
        assert prob.dtype == np.uint8 and len(np.unique(prob)) > 2
    record = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert record["settings"]["probabilities"] is True
    by_masks = score(tmp_path / "out" / "masks", tmp_path / "prepared", out=tmp_path / "s_masks")
    by_maps = score(tmp_path / "out" / "probabilities", tmp_path / "prepared", out=tmp_path / "s_maps")
    assert by_maps["overall"] == by_masks["overall"] and "pranet" in by_maps and "pranet" not in by_masks
    # predict's whole output folder: its masks scored (not the maps beside them, nor its overlays), the maps
    # calibrated; a stray file is named as not scored
    # (its probability map counted with it, once; a map without a mask is a prediction of its own)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "out" / "masks" / "notes_mask.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "out" / "probabilities" / "notes_prob.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "out" / "probabilities" / "draft_prob.png")
    by_folder = score(tmp_path / "out", tmp_path / "prepared", out=tmp_path / "s_folder")
    assert by_folder["overall"] == by_masks["overall"] and "pranet" not in by_folder
    assert by_folder["missing_prediction"] == [] and by_folder["unused_predictions"] == [
        str(tmp_path / "out" / "masks" / "notes_mask.png"), str(tmp_path / "out" / "probabilities" / "draft_prob.png")]
    assert (tmp_path / "out" / "overlays").is_dir()
    # the environment behind the scores is predict's, which compare sets beside an evaluation's
    assert by_folder["environment"] == record["environment"] and by_folder["environment"]["torch"]
    # and the maps' calibration, the same as counted here from the files, whichever folder is scored
    from vmunet_monai.evaluation.calibration import Calibration

    assert by_masks["calibration"] == by_folder["calibration"] == by_maps["calibration"]
    again = Calibration()
    test = json.loads((tmp_path / "prepared" / "datalist.json").read_text())["test"]
    labels = {Path(e["image"]).stem: tmp_path / "prepared" / e["label"] for e in test}
    for prob_path in result["probabilities"]:
        label = labels[Path(prob_path).name[: -len("_prob.png")]]
        again.add(np.asarray(Image.open(prob_path), np.float64) / 255, np.asarray(Image.open(label)) >= 128)
    assert by_maps["calibration"]["ece"] == pytest.approx(again.summary()["ece"])
    assert by_maps["calibration"]["brier"] == pytest.approx(again.summary()["brier"])
    assert Path(by_maps["paths"]["calibration_plot"]).is_file() and Path(by_maps["paths"]["calibration_json"]).is_file()


def test_ct_predict_writes_class_probabilities_on_the_segmentation_grid(tmp_path):
    """``--probabilities`` for volumes: ``<case>_prob.nii.gz``, (X, Y, Z, classes) on the label map's grid and
    affine, read back as numbers from 0 to 1 that sum to one over the classes and whose argmax is the label map."""
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    source = write_ct_volume(tmp_path / "scans" / "ct_a.nii.gz", shape=(30, 26, 4))
    written = predict(str(bundle), str(source), str(tmp_path / "segs"), device="cpu", probabilities=True)
    seg = nib.load(written[0])
    maps = nib.load(tmp_path / "segs" / "ct_a_prob.nii.gz")
    assert maps.shape == (*seg.shape, 9) and maps.get_data_dtype() == np.uint8
    assert np.allclose(maps.affine, seg.affine) and np.allclose(maps.affine, nib.load(source).affine, atol=1e-3)
    prob = maps.get_fdata()
    assert prob.min() >= 0.0 and prob.max() <= 1.0 + 1e-6
    assert np.abs(prob.sum(-1) - 1.0).max() <= 9 / 255  # one rounding of at most half a level per class
    labels = np.asarray(seg.dataobj)
    top2 = np.sort(prob, -1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 2 / 255  # not a tie within rounding
    assert clear.mean() > 0.5 and np.array_equal(prob.argmax(-1)[clear], labels[clear])
    record = json.loads((tmp_path / "segs" / "prediction.json").read_text())
    assert record["settings"]["probabilities"] is True


def test_predict_resumes_a_run_that_stopped(lesion_bundle, tmp_path, monkeypatch, capsys):
    """``--resume``: the outputs an earlier run left that read back whole are kept untouched, the missing and the
    cut-short ones are segmented again; a run stopped before writing anything leaves the record it started with;
    other weights or options are refused by name."""
    import monai.bundle

    from vmunet_monai.predict import predict

    for i, name in enumerate(("a.png", "b.png", "c.png")):
        write_rgb(tmp_path / "in" / name, 30 + i, 41, seed=i)
    out = tmp_path / "out"
    run = monai.bundle.ConfigWorkflow.run

    def power_cut(self):
        raise RuntimeError("power cut")

    monkeypatch.setattr(monai.bundle.ConfigWorkflow, "run", power_cut)
    with pytest.raises(RuntimeError, match="power cut"):
        predict(str(lesion_bundle), str(tmp_path / "in"), str(out), device="cpu", probabilities=True)
    started = json.loads((out / "prediction.json").read_text())
    assert started["finished"] is False and started["written"] == 0
    monkeypatch.setattr(monai.bundle.ConfigWorkflow, "run", run)
    first = predict(str(lesion_bundle), str(tmp_path / "in"), str(out), device="cpu", probabilities=True, resume=True)
    assert "3 to go" in capsys.readouterr().out
    masks = {Path(m).name: Path(m) for m in first["masks"]}
    kept = masks["c_mask.png"]
    kept_bytes, kept_time = kept.read_bytes(), kept.stat().st_mtime_ns
    masks["a_mask.png"].unlink()  # never written
    overlay = out / "overlays" / "b_overlay.png"
    overlay.write_bytes(overlay.read_bytes()[:60])  # cut short while it was written
    finished = (out / "prediction.json").read_text()
    stopped = dict(json.loads(finished), finished=False, written=0)  # as a run stopped after its start leaves it
    (out / "prediction.json").write_text(json.dumps(stopped))
    left = len([p for p in out.rglob("*.png")])
    with pytest.raises(InputError, match=rf"out: holds an earlier predict's results \(prediction.json of .*, {left} "
                                         r"file\(s\) from .*in, stopped before it finished\)"):
        predict(str(lesion_bundle), str(tmp_path / "in"), str(out), device="cpu", probabilities=True)
    (out / "prediction.json").write_text(finished)
    again = predict(str(lesion_bundle), str(tmp_path / "in"), str(out), device="cpu", probabilities=True, resume=True)
    assert "1 of 3 image(s) already segmented" in capsys.readouterr().out  # only c was finished whole
    assert sorted(Path(m).name for m in again["masks"]) == ["a_mask.png", "b_mask.png", "c_mask.png"]
    assert kept.read_bytes() == kept_bytes and kept.stat().st_mtime_ns == kept_time  # left as it was
    for path in again["masks"] + again["overlays"] + again["probabilities"]:
        Image.open(path).load()  # all whole again
    record = json.loads((out / "prediction.json").read_text())
    assert record["finished"] is True and record["written"] == 3 and record["kept_from_earlier_run"] == 1
    with pytest.raises(InputError, match=r"was written with settings.tta False and this run has True"):
        predict(str(lesion_bundle), str(tmp_path / "in"), str(out), device="cpu", tta=True, resume=True)
    # probability maps may not be dropped halfway: the earlier images have them, the rest would not
    with pytest.raises(InputError, match=r"was written with --probabilities true and this run has it off: .* give "
                                         r"--probabilities true again"):
        predict(str(lesion_bundle), str(tmp_path / "in"), str(out), device="cpu", resume=True)
    other = tmp_path / "other.pt"
    state = torch.load(lesion_bundle / "models" / "model.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, other)
    with pytest.raises(InputError, match=r"prediction.json was written with weights_sha256 '[0-9a-f]{64}'"):
        predict(str(lesion_bundle), str(tmp_path / "in"), str(out), checkpoint=str(other), device="cpu", resume=True)
    assert kept.read_bytes() == kept_bytes  # a refused resume writes nothing


def test_ct_predict_resumes_and_keeps_the_finished_volumes(tmp_path, capsys):
    from vmunet_monai.predict_volume import predict_volumes

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    for i in range(3):
        write_ct_volume(tmp_path / "scans" / f"case{i}.nii.gz", shape=(24, 20, 3), seed=i)
    options = dict(device="cpu", bundle_root=str(bundle), montage=False)
    written = predict_volumes(str(tmp_path / "scans"), str(tmp_path / "segs"), **options)
    times = {w: os.stat(w).st_mtime_ns for w in written}
    os.remove(written[1])
    with open(written[2], "r+b") as f:  # cut short
        f.truncate(200)
    assert f"3 segmentation volume(s) under {tmp_path / 'segs'}\n" in capsys.readouterr().out
    again = predict_volumes(str(tmp_path / "scans"), str(tmp_path / "segs"), resume=True, **options)
    printed = capsys.readouterr().out
    assert "1 of 3 volume(s) already segmented" in printed
    assert f"3 segmentation volume(s) under {tmp_path / 'segs'} (1 kept from the earlier run)" in printed
    assert again == written and os.stat(written[0]).st_mtime_ns == times[written[0]]
    for w in written:
        assert nib.load(w).get_fdata().shape == (24, 20, 3)
    record = json.loads((tmp_path / "segs" / "prediction.json").read_text())
    assert (record["finished"], record["written"], record["kept_from_earlier_run"]) == (True, 3, 1)
    with pytest.raises(InputError, match=r"settings.overrides \{\} and this run has \{'sw_overlap': 0.5\}"):
        predict_volumes(str(tmp_path / "scans"), str(tmp_path / "segs"), resume=True, sw_overlap=0.5, **options)


def test_predict_in_batches_writes_what_one_at_a_time_writes(lesion_bundle, tmp_path):
    """``--batch_size``: images of different sizes share a batch (each resized to the network's input first) and
    every mask, overlay and probability map comes out as it does one image at a time."""
    from vmunet_monai.predict import predict

    for i, (h, w) in enumerate(((30, 41), (52, 37), (40, 40), (33, 60), (45, 29))):
        write_rgb(tmp_path / "in" / f"im{i}.png", h, w, seed=i)
    single = predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "one"), device="cpu", probabilities=True)
    batched = predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "three"), device="cpu",
                      probabilities=True, batch_size=3)
    for key in ("masks", "overlays", "probabilities"):
        assert len(single[key]) == len(batched[key]) == 5
        for a, b in zip(single[key], batched[key]):
            x, y = np.asarray(Image.open(a), dtype=int), np.asarray(Image.open(b), dtype=int)
            assert x.shape == y.shape and np.abs(x - y).max() <= 1, (a, b)
    assert json.loads((tmp_path / "three" / "prediction.json").read_text())["settings"]["batch_size"] == 3
    for value, problem in ((0, "predict --batch_size 0: must be an integer of at least 1"),
                           (2.5, "predict --batch_size 2.5")):
        with pytest.raises(InputError, match=problem):
            predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "x"), batch_size=value)
    with pytest.raises(InputError, match="--batch_size 4: only for the 2D bundles"):
        predict("synapse_multiorgan", str(tmp_path / "in"), str(tmp_path / "x"), batch_size=4)


def test_ct_predict_names_volumes_that_are_not_in_hounsfield_units(tmp_path, capsys):
    """The CT window turns a volume without air (stored before its rescale intercept, or MRI) into one grey: predict
    still segments it, and says which volumes those are and what to give instead."""
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    write_ct_volume(tmp_path / "scans" / "a_hu.nii.gz")  # with a block of gas
    shifted = write_ct_volume(tmp_path / "scans" / "b_stored.nii.gz")
    volume = nib.load(shifted)
    nib.save(nib.Nifti1Image((np.asarray(volume.dataobj) + 1024).astype(np.int16), volume.affine), str(shifted))
    written = predict(str(bundle), str(tmp_path / "scans"), str(tmp_path / "segs"), device="cpu")
    assert len(written) == 2
    out = capsys.readouterr().out
    assert f"note: 1 of 2 volumes hold no air (1st percentile above -300 HU; first: {shifted} (1st to 99th " in out
    assert "takes --intensity mri" in out
    predict(str(bundle), str(tmp_path / "scans"), str(tmp_path / "segs_mri"), device="cpu",
            intensity="mri")
    assert "hold no air" not in capsys.readouterr().out


def test_ct_predict_of_a_one_slice_volume_keeps_its_shape(tmp_path):
    """MONAI's writer drops every trailing dimension of size one: a volume of one slice, (X, Y, 1), came back as a 2D
    (X, Y) segmentation on no grid of its scan. SaveSegmentationd takes off the channel alone."""
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    source = write_ct_volume(tmp_path / "scans" / "full.nii.gz")
    volume = nib.load(source)
    nib.save(nib.Nifti1Image(np.asarray(volume.dataobj)[:, :, 2:3], volume.affine), tmp_path / "scans" / "one.nii.gz")
    written = {Path(w).name: nib.load(w) for w in predict(str(bundle), str(tmp_path / "scans"),
                                                         str(tmp_path / "segs"), device="cpu")}
    assert written["one_seg.nii.gz"].shape == (48, 44, 1) and written["full_seg.nii.gz"].shape == (48, 44, 10)
    for seg in written.values():
        np.testing.assert_allclose(seg.affine, volume.affine, atol=1e-4)
        assert seg.get_data_dtype() == np.uint8
    assert sorted(p.name for p in (tmp_path / "segs" / "montages").iterdir()) == ["full_seg.png", "one_seg.png"]


def test_a_copy_of_the_ct_bundle_under_another_name_still_segments_volumes(tmp_path):
    """The model cards say to copy a bundle folder to train your own; predict tells volumes from 2D images by the
    bundle's inference (a SliceInferer), not by its folder's name."""
    import shutil

    from tiny_bundles import make_tiny_bundle

    from vmunet_monai.predict import is_volume_bundle

    ct = make_tiny_bundle("synapse_multiorgan", tmp_path / "a")
    mine = shutil.copytree(ct, tmp_path / "b" / "my_ct_model")
    skin = shutil.copytree(make_tiny_bundle("isic_skin_lesion", tmp_path / "c"), tmp_path / "d" / "my_skin_model")
    assert is_volume_bundle(str(mine)) and is_volume_bundle("synapse_multiorgan")
    assert not is_volume_bundle(str(skin)) and not is_volume_bundle("isic_skin_lesion")


def test_two_predicts_into_one_folder_do_not_mix(lesion_bundle, tmp_path):
    """A second predict into a folder another running predict writes is refused; a mark left by a run whose process
    ended is taken over, and a finished run leaves none."""
    import socket

    from vmunet_monai.predict import LOCK, predict

    image = write_rgb(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{socket.gethostname()} {other.pid}\n")
        with pytest.raises(InputError, match=rf"out: another predict \(process {other.pid}, started \?\) is writing "
                                             "into this folder"):
            predict(str(lesion_bundle), str(image), str(out), device="cpu")
        assert not (out / "masks").exists()
    finally:
        other.kill()
        other.wait()
    predict(str(lesion_bundle), str(image), str(out), device="cpu")  # its process is gone: taken over
    assert (out / "masks" / "a_mask.png").is_file() and not (out / LOCK).exists()
    # a new run into the finished run's folder would leave the earlier masks under a record of its own
    second = write_rgb(tmp_path / "in2" / "b.png")
    with pytest.raises(InputError, match=r"out: holds an earlier predict's results \(prediction.json of .*, 1 file\(s\) "
                                         r"from .*a.png\); a new run there would mix its files with those"):
        predict(str(lesion_bundle), str(second), str(out), device="cpu", tta=True)
    assert not (out / "masks" / "b_mask.png").exists()
    predict(str(lesion_bundle), str(image), str(out), device="cpu", resume=True)  # --resume: that run, gone on with


def test_hash_in_a_path_is_skipped_and_a_link_keeps_its_name(lesion_bundle, tmp_path):
    """MONAI's config parser turns '#' into '::': such an image stopped the whole run with a traceback. And an image
    given as a link was written under its target's name."""
    from vmunet_monai.predict import predict

    folder = tmp_path / "in"
    write_rgb(folder / "a#b c.png")
    write_rgb(folder / "@2x.png")  # '@', '$' and '%' start a reference, an expression and a macro
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "clip.gif")
    target = write_rgb(tmp_path / "elsewhere" / "scan_0042.png")
    os.symlink(target, folder / "case_001.png")
    result = predict(str(lesion_bundle), str(folder), str(tmp_path / "out"), device="cpu")
    assert [Path(m).name for m in result["masks"]] == ["case_001_mask.png"]
    reasons = sorted(s["reason"] for s in result["skipped"])
    assert f"{folder / 'clip.gif'}: a GIF, which is not read (save it as PNG)" in reasons
    reasons.remove(f"{folder / 'clip.gif'}: a GIF, which is not read (save it as PNG)")
    linked = tmp_path / "linked"  # a linked folder is read (once, however many links lead to it)
    write_rgb(tmp_path / "more" / "d.png")
    write_rgb(linked / "c.png")
    os.symlink(tmp_path / "more", linked / "more")
    os.symlink(linked, linked / "loop")
    found = predict(str(lesion_bundle), str(linked), str(tmp_path / "out_linked"), device="cpu")
    assert sorted(Path(m).name for m in found["masks"]) == ["c_mask.png", "d_mask.png"]
    assert "its name starts with '@', which MONAI's config parser reads as a reference" in reasons[0]
    assert "'#', which MONAI's config parser reads as a separator" in reasons[1]
    with pytest.raises(InputError, match=r"run#2: OUTPUT holds '#'"):
        predict(str(lesion_bundle), str(folder), str(tmp_path / "run#2"), device="cpu")


def test_masks_and_earlier_results_in_the_input_are_named_not_segmented(lesion_bundle, tmp_path, capsys):
    """An input folder that holds a folder of masks, a mask beside its image and an earlier predict's output (run
    from inside it) segments the images only, and says what it left out."""
    from vmunet_monai.predict import predict

    folder = tmp_path / "in"
    write_rgb(folder / "a.png")
    write_rgb(folder / "masks" / "a.png")
    write_rgb(folder / "Ground Truth" / "a.png")  # CVC-ClinicDB's name
    write_rgb(folder / "b_segmentation.png")
    predict(str(lesion_bundle), str(folder / "a.png"), str(folder / "results"), device="cpu")
    capsys.readouterr()
    result = predict(str(lesion_bundle), str(folder), str(tmp_path / "out"), device="cpu")
    assert [Path(m).name for m in result["masks"]] == ["a_mask.png"]  # not results/overlays/a_overlay.png
    printed = capsys.readouterr().out
    assert f"note: not segmented, as masks or results: {folder / 'Ground Truth'}: a folder of masks, by its name; " in printed
    assert f"{folder / 'masks'}: a folder of masks, by its name; " in printed
    assert f"{folder / 'results'}: an earlier predict's output (prediction.json)" in printed
    assert "1 mask file(s) beside their images" in printed


def test_ctrl_c_in_predict_leaves_no_log_tracebacks(lesion_bundle, tmp_path, monkeypatch, capfd):
    """Ctrl-C while the network runs: ignite's and MONAI's exception logs (a screen of traceback) are left out, so
    the command ends with its one line; the interrupt goes on as it came."""
    from vmunet_monai.networks import VMUNet
    from vmunet_monai.predict import predict

    def interrupted(self, x):
        raise KeyboardInterrupt

    write_rgb(tmp_path / "in" / "a.png")
    monkeypatch.setattr(VMUNet, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(str(lesion_bundle), str(tmp_path / "in"), str(tmp_path / "out"), device="cpu")
    printed = "".join(capfd.readouterr())
    assert "Traceback" not in printed and "terminating due to exception" not in printed, printed
    import logging

    assert logging.Handler.handle.__qualname__ == "Handler.handle"  # logging as it was, after the run


def test_ph2_mask_folders_in_the_input_are_not_segmented(tmp_path):
    """PH2 keeps each image in a folder of its own beside its lesion mask and its ROI masks (IMD002/IMD002_lesion,
    IMD002/IMD002_roi): a PH2 folder given to predict segments the images only, and names the mask folders."""
    from vmunet_monai.predict import collect_images

    case = tmp_path / "PH2 Dataset images" / "IMD002"
    write_rgb(case / "IMD002_Dermoscopic_Image" / "IMD002.bmp")
    write_rgb(case / "IMD002_lesion" / "IMD002_lesion.bmp")
    write_rgb(case / "IMD002_roi" / "IMD002_roi_0.bmp")
    write_rgb(tmp_path / "own_lesion" / "x.png")  # named so, but not inside a folder of that name: images
    left: list[str] = []
    items, others = collect_images(tmp_path, left)
    assert sorted(Path(i["image"]).name for i in items) == ["IMD002.bmp", "x.png"] and others == []
    assert left == [f"{case / 'IMD002_lesion'}: PH2's masks of IMD002", f"{case / 'IMD002_roi'}: PH2's masks of IMD002"]
