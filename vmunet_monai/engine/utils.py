"""Small helpers that bundle configs call in ``$`` expressions, and locating bundle folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["load_pretrained", "amp_enabled", "amp_dtype", "find_bundle", "inference_configs", "network_file",
           "output_channels", "classes_of_outputs", "metrics_for_split", "trained_weights",
           "missing_weights", "BUNDLES_ENV", "check_split_for_processes"]

logger = logging.getLogger(__name__)

BUNDLES_ENV = "VMUNET_BUNDLES_DIR"


def worker_count(most: int) -> int:
    """Data-loading processes for a bundle's loaders: ``most``, or fewer where this process may use fewer CPU cores
    (PyTorch warns of each loader made with more workers than cores, once per loader, on a 2-core machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity mask
        cores = os.cpu_count() or 1
    return max(1, min(int(most), cores))


def output_channels(num_classes) -> int:
    """The network outputs of a 2D bundle for ``num_classes`` classes, background included: one sigmoid
    channel for two (binary masks, as the papers train), else one softmax channel per class.

    Raises:
        vmunet_monai.validation.InputError: for fewer than two classes or a value that is not a whole number.
    """
    from vmunet_monai.validation import InputError

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise InputError(f"num_classes {num_classes!r}: give the number of classes including background, a whole "
                         f"number of at least 2 (2: binary masks; prepare prints the value for masks of several "
                         f"classes)")
    return 1 if num_classes == 2 else num_classes


def metrics_for_split(metrics: dict | None, split: str) -> dict | None:
    """``metrics`` (an evaluator's ``key_val_metric`` or ``additional_metrics``) with each ``val_`` name renamed
    after the ``split`` an evaluation scores (``test_mean_dice``): the training's names said "val" of the test
    images, in the log and in MONAI's ``MetricsSaver`` files. Used in the 2D bundles' evaluate.json."""
    if not metrics:
        return metrics
    return {(f"{split}_{name[4:]}" if name.startswith("val_") else name): metric for name, metric in metrics.items()}


def classes_of_outputs(outputs: int) -> int:
    """The classes, background included, of a network with ``outputs`` output channels: the inverse of
    :func:`output_channels` (one channel is the 2D bundles' binary head, two classes)."""
    return 2 if outputs == 1 else outputs


def load_pretrained(network: nn.Module, checkpoint: str | os.PathLike | None) -> nn.Module:
    """Initialise ``network`` from an official checkpoint (VMamba v0 ImageNet weights such as
    ``vmamba_small_e238_ema.pth``, or an official VM-UNet/VM-UNetV2 training checkpoint) and log what loaded.

    Used in train.json as ``"$vmunet_monai.engine.load_pretrained(@network_def, @pretrained_checkpoint)"``;
    a ``None`` or empty path returns the network untouched.

    Raises:
        FileNotFoundError: if the path does not exist.
        vmunet_monai.weights.CheckpointError: if nothing in the checkpoint fits the network.
    """
    if checkpoint in (None, "", "None"):
        return network
    path = Path(checkpoint)
    if not path.is_file():
        from vmunet_monai.validation import MissingInputError

        raise MissingInputError(f"pretrained_checkpoint {path}: no such file")
    import warnings

    from vmunet_monai.weights import load_official_checkpoint

    with warnings.catch_warnings(record=True) as notes:  # into the training's log, as warnings
        warnings.simplefilter("always", UserWarning)
        report = load_official_checkpoint(network, path, strict=False)
    for note in notes:  # a partial load (another network's checkpoint, another class count) is no detail
        if issubclass(note.category, UserWarning):
            logger.warning("pretrained_checkpoint %s", note.message)
    logger.info("initialised %s from %s: %d tensors loaded\n%s", type(network).__name__, path, len(report.loaded),
                report.summary())
    return network


def compile_network(network: nn.Module, compile: bool | str = False) -> nn.Module:
    """Compile ``network`` in place with ``torch.compile`` when ``compile`` is true (or names a
    torch.compile backend, e.g. ``"inductor"``); false returns it untouched.

    Used in train.json as ``"$vmunet_monai.engine.compile_network(..., @compile)"``. In place
    (``nn.Module.compile``): the module keeps its type and its state_dict keys, so checkpoints,
    resuming and the other configs read it as before. The scans stay one custom operator each
    (:mod:`vmunet_monai.ops.compiled`); the first iterations of training and of validation compile.

    Raises:
        ValueError: ``compile`` is neither a bool nor a backend name torch.compile knows.
    """
    if isinstance(compile, str) and compile.strip().lower() in ("", "false", "0", "no", "none"):
        compile = False
    if compile is None or compile is False:
        return network
    if compile is True or (isinstance(compile, str) and compile.strip().lower() in ("true", "1", "yes")):
        backend = "inductor"
    elif isinstance(compile, str) and compile in torch.compiler.list_backends(exclude_tags=()):
        backend = compile
    else:
        raise ValueError(f"compile={compile!r}: use true, false or a torch.compile backend "
                         f"({', '.join(torch.compiler.list_backends())})")
    network.compile(backend=backend)
    logger.info("%s will be compiled with torch.compile (backend %s) on its first call", type(network).__name__,
                backend)
    return network


_AMP_NOTED = set()


def amp_enabled(amp: bool, device) -> bool:
    """MONAI's engines autocast on CUDA only: AMP is on when asked for and the device is a GPU. Asked for on
    another device, it is off, and a warning says so (once per device)."""
    kind = torch.device(device).type
    if bool(amp) and kind != "cuda" and kind not in _AMP_NOTED:
        _AMP_NOTED.add(kind)
        logger.warning("--amp true: mixed precision runs on CUDA devices only; this run on %s computes in float32",
                       kind)
    return bool(amp) and kind == "cuda"


def amp_dtype(name: str = "bfloat16") -> torch.dtype:
    """``"bfloat16"`` or ``"float16"`` to the torch dtype for ``amp_kwargs``.

    Raises:
        ValueError: for any other name.
    """
    if name not in ("bfloat16", "float16"):
        raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {name!r}")
    return getattr(torch, name)


def find_bundle(bundle: str | os.PathLike) -> Path:
    """The folder of a bundle given by path or by name.

    A name is looked up in ``$VMUNET_BUNDLES_DIR``, then in ``./bundles`` (a copy of the repository one works
    in), then in ``bundles/`` beside the installed package (a source checkout).

    Raises:
        FileNotFoundError: naming every place searched.
    """
    candidate = Path(os.path.expanduser(os.fspath(bundle)))
    if (candidate / "configs").is_dir():
        return candidate.resolve()
    roots = []
    if os.environ.get(BUNDLES_ENV):
        roots.append(Path(os.environ[BUNDLES_ENV]))
    roots += [Path.cwd() / "bundles", Path(__file__).resolve().parents[2] / "bundles"]
    for root in roots:
        if (root / str(bundle) / "configs").is_dir():
            return (root / str(bundle)).resolve()
    searched = ", ".join(dict.fromkeys(str(r / str(bundle)) for r in roots))  # a path given is one place
    raise FileNotFoundError(
        f"bundle {bundle!r} not found (searched {searched}); pass a bundle folder or set ${BUNDLES_ENV}"
    )


def input_size(value, option: str = "--image_size") -> list[int]:
    """The height and width the 2D bundles resize images to, from their ``image_size``: ``[height, width]``, or one
    number for a square (``--image_size 64`` reached MONAI's ``Resized`` as a size of one axis and stopped the run
    inside the transforms).

    Raises:
        vmunet_monai.validation.InputError: naming the option, the value and the rule.
    """
    from vmunet_monai.validation import InputError, number_list

    example = '"[256, 256]" or 256'
    sizes = number_list(option, value, int, least=1, example=example)
    if len(sizes) > 2:
        raise InputError(f"{option} {value!r}: give one whole number (a square) or two, height and width, e.g. "
                         f"{example}")
    return sizes * 2 if len(sizes) == 1 else sizes


def check_launched(config: str = "multi_gpu_train.json") -> None:
    """Refuse a run of ``config`` that no launcher started: it runs one process per GPU, each told its rank by
    ``torchrun`` (torch's own error, "environment variable RANK expected, but not set", came from inside the
    process group's set-up). Used first in the bundles' multi-GPU initialize.

    Raises:
        vmunet_monai.validation.InputError: naming the launcher and the single-process config.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    lacking = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if lacking:
        from vmunet_monai.validation import InputError

        raise InputError(f"{config}: runs one process per GPU and this process was not started as one of them "
                         f"({', '.join(lacking)} not set): start it with torchrun --standalone --nnodes 1 "
                         f"--nproc_per_node <GPUs> -m monai.bundle run ... (or train in one process with train.json "
                         f"alone)")


class _WarningsOnly(logging.Filter):
    """Passes warnings and errors alone (:func:`quiet_other_ranks`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def quiet_other_ranks(rank: int | None = None) -> None:
    """Keep the information a multi-GPU run logs to its first process: the others (``rank`` > 0; by default this
    process's rank in the initialised process group) drop records below WARNING at every handler of the root
    logger. Each process's trainer and evaluator log through ignite's engine loggers, so every "Got new best
    metric", "Current learning rate" and "Epoch[1] Complete" line came once per process; warnings and errors still
    come from every process. Used in the bundles' multi-GPU initialize."""
    import torch.distributed as dist

    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
    if rank <= 0:
        return
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _WarningsOnly) for f in handler.filters):
            handler.addFilter(_WarningsOnly())


def check_split_for_processes(dataset, split: str, processes: int):
    """``dataset`` (a split's), if it holds at least one item for each of ``processes`` processes; a multi-GPU run's
    validation gives each process its own cases, and MONAI's ``DistributedSampler`` stops with "the dataset length
    is less than the number of participating ranks" otherwise.

    Raises:
        vmunet_monai.validation.InputError: naming the split, its size, the process count and what to change.
    """
    from vmunet_monai.validation import InputError

    size, processes = len(dataset), int(processes)
    if size < processes:
        raise InputError(
            f"the {split} split holds {size} case{'s' if size != 1 else ''} for {processes} processes, and each "
            f"process validates cases of its own: prepare the dataset with a {split} split of at least {processes} "
            f"(prepare's --val_fraction for the 2D bundles, --num_val for synapse_multiorgan) or start at most "
            f"{max(size, 1)} (torchrun --nproc_per_node)")
    return dataset


def inference_configs(bundle_root: str | os.PathLike, baseline: str = "",
                      model: str | os.PathLike | None = None) -> tuple[list[str], Path, str]:
    """What predicting with a bundle's network, a baseline it trained, or an exported network reads.

    Returns:
        the config files (``inference.json``, then ``baseline_<name>.json`` for a baseline or
        ``inference_exported.json`` for an exported ``model``), the default weights (``models/model.pt`` or
        ``models/baseline_<name>/model.pt``) and the ``--config_file`` value of the training command that
        writes them (for messages).

    Raises:
        vmunet_monai.validation.InputError: the bundle has no ``configs/baseline_<name>.json`` (the message
            lists the baselines it has), or both a baseline and an exported model were asked for.
    """
    from vmunet_monai.validation import InputError

    root = Path(bundle_root)
    configs, train = [str(root / "configs" / "inference.json")], str(root / "configs" / "train.json")
    if model:
        if baseline:
            raise InputError(f"--model {model} and --baseline {baseline}: an exported model is the whole network; "
                             "give one of them")
        return configs + [str(root / "configs" / "inference_exported.json")], root / "models" / "model.pt", train
    if not baseline:
        return configs, root / "models" / "model.pt", train
    overlay = root / "configs" / f"baseline_{baseline}.json"
    if not overlay.is_file():
        have = sorted(p.stem[len("baseline_"):] for p in (root / "configs").glob("baseline_*.json"))
        raise InputError(f"--baseline {baseline!r}: {overlay} does not exist; this bundle has "
                         f"{', '.join(have) if have else 'no baseline overlays'}")
    weights = root / "models" / f"baseline_{baseline}" / "model.pt"
    return configs + [str(overlay)], weights, f"\"['{train}','{overlay}']\""


def trained_weights(path: str | os.PathLike, bundle_root: str | os.PathLike,
                    other: str = "--ensemble_checkpoints PATH") -> str:
    """``path``, the weights an evaluation loads (the bundles' ``@ckpt_dir + '/model.pt'``), if it is a file;
    ``other`` is how the config takes other weights (inference.json: ``--checkpoint PATH``).

    Raises:
        vmunet_monai.validation.InputError: no file there. The message names the weights the bundle's ``models/``
            does hold (another ``--run_name``, fold or baseline) and how to train or download them.
    """
    if os.path.isfile(path):
        return str(path)
    raise missing_weights(path, bundle_root, other)


def missing_weights(path: str | os.PathLike, bundle_root: str | os.PathLike, other: str = "--checkpoint PATH",
                    train: str | None = None, given: str | None = None):
    """The error for weights that are not at ``path``: the model.pt files the bundle's ``models/`` does hold
    (another ``--run_name``, fold or baseline), and the ways to weights: ``train`` (a training command; default,
    the same configs and options), the bundle's download, or ``other`` (how the command takes other weights).
    ``given``: the option that named ``path`` (``--checkpoint``), whose error is a path not found: the weights files
    its folder holds (the closest name first), or the nearest folder that exists.

    Returns:
        a :class:`vmunet_monai.validation.MissingInputError` (a ``FileNotFoundError``) to raise, or an ``InputError``
        when ``path`` is a folder.
    """
    from vmunet_monai.validation import InputError, MissingInputError

    if os.path.isdir(path):
        return InputError(f"{path}: a folder, not a weights file (give the file itself, such as {path}/model.pt)")
    if given:
        return MissingInputError(f"{given} {path}: no such file; {_near_weights(Path(path))}")
    models = Path(bundle_root) / "models"
    found = sorted(p.relative_to(models).as_posix() for p in models.rglob("model.pt")) if models.is_dir() else []
    held = (f"{models} holds {', '.join(found[:6])}{' ...' if len(found) > 6 else ''} (--run_name, --folds/--fold "
            f"and a baseline overlay choose among them)" if found else f"{models} holds no model.pt yet")
    train = train or "the same configs and options (python -m monai.bundle run training ...)"
    download = (f", download them (python -m monai.bundle download_large_files --bundle_path {bundle_root})"
                if _weights_url(bundle_root) else "")
    return MissingInputError(f"{path}: no trained weights; {held}. Train with {train}{download} or give {other}")


def _near_weights(path: Path) -> str:
    """What is there instead of the weights file ``path``: the weights files of its folder (the name closest to
    ``path``'s first), or the nearest folder above it that exists."""
    import difflib

    folder = path.parent
    if not folder.is_dir():
        above = next((p for p in Path(os.path.abspath(folder)).parents if p.is_dir()), None)
        return f"there is no folder {folder}" + (f" (the nearest that exists: {above})" if above else "")
    held = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in WEIGHTS_SUFFIXES)
    if not held:
        return f"{folder} holds no weights file ({', '.join(WEIGHTS_SUFFIXES)})"
    close = difflib.get_close_matches(path.name, held, n=len(held), cutoff=0.0)[:6]
    return f"{folder} holds {', '.join(close)}{' ...' if len(held) > len(close) else ''}"


WEIGHTS_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def _weights_url(bundle_root: str | os.PathLike) -> str:
    """The url ``large_files.yml`` gives ``models/model.pt`` (a packaged release's); empty where it gives none, as
    in the bundles of this repository, whose weights are trained, not published."""
    import yaml

    try:
        listed = yaml.safe_load((Path(bundle_root) / "large_files.yml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    for entry in listed.get("large_files", []) if isinstance(listed, dict) else []:
        if isinstance(entry, dict) and str(entry.get("path", "")).lstrip("./") == "models/model.pt":
            return str(entry.get("url") or "")
    return ""


def network_file(root: Path, checkpoint, default_ckpt: Path, train: str, model, device, batch: int = 1,
                 channels: int | None = None) -> Path:
    """The file the network comes from: the exported ``model`` (checked to run on the bundle's input size and to
    give ``channels`` outputs, by default the bundle's), or the weights (``checkpoint`` or ``default_ckpt`` from
    :func:`inference_configs`), which must exist.

    Raises:
        FileNotFoundError: no weights there (the message gives the training command ``train`` and the download).
        vmunet_monai.validation.InputError: both a model and a checkpoint, or a model that does not fit.
    """
    from vmunet_monai.engine.exported import check_exported
    from vmunet_monai.validation import InputError

    if model:
        if checkpoint:
            raise InputError(f"--model {model} and --checkpoint {checkpoint}: an exported model carries its weights; "
                             "give one of them")
        check_exported(model, root / "configs" / "metadata.json", device, batch, channels)
        return Path(model).resolve()
    ckpt = Path(checkpoint) if checkpoint else default_ckpt
    if not ckpt.is_file():
        raise missing_weights(ckpt, root, train=f"python -m monai.bundle run training --config_file {train} "
                              f"--bundle_root {root} --dataset_dir PREPARED",
                              given="--checkpoint" if checkpoint else None)
    return ckpt.resolve()


_RUN_OPTIONS = {"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file"}


def _listed_files(value: str) -> list[str]:
    """The files a ``--config_file`` value names: one path, a list written as Python/JSON, or paths joined by
    commas."""
    import ast

    text = value.strip()
    if text.startswith("["):
        try:
            return [str(v) for v in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            pass
    return [part.strip() for part in text.split(",") if part.strip()]


def check_overrides(bundle_root: str | os.PathLike, argv: list[str] | None = None) -> None:
    """Refuse a ``python -m monai.bundle run`` override that names no setting of the run's configs
    (``--num_epoch 1`` for ``--num_epochs``, or ``--checkpoint`` on an evaluation: only ``inference.json`` reads
    it): MONAI adds it as a new key that nothing reads, and the run goes on with the default, echoing the override
    as if it were taken. Known settings are the top-level keys of the config files the run was given (all the
    bundle's configs where it names none it can read); ``a#b`` is checked by its ``a``. An override another
    config of the bundle reads is named with that config. Other programs that run the configs (``predict``, MONAI
    Label, tests) pass their settings in Python and are not checked.

    Used in the bundles' ``initialize`` as ``"$vmunet_monai.engine.check_overrides(@bundle_root)"``.

    Raises:
        vmunet_monai.validation.InputError: naming the override, the closest setting and where the settings are.
    """
    import difflib
    import json
    import sys

    from vmunet_monai.validation import InputError

    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py") or argv[1] != "run":
        return
    given = {}
    for i, arg in enumerate(argv[2:], start=2):
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            following = argv[i + 1] if i + 1 < len(argv) else None
            # fire takes a bare --flag (at the end, or before another --option) as True
            given[name] = value if eq else ("True" if following is None or following.startswith("--") else following)

    def keys(files):
        found, target = {}, None
        for file in files:
            try:
                doc = json.loads(Path(file).read_text())
            except (OSError, ValueError):
                continue  # MONAI names a config it cannot read
            if isinstance(doc, dict):
                found.update((key, file) for key in doc if key not in found)
                if isinstance(doc.get("network_def"), dict):
                    target = doc["network_def"].get("_target_", target)  # the last config's wins
        return found, target

    run = [Path(f) for f in _listed_files(given.get("config_file", ""))]
    root = Path(bundle_root)
    if not root.exists() and root.parent.is_dir():  # a mistyped --bundle_root: the run trained into a new folder
        bundles = [p.name for p in root.parent.iterdir() if (p / "configs").is_dir()]
        close = difflib.get_close_matches(root.name, bundles, n=1, cutoff=0.6)
        if close:  # (a new folder of another name is a run's output root of one's own choosing)
            raise InputError(f"--bundle_root {bundle_root}: no such folder; did you mean {root.parent / close[0]}? "
                             f"(the run would write its models and logs into a new folder of that name)")
    bundle_configs = sorted(Path(bundle_root, "configs").glob("*.json"))
    known, network = keys(run)
    if not known:
        run = bundle_configs
        known, network = keys(run)
    unknown = [name for name in given if name not in _RUN_OPTIONS and name.split("#")[0] not in known]
    if unknown:
        name = unknown[0]
        elsewhere = keys(bundle_configs)[0].get(name.split("#")[0])
        if elsewhere is not None:
            raise InputError(f"--{name}: no setting of this run's configs; {elsewhere.name} reads it (MONAI would add "
                             "it unread and run with the default: give it to a run of that config)")
        if name.split("#")[0] == "batch_size" and "volumes_per_batch" in known:  # the CT bundle's training batch
            raise InputError(f"--{name}: no setting of this bundle; a training batch is --volumes_per_batch volumes "
                             "of --slices_per_volume slices each (--sw_batch_size is the sliding window's batch)")
        if name == "input_dir" and "dataset_dir" in known:  # the 2D bundles' inference setting, on the CT bundle
            raise InputError("--input_dir: no setting of this bundle; it reads its volumes from --dataset_dir (a "
                             "folder of volumes, or a prepared dataset, whose test split it segments)")
        close = difflib.get_close_matches(name.split("#")[0], sorted(known), n=1)
        raise InputError(f"--{name}: no setting of this bundle" + (f"; did you mean --{close[0]}?" if close else "")
                         + f" (an override must name a key of the configs in {Path(bundle_root, 'configs')} or of "
                         "--config_file; MONAI would add it unread and run with the default)")
    positional = argv[2] if len(argv) > 2 and not argv[2].startswith("--") else None
    entries = [given.get("run_id") or positional or "run", given.get("init_id") or "initialize",
               given.get("final_id") or "finalize"]
    names = {name.split("#")[0] for name in given if name not in _RUN_OPTIONS}
    values = [value for name, value in given.items() if name not in _RUN_OPTIONS]
    unread = _unread_settings(run, names, entries, values)
    unreached = [n for n in _unread_settings(run, names, entries, values, referenced=False) if n not in unread]
    if unread:
        name = next(n for n in given if n.split("#")[0] == unread[0])
        hint = _UNREAD_HINTS.get(unread[0], "")
        raise InputError(f"--{name}: a setting this run's configs define but never read (nothing that "
                         f"{entries[0]!r} runs refers to it), so it would change nothing{hint}")
    for setting in unreached:  # read by a part of the configs this run does not run: said, not refused (one set
        name = next(n for n in given if n.split("#")[0] == setting)  # of overrides may serve several runs)
        logger.warning("--%s: nothing that %r runs reads it (only parts of the configs this run does not run "
                       "refer to it), so it changes nothing%s", name, entries[0], _UNREAD_HINTS.get(setting, ""))
    _check_network_overrides(network, [name for name in given if name.startswith("network_def#")])
    _check_value_overrides(run, {name: value for name, value in given.items() if name not in _RUN_OPTIONS})


_NOT_FLAGS = {"compile"}  # also takes a torch.compile backend's name (compile_network reads "false" itself)
# settings counted from 1 (MONAI's "max_epochs positive value" or the loader's "batch_size should be a positive
# integer" came as tracebacks, after the data was read)
_COUNTS = {"epochs": "the epochs to train", "batch_size": "images per training batch",
           "val_batch_size": "images per validation batch", "sw_batch_size": "windows per network call",
           "val_interval": "epochs between validations", "volumes_per_batch": "volumes per training batch",
           "slices_per_volume": "slices taken from each volume", "iterations_per_epoch": "training steps per epoch"}
_TRUE_WORDS = ("true", "yes", "on")  # passed on as text, read as on: meant so
_FALSE_WORDS = ("false", "no", "off", "none", "n", "f")  # passed on as text, read as on: meant otherwise


def _check_value_overrides(files: list[Path], given: dict[str, str]) -> None:
    """Refuse an override of an on/off setting (one the configs set to ``true`` or ``false``) that the run would
    take the wrong way: MONAI's command line turns only ``True`` and ``False`` into booleans and passes ``false``,
    ``no`` or ``off`` on as text, which the configs read as on (a non-empty string), so ``--tta false`` ran with
    test-time augmentation. ``true``, ``yes``, ``on``, ``None`` and the numbers 0 and 1 mean what they say. A
    count (``--epochs``, ``--batch_size``, ...) of less than 1 is refused too, and text where a setting is a number
    (``--learning_rate abc``: a traceback from inside the optimiser otherwise)."""
    import ast

    from monai.bundle import ConfigParser

    from vmunet_monai.validation import InputError

    flags = {}
    try:
        merged = ConfigParser.load_config_files([str(f) for f in files])
    except Exception:  # noqa: BLE001 - MONAI reports a config it cannot read or merge
        return
    for name, value in given.items():
        node = merged
        for part in name.split("#"):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, bool) and name not in _NOT_FLAGS:
            flags[name] = value
        text = str(value).strip()
        if not isinstance(node, (int, float)) or isinstance(node, bool) or text.startswith(("$", "@", "%")):
            continue  # not a number setting, or an expression ("$@other * 2") that MONAI resolves
        try:
            number = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            number = text  # a word: MONAI passes it on as text, which fails deep in the run
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
            raise InputError(f"--{name} {text}: a number (the configs' default is {node})")
        if name in _COUNTS and isinstance(node, int) and (not isinstance(number, int) or number < 1):
            raise InputError(f"--{name} {text}: {_COUNTS[name]}, a whole number of at least 1")
    for name, value in flags.items():
        text = str(value).strip()
        if text in ("True", "False", "None", "0", "1") or text.lower() in _TRUE_WORDS:  # fire reads the first five
            continue
        if text.lower() in _FALSE_WORDS:
            raise InputError(f"--{name} {text}: MONAI's command line passes {text!r} on as text, which turns an "
                             f"on/off setting on; give --{name} False (capital F) to turn it off")
        raise InputError(f"--{name} {text}: an on/off setting; give --{name} True or --{name} False")


# what to give instead of a setting a run does not read (check_overrides)
_UNREAD_HINTS = {
    "pretrained_checkpoint": "; an evaluation takes the weights to score as --checkpoint PATH (an official "
                             "checkpoint too), a training starts from them with --pretrained_checkpoint",
    "compile": "; an evaluation runs the network eagerly",
    "resume": "; --resume goes on with a training that stopped (a run of train.json); an evaluation scores the "
              "weights of --checkpoint PATH",
    "batch_size": "; an evaluation batches --val_batch_size images",
}
_UNREAD_HINTS["resume_checkpoint"] = _UNREAD_HINTS["resume"]


def _unread_settings(files: list[Path], names: set[str], entries: list[str] = ("run", "initialize", "finalize"),
                     values: list[str] = (), referenced: bool = True) -> list[str]:
    """Those of ``names``, top-level settings of the configs ``files`` merged as ``monai.bundle run`` merges them,
    that the run never reads: no chain of references (``@name``, ``%name``) leads to them from its ``entries``
    (the ids it runs: ``run`` or the one named, ``initialize``, ``finalize``) or from the override ``values``. An
    override of one changes nothing: an evaluation's ``--pretrained_checkpoint``, which only the training's network
    definition reads, or its ``--resume``, which only the trainer it never runs reads. With ``referenced`` (the
    default), a setting counts as read when any reference to it is left in the merged config, as it also does
    where the configs use a reference the chains cannot follow (a relative id, a macro from another file) or name
    none of the entries. The settings MONAI's experiment tracking reads (``--tracking``) are not counted."""
    import json
    import re

    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    try:
        merged = ConfigParser.load_config_files([str(f) for f in files])
    except Exception:  # noqa: BLE001 - MONAI reports a config it cannot read or merge
        return []
    text = json.dumps([merged, list(values)], default=str)  # an override's value may read another setting
    read = _reached_settings(merged, entries, values) if isinstance(merged, dict) and not referenced else None
    if read is None:
        read = {name for name in names
                if re.search(r"[@%]" + re.escape(name) + r"(?![A-Za-z0-9_])", text)}
    tracked = set(DEFAULT_MLFLOW_SETTINGS.get("configs", {}))
    return [name for name in sorted(names) if name in merged and name not in tracked and name != "imports"
            and name not in read]


def _reached_settings(merged: dict, entries: list[str], values: list[str]) -> set[str] | None:
    """The top-level settings of ``merged`` a chain of references reaches from the ids ``entries`` and the strings
    ``values``; None where that cannot be told (see :func:`_unread_settings`)."""
    import json
    import re

    reference = re.compile(r"[@%]([A-Za-z_][A-Za-z0-9_#:]*)")
    if re.search(r"[@%](#|[^\s\"'@%]*\.(json|ya?ml)\b)", json.dumps(merged, default=str)):
        return None  # a relative id or a macro from another file

    def strings(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for item in node.values():
                yield from strings(item)
        elif isinstance(node, list):
            for item in node:
                yield from strings(item)

    def at(path):
        node = merged
        for part in path.split("#"):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node

    todo = [entry for entry in entries if entry in merged]
    if not todo:
        return None
    todo += [match.replace("::", "#").strip("#:") for value in values for match in reference.findall(str(value))]
    seen = set()
    while todo:
        path = todo.pop()
        if path in seen or not path:
            continue
        seen.add(path)
        for string in strings(at(path)):
            todo += [match.replace("::", "#").strip("#:") for match in reference.findall(string)]
    return {path.split("#")[0] for path in seen}


def _check_network_overrides(target: str | None, names: list[str]) -> None:
    """``--network_def#X`` must name an argument of the network the configs build (``--network_def#dim`` failed
    after the data was loaded, in MONAI's "Failed to instantiate component" with the keywords listed)."""
    import difflib
    import inspect
    import pydoc

    from vmunet_monai.validation import InputError

    cls = pydoc.locate(str(target)) if target else None
    try:
        params = inspect.signature(cls).parameters if cls is not None else None
    except (TypeError, ValueError):
        params = None
    if not params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for name in names:
        key = name.split("#")[1]
        if len(name.split("#")) == 2 and not key.startswith("_") and key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            raise InputError(f"--{name}: {target} has no argument {key!r}" + (
                f"; did you mean --network_def#{close[0]}?" if close else "") + f" (its arguments: "
                f"{', '.join(params)})")
