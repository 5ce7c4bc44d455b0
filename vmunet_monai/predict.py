"""Segment a file or a folder with a bundle's trained network (``python -m vmunet_monai predict``).

For the 2D bundles (``isic_skin_lesion``, ``polyp_seg``) this runs the bundle's own
``configs/inference.json`` with the input, output folder and checkpoint overridden, so the masks
(PNG at the input image's size) and overlays are exactly what ``monai.bundle run inferring``
writes. ``synapse_multiorgan`` goes to :func:`vmunet_monai.predict_volume.predict_volumes`.

Before the network runs, every input file is decoded once and checked
(:func:`vmunet_monai.validation.read_image_2d`): a file that is empty, truncated, not an image, a 3D
volume or holds NaN pixels is skipped and named, and so is an image whose mask another image of its
folder already writes (``X.png`` and ``X.tif``: the PNG is kept, else the first in name order); the rest
is segmented. Images are read as they are displayed (a camera's EXIF orientation tag applied), so a mask
lies on its image as a viewer shows it. The checkpoint must be a state dict of the bundle's network
(:func:`vmunet_monai.weights.check_checkpoint_fits`), and the output folder may not be an input or lie
inside the input folder.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vmunet_monai.engine.utils import find_bundle, inference_configs, network_file, output_channels
from vmunet_monai.evaluation.uncertainty import check_rank_by
from vmunet_monai.validation import (IMAGE_EXTENSIONS, InputError, as_typed, check_at_least, check_device, check_flag,
                                     check_no_hash, check_output_location, check_scan_backend, number_list,
                                     read_image_upright, write_whole)

__all__ = ["predict", "VOLUME_BUNDLES", "is_volume_bundle", "check_no_hash", "NothingToPredictError", "RECORD",
           "bundle_class_names", "write_record", "read_record", "weights_files", "resume_check", "check_fresh_output",
           "finished_output", "takes_pass_entropy", "collect_images", "check_members_fit"]

VOLUME_BUNDLES = ("synapse_multiorgan",)


def is_volume_bundle(bundle) -> bool:
    """Whether ``bundle`` segments volumes slice by slice (the CT bundle, or a copy of it under any name: its
    inference runs a ``SliceInferer``) rather than 2D images."""
    if Path(str(bundle)).name in VOLUME_BUNDLES:
        return True
    try:
        config = find_bundle(bundle) / "configs" / "inference.json"
    except FileNotFoundError:
        return False
    return config.is_file() and "SliceInferer" in config.read_text()
# MONAI's PNG writer squeezes trailing size-one axes, so a one-pixel-high mask cannot be written
MIN_SIZE = 2


class NothingToPredictError(InputError):
    """Every input file was skipped: there was nothing the network could be run on."""


RECORD = "prediction.json"  # what made the masks of an output folder, written beside them


def bundle_class_names(bundle_root: str | os.PathLike, classes: int, weights=None) -> dict[int, str]:
    """Class number -> name (background left out) as the bundle's ``metadata.json`` names its output channels;
    where it names another number of classes (a bundle trained on your own classes, metadata unchanged), as the
    training of ``weights`` (the first of an ensemble) named them in the ``network.json`` beside them
    (:func:`vmunet_monai.engine.handlers.trained_class_names`); else empty."""
    import json

    return _channel_names(json.loads((Path(bundle_root) / "configs" / "metadata.json").read_text()), classes,
                          weights)


def _channel_names(meta: dict, classes: int, weights=None) -> dict[int, str]:
    """:func:`bundle_class_names` of metadata already read."""
    names = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {})
    if len(names) == classes:
        return {c: str(names.get(str(c), f"class_{c}")) for c in range(1, classes)}
    if isinstance(weights, (list, tuple)):
        weights = weights[0] if weights else None
    if weights is None:
        return {}
    from vmunet_monai.engine.handlers import trained_class_names

    return trained_class_names(weights, classes)


def weights_files(root: Path, checkpoint, default_ckpt: Path, train: str, model, device,
                  batch: int = 1, channels: int | None = None) -> list[Path]:
    """The files the network comes from (:func:`vmunet_monai.engine.utils.network_file`): the exported ``model``,
    the default weights, or each of the checkpoints given; several joined by commas (``a.pt,b.pt``) are an
    ensemble, run as one model by averaging their probabilities (the inference config's ``ensemble_checkpoints``,
    :class:`vmunet_monai.engine.EnsembleInferer`).

    Raises:
        FileNotFoundError: the one checkpoint is not there (named, with the command that trains it).
        InputError: of several, one that is not there, an empty item or one given twice
            (:func:`vmunet_monai.engine.checkpoint_list`); an exported model together with checkpoints.
    """
    from vmunet_monai.engine.inferers import checkpoint_list

    if isinstance(checkpoint, (list, tuple)) and len(checkpoint) == 1:
        checkpoint = checkpoint[0]
    one = isinstance(checkpoint, (str, os.PathLike)) and ("," not in str(checkpoint)
                                                          or os.path.isfile(os.path.expanduser(str(checkpoint))))
    if checkpoint is None or model or one:
        given = os.path.expanduser(str(checkpoint)) if checkpoint is not None and not model else checkpoint
        return [network_file(root, given, default_ckpt, train, model, device, batch, channels)]
    return [Path(p).resolve() for p in checkpoint_list(checkpoint, option="--checkpoint")]


def check_input_image(path, who: str = "predict") -> int:
    """The check of one 2D image to segment, decoding it once: its name (:func:`vmunet_monai.validation.check_no_hash`),
    a readable 2D image (:func:`vmunet_monai.validation.read_image_upright`: not empty, truncated, of several
    frames or NaN pixels) of at least :data:`MIN_SIZE` pixels across. Returns its EXIF orientation (1: upright).

    Raises:
        InputError: naming the file and the rule; ``who`` (the command or config) is named with the size rule.
    """
    check_no_hash(path)
    pixels, orientation = read_image_upright(path)
    if min(pixels.shape[:2]) < MIN_SIZE:
        raise InputError(f"{path}: is {pixels.shape[0]}x{pixels.shape[1]} pixels ({who} needs images of at least "
                         f"{MIN_SIZE}x{MIN_SIZE} pixels)")
    return orientation


class quiet_interrupt:
    """While a workflow runs, log records made while a KeyboardInterrupt is handled (ignite's "terminating due to
    exception", MONAI's "Exception:" with a screen of traceback) are dropped, by every logging handler, also those
    the workflow creates as it starts: Ctrl-C ends a run with the command's one line."""

    def __enter__(self):
        import logging

        self.original = original = logging.Handler.handle

        def handle(handler, record):
            exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
            return False if isinstance(exc, KeyboardInterrupt) else original(handler, record)

        logging.Handler.handle = handle
        return self

    def __exit__(self, *exc) -> bool:
        import logging

        logging.Handler.handle = self.original
        return False


def exported_overrides(configs, model, given: dict) -> dict:
    """The settings the ``inference.json`` carried by the exported ``model`` says its weights were trained with
    (:func:`vmunet_monai.engine.exported.exported_settings`: the class count, the 2D bundles' image scale, the CT
    bundle's scaling), as overrides of the bundle's ``configs``; those in ``given`` (options given, not None) are
    left out. Prints a note naming the ones that differ from the bundle's. Empty where the export carries no
    config."""
    from monai.bundle import ConfigParser

    from vmunet_monai.engine.exported import exported_settings

    config = ConfigParser.load_config_files(configs)
    found = {k: v for k, v in exported_settings(model, config).items() if given.get(k) is None}
    changed = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in found.items() if config.get(k) != v]
    if changed:
        print(f"note: {model} holds weights trained with {', '.join(changed)} (the inference.json it carries), not "
              f"this bundle's settings: they are used", flush=True)
    return found


def binary_head(network_def) -> bool:
    """Whether a bundle's ``network_def`` has the 2D bundles' output layer, ``output_channels(num_classes)``: one
    sigmoid output for two classes (:func:`vmunet_monai.engine.output_channels`); the CT bundle has one per class."""
    return isinstance(network_def, dict) and "output_channels(" in str(network_def.get("out_channels", ""))


def signature_defaults(target) -> dict:
    """The default values of the parameters of ``target`` (a network class), by name; empty for None or where
    they cannot be read."""
    import inspect

    try:
        return {k: p.default for k, p in inspect.signature(target).parameters.items()} if target else {}
    except (TypeError, ValueError):
        return {}


def trained_network(configs, weights, ids: str = "network_def") -> dict:
    """Overrides (``network_def#<setting>``) that build the bundle's network with the settings its weights were
    trained with, read from the ``network.json`` a training writes beside them
    (:func:`vmunet_monai.engine.handlers.write_network_settings`); prints a note naming the settings that differ
    from the bundle's. Empty without such a file; of a record of a network from elsewhere (MONAI's), or of one
    that holds the input size alone (a baseline's), only the input size is taken: a 2D bundle's ``image_size``,
    the CT bundle's sliding window ``roi_size`` (the size of its training's slices), the 2D bundles' image
    scale (``intensity_max``, :func:`vmunet_monai.engine.handlers.trained_intensity_max`) and the CT bundle's
    scaling (``intensity``, ``hu_window``: :func:`vmunet_monai.engine.handlers.trained_scaling`). A record of another
    network of this package (a training with ``--network_def#_target_ vmunet_monai.networks.MambaUNet``) replaces
    ``network_def`` with it. The output layer is left to ``num_classes`` (a mismatch is named when the weights are
    loaded)."""
    import pydoc

    from monai.bundle import ConfigParser

    from vmunet_monai.engine.handlers import (NETWORK_SETTINGS, read_network_settings, trained_input_size,
                                              trained_intensity_max, trained_scaling)

    record = Path(weights).parent / NETWORK_SETTINGS
    saved = read_network_settings(weights, quiet=False)
    if saved is None:
        return {}
    config = ConfigParser.load_config_files(configs)
    network_def = config.get(ids.split("#")[0], {})
    overrides, changed = {}, []
    trained_size = trained_input_size(weights, saved)  # a baseline's record holds this alone
    # a 2D bundle's input size, or the CT bundle's sliding window (its training's slices)
    setting = "image_size" if isinstance(config.get("image_size"), list) else "roi_size"
    size = config.get(setting)
    if trained_size and isinstance(size, list) and len(size) == len(trained_size):
        overrides[setting] = list(trained_size)
        if list(size) != list(trained_size):
            changed.append(f"{setting} {list(trained_size)}")
    scale = trained_intensity_max(weights, saved)  # the 2D bundles' image scale (older records: 0..1)
    if scale is not None and isinstance(config.get("intensity_max"), (int, float)):
        overrides["intensity_max"] = scale
        if float(config["intensity_max"]) != scale:
            changed.append(f"intensity_max {scale:g}")
    for key, value in trained_scaling(weights, saved).items():  # the CT bundle's: the window, or MRI scaling
        if key in config:
            overrides[key] = value
            if config[key] != value:
                changed.append(f"{key} {value}")
    same = isinstance(network_def, dict) and saved.get("_target_") == network_def.get("_target_")
    other = str(saved.get("_target_", ""))
    _check_trained_here(configs, weights, record, saved, network_def)
    if (not same and isinstance(network_def, dict) and other.startswith("vmunet_monai.networks.")
            and pydoc.locate(other) is not None):  # another network of the family (Mamba-UNet in the CT bundle)
        rebuilt = {k: v for k, v in saved.items() if k == "_target_" or not k.startswith("_")}
        if "out_channels" in network_def:  # the output layer is left to num_classes
            rebuilt["out_channels"] = network_def["out_channels"]
        overrides[ids] = rebuilt
        changed.append(f"network {other.rsplit('.', 1)[-1]}")
    defaults = signature_defaults(pydoc.locate(str(saved["_target_"])) if same else None)
    for key, value in saved.items() if same else ():
        if key.startswith("_") or key == "out_channels":
            continue
        overrides[f"{ids}#{key}"] = value
        current = network_def.get(key, defaults.get(key))
        current = list(current) if isinstance(current, tuple) else current
        if not (isinstance(current, str) and current[:1] in "$@%") and current != value:
            changed.append(f"{key} {value}")
    if changed:
        print(f"note: the network is built as it was trained ({record}): {', '.join(changed)}", flush=True)
    return overrides


def _check_trained_here(configs, weights, record: Path, saved: dict, network_def) -> None:
    """Refuse weights that another bundle trained with another network (the ISIC bundle's VM-UNet in the polyp
    bundle, whose network is VM-UNetV2) or for other input channels (the CT bundle's VM-UNet, one CT channel in,
    in the ISIC bundle), as their ``network.json`` records them: rebuilt as recorded, they ran in a pipeline made
    for other images. Another network trained in this bundle (Mamba-UNet through a ``network_def`` override), or a
    record that names no bundle (isic/polyp before 0.1.19, synapse before 0.1.20), is taken."""
    from vmunet_monai.engine.handlers import bundle_name_above
    from vmunet_monai.weights import CheckpointError

    trained_in = (saved.get("_desc_") or {}).get("bundle") if isinstance(saved.get("_desc_"), dict) else None
    if not trained_in or not isinstance(network_def, dict) or "_target_" not in saved:
        return
    first = configs[0] if isinstance(configs, (list, tuple)) and configs else configs
    here = bundle_name_above(Path(str(first)).parent)  # the bundle whose configs these are
    if here is None or here == trained_in:
        return
    theirs, ours = (str(t).rsplit(".", 1)[-1] for t in (saved["_target_"], network_def.get("_target_", "?")))
    mine = network_def.get("in_channels")
    if theirs != ours:
        differs = f"({theirs}) is not this bundle's ({ours}, {here!r})"
    elif isinstance(saved.get("in_channels"), int) and isinstance(mine, int) and saved["in_channels"] != mine:
        differs = f"takes {saved['in_channels']} input channel(s) against {mine} in this bundle ({here!r})"
    else:
        return
    raise CheckpointError(f"{weights}: weights of the bundle {trained_in!r} ({record}), whose network {differs}: give "
                          f"the bundle they were trained in, or weights trained in this one")


def check_members_fit(network, weights: list) -> None:
    """Check that each of ``weights`` (one, or an ensemble's members) fits ``network``, which was built with the
    settings the first one's ``network.json`` records.

    Raises:
        vmunet_monai.weights.CheckpointError: naming the weights that do not fit; for a later member of an
            ensemble, that the network is the first member's (its own ``network.json`` was not read).
    """
    from vmunet_monai.weights import CheckpointError, check_checkpoint_fits

    for index, path in enumerate(weights):
        try:
            check_checkpoint_fits(network, path, built_from_record=index == 0)
        except CheckpointError as exc:
            if index == 0:
                raise
            raise type(exc)(f"{exc}; the network was built for the ensemble's first member, {weights[0]}: the "
                            f"members of an ensemble must be of one network") from None


def recorded_num_classes(checkpoint, default_ckpt, configs, say: bool = True) -> int | None:
    """The class count the ``network.json`` beside the weights (``checkpoint``, the first of an ensemble, else
    ``default_ckpt``) records through its output layer, where it differs from the bundle's ``num_classes``; None
    without such a file, for another network than ``network_def`` (a baseline's) or when they agree. 2D bundles
    have one output for two classes (``vmunet_monai.engine.output_channels``), the CT bundle one per class. With
    ``say``, a count found is printed as the ``--num_classes`` taken (predict, export)."""
    from monai.bundle import ConfigParser

    from vmunet_monai.engine.handlers import read_network_settings
    from vmunet_monai.engine.utils import classes_of_outputs

    if isinstance(checkpoint, (list, tuple)):
        checkpoint = checkpoint[0] if checkpoint else None
    first = default_ckpt if checkpoint is None else os.path.expanduser(str(checkpoint))
    if not os.path.isfile(first) and "," in str(first):
        first = str(first).split(",")[0].strip()
    saved = read_network_settings(first)
    if saved is None:
        return None
    config = ConfigParser.load_config_files(configs)
    network_def = config.get("network_def", {})
    outputs = saved.get("out_channels")
    if outputs is None or not isinstance(network_def, dict) or saved.get("_target_") != network_def.get(
            "_target_") or isinstance(outputs, bool) or not isinstance(outputs, int):
        return None
    classes = classes_of_outputs(outputs) if binary_head(network_def) else outputs
    if classes < 2 or classes == config.get("num_classes"):
        return None
    if say:
        print(f"note: --num_classes {classes}, the classes the weights were trained for (the network.json beside "
              f"them)", flush=True)
    return classes


def write_record(out: str | os.PathLike, parser, bundle_root: str | os.PathLike, weights,
                 exported: bool, inputs, written: list[str], skipped: list[dict], settings: dict,
                 finished: bool = True, kept: int = 0) -> Path:
    """``OUT/prediction.json``: which bundle and weights (with their sha256) made the files in ``out``, the classes
    and the values the masks hold, the settings, the inputs, what was written and skipped, and the environment,
    so a folder of masks says where it came from (``objects`` reads the classes from it).

    Args:
        parser: the inference workflow's ``ConfigParser`` (its ``num_classes`` and, for 2D bundles, its
            ``mask_values``).
        weights: the weight file, or the list of an ensemble's (recorded as a list, with a list of hashes).
        settings: the options given (``tta``, ``device``, ...), recorded as they are.
        finished: False for the record a run writes as it starts (what ``--resume`` checks against).
        kept: outputs of an earlier run that ``--resume`` kept (counted in ``written``).
    """
    import datetime
    import json

    from vmunet_monai.doctor import environment
    from vmunet_monai.engine.transforms import mask_levels

    root = Path(bundle_root)
    weights = _one_or_many(weights)
    many = isinstance(weights, list)
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    classes = int(parser.get_parsed_content("num_classes"))
    names = _channel_names(meta, classes, weights)
    record = {
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "bundle": str(root),
        "bundle_version": meta.get("version"),
        "weights": [str(w) for w in weights] if many else str(weights),
        "weights_sha256": _weights_hash(weights),
        "exported_model": bool(exported),
        "num_classes": classes,
        "class_names": [names.get(c, "background") for c in range(classes)] if names else None,
        "settings": settings,
        "inputs": [str(i) for i in inputs],
        "finished": bool(finished),
        "written": len(written),
        "kept_from_earlier_run": int(kept),
        "skipped": [s["reason"] for s in skipped],
        "environment": environment(),
    }
    if exported:  # the export runs the scan it was exported with, not this machine's backend
        record["environment"]["scan_backend"] = f"the exported model's own ({Path(str(weights)).suffix or 'file'})"
    if "mask_values" in parser:  # the 2D bundles: the value each class holds in the written PNGs
        record["mask_values"] = mask_levels(parser.get_parsed_content("mask_values"), classes)
    if not finished:
        _take_output(Path(out))
    path = Path(out) / RECORD
    write_whole(path, json.dumps(record, indent=4) + "\n")  # a stop while writing leaves the record before it whole
    if finished:
        from vmunet_monai.validation import release

        release(Path(out) / LOCK)
    return path


LOCK = ".predict.lock"


def _take_output(out: Path) -> None:
    """Mark ``out`` as written by this process (``out/.predict.lock``: host and process id) until its record says
    finished; refuse it while another running process on this machine holds it: two runs into one folder mix their
    masks, and the record describes only the one that ends last. A mark left by a run that ended without finishing
    (its process gone) or by this process is taken over.

    Raises:
        InputError: naming the folder, the other process and when its run started.
    """
    from vmunet_monai.validation import hold

    _refuse_running(out)
    hold(out / LOCK)


def _refuse_running(out: Path) -> None:
    """An ``InputError`` where another running predict on this machine writes into ``out``."""
    from vmunet_monai.validation import live_holder

    pid = live_holder(out / LOCK)
    if pid is not None:
        import json

        try:
            started = json.loads((out / RECORD).read_text()).get("created", "?")
        except (OSError, ValueError):
            started = "?"
        raise InputError(f"{out}: another predict (process {pid}, started {started}) is writing into this folder "
                         "(two runs into one folder mix their outputs; wait for it to end, or choose another OUTPUT)")


def check_fresh_output(out: str | os.PathLike, resume: bool) -> None:
    """Refuse, without ``--resume``, an output folder that an earlier ``predict`` wrote (its ``prediction.json``):
    a new run there would leave the earlier run's files beside its own, under a record that describes only the
    new run, and ``score`` would read them all. With ``--resume`` :func:`resume_check` decides.

    Raises:
        InputError: naming the folder, when the earlier run started, what it wrote and from what, and the ways on.
    """
    import json

    out = Path(out)
    _refuse_running(out)
    path = out / RECORD
    if resume or not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        before = {}
    inputs = ", ".join(str(i) for i in before.get("inputs") or []) or "?"
    finished = before.get("finished", True)
    # a run that stopped recorded only what it kept at its start: count what it left instead
    written = before.get("written", "?") if finished else sum(1 for p in out.rglob("*") if p.is_file() and
                                                             not p.name.startswith(".") and p.name != RECORD)
    state = "" if finished else ", stopped before it finished"
    raise InputError(f"{out}: holds an earlier predict's results ({RECORD} of {before.get('created', '?')}, "
                     f"{written} file(s) from {inputs}{state}); a new run there would mix its files "
                     "with those, and score would read them all (choose another OUTPUT, delete that one first, or add "
                     "--resume to go on with that run's weights and options)")


def _one_or_many(weights):
    """One weight file as itself (also from a list of one), several as a list."""
    if isinstance(weights, (list, tuple)):
        return list(weights) if len(weights) > 1 else weights[0]
    return weights


def _weights_hash(weights):
    """What a record says of its weights: the sha256 of the file, or the list of an ensemble's."""
    from vmunet_monai.package import sha256

    weights = _one_or_many(weights)
    return [sha256(w) for w in weights] if isinstance(weights, list) else sha256(weights)


def resume_check(out: str | os.PathLike, bundle_root, weights, exported: bool, settings: dict,
                 compared: Sequence[str], kept_on: Sequence[str] = ("probabilities", "uncertainty")) -> bool:
    """``--resume``: whether ``out`` holds an earlier run's outputs that this run may keep.

    The earlier run's ``prediction.json`` (written when a run starts, and again when it ends) must name the same
    bundle, the same weights (by sha256), the same kind of model and the same values of the ``compared``
    settings (the options that change what is written): then the outputs it left that read back whole are kept
    and only the rest is segmented. Without a record there is nothing to resume and every input is segmented.
    The ``kept_on`` settings (extra outputs: probability maps, uncertainty) may be turned on, which segments again
    every input without them, but not off, which would leave the earlier inputs' beside later ones without.

    Raises:
        InputError: a record that cannot be read, or one written with other weights or options (naming the
            first difference, both values and the file).
    """
    import json

    path = Path(out) / RECORD
    if not path.is_file():
        print(f"--resume: no {RECORD} in {out}: nothing to resume, every input is segmented", flush=True)
        return False
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"--resume: {path} cannot be read ({exc}); remove it or choose another output "
                         f"folder") from None
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731 - tuples and lists alike, as JSON holds them
    now = {"bundle": str(Path(bundle_root)), "weights_sha256": _weights_hash(weights), "exported_model": bool(exported),
           **{f"settings.{k}": plain(settings.get(k)) for k in compared}}
    then = {"bundle": before.get("bundle"), "weights_sha256": before.get("weights_sha256"),
            "exported_model": before.get("exported_model"),
            **{f"settings.{k}": (before.get("settings") or {}).get(k) for k in compared}}
    for key in now:
        if now[key] != then[key]:
            raise InputError(f"--resume: {path} was written with {key} {then[key]!r} and this run has {now[key]!r}; "
                             f"resume with the options and weights of that run, or choose another output folder")
    for key in kept_on:
        if (before.get("settings") or {}).get(key) and not settings.get(key):
            raise InputError(f"--resume: {path} was written with --{key} true and this run has it off: the images "
                             f"segmented before have those outputs and the rest would not; give --{key} true again, "
                             f"or choose another output folder")
    return True


def finished_output(path: str | os.PathLike) -> bool:
    """Whether an output file is there and reads back whole (a run stopped while writing leaves it cut short)."""
    path = str(path)
    try:
        if path.lower().endswith(".png"):
            from PIL import Image

            with Image.open(path) as image:
                image.load()
            return True
        if path.lower().endswith((".nii", ".nii.gz")):
            import nibabel as nib

            np.asarray(nib.load(path).dataobj)
            return True
        return os.path.isfile(path) and os.path.getsize(path) > 0
    except Exception:  # unreadable or cut short: segment it again
        return False


def read_record(folder: str | os.PathLike) -> tuple[Path, dict] | None:
    """The ``prediction.json`` of a folder of predictions (in it, or in the folder above it for ``masks/`` and
    ``instances/``), or None where there is none or it cannot be read."""
    import json

    folder = Path(folder)
    for place in (folder, folder.parent):
        path = place / RECORD
        if path.is_file():
            try:
                return path, json.loads(path.read_text())
            except (OSError, ValueError):
                return None
    return None


_SKIP_DIR = re.compile(r"^(masks?|labels?|gt|ground[ _]?truth|annotations)$|groundtruth", re.IGNORECASE)
_SKIP_STEM = re.compile(r"_(segmentation|superpixels)$")


def collect_images(input: Path, left: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """Image items under ``input`` (a file, or a folder searched recursively, mask folders and masks beside their
    images left out) and the other files found, which are not images. Folders of masks (``masks``, ``labels``,
    ``gt``, ``groundtruth``, ``Ground Truth`` as CVC-ClinicDB has it, ``annotations``, PH2's ``IMD002_lesion`` and
    ``IMD002_roi`` in ``IMD002/``), folders an earlier ``predict`` wrote (they hold its ``prediction.json``) and masks
    named as such (``_segmentation``, ``_superpixels``, beside their images) are left out, each said in ``left``."""
    if input.is_file():
        return [{"image": os.path.abspath(input), "name": input.stem}], []
    from vmunet_monai.data.folders import mixed_pairs

    items, others, mask_files = [], [], 0
    left = [] if left is None else left
    visited = {os.path.realpath(input)}
    for dirpath, dirnames, filenames in os.walk(input, followlinks=True):  # a linked folder is read as one
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in visited:  # a link back up the tree, or to a folder already read
                left.append(f"{Path(dirpath) / d}: a link to a folder already read ({real})")
                continue
            visited.add(real)
            if (Path(dirpath) / d / RECORD).is_file():
                left.append(f"{Path(dirpath) / d}: an earlier predict's output ({RECORD})")
            elif _SKIP_DIR.search(d):
                left.append(f"{Path(dirpath) / d}: a folder of masks, by its name")
            elif d in (f"{Path(dirpath).name}_lesion", f"{Path(dirpath).name}_roi"):  # PH2: IMD002/IMD002_lesion
                left.append(f"{Path(dirpath) / d}: PH2's masks of {Path(dirpath).name}")
            else:
                kept.append(d)
        dirnames[:] = kept
        # masks beside their images (BUSI's X_mask.png, GlaS's X_anno.bmp) are not segmented
        beside = {m for masks in mixed_pairs(Path(dirpath))[0].values() for m in masks}
        for f in sorted(filenames):
            path = Path(dirpath) / f
            if f.startswith("."):
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                if not _SKIP_STEM.search(path.stem) and path not in beside:
                    items.append({"image": os.path.abspath(path), "name": path.stem})  # a link by its own name
                else:
                    mask_files += 1
            else:
                others.append(str(path))
    if mask_files:
        left.append(f"{mask_files} mask file(s) beside their images (X_mask, X_anno, X_segmentation, ...)")
    return items, others


def _prepared_images(input: Path) -> list[dict] | None:
    """The images of the ``test`` split of a prepared dataset folder (one holding ``datalist.json``), as the 2D
    bundles' inference with ``--dataset_dir`` segments them (not its ``preview.png`` or masks), with a printed note;
    None for any other input.

    Raises:
        InputError: for a datalist without a ``test`` split (its splits named), or an entry without an image.
    """
    from vmunet_monai.data.common import DATALIST_NAME, _datalist_items

    if not (input / DATALIST_NAME).is_file():
        return None
    images = [item["image"] for item in _datalist_items(input, "test")]
    print(f"note: {input} holds {DATALIST_NAME} (a prepared dataset): segmenting the {len(images)} image(s) of its "
          f"'test' split, as the bundle's inference with --dataset_dir does (give a folder of images to segment all "
          f"it holds)", flush=True)
    return [{"image": image, "name": Path(image).stem} for image in images]


def _common_folder(paths: list[str]) -> str:
    return os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""


def _planned(item: dict, output: Path, data_root: str) -> tuple[Path, Path]:
    source = Path(item["image"])
    rel = source.parent.relative_to(data_root) if data_root else Path()
    return (output / "masks" / rel / f"{source.stem}_mask.png",
            output / "overlays" / rel / f"{source.stem}_overlay.png")


def _window(value) -> list[float]:
    """``--window`` as two numbers, low below high (a string "-200,300" or "[-200,300]", or a pair)."""
    low, high = number_list("--window", value, float, count=2, example="-200,300 (HU, low then high)")
    if not low < high:
        raise InputError(f"--window {as_typed(value)!r}: the low end must be below the high end")
    return [low, high]


def predict(bundle: str, input: str, output: str, checkpoint: str | None = None, device: str | None = None,
            baseline: str = "", tta: bool = False, model: str | None = None, num_classes: int | None = None,
            window=None, intensity: str | None = None, mask_values=None, split_touching: float | None = None,
            probabilities: bool = False, resume: bool = False, batch_size: int = 1, uncertainty: bool = False,
            rank_by: str = "share"):
    """Write ``OUTPUT/masks/**/<stem>_mask.png`` (0/255, class numbers for several classes, or ``mask_values``) and
    ``OUTPUT/overlays/**/<stem>_overlay.png`` for every image in ``input`` (a file or a folder, searched
    recursively; mask folders and masks beside their images, as X_mask.png beside X.png, are skipped).

    Args:
        bundle: a bundle name (``isic_skin_lesion``, ``polyp_seg``, ``synapse_multiorgan``) or the path
            of a bundle folder (e.g. the one ``demo`` trains).
        input: an image file or a folder of images.
        output: output folder; not an input, not the input folder and not inside it.
        checkpoint: weights to use; default ``<bundle>/models/model.pt``. Several joined by commas
            (``seed0/model.pt,seed1/model.pt``), or a list, are an ensemble: each image's class probabilities
            are averaged over the networks (after ``tta``, when given) before the masks are drawn
            (:class:`vmunet_monai.engine.EnsembleInferer`).
        device: ``cpu``, ``cuda`` or ``cuda:N``; default: CUDA when available.
        baseline: segment with a baseline the bundle trained through its ``configs/baseline_<name>.json``
            overlay (``unet``, ``swin_unetr``) instead of its own network; the default checkpoint is then
            ``<bundle>/models/baseline_<name>/model.pt``.
        tta: average the prediction over the image and its mirror images (four network passes;
            :class:`vmunet_monai.engine.FlipTTAInferer`).
        model: an exported network (``.ts``, ``.onnx``, ``.pt2`` from ``python -m vmunet_monai export``) to run
            instead of ``network_def`` and its weights (the bundle's ``configs/inference_exported.json``); it is
            first run once on the input size in ``metadata.json``. The class count and the image scaling its weights
            were trained with are read from the ``inference.json`` a TorchScript or ``.pt2`` export carries
            (:func:`exported_overrides`); options given win.
        num_classes: a bundle trained on your own classes: the ``--num_classes`` it was trained with (default:
            the count the ``network.json`` beside the weights records, or the export's with ``model``, else the
            bundle's, 9 for
            ``synapse_multiorgan`` and 2 for the 2D bundles). Above 2 the 2D masks hold the
            class numbers 0 .. ``num_classes - 1`` and the overlays give each class a colour.
        window: ``synapse_multiorgan`` trained with another ``--hu_window``: that ``(low, high)`` in HU (the
            bundle's ``hu_window``).
        intensity: ``synapse_multiorgan`` trained on MRI: ``mri`` (each volume scaled by its own percentiles) or
            ``minmax`` (by its own minimum and maximum), as it was trained (:class:`vmunet_monai.engine.ScaleToUnitd`).
        mask_values: 2D bundles: the value each class gets in the written masks, background first, e.g.
            ``0,127,255`` for the grey levels of the dataset's own masks (``prepare`` records them as
            ``meta.mask_values`` in the datalist); default: the bundle's ``mask_values`` (0/255 for two classes,
            the class numbers for more).
        probabilities: also write each prediction's probabilities: for the binary 2D bundles
            ``OUTPUT/probabilities/**/<stem>_prob.png``, the foreground probability as grey levels 0-255 (with
            several classes ``<stem>_prob_<k>.png``, one per class after the background); for
            ``synapse_multiorgan`` ``OUTPUT/<case>_prob.nii.gz``, one map per class
            (:class:`vmunet_monai.engine.SaveProbabilityVolumed`).
        uncertainty: also write where the model is unsure and rank the predictions by it
            (:mod:`vmunet_monai.evaluation.uncertainty`; implies ``probabilities``, from which it is computed):
            ``OUTPUT/uncertainty/**/<stem>_uncertainty.png`` for 2D images, ``OUTPUT/<case>_uncertainty.nii.gz``
            for volumes, and ``OUTPUT/uncertainty.csv``, the most doubtful prediction first. With ``tta`` or an
            ensemble, also where the passes disagree (the mutual information; what to annotate next):
            ``<stem>_disagreement.png`` beside each picture and ``OUTPUT/disagreement_most.png``,
            ``OUTPUT/<case>_disagreement.nii.gz``, the table's ``mean_disagreement``, from the passes' mean entropy
            written beside the probabilities
            (``<stem>_pass_entropy.png``, ``<case>_pass_entropy.nii.gz``).
        rank_by: the column of ``uncertainty.csv`` whose largest value comes first: ``share`` (``uncertain_share``),
            ``uncertainty`` (``mean_uncertainty``) or ``disagreement`` (``mean_disagreement``; several passes)
            (:func:`vmunet_monai.evaluation.uncertainty.check_rank_by`).
        batch_size: 2D bundles: images per network call (each is resized to the network's input first, so images of
            any sizes share a batch); more keeps a GPU busy, the masks stay the same. Volumes go one at a time,
            their slices batched by the bundle's ``sw_batch_size``.
        resume: go on with a run that stopped (a crash, a closed terminal): the outputs it wrote in ``output`` that
            read back whole are kept and only the other inputs are segmented, provided its ``prediction.json``
            names the same bundle, weights and options (:func:`resume_check`).
        split_touching: 2D binary bundles: also write ``OUTPUT/instances/**/<stem>_instances.png``, the mask's
            objects numbered 1, 2, ... with touching ones cut apart where they narrow by at least this many
            pixels (:func:`vmunet_monai.evaluation.objects.split_touching`; 2 to 5 for objects some tens of
            pixels across), for object-level scoring (``objects``) and counting.

    Returns:
        ``{"masks": [...], "overlays": [...], "skipped": [{"file", "reason"}, ...], "record": ...}`` (and
        ``"instances"`` with ``split_touching``, ``"uncertainty"`` (the table's rows), ``"uncertainty_table"`` and
        ``"uncertainty_plot"`` with ``uncertainty``, and ``"disagreement_plot"`` with several passes): the paths
        written, the files that were skipped and the ``OUTPUT/prediction.json`` that records the bundle, weights,
        classes and settings. For ``synapse_multiorgan``: the list of segmentation files that
        :func:`~vmunet_monai.predict_volume.predict_volumes` returns.

    Raises:
        FileNotFoundError: for a missing bundle or checkpoint (with the command that makes one).
        InputError: for a missing input or an output folder inside the inputs.
        NothingToPredictError: when every input file was skipped (the message names them).
        vmunet_monai.weights.CheckpointError: for a checkpoint that is unreadable or not of this bundle's network.
    """
    device = check_device(device)
    check_scan_backend(device)
    check_at_least("predict --batch_size", batch_size, 1)
    check_flag("--probabilities", probabilities)
    check_flag("--uncertainty", uncertainty)
    check_rank_by(rank_by, uncertainty)
    probabilities = probabilities or uncertainty  # the uncertainty is computed from the probability maps
    volumes = is_volume_bundle(bundle)
    if batch_size != 1 and volumes:
        raise InputError(f"--batch_size {batch_size}: only for the 2D bundles; volumes go one at a time (their slices "
                         f"are batched by the bundle's sw_batch_size)")
    if mask_values is not None and volumes:
        raise InputError(f"--mask_values {mask_values!r}: only for the 2D bundles; synapse_multiorgan writes NIfTI "
                         f"label maps of class numbers")
    if split_touching is not None:
        from vmunet_monai.evaluation.objects import split_touching as split

        if volumes:  # several classes are refused below, once they are known
            raise InputError(f"--split_touching {split_touching!r}: only for binary 2D masks (objects of one kind)")
        try:
            split(np.zeros((1, 1), bool), split_touching)  # a depth of at least 0.5 pixels, or a clear error
        except InputError as exc:
            raise InputError(f"--{exc}") from None
    if volumes:
        from vmunet_monai.predict_volume import predict_volumes

        bundle_root = str(find_bundle(bundle)) if (Path(str(bundle)) / "configs").is_dir() else None
        extra = {} if num_classes is None else {"num_classes": int(num_classes)}
        if window is not None:
            extra["hu_window"] = _window(window)
        if intensity is not None:
            from vmunet_monai.engine.transforms import INTENSITY_MODES

            if intensity not in INTENSITY_MODES:
                raise InputError(f"--intensity {intensity!r}: choose ct, mri or minmax (as the model was trained)")
            extra["intensity"] = intensity
        return predict_volumes(input, output, checkpoint=checkpoint, device=device, bundle_root=bundle_root,
                               baseline=baseline, tta=tta, model=model, probabilities=probabilities, resume=resume,
                               uncertainty=uncertainty, rank_by=rank_by, **extra)
    if window is not None or intensity is not None:
        option = f"--window {window}" if window is not None else f"--intensity {intensity}"
        raise InputError(f"{option}: only for synapse_multiorgan (volumes); the 2D bundles read photographs")
    if num_classes is not None:
        output_channels(num_classes)  # a whole number of at least 2, or a clear error

    from monai.bundle import ConfigParser, ConfigWorkflow

    from vmunet_monai.data.common import png_first, report_skipped, report_turned

    root = find_bundle(bundle)
    configs, default_ckpt, train = inference_configs(root, baseline, model)
    carried = exported_overrides(configs, model, {"num_classes": num_classes}) if model else {}
    if num_classes is None and not model:  # weights trained with --num_classes N: N, from their network.json
        num_classes = recorded_num_classes(checkpoint, default_ckpt, configs)
    num_classes = carried.pop("num_classes", num_classes)  # an export of such weights: N, from what it carries
    classes = int(num_classes if num_classes is not None
                  else ConfigParser.load_config_files(configs).get("num_classes", 2))
    if mask_values is not None:
        from vmunet_monai.engine.transforms import mask_levels

        try:
            mask_values = mask_levels(mask_values, classes)  # one value 0-255 per class, or a clear error
        except InputError as exc:
            raise InputError(f"--{exc}") from None  # named as the option it came from
    if split_touching is not None and classes > 2:
        raise InputError(f"--split_touching {split_touching!r}: {root} predicts {classes} classes; objects are split "
                         f"in binary masks only")
    source = Path(os.path.abspath(os.path.expanduser(str(input))))
    if not source.exists():
        raise InputError(f"{input}: no such file or folder (give an image file or a folder of images)")
    weights = weights_files(root, checkpoint, default_ckpt, train, model, device, batch_size, output_channels(classes))
    ckpt = weights[0]
    out = check_output_location([source], output)
    check_no_hash(out, "OUTPUT")
    check_fresh_output(out, resume)
    left: list[str] = []
    listed = _prepared_images(source)  # a prepared dataset: its test split, as the bundle's inference
    candidates, others = (listed, []) if listed is not None else collect_images(source, left)
    if left:
        print(f"note: not segmented, as masks or results: {'; '.join(left[:4])}"
              + (f" and {len(left) - 4} more" if len(left) > 4 else ""), flush=True)
    skipped = []
    from vmunet_monai.data.common import not_an_image_reason

    for path in others:
        skipped.append({"file": path, "reason": f"{path}: {not_an_image_reason(path)}"})
    data_root = _common_folder([c["image"] for c in candidates])
    good, taken, turned = [], {}, []
    # PNGs first, so that of X.png and X.jpg in one folder, which would write one X_mask.png, the PNG is segmented
    # (as prepare pairs them); the rest in the order found
    for order, item in sorted(enumerate(candidates), key=lambda c: png_first(c[1]["image"])):
        try:
            orientation = check_input_image(item["image"], "predict")
        except InputError as exc:
            skipped.append({"file": item["image"], "reason": str(exc)})
            continue
        mask = _planned(item, out, data_root)[0]
        if mask in taken:
            skipped.append({"file": item["image"], "reason": f"{item['image']}: its mask {mask.relative_to(out)} is "
                            f"already the output of {taken[mask]} (give images distinct names)"})
            continue
        taken[mask] = item["image"]
        good.append((order, item))
        if orientation != 1:
            turned.append((item["image"], orientation))
    good = [item for _, item in sorted(good, key=lambda g: g[0])]
    if not good:
        first = f"; first: {skipped[0]['reason']}" if skipped else ""
        raise NothingToPredictError(f"{input}: no image could be segmented ({len(skipped)} file(s) skipped{first})")
    planned = [_planned(item, out, data_root) for item in good]
    check_output_location([c["image"] for c in candidates], out, [p for pair in planned for p in pair])
    settings = {"baseline": baseline or None, "tta": bool(tta), "device": device, "split_touching": split_touching,
                "probabilities": bool(probabilities), "num_classes": num_classes, "mask_values": mask_values,
                "batch_size": int(batch_size), "uncertainty": bool(uncertainty)}
    spread = bool(uncertainty) and (bool(tta) or len(weights) > 1) and takes_pass_entropy(configs)
    check_rank_by(rank_by, uncertainty, spread)

    def maps(mask) -> list[Path]:
        """The probability maps of one mask that this run writes."""
        if not probabilities:
            return []
        return _prob_paths(out, mask, classes) + ([_beside_mask(out, mask, "probabilities", "pass_entropy")]
                                                  if spread else [])

    todo = good
    if resume and resume_check(out, root, weights, bool(model), settings,
                               ("baseline", "tta", "num_classes", "mask_values")):
        todo = [item for item, (mask, overlay) in zip(good, planned)
                if not all(finished_output(p) for p in (mask, overlay, *maps(mask)))]
        print(f"--resume: {len(good) - len(todo)} of {len(good)} image(s) already segmented in {out}, "
              f"{len(todo)} to go", flush=True)
    overrides = {
        "bundle_root": str(root),
        "input_dir": str(source),
        "datalist": todo,
        "data_root_dir": data_root,
        "output_dir": str(out),
        "num_workers": 0,
        "tta": bool(tta),
        "dataloader#batch_size": int(batch_size),
        "summary": False,  # predict names what it wrote itself
    }
    if num_classes is not None:
        overrides["num_classes"] = int(num_classes)
    if mask_values is not None:
        overrides["mask_values"] = mask_values
    if probabilities:
        overrides["probabilities"] = True
    if spread:
        overrides["pass_entropy"] = True
    if model:
        overrides["exported_model"] = str(ckpt)
        overrides.update(carried)
    else:
        overrides["checkpoint"] = str(ckpt)
        overrides.update(trained_network(configs, ckpt))
    if len(weights) > 1:  # the bundle's own ensemble: the first loaded into the network, the rest as members
        overrides["ensemble_checkpoints"] = [str(w) for w in weights]
    if device:
        overrides["device"] = f"$torch.device('{device}')"
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type="infer",
        **overrides,
    )
    workflow.initialize()
    if not model:
        check_members_fit(workflow.parser.get_parsed_content("network"), weights)
    out.mkdir(parents=True, exist_ok=True)  # the record of a run under way: what --resume checks against
    write_record(out, workflow.parser, root, weights, bool(model), [source], [], skipped, settings, finished=False)
    if todo:
        with quiet_interrupt():
            workflow.run()
    workflow.finalize()
    masks = [str(m) for m, _ in planned]
    overlays = [str(o) for _, o in planned]
    missing = [p for p in masks + overlays if not os.path.isfile(p)]
    if missing:
        raise RuntimeError(f"inference finished but did not write {missing[:3]}")
    report_skipped(skipped, "file")
    report_turned(turned, "their masks and overlays are upright too")
    print(f"{len(masks)} masks under {out / 'masks'}, {len(overlays)} overlays under {out / 'overlays'}")
    result = {"masks": masks, "overlays": overlays, "skipped": skipped}
    if probabilities:
        result["probabilities"] = [str(p) for m in masks for p in _prob_paths(out, m, classes)]
        missing = [str(p) for m in masks for p in maps(m) if not os.path.isfile(p)]
        if missing:
            raise RuntimeError(f"inference finished but did not write {missing[:3]}")
        print(f"{len(result['probabilities'])} probability maps under {out / 'probabilities'}")
    if split_touching is not None:
        result["instances"] = _write_instances(masks, out, float(split_touching))
    if uncertainty:
        from vmunet_monai.evaluation.uncertainty import (plot_most_uncertain, write_uncertainty_2d,
                                                         write_uncertainty_table)

        pictures = [_beside_mask(out, mask, "uncertainty", "uncertainty") for mask in masks]
        result["uncertainty"] = write_uncertainty_2d([
            (item["image"], _prob_paths(out, mask, classes), picture,
             _beside_mask(out, mask, "probabilities", "pass_entropy") if spread else None)
            for item, mask, picture in zip(good, masks, pictures)])
        result["uncertainty_table"] = str(write_uncertainty_table(result["uncertainty"], out, by=rank_by))
        result["uncertainty_plot"] = plot_most_uncertain(result["uncertainty"], out / "uncertainty_most.png")
        print(f"{len(pictures)} uncertainty pictures under {out / 'uncertainty'}; the most doubtful: "
              f"{result['uncertainty_plot']}")
        if spread:
            result["disagreement_plot"] = plot_most_uncertain(result["uncertainty"], out / "disagreement_most.png",
                                                              by_disagreement=True)
            print(f"where the passes disagree most: {result['disagreement_plot']}")
    result["record"] = str(write_record(out, workflow.parser, root, weights, bool(model), [source], masks, skipped,
                                        settings, kept=len(good) - len(todo)))
    return result


def takes_pass_entropy(configs: list[str]) -> bool:
    """Whether a bundle's inference configs have the ``pass_entropy`` option (bundles from 0.1.8), with which
    ``--uncertainty`` with several passes (``--tta``, an ensemble) also writes where they disagree; prints a note
    naming the config where it has not (the uncertainty is written all the same)."""
    from monai.bundle import ConfigParser

    if "pass_entropy" in ConfigParser.load_config_files(configs):
        return True
    print(f"note: {configs[0]} has no pass_entropy option (bundle configs before 0.1.8), so where the passes "
          f"disagree is not written, only the uncertainty; a current copy of its configs/inference.json adds it",
          file=sys.stderr)
    return False


def _prob_paths(out: Path, mask, classes: int) -> list[Path]:
    """Where the probability maps of the mask ``OUTPUT/masks/**/<stem>_mask.png`` go: ``<stem>_prob.png``, or
    ``<stem>_prob_<k>.png`` for each class after the background of a bundle of several classes."""
    if classes > 2:
        return [_beside_mask(out, mask, "probabilities", f"prob_{c}") for c in range(1, classes)]
    return [_beside_mask(out, mask, "probabilities", "prob")]


def _beside_mask(out: Path, mask, folder: str, suffix: str) -> Path:
    """``OUTPUT/<folder>/**/<stem>_<suffix>.png`` for the mask ``OUTPUT/masks/**/<stem>_mask.png``."""
    rel = Path(mask).relative_to(Path(out) / "masks")
    return Path(out) / folder / rel.parent / f"{rel.name[: -len('_mask.png')]}_{suffix}.png"


def _write_instances(masks: list[str], out: Path, depth: float) -> list[str]:
    """``OUTPUT/instances/**/<stem>_instances.png`` beside each binary mask: its objects, touching ones split."""
    from PIL import Image

    from vmunet_monai.evaluation.objects import split_touching, write_objects

    record = read_record(out)  # the grey level the masks hold for the object class (--mask_values)
    levels = (record[1].get("mask_values") if record is not None else None) or [0, 255]
    written, total = [], 0
    for mask in masks:
        objects = split_touching(np.asarray(Image.open(mask)) == levels[-1], depth)
        total += int(objects.max())
        written.append(str(write_objects(objects, _beside_mask(out, mask, "instances", "instances"))))
    print(f"{len(written)} object maps under {out / 'instances'} ({total} objects; touching ones split at necks of "
          f"{depth:g} pixels or deeper)")
    return written
