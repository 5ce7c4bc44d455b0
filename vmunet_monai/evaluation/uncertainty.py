"""Where a model is unsure, and which predictions to check first: ``predict --uncertainty``.

The uncertainty of a pixel (voxel) is the entropy of its class probabilities divided by its largest possible
value, ``log(classes)``: 0 where one class has all the probability, 1 where every class has the same. With
``--tta`` or an ensemble the probabilities are the averaged ones, so the map also shows where the flipped
passes or the members disagree. The maps are computed from the probability maps ``predict`` writes (8-bit,
so to within about 1/255).

With ``--tta`` or an ensemble the uncertainty is also split in two. Each pass (a flip, a member, or every flip
of every member) has its own entropy; their mean, written beside the probabilities as ``<stem>_pass_entropy``,
is the doubt each pass has on its own (a blurred border, an ambiguous texture), which more passes or more
members do not remove. What is left, the uncertainty less that mean, is the **disagreement**: the mutual
information between the prediction and the pass, over ``log(classes)``, 0 to 1. It is 0 where every pass gives
the same probabilities and grows where they differ, which is where more training data of that kind helps the
most (the epistemic part of the uncertainty). Both maps are 8-bit, so the disagreement is known to within about
0.02 where a probability is near 0 or 1 (small negative differences are set to 0).

Each prediction gets one line in ``OUTPUT/uncertainty.csv``, the most doubtful first:

- ``mean_uncertainty``: the mean over the whole image or volume;
- ``uncertain_pixels``: pixels (voxels) with an uncertainty of at least 0.5 (for two classes: a probability
  between about 0.11 and 0.89);
- ``foreground_pixels``: pixels the prediction gives to a class other than the background;
- ``uncertain_share``: ``uncertain_pixels / (foreground_pixels + uncertain_pixels)``, how much of what was
  segmented, or nearly so, is in doubt, whatever its size (0 when neither holds any pixel). The table is
  sorted by it: a reviewer with little time checks the top of the list;
- ``mean_disagreement`` (with ``--tta`` or an ensemble; empty otherwise): the mean disagreement over the whole
  image or volume. Sorted by it (``predict --rank_by disagreement``), the table lists first what to annotate
  next for the model to learn the most (``--rank_by uncertainty`` sorts by ``mean_uncertainty``).

2D images get ``OUTPUT/uncertainty/**/<stem>_uncertainty.png``: the image in grey with the uncertainty over it
in warm colours (none where the model is sure) and the predicted mask's outline in green, and
``OUTPUT/uncertainty_most.png`` shows the most doubtful of them with the colour scale; volumes get
``OUTPUT/<case>_uncertainty.nii.gz`` on the segmentation's grid, 8-bit with the NIfTI scale factor 1/255 (a
reader gets numbers from 0 to 1), to lay over the CT in a viewer. The disagreement gets the same:
``<stem>_disagreement.png`` beside each uncertainty picture and ``OUTPUT/<case>_disagreement.nii.gz``. Its
pictures take the disagreement itself as the opacity, not its square as the uncertainty's do: it is seldom above
0.5, and would hardly show.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmunet_monai.validation import InputError

__all__ = ["RANKINGS", "UNCERTAIN", "add_uncertainty_bar", "check_rank_by", "class_probabilities_2d", "disagreement",
           "most_doubtful_first",
           "normalized_entropy", "plot_most_uncertain", "summarize_uncertainty", "uncertainty_colours",
           "uncertainty_picture", "uncertainty_rgba", "write_uncertainty_2d", "write_uncertainty_table",
           "write_uncertainty_volumes"]

UNCERTAIN = 0.5  # the normalised entropy from which a pixel counts as uncertain


def normalized_entropy(prob: np.ndarray) -> np.ndarray:
    """The entropy of class probabilities ``prob`` (classes first, summing to 1) over ``log(classes)``: 0 to 1,
    of ``prob``'s shape without its first axis. Probabilities are clipped to [0, 1] and renormalised first, as
    8-bit maps may sum to a little more or less than 1."""
    prob = np.clip(np.asarray(prob, np.float32), 0.0, 1.0)
    classes = prob.shape[0]
    if classes < 2:
        raise ValueError(f"normalized_entropy: {classes} class probability map(s); at least 2 are needed "
                         f"(the background's and a class's)")
    total = prob.sum(axis=0, keepdims=True)
    prob = np.divide(prob, total, out=np.full_like(prob, 1.0 / classes), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(prob > 0, -prob * np.log(prob), 0.0)
    return np.clip(terms.sum(axis=0) / np.log(classes), 0.0, 1.0).astype(np.float32)


def disagreement(uncertainty: np.ndarray, pass_entropy: np.ndarray) -> np.ndarray:
    """Where the passes disagree (module docstring): ``uncertainty`` (:func:`normalized_entropy` of the mean
    probabilities) less ``pass_entropy`` (the mean of the passes' own normalised entropies), clipped to [0, 1].

    Raises:
        ValueError: maps of different shapes.
    """
    uncertainty, pass_entropy = np.asarray(uncertainty, np.float32), np.asarray(pass_entropy, np.float32)
    if uncertainty.shape != pass_entropy.shape:
        raise ValueError(f"disagreement: an uncertainty map of shape {uncertainty.shape} and a pass entropy map of "
                         f"shape {pass_entropy.shape} (both are of the prediction's size)")
    return np.clip(uncertainty - pass_entropy, 0.0, 1.0)


def summarize_uncertainty(uncertainty: np.ndarray, foreground: np.ndarray, spread: np.ndarray | None = None) -> dict:
    """The table's numbers for one prediction (module docstring) from its uncertainty map and its foreground, and
    with ``spread``, its :func:`disagreement` map, ``mean_disagreement``."""
    uncertain = int(np.count_nonzero(uncertainty >= UNCERTAIN))
    objects = int(np.count_nonzero(foreground))
    row = {"mean_uncertainty": float(uncertainty.mean()) if uncertainty.size else 0.0,
           "uncertain_pixels": uncertain, "foreground_pixels": objects,
           "uncertain_share": uncertain / (objects + uncertain) if objects + uncertain else 0.0}
    if spread is not None:
        row["mean_disagreement"] = float(spread.mean()) if spread.size else 0.0
    return row


# what ``predict --rank_by`` orders ``uncertainty.csv`` by: the column, largest first
RANKINGS = {"share": "uncertain_share", "uncertainty": "mean_uncertainty", "disagreement": "mean_disagreement"}


def check_rank_by(rank_by: str, uncertainty: bool, passes: bool | None = None) -> str:
    """``predict --rank_by``: one of :data:`RANKINGS`, other than ``share`` only with ``--uncertainty`` (which writes
    the table), and ``disagreement`` only where ``passes`` (several passes whose disagreement is written; None:
    not known yet). Returns it; raises :class:`~vmunet_monai.validation.InputError` naming the rule."""
    if rank_by not in RANKINGS:
        raise InputError(f"--rank_by {rank_by!r}: choose from {', '.join(RANKINGS)} (the column of uncertainty.csv "
                         f"to put the largest first)")
    if rank_by != "share" and not uncertainty:
        raise InputError(f"--rank_by {rank_by}: orders uncertainty.csv, which only --uncertainty writes")
    if rank_by == "disagreement" and passes is False:
        raise InputError("--rank_by disagreement: needs several passes whose disagreement is written (--tta, or "
                         "several --checkpoint files, with a bundle whose inference.json has pass_entropy)")
    return rank_by


def most_doubtful_first(rows: Sequence[dict], by: str = "share") -> list[dict]:
    """The table's order: the largest ``uncertain_share`` first, then the largest ``mean_uncertainty``; with ``by``
    ``uncertainty`` or ``disagreement`` (:data:`RANKINGS`), the largest ``mean_uncertainty`` or
    ``mean_disagreement`` first, then the largest ``uncertain_share``."""
    column = RANKINGS[by]
    second = "mean_uncertainty" if column == "uncertain_share" else "uncertain_share"
    return sorted(rows, key=lambda r: (-r.get(column, 0.0), -r[second], r["file"]))


def _grey_levels(path: str | os.PathLike) -> np.ndarray:
    """A map ``predict`` wrote as an 8-bit PNG (a probability, the passes' entropy) as numbers from 0 to 1."""
    from PIL import Image

    with Image.open(path) as opened:
        return np.asarray(opened.convert("L"), np.float32) / 255.0


def class_probabilities_2d(maps: Sequence[str | os.PathLike]) -> np.ndarray:
    """(classes, H, W) from ``predict``'s probability PNGs: one ``<stem>_prob.png`` (the foreground of a binary
    network) or ``<stem>_prob_<k>.png`` for each class after the background; the background is what is left."""
    planes = [_grey_levels(path) for path in maps]
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise InputError(f"{', '.join(str(m) for m in maps)}: probability maps of different sizes {sorted(shapes)} "
                         f"(the maps of one image's classes are of its size)")
    rest = np.clip(1.0 - np.sum(planes, axis=0), 0.0, 1.0)
    return np.stack([rest, *planes])


def uncertainty_colours():
    """The uncertainty's colour scale in every picture: matplotlib's ``inferno`` from 0.35 (uncertainty 0) to 1
    (uncertainty 1), so that even a low uncertainty is not drawn black."""
    from matplotlib import colormaps, colors

    return colors.ListedColormap(colormaps["inferno"](np.linspace(0.35, 1.0, 256)), name="uncertainty")


def uncertainty_rgba(uncertainty: np.ndarray, power: float = 2.0) -> np.ndarray:
    """RGBA (0-1) of an uncertainty map as every picture draws it: :func:`uncertainty_colours`, with the
    uncertainty to the ``power`` as the opacity (squared: nothing where the model is sure, faint at 0.5, full at 1;
    a :func:`disagreement` map, seldom above 0.5, is drawn with ``power`` 1)."""
    uncertainty = np.clip(np.asarray(uncertainty, np.float32), 0.0, 1.0)
    rgba = uncertainty_colours()(uncertainty)
    rgba[..., 3] = uncertainty ** power
    return rgba


def add_uncertainty_bar(fig, axes, label: str, **options):
    """The colour bar of :func:`uncertainty_colours` (0 to 1) beside ``axes``, labelled ``label``."""
    from matplotlib import cm, colors

    bar = fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=uncertainty_colours()), ax=axes,
                       **options)
    bar.set_label(label, fontsize=8)
    return bar


def uncertainty_picture(image: np.ndarray, uncertainty: np.ndarray, classes: np.ndarray,
                        power: float = 2.0) -> np.ndarray:
    """``image`` (H, W, 3) in grey, the uncertainty over it (:func:`uncertainty_rgba` with ``power``) and the
    outline of ``classes`` (H, W, class numbers, 0 the background) in green; uint8 RGB."""
    from scipy.ndimage import binary_erosion

    image = np.asarray(image, np.float32)
    grey = (image @ np.asarray([0.299, 0.587, 0.114], np.float32))[..., None].repeat(3, axis=2) * 0.8
    rgba = uncertainty_rgba(uncertainty, power)
    heat, alpha = rgba[..., :3].astype(np.float32) * 255.0, rgba[..., 3:].astype(np.float32)
    picture = (1.0 - alpha) * grey + alpha * heat
    foreground = classes > 0
    edge = foreground & ~binary_erosion(foreground, iterations=max(1, min(foreground.shape) // 200))
    picture[edge] = (0.0, 255.0, 0.0)
    return picture.clip(0, 255).astype(np.uint8)


def write_uncertainty_2d(items: Sequence[tuple]) -> list[dict]:
    """For each ``(image, its probability maps, picture)`` of a 2D ``predict`` run, the picture
    (:func:`uncertainty_picture`; ``predict`` puts it at ``OUTPUT/uncertainty/**/<stem>_uncertainty.png``) and the
    table's row; returns the rows (``file``, ``picture`` and the numbers of :func:`summarize_uncertainty`), in the
    order of ``items``. An item may have a fourth element, the image's ``<stem>_pass_entropy.png`` (or None): then
    its :func:`disagreement` is drawn too, as ``<stem>_disagreement.png`` beside the picture, and the row gets
    ``mean_disagreement`` and ``disagreement_picture``.

    Raises:
        ValueError: a map of another size than its image (naming both).
    """
    from PIL import Image

    from vmunet_monai.engine.transforms import rgb_converter

    rows = []
    for image_path, maps, target, *rest in items:
        prob = class_probabilities_2d(maps)
        uncertainty = normalized_entropy(prob)
        classes = prob.argmax(axis=0)
        with Image.open(image_path) as opened:
            image = np.asarray(rgb_converter(opened), np.float32)
        if image.shape[:2] != uncertainty.shape:
            raise ValueError(f"{maps[0]}: probability map of {uncertainty.shape[0]}x{uncertainty.shape[1]} pixels "
                             f"for the image {image_path} of {image.shape[0]}x{image.shape[1]}")
        spread = None
        if rest and rest[0]:
            spread = disagreement(uncertainty, _grey_levels(rest[0]))
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(uncertainty_picture(image, uncertainty, classes)).save(target)
        row = {"file": str(image_path), "picture": str(target), **summarize_uncertainty(uncertainty, classes, spread)}
        if spread is not None:
            row["disagreement_picture"] = str(target)[: -len("_uncertainty.png")] + "_disagreement.png"
            Image.fromarray(uncertainty_picture(image, spread, classes, power=1.0)).save(row["disagreement_picture"])
        rows.append(row)
    return rows


def plot_most_uncertain(rows: Sequence[dict], path: str | os.PathLike, k: int = 8, side: int = 256,
                        by_disagreement: bool = False) -> str | None:
    """The pictures of the ``k`` most doubtful 2D predictions (the table's order), four per row, each titled
    with its numbers, and the colour scale; None if there are none. With ``by_disagreement``, the disagreement
    pictures of the ``k`` rows of the largest ``mean_disagreement`` instead (None if no row has one)."""
    from PIL import Image

    from vmunet_monai.figures import pyplot, save

    if by_disagreement:
        ordered = most_doubtful_first([r for r in rows if "mean_disagreement" in r], "disagreement")[:max(k, 0)]
    else:
        ordered = most_doubtful_first(rows)[:max(k, 0)]
    if not ordered:
        return None
    plt = pyplot()
    per_row = min(4, len(ordered))
    lines = (len(ordered) + per_row - 1) // per_row
    height = 3.0 * lines + 1.0
    fig, axes = plt.subplots(lines, per_row, figsize=(3.0 * per_row, height), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, row in enumerate(ordered):
        with Image.open(row["disagreement_picture" if by_disagreement else "picture"]) as opened:
            picture = opened.convert("RGB")
            picture.thumbnail((side, side))
        ax = axes[i // per_row, i % per_row]
        ax.imshow(np.asarray(picture))
        spread = f"\ndisagreement {row['mean_disagreement']:.3f}" if "mean_disagreement" in row else ""
        ax.set_title(f"{i + 1}. {os.path.basename(row['file'])}\nuncertain share {row['uncertain_share']:.2f}, "
                     f"mean {row['mean_uncertainty']:.2f}{spread}", fontsize=8)
    label = ("disagreement of the passes (drawn with itself as opacity)" if by_disagreement else
             "uncertainty (normalised entropy; drawn with its square as opacity)")
    add_uncertainty_bar(fig, axes.ravel().tolist(), f"{label}; green: the mask's outline", orientation="horizontal",
                        fraction=0.6 / height, pad=0.04, aspect=40)
    most = "disagreed on" if by_disagreement else "doubtful"
    fig.suptitle(f"the {len(ordered)} most {most} of {len(rows)} prediction(s), most {most} first", fontsize=10)
    return save(fig, path, dpi=90)


def write_uncertainty_volumes(items: Sequence[tuple], slab: int = 16) -> list[dict]:
    """For each ``(source volume, <case>_prob.nii.gz)`` of a volume ``predict`` run, ``<case>_uncertainty.nii.gz``
    beside the probability volume (8-bit, scale factor 1/255, its affine) and the table's row; the 4D
    probabilities are read ``slab`` slices at a time, so memory stays at a few slices' worth. An item may have a
    third element, the volume's ``<case>_pass_entropy.nii.gz`` (``--tta`` or an ensemble; or None): then
    ``<case>_disagreement.nii.gz`` is written too, and the row gets ``mean_disagreement`` and
    ``disagreement_picture``.

    Raises:
        ValueError: a pass entropy volume on another grid than the probabilities (naming it).
    """
    import nibabel as nib

    from vmunet_monai.engine.transforms import probability_slabs, save_unit_nifti, without_orientation

    rows = []
    for source, prob_path, *rest in items:
        grid = nib.load(prob_path)
        oriented = not without_orientation(grid.header)  # as the scan and the probabilities were written
        forms = grid.get_qform(coded=True), grid.get_sform(coded=True)  # the scan's, as the probabilities carry
        case = str(prob_path)[: -len("_prob.nii.gz")]
        uncertainty = np.zeros(grid.shape[:3], np.float32)
        foreground = np.zeros(grid.shape[:3], bool)
        for z, part in probability_slabs(prob_path, slab):
            part = np.moveaxis(part, -1, 0)
            uncertainty[:, :, z:z + slab] = normalized_entropy(part)
            foreground[:, :, z:z + slab] = part.argmax(axis=0) > 0
        spread = None
        if rest and rest[0]:
            own = nib.load(rest[0])
            if own.shape != grid.shape[:3]:
                raise ValueError(f"{rest[0]}: of shape {own.shape}, not the {grid.shape[:3]} of {prob_path} (both "
                                 f"come from one predict run)")
            spread = disagreement(uncertainty, np.asarray(own.dataobj, np.float32))
            save_unit_nifti(spread, grid.affine, f"{case}_disagreement.nii.gz", oriented, forms)
        target = f"{case}_uncertainty.nii.gz"
        save_unit_nifti(uncertainty, grid.affine, target, oriented, forms)
        row = {"file": str(source), "picture": target, **summarize_uncertainty(uncertainty, foreground, spread)}
        if spread is not None:
            row["disagreement_picture"] = f"{case}_disagreement.nii.gz"
        rows.append(row)
    return rows


def write_uncertainty_table(rows: Sequence[dict], out: str | os.PathLike, shown: int = 3, by: str = "share") -> Path:
    """``OUTPUT/uncertainty.csv``, the most doubtful prediction first (largest ``uncertain_share``, then
    ``mean_uncertainty``; or by another column, ``by``: :func:`most_doubtful_first`); prints where it is and the
    first ``shown`` files."""
    ordered = most_doubtful_first(rows, by)
    path = Path(out) / "uncertainty.csv"
    fields = ["rank", "file", "uncertain_share", "mean_uncertainty", "uncertain_pixels", "foreground_pixels",
              "mean_disagreement", "picture", "disagreement_picture"]
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for rank, row in enumerate(ordered, 1):
            values = {k: row.get(k, "") for k in fields[1:]}  # no disagreement from a single pass
            writer.writerow({"rank": rank, **{k: f"{v:.4f}" if isinstance(v, float) else v for k, v in values.items()}})
    os.replace(partial, path)
    column = RANKINGS[by]
    digits = 2 if column == "uncertain_share" else 4  # a mean disagreement is often below 0.01
    first = ", ".join(f"{os.path.basename(r['file'])} ({r.get(column, 0.0):.{digits}f})" for r in ordered[:shown])
    print(f"uncertainty of {len(ordered)} prediction(s) in {path}; most doubtful first ({column.replace('_', ' ')}): "
          f"{first}")
    return path
