"""Your own 2D dataset as plain folders of images and masks, for the ISIC and polyp bundles.

``prepare isic_skin_lesion RAW OUT`` and ``prepare polyp_seg RAW OUT`` read this layout when RAW
does not hold the challenge / PraNet download (or always, with ``--layout folders``). The folders
are found in RAW or up to two levels below it; their names are compared without regard to case:

==============  ==========================================================  ===========================
layout          folders                                                     splits
==============  ==========================================================  ===========================
one pool        ``images/`` and ``masks/``                                  seeded test, validation
                                                                            and training parts
splits          ``train/{images,masks}``, optional ``val/{images,masks}``   given ones kept; a missing
                and ``test/{images,masks}``                                 one carved from ``train``
test sets       ``test/<set>/{images,masks}`` (instead of test images)     each set reported apart
one folder      images and masks side by side, ``X.png`` + ``X_mask.png``   as one pool; by the names
                                                                            when they are ``train_*``
                                                                            and ``test*_*`` (GlaS)
categories      folders of the above, e.g. ``benign/``, ``malignant/``      one pool, each category
                (BUSI)                                                      reported apart
==============  ==========================================================  ===========================

Accepted names: images in ``images``, ``image``, ``imgs``, ``img``, ``inputs`` or ``original``; masks in
``masks``, ``mask``, ``labels``, ``label``, ``gt``, ``groundtruth``, ``ground_truth``, ``ground truth`` or
``annotations`` (so Kvasir-SEG's ``images``/``masks`` and CVC-ClinicDB's ``Original``/``Ground Truth`` are read as
they come);
``train``/``training``, ``val``/``valid``/``validation`` and ``test``/``testing``. A mask is the
file in the mask folder named after its image's stem plus a suffix, found by trying ``""``,
``"_mask"``, ``"_segmentation"``, ``"_seg"``, ``"_gt"``, ``"_label"`` and ``"-mask"`` and keeping
the one that pairs the most images (``--mask_suffix`` sets it). In one folder, a mask is told from an image
by that suffix (``""`` aside; ``_anno`` too, as GlaS names them), and an image with several masks
(BUSI's ``X_mask.png``, ``X_mask_1.png``) gets their union, written under ``OUT/labels/``. Masks are binary: 0/1 or 0/255,
grey or RGB(A), of the image's size; images are PNG, JPEG, BMP, TIFF or WebP of any size. With ``--classes``
naming two or more classes (or a ``dataset.json`` beside the folders naming them), masks are label
maps instead, read by :mod:`vmunet_monai.data.label_maps`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmunet_monai.data.common import (
    DatasetLayoutError,
    check_prepare_output,
    paired_images,
    image_per_stem,
    list_images,
    report_skipped,
    unread_files,
    same_stem_reason,
    split_items,
    verify_pairs,
    write_datalist,
)
from vmunet_monai.data.label_maps import LABELS_FOLDER, binarize_nonzero, prepare_label_maps, save_label
from vmunet_monai.data.preview import announce
from vmunet_monai.validation import IMAGE_EXTENSIONS, InputError

__all__ = ["LayoutNotFound", "IMAGE_DIRS", "MASK_DIRS", "MASK_SUFFIXES", "choose_layout", "chosen_fractions",
           "find_folders_layout", "prepare_folders", "refuse_options", "refuse_unused_fraction", "subfolders",
           "child_folder"]

IMAGE_DIRS = ("images", "image", "imgs", "img", "inputs", "original")  # "Original": CVC-ClinicDB
MASK_DIRS = ("masks", "mask", "labels", "label", "gt", "groundtruth", "ground_truth", "ground truth", "annotations")
MASK_SUFFIXES = ("", "_mask", "_segmentation", "_seg", "_gt", "_label", "-mask")
_SPLITS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}

EXPECTED = ("images/ and masks/ (one pool, split here), or train/{images,masks} with optional "
            "val/{images,masks} and test/{images,masks} or test/<set>/{images,masks}, or images with their masks "
            "side by side (X.png and X_mask.png), in one folder or in one folder per category")
# masks beside their images: the name suffixes that tell them apart ("" cannot)
MIXED_SUFFIXES = tuple(s for s in MASK_SUFFIXES if s) + ("_anno",)


class LayoutNotFound(DatasetLayoutError):
    """RAW holds none of the layouts looked for (as opposed to holding one that is broken or ambiguous)."""


def child_folder(folder: Path, names) -> Path | None:
    """The subfolder of ``folder`` whose lower-cased name is the first of ``names`` present."""
    by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else {}
    return next((by_name[n] for n in names if n in by_name), None)


def image_mask_dirs(folder: Path) -> tuple[Path, Path] | None:
    images, masks = child_folder(folder, IMAGE_DIRS), child_folder(folder, MASK_DIRS)
    return (images, masks) if images is not None and masks is not None else None


def _layout_at(folder: Path, mask_suffix: str | None = None) -> dict | None:
    """The layout rooted at ``folder``: ``{"pool": dirs}`` or ``{"train": dirs, "val": dirs|None,
    "test": {set: dirs}}`` (dirs = (images, masks); set "" for images and masks directly in test/), or images with
    their masks beside them (named with ``mask_suffix``, else one of :data:`MIXED_SUFFIXES`); None when ``folder``
    holds none of them."""
    train = child_folder(folder, _SPLITS["train"])
    if train is not None and image_mask_dirs(train) is not None:
        val = child_folder(folder, _SPLITS["val"])
        test_dir = child_folder(folder, _SPLITS["test"])
        tests: dict[str, tuple[Path, Path]] = {}
        if test_dir is not None:
            direct = image_mask_dirs(test_dir)
            if direct is not None:
                tests[""] = direct  # one test set, named after the dataset
            else:
                for sub in subfolders(test_dir):
                    dirs = image_mask_dirs(sub)
                    if dirs is not None:
                        tests[sub.name] = dirs
        val_dirs = image_mask_dirs(val) if val is not None else None
        if val is not None and val_dirs is None:
            raise DatasetLayoutError(f"{val}: expected images/ and masks/ inside")
        unlabelled = test_dir if test_dir is not None and not tests else None
        return {"train": image_mask_dirs(train), "val": val_dirs, "test": tests, "unlabelled_test": unlabelled}
    dirs = image_mask_dirs(folder)
    if dirs is not None:
        return {"pool": dirs}
    def beside(where: Path) -> bool:  # masks named with the given suffix, or one of ours (then the importer says
        # that none is named with the given one)
        return bool(mixed_pairs(where, mask_suffix)[0] or (mask_suffix and mixed_pairs(where)[0]))

    if beside(folder):
        return {"mixed": {"": folder}}
    categories = {sub.name: sub for sub in subfolders(folder) if beside(sub)}
    return {"mixed": categories} if categories and not list_images_quiet(folder) else None


def list_images_quiet(folder: Path) -> list[Path]:
    """The images directly in ``folder`` (none for a folder that is not there)."""
    try:
        return list_images(folder)
    except DatasetLayoutError:
        return []


def mixed_pairs(folder: Path, mask_suffix: str | None = None) -> tuple[dict[Path, list[Path]], str | None]:
    """Images of ``folder`` that have their masks beside them: image -> its masks (``X<suffix>.ext`` and
    ``X<suffix>_<n>.ext``), for the suffix of :data:`MIXED_SUFFIXES` (or ``mask_suffix``) that pairs the most
    images, and that suffix; ``({}, None)`` when no image has one. Images without a mask are left out here (the
    importer names them)."""
    import re

    files = list_images_quiet(folder)
    if len(files) < 2:
        return {}, None
    by_stem = image_per_stem(files)
    best: dict[Path, list[Path]] = {}
    chosen = None
    for suffix in ((mask_suffix,) if mask_suffix else MIXED_SUFFIXES):
        pattern = re.compile(r"^(?P<stem>.+?)" + re.escape(suffix) + r"(?:_(?P<n>\d+))?$")
        found: dict[Path, list[Path]] = {}
        for p in files:
            match = pattern.match(p.stem)
            if match and match.group("stem") in by_stem and by_stem[match.group("stem")] != p:
                found.setdefault(by_stem[match.group("stem")], []).append(p)
        if len(found) > len(best):
            best = {image: sorted(masks, key=lambda m: (len(m.stem), m.name)) for image, masks in found.items()}
            chosen = suffix
    return best, chosen


def named_splits(items: Sequence[dict]) -> tuple[list[dict], dict[str, list[dict]]] | None:
    """The split that image names state, as GlaS's one folder does (``train_12``, ``testA_3``, ``testB_7``): the
    ``train`` items, and the items of each ``test...`` prefix as a test set; None unless every name starts with
    ``train`` or ``test...`` followed by ``_`` or ``-``, and both kinds are there."""
    import re

    pattern = re.compile(r"^(train|test[A-Za-z0-9]*)[_-]", re.IGNORECASE)
    train, tests = [], {}
    for item in items:
        match = pattern.match(item["name"])
        if match is None:
            return None
        prefix = match.group(1)
        if prefix.lower() == "train":
            train.append(item)
        else:
            tests.setdefault(prefix, []).append(item)
    return (train, dict(sorted(tests.items()))) if train and tests else None


def subfolders(folder: Path) -> list[Path]:
    """The folders inside ``folder``, sorted, leaving out hidden ones and the ``__MACOSX`` copy that macOS
    zips add (it mirrors the whole tree with ``._`` files)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")


def find_folders_layout(raw: str | os.PathLike, max_depth: int = 2, mask_suffix: str | None = None
                        ) -> tuple[Path, dict]:
    """The folder in ``raw`` (or up to ``max_depth`` levels below, the shallowest first) holding one of the
    layouts of the module docstring, and that layout; ``mask_suffix``: how masks beside their images are named
    (``--mask_suffix``), where not one of :data:`MIXED_SUFFIXES`.

    Raises:
        DatasetLayoutError: if ``raw`` is not a folder, holds none of the layouts, or holds several at the
            same depth (several datasets: which one is meant is not guessed).
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise LayoutNotFound(f"{raw}: not a folder (expected a folder of images and masks: {EXPECTED})")
    level = [raw]
    for depth in range(max_depth + 1):
        found = [(folder, layout) for folder in level if (layout := _layout_at(folder, mask_suffix)) is not None]
        if len(found) > 1:
            raise DatasetLayoutError(
                f"{raw}: several datasets of images and masks ({', '.join(str(f) for f, _ in found)}); "
                f"give one of them as RAW")
        if found:
            _refuse_datasets_beside(raw, found[0][0], level, max_depth - depth, mask_suffix)
            return found[0]
        level = [sub for folder in level for sub in subfolders(folder)]
    raise LayoutNotFound(f"{raw}: no folders of images and masks found; expected {EXPECTED}")


def _refuse_datasets_beside(raw: Path, chosen: Path, level: list[Path], depth_left: int,
                            mask_suffix: str | None = None) -> None:
    """A dataset deeper in ``raw`` beside ``chosen`` (PraNet's TestDataset/<set>/ beside TrainDataset/) would be
    left out without a word: refused like several datasets at one depth."""
    others = []
    for _ in range(depth_left):
        level = [sub for folder in level if folder != chosen for sub in subfolders(folder)]
        others += [folder for folder in level if _layout_at(folder, mask_suffix) is not None]
    if others:
        named = ", ".join(str(f) for f in [chosen, *others][:6]) + (" ..." if len(others) > 5 else "")
        raise DatasetLayoutError(f"{raw}: several datasets of images and masks ({named}), at different depths; give "
                                 f"one of them as RAW")


def choose_layout(layout: str, native: str, native_found: bool, raw: str | os.PathLike, native_layout: str,
                  find=None, own_layout: str = EXPECTED, mask_suffix: str | None = None) -> bool:
    """Whether an importer reads ``raw`` as folders of images and masks (True) or as its own download.

    Args:
        layout: ``"auto"``, ``native`` or ``"folders"``, as the user gave it.
        native: the name of the importer's own layout (``"challenge"``, ``"pranet"``).
        native_found: whether ``raw`` holds the importer's own layout.
        raw: the dataset folder.
        native_layout: what the importer's own layout looks like, for the error message.
        find: the function that finds your own layout in ``raw`` or raises :class:`LayoutNotFound`
            (default :func:`find_folders_layout`, images and masks); its other errors (several datasets, a
            broken folder) are raised as they are.
        own_layout: what that layout looks like, for the error message.
        mask_suffix: how masks beside their images are named (``--mask_suffix``), for the default ``find``.

    Raises:
        InputError: for another ``layout`` value.
        DatasetLayoutError: when ``layout`` is ``"auto"`` and ``raw`` holds neither layout (naming both).
    """
    if layout not in ("auto", native, "folders"):
        raise InputError(f"layout must be 'auto', '{native}' or 'folders', got {layout!r}")
    if layout != "auto":
        return layout == "folders"
    if native_found:
        return False
    if not Path(raw).is_dir():
        raise DatasetLayoutError(f"{raw}: not a folder (expected {native_layout}, or your own folders: {own_layout})")
    try:
        find(raw) if find else find_folders_layout(raw, mask_suffix=mask_suffix)
    except LayoutNotFound:
        raise DatasetLayoutError(f"{raw}: neither {native_layout} nor your own folders ({own_layout})") from None
    return True


def refuse_options(layout: str, options: dict, applies_to: str) -> None:
    """An option that the chosen ``layout`` does not use is an error, not silently ignored.

    Args:
        layout: the layout in use.
        options: name -> (value given, default) of the options that layout does not use; those left at
            their default pass.
        applies_to: the layout they belong to, for the message.

    Raises:
        InputError: naming the options, the layout they belong to and the one in use.
    """
    given = {name: value for name, (value, default) in options.items() if value != default}
    if given:
        names = ", ".join(f"--{k} {v!r}" for k, v in given.items())
        raise InputError(f"{names}: only for {applies_to} layout, but the dataset is read as {layout} "
                         f"(--layout chooses)")


def chosen_fractions(val_fraction: float, test_fraction: float, val_default: float, test_default: float) -> dict:
    """The split fractions set to other than the importer's defaults, by option name (what the user chose)."""
    given = {"val_fraction": (val_fraction, val_default), "test_fraction": (test_fraction, test_default)}
    return {name: value for name, (value, default) in given.items() if value != default}


def refuse_unused_fraction(option: str, chosen: dict[str, float], why: str, instead: str) -> None:
    """A split fraction given on the command line (in ``chosen``, option name -> value) that the dataset's own split
    leaves unused is an error, not silently ignored.

    Raises:
        InputError: ``--<option> <value>: not used, since <why>; <instead>``.
    """
    if option in chosen:
        raise InputError(f"--{option} {chosen[option]:g}: not used, since {why}; {instead}")


def _suffix_for(images: list[Path], mask_dir: Path) -> str:
    """The mask-name suffix (of :data:`MASK_SUFFIXES`) that pairs the most of ``images`` with a file in ``mask_dir``."""
    exts = {e.lower() for e in IMAGE_EXTENSIONS}
    stems = {p.stem for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() in exts}
    counts = {s: sum(1 for img in images if img.stem + s in stems) for s in MASK_SUFFIXES}
    best = max(MASK_SUFFIXES, key=lambda s: counts[s])  # the first of equals: no suffix before any other
    if counts[best] == 0:
        example = images[0].stem if images else "IMAGE"
        raise DatasetLayoutError(
            f"{mask_dir}: no mask matches an image of {images[0].parent if images else mask_dir} by name (tried "
            f"{', '.join(repr(example + s + '.png') for s in MASK_SUFFIXES)}; set the suffix with --mask_suffix)")
    return best


def _entries(pairs, dataset: str) -> list[dict]:
    """Datalist entries of (image, mask) pairs of one dataset or test set."""
    return [{"image": str(i), "label": str(m), "name": i.stem, "dataset": dataset} for i, m in pairs]


def _items(dirs: tuple[Path, Path], dataset: str, mask_suffix: str | None, skipped: list[dict],
           verify: bool, binary: bool = True) -> tuple[list[dict], str]:
    image_dir, mask_dir = dirs
    images = list_images(image_dir)
    suffix = _suffix_for(images, mask_dir) if mask_suffix is None and images else (mask_suffix or "")
    pairs = paired_images(image_dir, mask_dir, skipped, mask_suffix=suffix, verify=verify, binary=binary,
                          leave_out=MASK_DIRS)
    return _entries(pairs, dataset), suffix


def prepare_folders(raw: str, out: str, *, importer: str, val_fraction: float, test_fraction: float,
                    seed: int = 0, verify: bool = True, mask_suffix: str | None = None, classes=None,
                    mask_values=None, foreground: str = "half", chosen: dict[str, float] | None = None) -> str:
    """Write ``out/datalist.json`` (training / validation / test) from a folders layout in ``raw``.

    Args:
        raw: the folder holding the layout (or a folder up to two levels above it).
        out: output folder.
        importer: the bundle importer calling this (recorded in the datalist's ``meta``).
        val_fraction: share of the training part carved out for validation when no validation folder exists.
        test_fraction: share of all images held out for testing when no test folder exists.
        seed: seed of the random splits (test drawn with ``seed``, validation with ``seed + 1``).
        verify: decode every image and mask once and skip (naming them) pairs that cannot be used.
        mask_suffix: text between an image's stem and its mask's extension; None tries
            :data:`MASK_SUFFIXES` per folder and keeps the one that pairs the most images.
        classes: names of the classes (``"a,b"`` or a list; default: the ``labels`` of a ``dataset.json`` in
            the dataset folder, else one class, binary masks). Two or more make the masks label maps
            (:mod:`vmunet_monai.data.label_maps`), and the datalist records ``labels`` and ``num_classes``.
        mask_values: the mask value of background and of each class, in that order (default: found).
        foreground: binary masks: ``"half"`` (a pixel is foreground from half the mask's scale up: 0/1, 0/255 and
            JPEG grey levels) or ``"nonzero"`` (every value above 0: instance masks that number each object, as
            GlaS's; such masks are written as 0/255 under ``OUT/labels/``).
        chosen: the fractions the user gave (``{"test_fraction": 0.25}``): one that the layout's own test or
            validation folder (or GlaS's file names) leaves unused is refused, where it would be ignored.

    Returns:
        the path of the datalist (skipped files are listed under ``meta.skipped``).

    Raises:
        DatasetLayoutError: for no layout, an empty folder, a folder where no pair is usable, no mask
            named like the images, or OUT inside a folder the data is read from.
    """
    from vmunet_monai.data.volumes import class_names

    root, layout = find_folders_layout(raw, mask_suffix=mask_suffix)
    chosen = chosen or {}
    if layout.get("test"):
        refuse_unused_fraction("test_fraction", chosen, f"the test folder {child_folder(root, _SPLITS['test'])} is "
                               "the test split", "leave it out (it carves a test part where a dataset has no test "
                               "folder)")
    if layout.get("val") is not None:
        refuse_unused_fraction("val_fraction", chosen, f"the validation folder {layout['val'][0].parent} is the "
                               "validation split", "leave it out (it carves a validation part where a dataset has "
                               "no validation folder)")
    folders = [d for dirs in _all_dirs(layout) for d in dirs]
    check_prepare_output(folders, out)
    names = class_names(classes, root)
    described = class_names(None, root) if classes else None  # the dataset.json beside the folders, if any
    if described is not None and len(described) != len(names) and not (len(names) == 1 and foreground == "nonzero"):
        both = ",".join(described.values())
        ways = (f"--foreground nonzero reads every value above 0 as the one class ({names[1]}), --classes {both} "
                f"keeps them apart" if len(names) == 1 else f"give --classes {both}, or one name per class it names")
        given = classes if isinstance(classes, str) else ",".join(map(str, classes))
        raise InputError(f"--classes {given!r}: {len(names)} class{'es' if len(names) > 1 else ''}, but "
                         f"{root / 'dataset.json'} names {len(described)} ({', '.join(described.values())}), each a "
                         f"value of the masks: {ways}")
    multi = names is not None and len(names) > 1
    if foreground not in ("half", "nonzero"):
        raise InputError(f"--foreground {foreground!r}: choose half (0/1, 0/255 and JPEG masks) or nonzero (every "
                         f"value above 0, as instance masks that number each object)")
    if foreground == "nonzero" and multi:
        raise InputError("--foreground nonzero: only for binary masks (with --classes, every value is a class)")
    if mask_values is not None and not multi:
        raise InputError(f"--mask_values {mask_values!r}: only for masks of several classes (name them with "
                         f"--classes, e.g. --classes polyp,instrument)")
    if names is not None and list(names) != list(range(1, len(names) + 1)):
        raise InputError(f"{root / 'dataset.json'}: class numbers {sorted(names)} are not 1 to {len(names)} "
                         f"(give the names in order with --classes)")
    binary_check = not multi and foreground == "half"  # other masks are checked when they are rewritten
    skipped: list[dict] = []
    suffixes: dict[str, str] = {}
    name = root.resolve().name or "dataset"

    def read(dirs, dataset):
        items, suffix = _items(dirs, dataset, mask_suffix, skipped, bool(verify), binary=binary_check)
        suffixes[str(dirs[1])] = suffix
        return items

    def read_mixed(folder: Path, dataset: str) -> list[dict]:
        pairs, suffixes[str(folder)] = mixed_pairs(folder, mask_suffix)
        if not pairs:
            named = f"<image>{mask_suffix}.png" if mask_suffix else f"<image><suffix>.png, suffix one of {MIXED_SUFFIXES}"
            raise DatasetLayoutError(f"{folder}: no image has its mask beside it (named {named})")
        masks = {m for ms in pairs.values() for m in ms}
        paired = {image.stem: image for image in pairs}
        skipped.extend(unread_files(folder))
        for stray in (p for p in list_images_quiet(folder) if p not in pairs and p not in masks):
            reason = (same_stem_reason(stray, pairs[paired[stray.stem]][0], paired[stray.stem])
                      if stray.stem in paired else f"{stray}: no mask beside it (every image needs its mask)")
            skipped.append({"file": str(stray), "reason": reason})
        found = []
        for image, its_masks in pairs.items():
            mask = its_masks[0]
            if len(its_masks) > 1:
                if multi:
                    skipped.append({"file": str(image), "reason": f"{image}: {len(its_masks)} masks beside it; only "
                                    "binary masks are merged (give one label map per image)"})
                    continue
                try:
                    mask = save_label(union_of_masks(its_masks), image.parent / f"{image.stem}_union.png", out,
                                      root)
                except InputError as exc:
                    skipped.append({"file": str(image), "reason": str(exc)})
                    continue
            found.append((image, mask))
        before = len(skipped)
        if verify:
            found = verify_pairs(found, skipped, binary=binary_check)
        if not found:  # with the last reason a pair was skipped for, as the folders of images and masks say it
            own = skipped[before:]
            why = f" (every pair was skipped: {own[-1]['reason']})" if own else ""
            raise DatasetLayoutError(f"{folder}: no usable image/mask pair{why}")
        return _entries(found, dataset)

    test_sets: dict[str, int] = {}
    if "mixed" in layout:
        # read once: each read verifies its pairs and names the files it skips
        read_by_category = {category: read_mixed(folder, category or name)
                            for category, folder in layout["mixed"].items()}
        named = named_splits(read_by_category[""]) if list(read_by_category) == [""] else None
        if named is not None:  # GlaS: train_*, testA_*, testB_* in one folder; the names are the official split
            part_train, tests = named
            refuse_unused_fraction("test_fraction", chosen, f"the file names in {layout['mixed']['']} make the "
                                   f"split (train_*; {', '.join(f'{k}_*' for k in tests)} for testing)",
                                   "leave it out")
            val, train = split_items(part_train, [val_fraction], seed + 1)
            test = []
            for set_name, items in tests.items():
                test_sets[set_name] = len(items)
                test += [dict(item, dataset=set_name) for item in items]
            how = (f"{len(part_train) + len(test)} images with their masks side by side, split by their names: "
                   f"{len(part_train)} train_* for training, test sets "
                   f"{', '.join(f'{k}_* ({v})' for k, v in test_sets.items())}; validation = {val_fraction:g} of "
                   f"train (seed {seed + 1})")
        else:
            train, val, test, total = [], [], [], 0
            for category, items in read_by_category.items():  # split per category: each keeps its share everywhere
                total += len(items)
                part_test, rest = split_items(items, [test_fraction], seed)
                part_val, part_train = split_items(rest, [val_fraction], seed + 1)
                train, val, test = train + part_train, val + part_val, test + part_test
                if len(read_by_category) > 1 and part_test:  # each category is reported apart, as a test set
                    test_sets[category] = len(part_test)
            categories = (f", split per category ({', '.join(read_by_category)})" if len(read_by_category) > 1
                          else "")
            how = (f"{total} images with their masks side by side{categories}: {test_fraction:g} test (seed "
                   f"{seed}); validation = {val_fraction:g} of the rest (seed {seed + 1})")
    elif "pool" in layout:
        pool = read(layout["pool"], name)
        test, rest = split_items(pool, [test_fraction], seed)
        val, train = split_items(rest, [val_fraction], seed + 1)
        how = (f"one pool of {len(pool)} images: {test_fraction:g} test (seed {seed}); validation = "
               f"{val_fraction:g} of the rest (seed {seed + 1})")
    else:
        train = read(layout["train"], name)
        parts = []
        if layout["test"]:
            test = []
            for set_name, dirs in layout["test"].items():
                items = read(dirs, set_name or name)
                test_sets[set_name or name] = len(items)
                test += items
            parts.append("test: the test folder" + (f"'s {len(test_sets)} sets" if len(test_sets) > 1 else ""))
        else:
            test, train = split_items(train, [test_fraction], seed)
            parts.append(f"test: {test_fraction:g} of train (seed {seed})")
            if layout["unlabelled_test"] is not None:
                note = (f"{layout['unlabelled_test']}: no masks/ (or <set>/masks) inside, so it cannot be scored "
                        f"and is left out; the test split is {test_fraction:g} of train instead (segment those "
                        f"images with `python -m vmunet_monai predict` after training)")
                print(f"note: {note}", file=sys.stderr)
                parts.append(note)
        if layout["val"] is not None:
            val = read(layout["val"], name)
            parts.append("validation: the validation folder")
        else:
            val, train = split_items(train, [val_fraction], seed + 1)
            parts.append(f"validation: {val_fraction:g} of train (seed {seed + 1})")
        how = "train folder; " + "; ".join(parts)
    if not train or not val or not test:
        raise DatasetLayoutError(
            f"{root}: too few usable images to split ({len(train)} training, {len(val)} validation, "
            f"{len(test)} test); every split needs at least one")
    meta = {"dataset": f"{name} (folders of images and masks)", "importer": importer, "layout": "folders",
            "raw": str(root.resolve()), "how": how, "seed": seed, "mask_suffixes": suffixes,
            "test_sets": test_sets or {test[0]["dataset"]: len(test)}, "skipped": skipped}
    if multi:
        meta.update(prepare_label_maps(train + val + test, names, mask_values, out, root))
    elif names:
        meta.update({"labels": {"0": "background", "1": names[1]}, "num_classes": 2})
    if foreground == "nonzero":
        written = binarize_nonzero(train + val + test, out, root)
        meta["foreground"] = (f"every value above 0; {written} of {len(train) + len(val) + len(test)} masks "
                              f"rewritten as 0/255 under {LABELS_FOLDER}/")
    path = write_datalist(out, {"training": train, "validation": val, "test": test}, meta)
    report_skipped(skipped, "image")
    summary = (f"{name}: {len(train)} training, {len(val)} validation, {len(test)} test images"
               + (f" (test sets {test_sets})" if len(test_sets) > 1 else "")
               + (f", {len(names)} classes: train, evaluate and predict with --num_classes {len(names) + 1}"
                  if multi else ""))
    announce(out, path, {"training": train, "validation": val, "test": test}, summary,
             labels=names if multi else None)
    return path


def union_of_masks(masks: list[Path]) -> np.ndarray:
    """The union of several binary masks of one image (BUSI draws each lesion in its own file), as 0/255.

    Raises:
        InputError: naming the masks when their sizes differ.
    """
    from PIL import Image

    from vmunet_monai.engine import BinarizeMaskd, gray_converter

    arrays = []
    for mask in masks:
        with Image.open(mask) as opened:
            arrays.append(np.asarray(gray_converter(opened)))  # as training reads one mask
    if len({a.shape for a in arrays}) > 1:
        sizes = ", ".join(f"{m.name} {a.shape[1]}x{a.shape[0]}" for m, a in zip(masks, arrays))
        raise InputError(f"{masks[0].parent}: the masks of one image differ in size ({sizes})")
    union = np.zeros(arrays[0].shape, bool)
    for a in arrays:
        union |= BinarizeMaskd("m")({"m": a})["m"] > 0
    return union.astype(np.uint8) * 255


def _all_dirs(layout: dict) -> list[tuple[Path, Path]]:
    if "mixed" in layout:
        return [(folder, folder) for folder in layout["mixed"].values()]
    if "pool" in layout:
        return [layout["pool"]]
    return [layout["train"]] + ([layout["val"]] if layout["val"] else []) + list(layout["test"].values())
