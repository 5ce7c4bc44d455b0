"""Running an exported network (TorchScript, ONNX, ``torch.export``) in a bundle's own inference pipeline.

``configs/inference_exported.json`` (merged after ``inference.json``) and ``predict --model`` build the
network with :func:`load_exported` instead of ``network_def`` and its weights; everything around it
(reading, resizing, sliding window, inversion, writing) stays the bundle's. The files are what
``python -m vmunet_monai export`` writes (:mod:`vmunet_monai.export`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vmunet_monai.install import extra_install
from vmunet_monai.validation import InputError

__all__ = ["FORMATS", "SUFFIXES", "OnnxModule", "ProgramModule", "load_exported", "check_exported",
           "embedded_bundle", "exported_intensity_max", "exported_settings", "network_input_shape"]

logger = logging.getLogger(__name__)

FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx", "pt2": "model.pt2"}
SUFFIXES = {".ts": "torchscript", ".onnx": "onnx", ".pt2": "pt2"}


class OnnxModule(torch.nn.Module):
    """An ONNX model in onnxruntime as a module: tensors in, tensors out, on the input's device."""

    def __init__(self, path: str | Path, device=None) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as exc:
            raise ImportError(f"running {path} needs onnxruntime ({exc}): {extra_install('export')}") from exc
        providers = ["CPUExecutionProvider"]
        if device is not None and torch.device(device).type == "cuda":
            providers.insert(0, "CUDAExecutionProvider")
        self.path = str(path)
        self.session = onnxruntime.InferenceSession(self.path, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().float().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0]).to(x.device)


class ProgramModule(torch.nn.Module):
    """A loaded ``torch.export`` program as a module that engines may switch to eval mode.

    The program's own module refuses ``train()`` and ``eval()`` (it is fixed to the mode it was exported in,
    eval), which MONAI's evaluators call; this wrapper holds it outside its children, so those calls stop here."""

    def __init__(self, program_module: torch.nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "program", program_module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def load_exported(path: str | Path, device=None, format: str | None = None,
                  meta_file: str | Path | None = None, intensity_max=None, num_classes=None, intensity=None,
                  hu_window=None) -> torch.nn.Module:
    """An exported network as a module in eval mode: TorchScript (``.ts``), a ``torch.export`` program
    (``.pt2``; its scans run this machine's fast backend) or ONNX (``.onnx``, run by onnxruntime).

    Used by ``configs/inference_exported.json`` as ``"$vmunet_monai.engine.load_exported(@exported_model, @device)"``
    and by ``predict --model``. ``format`` (torchscript, onnx, pt2) overrides what the suffix says. With
    ``meta_file`` (the bundle's ``metadata.json``), an export of another bundle whose network or classes differ is
    refused. With the run's settings (``intensity_max``, the top of the scale the 2D bundles bring each image to;
    ``num_classes``; the CT bundle's ``intensity`` and ``hu_window``), an export whose weights were trained with
    other ones (:func:`exported_settings`, from the config it carries) is warned about with the options to give.

    Raises:
        FileNotFoundError: no such file.
        InputError: a suffix other than .ts, .pt2 or .onnx (a TorchScript archive is taken whatever its suffix), or a
            file that does not load as the model its suffix names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model (python -m vmunet_monai export BUNDLE --format "
                                f"torchscript|onnx|pt2 writes one)")
    from vmunet_monai.weights import is_torchscript_archive

    kind = format or SUFFIXES.get(path.suffix.lower()) or ("torchscript" if is_torchscript_archive(path) else None)
    if kind not in FORMATS:
        raise InputError(f"{path}: an exported model ends in {', '.join(SUFFIXES)} (TorchScript, ONNX, torch.export); "
                         f"trained weights (.pt) go to --checkpoint")
    if meta_file is not None:
        _check_same_bundle(path, Path(meta_file))
    run = {k: v for k, v in (("intensity_max", intensity_max), ("num_classes", num_classes), ("intensity", intensity),
                             ("hu_window", hu_window)) if v is not None}
    other = {k: v for k, v in exported_settings(path, run).items() if _differs(v, run[k])} if run else {}
    if other:
        logger.warning("%s holds weights trained with %s (the inference.json it carries) and this run uses %s: its "
                       "results are wrong; give %s (predict --model uses the export's settings itself)", path,
                       ", ".join(f"{k} {_shown(v)}" for k, v in other.items()),
                       ", ".join(f"{k} {_shown(run[k])}" for k in other),
                       " ".join(f"--{k} {_shown(v, quoted=True)}" for k, v in other.items()))
    device = torch.device(device) if device is not None else torch.device("cpu")
    try:
        if kind == "torchscript":
            return torch.jit.load(str(path), map_location=device).eval()
        if kind == "pt2":
            return ProgramModule(torch.export.load(str(path)).module().to(device))
        return OnnxModule(path, device)
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # a cut-short copy, a state dict or a text file named .ts, ...
        from vmunet_monai.validation import error_summary

        raise InputError(f"{path}: cannot be loaded as a {kind} model ({error_summary(exc, 120)}); it may be cut "
                         f"short or another kind of file: python -m vmunet_monai export BUNDLE --format {kind} writes "
                         "one, and trained weights (a state dict) go to --checkpoint") from None



def _differs(carried, used) -> bool:
    """Whether a setting an export carries differs from the run's (numbers by value, lists item by item)."""
    if isinstance(carried, list) and isinstance(used, (list, tuple)):
        return len(carried) != len(used) or any(_differs(a, b) for a, b in zip(carried, used))
    if isinstance(carried, (int, float)) and isinstance(used, (int, float)):
        return float(carried) != float(used)
    return carried != used


def _shown(value, quoted: bool = False) -> str:
    """A setting as written on a command line: numbers as short as they go, a list as ``"[a, b]"``."""
    if isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_shown(v) for v in value) + "]"
        return f'"{text}"' if quoted else text
    return f"{value:g}" if isinstance(value, float) else str(value)


def embedded_bundle(path: str | Path) -> tuple[dict, dict]:
    """The ``metadata.json`` and ``inference.json`` a TorchScript or ``torch.export`` file carries (MONAI's
    ``ckpt_export`` and ``python -m vmunet_monai export`` store them beside the model); empty dicts for a file
    without them (ONNX, another tool's export)."""
    import json
    import zipfile

    found = {"metadata.json": {}, "inference.json": {}}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                parts = name.split("/")
                if len(parts) >= 2 and parts[-2] == "extra" and parts[-1] in found:
                    found[parts[-1]] = json.loads(archive.read(name))
    except (zipfile.BadZipFile, OSError, ValueError):
        pass
    return found["metadata.json"], found["inference.json"]


def _carried_intensity_max(config: dict, bundle_config: dict) -> float | None:
    """:func:`exported_intensity_max` of the ``inference.json`` an export carries, read already."""
    from vmunet_monai.engine.handlers import OLD_INTENSITY_MAX

    wanted = bundle_config.get("intensity_max")
    if not config or isinstance(wanted, bool) or not isinstance(wanted, (int, float)):
        return None
    value = config.get("intensity_max", OLD_INTENSITY_MAX)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def exported_intensity_max(path: str | Path, bundle_config: dict) -> float | None:
    """The top of the scale the weights of the export at ``path`` were trained to see images at, as the
    ``inference.json`` it carries says (``export`` writes it with the settings of the weights' ``network.json``):
    its ``intensity_max``, or 1 where it has none (an export of a 2D bundle from before 0.1.17, which scaled to
    0..1). None where the file carries no config (ONNX, another tool's export) or ``bundle_config`` (the bundle's
    inference config) has no such setting (the CT bundle)."""
    return _carried_intensity_max(embedded_bundle(path)[1], bundle_config)


def exported_settings(path: str | Path, bundle_config: dict) -> dict:
    """What the ``inference.json`` carried by the export at ``path`` says its weights were trained with, of the
    settings ``bundle_config`` (the bundle's inference config) has: the class count (``num_classes``, as ``export``
    reads it from the weights' ``network.json``), the 2D bundles' image scale (:func:`exported_intensity_max`) and
    the CT bundle's scaling (``intensity``, ``hu_window``). Empty where the file carries no config (ONNX, another
    tool's export); a value of another kind than the bundle's is left out."""
    config = embedded_bundle(path)[1]
    if not config:
        return {}
    found = {}
    scale = _carried_intensity_max(config, bundle_config)
    if scale is not None:
        found["intensity_max"] = scale
    classes = config.get("num_classes")
    if "num_classes" in bundle_config and isinstance(classes, int) and not isinstance(classes, bool) and classes >= 2:
        found["num_classes"] = classes
    if isinstance(bundle_config.get("intensity"), str) and isinstance(config.get("intensity"), str):
        found["intensity"] = config["intensity"]
    window = config.get("hu_window")
    if isinstance(bundle_config.get("hu_window"), list) and isinstance(window, list) and len(window) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in window):
        found["hu_window"] = list(window)
    return found


def _check_same_bundle(path: Path, meta_file: Path) -> None:
    """Refuse an export of another bundle: one whose network or classes differ from this bundle's (the shapes alone
    do not tell the ISIC and polyp networks apart: both take 3x256x256 and give one channel)."""
    import json

    embedded, config = embedded_bundle(path)
    meta = json.loads(Path(meta_file).read_text())
    if not embedded or embedded.get("name") == meta.get("name"):
        return
    bundle_dir = Path(meta_file).parent
    own = json.loads((bundle_dir / "inference.json").read_text()) if (bundle_dir / "inference.json").is_file() else {}
    target = (config.get("network_def") or {}).get("_target_")
    channels = ((embedded.get("network_data_format") or {}).get("outputs") or {}).get("pred", {}).get("channel_def")
    want = meta["network_data_format"]["outputs"]["pred"].get("channel_def")
    if (target and target != (own.get("network_def") or {}).get("_target_")) or (channels and channels != want):
        raise InputError(f"{path}: an export of the bundle {embedded.get('name')!r} (its metadata.json), whose "
                         f"network or classes differ from this bundle's, {meta.get('name')!r} ({meta_file}): give the "
                         "bundle it was exported from, or export this bundle's weights")


def check_exported(path: str | Path, meta_file: str | Path, device=None, batch: int = 1,
                   channels: int | None = None) -> None:
    """Load the exported model at ``path`` and run a zero batch (of ``batch`` inputs, as ``predict --batch_size``
    will feed it) of the network input that the bundle's ``metadata.json`` declares (what its inference feeds the
    network) through it. ``channels``: the outputs it must give (a model of another class count than the bundle's,
    ``predict --num_classes``); default the ``num_channels`` metadata.json declares.

    Raises:
        InputError: it does not take that input, or does not give the declared number of output channels at
            the input's size (the message names the file, the shapes and the reason), or it carries the metadata of
            another bundle whose network or classes differ.
    """
    import json

    from vmunet_monai.validation import error_summary

    pred = json.loads(Path(meta_file).read_text())["network_data_format"]["outputs"]["pred"]
    model = load_exported(path, device, meta_file=meta_file)
    shape = network_input_shape(meta_file)
    x = torch.zeros((int(batch), *shape[1:]), device=torch.device(device) if device else None)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # a traced model fixed to another size, a program for other channels, ...
        fixed = ("; an export fixed to a batch of 1 runs with --batch_size 1, and vmunet_monai export writes one of "
                 "any batch size" if batch > 1 else "")
        raise InputError(f"{path}: does not run on a {tuple(x.shape)} input, the size this bundle's inference "
                         f"feeds it ({meta_file}; export it from this bundle{fixed}): {error_summary(exc)}") from None
    own = int(pred["num_channels"])
    want = (int(batch), own if channels is None else int(channels), *x.shape[2:])
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got == want:
        return
    said = f"{path}: gives {got} for a {tuple(x.shape)} input"
    if want[1] != own:
        raise InputError(f"{said}; the classes asked for need {want} (--num_classes, else the bundle's; an export "
                         f"carries its own count where its weights were trained for another; export it from this "
                         f"bundle)")
    other_classes = isinstance(got, tuple) and len(got) == len(want) and got[:1] + got[2:] == want[:1] + want[2:]
    raise InputError(f"{said}; this bundle's network gives {want} ({meta_file}; export it from this bundle"
                     + ("; a model of another number of classes runs with --num_classes)" if other_classes else ")"))


def network_input_shape(meta_file: str | Path) -> tuple[int, ...]:
    """``(1, C, *spatial)`` of the network input that ``metadata.json`` declares (``network_data_format``)."""
    import json

    image = json.loads(Path(meta_file).read_text())["network_data_format"]["inputs"]["image"]
    return (1, int(image["num_channels"]), *(int(s) for s in image["spatial_shape"]))
