"""Per-organ CT metrics: HD95 in millimetres against hand-computed values and a brute-force reference."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from vmunet_monai.evaluation import ct
from vmunet_monai.validation import InputError

SPACING = (0.5, 0.8, 4.0)  # anisotropic: voxels and millimetres disagree


def _surface(mask):
    return mask & ~binary_erosion(mask)


def _brute_distances(a, b, spacing):
    """Distances from every surface voxel of a to the nearest surface voxel of b, by exhaustive search."""
    pa = np.argwhere(_surface(a)) * np.asarray(spacing, dtype=np.float64)
    pb = np.argwhere(_surface(b)) * np.asarray(spacing, dtype=np.float64)
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(axis=1)


def test_hd95_in_mm_single_voxels_hand_computed():
    gt = np.zeros((8, 8, 6), bool)
    pred = np.zeros_like(gt)
    gt[2, 2, 1] = True
    pred[2, 4, 3] = True
    # two voxels apart along y (0.8 mm each) and two along z (4 mm each)
    assert ct.hd95_mm(pred, gt, SPACING) == pytest.approx(np.hypot(2 * 0.8, 2 * 4.0), rel=1e-6)  # 8.158 mm
    assert ct.hd95_transunet(pred, gt) == pytest.approx(np.sqrt(8), rel=1e-6)  # 2.83 voxels


def test_hd95_percentile_conventions_hand_computed():
    gt = np.zeros((8, 8, 6), bool)
    gt[2, 2, 1] = True
    pred = gt.copy()
    pred[6, 6, 5] = True  # one stray voxel 4 voxels away along every axis
    d_mm = np.sqrt((4 * 0.5) ** 2 + (4 * 0.8) ** 2 + (4 * 4.0) ** 2)
    # MONAI: max over directions of the 95th percentile; pred->gt distances are [0, d] -> 0.95 d
    assert ct.hd95_mm(pred, gt, SPACING) == pytest.approx(0.95 * d_mm, rel=1e-6)
    # medpy/TransUNet: 95th percentile of both directions pooled, [0, d, 0] -> 0.9 d, in voxels
    assert ct.hd95_transunet(pred, gt) == pytest.approx(0.9 * np.sqrt(48), rel=1e-6)


def test_hd95_matches_brute_force_on_random_masks():
    rng = np.random.default_rng(1234)
    for _ in range(5):
        shape = tuple(rng.integers(6, 14, size=3))
        spacing = tuple(rng.uniform(0.4, 5.0, size=3))
        pred = rng.random(shape) < 0.15
        gt = rng.random(shape) < 0.15
        to_gt, to_pred = _brute_distances(pred, gt, spacing), _brute_distances(gt, pred, spacing)
        expected_mm = max(np.percentile(to_gt, 95), np.percentile(to_pred, 95))
        assert ct.hd95_mm(pred, gt, spacing) == pytest.approx(expected_mm, rel=1e-5)
        pooled = np.concatenate([_brute_distances(pred, gt, (1, 1, 1)), _brute_distances(gt, pred, (1, 1, 1))])
        assert ct.hd95_transunet(pred, gt) == pytest.approx(np.percentile(pooled, 95), rel=1e-5)


def test_dice_of_shifted_boxes():
    gt = np.zeros((10, 10, 10), bool)
    gt[2:6, 2:6, 2:6] = True
    pred = np.roll(gt, 1, axis=2)
    assert ct.dice(pred, gt) == pytest.approx(2 * 48 / 128)
    assert np.isnan(ct.dice(np.zeros_like(gt), np.zeros_like(gt)))


def test_case_scores_edge_rules():
    label = np.zeros((12, 12, 6), np.uint8)
    label[1:4, 1:4, 1:3] = 1  # aorta: predicted exactly
    label[6:9, 6:9, 2:4] = 5  # liver: missed
    pred = np.zeros_like(label)
    pred[1:4, 1:4, 1:3] = 1
    pred[8:11, 1:3, 1:2] = 7  # spleen: predicted, absent from the ground truth
    scores = ct.case_scores(pred[None], label, SPACING)
    assert scores["status"]["aorta"] == "scored" and scores["dice"]["aorta"] == 1.0 and scores["hd95_mm"]["aorta"] == 0
    assert (
        scores["status"]["liver"] == "missed" and scores["dice"]["liver"] == 0 and np.isnan(scores["hd95_mm"]["liver"])
    )
    assert scores["status"]["spleen"] == "false_positive" and scores["dice"]["spleen"] == 0
    assert scores["status"]["pancreas"] == "absent" and np.isnan(scores["dice"]["pancreas"])
    # TransUNet table: missed (0, 0); predicted but absent (1, 0); not predicted and absent (0, 0)
    assert (scores["transunet_dice"]["liver"], scores["transunet_hd95_voxel"]["liver"]) == (0.0, 0.0)
    assert (scores["transunet_dice"]["spleen"], scores["transunet_hd95_voxel"]["spleen"]) == (1.0, 0.0)
    assert (scores["transunet_dice"]["pancreas"], scores["transunet_hd95_voxel"]["pancreas"]) == (0.0, 0.0)
    # one-hot channels are accepted and argmaxed
    onehot = np.eye(9, dtype=np.float32)[pred].transpose(3, 0, 1, 2)
    again = ct.case_scores(onehot, label, SPACING)["dice"]
    np.testing.assert_equal(
        [again[o] for o in ct.DEFAULT_ORGANS.values()], [scores["dice"][o] for o in ct.DEFAULT_ORGANS.values()]
    )
    with pytest.raises(ValueError, match="differs from label shape"):
        ct.case_scores(pred[:-1], label, SPACING)


def test_summary_means_and_writers(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        label = np.zeros((16, 16, 6), np.uint8)
        for organ in range(1, 9):
            x, y = divmod(organ - 1, 4)
            label[1 + 7 * x : 5 + 7 * x, 1 + 4 * y : 4 + 4 * y, 1:5] = organ
        pred = label.copy()
        pred[rng.random(label.shape) < 0.05] = 0
        if i == 0:
            pred[pred == 2] = 0  # gallbladder missed in case 0
        scores = ct.case_scores(pred, label, SPACING)
        scores["case"] = f"case{i}"
        rows.append(scores)
    summary = ct.summarize(rows)
    gall = [r["dice"]["gallbladder"] for r in rows]
    assert summary["dice"]["per_organ"]["gallbladder"]["mean"] == pytest.approx(np.mean(gall))
    assert summary["hd95_mm"]["per_organ"]["gallbladder"]["n"] == 2  # undefined for the miss
    assert summary["counts"]["missed"]["gallbladder"] == 1
    organ_means = [summary["dice"]["per_organ"][o]["mean"] for o in summary["organs"]]
    assert summary["dice"]["mean_over_organs"] == pytest.approx(np.mean(organ_means))
    csv_path = ct.write_case_csv(rows, str(tmp_path / "per_case.csv"))
    lines = open(csv_path).read().splitlines()
    assert len(lines) == 4 and "hd95_mm_liver" in lines[0] and "transunet_hd95_voxel_liver" in lines[0]
    assert os.path.getsize(ct.plot_organ_boxes(rows, str(tmp_path / "box.png"))) > 1000
    # groups (ACDC's ED and ES frames): each summarised apart, beside the whole; cases of no group only in the whole
    grouped = ct._write_outputs(rows, str(tmp_path), "g_", groups={"case0": "ED", "case1": "ES", "case2": "ES"})
    assert grouped["groups"]["ED"]["num_cases"] == 1 and grouped["groups"]["ES"]["num_cases"] == 2
    assert grouped["groups"]["ES"]["dice"]["per_organ"]["liver"]["mean"] == pytest.approx(
        np.mean([rows[1]["dice"]["liver"], rows[2]["dice"]["liver"]]))
    assert grouped["dice"]["mean_over_organs"] == pytest.approx(summary["dice"]["mean_over_organs"])
    assert "groups" not in ct._write_outputs(rows, str(tmp_path), "n_", groups={"other": "ED"})


def test_evaluate_files_writes_everything(tmp_path):
    affine = np.diag([-0.7, -0.7, 3.0, 1.0])
    label = np.zeros((20, 20, 6), np.uint8)
    label[3:9, 3:9, 1:5] = 5
    label[12:15, 12:15, 2:4] = 1
    pred = label.copy()
    pred[12:15, 12:15, 2:4] = 0  # aorta missed
    image = np.where(label > 0, 60, -100).astype(np.int16)
    for name, arr in (("pred.nii.gz", pred), ("label.nii.gz", label), ("img.nii.gz", image)):
        nib.save(nib.Nifti1Image(arr, affine), str(tmp_path / name))
    out = tmp_path / "eval"
    summary = ct.evaluate_files(
        [str(tmp_path / "pred.nii.gz")],
        [str(tmp_path / "label.nii.gz")],
        str(out),
        montage_image=str(tmp_path / "img.nii.gz"),
    )
    assert summary["dice"]["per_organ"]["liver"]["mean"] == 1.0
    assert summary["counts"]["missed"]["aorta"] == 1
    saved = json.load(open(out / "summary.json"))
    assert saved["hd95_mm"]["per_organ"]["aorta"]["mean"] is None  # undefined, written as null
    assert saved["transunet_hd95_voxel"]["per_organ"]["aorta"]["mean"] == 0.0  # the inherited rule scores 0
    assert {"per_case.csv", "summary.json", "organ_boxplot.png", "montage_label.png"} <= set(os.listdir(out))


def test_predictions_of_other_labels_are_refused_and_one_time_point_is_a_volume(tmp_path):
    """A prediction in another label set (BTCV's 13 organs, not mapped to the 8) scored as it is counts its organs
    as missed without a word; a (X, Y, Z, 1) file is the volume it holds, as the importer reads it."""
    affine = np.diag([-0.7, -0.7, 3.0, 1.0])
    label = np.zeros((20, 20, 6), np.uint8)
    label[3:9, 3:9, 1:5] = 5
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "label.nii.gz"))
    nib.save(nib.Nifti1Image(np.where(label == 5, 12, 0).astype(np.uint8), affine), str(tmp_path / "btcv.nii.gz"))
    with pytest.raises(InputError,
                       match=r"btcv.nii.gz: label values 12 are no class of this dataset \(0 background, 1 aorta, .*"
                             r"8 stomach; map another tool's labels"):
        ct.evaluate_files([str(tmp_path / "btcv.nii.gz")], [str(tmp_path / "label.nii.gz")], str(tmp_path / "e1"))
    nib.save(nib.Nifti1Image(label[..., None], affine), str(tmp_path / "pred4d.nii.gz"))
    summary = ct.evaluate_files([str(tmp_path / "pred4d.nii.gz")], [str(tmp_path / "label.nii.gz")],
                                str(tmp_path / "e2"))
    assert summary["dice"]["per_organ"]["liver"]["mean"] == 1.0
    # a float map of whole numbers is a label map; one of fractions (probabilities, a label resampled with
    # interpolation) is refused instead of rounded: 5.4 scored as a perfect liver, 5.6 as a stray class 6
    nib.save(nib.Nifti1Image(label.astype(np.float32), affine), str(tmp_path / "float.nii.gz"))
    summary = ct.evaluate_files([str(tmp_path / "float.nii.gz")], [str(tmp_path / "label.nii.gz")],
                                str(tmp_path / "e3"))
    assert summary["dice"]["per_organ"]["liver"]["mean"] == 1.0
    nib.save(nib.Nifti1Image(np.where(label == 5, 5.4, 0).astype(np.float32), affine), str(tmp_path / "frac.nii.gz"))
    with pytest.raises(InputError, match=r"frac.nii.gz: values 5.4 are no whole class numbers \(a label map holds"):
        ct.evaluate_files([str(tmp_path / "frac.nii.gz")], [str(tmp_path / "label.nii.gz")], str(tmp_path / "e4"))


def test_a_truncated_volume_is_named_in_one_line(tmp_path):
    """A prediction or label cut short (a copy that stopped) is named with the reader's reason, not a traceback of
    gzip's EOFError."""
    affine = np.diag([-0.7, -0.7, 3.0, 1.0])
    label = np.zeros((20, 20, 6), np.uint8)
    label[3:9, 3:9, 1:5] = 5
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "label.nii.gz"))
    whole = (tmp_path / "label.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    for pred, truth in (("cut", "label"), ("label", "cut")):
        with pytest.raises(InputError, match=r"cut.nii.gz: cannot be read as NIfTI \(.*\) \(the file must be a "
                                             r"complete NIfTI volume; is it truncated\?\)"):
            ct.evaluate_files([str(tmp_path / f"{pred}.nii.gz")], [str(tmp_path / f"{truth}.nii.gz")],
                              str(tmp_path / "e"))


def _three_cases(tmp_path):
    """Three cases on one grid: the first perfect, the second missing its aorta, the third missing it and half its
    liver (the worst)."""
    affine = np.diag([-0.7, -0.7, 3.0, 1.0])
    label = np.zeros((20, 20, 6), np.uint8)
    label[3:9, 3:9, 1:5] = 5
    label[12:15, 12:15, 2:4] = 1
    image = np.where(label > 0, 60, -100).astype(np.int16)
    preds = [label.copy(), np.where(label == 1, 0, label), np.where(label == 1, 0, label)]
    preds[2][3:9, 3:6, 1:5] = 0
    paths = {}
    for k, pred in enumerate(preds):
        for name, arr in (("pred", pred), ("label", label), ("img", image)):
            paths.setdefault(name, []).append(str(tmp_path / f"{name}{k}.nii.gz"))
            nib.save(nib.Nifti1Image(arr, affine), paths[name][-1])
    return paths, affine


def test_the_worst_case_is_drawn_beside_the_first(tmp_path, capsys, caplog):
    from types import SimpleNamespace

    from monai.data import MetaTensor

    paths, affine = _three_cases(tmp_path)
    cases = ["first", "middle", "worst"]
    ct.evaluate_files(paths["pred"], paths["label"], str(tmp_path / "files"), montage_image=paths["img"][0],
                      cases=cases, worst_images=paths["img"])
    # score's console gets the summary line once
    assert capsys.readouterr().out.count("3 cases: mean Dice") == 1
    assert sorted(p.name for p in (tmp_path / "files").glob("montage*.png")) == ["montage_first.png",
                                                                                 "montage_worst_worst.png"]
    ct.evaluate_files(paths["pred"][:1], paths["label"][:1], str(tmp_path / "perfect"), cases=cases[:1],
                      worst_images=paths["img"][:1])
    assert not list((tmp_path / "perfect").glob("montage*.png"))  # nothing wrong, nothing drawn
    # the evaluation's handler keeps one case however many it scores, and draws the same
    handler = ct.OrganMetricsHandler(str(tmp_path / "handler"))
    engine = SimpleNamespace(state=SimpleNamespace(output=[], batch=[], metrics={}))
    handler._reset(engine)
    for k in (1, 2, 0):  # the worst neither first nor last
        def tensor(name):
            data = np.asarray(nib.load(paths[name][k]).dataobj)[None]
            return MetaTensor(data, affine=affine, meta={"filename_or_obj": paths["img"][k]})

        engine.state.output = [{"pred": tensor("pred"), "label": tensor("label")}]
        engine.state.batch = [{"image": tensor("img")}]
        handler._score(engine)
    assert handler._worst["source"] == paths["img"][2] and handler._worst["dice"] == pytest.approx(
        ct.case_mean_dice(handler.rows[1]))
    capsys.readouterr()
    with caplog.at_level("INFO", logger=ct.logger.name):
        handler._write(engine)
    # in a bundle run the logger shows the line (the bundle's logging config): once, not printed beside it
    assert [r.getMessage()[:20] for r in caplog.records].count("3 cases: mean Dice 0") == 1
    folder = tmp_path / "handler"
    assert f"report: {folder / 'per_case.csv'}, {folder / 'summary.json'}, {folder / 'organ_boxplot.png'}, " \
        f"{folder / 'montage_img1.png'}, {folder / 'montage_worst_img2.png'}" in [r.getMessage() for r in caplog.records]
    assert "mean Dice" not in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "handler").glob("montage*.png")) == ["montage_img1.png",
                                                                                   "montage_worst_img2.png"]
    # the means as the evaluator's metrics (what StatsHandler and --tracking mlflow log), undefined ones left out
    summary, metrics = handler.summary, engine.state.metrics
    assert metrics["dice_mean"] == pytest.approx(summary["dice"]["mean_over_organs"])
    for key in ("dice", "hd95_mm", "transunet_dice", "transunet_hd95_voxel"):
        for organ, stats in summary[key]["per_organ"].items():
            defined = stats["mean"] is not None and np.isfinite(stats["mean"])
            assert metrics.get(f"{key}_{organ}") == (pytest.approx(stats["mean"]) if defined else None)
    assert len(metrics) > 8 and all(isinstance(v, float) for v in metrics.values())
    # ACDC's phases and clinical indices too
    acdc = dict(summary, groups={"ED": summary, "ES": {"dice": {"mean_over_organs": 0.5}}},
                clinical={"indices": {"LV_EF": {"correlation": 0.9, "bias": -1.5, "mae": float("nan")}}})
    flat = ct.summary_metrics(acdc)
    assert flat["ED/dice_mean"] == metrics["dice_mean"] and flat["ES/dice_mean"] == 0.5 and "ES/hd95_mm_mean" not in flat
    assert (flat["clinical/LV_EF_correlation"], flat["clinical/LV_EF_bias"]) == (0.9, -1.5)
    assert "clinical/LV_EF_mae" not in flat


def test_spacing_from_affine():
    affine = np.array([[0, -0.7, 0, 1], [0.8, 0, 0, 2], [0, 0, 3.0, 3], [0, 0, 0, 1]])
    assert ct.spacing_from_affine(affine) == pytest.approx((0.8, 0.7, 3.0))


def test_the_printed_summary_says_how_many_organs_were_missed(capsys):
    """A missed organ has no HD95: the mean over the organs found may read 0.00 mm while an organ is gone, so the
    line says how many were missed."""
    label = np.zeros((12, 12, 6), np.uint8)
    label[1:4, 1:4, 1:3] = 1
    label[6:9, 6:9, 2:4] = 5
    pred = np.where(label == 5, 0, label).astype(np.uint8)  # the liver missed, the aorta exact
    rows = [dict(ct.case_scores(pred[None], label, SPACING), case="c1")]
    ct._log_summary(ct.summarize(rows))
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("1 cases: mean Dice ") and "mean HD95 0.00 mm" in line
    assert "mean HD95 0.00 mm (of the organs found: 1 missed, which have no HD95, count 0 in Dice) |" in line
    ct._log_summary(ct.summarize([dict(ct.case_scores(label[None], label, SPACING), case="c2")]))
    assert "missed" not in capsys.readouterr().out
    ct._log_summary(ct.summarize([dict(ct.case_scores(np.zeros_like(label)[None], label, SPACING), case="c3")]))
    assert "mean HD95 n/a (of the organs found: 2 missed" in capsys.readouterr().out  # not nan


def test_volumes_csv_names_classes_without_spaces(tmp_path):
    """predict's volumes.csv: a class named "left kidney" (the bundle's name) has the column left_kidney_ml, as
    per_case.csv and compare name it, so the tables join."""
    import csv

    from vmunet_monai.evaluation.volumetry import write_volumes

    seg = np.zeros((4, 4, 2), np.uint8)
    seg[0, :2, 0] = 1
    seg[1:, :, :] = 2
    nib.save(nib.Nifti1Image(seg, np.diag([2.0, 2.0, 5.0, 1.0])), str(tmp_path / "img0001_seg.nii.gz"))
    write_volumes([str(tmp_path / "img0001.nii.gz")], [str(tmp_path / "img0001_seg.nii.gz")],
                  {1: "left kidney", 2: "liver"}, tmp_path)
    (row,) = list(csv.DictReader(open(tmp_path / "volumes.csv")))
    assert list(row) == ["case", "segmentation", "voxel_ml", "left_kidney_ml", "liver_ml"]
    assert float(row["left_kidney_ml"]) == pytest.approx(2 * 0.02)
    assert float(row["liver_ml"]) == pytest.approx(24 * 0.02)
