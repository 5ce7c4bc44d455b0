"""Ignite handlers for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` used by the bundles.

Each handler has ``attach(engine)``, so a config lists it in ``train#handlers`` or
``validate#handlers`` like MONAI's own handlers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, ValidationHandler

from vmunet_monai.engine.held_out import item_images, record_trained_on
from vmunet_monai.engine.transforms import foreground, rgb_converter
from vmunet_monai.evaluation.binary import format_summary, make_record, summary_metrics, write_report
from vmunet_monai.evaluation.calibration import Calibration, errors_line
from vmunet_monai.evaluation.gallery import WorstCases, tint
from vmunet_monai.validation import not_written, space_left, write_error_in, write_whole

__all__ = [
    "TqdmProgressBar",
    "TrainingCheckpoint",
    "TrainingTerminated",
    "write_network_settings",
    "trained_class_names",
    "WeightsLoader",
    "atomic_torch_save",
    "rng_state",
    "set_rng_state",
    "random_transforms",
    "BinarySegmentationReport",
    "OverlayWriter",
    "PraNetReport",
    "ProbabilityWriter",
    "item_name",
    "item_source_path",
]

logger = logging.getLogger(__name__)

TRAINING_LOCK = ".training.lock"  # in the checkpoint folder while a training writes there
NETWORK_SETTINGS = "network.json"  # beside the weights: the network_def that builds the network they fit
PREVIOUS_RUN = "previous_run"  # where a training from scratch moves the checkpoints an earlier one left


class TrainingTerminated(SystemExit):
    """A training ended by SIGTERM (a scheduler's time limit, ``kill``): raised in the main thread by
    :class:`TrainingCheckpoint` so the run stops as on Ctrl-C (the hint, the folder freed) and the process exits
    with 143, as one killed by the signal does."""

    def __init__(self) -> None:
        super().__init__(143)

    def __str__(self) -> str:
        return "stopped by SIGTERM (exit status 143)"


def write_network_settings(folder: str | os.PathLike, network, input_size=None,
                           class_names: Sequence[str] | None = None, intensity_max=None,
                           scaling: dict | None = None, bundle: str | None = None) -> Path | None:
    """Write ``folder/network.json``: the settings ``network`` was built with, as a ``network_def``
    (:func:`vmunet_monai.networks.common.records_settings`), so the weights trained there can be loaded without
    repeating the training's ``network_def`` overrides (``predict``, ``export``), and under ``_desc_``, the key MONAI
    leaves to descriptions, what else is known of the training: the height and width of its inputs
    (``input_size``, once known), the names of its classes, background first (``class_names``, as the
    training's datalist names them) and the top of the scale its images were brought to (``intensity_max``: the 2D
    bundles scale each image from 0 to it, :func:`trained_intensity_max`), and ``scaling``, how the CT bundle
    scaled its volumes (``{"intensity": "mri"}``, or ``"ct"`` with its ``hu_window``: :func:`trained_scaling`), and
    the name of the ``bundle`` (its ``metadata.json``'s) that trained them. A network that keeps no record of its
    settings (MONAI's baselines) gets those alone (None where none is known)."""
    module = getattr(network, "module", network)  # DistributedDataParallel
    module = getattr(module, "_orig_mod", module)  # torch.compile's wrapper
    settings = getattr(module, "settings", None)
    desc = {}
    if input_size is not None:
        desc["trained_input_size"] = [int(v) for v in input_size]
    if class_names:
        desc["class_names"] = [str(n) for n in class_names]
    if intensity_max is not None:
        desc["intensity_max"] = float(intensity_max)
    if scaling:
        desc.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in scaling.items()})
    if bundle:
        desc["bundle"] = str(bundle)
    if not isinstance(settings, dict):
        if not desc:
            return None
        settings = {}
    if desc:
        settings = dict(settings, _desc_=desc)
    path = Path(folder) / NETWORK_SETTINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps(settings, indent=4) + "\n")
    return path


def bundle_name_above(folder: str | os.PathLike) -> str | None:
    """The ``name`` in the ``configs/metadata.json`` of the bundle that holds ``folder`` (its ``models/`` or a
    folder up to three levels below it: ``models/baseline_unet/fold0``); None where none of them is a bundle's."""
    here = Path(folder).resolve()
    for parent in [here, *here.parents][:4]:
        meta = parent / "configs" / "metadata.json"
        if meta.is_file():
            try:
                name = json.loads(meta.read_text()).get("name")
            except (OSError, ValueError, AttributeError):
                return None
            return str(name) if name else None
    return None


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def item_source_path(item: dict, key: str = "image") -> str | None:
    """The file an item was loaded from (``filename_or_obj`` in the MetaTensor's meta), if known."""
    value = item.get(key)
    meta = getattr(value, "meta", None)
    if meta and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    meta = item.get(f"{key}_meta_dict")
    if isinstance(meta, dict) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return None


def item_name(item: dict, name_key: str = "name", image_key: str = "image") -> str:
    """A readable id for one decollated item: its ``name`` field, else its image file's stem."""
    if item.get(name_key) is not None:
        return str(item[name_key])
    path = item_source_path(item, image_key)
    return Path(path).stem if path else "unknown"


def read_network_settings(weights: str | os.PathLike, quiet: bool = True) -> dict | None:
    """The settings in the ``network.json`` a training wrote beside ``weights`` (:func:`write_network_settings`);
    None without one, or where it cannot be read or holds no mapping (saying so on stdout unless ``quiet``). The
    one reader of that file: the trained size, the class count and the ``network_def`` overrides come from it."""
    record = Path(weights).parent / NETWORK_SETTINGS
    if not record.is_file():
        return None
    try:
        saved = json.loads(record.read_text())
    except (OSError, ValueError) as exc:
        problem = str(exc)
    else:
        if isinstance(saved, dict):
            return saved
        problem = f"it holds a {type(saved).__name__}, not the settings of a network"
    if not quiet:
        print(f"note: {record} cannot be read ({problem}); the network is built with the bundle's settings",
              flush=True)
    return None


def _training_record(weights, settings: dict | None = None) -> tuple[dict | None, dict]:
    """The ``network.json`` beside ``weights`` (``settings``: its content where the caller has read it already,
    :func:`read_network_settings`) and the ``_desc_`` mapping in it: ``(None, {})`` without a record, ``{}`` for a
    record without descriptions. The one place the ``trained_*`` readers take the training's facts from."""
    saved = settings if settings is not None else read_network_settings(weights)
    if not isinstance(saved, dict):
        return None, {}
    desc = saved.get("_desc_")
    return saved, desc if isinstance(desc, dict) else {}


def trained_input_size(weights: str | os.PathLike, settings: dict | None = None) -> list[int] | None:
    """The input height and width a training recorded in the ``network.json`` beside ``weights``; None without
    one (weights of an older training, or from elsewhere). ``settings``: that file's content where the caller has
    read it already (:func:`read_network_settings`)."""
    try:
        return [int(v) for v in _training_record(weights, settings)[1]["trained_input_size"]]
    except (ValueError, KeyError, TypeError):
        return None


def trained_scaling(weights: str | os.PathLike, settings: dict | None = None) -> dict:
    """How the CT bundle's training of ``weights`` scaled its volumes, as the ``network.json`` beside them records
    it: ``{"intensity": "ct", "hu_window": [-125.0, 275.0]}``, ``{"intensity": "mri"}``; empty without a record of
    it (weights of a training before bundle 0.1.19, a 2D bundle's). ``settings``: as for
    :func:`trained_input_size`."""
    desc = _training_record(weights, settings)[1]
    found = {}
    if isinstance(desc.get("intensity"), str):
        found["intensity"] = desc["intensity"]
    window = desc.get("hu_window")
    if isinstance(window, list) and len(window) == 2 and all(isinstance(v, (int, float)) for v in window):
        found["hu_window"] = [float(v) for v in window]
    return found


# what a stopped training says of going on (the demo, which has no --resume, says its own)
RESUME_HINT = "the same command plus --resume true goes on from there"

OLD_INTENSITY_MAX = 1.0  # what the 2D bundles scaled images to before their network.json recorded it (0.1.16)


def trained_intensity_max(weights: str | os.PathLike, settings: dict | None = None) -> float | None:
    """The top of the scale the training of ``weights`` brought each image to (the 2D bundles' ``intensity_max``,
    255 as the official VM-UNet code feeds its networks) as the ``network.json`` beside them records it; 1 for a
    record written before it held the scale (the bundles scaled to 0..1 then); None without a record (weights
    from elsewhere: an official checkpoint) or where the record holds no mapping. ``settings``: as for
    :func:`trained_input_size`."""
    saved, desc = _training_record(weights, settings)
    if saved is None:
        return None
    try:
        return float(desc.get("intensity_max", OLD_INTENSITY_MAX))
    except (TypeError, ValueError):
        return None


def trained_class_names(weights: str | os.PathLike, classes: int, settings: dict | None = None) -> dict[int, str]:
    """Class number -> name (background left out) as the training of ``weights`` named its ``classes`` classes
    (the ``class_names`` of the ``network.json`` beside them); empty without that record, or where it names
    another number of classes. ``settings``: as for :func:`trained_input_size`."""
    names = _training_record(weights, settings)[1].get("class_names")
    if not isinstance(names, list) or len(names) != int(classes):
        return {}
    return {c: str(names[c]) for c in range(1, int(classes))}


def datalist_class_names(dataset_dir: str | os.PathLike | None) -> list[str] | None:
    """The names of the classes of the datalist in ``dataset_dir``, background first, where it names every class
    from 1 up (:func:`vmunet_monai.data.common.datalist_classes`); else None."""
    if dataset_dir in (None, ""):
        return None
    from vmunet_monai.data.common import datalist_classes

    try:
        named = datalist_classes(dataset_dir)
    except (OSError, ValueError, TypeError):
        return None  # an unreadable datalist stops the training's own loading, with its message
    if not named or sorted(named) != list(range(1, len(named) + 1)):
        return None
    return ["background"] + [str(named[c]) for c in range(1, len(named) + 1)]


class WeightsLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that, when the engine starts, stops with
    :func:`vmunet_monai.engine.utils.trained_weights`'s message where there are no weights at ``load_path``
    (which weights ``bundle_root``'s ``models/`` holds, and how to get them) instead of a bare ``FileNotFoundError``.
    The config still parses without weights, as the model zoo's checks and MONAI's ``check_properties`` need.
    ``other``: how the config takes other weights, for the message. A network alone (``load_dict`` of one module)
    is loaded from what :func:`vmunet_monai.weights.check_checkpoint_fits` reads: the state dict unwrapped from the
    usual containers and prefixes, strictly, or a one-line error naming the file. ``image_size``: the height and
    width the config resizes images to (the CT bundle: its sliding window); a warning names the size the weights
    were trained at (the ``network.json`` beside them) where it differs, as results at another size are worse
    without a word otherwise. ``size_setting``: the config's name of that size (``image_size``, ``roi_size``), the
    override the warning and a mismatch's message name. ``intensity_max``: the top of the scale the config brings
    images to (the 2D bundles); a warning names the scale the weights were trained on where it differs
    (:func:`trained_intensity_max`: weights of a training before 0.1.17, on 0..1)."""

    def __init__(self, load_path: str, load_dict: dict, bundle_root: str | os.PathLike = ".",
                 other: str = "--ensemble_checkpoints PATH", image_size=None, size_setting: str = "image_size",
                 intensity_max=None, **kwargs) -> None:
        super().__init__(load_path, load_dict, **kwargs)
        self.bundle_root, self.other, self.size_setting = bundle_root, str(other), str(size_setting)
        from vmunet_monai.engine.utils import input_size

        self.image_size = None if image_size is None else input_size(image_size)
        self.intensity_max = None if intensity_max is None else float(intensity_max)

    def __call__(self, engine: Engine) -> None:
        from vmunet_monai.engine.utils import trained_weights
        from vmunet_monai.weights import check_checkpoint_fits

        trained_weights(self.load_path, self.bundle_root, self.other)
        trained = trained_input_size(self.load_path)
        if self.image_size and trained and len(trained) == len(self.image_size) and trained != self.image_size:
            size = " ".join(map(str, trained))
            logger.warning("%s was trained on %s images (%s) and this run %s %s: results differ from the "
                           "trained size's; give --%s \"[%s]\" (predict uses the trained size itself)",
                           self.load_path, "x".join(map(str, trained)), Path(self.load_path).parent / NETWORK_SETTINGS,
                           "resizes to" if self.size_setting == "image_size" else "slides a window of",
                           "x".join(map(str, self.image_size)), self.size_setting, size.replace(" ", ", "))
        scale = trained_intensity_max(self.load_path) if self.intensity_max is not None else None
        if scale is not None and scale != self.intensity_max:
            logger.warning("%s was trained on images scaled from 0 to %g (%s) and this run scales them from 0 to %g: "
                           "its results are wrong; give --intensity_max %g (predict uses the trained scale itself)",
                           self.load_path, scale, Path(self.load_path).parent / NETWORK_SETTINGS,
                           self.intensity_max, scale)
        objects = list(self.load_dict.values())
        if len(objects) != 1 or not isinstance(objects[0], torch.nn.Module):
            super().__call__(engine)
            return
        # the network alone: read as predict's check reads it, so what passes the check loads (DataParallel's
        # module., a {"state_dict": ...} wrapper, weights saved on a GPU) and what does not is named in one line
        module = getattr(objects[0], "module", objects[0])
        module.load_state_dict(check_checkpoint_fits(module, self.load_path, size_setting=self.size_setting))
        self.logger.info(f"Restored all variables from {self.load_path}")


def _interactive() -> bool:
    """Whether stderr is read by a person as it is written: a terminal, or a Jupyter notebook's output."""
    import sys

    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) or "ipykernel" in sys.modules


class TqdmProgressBar:
    """A tqdm progress bar over each epoch's iterations, showing the loss when the engine has one.

    By default (``show="auto"``) the bar is drawn only where stderr is a terminal or a notebook. Written to a file
    (a cluster job's log, ``> train.log 2>&1``) a bar is a few redrawn lines per iteration, tens of thousands in a
    long training, cut into the log's lines; the epoch lines and the time-left line say the same there.

    Args:
        desc: text before the bar (ignite adds the epoch counter).
        loss_key: key of the loss in the engine output (MONAI trainers use ``"loss"``); ignored when absent.
        persist: keep finished bars on screen.
        rank0_only: in a distributed run, draw only on rank 0.
        show: ``"auto"``, ``"always"`` or ``"never"``.
    """

    def __init__(self, desc: str = "", loss_key: str = "loss", persist: bool = False, rank0_only: bool = True,
                 show: str = "auto") -> None:
        self.desc, self.loss_key, self.persist, self.rank0_only = desc, loss_key, persist, rank0_only
        if show not in ("auto", "always", "never"):
            from vmunet_monai.validation import InputError

            raise InputError(f"TqdmProgressBar show={show!r}: auto, always or never")
        self.show = show

    def _loss(self, output):
        first = output[0] if isinstance(output, (list, tuple)) and output else output
        if isinstance(first, dict) and self.loss_key in first:
            value = first[self.loss_key]
            return {self.loss_key: float(value.item() if isinstance(value, torch.Tensor) else value)}
        return {}

    def attach(self, engine: Engine) -> None:
        if self.rank0_only and _rank() != 0:
            return
        if self.show == "never" or (self.show == "auto" and not _interactive()):
            return
        from ignite.handlers import ProgressBar

        bar = ProgressBar(persist=self.persist, desc=self.desc, bar_format=None)
        bar.attach(engine, output_transform=self._loss)


def _numpy_state_to_torch(state) -> dict:
    """``np.random.RandomState.get_state()`` as tensors and numbers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_torch(state: dict) -> tuple:
    return (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
            state["cached_gaussian"])


def random_transforms(root) -> list:
    """Every MONAI ``Randomizable`` reachable from ``root`` (a dataset, a ``Compose``, a transform), in a
    fixed order: the objects whose random state must be saved for an exact resume."""
    from monai.transforms import Randomizable, Transform

    found, seen = [], set()

    def walk(obj, depth=0):
        if id(obj) in seen or depth > 10:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable) and isinstance(getattr(obj, "R", None), np.random.RandomState):
            found.append(obj)
        for _, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else ():
            if isinstance(value, Transform):
                walk(value, depth + 1)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, Transform):
                        walk(item, depth + 1)

    if root is not None:
        transform = getattr(root, "transform", None)  # a dataset: only its transform holds random states
        walk(transform if transform is not None and not isinstance(root, Transform) else root)
    return found


def rng_state(data_root=None) -> dict:
    """Python, NumPy, torch (CPU and CUDA) random states and those of the random transforms under ``data_root``."""
    import random

    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_torch(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "transforms": [_numpy_state_to_torch(t.R.get_state()) for t in random_transforms(data_root)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, data_root=None) -> None:
    """Restore what :func:`rng_state` returned (transforms matched by order; a count mismatch is an error)."""
    import random

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_state_from_torch(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    transforms = random_transforms(data_root)
    if len(transforms) != len(state["transforms"]):
        raise ValueError(f"the checkpoint holds the random state of {len(state['transforms'])} random transforms, "
                         f"the training pipeline has {len(transforms)}")
    for transform, saved in zip(transforms, state["transforms"]):
        transform.R.set_state(_numpy_state_from_torch(saved))


def _unwritten(exc: BaseException, folder) -> str | None:
    """What could not be written, where ``exc`` is a failed write (:func:`vmunet_monai.validation.write_error_in`:
    a file not written or refused), or ``torch.save``'s ``unexpected pos`` of MONAI's checkpoint saver, which names
    no file: then the folder the checkpoints go to, with the space left there; else None."""
    import re

    found = write_error_in(exc)
    if found is not None:
        return str(found)
    if isinstance(exc, RuntimeError) and re.search(r"unexpected pos|failed writing|file write failed", str(exc)):
        return f"a file could not be written into {folder} ({space_left(folder)} there)"
    return None


def atomic_torch_save(obj, target: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``target``, flushed to disk, then renamed over ``target``.

    A process killed at any moment leaves either the old complete file or the new complete one
    (``os.replace`` is atomic on POSIX and Windows), never a truncated checkpoint.

    Raises:
        NotWrittenError: naming ``target`` and the space left on its disk where it could not be written (a full
            disk stops ``torch.save`` with ``unexpected pos ...``).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, (PermissionError, FileNotFoundError, NotADirectoryError)):
            raise
        raise not_written(exc, target) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable (POSIX; not possible on Windows)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class _DropInterrupt(logging.Filter):
    """Drops a logger's records made while a KeyboardInterrupt or a SIGTERM (:class:`TrainingTerminated`) is
    handled: ignite's "terminating due to exception" and MONAI's ``StatsHandler`` "Exception:" with a screen of
    traceback, around the line that says where a stopped training goes on from
    (:meth:`TrainingCheckpoint._stopped`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        import sys

        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return not isinstance(exc, (KeyboardInterrupt, TrainingTerminated))


_DROP_INTERRUPT = _DropInterrupt()


def _quiet_interrupt(engines) -> None:
    """Ctrl-C or SIGTERM ends a training with one line: the loggers of ``engines`` (the trainer and its evaluator,
    whose Ctrl-C during validation reaches the trainer after its own handlers) and of their exception handlers
    drop what they log about the stop; every other record passes."""
    for engine in engines:
        if engine is None:
            continue
        loggers = [getattr(engine, "logger", None)]
        for handler, _, _ in getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED, []):
            loggers.append(getattr(getattr(handler, "__self__", None), "logger", None))
        for each in loggers:
            if isinstance(each, logging.Logger) and _DROP_INTERRUPT not in each.filters:
                each.addFilter(_DROP_INTERRUPT)


class TrainingCheckpoint:
    """Keep one ``checkpoint_latest.pt`` with everything needed to resume exactly, and resume from it.

    The file holds the objects of ``save_dict`` (network, optimizer, scheduler), the trainer's epoch/iteration
    counters, the random states (Python, NumPy, torch, CUDA, and every random transform of the training data),
    the gradient scaler under AMP, and the evaluator's best metric with the best-model saver's record (so a
    resumed run does not overwrite ``model.pt`` with a worse model). When training starts it also writes
    ``trained_on.json`` beside the checkpoint, the images of the training and validation data
    (:func:`vmunet_monai.engine.held_out.record_trained_on`), which an evaluation of these weights checks its
    images against. It is written after every other end-of-epoch handler (validation included) and atomically
    (:func:`atomic_torch_save`): a run killed at any point, even while saving, leaves the previous complete
    checkpoint. A run killed in the middle of an epoch resumes at the start of that epoch and, on the same
    machine and software in deterministic mode, ends with the same weights as a run that was never interrupted.

    MONAI's ``CheckpointSaver`` cannot take the trainer into its ``save_dict`` from a config (the trainer
    holds its handlers, so the reference would be circular); this handler adds the engine it is
    attached to.

    When an epoch is shorter than the data loader (``epoch_length`` not a multiple of its length, as
    in the Synapse bundle) each epoch starts a fresh pass over the data, so an epoch never depends on
    where the previous one stopped (and a resumed run sees the data in the same order).

    Args:
        save_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict`` (e.g. ``{"model": ..., "optimizer": ...}``).
        filename: checkpoint file name.
        resume_from: a checkpoint written by this handler to restore when training starts; it must
            exist. The run continues after the saved epoch up to the configured ``max_epochs``.
        resume_latest: resume from ``save_dir/filename`` if it exists (else start from scratch): the
            bundles' ``--resume true``.
        map_location: device for the loaded tensors.
        save_interval: save every this many epochs (the last epoch is always saved).
        evaluator: the validation evaluator, whose best metric (and best-model saver) is saved and restored.
        dataset_dir: the folder of the training's datalist, whose class names go into the ``network.json`` beside
            the weights (:func:`write_network_settings`), for ``predict`` to name the classes of a network
            trained on other classes than the bundle's.
        intensity_max: the top of the scale the training brings each image to (the 2D bundles' setting), recorded
            in the same file, for ``predict`` and evaluations to feed the weights images on their scale.
        intensity, hu_window: how the CT bundle scales its volumes (``ct`` with that window, ``mri``, ``minmax``),
            recorded likewise (:func:`trained_scaling`): ``predict`` of an MRI model needs no ``--intensity mri``.
    """

    def __init__(self, save_dir: str, save_dict: dict, filename: str = "checkpoint_latest.pt",
                 resume_from: str | None = None, map_location=None, save_interval: int = 1,
                 resume_latest: bool = False, evaluator: Engine | None = None,
                 dataset_dir: str | None = None, intensity_max=None, intensity: str | None = None,
                 hu_window=None) -> None:
        self.save_dir, self.save_dict, self.filename = save_dir, dict(save_dict), filename
        self.resume_from = None if resume_from in (None, "", "None") else resume_from
        self.resume_latest = bool(resume_latest)
        self.map_location, self.save_interval = map_location, max(1, int(save_interval))
        self.evaluator = evaluator
        self.class_names = datalist_class_names(dataset_dir)
        self.intensity_max = None if intensity_max is None else float(intensity_max)
        self.scaling = ({"intensity": str(intensity)} if intensity is not None else {}) | (
            {"hu_window": [float(v) for v in hu_window]} if hu_window is not None and intensity == "ct" else {})
        self.bundle = bundle_name_above(save_dir)
        self.resumed_from: str | None = None
        self._save_attached = False
        self._saved_epoch = 0  # the epoch the checkpoint holds (this run's, or the one it resumed from)
        self._previous_sigterm = None  # the SIGTERM handler this run replaced while it trains

    @property
    def path(self) -> Path:
        return Path(self.save_dir) / self.filename

    def _objects(self, engine: Engine) -> dict:
        objects = {}
        for key, obj in self.save_dict.items():
            objects[key] = obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj
        objects["trainer"] = engine
        return objects

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._stopped)  # before the handlers that raise it
        engine.add_event_handler(Events.COMPLETED, self._restore_sigterm)

    def _catch_sigterm(self) -> None:
        """Turn SIGTERM into :class:`TrainingTerminated` while the training runs (main thread only; the handler it
        replaces is put back when the run ends, and at the first SIGTERM, so a second one kills at once)."""
        import signal
        import threading

        if self._previous_sigterm is not None or threading.current_thread() is not threading.main_thread():
            return

        def terminated(signum, frame):
            self._restore_sigterm()
            raise TrainingTerminated()

        self._previous_sigterm = signal.signal(signal.SIGTERM, terminated)

    def _restore_sigterm(self, engine: Engine | None = None) -> None:
        import signal

        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _started(self, engine: Engine) -> None:
        source = self.resume_from
        if source is None and self.resume_latest:
            if self.path.is_file():
                source = str(self.path)
            else:
                logger.info("resume requested but %s does not exist yet: training starts from scratch", self.path)
        self._catch_sigterm()
        _quiet_interrupt([engine, self.evaluator])
        if _rank() == 0:
            self._hold(engine)
            if source is None:
                self._set_aside_earlier_run(engine)
        if source is not None:
            self._resume(engine, Path(source))
        if _rank() == 0:  # what these weights are trained and selected on, for evaluate.json's HeldOutCheck
            validation = getattr(getattr(self.evaluator, "data_loader", None), "dataset", None)
            record_trained_on(self.save_dir, item_images(self._data_root(engine)), item_images(validation),
                              resumed=source is not None)
            # a resumed run keeps the size recorded before until its own first batch says it (once=1 would never
            # fire: a resumed engine starts past iteration 1)
            write_network_settings(self.save_dir, self.save_dict.get("model"), trained_input_size(
                Path(self.save_dir) / "model.pt") if source is not None else None, self.class_names,
                self.intensity_max, self.scaling, self.bundle)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_input_size)
        if not self._save_attached:
            # registered now, after every handler attached at construction: the checkpoint is written
            # after validation and the scheduler step, so nothing changes the state after it is saved
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)
            self._save_attached = True

    def _record_input_size(self, engine: Engine) -> None:
        """The first batch's height and width into network.json (at this run's first iteration, then no more):
        what predict resizes 2D images to."""
        engine.remove_event_handler(self._record_input_size, Events.ITERATION_COMPLETED)
        batch, size = engine.state.batch, None
        if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor) and batch["image"].ndim == 4:
            size = batch["image"].shape[2:]  # a collated batch (B, C, H, W)
        elif isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict):
            image = batch[0].get("image")  # decollated after the iteration: one (C, H, W) item each
            size = image.shape[1:] if isinstance(image, torch.Tensor) and image.ndim == 3 else None
        if size is not None:
            write_network_settings(self.save_dir, self.save_dict.get("model"), tuple(size), self.class_names,
                                   self.intensity_max, self.scaling, self.bundle)

    def _hold(self, engine: Engine) -> None:
        """Mark the checkpoint folder as this training's (``.training.lock``) until it completes; refuse it while
        another running training on this machine holds it (two trainings into one folder overwrite each other's
        ``model.pt``). A mark left by a run that was stopped (its process gone) is taken over."""
        from vmunet_monai.validation import InputError, hold, live_holder

        mark = Path(self.save_dir) / TRAINING_LOCK
        pid = live_holder(mark)
        if pid is not None:
            self._drop_own_event_files(engine)
            raise InputError(f"{self.save_dir}: another training (process {pid}) is writing its checkpoints into this "
                             "folder (two trainings into one folder overwrite each other's model.pt; wait for it to "
                             "end, or give this one another --run_name)")
        if mark.is_file():
            logger.info("%s: the mark of a training that stopped without finishing (%s) is taken over", mark,
                        mark.read_text().strip())
        mark.parent.mkdir(parents=True, exist_ok=True)
        hold(mark)
        if not engine.has_event_handler(self._release, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self._release)

    def _drop_own_event_files(self, engine: Engine) -> None:
        """Close this run's TensorBoard writers (of the trainer and the evaluator) and remove the event files they
        opened, which hold nothing yet: a refused run leaves no empty run beside the one that holds the folder."""
        for eng in (engine, self.evaluator):
            for handlers in getattr(eng, "_event_handlers", {}).values():
                for handler, _, _ in handlers:
                    writer = getattr(getattr(handler, "__self__", None), "_writer", None)
                    name = getattr(getattr(getattr(writer, "file_writer", None), "event_writer", None), "_file_name",
                                   None)
                    if name is None:
                        continue
                    writer.close()
                    Path(name).unlink(missing_ok=True)

    def _stopped(self, engine: Engine, exc: BaseException) -> None:
        """On Ctrl-C or SIGTERM, say where the run can go on from. The exception goes on as it came: the handlers
        after this one (MONAI's StatsHandler logs and raises it) take it, or, where there are none, this one raises
        it (ignite takes an exception whose handlers all return as dealt with)."""
        self._restore_sigterm()
        if _rank() == 0:
            self._release(engine)  # the run ends here: the folder is free
        unwritten = _unwritten(exc, self.save_dir)
        if (isinstance(exc, (KeyboardInterrupt, TrainingTerminated)) or unwritten) and _rank() == 0:
            held = self._checkpoint_epoch()
            saved = f"{self.path} holds epoch {held}" if held else "no epoch was saved yet"
            how = ("Ctrl-C" if isinstance(exc, KeyboardInterrupt) else unwritten if unwritten
                   else "SIGTERM, a time limit or kill")
            logger.warning("stopped (%s) in epoch %d: %s; %s", how, engine.state.epoch, saved, RESUME_HINT)
            if isinstance(exc, KeyboardInterrupt):
                exc.stop_said = True  # the last line: no traceback after it (validation.show_input_errors_last)
        others = [h for h, _, _ in engine._event_handlers.get(Events.EXCEPTION_RAISED, []) if h != self._stopped]
        if not others:
            raise exc

    def _checkpoint_epoch(self) -> int:
        """The epoch the checkpoint file holds (read from it: Ctrl-C may come while it is being replaced), 0 for
        none."""
        if not self.path.is_file():
            return 0
        try:
            trainer = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)["trainer"]
            return int(trainer["iteration"]) // max(1, int(trainer["epoch_length"]))
        except Exception:  # an unreadable file: the epoch last saved by this run
            return self._saved_epoch

    def _release(self, engine: Engine) -> None:
        """Remove this process's mark (never another's: a run refused because another holds the folder ends here
        too)."""
        from vmunet_monai.validation import release

        release(Path(self.save_dir) / TRAINING_LOCK)

    def _set_aside_earlier_run(self, engine: Engine) -> None:
        """A training that starts from scratch where an earlier one left its checkpoint or ``model.pt`` moves the
        earlier run's files into ``previous_run/`` (replacing what an older run left there) and says so: the
        earlier weights are not overwritten unseen, and the new run's ``trained_on.json`` never stands beside the
        old ``model.pt`` (an evaluation would check the old weights against the new run's data).

        Weights a ``CheckpointLoader`` of the training loaded at its start (MONAI Label's ``BundleTrainTask`` loads
        ``model.pt`` so) are copied there and stay in place until the run's first validation replaces them: MONAI
        Label serves that file while it trains, and without it served the network at its random start."""
        import datetime

        from vmunet_monai.engine.held_out import TRAINED_ON

        folder = Path(self.save_dir)
        names = [self.filename, *(s._key_metric_checkpoint.save_handler.filename for s in self._savers()
                                  if getattr(s._key_metric_checkpoint.save_handler, "filename", None)), TRAINED_ON,
                 NETWORK_SETTINGS]
        found = [folder / n for n in dict.fromkeys(names) if (folder / n).is_file()]
        if not any(p.name not in (TRAINED_ON, NETWORK_SETTINGS) for p in found):
            return
        latest = max(p.stat().st_mtime for p in found)
        loaded = {os.path.realpath(p) for p in _loaded_at_start(engine)}
        keep = [p for p in found if os.path.realpath(p) in loaded]
        target = move_aside(found, folder, keep)
        when = datetime.datetime.fromtimestamp(latest).isoformat(sep=" ", timespec="minutes")
        if keep:
            names = ", ".join(p.name for p in keep)
            logger.warning("%s held an earlier training's %s (last written %s): moved to %s, except %s, copied there "
                           "and left in place: this run goes on from those weights (a CheckpointLoader loaded them), "
                           "and its first validation replaces them", folder, ", ".join(p.name for p in found), when,
                           target, names)
            return
        logger.warning("%s held an earlier training's %s (last written %s): moved to %s; this run starts from scratch "
                       "(--resume true goes on with a run instead)", folder, ", ".join(p.name for p in found), when,
                       target)

    def _data_root(self, engine: Engine):
        loader = getattr(engine, "data_loader", None)
        return getattr(loader, "dataset", None)

    def _resume(self, engine: Engine, path: Path) -> None:
        from ignite.handlers import Checkpoint

        from vmunet_monai.weights import CheckpointError, _load_weights_only, _why_unreadable, read_checkpoint

        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint (resume_checkpoint must name a checkpoint_latest.pt "
                                  "written by training)")
        try:  # (numpy scalars beside the tensors read too, as an official latest.pth holds them)
            state = _load_weights_only(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot be read as a checkpoint ({_why_unreadable(str(path), exc)}) (a "
                                  "resume checkpoint is a checkpoint_latest.pt written by training)") from None
        objects = self._objects(engine)
        missing = [k for k in objects if not isinstance(state, Mapping) or k not in state]
        if missing:
            if isinstance(state, Mapping):
                names = sorted(map(str, state))
                found = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                try:  # weights in a container of their own (an official latest.pth's model_state_dict)
                    weights = bool(read_checkpoint(state))
                except (CheckpointError, TypeError, ValueError):
                    weights = False
            else:
                found, weights = type(state).__name__, False
            raise CheckpointError(f"{path}: not a training checkpoint, it lacks {missing} (found {found}) (resume "
                                  "from the checkpoint_latest.pt that training writes; model.pt holds only weights"
                                  + ("; to start a new training from these weights, give them as "
                                     "--pretrained_checkpoint" if weights else "") + ")")
        model = objects.get("model")
        if isinstance(model, torch.nn.Module) and isinstance(state.get("model"), Mapping):
            from vmunet_monai.weights import check_checkpoint_fits

            try:  # the network's misfit in the words predict uses (another --num_classes, other settings)
                check_checkpoint_fits(model, state["model"])
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: its network" + str(exc).split(":", 1)[1]) from None
        max_epochs, epoch_length = engine.state.max_epochs, engine.state.epoch_length
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR
        schedules = {k: o.T_max for k, o in objects.items() if isinstance(o, cosine)}
        try:
            Checkpoint.load_objects(objects, state)
        except (RuntimeError, ValueError, KeyError) as exc:
            reason = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"{path}: does not fit this run ({reason}) (resume with the network, optimizer "
                                  "and scheduler settings of the run that wrote it)") from None
        if "scaler" in state and getattr(engine, "scaler", None) is not None:
            engine.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            try:
                set_rng_state(state["rng"], self._data_root(engine))
            except ValueError as exc:
                raise CheckpointError(f"{path}: {exc} (resume with the data pipeline of the run that wrote it)"
                                      ) from None
        else:
            logger.warning("%s holds no random states: the resumed run will not repeat the original exactly", path)
        self._restore_evaluator(state.get("validation"))
        if engine.state.epoch >= max_epochs:
            raise CheckpointError(f"{path}: ended at epoch {engine.state.epoch} of {max_epochs} (set --epochs above "
                                  f"{engine.state.epoch} to continue training)")
        engine.state.max_epochs = max_epochs
        if epoch_length and engine.state.epoch_length != epoch_length:
            logger.warning("%s: its epochs were %d batches, this run's are %d (another batch size, data or number of "
                           "processes): the run goes on with %d per epoch, and will not repeat the original exactly",
                           path, engine.state.epoch_length, epoch_length, epoch_length)
            engine.state.epoch_length = epoch_length
            engine.state.iteration = engine.state.epoch * epoch_length
        for key, t_max in schedules.items():
            _follow_new_length(objects[key], t_max, path)
        self.resumed_from = str(path)
        self._saved_epoch = engine.state.epoch
        logger.info("resumed from %s after epoch %d of %d", path, engine.state.epoch, max_epochs)

    def _savers(self) -> list:
        """The key-metric ``CheckpointSaver`` handlers attached to the evaluator (the one writing ``model.pt``)."""
        from monai.handlers import CheckpointSaver

        if self.evaluator is None:
            return []
        savers = []
        for handlers in getattr(self.evaluator, "_event_handlers", {}).values():
            for handler, _, _ in handlers:
                owner = getattr(handler, "__self__", None)
                if isinstance(owner, CheckpointSaver) and owner._key_metric_checkpoint is not None \
                        and owner not in savers:
                    savers.append(owner)
        return savers

    def _evaluator_state(self) -> dict | None:
        if self.evaluator is None:
            return None
        state = self.evaluator.state
        return {"best_metric": float(getattr(state, "best_metric", -1)),
                "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
                "savers": [s._key_metric_checkpoint.state_dict() for s in self._savers()]}

    def _restore_evaluator(self, saved: dict | None) -> None:
        if not saved or self.evaluator is None:
            return
        self.evaluator.state.best_metric = saved["best_metric"]
        self.evaluator.state.best_metric_epoch = saved["best_metric_epoch"]
        for saver, record in zip(self._savers(), saved.get("savers", [])):
            saver.load_state_dict(record)

    def _save(self, engine: Engine) -> None:
        last = engine.state.epoch >= (engine.state.max_epochs or 0)
        if _rank() == 0 and (engine.state.epoch % self.save_interval == 0 or last):
            state = {k: v.state_dict() for k, v in self._objects(engine).items()}
            state["rng"] = rng_state(self._data_root(engine))
            if getattr(engine, "scaler", None) is not None:
                state["scaler"] = engine.scaler.state_dict()
            validation = self._evaluator_state()
            if validation is not None:
                state["validation"] = validation
            atomic_torch_save(state, self.path)
            self._saved_epoch = engine.state.epoch
        self._fresh_pass(engine, last)

    @staticmethod
    def _fresh_pass(engine: Engine, last: bool) -> None:
        loader, length = engine.state.dataloader, engine.state.epoch_length
        if last or not length or not hasattr(loader, "__len__"):
            return
        try:
            per_pass = len(loader)
        except TypeError:
            return
        if per_pass and length % per_pass:
            engine.set_data(loader)  # the next epoch begins a new pass, whether or not the run is resumed


def move_aside(files: Sequence[Path], folder: Path, keep: Sequence[Path] = ()) -> Path:
    """Move ``files`` into ``folder/previous_run/``, replacing what an earlier run left there; those also in
    ``keep`` are copied there and stay where they are. Returns that folder."""
    import shutil

    target = Path(folder) / PREVIOUS_RUN
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    kept = {os.path.realpath(k) for k in keep}
    for path in files:
        if os.path.realpath(path) in kept:
            shutil.copy2(path, target / Path(path).name)
        else:
            os.replace(path, target / Path(path).name)
    return target


def _loaded_at_start(engine: Engine) -> list[Path]:
    """The files MONAI ``CheckpointLoader`` handlers of ``engine`` load when it starts: the weights a training
    continues from where MONAI Label's ``BundleTrainTask`` puts one first (``pretrained``)."""
    from monai.handlers import CheckpointLoader

    handlers = [h for h, _, _ in getattr(engine, "_event_handlers", {}).get(Events.STARTED, [])]
    return [Path(h.load_path) for h in handlers if isinstance(h, CheckpointLoader) and h.load_path]


class EpochValidation(ValidationHandler):
    """MONAI's ``ValidationHandler`` every ``interval`` epochs, and after the last epoch too: a run of fewer epochs
    than ``interval`` (or not a multiple of it) still validates its final weights, and ``model.pt`` is chosen among
    them as well (with MONAI's, a 2-epoch run at the default interval of 10 wrote no ``model.pt`` at all)."""

    def attach(self, engine: Engine) -> None:
        if not self.epoch_level:
            super().attach(engine)
            return
        every = max(1, int(self.interval))

        def due(engine: Engine, epoch: int) -> bool:
            return epoch % every == 0 or epoch >= (engine.state.max_epochs or 0)

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)


def _follow_new_length(schedule, t_max: int, path: Path) -> None:
    """Give a cosine schedule restored from ``path`` the length this run configures (``T_max``, the bundles'
    ``--epochs``), with the learning rate it would have had after its epochs on that length: a finished run
    continued with a larger ``--epochs`` goes on down a longer cosine instead of rising again from its minimum."""
    import math

    if schedule.T_max == t_max:
        return
    old = schedule.T_max
    schedule.T_max = t_max
    for group, base in zip(schedule.optimizer.param_groups, schedule.base_lrs):
        group["lr"] = schedule.eta_min + (base - schedule.eta_min) * (1 + math.cos(math.pi * schedule.last_epoch
                                                                                    / t_max)) / 2
    schedule._last_lr = [group["lr"] for group in schedule.optimizer.param_groups]
    logger.info("%s: its cosine schedule ran over %d epochs, this run's over %d: the learning rate is now %.3g, where "
                "the longer schedule has it after epoch %d", path, old, t_max, schedule._last_lr[0],
                schedule.last_epoch)


class _EpochReport:
    """A handler that collects per iteration and writes when the epoch completes: ``_reset``, ``_collect`` and
    ``_write`` on the engine's events, unless ``enabled`` is false."""

    enabled = True

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)


class BinarySegmentationReport(_EpochReport):
    """Collect per-image confusion counts during an evaluation and write the report when it completes.

    Writes ``<prefix>_per_image.csv``, ``<prefix>_summary.json`` and ``<prefix>.png`` under
    ``output_dir`` (see :mod:`vmunet_monai.evaluation.binary`): the paper-compatible pooled metrics
    and per-image Dice/IoU mean ± sd, overall and for each group (e.g. each polyp test set, taken from
    the datalist item's ``group_key`` field). It also stores the summary's numbers in ``engine.state.metrics``
    (``pooled_dsc``, ``image_dice_mean``, ..., and ``<set>/...``, ``<class>/...``:
    :func:`~vmunet_monai.evaluation.binary.summary_metrics`) for other handlers and trackers. With ``worst``, it
    also draws the images of the lowest Dice, ground truth beside prediction, as ``<prefix>_worst.png``
    (:mod:`vmunet_monai.evaluation.gallery`).

    Args:
        output_dir: folder for the report.
        pred_key: output key of the prediction (probability or binary mask).
        label_key: output key of the ground truth.
        name_key: item field naming the image (falls back to the image file's stem).
        group_key: item field naming the set an image belongs to; items without it form group ``"all"``.
        threshold: foreground threshold for both prediction and ground truth.
        prefix: file name prefix.
        title: heading of the printed table, the JSON and the plot.
        print_summary: print the table when done.
        num_classes: classes including background. Above 2, prediction and ground truth are one-hot
            (one channel per class, background first) and every class but background is scored apart.
        class_names: class number -> name (background left out); default ``class_<n>``.
        worst: how many of the lowest-Dice images to draw (0: no picture).
        image_key: item field of the image (its source file is drawn, else the tensor itself).
        pil_reverse_indexing: masks and image tensor are in ``PILReader``'s default (W, H) order; the picture
            turns them upright.
    """

    def __init__(self, output_dir: str, pred_key: str = "pred", label_key: str = "label", name_key: str = "name",
                 group_key: str = "dataset", threshold: float = 0.5, prefix: str = "metrics", title: str = "",
                 print_summary: bool = True, num_classes: int = 2, class_names: Mapping | None = None,
                 worst: int = 8, image_key: str = "image", pil_reverse_indexing: bool = True) -> None:
        self.output_dir, self.pred_key, self.label_key = output_dir, pred_key, label_key
        self.name_key, self.group_key, self.threshold = name_key, group_key, threshold
        self.prefix, self.title, self.print_summary = prefix, title, print_summary
        self.num_classes = int(num_classes)
        names = {int(k): str(v) for k, v in (class_names or {}).items()}
        self.class_names = {c: names.get(c, f"class_{c}") for c in range(1, self.num_classes)}
        self.worst, self.image_key, self.pil_reverse_indexing = int(worst), image_key, bool(pil_reverse_indexing)
        self.records: list[dict] = []
        self.worst_cases = WorstCases(self.worst, max(self.num_classes, 2))
        self.paths: dict = {}

    def _reset(self, engine: Engine) -> None:
        self.records = []
        self.worst_cases = WorstCases(self.worst, max(self.num_classes, 2))

    def _offer(self, name: str, group: str, item: dict, pred, label) -> None:
        """Hand the image to the gallery of the worst (class numbers, upright; the image read only if kept)."""
        def numbers(tensor) -> np.ndarray:
            a = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
            if self.num_classes > 2:
                return a.argmax(axis=0)
            return (a.reshape(a.shape[-2:]) >= self.threshold).astype(np.uint8)  # as the table's counts

        truth, mask = numbers(label), numbers(pred)
        upright = (lambda a: np.swapaxes(a, -1, -2)) if self.pil_reverse_indexing else (lambda a: a)

        def image():
            source = item_source_path(item, self.image_key) if isinstance(item, dict) else None
            if source and os.path.isfile(source):
                from PIL import Image

                with Image.open(source) as opened:
                    return np.asarray(rgb_converter(opened))
            tensor = item.get(self.image_key) if isinstance(item, dict) else None
            if tensor is None:
                return None
            a = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
            return upright(a) if a.ndim >= 2 else None

        self.worst_cases.offer(name, upright(truth), upright(mask), image=image, group=group)

    def _collect(self, engine: Engine) -> None:
        outputs = engine.state.output
        batch = engine.state.batch
        if isinstance(outputs, dict):  # decollate disabled: one dict of batched tensors
            raise ValueError("BinarySegmentationReport needs decollated engine output (decollate=True)")
        for i, out in enumerate(outputs):
            item = batch[i] if isinstance(batch, (list, tuple)) and i < len(batch) else out
            if self.label_key not in out or out[self.label_key] is None:
                raise KeyError(f"{item_name(item, self.name_key)}: no {self.label_key!r} to evaluate against")
            group = item.get(self.group_key) if isinstance(item, dict) else None
            group = group if group is not None else "all"
            name, pred, label = item_name(item, self.name_key), out[self.pred_key], out[self.label_key]
            if self.worst > 0:
                self._offer(name, group, item, pred, label)
            if self.num_classes <= 2:
                self.records.append(make_record(name, pred, label, group=group, threshold=self.threshold))
                continue
            for tensor, what in ((pred, "prediction"), (label, "ground truth")):
                if int(tensor.shape[0]) != self.num_classes:
                    raise ValueError(f"{name}: the {what} has {int(tensor.shape[0])} channels, but {self.num_classes} "
                                     f"classes need one-hot channels (AsDiscreted to_onehot={self.num_classes})")
            for c, cls in self.class_names.items():
                self.records.append(make_record(name, pred[c], label[c], group=group, threshold=self.threshold,
                                                cls=cls))

    def _write(self, engine: Engine) -> None:
        if _rank() != 0 or not self.records:
            return
        weights = getattr(engine.state, "evaluated_weights", None)  # recorded by HeldOutCheck
        self.paths = write_report(self.records, self.output_dir, prefix=self.prefix, title=self.title,
                                  worst=self.worst_cases, extra={"weights": weights} if weights else None)
        summary = self.paths["summary"]
        engine.state.metrics.update(summary_metrics(summary))
        if self.print_summary:
            print(format_summary(summary), flush=True)
            shown = [self.paths[k] for k in ("csv", "json", "plot", "worst") if self.paths.get(k)]
            print(f"report: {', '.join(shown)}", flush=True)


class PraNetReport(_EpochReport):
    """The PraNet lineage's polyp metrics (:mod:`vmunet_monai.evaluation.pranet`) of an evaluation at each image's
    own size: mean Dice and IoU over 256 thresholds, weighted F-beta, S-alpha, E-phi (max and mean) and MAE, per
    test set, from the predicted probability maps. Writes ``<prefix>_pranet_per_image.csv``,
    ``<prefix>_pranet_summary.json`` and ``<prefix>_pranet.png``, prints the table, and puts the numbers in
    ``engine.state.metrics`` (``pranet_mean_dice``, ..., ``<set>/pranet_...``:
    :func:`~vmunet_monai.evaluation.pranet.summary_metrics`).

    Args:
        output_dir: folder of the report.
        prob_key: output key of the foreground probability map at the ground truth's size (before thresholding).
        label_key: output key of the binary ground truth.
        name_key, group_key: item fields naming the image and its test set.
        prefix: file-name prefix.
        title: heading of the table, the JSON and the plot.
        enabled: False attaches nothing (the configs turn it off for bundles of several classes).
    """

    def __init__(self, output_dir: str, prob_key: str = "prob", label_key: str = "label", name_key: str = "name",
                 group_key: str = "dataset", prefix: str = "metrics", title: str = "", enabled: bool = True) -> None:
        self.output_dir, self.prob_key, self.label_key = output_dir, prob_key, label_key
        self.name_key, self.group_key, self.prefix, self.title = name_key, group_key, prefix, title
        self.enabled = bool(enabled)
        self.records: list[dict] = []
        self.paths: dict = {}

    def _reset(self, engine: Engine) -> None:
        self.records = []

    def _collect(self, engine: Engine) -> None:
        from vmunet_monai.evaluation.pranet import image_scores

        batch = engine.state.batch
        for i, out in enumerate(engine.state.output):
            item = batch[i] if isinstance(batch, (list, tuple)) and i < len(batch) else out
            name = item_name(item, self.name_key)
            if self.prob_key not in out or self.label_key not in out:
                raise KeyError(f"{name}: PraNetReport needs {self.prob_key!r} (the probability map) and "
                               f"{self.label_key!r} in the evaluator's output")
            maps = [out[k].detach().cpu().numpy() if isinstance(out[k], torch.Tensor) else np.asarray(out[k])
                    for k in (self.prob_key, self.label_key)]
            prob, label = (m.reshape(m.shape[-2:]) for m in maps)
            group = item.get(self.group_key) if isinstance(item, dict) else None
            self.records.append(image_scores(name, prob, label, group=group if group is not None else "all"))

    def _write(self, engine: Engine) -> None:
        from vmunet_monai.evaluation.pranet import format_summary, summary_metrics, write_report

        if _rank() != 0 or not self.records:
            return
        self.paths = write_report(self.records, self.output_dir, prefix=self.prefix, title=self.title)
        engine.state.metrics.update(summary_metrics(self.paths["summary"]))
        print(format_summary(self.paths["summary"]), flush=True)
        print(f"PraNet-protocol report: {self.paths['csv']}, {self.paths['json']}, {self.paths['plot']}", flush=True)


class CalibrationReport(_EpochReport):
    """Whether a model's probabilities mean what they say, over an evaluation's pixels
    (:mod:`vmunet_monai.evaluation.calibration`): the expected calibration error over ten bins (ECE), the Brier
    score and a reliability diagram, written as ``<prefix>_calibration.json`` and ``<prefix>_calibration.png``;
    the ECE and Brier score also go to ``engine.state.metrics`` (``calibration_ece``, ``calibration_brier``).
    A probability map of one channel is a binary model's foreground probability; one of several channels
    (softmax, background first) is calibrated by its top label, the highest probability against whether its
    class is the ground truth's. With ``pred_key`` the map is already reduced to that: one channel holding the
    highest probability (as :class:`vmunet_monai.engine.ChannelArgmaxd` keeps it with ``probability_key``) and
    the class picked under ``pred_key``, so a volume's several class channels need not be kept. Maps are 2D or
    3D.

    Args:
        output_dir: folder of the report.
        prob_key: output key of the probability map (before thresholding or the argmax).
        label_key: output key of the ground truth: a mask (foreground at least half its scale), class numbers,
            or one channel per class.
        prefix: file-name prefix; ``""`` writes ``calibration.json`` and ``calibration.png``.
        title: heading of the plot.
        enabled: False attaches nothing.
        pred_key: output key of the class numbers picked, when ``prob_key`` holds the highest probability.
    """

    def __init__(self, output_dir: str, prob_key: str = "prob", label_key: str = "label", prefix: str = "metrics",
                 title: str = "", enabled: bool = True, pred_key: str | None = None) -> None:
        self.output_dir, self.prob_key, self.label_key = output_dir, prob_key, label_key
        self.prefix, self.title, self.enabled, self.pred_key = prefix, title, bool(enabled), pred_key
        self.calibration: Calibration | None = None  # made at the first image, binary or top label
        self.unit = "pixels"  # "voxels" for volumes, in the printed line
        self.paths: dict = {}

    def _reset(self, engine: Engine) -> None:
        self.calibration = None

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        keys = (self.prob_key, self.label_key, *((self.pred_key,) if self.pred_key else ()))
        for i, out in enumerate(engine.state.output):
            item = batch[i] if isinstance(batch, (list, tuple)) and i < len(batch) else {}
            out = {**item, **out} if isinstance(item, dict) else out  # a key the postprocessing kept from the batch
            if any(k not in out for k in keys):
                picked = f", {self.pred_key!r} (the class picked)" if self.pred_key else ""
                raise KeyError(f"{item_name(out)}: CalibrationReport needs {self.prob_key!r} (the probability map)"
                               f"{picked} and {self.label_key!r} in the evaluator's output or batch")
            prob, label, *picked = (out[k].detach().cpu().numpy() if isinstance(out[k], torch.Tensor)
                                    else np.asarray(out[k]) for k in keys)
            self.unit = "voxels" if prob.ndim > 3 else "pixels"
            prob = np.clip(prob.reshape(prob.shape[0], -1), 0.0, 1.0)  # channels, then every pixel or voxel
            label = label.reshape(label.shape[0], -1)
            if self.calibration is None:
                self.calibration = Calibration(top_label=prob.shape[0] > 1 or bool(picked))
            if picked or prob.shape[0] > 1:  # the class picked, at its probability, right or not
                truth = label.argmax(axis=0) if label.shape[0] > 1 else np.rint(label[0]).astype(np.int64)
                if prob.shape[1] != truth.size:
                    raise ValueError(f"{item_name(out)}: CalibrationReport {prob.shape[1]} probabilities against "
                                     f"{truth.size} ground-truth values (the map and the label on one grid)")
                if picked:
                    self.calibration.add(prob[0], np.rint(picked[0].reshape(-1)).astype(np.int64) == truth)
                else:
                    self.calibration.add_classes(prob, truth)
            else:
                self.calibration.add(prob[0], foreground(label[0]))

    def _write(self, engine: Engine) -> None:
        if _rank() != 0 or self.calibration is None or not self.calibration.summary()["pixels"]:
            return
        summary = self.calibration.summary()
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{self.prefix}_calibration" if self.prefix else "calibration"
        self.paths = {"json": str(out / f"{stem}.json"),
                      "plot": self.calibration.plot(out / f"{stem}.png", title=self.title)}
        Path(self.paths["json"]).write_text(json.dumps(summary, indent=4) + "\n")
        engine.state.metrics.update(calibration_ece=summary["ece"], calibration_brier=summary["brier"])
        what = "the class probabilities: top-label " if self.calibration.top_label else "the probability maps: "
        print(f"calibration of {what}ECE {summary['ece']:.4f}, Brier {summary['brier']:.4f} over "
              f"{summary['pixels']:,} {self.unit}{errors_line(summary['errors'], '; ')} ({self.paths['plot']})",
              flush=True)


class OutputSummary:
    """At the end of a bundle's inference, print how many inputs it segmented and where its results lie, and name
    the results of an earlier run left in the first folder (a later ``score`` of that folder reads them too).

    Args:
        folders: what -> folder, the first the one whose files ``pattern`` counts (``{"masks": ".../masks",
            "overlays": ".../overlays"}``); a folder the run wrote nothing into is not named.
        pattern: the file names of one result in the first folder (``*_mask.png``, ``*_seg.nii.gz``), searched
            below it.
        unit: what one input is called (``image``, ``volume``).
        enabled: False attaches nothing (``predict`` says the same itself).
    """

    def __init__(self, folders: Mapping[str, str], pattern: str = "*", unit: str = "image",
                 enabled: bool = True) -> None:
        self.folders = {str(k): str(v) for k, v in dict(folders).items()}
        self.pattern, self.unit, self.enabled = str(pattern), str(unit), bool(enabled)
        self.count, self.before = 0, {}

    def attach(self, engine: Engine) -> None:
        if not self.enabled or _rank() != 0:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add)
        engine.add_event_handler(Events.COMPLETED, self._report)

    def _files(self) -> dict[str, int]:
        """Every file below the folders, with its modification time."""
        found = {}
        for folder in self.folders.values():
            for path in Path(folder).rglob("*"):
                try:
                    found[str(path)] = path.stat().st_mtime_ns
                except OSError:
                    continue
        return found

    def _start(self, engine: Engine) -> None:
        self.count, self.before = 0, self._files()

    def _add(self, engine: Engine) -> None:
        output = engine.state.output
        self.count += len(output) if isinstance(output, (list, tuple)) else 1

    def _report(self, engine: Engine) -> None:
        now = self._files()
        written = {path for path, stamp in now.items() if self.before.get(path) != stamp}
        where = ", ".join(f"{what} in {folder}" for what, folder in self.folders.items()
                          if any(Path(p).is_relative_to(folder) for p in written))
        print(f"{self.count} {self.unit}{'' if self.count == 1 else 's'} segmented" + (f": {where}" if where else ""),
              flush=True)
        first = Path(next(iter(self.folders.values()), "."))
        earlier = sorted(p for p in first.rglob(self.pattern) if str(p) in now and str(p) not in written)
        if earlier:
            print(f"note: {first} also holds {len(earlier)} result(s) of an earlier run that this one did not "
                  f"replace (e.g. {earlier[0].name}); give --output_dir a new folder to keep runs apart", flush=True)


class OverlayWriter:
    """Write ``<stem>_overlay.png`` for each predicted mask: the input image with the mask tinted and outlined.

    The mask must be at the input image's size (put ``Invertd`` before it in the post-processing).
    Output paths mirror the input paths below ``data_root_dir`` like ``SaveImaged`` does, so images
    that share a name in different folders stay apart.

    Args:
        output_dir: folder for the overlays.
        data_root_dir: common folder of the inputs ("" keeps only file names).
        pred_key: output key of the binary mask.
        image_key: batch key whose meta names the source image.
        color: RGB of the tint and outline.
        alpha: tint strength inside the mask.
        pil_reverse_indexing: the mask is in ``PILReader``'s default (W, H) order.
        num_classes: classes including background; above 2 the mask holds class numbers and each class gets
            its own colour (``color`` for class 1, then :data:`CLASS_COLORS`).
    """

    suffix = "overlay"

    def __init__(self, output_dir: str, data_root_dir: str = "", pred_key: str = "pred", image_key: str = "image",
                 color: Sequence[int] = (0, 255, 0), alpha: float = 0.35, pil_reverse_indexing: bool = True,
                 num_classes: int = 2) -> None:
        self.output_dir, self.data_root_dir = output_dir, data_root_dir
        self.pred_key, self.image_key = pred_key, image_key
        self.color = np.asarray(color, dtype=np.float32)
        self.alpha, self.pil_reverse_indexing = alpha, pil_reverse_indexing
        self.num_classes = int(num_classes)
        self.written: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write)

    def _target(self, source: str, suffix: str | None = None) -> Path:
        src = Path(os.path.abspath(source))
        rel = Path(src.name)
        if self.data_root_dir:
            try:
                rel = src.relative_to(os.path.abspath(self.data_root_dir))
            except ValueError:
                pass
        return Path(self.output_dir) / rel.parent / f"{src.stem}_{suffix or self.suffix}.png"

    def _pictures(self, source: str, values: np.ndarray) -> list[tuple[Path, np.ndarray]]:
        """The files to write for one image: its overlay."""
        return [(self._target(source), self._picture(source, values))]

    def _write(self, engine: Engine) -> None:
        from PIL import Image

        batch = engine.state.batch
        for i, out in enumerate(engine.state.output):
            item = batch[i] if isinstance(batch, (list, tuple)) else out
            source = item_source_path(item, self.image_key) or item_source_path(out, self.image_key)
            if source is None:
                raise ValueError(f"{type(self).__name__}: the item carries no source file name (load images with "
                                 "LoadImaged)")
            values = out[self.pred_key]
            values = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
            for target, picture in self._pictures(source, values):
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(picture).save(target)
                self.written.append(str(target))

    def _picture(self, source: str, mask: np.ndarray) -> np.ndarray:
        """The overlay of one image (uint8 RGB) from its predicted mask."""
        from PIL import Image

        mask = mask.reshape(mask.shape[-2:]) if mask.ndim > 2 else mask
        classes = np.rint(mask).astype(np.int64) if self.num_classes > 2 else (mask > 0.5).astype(np.int64)
        with Image.open(source) as opened:
            image = np.asarray(rgb_converter(opened), dtype=np.float32)
        if self.pil_reverse_indexing:
            classes = classes.T
        if classes.shape != image.shape[:2]:
            raise ValueError(
                f"{source}: mask {classes.shape} does not match image {image.shape[:2]}; invert the resizing first"
            )
        return tint(image, classes, self.num_classes, tuple(self.color), self.alpha).clip(0, 255).astype(np.uint8)


class ProbabilityWriter(OverlayWriter):
    """Write ``<stem>_prob.png`` for each image: the foreground probability at the image's size as grey levels
    (0-255), as the PraNet lineage saves its predictions (``score`` reads them by that protocol too), or to look at
    where the network hesitates. A network of several classes (softmax channels, background first) gets one map
    per class instead, ``<stem>_prob_<k>.png`` for the classes 1 .. K-1. Paths mirror the inputs as
    :class:`OverlayWriter`'s do.

    Args:
        output_dir: folder for the maps.
        data_root_dir: common folder of the inputs ("" keeps only file names).
        prob_key: output key of the foreground probability, inverted to the image's size, before thresholding.
        image_key: batch key whose meta names the source image.
        pil_reverse_indexing: the map is in ``PILReader``'s default (W, H) order.
        enabled: False attaches nothing (``predict --probabilities`` turns it on).
        suffix: the file name's ending after the stem (``pass_entropy`` for the map of the passes' own
            entropies, one channel, that ``predict --uncertainty`` writes with ``--tta`` or an ensemble).
    """

    def __init__(self, output_dir: str, data_root_dir: str = "", prob_key: str = "prob", image_key: str = "image",
                 pil_reverse_indexing: bool = True, enabled: bool = False, suffix: str = "prob") -> None:
        super().__init__(output_dir, data_root_dir, pred_key=prob_key, image_key=image_key,
                         pil_reverse_indexing=pil_reverse_indexing)
        self.enabled, self.suffix = bool(enabled), str(suffix)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            super().attach(engine)

    def _pictures(self, source: str, prob: np.ndarray) -> list[tuple[Path, np.ndarray]]:
        """One map, or with several channels one per class after the background."""
        if prob.ndim == 3 and prob.shape[0] > 1:
            return [(self._target(source, f"{self.suffix}_{c}"), self._picture(source, prob[c]))
                    for c in range(1, prob.shape[0])]
        return [(self._target(source), self._picture(source, prob))]

    def _picture(self, source: str, prob: np.ndarray) -> np.ndarray:
        """The grey levels of one probability map, upright."""
        grey = np.rint(np.clip(prob.reshape(prob.shape[-2:]), 0.0, 1.0) * 255).astype(np.uint8)
        return grey.T if self.pil_reverse_indexing else grey
