"""Your own labelled CT volumes, with your own classes, for the slice-wise ``synapse_multiorgan`` bundle.

``prepare synapse_multiorgan RAW OUT`` reads this layout when RAW holds no BTCV download (or always,
with ``--layout folders``). Found in RAW or one folder below it:

=======================================  ======================================================
folders                                  as written by
=======================================  ======================================================
``imagesTr/`` + ``labelsTr/``            the Medical Segmentation Decathlon and nnU-Net
(+ ``imagesTs/`` + ``labelsTs/``)        (a labelled test set; ``imagesTs/`` alone is not used)
``images/`` + ``labels/``                anything else (also ``image``/``label``, ``masks``)
``<patient>/X`` + ``X_gt`` beside it     ACDC: one folder per patient (``training/``, ``testing/``)
``case_00000/imaging`` + ``segmentation``  KiTS: one folder per case, named after it
``volume-N`` + ``segmentation-N``        LiTS: volumes and labels side by side, each its own patient
``<case>/X_t1`` ... ``X_flair`` + ``X_seg``  BraTS: channels beside one label (``--channel flair`` reads one)
=======================================  ======================================================

Volumes are NIfTI (``.nii.gz``, ``.nii``), NRRD (``.nrrd``) or MetaImage (``.mha``, ``.mhd``). A label is
named like its image: ``X.nii.gz`` for an image ``X.nii.gz`` or, as nnU-Net names channels, ``X_0000.nii.gz``
(a label may be in another of these formats than its image); ``X_seg``, ``X_label``,
``X_mask`` and ``X_gt`` are found too. The bundle reads one channel, so nnU-Net's further channels
(``_0001`` ...) are skipped and named. Label values are integers ``0..K`` (0 background); their
names come from ``--classes liver,tumour`` (value 1, 2, ...), else from a ``dataset.json`` beside
the folders (the Decathlon's ``{"1": "liver"}`` or nnU-Net's ``{"liver": 1}``), else ``class_1`` ...
``class_K`` after the largest value found. The labels are used in place, unmapped, except where
``dataset.json`` names other values than ``0..K`` (liver 1, spleen 2, tumour 5): the named values, in
increasing order, are then the classes ``0..K`` (5 is class 3), each label is written so into
``OUT/labels/<case>_label.nii.gz``, the datalist records the raw value of each class as ``label_values``
(``[0, 1, 2, 5]``), and a case holding a value that is not named (3) is skipped and named.

The datalist holds ``training``, ``validation`` and ``test`` lists of ``{"case", "image", "label"}``,
``labels`` (value -> name, background included) and ``num_classes``: the bundle is then run with
``--num_classes`` equal to it (training refuses another value, naming both).

It also records ``intensity``, how the bundle scales the volumes: ``ct`` (the Hounsfield window) or ``mri``
(each volume between its own percentiles). ``--intensity auto`` takes ``mri`` where ``dataset.json`` names an
MRI modality or for ACDC, and where most volumes hold no air (:func:`hounsfield_like`): MRI without a
``dataset.json``, or CT scaled or stored without its rescale intercept, which the CT window would turn into one
grey; else ``ct``.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmunet_monai.data.common import DatasetLayoutError, check_prepare_output, report_skipped, write_datalist
from vmunet_monai.data.preview import announce
from vmunet_monai.validation import InputError, check_label_values, describe_values, input_error

__all__ = ["VOLUME_FILES", "find_volume_layout", "prepare_volumes", "check_volume_pair", "class_names", "labels_beside",
           "label_folders",
           "volume_affine", "load_volume", "AIR_HU", "intensity_span", "hounsfield_like", "describe_span",
           "airless_note", "declared_values", "check_named_values", "save_label_volume"]

_PAIRS = (("imagesTr", "labelsTr"), ("images", "labels"), ("image", "label"), ("images", "masks"),
          ("volumes", "labels"), ("imgs", "labels"), ("img", "label"))
_LABEL_SUFFIXES = ("", "_seg", "_label", "_mask", "_gt")
# a label beside its volume may also name itself by a word in place of the volume's: KiTS's case_00000/imaging.nii.gz
# and segmentation.nii.gz, LiTS's volume-0.nii and segmentation-0.nii
_IMAGE_WORDS = ("imaging", "volume", "image", "img")
_LABEL_WORDS = ("segmentation", "label", "seg", "mask", "gt")
_CHANNEL = re.compile(r"^(.*)_(\d{4})$")
EXPECTED = ("imagesTr/ and labelsTr/ (Decathlon, nnU-Net; with imagesTs/ and labelsTs/ for a labelled test set), "
            "images/ and labels/, or one folder per patient with each volume's label beside it (ACDC: "
            "training/patient001/patient001_frame01.nii.gz + patient001_frame01_gt.nii.gz; KiTS: case_00000/imaging + "
            "segmentation; LiTS: volume-N + segmentation-N) of NIfTI, NRRD or MetaImage volumes")


VOLUME_FILES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

#: CT in Hounsfield units holds air (about -1000) around and inside the body, so its 1st percentile lies far below
#: this; a volume whose 1st percentile is above it holds no air: MRI, or CT scaled or stored without its intercept
AIR_HU = -300


def intensity_span(voxels, samples: int = 1_000_000) -> tuple[float, float]:
    """The 1st and 99th percentiles of a volume's voxels (of an even subsample of at most ``samples`` of them)."""
    flat = np.asarray(voxels).reshape(-1)
    low, high = np.percentile(flat[:: max(1, flat.size // samples)], (1, 99))
    return float(low), float(high)


def hounsfield_like(span: tuple[float, float]) -> bool:
    """Whether a volume of this :func:`intensity_span` looks like CT in Hounsfield units (it holds air)."""
    return span[0] <= AIR_HU


def describe_span(path, span: tuple[float, float]) -> str:
    """``"<path> (1st to 99th percentile 0 to 1843)"``."""
    return f"{path} (1st to 99th percentile {span[0]:.4g} to {span[1]:.4g})"


def airless_note(airless: list[tuple[str, tuple[float, float]]], count: int) -> str:
    """The start of the note on volumes without air (``(path, span)`` of :func:`intensity_span`) among ``count``:
    how many, the first, and that they are not CT in Hounsfield units, which ..."""
    return (f"note: {len(airless)} of {count} volumes hold no air (1st percentile above {AIR_HU} HU; first: "
            f"{describe_span(*airless[0])}): they do not look like CT in Hounsfield units, which")


def volume_affine(path: str | os.PathLike) -> np.ndarray:
    """The voxel-to-world matrix (RAS, in mm) of a NIfTI, NRRD or MetaImage file, from its header alone."""
    path = str(path)
    if path.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return nib.load(path).affine
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(reader.GetDirection()).reshape(3, 3) * np.asarray(reader.GetSpacing())
    affine[:3, 3] = reader.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # ITK's LPS to RAS


def load_volume(path: str | os.PathLike):
    """A nibabel image of any of :data:`VOLUME_FILES` (NRRD and MetaImage through SimpleITK, with their geometry)."""
    import nibabel as nib

    path = str(path)
    if path.lower().endswith((".nii", ".nii.gz")):
        return nib.load(path)
    import SimpleITK as sitk

    voxels = sitk.GetArrayFromImage(sitk.ReadImage(path))  # (z, y, x)
    return nib.Nifti1Image(np.ascontiguousarray(voxels.transpose(2, 1, 0)), volume_affine(path))


def volume_voxels(image, dtype=None) -> np.ndarray:
    """The voxels of a nibabel image, a trailing axis of one ((X, Y, Z, 1), a single time point) taken off."""
    data = np.asarray(image.dataobj, dtype=dtype)
    return data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data


def _stem(name: str) -> str | None:
    lower = name.lower()
    for ext in VOLUME_FILES:
        if lower.endswith(ext):
            return name[: -len(ext)]
    return None


def label_folders(folder) -> dict[Path, Path]:
    """The subfolders of ``folder`` that hold the labels of an image folder beside them (``labelsTr`` beside
    ``imagesTr``, Synapse's ``label`` beside ``img``, ``labels`` beside ``images``...), each with its image
    folder: label maps that a search for volumes to segment leaves out."""
    from vmunet_monai.data.folders import child_folder

    found: dict[Path, Path] = {}
    for images, labels in (*_PAIRS, ("imagesTs", "labelsTs")):
        image_dir, label_dir = child_folder(Path(folder), (images.lower(),)), child_folder(Path(folder),
                                                                                            (labels.lower(),))
        if image_dir is not None and label_dir is not None:
            found.setdefault(label_dir, image_dir)
    return found


def _layout_at(folder: Path) -> dict | None:
    from vmunet_monai.data.folders import child_folder

    for images, labels in _PAIRS:
        image_dir, label_dir = child_folder(folder, (images.lower(),)), child_folder(folder, (labels.lower(),))
        if image_dir is not None and label_dir is not None:
            test = child_folder(folder, ("imagests",)), child_folder(folder, ("labelsts",))
            return {"train": (image_dir, label_dir), "test": test if None not in test else None}
    # one folder per patient, each volume with its label beside it (ACDC: patient001/patient001_frame01.nii.gz and
    # patient001_frame01_gt.nii.gz), in training/ and testing/ or directly here
    train_dir, test_dir = child_folder(folder, ("training", "train")), child_folder(folder, ("testing", "test"))
    if train_dir is not None and _case_folders(train_dir):
        return {"cases": {"train": _case_folders(train_dir),
                          "test": _case_folders(test_dir) if test_dir is not None else []}}
    cases = _case_folders(folder)
    if len(cases) >= 2:
        return {"cases": {"train": cases, "test": []}}
    # volumes with their labels beside them in this folder itself, each a patient of its own (LiTS in one folder)
    return {"cases": {"train": [folder], "test": []}} if len(labels_beside(folder)[0]) >= 2 else None


def label_names(stem: str) -> list[str]:
    """The stems a label of the volume ``stem`` may have beside it, in order: ``X_seg``, ``X_label``, ``X_mask``,
    ``X_gt``, then ``stem`` with a word of the volume's (imaging, volume, image, img) in place of a label's
    (segmentation, label, seg, mask, gt): ``segmentation`` for KiTS's ``imaging``, ``segmentation-0`` for LiTS's
    ``volume-0``."""
    names = [stem + s for s in _LABEL_SUFFIXES if s]
    for word in _IMAGE_WORDS:
        for hit in re.finditer(rf"(?<![a-z]){word}(?![a-z])", stem, re.IGNORECASE):  # a word of its own
            names += [stem[: hit.start()] + label + stem[hit.end():] for label in _LABEL_WORDS]
    return names


def _channel_base(stem: str) -> list[str]:
    """``[X]`` for ``X_<channel>`` (BraTS's ``BraTS2021_00000_flair``), the case whose channels share one label
    ``X_seg``; ``[]`` for a stem without an underscore."""
    return [stem.rsplit("_", 1)[0]] if "_" in stem.strip("_") else []


def labels_beside(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """The volumes of ``folder`` by stem: those that are another's label (:func:`label_names`: ``X_gt``, ``X_seg``,
    ... beside ``X``; ``segmentation`` beside ``imaging``), and the rest."""
    volumes = {stem: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
               and (stem := _stem(p.name)) is not None}
    named = {label for stem in volumes for base in (stem, *_channel_base(stem)) for label in label_names(base)
             if label != stem}
    labels = {stem: path for stem, path in volumes.items() if stem in named}
    return labels, {stem: path for stem, path in volumes.items() if stem not in labels}


def _case_folders(folder: Path) -> list[Path]:
    """The subfolders of ``folder`` holding a volume with its label beside it."""
    from vmunet_monai.data.folders import subfolders

    return [sub for sub in subfolders(folder) if labels_beside(sub)[0]]


def _pair_beside(case_dir: Path, skipped: list[dict], series: list[str],
                 channel: str | None = None) -> list[tuple[str, Path, Path, str]]:
    """(case, image, label, patient) for the volumes of one folder that have their label beside them; 4D series
    (ACDC's cine ``_4d``) go to ``series``, other volumes without a label to ``skipped``.

    The folder is one patient's where its volumes carry its name (ACDC's ``patient001/patient001_frame01``) or it
    holds one volume (KiTS's ``case_00000/imaging``); else each volume is a patient of its own (LiTS's
    ``Training Batch 1/volume-0``). A case is named as :func:`vmunet_monai.evaluation.ct._case_name` names it (KiTS's
    after its folder). Volumes ``X_<channel>`` that share one label ``X_seg`` are the channels of one case
    (BraTS's t1, t1ce, t2, flair): the bundle reads one, ``channel``; without it they are skipped, naming them."""
    labels, images = labels_beside(case_dir)
    kept = set(labels.values()) | set(images.values())
    for path in sorted(case_dir.iterdir()):  # X.nii beside X.nii.gz: one file per name is read, the other named
        stem = _stem(path.name) if path.is_file() and not path.name.startswith(".") else None
        if stem is not None and path not in kept:
            skipped.append({"file": str(path), "reason": input_error(
                path, f"{(labels.get(stem) or images[stem]).name} has its name in {case_dir}",
                "one volume per name: keep one").args[0]})
    from vmunet_monai.evaluation.ct import _case_name

    found = []
    one = len(images) == 1
    shared: dict[Path, list[str]] = {}  # a label of several channels -> their stems
    for stem in images:
        if not any(name in labels for name in label_names(stem)):
            for base in _channel_base(stem):
                hit = next((labels[name] for name in label_names(base) if name in labels), None)
                if hit is not None:
                    shared.setdefault(hit, []).append(stem)
    for label, stems in shared.items():
        picked = [stem for stem in stems if channel is not None and stem.lower().endswith("_" + channel.lower())]
        choices = "|".join(stem.rsplit("_", 1)[1] for stem in stems)
        if len(stems) > 1 and len(picked) != 1:
            for stem in stems:
                skipped.append({"file": str(images[stem]), "reason": input_error(
                    images[stem], f"is one of {len(stems)} channels sharing the label {label.name} in {case_dir}"
                    + (f", none of them {channel!r}" if channel is not None else ""),
                    f"the bundle reads one channel per case: choose it with --channel {choices}").args[0]})
        for stem in stems:
            if len(stems) == 1 or stem in picked:
                found.append((_case_name(images[stem]), images[stem], label, case_dir.name))
            elif picked:
                skipped.append({"file": str(images[stem]), "reason": input_error(
                    images[stem], f"is another channel of the case of {images[picked[0]].name}",
                    f"--channel {channel} reads that one").args[0]})
    in_shared = {stem for stems in shared.values() for stem in stems}
    for stem, path in images.items():
        if stem in in_shared:
            continue
        label = next((labels[name] for name in label_names(stem) if name in labels), None)
        if label is not None:
            case = _case_name(path)  # as the evaluation and predict name it: KiTS's imaging after its folder
            found.append((case, path, label, case_dir.name if one or case_dir.name in stem else case))
            continue
        try:
            four_d = len(load_volume(path).shape) == 4
        except Exception:  # unreadable: named below as a volume without a label, and by the checks if it had one
            four_d = False
        if four_d:
            series.append(str(path))
        else:
            skipped.append({"file": str(path), "reason": input_error(
                path, f"no label beside it in {case_dir}", f"a label named {stem}_gt.nii.gz (or _seg, _label, _mask)"
            ).args[0]})
    return found


ACDC_CLASSES = {1: "RV", 2: "MYO", 3: "LV"}  # the challenge's label values: right ventricle, myocardium, left ventricle
# The patient split of ACDC's 100 training patients that Mamba-UNet trains and tests with: SSL4MIS's data/ACDC lists
# (val.list, test.list; every other patient of 1-100 trains), 70 / 10 / 20 patients, two frames each.
MAMBA_UNET_ACDC_SPLIT = {
    "validation": (2, 19, 28, 30, 39, 45, 78, 82, 85, 87),
    "test": (1, 7, 8, 11, 13, 22, 24, 33, 52, 59, 64, 65, 66, 68, 75, 80, 81, 83, 84, 93),
}
SPLITS = ("auto", "mamba_unet")


def acdc_phases(case_dir: Path) -> dict[str, str]:
    """ACDC's ``Info.cfg`` of one patient: the frame stems of end-diastole and end-systole, ``{"patient001_frame01":
    "ED", "patient001_frame12": "ES"}``; empty when the file or its ED/ES lines are missing."""
    info = case_dir / "Info.cfg"
    if not info.is_file():
        return {}
    fields = dict(line.split(":", 1) for line in info.read_text(errors="replace").splitlines() if ":" in line)
    phases = {}
    for phase in ("ED", "ES"):
        value = fields.get(phase, "").strip()
        if value.isdigit():
            phases[f"{case_dir.name}_frame{int(value):02d}"] = phase
    return phases


def _is_acdc(case_dirs: list[Path]) -> bool:
    """ACDC's patient folders: ``patientNNN`` with the ``Info.cfg`` (ED/ES frames, group, height, weight) inside."""
    return any(re.fullmatch(r"patient\d{3}", d.name) and (d / "Info.cfg").is_file() for d in case_dirs)


def find_volume_layout(raw: str | os.PathLike) -> tuple[Path, dict]:
    """The folder (``raw`` or one just below it) holding image and label folders, and
    ``{"train": (images, labels), "test": (images, labels) or None}``, or patient folders with each volume's label
    beside it, and ``{"cases": {"train": [folders], "test": [folders]}}``.

    Raises:
        DatasetLayoutError: when there is none, or several just below ``raw``.
    """
    from vmunet_monai.data.folders import LayoutNotFound, subfolders

    raw = Path(raw)
    if not raw.is_dir():
        raise LayoutNotFound(f"{raw}: not a folder (expected {EXPECTED})")
    for level in ([raw], subfolders(raw)):
        found = [(folder, layout) for folder in level if (layout := _layout_at(folder)) is not None]
        if len(found) > 1:  # several datasets (Decathlon tasks side by side): which one is not guessed
            raise DatasetLayoutError(f"{raw}: several datasets of volumes and labels "
                                     f"({', '.join(str(f) for f, _ in found)}); give one of them as RAW")
        if found:
            return found[0]
    raise LayoutNotFound(f"{raw}: no image and label folders found; expected {EXPECTED}")


def _pair(images: Path, labels: Path, skipped: list[dict], channel: int = 0) -> list[tuple[str, Path, Path]]:
    """(case, image, label) for every image volume with a label; the others are added to ``skipped``, as is a
    second volume of one case (``X.nii`` beside ``X.nii.gz``: kept, one scan could land in two splits). Of
    nnU-Net's channels ``X_0000``, ``X_0001``, ... the one numbered ``channel`` is read."""
    # names starting with a dot are hidden files (the "._X" companions macOS writes into archives), not volumes
    by_stem = {s: p for p in labels.iterdir()
               if p.is_file() and not p.name.startswith(".") and (s := _stem(p.name)) is not None}
    found, cases = [], {}
    for path in sorted(images.iterdir(), key=lambda p: p.name):
        stem = _stem(path.name) if path.is_file() and not path.name.startswith(".") else None
        if stem is None:
            continue
        match = _CHANNEL.match(stem)
        case, number = (match.group(1), int(match.group(2))) if match and stem not in by_stem else (stem, 0)
        if number != channel:
            skipped.append({"file": str(path), "reason": input_error(
                path, f"is channel {number} of case {case} (nnU-Net naming)",
                f"the bundle reads one channel per case: the _{channel:04d} file (--channel N chooses)").args[0]})
            continue
        candidates = [case + s for s in _LABEL_SUFFIXES]
        if case.startswith("img"):  # BTCV's img0001 / label0001
            candidates.append("label" + case[3:])
        label = next((by_stem[c] for c in candidates if c in by_stem), None)
        if label is None:
            skipped.append({"file": str(path), "reason": input_error(
                path, f"no label in {labels}", f"a label named {case}.nii.gz (or {case}_seg, _label, _mask, _gt)"
            ).args[0]})
            continue
        if case in cases:
            skipped.append({"file": str(path), "reason": input_error(
                path, f"its label {label} is the label of {cases[case]} (two volumes of case {case!r})",
                "one volume per case: keep one, or rename the other and give it its own label").args[0]})
            continue
        cases[case] = path
        found.append((case, path, label))
    return found


def check_volume_pair(image: str | os.PathLike, label: str | os.PathLike, verify: bool = True) -> np.ndarray:
    """Read a CT volume's header (all of it with ``verify``) and its whole label, and check they share one grid (a
    NIfTI label may store it with its voxel axes in another order or direction: :func:`onto_image_grid`).

    Returns:
        the label voxels, in the image's voxel order.

    Raises:
        InputError: a missing or unreadable file, 2D or several channels, NaN voxels, another size or affine.
    """
    return _check_volume_pair(image, label, verify)[0]


def onto_image_grid(voxels: np.ndarray, label_affine, image_affine, image_shape) -> np.ndarray | None:
    """A label's voxels in its image's voxel order, where the label covers the image's grid with its voxel axes
    stored in another order or direction (a label saved LPS beside an RAS image, or with its axes swapped): each
    voxel of the one is a voxel of the other. None when the grids differ otherwise."""
    if voxels.ndim != 3 or len(image_shape) != 3:
        return None
    to_label = np.linalg.inv(np.asarray(label_affine, float)) @ np.asarray(image_affine, float)  # image -> label
    turn = np.rint(to_label[:3, :3])
    if not np.allclose(to_label[:3, :3], turn, atol=1e-3) or not (np.abs(turn).sum(0) == 1).all() or not (
            np.abs(turn).sum(1) == 1).all():
        return None  # not a signed permutation: another spacing or a rotation
    axes = [int(np.flatnonzero(turn[:, i])[0]) for i in range(3)]  # the label axis of each image axis
    for i, j in enumerate(axes):  # the image's first voxel is the label's first, or last where the axis is flipped
        first = voxels.shape[j] - 1 if turn[j, i] < 0 else 0
        if abs(to_label[j, 3] - first) > 1e-3 or voxels.shape[j] != int(image_shape[i]):
            return None
    turned = np.transpose(voxels, axes)
    flipped = [i for i, j in enumerate(axes) if turn[j, i] < 0]
    return np.ascontiguousarray(np.flip(turned, axis=flipped) if flipped else turned)


def _check_volume_pair(image, label, verify: bool) -> tuple[np.ndarray, tuple[float, float] | None]:
    """:func:`check_volume_pair`'s label voxels (on the image's voxel grid, :func:`onto_image_grid`), and the image's
    :func:`intensity_span` where it was read (``verify``), else None."""
    from vmunet_monai.validation import check_same_grid, check_same_size, read_volume

    if not os.path.exists(label):
        raise input_error(label, f"no such file (the label of {image})", "every image needs its label")
    image_shape, data = read_volume(image, read_data=verify)
    span = intensity_span(data) if data is not None else None
    del data
    label_shape, voxels = read_volume(label, read_data=True)
    ours, theirs = volume_affine(image), volume_affine(label)
    if not np.allclose(ours, theirs, atol=1e-3) and str(label).lower().endswith((".nii", ".nii.gz")):
        turned = onto_image_grid(voxels, theirs, ours, image_shape)
        if turned is not None:  # the image's grid, stored with its axes in another order or direction
            return turned, span
    check_same_size(image, image_shape, label, label_shape, what="label")
    check_same_grid(image, ours, label, theirs)
    return voxels, span


def class_names(classes: str | list | tuple | None, root: Path) -> dict[int, str] | None:
    """Label value -> name (background left out) from ``classes`` or ``root/dataset.json``; None if neither.

    Raises:
        InputError: for an empty name, or a dataset.json whose labels are not value -> name pairs.
    """
    if classes:
        names = [c.strip() for c in (classes.split(",") if isinstance(classes, str) else classes)]
        if not all(names):
            raise InputError(f"--classes {classes!r}: a class name is empty (give names for the values 1, 2, ... "
                             "separated by commas)")
        return {i + 1: names[i].replace(" ", "_") for i in range(len(names))}
    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text()).get("labels")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise InputError(f"{path}: not a JSON object with a 'labels' entry ({exc})") from None
    if not isinstance(labels, dict) or not labels:
        return None
    pairs = {}
    for key, value in labels.items():
        if str(key).isdigit() and isinstance(value, str):  # Decathlon: "1": "liver"
            pairs[int(key)] = value
        elif isinstance(value, int) and not isinstance(value, bool):  # nnU-Net v2: "liver": 1
            pairs[value] = key
        else:
            raise InputError(f"{path}: labels entry {key!r}: {value!r} is not one value and one name (regions, as "
                             "nnU-Net's lists of values, are not classes; give --classes)")
    return {v: n.replace(" ", "_") for v, n in sorted(pairs.items()) if v != 0} or None  # background alone: none


def declared_values(names: dict[int, str] | None) -> list[int] | None:
    """The label values ``names`` gives classes, background's 0 first and the others in increasing order (class
    ``c`` is stored as ``values[c]``), where they are not ``0..K``; None where they are, or for no names."""
    if not names or sorted(names) == list(range(1, len(names) + 1)):
        return None
    return [0, *sorted(names)]


def check_named_values(voxels: np.ndarray, path, values: Sequence[int]) -> None:
    """A label holds only the ``values`` dataset.json names (:func:`declared_values`).

    Raises:
        InputError: NaN voxels, or naming the values that are not named.
    """
    from vmunet_monai.validation import check_finite

    check_finite(voxels, path, "label")
    found = np.unique(voxels)
    bad = found[~np.isin(found, np.asarray(values))]
    if bad.size:
        raise input_error(path, f"label values {describe_values(bad)} are outside the classes",
                          f"dataset.json names the values {', '.join(str(v) for v in values)}")


def save_label_volume(voxels: np.ndarray, path: Path, image, source=None) -> None:
    """Write label voxels on ``image``'s grid as NIfTI ``path``: with the header and affine of ``source``, the
    NIfTI label they were read from where it is stored on that grid, else with the image's affine (qform and
    sform codes 1, as MONAI writes a segmentation); 8-bit unless a value is above 255."""
    import nibabel as nib

    dtype = np.int16 if voxels.max() > 255 else np.uint8
    voxels = np.asarray(voxels).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    if source is not None and str(source).lower().endswith((".nii", ".nii.gz")):
        stored = nib.load(source)
        written = nib.Nifti1Image(voxels, stored.affine, stored.header)
        written.header.set_slope_inter(1.0, 0.0)
    else:
        affine = volume_affine(image)
        written = nib.Nifti1Image(voxels, affine)
        written.set_qform(affine, code=1)
        written.set_sform(affine, code=1)
    written.set_data_dtype(dtype)
    nib.save(written, str(path))


def _listed_split(checked: dict[str, list[dict]], root: Path) -> tuple[list[dict], list[dict], list[dict], list[str]]:
    """ACDC's training patients as Mamba-UNet splits them (:data:`MAMBA_UNET_ACDC_SPLIT`): (training, validation,
    test, patients of the testing folder left out).

    Raises:
        DatasetLayoutError: a listed patient is not among the usable training patients (naming how many and the
            first), or a patient's name is not ACDC's ``patientNNN``.
    """
    pool = checked.get("pool", [])
    have = {c["patient"] for c in pool}
    listed = {f"patient{n:03d}": part for part, numbers in MAMBA_UNET_ACDC_SPLIT.items() for n in numbers}
    absent = sorted(set(listed) - have)
    if absent:
        raise DatasetLayoutError(f"{root}: --split mamba_unet lists {len(absent)} patient(s) that the training folder "
                                 f"does not hold usable (first: {absent[0]}); it needs ACDC's 100 training patients")
    parts = {"training": [], "validation": [], "test": []}
    for case in pool:
        parts[listed.get(case["patient"], "training")].append(case)
    left_out = sorted({c["patient"] for c in checked.get("test", [])})
    return parts["training"], parts["validation"], parts["test"], left_out


def _drawn_split(checked: dict[str, list[dict]], layout: dict, root: Path, skipped: list[dict], num_val, seed: int,
                 test_fraction: float, unit) -> tuple[list[dict], list[dict], list[dict], str]:
    """Training, validation and test cases drawn over ``unit`` (patients, else cases) with ``seed``: the labelled
    test folder, else ``test_fraction`` of the pool, is the test set; ``num_val`` (one in six) of the rest
    validates. Returns them with the sentence that says how."""
    pool = sorted({unit(c) for c in checked.get("pool", [])})
    random.Random(seed).shuffle(pool)
    if checked.get("test"):
        test, how = checked["test"], ("test: the testing folder's patients" if "cases" in layout
                                      else "test: the labelled test folder")
        if test_fraction != 0.2:  # the importer's default: anything else was asked for, and would change nothing
            from vmunet_monai.data.folders import refuse_unused_fraction

            folder = layout["test"][0] if "cases" not in layout else ", ".join(
                sorted({str(Path(f).parent) for f in layout["cases"]["test"]}))  # ACDC's testing/, not each patient
            refuse_unused_fraction("test_fraction", {"test_fraction": test_fraction}, f"the labelled test folder "
                                   f"({folder}) is the test split", "leave --test_fraction out, or move that folder "
                                   "out of RAW to draw the test cases from the others")
    else:
        n_test = max(1, round(test_fraction * len(pool)))
        held, pool = set(pool[:n_test]), pool[n_test:]
        test = [c for c in checked.get("pool", []) if unit(c) in held]
        how = f"test: {test_fraction:g} of the {'patients' if 'cases' in layout else 'cases'} (seed {seed})"
    n_val = max(1, round(len(pool) / 6)) if num_val is None else int(num_val)
    if not test or not 1 <= n_val < len(pool):
        raise DatasetLayoutError(
            f"{root}: {len(pool) + len({unit(c) for c in test})} usable {'patients' if 'cases' in layout else 'cases'}"
            f" cannot give test, validation (--num_val {n_val}) and training ones (at least one each)"
            + (f"; first skipped: {skipped[0]['reason']}" if skipped else ""))
    rest = sorted(pool)
    random.Random(seed + 1).shuffle(rest)
    held_out = set(rest[:n_val])
    val = [c for c in checked["pool"] if unit(c) in held_out]
    test_units = {unit(c) for c in test}
    train = [c for c in checked["pool"] if unit(c) not in held_out and unit(c) not in test_units]
    return train, val, test, (f"{how}; validation: {n_val} of the rest{' (patients)' if 'cases' in layout else ''} "
                              f"(seed {seed + 1})")


def prepare_volumes(raw: str, out: str, num_val: int | None = None, seed: int = 0, verify: bool = True,
                    classes: str | None = None, test_fraction: float = 0.2, split: str = "auto",
                    intensity: str = "auto", channel: str | int | None = None) -> str:
    """Write ``out/datalist.json`` from your own CT volumes and labels (the layouts of the module docstring).

    Args:
        raw: the folder holding the image and label folders (or the folder above it).
        out: output folder for datalist.json, and ``labels/`` for the labels written anew (stored turned, or of
            values other than 0..K that dataset.json names: the module docstring).
        num_val: validation cases drawn (seeded) from the training cases; default one in six (at least one).
        seed: seed of the test and validation draws.
        verify: decode every image volume too, not only its header; labels are always read.
        classes: names of the label values 1, 2, ... separated by commas (default: dataset.json, else
            class_1 ... after the largest value found).
        test_fraction: share of the cases held out for testing when there is no labelled test folder.
        split: ``auto`` (the labelled test folder, else ``test_fraction``; validation drawn), or ``mamba_unet``
            for ACDC: Mamba-UNet's 70 / 10 / 20 split of the 100 training patients
            (:data:`MAMBA_UNET_ACDC_SPLIT`), the testing folder's patients left out.
        intensity: what the datalist records for the bundle's ``intensity``: ``ct``, ``mri``, ``minmax``, or
            ``auto`` (``mri`` for a modality ``dataset.json`` names MRI, for ACDC, and where most volumes hold no
            air, else ``ct``: the module docstring). Volumes without air under ``ct`` are named in a note.
        channel: the channel read where a case has several: nnU-Net's number (``1`` for ``X_0001``, or the name
            ``dataset.json`` gives it), or the name ending the volumes that share one label (BraTS's ``flair`` of
            ``X_t1``, ``X_t1ce``, ``X_t2``, ``X_flair`` beside ``X_seg``); default ``X_0000``, and no choice
            among named ones.

    Returns:
        the datalist path.

    Raises:
        DatasetLayoutError: no layout, too few usable cases for three splits, or a listed patient missing.
        InputError: OUT inside the data, bad ``classes`` or dataset.json, bad ``test_fraction``/``num_val``, a
            ``split`` that is unknown or not for this dataset, or draw options beside a listed split.
    """
    from tqdm import tqdm

    root, layout = find_volume_layout(raw)
    if "cases" in layout:
        folders = [root]
    else:
        folders = [d for pair in (layout["train"], layout["test"]) if pair for d in pair]
    check_prepare_output(folders, out)
    if not 0 < float(test_fraction) < 1:
        raise InputError(f"--test_fraction {test_fraction}: must be above 0 and below 1 (without a labelled test "
                         "folder, the test cases are drawn from the others)")
    names = class_names(classes, root)
    number, token = channel_choice(channel, root)
    if number < 0 and "cases" not in layout:
        raise InputError(f"--channel {token!r}: no dataset.json beside {root} names a channel so (give nnU-Net's "
                         f"number of the channel: 1 for X_0001)")
    acdc = "cases" in layout and _is_acdc(layout["cases"]["train"] + layout["cases"]["test"])
    from vmunet_monai.engine.transforms import INTENSITY_MODES

    if intensity not in ("auto", *INTENSITY_MODES):
        raise InputError(f"--intensity {intensity!r}: auto (mri for MRI, else ct), ct (the Hounsfield window), mri "
                         f"(each volume between its own 0.5 and 99.5 percentiles) or minmax (its own minimum and "
                         f"maximum)")
    if split not in SPLITS:
        raise InputError(f"--split {split!r}: auto (the test folder, else --test_fraction) or mamba_unet (ACDC: "
                         f"Mamba-UNet's patient lists)")
    if split == "mamba_unet":
        if not acdc:
            raise InputError(f"--split mamba_unet: only for ACDC (patient folders with Info.cfg), but {root} is not "
                             f"ACDC")
        drawn = [f"--{k} {v!r}" for k, v, d in (("num_val", num_val, None), ("test_fraction", test_fraction, 0.2))
                 if v != d]
        if drawn:
            raise InputError(f"{', '.join(drawn)}: --split mamba_unet takes its patients from lists; nothing is drawn")
    if names is None and acdc:
        names = dict(ACDC_CLASSES)
    values = declared_values(names)  # dataset.json's values where they are not 0..K: the classes they become
    lookup = None
    if values is not None:
        lookup = np.zeros(values[-1] + 1, np.int64)
        lookup[values] = np.arange(len(values))
    skipped: list[dict] = []
    series: list[str] = []  # 4D cine series beside the labelled frames: left out, counted
    phases: dict[str, str] = {}  # ACDC: case -> ED or ES, from each patient's Info.cfg
    if "cases" in layout:  # a patient's volumes stay together in one split: grouped by their folder
        parts = {part: [found for folder in folders_of for found in _pair_beside(folder, skipped, series, token)]
                 for part, folders_of in (("pool", layout["cases"]["train"]), ("test", layout["cases"]["test"]))
                 if folders_of}
        if acdc:
            for folder in layout["cases"]["train"] + layout["cases"]["test"]:
                phases.update(acdc_phases(folder))
    else:
        parts = {"pool": [(*found, found[0]) for found in _pair(*layout["train"], skipped, number)]}
        if layout["test"]:
            parts["test"] = [(*found, found[0]) for found in _pair(*layout["test"], skipped, number)]
    checked: dict[str, list[dict]] = {}
    turned: list[str] = []  # labels stored with their axes in another order than their images: written anew
    spans: list[tuple[str, tuple[float, float]]] = []  # each checked image's 1st and 99th percentile
    largest = 0
    for part, cases in parts.items():
        checked[part] = []
        for case, image, label, group in tqdm(cases, desc="checking test cases" if part == "test" else
                                              "checking cases", disable=not cases):
            try:
                voxels, span = _check_volume_pair(image, label, verify)
                if values is not None:  # the named values only: not 3 or 4 where they are 1, 2 and 5
                    check_named_values(voxels, label, values)
                check_label_values(voxels, label, num_classes=max(names) + 1 if names else 256)
            except InputError as exc:  # one broken case does not stop the others
                skipped.append({"file": str(image), "reason": str(exc)})
                continue
            if span is not None:
                spans.append((str(image), span))
            largest = max(largest, int(np.max(voxels)))
            turn = not np.allclose(volume_affine(image), volume_affine(label), atol=1e-3)  # stored turned
            if turn:
                turned.append(str(label))
            if turn or lookup is not None:
                source, label = label, Path(out) / "labels" / f"{case}_label.nii.gz"
                mapped = lookup[voxels.astype(np.int64)] if lookup is not None else voxels
                save_label_volume(mapped, label, image, None if turn else source)
            item = {"case": case, "image": str(image), "label": str(label)}
            if group != case:
                item["patient"] = group
            if case in phases:
                item["group"] = phases[case]  # evaluation reports each group apart as well
            checked[part].append(item)
    if turned:
        print(f"note: {len(turned)} label(s) store their image's grid with the voxel axes in another order or "
              f"direction (first: {turned[0]}); written onto their images' voxel grid into {Path(out) / 'labels'}")
    if values is not None and any(checked.values()):
        became = ", ".join(f"{v} -> {c} {names.get(v, 'background')}" for c, v in enumerate(values))
        print(f"note: dataset.json names the label values {', '.join(str(v) for v in values)}, not "
              f"0-{len(values) - 1}: the labels are written into {Path(out) / 'labels'} as the classes {became}")
    if not any(checked.values()):
        first = f" (first: {skipped[0]['reason']})" if skipped else ""
        if not skipped:  # no volume at all: a folder of 2D images given to the volume bundle
            from vmunet_monai.data.common import IMAGE_EXTENSIONS

            flat = [p for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            if flat:
                first = (f": it holds no NIfTI volumes but {len(flat)} 2D image file(s) (first: {flat[0]}), which "
                         f"the 2D bundles (isic_skin_lesion, polyp_seg) take")
        raise DatasetLayoutError(f"{root}: no usable case; {len(skipped)} skipped{first}")
    if values is not None:
        names = {c: names[v] for c, v in enumerate(values) if c}
    if names is None:
        names = {v: f"class_{v}" for v in range(1, largest + 1)}
    names = {v: names.get(v, f"class_{v}") for v in range(1, max(names) + 1)} if names else {}
    if not names:
        raise DatasetLayoutError(f"{root}: every label is empty (only 0); nothing to learn")
    # splits are drawn over patients (a case's folder in the patient layout, else the case itself), so that no
    # patient has volumes on both sides of a split
    unit = (lambda c: c.get("patient", c["case"]))  # noqa: E731
    left_out: list[str] = []
    if split == "mamba_unet":
        train, val, test, left_out = _listed_split(checked, root)
        how = ("Mamba-UNet's ACDC split (SSL4MIS's patient lists): 70 training, 10 validation and 20 test patients of "
               "the training folder")
        if left_out:
            how += f"; the testing folder's {len(left_out)} patients left out"
    else:
        train, val, test, how = _drawn_split(checked, layout, root, skipped, num_val, seed, test_fraction, unit)
    order = lambda items: sorted(items, key=lambda c: c["case"])  # noqa: E731
    labels = {"0": "background", **{str(v): n for v, n in names.items()}}
    mri = dataset_modality(root) or ("cine MRI (ACDC)" if acdc else None)
    airless = [(image, span) for image, span in spans if not hounsfield_like(span)]
    why = f"dataset.json names the modality {mri!r}" if mri and not acdc else "ACDC is cine MRI" if mri else None
    if intensity == "auto":
        intensity = "mri" if mri or len(airless) * 2 > len(spans) > 0 else "ct"
        if intensity == "mri" and not mri:
            why = (f"{len(airless)} of {len(spans)} volumes hold no air, so they are not CT in Hounsfield units (MRI, "
                   f"or CT scaled or stored without its intercept; first: {describe_span(*airless[0])}); "
                   f"--intensity ct keeps the CT window")
    elif why is None or intensity != "mri":
        why = "as given"
    if intensity == "ct" and airless:
        print(f"{airless_note(airless, len(spans))} the CT window expects (MRI, or CT scaled or stored without its "
              f"intercept): leave them out, or prepare with --intensity mri to scale every volume by its own "
              f"percentiles")
    if acdc:
        print(f"ACDC recognised (patient folders with Info.cfg): classes {', '.join(ACDC_CLASSES.values())} "
              f"(label values 1-3{'; --classes names them otherwise' if not classes else ''}), cine MRI")
    if series:
        print(f"left out {len(series)} 4D series (e.g. {series[0]}): the labelled 3D frames beside them are read")
    kind = "MRI " if mri else "CT " if intensity == "ct" else ""
    path = write_datalist(
        out, {"training": order(train), "validation": order(val), "test": order(test)},
        {"dataset": f"{root.resolve().name} (your own {kind}volumes)",
         "importer": "vmunet_monai.data.volumes", "layout": "folders", "raw": str(root.resolve()), "labels": labels,
         "num_classes": len(labels), "intensity": intensity,
         "how": how, "split": split, "seed": seed, "skipped": skipped, "series_left_out": series,
         **({"label_values": values} if values is not None else {}),
         **({"patients_left_out": left_out} if left_out else {})},
    )
    report_skipped(skipped, "case")
    def patients(items: list[dict]) -> str:
        count = len({unit(c) for c in items})
        return f" ({count} patient{'' if count == 1 else 's'})" if "cases" in layout else ""

    summary = (f"{root.name}: {len(train)}{patients(train)} training, {len(val)}{patients(val)} validation, "
               f"{len(test)}{patients(test)} test cases, {len(labels)} classes ({', '.join(labels.values())})")
    announce(out, path, {"training": order(train), "validation": order(val), "test": order(test)}, summary,
             labels=names, window=(-125, 275) if intensity == "ct" else None)
    scaled = {"mri": "each volume is scaled by its own percentiles instead of the CT window",
              "minmax": "each volume is scaled by its own minimum and maximum instead of the CT window"}
    print(f"train, evaluate and predict with --num_classes {len(labels)}"
          + (f" --intensity {intensity} ({why}: {scaled[intensity]})" if intensity != "ct" else ""))
    return path


_MRI = re.compile(r"\bmri?\b|t1|t2|flair|dwi|adc|cine", re.IGNORECASE)


def channel_choice(channel, root: Path) -> tuple[int, str | None]:
    """``--channel`` as nnU-Net's channel number and as the name ending a volume's stem (BraTS's ``flair``): a
    number is both; a name is numbered by the channels a ``dataset.json`` beside the folders names (``"modality"``
    or ``"channel_names"``), else -1; None is channel 0 and no name.

    Raises:
        InputError: an empty ``channel``.
    """
    if channel is None:
        return 0, None
    text = str(channel).strip()
    if not text:
        raise InputError(f"--channel {channel!r}: a channel's number (nnU-Net's X_0001: 1) or name (BraTS: flair)")
    if text.isdigit():
        return int(text), text
    path = Path(root) / "dataset.json"
    try:
        doc = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        doc = {}
    named = doc.get("channel_names") or doc.get("modality") or {}
    number = next((int(k) for k, v in named.items() if str(k).isdigit() and str(v).lower() == text.lower()), -1) \
        if isinstance(named, dict) else -1
    return number, text


def dataset_modality(root: Path) -> str | None:
    """The MRI modality a ``dataset.json`` beside the folders names (the Decathlon's ``"modality": {"0": "MRI"}``,
    nnU-Net v2's ``"channel_names": {"0": "T2"}``), or None (CT, or nothing said)."""
    path = Path(root) / "dataset.json"
    try:
        doc = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return None
    named = doc.get("modality") or doc.get("channel_names") or {}
    values = named.values() if isinstance(named, dict) else [named]
    return next((str(v) for v in values if _MRI.search(str(v))), None)
