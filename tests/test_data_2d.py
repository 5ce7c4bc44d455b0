"""Importers, synthetic raw layouts, datalists, mask transforms and binary metrics of the 2D bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vmunet_monai.data import common, demo_data, isic, polyp, prepare
from vmunet_monai.data.common import DatasetLayoutError, load_datalist
from vmunet_monai.engine import BinarizeMaskd, FirstOutputd, insert_before
from vmunet_monai.evaluation import binary
from vmunet_monai.validation import InputError


def _names(items):
    return {(it["dataset"], it["name"]) for it in items}


@pytest.fixture(scope="module")
def isic_raw(tmp_path_factory):
    return tmp_path_factory.mktemp("isic") / "raw"


@pytest.fixture(scope="module")
def isic_2017(isic_raw):
    demo_data("isic_skin_lesion", str(isic_raw), num=12, seed=3)
    return isic_raw


@pytest.fixture(scope="module")
def polyp_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("polyp") / "raw"
    demo_data("polyp_seg", str(raw), num=16, seed=1)
    return raw


def test_isic_demo_layout_is_the_challenge_layout(isic_2017):
    assert sorted(p.name for p in isic_2017.iterdir()) == [
        "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth", "ISIC-2017_Test_v2_Part3_GroundTruth.csv",
        "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth", "ISIC-2017_Training_Part3_GroundTruth.csv",
        "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth",
        "ISIC-2017_Validation_Part3_GroundTruth.csv",
    ]
    image = isic_2017 / "ISIC-2017_Training_Data" / "ISIC_0000000.jpg"
    mask = isic_2017 / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000000_segmentation.png"
    assert (isic_2017 / "ISIC-2017_Training_Data" / "ISIC_0000000_superpixels.png").is_file()
    with Image.open(image) as im, Image.open(mask) as m:
        assert im.mode == "RGB" and m.mode == "L" and im.size == m.size
        values = np.unique(np.asarray(m))
    assert set(values) == {0, 255}
    # lesions are darker than the skin around them, as in dermoscopy
    rgb = np.asarray(Image.open(image), dtype=np.float32).mean(-1)
    fg = np.asarray(Image.open(mask)) > 127
    assert rgb[fg].mean() < rgb[~fg].mean() - 20


def test_isic_official_split(isic_2017, tmp_path):
    path = prepare("isic_skin_lesion", str(isic_2017), str(tmp_path / "out"))
    doc = json.loads(open(path).read())
    assert doc["meta"]["split"] == "official"
    assert doc["meta"]["counts"] == {"training": 12, "validation": 3, "test": 3}
    train, val, test = (load_datalist(tmp_path / "out", k) for k in ("training", "validation", "test"))
    for item in train + val + test:  # stored relative, loaded absolute; masks paired by name
        assert item["label"].endswith(item["name"] + "_segmentation.png")
        assert "superpixels" not in item["image"]
    assert {i["image"].split("/")[-2] for i in test} == {"ISIC-2017_Test_v2_Data"}
    assert {i["image"].split("/")[-2] for i in val} == {"ISIC-2017_Validation_Data"}
    from vmunet_monai.evaluation.score import score

    one_mask = tmp_path / "a_mask.png"  # score takes predict's folder of masks, and says so when given one
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(one_mask)
    with pytest.raises(InputError, match=r"a_mask.png: a file; PRED is the folder of predicted masks"):
        score(one_mask, tmp_path / "out")
    # options the official split leaves unused are refused, saying which option uses them
    with pytest.raises(InputError, match=r"--test_fraction 0.2: not used, since the official split tests on the "
                                         r"challenge test set \(.*ISIC-2017_Test_v2_Data\); give --split paper"):
        prepare("isic_skin_lesion", str(isic_2017), str(tmp_path / "x"), test_fraction=0.2)
    with pytest.raises(InputError, match=r"--val_fraction 0.25: not used, since the challenge validation set "
                                         r"\(.*ISIC-2017_Validation_Data\) is the validation split; give --validation "
                                         r"carve"):
        prepare("isic_skin_lesion", str(isic_2017), str(tmp_path / "x"), val_fraction=0.25)
    assert not (tmp_path / "x").exists()
    # carving instead of the challenge validation set
    prepare("isic_skin_lesion", str(isic_2017), str(tmp_path / "carve"), validation="carve", val_fraction=0.25)
    carved = load_datalist(tmp_path / "carve", "validation")
    assert len(carved) == 3 and {i["image"].split("/")[-2] for i in carved} == {"ISIC-2017_Training_Data"}


def test_isic_2017_diagnoses_name_each_images_set(isic_2017, tmp_path):
    """ISIC 2017's part 3 tables give each image's diagnosis, which becomes its set in the datalist (so the
    evaluation reports each apart); without the tables the set is the year; a bad row is named."""
    import csv
    import shutil

    from vmunet_monai.data.common import DatasetLayoutError
    from vmunet_monai.data.isic import read_isic2017_diagnoses

    truth = {}
    for table in isic_2017.glob("*_Part3_GroundTruth.csv"):
        with open(table) as f:
            for row in csv.DictReader(f):
                truth[row["image_id"]] = ("melanoma" if float(row["melanoma"]) else "seborrheic keratosis"
                                          if float(row["seborrheic_keratosis"]) else "nevus")
    assert read_isic2017_diagnoses(isic_2017) == truth and len(truth) == 18
    prepare("isic_skin_lesion", str(isic_2017), str(tmp_path / "out"))
    items = [i for k in ("training", "validation", "test") for i in load_datalist(tmp_path / "out", k)]
    assert {i["name"]: i["dataset"] for i in items} == {k: f"ISIC2017 {v}" for k, v in truth.items()}
    copy = tmp_path / "copy"
    shutil.copytree(isic_2017, copy, ignore=shutil.ignore_patterns("*.csv"))
    prepare("isic_skin_lesion", str(copy), str(tmp_path / "plain"))
    assert {i["dataset"] for i in load_datalist(tmp_path / "plain", "test")} == {"ISIC2017"}
    (copy / "ISIC-2017_Test_v2_Part3_GroundTruth.csv").write_text("image_id,melanoma,seborrheic_keratosis\n"
                                                                  "ISIC_0000015,0.5,0.0\n")
    with pytest.raises(DatasetLayoutError, match=r"row 2 \(ISIC_0000015\) gives melanoma '0.5'"):
        read_isic2017_diagnoses(copy)


def test_isic_paper_split_is_seeded_and_disjoint(isic_2017, tmp_path):
    splits = {}
    for seed in (0, 0, 1):
        out = tmp_path / f"s{seed}_{len(splits)}"
        prepare("isic_skin_lesion", str(isic_2017), str(out), split="paper", seed=seed)
        splits[str(out)] = [_names(load_datalist(out, k)) for k in ("training", "validation", "test")]
    (a, b, c) = splits.values()
    assert a == b and a != c
    train, val, test = a
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 15  # the papers pool the labelled training and validation images
    assert len(test) == round(0.3 * 15)


def test_isic_2018_names_and_errors(tmp_path):
    raw = tmp_path / "raw18"
    isic.demo_data(str(raw), num=4, seed=0, year=2018)
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "o18"))
    assert len(load_datalist(tmp_path / "o18", "test")) == 2
    # both years present: the importer asks which
    isic.demo_data(str(raw), num=4, seed=0, year=2017)
    with pytest.raises(DatasetLayoutError, match="choose one with --year"):
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "both"))
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "y17"), year=2017)
    # an image without its mask is skipped and named; the others are imported
    (raw / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000001_segmentation.png").unlink()
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "bad"), year=2018)
    doc = json.loads((tmp_path / "bad" / "datalist.json").read_text())
    assert [s["file"].endswith("ISIC_0000001.jpg") for s in doc["meta"]["skipped"]] == [True]
    assert "ISIC_0000001" not in {i["name"] for k in ("training", "validation", "test") for i in doc[k]}
    # an official split without test ground truth is refused, the paper split still works
    shutil.rmtree(raw / "ISIC-2017_Test_v2_Part1_GroundTruth")
    with pytest.raises(DatasetLayoutError, match="split='paper'"):
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "x"), year=2017, split="official")
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "auto"), year=2017)
    assert json.loads((tmp_path / "auto" / "datalist.json").read_text())["meta"]["split"] == "paper"
    with pytest.raises(DatasetLayoutError, match="no ISIC training images"):
        prepare("isic_skin_lesion", str(tmp_path / "o18"), str(tmp_path / "y"), layout="challenge")


def test_isic_2016_names_and_the_carved_validation(tmp_path):
    raw = tmp_path / "raw16"
    isic.demo_data(str(raw), num=10, seed=0, year=2016)
    masks = sorted((raw / "ISBI2016_ISIC_Part1_Training_GroundTruth").iterdir())
    assert masks and all(m.name.endswith("_Segmentation.png") for m in masks)  # as the 2016 zips name them
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "o16"))
    doc = json.loads((tmp_path / "o16" / "datalist.json").read_text())
    assert doc["meta"]["split"] == "official" and "0.2 of the challenge training set" in doc["meta"]["how"]
    assert [len(doc[k]) for k in ("training", "validation", "test")] == [8, 2, 2]
    assert {i["dataset"] for k in ("training", "validation", "test") for i in doc[k]} == {"ISIC2016"}
    for item in load_datalist(tmp_path / "o16", "test"):
        assert Path(item["label"]).name == Path(item["image"]).stem + "_Segmentation.png"
    isic.demo_data(str(raw), num=4, seed=0, year=2018)
    with pytest.raises(DatasetLayoutError, match="ISIC 2016, 2018 are all present; choose one with --year"):
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "both"))


def test_mask_names_match_in_another_case_only_when_one_fits(tmp_path):
    from vmunet_monai.data.common import pair_images_and_masks

    (tmp_path / "m").mkdir()
    images = [tmp_path / f"{s}.jpg" for s in ("a", "b")]
    for name in ("a_Segmentation.png", "b_SEGMENTATION.png", "b_segmentation_.png"):
        (tmp_path / "m" / name).write_bytes(b"")
    pairs = pair_images_and_masks(images, tmp_path / "m", "_segmentation")
    assert [m.name for _, m in pairs] == ["a_Segmentation.png", "b_SEGMENTATION.png"]
    (tmp_path / "m" / "b_Segmentation.png").write_bytes(b"")  # two names fit b: neither is taken
    skipped: list[dict] = []
    pairs = pair_images_and_masks(images, tmp_path / "m", "_segmentation", skipped=skipped)
    assert [i.name for i, _ in pairs] == ["a.jpg"] and skipped[0]["file"].endswith("b.jpg")


def test_polyp_pranet_layout(polyp_raw, tmp_path):
    assert sorted(p.name for p in (polyp_raw / "TestDataset").iterdir()) == sorted(polyp.TEST_SETS)
    path = prepare("polyp_seg", str(polyp_raw.parent), str(tmp_path / "out"), val_fraction=0.25)
    doc = json.loads(open(path).read())
    assert doc["meta"]["test_sets"] == {name: 2 for name in polyp.TEST_SETS}
    train, val, test = (load_datalist(tmp_path / "out", k) for k in ("training", "validation", "test"))
    assert len(val) == 4 and len(train) == 12
    assert not ({i["image"] for i in train} & {i["image"] for i in val})
    assert all("TrainDataset" in i["image"] for i in train + val)
    assert {i["dataset"] for i in test} == set(polyp.TEST_SETS)
    # the same file names recur across sets and stay distinct items
    assert len({i["image"] for i in test}) == 10 and len({i["name"] for i in test}) == 2
    kvasir = [i for i in test if i["dataset"] == "Kvasir"]
    assert all(i["image"].endswith(".jpg") and i["label"].endswith(".png") for i in kvasir)
    with pytest.raises(DatasetLayoutError, match="TrainDataset"):
        prepare("polyp_seg", str(polyp_raw / "TestDataset"), str(tmp_path / "bad"))


def test_polyp_synthetic_images_show_the_polyp(polyp_raw):
    image = np.asarray(Image.open(polyp_raw / "TrainDataset" / "images" / "1.png"), dtype=np.float32)
    mask = np.asarray(Image.open(polyp_raw / "TrainDataset" / "masks" / "1.png")) > 127
    assert image.shape[:2] == mask.shape and 0.02 < mask.mean() < 0.5
    # polyps are paler (more green) than the surrounding mucosa
    assert image[mask][:, 1].mean() > image[~mask][:, 1].mean() + 10


def test_load_datalist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="vmunet_monai prepare"):
        load_datalist(tmp_path)
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [], "test": [{"image": "a.png"}]}))
    with pytest.raises(KeyError, match="validation") as missing:
        load_datalist(tmp_path, "validation")
    # also an InputError, so a bundle run (--eval_split valid) ends with this line; the message as written
    assert isinstance(missing.value, InputError)
    assert str(missing.value) == f"{tmp_path / 'datalist.json'}: no split 'validation'; the datalist has ['training', " \
                                 "'test']"
    with pytest.raises(InputError, match="empty"):
        load_datalist(tmp_path, "training")
    from vmunet_monai.data.common import inference_items

    with pytest.raises(InputError, match=r"nope: no such file or folder \(--input_dir names the images"):
        inference_items(input_path=tmp_path / "nope")  # (a FileNotFoundError too)
    assert load_datalist(tmp_path, "test")[0]["image"] == str((tmp_path / "a.png").resolve())


def test_inference_items_skip_masks(isic_2017, polyp_raw, tmp_path):
    items = common.inference_items(None, str(isic_2017))
    assert len(items) == 18 and not any("_segmentation" in i["image"] or "superpixels" in i["image"] for i in items)
    items = common.inference_items(None, str(polyp_raw / "TestDataset"))
    assert len(items) == 10 and all("/images/" in i["image"] for i in items)
    root = common.common_folder(items)
    assert root.endswith("TestDataset")
    one = common.inference_items(None, items[0]["image"])
    assert one == [{"image": items[0]["image"], "name": items[0]["name"]}]
    with pytest.raises(FileNotFoundError):
        common.inference_items(None, str(tmp_path / "nothing"))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 60), fractions=st.lists(st.floats(0, 0.45), min_size=1, max_size=2), seed=st.integers(0, 9))
def test_split_items_partitions(n, fractions, seed):
    parts = common.split_items(range(n), fractions, seed)
    assert len(parts) == len(fractions) + 1
    flat = [x for p in parts for x in p]
    assert sorted(flat) == list(range(n))
    assert parts == common.split_items(range(n), fractions, seed)
    if n > 3 * len(fractions):
        assert all(len(p) >= 1 for p, f in zip(parts, fractions) if f > 0)


def test_binarize_mask_scales():
    jpeg_like = torch.tensor([[0.0, 3.0, 120.0, 140.0, 252.0, 255.0]])
    assert BinarizeMaskd("m")({"m": jpeg_like})["m"].tolist() == [[0, 0, 0, 1, 1, 1]]
    unit = np.array([[0.0, 0.4, 0.6, 1.0]])
    assert BinarizeMaskd("m")({"m": unit})["m"].tolist() == [[0, 0, 1, 1]]
    heads = [torch.ones(1, 4, 4), torch.zeros(1, 2, 2)]
    assert FirstOutputd("pred")({"pred": heads})["pred"] is heads[0]


def test_insert_before_places_a_transform_before_the_first_of_a_class():
    from monai.transforms import CopyItemsd, Resized, ScaleIntensityd

    scale, resize, copy = ScaleIntensityd("image"), Resized("image", (8, 8)), CopyItemsd("label", names="orig")
    assert insert_before([scale, resize, resize], "Resized", copy) == [scale, copy, resize, resize]
    with pytest.raises(ValueError, match=r"no Resized among the transforms \(ScaleIntensityd\)"):
        insert_before([scale], "Resized", copy)


def test_binary_metrics_match_direct_computation():
    rng = np.random.default_rng(0)
    preds = [rng.random((20, 24)) for _ in range(5)]
    gts = [rng.random((20, 24)) > 0.6 for _ in range(5)]
    records = [binary.make_record(f"i{k}", p, g, group="a" if k < 3 else "b") for k, (p, g) in enumerate(zip(preds, gts))]
    summary = binary.summarize(records)
    p_all = np.concatenate([(p >= 0.5).ravel() for p in preds])
    g_all = np.concatenate([g.ravel() for g in gts])
    tp, fp = np.sum(p_all & g_all), np.sum(p_all & ~g_all)
    fn, tn = np.sum(~p_all & g_all), np.sum(~p_all & ~g_all)
    pooled = summary["overall"]["pooled"]
    assert pooled["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert pooled["miou"] == pytest.approx(tp / (tp + fp + fn))
    assert pooled["accuracy"] == pytest.approx((tp + tn) / p_all.size)
    assert pooled["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert pooled["specificity"] == pytest.approx(tn / (tn + fp))
    # per-image Dice agrees with MONAI's DiceMetric
    from monai.metrics import DiceMetric

    dice = [DiceMetric()(torch.tensor(p >= 0.5)[None, None].float(), torch.tensor(g)[None, None].float()).item()
            for p, g in zip(preds, gts)]
    assert summary["overall"]["per_image"]["dice_mean"] == pytest.approx(np.mean(dice), abs=1e-6)
    assert summary["overall"]["per_image"]["dice_sd"] == pytest.approx(np.std(dice, ddof=1), abs=1e-6)
    assert summary["groups"]["a"]["n_images"] == 3 and summary["groups"]["b"]["n_images"] == 2
    # at the edges: an empty/empty image scores 1 (the papers' rule); a pooled value of zero denominator is
    # undefined (the official code wrote 0, so a set without foreground segmented exactly printed DSC 0)
    assert binary.image_dice_iou(0, 0, 0) == (1.0, 1.0)
    assert binary.pooled_metrics(0, 0, 0, 10) == {"miou": None, "dsc": None, "accuracy": 1.0, "sensitivity": None,
                                                  "specificity": 1.0}
    empty = [binary.make_record(f"n{k}", np.zeros((4, 4)), np.zeros((4, 4)), group="normal") for k in range(3)]
    table = binary.format_summary(binary.summarize(empty))
    assert "normal" in table.splitlines()[2]
    assert "pooled:    n/a    n/a 1.0000    n/a 1.0000 | per image:  1.0000" in table
    assert binary.summary_metrics(binary.summarize(empty)) == {"image_dice_mean": 1.0, "image_iou_mean": 1.0}
    with pytest.raises(ValueError, match="elements"):
        binary.confusion_counts(np.zeros(4), np.zeros(5))


def test_write_report_files(tmp_path):
    records = [binary.make_record(f"i{k}", np.eye(6) * (k % 2), np.eye(6), group=g)
               for k, g in enumerate(["x", "y", "x", "y"])]
    paths = binary.write_report(records, tmp_path, prefix="m", title="t")
    rows = open(paths["csv"]).read().splitlines()
    assert rows[0].startswith("name,group,dice,iou") and len(rows) == 5
    saved = json.loads(open(paths["json"]).read())
    assert saved["groups"]["x"]["per_image"]["dice_mean"] == 0.0 and saved["groups"]["y"]["pooled"]["dsc"] == 1.0
    assert "pooled" in saved["labels"] and (tmp_path / "m.png").stat().st_size > 1000
    table = binary.format_summary(saved)
    assert "all sets together" in table and "paper-compatible" in table


def _mask_files(folder: Path, truth: np.ndarray) -> list[Path]:
    """One binary mask stored the ways people store them: red on black, a VOC palette, a 0-1 float TIFF, ImageJ's
    big-endian 16 bits, white grey levels."""
    folder.mkdir(parents=True, exist_ok=True)
    red = np.zeros((*truth.shape, 3), np.uint8)
    red[truth] = (255, 0, 0)
    Image.fromarray(red).save(folder / "red.png")
    palette = Image.fromarray(truth.astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    palette.save(folder / "voc.png")
    Image.fromarray(np.where(truth, 0.9, 0.05).astype(np.float32), mode="F").save(folder / "soft.tif")
    big = Image.frombytes("I;16B", truth.shape[::-1], (truth * 1000).astype(">u2").tobytes())
    big.save(folder / "imagej.tif")
    Image.fromarray((truth * 255).astype(np.uint8)).save(folder / "white.png")
    return sorted(folder.iterdir())


def test_training_prepare_and_score_read_a_mask_alike(tmp_path):
    """A red lesion was foreground for prepare's check, but PIL's grey made it 76 for training and score, below half
    scale; a 0-1 float mask became all 0 in 8 bits. One reading now, whatever the storage."""
    from vmunet_monai.data.preview import _mask_2d
    from vmunet_monai.engine.transforms import gray_converter
    from vmunet_monai.evaluation.score import _read_values
    from vmunet_monai.validation import check_image_pair_2d, mask_foreground

    truth = np.zeros((20, 30), bool)
    truth[4:12, 6:20] = True
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "image.png")
    for path in _mask_files(tmp_path / "masks", truth):
        with Image.open(path) as opened:
            loaded = BinarizeMaskd("m")({"m": torch.as_tensor(np.asarray(gray_converter(opened)).astype(np.float32))})
        assert np.array_equal(np.asarray(loaded["m"]) > 0, truth), path.name  # what training reads
        assert np.array_equal(mask_foreground(_read_values(path)), truth), path.name  # what score reads
        assert np.array_equal(_mask_2d(str(path)), truth), path.name  # the preview
        assert check_image_pair_2d(tmp_path / "image.png", path).foreground, path.name  # prepare's check


def test_a_16_bit_colour_tiff_is_read_at_full_depth(tmp_path):
    """PIL keeps the high byte of each 16-bit sample: 8-bit values stored in 16 bits came out black."""
    import SimpleITK as sitk

    from vmunet_monai.engine.transforms import rgb_converter

    rng = np.random.default_rng(0)
    for name, top in (("8_in_16.tif", 255), ("12_bit.tif", 4095)):
        stored = rng.integers(0, top + 1, (20, 30, 3)).astype(np.uint16)
        sitk.WriteImage(sitk.GetImageFromArray(stored, isVector=True), str(tmp_path / name))
        with Image.open(tmp_path / name) as opened:
            read = np.asarray(rgb_converter(opened)).astype(np.float64)
        low, high = stored.min(), stored.max()
        assert np.abs(read - (stored - low) * 255.0 / (high - low)).max() <= 0.5 + 1e-9, name


def test_a_0_1_mask_saved_as_jpeg_is_named_as_such(tmp_path):
    from vmunet_monai.validation import InputError, check_binary_mask

    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 5:25] = 1
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=90)
    stored = np.asarray(Image.open(tmp_path / "m.jpg"))
    assert stored.max() > 1  # JPEG's noise around the edge
    with pytest.raises(InputError, match=r"m.jpg: mask values are 0, 1, 2.*: a 0/1 mask stored lossy"):
        check_binary_mask(stored, tmp_path / "m.jpg")
    with pytest.raises(InputError, match="none of them at least 128"):  # the same values in a PNG: a label map?
        check_binary_mask(stored, tmp_path / "m.png")
    # noise that stays within 0 and 1 (edge pixels flipped) is refused alike, not let through by chance
    within = np.clip(stored, 0, 1)
    with pytest.raises(InputError, match=r"m.jpg: mask values are 0, 1: a 0/1 mask stored lossy"):
        check_binary_mask(within, tmp_path / "m.jpg")
    check_binary_mask(within, tmp_path / "m.png")  # 0/1 in a PNG: a binary mask
    check_binary_mask(np.where(within > 0, 255, 0).astype(np.uint8), tmp_path / "m.jpg")  # 0/255 JPEG: allowed
    check_binary_mask(np.zeros_like(within), tmp_path / "m.jpg")  # an empty mask


def test_masks_of_no_image_are_named(tmp_path, capsys):
    from vmunet_monai.data.common import pair_images_and_masks

    (tmp_path / "masks").mkdir()
    images = [tmp_path / f"{s}.jpg" for s in ("a", "b")]
    for name in ("a_mask.png", "b_mask.png", "c_mask.png", "stray.png", "._a_mask.png"):  # macOS's companion: no mask
        (tmp_path / "masks" / name).write_bytes(b"")
    pairs = pair_images_and_masks(images, tmp_path / "masks", "_mask")
    assert [m.name for _, m in pairs] == ["a_mask.png", "b_mask.png"]
    assert (f"note: 2 mask(s) in {tmp_path / 'masks'} belong to no image (c_mask.png, stray.png) and are not used"
            in capsys.readouterr().err)


def test_masks_in_a_format_that_is_not_read_are_named_with_the_fix(tmp_path):
    """DRIVE-style GIF masks: the image has no mask that is read, and the error says which file is there and what
    to save it as, for the one image and for every image."""
    from vmunet_monai.data.common import pair_images_and_masks

    (tmp_path / "masks").mkdir()
    images = [tmp_path / f"{s}.jpg" for s in ("a", "b")]
    for name in ("a_mask.gif", "b_mask.png"):
        (tmp_path / "masks" / name).write_bytes(b"")
    skipped = []
    assert [m.name for _, m in pair_images_and_masks(images, tmp_path / "masks", "_mask", skipped=skipped)] == [
        "b_mask.png"]
    assert skipped[0]["reason"].endswith("(every image needs its mask; a_mask.gif is there, but .gif files are not "
                                         "read as masks: save the masks as PNG)")
    (tmp_path / "masks" / "b_mask.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"for 2 image\(s\): a.jpg, b.jpg; a_mask.gif is there, but .gif files "
                                                 r"are not read as masks: save the masks as PNG$"):
        pair_images_and_masks(images, tmp_path / "masks", "_mask", skipped=[])


def test_an_isic_download_unzipped_on_macos_is_read_without_its_macosx_folder(isic_2017, tmp_path):
    """A zip extracted on macOS also holds __MACOSX/ with a "._X" companion of every folder and file: the challenge
    folders are the real ones, never their empty companions (which held no image to read)."""
    raw = tmp_path / "raw"
    shutil.copytree(isic_2017, raw)
    for folder in list(raw.iterdir()):
        if folder.is_dir():
            companion = raw / "__MACOSX" / folder.name
            companion.mkdir(parents=True)
            for f in folder.iterdir():
                (companion / f"._{f.name}").write_bytes(b"\x00\x05\x16\x07")
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "datalist.json").read_text())["meta"]["counts"] == {
        "training": 12, "validation": 3, "test": 3}


def test_a_mask_passed_over_for_its_png_twin_is_named(tmp_path, capsys):
    """X_mask.jpg beside X_mask.png: the PNG (lossless) is used, and the other is named, not dropped in silence."""
    from vmunet_monai.data.common import pair_images_and_masks

    (tmp_path / "masks").mkdir()
    images = [tmp_path / f"{s}.jpg" for s in ("a", "b")]
    for name in ("a_mask.png", "a_mask.jpg", "b_mask.jpg", "z_mask.png", "z_mask.jpg"):
        (tmp_path / "masks" / name).write_bytes(b"")
    pairs = pair_images_and_masks(images, tmp_path / "masks", "_mask")
    assert [m.name for _, m in pairs] == ["a_mask.png", "b_mask.jpg"]
    err = capsys.readouterr().err
    assert (f"note: 1 mask(s) in {tmp_path / 'masks'} share their name with a PNG mask, which is used; not used: "
            "a_mask.jpg (for a_mask.png)") in err
    assert "z_mask.jpg (for" not in err  # z belongs to no image: named once, in the other note
