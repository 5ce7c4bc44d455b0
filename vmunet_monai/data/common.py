"""Shared pieces of the dataset importers: finding and pairing files, seeded splits, the datalist file.

Every importer writes ``OUT/datalist.json`` in MONAI's Decathlon style: top-level lists such as
``"training"``, ``"validation"`` and ``"test"`` of dicts with ``"image"`` and ``"label"`` paths
(relative to the datalist's folder when possible, so a dataset folder can be moved as a whole), plus
a ``"meta"`` dict saying how the splits were made (importer, options, seed, counts). Bundles read it
with :func:`load_datalist` (or ``monai.data.load_decathlon_datalist``) from ``--dataset_dir OUT``.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from vmunet_monai.validation import (IMAGE_EXTENSIONS, InputError, MissingInputError, check_image_pair_2d,
                                     check_no_hash, check_output_location, write_whole)

__all__ = [
    "DATALIST_NAME",
    "cross_validation_split",
    "fold_folder",
    "IMAGE_EXTENSIONS",
    "DatasetLayoutError",
    "image_per_stem",
    "png_first",
    "list_images",
    "pair_images_and_masks",
    "paired_images",
    "images_in_subfolders",
    "same_stem_reason",
    "verify_pairs",
    "report_turned",
    "check_prepare_output",
    "record_archives",
    "report_skipped",
    "split_items",
    "write_datalist",
    "load_datalist",
    "datalist_meta",
    "datalist_classes",
    "datalist_groups",
    "check_intensity",
    "check_num_classes",
    "inference_items",
    "common_folder",
    "relative_to",
    "smooth_noise",
    "random_blob_mask",
    "soft_edges",
    "save_rgb",
    "save_mask",
]

DATALIST_NAME = "datalist.json"


class DatasetLayoutError(InputError):
    """A raw dataset folder does not have the layout an importer expects (the message names the path and rule)."""


def list_images(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                exclude: Iterable[str] = ()) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files, named ``.*``, left out).

    Args:
        folder: the folder to list.
        extensions: accepted suffixes (case-insensitive).
        exclude: regular expressions; a file whose stem matches any of them is skipped
            (for example ISIC 2017's ``_superpixels`` companions).

    Raises:
        DatasetLayoutError: if ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder}: expected a folder of images, found none")
    patterns = [re.compile(p) for p in exclude]
    exts = {e.lower() for e in extensions}
    files = [  # names starting with a dot are hidden files (macOS's "._X" archive companions), not images
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
        and not any(r.search(p.stem) for r in patterns)
    ]
    return sorted(files, key=lambda p: p.name)


def png_first(path) -> bool:
    """A sort key that puts PNG files first and, in a stable sort, leaves the rest in their order: of two images of
    one name (``X.jpg`` beside ``X.png``), the PNG is the one read (:func:`image_per_stem`, ``predict``)."""
    return not str(path).lower().endswith(".png")


def image_per_stem(images: Iterable[Path]) -> dict[str, Path]:
    """The image that gets the mask of each file stem among ``images``: where a stem has several files (``X.jpg``
    beside ``X.png``: the same picture twice, or two pictures for one mask) the PNG, else the first."""
    kept: dict[str, Path] = {}
    for img in sorted(images, key=png_first):
        kept.setdefault(img.stem, img)
    return kept


def same_stem_reason(image: Path, mask, kept: Path) -> str:
    """Why ``image`` is skipped: ``kept`` (:func:`image_per_stem`), of the same stem, has its mask ``mask``."""
    return (f"{image}: its mask {mask} is the mask of {kept} (two images named {image.stem!r}; keep one, or rename "
            f"the other and give it its own mask)")


def pair_images_and_masks(images: Sequence[Path], mask_folder: str | os.PathLike, mask_suffix: str = "",
                          mask_extensions: Sequence[str] = IMAGE_EXTENSIONS,
                          skipped: list[dict] | None = None) -> list[tuple[Path, Path]]:
    """Match every image with the mask named ``<image stem><mask_suffix>.<ext>`` in ``mask_folder`` (a name that
    differs only in case counts when no other mask has it).

    Pairing is by name, never by sorted position (a missing file would silently shift every pair). Masks that
    belong to no image are counted and named on stderr.

    Args:
        images: the image files.
        mask_folder: the folder of masks.
        mask_suffix: text between the image stem and the mask's extension (``"_segmentation"`` for ISIC).
        mask_extensions: accepted mask suffixes.
        skipped: if given, images without a mask are appended to it as ``{"file", "reason"}`` and
            left out, instead of raising (the error is still raised when no image has a mask). So are the
            images of a stem that another image has too (``X.jpg`` beside ``X.png``: the same picture twice, or two
            pictures for one mask; kept, they could put one picture in two splits): the PNG is kept, else the
            first in ``images``.

    Raises:
        DatasetLayoutError: naming the first images without a mask, if any image has none (or, with
            ``skipped``, if none has one); without ``skipped``, naming two images that share a mask.
    """
    mask_folder = Path(mask_folder)
    if not mask_folder.is_dir():
        raise DatasetLayoutError(f"{mask_folder}: expected a folder of masks, found none")
    by_stem: dict[str, Path] = {}
    passed_over: list[Path] = []  # X_mask.jpg beside X_mask.png
    exts = {e.lower() for e in mask_extensions}
    unread: dict[str, Path] = {}  # X_mask.gif: a format that is not read
    for p in sorted(mask_folder.iterdir(), key=lambda p: (png_first(p), p.name)):  # of one stem, the PNG (lossless)
        if not p.is_file() or p.name.startswith("."):  # macOS's "._X.png" companions are not masks
            continue
        if p.suffix.lower() in exts:
            if by_stem.setdefault(p.stem, p) != p:
                passed_over.append(p)
        else:
            unread.setdefault(p.stem.lower(), p)
    by_lower: dict[str, list[Path]] = {}  # ISIC 2016's X_Segmentation.png for the suffix _segmentation
    for stem, p in by_stem.items():
        by_lower.setdefault(stem.lower(), []).append(p)
    kept = image_per_stem(images)
    pairs, missing, claimed = [], [], set()
    for img in images:
        mask = by_stem.get(img.stem + mask_suffix)
        if mask is None and len(by_lower.get((img.stem + mask_suffix).lower(), [])) == 1:
            mask = by_lower[(img.stem + mask_suffix).lower()][0]  # the name in another case, when only one fits
        claimed.add(mask)
        if mask is None:
            missing.append(img.name)
        elif kept[img.stem] != img:
            reason = same_stem_reason(img, mask, kept[img.stem])
            if skipped is None:
                raise DatasetLayoutError(reason)
            skipped.append({"file": str(img), "reason": reason})
        else:
            pairs.append((img, mask))
    def in_other_format(name: str) -> str:
        found = unread.get((Path(name).stem + mask_suffix).lower())
        if found is None:
            return ""
        kind = f"{found.suffix} files are" if found.suffix else "a file without an extension is"
        return f"; {found.name} is there, but {kind} not read as masks: save the masks as PNG"

    if missing and (skipped is None or not pairs):
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetLayoutError(
            f"{mask_folder}: no mask named '<image stem>{mask_suffix}.<png|jpg|...>' for {len(missing)} image(s): {shown}"
            f"{in_other_format(missing[0])}"
        )
    by_name = {img.name: img for img in images}
    for name in missing:
        skipped.append({"file": str(by_name[name]),
                        "reason": f"no mask {mask_folder / (Path(name).stem + mask_suffix)}.<png|jpg|...> "
                                  f"(every image needs its mask{in_other_format(name)})"})
    unused = sorted(p.name for p in by_stem.values() if p not in claimed)
    if unused:
        shown = ", ".join(unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
        print(f"note: {len(unused)} mask(s) in {mask_folder} belong to no image ({shown}) and are not used (is an "
              "image missing, or named otherwise?)", file=sys.stderr)
    passed_over = [p for p in passed_over if by_stem[p.stem] in claimed]
    if passed_over:
        shown = ", ".join(f"{p.name} (for {by_stem[p.stem].name})" for p in passed_over[:3])
        more = f" and {len(passed_over) - 3} more" if len(passed_over) > 3 else ""
        print(f"note: {len(passed_over)} mask(s) in {mask_folder} share their name with a PNG mask, which is used; "
              f"not used: {shown}{more} (if they differ, keep the one you mean)", file=sys.stderr)
    return pairs


def verify_pairs(pairs: Sequence[tuple[Path, Path]], skipped: list[dict], workers: int | None = None,
                 binary: bool = True) -> list[tuple[Path, Path]]:
    """Decode every image and mask once and keep the pairs that pass
    :func:`vmunet_monai.validation.check_image_pair_2d` (readable, same size, binary mask values unless
    ``binary`` is false: label maps of several classes).

    Failures are appended to ``skipped`` as ``{"file", "reason"}``; the order of ``pairs`` is kept.
    Decoding runs on a thread pool (PIL releases the GIL while it decodes). Kept images stored turned or
    mirrored under an EXIF orientation tag are counted on stderr (:func:`report_turned`), and so are kept pairs
    whose masks are all empty.
    """
    from concurrent.futures import ThreadPoolExecutor

    def check(pair):
        try:
            return None, check_image_pair_2d(*pair, binary=binary)
        except InputError as exc:
            return str(exc), None

    from tqdm import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # ISIC 2018's 2,594 pairs take minutes: show how far
        results = list(tqdm(pool.map(check, pairs), total=len(pairs), desc="checking image/mask pairs", unit="pair",
                            mininterval=1.0))
    kept, turned, empty, graded = [], [], 0, []
    for pair, (error, found) in zip(pairs, results):
        if error is None:
            kept.append(pair)
            if found.orientation != 1:
                turned.append((pair[0], found.orientation))
            empty += not found.foreground
            if found.levels is not None:
                graded.append((pair[1], found.levels))
        else:
            skipped.append({"file": str(pair[0]), "reason": error})
    if kept and empty == len(kept):
        folder = os.path.commonpath([os.path.dirname(os.path.abspath(m)) for _, m in kept])
        print(f"note: every mask of the {len(kept)} pairs in {folder} is empty (no foreground): they teach a model "
              f"only where there is nothing to segment, right for normal scans (BUSI's normal/); if they should show "
              f"lesions, are these the masks, or was the mask suffix another?", file=sys.stderr)
    if graded:
        import numpy as np

        from vmunet_monai.validation import describe_values, mask_foreground

        path, levels = graded[0]
        below = [v for v, kept_as in zip(levels, mask_foreground(np.asarray(levels))) if v > 0 and not kept_as]
        merged = (f"pixels of {describe_values(below)} are background" if below else
                  f"pixels of {describe_values([v for v in levels if v > 0])} are all one foreground")
        print(f"note: {len(graded)} mask(s) hold values besides 0 and their top one over large areas (first: {path}, "
              f"values {describe_values(levels)}): read as binary masks (foreground from half the scale, 128, up), "
              f"{merged}; a label map of several classes takes --classes (and --mask_values)", file=sys.stderr)
    report_turned(turned, "their masks must be drawn on the upright image")
    return kept


def images_in_subfolders(folder: str | os.PathLike, leave_out: Iterable[str] = ()) -> dict[str, int]:
    """The subfolders of ``folder`` (hidden ones, ``__MACOSX`` and those named in ``leave_out`` left out, case
    ignored) that hold images directly, with their counts: images an importer reading ``folder`` does not see."""
    left = {n.lower() for n in leave_out} | {"__macosx"}
    held = {}
    for sub in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        if sub.is_dir() and not sub.name.startswith(".") and sub.name.lower() not in left:
            count = len(list_images(sub))
            if count:
                held[sub.name] = count
    return held


def _shown_subfolders(held: dict[str, int]) -> str:
    names = [f"{name}/ ({count})" for name, count in held.items()]
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def paired_images(image_folder: str | os.PathLike, mask_folder: str | os.PathLike, skipped: list[dict], *,
                  mask_suffix: str = "", verify: bool = True, binary: bool = True, exclude: Iterable[str] = (),
                  leave_out: Iterable[str] = ()) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of the images directly in ``image_folder`` (:func:`list_images`, ``exclude`` as
    there), paired by name with ``mask_folder`` (:func:`pair_images_and_masks`) and, with ``verify``, checked
    (:func:`verify_pairs`); what is left out is appended to ``skipped``. Images in subfolders of ``image_folder``
    (except those named in ``leave_out``) are not read: a note names them.

    Raises:
        DatasetLayoutError: if ``image_folder`` holds no image (naming subfolders that do), or, with ``verify``, no
            pair is usable (with the last reason one of its pairs was skipped for).
    """
    image_folder = Path(image_folder)
    images = list_images(image_folder, exclude=exclude)
    held = images_in_subfolders(image_folder, leave_out)
    if not images:
        inside = (f"; its subfolders {_shown_subfolders(held)} hold images, which must lie directly in it (give "
                  f"each as a folder of its own, or move them up)") if held else ""
        raise DatasetLayoutError(f"{image_folder}: no images (PNG, JPEG, BMP, TIFF or WebP){inside}")
    if held:
        print(f"note: {image_folder}: the images in its subfolders {_shown_subfolders(held)} are not imported (only "
              f"the images directly in it are)", file=sys.stderr)
    skipped.extend(unread_files(image_folder))
    before = len(skipped)
    pairs = pair_images_and_masks(images, mask_folder, mask_suffix=mask_suffix, skipped=skipped)
    if verify:
        pairs = verify_pairs(pairs, skipped, binary=binary)
        if not pairs:
            own = skipped[before:]
            why = f" (every pair was skipped: {own[-1]['reason']})" if own else ""
            raise DatasetLayoutError(f"{image_folder}: no usable image/mask pair{why}")
    return pairs


def report_turned(turned: Sequence[tuple[Path, int]], consequence: str) -> None:
    """One ``note:`` line on stderr for images stored turned or mirrored under an EXIF orientation tag (as phone
    cameras store photos), which are read as displayed: how many, the first, and ``consequence``."""
    import sys

    from vmunet_monai.validation import describe_orientation

    if turned:
        first, orientation = turned[0]
        print(f"note: {len(turned)} image(s) are stored turned or mirrored, with an EXIF orientation tag (first: "
              f"{first}, {describe_orientation(orientation)}); they are read upright, as they are displayed, so "
              f"{consequence}", file=sys.stderr)


def check_prepare_output(read_from: Iterable[str | os.PathLike], out: str | os.PathLike) -> None:
    """``prepare`` writes outside the dataset it reads: OUT is none of the folders the importer reads
    images and masks from, nor inside one, so the download stays as distributed and nothing in it is
    ever overwritten.

    Raises:
        InputError: naming OUT and the folder it collides with.
    """
    check_no_hash(out, "OUT")  # the bundles read the prepared folder through MONAI's config parser
    check_output_location([p for p in read_from if os.path.exists(p)], out, what="prepared folder (OUT)")


def report_skipped(skipped: Sequence[dict], what: str = "file") -> None:
    """Print one line per skipped file (``skipped <file>: <reason>``) to stderr."""
    import sys

    for item in skipped:
        reason = item["reason"]
        prefix = f"{item['file']}: "
        print(f"skipped {item['file']}: {reason[len(prefix):] if reason.startswith(prefix) else reason}",
              file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} {what}(s) skipped; the rest was processed", file=sys.stderr)


def split_items(items: Sequence, fractions: Sequence[float], seed: int) -> list[list]:
    """Shuffle ``items`` with ``seed`` and cut off parts of the given fractions; the remainder comes last.

    ``split_items(cases, [0.3], seed=0)`` returns ``[test, rest]``. Every positive fraction gets at
    least one item while enough remain, so a small dataset never yields an empty validation split.

    Returns:
        ``len(fractions) + 1`` lists.

    Raises:
        ValueError: if a fraction is negative or they sum to 1 or more (the remainder would be empty).
    """
    if any(f < 0 for f in fractions) or sum(fractions) >= 1:
        raise ValueError(f"split fractions must be >= 0 and sum to < 1, got {list(fractions)}")
    order = list(items)
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for f in fractions:
        size = int(round(f * len(order)))
        if f > 0 and size == 0 and len(order) - start > 1:
            size = 1
        size = min(size, max(len(order) - start - 1, 0))
        parts.append(order[start:start + size])
        start += size
    parts.append(order[start:])
    return parts


def relative_to(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``path`` relative to ``folder`` when both are on the same drive, else absolute (POSIX separators)."""
    path, folder = os.path.abspath(path), os.path.abspath(folder)
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # different drives on Windows
        return Path(path).as_posix()


def write_datalist(out: str | os.PathLike, splits: dict[str, list[dict]], meta: dict) -> str:
    """Write ``out/datalist.json``; image/label paths are stored relative to ``out``.

    Args:
        out: output folder (created).
        splits: split name -> list of dicts with absolute or cwd-relative ``image``/``label`` paths.
        meta: how the splits were made; ``counts`` is added.

    Returns:
        the path of the datalist file.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc: dict = {"meta": dict(meta)}
    doc["meta"]["counts"] = {k: len(v) for k, v in splits.items()}
    for name, items in splits.items():
        doc[name] = [
            {k: relative_to(v, out) if k in ("image", "label") else v for k, v in item.items()} for item in items
        ]
    path = out / DATALIST_NAME
    write_whole(path, json.dumps(doc, indent=4) + "\n")  # a full disk keeps an earlier import's datalist whole
    return str(path)


def record_archives(out: str | os.PathLike, archives: Sequence[Path]) -> None:
    """Add the archives the dataset was unpacked from to the meta of ``out``'s datalist (``archives``), beside
    ``raw``, which names the folder they were unpacked into."""
    path = Path(out) / DATALIST_NAME
    doc = json.loads(path.read_text())
    (doc["meta"] if "meta" in doc else doc)["archives"] = [str(Path(a).resolve()) for a in archives]  # Synapse: top
    write_whole(path, json.dumps(doc, indent=4) + "\n")


def fold_folder(folds: int, fold: int) -> str:
    """The sub-folder of one fold's checkpoints, reports and logs: ``/fold<k>`` in a cross-validation
    (``folds`` of at least 2), ``""`` without one (``folds`` 0), so the bundles' ``ckpt_dir``, ``output_dir`` and
    ``log_dir`` keep every fold's run apart.

    Raises:
        InputError: ``folds`` not 0 or a whole number of at least 2, or ``fold`` not one of 0 .. ``folds - 1``.
    """
    _check_folds(folds, fold)
    return f"/fold{int(fold)}" if int(folds) else ""


def run_folder(run_name: str, folds: int = 0, fold: int = 0) -> str:
    """The sub-folder of one training run's checkpoints, reports and logs: ``/<run_name>`` (e.g. ``/seed1``, for the
    runs of several seeds), then :func:`fold_folder`'s ``/fold<k>``; ``""`` for an unnamed run without folds, so
    the bundles' ``ckpt_dir``, ``output_dir`` and ``log_dir`` keep every run apart.

    Raises:
        InputError: a ``run_name`` that is not one plain folder name (letters, digits, ``.``, ``_``, ``-``; not
            ``.`` or ``..``), or bad ``folds``/``fold`` (:func:`fold_folder`).
    """
    name = "" if run_name is None else str(run_name)
    if name and (not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name in (".", "..")):
        raise InputError(f"--run_name {run_name!r}: one folder name of letters, digits, '.', '_' and '-' (e.g. "
                         f"seed1), which models/, eval/ and runs/ get as a sub-folder")
    return (f"/{name}" if name else "") + fold_folder(folds, fold)


def _check_folds(folds, fold) -> None:
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if not whole(folds) or folds == 1 or folds < 0:
        raise InputError(f"--folds {folds!r}: give 0 (no cross-validation: the datalist's own validation split) or "
                         f"a whole number of folds of at least 2, e.g. --folds 5")
    if not whole(fold) or (folds and not 0 <= fold < folds) or (not folds and fold != 0):
        rule = f"a fold from 0 to {folds - 1} (--folds {folds})" if folds else "--folds K first (fold 0 without it)"
        raise InputError(f"--fold {fold!r}: give {rule}")


def cross_validation_split(items: Sequence[dict], folds: int, fold: int, seed: int = 0,
                           source: str = "the pool") -> tuple[list[dict], list[dict]]:
    """``(training, validation)`` for fold ``fold`` of a ``folds``-fold cross-validation over ``items``.

    Items are grouped so that no group is split between training and validation: by ``patient`` where the
    datalist names one (ACDC's two frames of each patient), else by ``case``, else each image alone. The
    groups, sorted by name, are shuffled with ``seed`` and dealt to the folds in turn, so the folds differ in
    size by at most one group, every group is validated in exactly one fold, and the split depends only on the
    items, ``folds`` and ``seed`` (not on the order of the datalist).

    Raises:
        InputError: bad ``folds``/``fold`` (see :func:`fold_folder`), or fewer groups than folds.
    """
    _check_folds(folds, fold)
    if not folds:
        raise InputError("cross_validation_split needs --folds of at least 2")

    def group(item: dict) -> str:
        for field in ("patient", "case"):
            if item.get(field) not in (None, ""):
                return f"{field}:{item[field]}"
        return f"image:{item.get('image')}"

    names = sorted({group(item) for item in items})
    if len(names) < folds:
        raise InputError(f"--folds {folds}: {source} holds {len(names)} patient(s), case(s) or image(s) to share "
                         f"among the folds; give at most {len(names)} folds")
    random.Random(seed).shuffle(names)
    held_out = {name for i, name in enumerate(names) if i % folds == fold}
    training = [item for item in items if group(item) not in held_out]
    validation = [item for item in items if group(item) in held_out]
    return training, validation


def load_datalist(dataset_dir: str | os.PathLike, key: str = "training", require: Sequence[str] = (),
                  folds: int = 0, fold: int = 0, fold_seed: int = 0) -> list[dict]:
    """The ``key`` split of ``dataset_dir/datalist.json`` with paths made absolute.

    Args:
        dataset_dir: the folder holding ``datalist.json`` (the OUT of ``prepare``).
        key: the split.
        require: entry fields (e.g. ``("image", "label")``) that every entry must have, naming an
            existing file. The bundles' configs require them, so a broken datalist fails before
            training starts, with the entry and the file named.
        folds: with 2 or more, a cross-validation: ``training`` and ``validation`` are fold ``fold``'s parts
            of the datalist's training and validation splits together (:func:`cross_validation_split`);
            ``test`` is never touched. 0 (the default): the splits as ``prepare`` wrote them.
        fold: the fold, 0 to ``folds - 1``.
        fold_seed: the seed that deals the groups into folds (0, the default, gives every run the same folds;
            another seed, another cross-validation of the same pool: repeated cross-validation).

    Raises:
        FileNotFoundError: when there is no datalist (the message gives the command that writes one).
        KeyError: when the split is missing (the message lists the splits present).
        ValueError: when the split is empty.
        vmunet_monai.validation.InputError: for an entry without a required field or with a missing file, or
            bad ``folds``/``fold``.
    """
    _check_folds(folds, fold)
    if isinstance(fold_seed, bool) or not isinstance(fold_seed, int):
        raise InputError(f"--fold_seed {fold_seed!r}: a whole number (the seed that deals the folds)")
    if folds and key in ("training", "validation"):
        pool = load_datalist(dataset_dir, "training", require) + load_datalist(dataset_dir, "validation", require)
        parts = cross_validation_split(pool, folds, fold, seed=fold_seed, source=f"{Path(dataset_dir) / DATALIST_NAME} (training "
                                       f"and validation together)")
        return parts[0] if key == "training" else parts[1]
    path = Path(dataset_dir) / DATALIST_NAME
    if not Path(dataset_dir).is_dir():
        raise MissingInputError(
            f"{dataset_dir}: no such dataset folder (--dataset_dir must be the OUT folder of "
            f"`python -m vmunet_monai prepare <bundle> RAW OUT`)"
        )
    if not path.is_file():
        raise MissingInputError(
            f"{path} not found: --dataset_dir must be the OUT folder of "
            f"`python -m vmunet_monai prepare <bundle> RAW OUT` (or of `demo_data` followed by `prepare`)"
        )
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}) (write it with `python -m vmunet_monai prepare`)") from None
    if not isinstance(doc, dict) or key not in doc or not isinstance(doc[key], list):
        present = [k for k, v in doc.items() if isinstance(v, list)] if isinstance(doc, dict) else []
        raise MissingSplitError(f"{path}: no split {key!r}; the datalist has {present}")
    if not doc[key]:
        raise InputError(f"{path}: split {key!r} is empty (prepare writes each split with at least one entry)")
    base = path.parent
    items = []
    for index, item in enumerate(doc[key]):
        if not isinstance(item, dict):
            raise InputError(f"{path}: entry {index} of {key!r} is {item!r} (each entry is an object with "
                             f"{', '.join(repr(f) for f in require) or 'an image'} path)")
        item = {k: str((base / v).resolve()) if k in ("image", "label") and isinstance(v, str) else v
                for k, v in item.items()}
        for field in require:
            if not item.get(field):
                raise InputError(f"{path}: entry {index} of {key!r} has no {field!r} (every {key} entry names "
                                 f"its {' and '.join(require)})")
            if not Path(item[field]).is_file():
                raise InputError(f"{item[field]}: no such file, listed as the {field} of entry {index} of {key!r} "
                                 f"in {path} (every file a datalist names must exist; rerun prepare)")
        items.append(item)
    if key == "training" and require and isinstance(doc.get("validation"), list) and doc["validation"]:
        load_datalist(dataset_dir, "validation", require)  # its missing file named now, not after the caching
    return items


class MissingSplitError(InputError, KeyError):
    """A split (``--eval_split valid``) the datalist does not have: a ``KeyError`` that is also an
    :class:`~vmunet_monai.validation.InputError`, so a bundle run stopped by it ends with its message."""

    __str__ = BaseException.__str__  # the message as it is, not quoted as a KeyError's key


def datalist_meta(dataset_dir: str | os.PathLike) -> dict:
    """What ``prepare`` recorded about ``dataset_dir/datalist.json``'s data: its ``meta``, with the ``labels``
    the Synapse importer writes at the top; empty without a datalist."""
    path = Path(dataset_dir) / DATALIST_NAME
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    meta = dict(doc.get("meta") or {})
    if doc.get("labels"):
        meta["labels"] = doc["labels"]
    return meta


def datalist_classes(dataset_dir: str | os.PathLike) -> dict[int, str] | None:
    """Label value -> class name (background left out) that ``dataset_dir/datalist.json`` records under
    ``labels`` (at the top, as the Synapse importer writes it, or in ``meta``); None without a datalist or names."""
    labels = datalist_meta(dataset_dir).get("labels")
    if not isinstance(labels, dict):
        return None
    return {int(k): v for k, v in sorted(labels.items(), key=lambda kv: int(kv[0])) if int(k) != 0}


def _datalist_field(dataset_dir: str | os.PathLike, field: str, split: str) -> dict[str, str]:
    path = Path(dataset_dir) / DATALIST_NAME
    if not path.is_file():
        return {}
    from vmunet_monai.evaluation.ct import _case_name

    doc = json.loads(path.read_text())
    found = {}
    for item in doc.get(split, []):
        if isinstance(item, dict) and field in item and "case" in item:
            found[str(item["case"])] = str(item[field])
            if "image" in item:  # the evaluation names a case by its image's file name, which may differ
                found.setdefault(_case_name(item["image"]), str(item[field]))
    return found


def datalist_groups(dataset_dir: str | os.PathLike, split: str = "test") -> dict[str, str]:
    """Case -> group of the ``split`` entries of ``dataset_dir/datalist.json`` that name a ``group`` (ACDC's ED and
    ES frames), by the datalist's case name and by its image's file name (as the evaluation names cases); empty
    without a datalist or groups."""
    return _datalist_field(dataset_dir, "group", split)


def datalist_patients(dataset_dir: str | os.PathLike, split: str = "test") -> dict[str, str]:
    """Case -> patient of the ``split`` entries of ``dataset_dir/datalist.json`` that name a ``patient`` (volumes
    read from one folder per patient), keyed as :func:`datalist_groups`; empty without a datalist or patients."""
    return _datalist_field(dataset_dir, "patient", split)


def check_intensity(dataset_dir: str | os.PathLike, intensity: str) -> None:
    """A volume bundle's ``intensity`` must be the one its datalist records (``prepare`` writes ``mri`` when
    ``dataset.json`` names an MRI modality): MRI through the CT window would be clipped into noise. A datalist
    of MRI takes either per-volume scaling, ``mri`` (percentiles) or ``minmax``.

    Raises:
        vmunet_monai.validation.InputError: naming the datalist, both values and the option that fixes it.
    """
    from vmunet_monai.engine.transforms import PER_VOLUME_MODES

    recorded = datalist_meta(dataset_dir).get("intensity")
    if recorded == "mri" and intensity in PER_VOLUME_MODES:
        return  # MRI: by its own percentiles, or by its own minimum and maximum
    if recorded is not None and recorded != intensity:
        raise InputError(f"{Path(dataset_dir) / DATALIST_NAME}: records intensity {recorded!r} (the volumes' modality) but the bundle scales "
                         f"with intensity {intensity!r}: add --intensity {recorded} to the bundle command")


def check_num_classes(dataset_dir: str | os.PathLike, num_classes: int) -> None:
    """A bundle's ``num_classes`` must be the number of classes its datalist names (background included).

    Raises:
        vmunet_monai.validation.InputError: naming the datalist, its classes and the option that fixes it.
    """
    classes = datalist_classes(dataset_dir)
    if classes is not None and len(classes) + 1 != int(num_classes):
        names = ", ".join(["background"] + list(classes.values()))
        raise InputError(
            f"{Path(dataset_dir) / DATALIST_NAME}: names {len(classes) + 1} classes ({names}) but num_classes is "
            f"{num_classes} (the network's outputs): add --num_classes {len(classes) + 1} to the bundle command")


def _datalist_items(dataset_dir: str | os.PathLike, key: str = "test") -> list[dict]:
    """The ``key`` split of ``dataset_dir/datalist.json`` as inputs to segment: each entry without its label, the
    image made absolute (a listed file that is not there is left to the check that names it).

    Raises:
        InputError: for a missing datalist, a split it does not have (its splits named), an empty split or an
            entry without an image.
    """
    path = Path(dataset_dir) / DATALIST_NAME
    rule = f"inference segments a prepared folder's {key!r} split; give a folder of images to segment them all"
    try:
        items = load_datalist(dataset_dir, key)
    except KeyError as exc:
        raise InputError(f"{exc.args[0]} ({rule})") from None
    except ValueError as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{exc} ({rule})") from None
    for index, item in enumerate(items):
        if not isinstance(item.get("image"), str):
            raise InputError(f"{path}: entry {index} of {key!r} has no 'image' path (each entry names the file "
                             f"to segment)")
    return [{k: v for k, v in item.items() if k != "label"} for item in items]


def _file_stamp(path: str) -> tuple:
    try:
        found = os.stat(path)
    except OSError:
        return (path,)
    return path, found.st_ino, found.st_size, found.st_mtime_ns


# inference_items' last answer: a 2D bundle's inference.json asks for its items twice (datalist, data_root_dir),
# which then decodes each file once and names each skipped file once
_LAST_CHECKED: dict = {}


def _usable_images(items: list[dict], where) -> list[dict]:
    """The ``items`` that ``predict``'s check of a 2D input passes (:func:`vmunet_monai.predict.check_input_image`,
    each file decoded once), one per mask: of two images of one folder that would write one ``<stem>_mask.png``
    the PNG is kept, else the first in name order, as ``predict`` keeps it. Each file left out is named in a
    warning, with the reason.

    Raises:
        NothingToPredictError: no item is left (``where``, the folder or datalist, named with the first reason).
    """
    import warnings

    from vmunet_monai.predict import NothingToPredictError, check_input_image

    stamp = tuple(_file_stamp(item["image"]) for item in items)
    if _LAST_CHECKED.get("stamp") == stamp:
        return [dict(item) for item in _LAST_CHECKED["usable"]]
    good, taken, skipped = [], {}, []
    for order, item in sorted(enumerate(items), key=lambda c: png_first(c[1]["image"])):
        image = item["image"]
        try:
            check_input_image(image, "the bundle's inference")
        except InputError as exc:
            skipped.append(str(exc))
            continue
        mask = (os.path.dirname(image), Path(image).stem)  # the writers name a mask by its image's folder and stem
        if mask in taken:
            skipped.append(f"{image}: its mask {mask[1]}_mask.png is already the output of {taken[mask]} (give "
                           f"images distinct names)")
            continue
        taken[mask] = image
        good.append((order, item))
    for reason in skipped:
        warnings.warn(f"skipped {reason}")
    if not good:
        first = f"; first: {skipped[0]}" if skipped else ""
        raise NothingToPredictError(f"{where}: no image could be segmented ({len(skipped)} file(s) skipped{first})")
    usable = [item for _, item in sorted(good, key=lambda g: g[0])]
    _LAST_CHECKED.update(stamp=stamp, usable=[dict(item) for item in usable])
    return usable


def inference_items(dataset_dir: str | os.PathLike | None = None, input_path: str | os.PathLike | None = None,
                    key: str = "test", output_dir: str | os.PathLike | None = None) -> list[dict]:
    """Images to segment: every image under ``input_path`` (a file or a folder, searched recursively),
    or else the ``key`` split of the datalist in ``dataset_dir``.

    A folder is searched as ``predict`` searches it: folders of masks (``masks``, ``labels``, ``gt``,
    ``*GroundTruth*``, ...), folders an earlier ``predict`` wrote, masks beside their images (``X_mask.png``
    beside ``X.png``) and files whose stem ends in ``_segmentation`` or ``_superpixels`` are left out, each said
    in a warning, so a raw dataset folder can be given as it is. Each image is then checked as ``predict`` checks
    it (:func:`_usable_images`): a file that is not a readable 2D image (empty, truncated, not an image, several
    frames, NaN pixels, under 2 pixels across) or whose mask another image already writes (``X.jpg`` beside
    ``X.png``) is skipped, named in a warning. ``output_dir`` (the inference's) may not be the folder or lie inside
    it: a later run would segment this run's masks and overlays as images.

    Raises:
        FileNotFoundError: if ``input_path`` does not exist or holds no image.
        InputError: for a datalist without the ``key`` split (its splits named), or an ``output_dir`` inside
            ``input_path``; :class:`vmunet_monai.predict.NothingToPredictError` when every image was skipped.
    """
    if input_path is None or str(input_path) in ("", "None"):
        if dataset_dir is None:
            raise ValueError("give an input file or folder, or a dataset_dir holding datalist.json")
        if Path(dataset_dir).is_dir() and not (Path(dataset_dir) / DATALIST_NAME).is_file():
            raise MissingInputError(f"{Path(dataset_dir) / DATALIST_NAME} not found: --dataset_dir names a prepared "
                                    f"dataset (the OUT folder of `python -m vmunet_monai prepare <bundle> RAW OUT`), "
                                    f"whose {key!r} split is segmented; give a folder of images to segment as "
                                    f"--input_dir")
        return _usable_images(_datalist_items(dataset_dir, key), Path(dataset_dir) / DATALIST_NAME)
    root = Path(input_path)
    if root.is_file():
        return _usable_images([{"image": str(root.resolve()), "name": root.stem}], root)
    if not root.is_dir():
        raise MissingInputError(f"{root}: no such file or folder (--input_dir names the images to segment)")
    import warnings

    from vmunet_monai.predict import collect_images
    from vmunet_monai.validation import check_output_location

    if output_dir not in (None, "", "None"):
        check_output_location([root], output_dir, what="output folder (--output_dir)")
    left: list[str] = []
    found, others = collect_images(root, left)
    for path in others:
        reason = mistaken_for_image(path)
        if reason:
            warnings.warn(f"skipped {Path(path).resolve()}: {reason}")  # as predict names them
    for note in left:
        warnings.warn(f"not segmented: {note}")
    found = [{"image": str(Path(item["image"]).resolve()), "name": item["name"]} for item in found]
    if not found:
        raise MissingInputError(f"{root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    return _usable_images(found, root)


def unread_files(folder: str | os.PathLike) -> list[dict]:
    """``skipped`` entries (``{"file", "reason"}``) for the files directly in ``folder`` that a user may take for
    images but a 2D bundle does not read: volume files (NIfTI, NRRD, MHA, DICOM) and GIFs
    (:func:`not_an_image_reason`). Other files (notes, tables) pass unnamed."""
    unread = []
    for path in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        reason = mistaken_for_image(path) if path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS else None
        if reason:
            unread.append({"file": str(path), "reason": f"{path}: {reason}"})
    return unread


def mistaken_for_image(path: str | os.PathLike) -> str | None:
    """Why a file that is not an image a 2D bundle reads, but may be taken for one (a volume file, a GIF), is
    left out (:func:`not_an_image_reason`); None for any other file, and for hidden ones (``.*``)."""
    reason = not_an_image_reason(path)
    return reason if not Path(path).name.startswith(".") and reason.startswith(("is a volume", "a GIF")) else None


def not_an_image_reason(path: str | os.PathLike) -> str:
    """Why a file whose suffix is none of :data:`IMAGE_EXTENSIONS` is not segmented by a 2D bundle."""
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm")):
        return ("is a volume file (NIfTI, NRRD, MHA or DICOM, read by the synapse_multiorgan bundle; 2D images are "
                "expected)")
    if name.endswith(".gif"):
        return "a GIF, which is not read (save it as PNG)"
    return f"not an image file ({', '.join(IMAGE_EXTENSIONS)})"


def common_folder(items: Sequence[dict], key: str = "image") -> str:
    """The deepest folder containing every ``item[key]``: output writers keep paths below it, so
    images with the same name in different folders (e.g. two polyp test sets) do not overwrite each other."""
    paths = [os.path.abspath(item[key]) for item in items]
    if not paths:
        return ""
    return os.path.commonpath([os.path.dirname(p) for p in paths])


# ---------------------------------------------------------------------------------------------
# synthetic image pieces shared by the 2D demo datasets


def smooth_noise(height: int, width: int, cell: int, rng) -> "np.ndarray":
    """Value noise in [-1, 1] varying over about ``cell`` pixels (a coarse random grid, bicubic-upsampled)."""
    import numpy as np
    from PIL import Image

    grid = rng.uniform(-1, 1, size=(max(2, height // cell + 2), max(2, width // cell + 2))).astype(np.float32)
    up = Image.fromarray(grid).resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(up, dtype=np.float32), -1.5, 1.5) / 1.5


def random_blob_mask(height: int, width: int, rng, area_fraction: tuple[float, float] = (0.1, 0.3),
                     roughness: float = 0.12, center_jitter: float = 0.2) -> "np.ndarray":
    """A boolean mask of one irregular, star-convex blob (an ellipse with a wavy radius).

    Args:
        height: mask height.
        width: mask width.
        rng: a ``numpy.random.Generator``.
        area_fraction: range of the blob's share of the image area.
        roughness: amplitude of the radius harmonics (0 gives an ellipse).
        center_jitter: how far (fraction of the size) the centre may move from the image centre.
    """
    import numpy as np

    area = rng.uniform(*area_fraction) * height * width
    aspect = rng.uniform(0.7, 1.3)
    r0 = np.sqrt(area / np.pi)
    ry, rx = r0 * aspect ** 0.5, r0 / aspect ** 0.5
    cy = height / 2 + rng.uniform(-center_jitter, center_jitter) * height
    cx = width / 2 + rng.uniform(-center_jitter, center_jitter) * width
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    theta = np.arctan2(v / ry, u / rx)
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += rng.uniform(0, roughness) / (k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.sqrt((u / rx) ** 2 + (v / ry) ** 2) <= radius


def soft_edges(mask: "np.ndarray", sigma: float) -> "np.ndarray":
    """The mask as float alpha with a Gaussian-blurred border (the blurred mask still crosses 0.5 at the mask edge)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(mask.astype(np.float32), sigma) if sigma > 0 else mask.astype(np.float32)


def save_rgb(array: "np.ndarray", path: str | os.PathLike, quality: int = 95) -> None:
    """Save an (H, W, 3) float/uint8 array as PNG or JPEG (by suffix), creating the folder."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path, quality=quality)


def save_mask(mask: "np.ndarray", path: str | os.PathLike) -> None:
    """Save a boolean (H, W) mask as an 8-bit 0/255 image (PNG, or JPEG for lossy layouts)."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
