"""Load official checkpoints into our networks, with an explicit key mapping and a full report.

Supported sources (detected from the key names):

- official training checkpoints of VM-UNet, VM-UNetV2 and Mamba-UNet (with or without a ``model``
  entry, a DataParallel ``module.`` prefix and the wrapper prefixes ``vmunet.`` / ``mamba_unet.``), and our own
  networks' weights in the containers training tools write (:func:`read_checkpoint`);
- VMamba v0 ImageNet checkpoints (``vssmsmall``/``vssmtiny``, e.g. ``vmamba_small_e238_ema.pth``),
  which initialise each network the way its paper did:

  * VM-UNet: the encoder from the same keys, then decoder stage ``3 - k`` from encoder stage ``k``;
  * VM-UNetV2: the encoder only;
  * Mamba-UNet: the encoder and its final norm, then decoder stage ``3 - k`` from encoder stage ``k``.

Checkpoints are read with ``torch.load(weights_only=True)``: no code in them runs.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

__all__ = [
    "OtherClassesError",
    "CheckpointError",
    "LoadReport",
    "load_official_checkpoint",
    "read_checkpoint",
    "detect_checkpoint_kind",
    "check_checkpoint_fits",
    "is_torchscript_archive",
]

_NESTED_KEYS = ("model", "state_dict", "model_state_dict", "network", "net")
# DataParallel / DDP / SWA's AveragedModel, torch.compile, Lightning modules, and the official wrappers
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "vmunet.", "mamba_unet.")
_BOOKKEEPING = ("n_averaged",)  # SWA's AveragedModel counts its averages beside the weights
# parameters the official VM-UNetV2 builds but never uses; ours does not build them
_V2_DEAD = re.compile(r"^(vmunet\.layers\.3\.|deconv5\.|vmunet\.norm\.|vmunet\.head\.)")
_V2_DECONV6_NOTE = ("deconv6 left out: this VMUNetV2 is built with deep_supervision=False, whose output does not use "
                    "it (the official VM-UNetV2 builds it either way); weights trained with deep supervision (the "
                    "official default) need deep_supervision=True, whose output adds it")


def _official_v2_unused(state: dict, target: dict) -> re.Pattern | None:
    """The keys of an official VM-UNetV2 file (its encoder under ``vmunet.``) that the VMUNetV2 whose state dict is
    ``target`` does not build: :data:`_V2_DEAD`, and ``deconv6`` where that network was built without deep
    supervision (the official module builds it either way, so a file trained without holds it too). None for a file
    of other names (ours, whose deconv6 is there only where it was trained)."""
    if not any(k.startswith("vmunet.") for k in state):
        return None
    return _V2_DEAD if "deconv6.weight" in target else re.compile(_V2_DEAD.pattern + r"|^deconv6\.")


from vmunet_monai.validation import InputError


class CheckpointError(InputError):
    """A checkpoint that cannot be read, is not one we know, or does not fit under ``strict=True``."""


class OtherClassesError(CheckpointError):
    """Weights that fit the network but for their output layer: trained for another number of classes."""


@dataclass
class LoadReport:
    """What :func:`load_official_checkpoint` did, key by key (model-side names)."""

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 5) -> str:
        def few(items):
            items = [str(i) for i in items]
            more = f" ... (+{len(items) - limit})" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more

        lines = [
            f"checkpoint {self.source} ({self.kind}): {len(self.loaded)} tensors loaded",
            f"  missing (left as initialised): {len(self.missing)}" + (f": {few(self.missing)}" if self.missing else ""),
            f"  unexpected (not used): {len(self.unexpected)}" + (f": {few(self.unexpected)}" if self.unexpected else ""),
            f"  shape mismatch (not loaded): {len(self.mismatched)}"
            + (f": {few(f'{k} {a}->{b}' for k, a, b in self.mismatched)}" if self.mismatched else ""),
        ]
        if self.ignored:
            lines.append(f"  ignored (unused by the official network too): {len(self.ignored)}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    __str__ = summary


def _numpy_globals() -> list:
    """The numpy types that checkpoints pickle beside their tensors (the official VM-UNet's ``latest.pth`` holds its
    loss as a ``numpy.float64``): a scalar's reconstructor, ``dtype`` and the dtype classes. None of them runs code
    of the file's choosing, so loading stays as safe as ``weights_only=True``."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    found = [core.multiarray.scalar, np.dtype]
    found += [type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_)]
    return found


def _load_weights_only(source: str):
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # torch < 2.5
        return torch.load(source, map_location="cpu", weights_only=True)
    with safe(_numpy_globals()):
        return torch.load(source, map_location="cpu", weights_only=True)


class _Placeholder:
    """Stands in for a class a checkpoint pickles beside its tensors (a yacs ``CfgNode``, an argparse
    ``Namespace``): whatever the file builds of it is an ``OrderedDict`` (one of the few types ``weights_only``
    loading fills in), holding the object's items and attributes as data, running no code of the file's."""

    def __new__(cls, *args, **kwargs):
        from collections import OrderedDict

        return OrderedDict()


#: modules whose names in a checkpoint mean code would run on loading (a crafted file): such a file is refused
_CODE_MODULES = {"builtins", "__builtin__", "os", "posix", "nt", "sys", "subprocess", "importlib", "runpy", "shutil", "socket",
                 "pickle", "marshal", "types", "code", "codeop", "pty", "ctypes", "webbrowser", "eval", "exec", "io",
                 "operator", "functools", "pathlib", "tempfile", "threading", "multiprocessing", "signal", "torch"}


def _holds_tensors(loaded) -> bool:
    """A mapping with tensors in it or in one of its mappings (a state dict, or a training file holding one)."""
    if not isinstance(loaded, Mapping):
        return False
    return any(isinstance(v, torch.Tensor) or (isinstance(v, Mapping) and any(
        isinstance(w, torch.Tensor) for w in v.values())) for v in loaded.values())


def _load_with_placeholders(source: str) -> tuple[object, list[str]]:
    """``torch.load(weights_only=True)`` of a checkpoint that pickles objects of other classes beside its tensors
    (VMamba's releases keep their yacs config, many training scripts their argparse arguments): each such class is
    allowed under its name as an inert :class:`_Placeholder`, so nothing of the file's runs. Returns the loaded
    object and the replaced names; raises where the file names a module that runs code (:data:`_CODE_MODULES`: a
    crafted file, or a pickled network), holds no tensors, or where torch cannot list the names (the pre-1.6 file
    format)."""
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    known = {f"{g.__module__}.{g.__qualname__}" for g in _numpy_globals()}
    names = sorted(set(get_unsafe_globals_in_checkpoint(source)) - known)
    code = [n for n in names if n.split(".")[0] in _CODE_MODULES]
    if code:
        raise CheckpointError(f"{source}: names {code[0]}")
    stand_ins = [(type(n.rsplit(".", 1)[-1], (_Placeholder,), {}), n) for n in names]
    with safe_globals(_numpy_globals() + stand_ins):
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    if not _holds_tensors(loaded):
        raise CheckpointError(f"{source}: holds no tensors beside its objects")
    return loaded, names


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (an exported network), whatever its name: ``torch.jit.save(m,
    "model.pt")`` writes one under the weights' usual suffix."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _exported_network_kind(source: str) -> str:
    """``"an ONNX model"`` or ``"a torch.export program"`` for such a file, else ``""``."""
    import zipfile

    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            if any(n.endswith("archive_format") or "/serialized_exported_program" in n for n in zf.namelist()):
                return "a torch.export program"
        return ""
    if source.lower().endswith(".onnx"):
        return "an ONNX model"
    return ""


def _why_unreadable(source: str, exc: Exception) -> str:
    """What the file that ``torch.load`` refused is, and what to do, as far as its first bytes tell."""
    with open(source, "rb") as f:
        head = f.read(1024)
    if head.startswith(b"version https://git-lfs"):
        return ("a Git LFS pointer (a small text file standing in for the weights), not the weights: fetch the file "
                "itself (git lfs pull)")
    if b"\0" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return f"a text file, not a checkpoint (it starts: {text.strip()[:60]!r})"
    for magic, kind in _NOT_CHECKPOINTS:
        if head.startswith(magic):
            return f"a {kind} file, not a checkpoint"
    message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"it pickles Python objects beside the tensors ({found.group(1)}), such as a whole network or a "
                "training object; only tensors are read from a file, so no code in it runs: save the weights alone, "
                "torch.save(model.state_dict(), path)")
    if "Weights only load failed" in message:  # torch's advice to load it unsafely is no answer
        return ("no tensors torch can read without running the file's code (a plain pickle, or another program's "
                "format): save the weights with torch.save(model.state_dict(), path)")
    return (f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}; it may be cut short or not a "
            "checkpoint")


#: first bytes of files that are often given where weights go, and what they are
_NOT_CHECKPOINTS = ((b"\x89PNG", "PNG image"), (b"\xff\xd8\xff", "JPEG image"), (b"GIF8", "GIF image"),
                    (b"II*\x00", "TIFF image"), (b"MM\x00*", "TIFF image"), (b"%PDF", "PDF"),
                    (b"\x1f\x8b", "gzip (a .nii.gz volume, or a compressed archive)"), (b"\x89HDF", "HDF5"))


def read_checkpoint(checkpoint) -> dict[str, torch.Tensor]:
    """A flat state dict from a path or a mapping, unwrapped from ``model``/``state_dict`` (and the like) and from
    wrapper prefixes (DataParallel's ``module.``, ``torch.compile``'s ``_orig_mod.``, Lightning's ``model.``)."""
    source = "<state dict>"
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        if os.path.isdir(source):
            raise CheckpointError(f"{source}: a folder, not a checkpoint file (the weights are a file such as "
                                  "models/model.pt)")
        if not os.path.isfile(source):
            raise CheckpointError(f"{source}: no such checkpoint file")
        if os.path.getsize(source) == 0:
            raise CheckpointError(f"{source}: the file is empty (an interrupted download or copy?)")
        if is_torchscript_archive(source):  # torch.load would hand it to torch.jit.load
            raise CheckpointError(f"{source}: a TorchScript archive (an exported network), not a state dict: give it "
                                  "to predict as --model, or load it with torch.jit.load")
        exported = _exported_network_kind(source)
        if exported:
            raise CheckpointError(f"{source}: {exported} (an exported network), not a state dict: give it to "
                                  "predict as --model (the checkpoint it was exported from is what --checkpoint "
                                  "takes)")
        try:
            checkpoint = _load_weights_only(source)
        except Exception as exc:
            why = _why_unreadable(source, exc)
            checkpoint = None
            if "pickles Python objects" in why:  # a config or arguments object beside the tensors: read them still
                try:  # refused as it was where the file names code or holds no tensors (a pickled network)
                    checkpoint, replaced = _load_with_placeholders(source)
                except Exception:
                    checkpoint = None
                else:
                    print(f"note: {source}: also pickles {', '.join(replaced[:3])}"
                          f"{' and more' if len(replaced) > 3 else ''} (a config or training object), read as "
                          "plain data with weights_only=True; only its tensors are used", file=sys.stderr)
            if checkpoint is None:
                raise CheckpointError(f"{source}: cannot be read as a PyTorch checkpoint of tensors ({why})") from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: holds a {type(checkpoint).__name__}, not a state dict")
    for key in _NESTED_KEYS:  # the first that holds tensors ({"model": {"arch": ...}, "state_dict": ...})
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            checkpoint = inner
            break
    state = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor) and k not in _BOOKKEEPING}
    if not state:
        raise CheckpointError(f"{source}: contains no tensors (keys: {list(checkpoint)[:8]})")
    stripped = True
    while stripped:  # module._orig_mod.x: one wrapper inside another
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            # the wrapped network, and at most a few tensors of its wrapper (a Lightning module's loss weights)
            if inside and len(state) - len(inside) <= max(2, len(inside) // 20):
                state, stripped = inside, True
    return state


def _prefix_hint(keys) -> str:
    """For a checkpoint of which nothing fits: the first name parts most of its keys share, if any (a wrapper
    whose prefix is not one of those unwrapped, or two copies such as ``model.`` and ``ema_model.``)."""
    from collections import Counter

    heads = Counter(k.split(".", 1)[0] + "." for k in keys if "." in k)
    common = [(head, n) for head, n in heads.most_common(3) if n >= max(2, len(keys) // 4)]
    if not common:
        return ""
    listed = ", ".join(f"{head!r} ({n})" for head, n in common)
    return (f"; its keys start with {listed}: take the network's tensors out, e.g. "
            f"{{k[len({common[0][0]!r}):]: v for k, v in state.items() if k.startswith({common[0][0]!r})}}")


def _fit_hint(state, report: "LoadReport") -> str:
    """Why little or nothing of a checkpoint fits: tensors named as the network's but of other shapes (a network
    of other settings: ``dims``, ``depths``, ``d_state``), else :func:`_prefix_hint`."""
    if report.mismatched and len(report.mismatched) >= len(report.unexpected):
        key, theirs, ours = report.mismatched[0]
        return (f"; {len(report.mismatched)} of its tensors have the network's names but other shapes (e.g. {key} "
                f"{theirs} in the file, {ours} here): it is of a network with other settings (dims, depths or "
                f"d_state), so build the network with the settings it was trained with")
    return _prefix_hint(list(state))


def detect_checkpoint_kind(state: Mapping[str, torch.Tensor]) -> str:
    """'vmunet', 'vmunet_v2', 'mamba_unet', 'vmamba_v0' (ImageNet classifier), 'vmamba_v2' (VMamba's later
    releases, another architecture) or 'unknown'."""
    keys = set(state)
    if any(re.match(r"^layers\.\d+\.blocks\.\d+\.op\.", k) for k in keys):
        return "vmamba_v2"
    if any(k.startswith(("sdi_", "ca_1.", "Translayer_")) for k in keys):
        return "vmunet_v2"
    if any(k.startswith("concat_back_dim.") for k in keys):
        return "mamba_unet"
    if "final_up.expand.weight" in keys or any(k.startswith("layers_up.") for k in keys):
        return "vmunet"
    if any(k.startswith("layers.0.blocks.0.self_attention.") for k in keys) and keys & {"head.weight", "norm.weight"}:
        return "vmamba_v0"  # the classifier: its final norm and head (an encoder cut out of a U-Net has neither)
    return "unknown"


_NAMES = {"vmunet": "VM-UNet", "vmunet_v2": "VM-UNetV2", "mamba_unet": "Mamba-UNet"}


def _network_kind(network: nn.Module) -> str:
    from vmunet_monai.networks import MambaUNet, VMUNet, VMUNetV2

    for cls, name in ((VMUNetV2, "vmunet_v2"), (MambaUNet, "mamba_unet"), (VMUNet, "vmunet")):
        if isinstance(network, cls):
            return name
    raise TypeError(f"load_official_checkpoint supports VMUNet, VMUNetV2 and MambaUNet, not {type(network).__name__}")


def _other_network_hint(kind: str, own: str | None) -> str:
    """``"; it is a ... checkpoint: ..."`` for weights of the ``kind`` (:func:`detect_checkpoint_kind`) where a
    network of the kind ``own`` was to take them and they are another network's; ``""`` otherwise."""
    if kind == "vmamba_v0":
        return ("; it is a VMamba v0 ImageNet encoder, the papers' initialisation for training "
                "(--pretrained_checkpoint of a training), not segmentation weights")
    if kind in _NAMES and kind != own:
        builds = {"vmunet": "VMUNet (isic_skin_lesion and synapse_multiorgan build it)",
                  "vmunet_v2": "VMUNetV2 (polyp_seg builds it)",
                  "mamba_unet": "MambaUNet (synapse_multiorgan's configs build it with the override "
                                "--network_def#_target_ vmunet_monai.networks.MambaUNet, under monai.bundle run)"}[kind]
        return (f"; it is a {_NAMES[kind]} checkpoint: give it to a bundle whose network_def is {builds}, or "
                f"start a training from what fits with --pretrained_checkpoint")
    return ""


def other_network_hint(state: Mapping[str, torch.Tensor], network: nn.Module) -> str:
    """What ``state``, a flat state dict that does not fit ``network``, is, where it is recognisably another
    network's of the family (or a VMamba v0 ImageNet encoder): ``"; it is a VM-UNetV2 checkpoint: give it to a
    bundle whose network_def is VMUNetV2 ..."``; ``""`` where it is not."""
    module = getattr(network, "module", network)
    try:
        own = _network_kind(module)
    except TypeError:  # a baseline (MONAI's UNet, SwinUNETR)
        own = None
    return _other_network_hint(detect_checkpoint_kind(state), own)


def _mirror_stage(key: str) -> str | None:
    """``layers.k.rest`` -> ``layers_up.(3-k).rest`` (the papers' decoder initialisation)."""
    m = re.match(r"^layers\.(\d+)\.(.*)$", key)
    if not m or int(m.group(1)) > 3:
        return None
    return f"layers_up.{3 - int(m.group(1))}.{m.group(2)}"


def _candidates(net_kind: str, ckpt_kind: str, key: str) -> list[str]:
    """Model keys that checkpoint ``key`` initialises."""
    if ckpt_kind == "vmamba_v0":
        if net_kind == "vmunet_v2":
            return [f"encoder.{key}"] if key.startswith(("patch_embed.", "layers.")) else []
        out = [key]
        mirrored = _mirror_stage(key)
        if mirrored is not None:
            out.append(mirrored)
        return out
    if net_kind == "vmunet_v2" and key.startswith("vmunet."):
        return ["encoder." + key[len("vmunet.") :]]
    # the same VSS encoder, named apart: VM-UNet's (and Mamba-UNet's) at the top, VM-UNetV2's under encoder.
    if net_kind == "vmunet_v2" and ckpt_kind in ("vmunet", "mamba_unet") and key.startswith(("patch_embed.",
                                                                                              "layers.")):
        return ["encoder." + key]
    if net_kind != "vmunet_v2" and ckpt_kind == "vmunet_v2":
        for prefix in ("encoder.", "vmunet."):
            if key.startswith(prefix):
                return [key[len(prefix):]]
    return [key]


#: the least share of a network's values a checkpoint must fill: below it the load is refused, not reported as partial
MIN_LOADED_SHARE = 0.01


def load_official_checkpoint(network: nn.Module, checkpoint, *, strict: bool = False) -> LoadReport:
    """Load an official VM-UNet / VM-UNetV2 / Mamba-UNet or VMamba v0 checkpoint into ``network``.

    Args:
        network: a :class:`~vmunet_monai.networks.VMUNet`, ``VMUNetV2`` or ``MambaUNet`` (or one wrapped by
            ``DataParallel``, ``DistributedDataParallel`` or ``torch.compile``).
        checkpoint: a path, or a state dict (optionally under ``model``, optionally prefixed).
        strict: raise :class:`CheckpointError` if any model key is left missing, any checkpoint key is
            unused, or any shape differs (a VMamba initialisation is never complete, by design).

    Returns:
        A :class:`LoadReport` naming every loaded, missing, unexpected, mismatched and ignored key, with notes (also
        given as warnings) when the checkpoint is of another network or of no known release.

    Raises:
        CheckpointError: an unreadable file, a VMamba v2 (or later) checkpoint, one of which not a tensor fits or
            whose tensors that fit hold under 1% of the network's values (:data:`MIN_LOADED_SHARE`), or under
            ``strict`` one that does not fit whole.
    """
    import warnings

    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "<state dict>"
    state = read_checkpoint(checkpoint)
    ckpt_kind = detect_checkpoint_kind(state)
    network = getattr(network, "_orig_mod", network)  # torch.compile's wrapper
    network = getattr(network, "module", network)  # DataParallel's, DistributedDataParallel's
    net_kind = _network_kind(network)
    if ckpt_kind == "vmamba_v2":
        raise CheckpointError(
            f"{source}: a checkpoint of VMamba's later releases (v2 and on: blocks named op and norm), another "
            "architecture than VM-UNet's encoder; the papers initialise from VMamba v0's ImageNet weights "
            "(vmamba_small_e238_ema.pth, vmamba_tiny_e292.pth)")
    report = LoadReport(source=source, kind=ckpt_kind)
    if ckpt_kind in _NAMES and ckpt_kind != net_kind:
        report.notes.append(f"a {_NAMES[ckpt_kind]} checkpoint loaded into a {type(network).__name__}: only the "
                            "layers with equal names and shapes were taken")
    elif ckpt_kind == "unknown" and any(k.startswith("layers.0.blocks.0.self_attention.") for k in state):
        report.notes.append("an encoder of VMamba v0's names without its classifier's norm and head (cut out of a "
                            "VM-UNet, or a detection or segmentation backbone): loaded by name into the encoder, the "
                            "decoder left as initialised (the papers' start, VMamba's ImageNet classifier file, also "
                            "initialises the decoder from it)")
    elif ckpt_kind == "unknown":
        report.notes.append("key names of no known release (VM-UNet, VM-UNetV2, Mamba-UNet, VMamba v0): only "
                            "tensors with this network's names and shapes were taken")
    target = network.state_dict()
    assigned: dict[str, torch.Tensor] = {}
    unused = _official_v2_unused(state, target) if net_kind == ckpt_kind == "vmunet_v2" else None
    for key, value in state.items():
        if unused is not None and unused.match(key):
            report.ignored.append(key)
            continue
        used = False
        for cand in _candidates(net_kind, ckpt_kind, key):
            if cand not in target or cand in assigned:
                continue
            used = True
            if tuple(target[cand].shape) != tuple(value.shape):
                report.mismatched.append((cand, tuple(value.shape), tuple(target[cand].shape)))
                continue
            assigned[cand] = value
        if not used:
            report.unexpected.append(key)
    report.loaded = sorted(assigned)
    mismatched = {k for k, _, _ in report.mismatched}
    report.missing = [k for k in target if k not in assigned and k not in mismatched]
    if not assigned:
        raise CheckpointError(f"{source}: not one tensor fits this {type(network).__name__}, so nothing was "
                              f"loaded{_fit_hint(state, report)}:\n" + report.summary())
    share = sum(v.numel() for v in assigned.values()) / max(1, sum(v.numel() for v in target.values()))
    if share < MIN_LOADED_SHARE:  # a bias or a norm that happens to match: the network stays as initialised
        raise CheckpointError(
            f"{source}: only {len(assigned)} of this {type(network).__name__}'s {len(target)} tensors fit "
            f"({', '.join(report.loaded[:3])}{', ...' if len(assigned) > 3 else ''}), {share:.2%} of its values, "
            f"so the network would stay as initialised: the file holds another network or another size"
            f"{_fit_hint(state, report)}:\n" + report.summary())
    if strict and not report.ok:
        raise CheckpointError("strict loading failed:\n" + report.summary())
    with torch.no_grad():  # (nothing is written into the network before the checks above pass)
        for key, value in assigned.items():
            target[key].copy_(value.to(target[key].dtype))
    if ckpt_kind != "vmamba_v0" and (report.missing or report.mismatched):  # a VMamba start is partial by design
        left = len(report.missing) + len(report.mismatched)
        report.notes.append(f"{len(report.loaded)} of the network's {len(target)} tensors loaded ({share:.0%} of "
                            f"its values); {left} keep their "
                            f"random initialisation (" + "; ".join(
                                ([f"missing, e.g. {report.missing[0]}"] if report.missing else [])
                                + ([f"of another shape, e.g. {report.mismatched[0][0]} {report.mismatched[0][1]} in "
                                    f"the file, {report.mismatched[0][2]} here"] if report.mismatched else [])) + ")")
    if any(k.startswith("deconv6.") for k in report.ignored):
        report.notes.append(_V2_DECONV6_NOTE)
    if ckpt_kind == "vmamba_v0" and (report.missing or report.unexpected):  # expected: say what they are
        report.notes.append(
            "as the papers start from VMamba's ImageNet classifier: its encoder loads"
            + (" (and, mirrored, the decoder's blocks)" if any(k.startswith("layers_up.") for k in assigned) else "")
            + (f"; unused by this network: {key_groups(report.unexpected)}" if report.unexpected else "")
            + (f"; left as initialised, having no counterpart in a classifier: {key_groups(report.missing)}"
               if report.missing else ""))
    for note in report.notes:
        warnings.warn(f"{source}: {note}", stacklevel=2)
    return report


def key_groups(keys: Sequence[str], limit: int = 6) -> str:
    """State-dict keys in groups a reader can take in: ``layers.2.blocks.9-26 (324 tensors), head (2), norm (2)``
    (the blocks of a stage by their numbers, every other key by the part of its name before its last two)."""
    groups: dict[str, list] = {}
    for key in keys:
        block = re.match(r"(.*\.blocks)\.(\d+)\.", key)
        if block:
            groups.setdefault(block[1], []).append(int(block[2]))
        else:
            parts = key.split(".")
            groups.setdefault(".".join(parts[:max(1, len(parts) - 2)]), []).append(None)
    said = []
    for name, members in sorted(groups.items(), key=lambda g: -len(g[1])):
        numbers = sorted({m for m in members if m is not None})
        span = "" if not numbers else (f".{numbers[0]}" if len(numbers) == 1 else
                                       f".{numbers[0]}-{numbers[-1]}" if numbers[-1] - numbers[0] + 1 == len(numbers)
                                       else "." + ",".join(map(str, numbers)))
        said.append(f"{name}{span} ({len(members)} tensor{'s' if len(members) > 1 else ''})")
    return ", ".join(said[:limit]) + (f" and {len(said) - limit} more groups" if len(said) > limit else "")


def _recorded_overrides(weights, size_setting: str = "image_size") -> str:
    """The network settings in the ``network.json`` beside ``weights`` as ``monai.bundle run`` overrides
    (``--network_def#dims "[8, 16, 32, 64]" ...``), the trained input size as ``--<size_setting>`` (the 2D bundles'
    ``image_size``, the CT bundle's window ``roi_size``); empty if the file cannot be read."""
    import json

    from vmunet_monai.engine.handlers import read_network_settings, trained_input_size

    saved = read_network_settings(weights)
    if saved is None:
        return ""
    parts = [f"--network_def#{key} {json.dumps(value)!r}" if isinstance(value, (list, dict, str)) else
             f"--network_def#{key} {json.dumps(value)}" for key, value in saved.items()
             if not key.startswith("_") and key not in ("in_channels", "out_channels", "spatial_dims")]
    size = trained_input_size(weights, saved)
    if size:
        parts.append(f"--{size_setting} {json.dumps(size)!r}")
    return " ".join(parts)


def check_checkpoint_fits(network: nn.Module, checkpoint, built_from_record: bool = False,
                          size_setting: str = "image_size") -> dict[str, torch.Tensor]:
    """Check that ``checkpoint`` is a state dict of exactly this network (same keys, same shapes).

    Used before inference, so that a checkpoint of another bundle, another network size or an
    official release fails with one line naming the file and the first differences, instead of a
    size-mismatch error from inside ``load_state_dict``.

    Args:
        network: the network the checkpoint must fit (a ``DistributedDataParallel`` wrapper is looked through).
        checkpoint: a path or a mapping, as :func:`read_checkpoint` accepts (``{"model": ...}`` is unwrapped).
        built_from_record: the network was built with the settings of the ``network.json`` beside the weights (as
            ``predict`` and ``export`` build it); else (a ``monai.bundle run``) a mismatch names the settings that
            file records, to give as overrides.
        size_setting: the bundle's setting of the trained input size, named among those overrides.

    Returns:
        the flat state dict.

    Raises:
        CheckpointError: for an unreadable checkpoint or one that does not fit.
    """
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "<state dict>"
    state = read_checkpoint(checkpoint)
    module = getattr(network, "module", network)
    target = module.state_dict()
    try:
        own = _network_kind(module)
    except TypeError:  # a baseline (MONAI's UNet, SwinUNETR)
        own = None
    kind = detect_checkpoint_kind(state)
    unused = _official_v2_unused(state, target) if own == kind == "vmunet_v2" else None
    if unused is not None:
        # the official VM-UNetV2's names: its encoder under vmunet., and tensors it builds but never uses
        state = {("encoder." + k[len("vmunet."):] if k.startswith("vmunet.") else k): v for k, v in state.items()
                 if not unused.match(k)}
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in target
              if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the network's keys missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unknown keys (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} shapes differ (e.g. {shapes[0]}: checkpoint vs network)")
        hint = _other_network_hint(kind, own)
        record = (Path(checkpoint).parent / "network.json") if isinstance(checkpoint, (str, os.PathLike)) else None
        beside_record = record is not None and record.is_file()
        if kind == own and (missing or unexpected or shapes):  # this network's own kind, of another size
            settings = "depths, dims, d_state or deep_supervision" if kind == "vmunet_v2" else "depths, dims or d_state"
            hint = (f"; it is a {_NAMES.get(kind, kind)} of other settings ({settings}): build the "
                    "network with the settings it was trained with (the network_def overrides of its training: give "
                    "them to monai.bundle run; predict and export take them from the network.json a training "
                    "writes beside its weights" + ("" if beside_record else ", so copy that file with them") +
                    (", or python -m vmunet_monai copy_bundle BUNDLE OUT --checkpoint WEIGHTS writes a bundle set up "
                     "for them, which runs them with no option" if beside_record else
                     ", or write them into network_def in a copy of the bundle's configs/train.json and "
                     "inference.json and give that copy as BUNDLE") + ")")
        if beside_record and built_from_record:  # the settings predict and export built the network with
            hint += (f"; the network was built with the settings of {record} beside the weights, so if another "
                     f"training left that file there, these weights are not of it: move it away")
        elif beside_record and kind == own:
            recorded = _recorded_overrides(checkpoint, size_setting)
            if recorded:
                hint = (f"; {record} beside the weights records the settings they were trained with: give them to "
                        f"monai.bundle run as overrides ({recorded}); predict and export read that file themselves")
        outputs = {(state[k].shape[0], target[k].shape[0]) for k in target
                   if k in state and tuple(state[k].shape) != tuple(target[k].shape)}
        if shapes and not missing and not unexpected and len(outputs) == 1:
            from vmunet_monai.engine.utils import classes_of_outputs

            trained_outputs, own_outputs = outputs.pop()
            trained, here = classes_of_outputs(trained_outputs), classes_of_outputs(own_outputs)
            if trained == here:  # 1 and 2 channels: a 2D bundle's binary head against one channel per class
                hint = (f"; its output layer gives {trained_outputs} channel(s) where this network gives "
                        f"{own_outputs}, both for {trained} classes: one channel is the 2D bundles' binary head "
                        f"(sigmoid), one channel per class the CT bundle's (softmax), so the weights are of another "
                        f"bundle's network: give the bundle they were trained in")
            elif all(tuple(state[k].shape[1:]) == tuple(target[k].shape[1:]) for k in target
                     if k in state and tuple(state[k].shape) != tuple(target[k].shape)):
                hint = (f"; its output layer has {trained} classes against {here} here: it was trained with "
                        f"--num_classes {trained}, so give the same --num_classes, or "
                        + ("write a bundle set up for them with python -m vmunet_monai copy_bundle BUNDLE OUT "
                           "--checkpoint WEIGHTS" if beside_record else "set num_classes in a copy of the bundle's "
                           "configs"))
        raise CheckpointError(
            f"{source}: does not fit this {type(module).__name__} ({'; '.join(parts)}) (the checkpoint must be a "
            f"state dict of the bundle's network_def, such as the models/model.pt its training wrote{hint})"
        )
    return state
