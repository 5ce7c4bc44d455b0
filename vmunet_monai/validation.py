"""Checks of input files and values that fail with one line: which file, which value, which rule.

Every check raises :class:`InputError` (a ``ValueError``), so a caller can catch one type; the
command line prints its message without a traceback. Batch tools (``predict``, ``prepare``) call
these checks per file, skip a file that fails and name it, so one broken file never stops the rest.

What is checked, and why here rather than in the network: a network can only say that a tensor has
the wrong shape somewhere deep in a layer; only the loader still knows the file name.

- files: present, not empty, readable to the last byte (truncated PNG/JPEG/NIfTI are caught by
  decoding everything once), of the expected kind (2D image or 3D volume);
- values: images hold finite numbers (no NaN or Inf);
- pairs: an image and its mask/label have the same size;
- orientation: a 2D image is read as viewers display it: a camera's EXIF orientation tag (a photo stored
  turned or mirrored) is applied (:func:`upright`), as the bundles' readers apply it;
- labels: a binary mask holds 0/1 or 0/255 (grey levels of lossy JPEG masks allowed; 0/65535 in 16 bits); a label map
  holds the integers ``0 .. num_classes - 1``;
- outputs: never written over or inside the inputs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "LOSSY_EXTENSIONS",
    "VOLUME_EXTENSIONS",
    "InputError",
    "MissingInputError",
    "as_typed",
    "comma_list",
    "number_list",
    "input_error",
    "check_file",
    "check_finite",
    "check_binary_mask",
    "mask_foreground",
    "check_label_values",
    "check_same_size",
    "read_image_2d",
    "read_image_upright",
    "exif_orientation",
    "upright",
    "describe_orientation",
    "read_volume",
    "check_image_pair_2d",
    "ImagePair",
    "check_output_location",
    "describe_values",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: formats whose pixel values may have been changed by compression (WebP may be lossy): a mask's values in them are
#: not trusted to be exact
LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def comma_list(value) -> list[str]:
    """An option's list as stripped strings: ``"0,128,255"`` or ``"[0,128,255]"``, the tuple fire makes of
    ``--x 0,128,255``, or a single value (fire makes a number of ``--x 2``). Empty items are kept, for the caller to
    refuse by name."""
    if isinstance(value, str):
        items = value.strip("[]() ").split(",")
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    return [str(v).strip() for v in items]


def as_typed(value):
    """A list option's value as the user typed it (``1,1,3``) rather than as the tuple fire made of it."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def number_list(option: str, value, kind=float, count: int | None = None, least: float | None = None,
                above: float | None = None, example: str = "") -> list:
    """An option's list of numbers (in any form :func:`comma_list` takes) as ``kind`` (int or float), or
    :class:`InputError` naming the option, the value and the rule: every item a finite number (a whole one for
    int), ``count`` of them where given, each at least ``least`` and greater than ``above`` where given."""
    import math

    what = "whole numbers" if kind is int else "numbers"
    words = {1: "one", 2: "two", 3: "three", 4: "four"}
    rule = (f"give {words.get(count, count)} {what}" if count else f"give {what}") + " separated by commas"
    rule += f", each at least {least:g}" if least is not None else ""
    rule += f", each above {above:g}" if above is not None else ""
    rule += f", e.g. {example}" if example else ""
    shown = as_typed(value)
    try:
        floats = [float(v) for v in comma_list(value)]
    except (TypeError, ValueError):
        raise InputError(f"{option} {shown!r}: {rule}") from None
    if (not floats or (count and len(floats) != count) or not all(map(math.isfinite, floats))
            or (kind is int and not all(v.is_integer() for v in floats))
            or (least is not None and min(floats) < least) or (above is not None and min(floats) <= above)):
        raise InputError(f"{option} {shown!r}: {rule}")
    return [kind(v) for v in floats]


class InputError(ValueError):
    """An input (file, value, pair of files, folder) that breaks a stated rule.

    The message is one line: ``<file>: <what was found> (<the rule>)``.
    """


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder that is not there: a ``FileNotFoundError`` that is also an :class:`InputError`, so a
    bundle run stopped by it ends with its message too (:func:`show_input_errors_last`)."""


class NotWrittenError(OSError):
    """A file that could not be written (a full disk, a quota), named with the space left on its disk; the message
    says where what stood at its path before is kept (:func:`write_whole`, :func:`move_whole`)."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def not_written(exc: BaseException, path: str | os.PathLike, kept: bool = True) -> NotWrittenError:
    """``exc``, raised while writing ``path``, as a :class:`NotWrittenError` naming the file and the space left on
    its disk (``torch.save`` reports a full disk as ``unexpected pos ...``, ``write_text`` names no file); ``kept``:
    the file was written beside ``path`` and renamed, so what stood there before is kept (and the message says so)."""
    import errno

    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip()
    return NotWrittenError(getattr(exc, "errno", None) or errno.EIO,
                           f"could not be written ({reason}; {space_left(Path(path).parent)} on its disk)"
                           + ("; what stood there before is kept" if kept else ""), str(path))


def space_left(folder: str | os.PathLike) -> str:
    """``"12.3 MiB free"`` on the disk of ``folder`` (or of the nearest folder above it that exists)."""
    import shutil

    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return f"{shutil.disk_usage(folder).free / 2 ** 20:.1f} MiB free"
    except OSError:
        return "the space left unknown"


def write_whole(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` into ``path`` through ``<path>.partial`` and an atomic rename, so that a stop or a full disk
    while writing leaves the earlier file whole (and no partial file), never half of the new one.

    Raises:
        NotWrittenError: naming ``path`` where it could not be written.
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, (FileNotFoundError, NotADirectoryError, PermissionError)):  # named as they are
            raise
        raise not_written(exc, path) from exc
    return path


def move_whole(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the file ``source`` to ``target``, maybe on another disk: copied beside ``target`` first, then renamed
    over it, so that a full disk leaves an earlier ``target`` whole (``shutil.move`` across disks truncates it
    first).

    Raises:
        NotWrittenError: naming ``target`` where it could not be written.
    """
    import shutil

    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if isinstance(exc, (FileNotFoundError, NotADirectoryError, PermissionError)):
            raise
        raise not_written(exc, target) from exc
    Path(source).unlink(missing_ok=True)


def nearest_existing(path: Path) -> Path | None:
    """``path`` itself if it exists, else the nearest folder above it that does."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


def os_error_line(exc: OSError) -> str:
    """One line for a file-system refusal: the path, and what stood in the way (for a folder that could not be
    made, the file standing where it or a folder above it was to be)."""
    if exc.filename is None or isinstance(exc, NotWrittenError):
        return str(exc)
    where = Path(exc.filename)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        blocking = nearest_existing(where)
        if blocking is not None and blocking.is_file():
            to_write = "" if blocking == where else f" (to write {where})"
            return f"{blocking}: a file stands where a folder is needed{to_write}; choose another path"
    if isinstance(exc, PermissionError):
        return f"{where}: permission denied (the folders written to must be writable, the files read readable)"
    if isinstance(exc, IsADirectoryError):
        return f"{where}: a folder, where a file was expected"
    return f"{where}: {exc.strerror or exc}"


def input_error_in(exc: BaseException | None) -> InputError | None:
    """The :class:`InputError` that ``exc`` is, or that caused it (MONAI re-raises errors of config expressions as
    ``RuntimeError: Failed to evaluate ...``); None if there is none."""
    return _in_chain(exc, InputError)


def _in_chain(exc: BaseException | None, kind: type) -> BaseException | None:
    """``exc`` or the first exception of its chain of causes that is a ``kind``; None if there is none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def show_input_errors_last() -> None:
    """After an uncaught exception's traceback, repeat the message of an :class:`InputError` behind it as the last
    line (``error: ...``): a bundle run that stops in a check of ours ends in MONAI's "Failed to evaluate
    ConfigExpression" otherwise, with the line that says what to do half a screen up. Installed once, on import of
    :mod:`vmunet_monai`; the previous hook still prints the traceback, but for a Ctrl-C that a training has
    answered with where it goes on from (the exception's ``stop_said``), and in a bundle run or a ``vmunet_monai``
    command (:func:`_command_run`) for a checked input, where the ``error: ...`` line is printed alone (set
    ``VMUNET_TRACEBACK=1`` to see the traceback behind it)."""
    import sys

    previous = sys.excepthook
    if getattr(previous, "_vmunet_monai", False):
        return

    def hook(kind, value, tb):
        if isinstance(value, KeyboardInterrupt) and getattr(value, "stop_said", False):
            return  # a training stopped by Ctrl-C said where it goes on from: that line stays the last
        cause = last_line_for(value)
        if _command_run() and not os.environ.get("VMUNET_TRACEBACK") and (
                cause is not None or isinstance(value, InputError)):
            # a checked input, in a bundle run or a command: the line says what to do; the screens of MONAI's
            # re-raised config expressions behind it say nothing more (VMUNET_TRACEBACK=1 shows them)
            print(f"error: {cause if cause is not None else value}", file=sys.stderr)
            return
        previous(kind, value, tb)
        if cause is not None:
            print(f"error: {cause}", file=sys.stderr)

    hook._vmunet_monai = True
    sys.excepthook = hook


def last_line_for(exc: BaseException) -> Exception | None:
    """The line :func:`show_input_errors_last` adds after ``exc``'s traceback: an :class:`InputError` behind it, what
    is wrong with a file MONAI found no reader for, a file that could not be written (:func:`write_error_in`), a
    non-finite training loss (what to change), or,
    in a bundle run or a ``vmunet_monai`` command only (its words are their options), what to change when a batch
    of one image reached a BatchNorm layer at 1x1. None when there is nothing to add (``exc`` itself the
    InputError: its message is the traceback's last line already)."""
    cause = input_error_in(exc) or unreadable_file_error(exc) or write_error_in(exc) or _non_finite_loss_in(exc)
    if cause is None and _command_run():
        cause = batch_of_one_error(exc)
    return None if cause is exc else cause


def _non_finite_loss_in(exc: BaseException | None) -> Exception | None:
    """The :class:`vmunet_monai.engine.NonFiniteLossError` behind ``exc`` (a training stopped by a NaN loss: its
    message names the epoch, the batch's images and what to change), or None."""
    from vmunet_monai.engine.guards import NonFiniteLossError

    return _in_chain(exc, NonFiniteLossError)


def write_error_in(exc: BaseException | None) -> Exception | None:
    """A file behind ``exc`` that could not be written (:class:`NotWrittenError`, a full disk or quota) or opened (a
    ``PermissionError``), as one line naming it: a bundle run or a ``predict`` stopped by a full disk or a read-only
    folder ends in MONAI's "Failed to evaluate" otherwise."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NotWrittenError):
            return exc
        if isinstance(exc, PermissionError) and exc.filename is not None:
            return InputError(os_error_line(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return not_written(exc, exc.filename, kept=False) if exc.filename is not None else InputError(
                f"{exc.strerror or exc}: a file could not be written (free space on the disk written to)")
        exc = exc.__cause__ or exc.__context__
    return None


def _command_run() -> bool:
    """Whether this process runs ``python -m monai.bundle ...`` (torchrun's workers too) or ``python -m
    vmunet_monai ...``, rather than a user's own script."""
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return (getattr(spec, "name", None) or "").split(".")[0] in ("monai", "vmunet_monai")


def unreadable_file_error(exc: BaseException | None) -> InputError | None:
    """What is wrong with the file MONAI's ``LoadImage`` found no reader for (``exc`` or its causes), as this
    module's checks of a 2D image or a volume word it (``<file>: cannot be decoded (...; is it truncated?)``); None
    when no such error is behind ``exc``, or the file reads after all. A file that changed after it was prepared
    (an interrupted copy, a full disk) otherwise ends a bundle run in a screen of MONAI's reader attempts."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # the message's own line, or a line of a DataLoader worker's traceback carried in the message
        found = re.search(r"LoadImage cannot find a suitable reader for file: (.+?)\.?$", str(exc), re.MULTILINE)
        if isinstance(exc, RuntimeError) and found:
            path = found.group(1)
            try:
                if _is_volume_name(path) or Path(path).is_dir():
                    read_volume(path)
                else:
                    read_image_2d(path)
            except InputError as described:
                return described
            except Exception:  # a check that cannot run is no reason to hide the traceback printed above
                return None
            return None
        exc = exc.__cause__ or exc.__context__
    return None


def check_no_hash(path, what: str = "") -> None:
    """Refuse a path that MONAI's config parser, through which the bundles get their files, would read as
    something else: one holding ``#``, the separator of its ids (``a#b``, turned into ``::``: the run would stop on
    a file that is not there, or write elsewhere), or a file or folder whose name starts with ``@``, ``$`` or ``%``
    (a reference, an expression, a macro: the run would stop on the whole input).

    Raises:
        InputError: naming the path (and ``what`` it is).
    """
    text = os.fspath(path)
    if "#" in text:
        raise InputError(f"{text}: {what + ' ' if what else ''}holds '#', which MONAI's config parser "
                         "reads as a separator (a bundle cannot be given such a path: rename the file or folder)")
    name = os.path.basename(text.rstrip("/" + os.sep))
    if name[:1] in ("@", "$", "%"):
        raise InputError(f"{text}: {what + ' ' if what else ''}its name starts with {name[0]!r}, which MONAI's "
                         "config parser reads as a reference, an expression or a macro (a bundle cannot be given such "
                         "a name: rename the file or folder)")


def batch_of_one_error(exc: BaseException | None) -> InputError | None:
    """What to change when training stopped in a BatchNorm layer given one value per channel (``exc`` or its
    causes): a batch of one image (``--batch_size 1``, or the last batch of an epoch) reaching a 1x1 feature map,
    which the deepest stage is at ``--image_size 32``. None when no such error is behind ``exc``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        found = re.search(r"Expected more than 1 value per channel when training, got input size (.+)$", str(exc),
                          re.MULTILINE)
        ours = "a training batch of one image of" in str(exc)  # VMUNetV2's own check
        if isinstance(exc, ValueError) and (found or ours):
            size = f" (input size {found.group(1)})" if found else ""
            return InputError(
                f"a training batch of one image reached a BatchNorm layer on a 1x1 feature map{size}, which "
                f"cannot be normalised: train at --image_size 64 or more (the deepest "
                f"stage is image_size / 32 across), or with a --batch_size that leaves no batch of one image (the "
                f"last batch of an epoch holds what is left of the training images)")
        exc = exc.__cause__ or exc.__context__
    return None


def input_error(path, problem: str, rule: str) -> InputError:
    """``InputError("<path>: <problem> (<rule>)")``."""
    return InputError(f"{os.fspath(path)}: {problem} ({rule})")


def describe_values(values: np.ndarray, limit: int = 6) -> str:
    """A short list of distinct values, e.g. ``0, 1, 2, 7`` or ``0, 1, 2, ... (40 values)``."""
    values = np.unique(np.asarray(values))
    shown = ", ".join(f"{v:g}" if isinstance(v, (float, np.floating)) else str(v) for v in values[:limit])
    return shown + (f", ... ({values.size} values)" if values.size > limit else "")


def _is_volume_name(path) -> bool:
    name = os.fspath(path).lower()
    return name.endswith(VOLUME_EXTENSIONS) or name.endswith(".dcm")


def check_file(path) -> Path:
    """``path`` as a ``Path`` if it is an existing, non-empty file.

    Raises:
        InputError: for a missing path, a folder, or an empty file.
    """
    path = Path(path)
    if not path.exists():
        raise input_error(path, "no such file", "the file must exist")
    if not path.is_file():
        raise input_error(path, "is a folder", "a file is expected here")
    if path.stat().st_size == 0:
        raise input_error(path, "the file is empty (0 bytes)",
                          "an interrupted copy or download? the file must hold an image")
    return path


def check_finite(array, path, what: str = "image") -> None:
    """Refuse NaN or Inf values.

    Raises:
        InputError: naming how many values are not finite.
    """
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        return
    finite = np.isfinite(array)
    if not finite.all():
        nan = int(np.isnan(array).sum())
        inf = int(array.size - finite.sum() - nan)
        raise input_error(path, f"the {what} holds {nan} NaN and {inf} Inf values",
                          f"{what}s must hold finite numbers")


def check_binary_mask(mask, path) -> None:
    """A binary mask holds 0/1 or 0/255 (lossy JPEG grey levels between them are allowed), or 0 and one
    value above 255 (a 16-bit mask, 0/65535 as ImageJ and MATLAB write them).

    Foreground is "at least half the scale" (:class:`vmunet_monai.engine.BinarizeMaskd`), so a mask
    whose largest value is above 1 but below 128 (a label map with classes 0..k, or a dim mask)
    would silently turn into an empty mask: that is refused, as are negative and non-finite values.

    Raises:
        InputError: naming the values found.
    """
    mask = np.asarray(mask)
    check_finite(mask, path, "mask")
    lo, hi = float(mask.min()), float(mask.max())
    rule = "a binary mask holds 0/1 or 0/255, or 0 and one other value in a 16-bit file"
    numbered = ("; a mask that numbers each object 1, 2, 3, ... (instance masks) takes prepare's --foreground "
                "nonzero, and a label map of several classes --classes")
    if lo < 0 or (hi > 255 and (lo != 0 or np.count_nonzero((mask != 0) & (mask != hi)))):
        whole = lo == 0 and bool(np.all(np.mod(mask, 1) == 0))
        raise input_error(path, f"mask values range from {lo:g} to {hi:g}", rule + (numbered if whole else ""))
    if 0 < hi < 128:
        # a 0/1 mask stored lossy: refused whether or not its noise happens to reach 2 (where it stays within 0
        # and 1, pixels of the edge have still flipped)
        if os.fspath(path).lower().endswith(LOSSY_EXTENSIONS) and hi <= 8:
            raise input_error(path, f"mask values are {describe_values(mask)}: a 0/1 mask stored lossy, whose "
                              "compression noise cannot be told from the mask", "save 0/1 masks as PNG, or 0/255 if "
                              "they must be JPEG")
        if hi <= 1:
            return
        raise input_error(path, f"mask values are {describe_values(mask)}, none of them at least 128", rule
                          + "; foreground is at least half the scale, so this mask would read as empty" + numbered)


def mask_foreground(mask):
    """A stored binary mask's foreground (boolean, array or tensor as given): values of at least half its scale, 128
    where its maximum is above 1, else 0.5, the rule of the bundles' ``BinarizeMaskd``."""
    return mask >= (127.5 if bool(mask.max() > 1) else 0.5)


def check_label_values(label, path, num_classes: int) -> None:
    """A label map holds the integers ``0 .. num_classes - 1``.

    Raises:
        InputError: naming the values outside the classes.
    """
    label = np.asarray(label)
    check_finite(label, path, "label")
    values = np.unique(label)
    bad = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
    if bad.size:
        raise input_error(path, f"label values {describe_values(bad)} are outside the classes",
                          f"labels must be integers 0-{num_classes - 1}")


def check_same_size(image_path, image_shape: Sequence[int], label_path, label_shape: Sequence[int],
                    what: str = "mask", axes: str = "") -> None:
    """Refuse an image and its mask/label of different sizes; ``axes`` names the shapes' axes in the message
    (``"height x width"`` for arrays as NumPy reads pictures; MONAI's readers give width first).

    Raises:
        InputError: naming both files and both sizes.
    """
    image_shape, label_shape = tuple(int(s) for s in image_shape), tuple(int(s) for s in label_shape)
    if image_shape != label_shape:
        size = lambda s: "x".join(str(v) for v in s)  # noqa: E731
        named = f" ({axes})" if axes else ""
        raise input_error(label_path, f"{what} is {size(label_shape)}{named} but its image {os.fspath(image_path)} "
                          f"is {size(image_shape)}", f"an image and its {what} must have the same size")


_FLOAT_MODES = ("F",)
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")

#: the EXIF tag in which a camera records how it was held: 1 is as stored, 2-8 a stored picture that viewers
#: show turned and/or mirrored (phone photos are stored as the sensor saw them, and tagged)
EXIF_ORIENTATION = 0x0112
_ORIENTATIONS = {2: "mirrored left to right", 3: "turned 180 degrees", 4: "mirrored top to bottom",
                 5: "mirrored and turned a quarter", 6: "turned a quarter clockwise",
                 7: "mirrored and turned a quarter", 8: "turned a quarter anticlockwise"}
#: the orientations that swap height and width
QUARTER_TURNS = (5, 6, 7, 8)


def exif_orientation(image) -> int:
    """The EXIF orientation of an open PIL image: 1 (as stored) where it has none or an invalid one, else 2-8."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: the pixels still read as stored
        return 1
    return int(value) if isinstance(value, int) and value in _ORIENTATIONS else 1


def describe_orientation(orientation: int) -> str:
    """``"EXIF orientation 6: shown turned a quarter clockwise"`` for the tag's value."""
    return f"EXIF orientation {orientation}: shown {_ORIENTATIONS.get(orientation, 'as stored')}"


def wide_colour_tiff(image) -> np.ndarray | None:
    """The samples of a TIFF of several colour channels at more than 8 bits each, read at full depth (through
    SimpleITK); None for any other image. PIL reads such a file as 8-bit RGB by keeping each sample's high byte, so
    8-bit values stored in 16 bits come out black and 12-bit data as 16 grey levels."""
    bits = getattr(image, "tag_v2", {}).get(258) if getattr(image, "format", None) == "TIFF" else None
    if not isinstance(bits, tuple) or len(bits) < 3 or max(bits) <= 8 or not getattr(image, "filename", None):
        return None
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(sitk.ReadImage(str(image.filename)))
    return array[..., :3] if array.ndim == 3 else None


def upright(image):
    """An open PIL image as viewers show it: its EXIF orientation applied (the same image where it has none).

    Every 2D reader here goes through this, the bundles' ``rgb_converter``/``gray_converter`` included, so an
    image, its mask and the mask ``predict`` writes all have the orientation a person sees.
    """
    if exif_orientation(image) == 1:
        return image
    from PIL import ImageOps

    return ImageOps.exif_transpose(image)


def read_image_upright(path) -> tuple[np.ndarray, int]:
    """Decode a 2D image file completely; its pixels as displayed (``(H, W)`` or ``(H, W, C)``, with the EXIF
    orientation applied) and that orientation (1 for none).

    Raises:
        InputError: for a missing, empty, truncated or non-image file, a volume, a multi-frame
            (3D) image, or NaN/Inf pixels.
    """
    from PIL import Image, UnidentifiedImageError

    path = check_file(path)
    if _is_volume_name(path):
        raise input_error(path, "is a volume file (NIfTI, NRRD, MHA or DICOM)", "2D images (png, jpg, bmp, tif, "
                          "webp) are expected here; volumes go to the synapse_multiorgan bundle")
    try:
        with Image.open(path) as image:
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > 1:
                raise input_error(path, f"holds {frames} frames (a 3D stack)", "one 2D image per file is expected")
            image.load()
            orientation = exif_orientation(image)
            array = np.asarray(upright(image))
    except InputError:
        raise
    except Image.DecompressionBombError as exc:  # over twice PIL.Image.MAX_IMAGE_PIXELS
        size = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(size.group(1)):,} pixels" if size else "more pixels than PIL decodes"
        raise input_error(path, f"holds {count}, more than PIL decodes at once ({2 * Image.MAX_IMAGE_PIXELS:,})",
                          "the network sees an image whole, resized; cut a whole-slide image into tiles") from None
    except UnidentifiedImageError:
        tiff = _undecodable_tiff(path)
        if tiff:
            raise input_error(path, f"is a TIFF of {tiff}, which the image reader (PIL) cannot decode",
                              "save it with 8- or 16-bit samples, or as PNG") from None
        raise input_error(path, "is not an image file that can be read",
                          "png, jpg, bmp, tif or webp images are expected") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise input_error(path, f"cannot be decoded ({reason})",
                          "the file must be a complete image; is it truncated?") from None
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise input_error(path, f"has pixel array shape {array.shape}", "a 2D image of height x width [x channels]")
    check_finite(array, path)
    return array, orientation


def _undecodable_tiff(path) -> str | None:
    """What a TIFF that PIL cannot open holds (``"3 channels of 32-bit float samples"``), as SimpleITK reads its
    header; None for any other file."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    channels = reader.GetNumberOfComponents()
    return f"{channels} channel{'s' if channels != 1 else ''} of {kind.replace('vector of ', '')} samples"


def read_image_2d(path) -> np.ndarray:
    """Decode a 2D image file completely and return its pixels as displayed, ``(H, W)`` or ``(H, W, C)``
    (:func:`read_image_upright` without the orientation).

    Raises:
        InputError: for a missing, empty, truncated or non-image file, a volume, a multi-frame
            (3D) image, or NaN/Inf pixels.
    """
    return read_image_upright(path)[0]


class ImagePair(NamedTuple):
    """What :func:`check_image_pair_2d` found: the image's size as displayed, its EXIF orientation (1 for none),
    whether its mask holds any foreground, and, for a binary mask stored losslessly that holds values besides 0 and
    its top one over large areas (a label map of several classes?), its values (else None)."""

    height: int
    width: int
    orientation: int
    foreground: bool
    levels: tuple | None = None


def class_like_levels(mask, path) -> tuple | None:
    """The values of a lossless binary ``mask`` where one besides 0 and its top value covers at least 1% of it (a
    label map's class, where smoothed edges give each grey level a sliver); None otherwise, and for lossy files,
    whose grey levels are their compression's."""
    if os.fspath(path).lower().endswith(LOSSY_EXTENSIONS):
        return None
    values, counts = np.unique(np.asarray(mask), return_counts=True)
    top = values[-1]
    if np.any((values > 0) & (values < top) & (counts >= 0.01 * np.asarray(mask).size)):
        return tuple(v.item() for v in values)
    return None


def check_image_pair_2d(image_path, mask_path, binary: bool = True) -> ImagePair:
    """Decode a 2D image and its mask and check both, and that they have the same size as displayed.

    Args:
        image_path, mask_path: the pair.
        binary: the mask must be binary (:func:`check_binary_mask`); ``False`` for a label map of several
            classes, whose values the importer checks itself.

    Returns:
        the image size as displayed (height, width), its EXIF orientation (1 for none) and whether the mask holds
        foreground (a value at half its scale or above; for a label map, any class).

    Raises:
        InputError: for the first rule broken; a mask that fits the stored pixels of an image shown turned a
            quarter is named as such.
    """
    image, orientation = read_image_upright(image_path)
    mask = read_image_2d(mask_path)
    if mask.ndim == 3:  # RGB(A) masks are read as one grey channel by the bundles
        mask = mask[..., :3].max(axis=-1) if mask.shape[-1] >= 3 else mask[..., 0]
    if orientation in QUARTER_TURNS and mask.shape[:2] == image.shape[1::-1] != image.shape[:2]:
        raise input_error(mask_path, f"fits the stored pixels of its image {os.fspath(image_path)}, which carries "
                          f"{describe_orientation(orientation)}", "images are read as they are displayed, so the "
                          "mask must be drawn on the upright image (or the tag removed from the image)")
    check_same_size(image_path, image.shape[:2], mask_path, mask.shape[:2], axes="height x width")
    levels = None
    if binary:
        check_binary_mask(mask, mask_path)
        foreground = bool(np.any(mask_foreground(mask)))
        levels = class_like_levels(mask, mask_path)
    else:
        foreground = bool(np.any(mask))
    return ImagePair(int(image.shape[0]), int(image.shape[1]), orientation, foreground, levels)


def read_volume(path, read_data: bool = True) -> tuple[tuple[int, ...], np.ndarray | None]:
    """Read a CT volume (NIfTI, NRRD, MHA/MHD, or a DICOM series folder) and check it is one 3D volume.

    Args:
        path: the file or the DICOM series folder.
        read_data: decode all voxels too (catches truncated files and NaN/Inf), not only the header.

    Returns:
        ``(shape, voxels)`` (``voxels`` is ``None`` without ``read_data``); ``shape`` has three sizes.

    Raises:
        InputError: for a missing, empty, truncated or unreadable file, a 2D image, several
            channels or time points, or NaN/Inf voxels.
    """
    path = Path(path)
    rule_3d = "one 3D volume with one channel is expected (2D images go to the 2D bundles)"
    if path.is_dir():
        shape, data = _read_dicom_series(path, read_data)
    else:
        check_file(path)
        name = path.name.lower()
        if name.endswith(IMAGE_EXTENSIONS):
            raise input_error(path, "is a 2D image file", rule_3d)
        if name.endswith((".nii", ".nii.gz")):
            shape, data = _read_nifti(path, read_data)
        elif name.endswith(VOLUME_EXTENSIONS):
            shape, data = _read_itk_file(path, read_data)
        else:
            raise input_error(path, "is not a volume file", f"expected one of {', '.join(VOLUME_EXTENSIONS)} "
                              "or a DICOM series folder")
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:  # (H, W, D, 1): a singleton time/channel axis
        shape = shape[:-1]
        data = None if data is None else data.reshape(shape)
    if len(shape) < 3:
        raise input_error(path, f"is {len(shape)}D with shape {shape}", rule_3d)
    if len(shape) > 3:
        raise input_error(path, f"has shape {shape}: {int(np.prod(shape[3:]))} channels or time points",
                          "one 3D volume with one channel is expected: save the frame or channel to segment as a file "
                          "of its own, as ACDC keeps each labelled frame in a _frameNN file beside its _4d series")
    if data is not None:
        check_finite(data, path, "volume")
    return shape, data


def _read_nifti(path: Path, read_data: bool):
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = image.shape
        data = np.asanyarray(image.dataobj) if read_data else None
    except Exception as exc:  # nibabel raises several types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise input_error(path, f"cannot be read as NIfTI ({reason})", "the file must be a complete NIfTI volume; "
                          "is it truncated?") from None
    return shape, data


def _read_itk_file(path: Path, read_data: bool):
    import SimpleITK as sitk

    try:
        if read_data:
            image = sitk.ReadImage(str(path))
            data = sitk.GetArrayViewFromImage(image)
            shape = image.GetSize() + ((image.GetNumberOfComponentsPerPixel(),)
                                       if image.GetNumberOfComponentsPerPixel() > 1 else ())
            return shape, np.array(data)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        comps = reader.GetNumberOfComponents()
        return reader.GetSize() + ((comps,) if comps > 1 else ()), None
    except RuntimeError as exc:
        reason = [line for line in str(exc).splitlines() if line.strip()]
        raise input_error(path, f"cannot be read ({reason[-1].strip() if reason else 'ITK error'})",
                          "the file must be a complete volume; is it truncated?") from None


def _read_dicom_series(path: Path, read_data: bool):
    import SimpleITK as sitk

    files = [f for f in sorted(path.iterdir()) if f.is_file() and not f.name.startswith(".")]
    if not files:
        raise input_error(path, "is an empty folder", "a DICOM series folder holds the slices of one volume")
    empty = [f for f in files if f.stat().st_size == 0]
    if empty:
        raise input_error(empty[0], "the file is empty (0 bytes)", "every slice of a DICOM series must be complete")
    try:
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
    except RuntimeError:
        names = ()
    if not names:
        raise input_error(path, "holds no readable DICOM series",
                          "a DICOM series folder holds the slices of one volume")
    if len(names) < 2:
        raise input_error(path, "the DICOM series has 1 slice (a 2D image)",
                          "one 3D volume of several slices is expected")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = [line for line in str(exc).splitlines() if line.strip()]
        raise input_error(path, f"the DICOM series cannot be read ({reason[-1].strip() if reason else 'ITK error'})",
                          "every slice must be a complete DICOM file") from None
    comps = image.GetNumberOfComponentsPerPixel()
    shape = image.GetSize() + ((comps,) if comps > 1 else ())
    return shape, (np.array(sitk.GetArrayViewFromImage(image)) if read_data else None)


def error_summary(exc: BaseException, limit: int = 300) -> str:
    """``"<ExceptionType>: <first line of its message>"``, at most ``limit`` characters of the message: one line
    for a report that goes on after the failure (compiler errors run to pages)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}"


def check_at_least(option: str, value, least: int) -> int:
    """``value`` of command-line ``option`` (e.g. ``"demo --epochs"``) if it is an integer of at least
    ``least``, else :class:`InputError` naming the option, the value and the rule."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise InputError(f"{option} {value!r}: must be an integer of at least {least}")
    return value


def check_flag(option: str, value) -> bool:
    """``value`` of command-line ``option`` (e.g. ``"--uncertainty"``) if it is true or false, else
    :class:`InputError` naming the option and the value."""
    if not isinstance(value, bool):
        raise InputError(f"{option} {value!r}: true or false")
    return value


def live_holder(mark: str | os.PathLike) -> int | None:
    """The process id written in ``mark`` (a file of ``host pid``, :func:`hold`) when that process is another one,
    running on this machine; None for no mark, a mark of this process, another machine's, or a process gone."""
    import socket

    try:
        host, pid = Path(mark).read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None
    if host != socket.gethostname() or pid == os.getpid() or os.name == "nt":  # os.kill ends a Windows process
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process
        return pid
    return pid


def hold(mark: str | os.PathLike) -> None:
    """Write ``mark``: this machine's name and this process's id (:func:`live_holder` reads it)."""
    Path(mark).write_text(_me() + "\n")


def release(mark: str | os.PathLike) -> None:
    """Remove ``mark`` if it is this process's (:func:`hold`), never another's."""
    try:
        if Path(mark).read_text().strip() == _me():
            Path(mark).unlink()
    except OSError:
        pass


def _me() -> str:
    import socket

    return f"{socket.gethostname()} {os.getpid()}"


FLAG_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def read_flag(option: str, value) -> bool:
    """``value`` of on/off ``option`` as a boolean: a boolean, or true/false, yes/no, on/off, 1/0 in any case as
    people type them; anything else is an :class:`InputError` naming the option, the value and the words."""
    if isinstance(value, bool):
        return value
    word = str(value).lower()
    if word not in FLAG_WORDS:
        raise InputError(f"{option} {value!r}: an on/off option takes true or false (or yes/no, on/off, 1/0)")
    return FLAG_WORDS[word]


def check_device(device) -> str | None:
    """``device`` as given (``cpu``, ``cuda``, ``cuda:N``), or None for the automatic choice; a device this
    machine cannot run raises :class:`InputError` naming it and what is there."""
    if device is None or str(device) == "":
        return None
    import torch

    try:
        dev = torch.device(str(device))
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: not a device; choose cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = f"CUDA build {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise InputError(f"--device {device!r}: no CUDA device is visible here (torch {torch.__version__}, "
                             f"{build}); use --device cpu or leave it out")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"--device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif dev.type != "cpu":
        raise InputError(f"--device {device!r}: choose cpu, cuda or cuda:N")
    return str(device)


def _resolved(path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_same_grid(image, image_affine, label, label_affine, more: str = "") -> None:
    """Refuse a label whose voxel-to-world matrix (``label_affine``) is not its image's within 0.001 mm, naming
    both files, how far their origins and voxel axes differ, and ``more`` (what to do, after the rule)."""
    ours, theirs = (np.asarray(a, dtype=np.float64) for a in (image_affine, label_affine))
    if np.allclose(ours, theirs, atol=1e-3):
        return
    shift = float(np.linalg.norm(ours[:3, 3] - theirs[:3, 3]))
    axes = float(np.abs(ours[:3, :3] - theirs[:3, :3]).max())
    raise input_error(label, f"its affine differs from the image {image}: origins {shift:.4g} mm apart, voxel axes "
                      f"by up to {axes:.4g} mm", "an image and its label must share one grid: their voxel-to-world "
                      f"matrices equal within 0.001 mm{more}")


def check_scan_backend(device: str | None) -> None:
    """Refuse a ``$VMUNET_SCAN_BACKEND`` that cannot run on ``device`` (None: the automatic choice, a GPU where
    one is visible) before a command writes anything: not a backend's name, one for another device (``triton`` on
    the CPU), or one not installed here. A run otherwise stopped at the first image in a traceback, leaving an
    unfinished record in its output folder."""
    from vmunet_monai.ops.dispatch import ENV_VAR, resolve_backend

    if not os.environ.get(ENV_VAR, "").strip():
        return
    import torch

    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolve_backend(torch.device(target))
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{exc} (unset ${ENV_VAR} for the automatic choice; python -m vmunet_monai doctor lists "
                         f"the backends)") from None


def check_output_location(inputs: Iterable, output, outputs: Iterable = (), what: str = "output folder",
                          output_is_file: bool = False) -> Path:
    """Refuse an output location that would overwrite or mix with the inputs, or that no folder can be made at.

    Rules: the output folder is not an input file, not an input folder and not inside one (files
    written there would be read as inputs by the next run); no planned output file is an input file;
    no file stands where the output folder (the folder of an output file) or a folder above it is to be
    (``NotADirectoryError``, as making it would raise after the work: raised before).

    Args:
        inputs: input files and folders.
        output: the output folder.
        outputs: the files that will be written (optional, checked one by one).
        what: how to call ``output`` in the message.
        output_is_file: ``output`` is a file to write (an export, a zip), not a folder.

    Returns:
        the resolved output folder.

    Raises:
        InputError: naming the output and the input it collides with.
    """
    out = _resolved(output)
    ins = [_resolved(p) for p in inputs]
    for src in ins:
        if out == src and not src.is_dir():
            raise input_error(out, f"the {what} is the input file itself", "outputs never overwrite inputs")
        if src.is_dir() and _inside(out, src):
            where = "is the input folder" if out == src else f"is inside the input folder {src}"
            raise input_error(out, f"the {what} {where}", "outputs are written outside the inputs, so they never "
                              "overwrite an input or get read as one; choose another folder")
        if not src.is_dir() and _inside(out, src):
            raise input_error(out, f"the {what} is inside the input file {src}", "outputs never overwrite inputs")
    input_files = {p for p in ins if not p.is_dir()}
    for planned in outputs:
        planned = _resolved(planned)
        if planned in input_files:
            raise input_error(planned, "would be written over an input file", "outputs never overwrite inputs")
    folder = out.parent if output_is_file else out
    standing = nearest_existing(folder)
    if standing is not None and not standing.is_dir():
        import errno

        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    return out
