"""2D masks of several classes: reading label maps in prepare, the 2D bundles trained, evaluated, scored at
native size and run for inference with softmax heads, per-class reports, overlays and predict."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import copy_bundle, tiny_overrides, workflow
from PIL import Image

from vmunet_monai.data import demo_data, prepare
from vmunet_monai.data.common import DatasetLayoutError, load_datalist
from vmunet_monai.data.label_maps import find_class_values, parse_mask_values, read_label, write_label_maps
from vmunet_monai.engine import BinarySegmentationReport, OverlayWriter, output_channels
from vmunet_monai.evaluation.gallery import class_colors
from vmunet_monai.evaluation.binary import format_summary, make_record, scalar_metrics, summarize, summary_metrics
from vmunet_monai.validation import InputError


def _pool(raw: Path, n: int, rng, values=(0, 128, 255), size=(36, 44), mode: str = "L", ext: str = ".png") -> list:
    """``n`` images in ``raw/images`` and label maps in ``raw/masks`` holding ``values`` (background, then a
    rectangle per class); returns the class-number arrays written."""
    (raw / "images").mkdir(parents=True, exist_ok=True)
    (raw / "masks").mkdir(parents=True, exist_ok=True)
    truths = []
    for i in range(n):
        h, w = size
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(raw / "images" / f"img{i}.png")
        classes = np.zeros((h, w), np.uint8)
        for c in range(1, len(values)):
            top, left = rng.integers(0, h - 8), rng.integers(0, w - 8)
            classes[top:top + 8, left:left + 8] = c
        truths.append(classes)
        stored = np.asarray(values, np.uint8)[classes]
        if mode == "P":
            image = Image.fromarray(classes, mode="P")
            image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 - 3) * 3)
        else:
            image = Image.fromarray(stored, mode="L")
        image.save(raw / "masks" / f"img{i}{ext}")
    return truths


def test_mask_values_option_is_checked():
    assert parse_mask_values("0,128,255", 3) == [0, 128, 255]
    assert parse_mask_values("[0, 1, 2]", 3) == [0, 1, 2]
    assert parse_mask_values((0, 7), 2) == [0, 7]
    assert parse_mask_values(None, 3) is None
    with pytest.raises(InputError, match=r"--mask_values .0,255.: 2 values for 3 classes \(background first"):
        parse_mask_values("0,255", 3)
    with pytest.raises(InputError, match="repeated"):
        parse_mask_values("0,5,5", 3)
    with pytest.raises(InputError, match="whole numbers"):
        parse_mask_values("0,a,b", 3)
    with pytest.raises(InputError, match="0 to 65535"):
        parse_mask_values("0,1,70000", 3)


def test_class_values_are_found_checked_and_rewritten(tmp_path):
    rng = np.random.default_rng(0)
    grey = tmp_path / "grey"
    truths = _pool(grey, 3, rng, values=(0, 128, 255))
    masks = sorted(str(p) for p in (grey / "masks").iterdir())
    values, seen = find_class_values(masks, 3)
    assert values == [0, 128, 255] and seen == {1: 3, 2: 3}
    # the order may be given: here 255 is class 1
    values, _ = find_class_values(masks, 3, "0,255,128")
    assert values == [0, 255, 128]
    with pytest.raises(DatasetLayoutError, match=r"img0\.png: holds the value\(s\) 128, which --mask_values 0,255,7"):
        find_class_values(masks, 3, "0,255,7")
    with pytest.raises(DatasetLayoutError, match=r"3 distinct values \(0, 128, 255\) but --classes names 3 classes"):
        find_class_values(masks, 4)

    items = [{"label": m} for m in masks]
    assert write_label_maps(items, [0, 128, 255], tmp_path / "out", grey) == 3
    for item, truth in zip(items, truths):
        assert Path(item["label"]).parent == tmp_path / "out" / "labels" / "masks"
        np.testing.assert_array_equal(read_label(item["label"]), truth)

    # class numbers in an 8-bit PNG are used where they are; a palette PNG is read by its index and rewritten
    numbers = tmp_path / "numbers"
    _pool(numbers, 2, rng, values=(0, 1, 2))
    palette = tmp_path / "palette"
    palette_truths = _pool(palette, 2, rng, mode="P")
    for folder, copies in ((numbers, 0), (palette, 2)):
        masks = sorted(str(p) for p in (folder / "masks").iterdir())
        values, _ = find_class_values(masks, 3)
        assert values == [0, 1, 2]
        items = [{"label": m} for m in masks]
        assert write_label_maps(items, values, tmp_path / folder.name, folder) == copies
    np.testing.assert_array_equal(read_label(items[0]["label"]), palette_truths[0])


def test_prepare_with_classes_writes_class_numbers_and_their_names(tmp_path):
    rng = np.random.default_rng(1)
    raw = tmp_path / "raw"
    _pool(raw, 10, rng, values=(0, 100, 200))
    out = tmp_path / "prepared"
    prepare("polyp_seg", str(raw), str(out), classes="polyp,instrument")
    meta = json.loads((out / "datalist.json").read_text())["meta"]
    assert meta["labels"] == {"0": "background", "1": "polyp", "2": "instrument"}
    assert meta["num_classes"] == 3 and meta["mask_values"] == [0, 100, 200]
    assert meta["label_maps"].startswith("10 of 10 masks rewritten")
    items = sum((load_datalist(out, k, ["image", "label"]) for k in ("training", "validation", "test")), [])
    assert len(items) == 10
    for item in items:
        assert set(np.unique(read_label(item["label"]))) <= {0, 1, 2}
        assert Path(item["label"]).resolve().is_relative_to((out / "labels").resolve())
    assert (out / "preview.png").is_file()

    # the ISIC challenge layout is binary: --classes belongs to the folders layout
    with pytest.raises(InputError, match=r"--classes 'a,b': only for the folders layout"):
        demo_data("isic_skin_lesion", str(tmp_path / "isic"), num=2)
        prepare("isic_skin_lesion", str(tmp_path / "isic"), str(tmp_path / "isic_out"), classes="a,b")
    with pytest.raises(InputError, match=r"--mask_values '0,255': only for masks of several classes"):
        prepare("polyp_seg", str(raw), str(tmp_path / "binary"), mask_values="0,255")
    with pytest.raises(DatasetLayoutError, match=r"3 distinct values \(0, 100, 200\) but --classes names 3 classes"):
        prepare("polyp_seg", str(raw), str(tmp_path / "three"), classes="a,b,c")


def test_demo_data_with_two_classes_names_them_for_prepare(tmp_path):
    raw = demo_data("isic_skin_lesion", str(tmp_path / "raw"), num=6, layout="folders", classes=2)
    assert json.loads((Path(raw) / "dataset.json").read_text())["labels"]["2"] == "dark_core"
    values = set()
    for mask in (Path(raw) / "masks").iterdir():
        values |= set(np.unique(np.asarray(Image.open(mask))).tolist())
    assert values == {0, 127, 255}
    prepare("isic_skin_lesion", raw, str(tmp_path / "out"), test_fraction=0.34)
    meta = json.loads((tmp_path / "out" / "datalist.json").read_text())["meta"]
    assert meta["labels"] == {"0": "background", "1": "lesion", "2": "dark_core"} and meta["num_classes"] == 3
    # --classes that disagree with the dataset.json beside the masks: named, not read as binary masks whose 127 is
    # background; one class over every value above 0 is asked for with --foreground nonzero
    with pytest.raises(InputError, match=rf"--classes 'lesion': 1 class, but {raw}/dataset.json names 2 \(lesion, "
                                         r"dark_core\), each a value of the masks: --foreground nonzero reads"):
        prepare("isic_skin_lesion", raw, str(tmp_path / "one"), classes="lesion")
    with pytest.raises(InputError, match=r"--classes 'a,b,c': 3 classes, but .* give --classes lesion,dark_core"):
        prepare("isic_skin_lesion", raw, str(tmp_path / "one"), classes=("a", "b", "c"))
    prepare("isic_skin_lesion", raw, str(tmp_path / "one"), classes="lesion", foreground="nonzero", test_fraction=0.34)
    whole = json.loads((tmp_path / "one" / "datalist.json").read_text())
    assert "num_classes" not in whole["meta"] or whole["meta"]["num_classes"] == 2
    with pytest.raises(ValueError, match="classes must be 1, or 2 with layout 'folders'"):
        demo_data("isic_skin_lesion", str(tmp_path / "c"), num=2, classes=2)


def test_output_channels():
    assert output_channels(2) == 1 and output_channels(3) == 3 and output_channels(9) == 9
    for bad in (1, 0, True, "3", 2.5):
        with pytest.raises(InputError, match="number of classes including background"):
            output_channels(bad)


def test_class_values_write_each_class_as_its_grey_level():
    from monai.data import MetaTensor

    from vmunet_monai.engine import ClassValuesd, mask_levels

    assert mask_levels(None, 2) == [0, 255] and mask_levels(None, 4) == [0, 1, 2, 3]
    assert mask_levels("0,127,255", 3) == [0, 127, 255] and mask_levels([0, 50, 100], 3) == [0, 50, 100]
    for bad, rule in (("0,256,1", "8-bit grey levels of the written PNGs, 0 to 255"), ("0,9", "2 values for 3 classes"),
                      ("0,9,9", "a value is repeated"), ("0,x,2", "whole numbers separated by commas")):
        with pytest.raises(InputError, match=rule):
            mask_levels(bad, 3)
    rng = np.random.default_rng(0)
    numbers = rng.integers(0, 3, (1, 9, 7)).astype(np.float32)
    pred = MetaTensor(torch.as_tensor(numbers), meta={"filename_or_obj": "x.png"})
    out = ClassValuesd("pred", num_classes=3, values=[0, 127, 255])({"pred": pred})
    np.testing.assert_array_equal(out["pred_mask"].numpy(), np.array([0, 127, 255])[numbers.astype(int)])
    assert out["pred_mask"].meta["filename_or_obj"] == "x.png"  # SaveImaged names the file by it
    np.testing.assert_array_equal(out["pred"].numpy(), numbers)  # the overlays still read class numbers
    binary = ClassValuesd("pred")({"pred": pred.clamp(max=1)})["pred_mask"]
    assert set(np.unique(binary.numpy()).tolist()) <= {0, 255}
    with pytest.raises(ValueError, match="class numbers 0..2, outside 0..1 for 2 classes"):
        ClassValuesd("pred")({"pred": pred})


def test_summary_of_several_classes_by_hand():
    truth = np.zeros((2, 4, 4), np.float32)
    truth[0, :2, :2] = 1  # class a: 4 pixels
    truth[1, 2:, 2:] = 1  # class b: 4 pixels
    pred = np.zeros_like(truth)
    pred[0, :2, :1] = 1  # 2 of a's pixels, nothing else
    records = [make_record("x", pred[0], truth[0], cls="a"), make_record("x", pred[1], truth[1], cls="b"),
               make_record("y", truth[0], truth[0], cls="a"), make_record("y", truth[1], truth[1], cls="b")]
    summary = summarize(records, "t")
    a, b = summary["classes"]["a"]["overall"], summary["classes"]["b"]["overall"]
    assert a["per_image"]["dice_mean"] == pytest.approx((2 * 2 / (2 + 4) + 1) / 2)
    assert b["per_image"]["dice_mean"] == pytest.approx(0.5)
    # per image: the mean over classes, then over images
    x = (2 * 2 / 6 + 0) / 2
    assert summary["overall"]["per_image"]["dice_mean"] == pytest.approx((x + 1) / 2)
    # pooled: the classes' confusion matrices summed
    tp, fp, fn = 2 + 0 + 4 + 4, 0, 2 + 4
    assert summary["overall"]["pooled"]["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    text = format_summary(summary)
    assert "class a" in text and "class b" in text and "all classes" in text
    assert "every class" in summary["labels"]["pooled"]
    # as an evaluator's metrics: overall and per class, under names every tracker takes
    metrics = summary_metrics(summary)
    assert metrics["pooled_dsc"] == summary["overall"]["pooled"]["dsc"]
    assert metrics["a/image_dice_mean"] == pytest.approx(a["per_image"]["dice_mean"])
    assert metrics["b/pooled_miou"] == pytest.approx(b["pooled"]["miou"])
    odd = {"title": "", "overall": summary["overall"], "groups": {"CVC (300)": a, "Kvasir+": b}}
    assert summary_metrics(odd)["CVC _300_/pooled_dsc"] == a["pooled"]["dsc"] and "Kvasir_/image_iou_mean" in \
        summary_metrics(odd)
    mixed = {"t": torch.tensor(0.5), "several": torch.tensor([1.0, 2.0]), "none": None, "nan (x)": float("nan"), "i": 3}
    assert scalar_metrics(mixed) == {"t": 0.5, "i": 3.0}
    one_group = summary_metrics({"overall": a, "groups": {"only": a}})
    assert set(one_group) == {"pooled_dsc", "pooled_miou", "image_dice_mean", "image_iou_mean"}


def test_classes_absent_from_an_image_can_be_left_out_of_its_mean(tmp_path):
    """A class absent from both ground truth and prediction scores 1; the ``*_present`` values leave it out, but a
    class predicted where there is none still counts (Dice 0)."""
    from vmunet_monai.evaluation.binary import write_report
    from vmunet_monai.evaluation.compare import read_table

    half, full, empty = np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4))
    half[:2, :1], full[:2, :2] = 1, 1
    records = [make_record("z", half, full, cls="a"), make_record("z", empty, empty, cls="b"),  # a 2/3, b absent
               make_record("w", full, empty, cls="a"), make_record("w", empty, empty, cls="b"),  # a false, b absent
               make_record("v", empty, empty, cls="a"), make_record("v", empty, empty, cls="b")]  # nothing at all
    q = summarize(records)["overall"]["per_image"]
    assert q["dice_mean"] == pytest.approx(np.mean([(2 / 3 + 1) / 2, 0.5, 1]))
    assert q["dice_mean_present"] == pytest.approx(np.mean([2 / 3, 0, 1]))
    assert q["iou_mean_present"] == pytest.approx(np.mean([1 / 2, 0, 1]))
    assert q["dice_sd_present"] == pytest.approx(np.std([2 / 3, 0, 1], ddof=1))
    text = format_summary(summarize(records))
    assert f"  classes present only{'':<6}|" in text and f"{q['dice_mean_present']:7.4f}±" in text
    # compare reads the same values from the written table
    write_report(records, tmp_path, prefix="metrics_test", plot=False)
    table = read_table(tmp_path)
    assert [table.values[f"all/{n}"]["dice_present"] for n in "zwv"] == pytest.approx([2 / 3, 0, 1])
    assert table.values["all/z"]["dice"] == pytest.approx((2 / 3 + 1) / 2)


def test_report_and_overlay_handlers_take_one_hot_and_class_maps(tmp_path):
    report = BinarySegmentationReport(str(tmp_path), num_classes=3, class_names={1: "a", 2: "b"},
                                      print_summary=False)
    label = torch.zeros(3, 4, 4)
    label[0] = 1
    label[0, :2, :2], label[1, :2, :2] = 0, 1

    class Engine:
        state = type("S", (), {})()

    engine = Engine()
    engine.state.batch = [{"name": "one"}]
    engine.state.output = [{"pred": label.clone(), "label": label}]
    engine.state.metrics = {}
    report._collect(engine)
    assert [r["class"] for r in report.records] == ["a", "b"]
    assert report.records[0]["dice"] == 1.0 and report.records[1]["dice"] == 1.0  # b: absent from both
    report._write(engine)
    with open(tmp_path / "metrics_per_image.csv") as f:
        assert [r["class"] for r in csv.DictReader(f)] == ["a", "b"]
    engine.state.output = [{"pred": label[:1], "label": label}]
    with pytest.raises(ValueError, match=r"one: the prediction has 1 channels, but 3 classes need one-hot"):
        report._collect(engine)

    image = tmp_path / "photo.png"
    Image.fromarray(np.full((6, 8, 3), 100, np.uint8)).save(image)
    classes = np.zeros((6, 8), np.uint8)
    classes[:3, :4], classes[3:, 4:] = 1, 2
    writer = OverlayWriter(str(tmp_path / "overlays"), num_classes=3, alpha=1.0, pil_reverse_indexing=False)
    engine.state.batch = [{"image": torch.zeros(1), "image_meta_dict": {"filename_or_obj": str(image)}}]
    engine.state.output = [{"pred": torch.as_tensor(classes)}]
    writer._write(engine)
    drawn = np.asarray(Image.open(writer.written[0]))
    colours = class_colors(3)
    assert tuple(drawn[0, 0]) == colours[1] and tuple(drawn[5, 7]) == colours[2] and tuple(drawn[5, 0]) == (100,) * 3


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["isic_skin_lesion", "polyp_seg"])
def test_bundle_trains_evaluates_and_segments_several_classes(bundle, tmp_path):
    rng = np.random.default_rng(2)
    raw = tmp_path / "raw"
    truths = _pool(raw, 10, rng, values=(0, 128, 255), size=(40, 48))
    prepared = tmp_path / "prepared"
    prepare(bundle, str(raw), str(prepared), classes="red,blue", test_fraction=0.3)
    root = copy_bundle(bundle, tmp_path)
    over = dict(tiny_overrides(bundle, epochs=1), num_classes=3)

    # the datalist's three classes against the default two: refused before training, with the fix
    wf = workflow(bundle, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                  **tiny_overrides(bundle, epochs=1))
    with pytest.raises(RuntimeError) as caught:
        wf.initialize()
    assert isinstance(caught.value.__cause__, InputError)
    assert "names 3 classes (background, red, blue) but num_classes is 2" in str(caught.value.__cause__)
    assert "add --num_classes 3" in str(caught.value.__cause__)

    for configs, kind in ((["train.json"], "train"), (["train.json", "evaluate.json"], "eval"),
                          (["train.json", "evaluate.json", "evaluate_native.json"], "eval")):
        wf = workflow(bundle, configs, kind, bundle_root=str(root), dataset_dir=str(prepared), **over)
        wf.initialize()
        wf.run()
        wf.finalize()
    net = workflow(bundle, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    net.initialize()
    with torch.no_grad():
        out = net.parser.get_parsed_content("network_def").eval()(torch.zeros(1, 3, 32, 32))
    assert (out[0] if isinstance(out, (list, tuple)) else out).shape[1] == 3  # one softmax channel per class
    test_items = load_datalist(prepared, "test")
    for folder in (root / "eval", root / "eval" / "native"):
        summary = json.loads((folder / "metrics_test_summary.json").read_text())
        assert list(summary["classes"]) == ["red", "blue"]
        assert summary["overall"]["n_images"] == len(test_items)
        with open(folder / "metrics_test_per_image.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 * len(test_items)
        means = [np.mean([float(r["dice"]) for r in rows if r["name"] == it["name"]]) for it in test_items]
        assert summary["overall"]["per_image"]["dice_mean"] == pytest.approx(np.mean(means))
    # the native evaluation's calibration, by the top label for several classes, over every pixel
    calibration = json.loads((root / "eval" / "native" / "metrics_test_calibration.json").read_text())
    assert calibration["kind"] == "top_label"
    assert calibration["pixels"] == sum(int(np.prod(Image.open(it["label"]).size)) for it in test_items)

    infer = {k: v for k, v in over.items() if k.startswith("network_def") or k in ("image_size", "device")}
    wf = workflow(bundle, ["inference.json"], "infer", bundle_root=str(root), dataset_dir=str(prepared),
                  num_workers=0, num_classes=3, probabilities=True, **infer)
    wf.initialize()
    wf.run()
    wf.finalize()
    for item in test_items:
        mask = np.asarray(Image.open(root / "eval" / "masks" / f"{item['name']}_mask.png"))
        assert mask.shape == truths[int(item["name"][3:])].shape
        assert set(np.unique(mask)) <= {0, 1, 2}
        assert (root / "eval" / "overlays" / f"{item['name']}_overlay.png").is_file()
        # with probabilities: one grey map per class after the background, whose largest is the mask's class
        maps = [np.asarray(Image.open(root / "eval" / "probabilities" / f"{item['name']}_prob_{c}.png"), float)
                for c in (1, 2)]
        assert not (root / "eval" / "probabilities" / f"{item['name']}_prob.png").exists()
        scores = np.stack([255.0 - maps[0] - maps[1], *maps])
        ordered = np.sort(scores, axis=0)
        clear = ordered[-1] - ordered[-2] > 3  # not a tie within the rounding of the grey levels
        assert maps[0].shape == mask.shape and clear.mean() > 0.5
        assert np.array_equal(scores.argmax(0)[clear], mask[clear])
    # predict reads the class count from the network.json beside the weights: no --num_classes to repeat
    from vmunet_monai.predict import predict

    done = predict(str(root), str(raw / "images"), str(tmp_path / "predicted"), device="cpu")
    record = json.loads((tmp_path / "predicted" / "prediction.json").read_text())
    # and the classes' names from it too, as the training's datalist named them (the bundle's metadata names two)
    assert (record["num_classes"], record["class_names"]) == (3, ["background", "red", "blue"])
    assert len(done["masks"]) == 10


def _classes_eval(folder, noise, seed, n=8):
    """An evaluation of two classes as evaluate.json writes it: one record per image and class."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(5)
    records = []
    for i in range(n):
        for cls, extra in (("a", 0.0), ("b", 0.1)):
            gt = (truth.random((12, 12)) > 0.5).astype(np.float32)
            pred = np.where(rng.random(gt.shape) < noise + extra, 1 - gt, gt)
            records.append(make_record(f"img{i}", pred, gt, group="set", cls=cls))
    from vmunet_monai.evaluation.binary import write_report

    write_report(records, folder, prefix="metrics_test", plot=False)
    return folder


def test_compare_reads_tables_of_several_classes_per_image_and_per_class(tmp_path):
    from vmunet_monai.evaluation.compare import read_table, run_compare

    good, bad = _classes_eval(tmp_path / "good", 0.02, 1), _classes_eval(tmp_path / "bad", 0.2, 2)
    table = read_table(good)
    with open(good / "metrics_test_per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(table.values) == 8 and len(rows) == 16
    first = [r for r in rows if r["name"] == "img0"]
    assert table.values["set/img0"]["dice"] == pytest.approx(np.mean([float(r["dice"]) for r in first]))
    assert table.values["set/img0"]["dice_b"] == pytest.approx(float(first[1]["dice"]))
    assert table.values["set/img0"]["tp"] == sum(int(r["tp"]) for r in first)
    # the table's per-image mean is the summary's
    summary = json.loads((good / "metrics_test_summary.json").read_text())
    assert summary["overall"]["per_image"]["dice_mean"] == pytest.approx(
        np.mean([v["dice"] for v in table.values.values()]))
    for metric in ("dice", "dice_b"):
        pair = run_compare([str(good), str(bad)], metric=metric)["overall"]["against_first"][0]
        assert pair["n_paired"] == 8 and pair["worse"] == 8


def test_demo_with_two_classes_leaves_a_complete_bundle_of_them(tmp_path, capsys, monkeypatch):
    """``demo --classes 2`` on the smallest settings: per-class results printed, and the trained copy predicts,
    by its own configs, class numbers with no --num_classes."""
    import vmunet_monai.demo as demo
    from vmunet_monai.predict import predict

    monkeypatch.setattr(demo, "DEMO_NETWORK", {k.split("#")[1]: v for k, v in tiny_overrides("isic_skin_lesion").items()
                                               if k.startswith("network_def")})
    result = demo.run_demo(out=str(tmp_path / "demo"), epochs=1, num=10, size=32, classes=2)
    printed = capsys.readouterr().out
    classes = result["test_summary"]["classes"]
    assert list(classes) == ["lesion", "dark_core"]
    for name, entry in classes.items():
        assert f"class {name}: per-image Dice {entry['overall']['per_image']['dice_mean']:.4f}" in printed
    root = Path(result["bundle_root"])
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 3
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["2"] == "dark_core"
    # the copy writes the dataset's own grey levels (meta.mask_values of the datalist); --mask_values 0,1,2 gives
    # the class numbers of the same prediction
    levels = json.loads((tmp_path / "demo" / "prepared" / "datalist.json").read_text())["meta"]["mask_values"]
    assert levels == [0, 127, 255]
    inference = json.loads((root / "configs" / "inference.json").read_text())
    assert inference["mask_values"] == levels
    images = str(tmp_path / "demo" / "raw" / "images")
    done = predict(str(root), images, str(tmp_path / "masks"), device="cpu")
    numbers = predict(str(root), images, str(tmp_path / "numbers"), device="cpu", mask_values="0,1,2",
                      probabilities=True)
    assert len(numbers["probabilities"]) == 2 * len(numbers["masks"])  # <stem>_prob_1.png and _prob_2.png each
    assert all(Path(p).is_file() and Path(p).stem.rsplit("_", 1)[-1] in ("1", "2") for p in numbers["probabilities"])
    values = set()
    for grey, number in zip(done["masks"], numbers["masks"]):
        grey, number = np.asarray(Image.open(grey)), np.asarray(Image.open(number))
        values |= set(np.unique(number).tolist())
        np.testing.assert_array_equal(grey, np.asarray(levels, np.uint8)[number])
    assert values <= {0, 1, 2} and len(done["masks"]) == 10
    with pytest.raises(InputError, match=r"--mask_values '0,255': 2 values for 3 classes"):
        predict(str(root), images, str(tmp_path / "bad"), device="cpu", mask_values="0,255")
    # the copy forced back to two classes: its one-channel head does not take the three-class weights, and says so
    from vmunet_monai.weights import CheckpointError

    with pytest.raises(CheckpointError, match="its output layer has 3 classes against 2 here: it was trained with "
                                              "--num_classes 3, so give the same --num_classes, or write a bundle set "
                                              "up for them with python -m vmunet_monai copy_bundle BUNDLE OUT"):
        predict(str(root), str(tmp_path / "demo" / "raw" / "images"), str(tmp_path / "two"), device="cpu",
                num_classes=2)
    with pytest.raises(InputError, match="demo --classes 3"):
        demo.run_demo(out=str(tmp_path / "x"), classes=3)


def test_colour_masks_are_read_by_grey_level_unless_two_colours_would_merge(tmp_path):
    mask = np.zeros((6, 6, 3), np.uint8)
    mask[:3, :3] = (255, 0, 0)
    mask[3:, 3:] = (0, 0, 255)
    Image.fromarray(mask).save(tmp_path / "colours.png")
    grey = read_label(tmp_path / "colours.png")
    assert grey[0, 0] != grey[5, 5] and grey[0, 5] == 0
    # two colours of one grey level
    first = (200, 10, 10)
    target = int(Image.fromarray(np.array([[first]], np.uint8)).convert("L").getpixel((0, 0)))
    second = next((r, g, b) for r in range(256) for g in range(0, 256, 3) for b in (0,)
                  if (r, g, b) != first and int(Image.fromarray(np.array([[(r, g, b)]], np.uint8))
                                                 .convert("L").getpixel((0, 0))) == target)
    mask[:3, :3], mask[3:, 3:] = first, second
    Image.fromarray(mask).save(tmp_path / "same.png")
    with pytest.raises(InputError, match=r"same\.png: the colours .* have the same grey level"):
        read_label(tmp_path / "same.png")


def test_score_reads_2d_masks_on_disk_binary_and_of_several_classes(tmp_path, capsys):
    """``score`` on 2D masks: another tool's binary masks (``<image>.png``) and predict-style class maps
    (``<image>_mask.png`` in the dataset's grey levels) scored against a prepared dataset's test split, checked
    against the labels by hand; a missing prediction is named, wrong sizes and foreign values are refused."""
    from vmunet_monai.cli import main
    from vmunet_monai.evaluation.compare import read_table
    from vmunet_monai.evaluation.score import score

    rng = np.random.default_rng(4)
    truths = _pool(tmp_path / "raw", 10, rng, values=(0, 100, 200))
    prepare("polyp_seg", str(tmp_path / "raw"), str(tmp_path / "classes"), classes="polyp,instrument")
    tests = json.loads((tmp_path / "classes" / "datalist.json").read_text())["test"]
    assert len(tests) >= 2
    # several classes, written as the dataset's own values; the first test image's class 2 predicted as class 1
    masks = tmp_path / "pred" / "masks"
    masks.mkdir(parents=True)
    expected = {}
    for k, item in enumerate(tests):
        truth = truths[int(item["name"][3:])]
        guess = np.where(truth == 2, 1, truth) if k == 0 else truth
        Image.fromarray(np.asarray([0, 100, 200], np.uint8)[guess]).save(masks / f"{item['name']}_mask.png")
        expected[item["name"]] = [make_record(item["name"], guess == c, truth == c, cls=c)["dice"] for c in (1, 2)]
    summary = score(tmp_path / "pred" / "masks", tmp_path / "classes", out=tmp_path / "s", mask_values="0,100,200")
    table = read_table(tmp_path / "s")
    for name, dice in expected.items():
        row = table.values[f"raw/{name}"]
        assert [row["dice_polyp"], row["dice_instrument"]] == pytest.approx(dice)
    assert expected[tests[0]["name"]][1] == 0.0 and summary["missing_prediction"] == []
    assert set(summary["classes"]) == {"polyp", "instrument"}
    assert summary["paths"]["worst"] == str(tmp_path / "s" / "metrics_test_worst.png")  # the one imperfect image
    with pytest.raises(InputError, match=r"_mask.png: holds the value 100, which is no class's \(the masks are read "
                                         r"with each class stored as one value, the class numbers, as predict writes "
                                         r"them without --mask_values: background as 0, polyp as 1, instrument as 2; "
                                         r"give --mask_values .* meta.mask_values from datalist.json\)"):
        score(tmp_path / "pred" / "masks", tmp_path / "classes", out=tmp_path / "s2")
    # predict's record says a binary model wrote them: named as such (it said "mask_values [0, 255]: 2 values for 3
    # classes", of an option never given)
    (tmp_path / "pred" / "prediction.json").write_text(json.dumps(
        {"num_classes": 2, "class_names": ["background", "lesion"], "mask_values": [0, 255]}))
    with pytest.raises(InputError, match=r"masks: written by a model of 2 classes \(background, lesion\), as .*"
                                         r"prediction.json records, and .*datalist.json has 3 classes \(background, "
                                         r"polyp, instrument\): predictions are scored against a dataset of the "
                                         r"classes their model was trained on"):
        score(tmp_path / "pred" / "masks", tmp_path / "classes", out=tmp_path / "s3", mask_values="0,100,200")
    (tmp_path / "pred" / "prediction.json").unlink()
    # binary: foreground at half scale, named as another tool names its masks; one image left without a prediction
    demo_data("isic_skin_lesion", str(tmp_path / "isic"), num=8)
    prepare("isic_skin_lesion", str(tmp_path / "isic"), str(tmp_path / "binary"))
    items = json.loads((tmp_path / "binary" / "datalist.json").read_text())["test"]
    (tmp_path / "other").mkdir()
    for item in items[1:]:
        label = np.asarray(Image.open((tmp_path / "binary" / item["label"]).resolve()))
        Image.fromarray((label > 127).astype(np.uint8)).save(tmp_path / "other" / f"{item['name']}.png")  # 0/1
    capsys.readouterr()
    main(["score", str(tmp_path / "other"), str(tmp_path / "binary"), "--out", str(tmp_path / "b")])
    printed = capsys.readouterr().out
    stored = json.loads((tmp_path / "b" / "metrics_test_summary.json").read_text())
    assert stored["overall"]["per_image"]["dice_mean"] == 1.0 and stored["missing_prediction"] == [items[0]["name"]]
    assert (f"left out: 1 test image(s) without a prediction (first: {items[0]['name']} of "
            f"{items[0]['dataset']})") in printed  # with its set: sets may share image names
    assert not (tmp_path / "b" / "metrics_test_worst.png").exists()  # every image perfect: nothing to draw
    # without --out: beside PRED under its own name, so a second folder of predictions beside it keeps its own
    shutil.copytree(tmp_path / "other", tmp_path / "second")
    for name in ("other", "second"):
        main(["score", str(tmp_path / name), str(tmp_path / "binary")])
        assert "replaced" not in capsys.readouterr().out
        assert (tmp_path / f"{name}_score" / "metrics_test_summary.json").is_file()
    assert not (tmp_path / "score").exists()
    # binary masks written with other grey levels (predict --mask_values 0,127 or 255,0) are read by those levels
    for values in ((0, 127), (255, 0)):
        folder = tmp_path / f"levels_{values[1]}"
        folder.mkdir()
        for item in items:
            label = np.asarray(Image.open((tmp_path / "binary" / item["label"]).resolve())) > 127
            Image.fromarray(np.where(label, values[1], values[0]).astype(np.uint8)).save(folder / f"{item['name']}.png")
        summary = score(folder, tmp_path / "binary", out=tmp_path / f"l{values[1]}",
                        mask_values=",".join(map(str, values)))
        assert summary["overall"]["per_image"]["dice_mean"] == 1.0, values
    # one prediction of another size: left out and named, as a missing one is; the rest scored
    first = np.asarray(Image.open((tmp_path / "binary" / items[0]["label"]).resolve()))
    Image.fromarray((first > 127).astype(np.uint8)).save(tmp_path / "other" / f"{items[0]['name']}.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "other" / f"{items[1]['name']}.png")
    capsys.readouterr()
    summary = score(tmp_path / "other", tmp_path / "binary", out=tmp_path / "b2")
    assert summary["overall"]["n_images"] == len(items) - 1 and len(summary["wrong_size_prediction"]) == 1
    assert "left out: 1 prediction(s) of another size than their label (first: " in capsys.readouterr().out
    # a JPEG copy of a 0/255 mask holds grey levels from its compression: still a mask, not a probability map
    label = np.asarray(Image.open((tmp_path / "binary" / items[1]["label"]).resolve()))
    (tmp_path / "other" / f"{items[1]['name']}.png").unlink()
    Image.fromarray(((label > 127) * 255).astype(np.uint8)).save(tmp_path / "other" / f"{items[1]['name']}.jpg",
                                                                  quality=60)
    summary = score(tmp_path / "other", tmp_path / "binary", out=tmp_path / "b4")
    printed = capsys.readouterr().out
    assert "pranet" not in summary and "note: 1 JPEG prediction(s) hold grey levels, read as masks" in printed
    assert summary["overall"]["n_images"] == len(items) and summary["overall"]["per_image"]["dice_mean"] > 0.98
    for item in items:  # every prediction of another size: refused
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "other" / f"{item['name']}.png")
    (tmp_path / "other" / f"{items[1]['name']}.jpg").unlink()
    with pytest.raises(InputError, match=r"5x5 against its label .* \(masks are scored at the image's own size.*; "
                                         r"so are the other"):
        score(tmp_path / "other", tmp_path / "binary", out=tmp_path / "b2")
    with pytest.raises(InputError, match="--transunet: only for volumes"):
        score(tmp_path / "other", tmp_path / "binary", out=tmp_path / "b3", transunet=False)


def test_score_calibrates_the_class_probability_maps_by_the_top_label(tmp_path, capsys):
    """``score`` on predict's output of several classes with ``--probabilities``: the ``<stem>_prob_<k>.png`` maps,
    below the folder scored or in ``probabilities/`` beside its ``masks/``, give the top-label calibration, counted
    here by hand; images without maps are left out of it and counted, maps of another size are refused."""
    from vmunet_monai.evaluation.score import score

    rng = np.random.default_rng(6)
    truths = _pool(tmp_path / "raw", 10, rng, values=(0, 100, 200))
    prepare("polyp_seg", str(tmp_path / "raw"), str(tmp_path / "classes"), classes="polyp,instrument",
            test_fraction=0.3)
    tests = json.loads((tmp_path / "classes" / "datalist.json").read_text())["test"]
    assert len(tests) == 3
    out = tmp_path / "pred"
    (out / "masks" / "raw").mkdir(parents=True)
    (out / "probabilities" / "raw").mkdir(parents=True)
    (out / "prediction.json").write_text(json.dumps({"mask_values": [0, 1, 2]}))
    expected_right, expected_sure = [], []
    for k, item in enumerate(tests):
        truth = truths[int(item["name"][3:])]
        guess = np.where(truth == 2, 1, truth) if k == 0 else truth  # the first image's class 2 taken for class 1
        Image.fromarray(guess.astype(np.uint8)).save(out / "masks" / "raw" / f"{item['name']}_mask.png")
        # the guessed class at grey level 179 (0.70), the two others at 38 (0.15) each
        for c in (1, 2):
            level = np.where(guess == c, 179, 38).astype(np.uint8)
            Image.fromarray(level).save(out / "probabilities" / "raw" / f"{item['name']}_prob_{c}.png")
        top = np.where(guess == 0, 1.0 - 2 * 38 / 255, 179 / 255)
        expected_sure.append(top.ravel())
        expected_right.append((guess == truth).ravel())
    sure, right = np.concatenate(expected_sure), np.concatenate(expected_right)
    for pred in (out, out / "masks"):  # predict's folder, or its masks with the maps beside them
        summary = score(pred, tmp_path / "classes", out=tmp_path / "s")
        calibration = summary["calibration"]
        assert calibration["kind"] == "top_label" and calibration["images"] == len(tests)
        assert calibration["pixels"] == sure.size
        assert calibration["brier"] == pytest.approx(float(np.mean((sure - right) ** 2)))
        assert calibration["ece"] == pytest.approx(abs(float(right.mean()) - float(sure.mean())))
        assert right.mean() < 1.0  # the first image's mistake counts
        stored = json.loads((tmp_path / "s" / "metrics_test_calibration.json").read_text())
        assert stored["ece"] == pytest.approx(calibration["ece"])
        assert (tmp_path / "s" / "metrics_test_calibration.png").is_file()
    assert f"{len(tests)} of {len(tests)} image(s) with <stem>_prob_<k>.png" in capsys.readouterr().out
    # one image's map of one class missing: that image is left out of the calibration, and counted
    (out / "probabilities" / "raw" / f"{tests[0]['name']}_prob_2.png").unlink()
    summary = score(out, tmp_path / "classes", out=tmp_path / "s")
    assert summary["calibration"]["images"] == len(tests) - 1
    assert summary["calibration"]["pixels"] == sure.size - truths[int(tests[0]["name"][3:])].size
    # the masks alone: scored, no calibration
    import shutil

    shutil.copytree(out / "masks", tmp_path / "only")
    alone = score(tmp_path / "only", tmp_path / "classes", out=tmp_path / "m", mask_values="0,1,2")
    assert "calibration" not in alone and alone["overall"]["n_images"] == len(tests)
    for c in (1, 2):
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(out / "probabilities" / "raw" / f"{tests[1]['name']}_prob_{c}.png")
    with pytest.raises(InputError, match=rf"{tests[1]['name']}_prob_1.png: a probability map of 5x5 pixels against "
                                         r"its label .* \(predict writes them at the image's own size"):
        score(out, tmp_path / "classes", out=tmp_path / "s")


def test_score_pairs_shared_image_names_by_their_folders():
    """Polyp test sets reuse names (1.png in several): predict mirrors the input folders, and the prediction whose
    folders agree longest with the image's is its own; a tie pairs nothing rather than a wrong mask."""
    from vmunet_monai.evaluation.score import _tail_match

    masks = [Path("out/masks/CVC-300/images/1_mask.png"), Path("out/masks/ETIS/images/1_mask.png")]
    assert _tail_match(masks, Path("/data/TestDataset/ETIS/images/1.png")) == masks[1]
    assert _tail_match(masks, Path("/data/TestDataset/CVC-300/images/1.png")) == masks[0]
    assert _tail_match(masks, Path("/data/other/images/1.png")) is None
    assert _tail_match(masks[:1], Path("/data/anything/1.png")) == masks[0]


def test_score_finds_each_set_s_prediction_by_its_folder_and_refuses_a_file_two_sets_share(tmp_path):
    """Polyp test sets share image names (1.png in each). PraNet's results layout (<set>/1.png) is scored set by
    set; one flat folder, where 1.png answers to both sets, is refused rather than scored twice; predict's output
    of one set is scored against that set only (its prediction.json names the input)."""
    from vmunet_monai.evaluation.score import score

    rng = np.random.default_rng(9)
    items, truths = [], {}
    for group in ("A", "B"):
        for folder in ("images", "masks"):
            (tmp_path / "raw" / group / folder).mkdir(parents=True)
        truth = np.zeros((20, 24), np.uint8)
        top = 2 if group == "A" else 11  # the sets' labels differ: a crossed pair would score low
        truth[top:top + 7, 3:15] = 255
        truths[group] = truth
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "raw" / group / "images"
                                                                                / "1.png")
        Image.fromarray(truth).save(tmp_path / "raw" / group / "masks" / "1.png")
        items.append({"image": f"../raw/{group}/images/1.png", "label": f"../raw/{group}/masks/1.png", "name": "1",
                      "dataset": group})
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "datalist.json").write_text(json.dumps({"training": [], "test": items}))
    for group, truth in truths.items():  # the PraNet lineage's results: <set>/<image>.png
        (tmp_path / "pranet" / group).mkdir(parents=True)
        Image.fromarray(truth).save(tmp_path / "pranet" / group / "1.png")
    summary = score(tmp_path / "pranet", tmp_path / "prepared", out=tmp_path / "s1")
    assert summary["overall"]["n_images"] == 2 and summary["overall"]["per_image"]["dice_mean"] == 1.0
    for group in truths:  # the ISIC challenge's naming, <image>_segmentation.png, answers too
        (tmp_path / "pranet" / group / "1.png").rename(tmp_path / "pranet" / group / "1_segmentation.png")
    summary = score(tmp_path / "pranet", tmp_path / "prepared", out=tmp_path / "s4")
    assert summary["overall"]["n_images"] == 2 and summary["overall"]["per_image"]["dice_mean"] == 1.0
    (tmp_path / "flat").mkdir()
    Image.fromarray(truths["A"]).save(tmp_path / "flat" / "1_mask.png")
    with pytest.raises(InputError, match=r"flat/1_mask.png: answers to two images, .*A/images/1.png and "
                                         r".*B/images/1.png \(their sets share image names\)"):
        score(tmp_path / "flat", tmp_path / "prepared", out=tmp_path / "s2")
    # predict's output of set A alone: masks/images/1_mask.png, its record naming raw/A as the input
    (tmp_path / "onlyA" / "masks" / "images").mkdir(parents=True)
    Image.fromarray(truths["A"]).save(tmp_path / "onlyA" / "masks" / "images" / "1_mask.png")
    (tmp_path / "onlyA" / "prediction.json").write_text(json.dumps({"inputs": [str(tmp_path / "raw" / "A")]}))
    summary = score(tmp_path / "onlyA" / "masks", tmp_path / "prepared", out=tmp_path / "s3")
    assert summary["overall"]["n_images"] == 1 and summary["overall"]["per_image"]["dice_mean"] == 1.0
    assert summary["missing_prediction"] == ["1"] and set(summary["groups"]) == {"A"}


def test_probability_maps_of_any_depth_score_alike(tmp_path, capsys):
    """The same probability maps stored as 8-bit PNG, 16-bit PNG and float TIFF give the same Dice and the same
    calibration (a 16-bit map was thresholded at 127.5 of 65535, a float map's probabilities divided by 255)."""
    from vmunet_monai.evaluation.score import score

    rng = np.random.default_rng(11)
    items = []
    (tmp_path / "raw").mkdir()
    probabilities = {}
    for k in range(3):
        truth = np.zeros((24, 30), bool)
        truth[4 + k:16 + k, 5:20] = True
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(tmp_path / "raw" / f"i{k}.png")
        Image.fromarray((truth * 255).astype(np.uint8)).save(tmp_path / "raw" / f"i{k}_mask.png")
        items.append({"image": f"../raw/i{k}.png", "label": f"../raw/i{k}_mask.png", "name": f"i{k}"})
        probabilities[k] = np.clip(np.where(truth, 0.8, 0.15) + rng.normal(0, 0.15, truth.shape), 0, 1)
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "datalist.json").write_text(json.dumps({"training": [], "test": items}))
    results = {}
    for kind in ("png8", "png16", "tif_float"):
        folder = tmp_path / kind
        folder.mkdir()
        for k, p in probabilities.items():
            if kind == "png8":
                Image.fromarray(np.round(p * 255).astype(np.uint8)).save(folder / f"i{k}.png")
            elif kind == "png16":
                Image.fromarray(np.round(p * 65535).astype(np.uint16)).save(folder / f"i{k}.png")
            else:
                Image.fromarray(p.astype(np.float32)).save(folder / f"i{k}.tif")
        results[kind] = score(folder, tmp_path / "prepared", out=tmp_path / f"s_{kind}")
    for kind in ("png16", "tif_float"):
        assert results[kind]["overall"]["per_image"]["dice_mean"] == pytest.approx(
            results["png8"]["overall"]["per_image"]["dice_mean"], abs=0.01), kind
        assert results[kind]["calibration"]["ece"] == pytest.approx(results["png8"]["calibration"]["ece"], abs=0.01)
    assert results["png8"]["overall"]["per_image"]["dice_mean"] > 0.8
    assert "smoothed edges" not in capsys.readouterr().out  # real maps: grey nearly everywhere
    # hard masks drawn with smoothed edges hold grey levels on their rims only: scored as maps, with a note
    from PIL import ImageFilter

    for folder in ("big", "smooth"):
        (tmp_path / folder).mkdir()
    big_items = []
    for k in range(2):
        truth = np.zeros((240, 300), np.uint8)
        truth[60 + k:120 + k, 100:180] = 255
        Image.fromarray(rng.integers(0, 255, (240, 300, 3), dtype=np.uint8)).save(tmp_path / "big" / f"b{k}.png")
        Image.fromarray(truth).save(tmp_path / "big" / f"b{k}_mask.png")
        Image.fromarray(truth).filter(ImageFilter.GaussianBlur(0.6)).save(tmp_path / "smooth" / f"b{k}.png")
        big_items.append({"image": f"../big/b{k}.png", "label": f"../big/b{k}_mask.png", "name": f"b{k}"})
    (tmp_path / "big_prepared").mkdir()
    (tmp_path / "big_prepared" / "datalist.json").write_text(json.dumps({"training": [], "test": big_items}))
    score(tmp_path / "smooth", tmp_path / "big_prepared", out=tmp_path / "s_smooth")
    assert "masks with smoothed edges rather than probability maps?" in capsys.readouterr().out
    # a class map (0, 1, 2) against a binary dataset: read as a grey-level map it predicts nothing, which is said
    (tmp_path / "classes").mkdir()
    for k in range(2):
        numbers = (np.asarray(Image.open(tmp_path / "big" / f"b{k}_mask.png")) > 0).astype(np.uint8)
        numbers[:5, :5] = 2
        Image.fromarray(numbers).save(tmp_path / "classes" / f"b{k}.png")
    summary = score(tmp_path / "classes", tmp_path / "big_prepared", out=tmp_path / "s_classes")
    assert summary["overall"]["per_image"]["dice_mean"] == 0.0
    out = capsys.readouterr().out
    assert (f"note: 2 prediction(s) hold whole numbers above 1 and none from half the scale up (first: "
            f"{tmp_path / 'classes' / 'b0.png'}, values 0, 1, 2): read as grey-level maps") in out
    score(tmp_path / "smooth", tmp_path / "big_prepared", out=tmp_path / "s_smooth")
    assert "whole numbers above 1" not in capsys.readouterr().out  # maps reaching the half scale: no such note


def test_score_names_two_predictions_of_one_image_and_replaces_an_earlier_scores_files(tmp_path, capsys):
    """X_mask.png beside X_segmentation.png: one image, two predictions, named as such (it was said to have none,
    and both files to answer to no image); an earlier score's files in OUT (its calibration, which a score of masks
    alone does not write) are replaced, not left to be read as this score's."""
    from vmunet_monai.evaluation.score import score

    demo_data("isic_skin_lesion", str(tmp_path / "isic"), num=8)
    prepare("isic_skin_lesion", str(tmp_path / "isic"), str(tmp_path / "binary"))
    items = json.loads((tmp_path / "binary" / "datalist.json").read_text())["test"]
    pred = tmp_path / "pred"
    pred.mkdir()
    for item in items:
        label = np.asarray(Image.open((tmp_path / "binary" / item["label"]).resolve()))
        Image.fromarray(((label > 127) * 255).astype(np.uint8)).save(pred / f"{item['name']}_mask.png")
    twin = pred / f"{items[0]['name']}_segmentation.png"
    twin.write_bytes((pred / f"{items[0]['name']}_mask.png").read_bytes())
    with pytest.raises(InputError, match=rf"_mask.png and .*{twin.name}: two predictions of the image .*"
                                         rf"{items[0]['name']}.* \(give one mask per image\)"):
        score(pred, tmp_path / "binary", out=tmp_path / "s")
    twin.unlink()
    (tmp_path / "s").mkdir()
    stale = tmp_path / "s" / "metrics_test_calibration.json"
    stale.write_text("{}")
    (tmp_path / "s" / "notes.txt").write_text("mine")
    (pred / "prediction.json").write_text(json.dumps({"finished": False, "written": 0}))  # predict was stopped
    capsys.readouterr()
    summary = score(pred, tmp_path / "binary", out=tmp_path / "s")
    printed = capsys.readouterr().out
    assert (f"warning: {pred / 'prediction.json'} says the predict run that wrote these predictions stopped before "
            "it finished: what it had not reached is left out of this score; finish it with the same predict command "
            "plus --resume") in printed
    assert summary["overall"]["per_image"]["dice_mean"] == 1.0
    assert not stale.exists() and (tmp_path / "s" / "notes.txt").read_text() == "mine"
    assert f"note: {tmp_path / 's'} held an earlier score of the test split (1 files): replaced" in printed
    assert f"{len(items)} images scored against" in printed
