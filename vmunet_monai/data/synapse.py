"""Synapse multi-organ CT (BTCV): importer for the layouts people hold, and synthetic demo volumes.

Layouts read by :func:`prepare`:

* **RawData** as downloaded from synapse.org (``RawData.zip``): ``Training/img/img00XX.nii.gz`` and
  ``Training/label/label00XX.nii.gz`` with the 13 BTCV labels. The images are referenced in place;
  the labels are mapped to the 8 evaluated organs and written to ``OUT/labels``.
* **imagesTr / labelsTr**: the same files as MONAI's BTCV tutorial stores them
  (``imagesTr/img00XX.nii.gz``, ``labelsTr/label00XX.nii.gz``, in RAW or a folder just below it);
  read like RawData (``imagesTs/``, unlabelled, is not used).
* **TransUNet release** (``train_npz/caseXXXX_sliceYYY.npz`` and ``test_vol_h5/caseXXXX.npy.h5``):
  slices and volumes already windowed to [-125, 275] HU and scaled to [0, 1], without spacing.
  They are converted back to Hounsfield units (``x * 400 - 125``, so the bundle's window gives the
  same values again) and written as NIfTI volumes with a spacing the caller states.

All write ``OUT/datalist.json`` with ``training``, ``validation`` and ``test`` lists of
``{"case", "image", "label"}`` (paths relative to ``OUT`` where possible), the standard 18/12 case
split, and a seeded validation split drawn from the training cases only.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmunet_monai.validation import InputError, as_typed, number_list

__all__ = [
    "BTCV_TO_SYNAPSE",
    "DEMO_OWN_CLASSES",
    "ORGANS",
    "STANDARD_TEST_CASES",
    "STANDARD_TRAIN_CASES",
    "TRANSUNET_DEFAULT_SPACING",
    "demo_data",
    "map_btcv_labels",
    "prepare",
]

# channel / label value -> organ, as evaluated by TransUNet and the VM-UNet papers
ORGANS = {
    1: "aorta",
    2: "gallbladder",
    3: "left_kidney",
    4: "right_kidney",
    5: "liver",
    6: "pancreas",
    7: "spleen",
    8: "stomach",
}
# BTCV label values: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 5 esophagus, 6 liver,
# 7 stomach, 8 aorta, 9 inferior vena cava, 10 portal and splenic veins, 11 pancreas,
# 12 right adrenal gland, 13 left adrenal gland. Unlisted values become background.
BTCV_TO_SYNAPSE = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}

STANDARD_TRAIN_CASES = (5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40)
STANDARD_TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)

# The TransUNet release drops the spacing. 0.76 mm is close to the in-plane median of the 30 labelled
# BTCV scans (0.54-0.98 mm) and 3 mm to their slice thickness median (2.5-5 mm); pass the real values if known.
TRANSUNET_DEFAULT_SPACING = (0.76, 0.76, 3.0)
HU_WINDOW = (-125.0, 275.0)

_RAW_IMAGE = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_NPZ_SLICE = re.compile(r"^case(\d+)_slice(\d+)\.npz$")
_H5_VOLUME = re.compile(r"^case(\d+)\.npy\.h5$")


def map_btcv_labels(label: np.ndarray) -> np.ndarray:
    """Map BTCV label values (0-13) to the 8 evaluated organs (0 = background), as ``uint8``.

    Raises:
        ValueError: if the array holds values outside 0-13 (not a BTCV label map).
    """
    values = np.unique(label)
    bad = values[(values < 0) | (values > 13) | (values != np.round(values))]
    if bad.size:
        raise ValueError(f"BTCV labels must be integers 0-13, found {bad[:5].tolist()}")
    lut = np.zeros(14, dtype=np.uint8)
    for btcv, organ in BTCV_TO_SYNAPSE.items():
        lut[btcv] = organ
    return lut[np.asarray(label).astype(np.int64)]


def _find_layout(raw: str) -> tuple[str, str]:
    """('rawdata', folder holding Training/), ('imagestr', folder holding imagesTr/ and labelsTr/) or
    ('transunet', folder holding train_npz/ and test_vol_h5/)."""
    for candidate in (raw, os.path.join(raw, "RawData"), os.path.join(raw, "Abdomen", "RawData")):
        if os.path.isdir(os.path.join(candidate, "Training", "img")):
            return "rawdata", candidate
    candidates = [raw] + sorted(os.path.join(raw, d) for d in (os.listdir(raw) if os.path.isdir(raw) else ()))
    for candidate in candidates:
        if (os.path.isdir(os.path.join(candidate, "imagesTr")) and os.path.isdir(os.path.join(candidate, "labelsTr"))
                and any(_RAW_IMAGE.match(n) for n in os.listdir(os.path.join(candidate, "imagesTr")))):
            return "imagestr", candidate  # other imagesTr/ folders are your own data (vmunet_monai.data.volumes)
    for candidate in (raw, os.path.join(raw, "Synapse"), os.path.join(raw, "data", "Synapse")):
        if os.path.isdir(os.path.join(candidate, "train_npz")) or os.path.isdir(os.path.join(candidate, "test_vol_h5")):
            return "transunet", candidate
    raise FileNotFoundError(
        f"{raw}: not a Synapse dataset. Expected RawData (Training/img/img00XX.nii.gz and "
        "Training/label/label00XX.nii.gz, possibly under RawData/), the same files in imagesTr/ and labelsTr/ "
        "(MONAI's BTCV tutorial), or the TransUNet release "
        "(train_npz/caseXXXX_sliceYYY.npz and test_vol_h5/caseXXXX.npy.h5)."
    )


def _volume_dirs(layout: str, root: str) -> tuple[str, str]:
    """The (image, label) folders of a RawData or imagesTr layout."""
    if layout == "rawdata":
        return os.path.join(root, "Training", "img"), os.path.join(root, "Training", "label")
    return os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr")


def _relative(path: str, out: str) -> str:
    """Path relative to ``out`` when it lies inside it, else absolute (the datalist's base dir is ``out``)."""
    path, out = os.path.abspath(path), os.path.abspath(out)
    return os.path.relpath(path, out) if os.path.commonpath([path, out]) == out else path


def _split_cases(cases: Sequence[int], num_val: int | None, seed: int) -> dict[str, list[int]]:
    """Standard 18/12 split; validation drawn (seeded) from the training cases, never from the test cases."""
    unknown = sorted(set(cases) - set(STANDARD_TRAIN_CASES) - set(STANDARD_TEST_CASES))
    if unknown:
        warnings.warn(f"cases {unknown} are not among the 30 labelled Synapse cases; they join the training pool")
    pool = sorted(c for c in cases if c not in STANDARD_TEST_CASES)
    test = sorted(c for c in cases if c in STANDARD_TEST_CASES)
    if len(pool) < 2:
        raise ValueError(f"need at least 2 training cases to draw a validation split, found {pool}")
    if num_val is None:  # 3 of the 18 standard training cases; proportionally fewer for smaller sets
        num_val = max(1, round(len(pool) / 6))
    if not 1 <= num_val < len(pool):
        raise ValueError(f"num_val={num_val} must be between 1 and {len(pool) - 1} (training cases: {len(pool)})")
    rng = np.random.default_rng(seed)
    val = sorted(int(c) for c in rng.choice(pool, size=num_val, replace=False))
    train = [c for c in pool if c not in val]
    return {"training": train, "validation": val, "test": test}


def _write_datalist(out: str, entries: dict[int, dict], split: dict[str, list[int]], extra: dict) -> str:
    datalist = {key: [entries[c] for c in split[key]] for key in ("training", "validation", "test")}
    datalist["labels"] = {"0": "background", **{str(k): v for k, v in ORGANS.items()}}
    datalist["split"] = {key: [f"{c:04d}" for c in split[key]] for key in ("training", "validation", "test")}
    datalist.update(extra)
    path = os.path.join(out, "datalist.json")
    with open(path, "w") as f:
        json.dump(datalist, f, indent=4)
    from vmunet_monai.data.preview import announce

    summary = (f"Synapse: {len(split['training'])} training, {len(split['validation'])} validation, "
               f"{len(split['test'])} test cases")
    absolute = {k: [{**e, "image": os.path.join(out, e["image"]), "label": os.path.join(out, e["label"])}
                    for e in datalist[k]] for k in ("training", "validation", "test")}
    announce(out, path, absolute, summary, labels=ORGANS)
    return path


def _check_rawdata_case(image: str, label_in: str, verify: bool) -> np.ndarray:
    """The BTCV label array of one RawData case after the checks; raises InputError naming the file and rule."""
    from vmunet_monai.data.volumes import check_volume_pair
    from vmunet_monai.validation import check_label_values

    label = check_volume_pair(image, label_in, verify)
    check_label_values(label, label_in, num_classes=14)  # the 13 BTCV organs and background
    return map_btcv_labels(label)


def _prepare_rawdata(root: str, out: str, num_val: int | None, seed: int, verify: bool = True,
                     layout: str = "rawdata") -> str:
    import nibabel as nib
    from tqdm import tqdm

    from vmunet_monai.data.common import report_skipped
    from vmunet_monai.data.volumes import volume_affine

    img_dir, lab_dir = _volume_dirs(layout, root)
    cases = {}
    for name in sorted(os.listdir(img_dir)):
        match = _RAW_IMAGE.match(name)
        if match:
            cases[int(match.group(1))] = os.path.join(img_dir, name)
    if not cases:
        raise FileNotFoundError(f"{img_dir}: no img00XX.nii.gz files")
    os.makedirs(os.path.join(out, "labels"), exist_ok=True)
    entries, skipped = {}, []
    for case, image in tqdm(sorted(cases.items()), desc="labels -> 8 organs"):
        ext = ".nii.gz" if image.endswith(".gz") else ".nii"
        label_in = os.path.join(lab_dir, f"label{case:04d}{ext}")
        other = os.path.join(lab_dir, f"label{case:04d}{'.nii' if ext == '.nii.gz' else '.nii.gz'}")
        if not os.path.exists(label_in) and os.path.exists(other):  # one gzipped, the other not
            label_in = other
        try:
            mapped = _check_rawdata_case(image, label_in, verify)
        except InputError as exc:  # one broken case does not stop the others
            skipped.append({"file": image, "reason": str(exc)})
            continue
        lab = nib.load(label_in)
        label_out = os.path.join(out, "labels", f"label{case:04d}.nii.gz")
        # on the image's grid: a label stored with its axes in another order comes back in the image's
        mapped_img = nib.Nifti1Image(mapped, volume_affine(image), lab.header)
        mapped_img.set_data_dtype(np.uint8)
        nib.save(mapped_img, label_out)
        entries[case] = {"case": f"{case:04d}", "image": _relative(image, out), "label": _relative(label_out, out)}
    report_skipped(skipped, "case")
    if not entries:
        raise InputError(f"{root}: no usable case; every case was skipped (first: {skipped[0]['reason']})")
    split = _split_cases(list(entries), num_val, seed)
    source = "RawData" if layout == "rawdata" else "imagesTr/labelsTr (BTCV, MONAI tutorial layout)"
    return _write_datalist(out, entries, split, {"source": source, "seed": seed, "skipped": skipped})


def _to_hu(scaled: np.ndarray) -> np.ndarray:
    low, high = HU_WINDOW
    return (np.asarray(scaled, dtype=np.float32) * (high - low) + low).astype(np.float32)


def _save_volume(image_dhw: np.ndarray, label_dhw: np.ndarray, spacing, img_path: str, lab_path: str):
    """(D, H, W) arrays -> NIfTI (H, W, D) with a diagonal affine of ``spacing``."""
    import nibabel as nib

    affine = np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(_to_hu(image_dhw), (1, 2, 0))), affine)
    label = nib.Nifti1Image(np.ascontiguousarray(np.transpose(label_dhw, (1, 2, 0))).astype(np.uint8), affine)
    for img in (image, label):
        img.header.set_xyzt_units("mm")
    nib.save(image, img_path)
    nib.save(label, lab_path)


def _prepare_transunet(root: str, out: str, num_val: int | None, seed: int, spacing: Sequence[float]) -> str:
    from tqdm import tqdm

    spacing = tuple(float(s) for s in spacing)  # checked by prepare
    h5_dir = os.path.join(root, "test_vol_h5")
    h5_files = sorted(f for f in os.listdir(h5_dir) if _H5_VOLUME.match(f)) if os.path.isdir(h5_dir) else []
    if h5_files:  # before anything is written
        try:
            import h5py
        except ImportError as exc:
            raise ImportError(f"{h5_dir}: reading .npy.h5 volumes needs h5py (pip install h5py)") from exc
    img_dir, lab_dir = os.path.join(out, "images"), os.path.join(out, "labels")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    entries = {}

    slices: dict[int, list[tuple[int, str]]] = {}
    npz_dir = os.path.join(root, "train_npz")
    if os.path.isdir(npz_dir):
        for name in os.listdir(npz_dir):
            match = _NPZ_SLICE.match(name)
            if match:
                slices.setdefault(int(match.group(1)), []).append((int(match.group(2)), os.path.join(npz_dir, name)))
    from vmunet_monai.data.common import report_skipped
    from vmunet_monai.validation import check_label_values, input_error

    skipped, gaps = [], []

    def npz_case(case, items):
        items.sort()
        index = [i for i, _ in items]
        missing = sorted(set(range(index[0], index[-1] + 1)) - set(index))
        if missing:  # said after the progress bar, on a line of its own
            shown = ", ".join(map(str, missing[:6])) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            gaps.append(f"case{case:04d}: train_npz has no slice {shown} between {index[0]} and {index[-1]}; its "
                        f"volume is stacked without them ({len(index)} slices), which slice-wise training does not "
                        "mind but a 3D view of it does")
        images, labels = [], []
        for _, path in items:
            try:
                with np.load(path) as data:
                    if "image" not in data or "label" not in data:
                        raise input_error(path, f"holds the arrays {list(data.keys())}",
                                          "a TransUNet slice holds 'image' and 'label'")
                    images.append(data["image"])
                    labels.append(data["label"])
            except InputError:
                raise
            except Exception as exc:  # truncated or not an npz file
                raise input_error(path, f"cannot be read ({type(exc).__name__}: {exc})",
                                  "a complete .npz file") from None
        shapes = {a.shape for a in images} | {a.shape for a in labels}
        if len(shapes) != 1:
            raise input_error(items[0][1], f"case{case:04d}'s slices have different shapes {sorted(shapes)}",
                              "every slice of a case, image and label, has one shape")
        check_label_values(np.stack(labels), items[0][1], num_classes=9)
        return _convert_case(case, np.stack(images), np.stack(labels), spacing, out, img_dir, lab_dir)

    for case, items in tqdm(sorted(slices.items()), desc="train_npz -> NIfTI"):
        try:
            entries[case] = npz_case(case, items)
        except InputError as exc:  # one broken case does not stop the others
            skipped.append({"file": f"case{case:04d} in {npz_dir}", "reason": str(exc)})
    for gap in gaps:
        warnings.warn(gap)
    if not h5_files:
        warnings.warn(f"{root}: no caseXXXX.npy.h5 in test_vol_h5/ (the release's 12 test volumes): the datalist has "
                      "no test cases, which evaluate.json and score need")

    if h5_files:
        for name in tqdm(h5_files, desc="test_vol_h5 -> NIfTI"):
            case, path = int(_H5_VOLUME.match(name).group(1)), os.path.join(h5_dir, name)
            try:
                try:
                    with h5py.File(path, "r") as data:
                        image, label = data["image"][:], data["label"][:]
                except Exception as exc:  # truncated, not HDF5, or without the two arrays
                    raise input_error(path, f"cannot be read ({type(exc).__name__}: {exc})",
                                      "a complete .npy.h5 file with 'image' and 'label'") from None
                if image.ndim != 3 or image.shape != label.shape:
                    raise input_error(path, f"image {image.shape} and label {label.shape}",
                                      "a (D, H, W) image and label of one shape")
                check_label_values(label, path, num_classes=9)
                entries[case] = _convert_case(case, image, label, spacing, out, img_dir, lab_dir)
            except InputError as exc:
                skipped.append({"file": path, "reason": str(exc)})
    report_skipped(skipped, "case")
    if not entries:
        if skipped:
            raise InputError(f"{root}: no usable case; every case was skipped (first: {skipped[0]['reason']})")
        raise FileNotFoundError(
            f"{root}: no caseXXXX_sliceYYY.npz in train_npz/ and no caseXXXX.npy.h5 in test_vol_h5/"
        )
    split = _split_cases(list(entries), num_val, seed)
    extra = {
        "source": "TransUNet npz/h5",
        "seed": seed,
        "spacing_mm": list(spacing),
        "note": "spacing stated at conversion (the release has none); intensities restored to HU as x*400-125",
        "skipped": skipped,
    }
    return _write_datalist(out, entries, split, extra)


def _convert_case(case, image, label, spacing, out, img_dir, lab_dir) -> dict:
    if label.max() > 8 or label.min() < 0:
        raise ValueError(f"case{case:04d}: TransUNet labels must be 0-8, found range {label.min()}-{label.max()}")
    img_path = os.path.join(img_dir, f"img{case:04d}.nii.gz")
    lab_path = os.path.join(lab_dir, f"label{case:04d}.nii.gz")
    _save_volume(image, label, spacing, img_path, lab_path)
    return {"case": f"{case:04d}", "image": _relative(img_path, out), "label": _relative(lab_path, out)}


def prepare(
    raw: str, out: str, num_val: int | None = None, seed: int = 0, spacing: Sequence[float] | None = None,
    verify: bool = True, layout: str = "auto", classes: str | None = None, test_fraction: float = 0.2,
    split: str = "auto", intensity: str = "auto", channel: str | None = None,
) -> str:
    """Write ``out/datalist.json`` from Synapse RawData, its imagesTr/labelsTr form or the TransUNet npz/h5
    release (detected from the layout).

    Args:
        raw: the RawData folder (or its parent), the folder holding imagesTr/ and labelsTr/ (or its parent),
            or the TransUNet ``Synapse`` folder.
        out: output folder: datalist.json, mapped labels (and converted volumes for the TransUNet release).
        num_val: validation cases drawn from the training cases (seeded); default 3 of the standard 18
            (one in six of the training cases).
        seed: seed of the validation draw.
        spacing: (x, y, z) in mm for the TransUNet release, which carries none
            (default :data:`TRANSUNET_DEFAULT_SPACING`); ignored for RawData, whose headers hold it.
        verify: RawData: decode every image volume too (a truncated file is found now, not in
            training); labels are always read. A case that fails a check (missing or unreadable
            label, 2D or multi-channel file, NaN voxels, image and label of different sizes or
            grids, label values outside 0-13; for the TransUNet release an unreadable file, slices
            of different shapes or labels outside 0-8) is skipped, named on stderr and listed under
            ``skipped`` in the datalist.
        layout: ``"btcv"`` (RawData, imagesTr/labelsTr of BTCV, the TransUNet release), ``"folders"`` (your own
            CT or MRI volumes and classes, also one folder per patient as ACDC,
            :mod:`vmunet_monai.data.volumes`) or ``"auto"`` (BTCV when found, else folders).
        classes: folders: names of the label values 1, 2, ... separated by commas (default: dataset.json; ACDC's
            RV, MYO, LV).
        test_fraction: folders without a labelled test set: share of the cases (patients) held out for testing.
        split: folders: ``auto``, or ``mamba_unet`` for ACDC (Mamba-UNet's 70 / 10 / 20 split of the training
            patients, :data:`vmunet_monai.data.volumes.MAMBA_UNET_ACDC_SPLIT`).
        intensity: folders: how the bundle is to scale the volumes, ``auto`` (``mri`` for MRI and for volumes
            without air, else ``ct``), ``ct``, ``mri`` or ``minmax`` (:mod:`vmunet_monai.data.volumes`).
        channel: folders: the channel read where a case has several, nnU-Net's number (or its dataset.json name)
            or the name ending volumes that share one label (BraTS's flair) (:mod:`vmunet_monai.data.volumes`).

    Returns:
        The path of the datalist.

    Raises:
        FileNotFoundError: if ``raw`` holds none of the layouts, or imagesTr/ without BTCV's img00XX files.
        vmunet_monai.validation.InputError: if no case can be used, or OUT is inside a folder the data is read from.
    """
    from vmunet_monai.data.common import check_prepare_output
    from vmunet_monai.data.folders import choose_layout, refuse_options
    from vmunet_monai.data.volumes import EXPECTED as VOLUME_LAYOUT
    from vmunet_monai.data.volumes import find_volume_layout, prepare_volumes

    try:
        found = _find_layout(raw) if layout != "folders" else None
    except FileNotFoundError:
        if layout == "btcv":
            raise
        found = None
    if choose_layout(layout, "btcv", found is not None, raw,
                     "BTCV (RawData/Training/{img,label}, imagesTr/img00XX with labelsTr/label00XX, or the TransUNet "
                     "release)", find=find_volume_layout, own_layout=VOLUME_LAYOUT):
        refuse_options("folders", {"spacing": (spacing, None)}, "the TransUNet release's")
        return prepare_volumes(raw, out, num_val=num_val, seed=int(seed), verify=bool(verify), classes=classes,
                               test_fraction=test_fraction, split=split, intensity=intensity, channel=channel)
    given = {"classes": (classes, None), "test_fraction": (test_fraction, 0.2), "split": (split, "auto"),
             "intensity": (intensity, "auto"), "channel": (channel, None)}
    refuse_options("btcv", given, "the folders")
    layout, root = found
    if spacing is not None and layout != "transunet":
        raise InputError(f"--spacing {as_typed(spacing)!r}: only for the TransUNet release, which carries no spacing; "
                         f"{root} is read as {layout}, whose volumes keep their own")
    if spacing is not None:
        spacing = number_list("--spacing", spacing, float, count=3, above=0, example="0.76,0.76,3")
    read_from = (list(_volume_dirs(layout, root)) if layout != "transunet"
                 else [os.path.join(root, "train_npz"), os.path.join(root, "test_vol_h5")])
    check_prepare_output(read_from, out)
    os.makedirs(out, exist_ok=True)
    if layout != "transunet":
        return _prepare_rawdata(root, out, num_val, int(seed), bool(verify), layout)
    return _prepare_transunet(root, out, num_val, int(seed), spacing or TRANSUNET_DEFAULT_SPACING)


# ----------------------------------------------------------------------------------------------------
# synthetic CT


def _ellipsoid(grid, center, radii) -> np.ndarray:
    x, y, z = grid
    return ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + (
        (z - center[2]) / radii[2]
    ) ** 2 <= 1


def _phantom(shape, spacing, rng):
    """HU volume and BTCV label map of a crude abdomen; world coordinates in mm, RAS: +x = patient right, +y = anterior."""
    size = np.asarray(shape) * np.asarray(spacing)
    axes = [(np.arange(n) + 0.5) * s - L / 2 for n, s, L in zip(shape, spacing, size)]
    grid = np.meshgrid(*axes, indexing="ij")
    x, y, z = grid
    jitter = lambda scale: rng.uniform(1 - scale, 1 + scale)  # noqa: E731
    body_a, body_b = 0.42 * size[0] * jitter(0.05), 0.30 * size[1] * jitter(0.05)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    body = (x / body_a) ** 2 + (y / body_b) ** 2 <= 1
    hu[body] = -90.0  # subcutaneous and visceral fat
    hu[((x / (body_a * 0.9)) ** 2 + (y / (body_b * 0.88)) ** 2 <= 1)] = 35.0  # muscle wall / soft tissue
    hu[((x / (body_a * 0.8)) ** 2 + (y / (body_b * 0.75)) ** 2 <= 1)] = -60.0  # abdominal cavity fat
    spine = (x**2 + ((y + 0.62 * body_b) / 1.1) ** 2) <= (0.11 * body_b) ** 2
    hu[spine] = 450.0
    zr = size[2] / 2
    # (BTCV label, HU, centre as fractions of the body radii / half height, radii as fractions)
    organs = [
        (6, 60, (0.42, 0.05, 0.35), (0.38, 0.55, 0.55)),  # liver, patient right
        (4, 10, (0.30, 0.30, 0.05), (0.10, 0.14, 0.22)),  # gallbladder below the liver
        (1, 50, (-0.55, -0.25, 0.35), (0.14, 0.24, 0.35)),  # spleen, patient left and posterior
        (7, 20, (-0.32, 0.30, 0.30), (0.22, 0.25, 0.40)),  # stomach, left anterior
        (3, 180, (-0.35, -0.45, -0.15), (0.10, 0.17, 0.35)),  # left kidney (contrast-enhanced cortex)
        (2, 180, (0.35, -0.45, -0.25), (0.10, 0.17, 0.35)),  # right kidney, a little lower
        (11, 45, (-0.10, 0.0, -0.05), (0.28, 0.07, 0.12)),  # pancreas, tail to the left
        (8, 200, (-0.07, -0.35, 0.0), (0.045, 0.065, 2.0)),  # aorta, left of the midline, every slice
    ]
    for btcv, value, c, r in organs:
        centre = (c[0] * body_a * jitter(0.08), c[1] * body_b * jitter(0.08), c[2] * zr)
        radii = (r[0] * body_a * jitter(0.1), r[1] * body_b * jitter(0.1), r[2] * zr * jitter(0.1))
        mask = _ellipsoid(grid, centre, radii) & body & ~spine
        hu[mask] = value + rng.normal(0, 5)
        label[mask] = btcv
    hu += rng.normal(0, 12, size=shape).astype(np.float32)  # quantum noise
    hu[~body] = -1000.0 + rng.normal(0, 5, size=int((~body).sum()))
    return np.clip(hu, -1024, 3071).astype(np.int16), label


# the classes of the "folders" demo (your own CT): label value -> (name, BTCV values drawn as it)
DEMO_OWN_CLASSES = {1: ("liver", (6,)), 2: ("spleen", (1,)), 3: ("kidney", (2, 3))}


def _heart(shape: Sequence[int], phase: float, rng, size: float = 1.0, contraction: float = 0.3
           ) -> tuple[np.ndarray, np.ndarray]:
    """A short-axis cine MRI stack (arbitrary units) and its labels RV 1, MYO 2, LV 3; ``phase`` 0 is end-diastole
    (ventricles full), 1 end-systole (contracted by ``contraction`` of the radius, thicker wall); ``size`` scales
    the heart, so patients differ in volumes and ejection fractions."""
    x, y, z = (int(v) for v in shape)
    yy, xx = np.mgrid[0:x, 0:y].astype(np.float32)
    image = 220 + 40 * rng.standard_normal((x, y, z)).astype(np.float32)
    label = np.zeros((x, y, z), np.uint8)
    cx, cy = x * rng.uniform(0.45, 0.55), y * rng.uniform(0.45, 0.55)
    for k in range(z):
        taper = 1.0 - 0.6 * abs(k - z * 0.4) / z  # the ventricles narrow toward base and apex
        lv = x * 0.12 * size * taper * (1.0 - contraction * phase)
        wall = x * 0.05 * size * (1.0 + 0.4 * phase)
        r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        rv = np.sqrt(((xx - cx) / 1.4) ** 2 + ((yy - (cy - lv - wall - x * 0.05)) / 0.8) ** 2)
        label[..., k][(rv < lv * 1.1) & (r > lv + wall)] = 1
        label[..., k][(r >= lv) & (r < lv + wall)] = 2
        label[..., k][r < lv] = 3
    image[label == 1] += 420
    image[label == 3] += 450
    image[label == 2] -= 90
    return np.clip(image, 0, None), label


def _acdc_demo(out: str, num: int, seed: int, shape: Sequence[int] | None, spacing: Sequence[float] | None) -> str:
    """``demo_data(layout="acdc")``: ``num`` patients, a fifth (at least one) in ``testing/``."""
    import nibabel as nib

    if num < 4 or num > 30:
        raise ValueError(f"num={num}: the demo writes between 4 and 30 patients")
    shape = (128, 128, 10) if shape is None else tuple(shape)
    spacing = (1.5, 1.5, 10.0) if spacing is None else tuple(spacing)
    rng = np.random.default_rng(seed)
    root = Path(out) / "database"
    n_test = max(1, num // 5)
    patients = ([("training", k) for k in range(1, num - n_test + 1)]
                + [("testing", 100 + k) for k in range(1, n_test + 1)])
    affine = np.diag([*spacing, 1.0])
    for split, number in patients:
        folder = root / split / f"patient{number:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        frames = 10
        es = int(rng.integers(4, 8))
        size, contraction = rng.uniform(0.8, 1.15), rng.uniform(0.15, 0.45)  # volumes and EF differ by patient
        (folder / "Info.cfg").write_text(f"ED: 1\nES: {es}\nGroup: NOR\nHeight: {rng.uniform(150, 190):.1f}\n"
                                         f"NbFrame: {frames}\nWeight: {rng.uniform(50, 95):.1f}\n")
        series = []
        for frame in range(1, frames + 1):
            phase = 1 - abs(frame - es) / max(es - 1, frames - es)
            image, label = _heart(shape, phase, np.random.default_rng(rng.integers(1 << 30)), size, contraction)
            series.append(image)
            if frame in (1, es):
                stem = f"patient{number:03d}_frame{frame:02d}"
                nib.save(nib.Nifti1Image(image, affine), folder / f"{stem}.nii.gz")
                nib.save(nib.Nifti1Image(label, affine), folder / f"{stem}_gt.nii.gz")
        nib.save(nib.Nifti1Image(np.stack(series, axis=-1), affine), folder / f"patient{number:03d}_4d.nii.gz")
    print(f"synthetic ACDC: {num - n_test} training and {n_test} testing patients, two labelled frames each "
          f"(RV 1, MYO 2, LV 3), {shape} voxels of {spacing} mm -> {root}")
    return str(root)


def demo_data(
    out: str, num: int = 8, seed: int = 0, shape: Sequence[int] = (384, 384, 48), spacing: Sequence[float] | None = None,
    layout: str = "rawdata",
) -> str:
    """Synthetic abdominal CT in the RawData layout: ``out/RawData/Training/{img,label}/...``.

    Organs are ellipsoids at plausible Hounsfield units (liver 60, kidneys 180, aorta 200, fat -90,
    air -1000, spine 450) labelled with the 13-value BTCV codes, so :func:`prepare` maps them as it
    does real data. Case numbers are taken from both the standard training and test lists so
    that every split is populated. Voxels are anisotropic as in the real scans: 0.6-0.98 mm in-plane
    and 2.5, 3 or 5 mm between slices, drawn per case; the anatomy scales with the field of view, so
    small matrices (for tests) still hold every organ. The affine is stored flipped in x and y
    (LPS-like), as many scanners write it, so orientation handling is exercised.

    Args:
        out: output folder.
        num: number of cases (at least 4: 3 training-pool cases and 1 test case).
        seed: random seed.
        shape: voxels per volume (x, y, z).
        spacing: (x, y, z) spacing in mm for every case; default: drawn per case.
        layout: ``"rawdata"``, or ``"folders"``: your own CT as nnU-Net writes it,
            ``out/imagesTr/abd_XXX_0000.nii.gz`` and ``out/labelsTr/abd_XXX.nii.gz`` with three classes of
            its own (liver 1, spleen 2, kidney 3, :data:`DEMO_OWN_CLASSES`) named in ``out/dataset.json``
            (:mod:`vmunet_monai.data.volumes`); or ``"acdc"``: cine cardiac MRI as the ACDC challenge ships it,
            ``out/database/{training,testing}/patientNNN/`` with ``Info.cfg``, the 4D series and two labelled frames
            (end-diastole, end-systole: ``patientNNN_frameFF.nii.gz`` + ``_gt``) of RV 1, MYO 2, LV 3; 128x128x10
            voxels of 1.5x1.5x10 mm unless ``shape``/``spacing`` say otherwise.

    Returns:
        The ``RawData`` folder (or, for ``"folders"``, ``out``; for ``"acdc"``, ``out/database``), to pass to
        :func:`prepare`.
    """
    import nibabel as nib

    if layout not in ("rawdata", "folders", "acdc"):
        raise ValueError(f"layout must be 'rawdata', 'folders' or 'acdc', got {layout!r}")
    # ACDC's stacks have few, thick slices
    shape = tuple(number_list("--shape", shape, int, count=3, least=4 if layout == "acdc" else 8, example="128,128,10"))
    if spacing is not None:
        spacing = tuple(number_list("--spacing", spacing, float, count=3, above=0, example="1.5,1.5,10"))
    if layout == "acdc":
        return _acdc_demo(out, int(num), seed, None if shape == (384, 384, 48) else shape, spacing)

    num = int(num)
    if num < 4 or num > 30:
        raise ValueError(f"num={num}: the demo writes between 4 and 30 cases")
    rng = np.random.default_rng(seed)
    n_test = max(1, round(num * len(STANDARD_TEST_CASES) / 30))
    cases = list(STANDARD_TRAIN_CASES[: num - n_test]) + list(STANDARD_TEST_CASES[:n_test])
    root = os.path.join(out, "RawData") if layout == "rawdata" else str(out)
    img_dir, lab_dir = ((os.path.join(root, "Training", "img"), os.path.join(root, "Training", "label"))
                        if layout == "rawdata" else (os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr")))
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    for case in sorted(cases):
        if spacing is None:  # the ranges of the 30 labelled BTCV scans
            sxy = float(rng.uniform(0.6, 0.98))
            case_spacing = (sxy, sxy, float(rng.choice([2.5, 3.0, 5.0])))
        else:
            case_spacing = tuple(float(s) for s in spacing)
        hu, label = _phantom(shape, case_spacing, rng)
        # stored flipped in x and y: voxel i grows toward patient left, j toward posterior (LPS-like)
        affine = np.diag([-case_spacing[0], -case_spacing[1], case_spacing[2], 1.0])
        affine[:3, 3] = [
            case_spacing[0] * shape[0] / 2,
            case_spacing[1] * shape[1] / 2,
            -case_spacing[2] * shape[2] / 2,
        ]
        hu_lps, label_lps = hu[::-1, ::-1], label[::-1, ::-1]
        names = (f"img{case:04d}.nii.gz", f"label{case:04d}.nii.gz")
        if layout == "folders":
            own = np.zeros_like(label_lps)
            for value, (_, btcv) in DEMO_OWN_CLASSES.items():
                own[np.isin(label_lps, btcv)] = value
            label_lps, names = own, (f"abd_{case:03d}_0000.nii.gz", f"abd_{case:03d}.nii.gz")
        for array, path in (
            (hu_lps, os.path.join(img_dir, names[0])),
            (label_lps, os.path.join(lab_dir, names[1])),
        ):
            img = nib.Nifti1Image(np.ascontiguousarray(array), affine)
            img.header.set_xyzt_units("mm")
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            nib.save(img, path)
    if layout == "folders":
        labels = {"background": 0, **{name: value for value, (name, _) in DEMO_OWN_CLASSES.items()}}
        with open(os.path.join(root, "dataset.json"), "w") as f:
            json.dump({"name": "synthetic abdomen", "channel_names": {"0": "CT"}, "labels": labels,
                       "numTraining": len(cases), "file_ending": ".nii.gz"}, f, indent=4)
    print(f"wrote {len(cases)} synthetic CT cases to {root}")
    return root
