"""Export a bundle's network to TorchScript or ONNX, then check the export against eager PyTorch.

``python -m vmunet_monai export BUNDLE --format torchscript|onnx`` wraps MONAI's own
``python -m monai.bundle ckpt_export`` and ``onnx_export`` (so the files are what those commands
write: a TorchScript file with ``metadata.json`` and ``inference.json`` embedded, or an ONNX model),
and then runs the exported model and the eager network on the same random input.
``--format pt2`` writes a ``torch.export`` program instead (``torch.export.save``, the two configs
embedded as extra files): the scans stay one operator each (``vmunet_monai::cross_selective_scan``,
registered by ``import vmunet_monai``), which picks the fast backend of the machine that loads it,
and the batch size stays free.

Why tracing: ``torch.jit.script`` cannot compile the selective-scan dispatch (keyword-only
arguments, optional backends chosen at run time), so both formats are produced by
``torch.jit.trace``. While tracing, :mod:`vmunet_monai.ops` always runs the ``torch`` scan backend,
which is plain tensor code. A traced model is fixed to the traced height and width (the network
input size in ``metadata.json``: what the bundle's inference pipeline feeds it); the batch size
stays free, and the check below runs a batch of 2 to show it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from vmunet_monai.engine.exported import FORMATS, load_exported, network_input_shape
from vmunet_monai.engine.utils import find_bundle
from vmunet_monai.install import extra_install
from vmunet_monai.validation import InputError, check_output_location, move_whole

__all__ = ["FORMATS", "DEFAULT_TOLERANCE", "ExportResult", "ExportVerificationError", "export", "verify_export"]

MAX_BATCH = 4096  # the largest batch a pt2 program accepts (its batch dimension is symbolic up to this)
DEFAULT_TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "image", "pred"  # the keys of metadata.json's network_data_format


class ExportVerificationError(RuntimeError):
    """The exported model computes something else than the eager network."""


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: tuple[int, ...]
    max_abs_diff: float
    tolerance: float

    def summary(self) -> str:
        how = ("the scans as the vmunet_monai::cross_selective_scan operator: import vmunet_monai before "
               "torch.export.load" if self.format == "pt2" else "traced on the torch scan backend")
        return (f"{self.format} model written to {self.path} ({how})\n"
                f"max abs diff against eager PyTorch on a random {tuple(self.input_shape)} input: "
                f"{self.max_abs_diff:.3e} (tolerance {self.tolerance:.0e})")


@contextlib.contextmanager
def _quiet_tracing():
    # The networks check shapes in Python (channel count, padding to a multiple of 32); a trace keeps the
    # traced input's values of those, which is what the tracer warns about. The export is fixed-size on
    # purpose, and the check after it runs a different random input.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        yield


def _paths(bundle: str, checkpoint: str | None, output: str | None, format: str):
    if format not in FORMATS:
        raise InputError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    root = find_bundle(bundle)
    config, meta = root / "configs" / "inference.json", root / "configs" / "metadata.json"
    for path in (config, meta):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: missing; a bundle to export needs configs/inference.json and configs/metadata.json"
            )
    ckpt = Path(checkpoint) if checkpoint else root / "models" / "model.pt"
    if not ckpt.is_file():
        from vmunet_monai.engine.utils import missing_weights

        raise missing_weights(ckpt, root, train=f"python -m monai.bundle run training --config_file "
                              f"{root}/configs/train.json --bundle_root {root} --dataset_dir PREPARED",
                              given="--checkpoint" if checkpoint else None)
    out = Path(output) if output else root / "models" / FORMATS[format]
    suffix = Path(FORMATS[format]).suffix
    if out.is_dir() or (output and str(output).endswith(("/", os.sep))):  # a folder: the format's usual name in it
        out = out / FORMATS[format]
    elif out.suffix.lower() != suffix and (format != "torchscript" or out.suffix.lower() in (
            "", *(Path(name).suffix for name in FORMATS.values()))):
        # MONAI's exporters would add a suffix of their own, and predict --model tells ONNX and pt2 by theirs (a
        # TorchScript file by its content, whatever its name: model.pt is one)
        ending = (f"ending in {suffix}" if format != "torchscript" else
                  f"with a suffix of its own, such as {suffix} or .pt (not {out.suffix or 'none'}: MONAI's exporter "
                  "would add one)")
        raise InputError(f"--output {output}: a {format} export is a file {ending} (or give a folder, ending in /, "
                         f"for {FORMATS[format]} in it)")
    # never written over the weights it is made from
    check_output_location([ckpt], out, what="export", output_is_file=True)
    if format == "torchscript" and out.is_file() and out.suffix.lower() != suffix and not zipfile.is_zipfile(out):
        # any suffix names a TorchScript file, so notes.txt could be one: an earlier export (or a .ts file) is
        # replaced, nothing else
        raise InputError(f"{out}: a file that is not a TorchScript export stands there (an earlier export or a "
                         f"{suffix} file is replaced, any other file is kept); choose another --output")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):  # found before minutes of tracing
        raise PermissionError(13, "Permission denied", str(out.parent))
    return root, config, meta, ckpt, out


def _input_shape(meta: Path, input_shape) -> tuple[int, ...]:
    return tuple(int(s) for s in input_shape) if input_shape else network_input_shape(meta)


def _eager_network(root: Path, config: Path, ckpt: Path, overrides: dict) -> tuple[torch.nn.Module, dict]:
    """``network_def`` (with ``overrides``: the settings of the ``network.json`` beside the checkpoint) with the
    checkpoint loaded (strict), and its state dict as read: unwrapped from the usual containers and prefixes, on the
    CPU wherever it was saved, or a one-line error naming the file
    (:func:`vmunet_monai.weights.check_checkpoint_fits`)."""
    from monai.bundle import ConfigParser

    from vmunet_monai.weights import check_checkpoint_fits

    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(root)
    for key, value in overrides.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    state = check_checkpoint_fits(net, ckpt, built_from_record=bool(overrides))
    net.load_state_dict(state)
    return net.eval(), state


def _export_program(network: torch.nn.Module, shape, out: Path, config: Path, meta: Path) -> None:
    """``torch.export`` of ``network`` for inputs of ``shape`` with any batch size, saved with the
    bundle's metadata.json and inference.json as extra files."""
    example = torch.rand((2, *tuple(shape)[1:]))  # a batch of 1 would be specialised, not symbolic
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    extra = {"metadata.json": meta.read_text(), "inference.json": config.read_text()}
    torch.export.save(program, str(out), extra_files=extra)


def verify_export(path: str | Path, format: str, network: torch.nn.Module, input_shape, batch: int = 2,
                  seed: int = 0) -> float:
    """Max absolute difference between the exported model at ``path`` and ``network`` on a random input of
    ``input_shape`` with batch size ``batch`` (values in [0, 1), like the bundles' normalised input)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *tuple(input_shape)[1:]), generator=generator)
    if format not in FORMATS:
        raise ValueError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
    module = load_exported(path, format=format)  # pt2: the scan operator was registered by import vmunet_monai
    with torch.no_grad():
        expected = network(x)
        got = module(x)
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportVerificationError(
            f"{path}: output shape {tuple(got.shape)} for input {tuple(x.shape)}, eager gives {tuple(expected.shape)}"
        )
    return float((got.float() - expected.float()).abs().max())


def export(bundle: str, format: str = "torchscript", checkpoint: str | None = None, output: str | None = None,
           tolerance: float = DEFAULT_TOLERANCE, input_shape=None, num_classes: int | None = None) -> ExportResult:
    """Export ``bundle``'s ``network_def`` with its trained weights and check the result.

    Args:
        bundle: a bundle name (``isic_skin_lesion``, ``polyp_seg``, ``synapse_multiorgan``) or a bundle folder.
        format: ``torchscript`` (``monai.bundle ckpt_export --use_trace True``), ``onnx``
            (``monai.bundle onnx_export --use_trace True`` with PyTorch's TorchScript-based ONNX exporter)
            or ``pt2`` (``torch.export``; the scans stay one custom operator each).
        checkpoint: weights (a state dict, or a file with one under ``model``, ``state_dict`` and the like, with
            or without DataParallel's ``module.``; saved on any device); default ``<bundle>/models/model.pt``.
        output: file to write (a folder: ``model.ts``, ``model.onnx`` or ``model.pt2`` in it); default
            ``<bundle>/models/model.ts``, ``model.onnx`` or ``model.pt2``.
        tolerance: largest max-abs difference from the eager network accepted.
        input_shape: ``[1, C, H, W]`` to trace with; default from ``metadata.json`` (the network input size).
        num_classes: the classes (background included) of weights trained with ``--num_classes N``; default the
            count the ``network.json`` beside the weights records, else the bundle's.

    Returns:
        :class:`ExportResult` (path, input shape checked, max abs difference).

    Raises:
        FileNotFoundError: for a missing bundle, config or checkpoint.
        vmunet_monai.weights.CheckpointError: weights that cannot be read or do not fit the bundle's network.
        ExportVerificationError: if the export's output differs from eager by more than ``tolerance``.
    """
    if not float(tolerance) >= 0:
        raise InputError(f"--tolerance {tolerance!r}: must be a number of at least 0")
    root, config, meta, ckpt, out = _paths(bundle, checkpoint, output, format)
    shape = _input_shape(meta, input_shape)
    from vmunet_monai.predict import trained_network

    trained = trained_network([str(config)], ckpt)  # the network as its weights were trained (network.json)
    size = trained.get("image_size")
    if size and input_shape is None and list(size) != list(shape[2:]):
        print(f"note: the weights were trained on {'x'.join(map(str, size))} images and the export is made for "
              f"metadata.json's {'x'.join(map(str, shape[2:]))}, the size the bundle's inference feeds it: its masks "
              f"differ from predict's with the weights (which resizes to the trained size); for the same masks, "
              f"export a copy set up for the weights: python -m vmunet_monai copy_bundle {root} OUT --checkpoint "
              f"{ckpt}, then export OUT", flush=True)
    if num_classes is None:  # weights trained with --num_classes N: N, from their network.json
        from vmunet_monai.predict import recorded_num_classes

        num_classes = recorded_num_classes(ckpt, ckpt, [str(config)])
    if num_classes is not None:
        from vmunet_monai.validation import check_at_least

        trained["num_classes"] = check_at_least("export --num_classes", num_classes, 2)
    network, state = _eager_network(root, config, ckpt, trained)
    with tempfile.TemporaryDirectory() as plain:
        written = Path(plain) / out.name  # moved to ``out`` once it passes the check: a failed export writes nothing
        _export_to(written, format, network, state, shape, root, config, meta, trained, Path(plain))
        try:
            diff = verify_export(written, format, network, shape)
        except Exception as exc:  # noqa: BLE001 - named as the output path, with nothing written there
            message = str(exc).replace(str(written), str(out))
            raise ExportVerificationError(f"{message} (the export was not written to {out})") from exc
        result = ExportResult(out, format, (2, *shape[1:]), diff, tolerance)
        if not diff <= tolerance:
            accept = (f". Rounding differences grow with the logits' size and the network's depth: if this one is "
                      f"small beside the logits, accept it with --tolerance {10 ** math.ceil(math.log10(diff)):.0e}"
                      if math.isfinite(diff) else "")
            raise ExportVerificationError(
                f"{out}: the {format} export differs from eager PyTorch by {diff:.3e} (max abs) on a random "
                f"{result.input_shape} input; the limit is {tolerance:.0e} (nothing written){accept}"
            )
        move_whole(written, out)
    return result


def _config_as_trained(config: Path, trained: dict, scratch: Path, shape) -> Path:
    """The bundle's inference config with the ``trained`` settings of the weights' ``network.json`` in it, written
    into ``scratch``: the inference.json an export carries says how its weights were trained (the scale of their
    images, :func:`vmunet_monai.engine.exported.exported_intensity_max`), where MONAI's exporters store the file as
    it is. A trained input size other than the export's (``shape``) is left out: the export takes its own."""
    import json

    from monai.bundle import ConfigParser

    if not trained:
        return config
    parser = ConfigParser()
    parser.read_config(str(config))
    for key, value in trained.items():
        if key not in ("image_size", "roi_size") or list(value) == list(shape[2:]):
            parser[key] = value
    written = scratch / "config" / config.name
    written.parent.mkdir(exist_ok=True)
    written.write_text(json.dumps(parser.get(), indent=4) + "\n")
    return written


def _export_to(out: Path, format: str, network, state: dict, shape, root: Path, config: Path, meta: Path,
               trained: dict, scratch: Path) -> None:
    """Write the ``format`` export of ``network`` (with the weights ``state``) to ``out``."""
    from monai.bundle import ckpt_export, onnx_export

    with _quiet_tracing():
        weights = scratch / "weights_as_read.pt"  # MONAI's exporters get the state dict as read: plain, on the CPU
        torch.save(state, weights)
        config = _config_as_trained(config, trained, scratch, shape)
        common = dict(net_id="network_def", filepath=str(out), ckpt_file=str(weights), meta_file=str(meta),
                      config_file=str(config), key_in_ckpt="", use_trace=True, input_shape=list(shape),
                      bundle_root=str(root), **trained)
        if format == "pt2":
            _export_program(network, shape, out, config, meta)
        elif format == "torchscript":
            ckpt_export(**common, converter_kwargs={"check_trace": False})
        else:
            missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
            if missing:  # monai imports onnx optionally and would fail later, less clearly
                raise ImportError(f"ONNX export and its check need {' and '.join(missing)}: "
                                  f"{extra_install('export')}")
            onnx_export(**common, converter_kwargs={
                "dynamo": False,  # the torch.export-based exporter takes minutes on the unrolled scan loops
                "input_names": [INPUT_NAME],
                "output_names": [OUTPUT_NAME],
                "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            })
