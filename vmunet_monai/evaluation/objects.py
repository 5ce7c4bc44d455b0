"""Object-level scores of 2D segmentations, as the GlaS gland-segmentation challenge defines them.

Pixel Dice says how much area is right; it does not say whether touching glands (or cells, or polyps) came out
as separate objects. These scores do, from predicted masks and ground truths that number each object:

- **F1**: a predicted object is a true positive when it covers at least half of the ground-truth object it
  overlaps most; other predicted objects are false positives, and ground-truth objects with no such match
  are false negatives. F1 = 2TP / (2TP + FP + FN), per image and pooled over a set (counts summed).
- **object Dice**: every ground-truth object is scored against the predicted object overlapping it most (Dice 0
  when none does), weighted by its area; every predicted object likewise against the ground truth; the two
  weighted means are averaged. A merge or a split costs Dice here, where pixel Dice hardly notices it.
- **object Hausdorff** (pixels): the same two weighted means of the Hausdorff distance, where an object that
  overlaps nothing is paired with the nearest object of the other side. Undefined (NaN, counted apart) when one
  side of an image has no object at all.

An image with no object in either scores F1 1, object Dice 1 and Hausdorff 0 (nothing to find, nothing found).

Masks are read as :func:`read_objects` says: a mask of two values is split into connected objects (8-connected),
one of more values has one object per value (GlaS's ``_anno.bmp``, instance masks of cell datasets).
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmunet_monai.evaluation.score import default_out
from vmunet_monai.validation import LOSSY_EXTENSIONS, InputError, upright

__all__ = ["LABEL", "SoftEdgeWarning", "read_objects", "label_components", "split_touching", "write_objects", "object_scores",
           "match_files", "summarize_objects", "format_objects", "run_objects"]

LABEL = {
    "f1": "a predicted object covering >= 50% of the ground-truth object it overlaps most is a true positive; "
          "F1 = 2TP/(2TP+FP+FN)",
    "object_dice": "area-weighted Dice of each object against the one of the other side it overlaps most, the "
                   "ground truth's and the prediction's means averaged (GlaS)",
    "object_hausdorff": "the same weighting of Hausdorff distances in pixels, an object without overlap paired "
                        "with the nearest one; undefined when one side of an image has no object",
    "dice": "pixel Dice of the foreground, for comparison",
    "pooled": "counts and area-weighted sums over every image of the set",
    "per_image": "per image, then mean and sample standard deviation over images",
}
_LOSSY = LOSSY_EXTENSIONS
PER_IMAGE_CSV, SUMMARY_JSON = "objects_per_image.csv", "objects_summary.json"


def label_components(foreground: np.ndarray) -> np.ndarray:
    """Connected objects of a boolean mask (8-connected), numbered 1, 2, ... in an int32 array."""
    import SimpleITK as sitk

    if not foreground.any():
        return np.zeros(foreground.shape, np.int32)
    image = sitk.GetImageFromArray(foreground.astype(np.uint8))
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True)).astype(np.int32)


def read_objects(path: str | os.PathLike, foreground: int | None = None) -> np.ndarray:
    """The objects of a mask file as an int32 map: 0 background, 1..n one number per object.

    - Two values (0/255, 0/1, or a single object's number): the foreground split into connected objects.
    - More values: one object per non-zero value (an instance mask). Colour masks are told apart by colour.
    - JPEG masks are lossy, so their values are not trusted: the foreground is what is at least half the mask's
      scale, split into connected objects.
    - ``foreground`` given (a class map): the pixels holding that value, split into connected objects.

    Raises:
        InputError: the file cannot be read as a 2D mask (naming it and why), or ``foreground`` for a JPEG.
    """
    from PIL import Image, UnidentifiedImageError

    lossy = Path(path).suffix.lower() in _LOSSY
    if lossy and foreground is not None:
        raise InputError(f"{path}: a JPEG's values are lossy, so the pixels of one class value ({foreground}) cannot "
                         f"be told from its neighbours'; give class maps as PNG (predict writes PNG)")
    try:
        with Image.open(path) as opened:
            image = upright(opened)
            if lossy:
                values = np.asarray(image.convert("L")).astype(np.int64)
            elif image.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):  # ImageJ saves big-endian 16 bits
                values = np.asarray(image).astype(np.int64)
            elif image.mode == "F":  # numbers stored as floats
                values = np.rint(np.asarray(image, dtype=np.float64)).astype(np.int64)
            else:
                rgb = np.asarray(image.convert("RGB")).astype(np.int64)
                values = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: cannot be read as a mask ({exc})") from None
    if values.ndim != 2:
        raise InputError(f"{path}: a mask is one 2D channel, got shape {values.shape}")
    if foreground is not None:
        return label_components(values == foreground)
    distinct = np.unique(values)
    if lossy:
        return label_components(values >= (127.5 if distinct.max() > 1 else 0.5))
    if distinct.size <= 2:
        return label_components(values > distinct[0] if distinct.size == 2 else values > 0)
    numbered = np.searchsorted(distinct, values).astype(np.int32)  # 0 .. k-1 in value order; 0 is background
    if distinct[0] != 0:
        raise InputError(f"{path}: an instance mask needs background 0, but its smallest value is {distinct[0]}")
    edge_only = _edge_only_values(numbered)
    if edge_only >= 3 and 2 * edge_only > distinct.size - 1:
        import warnings

        warnings.warn(SoftEdgeWarning(
            f"{path}: {edge_only} of its {distinct.size - 1} values lie only along edges, as the grey rim of a "
            "binary mask drawn smooth or resized has; each value is scored as an object (an instance mask), so "
            "save binary masks with two values (0 and 255, as predict writes them)"))
    return numbered


class SoftEdgeWarning(UserWarning):
    """A mask read as numbered objects looks like a binary mask whose edges hold grey levels."""


def _edge_only_values(numbered: np.ndarray) -> int:
    """How many object numbers of ``numbered`` line the edges of others (anti-aliasing, interpolation), not objects
    of their own: those with no pixel whose four neighbours hold the same number that touch another object. Specks
    of one or two pixels amid background (a noisy prediction, its objects numbered) are objects, not rims."""
    inner = np.zeros(numbered.shape, bool)
    inner[1:-1, 1:-1] = True
    core = numbered[1:-1, 1:-1]
    for shifted in (numbered[:-2, 1:-1], numbered[2:, 1:-1], numbered[1:-1, :-2], numbered[1:-1, 2:]):
        inner[1:-1, 1:-1] &= shifted == core
    thin = np.setdiff1d(np.unique(numbered[numbered > 0]), np.unique(numbered[inner]))
    touching = [np.unique(a[(a > 0) & (b > 0) & (a != b)]) for a, b in (
        (numbered[:, :-1], numbered[:, 1:]), (numbered[:, 1:], numbered[:, :-1]),
        (numbered[:-1], numbered[1:]), (numbered[1:], numbered[:-1]))]
    return int(np.intersect1d(thin, np.concatenate(touching)).size)


def _numbered(objects: np.ndarray) -> np.ndarray:
    """Object numbers made 1..n without gaps (0 stays background)."""
    values = np.unique(objects)
    if values[0] != 0:
        values = np.concatenate([[0], values])
    return np.searchsorted(values, objects).astype(np.int32)


def _sizes_and_overlaps(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object areas of both sides (index 0 unused) and the overlap matrix [truth object, predicted object]."""
    nt, np_ = int(truth.max()), int(pred.max())
    truth_area = np.bincount(truth.ravel(), minlength=nt + 1)
    pred_area = np.bincount(pred.ravel(), minlength=np_ + 1)
    both = (truth > 0) & (pred > 0)
    pairs = truth[both].astype(np.int64) * (np_ + 1) + pred[both]
    overlap = np.bincount(pairs, minlength=(nt + 1) * (np_ + 1)).reshape(nt + 1, np_ + 1)
    return truth_area, pred_area, overlap


def _right_objects(truth_area: np.ndarray, overlap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GlaS's true positives: for each predicted object 1..n, whether it covers at least half of the ground-truth
    object it overlaps most; and for each ground-truth object 1..m, whether such an object covers it (index 0 of
    both unused)."""
    nt, np_ = overlap.shape[0] - 1, overlap.shape[1] - 1
    right, found = np.zeros(np_ + 1, bool), np.zeros(nt + 1, bool)
    if nt and np_:
        partner = overlap[1:, 1:].argmax(axis=0)
        hits = overlap[1:, 1:][partner, np.arange(np_)]
        right[1:] = (hits > 0) & (2 * hits >= truth_area[1:][partner])
        found[partner[right[1:]] + 1] = True
    return right, found


def _boxes(objects: np.ndarray, count: int) -> np.ndarray:
    """Bounding box of each object 1..count as rows ``(y0, y1, x0, x1)`` (end exclusive); row 0 unused."""
    ys, xs = np.nonzero(objects)
    labels = objects[ys, xs]
    boxes = np.zeros((count + 1, 4), np.int64)
    boxes[:, 0] = boxes[:, 2] = np.iinfo(np.int64).max
    np.minimum.at(boxes[:, 0], labels, ys)
    np.maximum.at(boxes[:, 1], labels, ys + 1)
    np.minimum.at(boxes[:, 2], labels, xs)
    np.maximum.at(boxes[:, 3], labels, xs + 1)
    return boxes


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance in pixels from every pixel of the array to ``mask`` (0 inside)."""
    import SimpleITK as sitk

    signed = sitk.SignedMaurerDistanceMap(sitk.GetImageFromArray(mask.astype(np.uint8)), insideIsPositive=False,
                                          squaredDistance=False, useImageSpacing=False)
    return np.maximum(sitk.GetArrayFromImage(signed), 0.0)


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Hausdorff distance between two boolean masks of one (cropped) array."""
    return float(max(_distance_to(b)[a].max(), _distance_to(a)[b].max()))


def object_scores(truth: np.ndarray, pred: np.ndarray, hausdorff: bool = True) -> dict:
    """The object scores of one image (see the module's description).

    Args:
        truth: ground-truth objects, 0 background and 1..n (:func:`read_objects`).
        pred: predicted objects alike.
        hausdorff: also the object Hausdorff distance (one distance map per object).

    Returns:
        ``n_truth``, ``n_pred``, ``tp``, ``fp``, ``fn``, ``f1``, ``object_dice``, ``object_hausdorff`` (NaN when
        one side has no object, or not computed), ``dice`` (pixel Dice), and the area-weighted sums behind the
        pooled object Dice: ``truth_area``, ``truth_dice_sum``, ``pred_area``, ``pred_dice_sum``.
    """
    if truth.shape != pred.shape:
        raise ValueError(f"ground truth {truth.shape} and prediction {pred.shape} differ in size")
    truth, pred = _numbered(truth), _numbered(pred)
    truth_area, pred_area, overlap = _sizes_and_overlaps(truth, pred)
    nt, np_ = len(truth_area) - 1, len(pred_area) - 1
    inter = int(((truth > 0) & (pred > 0)).sum())
    fg = int(truth_area[1:].sum() + pred_area[1:].sum())
    scores = {"n_truth": nt, "n_pred": np_, "dice": 2 * inter / fg if fg else 1.0}
    truth_best, pred_best = np.zeros(nt), np.zeros(np_)
    if nt and np_:
        ov = overlap[1:, 1:]
        dice = 2 * ov / (truth_area[1:, None] + pred_area[None, 1:])
        t_partner, p_partner = ov.argmax(axis=1), ov.argmax(axis=0)  # the object of the other side overlapped most
        truth_best = np.where(ov.max(axis=1) > 0, dice[np.arange(nt), t_partner], 0.0)
        pred_best = np.where(ov.max(axis=0) > 0, dice[p_partner, np.arange(np_)], 0.0)
    tp = int(_right_objects(truth_area, overlap)[1].sum())  # ground-truth objects found by a right prediction
    scores.update(tp=tp, fp=np_ - tp, fn=nt - tp, f1=2 * tp / (nt + np_) if nt + np_ else 1.0)
    t_sum, p_sum = float((truth_area[1:] * truth_best).sum()), float((pred_area[1:] * pred_best).sum())
    t_area, p_area = int(truth_area[1:].sum()), int(pred_area[1:].sum())
    scores.update(truth_area=t_area, truth_dice_sum=t_sum, pred_area=p_area, pred_dice_sum=p_sum)
    if nt == 0 and np_ == 0:
        scores["object_dice"] = 1.0
    else:
        scores["object_dice"] = 0.5 * ((t_sum / t_area if t_area else 0.0) + (p_sum / p_area if p_area else 0.0))
    scores["object_hausdorff"] = _object_hausdorff(truth, pred, truth_area, pred_area, overlap) if hausdorff \
        else math.nan
    return scores


def _object_hausdorff(truth, pred, truth_area, pred_area, overlap) -> float:
    """Each pair's distance is computed inside the bounding box of the two objects alone (exact: both lie in it),
    and an object without overlap looks for its nearest partner in order of the gap between bounding boxes, a lower
    bound of the distance, stopping once the gap exceeds the best distance found: images of hundreds of cells take
    neither hundreds of full-size distance maps nor every pair."""
    nt, np_ = len(truth_area) - 1, len(pred_area) - 1
    if nt == 0 and np_ == 0:
        return 0.0
    if nt == 0 or np_ == 0:
        return math.nan
    t_box, p_box = _boxes(truth, nt), _boxes(pred, np_)
    cache: dict[tuple[int, int], float] = {}

    def h(i: int, j: int) -> float:  # truth object i + 1 against predicted object j + 1
        if (i, j) not in cache:
            a, b = t_box[i + 1], p_box[j + 1]
            y0, y1, x0, x1 = min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])
            cache[(i, j)] = _hausdorff(truth[y0:y1, x0:x1] == i + 1, pred[y0:y1, x0:x1] == j + 1)
        return cache[(i, j)]

    def gaps(box: np.ndarray, others: np.ndarray) -> np.ndarray:
        dy = np.maximum(0, np.maximum(others[:, 0] - box[1] + 1, box[0] - others[:, 1] + 1))
        dx = np.maximum(0, np.maximum(others[:, 2] - box[3] + 1, box[2] - others[:, 3] + 1))
        return np.sqrt(dy.astype(np.float64) ** 2 + dx ** 2)

    def partner(row: np.ndarray, box: np.ndarray, others: np.ndarray, distance) -> float:
        if row.max() > 0:
            return distance(int(row.argmax()))
        bounds = gaps(box, others[1:])  # no overlap: the nearest object of the other side
        best = math.inf
        for k in np.argsort(bounds, kind="stable"):
            if bounds[k] >= best:
                break
            best = min(best, distance(int(k)))
        return best

    truth_side = sum(truth_area[i + 1] * partner(overlap[i + 1, 1:], t_box[i + 1], p_box, lambda j, i=i: h(i, j))
                     for i in range(nt)) / truth_area[1:].sum()
    pred_side = sum(pred_area[j + 1] * partner(overlap[1:, j + 1], p_box[j + 1], t_box, lambda i, j=j: h(i, j))
                    for j in range(np_)) / pred_area[1:].sum()
    return float(0.5 * (truth_side + pred_side))


PREDICTION_SUFFIXES = ("_mask", "_instances")


def _key(path: Path, suffixes: Sequence[str]) -> str:
    """A mask's image stem: its stem without a mask suffix (``_mask``, ``_anno``, ...)."""
    stem = path.stem
    for suffix in sorted(suffixes, key=len, reverse=True):
        if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _mask_files(folder: Path, photos: dict | None = None) -> dict[str, Path]:
    """Mask files under ``folder`` by image stem: the masks beside their images where a folder holds both (GlaS,
    BUSI), else every image file, but those of an ``images/`` folder beside a ``masks/`` one (Kvasir-SEG's layout:
    they are the photos); a stem found twice is refused, naming both files. ``photos``, when given, gets
    the image beside each such mask, by the same stem."""
    from vmunet_monai.data.common import IMAGE_EXTENSIONS
    from vmunet_monai.data.folders import MIXED_SUFFIXES, image_mask_dirs, mixed_pairs

    suffixes = MIXED_SUFFIXES + PREDICTION_SUFFIXES
    if folder.is_file():
        return {_key(folder, suffixes): folder}
    if not folder.is_dir():
        raise InputError(f"{folder}: no such file or folder")
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        here = Path(dirpath)
        split = image_mask_dirs(here)  # images/ beside masks/ (Kvasir-SEG): the photos, not masks
        if split is not None:
            dirnames[:] = [d for d in dirnames if here / d != split[0]]
            if photos is not None:
                photos.update({p.stem: p for p in sorted(split[0].iterdir())
                               if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")})
        pairs = mixed_pairs(here)[0]
        if pairs:
            files = [masks[0] for masks in pairs.values()]  # X_anno.bmp; BUSI's X_mask_1.png are further masks
            if photos is not None:
                photos.update({image.stem: image for image in pairs})
        else:
            files = [here / f for f in sorted(filenames) if Path(f).suffix.lower() in IMAGE_EXTENSIONS
                     and not f.startswith(".")]
        for path in files:
            key = _key(path, suffixes)
            if key in found:
                raise InputError(f"{path} and {found[key]}: two masks of one image {key!r}; give a folder with one "
                                 f"mask per image")
            found[key] = path
    return found


def match_files(pred: str | os.PathLike, truth: str | os.PathLike, group_by: str = "folder") -> tuple[list, dict]:
    """Pair predicted masks with ground truths by image name.

    Args:
        pred: a folder of predicted masks (``predict``'s ``masks/``: ``<image>_mask.png``, or its ``instances/``:
            ``<image>_instances.png``) or one file.
        truth: a folder of ground-truth masks (numbered objects), or images with their masks beside them.
        group_by: ``folder``: a case's set is its ground truth's folder below ``truth``; ``prefix``: the part of
            its name before the first ``_`` (GlaS names its test sets so: ``testA_1``, ``testB_3``).

    Returns:
        ``([(name, group, pred_path, truth_path), ...], {"missing_prediction": [...], "missing_truth": [...],
        "photos": {name: image beside its ground truth}})``.

    Raises:
        InputError: no pair at all, or an unknown ``group_by``.
    """
    if group_by not in ("folder", "prefix"):
        raise InputError(f"--group_by {group_by!r}: folder (the ground truth's folder) or prefix (the name up to "
                         f"its first _, as GlaS's testA_1)")
    pred, truth = Path(pred), Path(truth)
    photos: dict[str, Path] = {}
    preds, truths = _mask_files(pred), _mask_files(truth, photos)
    pairs = []
    for key, path in sorted(truths.items()):
        if key not in preds:
            continue
        if group_by == "prefix":
            group = key.split("_", 1)[0] if "_" in key else "all"
        else:
            rel = path.parent.relative_to(truth) if truth.is_dir() else Path()
            group = str(rel) if str(rel) != "." else "all"
        pairs.append((key, group, preds[key], path))
    missing = {"missing_prediction": [str(truths[k]) for k in sorted(set(truths) - set(preds))],
               "missing_truth": [str(preds[k]) for k in sorted(set(preds) - set(truths))],
               "photos": photos}
    for folder, found, what in ((pred, preds, "predicted masks (<image>_mask.png, or any image file)"),
                                (truth, truths, "ground truths (<image>.png or <image>_anno.bmp)")):
        if not found:
            raise InputError(f"{folder}: holds no mask files (looked for {what}, in its sub-folders too)")
    if not pairs:
        raise InputError(f"{pred} and {truth}: no predicted mask has a ground truth of the same image name (e.g. "
                         f"{next(iter(preds.values()), 'none')} against {next(iter(truths.values()), 'none')}); "
                         f"predictions are matched as <image>_mask.png, ground truths as <image>.png or "
                         f"<image>_anno.bmp")
    return pairs, missing


def _summary_one(rows: Sequence[dict]) -> dict:
    from vmunet_monai.evaluation.binary import mean_sd

    counts = {k: int(sum(r[k] for r in rows)) for k in ("tp", "fp", "fn", "n_truth", "n_pred")}
    t_area, p_area = sum(r["truth_area"] for r in rows), sum(r["pred_area"] for r in rows)
    pooled_dice = 0.5 * ((sum(r["truth_dice_sum"] for r in rows) / t_area if t_area else 0.0)
                         + (sum(r["pred_dice_sum"] for r in rows) / p_area if p_area else 0.0))
    denominator = counts["n_truth"] + counts["n_pred"]
    per_image = {}
    for metric in ("f1", "object_dice", "object_hausdorff", "dice"):
        mean, sd = mean_sd([r[metric] for r in rows])
        per_image[f"{metric}_mean"], per_image[f"{metric}_sd"] = mean, sd
    return {
        "n_images": len(rows),
        "pooled": {"f1": 2 * counts["tp"] / denominator if denominator else 1.0,
                   "object_dice": pooled_dice if t_area or p_area else 1.0, **counts},
        "per_image": per_image,
        "hausdorff_undefined": sum(1 for r in rows if math.isnan(r["object_hausdorff"])),
    }


def summarize_objects(rows: Sequence[dict], title: str = "", distances: bool = True) -> dict:
    """Pooled and per-image object scores over all rows and per ``group``; ``distances``: whether the rows hold the
    object Hausdorff distance (``objects --distances false`` leaves it out)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    return {"title": title, "labels": LABEL, "distances": bool(distances), "overall": _summary_one(rows),
            "groups": {g: _summary_one(v) for g, v in groups.items()}}


def format_objects(summary: dict) -> str:
    """A fixed-width table of :func:`summarize_objects`, one row per set (and one for all when several)."""
    head = (f"{'set':<18}{'n':>5} | pooled: {'F1':>6} {'objDice':>7} | per image: {'F1 mean±sd':>15} "
            f"{'objDice mean±sd':>15} {'objHD px mean±sd':>17} {'Dice mean±sd':>15}")
    rows = ([summary["title"]] if summary.get("title") else []) + [head, "-" * len(head)]
    entries = list(summary["groups"].items())
    if len(entries) > 1:
        entries.append(("all sets together", summary["overall"]))
    for name, s in entries:
        p, q = s["pooled"], s["per_image"]
        rows.append(f"{name[:18]:<18}{s['n_images']:>5} | pooled: {p['f1']:6.4f} {p['object_dice']:7.4f} | per image: "
                    f"{q['f1_mean']:7.4f}±{q['f1_sd']:.4f} {q['object_dice_mean']:7.4f}±{q['object_dice_sd']:.4f} "
                    + (f"{q['object_hausdorff_mean']:8.2f}±{q['object_hausdorff_sd']:<7.2f} "
                       if np.isfinite(q["object_hausdorff_mean"]) else f"{'n/a':>8}{'':8} ")  # no image had one
                    + f"{q['dice_mean']:7.4f}±{q['dice_sd']:.4f}")
    undefined = summary["overall"]["hausdorff_undefined"]
    for name in ("f1", "object_dice", "object_hausdorff"):
        rows.append(f"{name} = {LABEL[name]}")
    if not summary.get("distances", True):
        rows.append("object Hausdorff distances not computed (--distances false)")
    elif undefined:
        rows.append(f"{undefined} image(s) with no object on one side have no Hausdorff distance and are left out "
                    f"of its mean")
    return "\n".join(rows)


OUTCOME_COLORS = {"matched": (40, 200, 40), "missed": (30, 90, 255), "right": (0, 90, 0), "wrong": (230, 20, 20)}


def picture(truth: np.ndarray, pred: np.ndarray, photo: np.ndarray | None = None) -> np.ndarray:
    """An RGB picture of one image's objects: ground-truth objects filled, green when a predicted object covers
    half of them and blue when missed; predicted objects outlined, dark green when right and red when not.

    Args:
        truth: ground-truth objects (0 background).
        pred: predicted objects.
        photo: the image itself (H, W, 3 uint8), drawn underneath with the fills half transparent; default white.
    """
    truth, pred = _numbered(truth), _numbered(pred)
    truth_area, _, overlap = _sizes_and_overlaps(truth, pred)
    right_pred, covered = _right_objects(truth_area, overlap)
    image = np.full(truth.shape + (3,), 255, np.uint8) if photo is None else photo.astype(np.uint8).copy()
    alpha = 1.0 if photo is None else 0.55
    for region, colour in (((truth > 0) & covered[truth], "matched"), ((truth > 0) & ~covered[truth], "missed")):
        image[region] = np.round((1 - alpha) * image[region] + alpha * np.asarray(OUTCOME_COLORS[colour]))
    edge = np.zeros(pred.shape, bool)  # a predicted pixel whose neighbour belongs to another object or background
    edge[:-1] |= pred[:-1] != pred[1:]
    edge[1:] |= pred[1:] != pred[:-1]
    edge[:, :-1] |= pred[:, :-1] != pred[:, 1:]
    edge[:, 1:] |= pred[:, 1:] != pred[:, :-1]
    edge &= pred > 0
    if min(pred.shape) >= 200:  # two pixels wide where one would vanish on screen
        inner = edge.copy()
        same_rows, same_cols = pred[1:] == pred[:-1], pred[:, 1:] == pred[:, :-1]
        inner[1:] |= edge[:-1] & same_rows
        inner[:-1] |= edge[1:] & same_rows
        inner[:, 1:] |= edge[:, :-1] & same_cols
        inner[:, :-1] |= edge[:, 1:] & same_cols
        edge = inner
    image[edge & right_pred[pred]] = OUTCOME_COLORS["right"]
    image[edge & ~right_pred[pred]] = OUTCOME_COLORS["wrong"]
    return image


LEGEND = (("matched", "found"), ("missed", "missed"), ("right", "right object"), ("wrong", "wrong object"))


def with_legend(image: np.ndarray) -> np.ndarray:
    """``image`` with a white strip below naming the colours of :func:`picture` (when it is wide enough)."""
    from PIL import Image, ImageDraw

    if image.shape[1] < 320:
        return image
    strip = Image.new("RGB", (image.shape[1], 18), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    x = 4
    for key, text in LEGEND:
        draw.rectangle([x, 4, x + 10, 14], fill=OUTCOME_COLORS[key])
        draw.text((x + 14, 3), text, fill=(0, 0, 0))
        x += 16 + int(draw.textlength(text)) + 12
    return np.concatenate([image, np.asarray(strip)], axis=0)


def _photo(path: Path | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The image beside a ground truth as RGB, when it is there, readable and of the mask's size."""
    from PIL import Image

    if path is None:
        return None
    try:
        from vmunet_monai.engine.transforms import rgb_converter

        with Image.open(path) as image:
            rgb = np.asarray(rgb_converter(image))
    except (OSError, ValueError):
        return None
    return rgb if rgb.shape[:2] == tuple(shape) else None


def _plot(rows: Sequence[dict], summary: dict, path: Path) -> None:
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()

    groups = list(summary["groups"])
    metrics = (("f1", "object F1"), ("object_dice", "object Dice"), ("object_hausdorff", "object Hausdorff (px)"),
               ("dice", "pixel Dice"))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 3.6))
    for ax, (metric, title) in zip(axes, metrics):
        data = [[r[metric] for r in rows if r["group"] == g and not math.isnan(r[metric])] for g in groups]
        ax.boxplot([d if d else [math.nan] for d in data])
        ax.set_xticks(np.arange(1, len(groups) + 1), groups, rotation=20, ha="right")
        ax.set_title(title, fontsize=9)
        if metric != "object_hausdorff":
            ax.set_ylim(0, 1.05)
    if summary.get("title"):
        fig.suptitle(summary["title"])
    fig.tight_layout()
    save(fig, path, dpi=100)


CSV_FIELDS = ("name", "group", "dice", "f1", "object_dice", "object_hausdorff", "n_truth", "n_pred", "tp", "fp", "fn",
              "truth_area", "truth_dice_sum", "pred_area", "pred_dice_sum")


def class_value(pred: str | os.PathLike, foreground=None) -> int | None:
    """The value of the predicted masks in ``pred`` that holds the objects to score, or None to read them as binary
    masks or object maps (:func:`read_objects`).

    ``foreground`` is a value of the masks, or a class name that ``predict``'s ``prediction.json`` (in ``pred`` or
    the folder above) lists. That record also tells class maps apart: masks of more than two classes are refused
    without ``foreground``, which would otherwise read each class as one object.

    Raises:
        InputError: class maps without ``foreground``, an unknown class name, or a value that is not a mask value
            (naming the record, the classes and their values).
    """
    from vmunet_monai.evaluation.score import warn_unfinished
    from vmunet_monai.predict import read_record

    found = read_record(pred)
    warn_unfinished(found)
    path, record = found if found is not None else (None, {})
    classes = int(record.get("num_classes") or 2)
    names = record.get("class_names") or [f"class {c}" for c in range(classes)]
    values = record.get("mask_values") or list(range(classes))
    listed = ", ".join(f"{n} {v}" for n, v in zip(names[1:], values[1:]))
    if foreground is None:
        if classes > 2:
            raise InputError(f"{pred}: {path} says these masks are class maps of {classes} classes ({listed}); "
                             f"objects are scored one class at a time: give --foreground, a class's value or name "
                             f"(e.g. --foreground {values[1]})")
        return None
    if str(foreground) in names and path is not None:
        return int(values[names.index(str(foreground))])
    try:
        value = int(str(foreground))
    except ValueError:
        known = f"the classes of {path}: {listed}" if path is not None else \
            "no prediction.json names classes here, so give the value"
        raise InputError(f"--foreground {foreground!r}: not a mask value or a class name ({known})") from None
    if path is not None and value not in values[1:]:
        raise InputError(f"--foreground {foreground!r}: the masks of {pred} hold {listed} ({path}), background "
                         f"{values[0]}")
    return value


def run_objects(pred: str | os.PathLike, truth: str | os.PathLike, out: str | os.PathLike | None = None,
                group_by: str = "folder", pictures: bool = True, hausdorff: bool = True, title: str = "",
                foreground=None) -> dict:
    """Score predicted masks against ground truths of numbered objects; write the per-image table, the summary, a
    plot and (``pictures``) one picture per image.

    Writes into ``out`` (default: :func:`~vmunet_monai.evaluation.score.default_out`): ``objects_per_image.csv``
    (``compare`` reads it: ``--metric object_dice``, ``f1``, ``object_hausdorff``), ``objects_summary.json``,
    ``objects.png`` and ``pictures/<set>/<image>.png`` (see :func:`picture`). ``foreground``: for class maps, the
    class whose objects are scored (a value or a class name, :func:`class_value`); the ground truths are read as
    they are.

    Returns:
        the summary, with ``missing_prediction``/``missing_truth`` (files without a partner, left out),
        ``wrong_size_prediction`` (predictions of another size than their ground truth, left out and named) and
        ``paths``.

    Raises:
        InputError: nothing to pair, an unreadable mask, or every prediction of another size than its ground
            truth (naming both files).
    """
    from PIL import Image
    from tqdm import tqdm

    from vmunet_monai.doctor import environment
    from vmunet_monai.validation import check_output_location

    from vmunet_monai.predict import RECORD
    from vmunet_monai.validation import InputError

    truth_dir = Path(truth) if Path(truth).is_dir() else Path(truth).parent
    made = next((d / RECORD for d in (truth_dir, truth_dir.parent) if (d / RECORD).is_file()), None)
    if made is not None and not any((p / RECORD).is_file() for p in (Path(pred), Path(pred).parent)):
        raise InputError(f"{truth}: TRUTH is predict's output ({made} says so), and PRED is not: the arguments are "
                         f"objects PRED TRUTH, predictions first (swapped?)")
    value = class_value(pred, foreground)
    pairs, missing = match_files(pred, truth, group_by)
    photos = missing.pop("photos")
    out = Path(out) if out is not None else default_out(pred, "objects")
    out = check_output_location([Path(truth)], out)
    out.mkdir(parents=True, exist_ok=True)
    rows, soft, wrong_size = [], [], []
    for name, group, pred_path, truth_path in tqdm(pairs, desc="objects", unit="image", mininterval=1.0):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SoftEdgeWarning)
            t_objects, p_objects = read_objects(truth_path), read_objects(pred_path, value)
        soft += [str(w.message) for w in caught if issubclass(w.category, SoftEdgeWarning)]
        for w in caught:
            if not issubclass(w.category, SoftEdgeWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if t_objects.shape != p_objects.shape:  # left out and named, as a missing prediction is
            wrong_size.append(f"{pred_path} is {p_objects.shape[0]}x{p_objects.shape[1]} but its ground truth "
                              f"{truth_path} is {t_objects.shape[0]}x{t_objects.shape[1]}: objects are scored at the "
                              f"image's own size (predict writes masks at that size)")
            continue
        row = {"name": name, "group": group, **object_scores(t_objects, p_objects, hausdorff=hausdorff),
               "prediction": str(pred_path), "ground_truth": str(truth_path)}
        rows.append(row)
        if pictures:
            target = out / "pictures" / (group if group != "all" else "") / f"{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            photo = _photo(photos.get(name), t_objects.shape)
            Image.fromarray(with_legend(picture(t_objects, p_objects, photo))).save(target)
    if not rows:
        from vmunet_monai.evaluation.score import all_wrong_size

        raise all_wrong_size(wrong_size)
    summary = summarize_objects(rows, title, distances=hausdorff)
    summary.update(missing, wrong_size_prediction=wrong_size, foreground=value, environment=environment())
    csv_path, json_path, plot_path = out / PER_IMAGE_CSV, out / SUMMARY_JSON, out / "objects.png"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in CSV_FIELDS})
    json_path.write_text(json.dumps(summary, indent=4) + "\n")
    _plot(rows, summary, plot_path)
    print(format_objects(summary))
    if soft:
        print(f"note: {len(soft)} mask(s) look like binary masks with grey edges, whose scores are not to be trusted "
              f"(first: {soft[0]})")
    if wrong_size:
        print(f"left out: {len(wrong_size)} prediction(s) of another size than their ground truth (first: "
              f"{wrong_size[0]})")
    for kind, files in missing.items():
        if files:
            what = "ground truths without a prediction" if kind == "missing_prediction" else \
                "predictions without a ground truth"
            print(f"left out: {len(files)} {what} (first: {files[0]})")
    summary["paths"] = {"csv": str(csv_path), "json": str(json_path), "plot": str(plot_path),
                        "pictures": str(out / "pictures") if pictures else None}
    print(f"written to {out}")
    return summary


def split_touching(foreground: np.ndarray, depth: float) -> np.ndarray:
    """Objects of a binary mask with touching ones cut apart where they narrow, numbered 1..n (int32).

    The distance of each foreground pixel to the background has one peak per round object; two objects that touch
    meet in a saddle. Peaks that rise at least ``depth`` pixels above the saddle to any higher peak seed one object
    each, and a watershed of the distance map grows them back to the whole foreground, so every pixel of the mask
    keeps its place and only the borders between objects are new. Small ``depth`` cuts more (rough outlines give
    shallow peaks of their own); large ``depth`` cuts only deep necks.

    Args:
        foreground: the binary mask.
        depth: the least height, in pixels, of a peak over its saddle; at least 0.5.

    Raises:
        InputError: for a ``depth`` below 0.5 or not a number.
    """
    import SimpleITK as sitk

    given = depth
    try:
        depth = float(depth)
    except (TypeError, ValueError):
        depth = math.nan
    if not depth >= 0.5:
        raise InputError(f"split_touching {given!r}: the depth of a neck in pixels, a number of at least 0.5 (2 to 5 "
                         f"for objects some tens of pixels across)")
    foreground = np.asarray(foreground, bool)
    if not foreground.any():
        return np.zeros(foreground.shape, np.int32)
    mask = sitk.GetImageFromArray(foreground.astype(np.uint8))
    distance = sitk.Mask(sitk.SignedMaurerDistanceMap(mask, insideIsPositive=True, squaredDistance=False,
                                                      useImageSpacing=False), mask)
    peaks = sitk.RegionalMaxima(sitk.HMaxima(distance, depth), backgroundValue=0, foregroundValue=1,
                                fullyConnected=True)
    seeds = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.Mask(peaks, mask), True)).astype(np.int32)
    # a piece of the mask whose every peak is shallower than depth keeps no seed: it is one object, its own seed
    pieces = label_components(foreground)
    unseeded = np.setdiff1d(np.unique(pieces[foreground]), np.unique(pieces[seeds > 0]))
    for k, piece in enumerate(unseeded, start=int(seeds.max()) + 1):
        seeds[pieces == piece] = k
    top = float(sitk.GetArrayViewFromImage(distance).max())
    # flooding reaches the background last, so every piece is grown from its own seeds only
    basins = sitk.MorphologicalWatershedFromMarkers(sitk.InvertIntensity(distance, top), sitk.GetImageFromArray(seeds),
                                                    markWatershedLine=False, fullyConnected=False)
    return _numbered(sitk.GetArrayFromImage(basins).astype(np.int32) * foreground)


SPLIT_DEPTHS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
SPLIT_CSV = "split_depths.csv"


def _depths(depths) -> list[float]:
    """``--depths`` as sorted distinct numbers of at least 0.5 ("1,2,3", "[1,2]" or a sequence)."""
    from vmunet_monai.validation import number_list

    return sorted(set(number_list("--depths", depths, float, least=0.5, example="1,2,3,5 (neck depths in pixels)")))


def tune_split(pred: str | os.PathLike, truth: str | os.PathLike, depths=SPLIT_DEPTHS,
               out: str | os.PathLike | None = None, group_by: str = "folder", sets=None) -> dict:
    """Choose ``predict --split_touching``'s depth: split the predicted binary masks in ``pred`` at each depth and
    score the objects against the numbered ground truths in ``truth``; the depth with the highest object Dice
    (ties: F1, then the larger depth) is the one to use, unless the unsplit masks score as well (then no splitting).

    Run it on images that are not the test set (the validation or training tiles, predicted), so the choice is not
    tuned on the numbers it will be judged by: ``sets`` keeps only those sets (names as ``group_by`` forms them,
    e.g. ``train`` of GlaS's ``train_*`` tiles with ``group_by="prefix"``).

    Writes ``split_depths.csv`` (one line per depth, ``none`` the unsplit masks) and ``split_depths.png`` into
    ``out`` (default: :func:`~vmunet_monai.evaluation.score.default_out`).

    Returns:
        ``{"depths": [{"depth", "f1", "object_dice", "objects"}, ...], "unsplit": {...}, "best": depth or None
        (None: splitting scores no better than the unsplit masks), "best_split": the best depth, "n_images": n,
        "paths": {...}}``.

    Raises:
        InputError: as :func:`match_files`, for depths below 0.5, a set not found, or predictions that are not
            binary masks.
    """
    from PIL import Image
    from tqdm import tqdm

    from vmunet_monai.validation import check_output_location, comma_list

    values = _depths(depths)
    pairs, _ = match_files(pred, truth, group_by)
    if sets is not None:
        wanted = comma_list(sets)
        found = sorted({group for _, group, _, _ in pairs})
        unknown = [w for w in wanted if w not in found]
        if unknown:
            raise InputError(f"--sets {sets!r}: no set {unknown[0]!r} among the pairs found (sets with --group_by "
                             f"{group_by}: {', '.join(found)})")
        pairs = [p for p in pairs if p[1] in wanted]
    out = Path(out) if out is not None else default_out(pred, "split_depths")
    out = check_output_location([Path(truth)], out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"none": [], **{f"{d:g}": [] for d in values}}
    for name, _group, pred_path, truth_path in tqdm(pairs, desc="split depths", unit="image", mininterval=1.0):
        truth_objects = read_objects(truth_path)
        with Image.open(pred_path) as image:
            distinct = np.unique(np.asarray(image))
        if distinct.size > 2:
            raise InputError(f"{pred_path}: holds {distinct.size} values; depths are tuned on predict's binary masks "
                             f"(OUTPUT/masks), not on object or class maps")
        foreground = read_objects(pred_path) > 0
        if foreground.shape != truth_objects.shape:
            raise InputError(f"{pred_path} and its ground truth {truth_path} differ in size")
        rows["none"].append({"group": "all", **object_scores(truth_objects, label_components(foreground), False)})
        for d in values:
            rows[f"{d:g}"].append({"group": "all", **object_scores(truth_objects, split_touching(foreground, d),
                                                                   False)})
    table = []
    for key, scored in rows.items():
        overall = summarize_objects(scored)["overall"]
        table.append({"depth": key, "f1": overall["pooled"]["f1"],
                      "object_dice": overall["per_image"]["object_dice_mean"],
                      "objects": overall["pooled"]["n_pred"], "truth_objects": overall["pooled"]["n_truth"]})
    unsplit, split = table[0], table[1:]
    rank = lambda r: (round(r["object_dice"], 6), round(r["f1"], 6))  # noqa: E731
    best_split = max(split, key=lambda r: (*rank(r), float(r["depth"])))
    best = best_split if rank(best_split) > rank(unsplit) else unsplit  # a split must do better than none
    csv_path, plot_path = out / SPLIT_CSV, out / "split_depths.png"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    _plot_depths(split, unsplit, best_split, plot_path)
    lines = [f"{'depth':>6} {'F1':>7} {'object Dice':>12} {'objects':>8}  (ground truth: {unsplit['truth_objects']} "
             f"objects in {len(pairs)} images)"]
    tied = [r for r in split if rank(r) == rank(best_split)]  # depths that score alike: the largest is chosen
    for r in table:
        mark = "  <- best" if r is best else ("  (as good)" if best is best_split and r in tied else "")
        lines.append(f"{r['depth']:>6} {r['f1']:7.4f} {r['object_dice']:12.4f} {r['objects']:8d}{mark}")
    print("\n".join(lines))
    if best is unsplit:
        print(f"splitting does not help on these images: leave --split_touching out (its best depth, "
              f"{best_split['depth']}, scores object Dice {best_split['object_dice']:.4f} and F1 "
              f"{best_split['f1']:.4f} "
              f"against {unsplit['object_dice']:.4f} and {unsplit['f1']:.4f} unsplit; written to {out})")
    else:
        alike = (f"; depths {', '.join(r['depth'] for r in tied[:-1])} and {tied[-1]['depth']} score alike, and the "
                 f"largest splits an object only at a deeper neck" if len(tied) > 1 else "")
        print(f"use predict --split_touching {best['depth']} (written to {out}{alike})")
    return {"depths": split, "unsplit": unsplit, "best": None if best is unsplit else float(best["depth"]),
            "best_split": float(best_split["depth"]), "n_images": len(pairs),
            "paths": {"csv": str(csv_path), "plot": str(plot_path)}}


def _plot_depths(split: Sequence[dict], unsplit: dict, best: dict, path: Path) -> None:
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()

    x = [float(r["depth"]) for r in split]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label, colour in (("object_dice", "object Dice", "tab:blue"), ("f1", "object F1", "tab:orange")):
        ax.plot(x, [r[key] for r in split], marker="o", color=colour, label=label)
        ax.axhline(unsplit[key], color=colour, ls=":", lw=1, label=f"{label}, unsplit")
    ax.axvline(float(best["depth"]), color="grey", ls="--", lw=1, label=f"best: {best['depth']}")
    ax.set_xlabel("--split_touching depth (pixels)")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Touching objects split at each neck depth")
    fig.tight_layout()
    save(fig, path, dpi=110)


def write_objects(objects: np.ndarray, path: str | os.PathLike) -> Path:
    """Save an object map as a PNG of object numbers: 8-bit up to 255 objects, else 16-bit."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint8 if objects.max() <= 255 else np.uint16
    Image.fromarray(objects.astype(dtype)).save(path)
    return path
