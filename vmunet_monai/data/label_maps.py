"""Masks of several classes for the 2D bundles (``prepare isic_skin_lesion|polyp_seg RAW OUT --classes a,b``).

A mask of several classes is a label map: one value per pixel, the same value for every pixel of a
class. Datasets store it in one of three ways, all read here:

- the class numbers themselves, ``0`` (background) to ``K`` (8- or 16-bit grey PNG);
- grey levels spread for the eye, e.g. ``0, 128, 255`` for two classes, or colours (read by their
  grey level, ITU-R 601 luma, as the bundles' loader converts them);
- a palette PNG, whose palette index is the class.

``prepare`` finds the values: the class numbers when every mask holds only ``0 .. K``; otherwise the
``K + 1`` distinct values of all masks, in increasing order, are background and the classes in the
order ``--classes`` names them; ``--mask_values`` gives that order itself. Masks that are not already
8-bit class numbers in a lossless file are written as such under ``OUT/labels/`` (named as below RAW),
so training, evaluation and MONAI Label read class numbers ``0 .. K`` and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmunet_monai.data.common import DatasetLayoutError
from vmunet_monai.validation import LOSSY_EXTENSIONS, InputError, comma_list

__all__ = ["LABELS_FOLDER", "parse_mask_values", "read_label", "find_class_values", "write_label_maps",
           "binarize_nonzero", "prepare_label_maps", "save_label"]

LABELS_FOLDER = "labels"
_LOSSLESS = (".png", ".bmp", ".tif", ".tiff")
_SHOWN = 12  # values listed in a message


def _listed(values) -> str:
    values = [int(v) for v in values]
    more = f", ... ({len(values)} in all)" if len(values) > _SHOWN else ""
    return ", ".join(str(v) for v in values[:_SHOWN]) + more


def parse_mask_values(values, num_classes: int, highest: int = 65535, option: str = "--mask_values",
                      scale: str = "grey levels or palette indices") -> list[int] | None:
    """``--mask_values`` as a list of ``num_classes`` distinct integers 0-``highest`` (background first), or None.

    Accepts ``"0,128,255"``, ``"[0,128,255]"`` or a sequence (what ``fire`` makes of ``--mask_values 0,128,255``).
    ``option`` and ``scale`` name the setting and what its values are in the errors.

    Raises:
        InputError: for a value that is not an integer or lies outside 0-``highest``, a repeated value, or a
            count that is not one per class and one for background.
    """
    if values is None:
        return None
    try:
        parsed = [int(v) for v in comma_list(values)]
    except ValueError:
        raise InputError(f"{option} {values!r}: give whole numbers separated by commas, background first "
                         "(e.g. 0,128,255)") from None
    if any(v < 0 or v > highest for v in parsed):
        raise InputError(f"{option} {values!r}: values are {scale}, 0 to {highest}")
    if len(set(parsed)) != len(parsed):
        raise InputError(f"{option} {values!r}: a value is repeated (each class has its own value)")
    if len(parsed) != num_classes:
        raise InputError(f"{option} {values!r}: {len(parsed)} values for {num_classes} classes (background first, "
                         f"then one per class)")
    return parsed


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A mask's values as one (H, W) integer array: the palette index of a palette image, the grey level
    of a grey one, the luma of a colour one (colours that share a luma are refused; ``prepare`` rewrites colour
    masks as class numbers, which the bundles read)."""
    from PIL import Image

    from vmunet_monai.validation import upright

    with Image.open(path) as opened:
        image = upright(opened)
        if image.mode not in ("P", "L", "I", "I;16", "1"):
            colours = np.asarray(image.convert("RGB")).reshape(-1, 3)
            image = image.convert("L")
            _check_colours_stay_apart(colours, np.asarray(image).reshape(-1), path)
        array = np.asarray(image)
    if array.ndim != 2:
        raise InputError(f"{path}: a mask of several classes must be one channel, got shape {array.shape}")
    return array.astype(np.int64)


def _check_colours_stay_apart(colours: np.ndarray, grey: np.ndarray, path) -> None:
    """Two colours of a colour mask that share a grey level would become one class: refused, naming them."""
    codes = (colours[:, 0].astype(np.int64) << 16) | (colours[:, 1].astype(np.int64) << 8) | colours[:, 2]
    distinct, first = np.unique(codes, return_index=True)
    if distinct.size > 256:
        return  # not a label map (JPEG noise): the value count refuses it with a clearer message
    levels = grey[first]
    seen: dict[int, int] = {}
    for code, level in zip(distinct.tolist(), levels.tolist()):
        if level in seen:
            rgb = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in (seen[level], code)]
            raise InputError(f"{path}: the colours {rgb[0]} and {rgb[1]} have the same grey level {level}, so they "
                             f"would become one class (colour masks are read by their grey level; save the mask as "
                             f"class numbers or a palette PNG)")
        seen[level] = code


def _needs_copy(path: str | os.PathLike, values: Sequence[int]) -> bool:
    """Whether the bundles could not read ``path`` as class numbers as it is."""
    from PIL import Image

    if list(values) != list(range(len(values))) or Path(path).suffix.lower() not in _LOSSLESS:
        return True
    with Image.open(path) as image:
        return image.mode != "L"


def find_class_values(masks: Sequence[str], num_classes: int, mask_values=None,
                      workers: int | None = None) -> tuple[list[int], dict[int, int]]:
    """The value standing for background and each class in ``masks``, and the number of masks each class
    appears in.

    Args:
        masks: the mask files (all splits).
        num_classes: classes including background.
        mask_values: ``--mask_values`` (see :func:`parse_mask_values`); None finds them.
        workers: threads decoding the masks.

    Raises:
        DatasetLayoutError: naming a mask with a value outside ``mask_values``, or, when they are found, the
            values of all masks when they are neither ``0 .. K`` nor ``K + 1`` of them.
    """
    from concurrent.futures import ThreadPoolExecutor

    given = parse_mask_values(mask_values, num_classes)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        found = list(pool.map(lambda m: np.unique(read_label(m)), masks))
    if given is not None:
        for mask, values in zip(masks, found):
            unknown = sorted(set(values.tolist()) - set(given))
            if unknown:
                raise DatasetLayoutError(f"{mask}: holds the value(s) {_listed(unknown)}, which --mask_values "
                                         f"{','.join(map(str, given))} does not name (every pixel must be "
                                         "background or one of the classes)")
        chosen = given
    else:
        union = sorted(set(np.concatenate(found).tolist())) if found else []
        if set(union) <= set(range(num_classes)):
            chosen = list(range(num_classes))
        elif len(union) == num_classes:
            chosen = union
        else:
            lossy = any(Path(m).suffix.lower() in LOSSY_EXTENSIONS for m in masks)
            raise DatasetLayoutError(
                f"the masks hold {len(union)} distinct values ({_listed(union)}) but --classes names "
                f"{num_classes - 1} classes: expected the class numbers 0-{num_classes - 1}, or {num_classes} "
                f"values in all (background first); give them with --mask_values"
                + ("; JPEG masks blur class borders into other values: use the lossless PNG masks" if lossy else ""))
    index = {v: i for i, v in enumerate(chosen)}
    seen = {c: 0 for c in range(1, num_classes)}
    for values in found:
        for v in values.tolist():
            if index.get(v, 0):
                seen[index[v]] += 1
    return chosen, seen


def save_label(array: np.ndarray, source: Path, out: str | os.PathLike, root: str | os.PathLike) -> str:
    """Save an 8-bit mask made from ``source`` (a mask, or the name one would have) as
    ``OUT/labels/<source's path below root>.png``; returns its path."""
    from PIL import Image

    try:
        relative = source.resolve().relative_to(Path(root).resolve())
    except ValueError:
        relative = Path(source.name)
    target = Path(out) / LABELS_FOLDER / relative.with_suffix(".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(target)
    return str(target)


def write_label_maps(items: Sequence[dict], values: Sequence[int], out: str | os.PathLike,
                     root: str | os.PathLike) -> int:
    """Point each item's ``label`` at a mask of class numbers, writing ``OUT/labels/<path below root>.png``
    (8-bit) for masks the bundles could not read as such (other values, a palette or colour image, JPEG).

    Returns:
        the number of masks written.
    """
    lookup = np.zeros(max(values) + 1, dtype=np.uint8)
    for i, v in enumerate(values):
        lookup[v] = i
    written = 0
    for item in items:
        source = Path(item["label"])
        if not _needs_copy(source, values):
            continue
        item["label"] = save_label(lookup[read_label(source)], source, out, root)
        written += 1
    return written


def binarize_nonzero(items: Sequence[dict], out: str | os.PathLike, root: str | os.PathLike) -> int:
    """Point each item's ``label`` at a 0/255 mask of its non-zero pixels, writing ``OUT/labels/<path below
    root>.png`` for every mask that holds other values (instance masks that number each object 1, 2, 3, ...,
    which the bundles' half-scale rule would read as nearly empty).

    Returns:
        the number of masks written.
    """
    written = 0
    for item in items:
        source = Path(item["label"])
        values = read_label(source)
        if set(np.unique(values).tolist()) <= {0, 255}:
            continue
        item["label"] = save_label((values > 0).astype(np.uint8) * 255, source, out, root)
        written += 1
    return written


def prepare_label_maps(items: Sequence[dict], classes: dict[int, str], mask_values, out: str | os.PathLike,
                       root: str | os.PathLike) -> dict:
    """Find the class values of ``items``' masks, rewrite the masks that need it, and say what was done.

    Args:
        items: every datalist entry (all splits); their ``label`` is changed in place where a mask is rewritten.
        classes: class number -> name, background left out (``--classes``).
        mask_values: ``--mask_values`` or None.
        out: the prepared folder.
        root: the dataset folder the masks are named below.

    Returns:
        the datalist ``meta`` entries: ``labels`` (number -> name, background included), ``num_classes``,
        ``mask_values`` and ``label_maps`` (how many masks were rewritten, and where).
    """
    import sys

    num_classes = len(classes) + 1
    values, seen = find_class_values([it["label"] for it in items], num_classes, mask_values)
    written = write_label_maps(items, values, out, root)
    names = {0: "background", **classes}
    mapping = ", ".join(f"{v} -> {c} {names[c]}" for c, v in enumerate(values))
    print(f"mask values: {mapping}", file=sys.stderr)
    absent = [names[c] for c, n in seen.items() if n == 0]
    if absent:
        print(f"note: no mask holds the class(es) {', '.join(absent)}; the network will never be shown them",
              file=sys.stderr)
    return {
        "labels": {str(c): names[c] for c in range(num_classes)},
        "num_classes": num_classes,
        "mask_values": values,
        "label_maps": (f"{written} of {len(items)} masks rewritten as class numbers under {LABELS_FOLDER}/"
                       if written else "the masks as they are (class numbers already)"),
        "class_images": {names[c]: n for c, n in seen.items()},
    }
