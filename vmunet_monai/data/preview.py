"""``OUT/preview.png``: a look at what ``prepare`` paired, so a wrong mask, a shifted label or an empty class
shows before a day of training is spent on it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["PREVIEW_NAME", "write_preview", "announce"]

PREVIEW_NAME = "preview.png"
_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")


def _picks(splits: Mapping[str, Sequence[dict]], count: int) -> list[tuple[str, dict]]:
    """Up to ``count`` items, taken in turn from each split so that every split is seen."""
    queues = [(name, list(items)) for name, items in splits.items() if items]
    picked: list[tuple[str, dict]] = []
    while len(picked) < count and any(q for _, q in queues):
        for name, queue in queues:
            if queue and len(picked) < count:
                picked.append((name, queue.pop(0)))
    return picked


def _mask_2d(path: str) -> np.ndarray:
    """The mask as the bundles read it: grey (RGB's brightest channel), binarised by :class:`BinarizeMaskd`."""
    from PIL import Image

    from vmunet_monai.engine import BinarizeMaskd

    from vmunet_monai.validation import upright

    with Image.open(path) as opened:
        mask = np.asarray(upright(opened))
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=-1)
    return BinarizeMaskd("mask")({"mask": mask})["mask"] > 0


def _preview_2d(picked, path: Path, title: str, labels: Mapping[int, str]) -> None:
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from PIL import Image

    from vmunet_monai.data.label_maps import read_label
    from vmunet_monai.engine.transforms import rgb_converter
    from vmunet_monai.evaluation.gallery import class_colors

    num = max(labels) + 1 if labels else 2
    cmap = ListedColormap(np.asarray(class_colors(max(num, 2)), dtype=np.float32) / 255)  # the overlays' colours

    cols = min(4, len(picked))
    rows = int(np.ceil(len(picked) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (split, item) in zip(axes.ravel(), picked):
        with Image.open(item["image"]) as opened:
            image = np.asarray(rgb_converter(opened))
        ax.imshow(image)
        if labels:  # label maps of class numbers (prepare has rewritten any other kind)
            classes = read_label(item["label"])
            ax.imshow(np.ma.masked_equal(classes, 0), cmap=cmap, vmin=0, vmax=max(num, 2) - 1, alpha=0.5,
                      interpolation="nearest")
        else:
            mask = _mask_2d(item["label"])
            ax.imshow(np.ma.masked_equal(mask.astype(np.uint8), 0), cmap="autumn", alpha=0.35,
                      interpolation="nearest")
            if mask.any() and not mask.all():
                ax.contour(mask, levels=[0.5], colors="yellow", linewidths=0.8)
        name = item.get("name", Path(item["image"]).stem)
        where = f"test, {item['dataset']}" if split == "test" and item.get("dataset") else split
        ax.set_title(f"{where}: {name}", fontsize=8)
    if labels:
        handles = [Patch(color=cmap(v), label=f"{v} {n}") for v, n in sorted(labels.items())]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    fig.suptitle(f"{title}\n({'the classes of the mask' if labels else 'yellow: the mask'} paired with each image)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if labels else 0, 1, 1))
    save(fig, path, dpi=90)


def _preview_ct(picked, path: Path, title: str, labels: Mapping[int, str], window: tuple[float, float] | None
                ) -> None:
    from vmunet_monai.figures import pyplot, save

    plt = pyplot()
    import nibabel as nib
    from matplotlib.patches import Patch

    from vmunet_monai.data.volumes import load_volume, volume_voxels

    num = max(labels) + 1 if labels else 2
    cmap = plt.get_cmap("tab10" if num <= 10 else "tab20", max(num, 2))
    fig, axes = plt.subplots(1, len(picked), figsize=(3.4 * len(picked), 3.9), squeeze=False)
    for ax, (split, item) in zip(axes.ravel(), picked):
        image = nib.as_closest_canonical(load_volume(item["image"]))
        label = nib.as_closest_canonical(load_volume(item["label"]))
        voxels = volume_voxels(image, np.float32)
        classes = np.rint(volume_voxels(label)).astype(np.int64)
        z = int(np.argmax((classes > 0).sum(axis=(0, 1)))) if classes.any() else voxels.shape[2] // 2
        shown = window
        if shown is None:  # MRI: each volume's own range, as the bundle scales it
            low, high = (float(v) for v in np.percentile(voxels, [0.5, 99.5]))
            shown = (low, high if high > low else low + 1.0)
        # RAS: patient right is the first axis; flip it to show patient right on the viewer's left
        ax.imshow(np.clip(voxels[::-1, :, z].T, *shown), cmap="gray", origin="lower", vmin=shown[0],
                  vmax=shown[1])
        ax.imshow(np.ma.masked_equal(classes[::-1, :, z].T, 0), cmap=cmap, vmin=0, vmax=max(num, 2) - 1, alpha=0.5,
                  origin="lower", interpolation="nearest")
        ax.set_title(f"{split}: {item.get('case', Path(item['image']).name)}, slice {z}", fontsize=8)
        ax.axis("off")
    if labels:
        handles = [Patch(color=cmap(v), label=f"{v} {n}") for v, n in sorted(labels.items())]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=7, frameon=False)
    fig.suptitle(f"{title}\n(the slice with the most labelled voxels of each case)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08 if labels else 0, 1, 1))
    save(fig, path, dpi=90)


def write_preview(out: str | os.PathLike, splits: Mapping[str, Sequence[dict]], title: str = "",
                  labels: Mapping[int, str] | None = None, count: int | None = None,
                  window: tuple[float, float] | None = (-125, 275)) -> str | None:
    """Write ``out/preview.png``: images with their masks (2D), or each CT case's most labelled axial slice
    with the classes in colour and named in a legend (volumes).

    Args:
        out: the prepared folder.
        splits: split name -> items with absolute (or working-directory-relative) ``image`` and ``label`` paths.
        title: the figure title (the importer's summary line).
        labels: label value -> class name, background left out (CT, and 2D label maps of several classes).
        count: items shown (default 8 images or 4 volumes), taken from the splits in turn.
        window: CT display window in HU; None shows each volume between its own 0.5 and 99.5 percentiles (MRI).

    Returns:
        the path written, or None when there is nothing to show. A preview that fails is reported on
        stderr and skipped: it never stops an import.
    """
    import sys

    items = [it for its in splits.values() for it in its if it.get("label")]
    if not items:
        return None
    volumes = str(items[0]["image"]).lower().endswith(_VOLUME_SUFFIXES)
    picked = _picks({k: [it for it in v if it.get("label")] for k, v in splits.items()},
                    count or (4 if volumes else 8))
    path = Path(out) / PREVIEW_NAME
    try:
        if volumes:
            _preview_ct(picked, path, title, dict(labels or {}), window)
        else:
            _preview_2d(picked, path, title, dict(labels or {}))
    except Exception as exc:  # a picture is a convenience; the datalist is already written
        print(f"note: no {path} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    return str(path)


def announce(out: str | os.PathLike, datalist: str, splits: Mapping[str, Sequence[dict]], summary: str,
             labels: Mapping[int, str] | None = None, window: tuple[float, float] | None = (-125, 275)) -> None:
    """The end of an import: write the preview (``window`` as :func:`write_preview`), then print
    ``<summary> -> <datalist>`` and where the preview is."""
    preview = write_preview(out, splits, summary, labels=labels, window=window)
    print(f"{summary} -> {datalist}" + (f"\npreview: {preview}" if preview else ""))
