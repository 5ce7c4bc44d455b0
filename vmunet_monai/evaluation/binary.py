"""Binary segmentation metrics the way the VM-UNet papers report them, and the per-image view beside them.

Two families, always labelled:

- **pooled** (paper-compatible): one confusion matrix over every pixel of every image in a test set,
  prediction and ground truth binarised at 0.5; DSC = 2TP/(2TP+FP+FN), "mIoU" = TP/(TP+FP+FN)
  (foreground IoU, which the papers call mIoU), Acc, Sen (recall), Spe. A ratio whose denominator is
  zero is reported as 0, as the official code does.
- **per-image**: Dice and IoU of each image, then mean and sample standard deviation over images.
  An image whose ground truth and prediction are both empty scores 1 (nothing to find, nothing found).

Records are plain dicts (``name``, ``group``, ``tp``, ``fp``, ``fn``, ``tn``), so the same functions
serve an ignite handler, a script or a notebook.

Masks of several classes give one record per image and class (with a ``class`` field), each class
scored as its own binary mask. The summary then reports every class apart (``classes``), and its
``overall`` and ``groups`` entries average the classes: pooled over the pixels of every class
(their confusion matrices summed), and per image the mean over classes. A class absent from both an image's
ground truth and its prediction scores 1 in that mean; ``*_present`` beside each per-image value leaves such
classes out (a class the network predicts where there is none still scores 0), so classes that most images
lack do not lift the mean.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "POOLED_LABEL",
    "PER_IMAGE_LABEL",
    "POOLED_LABEL_CLASSES",
    "PER_IMAGE_LABEL_CLASSES",
    "confusion_counts",
    "pooled_metrics",
    "image_dice_iou",
    "make_record",
    "mean_sd",
    "mean_over_classes",
    "summarize",
    "summary_metrics",
    "format_summary",
    "metric_key",
    "scalar_metrics",
    "write_report",
]

POOLED_LABEL = (
    "pooled over all pixels of the set (paper-compatible): one confusion matrix at threshold 0.5; "
    "miou is the foreground IoU TP/(TP+FP+FN) that the papers call mIoU"
)
PER_IMAGE_LABEL = "per image, then mean and sample standard deviation over images (both-empty image scores 1)"
POOLED_LABEL_CLASSES = (
    "pooled over all pixels of the set and every class (the classes' confusion matrices summed); "
    "miou is TP/(TP+FP+FN) of that sum"
)
PER_IMAGE_LABEL_CLASSES = ("per image the mean over classes (a class absent from both ground truth and prediction "
                           "scores 1), then mean and sample standard deviation over images")
PRESENT_LABEL = ("as per image, but each image's mean over the classes in its ground truth or its prediction only "
                 "(an image with none scores 1)")


def _as_bool(x, threshold: float) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32) >= threshold


def confusion_counts(pred, target, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """Pixel counts (TP, FP, FN, TN) of one prediction against its ground truth.

    Args:
        pred: probabilities or a binary mask (tensor or array, any shape).
        target: ground truth of the same number of elements (0/1, or soft values).
        threshold: both are foreground where ``>= threshold``.

    Raises:
        ValueError: if the sizes differ.
    """
    p, t = _as_bool(pred, threshold), _as_bool(target, threshold)
    if p.size != t.size:
        raise ValueError(f"prediction has {p.size} elements ({p.shape}) but ground truth has {t.size} ({t.shape})")
    p, t = p.reshape(-1), t.reshape(-1)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return tp, fp, fn, int(p.size - tp - fp - fn)


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def pooled_metrics(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | None]:
    """The paper's metrics from one confusion matrix: ``miou`` (foreground IoU), ``dsc``, ``accuracy``,
    ``sensitivity``, ``specificity``. One whose denominator is 0 is undefined, None (``null`` in the JSON report,
    ``n/a`` in the table): ``dsc`` and ``miou`` of a set with no foreground in the ground truth nor the
    prediction (BUSI's normal scans segmented as empty; it printed DSC 0 for a set segmented exactly),
    ``sensitivity`` of a set without foreground."""
    return {
        "miou": _ratio(tp, tp + fp + fn),
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def image_dice_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """Dice and IoU of one image; both 1 when ground truth and prediction are empty."""
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def make_record(name: str, pred, target, group: str = "all", threshold: float = 0.5, cls: str | None = None) -> dict:
    """One per-image record: name, group, confusion counts, Dice and IoU (and ``class`` when ``cls`` is given:
    one class of a mask of several)."""
    tp, fp, fn, tn = confusion_counts(pred, target, threshold)
    dice, iou = image_dice_iou(tp, fp, fn)
    record = {"name": str(name), "group": str(group), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "dice": dice, "iou": iou}
    if cls is not None:
        record["class"] = str(cls)
    return record


def mean_over_classes(rows: Sequence[dict], metric: str, present_only: bool = False) -> float:
    """One image's ``metric`` averaged over its classes' records.

    Args:
        rows: the image's records, one per class (``tp``, ``fp``, ``fn`` and ``metric``).
        metric: ``dice`` or ``iou``.
        present_only: leave out the classes absent from both ground truth and prediction (which score 1);
            an image with no class present scores 1, like a binary image with nothing to find.
    """
    if present_only:
        rows = [r for r in rows if r["tp"] + r["fp"] + r["fn"] > 0]
        if not rows:
            return 1.0
    return float(np.mean([r[metric] for r in rows]))


def _per_image(records: Sequence[dict]) -> list[dict]:
    """Records of several classes merged into one per image: counts summed, Dice and IoU averaged over classes
    (and over the classes present, as ``dice_present`` and ``iou_present``)."""
    merged: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        merged.setdefault((r["group"], r["name"]), []).append(r)
    out = []
    for (group, name), rs in merged.items():
        entry = {"name": name, "group": group, **{k: sum(r[k] for r in rs) for k in ("tp", "fp", "fn", "tn")}}
        for metric in ("dice", "iou"):
            entry[metric] = mean_over_classes(rs, metric)
            entry[f"{metric}_present"] = mean_over_classes(rs, metric, present_only=True)
        out.append(entry)
    return out


def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the defined values; NaN for none."""
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _summarize_one(records: Sequence[dict]) -> dict:
    counts = {k: int(sum(r[k] for r in records)) for k in ("tp", "fp", "fn", "tn")}
    dice_mean, dice_sd = mean_sd([r["dice"] for r in records])
    iou_mean, iou_sd = mean_sd([r["iou"] for r in records])
    per_image = {"dice_mean": dice_mean, "dice_sd": dice_sd, "iou_mean": iou_mean, "iou_sd": iou_sd}
    if "dice_present" in records[0]:  # images merged over classes
        for metric in ("dice", "iou"):
            mean, sd = mean_sd([r[f"{metric}_present"] for r in records])
            per_image.update({f"{metric}_mean_present": mean, f"{metric}_sd_present": sd})
    return {
        "n_images": len(records),
        "pooled": pooled_metrics(**counts),
        "per_image": per_image,
        "confusion_matrix": counts,
    }


def summarize(records: Iterable[dict], title: str = "") -> dict:
    """Pooled and per-image metrics for all records and for each ``group`` (e.g. each polyp test set).

    Returns:
        ``{"title", "labels", "overall", "groups": {group: ...}}`` where each entry holds
        ``n_images``, ``pooled`` (miou, dsc, accuracy, sensitivity, specificity), ``per_image``
        (dice_mean, dice_sd, iou_mean, iou_sd) and the ``confusion_matrix`` counts.

    Raises:
        ValueError: if there are no records.
    """
    records = list(records)
    if not records:
        raise ValueError("no per-image records to summarise: the evaluated split was empty")

    def by_group(rs):
        groups: dict[str, list[dict]] = {}
        for r in rs:
            groups.setdefault(r["group"], []).append(r)
        return {"overall": _summarize_one(rs), "groups": {g: _summarize_one(v) for g, v in groups.items()}}

    if not any("class" in r for r in records):
        return {"title": title, "labels": {"pooled": POOLED_LABEL, "per_image": PER_IMAGE_LABEL}, **by_group(records)}
    classes: dict[str, list[dict]] = {}
    for r in records:
        classes.setdefault(r["class"], []).append(r)
    return {
        "title": title,
        "labels": {"pooled": POOLED_LABEL_CLASSES, "per_image": PER_IMAGE_LABEL_CLASSES, "present": PRESENT_LABEL,
                   "classes": "each class scored as its own binary mask: " + POOLED_LABEL + "; " + PER_IMAGE_LABEL},
        **by_group(_per_image(records)),
        "classes": {c: by_group(rs) for c, rs in classes.items()},
    }


def metric_key(name: str) -> str:
    """``name`` as a metric name that every tracker takes (MLflow allows letters, digits and ``_-. :/``): other
    characters, as in a test set or class named by its folder, become ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(name))


def scalar_metrics(values: dict) -> dict[str, float]:
    """The finite numbers of ``values`` (numbers, one-element tensors) as floats under :func:`metric_key` names;
    None, NaN and the rest left out."""
    flat = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
            continue
        if math.isfinite(number):
            flat[metric_key(key)] = number
    return flat


def summary_metrics(summary: dict) -> dict[str, float]:
    """A :func:`summarize` result as an evaluator's ``state.metrics`` (what the stats and tracking handlers log):
    ``pooled_dsc``, ``pooled_miou``, ``image_dice_mean`` and ``image_iou_mean`` over everything, and the same under
    ``<set>/`` for each of several test sets and under ``<class>/`` for each of several classes."""
    def four(prefix: str, block: dict) -> dict:
        pooled, per_image = block.get("pooled") or {}, block.get("per_image") or {}
        return {f"{prefix}pooled_dsc": pooled.get("dsc"), f"{prefix}pooled_miou": pooled.get("miou"),
                f"{prefix}image_dice_mean": per_image.get("dice_mean"),
                f"{prefix}image_iou_mean": per_image.get("iou_mean")}

    values = four("", summary["overall"])
    groups = summary.get("groups") or {}
    if len(groups) > 1:
        for name, block in groups.items():
            values.update(four(f"{name}/", block))
    for name, by_group in (summary.get("classes") or {}).items():
        values.update(four(f"{name}/", by_group["overall"]))
    return scalar_metrics(values)


def format_summary(summary: dict) -> str:
    """A fixed-width table of a :func:`summarize` result, one row per group (and one for all when several), then
    one per class for masks of several classes."""
    entries = list(summary["groups"].items())
    classes = summary.get("classes") or {}
    if len(entries) > 1 or classes:
        entries.append(("all sets together" if len(entries) > 1 else "all classes", summary["overall"]))
    entries += [(f"class {c}", v["overall"]) for c, v in classes.items()]
    width = max([22] + [len(str(name)) + 1 for name, _ in entries])  # long set names (ISIC2017 seborrheic keratosis)
    head = (f"{'set':<{width}}{'n':>5} | pooled: {'mIoU':>6} {'DSC':>6} {'Acc':>6} {'Sen':>6} {'Spe':>6} "
            f"| per image: {'Dice mean±sd':>15} {'IoU mean±sd':>15}")
    rows = ([summary["title"]] if summary.get("title") else []) + [head, "-" * len(head)]
    for name, s in entries:
        p, q = s["pooled"], s["per_image"]
        rows.append(
            f"{name:<{width}}{s['n_images']:>5} | pooled: "
            + " ".join(_cell(p[k]) for k in ("miou", "dsc", "accuracy", "sensitivity", "specificity"))
            + f" | per image: {q['dice_mean']:7.4f}±{q['dice_sd']:.4f} {q['iou_mean']:7.4f}±{q['iou_sd']:.4f}"
        )
        if "dice_mean_present" in q:
            rows.append(f"{'  classes present only':<{width + 5}} | {'':<42} | per image: {q['dice_mean_present']:7.4f}±"
                        f"{q['dice_sd_present']:.4f} {q['iou_mean_present']:7.4f}±{q['iou_sd_present']:.4f}")
    labels = summary.get("labels", {})
    rows.append("pooled = " + labels.get("pooled", POOLED_LABEL))
    rows.append("per image = " + labels.get("per_image", PER_IMAGE_LABEL))
    if classes:
        rows.append("classes present only = " + labels.get("present", PRESENT_LABEL))
        rows.append("class rows = " + labels["classes"])
    return "\n".join(rows)


def _cell(value: float | None) -> str:
    """A pooled value in the table's 6 characters; ``n/a`` where it is undefined (:func:`pooled_metrics`)."""
    return f"{'n/a':>6}" if value is None else f"{value:6.4f}"


def _plot(summary: dict, records: Sequence[dict], path: Path) -> None:
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()

    classes = summary.get("classes")
    # several classes: one bar group and one box per class (over all sets); else one per set
    entries = {c: v["overall"] for c, v in classes.items()} if classes else summary["groups"]
    member = (lambda r, n: r.get("class") == n) if classes else (lambda r, n: r["group"] == n)
    names = list(entries)
    fig, (ax_bar, ax_box) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(names) + 4), 4))
    x = np.arange(len(names))
    width = 0.27
    undefined = lambda v: math.nan if v is None else v  # noqa: E731 - an undefined pooled value: no bar
    pooled_dsc = [undefined(entries[n]["pooled"]["dsc"]) for n in names]
    pooled_iou = [undefined(entries[n]["pooled"]["miou"]) for n in names]
    img_dice = [entries[n]["per_image"]["dice_mean"] for n in names]
    img_sd = [entries[n]["per_image"]["dice_sd"] for n in names]
    ax_bar.bar(x - width, pooled_dsc, width, label="pooled DSC")
    ax_bar.bar(x, pooled_iou, width, label="pooled mIoU (foreground IoU)")
    ax_bar.bar(x + width, img_dice, width, yerr=img_sd, capsize=3, label="per-image Dice (mean ± sd)")
    ax_bar.set_xticks(x, names, rotation=20, ha="right")
    ax_bar.set_ylim(0, 1.05)
    ax_bar.set_title("metrics per class" if classes else "metrics per set")
    ax_bar.legend(fontsize=7, loc="lower right")
    ax_box.boxplot([[r["dice"] for r in records if member(r, n)] for n in names])
    ax_box.set_xticks(np.arange(1, len(names) + 1), names, rotation=20, ha="right")
    ax_box.set_ylim(0, 1.05)
    ax_box.set_title("per-image Dice")
    if summary.get("title"):
        fig.suptitle(summary["title"])
    fig.tight_layout()
    save(fig, path, dpi=100)


def write_report(records: Sequence[dict], output_dir: str | os.PathLike, prefix: str = "metrics",
                 title: str = "", plot: bool = True, extra: dict | None = None, worst=None) -> dict[str, str]:
    """Write ``<prefix>_per_image.csv``, ``<prefix>_summary.json`` (with the run's ``environment``,
    :func:`vmunet_monai.doctor.environment`, and the entries of ``extra``), ``<prefix>.png`` and, given the
    :class:`~vmunet_monai.evaluation.gallery.WorstCases` of the run, ``<prefix>_worst.png`` under ``output_dir``.

    Returns:
        paths by kind (``csv``, ``json``, ``plot``) and the ``summary`` dict itself under ``summary``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from vmunet_monai.doctor import environment

    summary = summarize(records, title)
    summary["environment"] = environment()  # versions, device and scan backend behind these numbers
    summary.update(extra or {})
    csv_path = out / f"{prefix}_per_image.csv"
    with open(csv_path, "w", newline="") as f:
        several = any("class" in r for r in records)
        writer = csv.DictWriter(f, fieldnames=["name", "group"] + (["class"] if several else [])
                                + ["dice", "iou", "tp", "fp", "fn", "tn"])
        writer.writeheader()
        for r in records:
            writer.writerow({k: r[k] for k in writer.fieldnames})
    json_path = out / f"{prefix}_summary.json"
    json_path.write_text(json.dumps(summary, indent=4) + "\n")
    paths = {"csv": str(csv_path), "json": str(json_path), "summary": summary}
    if plot:
        plot_path = out / f"{prefix}.png"
        _plot(summary, records, plot_path)
        paths["plot"] = str(plot_path)
    if plot and worst is not None and len(worst):
        names = list(dict.fromkeys(r["class"] for r in records if "class" in r)) or ["foreground"]
        heading = f"{title}: the images of the lowest Dice, worst first" if title else ""
        paths["worst"] = worst.plot(out / f"{prefix}_worst.png", title=heading, class_names=names)
    return paths
