"""The PH2 dermoscopy set (200 images of the Pedro Hispano hospital): an external test set for the skin-lesion
bundle, or a small dataset of its own.

PH2 comes as one folder per image, found in RAW or up to three levels below it::

    PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp    the image
    PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp        its lesion mask (0/255)
    PH2Dataset/PH2_dataset.txt                                                  the clinical table

``PH2_dataset.txt`` (``||``-separated) gives each image's clinical diagnosis, 0 common nevus, 1 atypical nevus,
2 melanoma (80, 80 and 40 images); each image's ``dataset`` field names it (``PH2 melanoma``), so the evaluation
reports every diagnosis apart. Without the table the images are all ``PH2``. Other folders of an image
(``IMD002_roi``: colour regions) are left alone.

``prepare isic_skin_lesion RAW OUT`` reads this layout when RAW holds it (``--layout ph2`` to insist). With
``--split auto`` (the default) every image goes to the test split, as papers use PH2 after training on ISIC:
``--dataset_dir OUT`` on the bundle's ``evaluate.json`` then scores an ISIC-trained model on it. ``--split
paper`` divides PH2 itself into test, validation and training parts (``--test_fraction``, ``--val_fraction``,
``--seed``), keeping the share of each diagnosis in each part.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vmunet_monai.data.common import (
    DatasetLayoutError,
    check_prepare_output,
    report_skipped,
    split_items,
    verify_pairs,
    write_datalist,
)
from vmunet_monai.data.preview import announce

__all__ = ["PH2_DIAGNOSES", "find_ph2", "prepare_ph2", "read_ph2_diagnoses", "write_demo_ph2"]

PH2_DIAGNOSES = {0: "common nevus", 1: "atypical nevus", 2: "melanoma"}
_CASE = re.compile(r"^IMD\d+$", re.IGNORECASE)
IMAGES_FOLDER = "PH2 Dataset images"
TABLE = "PH2_dataset.txt"


def _is_case(folder: Path) -> bool:
    return bool(_CASE.match(folder.name)) and (folder / f"{folder.name}_Dermoscopic_Image").is_dir()


def find_ph2(raw: str | os.PathLike, max_depth: int = 3) -> Path | None:
    """The folder holding PH2's per-image folders (``IMD002/IMD002_Dermoscopic_Image/...``) in ``raw`` or up to
    ``max_depth`` levels below it; None if there is none."""
    raw = Path(raw)
    if not raw.is_dir():
        return None
    level = [raw]
    for _ in range(max_depth + 1):
        below = []
        for folder in level:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:  # a folder that cannot be read is not PH2's
                continue
            if any(_is_case(child) for child in children):
                return folder
            below += children
        level = below
    return None


def read_ph2_diagnoses(table: str | os.PathLike) -> dict[str, str]:
    """Image name -> clinical diagnosis from ``PH2_dataset.txt``: rows ``|| IMD003 || <histology> || 0 || ...``,
    the third ``||`` field the diagnosis code (:data:`PH2_DIAGNOSES`). Rows that do not parse are left out.

    Raises:
        DatasetLayoutError: a code that is not 0, 1 or 2 (naming the file, the row and the value).
    """
    found: dict[str, str] = {}
    with open(table, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            fields = [f.strip() for f in line.strip().strip("|").split("||")]
            if len(fields) < 3 or not _CASE.match(fields[0]):
                continue
            code = fields[2].split("|")[0].strip()
            if not code.isdigit() or int(code) not in PH2_DIAGNOSES:
                raise DatasetLayoutError(f"{table}: row {number} ({fields[0]}) gives the clinical diagnosis "
                                         f"{code!r}; PH2 codes it 0 (common nevus), 1 (atypical nevus) or 2 (melanoma)")
            found[fields[0].upper()] = PH2_DIAGNOSES[int(code)]
    return found


def _table_near(folder: Path) -> Path | None:
    """``PH2_dataset.txt`` beside the images folder or one or two levels above it."""
    for place in (folder, folder.parent, folder.parent.parent):
        if (place / TABLE).is_file():
            return place / TABLE
    return None


def prepare_ph2(raw: str | os.PathLike, out: str | os.PathLike, split: str = "auto", val_fraction: float = 0.2,
                test_fraction: float = 0.3, seed: int = 0, verify: bool = True) -> str:
    """Write ``out/datalist.json`` from PH2 in ``raw`` (module docstring): every image in the test split
    (``split`` ``"auto"``, an external test set), or seeded test, validation and training parts of each diagnosis
    (``"paper"``).

    Raises:
        DatasetLayoutError: no PH2 image folders in ``raw``, or none with its image and lesion mask.
        InputError: ``split`` ``"official"`` (PH2 has no official split).
    """
    from vmunet_monai.validation import InputError

    if split not in ("auto", "paper"):
        raise InputError(f"--split {split!r}: PH2 has no official split; 'auto' puts every image in the test split "
                         f"(an external test set), 'paper' divides it (--test_fraction, --val_fraction)")
    if split == "auto":  # every image tests: a fraction given would change nothing
        from vmunet_monai.data.folders import chosen_fractions, refuse_unused_fraction

        chosen = chosen_fractions(val_fraction, test_fraction, 0.2, 0.3)
        for option in ("test_fraction", "val_fraction"):
            refuse_unused_fraction(option, chosen, "PH2 is read as an external test set (every image in the test "
                                   "split)", "give --split paper to divide it per diagnosis into training, validation "
                                   "and test parts")
    folder = find_ph2(raw)
    if folder is None:
        raise DatasetLayoutError(f"{raw}: no PH2 image folders (expected e.g. '{IMAGES_FOLDER}/IMD002/"
                                 f"IMD002_Dermoscopic_Image/IMD002.bmp' with IMD002_lesion/IMD002_lesion.bmp)")
    check_prepare_output([folder], out)
    table = _table_near(folder)
    diagnoses = read_ph2_diagnoses(table) if table else {}
    skipped: list[dict] = []
    pairs = []
    for case in sorted(p for p in folder.iterdir() if p.is_dir() and _is_case(p)):
        images = sorted(f for f in (case / f"{case.name}_Dermoscopic_Image").iterdir() if f.is_file())
        masks = sorted((case / f"{case.name}_lesion").glob(f"{case.name}_lesion.*")) if (
            case / f"{case.name}_lesion").is_dir() else []
        if not images or not masks:
            what = "image" if not images else "lesion mask"
            skipped.append({"file": str(case), "reason": f"{case}: no {what} (expected {case.name}_Dermoscopic_Image/"
                                                         f"{case.name}.bmp and {case.name}_lesion/{case.name}_lesion.bmp)"})
            continue
        pairs.append((images[0], masks[0]))
    if verify:
        pairs = verify_pairs(pairs, skipped)
    if not pairs:
        first = f"; first: {skipped[0]['reason']}" if skipped else ""
        raise DatasetLayoutError(f"{folder}: no PH2 image with its lesion mask could be used{first}")
    items = [{"image": str(image), "label": str(mask), "name": image.stem,
              "dataset": f"PH2 {diagnoses[image.stem.upper()]}" if image.stem.upper() in diagnoses else "PH2"}
             for image, mask in pairs]
    if split == "auto":
        train, val, test = [], [], items
        how = f"every PH2 image in the test split (an external test set), {len(items)} images"
    else:
        train, val, test = [], [], []
        for group in sorted({item["dataset"] for item in items}):  # each diagnosis divided alike
            part_test, rest = split_items([i for i in items if i["dataset"] == group], [test_fraction], seed)
            part_val, part_train = split_items(rest, [val_fraction], seed + 1)
            test, val, train = test + part_test, val + part_val, train + part_train
        how = (f"PH2 divided per diagnosis: {test_fraction:g} test (seed {seed}); validation = {val_fraction:g} of "
               f"the rest (seed {seed + 1})")
    path = write_datalist(out, {"training": train, "validation": val, "test": test},
                          {"dataset": "PH2 (dermoscopy, Pedro Hispano hospital)", "importer": "vmunet_monai.data.isic",
                           "layout": "ph2", "raw": str(Path(raw).resolve()), "split": split, "how": how, "seed": seed,
                           "diagnoses": str(table) if table else None, "skipped": skipped})
    report_skipped(skipped, "image")
    counts = {}
    for item in test:
        counts[item["dataset"]] = counts.get(item["dataset"], 0) + 1
    groups = ", ".join(f"{n} {g}" for g, n in sorted(counts.items()))
    summary = (f"PH2: {len(train)} training, {len(val)} validation, {len(test)} test images ({groups}"
               + ("" if table else f"; no {TABLE}, so no diagnoses") + ")")
    announce(out, path, {"training": train, "validation": val, "test": test}, summary)
    if split == "auto":
        print(f"to score a model trained on ISIC on it: python -m monai.bundle run evaluating ... --dataset_dir {out}")
    return path


def write_demo_ph2(out: str | os.PathLike, num: int, rng, lesion_image) -> Path:
    """Synthetic lesions in PH2's layout under ``out/PH2Dataset`` (``num`` images, their lesion masks as 0/255 BMP,
    a colour-region folder as PH2 has, and ``PH2_dataset.txt`` with diagnoses in PH2's proportions 2:2:1);
    ``lesion_image(height, width, rng)`` draws each image and mask."""
    import numpy as np
    from PIL import Image

    root = Path(out) / "PH2Dataset"
    rows = ["|| Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry || Pigment Network || "
            "Dots/Globules || Streaks || Regression Areas || Blue-Whitish Veil || Colors ||"]
    for k in range(num):
        name = f"IMD{k + 2:03d}"
        case = root / IMAGES_FOLDER / name
        width = int(rng.integers(144, 192))
        image, mask = lesion_image(int(width * 0.73), width, rng)  # PH2's 768x560 aspect
        for sub, picture in ((f"{name}_Dermoscopic_Image", np.clip(image, 0, 255).astype(np.uint8)),
                             (f"{name}_lesion", (np.asarray(mask) > 0).astype(np.uint8) * 255),
                             (f"{name}_roi", np.zeros(np.asarray(mask).shape, np.uint8))):
            (case / sub).mkdir(parents=True, exist_ok=True)
            stem = name if sub.endswith("Image") else sub if sub.endswith("lesion") else f"{name}_roi_0"
            Image.fromarray(picture).save(case / sub / f"{stem}.bmp")
        code = (0, 0, 1, 1, 2)[k % 5]
        histology = "Melanoma" if code == 2 else ""
        rows.append(f"|| {name} || {histology} || {code} || 0 || AT || A || A || A || A || 2  3 ||")
    (root / TABLE).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root
