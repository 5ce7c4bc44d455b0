"""ISIC 2016, 2017 and 2018 lesion segmentation (part / task 1) as the challenge distributes it, and a synthetic
stand-in.

Folders recognised anywhere up to three levels below RAW (names as in the challenge zips):

=============  ==========================================  =======================================
split          ISIC 2017 (2016: ``ISBI2016_ISIC_Part1_*``)  ISIC 2018
=============  ==========================================  =======================================
training       ``ISIC-2017_Training_Data``                 ``ISIC2018_Task1-2_Training_Input``
               ``ISIC-2017_Training_Part1_GroundTruth``    ``ISIC2018_Task1_Training_GroundTruth``
validation     ``ISIC-2017_Validation_Data`` (+ GT)        ``ISIC2018_Task1-2_Validation_Input`` (+ GT)
test           ``ISIC-2017_Test_v2_Data`` (+ GT)           ``ISIC2018_Task1-2_Test_Input`` (+ GT)
=============  ==========================================  =======================================

ISIC 2016 has no validation set (900 training and 379 test images): validation is carved from training.
Images are ``ISIC_<id>.jpg``; masks are ``ISIC_<id>_segmentation.png`` (0/255; 2016: ``_Segmentation``). ISIC 2017's
``*_superpixels.png`` companions are skipped. Where ISIC 2017's part 3 tables lie in RAW
(``ISIC-2017_Training_Part3_GroundTruth.csv`` and its validation and test counterparts), each image's set names
its diagnosis, ``ISIC2017 melanoma``, ``ISIC2017 seborrheic keratosis`` or ``ISIC2017 nevus``, so the evaluation
reports Dice per diagnosis beside the whole test set. Splits (``split=``):

- ``"official"``: train on the challenge training set; validate on the challenge validation set
  (or, with ``validation="carve"`` or when it is absent, on ``val_fraction`` of training); test on
  the challenge test set. Needs the test ground truth.
- ``"paper"``: the VM-UNet papers' random 7:3 split of the released labelled images (training plus
  validation: 2,150 for ISIC 2017, 2,694 for ISIC 2018), seeded; the validation split for
  checkpoint selection is then carved from the 70 %, never taken from the 30 % test part.
- ``"auto"`` (default): official when the test ground truth is present, else paper.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from vmunet_monai.data.common import (
    DatasetLayoutError,
    check_prepare_output,
    paired_images,
    random_blob_mask,
    report_skipped,
    save_mask,
    save_rgb,
    smooth_noise,
    soft_edges,
    split_items,
    write_datalist,
)
from vmunet_monai.data.folders import (chosen_fractions, choose_layout, prepare_folders, refuse_options,
                                       refuse_unused_fraction)
from vmunet_monai.data.ph2 import find_ph2, prepare_ph2, write_demo_ph2
from vmunet_monai.data.preview import announce
from vmunet_monai.validation import InputError

__all__ = ["prepare", "demo_data", "find_isic_folders", "read_isic2017_diagnoses"]

_YEAR = re.compile(r"(?:ISIC|ISBI)[-_]?(\d{4})", re.IGNORECASE)  # ISBI2016_ISIC_Part1_... for 2016
_ROLES = (("train", re.compile(r"training", re.I)), ("val", re.compile(r"validation", re.I)),
          ("test", re.compile(r"test", re.I)))
_SEG_GT = re.compile(r"groundtruth", re.I)
_TASK1 = re.compile(r"part1|task1_", re.I)
_DATA = re.compile(r"data|input", re.I)
_EXCLUDE = (r"_superpixels$", r"_segmentation$")


def _classify(name: str) -> tuple[int, str, str] | None:
    """(year, role, kind) of a challenge folder name, kind being 'image' or 'mask'; None if not one."""
    m = _YEAR.search(name)
    if not m:
        return None
    role = next((r for r, pattern in _ROLES if pattern.search(name)), None)
    if role is None:
        return None
    if _SEG_GT.search(name):
        return (int(m.group(1)), role, "mask") if _TASK1.search(name) else None
    if _DATA.search(name):
        return int(m.group(1)), role, "image"
    return None


def _has_files(folder: Path) -> bool:
    return any(p.is_file() for p in folder.iterdir())


def find_isic_folders(raw: str | os.PathLike, max_depth: int = 3) -> dict[int, dict[tuple[str, str], Path]]:
    """Challenge folders under ``raw`` by year, then by (role, kind); a zip extracted into a folder of
    the same name is handled by taking the deepest match that holds files.

    Raises:
        DatasetLayoutError: if ``raw`` is not a folder.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetLayoutError(f"{raw}: not a folder (expected the folder holding the ISIC challenge downloads)")
    found: dict[int, dict[tuple[str, str], Path]] = {}
    for dirpath, dirnames, _ in os.walk(raw):
        depth = len(Path(dirpath).relative_to(raw).parts)
        # a zip extracted on macOS holds __MACOSX/ with "._X" companions of every folder: not the downloads
        dirnames[:] = [] if depth >= max_depth else [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        for d in sorted(dirnames):
            info = _classify(d)
            if info is None:
                continue
            folder = Path(dirpath) / d
            year, role, kind = info
            if _has_files(folder):
                found.setdefault(year, {})[(role, kind)] = folder
    return found


def _pairs(folders: dict[tuple[str, str], Path], role: str, skipped: list[dict],
           verify: bool) -> list[tuple[Path, Path]] | None:
    images, masks = folders.get((role, "image")), folders.get((role, "mask"))
    if images is None or masks is None:
        return None
    return paired_images(images, masks, skipped, mask_suffix="_segmentation", verify=verify, exclude=_EXCLUDE)


_PART3 = re.compile(r"ISIC-2017_.*Part3_GroundTruth\.csv$", re.IGNORECASE)


def read_isic2017_diagnoses(raw: str | os.PathLike, max_depth: int = 3) -> dict[str, str]:
    """Image id -> diagnosis from ISIC 2017's part 3 ground truth (``ISIC-2017_*_Part3_GroundTruth.csv``: columns
    ``image_id``, ``melanoma``, ``seborrheic_keratosis``, each 0 or 1) anywhere up to ``max_depth`` levels below
    ``raw``: ``melanoma``, ``seborrheic keratosis``, or ``nevus`` (neither). Empty where there is no such table.

    Raises:
        DatasetLayoutError: a table without those columns, or a row whose values are not 0 or 1 (naming the file
            and the row).
    """
    import csv

    found: dict[str, str] = {}
    raw = Path(raw)
    for dirpath, dirnames, filenames in os.walk(raw):
        if len(Path(dirpath).relative_to(raw).parts) >= max_depth:
            dirnames[:] = []
        for name in sorted(filenames):
            if not _PART3.match(name):
                continue
            path = Path(dirpath) / name
            with open(path, newline="", encoding="utf-8", errors="replace") as handle:
                reader = csv.DictReader(handle)
                needed = {"image_id", "melanoma", "seborrheic_keratosis"}
                if not needed <= set(reader.fieldnames or ()):
                    raise DatasetLayoutError(f"{path}: expected the columns image_id, melanoma and "
                                             f"seborrheic_keratosis (found {reader.fieldnames})")
                for number, row in enumerate(reader, 2):
                    try:
                        melanoma, keratosis = (float(row[k]) for k in ("melanoma", "seborrheic_keratosis"))
                    except (TypeError, ValueError):
                        melanoma = keratosis = -1.0
                    if melanoma not in (0.0, 1.0) or keratosis not in (0.0, 1.0):
                        raise DatasetLayoutError(f"{path}: row {number} ({row.get('image_id')}) gives melanoma "
                                                 f"{row.get('melanoma')!r} and seborrheic_keratosis "
                                                 f"{row.get('seborrheic_keratosis')!r}; each must be 0 or 1")
                    found[row["image_id"].strip()] = ("melanoma" if melanoma else "seborrheic keratosis" if keratosis
                                                      else "nevus")
    return found


def _items(pairs, year: int, diagnoses: dict[str, str] | None = None) -> list[dict]:
    """Datalist entries; with ISIC 2017's diagnoses each image's set names its diagnosis (``ISIC2017 melanoma``),
    so the evaluation reports them apart."""
    diagnoses = diagnoses or {}
    return [{"image": str(i), "label": str(m), "name": i.stem,
             "dataset": f"ISIC{year} {diagnoses[i.stem]}" if i.stem in diagnoses else f"ISIC{year}"}
            for i, m in pairs]


def prepare(raw: str, out: str, split: str = "auto", year: int | None = None, val_fraction: float = 0.2,
            test_fraction: float = 0.3, validation: str = "auto", seed: int = 0, verify: bool = True,
            layout: str = "auto", mask_suffix: str | None = None, classes=None, mask_values=None,
            foreground: str = "half") -> str:
    """Write ``out/datalist.json`` (training / validation / test) from ISIC challenge downloads in ``raw``,
    or from your own folders of images and masks (:mod:`vmunet_monai.data.folders`), binary or of several
    classes (:mod:`vmunet_monai.data.label_maps`).

    Args:
        raw: folder holding the extracted challenge folders (or your folders of images and masks).
        out: output folder.
        split: ``"official"``, ``"paper"`` (seeded 7:3) or ``"auto"`` (see the module docstring; for PH2, ``"auto"``
            puts every image in the test split).
        year: 2016, 2017 or 2018; needed only when several are present.
        val_fraction: share of the training part carved out for validation when carving.
        test_fraction: test share of the paper split.
        validation: ``"auto"`` (the challenge validation set when present in an official split, else
            carved) or ``"carve"`` (always carved from training).
        seed: seed of every random split.
        verify: decode every image and mask once and skip (naming them) pairs that cannot be used:
            unreadable or truncated files, image and mask of different sizes, masks that are not
            0/1 or 0/255. Images without a mask are always skipped and named.
        layout: ``"challenge"`` (the ISIC folders), ``"folders"`` (your own images/ and masks/, see
            :mod:`vmunet_monai.data.folders`; ``test_fraction`` and ``val_fraction`` carve the splits
            it lacks), ``"ph2"`` (the PH2 set, :mod:`vmunet_monai.data.ph2`: every image in the test split,
            an external test set, or with ``split`` ``"paper"`` divided per diagnosis) or ``"auto"`` (challenge
            folders when present, else PH2's image folders, else folders).
        mask_suffix, classes, mask_values, foreground: folders layout only, as
            :func:`vmunet_monai.data.folders.prepare_folders` takes them (mask names, several classes, instance
            masks).

    Returns:
        the path of the datalist (skipped files are listed under ``meta.skipped``).

    Raises:
        DatasetLayoutError: when no usable training folders are found, when both years are present
            and ``year`` is not given, when an official split lacks the test ground truth, or when
            OUT is inside one of the challenge folders.
        ValueError: for an unknown ``split`` or ``validation`` value.
    """
    if split not in ("auto", "official", "paper"):
        raise ValueError(f"split must be 'auto', 'official' or 'paper', got {split!r}")
    if validation not in ("auto", "carve"):
        raise ValueError(f"validation must be 'auto' or 'carve', got {validation!r}")
    found = find_isic_folders(raw) if layout not in ("folders", "ph2") else {}
    if layout == "ph2" or (layout == "auto" and not found and find_ph2(raw) is not None):
        refuse_options("ph2", {"year": (year, None), "validation": (validation, "auto"),
                               "mask_suffix": (mask_suffix, None), "classes": (classes, None),
                               "mask_values": (mask_values, None), "foreground": (foreground, "half")},
                       "the ISIC challenge or the folders")
        return prepare_ph2(raw, out, split=split, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                           verify=verify)
    if layout not in ("auto", "challenge", "folders"):
        raise InputError(f"layout must be 'auto', 'challenge', 'folders' or 'ph2', got {layout!r}")
    # any challenge folder means the challenge layout (whose message then says what is missing)
    use_folders = choose_layout(layout, "challenge", bool(found), raw,
                                "the ISIC challenge folders (e.g. ISIC-2017_Training_Data/ with "
                                "ISIC-2017_Training_Part1_GroundTruth/)", mask_suffix=mask_suffix)
    if use_folders:
        not_here = {"split": (split, "auto"), "year": (year, None), "validation": (validation, "auto")}
        refuse_options("folders", not_here, "the ISIC challenge")
        return prepare_folders(raw, out, importer="vmunet_monai.data.isic", val_fraction=val_fraction,
                               test_fraction=test_fraction, seed=seed, verify=verify, mask_suffix=mask_suffix,
                               classes=classes, mask_values=mask_values, foreground=foreground,
                               chosen=chosen_fractions(val_fraction, test_fraction, 0.2, 0.3))
    refuse_options("challenge", {"mask_suffix": (mask_suffix, None), "classes": (classes, None),
                                 "mask_values": (mask_values, None), "foreground": (foreground, "half")}, "the folders")
    check_prepare_output([folder for folders in found.values() for folder in folders.values()], out)
    usable = {y: f for y, f in found.items() if ("train", "image") in f and ("train", "mask") in f}
    if not usable:
        raise DatasetLayoutError(
            f"{raw}: no ISIC training images and masks found; expected e.g. ISIC-2017_Training_Data/ with "
            f"ISIC-2017_Training_Part1_GroundTruth/*_segmentation.png, or ISIC2018_Task1-2_Training_Input/ with "
            f"ISIC2018_Task1_Training_GroundTruth/ (found: {sorted(str(p) for f in found.values() for p in f.values())})"
        )
    if year is None:
        if len(usable) > 1:
            raise DatasetLayoutError(f"{raw}: ISIC {', '.join(map(str, sorted(usable)))} are all present; choose one "
                                     "with --year")
        year = next(iter(usable))
    if int(year) not in usable:
        raise DatasetLayoutError(f"{raw}: no ISIC {year} training folders (found years {sorted(usable)})")
    year = int(year)
    folders = usable[year]
    chosen = chosen_fractions(val_fraction, test_fraction, 0.2, 0.3)
    has_test = ("test", "image") in folders and ("test", "mask") in folders
    if split == "official" or (split == "auto" and has_test):  # refused before minutes of checking every pair
        refuse_unused_fraction("test_fraction", chosen, f"the official split tests on the challenge test set "
                               f"({folders.get(('test', 'image'), 'its test folders')})", "give --split paper to "
                               "hold out a share of the labelled images for testing instead")
        if ("val", "image") in folders and ("val", "mask") in folders and validation == "auto":
            refuse_unused_fraction("val_fraction", chosen, f"the challenge validation set ({folders[('val', 'image')]}) "
                                   "is the validation split", "give --validation carve to carve validation from the "
                                   "training set instead")
    skipped: list[dict] = []
    diagnoses = read_isic2017_diagnoses(raw) if year == 2017 else {}
    train = _items(_pairs(folders, "train", skipped, verify), year, diagnoses)
    official_val = _pairs(folders, "val", skipped, verify)
    official_test = _pairs(folders, "test", skipped, verify)
    if split == "auto":
        split = "official" if official_test else "paper"
    if split == "official":
        if not official_test:
            raise DatasetLayoutError(
                f"{raw}: split='official' needs the ISIC {year} test images and test ground truth folders; "
                f"use split='paper' for the papers' 7:3 split of the labelled images"
            )
        test = _items(official_test, year, diagnoses)
        if official_val and validation == "auto":
            val, how_val = _items(official_val, year, diagnoses), "challenge validation set"
        else:
            val, train = split_items(train, [val_fraction], seed)
            how_val = f"{val_fraction:g} of the challenge training set (seed {seed})"
        how = f"ISIC {year} challenge training / test sets; validation: {how_val}"
    else:
        pool = train + (_items(official_val, year, diagnoses) if official_val else [])
        test, rest = split_items(pool, [test_fraction], seed)
        val, train = split_items(rest, [val_fraction], seed + 1)
        how = (f"papers' random split of the {len(pool)} labelled ISIC {year} images: {test_fraction:g} test "
               f"(seed {seed}); validation = {val_fraction:g} of the rest (seed {seed + 1}), never the test part")
    path = write_datalist(
        out, {"training": train, "validation": val, "test": test},
        {"dataset": f"ISIC {year} task 1 (lesion segmentation)", "importer": "vmunet_monai.data.isic",
         "raw": str(Path(raw).resolve()), "split": split, "how": how, "seed": seed, "skipped": skipped,
         "diagnoses": f"{len(diagnoses)} images' diagnoses from the part 3 tables" if diagnoses else None},
    )
    report_skipped(skipped, "image")
    summary = f"ISIC {year}: {len(train)} training, {len(val)} validation, {len(test)} test images"
    announce(out, path, {"training": train, "validation": val, "test": test}, summary)
    return path


def _lesion_image(height: int, width: int, rng, core: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A dermoscopy-like RGB image (skin texture, hairs, dark vignette) and its lesion mask; with ``core``, the
    lesion has a dark core and the mask holds 0 (skin), 1 (lesion) and 2 (core)."""
    skin = np.array([rng.uniform(200, 240), rng.uniform(150, 190), rng.uniform(120, 160)], dtype=np.float32)
    shade = 1 + 0.08 * smooth_noise(height, width, max(8, width // 4), rng)
    grain = 6 * rng.standard_normal((height, width, 1)).astype(np.float32)
    image = skin * shade[..., None] + grain
    mask = random_blob_mask(height, width, rng, area_fraction=(0.12, 0.35), roughness=0.25)
    lesion = np.array([rng.uniform(90, 150), rng.uniform(50, 90), rng.uniform(35, 70)], dtype=np.float32)
    mottling = 1 + 0.25 * smooth_noise(height, width, max(4, width // 12), rng)
    alpha = soft_edges(mask, sigma=rng.uniform(0.8, 2.0))[..., None]
    image = (1 - alpha) * image + alpha * lesion * mottling[..., None]
    if core:
        inner = random_blob_mask(height, width, rng, area_fraction=(0.03, 0.08), roughness=0.2,
                                 center_jitter=0.05) & mask
        image = image * (1 - 0.55 * soft_edges(inner, sigma=1.0)[..., None])
        mask = mask.astype(np.uint8) + inner.astype(np.uint8)
    for _ in range(rng.integers(0, 4)):  # hairs: thin dark curves across the image
        t = np.linspace(0, 1, 4 * max(height, width))
        y0, x0, y1, x1 = rng.uniform(0, 1, 4) * [height, width, height, width]
        bend = rng.uniform(-0.2, 0.2) * min(height, width)
        ys = np.clip(y0 + (y1 - y0) * t + bend * np.sin(np.pi * t), 0, height - 1).astype(int)
        xs = np.clip(x0 + (x1 - x0) * t, 0, width - 1).astype(int)
        image[ys, xs] = image[ys, xs] * 0.35
    yy, xx = np.mgrid[0:height, 0:width]
    r = np.sqrt(((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2)
    image *= np.clip(1.25 - 0.45 * r, 0.2, 1)[..., None]  # dermatoscope vignette
    return image, mask


def _write_part3_tables(root: Path, counts: dict[str, int], rng) -> None:
    """ISIC 2017's part 3 ground truth for the synthetic images (numbered in the order demo_data writes them):
    melanoma, seborrheic keratosis or neither, about as often as in the challenge (19%, 13%, 68%)."""
    index = 0
    files = {"train": "ISIC-2017_Training_Part3_GroundTruth.csv", "val": "ISIC-2017_Validation_Part3_GroundTruth.csv",
             "test": "ISIC-2017_Test_v2_Part3_GroundTruth.csv"}
    root.mkdir(parents=True, exist_ok=True)
    for role, count in counts.items():
        rows = ["image_id,melanoma,seborrheic_keratosis"]
        for _ in range(count):
            kind = rng.choice(3, p=[0.19, 0.13, 0.68])
            rows.append(f"ISIC_{index:07d},{float(kind == 0)},{float(kind == 1)}")
            index += 1
        (root / files[role]).write_text("\n".join(rows) + "\n")


def demo_data(out: str, num: int = 48, seed: int = 0, year: int = 2017, layout: str = "challenge",
              classes: int = 1) -> str:
    """Write a synthetic ISIC dataset in the challenge layout under ``out`` (lesion-like blobs on skin texture).

    Args:
        out: output folder (the RAW argument of :func:`prepare`).
        num: training images; the validation and test folders get ``max(2, num // 4)`` each.
        seed: random seed (the same seed writes the same files).
        year: 2016, 2017 or 2018 folder naming (2016: no validation folders, masks named ``_Segmentation``).
        layout: ``"challenge"``, or ``"folders"``: ``num`` images in ``images/`` with their masks in ``masks/``
            named ``<stem>_mask.png``, as your own data may come (:mod:`vmunet_monai.data.folders`), or ``"ph2"``:
            ``num`` images in PH2's layout with its clinical table (:mod:`vmunet_monai.data.ph2`).
        classes: folders layout: 2 gives each lesion a dark core, a second class; the masks then hold the grey
            levels 0 (skin), 127 (lesion) and 255 (core), and ``dataset.json`` names the classes, as
            :mod:`vmunet_monai.data.label_maps` reads them.

    Returns:
        ``out``.
    """
    if year not in (2016, 2017, 2018):
        raise ValueError(f"year must be 2016, 2017 or 2018, got {year}")
    if num < 2:
        raise ValueError(f"num must be at least 2, got {num}")
    if layout not in ("challenge", "folders", "ph2"):
        raise ValueError(f"layout must be 'challenge', 'folders' or 'ph2', got {layout!r}")
    if classes not in (1, 2) or (classes == 2 and layout != "folders"):
        raise ValueError(f"classes must be 1, or 2 with layout 'folders', got {classes!r}")
    rng = np.random.default_rng(seed)
    root = Path(out)
    if layout == "ph2":
        written = write_demo_ph2(root, num, rng, _lesion_image)
        print(f"synthetic lesions in PH2's layout: {num} images with lesion masks and PH2_dataset.txt -> {written}")
        return str(root)
    if layout == "folders":
        for k in range(num):
            width = int(rng.integers(112, 176))
            image, mask = _lesion_image(int(width * rng.uniform(0.7, 0.9)), width, rng, core=classes == 2)
            save_rgb(image, root / "images" / f"lesion_{k:04d}.jpg")
            if classes == 2:
                path = root / "masks" / f"lesion_{k:04d}_mask.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((np.asarray(mask, np.uint16) * 255 // 2).astype(np.uint8)).save(path)
            else:
                save_mask(mask, root / "masks" / f"lesion_{k:04d}_mask.png")
        if classes == 2:
            (root / "dataset.json").write_text(json.dumps(
                {"name": "synthetic lesions with a dark core", "labels": {"0": "background", "1": "lesion",
                                                                          "2": "dark_core"}}, indent=4) + "\n")
        print(f"synthetic lesions in your-own-data folders: {num} images in images/, masks in masks/"
              + (" (grey levels 0 skin, 127 lesion, 255 dark core; classes named in dataset.json)" if classes == 2
                 else "") + f" -> {root}")
        return str(root)
    if year == 2017:
        names = {"train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
                 "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
                 "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth")}
    elif year == 2016:
        names = {"train": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
                 "test": ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth")}
    else:
        names = {"train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
                 "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
                 "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth")}
    counts = {role: num if role == "train" else max(2, num // 4) for role in names}
    if year == 2017:  # the part 3 tables (diagnoses), drawn apart so the images are those of the same seed
        _write_part3_tables(root, counts, np.random.default_rng(seed + 1))
    index = 0
    for role, (image_dir, mask_dir) in names.items():
        for k in range(counts[role]):
            width = int(rng.integers(112, 176))
            height = int(width * rng.uniform(0.7, 0.9))
            image, mask = _lesion_image(height, width, rng)
            stem = f"ISIC_{index:07d}"
            save_rgb(image, root / image_dir / f"{stem}.jpg")
            save_mask(mask, root / mask_dir / f"{stem}_{'S' if year == 2016 else 's'}egmentation.png")
            if year == 2017 and k == 0:  # the 2017 zips ship superpixel maps beside the images
                save_rgb(rng.integers(0, 255, (height, width, 3)), root / image_dir / f"{stem}_superpixels.png")
            index += 1
    print(f"synthetic ISIC {year}: {sum(counts.values())} images ({counts}) -> {root}")
    return str(root)
