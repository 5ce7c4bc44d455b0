"""Your own binary 2D data as folders of images and masks: layouts, mask names, splits, errors, and a
bundle trained and evaluated on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bundle_helpers import copy_bundle, tiny_overrides, workflow
from PIL import Image

from vmunet_monai.data import prepare
from vmunet_monai.data.common import DatasetLayoutError, load_datalist
from vmunet_monai.validation import InputError


def _write_pairs(images: Path, masks: Path, stems, rng, mask_suffix: str = "", rgb_mask: bool = False,
                 image_ext: str = ".jpg", size=(40, 48)) -> None:
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        h, w = size
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{stem}{image_ext}")
        mask = np.zeros((h, w), np.uint8)
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[top:top + h // 3, left:left + w // 3] = 255
        if rgb_mask:
            mask = np.repeat(mask[..., None], 3, axis=-1)
        Image.fromarray(mask).save(masks / f"{stem}{mask_suffix}.png")


def _datalist(out: Path) -> dict:
    return json.loads((out / "datalist.json").read_text())


def _stems(items) -> list[str]:
    return [it["name"] for it in items]


def test_one_pool_with_a_mask_suffix_is_split_seeded_and_disjoint(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "my_lesions"
    # folder names in any case; RGB masks named <stem>_mask.png; found one level below RAW
    _write_pairs(raw / "data" / "Images", raw / "data" / "Masks", [f"case{i:02d}" for i in range(20)], rng,
                 mask_suffix="_mask", rgb_mask=True)
    out = tmp_path / "out"
    prepare("isic_skin_lesion", str(raw), str(out))
    doc = _datalist(out)
    assert doc["meta"]["layout"] == "folders" and doc["meta"]["importer"] == "vmunet_monai.data.isic"
    assert list(doc["meta"]["mask_suffixes"].values()) == ["_mask"]
    train, val, test = (_stems(doc[k]) for k in ("training", "validation", "test"))
    assert (len(train), len(val), len(test)) == (11, 3, 6)  # 0.3 test, then 0.2 of the rest
    assert sorted(train + val + test) == [f"case{i:02d}" for i in range(20)]
    assert {it["dataset"] for it in doc["test"]} == {"data"}
    for item in load_datalist(out, "training", ["image", "label"]):
        assert Path(item["label"]).name == Path(item["image"]).stem + "_mask.png"
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "again"))
    assert _datalist(tmp_path / "again")["test"] == doc["test"]  # seeded
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "seed1"), seed=1, test_fraction=0.25)
    other = _stems(_datalist(tmp_path / "seed1")["test"])
    assert len(other) == 5 and other != test


def test_train_val_and_test_sets(tmp_path):
    rng = np.random.default_rng(1)
    raw = tmp_path / "endo"
    _write_pairs(raw / "train" / "images", raw / "train" / "masks", [str(i) for i in range(10)], rng)
    _write_pairs(raw / "valid" / "Original", raw / "valid" / "Ground Truth", ["v1", "v2"], rng)  # CVC-ClinicDB's
    for name, n in (("CentreA", 3), ("CentreB", 2)):
        _write_pairs(raw / "Test" / name / "images", raw / "Test" / name / "labels", [f"{name}_{i}" for i in range(n)],
                     rng, image_ext=".png")
    out = tmp_path / "out"
    # a fraction the folders make unused is refused, not ignored (the test and validation folders are the splits)
    with pytest.raises(InputError, match=rf"--test_fraction 0.3: not used, since the test folder {raw / 'Test'} is "
                                         r"the test split; leave it out"):
        prepare("polyp_seg", str(raw), str(out), test_fraction=0.3)
    with pytest.raises(InputError, match=rf"--val_fraction 0.2: not used, since the validation folder "
                                         rf"{raw / 'valid'} is the validation split"):
        prepare("polyp_seg", str(raw), str(out), val_fraction=0.2)
    prepare("polyp_seg", str(raw), str(out))
    doc = _datalist(out)
    assert _stems(doc["validation"]) == ["v1", "v2"]  # the validation folder, not carved
    assert sorted(_stems(doc["training"])) == sorted(str(i) for i in range(10))
    assert doc["meta"]["test_sets"] == {"CentreA": 3, "CentreB": 2}
    assert [it["dataset"] for it in doc["test"]] == ["CentreA"] * 3 + ["CentreB"] * 2
    assert doc["meta"]["mask_suffixes"] and set(doc["meta"]["mask_suffixes"].values()) == {""}
    preview = Image.open(out / "preview.png")  # images with their masks, every split shown
    assert preview.size[0] > 600 and preview.size[1] > 250


def test_a_preview_that_fails_does_not_stop_the_import(tmp_path, capsys, monkeypatch):
    from vmunet_monai.data import preview

    def broken(*args, **kwargs):
        raise MemoryError("no room for a picture")

    monkeypatch.setattr(preview, "_preview_2d", broken)
    rng = np.random.default_rng(6)
    raw = tmp_path / "raw"
    _write_pairs(raw / "images", raw / "masks", [f"p{i}" for i in range(6)], rng)
    prepare("polyp_seg", str(raw), str(tmp_path / "out"))
    assert (tmp_path / "out" / "datalist.json").is_file() and not (tmp_path / "out" / "preview.png").exists()
    assert f"note: no {tmp_path / 'out' / 'preview.png'} (MemoryError: no room for a picture)" in capsys.readouterr().err


def test_missing_splits_are_carved_and_unlabelled_test_images_are_left_out(tmp_path, capsys):
    rng = np.random.default_rng(2)
    raw = tmp_path / "raw"
    _write_pairs(raw / "training" / "images", raw / "training" / "masks", [f"t{i}" for i in range(10)], rng)
    (raw / "test" / "images").mkdir(parents=True)  # test images without masks: cannot be scored
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(raw / "test" / "images" / "u.png")
    out = tmp_path / "out"
    prepare("polyp_seg", str(raw), str(out), test_fraction=0.3, val_fraction=0.25)
    doc = _datalist(out)
    assert [len(doc[k]) for k in ("training", "validation", "test")] == [5, 2, 3]
    assert "u" not in _stems(doc["test"])
    err = capsys.readouterr().err
    assert f"note: {raw / 'test'}: no masks/" in err and "predict" in err


def test_bad_pairs_are_skipped_and_named(tmp_path, capsys):
    rng = np.random.default_rng(3)
    raw = tmp_path / "raw"
    _write_pairs(raw / "images", raw / "masks", [f"c{i}" for i in range(8)], rng)
    Image.fromarray(np.full((40, 48), 2, np.uint8)).save(raw / "masks" / "c3.png")  # a label map, classes 0..2
    (raw / "masks" / "c5.png").unlink()  # no mask
    (raw / "images" / "._c1.jpg").write_bytes(b"\0" * 4096)  # a hidden macOS companion: not an image, not reported
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(raw / "masks" / "c6.png")  # another size
    out = tmp_path / "out"
    prepare("isic_skin_lesion", str(raw), str(out))
    doc = _datalist(out)
    kept = sorted(_stems(doc["training"] + doc["validation"] + doc["test"]))
    assert kept == ["c0", "c1", "c2", "c4", "c7"]
    reasons = {Path(s["file"]).stem: s["reason"] for s in doc["meta"]["skipped"]}
    assert set(reasons) == {"c3", "c5", "c6"}
    assert "binary mask" in reasons["c3"] and "no mask" in reasons["c5"] and "40" in reasons["c6"]
    err = capsys.readouterr().err
    assert all(f"skipped {raw / 'images' / f'{s}.jpg'}" in err for s in ("c3", "c5", "c6"))


def test_layout_errors_name_the_folder_and_the_rule(tmp_path):
    rng = np.random.default_rng(4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetLayoutError, match="neither the ISIC challenge folders .* nor your own folders"):
        prepare("isic_skin_lesion", str(empty), str(tmp_path / "o1"))
    with pytest.raises(DatasetLayoutError, match="neither the PraNet layout .* nor your own folders"):
        prepare("polyp_seg", str(empty), str(tmp_path / "o1"))
    with pytest.raises(DatasetLayoutError, match="no folders of images and masks found"):
        prepare("polyp_seg", str(empty), str(tmp_path / "o1"), layout="folders")
    raw = tmp_path / "raw"
    _write_pairs(raw / "images", raw / "masks", ["a", "b", "c"], rng, mask_suffix="_annotation")
    with pytest.raises(DatasetLayoutError, match=r"no mask matches .*'a_mask.png'.*--mask_suffix"):
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "o2"))
    with pytest.raises(DatasetLayoutError, match=r"no mask named '<image stem>_gt\.<png"):
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "o2"), mask_suffix="_gt")
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "o2"), mask_suffix="_annotation", test_fraction=0.34,
            val_fraction=0.5)
    assert len(_datalist(tmp_path / "o2")["test"]) == 1
    with pytest.raises(InputError, match=r"--split 'paper': only for the ISIC challenge layout.*read as folders"):
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "o3"), split="paper")
    with pytest.raises(InputError, match="layout must be 'auto', 'pranet' or 'folders', got 'challenge'"):
        prepare("polyp_seg", str(raw), str(tmp_path / "o3"), layout="challenge")
    with pytest.raises(InputError, match="OUT"):  # never written inside the data
        prepare("polyp_seg", str(raw), str(raw / "masks" / "out"))


def test_native_layouts_still_win_and_refuse_folder_options(tmp_path):
    from vmunet_monai.data import demo_data

    raw = tmp_path / "pranet"
    demo_data("polyp_seg", str(raw), num=4, seed=0)
    with pytest.raises(InputError, match=r"--mask_suffix '_m': only for the folders layout.*read as pranet"):
        prepare("polyp_seg", str(raw), str(tmp_path / "o"), mask_suffix="_m")
    prepare("polyp_seg", str(raw), str(tmp_path / "o"))
    assert _datalist(tmp_path / "o")["meta"]["importer"] == "vmunet_monai.data.polyp"
    assert "layout" not in _datalist(tmp_path / "o")["meta"]


def test_bundle_trains_and_reports_each_test_set_of_a_folders_dataset(tmp_path):
    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    # 10 training images after the validation draw: no last batch of one (BatchNorm of VM-UNetV2's deepest
    # map, 1x1 at this tiny size, cannot train on a single value)
    _write_pairs(raw / "train" / "images", raw / "train" / "masks", [f"t{i}" for i in range(11)], rng, size=(36, 44))
    for name in ("siteA", "siteB"):
        _write_pairs(raw / "test" / name / "images", raw / "test" / name / "masks", [f"{name}{i}" for i in range(2)],
                     rng, size=(30, 50))
    prepared = tmp_path / "prepared"
    prepare("polyp_seg", str(raw), str(prepared))
    root = copy_bundle("polyp_seg", tmp_path)
    over = tiny_overrides("polyp_seg", epochs=1)
    for configs, kind in ((["train.json"], "train"), (["train.json", "evaluate.json"], "eval")):
        wf = workflow("polyp_seg", configs, kind, bundle_root=str(root), dataset_dir=str(prepared), **over)
        wf.initialize()
        wf.run()
        wf.finalize()
    summary = json.loads((root / "eval" / "metrics_test_summary.json").read_text())
    assert list(summary["groups"]) == ["siteA", "siteB"]
    assert summary["overall"]["n_images"] == 4


def test_several_datasets_are_not_guessed_and_a_macos_copy_is_not_a_dataset(tmp_path):
    rng = np.random.default_rng(7)
    raw = tmp_path / "downloads"
    _write_pairs(raw / "Kvasir-SEG" / "images", raw / "Kvasir-SEG" / "masks", [f"k{i}" for i in range(6)], rng)
    # the __MACOSX copy a macOS zip adds mirrors the tree (with ._ files): not a second dataset
    for sub in ("images", "masks"):
        (raw / "__MACOSX" / "Kvasir-SEG" / sub).mkdir(parents=True)
        (raw / "__MACOSX" / "Kvasir-SEG" / sub / "._k0.jpg").write_bytes(b"\0" * 512)
    prepare("polyp_seg", str(raw), str(tmp_path / "one"))
    assert _datalist(tmp_path / "one")["meta"]["raw"].endswith("Kvasir-SEG")
    _write_pairs(raw / "CVC-ClinicDB" / "Original", raw / "CVC-ClinicDB" / "Ground Truth", ["c0", "c1", "c2"], rng)
    with pytest.raises(DatasetLayoutError, match=r"several datasets of images and masks \(.*CVC-ClinicDB, .*Kvasir-SEG\)"
                                                 r"; give one of them as RAW"):
        prepare("polyp_seg", str(raw), str(tmp_path / "two"))
    prepare("polyp_seg", str(raw / "CVC-ClinicDB"), str(tmp_path / "cvc"), val_fraction=0.4, test_fraction=0.34)
    assert len(_datalist(tmp_path / "cvc")["training"]) == 1
    # one dataset beside others one level deeper (PraNet's TrainDataset/ beside TestDataset/<set>/ given to the
    # ISIC bundle): the deeper ones were left out without a word
    deeper = tmp_path / "pranet_like"
    _write_pairs(deeper / "TrainDataset" / "images", deeper / "TrainDataset" / "masks", ["t0", "t1", "t2"], rng)
    _write_pairs(deeper / "TestDataset" / "Kvasir" / "images", deeper / "TestDataset" / "Kvasir" / "masks",
                 ["v0", "v1"], rng)
    with pytest.raises(DatasetLayoutError, match=r"several datasets of images and masks \(.*TrainDataset, "
                                                 r".*TestDataset/Kvasir\), at different depths; give one of them"):
        prepare("isic_skin_lesion", str(deeper), str(tmp_path / "deeper"))
    assert not (tmp_path / "deeper").exists()


def test_command_line_options_of_the_folders_layout(tmp_path, capsys):
    from vmunet_monai.cli import main

    rng = np.random.default_rng(8)
    raw = tmp_path / "raw"
    _write_pairs(raw / "images", raw / "masks", [f"d{i}" for i in range(6)], rng, mask_suffix="-mask")
    main(["prepare", "isic_skin_lesion", str(raw), str(tmp_path / "out"), "--layout", "folders",
          "--mask_suffix=-mask", "--test_fraction", "0.5"])
    doc = _datalist(tmp_path / "out")
    assert list(doc["meta"]["mask_suffixes"].values()) == ["-mask"] and len(doc["test"]) == 3
    assert "preview: " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["prepare", "isic_skin_lesion", str(raw), str(tmp_path / "o2"), "--year", "2017"])
    assert "error: --year 2017: only for the ISIC challenge layout" in capsys.readouterr().err


@pytest.mark.parametrize("bundle, groups", [("isic_skin_lesion", ["raw"]), ("polyp_seg", ["centre_A", "centre_B"])])
def test_demo_data_in_the_folders_layout_is_read_as_your_own(tmp_path, bundle, groups):
    from vmunet_monai.data import demo_data

    raw = tmp_path / "raw"
    demo_data(bundle, str(raw), num=16, seed=2, layout="folders")
    prepare(bundle, str(raw), str(tmp_path / "out"))
    doc = _datalist(tmp_path / "out")
    assert doc["meta"]["layout"] == "folders" and not doc["meta"]["skipped"]
    assert sorted({it["dataset"] for it in doc["test"]}) == groups
    total = sum(len(doc[k]) for k in ("training", "validation", "test"))
    assert total == (16 if bundle == "isic_skin_lesion" else 16 + 2 * 2)
    with pytest.raises(ValueError, match="layout must be"):
        demo_data(bundle, str(tmp_path / "x"), layout="other")
    # written again over the first (fewer images): refused, not mixed with the first one's extra images
    with pytest.raises(InputError, match=rf"^{raw}: holds \d+ entr(y|ies) already \(first: .*\); demo_data writes a "
                                         r"whole dataset into a new or empty folder"):
        demo_data(bundle, str(raw), num=8, seed=2, layout="folders")


def _side_by_side(folder: Path, stems, rng, suffix: str = "_mask", size=(30, 40), empty: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    for stem in stems:
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(folder / f"{stem}.png")
        mask = np.zeros((h, w), np.uint8)
        if not empty:
            mask[2:12, 3:15] = 255
        Image.fromarray(mask).save(folder / f"{stem}{suffix}.png")


def test_masks_beside_their_images_in_category_folders_busi(tmp_path):
    """BUSI: benign/, malignant/, normal/, each image beside X_mask.png (and X_mask_1.png for a second lesion)."""
    rng = np.random.default_rng(11)
    raw = tmp_path / "Dataset_BUSI_with_GT"
    _side_by_side(raw / "benign", [f"benign ({i})" for i in range(1, 11)], rng)
    _side_by_side(raw / "malignant", [f"malignant ({i})" for i in range(1, 11)], rng)
    _side_by_side(raw / "normal", [f"normal ({i})" for i in range(1, 6)], rng, empty=True)
    second = np.zeros((30, 40), np.uint8)
    second[20:28, 25:38] = 255
    Image.fromarray(second).save(raw / "benign" / "benign (2)_mask_1.png")
    Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8)).save(raw / "benign" / "notes scan.png")
    out = tmp_path.parent / f"{tmp_path.name}_prepared"  # outside the folder above the download, which is RAW
    prepare("isic_skin_lesion", str(tmp_path), str(out))
    doc = _datalist(out)
    meta = doc["meta"]
    assert meta["raw"].endswith("Dataset_BUSI_with_GT") and "split per category" in meta["how"]
    assert set(meta["mask_suffixes"].values()) == {"_mask"}
    # each category keeps its share of the test split, and is reported apart
    assert meta["test_sets"] == {"benign": 3, "malignant": 3, "normal": 2}
    everything = sum((doc[k] for k in ("training", "validation", "test")), [])
    assert len(everything) == 25 and {it["dataset"] for it in everything} == {"benign", "malignant", "normal"}
    assert [s["file"].endswith("notes scan.png") for s in meta["skipped"]] == [True]
    # two masks of one image: their union, written under OUT/labels
    union = next(it for it in everything if it["name"] == "benign (2)")
    assert union["label"].startswith("labels/")
    merged = np.asarray(Image.open(out / union["label"])) > 127
    assert merged[5, 5] and merged[25, 30] and merged.sum() == 10 * 12 + 8 * 13
    # a mask that is not beside an image is no image of its own
    assert all("_mask" not in it["name"] for it in everything)


def test_masks_beside_their_images_in_one_folder(tmp_path):
    rng = np.random.default_rng(12)
    raw = tmp_path / "glands"
    _side_by_side(raw, [f"train_{i}" for i in range(8)], rng, suffix="_anno")
    out = tmp_path / "prepared"
    prepare("polyp_seg", str(raw), str(out), test_fraction=0.25)
    doc = _datalist(out)
    assert doc["meta"]["mask_suffixes"] == {str(raw): "_anno"}
    assert (len(doc["training"]) + len(doc["validation"]), len(doc["test"])) == (6, 2)
    assert all(Path(it["label"]).name == f"{it['name']}_anno.png" for it in doc["training"])
    with pytest.raises(DatasetLayoutError, match="no image has its mask beside it"):
        prepare("polyp_seg", str(raw), str(tmp_path / "other"), mask_suffix="_gt", layout="folders")
    # a suffix of the user's own (none of those found without it), with or without --layout folders
    own = tmp_path / "own"
    _side_by_side(own, [f"x{i}" for i in range(6)], rng, suffix="_annotation")
    for layout in ("auto", "folders"):
        prepare("isic_skin_lesion", str(own), str(tmp_path / f"own_{layout}"), mask_suffix="_annotation",
                test_fraction=0.34, layout=layout)
        doc = _datalist(tmp_path / f"own_{layout}")
        assert doc["meta"]["mask_suffixes"] == {str(own): "_annotation"}
        assert len(doc["training"]) + len(doc["validation"]) + len(doc["test"]) == 6


def test_when_every_pair_beside_its_image_is_refused_the_reason_is_said(tmp_path):
    """Instance masks (0, 1, 2) beside their images, all refused by the half-scale rule: the error gives the last
    pair's reason, which names --foreground nonzero (it said only that no pair was usable)."""
    raw = tmp_path / "glands"
    raw.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(raw / f"g{i}.png")
        mask = np.zeros((20, 24), np.uint8)
        mask[2:8, 2:8], mask[10:16, 10:16] = 1, 2
        Image.fromarray(mask).save(raw / f"g{i}_mask.png")
    with pytest.raises(DatasetLayoutError, match=r"glands: no usable image/mask pair \(every pair was skipped: .*"
                       r"g\d_mask.png: mask values are 0, 1, 2.*--foreground nonzero"):
        prepare("polyp_seg", str(raw), str(tmp_path / "out"))


def test_instance_masks_read_with_foreground_nonzero(tmp_path):
    """GlaS-style masks number each gland 1, 2, 3 ...: refused by the half-scale rule (they would read nearly
    empty), read as every value above 0 with --foreground nonzero."""
    rng = np.random.default_rng(13)
    raw = tmp_path / "glas"
    raw.mkdir()
    truths = {}
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(raw / f"train_{i}.bmp")
        mask = np.zeros((30, 40), np.uint8)
        mask[2:10, 2:10], mask[15:25, 20:35] = 1, 2 + i
        truths[f"train_{i}"] = mask > 0
        Image.fromarray(mask).save(raw / f"train_{i}_anno.bmp")
    with pytest.raises(DatasetLayoutError, match="no usable image/mask pair"):
        prepare("polyp_seg", str(raw), str(tmp_path / "half"))
    out = tmp_path / "nonzero"
    prepare("polyp_seg", str(raw), str(out), foreground="nonzero", test_fraction=0.34)
    doc = _datalist(out)
    assert doc["meta"]["foreground"].startswith("every value above 0; 6 of 6 masks rewritten")
    for item in sum((doc[k] for k in ("training", "validation", "test")), []):
        written = np.asarray(Image.open(out / item["label"]))
        assert set(np.unique(written).tolist()) == {0, 255}
        np.testing.assert_array_equal(written > 0, truths[item["name"]])
    with pytest.raises(InputError, match="--foreground 'all': choose half"):
        prepare("polyp_seg", str(raw), str(tmp_path / "x"), foreground="all")
    with pytest.raises(InputError, match="--foreground nonzero: only for binary masks"):
        prepare("polyp_seg", str(raw), str(tmp_path / "y"), foreground="nonzero", classes="a,b")


def test_glands_in_one_folder_keep_the_split_their_names_state(tmp_path):
    """GlaS keeps train_*, testA_* and testB_* tiles in one folder: the names are the official split (testA and testB
    two test sets), and the binary masks written for training merge touching glands, which the objects command
    shows against the numbered masks."""
    from vmunet_monai.data import demo_data
    from vmunet_monai.evaluation.objects import read_objects, run_objects

    raw, out = tmp_path / "raw", tmp_path / "prepared"
    demo_data("polyp_seg", str(raw), num=8, seed=1, layout="glands")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(raw / "train_99.bmp")  # a tile without its mask
    with pytest.raises(InputError, match=r"--test_fraction 0.5: not used, since the file names .* make the split "
                                         r"\(train_\*; testA_\*, testB_\* for testing\)"):
        prepare("polyp_seg", str(raw), str(out), foreground="nonzero", test_fraction=0.5)
    prepare("polyp_seg", str(raw), str(out), foreground="nonzero")
    doc = _datalist(out)
    assert [s["file"] for s in doc["meta"]["skipped"]] == [str(raw / "train_99.bmp")]  # named once
    assert "split by their names" in doc["meta"]["how"] and doc["meta"]["test_sets"] == {"testA": 2, "testB": 2}
    assert sorted(i["name"] for i in doc["test"]) == ["testA_1", "testA_2", "testB_1", "testB_2"]
    assert {i["name"]: i["dataset"] for i in doc["test"]}["testB_2"] == "testB"
    assert all(i["name"].startswith("train_") for i in doc["training"] + doc["validation"])
    assert len(doc["training"]) + len(doc["validation"]) == 8
    summary = run_objects(out / "labels", raw, out=tmp_path / "objects", group_by="prefix", pictures=False)
    assert set(summary["groups"]) == {"train", "testA", "testB"} and summary["overall"]["n_images"] == 12
    assert summary["overall"]["pooled"]["n_truth"] == sum(
        int(read_objects(p).max()) for p in raw.glob("*_anno.bmp"))
    per_image = summary["overall"]["per_image"]
    assert per_image["dice_mean"] == 1.0  # the same pixels ...
    assert per_image["f1_mean"] < 1.0 and per_image["object_dice_mean"] < 1.0  # ... but touching glands merged


def test_two_images_of_one_name_get_one_mask_the_png_and_the_other_is_named(tmp_path):
    """X.jpg beside X.png (the same picture twice, or two pictures for one mask): kept, both would get X's mask and
    could land in two splits (a test image also trained on). The PNG is paired; the other is skipped and named."""
    from vmunet_monai.data.common import pair_images_and_masks

    rng = np.random.default_rng(13)
    raw = tmp_path / "own"
    _write_pairs(raw / "images", raw / "masks", [f"c{i}" for i in range(10)], rng, image_ext=".png")
    for stem, ext in (("c0", ".jpg"), ("c1", ".bmp")):  # .bmp and .jpg sort before .png: the order is not the rule
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(raw / "images" / f"{stem}{ext}")
    out = tmp_path / "out"
    prepare("isic_skin_lesion", str(raw), str(out))
    doc = _datalist(out)
    everything = sum((doc[k] for k in ("training", "validation", "test")), [])
    assert sorted(Path(it["image"]).name for it in everything) == sorted(f"c{i}.png" for i in range(10))
    reasons = {Path(s["file"]).name: s["reason"] for s in doc["meta"]["skipped"]}
    assert set(reasons) == {"c0.jpg", "c1.bmp"}
    assert "its mask" in reasons["c0.jpg"] and "c0.png (two images named 'c0'" in reasons["c0.jpg"]

    # the same beside the images (X.png, X.tif, X_mask.png in one folder)
    mixed = tmp_path / "beside"
    _side_by_side(mixed, [f"m{i}" for i in range(8)], rng)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(mixed / "m3.tif")
    prepare("polyp_seg", str(mixed), str(tmp_path / "out_beside"), test_fraction=0.25)
    doc = _datalist(tmp_path / "out_beside")
    everything = sum((doc[k] for k in ("training", "validation", "test")), [])
    assert len(everything) == 8 and all(Path(it["image"]).suffix == ".png" for it in everything)
    (skipped,) = doc["meta"]["skipped"]
    assert skipped["file"].endswith("m3.tif") and "m3_mask.png is the mask of" in skipped["reason"]

    # without a list to report them in, two images of one name are an error naming both
    images = sorted((raw / "images").iterdir())
    with pytest.raises(DatasetLayoutError, match=r"c0\.jpg: its mask .*c0\.png is the mask of .*c0\.png"):
        pair_images_and_masks(images, raw / "masks")


def test_a_folder_whose_masks_are_all_empty_is_noted(tmp_path, capsys):
    """Masks with no foreground anywhere (the wrong files, or 0/1 masks read at the wrong scale) train a model that
    segments nothing, and its evaluation scores every both-empty image 1: prepare says so; one mask with a lesion
    is enough to say nothing."""
    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    _write_pairs(raw / "images", raw / "masks", [f"c{i}" for i in range(8)], rng)
    for mask in (raw / "masks").iterdir():
        Image.fromarray(np.zeros((40, 48), np.uint8)).save(mask)
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "out"))
    assert (f"note: every mask of the 8 pairs in {raw / 'masks'} is empty (no foreground): they teach a model only "
            "where there is nothing to segment, right for normal scans") in capsys.readouterr().err
    lesion = np.zeros((40, 48), np.uint8)
    lesion[10:20, 10:20] = 255
    Image.fromarray(lesion).save(raw / "masks" / "c3.png")
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "out2"))
    assert "is empty (no foreground)" not in capsys.readouterr().err


def test_images_in_subfolders_of_the_image_folder_are_named(tmp_path, capsys):
    """Images sorted into subfolders of images/ are not read: a note names the subfolders beside images that are,
    and an image folder holding images only in subfolders is refused, naming them."""
    rng = np.random.default_rng(21)
    raw = tmp_path / "raw"
    _write_pairs(raw / "images", raw / "masks", ["a", "b", "c", "d"], rng)
    _write_pairs(raw / "images" / "extra", raw / "masks", ["e", "f"], rng)
    prepare("polyp_seg", str(raw), str(tmp_path / "out"), val_fraction=0.25, test_fraction=0.25)
    assert sum(_datalist(tmp_path / "out")["meta"]["counts"].values()) == 4
    assert (f"note: {raw / 'images'}: the images in its subfolders extra/ (2) are not imported (only the images "
            "directly in it are)") in capsys.readouterr().err
    nested = tmp_path / "nested"
    _write_pairs(nested / "images" / "part1", nested / "masks", ["a", "b", "c"], rng)
    _write_pairs(nested / "images" / "part2", nested / "masks", ["d"], rng)
    with pytest.raises(DatasetLayoutError, match=r"images: no images \(PNG, JPEG, BMP, TIFF or WebP\); its subfolders "
                                                 r"part1/ \(3\), part2/ \(1\) hold images, which must lie directly in it"):
        prepare("polyp_seg", str(nested), str(tmp_path / "out2"))


def test_an_out_that_bundles_cannot_read_or_that_reaches_into_the_data_is_refused(tmp_path):
    """OUT holding '#' would be read as two ids by MONAI's config parser in every bundle run; an OUT reached through a
    link into the dataset would write inside it."""
    import os

    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    _write_pairs(raw / "images", raw / "masks", ["a", "b", "c", "d"], rng)
    with pytest.raises(InputError, match=r"prep#1: OUT holds '#'"):
        prepare("polyp_seg", str(raw), str(tmp_path / "prep#1"))
    os.symlink(raw, tmp_path / "link")
    with pytest.raises(InputError, match="the prepared folder \\(OUT\\) is inside the input folder"):
        prepare("polyp_seg", str(raw), str(tmp_path / "link" / "masks" / "out"))
    assert not (raw / "masks" / "out").exists()


@pytest.mark.parametrize("levels,said", [((0, 100, 200), "pixels of 100 are background"),
                                         ((0, 128, 255), "pixels of 128, 255 are all one foreground"),
                                         ((0, 255), None)])
def test_masks_of_several_grey_levels_read_as_binary_get_a_note(levels, said, tmp_path, capsys):
    """Masks holding a value besides 0 and their top one over a large area (a label map of classes 1 and 2 stored
    as grey levels) are read as binary, foreground from 128 up, without --classes: a note says what became of each
    value. Smoothed edges (a sliver of each grey level) get none."""
    rng = np.random.default_rng(4)
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    yy, xx = np.mgrid[:48, :40]
    radius = np.hypot(yy - 24, xx - 20)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(raw / "images" / f"c{i}.png")
        mask = np.zeros((48, 40), np.float64)
        mask[radius < 14] = levels[1]
        mask[radius < 7] = levels[-1]
        if len(levels) == 2:  # smoothed edges: every grey level on a one-pixel rim
            mask = np.clip((14.5 - radius) * 255, 0, 255)
        Image.fromarray(mask.round().astype(np.uint8)).save(raw / "masks" / f"c{i}.png")
    capsys.readouterr()
    prepare("isic_skin_lesion", str(raw), str(tmp_path / "out"), test_fraction=0.34)
    notes = [line for line in capsys.readouterr().err.splitlines() if "besides 0 and their top one" in line]
    if said is None:
        assert not notes, notes
        return
    (note,) = notes
    assert note.startswith(f"note: 6 mask(s) hold values besides 0 and their top one over large areas (first: {raw}")
    assert said in note and "--classes" in note


def test_volume_files_and_gifs_among_the_images_are_named_as_skipped(tmp_path, capsys):
    """A NIfTI scan or a GIF among the 2D images is not read by a 2D bundle: prepare names each as skipped, with the
    bundle that reads volumes (before, both were passed over in silence). A text file passes unnamed."""
    import nibabel as nib

    rng = np.random.default_rng(5)
    raw = tmp_path / "own"
    _write_pairs(raw / "images", raw / "masks", [f"c{i}" for i in range(8)], rng, image_ext=".png")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), raw / "images" / "scan01.nii.gz")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(raw / "images" / "c9.gif")
    (raw / "images" / "readme.txt").write_text("notes")
    mixed = tmp_path / "beside"
    _side_by_side(mixed, [f"m{i}" for i in range(8)], rng)
    (mixed / "m0.nrrd").write_bytes(b"NRRD0004\n")
    for bundle, folder, names in (("isic_skin_lesion", raw / "images", ["c9.gif", "scan01.nii.gz"]),
                                  ("polyp_seg", mixed, ["m0.nrrd"])):
        prepare(bundle, str(folder.parent if folder.name == "images" else folder), str(tmp_path / f"out_{bundle}"),
                test_fraction=0.25)
        reasons = {Path(s["file"]).name: s["reason"] for s in _datalist(tmp_path / f"out_{bundle}")["meta"]["skipped"]}
        assert sorted(reasons) == names, reasons
        for name in names:
            expected = "a GIF, which is not read" if name.endswith(".gif") else "is a volume file (NIfTI, NRRD, MHA"
            assert f"{folder / name}: {expected}" in reasons[name]
        printed = capsys.readouterr().err
        assert f"skipped {folder / names[-1]}: " in printed and f"{len(names)} image(s) skipped" in printed
