"""Colonoscopy polyp segmentation in the PraNet layout, and a synthetic stand-in.

The PraNet release (used by VM-UNetV2) ships::

    TrainDataset/{image|images}/*.png   TrainDataset/{mask|masks}/*.png        (900 Kvasir + 550 CVC-ClinicDB)
    TestDataset/<set>/{images|image}/   TestDataset/<set>/{masks|mask}/         (5 sets)

with the test sets CVC-300 (60), CVC-ClinicDB (62), Kvasir (100), CVC-ColonDB (380) and
ETIS-LaribPolypDB (196). Images and masks share a file name (masks may be JPEG, binarised at
half scale by the bundles). :func:`prepare` writes ``training`` and a seeded ``validation`` split
carved from TrainDataset (the official code picked its checkpoint on the test sets; here the test
sets are never seen before the final evaluation), and ``test`` with each item's ``dataset`` field
naming its set, so evaluation reports every set separately.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

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
from vmunet_monai.data.folders import chosen_fractions, choose_layout, prepare_folders, refuse_options
from vmunet_monai.data.preview import announce

__all__ = ["TEST_SETS", "prepare", "demo_data", "find_pranet_root"]

TEST_SETS = ("CVC-300", "CVC-ClinicDB", "Kvasir", "CVC-ColonDB", "ETIS-LaribPolypDB")
_IMAGE_DIRS = ("images", "image", "Images", "Image")
_MASK_DIRS = ("masks", "mask", "Masks", "Mask", "GT", "gt")


def find_pranet_root(raw: str | os.PathLike, max_depth: int = 3) -> Path:
    """The folder holding ``TrainDataset`` and ``TestDataset`` (``raw`` itself or a folder below it).

    Raises:
        DatasetLayoutError: if none is found.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise DatasetLayoutError(f"{raw}: not a folder (expected the PraNet TrainDataset/TestDataset download)")
    for dirpath, dirnames, _ in os.walk(raw):
        if "TrainDataset" in dirnames and "TestDataset" in dirnames:
            return Path(dirpath)
        if len(Path(dirpath).relative_to(raw).parts) >= max_depth:
            dirnames[:] = []
    raise DatasetLayoutError(
        f"{raw}: no folder holding both TrainDataset/ and TestDataset/ (the PraNet layout: "
        f"TrainDataset/images, TrainDataset/masks, TestDataset/<set>/images, TestDataset/<set>/masks)"
    )


def _sub(folder: Path, names) -> Path:
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    raise DatasetLayoutError(f"{folder}: expected one of the subfolders {', '.join(names)}")


def _pairs(folder: Path, dataset: str, skipped: list[dict], verify: bool) -> list[dict]:
    pairs = paired_images(_sub(folder, _IMAGE_DIRS), _sub(folder, _MASK_DIRS), skipped, verify=verify)
    return [{"image": str(i), "label": str(m), "name": i.stem, "dataset": dataset} for i, m in pairs]


def prepare(raw: str, out: str, val_fraction: float = 0.1, seed: int = 0, verify: bool = True,
            layout: str = "auto", test_fraction: float = 0.2, mask_suffix: str | None = None, classes=None,
            mask_values=None, foreground: str = "half") -> str:
    """Write ``out/datalist.json`` from the PraNet polyp layout in ``raw``, or from your own folders of
    images and masks (:mod:`vmunet_monai.data.folders`), binary or of several classes
    (:mod:`vmunet_monai.data.label_maps`).

    Args:
        raw: the folder holding TrainDataset/ and TestDataset/ (or a folder above it), or your folders.
        out: output folder.
        val_fraction: share of TrainDataset carved out (seeded) for validation and checkpoint selection.
        seed: split seed.
        verify: decode every image and mask once and skip (naming them) pairs that cannot be used:
            unreadable or truncated files, image and mask of different sizes, masks that are not
            0/1 or 0/255. Images without a mask are always skipped and named.
        layout: ``"pranet"``, ``"folders"`` (your own images/ and masks/, or train/, val/, test/ and
            test/<set>/ folders, each set reported apart like the PraNet test sets) or ``"auto"``
            (PraNet when TrainDataset/ and TestDataset/ are present, else folders).
        test_fraction: folders layout without a test folder: share of the images held out for testing.
        mask_suffix, classes, mask_values, foreground: folders layout only, as
            :func:`vmunet_monai.data.folders.prepare_folders` takes them (mask names, several classes, instance
            masks).

    Returns:
        the path of the datalist (skipped files are listed under ``meta.skipped``).

    Raises:
        DatasetLayoutError: for a missing folder, an empty set, a set where no image could be used,
            or OUT being inside TrainDataset/ or TestDataset/.
    """
    try:
        root = find_pranet_root(raw) if layout != "folders" else None
    except DatasetLayoutError:
        # a part of the PraNet download (TestDataset alone, say) gets PraNet's message, not the folders reading
        partial = Path(raw).name in ("TrainDataset", "TestDataset") or any(
            (Path(raw) / name).is_dir() for name in ("TrainDataset", "TestDataset"))
        if layout == "pranet" or (layout == "auto" and partial):
            raise
        root = None
    if choose_layout(layout, "pranet", root is not None, raw,
                     "the PraNet layout (TrainDataset/ and TestDataset/<set>/)", mask_suffix=mask_suffix):
        return prepare_folders(raw, out, importer="vmunet_monai.data.polyp", val_fraction=val_fraction,
                               test_fraction=test_fraction, seed=seed, verify=verify, mask_suffix=mask_suffix,
                               classes=classes, mask_values=mask_values, foreground=foreground,
                               chosen=chosen_fractions(val_fraction, test_fraction, 0.1, 0.2))
    given = {"test_fraction": (test_fraction, 0.2), "mask_suffix": (mask_suffix, None), "classes": (classes, None),
             "mask_values": (mask_values, None), "foreground": (foreground, "half")}
    refuse_options("pranet", given, "the folders")
    check_prepare_output([root / "TrainDataset", root / "TestDataset"], out)
    skipped: list[dict] = []
    everything = _pairs(root / "TrainDataset", "TrainDataset", skipped, verify)
    val, train = split_items(everything, [val_fraction], seed)
    test_root = root / "TestDataset"
    present = sorted(p.name for p in test_root.iterdir() if p.is_dir())
    if not present:
        raise DatasetLayoutError(f"{test_root}: no test set folders (expected {', '.join(TEST_SETS)})")
    order = [s for s in TEST_SETS if s in present] + [s for s in present if s not in TEST_SETS]
    test, counts = [], {}
    for name in order:
        try:
            items = _pairs(test_root / name, name, skipped, verify)
        except DatasetLayoutError as exc:  # one unusable test set does not stop the others
            skipped.append({"file": str(test_root / name), "reason": str(exc)})
            continue
        counts[name] = len(items)
        test += items
    missing = [s for s in TEST_SETS if s not in present]
    path = write_datalist(
        out, {"training": train, "validation": val, "test": test},
        {"dataset": "polyp segmentation, PraNet protocol", "importer": "vmunet_monai.data.polyp",
         "raw": str(root.resolve()), "test_sets": counts, "missing_test_sets": missing,
         "how": f"training = TrainDataset minus validation ({val_fraction:g}, seed {seed}); test = each TestDataset set",
         "seed": seed, "skipped": skipped},
    )
    report_skipped(skipped, "image")
    note = f" (missing: {', '.join(missing)})" if missing else ""
    summary = f"polyp: {len(train)} training, {len(val)} validation, test sets {counts}{note}"
    announce(out, path, {"training": train, "validation": val, "test": test}, summary)
    return path


def _polyp_image(height: int, width: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """An endoscopy-like RGB frame (reddish mucosa, vessels, highlights, dark lumen) and its polyp mask."""
    mucosa = np.array([rng.uniform(170, 215), rng.uniform(70, 105), rng.uniform(60, 90)], dtype=np.float32)
    shade = 1 + 0.2 * smooth_noise(height, width, max(8, width // 3), rng)
    image = mucosa * shade[..., None] + 5 * rng.standard_normal((height, width, 1)).astype(np.float32)
    vessels = np.abs(smooth_noise(height, width, max(4, width // 10), rng)) < 0.04
    image[vessels] *= np.array([0.8, 0.6, 0.6], dtype=np.float32)
    mask = random_blob_mask(height, width, rng, area_fraction=(0.06, 0.25), roughness=0.1, center_jitter=0.25)
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    radius = max(np.sqrt(mask.sum() / np.pi), 1.0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    # dome lighting: brighter toward one side of the polyp, like a protrusion lit from the scope
    ly, lx = rng.uniform(-0.5, 0.5, 2)
    dome = 1.1 + 0.15 * (((yy - cy) * ly + (xx - cx) * lx) / radius) - 0.12 * (((yy - cy) ** 2 + (xx - cx) ** 2) / radius ** 2)
    polyp = np.array([rng.uniform(200, 240), rng.uniform(110, 150), rng.uniform(90, 130)], dtype=np.float32)
    texture = 1 + 0.1 * smooth_noise(height, width, max(3, width // 16), rng)
    alpha = soft_edges(mask, sigma=rng.uniform(1.0, 2.0))[..., None]
    image = (1 - alpha) * image + alpha * polyp * (dome * texture)[..., None]
    for _ in range(rng.integers(2, 7)):  # specular highlights anywhere
        hy, hx = rng.uniform(0, height), rng.uniform(0, width)
        spot = ((yy - hy) ** 2 + (xx - hx) ** 2) < rng.uniform(1, 9)
        image[spot] = 250
    r = np.sqrt(((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2)
    image *= np.clip(1.3 - 0.5 * r, 0.15, 1)[..., None]
    return image, mask


def _gland_image(height: int, width: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A histology-like RGB tile (pink stroma, purple nuclei) with glands, and their instance mask: each gland
    numbered 1, 2, ... and some of them touching, as in GlaS."""
    stroma = np.array([rng.uniform(215, 240), rng.uniform(160, 190), rng.uniform(200, 225)], dtype=np.float32)
    image = stroma * (1 + 0.08 * smooth_noise(height, width, max(6, width // 8), rng))[..., None]
    image += 6 * rng.standard_normal((height, width, 1)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    mask = np.zeros((height, width), np.uint8)
    step = int(rng.integers(38, 50))
    number = 0
    for cy in range(step // 2, height, step):
        for cx in range(step // 2, width, step):
            if rng.random() < 0.25:
                continue
            ry, rx = rng.uniform(0.35, 0.62) * step, rng.uniform(0.35, 0.62) * step  # wide ones touch neighbours
            y0, x0 = cy + rng.uniform(-0.12, 0.12) * step, cx + rng.uniform(-0.12, 0.12) * step
            r = np.sqrt(((yy - y0) / ry) ** 2 + ((xx - x0) / rx) ** 2)
            gland = (r < 1) & (mask == 0)
            if gland.sum() < 30:
                continue
            number += 1
            mask[gland] = number
            rim, lumen = gland & (r > 0.65), gland & (r <= 0.65)
            image[rim] = np.array([120, 60, 150], np.float32) + 10 * rng.standard_normal((int(rim.sum()), 3))
            image[lumen] = np.array([245, 235, 245], np.float32)
    nuclei = (smooth_noise(height, width, 3, rng) > 0.55) & (mask == 0)
    image[nuclei] = np.array([90, 50, 130], np.float32)
    return np.clip(image, 0, 255), mask


def demo_data(out: str, num: int = 48, seed: int = 0, layout: str = "pranet") -> str:
    """Write a synthetic polyp dataset in the PraNet layout under ``out`` (polyp-like blobs on mucosa texture).

    Args:
        out: output folder (the RAW argument of :func:`prepare`).
        num: TrainDataset images; each of the five test sets gets ``max(2, num // 8)``.
        seed: random seed.
        layout: ``"pranet"``; ``"folders"``: ``train/{images,masks}`` with ``num`` images and two test sets
            ``test/centre_A`` and ``test/centre_B``, as your own data may come (:mod:`vmunet_monai.data.folders`);
            or ``"glands"``: GlaS's one folder of histology tiles with their masks beside them, each gland
            numbered (``train_<k>.bmp`` + ``train_<k>_anno.bmp``, ``num`` of them, and ``max(2, num // 4)`` each of
            ``testA_<k>`` and ``testB_<k>``), for ``prepare --foreground nonzero`` and the ``objects`` command.

    Returns:
        ``out``.
    """
    if num < 2:
        raise ValueError(f"num must be at least 2, got {num}")
    if layout not in ("pranet", "folders", "glands"):
        raise ValueError(f"layout must be 'pranet', 'folders' or 'glands', got {layout!r}")
    rng = np.random.default_rng(seed)
    root = Path(out)
    if layout == "glands":
        from PIL import Image

        root.mkdir(parents=True, exist_ok=True)
        counts = {"train": num, "testA": max(2, num // 4), "testB": max(2, num // 4)}
        for prefix, count in counts.items():
            for k in range(1, count + 1):
                width = int(rng.integers(150, 200))
                image, mask = _gland_image(int(width * rng.uniform(0.7, 0.8)), width, rng)
                Image.fromarray(image.astype(np.uint8)).save(root / f"{prefix}_{k}.bmp")
                Image.fromarray(mask).save(root / f"{prefix}_{k}_anno.bmp")
        print(f"synthetic glands in GlaS's layout: {counts} tiles with their numbered masks beside them (X_anno.bmp) "
              f"-> {root}")
        return str(root)

    def write(folder: Path, stem: str, ext: str = ".png") -> None:
        width = int(rng.integers(112, 160))
        height = int(width * rng.uniform(0.8, 1.0))
        image, mask = _polyp_image(height, width, rng)
        save_rgb(image, folder / "images" / f"{stem}{ext}")
        save_mask(mask, folder / "masks" / f"{stem}.png")

    if layout == "folders":
        per_centre = max(2, num // 8)
        for k in range(num):
            write(root / "train", f"frame_{k:04d}")
        for centre in ("centre_A", "centre_B"):
            for k in range(per_centre):
                write(root / "test" / centre, f"{centre}_{k:03d}", ".jpg")
        print(f"synthetic polyps in your-own-data folders: {num} in train/, {per_centre} in each of test/centre_A "
              f"and test/centre_B -> {root}")
        return str(root)
    for k in range(num):  # Kvasir-like hashed names and ClinicDB-like numbers, as in the real TrainDataset
        write(root / "TrainDataset", f"cju{k:04x}kvsr" if k % 2 else str(k + 1))
    per_set = max(2, num // 8)
    for name in TEST_SETS:
        for k in range(per_set):  # the same names recur across sets, as in the real release
            write(root / "TestDataset" / name, str(k + 1), ".jpg" if name == "Kvasir" else ".png")
    print(f"synthetic polyp data: {num} training images, {per_set} per test set x {len(TEST_SETS)} -> {root}")
    return str(root)
