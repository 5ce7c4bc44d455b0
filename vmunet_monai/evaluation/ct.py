"""Per-organ evaluation of multi-organ CT segmentations: Dice and HD95 in millimetres, the TransUNet rule beside it.

Two scorings, each labelled in every output:

* ``mm`` (default, what is correct): Dice, and HD95 from MONAI's
  :func:`~monai.metrics.compute_hausdorff_distance` (``percentile=95``) with the voxel spacing of
  the case, so distances are in millimetres. An organ present in the ground truth but absent from
  the prediction scores Dice 0 and has no HD95 (``nan``, counted as *missed*); an organ absent from
  the ground truth but predicted scores Dice 0 (counted as *false positive*); an organ absent from
  both is not scored (``nan``). Means ignore ``nan``.
* ``transunet`` (what the papers report): TransUNet's ``calculate_metric_percase`` rule, used by
  VM-UNet: HD95 in voxels (no spacing) as medpy computes it (the 95th percentile of the surface
  distances of both directions together); predicted and present: (Dice, HD95); predicted but absent
  from the ground truth: (1, 0); not predicted: (0, 0), so a missed organ *lowers* the mean HD95.

The writers produce a per-case CSV, a summary JSON, a per-organ box plot and a montage of axial
slices with the segmentation overlaid. :class:`OrganMetricsHandler` runs all of it inside a MONAI
evaluator (``evaluate.json``); :func:`evaluate_files` does the same for NIfTI files on disk.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vmunet_monai.data.synapse import ORGANS
from vmunet_monai.evaluation.binary import mean_sd, scalar_metrics

__all__ = [
    "DEFAULT_ORGANS",
    "OrganMetricsHandler",
    "case_mean_dice",
    "case_scores",
    "dice",
    "evaluate_files",
    "hd95_mm",
    "hd95_transunet",
    "plot_montage",
    "plot_organ_boxes",
    "spacing_from_affine",
    "summarize",
    "summary_metrics",
    "write_case_csv",
]

DEFAULT_ORGANS = ORGANS  # the 8 evaluated organs, by label value (one table, kept with the importer)
logger = logging.getLogger(__name__)


def spacing_from_affine(affine) -> tuple[float, ...]:
    """Voxel spacing (mm) along each array axis: the lengths of the affine's direction columns."""
    affine = np.asarray(affine, dtype=np.float64)
    n = affine.shape[0] - 1
    return tuple(float(v) for v in np.linalg.norm(affine[:n, :n], axis=0))


def _as_bool(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(bool)


def dice(pred, gt) -> float:
    """Dice of two binary masks; ``nan`` when both are empty."""
    pred, gt = _as_bool(pred), _as_bool(gt)
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def _surface_distances(pred: np.ndarray, gt: np.ndarray, spacing):
    """Distances from each surface voxel of one mask to the other's surface, both directions (MONAI's edges)."""
    from monai.metrics.utils import get_edge_surface_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty masks are handled by the callers
        _, (to_gt, to_pred), _ = get_edge_surface_distance(
            torch.as_tensor(pred), torch.as_tensor(gt), spacing=spacing, symmetric=True
        )
    return np.asarray(to_gt, dtype=np.float64), np.asarray(to_pred, dtype=np.float64)


def hd95_mm(pred, gt, spacing: Sequence[float]) -> float:
    """HD95 in millimetres: MONAI's symmetric 95th-percentile Hausdorff distance with ``spacing``.

    Returns ``nan`` when either mask is empty (the distance is undefined).
    """
    from monai.metrics import compute_hausdorff_distance

    pred, gt = _as_bool(pred), _as_bool(gt)
    if not pred.any() or not gt.any():
        return float("nan")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {pred.ndim}-D mask")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")  # raised inside MONAI itself
        value = compute_hausdorff_distance(
            torch.as_tensor(pred)[None, None],
            torch.as_tensor(gt)[None, None],
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return float(value.item())


def hd95_transunet(pred, gt) -> float:
    """HD95 as medpy's ``hd95`` without voxel spacing (TransUNet/VM-UNet): in voxels, both directions pooled.

    Returns ``nan`` when either mask is empty.
    """
    pred, gt = _as_bool(pred), _as_bool(gt)
    if not pred.any() or not gt.any():
        return float("nan")
    to_gt, to_pred = _surface_distances(pred, gt, None)
    return float(np.percentile(np.concatenate([to_gt, to_pred]), 95))


def _label_map(x) -> np.ndarray:
    """(C>1, ...) one-hot/probabilities -> argmax; (1, ...) or (...) label map -> integer array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] > 1:
        return np.argmax(x, axis=0)
    if x.ndim == 4:
        x = x[0]
    return np.rint(x).astype(np.int64)


def case_scores(
    pred, label, spacing: Sequence[float], organs: Mapping[int, str] = DEFAULT_ORGANS, transunet: bool = True
) -> dict:
    """Scores of one case.

    Args:
        pred: predicted label map (X, Y, Z), or channel-first (1 or C, X, Y, Z); C channels are argmaxed.
        label: ground-truth label map in the same space.
        spacing: voxel spacing in mm along the array axes.
        organs: label value -> organ name.
        transunet: also compute the TransUNet-rule scores.

    Returns:
        ``{"dice": {organ: v}, "hd95_mm": {...}, "status": {...}, "volume_ml": {...}, "truth_volume_ml": {...}}``
        (the predicted and the true volume of each organ in millilitres) and, with ``transunet``,
        ``"transunet_dice"`` and ``"transunet_hd95_voxel"``.

    Raises:
        ValueError: if prediction and label differ in shape.
    """
    pred, label = _label_map(pred), _label_map(label)
    if pred.shape != label.shape:
        raise ValueError(
            f"prediction shape {pred.shape} differs from label shape {label.shape}; both must share a grid"
        )
    out = {"dice": {}, "hd95_mm": {}, "status": {}, "volume_ml": {}, "truth_volume_ml": {}}
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    if transunet:
        out.update(transunet_dice={}, transunet_hd95_voxel={})
    for value, name in organs.items():
        p, g = pred == value, label == value
        has_p, has_g = bool(p.any()), bool(g.any())
        if has_p and has_g:
            status, d, h = "scored", dice(p, g), hd95_mm(p, g, spacing)
        elif has_g:
            status, d, h = "missed", 0.0, float("nan")
        elif has_p:
            status, d, h = "false_positive", 0.0, float("nan")
        else:
            status, d, h = "absent", float("nan"), float("nan")
        out["dice"][name], out["hd95_mm"][name], out["status"][name] = d, h, status
        out["volume_ml"][name], out["truth_volume_ml"][name] = float(p.sum()) * voxel_ml, float(g.sum()) * voxel_ml
        if transunet:
            if has_p and has_g:
                td, th = dice(p, g), hd95_transunet(p, g)
            elif has_p:
                td, th = 1.0, 0.0
            else:
                td, th = 0.0, 0.0
            out["transunet_dice"][name], out["transunet_hd95_voxel"][name] = td, th
    return out


def _metric_keys(rows) -> list[str]:
    keys = ["dice", "hd95_mm"]
    if rows and "transunet_dice" in rows[0]:
        keys += ["transunet_dice", "transunet_hd95_voxel"]
    return keys


def summarize(rows: Sequence[dict]) -> dict:
    """Per-organ mean, sd and count over cases, and the mean over organs, for each scoring.

    ``rows`` are :func:`case_scores` results with a ``"case"`` entry. The mean over organs is the mean
    of the per-organ means, as the papers compute it.
    """
    if not rows:
        raise ValueError("no cases to summarise")
    organs = list(rows[0]["dice"])
    summary: dict = {"num_cases": len(rows), "organs": organs}
    labels = {
        "dice": "Dice (mm scoring: missed or false-positive organ = 0, absent from both = not scored)",
        "hd95_mm": "HD95 in mm, MONAI symmetric 95th percentile with voxel spacing; undefined when an organ is missed",
        "transunet_dice": "Dice, TransUNet rule (predicted but absent = 1, not predicted = 0, absent from both "
                          "included)",
        "transunet_hd95_voxel": "HD95 in voxels as medpy without spacing, TransUNet rule (missed organ = 0)",
    }
    for key in _metric_keys(rows):
        per_organ = {}
        for organ in organs:
            values = [r[key][organ] for r in rows]
            mean, sd = mean_sd(values)  # over the cases where the value is defined; sample sd, as the 2D reports
            per_organ[organ] = {
                "mean": mean,
                "sd": sd,
                "n": int(np.sum(~np.isnan(np.asarray(values, dtype=np.float64)))),
            }
        summary[key] = {
            "description": labels[key],
            "mean_over_organs": mean_sd(v["mean"] for v in per_organ.values())[0],
            "per_organ": per_organ,
        }
    summary["counts"] = {
        status: {organ: sum(r["status"][organ] == status for r in rows) for organ in organs}
        for status in ("scored", "missed", "false_positive", "absent")
    }
    return summary


VOLUME_KEYS = ("volume_ml", "truth_volume_ml")  # per-case columns that describe, not score


def write_case_csv(rows: Sequence[dict], path: str, groups: Mapping[str, str] | None = None) -> str:
    """One line per case: its group (where ``groups`` names one), the means over organs, each organ's scores for
    every scoring present, each organ's status, then its predicted and true volume in ml."""
    organs = list(rows[0]["dice"])
    keys = _metric_keys(rows)
    volumes = [k for k in VOLUME_KEYS if k in rows[0]]
    grouped = bool(groups) and any(r["case"] in groups for r in rows)
    header = ["case"] + (["group"] if grouped else []) + [f"mean_{k}" for k in keys]
    header += [f"{k}_{o}" for k in keys for o in organs] + [f"status_{o}" for o in organs]
    header += [f"{k}_{o}" for k in volumes for o in organs]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in rows:
            line = [r["case"]] + ([groups.get(r["case"], "")] if grouped else [])
            line += [mean_sd(r[k].values())[0] for k in keys]
            line += [r[k][o] for k in keys for o in organs] + [r["status"][o] for o in organs]
            line += [round(r[k][o], 3) for k in volumes for o in organs]
            writer.writerow(["" if isinstance(v, float) and np.isnan(v) else v for v in line])
    return path


def plot_organ_boxes(rows: Sequence[dict], path: str) -> str:
    """Box plot per organ: Dice (left) and HD95 in mm (right) over cases, ``nan`` left out."""
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()

    organs = list(rows[0]["dice"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "dice", "Dice"), (axes[1], "hd95_mm", "HD95 (mm)")):
        data = []
        for organ in organs:
            values = np.asarray([r[key][organ] for r in rows], dtype=np.float64)
            data.append(values[~np.isnan(values)])
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(organs) + 1), [o.replace("_", " ") for o in organs], rotation=35, ha="right")
        ax.set_title(f"{title} per organ ({len(rows)} cases)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    fig.tight_layout()
    return save(fig, path, dpi=110)


def _to_ras(array: np.ndarray, affine) -> np.ndarray:
    """Reorder/flip array axes so that they run R, A, S (for display only)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(np.asarray(affine, dtype=np.float64))
    return nio.apply_orientation(array, ornt)


def plot_montage(
    image,
    pred,
    affine,
    path: str,
    label=None,
    num_slices: int = 8,
    window: tuple[float, float] = (-125, 275),
    title: str = "",
    num_classes: int = 9,
    class_names: Mapping[int, str] | None = None,
    uncertainty=None,
    heat_name: str = "uncertainty",
    heat_power: float = 2.0,
) -> str:
    """Axial slices (RAS, shown radiologically: patient right on the left) with the prediction filled in colour.

    Args:
        image: CT volume in Hounsfield units, (X, Y, Z) or (1, X, Y, Z).
        pred: label map in the same space.
        affine: voxel-to-world affine of that space (for the axial axis and display orientation).
        path: PNG to write.
        label: optional ground truth, drawn as contours.
        num_slices: slices shown, evenly spaced over the slices holding an organ.
        window: HU display window.
        title: figure title.
        num_classes: number of label values including background (colour scale).
        class_names: label value -> name: a legend of the classes drawn.
        uncertainty: the model's uncertainty (0-1) in the same space: drawn instead of the filled prediction, in
            the colours and opacity of ``predict --uncertainty``'s 2D pictures
            (:func:`vmunet_monai.evaluation.uncertainty.uncertainty_rgba`), with the prediction's outlines in its
            classes' colours and a colour scale.
        heat_name: what ``uncertainty`` is, in the colour scale's label and the title (``disagreement`` for the
            map of where the passes of ``predict --uncertainty --tta`` disagree).
        heat_power: the power of ``uncertainty`` drawn as its opacity (1 for a disagreement map, seldom above 0.5).
    """
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()

    image = _to_ras(np.asarray(_squeeze(image), dtype=np.float32), affine)
    pred = _to_ras(_label_map(pred), affine)
    label = None if label is None else _to_ras(_label_map(label), affine)
    heat = None if uncertainty is None else _to_ras(np.clip(np.asarray(_squeeze(uncertainty), np.float32), 0, 1), affine)
    occupied = np.flatnonzero(
        (pred > 0).any(axis=(0, 1)) | ((label > 0).any(axis=(0, 1)) if label is not None else False)
    )
    if occupied.size == 0:
        occupied = np.arange(image.shape[2])
    picks = np.unique(np.linspace(occupied[0], occupied[-1], num=min(num_slices, occupied.size)).round().astype(int))
    cols = min(4, len(picks))
    rows = int(np.ceil(len(picks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10", max(num_classes, 2))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, z in zip(axes.ravel(), picks):
        # RAS x runs toward patient right; flipping it puts patient right on the viewer's left
        ax.imshow(np.clip(image[::-1, :, z].T, *window), cmap="gray", origin="lower", vmin=window[0], vmax=window[1])
        if heat is not None:
            from vmunet_monai.evaluation.uncertainty import uncertainty_rgba

            ax.imshow(uncertainty_rgba(heat[::-1, :, z].T, heat_power), origin="lower", interpolation="nearest")
            for value in range(1, max(num_classes, 2)):
                if (pred[:, :, z] == value).any():
                    ax.contour((pred[::-1, :, z] == value).T, levels=[0.5], linewidths=0.7,
                               colors=[cmap(value / (max(num_classes, 2) - 1))])
        else:
            seg = np.ma.masked_equal(pred[::-1, :, z].T, 0)
            ax.imshow(
                seg, cmap=cmap, vmin=0, vmax=max(num_classes, 2) - 1, alpha=0.45, origin="lower",
                interpolation="nearest"
            )
        if label is not None and label[:, :, z].any():
            ax.contour(label[::-1, :, z].T, levels=np.arange(0.5, num_classes), colors="white", linewidths=0.6)
        ax.set_title(f"slice {z}", fontsize=8)
    if heat is not None:
        from vmunet_monai.evaluation.uncertainty import add_uncertainty_bar

        opacity = {1: "itself", 2: "its square"}.get(heat_power, f"its power {heat_power:g}")
        add_uncertainty_bar(fig, axes.ravel().tolist(), f"{heat_name} (opacity: {opacity})", orientation="vertical",
                            fraction=0.03, pad=0.02)
    if title:
        what = f"  (colour: {heat_name}, lines: prediction)" if heat is not None else (
            "  (fill: prediction, white: ground truth)" if label is not None else "")
        fig.suptitle(title + what, fontsize=9)
    shown = set(np.unique(pred[:, :, picks]).tolist()) | (set(np.unique(label[:, :, picks]).tolist())
                                                          if label is not None else set())
    if class_names and shown - {0}:
        from matplotlib.patches import Patch

        scale = max(num_classes, 2) - 1
        handles = [Patch(color=cmap(value / scale if scale else 0), label=str(class_names.get(value, value)))
                   for value in sorted(shown - {0})]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 9), fontsize=8, frameon=False)
        if heat is None:  # a colour bar's axes do not take part in tight_layout
            fig.tight_layout(rect=(0, 0.06 if rows == 1 else 0.035, 1, 1))
    elif heat is None:
        fig.tight_layout()
    return save(fig, path, dpi=100)


def case_mean_dice(scores: Mapping) -> float:
    """A case's mean Dice over the classes in its ground truth or prediction (:func:`case_scores`' ``dice``);
    1.0 where there is none."""
    values = [v for v in scores["dice"].values() if not math.isnan(v)]
    return float(np.mean(values)) if values else 1.0


def _kept_for_montage(item: Mapping) -> dict:
    """What a montage needs of a scored case, as compact arrays: its source, name, label maps and affine."""
    return {"source": str(item["source"]), "case": item["case"], "pred": _label_map(item["pred"]).astype(np.uint8),
            "label": _label_map(item["label"]).astype(np.uint8), "affine": np.asarray(item["affine"], np.float64)}


def _squeeze(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    return x[0] if x.ndim == 4 else x


#: file names that say what a scan is, not which case: KiTS's case_00000/imaging.nii.gz (and its
#: segmentation.nii.gz), TotalSegmentator's s0000/ct.nii.gz; such a case is named after its folder
GENERIC_NAMES = frozenset({"imaging", "image", "img", "volume", "vol", "ct", "mr", "mri", "scan", "segmentation"})


def _case_name(meta_source) -> str:
    """A case's name: its file's (or DICOM series folder's) name without a volume extension, or its folder's where
    the file's says only what it is (:data:`GENERIC_NAMES`)."""
    from vmunet_monai.validation import VOLUME_EXTENSIONS

    path = str(meta_source).rstrip("/\\")
    name = os.path.basename(path)
    for ext in (*VOLUME_EXTENSIONS, ".npy.h5"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    folder = os.path.basename(os.path.dirname(path))
    return folder if name.lower() in GENERIC_NAMES and folder else name


def _write_outputs(rows, output_dir: str, prefix: str, groups: Mapping[str, str] | None = None,
                   patients: Mapping[str, str] | None = None, extra: Mapping | None = None) -> dict:
    from vmunet_monai.doctor import environment
    from vmunet_monai.evaluation.cardiac import write_clinical

    summary = summarize(rows)
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        if groups and row["case"] in groups:
            grouped.setdefault(groups[row["case"]], []).append(row)
    if grouped:  # each group (ACDC's ED and ES frames) summarised apart as well
        summary["groups"] = {name: summarize(members) for name, members in sorted(grouped.items())}
    if groups and patients:  # ACDC: each patient's ED and ES frames give the clinical indices
        clinical = write_clinical(rows, groups, patients, output_dir, prefix)
        if clinical is not None:
            summary["clinical"] = clinical
    summary["environment"] = environment()  # versions, device and scan backend behind these numbers
    summary.update(extra or {})
    write_case_csv(rows, os.path.join(output_dir, f"{prefix}per_case.csv"), groups)
    with open(os.path.join(output_dir, f"{prefix}summary.json"), "w") as f:
        json.dump(_nan_to_none(summary), f, indent=4)
    plot_organ_boxes(rows, os.path.join(output_dir, f"{prefix}organ_boxplot.png"))
    return summary


def _nan_to_none(obj):
    """JSON has no NaN: undefined values are written as null."""
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and np.isnan(obj):
        return None
    return obj


def summary_metrics(summary: dict) -> dict[str, float]:
    """The summary's means as flat numbers, as an evaluator's ``state.metrics`` (what the stats and tracking
    handlers log): ``dice_mean``, ``dice_<organ>``, ``hd95_mm_mean``, ``hd95_mm_<organ>`` and, under the TransUNet
    rule, ``transunet_dice_*`` and ``transunet_hd95_voxel_*``; ``<group>/dice_mean`` and ``<group>/hd95_mm_mean``
    per group (ACDC's ED and ES); ``clinical/<index>_correlation``, ``_bias`` and ``_mae`` per clinical index.
    Undefined values (None or NaN: an organ missed or absent in every case) are left out."""
    values = {}
    for key in ("dice", "hd95_mm", "transunet_dice", "transunet_hd95_voxel"):
        block = summary.get(key) or {}
        values[f"{key}_mean"] = block.get("mean_over_organs")
        values.update({f"{key}_{organ}": stats.get("mean") for organ, stats in (block.get("per_organ") or {}).items()})
    for group, part in (summary.get("groups") or {}).items():
        for key in ("dice", "hd95_mm"):
            values[f"{group}/{key}_mean"] = (part.get(key) or {}).get("mean_over_organs")
    for index, stats in ((summary.get("clinical") or {}).get("indices") or {}).items():
        values.update({f"clinical/{index}_{name}": stats.get(name) for name in ("correlation", "bias", "mae")})
    return scalar_metrics(values)


def _log_summary(summary: dict, name: str = "", emit=print) -> None:
    """The summary's lines through ``emit``: the evaluation handler logs them (a bundle run's logging config
    shows them once), ``score`` prints them."""
    missed = sum((summary.get("counts") or {}).get("missed", {}).values())
    hd95 = summary["hd95_mm"]["mean_over_organs"]
    hd95 = "n/a" if hd95 is None or not np.isfinite(hd95) else f"{hd95:.2f} mm"
    line = (
        f"{name + ': ' if name else ''}{summary['num_cases']} cases: mean Dice "
        f"{summary['dice']['mean_over_organs']:.4f}, mean HD95 {hd95}"
        + (f" (of the organs found: {missed} missed, which have no HD95, count 0 in Dice)" if missed else "")
    )
    if "transunet_dice" in summary:
        line += (
            f" | TransUNet rule: Dice {summary['transunet_dice']['mean_over_organs']:.4f}, "
            f"HD95 {summary['transunet_hd95_voxel']['mean_over_organs']:.2f} voxels"
        )
    emit(line)
    for group, part in summary.get("groups", {}).items():
        _log_summary(part, group, emit)
    if "clinical" in summary:
        from vmunet_monai.evaluation.cardiac import format_indices

        for index_line in [f"clinical indices of {summary['clinical']['num_patients']} patients (predicted "
                           f"against true):"] + format_indices(summary["clinical"]["indices"]):
            emit(index_line)


class OrganMetricsHandler:
    """Ignite handler: score every case an evaluator produces, then write CSV, JSON, box plot and a montage.

    The evaluator's post-processing must leave, per item, the prediction and the ground truth on one
    grid (the input's space after ``Invertd``), as label maps or one-hot/probability channels. The
    spacing is read from the label's affine (a MONAI ``MetaTensor``).

    Args:
        output_dir: folder for ``per_case.csv``, ``summary.json``, ``organ_boxplot.png`` and ``montage_<case>.png``.
        pred_key: key of the prediction in ``engine.state.output``.
        label_key: key of the ground truth (searched in the output, then in the batch).
        image_key: key whose ``filename_or_obj`` names the case and the image drawn in the montage.
        organs: label value -> organ name (default: the 8 Synapse organs).
        transunet: also compute the TransUNet-rule scores (labelled as such).
        montage_case: index (in evaluation order) of the case drawn in the montage; None: no montage.
        montage_slices: slices in the montage.
        montage_worst: also draw the case of the lowest mean Dice over its classes, as
            ``montage_worst_<case>.png`` (where it is not the case already drawn, and not perfect).
        prefix: file-name prefix.
        groups: case -> group (ACDC's ED and ES frames, :func:`vmunet_monai.data.common.datalist_groups`): the
            summary then also holds each group's own under ``groups``, the log a line per group, and
            ``per_case.csv`` a ``group`` column.
        patients: case -> patient (:func:`vmunet_monai.data.common.datalist_patients`): with ED and ES groups and
            classes named LV, RV, MYO, each patient's clinical indices (volumes, ejection fractions, myocardial
            mass; :mod:`vmunet_monai.evaluation.cardiac`) are computed from the prediction and the ground truth,
            summarised under ``clinical`` and written to ``clinical_indices.csv`` and ``clinical_indices.png``.
    """

    def __init__(
        self,
        output_dir: str,
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        organs: Mapping[int, str] | None = None,
        transunet: bool = True,
        montage_case: int | None = 0,
        montage_slices: int = 8,
        prefix: str = "",
        groups: Mapping[str, str] | None = None,
        patients: Mapping[str, str] | None = None,
        montage_worst: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.groups, self.patients = dict(groups or {}), dict(patients or {})
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.organs = {int(k): v for k, v in (organs or DEFAULT_ORGANS).items()}
        self.transunet = transunet
        self.montage_case, self.montage_slices, self.montage_worst = montage_case, montage_slices, montage_worst
        self.prefix = prefix
        self.rows: list[dict] = []
        self._montage: dict | None = None
        self._worst: dict | None = None
        self.summary: dict | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._score)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self.rows, self._montage, self._worst = [], None, None

    @staticmethod
    def _items(value):
        return value if isinstance(value, (list, tuple)) else [value]

    def _score(self, engine) -> None:
        outputs = self._items(engine.state.output)
        batches = self._items(engine.state.batch) if engine.state.batch is not None else [{}] * len(outputs)
        for out, batch in zip(outputs, batches):
            pred = out[self.pred_key]
            label = out[self.label_key] if self.label_key in out else batch[self.label_key]
            affine = getattr(label, "affine", None)
            if affine is None:
                raise ValueError(f"'{self.label_key}' carries no affine; load it with LoadImaged to a MetaTensor")
            image = batch.get(self.image_key, out.get(self.image_key))
            source = getattr(image, "meta", {}).get("filename_or_obj", "") or getattr(label, "meta", {}).get(
                "filename_or_obj", f"case{len(self.rows)}"
            )
            spacing = spacing_from_affine(affine)
            scores = case_scores(pred, label, spacing, self.organs, self.transunet)
            scores["case"] = _case_name(source)
            scores["spacing_mm"] = list(spacing)
            self.rows.append(scores)
            drawn = {"source": str(source), "case": scores["case"], "pred": pred, "label": label, "affine": affine}
            if self.montage_case is not None and len(self.rows) - 1 == self.montage_case:
                self._montage = _kept_for_montage(drawn)
            mean = case_mean_dice(scores)
            if self.montage_worst and mean < 1.0 and (self._worst is None or mean < self._worst["dice"]):
                self._worst = dict(_kept_for_montage(drawn), dice=mean)  # one case kept, however many are scored

    def _write(self, engine) -> None:
        if not self.rows:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        weights = getattr(engine.state, "evaluated_weights", None)  # recorded by HeldOutCheck
        self.summary = _write_outputs(self.rows, self.output_dir, self.prefix, self.groups, self.patients,
                                      {"weights": weights} if weights else None)
        engine.state.metrics.update(summary_metrics(self.summary))
        _log_summary(self.summary, emit=logger.info)
        first = self._montage["case"] if self._montage is not None else None
        for m, name, title in ((self._montage, "montage", "{case}"),
                               (self._worst, "montage_worst", "{case}: the lowest mean Dice, {dice:.3f}")):
            if m is None or (name == "montage_worst" and m["case"] == first):
                continue
            try:
                from monai.transforms import LoadImage

                image = _as_3d(LoadImage(image_only=True)(m["source"]))
                if tuple(image.shape[-3:]) != m["pred"].shape:
                    raise ValueError(f"image shape {tuple(image.shape)} differs from the prediction {m['pred'].shape}")
                plot_montage(image, m["pred"], m["affine"],
                             os.path.join(self.output_dir, f"{self.prefix}{name}_{m['case']}.png"), label=m["label"],
                             num_slices=self.montage_slices, title=title.format(**m), num_classes=max(self.organs) + 1,
                             class_names=self.organs)
            except Exception as exc:  # a montage must never cost the metrics already computed
                warnings.warn(f"{name} of {m['case']} not written: {exc}")
        names = ["per_case.csv", "summary.json", "organ_boxplot.png", "montage_*.png"]
        shown = [str(p) for name in names for p in sorted(Path(self.output_dir).glob(self.prefix + name))]
        logger.info("report: %s", ", ".join(shown))


def _as_3d(volume):
    """A volume stored with trailing axes of size 1 (``X, Y, Z, 1``: a 4D NIfTI of one time point, which prepare
    and the network accept) as its three spatial axes."""
    while volume.ndim > 3 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    return volume


def _grid_difference(pred_affine, label_affine) -> str:
    """What differs between two voxel grids: spacing, origin or orientation, with the numbers."""
    import nibabel as nib

    def rounded(values):
        return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"

    parts = []
    spacing = [spacing_from_affine(a) for a in (pred_affine, label_affine)]
    if not np.allclose(*spacing, atol=1e-3):
        parts.append(f"spacing {rounded(spacing[0])} mm against {rounded(spacing[1])}")
    axes = [nib.aff2axcodes(a) for a in (pred_affine, label_affine)]
    if axes[0] != axes[1]:
        parts.append(f"orientation {''.join(axes[0])} against {''.join(axes[1])}")
    if not np.allclose(pred_affine[:3, 3], label_affine[:3, 3], atol=1e-3):
        parts.append(f"origin {rounded(pred_affine[:3, 3])} mm against {rounded(label_affine[:3, 3])}")
    whole = [np.round(np.asarray(a, float), 4).tolist() for a in (pred_affine, label_affine)]
    return "; ".join(parts) or f"affine {whole[0]} against {whole[1]}"


def _check_classes(path, pred: np.ndarray, organs: Mapping[int, str]) -> None:
    """Refuse a prediction holding label values that are no class: scored anyway, each would count as background
    (another tool's 13 BTCV labels, not mapped to the 8 organs, would score as missed organs without a word)."""
    from vmunet_monai.validation import InputError, describe_values

    present = np.unique(pred)
    fractional = present[np.abs(present - np.rint(present)) > 1e-3] if present.dtype.kind == "f" else present[:0]
    if fractional.size:
        raise InputError(f"{path}: values {describe_values(fractional)} are no whole class numbers (a label map "
                         "holds 0 for background and one whole number per organ; a probability map or a label "
                         "resampled with interpolation is no label map: take its argmax, resample with nearest "
                         "neighbour)")
    values = np.unique(np.rint(present))
    stray = values[~np.isin(values, [0, *organs])]
    if stray.size:
        raise InputError(f"{path}: label values {describe_values(stray)} are no class of this dataset (0 background, "
                         f"{', '.join(f'{k} {v}' for k, v in sorted(organs.items()))}; map another tool's labels to "
                         "these before scoring)")


def evaluate_files(
    predictions: Sequence[str],
    labels: Sequence[str],
    output_dir: str,
    organs: Mapping[int, str] | None = None,
    transunet: bool = True,
    montage_image: str | None = None,
    cases: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    patients: Mapping[str, str] | None = None,
    extra: Mapping | None = None,
    worst_images: Sequence[str | None] | None = None,
) -> dict:
    """Score NIfTI predictions against NIfTI labels (same grids, paired by order); write CSV, JSON, plots.

    Args:
        predictions: predicted label-map files.
        labels: ground-truth files, one per prediction.
        output_dir: output folder.
        organs: label value -> organ name.
        transunet: also compute the TransUNet-rule scores.
        montage_image: the CT image of the first case, to draw a montage.
        cases: the case names (default: the labels' file names).
        groups, patients: case -> group and case -> patient, as :class:`OrganMetricsHandler` takes them (each group
            summarised apart; ACDC's clinical indices).
        extra: entries added to the summary (what the caller knows of the predictions).
        worst_images: each case's image: the case of the lowest mean Dice (:func:`case_mean_dice`) is drawn as
            ``montage_worst_<case>.png`` too, unless it is the first case and ``montage_image`` drew it, or perfect.

    Returns:
        The summary dictionary (as written to ``summary.json``).

    Raises:
        vmunet_monai.validation.InputError: if the lists differ in length, a pair differs in shape or affine
            (naming both files), or a prediction holds a value that is no class.
    """
    import nibabel as nib
    from tqdm import tqdm

    from vmunet_monai.data.volumes import volume_voxels
    from vmunet_monai.validation import InputError, input_error

    def read(path):
        try:
            image = nib.load(path)
            return image, volume_voxels(image)  # (X, Y, Z, 1) as (X, Y, Z), as the importer reads it
        except Exception as exc:  # nibabel raises several types for broken files (EOFError for a cut gzip)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise input_error(path, f"cannot be read as NIfTI ({reason})", "the file must be a complete NIfTI "
                              "volume; is it truncated?") from None

    if len(predictions) != len(labels):
        raise InputError(f"{len(predictions)} predictions but {len(labels)} labels: give one label per prediction")
    names = list(cases) if cases is not None else [_case_name(label) for label in labels]
    organs = {int(k): v for k, v in (organs or DEFAULT_ORGANS).items()}
    rows = []
    for pred_path, label_path, case in tqdm(list(zip(predictions, labels, names)), desc="scoring cases",
                                            unit="case"):
        (p, pred), (g, truth) = read(pred_path), read(label_path)
        if pred.shape != truth.shape or not np.allclose(p.affine, g.affine, atol=1e-3):
            what = (f"shape {pred.shape} against {truth.shape}" if pred.shape != truth.shape else
                    f"the same shape but another grid ({_grid_difference(p.affine, g.affine)})")
            raise InputError(f"{pred_path}: {what} of its label {label_path} (a prediction is scored on its label's "
                             f"grid; predict writes each volume's own grid)")
        _check_classes(pred_path, pred, organs)
        scores = case_scores(pred, truth, spacing_from_affine(g.affine), organs, transunet)
        scores["case"] = case
        scores["spacing_mm"] = list(spacing_from_affine(g.affine))
        rows.append(scores)
    os.makedirs(output_dir, exist_ok=True)
    summary = _write_outputs(rows, output_dir, "", groups, patients, extra)
    _log_summary(summary)
    drawn = [(0, "montage", "{case}", montage_image)] if montage_image else []
    means = [case_mean_dice(row) for row in rows]
    worst = int(np.argmin(means))
    if worst_images is not None and means[worst] < 1.0 and worst_images[worst] and not (montage_image and worst == 0):
        drawn.append((worst, "montage_worst", "{case}: the lowest mean Dice, " + f"{means[worst]:.3f}",
                      worst_images[worst]))
    for index, name, title, image_path in drawn:
        img = nib.load(image_path)
        try:
            plot_montage(
                _as_3d(np.asarray(img.dataobj)),
                _as_3d(np.asarray(nib.load(predictions[index]).dataobj)),
                img.affine,
                os.path.join(output_dir, f"{name}_{rows[index]['case']}.png"),
                label=_as_3d(np.asarray(nib.load(labels[index]).dataobj)),
                title=title.format(case=rows[index]["case"]),
                num_classes=max(organs) + 1,
                class_names=organs,
            )
        except Exception as exc:  # a montage must never cost the scores already written
            warnings.warn(f"{name} of {rows[index]['case']} not written: {exc}")
    return summary
