"""Dictionary transforms the bundle configs use beside MONAI's own.

All are MONAI ``MapTransform`` subclasses, so they compose with ``monai.transforms.Compose`` and
travel through ``Invertd`` untouched.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import monai.transforms
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["BinarizeMaskd", "ChannelArgmaxd", "ClassValuesd", "FirstOutputd", "probability_slabs", "save_unit_nifti",
           "SaveProbabilityVolumed", "SaveSegmentationd", "ScaleToUnitd", "Spacingd",
           "insert_before", "rgb_converter", "gray_converter", "case_name_formatter", "INTENSITY_MODES", "mask_levels"]

INTENSITY_MODES = ("ct", "mri", "minmax")
# the modes that scale each volume by its own values, for MRI, which has no absolute unit
PER_VOLUME_MODES = ("mri", "minmax")


_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def rgb_converter(image):
    """PIL converter for ``PILReader(converter=...)``: any mode (L, P, RGBA, CMYK, 16-bit, float) to 3-channel RGB,
    upright as viewers show it (a camera's EXIF orientation applied: :func:`vmunet_monai.validation.upright`).

    16-bit, 32-bit integer and float images are rescaled from their own minimum and maximum to 0-255
    first (PIL's own conversion would clip them at 255, turning a 16-bit image nearly white); the
    bundles rescale every image to [0, 1] per image anyway.

    Raises:
        vmunet_monai.validation.InputError: for a float image with NaN or Inf pixels.
    """
    from vmunet_monai.validation import exif_orientation, upright, wide_colour_tiff

    name = getattr(image, "filename", None) or "<image>"
    wide = wide_colour_tiff(image)  # 16-bit RGB: PIL keeps each sample's high byte (8-bit data turns black)
    if wide is not None:
        return _turned(_to_8_bits(wide, name), exif_orientation(image))
    image = upright(image)
    if image.mode in _WIDE_MODES:
        image = _to_8_bits(np.asarray(image, dtype=np.float64), name)
    return image if image.mode == "RGB" else image.convert("RGB")


# how each EXIF orientation is undone (the tag's meaning: vmunet_monai.validation.describe_orientation)
_UNDO = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
         7: "TRANSVERSE", 8: "ROTATE_90"}


def _turned(image, orientation: int):
    from PIL import Image

    return image.transpose(getattr(Image.Transpose, _UNDO[orientation])) if orientation in _UNDO else image


def _to_8_bits(array: np.ndarray, name: str):
    """``array`` (grey or colour, any depth) rescaled from its own minimum and maximum to an 8-bit PIL image."""
    from PIL import Image

    from vmunet_monai.validation import check_finite

    array = np.asarray(array, dtype=np.float64)
    check_finite(array, name)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def case_name_formatter(metadict: dict, saver) -> dict:
    """``SaveImaged(output_name_formatter=...)`` for volumes: the output is named after the case as
    :func:`vmunet_monai.evaluation.ct._case_name` names it (KiTS's ``case_00000/imaging.nii.gz`` after its folder,
    where MONAI's own formatter would name every case ``imaging``)."""
    from vmunet_monai.evaluation.ct import _case_name

    source = (metadict or {}).get("filename_or_obj", getattr(saver, "_data_index", 0))
    # the extension is added back for MONAI to strip, so a dot in a case's name stays
    return {"subject": f"{_case_name(source)}.nii.gz", "idx": (metadict or {}).get("patch_index")}


def without_orientation(meta) -> bool:
    """Whether a NIfTI scan's header, as MONAI's reader gives it (``meta``), holds no orientation: qform and sform
    codes both 0. Its outputs are written likewise (:class:`SaveSegmentationd`, :func:`save_unit_nifti`)."""
    codes = [(meta or {}).get(k) for k in ("qform_code", "sform_code")]
    return all(c is not None and int(np.asarray(c).reshape(-1)[0]) == 0 for c in codes)


def scan_forms(source, affine, shape) -> tuple | None:
    """The qform and sform of the NIfTI scan ``source``, each with its code (nibabel's ``get_qform(coded=True)``,
    ``get_sform(coded=True)``), where an output of spatial ``shape`` and ``affine`` lies on the scan's own voxels
    (same first three axes, affine within 0.001 mm): written into that output's header, every reader places the
    output as it places its scan, whichever of the two forms it prefers. None for anything else (a DICOM series,
    NRRD, MetaImage, or a file that cannot be read)."""
    import nibabel as nib

    name = str(source or "")
    if not name.lower().endswith((".nii", ".nii.gz")) or not os.path.isfile(name):
        return None
    try:
        scan = nib.load(name)
    except Exception:  # noqa: BLE001 - a scan that cannot be read again keeps MONAI's header
        return None
    if tuple(scan.shape[:3]) != tuple(shape[:3]) or not np.allclose(scan.affine, np.asarray(affine), atol=1e-3):
        return None
    return scan.get_qform(coded=True), scan.get_sform(coded=True)


def _has_forms(image, forms) -> bool:
    """Whether the NIfTI ``image`` holds ``forms`` already (codes equal, affines within 1e-6): most scans store
    both forms alike, as MONAI writes them, and their segmentation is then not written a second time."""
    for (want, want_code), (have, have_code) in zip(forms, (image.get_qform(coded=True), image.get_sform(coded=True))):
        if int(want_code) != int(have_code):
            return False
        if int(want_code) and not np.allclose(want, have, atol=1e-6):
            return False
    return True


def _set_forms(header, forms) -> None:
    (qform, qcode), (sform, scode) = forms
    header.set_qform(qform, code=int(qcode))
    header.set_sform(sform, code=int(scode))


class _LabelNiftiWriter(monai.data.NibabelWriter):
    """MONAI's NIfTI writer that takes off a label volume's one channel and nothing else: its own squeezing drops
    every trailing dimension of size one, so a volume of one slice, ``(X, Y, 1)``, was written as ``(X, Y)``."""

    _unoriented = False  # the scan's header held no orientation (qform and sform codes 0)
    _source = None  # the scan's file, whose qform and sform the segmentation takes (scan_forms)

    def set_data_array(self, data_array, channel_dim: int | None = 0, squeeze_end_dims: bool = True, **kwargs):
        super().set_data_array(data_array, channel_dim=channel_dim, squeeze_end_dims=False, **kwargs)
        if self.data_obj.ndim == 4 and self.data_obj.shape[-1] == 1:  # (X, Y, Z, 1): the channel, moved last
            self.data_obj = self.data_obj[..., 0]

    def set_metadata(self, meta_dict=None, resample: bool = True, **options):
        super().set_metadata(meta_dict, resample=resample, **options)
        self._unoriented = without_orientation(meta_dict)
        self._source = (meta_dict or {}).get("filename_or_obj")

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        """MONAI's writing, with the header's qform and sform (and their codes) taken from a NIfTI scan on the same
        voxels (:func:`scan_forms`): MONAI writes both as the sform with code 1, so where a scan's qform differs
        from its sform (``sform_code`` 2, aligned), a viewer that reads the qform (ITK's) placed the scan by one
        and its segmentation by the other. For a scan whose header held no orientation (from any reader), the
        codes are set back to 0: ITK then reads both with its default geometry, and nibabel both with its default
        affine (with codes 1, ITK read nibabel's default affine as the segmentation's geometry: another origin,
        mirrored). Written as ``<filename>.partial.nii.gz`` and renamed (as :func:`save_unit_nifti` writes): a run
        stopped while it writes leaves no half-written segmentation under the name ``score`` and ``--resume``
        read."""
        import nibabel as nib

        filename = str(filename)
        partial = f"{filename}.partial.nii.gz"
        try:
            super().write(partial, verbose=verbose, **obj_kwargs)
            written = nib.load(partial)  # (its header: the voxels are read only where it is written again)
            forms = ((None, 0), (None, 0)) if self._unoriented else None
            if forms is None and self._source is not None:
                forms = scan_forms(self._source, written.affine, written.shape)
            if forms is not None and not _has_forms(written, forms):
                header = written.header.copy()
                _set_forms(header, forms)
                nib.save(nib.Nifti1Image(np.asanyarray(written.dataobj), None, header), partial)
            os.replace(partial, filename)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise


class SaveSegmentationd(monai.transforms.SaveImaged):
    """MONAI's ``SaveImaged`` for label volumes of one channel, ``(1, X, Y, Z)``, written as ``(X, Y, Z)`` whatever
    their size (:class:`_LabelNiftiWriter`): a volume of one slice keeps its shape, and so matches its scan. A
    subclass, so MONAI Label leaves it out of its post-processing as it does ``SaveImaged``.

    Args:
        keys, kwargs: as ``SaveImaged`` (``writer`` is set here).
    """

    def __init__(self, keys: KeysCollection, **kwargs) -> None:
        kwargs["writer"] = _LabelNiftiWriter
        super().__init__(keys, **kwargs)


def gray_converter(image):
    """PIL converter for masks: one channel, upright as its image (:func:`rgb_converter`), read as ``prepare``'s
    check and ``score`` read it: a palette mask's indices (VOC's colours stand for 0, 1, ...), a colour mask's
    brightest channel (a lesion drawn red counts as one drawn white; PIL's grey would make it 76, below half scale),
    grey, 16-bit and float masks as they are (a 0-1 float mask keeps its 0.9, which 8 bits would make 0)."""
    from PIL import Image

    from vmunet_monai.validation import upright

    image = upright(image)
    if image.mode in ("L", "1", "I", "I;16", "F"):
        return image
    if image.mode in ("I;16B", "I;16L"):
        return Image.fromarray(np.asarray(image).astype(np.uint16))  # native byte order, as torch takes it
    if image.mode in ("P", "PA", "LA", "La"):
        return Image.fromarray(np.asarray(image.getchannel(0)))  # the palette index, or the grey
    return Image.fromarray(np.asarray(image.convert("RGB")).max(axis=-1))


class BinarizeMaskd(MapTransform):
    """Turn a stored mask into a 0/1 float mask.

    Datasets store foreground as 255 (ISIC PNGs), as 1, or as lossy-JPEG grey levels around 255
    (Kvasir). A value counts as foreground when it is at least half the mask's scale: 128 for
    masks whose maximum is above 1, else 0.5. The same rule serves resized soft masks.

    Args:
        keys: keys of the masks.
        allow_missing_keys: skip absent keys instead of raising.
        enabled: ``False`` passes the masks through unchanged: label maps of several classes, which hold
            class numbers (the 2D bundles' ``"enabled": "$not @multi_class"``).
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, enabled: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = bool(enabled)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            binary = foreground(d[key])
            d[key] = binary.to(torch.float32) if isinstance(binary, torch.Tensor) else binary.astype(np.float32)
        return d


def foreground(mask):
    """A stored mask's foreground (boolean, tensor or array as given): values of at least half the mask's scale,
    128 where its maximum is above 1, else 0.5 (:class:`BinarizeMaskd`'s rule;
    :func:`vmunet_monai.validation.mask_foreground`, which the input checks use)."""
    from vmunet_monai.validation import mask_foreground

    return mask_foreground(mask)


def mask_levels(values, num_classes: int) -> list[int]:
    """The value a written 2D mask holds for each class, background first.

    Args:
        values: ``None`` for the bundles' defaults (0/255 for two classes, the class numbers 0 .. K-1 for more),
            or one value 0-255 per class, e.g. ``[0, 127, 255]`` (``prepare`` records a dataset's own values as
            ``meta.mask_values`` in its datalist).
        num_classes: the classes, background included.

    Raises:
        vmunet_monai.validation.InputError: naming the values and the rule they break.
    """
    from vmunet_monai.data.label_maps import parse_mask_values

    if values is None:
        return [0, 255] if num_classes == 2 else list(range(num_classes))
    return parse_mask_values(values, num_classes, highest=255, option="mask_values",
                             scale="8-bit grey levels of the written PNGs")


class ClassValuesd(MapTransform):
    """Copy a predicted label map (class numbers, one channel) under ``output_key`` with each class written as
    the value its mask should hold: 0/255 for binary masks, or a dataset's own grey levels (``mask_values``),
    so the written PNGs look like the masks the model was trained on. The label map under ``key`` is left
    as class numbers for the handlers that follow (overlays, MONAI Label).

    Args:
        keys: the label map's key, usually ``"pred"``.
        num_classes: classes, background included.
        values: see :func:`mask_levels`.
        output_key: where the copy goes (``"pred_mask"``, the key SaveImaged writes).
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(self, keys: KeysCollection, num_classes: int = 2, values=None, output_key: str = "pred_mask",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.levels = torch.tensor(mask_levels(values, int(num_classes)), dtype=torch.float32)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            numbers = torch.as_tensor(label).round().long()
            if numbers.numel() and (int(numbers.min()) < 0 or int(numbers.max()) >= len(self.levels)):
                raise ValueError(f"{key}: holds class numbers {int(numbers.min())}..{int(numbers.max())}, outside "
                                 f"0..{len(self.levels) - 1} for {len(self.levels)} classes")
            mapped = label.clone() if isinstance(label, torch.Tensor) else torch.as_tensor(label).float()
            mapped[...] = self.levels.to(numbers.device)[numbers].to(mapped.dtype)
            d[self.output_key] = mapped
        return d


class FirstOutputd(MapTransform):
    """Keep the first element of a list/tuple output (the full-resolution head of a deep-supervision
    network), so the usual post-processing and metrics apply; tensors pass through unchanged.

    Args:
        keys: output keys, usually ``"pred"``.
        allow_missing_keys: skip absent keys instead of raising.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor | Sequence[torch.Tensor]]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], (list, tuple)):
                d[key] = d[key][0]
        return d


class SplitPassEntropyd(MapTransform):
    """Move the last channel of ``keys`` to ``output_key``: the mean of the passes' own entropies that a
    :class:`vmunet_monai.engine.FlipTTAInferer` or :class:`vmunet_monai.engine.EnsembleInferer` with ``spread``
    appends after the classes. Put it first in the post-processing, before the activation, and give ``Invertd``
    both keys. Disabled (the inferer appends nothing), the data passes through unchanged.

    Args:
        keys: the key of the network's output (``pred``).
        output_key: where the channel goes (the bundles' ``pass_entropy``).
        enabled: the same flag as the inferer's ``spread`` (the bundles' ``pass_entropy`` option).

    Raises:
        ValueError: an output of fewer than two channels (naming the key): there is nothing to split off.
    """

    def __init__(self, keys: KeysCollection, output_key: str = "pass_entropy", enabled: bool = False,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key, self.enabled = str(output_key), bool(enabled)

    def __call__(self, data: Mapping) -> dict:
        from monai.data.meta_obj import get_track_meta
        from monai.utils import convert_to_tensor

        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            values = convert_to_tensor(d[key], track_meta=get_track_meta())  # a MetaTensor, for Invertd
            if values.ndim < 2 or values.shape[0] < 2:
                raise ValueError(f"SplitPassEntropyd: {key!r} has shape {tuple(values.shape)}; with pass_entropy on "
                                 f"it holds the classes and one channel more (is the inferer's spread on?)")
            d[self.output_key] = values[-1:]
            d[key] = values[:-1]
        return d


class ChannelArgmaxd(MapTransform):
    """The class of the highest channel at each voxel, as one channel: what ``AsDiscreted(argmax=True)`` gives
    (the first of equal maxima; float32, meta kept), about ten times faster on CPU for volumes.

    ``torch.argmax`` over the leading channel axis of a large volume takes a slow path on CPU (4.4 s for 9 x 512
    x 512 x 100 on two cores, against 0.44 s for the indices of ``torch.max``, which are the same), and the
    label map of every full-size CT volume goes through it.

    Args:
        keys: keys of channel-first class scores, e.g. ``pred`` after the softmax.
        probability_key: also keep the highest score of each voxel, one channel, under this key (one key) or
            ``<key>_<probability_key>`` (several keys): with scores after the softmax, the probability of the class
            picked, what a top-label :class:`vmunet_monai.engine.CalibrationReport` reads (``pred_key``).
    """

    def __init__(self, keys: KeysCollection, probability_key: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.probability_key = probability_key

    def __call__(self, data: Mapping) -> dict:
        from monai.data.meta_obj import get_track_meta
        from monai.utils import convert_data_type, convert_to_dst_type, convert_to_tensor

        d = dict(data)
        for key in self.key_iterator(d):
            scores = convert_to_tensor(d[key], track_meta=get_track_meta())  # as AsDiscrete takes its input
            plain, *_ = convert_data_type(scores, torch.Tensor)
            top = torch.max(plain, dim=0, keepdim=True)
            d[key], *_ = convert_to_dst_type(top.indices, scores, dtype=torch.float)  # float32, as AsDiscrete
            if self.probability_key:
                name = self.probability_key if len(self.keys) == 1 else f"{key}_{self.probability_key}"
                d[name], *_ = convert_to_dst_type(top.values, scores, dtype=torch.float)
        return d


def save_unit_nifti(values, affine, path: str | os.PathLike, oriented: bool = True, forms=None) -> str:
    """Write numbers from 0 to 1 (probabilities, uncertainties; any shape, clipped) as an 8-bit NIfTI with the scale
    factor 1/255 (``scl_slope``): readers that apply it (nibabel's ``get_fdata``, ITK, 3D Slicer) get them back to
    within 1/255, at a quarter of the size of floats. Written under another name first and renamed, so a crash
    never leaves a half-written file under ``path``. ``oriented=False`` writes no orientation (qform and sform
    codes 0), for a scan whose header held none (:func:`without_orientation`). ``forms``, the qform and sform with
    their codes as :func:`scan_forms` gives them, are written instead of ``affine`` with codes 1.

    Returns:
        ``path``.
    """
    import nibabel as nib

    levels = np.rint(np.clip(np.asarray(values, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    affine = np.asarray(affine, dtype=np.float64)
    if oriented:  # qform and sform codes 1, as MONAI writes the segmentation beside it (nibabel's default: 0 and 2)
        image = nib.Nifti1Image(levels, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    else:  # voxel sizes only: readers place it by their defaults, as they place its scan
        image = nib.Nifti1Image(levels, None)
        image.header.set_zooms((*np.linalg.norm(affine[:3, :3], axis=0), *(1.0,) * (levels.ndim - 3)))
        image.header.set_qform(None, code=0)
        image.header.set_sform(None, code=0)
    if forms is not None:
        _set_forms(image.header, forms)
    image.header.set_slope_inter(1.0 / 255.0, 0.0)
    image.header.set_xyzt_units("mm")
    path = str(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.partial.nii.gz"
    image.to_filename(partial)
    os.replace(partial, path)
    return path


def probability_slabs(path: str | os.PathLike, slab: int = 16):
    """The 4D probability volume ``path`` (X, Y, Z, classes, as :class:`SaveProbabilityVolumed` writes it) read
    ``slab`` axial slices at a time: yields ``(z, probabilities)``, the second (X, Y, <= slab, classes) float32
    from 0 to 1 with the file's scale applied, so memory stays at a few slices' worth.

    Raises:
        ValueError: a volume that does not have 4 axes (naming the file).
    """
    import nibabel as nib

    image = nib.load(str(path))
    if len(image.shape) != 4:
        raise ValueError(f"{path}: a probability volume has 4 axes (X, Y, Z, classes), not {tuple(image.shape)}")
    for z in range(0, image.shape[2], slab):
        yield z, np.clip(np.asarray(image.dataobj[:, :, z:z + slab, :], np.float32), 0.0, 1.0)


class SaveProbabilityVolumed(MapTransform):
    """Write each volume's class probabilities as ``<case>_prob.nii.gz`` beside its label map: a 4D NIfTI of
    shape (X, Y, Z, classes), background first, on the grid and affine of the label map.

    The probabilities are stored as 8-bit integers with the NIfTI scale factor 1/255 (``scl_slope``), so a
    reader that applies it (nibabel's ``get_fdata``, ITK, 3D Slicer) gets them back as numbers from 0 to 1, to
    within 1/255, at a quarter of the size of 32-bit floats. Place it after ``Invertd`` and before the argmax;
    the data passes through unchanged. A map of one channel (the ``pass_entropy`` that :class:`SplitPassEntropyd`
    splits off) is written as a 3D volume (X, Y, Z).

    Args:
        keys: the key of the probabilities (``pred`` after the softmax and ``Invertd``).
        output_dir: folder for the files.
        enabled: False writes nothing (``predict --probabilities``, ``--probabilities true`` turn it on).
        postfix: the file name's ending after the case name.
    """

    def __init__(self, keys: KeysCollection, output_dir: str, enabled: bool = False, postfix: str = "prob",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.enabled, self.postfix = str(output_dir), bool(enabled), str(postfix)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if not self.enabled:
            return d
        from vmunet_monai.evaluation.ct import _case_name

        for key in self.key_iterator(d):
            prob = d[key]
            meta = getattr(prob, "meta", {})
            source = meta.get("filename_or_obj")
            if not source:
                raise ValueError(f"SaveProbabilityVolumed: {key!r} carries no source file name to name its output by")
            if prob.ndim != 4:
                raise ValueError(f"{source}: SaveProbabilityVolumed expects (classes, X, Y, Z) probabilities; "
                                 f"{key!r} has shape {tuple(prob.shape)}")
            values = np.moveaxis(torch.as_tensor(prob).float().cpu().numpy(), 0, -1)  # classes last: (X, Y, Z, C)
            if values.shape[-1] == 1:
                values = values[..., 0]
            affine = prob.affine if hasattr(prob, "affine") else np.eye(4)
            target = os.path.join(self.output_dir, f"{_case_name(source)}_{self.postfix}.nii.gz")
            save_unit_nifti(values, affine, target, oriented=not without_orientation(meta),
                            forms=scan_forms(source, affine, values.shape))
        return d


class ScaleToUnitd(MapTransform):
    """Volume intensities to [0, 1], by a fixed window or by each volume's own range.

    - ``ct``: Hounsfield units clipped to ``window`` and scaled linearly (the Synapse protocol's
      -125..275 HU abdominal window); the same HU value gives the same input in every scan.
    - ``mri``: MRI has no absolute unit, so each volume is scaled between its own ``percentiles`` (0.5 and
      99.5 by default; the few brightest voxels, vessels or fat, do not set the scale) and clipped.
    - ``minmax``: each volume scaled between its own minimum and maximum (Mamba-UNet's ACDC preprocessing).

    Args:
        keys: image keys.
        intensity: ``"ct"``, ``"mri"`` or ``"minmax"`` (the Synapse bundle's ``intensity`` id).
        window: ``(low, high)`` in HU for ``ct`` (the bundle's ``hu_window``).
        percentiles: ``(low, high)`` percentiles for ``mri``.
        allow_missing_keys: skip absent keys instead of raising.

    Raises:
        vmunet_monai.validation.InputError: for another ``intensity``.
    """

    def __init__(self, keys: KeysCollection, intensity: str = "ct", window: Sequence[float] = (-125, 275),
                 percentiles: Sequence[float] = (0.5, 99.5), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if intensity not in INTENSITY_MODES:
            from vmunet_monai.validation import InputError

            raise InputError(f"intensity {intensity!r}: choose ct (a fixed HU window, --hu_window), mri (each "
                             f"volume scaled between its own 0.5 and 99.5 percentiles) or minmax (between its own "
                             f"minimum and maximum)")
        self.intensity = intensity
        if intensity == "ct":
            self.scaler = monai.transforms.ScaleIntensityRange(a_min=float(window[0]), a_max=float(window[1]),
                                                               b_min=0.0, b_max=1.0, clip=True)
        elif intensity == "minmax":
            self.scaler = monai.transforms.ScaleIntensity(minv=0.0, maxv=1.0)
        else:
            self.scaler = monai.transforms.ScaleIntensityRangePercentiles(
                lower=float(percentiles[0]), upper=float(percentiles[1]), b_min=0.0, b_max=1.0, clip=True)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


class Spacingd(monai.transforms.Spacingd):
    """MONAI's ``Spacingd`` that also runs inside MONAI Label.

    For NIfTI input, monai 1.6's ``Spacingd`` copies the new metadata into every entry named
    ``<key>_*``. MONAI Label puts ``image_path`` (a string) into the same dictionary, so the copy fails
    with ``'str' object has no attribute 'update'``. Entries of that form that are not dictionaries are
    set aside during the call; everything else, ``inverse`` included, is MONAI's.
    """

    def __call__(self, data, lazy: bool | None = None) -> dict:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {k: d.pop(k) for k in list(d) if isinstance(k, str) and k.startswith(prefixes)
                 and not isinstance(d[k], Mapping)}
        d = super().__call__(d, lazy=lazy)
        d.update(aside)
        return d


def insert_before(transforms: Sequence, name: str, transform) -> list:
    """``transforms`` with ``transform`` placed before the first one whose class is called ``name``.

    Used by ``evaluate_native.json`` to copy the ground truth before ``Resized`` changes it:
    ``"$vmunet_monai.engine.insert_before(@train#deterministic_transforms, 'Resized', @validate#keep_original_label)"``.

    Raises:
        ValueError: no transform of that class (the message lists the classes there are).
    """
    transforms = list(transforms)
    for i, t in enumerate(transforms):
        if type(t).__name__ == name:
            return transforms[:i] + [transform] + transforms[i:]
    raise ValueError(f"no {name} among the transforms ({', '.join(type(t).__name__ for t in transforms)})")
