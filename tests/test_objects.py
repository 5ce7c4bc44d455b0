"""Object-level scores (GlaS): F1, object Dice and object Hausdorff checked by hand, how masks become objects,
and the ``objects`` command from predict's masks to the table compare reads."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmunet_monai.evaluation.objects import (
    OUTCOME_COLORS,
    label_components,
    match_files,
    object_scores,
    picture,
    read_objects,
    run_objects,
    split_touching,
    with_legend,
    write_objects,
)
from vmunet_monai.validation import InputError


def _two_glands():
    """Ground truth: a 6x6 and an 8x8 object; prediction: half of the first, a 6x6 inside the second, and a 2x5
    object touching neither."""
    truth = np.zeros((20, 20), int)
    truth[2:8, 2:8], truth[10:18, 10:18] = 1, 2
    pred = np.zeros((20, 20), int)
    pred[2:8, 2:5], pred[12:18, 12:18], pred[0:2, 15:20] = 1, 5, 7  # numbers need not be 1..n
    return truth, pred


def test_object_scores_by_hand():
    truth, pred = _two_glands()
    s = object_scores(truth, pred)
    # both real objects cover half or more of their gland (18/36 and 36/64); the stray one is a false positive
    assert (s["n_truth"], s["n_pred"], s["tp"], s["fp"], s["fn"]) == (2, 3, 2, 1, 0)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
    d1, d2 = 2 * 18 / (36 + 18), 2 * 36 / (64 + 36)
    truth_side = (36 * d1 + 64 * d2) / 100
    pred_side = (18 * d1 + 36 * d2 + 10 * 0) / 64
    assert s["object_dice"] == pytest.approx((truth_side + pred_side) / 2)
    assert s["dice"] == pytest.approx(2 * (18 + 36) / (100 + 64))
    # Hausdorff: 3 px (the first gland's far column), sqrt(8) (the second's corner); the stray object is paired with
    # the nearest gland, the first: its farthest point (7, 2) lies sqrt(6^2 + 13^2) from the stray's (1, 15)
    h1, h2, h3 = 3.0, math.sqrt(8), math.sqrt(36 + 169)
    expected = ((36 * h1 + 64 * h2) / 100 + (18 * h1 + 36 * h2 + 10 * h3) / 64) / 2
    assert s["object_hausdorff"] == pytest.approx(expected, rel=1e-6)


def _hausdorff_by_brute_force(truth, pred):
    """Object Hausdorff with every pair's distance from full-size point sets, as the definition reads."""
    def h(a, b):
        pa, pb = np.argwhere(a).astype(float), np.argwhere(b).astype(float)
        d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
        return max(d.min(axis=1).max(), d.min(axis=0).max())

    def side(objects, others):
        total, area = 0.0, 0
        for k in range(1, objects.max() + 1):
            mine = objects == k
            hits = np.bincount(others[mine], minlength=others.max() + 1)[1:]
            partners = [int(hits.argmax()) + 1] if hits.max() > 0 else range(1, others.max() + 1)
            total += mine.sum() * min(h(mine, others == j) for j in partners)
            area += mine.sum()
        return total / area

    return (side(truth, pred) + side(pred, truth)) / 2


def test_object_hausdorff_matches_the_definition_on_random_objects():
    """The distances are computed in each pair's bounding box and the nearest partner is searched by box gaps; both
    shortcuts must give the definition's value, on fresh random objects, overlapping or not."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:40, :48]
    for _ in range(6):
        maps = []
        for _side in range(2):
            objects = np.zeros((40, 48), int)
            for k in range(1, int(rng.integers(2, 7))):
                cy, cx, r = rng.integers(0, 40), rng.integers(0, 48), rng.integers(2, 7)
                objects[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (objects == 0)] = k
            maps.append(label_components(objects > 0))
        truth, pred = maps
        if truth.max() and pred.max():
            assert object_scores(truth, pred)["object_hausdorff"] == pytest.approx(
                _hausdorff_by_brute_force(truth, pred), rel=1e-6)  # the distance maps are float32


def test_a_merge_costs_object_scores_not_pixel_dice():
    truth = np.zeros((30, 30), int)
    truth[5:25, 5:14], truth[5:25, 15:25] = 1, 2  # two glands one pixel apart
    merged = (truth > 0).astype(int)
    merged[5:25, 14] = 1  # one predicted object bridging them
    s = object_scores(truth, label_components(merged > 0))
    assert s["dice"] > 0.97
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1) and s["f1"] == pytest.approx(2 / 3)
    assert s["object_dice"] < 0.8
    exact = object_scores(truth, truth)
    assert exact["f1"] == exact["object_dice"] == exact["dice"] == 1.0 and exact["object_hausdorff"] == 0.0


def test_empty_sides():
    truth, _ = _two_glands()
    none = np.zeros_like(truth)
    missed = object_scores(truth, none)
    assert missed["f1"] == missed["object_dice"] == 0.0 and math.isnan(missed["object_hausdorff"])
    assert missed["fn"] == 2
    both = object_scores(none, none)
    assert both["f1"] == both["object_dice"] == 1.0 and both["object_hausdorff"] == 0.0
    # a table where no image has a Hausdorff distance says n/a, not nan±nan
    from vmunet_monai.evaluation.objects import format_objects, summarize_objects

    table = format_objects(summarize_objects([dict(missed, name="a", group="set")]))
    assert "nan" not in table and "     n/a" in table and "1 image(s) with no object on one side" in table


def test_masks_become_objects(tmp_path):
    rng = np.random.default_rng(0)
    binary = np.zeros((16, 16), np.uint8)
    binary[1:5, 1:5], binary[8:12, 8:12], binary[5, 5] = 255, 255, 255  # diagonal touch: 8-connected, one object
    Image.fromarray(binary).save(tmp_path / "binary.png")
    objects = read_objects(tmp_path / "binary.png")
    assert objects.max() == 2 and objects[5, 5] == objects[1, 1]
    instances = np.zeros((16, 16), np.uint8)
    instances[1:8, 1:8], instances[1:8, 8:15], instances[10:14, 2:6] = 3, 7, 9  # two touching glands and a third
    Image.fromarray(instances).save(tmp_path / "anno.bmp")
    objects = read_objects(tmp_path / "anno.bmp")
    assert objects.max() == 3 and objects[2, 7] != objects[2, 8]
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[1:8, 1:8], colour[1:8, 8:15] = (255, 0, 0), (0, 0, 255)  # colours, not grey levels, tell them apart
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert read_objects(tmp_path / "colour.png").max() == 2
    noisy = np.clip(binary.astype(int) + rng.integers(-30, 30, binary.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "lossy.jpg", quality=70)
    assert read_objects(tmp_path / "lossy.jpg").max() == 2  # JPEG: thresholded at half scale, then split
    Image.fromarray(np.stack([noisy] * 3, axis=-1)).save(tmp_path / "lossy_rgb.jpg", quality=70)
    assert read_objects(tmp_path / "lossy_rgb.jpg").max() == 2  # a colour JPEG by its grey level
    (tmp_path / "bad.png").write_text("no image")
    with pytest.raises(InputError, match="bad.png: cannot be read as a mask"):
        read_objects(tmp_path / "bad.png")


def test_touching_objects_are_split_at_their_neck():
    """Two discs that overlap form one connected object; the split finds both, keeps every pixel, and leaves a
    lone convex object whole. A neck shallower than the depth is not cut."""
    yy, xx = np.mgrid[:60, :100]
    left, right = (yy - 30) ** 2 + (xx - 28) ** 2 < 18 ** 2, (yy - 30) ** 2 + (xx - 62) ** 2 < 18 ** 2
    lone = (yy - 8) ** 2 + (xx - 90) ** 2 < 6 ** 2
    mask = left | right | lone
    assert label_components(mask).max() == 2
    objects = split_touching(mask, 2)
    assert objects.max() == 3 and np.array_equal(objects > 0, mask)
    assert len(np.unique(objects[left & ~right])) == 1 and objects[30, 28] != objects[30, 62]
    truth = np.zeros(mask.shape, int)
    truth[left], truth[right & ~left], truth[lone] = 1, 2, 3
    assert object_scores(truth, objects)["f1"] == 1.0 and object_scores(truth, label_components(mask))["f1"] < 1.0
    # the neck here is about 8 pixels below the discs' centres: a depth of 12 keeps them together
    assert split_touching(mask, 12).max() == 2
    assert split_touching(np.zeros((4, 4), bool), 2).max() == 0
    for bad in (0.2, "x", None):
        with pytest.raises(InputError, match=f"split_touching {bad!r}: the depth of a neck in pixels"):
            split_touching(mask, bad)


def test_the_split_depth_is_tuned_on_numbered_masks(tmp_path, capsys):
    """tune_split scores each depth: two overlapping discs need a depth below their neck (about 8 pixels) to be
    found apart, and a depth far below it cuts nothing more here, so the best is the largest depth that splits."""
    from vmunet_monai.cli import main
    from vmunet_monai.evaluation.objects import tune_split

    yy, xx = np.mgrid[:60, :100]
    left, right = (yy - 30) ** 2 + (xx - 28) ** 2 < 18 ** 2, (yy - 30) ** 2 + (xx - 62) ** 2 < 18 ** 2
    truth = np.zeros((60, 100), np.uint8)
    truth[left], truth[right & ~left] = 1, 2
    (tmp_path / "truth").mkdir()
    (tmp_path / "out" / "masks").mkdir(parents=True)
    for name in ("train_1", "test_1"):
        Image.fromarray(truth).save(tmp_path / "truth" / f"{name}.png")
        Image.fromarray(((truth > 0) * 255).astype(np.uint8)).save(tmp_path / "out" / "masks" / f"{name}_mask.png")
    result = tune_split(tmp_path / "out" / "masks", tmp_path / "truth", depths="12,2,4")
    by_depth = {r["depth"]: r for r in result["depths"]}
    assert [r["depth"] for r in result["depths"]] == ["2", "4", "12"]
    assert by_depth["2"]["f1"] == by_depth["4"]["f1"] == 1.0 and by_depth["12"]["objects"] == 2
    assert result["unsplit"]["f1"] == by_depth["12"]["f1"] < 1.0 and result["unsplit"]["objects"] == 2
    assert result["best"] == 4.0 and result["n_images"] == 2
    printed = capsys.readouterr().out
    assert "use predict --split_touching 4 (written to " in printed and "<- best" in printed
    assert printed.rstrip().endswith("; depths 2 and 4 score alike, and the largest splits an object only at a deeper "
                                     "neck)")
    assert [line.split()[0] for line in printed.splitlines() if line.endswith("(as good)")] == ["2"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "split_depths" / "split_depths.csv")))
    assert [r["depth"] for r in rows] == ["none", "2", "4", "12"]
    assert (tmp_path / "out" / "split_depths" / "split_depths.png").stat().st_size > 5000
    # where the two discs are one object, no depth does better than the unsplit masks: none is recommended
    (tmp_path / "one").mkdir()
    for name in ("train_1", "test_1"):
        Image.fromarray((truth > 0).astype(np.uint8)).save(tmp_path / "one" / f"{name}.png")
    whole = tune_split(tmp_path / "out" / "masks", tmp_path / "one", depths="2,12", out=tmp_path / "whole")
    assert whole["best"] is None and whole["best_split"] == 12.0 and whole["unsplit"]["f1"] == 1.0
    printed = capsys.readouterr().out
    assert "splitting does not help on these images: leave --split_touching out (its best depth, 12, scores" in printed
    assert [line.split()[0] for line in printed.splitlines() if line.endswith("<- best")] == ["none"]
    # only the named sets: the train_* images, never the test ones
    alone = tune_split(tmp_path / "out" / "masks", tmp_path / "truth", depths="4", group_by="prefix", sets="train",
                       out=tmp_path / "alone")
    assert alone["n_images"] == 1
    with pytest.raises(InputError, match=r"--sets 'val': no set 'val' among the pairs found \(sets with --group_by "
                                         r"prefix: test, train\)"):
        tune_split(tmp_path / "out" / "masks", tmp_path / "truth", group_by="prefix", sets="val")
    for bad in ("0.2,2", "a,b", ""):
        rule = rf"^--depths '{bad}': give numbers separated by commas, each at least 0.5, e.g. 1,2,3,5 \(neck depths"
        with pytest.raises(InputError, match=rule):
            tune_split(tmp_path / "out" / "masks", tmp_path / "truth", depths=bad)
    Image.fromarray(truth).save(tmp_path / "out" / "masks" / "test_1_mask.png")  # numbered, not binary
    with pytest.raises(SystemExit):
        main(["tune_split", str(tmp_path / "out" / "masks"), str(tmp_path / "truth"), "--depths", "2"])
    assert "test_1_mask.png: holds 3 values; depths are tuned on predict's binary masks" in capsys.readouterr().err


def test_picture_colours_each_outcome():
    truth, pred = _two_glands()
    extra = truth.copy()
    extra[15:19, 1:5] = 3  # a gland nobody found
    image = picture(extra, pred)
    assert tuple(image[4, 6]) == OUTCOME_COLORS["matched"]  # found gland, outside the predicted outline
    assert tuple(image[16, 2]) == OUTCOME_COLORS["missed"]
    assert tuple(image[0, 15]) == OUTCOME_COLORS["wrong"] and tuple(image[2, 2]) == OUTCOME_COLORS["right"]
    # over the photograph: fills half transparent, outlines opaque, the rest the photograph; a legend when wide
    photo = np.full(extra.shape + (3,), 100, np.uint8)
    over = picture(extra, pred, photo)
    assert tuple(over[19, 19]) == (100, 100, 100) and tuple(over[0, 15]) == OUTCOME_COLORS["wrong"]
    assert 100 < over[16, 2, 2] < OUTCOME_COLORS["missed"][2]
    wide = np.zeros((300, 400), int)
    wide[50:150, 50:150] = 1
    shown = with_legend(picture(wide, wide))
    assert shown.shape == (318, 400, 3) and tuple(shown[100, 51]) == OUTCOME_COLORS["right"]  # 2-pixel outline


def _glas_folder(folder, rng, names):
    """Images with their numbered masks beside them, as GlaS distributes them: ``X.bmp`` and ``X_anno.bmp``."""
    folder.mkdir(parents=True, exist_ok=True)
    truths = {}
    for name in names:
        anno = np.zeros((48, 40), np.uint8)
        for k in range(1, 4):
            top, left = rng.integers(0, 36), rng.integers(0, 28)
            anno[top:top + 10, left:left + 10] = k
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / f"{name}.bmp")
        Image.fromarray(anno).save(folder / f"{name}_anno.bmp")
        truths[name] = anno
    return truths


def test_objects_command_writes_a_table_compare_reads(tmp_path, capsys):
    from vmunet_monai.cli import main
    from vmunet_monai.evaluation.compare import read_table, run_compare

    rng = np.random.default_rng(3)
    names = ["testA_1", "testA_2", "testB_1", "testB_2"]
    truths = _glas_folder(tmp_path / "glas", rng, names)
    good, poor = tmp_path / "good" / "masks", tmp_path / "poor" / "masks"
    good.mkdir(parents=True)
    poor.mkdir(parents=True)
    for name, anno in truths.items():
        Image.fromarray(((anno > 0) * 255).astype(np.uint8)).save(good / f"{name}_mask.png")
        eroded = (anno > 0).copy()
        eroded[:, ::3] = False  # thin stripes cut out: objects split apart
        Image.fromarray((eroded * 255).astype(np.uint8)).save(poor / f"{name}_mask.png")
    (good / "testB_2_mask.png").unlink()  # a ground truth without prediction is left out and named
    summary = run_objects(good, tmp_path / "glas", group_by="prefix")
    assert set(summary["groups"]) == {"testA", "testB"} and summary["overall"]["n_images"] == 3
    assert summary["missing_prediction"] == [str(tmp_path / "glas" / "testB_2_anno.bmp")]
    printed = capsys.readouterr().out
    assert "all sets together" in printed and "left out: 1 ground truths without a prediction" in printed
    out = tmp_path / "good" / "objects"
    with open(out / "objects_per_image.csv") as f:
        rows = list(csv.DictReader(f))
    by_name = {r["name"]: r for r in rows}
    # the exact masks score 1 wherever objects do not touch; per image the object numbers match the ground truth
    for name, row in by_name.items():
        truth = read_objects(tmp_path / "glas" / f"{name}_anno.bmp")
        expected = object_scores(truth, label_components(truth > 0))
        assert float(row["object_dice"]) == pytest.approx(expected["object_dice"])
        assert int(row["n_truth"]) == truth.max()
    assert json.loads((out / "objects_summary.json").read_text())["overall"]["per_image"]["f1_mean"] == \
        pytest.approx(np.mean([float(r["f1"]) for r in rows]))
    assert (out / "objects.png").is_file() and (out / "pictures" / "testA" / "testA_1.png").is_file()
    # the poor masks through the command line, compared with the good ones by object Dice and Hausdorff
    main(["objects", str(poor), str(tmp_path / "glas"), "--group_by", "prefix", "--pictures", "false"])
    assert not (tmp_path / "poor" / "objects" / "pictures").exists()
    assert read_table(tmp_path / "poor" / "objects").columns[:4] == ["dice", "f1", "object_dice", "object_hausdorff"]
    result = run_compare([str(out), str(tmp_path / "poor" / "objects")], metric="object_dice")
    pair = result["overall"]["against_first"][0]
    assert pair["n_paired"] == 3 and pair["worse"] == 3
    assert run_compare([str(out), str(tmp_path / "poor" / "objects")], metric="object_hausdorff")["lower_is_better"]
    # without distances: said so, not blamed on images without objects
    capsys.readouterr()
    main(["objects", str(poor), str(tmp_path / "glas"), "--out", str(tmp_path / "fast"), "--pictures", "false",
          "--distances", "false"])
    printed = capsys.readouterr().out
    assert "object Hausdorff distances not computed (--distances false)" in printed
    assert "have no Hausdorff distance" not in printed


def test_objects_refuses_what_it_cannot_score(tmp_path, capsys):
    from vmunet_monai.cli import main

    rng = np.random.default_rng(4)
    _glas_folder(tmp_path / "glas", rng, ["a"])
    (tmp_path / "pred").mkdir()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: holds no mask files \(looked for predicted masks"):
        run_objects(tmp_path / "empty", tmp_path / "glas")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "pred" / "b_mask.png")
    with pytest.raises(InputError, match=r"empty: holds no mask files \(looked for ground truths"):
        run_objects(tmp_path / "pred", tmp_path / "empty")
    with pytest.raises(InputError, match="no predicted mask has a ground truth of the same image name"):
        run_objects(tmp_path / "pred", tmp_path / "glas")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "pred" / "a_mask.png")
    with pytest.raises(InputError, match=r"a_mask.png is 20x20 but its ground truth .*a_anno.bmp is 48x40"):
        run_objects(tmp_path / "pred", tmp_path / "glas")
    with pytest.raises(SystemExit):
        main(["objects", str(tmp_path / "pred"), str(tmp_path / "glas"), "--group_by", "size"])
    assert "error: --group_by 'size': folder (the ground truth's folder) or prefix" in capsys.readouterr().err


def test_predicted_masks_of_glas_images_are_scored(tmp_path):
    """predict on a GlaS folder (images with their _anno masks beside them) writes masks that objects pairs with
    those annotations by name."""
    from reliability_helpers import tiny_bundle_with_weights

    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("polyp_seg", tmp_path / "bundle")
    _glas_folder(tmp_path / "glas", np.random.default_rng(5), ["testA_1", "testA_2"])
    done = predict(str(bundle), str(tmp_path / "glas"), str(tmp_path / "out"), device="cpu", split_touching=2)
    assert len(done["masks"]) == 2  # the annotations were not segmented
    summary = run_objects(tmp_path / "out" / "masks", tmp_path / "glas", pictures=False)
    assert summary["overall"]["n_images"] == 2 and summary["overall"]["pooled"]["n_truth"] == 6
    # the object maps: the masks' foreground, numbered; scored by name like the masks
    for mask, objects in zip(done["masks"], done["instances"]):
        assert objects.endswith("_instances.png") and "/instances/" in objects
        np.testing.assert_array_equal(np.asarray(Image.open(objects)) > 0, np.asarray(Image.open(mask)) > 127)
    split = run_objects(tmp_path / "out" / "instances", tmp_path / "glas", out=tmp_path / "split", pictures=False)
    assert split["overall"]["n_images"] == 2
    with pytest.raises(InputError, match=r"masks: TRUTH is predict's output .*prediction.json says so\), and PRED is "
                                         r"not: the arguments are objects PRED TRUTH, predictions first \(swapped\?\)"):
        run_objects(tmp_path / "glas", tmp_path / "out" / "masks", out=tmp_path / "swapped", pictures=False)
    # prediction.json: what made the masks
    record = json.loads((tmp_path / "out" / "prediction.json").read_text())
    weights = bundle / "models" / "model.pt"
    assert record["weights"] == str(weights)
    assert record["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (record["num_classes"], record["mask_values"], record["written"]) == (2, [0, 255], 2)
    assert record["class_names"] == ["background", "polyp"] and record["settings"]["split_touching"] == 2
    assert record["inputs"] == [str((tmp_path / "glas").resolve())] and done["record"].endswith("prediction.json")
    # masks written as 0/1 (--mask_values 0,1): the object maps hold the same objects
    ones = predict(str(bundle), str(tmp_path / "glas"), str(tmp_path / "out01"), device="cpu", split_touching=2,
                   mask_values="0,1")
    for mask, objects, before in zip(ones["masks"], ones["instances"], done["instances"]):
        assert set(np.unique(np.asarray(Image.open(mask)))) <= {0, 1}
        np.testing.assert_array_equal(np.asarray(Image.open(objects)), np.asarray(Image.open(before)))
    with pytest.raises(InputError, match="--split_touching 0: the depth"):
        predict(str(bundle), str(tmp_path / "glas"), str(tmp_path / "bad"), device="cpu", split_touching=0)
    with pytest.raises(InputError, match="--split_touching 2: only for binary 2D masks"):
        predict("synapse_multiorgan", str(tmp_path / "glas"), str(tmp_path / "bad"), split_touching=2)


def test_class_maps_are_scored_one_class_at_a_time(tmp_path, capsys):
    """predict's class maps are refused without --foreground (prediction.json says they hold classes); with it, the
    objects of that class are scored, named by value or by class name."""
    from reliability_helpers import tiny_bundle_with_weights

    from vmunet_monai.cli import main
    from vmunet_monai.evaluation.objects import class_value
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("polyp_seg", tmp_path / "bundle", num_classes=3, seed=1)
    _glas_folder(tmp_path / "glas", np.random.default_rng(6), ["a", "b"])
    predict(str(bundle), str(tmp_path / "glas"), str(tmp_path / "out"), device="cpu", mask_values="0,127,255")
    record = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert (record["num_classes"], record["mask_values"], record["class_names"]) == (3, [0, 127, 255], None)
    masks = tmp_path / "out" / "masks"
    with pytest.raises(InputError, match=r"prediction.json says these masks are class maps of 3 classes \(class 1 "
                                         r"127, class 2 255\); .* give --foreground"):
        run_objects(masks, tmp_path / "glas")
    assert class_value(masks, 255) == class_value(masks, "class 2") == 255 and class_value(masks, "127") == 127
    for bad, rule in ((7, "the masks of .* hold class 1 127, class 2 255"), ("gland", "not a mask value or a class")):
        with pytest.raises(InputError, match=rule):
            class_value(masks, bad)
    summary = run_objects(masks, tmp_path / "glas", out=tmp_path / "o", pictures=False, foreground="class 2")
    assert summary["foreground"] == 255
    values = np.unique(np.concatenate([np.asarray(Image.open(m)).ravel() for m in sorted(masks.glob("*.png"))]))
    assert set(values.tolist()) == {0, 127, 255}  # the untrained network predicts all three classes here
    # the same as scoring the pixels of value 255 as a binary mask, by hand
    for row in csv.DictReader(open(tmp_path / "o" / "objects_per_image.csv")):
        pred = label_components(np.asarray(Image.open(masks / f"{row['name']}_mask.png")) == 255)
        expected = object_scores(read_objects(tmp_path / "glas" / f"{row['name']}_anno.bmp"), pred)
        assert float(row["object_dice"]) == pytest.approx(expected["object_dice"])
        assert float(row["f1"]) == pytest.approx(expected["f1"])
    main(["objects", str(masks), str(tmp_path / "glas"), "--out", str(tmp_path / "c"), "--foreground", "127",
          "--pictures", "false"])
    assert json.loads((tmp_path / "c" / "objects_summary.json").read_text())["foreground"] == 127
    (tmp_path / "j").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "j" / "a.jpg")
    with pytest.raises(InputError, match="a.jpg: a JPEG's values are lossy"):
        read_objects(tmp_path / "j" / "a.jpg", 255)


def test_demo_with_glands_scores_the_test_tiles_object_by_object(tmp_path, capsys, monkeypatch):
    """``demo --glands`` on the smallest settings: GlaS's names give the split, the test tiles are predicted and
    scored object by object, and the binary masks' own object scores are printed as the ceiling."""
    from bundle_helpers import tiny_overrides

    import vmunet_monai.demo as demo

    monkeypatch.setattr(demo, "DEMO_NETWORK", {k.split("#")[1]: v for k, v in tiny_overrides("isic_skin_lesion").items()
                                               if k.startswith("network_def")})
    result = demo.run_demo(out=str(tmp_path / "demo"), epochs=1, num=4, size=32, glands=True)
    printed = capsys.readouterr().out
    objects = result["objects"]
    assert set(objects["groups"]) == {"testA", "testB"} and objects["overall"]["n_images"] == 4
    assert f"F1 {objects['overall']['pooled']['f1']:.4f}" in printed
    assert "use predict --split_touching" in printed  # the depth was tuned on the predicted training tiles
    assert result["split_depth"] in (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
    assert f"--split_touching {result['split_depth']:g}, the best depth on the training tiles" in printed
    ceiling = result["binary_masks_objects"]
    assert ceiling["per_image"]["dice_mean"] == 1.0 and 0 < ceiling["pooled"]["f1"] <= 1.0
    assert f"the binary training masks themselves score F1 {ceiling['pooled']['f1']:.4f}" in printed
    assert (tmp_path / "demo" / "predicted" / "objects" / "pictures" / "testB" / "testB_1.png").is_file()
    split = result["objects_split"]["overall"]
    assert split["n_images"] == 4 and f"on the training tiles): F1 {split['pooled']['f1']:.4f}" in printed
    with pytest.raises(InputError, match="demo --glands: on its own"):
        demo.run_demo(out=str(tmp_path / "x"), glands=True, classes=2)


def test_instance_maps_in_big_endian_and_float_tiffs_keep_their_numbers(tmp_path):
    """ImageJ and Fiji save 16-bit TIFFs big-endian; these and float maps went through RGB, which clipped every
    number to 255 and merged touching objects into one."""
    numbered = np.zeros((12, 18), np.int64)
    numbered[2:6, 2:8], numbered[2:6, 8:14], numbered[7:11, 3:15] = 300, 1200, 1800  # the first two touch
    Image.frombytes("I;16B", numbered.shape[::-1], numbered.astype(">u2").tobytes()).save(tmp_path / "fiji.tif")
    Image.fromarray(numbered.astype(np.float32), mode="F").save(tmp_path / "float.tif")
    for name in ("fiji.tif", "float.tif"):
        objects = read_objects(tmp_path / name)
        assert objects.max() == 3, name
        assert len(np.unique(objects[2:6, 2:14])) == 2, name  # the touching pair stays two objects


def test_a_binary_mask_with_grey_edges_is_named_not_scored_in_silence(tmp_path, capsys):
    """A binary prediction drawn smooth (or resized) holds grey levels along its rim; read as an instance mask, each
    level would be an object. Such a mask is named; real instance maps, with flat objects, are not."""
    import warnings

    from vmunet_monai.evaluation.objects import SoftEdgeWarning

    rng = np.random.default_rng(5)
    truths = _glas_folder(tmp_path / "glas", rng, ["a", "b", "c"])
    (tmp_path / "pred").mkdir()
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "pred" / "c_mask.png")  # of another size
    for name, anno in ((n, a) for n, a in truths.items() if n != "c"):
        big = Image.fromarray(((anno > 0) * 255).astype(np.uint8)).resize((anno.shape[1] * 4, anno.shape[0] * 4))
        soft = big.resize((anno.shape[1], anno.shape[0]), Image.BILINEAR)  # smooth edges
        if name == "a":
            soft = Image.fromarray(((anno > 0) * 255).astype(np.uint8))  # a plain binary mask: no note
        soft.save(tmp_path / "pred" / f"{name}_mask.png")
    assert len(np.unique(np.asarray(Image.open(tmp_path / "pred" / "b_mask.png")))) > 5
    with pytest.warns(SoftEdgeWarning, match=r"b_mask.png: \d+ of its \d+ values lie only along edges"):
        read_objects(tmp_path / "pred" / "b_mask.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SoftEdgeWarning)
        for name in ("a", "b"):  # the GlaS-style instance maps are flat objects
            read_objects(tmp_path / "glas" / f"{name}_anno.bmp")
        # predict --split_touching's object map of a noisy prediction: specks of one pixel amid background are
        # objects of their own, not a rim along others
        speckled = (truths["a"] > 0) | (rng.random(truths["a"].shape) < 0.02)
        objects = split_touching(speckled, 2)
        write_objects(objects, tmp_path / "a_instances.png")
        assert int(objects.max()) >= 20 and read_objects(tmp_path / "a_instances.png").max() == objects.max()
    summary = run_objects(tmp_path / "pred", tmp_path / "glas", pictures=False)
    printed = capsys.readouterr().out
    assert "note: 1 mask(s) look like binary masks with grey edges" in printed and "b_mask.png" in printed
    # the prediction of another size is left out and named, as a missing one is; the others are scored
    assert summary["overall"]["n_images"] == 2 and len(summary["wrong_size_prediction"]) == 1
    assert "left out: 1 prediction(s) of another size than their ground truth (first: " in printed
    for name in ("a", "b"):  # every prediction of another size: refused, the first named
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "pred" / f"{name}_mask.png")
    with pytest.raises(InputError, match=r"a_mask.png is 5x5 but its ground truth .*; so are the other 2$"):
        run_objects(tmp_path / "pred", tmp_path / "glas", pictures=False)


def test_ground_truths_in_images_and_masks_folders_are_the_masks_only(tmp_path):
    """A ground-truth folder laid out as images/ beside masks/ (Kvasir-SEG) gives the masks; its photos are the
    pictures' backgrounds, not masks of their own ('two masks of one image')."""
    rng = np.random.default_rng(6)
    truths = _glas_folder(tmp_path / "glas", rng, ["a", "b"])
    for folder in ("images", "masks"):
        (tmp_path / "set" / folder).mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    for name, anno in truths.items():
        Image.fromarray(((anno > 0) * 255).astype(np.uint8)).save(tmp_path / "set" / "masks" / f"{name}.png")
        Image.fromarray(rng.integers(0, 255, (*anno.shape, 3), dtype=np.uint8)).save(tmp_path / "set" / "images"
                                                                                      / f"{name}.png")
        Image.fromarray(((anno > 0) * 255).astype(np.uint8)).save(tmp_path / "pred" / f"{name}_mask.png")
    pairs, missing = match_files(tmp_path / "pred", tmp_path / "set")
    assert sorted((p[0], Path(p[3]).parent.name) for p in pairs) == [("a", "masks"), ("b", "masks")]
    assert sorted(missing["photos"]) == ["a", "b"] and not missing["missing_truth"]
