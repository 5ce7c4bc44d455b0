"""Segment CT volumes (NIfTI files, folders of them, DICOM series) with the Synapse bundle, in their own space.

:func:`predict_volumes` runs the bundle's ``inference.json`` (``SliceInferer`` over axial slices after
RAS orientation, ``Invertd`` back to the input grid) and returns the written NIfTI paths. The
segmentations have the input's shape, affine and orientation; DICOM series are read through ITK.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vmunet_monai.evaluation.uncertainty import check_rank_by
from vmunet_monai.validation import VOLUME_EXTENSIONS  # re-exported here, as before

__all__ = ["VOLUME_EXTENSIONS", "DicomSeries", "default_bundle_root", "find_volumes", "predict_volumes"]

BUNDLE_NAME = "synapse_multiorgan"


def _is_dicom_file(path: str) -> bool:
    if path.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_series(folder: str) -> bool:
    files = [os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith(".")]
    files = [f for f in files if os.path.isfile(f)]
    return bool(files) and any(_is_dicom_file(f) for f in files[:20])


class DicomSeries(str):
    """A DICOM series found by :func:`find_volumes`: the string is its folder (as a DICOM series folder always was);
    ``uid``, ``files`` (its slices, in the order GDCM sorts them), ``number`` and ``description`` (SeriesNumber and
    SeriesDescription, or "") say which series of the folder it is. ``alone`` is True where it is the folder's only
    series (the folder is read as it is, and the output named after it); else ``label`` is the series' part of its
    output name (``<folder's case name>_<label>``) and the series is read from its own files."""

    uid: str
    files: tuple[str, ...]
    number: str
    description: str
    alone: bool
    label: str

    def __new__(cls, folder: str, uid: str, files, number: str = "", description: str = "", alone: bool = True,
                label: str = ""):
        self = super().__new__(cls, folder)
        self.uid, self.files, self.number, self.description = uid, tuple(files), number, description
        self.alone, self.label = alone, label
        return self

    def __reduce__(self):  # kept whole through pickling (DataLoader workers, deep copies)
        return DicomSeries, (str(self), self.uid, self.files, self.number, self.description, self.alone, self.label)

    def describe(self) -> str:
        """How messages name the series: ``DICOM series <label> (SeriesInstanceUID <uid>)``."""
        return f"DICOM series {self.label or self.description or self.number or '?'} (SeriesInstanceUID {self.uid})"

    def record(self, output: str) -> dict:
        """The series' entry in ``prediction.json``: which series an output came from."""
        return {"output": output, "folder": str(self), "series_instance_uid": self.uid, "series_number": self.number,
                "series_description": self.description, "slices": len(self.files)}


_SPACING_RULE = ("a series is segmented only when its slices are evenly spaced, each gap within 10% or 0.1 mm of the "
                 "median spacing; export the series complete, or resample it to even slices first")


def _header(path: str) -> dict[str, str]:
    """The tags of one DICOM file that say where its slice lies and which series it is (header only, no pixels)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    tags = ("0020|0032", "0020|0037", "0020|0011", "0008|103e")
    return {t: reader.GetMetaData(t).strip() for t in tags if reader.HasMetaDataKey(t)}


def _numbers(text: str | None, count: int) -> list[float] | None:
    try:
        values = [float(v) for v in (text or "").split("\\")]
    except ValueError:
        return None
    return values if len(values) == count else None


def _spacing_problem(files: Sequence[str], headers: Sequence[dict]) -> str | None:
    """What is wrong with the slice positions of a series (ImagePositionPatient projected on the slice normal), or
    None when they are evenly spaced, or cannot be checked (tags missing, fewer than three slices)."""
    import numpy as np

    if len(files) < 3:
        return None
    orients = [_numbers(h.get("0020|0037"), 6) for h in headers]
    corners = [_numbers(h.get("0020|0032"), 3) for h in headers]
    if any(o is None for o in orients) or any(c is None for c in corners):
        return None  # nothing to check against: ITK reads it as it can
    orients = np.asarray(orients)
    if np.abs(orients - orients[0]).max() > 1e-3:
        return (f"its {len(files)} slices lie in different orientations (ImageOrientationPatient differs, as in a "
                "localizer of several planes)")
    normal = np.cross(orients[0, :3], orients[0, 3:])
    where = np.asarray(corners) @ normal
    order = np.argsort(where, kind="stable")
    where = where[order]
    gaps = np.diff(where)
    usual = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - usual)))
    if abs(gaps[worst] - usual) <= max(0.1, 0.1 * usual):
        return None
    a, b = (os.path.basename(files[order[i]]) for i in (worst, worst + 1))
    found = (f"slices missing or unevenly spaced: a {gaps[worst]:.2f} mm gap between {a} (at {where[worst]:.2f} mm) "
             f"and {b} (at {where[worst + 1]:.2f} mm), where its {len(files)} slices are usually {usual:.2f} mm apart")
    if usual <= 0.1:
        found = f"several of its {len(files)} slices lie at the same position (time points or repeated acquisitions)"
    return found


def _label(text: str) -> str:
    """``text`` as a part of a file name: letters, digits, ``.``, ``-`` and ``_``, at most 40 characters."""
    import re

    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.-")[:40].strip("_.-")


def _dicom_series_in(folder: str, skipped: list[dict], split: bool = True) -> list[str] | None:
    """The DICOM series of ``folder``: the folder itself where it holds one series (as before, with a series of
    uneven slices skipped), else one :class:`DicomSeries` per series of several slices; 1-slice series (scouts) and
    series of uneven slices go to ``skipped``. A folder of several series without ``split`` is returned as it is,
    with a warning; None where GDCM finds no series of images in the folder."""
    import SimpleITK as sitk

    try:
        uids = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder))
    except RuntimeError:
        uids = []
    if not uids:
        return None
    if len(uids) > 1 and not split:
        import warnings

        warnings.warn(f"{folder}: holds {len(uids)} DICOM series, read as one folder: ITK reads only the first, "
                      f"SeriesInstanceUID {uids[0]} (python -m vmunet_monai predict segments each series apart)")
        return [folder]
    every: list[tuple[DicomSeries, list[dict]]] = []
    for uid in uids:
        files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid))
        headers = [_header(f) for f in files] if len(files) > 2 or len(uids) > 1 else [{}] * len(files)
        first = headers[0] if headers else {}
        every.append((DicomSeries(folder, uid, files, first.get("0020|0011", ""), first.get("0008|103e", ""),
                                  alone=len(uids) == 1), headers))
    if len(uids) > 1:
        _name_series([s for s, _ in every])
    usable = []
    for series, headers in every:
        where = f"{folder}: {series.describe()}" if len(uids) > 1 else folder
        problem = _spacing_problem(series.files, headers)
        if problem:
            skipped.append({"file": folder, "reason": f"{where}: {problem} ({_SPACING_RULE})"})
        elif len(series.files) < 2 and len(uids) > 1:  # alone, it is named by read_volume, as before
            skipped.append({"file": folder, "reason": f"{where} has 1 slice (a 2D image, such as a scout) (one 3D "
                            "volume of several slices is expected; the folder's other series are read on their own)"})
        else:
            usable.append(series)
    return usable


def _name_series(series: Sequence[DicomSeries]) -> None:
    """Give each of the series of one folder its label: ``s<SeriesNumber>_<SeriesDescription>`` (what there is of
    them, as a file name), else ``series_<the UID's last part>``; labels that two series share get the UIDs' last
    parts, then numbers."""
    count: dict[str, int] = {}
    for s in series:
        s.label = _label("_".join(p for p in (f"s{s.number}" if s.number else "", s.description) if p))
        s.label = s.label or _label(f"series_{s.uid.rsplit('.', 1)[-1]}")
        count[s.label] = count.get(s.label, 0) + 1
    seen: dict[str, int] = {}
    for s in series:
        if count[s.label] > 1:
            s.label = _label(f"{s.label}_{s.uid.rsplit('.', 1)[-1]}")
        seen[s.label] = seen.get(s.label, 0) + 1
        if seen[s.label] > 1:
            s.label = f"{s.label}_{seen[s.label]}"


def _data_files(folder: str, names: Sequence[str]) -> set[str]:
    """The files of ``folder`` that hold the voxels of a MetaImage header (``X.mhd`` -> its ElementDataFile, or
    ``X.raw``/``X.zraw``) read as a volume: they are read with it, not inputs of their own."""
    data = set()
    for name in names:
        if not name.lower().endswith(".mhd"):
            continue
        stem = name[: -len(".mhd")]
        data.update(os.path.join(folder, stem + ext) for ext in (".raw", ".zraw", ".RAW", ".ZRAW"))
        try:
            with open(os.path.join(folder, name), errors="replace") as f:
                lines = f.read(65536).splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            key, _, value = line.partition("=")
            if key.strip() != "ElementDataFile":
                continue
            value = value.strip()
            if value == "LIST":
                data.update(os.path.join(folder, v.strip()) for v in lines[i + 1:] if v.strip())
            elif value and value != "LOCAL":
                data.add(os.path.join(folder, value.split()[0]))
    return data


def _volume_files(folder: str, ignored: list[str] | None) -> list[str]:
    """The volume files directly in ``folder``, leaving out labels beside their volumes (``X_gt.nii.gz`` beside
    ``X.nii.gz``, as ACDC and others keep them); other files go to ``ignored`` when it is given, except DICOM files
    (read as series) and the data files of MetaImage headers."""
    from vmunet_monai.data.volumes import labels_beside

    labels = {str(p) for p in labels_beside(Path(folder))[0].values()}
    names = sorted(os.listdir(folder))
    data = _data_files(folder, names) if ignored is not None else set()
    found = []
    for name in names:
        full = os.path.join(folder, name)
        if not os.path.isfile(full) or name.startswith("."):
            continue
        if name.lower().endswith(VOLUME_EXTENSIONS):
            if full not in labels:
                found.append(full)
        elif ignored is not None and full not in data and not _is_dicom_file(full):
            ignored.append(full)
    return found


def find_volumes(path: str, ignored: list[str] | None = None, skipped: list[dict] | None = None,
                 split_series: bool = False) -> list[str]:
    """Volumes under ``path``: a volume file, a DICOM series folder, or a folder searched recursively for volume
    files and DICOM series (a patient's folder, or a DICOM export ``PATIENT/STUDY/SERIES/``); labels beside their
    volumes (``X_gt``, ``X_seg``) and folders of labels beside their images' folder (``labelsTr`` beside
    ``imagesTr``, Synapse's ``label`` beside ``img``: :func:`vmunet_monai.data.volumes.label_folders`) are left out.

    DICOM series are told apart by their SeriesInstanceUID: a folder holding one series is returned as itself (read
    by ``ITKReader``, the output named after the folder); with ``split_series``, a folder holding several gives a
    :class:`DicomSeries` per series (its output ``<folder's case name>_<series number and description>``, read from
    its own files by :func:`predict_volumes`), a series of one slice (a scout) among them skipped. A series whose
    slice positions are not evenly spaced (missing slices) is skipped.

    Args:
        path: file or folder.
        ignored: if given, the files in the folder ``path`` that are neither volumes, nor DICOM files, nor the data
            files of MetaImage headers (``X.raw`` beside ``X.mhd``) are appended to it.
        skipped: if given, ``{"file", "reason"}`` for each DICOM series and folder of labels left out is appended to
            it; else each is named in a warning.
        split_series: return each series of a folder of several on its own; without it (the bundle's
            ``inference.json``, whose ``ITKReader`` reads a folder as one series) such a folder is returned once, as
            ITK reads it (its first series), with a warning.

    Returns:
        Sorted paths (DICOM series as their folders: :class:`DicomSeries`).

    Raises:
        FileNotFoundError: if ``path`` does not exist, is a single DICOM file (its series' folder is the input) or
            holds no volume.
    """
    from vmunet_monai.validation import MissingInputError

    path = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.isfile(path):
        if path.lower().endswith(VOLUME_EXTENSIONS):
            return [path]
        if _is_dicom_file(path):
            raise MissingInputError(f"{path}: a single DICOM file, one slice of a series (give the folder of the "
                                    f"series, {os.path.dirname(path)}, to segment the series as one volume)")
        raise MissingInputError(f"{path}: not a volume file (expected one of {', '.join(VOLUME_EXTENSIONS)}, or a "
                                "DICOM series folder)")
    if not os.path.isdir(path):
        raise MissingInputError(f"{path}: no such file or folder")
    left_out: list[dict] = []
    found: list[str] = []
    seen = set()
    from vmunet_monai.data.volumes import label_folders

    for folder, subfolders, _ in os.walk(path, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for labels, images in label_folders(folder).items():  # labelsTr/ beside imagesTr/: no CT to segment
            if labels.name in subfolders:
                subfolders.remove(labels.name)
                left_out.append({"file": str(labels), "reason": f"{labels}: the labels of {images.name}/ beside it, "
                                 "not segmented (give the folder itself to segment what it holds)"})
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            subfolders[:] = []
            continue
        seen.add(real)
        found += _volume_files(folder, ignored if folder == path else None)
        if _is_dicom_series(folder):
            series = _dicom_series_in(folder, left_out, split_series)
            if series is not None:
                found += series
            elif not subfolders:  # no series GDCM can read: reading the folder names the problem, as before
                found.append(folder)
            # else DICOM files that are no images (a DICOMDIR) above the series folders: nothing to read
    found.sort(key=lambda v: (str(v), getattr(v, "label", "")))
    if skipped is not None:
        skipped += left_out
    else:
        import warnings

        for item in left_out:
            warnings.warn(f"skipped {item['reason']}")
    if not found and not left_out:
        raise MissingInputError(
            f"{path}: no volumes ({', '.join(VOLUME_EXTENSIONS)} files or DICOM series folders) found"
        )
    return found


def _prepared_volumes(path, note: bool = False) -> list[str] | None:
    """The volumes of the ``test`` split of a prepared dataset folder (one holding ``datalist.json``: the OUT of
    ``prepare``), as the bundles' inference with ``--dataset_dir`` segments them, never the label maps it lists; None
    for any other input. With ``note``, a printed note says so (``predict`` given such a folder).

    Raises:
        InputError: for a datalist without a ``test`` split (its splits named), or an entry without an image.
    """
    from vmunet_monai.data.common import DATALIST_NAME, _datalist_items

    folder = os.path.abspath(os.path.expanduser(str(path)))
    if not os.path.isfile(os.path.join(folder, DATALIST_NAME)):
        return None
    volumes = [item["image"] for item in _datalist_items(folder, "test")]
    if note:
        print(f"note: {folder} holds {DATALIST_NAME} (a prepared dataset): segmenting the {len(volumes)} volume(s) "
              f"of its 'test' split, as the bundle's inference with --dataset_dir does, not its labels (give a "
              f"folder of volumes to segment all it holds)", flush=True)
    return volumes


def _volume_problem(volume: str) -> str | None:
    """Why ``volume`` cannot be segmented (``predict_volumes``' check: its path, then the whole volume read once by
    :func:`vmunet_monai.validation.read_volume`), or None."""
    from vmunet_monai.validation import InputError, check_no_hash, read_volume

    try:
        check_no_hash(volume)
        read_volume(volume, read_data=True)
    except InputError as exc:
        return str(exc)
    return None


def inference_volumes(path: str, output_dir: str | None = None) -> list[str]:
    """The volumes under ``path`` that the bundle's ``inference.json`` segments: for a prepared dataset folder (one
    holding ``datalist.json``) its ``test`` split's images, else :func:`find_volumes`' (``output_dir``, the
    inference's, may then not be the folder or lie inside it: a later run would segment this run's segmentations
    as volumes). Each is read once and checked
    as ``predict`` checks it (:func:`_volume_problem`: empty, truncated, unreadable, 2D, several channels or time
    points, NaN voxels) and each needs an output of its own: of two volumes that would write one
    ``<case>_seg.nii.gz`` (``a/ct.nii.gz`` and ``b/ct.nii.gz``) the first is kept, where the second would silently
    replace the first's segmentation. Each volume left out is named in a warning, with the reason.

    Raises:
        FileNotFoundError: for a missing ``path`` or one without volumes.
        InputError: for a datalist without a ``test`` split, or an ``output_dir`` inside ``path``;
            :class:`vmunet_monai.predict.NothingToPredictError` when every volume was skipped.
    """
    import warnings

    from vmunet_monai.predict import NothingToPredictError
    from vmunet_monai.validation import check_output_location

    volumes = _prepared_volumes(path)
    if volumes is None and output_dir not in (None, "", "None") and os.path.isdir(path):
        check_output_location([path], output_dir, what="output folder (--output_dir)")
    kept, taken, skipped = [], {}, []
    for volume in find_volumes(path) if volumes is None else volumes:
        name = _output_name(volume)
        problem = (f"{volume}: its output {name} is already the output of {taken[name]} (give volumes distinct "
                   "names, or segment the folders apart)") if name in taken else _volume_problem(volume)
        if problem:
            warnings.warn(f"skipped {problem}")
            skipped.append(problem)
            continue
        taken[name] = volume
        kept.append(volume)
    if not kept:
        first = f"; first: {skipped[0]}" if skipped else "; the folders found hold labels, each named in a warning"
        raise NothingToPredictError(f"{path}: no volume could be segmented ({len(skipped)} skipped{first})")
    return kept


def default_bundle_root() -> str:
    """The ``synapse_multiorgan`` bundle folder (``$VMUNET_BUNDLES_DIR``, the source checkout, or ``./bundles``).

    Raises:
        FileNotFoundError: if the bundle is in none of those places.
    """
    from vmunet_monai.engine import find_bundle

    return str(find_bundle(BUNDLE_NAME))


def _output_name(source: str) -> str:
    return f"{_series_case(source)}_seg.nii.gz"  # named after the case, as the evaluation names it


def _series_case(source: str) -> str:
    """The case name of a volume: :func:`vmunet_monai.evaluation.ct._case_name`'s, and for a DICOM series that
    shares its folder with others, the folder's case name and the series' label."""
    from vmunet_monai.evaluation.ct import _case_name

    if isinstance(source, DicomSeries) and not source.alone:
        return f"{_case_name(source)}_{source.label}"
    return _case_name(source)


def _series_as_file(series: DicomSeries, folder: str) -> str:
    """``folder/<case>.mha``: the series read from its own files (its voxels, spacing, origin and direction as ITK
    reads them, in a MetaImage, which keeps them exactly), for the pipeline that reads a DICOM folder as one series.

    Raises:
        InputError: for a series that cannot be read.
    """
    import SimpleITK as sitk

    from vmunet_monai.validation import input_error

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = [line for line in str(exc).splitlines() if line.strip()]
        found = f"{series.describe()} cannot be read ({reason[-1].strip() if reason else 'ITK error'})"
        raise input_error(series, found, "every slice must be a complete DICOM file") from None
    target = os.path.join(folder, f"{_series_case(series)}.mha")
    sitk.WriteImage(image, target)
    return target


def predict_volumes(
    input: str | Sequence[str],
    output: str,
    checkpoint: str | None = None,
    device: str | None = None,
    bundle_root: str | None = None,
    sw_batch_size: int | None = None,
    baseline: str = "",
    tta: bool = False,
    model: str | None = None,
    montage: bool = True,
    probabilities: bool = False,
    resume: bool = False,
    uncertainty: bool = False,
    rank_by: str = "share",
    **overrides,
) -> list[str]:
    """Segment CT volumes with the Synapse bundle and write ``<name>_seg.nii.gz`` into ``output``.

    Every volume is read completely once before the network runs
    (:func:`vmunet_monai.validation.read_volume`): a volume that is empty, truncated, unreadable, 2D,
    has several channels or time points, or holds NaN/Inf voxels is skipped and named on stderr, and
    the others are segmented. So is a volume whose output name another input already takes.

    Args:
        input: a volume file, a DICOM series folder, a folder of them, or a list of such paths.
        output: folder for the segmentations (label values 0-8, see the bundle's ``channel_def``; 0 to
            ``num_classes - 1`` for your own classes); not an input, not an input folder and not inside one.
        checkpoint: model weights (default ``<bundle_root>/models/model.pt``); several joined by commas, or a list,
            are an ensemble whose class probabilities are averaged (:func:`vmunet_monai.predict.weights_files`).
        device: ``cpu``, ``cuda``, ``cuda:1``...; default: CUDA when available.
        bundle_root: the bundle folder (default: ``bundles/synapse_multiorgan`` of this checkout).
        sw_batch_size: windows per network call (default: the bundle's).
        baseline: segment with a baseline trained through the bundle's ``configs/baseline_<name>.json``
            overlay (``unet``, ``swin_unetr``); the default checkpoint is then ``models/baseline_<name>/model.pt``.
        tta: average the class probabilities over each slice and its in-plane mirror images (four passes of
            the sliding window; :class:`vmunet_monai.engine.FlipTTAInferer`).
        model: an exported network (``.ts``, ``.onnx``, ``.pt2``) to run instead of ``network_def`` and its
            weights (the bundle's ``configs/inference_exported.json``), with the class count and scaling the config
            it carries records where ``overrides`` give none.
        montage: also draw ``output/montages/<name>.png`` per volume: axial slices through the segmented
            classes with the prediction filled in, to look at without a NIfTI viewer (:func:`write_montages`); with
            ``uncertainty`` also ``output/montages/<name>_uncertainty.png``, the same slices with the uncertainty
            (and with ``tta`` or an ensemble ``<name>_disagreement.png``, with the disagreement).
        probabilities: also write ``output/<name>_prob.nii.gz`` per volume: the class probabilities, background
            first, as a 4D NIfTI on the segmentation's grid, stored in 8 bits with the scale factor 1/255
            (:class:`vmunet_monai.engine.SaveProbabilityVolumed`).
        resume: go on with a run that stopped: the segmentations (and probability volumes) it wrote in ``output``
            that read back whole are kept and only the other volumes are segmented, provided its
            ``prediction.json`` names the same bundle, weights and options
            (:func:`vmunet_monai.predict.resume_check`).
        uncertainty: also write ``output/<name>_uncertainty.nii.gz`` per volume, where the model is unsure (the
            normalised entropy of its class probabilities, 0 to 1, 8 bits with the scale factor 1/255), and
            ``output/uncertainty.csv``, the most doubtful volume first
            (:mod:`vmunet_monai.evaluation.uncertainty`); implies ``probabilities``, from which it is computed.
            With ``tta`` or an ensemble also ``output/<name>_disagreement.nii.gz``, where the passes disagree (the
            table's ``mean_disagreement``), from ``output/<name>_pass_entropy.nii.gz``, the passes' mean entropy.
        rank_by: the column of ``uncertainty.csv`` whose largest value comes first (``share``, ``uncertainty`` or,
            with several passes, ``disagreement``: :func:`vmunet_monai.evaluation.uncertainty.check_rank_by`).
        overrides: further ``inference.json`` ids to override (e.g. ``num_classes=3`` for a bundle trained on your
            own classes, ``network_def={...}``, ``roi_size=[...]``).

    Returns:
        The written NIfTI paths, in input order (skipped volumes left out); ``output/prediction.json`` records
        the bundle, weights, classes and settings (:func:`vmunet_monai.predict.write_record`),
        ``output/volumes.csv`` each class's volume per case, for ACDC's patient folders
        ``output/clinical_indices.csv`` each patient's indices (:mod:`vmunet_monai.evaluation.volumetry`), and
        ``output/montages/`` a picture per volume (``montage``).

    Raises:
        FileNotFoundError: for a missing input, checkpoint or bundle.
        vmunet_monai.predict.NothingToPredictError: when every volume was skipped.
        vmunet_monai.validation.InputError: for an output folder inside the inputs.
        vmunet_monai.weights.CheckpointError: for a checkpoint that is unreadable or not of the bundle's network.
    """
    from monai.bundle import ConfigWorkflow

    from vmunet_monai.data.common import report_skipped
    from vmunet_monai.data.volumes import airless_note, hounsfield_like, intensity_span
    from vmunet_monai.engine.utils import inference_configs
    from vmunet_monai.evaluation.volumetry import write_volumes
    from vmunet_monai.predict import (NothingToPredictError, bundle_class_names, check_fresh_output, check_members_fit,
                                      check_no_hash, exported_overrides, finished_output, quiet_interrupt,
                                      recorded_num_classes, resume_check, takes_pass_entropy, trained_network,
                                      weights_files, write_record)
    from vmunet_monai.validation import (InputError, check_device, check_output_location, check_scan_backend,
                                         read_volume)

    device = check_device(device)
    check_scan_backend(device)
    bundle_root = os.path.abspath(bundle_root or default_bundle_root())
    config_files, default_ckpt, train = inference_configs(bundle_root, baseline, model)
    paths = [input] if isinstance(input, (str, os.PathLike)) else list(input)
    others: list[str] = []
    left_out: list[dict] = []  # DICOM series left out: 1-slice series beside others, uneven slices
    volumes = []
    for p in paths:
        listed = _prepared_volumes(p, note=True)  # a prepared dataset: its test split, not its labels
        volumes += (find_volumes(str(p), others, left_out, split_series=True) if listed is None else
                    [v for one in listed for v in (find_volumes(one, others, left_out, split_series=True)
                                                   if os.path.isdir(one) else [one])])
    if model:  # an export of weights trained with other classes or scaling: what the config it carries says
        overrides = {**overrides, **exported_overrides(config_files, model, overrides)}
    classes = overrides.get("num_classes") if model else None  # the outputs an export must give; else the bundle's
    weights = [str(w) for w in weights_files(Path(bundle_root), checkpoint, default_ckpt, train, model, device,
                                             channels=None if classes is None else int(classes))]
    source = weights[0]
    if "num_classes" not in overrides and not model:  # weights trained with --num_classes N (ACDC: 4)
        recorded = recorded_num_classes(weights, default_ckpt, config_files)
        if recorded is not None:
            overrides = {**overrides, "num_classes": recorded}
    output = str(check_output_location([str(p) for p in paths] + volumes, output))
    check_no_hash(output, "OUTPUT")
    check_fresh_output(output, resume)
    good, reads, taken, airless = [], [], {}, []  # reads: the path the pipeline reads for each of good
    skipped = [{"file": f, "reason": f"{f}: not a volume file (expected {', '.join(VOLUME_EXTENSIONS)} files or "
                "DICOM series folders; 2D images go to the 2D bundles)"} for f in others] + left_out
    scratch = None  # a temporary folder for the series that share their folder with others, read from their files
    try:
        for volume in volumes:
            name = _output_name(volume)
            if name in taken:
                skipped.append({"file": volume, "reason": f"{volume}: its output {name} is already the output of "
                                f"{taken[name]} (give volumes distinct names)"})
                continue
            read = volume
            try:
                check_no_hash(volume)
                if isinstance(volume, DicomSeries) and not volume.alone:  # read by ITK from its own files
                    scratch = scratch or tempfile.mkdtemp(prefix="vmunet_dicom_series_")
                    read = _series_as_file(volume, scratch)
                try:
                    _, voxels = read_volume(read, read_data=True)
                except InputError as exc:
                    if read == volume:
                        raise
                    os.remove(read)
                    raise InputError(str(exc).replace(read, f"{volume}: {volume.describe()}")) from None
            except InputError as exc:
                skipped.append({"file": volume, "reason": str(exc)})
                continue
            span = intensity_span(voxels)
            del voxels
            if not hounsfield_like(span):
                airless.append((volume, span))
            taken[name] = volume
            good.append(volume)
            reads.append(read)
        if not good:
            first = f"; first: {skipped[0]['reason']}" if skipped else ""
            raise NothingToPredictError(f"{input}: no volume could be segmented ({len(skipped)} skipped{first})")
        written = [os.path.join(output, _output_name(v)) for v in good]
        probabilities = bool(probabilities or uncertainty)  # the uncertainty is computed from the probability volumes
        maps = [w[: -len("_seg.nii.gz")] + "_prob.nii.gz" for w in written] if probabilities else []
        spread = bool(uncertainty) and (bool(tta) or len(weights) > 1) and takes_pass_entropy(config_files)
        check_rank_by(rank_by, uncertainty, spread)
        spreads = [w[: -len("_seg.nii.gz")] + "_pass_entropy.nii.gz" for w in written] if spread else []
        check_output_location(volumes, output, written + maps + spreads)
        os.makedirs(output, exist_ok=True)
        settings = {"baseline": baseline or None, "tta": bool(tta), "device": device, "sw_batch_size": sw_batch_size,
                    "probabilities": bool(probabilities), "uncertainty": bool(uncertainty),
                    "overrides": {k: v for k, v in overrides.items() if isinstance(v, (str, int, float, list, bool))}}
        todo = reads
        same = ("baseline", "tta", "overrides")
        if resume and resume_check(output, bundle_root, weights, bool(model), settings, same):
            files = [[w, *maps[i:i + 1], *spreads[i:i + 1]] for i, w in enumerate(written)]  # each volume's outputs
            todo = [v for v, mine in zip(reads, files) if not all(finished_output(p) for p in mine)]
            print(f"--resume: {len(good) - len(todo)} of {len(good)} volume(s) already segmented in {output}, "
                  f"{len(todo)} to go", flush=True)
        config = dict(overrides)
        config.update(bundle_root=bundle_root, output_dir=output, datalist=todo, tta=bool(tta),
                      summary=False)  # predict names what it wrote itself
        if probabilities:
            config["probabilities"] = True
        if spread:
            config["pass_entropy"] = True
        config["exported_model" if model else "checkpoint"] = source
        if not model and not any(k.split("#")[0] == "network_def" for k in overrides):  # given ones win
            config.update({k: v for k, v in trained_network(config_files, source).items() if k not in overrides})
        if len(weights) > 1:  # the bundle's own ensemble: the first loaded into the network, the rest as members
            config["ensemble_checkpoints"] = weights
        if device is not None:
            config["device"] = f"$torch.device('{device}')"
        if sw_batch_size is not None:
            config["sw_batch_size"] = int(sw_batch_size)
        workflow = ConfigWorkflow(
            config_file=config_files,
            meta_file=os.path.join(bundle_root, "configs", "metadata.json"),
            logging_file=os.path.join(bundle_root, "configs", "logging.conf"),
            workflow_type="infer",
            **config,
        )
        workflow.initialize()
        if airless and workflow.parser.get_parsed_content("intensity") == "ct":
            print(f"{airless_note(airless, len(good))} this bundle's CT window expects, so their segmentations may be "
                  f"empty or wrong; a bundle trained on MRI or scaled CT takes --intensity mri", flush=True)
        if not model:
            check_members_fit(workflow.parser.get_parsed_content("network"), weights)
        # the record of a run under way: what --resume checks against
        write_record(output, workflow.parser, bundle_root, weights, bool(model), paths, [], skipped, settings,
                     finished=False)
        _record_series(output, good, written)
        if todo:
            with quiet_interrupt():
                workflow.run()
        workflow.finalize()
        missing = [w for w in written + maps + spreads if not os.path.isfile(w)]
        if missing:
            raise RuntimeError(f"inference finished but did not write {missing}")
        if maps:
            print(f"{len(maps)} probability volume(s) under {output}")
        doubts = []  # the table's rows, in the order of the volumes: where each one's maps were written
        if uncertainty:
            from vmunet_monai.evaluation.uncertainty import write_uncertainty_table, write_uncertainty_volumes

            doubts = write_uncertainty_volumes(list(zip(good, maps, spreads or [None] * len(maps))))
            write_uncertainty_table(doubts, output, by=rank_by)
        report_skipped(skipped, "volume")
        write_record(output, workflow.parser, bundle_root, weights, bool(model), paths, written, skipped, settings,
                     kept=len(good) - len(todo))
        _record_series(output, good, written)
        classes = int(workflow.parser.get_parsed_content("num_classes"))
        names = bundle_class_names(bundle_root, classes, weights) or {c: f"class_{c}" for c in range(1, classes)}
        write_volumes(reads, written, names, output)  # volumes.csv; ACDC: clinical_indices.csv
        if montage:
            ct = workflow.parser.get_parsed_content("intensity") == "ct"  # else MRI: each volume's own percentiles
            write_montages(reads, written, os.path.join(output, "montages"), num_classes=classes, class_names=names,
                           window=workflow.parser.get_parsed_content("hu_window") if ct else None,
                           uncertainties=[r["picture"] for r in doubts] if uncertainty else None,
                           disagreements=[r.get("disagreement_picture") for r in doubts] if spread else None)
        kept = len(good) - len(todo)
        print(f"{len(written)} segmentation volume(s) under {output}"
              + (f" ({kept} kept from the earlier run)" if kept else ""), flush=True)
        return written
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _record_series(output: str, volumes: Sequence[str], written: Sequence[str]) -> None:
    """Add to ``output/prediction.json`` which DICOM series each output came from (``dicom_series``: the output's
    name, the folder, SeriesInstanceUID, SeriesNumber, SeriesDescription and the number of slices)."""
    import json

    from vmunet_monai.predict import RECORD

    series = [v.record(os.path.basename(w)) for v, w in zip(volumes, written) if isinstance(v, DicomSeries)]
    if not series:
        return
    path = os.path.join(output, RECORD)
    record = json.loads(Path(path).read_text())
    record["dicom_series"] = series
    Path(path).write_text(json.dumps(record, indent=4) + "\n")


def write_montages(sources: Sequence[str], segmentations: Sequence[str], folder: str, num_classes: int,
                   window: Sequence[float] | None = None, class_names: dict[int, str] | None = None,
                   uncertainties: Sequence[str] | None = None,
                   disagreements: Sequence[str] | None = None) -> list[str]:
    """``folder/<segmentation name>.png`` for each volume: up to eight axial slices through its segmented classes,
    the prediction filled in colour over the image (:func:`vmunet_monai.evaluation.ct.plot_montage`); with
    ``uncertainties`` also ``folder/<segmentation name>_uncertainty.png``, the same slices with the model's
    uncertainty in colour and the prediction's outlines, and with ``disagreements`` likewise
    ``folder/<segmentation name>_disagreement.png``.

    Args:
        sources: the segmented volumes (files or DICOM series folders), in the order of ``segmentations``.
        segmentations: the written label maps, on their volumes' grids.
        num_classes: label values including background (the colour scale).
        window: the display window (CT: the HU window the network saw); None: each volume's 1st to 99th
            percentile (MRI).
        class_names: label value -> name, for the legend.
        uncertainties: the ``<case>_uncertainty.nii.gz`` volumes of ``predict --uncertainty``, in the same order.
        disagreements: the ``<case>_disagreement.nii.gz`` volumes of ``predict --uncertainty --tta`` (or of an
            ensemble), in the same order.

    Returns:
        the pictures written; a volume that cannot be drawn is named in a warning and left out, never failing the
        prediction already written.
    """
    import warnings

    import nibabel as nib
    import numpy as np
    from monai.transforms import LoadImage
    from tqdm import tqdm

    from vmunet_monai.evaluation.ct import _case_name, plot_montage

    os.makedirs(folder, exist_ok=True)
    drawn = []
    none = [None] * len(segmentations)
    heat = list(zip(uncertainties if uncertainties is not None else none,
                    disagreements if disagreements is not None else none))
    for source, seg, maps in tqdm(list(zip(sources, segmentations, heat)), desc="montages", unit="volume",
                                  leave=False):
        name = _case_name(seg)
        try:
            labels = nib.load(seg)
            image = np.asarray(LoadImage(image_only=True)(source), dtype=np.float32)
            image = image[..., 0] if image.ndim == 4 else image
            if image.shape != labels.shape:
                raise ValueError(f"image {image.shape} and segmentation {labels.shape} differ in shape")
            shown = tuple(window) if window is not None else tuple(np.percentile(image, (1, 99)).tolist())
            path = os.path.join(folder, f"{name}.png")
            plot_montage(image, np.asarray(labels.dataobj), labels.affine, path, window=shown,
                         title=f"{os.path.basename(str(source).rstrip('/'))}: prediction", num_classes=num_classes,
                         class_names=class_names)
            drawn.append(path)
            for kind, doubt in zip(("uncertainty", "disagreement"), maps):
                if doubt is None:
                    continue
                path = os.path.join(folder, f"{name}_{kind}.png")
                plot_montage(image, np.asarray(labels.dataobj), labels.affine, path, window=shown,
                             title=f"{os.path.basename(str(source).rstrip('/'))}: {kind}", num_classes=num_classes,
                             class_names=class_names, uncertainty=np.asarray(nib.load(doubt).dataobj, np.float32),
                             heat_name=kind, heat_power=1.0 if kind == "disagreement" else 2.0)
                drawn.append(path)
        except Exception as exc:  # a picture must never cost the segmentations already written
            warnings.warn(f"{source}: montage not drawn ({exc})")
    if drawn:
        print(f"{len(drawn)} montage(s) under {folder}")
    return drawn
