"""The PraNet lineage's polyp metrics: the vectorised threshold curves against a loop over the 256 thresholds, the
weighted F-beta against a pixel-by-pixel reading of its definition, and the values the definitions give by hand."""

import math

import numpy as np
import pytest

from vmunet_monai.evaluation import pranet as P


def _maps(seed, shape=(23, 31)):
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, bool)
    truth[5:15, 8:20] = True
    truth[18:21, 2:5] = True  # a second, small object
    return P.normalise_map(rng.random(shape) * 0.5 + truth * rng.uniform(0.2, 0.6)), truth


def _loop_curves(pred, truth):
    dice, iou, e_phi = [], [], []
    gt = truth.astype(float)
    for t in P.THRESHOLDS:
        b = pred >= t
        inter, size, union = (b & truth).sum(), b.sum() + truth.sum(), (b | truth).sum()
        dice.append(2 * inter / size if size else 1.0)
        iou.append(inter / union if union else 1.0)
        fm = b.astype(float)
        if gt.sum() == 0:
            enhanced = 1 - fm
        elif gt.sum() == gt.size:
            enhanced = fm
        else:
            a_fm, a_gt = fm - fm.mean(), gt - gt.mean()
            enhanced = ((2 * a_gt * a_fm / (a_gt ** 2 + a_fm ** 2 + P.EPS)) + 1) ** 2 / 4
        e_phi.append(enhanced.sum() / (gt.size - 1 + P.EPS))
    return np.array(dice), np.array(iou), np.array(e_phi)


@pytest.mark.parametrize("case", ["objects", "empty", "full", "constant"])
def test_threshold_curves_equal_a_loop_over_the_thresholds(case):
    pred, truth = _maps(1)
    if case == "empty":
        truth[:] = False
    elif case == "full":
        truth[:] = True
    elif case == "constant":
        pred = np.full(truth.shape, 0.3)
    dice, iou = P.overlap_curves(pred, truth)
    ref_dice, ref_iou, ref_e = _loop_curves(pred, truth)
    assert np.allclose(dice, ref_dice, atol=1e-12) and np.allclose(iou, ref_iou, atol=1e-12)
    assert np.allclose(P.e_measure_curve(pred, truth), ref_e, atol=1e-12)


def _loop_weighted_f(pred, truth):
    """Margolin et al.'s weighted F-beta (beta^2 = 1) read literally, pixel by pixel: each background pixel takes
    the error of its nearest object pixel, a 7x7 Gaussian (sigma 5) smooths, object pixels keep the smaller of
    their error and its smoothed value, background pixels weigh 2 - 0.5^(distance / 5)."""
    rows, cols = truth.shape
    objects = np.argwhere(truth)
    error = np.abs(pred - truth)
    dependent, distance = error.copy(), np.zeros(truth.shape)
    for r in range(rows):
        for c in range(cols):
            if not truth[r, c]:
                d2 = ((objects - (r, c)) ** 2).sum(axis=1)
                near = objects[int(np.argmin(d2))]  # ties: the first in scan order, as the EDT's index may differ
                distance[r, c] = math.sqrt(d2.min())
                dependent[r, c] = error[near[0], near[1]]
    g = np.exp(-(np.arange(-3, 4)[:, None] ** 2 + np.arange(-3, 4)[None, :] ** 2) / 50.0)
    g /= g.sum()
    padded = np.pad(dependent, 3)
    smoothed = np.array([[(padded[r:r + 7, c:c + 7] * g).sum() for c in range(cols)] for r in range(rows)])
    least = np.where(truth & (smoothed < error), smoothed, error)
    weighted = least * np.where(truth, 1.0, 2 - 0.5 ** (distance / 5))
    tp = truth.sum() - weighted[truth].sum()
    fp = weighted[~truth].sum()
    recall, precision = 1 - weighted[truth].mean(), tp / (tp + fp)
    return 2 * recall * precision / (recall + precision)


def test_weighted_f_equals_its_definition_read_pixel_by_pixel():
    rng = np.random.default_rng(3)
    truth = np.zeros((14, 17), bool)
    truth[3:8, 4:11] = True
    truth[11, 14] = True
    # errors the same at equidistant object pixels, so the nearest pixel's choice does not matter
    pred = np.where(truth, 0.7, 0.0) + np.where(truth, 0.0, rng.random(truth.shape) * 0.3)
    assert P.weighted_f_measure(pred, truth) == pytest.approx(_loop_weighted_f(pred, truth), rel=1e-9)
    assert P.weighted_f_measure(truth.astype(float), truth) == pytest.approx(1.0)
    # nothing predicted: near 0, not 0, as the zero padding of the smoothing lowers the error by the border
    nothing = P.weighted_f_measure(np.zeros(truth.shape), truth)
    assert nothing == pytest.approx(_loop_weighted_f(np.zeros(truth.shape), truth), rel=1e-9) and 0 < nothing < 0.05
    assert math.isnan(P.weighted_f_measure(pred, np.zeros(truth.shape, bool)))  # no object: undefined


def test_s_measure_by_hand():
    truth = np.zeros((20, 20), bool)
    truth[4:12, 5:15] = True  # 20% object; centroid at row 8.5, column 10.5 (1-based), rounded up to 9 and 11
    assert P.s_measure(truth.astype(float), truth) == pytest.approx(1.0)
    # nothing predicted: objects 0.2 x 0 + 0.8 x 1; every quadrant holds object and background, each scoring 0
    assert P.s_measure(np.zeros(truth.shape), truth) == pytest.approx(0.5 * 0.8)
    pred = np.full(truth.shape, 0.25)
    assert P.s_measure(pred, np.zeros(truth.shape, bool)) == pytest.approx(0.75)  # no object: 1 - mean
    assert P.s_measure(pred, np.ones(truth.shape, bool)) == pytest.approx(0.25)  # all object: the mean
    # a constant map in the object and in the background: the object term from means alone
    pred = np.where(truth, 0.8, 0.1)
    object_term = 0.2 * (2 * 0.8 / (0.64 + 1)) + 0.8 * (2 * 0.9 / (0.81 + 1))
    # quadrants: the prediction is a linear map of the truth, so each mixed quadrant's SSIM term is
    # 4 x y s_xy / ((x^2 + y^2)(s_x + s_y)) with s_x = 0.49 s_y, s_xy = 0.7 s_y and x = 0.1 + 0.7 y
    region = 0.0
    for rows, cols in ((slice(0, 9), slice(0, 11)), (slice(0, 9), slice(11, 20)),
                       (slice(9, 20), slice(0, 11)), (slice(9, 20), slice(11, 20))):
        y = truth[rows, cols].mean()
        x = 0.1 + 0.7 * y
        region += truth[rows, cols].size / 400 * 4 * x * y * 0.7 / ((x * x + y * y) * (1 + 0.49))
    assert P.s_measure(pred, truth) == pytest.approx(0.5 * object_term + 0.5 * region, rel=1e-9)


def test_image_scores_and_summary():
    pred, truth = _maps(2)
    record = P.image_scores("a", (pred * 255).astype(np.uint8), truth.astype(np.uint8) * 255, group="Kvasir")
    assert record["mean_dice"] == pytest.approx(record["dice_curve"].mean())
    assert record["mae"] == pytest.approx(np.abs(P.normalise_map((pred * 255).astype(np.uint8)) - truth).mean())
    perfect = P.image_scores("b", truth.astype(float), truth, group="ETIS")
    # a binary map equal to its truth: Dice 1 at every threshold but 0, where every pixel is foreground
    assert perfect["mean_dice"] == pytest.approx((255 + 2 * truth.sum() / (truth.size + truth.sum())) / 256)
    assert (perfect["s_alpha"], perfect["weighted_f"], perfect["mae"]) == pytest.approx((1.0, 1.0, 0.0))
    summary = P.summarize([record, perfect])
    assert list(summary["groups"]) == ["Kvasir", "ETIS"] and summary["overall"]["n_images"] == 2
    assert summary["overall"]["e_max"] == pytest.approx(((record["e_curve"] + perfect["e_curve"]) / 2).max())
    assert summary["overall"]["mean_dice"] == pytest.approx((record["mean_dice"] + perfect["mean_dice"]) / 2)
    # as an evaluator's metrics: overall and per test set
    metrics = P.summary_metrics(summary)
    assert metrics["pranet_s_alpha"] == pytest.approx(summary["overall"]["s_alpha"])
    assert metrics["ETIS/pranet_mae"] == pytest.approx(0.0) and metrics["Kvasir/pranet_e_max"] == pytest.approx(
        summary["groups"]["Kvasir"]["e_max"])
    assert len(metrics) == 3 * 7 and len(P.summary_metrics(P.summarize([record]))) == 7
    with pytest.raises(ValueError, match="differ in size"):
        P.image_scores("c", pred[:5], truth)


def test_score_reads_probability_maps_by_the_pranet_protocol_too(tmp_path):
    """``score`` on grey-level probability maps, as PraNet and its successors save them: the bundle's report at half
    scale and, beside it, the PraNet-protocol report per test set; binary masks get no such report."""
    import json
    from pathlib import Path

    from PIL import Image

    from vmunet_monai.data import demo_data, prepare
    from vmunet_monai.evaluation.score import score

    demo_data("polyp_seg", str(tmp_path / "raw"), num=12)
    prepare("polyp_seg", str(tmp_path / "raw"), str(tmp_path / "prepared"))
    items = json.loads((tmp_path / "prepared" / "datalist.json").read_text())["test"]
    rng = np.random.default_rng(0)
    expected = []
    for item in items:
        image = (tmp_path / "prepared" / item["image"]).resolve()
        label = np.asarray(Image.open((tmp_path / "prepared" / item["label"]).resolve()))
        grey = np.clip(label * 0.6 + rng.random(label.shape) * 100, 0, 255).astype(np.uint8)
        target = tmp_path / "maps" / image.parent.parent.name / image.parent.name / f"{image.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grey).save(target)
        expected.append(P.image_scores(item["name"], grey, label, group=item["dataset"]))
        target = tmp_path / "binary" / image.parent.parent.name / image.parent.name / f"{image.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(target)
    summary = score(tmp_path / "maps", tmp_path / "prepared", out=tmp_path / "s")
    stored = json.loads((tmp_path / "s" / "metrics_test_pranet_summary.json").read_text())
    assert set(stored["groups"]) == {item["dataset"] for item in items}
    assert stored["overall"]["mean_dice"] == pytest.approx(np.mean([r["mean_dice"] for r in expected]))
    assert stored["overall"]["s_alpha"] == pytest.approx(np.mean([r["s_alpha"] for r in expected]))
    assert summary["pranet"]["mae"] == pytest.approx(np.mean([r["mae"] for r in expected]))
    assert Path(summary["paths"]["pranet_plot"]).is_file()
    score(tmp_path / "binary", tmp_path / "prepared", out=tmp_path / "b")
    assert not list((tmp_path / "b").glob("*pranet*"))
