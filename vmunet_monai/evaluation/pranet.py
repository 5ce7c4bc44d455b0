"""The polyp metrics of the PraNet lineage, from probability maps: so a table can stand beside the PraNet-protocol
tables of the literature, labelled as such.

The papers of that lineage (PraNet and its successors, evaluated with Deng-Ping Fan's MATLAB toolbox) do not score
a mask at threshold 0.5. They score the predicted probability map of each image, at the ground truth's size,
min-max normalised per image, against the binary ground truth:

- **mean Dice** and **mean IoU**: each image's Dice (IoU) at 256 thresholds (1, 254/255, ..., 0; foreground where
  the map is at least the threshold), averaged over the thresholds, then over the images;
- **S-alpha** (structure measure, Fan et al. 2017): 0.5 x object-aware similarity (foreground and background
  separately) + 0.5 x region-aware similarity (an SSIM-like score in four quadrants around the ground truth's
  centroid);
- **weighted F-beta** (Margolin et al. 2014, beta^2 = 1): errors weighted by their distance to the object and
  smoothed by a 7x7 Gaussian (sigma 5), so a diffuse error costs less than a structured one;
- **E-phi** (enhanced alignment, Fan et al. 2018) at each threshold; its **maximum** over the thresholds of the
  mean over images (E-phi max, as the tables report it) and its **mean**;
- **MAE**: mean absolute difference between the map and the ground truth.

These numbers are not comparable with the bundle's own (pooled confusion-matrix DSC and per-image Dice at 0.5),
and never replace them; the report says which is which. An image whose ground truth is empty has no weighted
F-beta (it is left out of that mean and counted); the other measures define that case.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["THRESHOLDS", "e_measure_curve", "format_summary", "image_scores", "normalise_map", "overlap_curves",
           "s_measure", "summarize", "summary_metrics", "weighted_f_measure", "write_report"]

THRESHOLDS = np.linspace(1.0, 0.0, 256)  # 1, 254/255, ..., 0
EPS = np.finfo(np.float64).eps
PER_IMAGE = ("mean_dice", "mean_iou", "s_alpha", "weighted_f", "e_max", "e_mean", "mae")


def normalise_map(prediction) -> np.ndarray:
    """A probability map (0-1) or a grey-level map (0-255) as float64 in [0, 1], min-max normalised per image as the
    toolbox does (a constant map is left at its value)."""
    p = np.asarray(prediction, dtype=np.float64)
    if p.size and p.max() > 1.0:
        p = p / 255.0
    low, high = (float(p.min()), float(p.max())) if p.size else (0.0, 0.0)
    return (p - low) / (high - low) if high > low else np.clip(p, 0.0, 1.0)


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per threshold of :data:`THRESHOLDS`: the pixels at or above it, and those of them in the ground truth; then
    the pixel count and the ground truth's."""
    values = np.sort(pred.ravel())
    inside = np.sort(pred[truth].ravel())
    positive = values.size - np.searchsorted(values, THRESHOLDS, side="left")
    hits = inside.size - np.searchsorted(inside, THRESHOLDS, side="left")
    return positive.astype(np.float64), hits.astype(np.float64), int(values.size), int(inside.size)


def overlap_curves(pred: np.ndarray, truth: np.ndarray, counts=None) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU at each threshold (an empty prediction of an empty ground truth scores 1); ``counts``: the
    pixel counts already taken for these two maps."""
    positive, hits, _, total = counts if counts is not None else _counts(pred, truth)
    union = positive + total - hits
    dice = np.where(positive + total > 0, 2 * hits / np.maximum(positive + total, 1), 1.0)
    iou = np.where(union > 0, hits / np.maximum(union, 1), 1.0)
    return dice, iou


def e_measure_curve(pred: np.ndarray, truth: np.ndarray, counts=None) -> np.ndarray:
    """E-phi of the map binarised at each threshold. A binary map and a binary ground truth give four kinds of pixel
    (hit, false alarm, miss, correct rejection), so the enhanced-alignment matrix takes four values, weighted here by
    how many pixels of each kind there are."""
    positive, hits, n, total = counts if counts is not None else _counts(pred, truth)
    denominator = n - 1 + EPS
    if total == 0:  # no object: the score is the share of pixels left empty
        return (n - positive) / denominator
    if total == n:  # all object: the share of pixels found
        return positive / denominator
    mean_fm, mean_gt = positive / n, total / n
    score = np.zeros_like(positive)
    kinds = ((1.0, 1.0, hits), (1.0, 0.0, positive - hits), (0.0, 1.0, total - hits),
             (0.0, 0.0, n - positive - total + hits))
    for fm, gt, count in kinds:
        align_fm, align_gt = fm - mean_fm, gt - mean_gt
        align = 2 * align_gt * align_fm / (align_gt ** 2 + align_fm ** 2 + EPS)
        score += count * (align + 1) ** 2 / 4
    return score / denominator


def _object(values: np.ndarray) -> float:
    mean = float(values.mean())
    spread = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return 2 * mean / (mean * mean + 1 + spread + EPS)


def _ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    n = pred.size
    if n == 0:
        return 0.0
    x, y = float(pred.mean()), float(truth.mean())
    sigma_x = float(((pred - x) ** 2).sum()) / (n - 1 + EPS)
    sigma_y = float(((truth - y) ** 2).sum()) / (n - 1 + EPS)
    sigma_xy = float(((pred - x) * (truth - y)).sum()) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x + sigma_y)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def s_measure(pred: np.ndarray, truth: np.ndarray, alpha: float = 0.5) -> float:
    """S-alpha of a map in [0, 1] against a boolean ground truth."""
    share = float(truth.mean())
    if share == 0:
        return 1.0 - float(pred.mean())
    if share == 1:
        return float(pred.mean())
    objects = share * _object(pred[truth]) + (1 - share) * _object(1.0 - pred[~truth])
    rows, cols = truth.shape
    total = float(truth.sum())
    # the centroid, counted in pixels from the top left as the toolbox counts it (rounded half up)
    x = int(math.floor(float((truth.sum(axis=0) * np.arange(1, cols + 1)).sum()) / total + 0.5))
    y = int(math.floor(float((truth.sum(axis=1) * np.arange(1, rows + 1)).sum()) / total + 0.5))
    area = rows * cols
    weights = (x * y / area, (cols - x) * y / area, x * (rows - y) / area)
    weights = (*weights, 1.0 - sum(weights))
    quadrants = ((slice(0, y), slice(0, x)), (slice(0, y), slice(x, None)),
                 (slice(y, None), slice(0, x)), (slice(y, None), slice(x, None)))
    regions = sum(w * _ssim(pred[q], truth[q].astype(np.float64)) for w, q in zip(weights, quadrants))
    return max(0.0, alpha * objects + (1 - alpha) * regions)


def _gaussian(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma * sigma))
    kernel[kernel < EPS * kernel.max()] = 0
    return kernel / kernel.sum()


def weighted_f_measure(pred: np.ndarray, truth: np.ndarray, beta2: float = 1.0) -> float:
    """Weighted F-beta of a map in [0, 1] against a boolean ground truth; NaN where the ground truth is empty."""
    from scipy.ndimage import correlate, distance_transform_edt

    if not truth.any():
        return math.nan
    error = np.abs(pred - truth)
    distance, (near_r, near_c) = distance_transform_edt(~truth, return_indices=True)  # to the nearest object pixel
    dependent = error.copy()
    dependent[~truth] = error[near_r[~truth], near_c[~truth]]  # a background pixel shares its nearest object error
    smoothed = correlate(dependent, _gaussian(), mode="constant", cval=0.0)
    least = error.copy()
    lower = truth & (smoothed < error)
    least[lower] = smoothed[lower]
    importance = np.ones_like(error)
    importance[~truth] = 2 - np.exp(math.log(0.5) / 5 * distance[~truth])
    weighted = least * importance
    true_positive = float(truth.sum()) - float(weighted[truth].sum())
    false_positive = float(weighted[~truth].sum())
    recall = 1 - float(weighted[truth].mean())
    precision = true_positive / (EPS + true_positive + false_positive)
    return (1 + beta2) * recall * precision / (EPS + recall + beta2 * precision)


def image_scores(name: str, prediction, truth, group: str = "all") -> dict:
    """Every measure of one image: ``prediction`` a probability or grey-level map, ``truth`` a mask (foreground
    where it is at least half its scale: above 0.5, or 127 for 0-255 masks), both of one (H, W) size."""
    truth = np.asarray(truth)
    truth = truth > (127 if truth.size and truth.max() > 1 else 0.5)
    pred = normalise_map(prediction)
    if pred.shape != truth.shape:
        raise ValueError(f"{name}: map {pred.shape} and ground truth {truth.shape} differ in size")
    counts = _counts(pred, truth)
    dice, iou = overlap_curves(pred, truth, counts)
    e_curve = e_measure_curve(pred, truth, counts)
    return {"name": str(name), "group": str(group), "dice_curve": dice, "iou_curve": iou, "e_curve": e_curve,
            "mean_dice": float(dice.mean()), "mean_iou": float(iou.mean()), "s_alpha": s_measure(pred, truth),
            "weighted_f": weighted_f_measure(pred, truth), "e_max": float(e_curve.max()),
            "e_mean": float(e_curve.mean()), "mae": float(np.abs(pred - truth).mean())}


def _summary_one(records: Sequence[dict]) -> dict:
    dice = np.mean([r["dice_curve"] for r in records], axis=0)
    e_curve = np.mean([r["e_curve"] for r in records], axis=0)
    weighted = [r["weighted_f"] for r in records if not math.isnan(r["weighted_f"])]
    return {"n_images": len(records),
            "mean_dice": float(np.mean([r["mean_dice"] for r in records])),
            "mean_iou": float(np.mean([r["mean_iou"] for r in records])),
            "weighted_f": float(np.mean(weighted)) if weighted else math.nan,
            "weighted_f_n": len(weighted),
            "s_alpha": float(np.mean([r["s_alpha"] for r in records])),
            "e_max": float(e_curve.max()), "e_mean": float(e_curve.mean()),
            "mae": float(np.mean([r["mae"] for r in records])),
            "max_dice": float(dice.max()), "best_threshold": float(THRESHOLDS[int(dice.argmax())])}


def summarize(records: Iterable[dict], title: str = "") -> dict:
    """The measures over all images and per group (test set); E-phi max and max Dice are maxima over the thresholds
    of means over the images."""
    records = list(records)
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    return {"title": title, "protocol": "PraNet lineage: probability maps at the ground truth's size, min-max "
            "normalised per image, 256 thresholds (mean Dice, mean IoU, E-phi) and S-alpha, weighted F-beta, MAE",
            "overall": _summary_one(records), "groups": {g: _summary_one(rs) for g, rs in groups.items()}}


def summary_metrics(summary: dict) -> dict[str, float]:
    """A :func:`summarize` result as an evaluator's ``state.metrics``: ``pranet_<measure>`` over all images (mean Dice
    and IoU, weighted F-beta, S-alpha, E-phi max and mean, MAE) and under ``<set>/`` for each of several test sets."""
    from vmunet_monai.evaluation.binary import scalar_metrics

    measures = ("mean_dice", "mean_iou", "weighted_f", "s_alpha", "e_max", "e_mean", "mae")
    blocks = [("", summary["overall"])]
    if len(summary.get("groups") or {}) > 1:
        blocks += [(f"{name}/", block) for name, block in summary["groups"].items()]
    return scalar_metrics({f"{prefix}pranet_{m}": block.get(m) for prefix, block in blocks for m in measures})


def format_summary(summary: dict) -> str:
    """The table of the PraNet-lineage papers: one row per test set."""
    head = f"{'set':<22} {'n':>4} | {'mDice':>6} {'mIoU':>6} {'wFb':>6} {'Sa':>6} {'maxEa':>6} {'meanEa':>6} {'MAE':>6}"
    lines = [summary.get("title") or "PraNet-protocol metrics", head, "-" * len(head)]
    rows = list(summary["groups"].items()) + ([("all", summary["overall"])] if len(summary["groups"]) > 1 else [])
    for name, s in rows:
        lines.append(f"{name:<22} {s['n_images']:>4} | {s['mean_dice']:6.4f} {s['mean_iou']:6.4f} "
                     f"{s['weighted_f']:6.4f} {s['s_alpha']:6.4f} {s['e_max']:6.4f} {s['e_mean']:6.4f} {s['mae']:6.4f}")
    lines.append("PraNet protocol (from probability maps, 256 thresholds): not the pooled DSC or the per-image Dice "
                 "at 0.5 of the bundle's own report")
    return "\n".join(lines)


def _plot(records: Sequence[dict], summary: dict, path: Path) -> None:
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()

    fig, (ax_dice, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    for group in summary["groups"]:
        members = [r for r in records if r["group"] == group]
        ax_dice.plot(THRESHOLDS, np.mean([r["dice_curve"] for r in members], axis=0), label=group)
        ax_e.plot(THRESHOLDS, np.mean([r["e_curve"] for r in members], axis=0), label=group)
    for ax, what in ((ax_dice, "mean Dice"), (ax_e, "mean E-phi")):
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("threshold on the normalised map")
        ax.set_title(f"{what} at each threshold")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if summary.get("title"):
        fig.suptitle(summary["title"], fontsize=10)
    fig.tight_layout()
    save(fig, path, dpi=100)


def write_report(records: Sequence[dict], output_dir: str | os.PathLike, prefix: str = "metrics",
                 title: str = "") -> dict:
    """Write ``<prefix>_pranet_per_image.csv``, ``<prefix>_pranet_summary.json`` and ``<prefix>_pranet.png``
    (mean Dice and E-phi against the threshold, per set) under ``output_dir``.

    Returns:
        paths by kind (``csv``, ``json``, ``plot``) and the summary under ``summary``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records, title)
    csv_path = out / f"{prefix}_pranet_per_image.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "group", *PER_IMAGE])
        for r in records:
            writer.writerow([r["name"], r["group"], *("" if math.isnan(r[k]) else f"{r[k]:.6g}" for k in PER_IMAGE)])
    from vmunet_monai.evaluation.ct import _nan_to_none

    json_path = out / f"{prefix}_pranet_summary.json"
    json_path.write_text(json.dumps(_nan_to_none(summary), indent=4) + "\n")
    plot_path = out / f"{prefix}_pranet.png"
    _plot(records, summary, plot_path)
    return {"csv": str(csv_path), "json": str(json_path), "plot": str(plot_path), "summary": summary}
