"""Helpers shared by the networks: input checks, padding to the network's stride, official init."""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import trunc_normal_

from vmunet_monai.layers.factory import mixer_class

__all__ = ["check_channels", "check_dims", "check_whole", "check_rate", "check_flag", "prepare_input", "crop_output",
           "init_linear_and_norm", "mixer_options", "drop_path_rates", "records_settings", "RUNTIME_OPTIONS",
           "RefusesForeignWeights"]

# how a network runs on a given machine, not what its weights are: left out of its recorded settings
RUNTIME_OPTIONS = ("scan_backend", "recompute")


def _plain(value):
    """``value`` as JSON writes it back: tuples as lists, NumPy arrays and tensors as (nested) lists of Python
    numbers, NumPy numbers and one-element tensors of no dimensions as Python numbers."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bytes)):
        return value
    if hasattr(value, "tolist"):  # an array or tensor of any rank; a NumPy number gives its Python number
        return value.tolist()
    return value.item() if hasattr(value, "item") else value


def records_settings(init):
    """Decorator for a network's ``__init__``: after it ran, ``network.settings`` holds the arguments the network
    was built with (defaults filled in, :data:`RUNTIME_OPTIONS` left out), with its ``_target_``: a ``network_def``
    that builds the same network. Training writes it beside the weights (``network.json``), so ``predict`` and
    ``export`` build a network trained with other settings as it was trained."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        cls = type(self)
        public = "vmunet_monai.networks" if cls.__module__.startswith("vmunet_monai.networks") else cls.__module__
        self.settings = {"_target_": f"{public}.{cls.__qualname__}",
                         **{k: _plain(v) for k, v in list(bound.arguments.items())[1:] if k not in RUNTIME_OPTIONS}}

    return wrapper


def check_whole(name: str, what: str, value, least: int = 1) -> int:
    """``value`` as an int: a whole number (an int, a NumPy integer or a float such as 8.0) of at least ``least``.
    ``ValueError`` naming ``name`` (the class), ``what`` (the parameter) and the value otherwise."""
    whole = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, (bool, np.bool_)) or not whole:
        raise ValueError(f"{name} {what}={value!r} must be a whole number")
    if int(value) < least:
        raise ValueError(f"{name} {what}={value} must be at least {least}")
    return int(value)


def check_rate(name: str, what: str, value) -> float:
    """``value`` as a float: a rate (dropout, stochastic depth) from 0 up to but not including 1.
    ``ValueError`` naming ``name`` (the class), ``what`` (the parameter) and the value otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} {what}={value!r}: a rate from 0 up to but not including 1")
    return float(value)


def check_flag(name: str, what: str, value) -> bool:
    """``value`` as a bool: True or False (a NumPy bool too). Anything else, such as the string "no" (which
    ``bool()`` would take as True), is a ``ValueError`` naming ``name`` (the class), ``what`` and the value."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} {what}={value!r} must be True or False")
    return bool(value)


def check_channels(name: str, in_channels: int, out_channels: int) -> None:
    """Image channels in and classes out: at least 1 each."""
    check_whole(name, "in_channels", in_channels)
    check_whole(name, "out_channels", out_channels)


def _whole_numbers(value) -> tuple[int, ...] | None:
    """``value`` as a tuple of ints where it is a sequence of whole numbers (8 and 8.0, not 8.5 or True), else
    None."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return None
    # a tensor's or array's elements are numbers of no dimensions
    items = [v.item() if getattr(v, "ndim", None) == 0 and hasattr(v, "item") else v for v in value]
    if not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and float(v).is_integer()
               for v in items):
        return None
    return tuple(int(v) for v in items)


def check_dims(dims: Sequence[int], depths: Sequence[int], name: str = "depths") -> tuple[int, ...]:
    whole = _whole_numbers(dims)
    if whole is None or len(whole) != 4:
        raise ValueError(f"dims must list 4 stage widths, whole numbers, got {dims!r}")
    dims = whole
    for a, b in zip(dims, dims[1:]):
        if b != 2 * a:
            raise ValueError(f"dims must double from stage to stage (patch merging does), got {dims}")
    if dims[0] < 4:  # VM-UNet's last 4x expansion gives each pixel dims[0] // 4 channels
        raise ValueError(f"dims[0]={dims[0]} must be at least 4, got {dims}")
    counts = _whole_numbers(depths)
    if counts is None or len(counts) != 4 or any(d < 0 for d in counts):
        raise ValueError(f"{name} must list 4 block counts, whole numbers >= 0, got {depths!r}")
    return dims


class RefusesForeignWeights(nn.Module):
    """Base of the networks: ``load_state_dict(strict=False)`` of a state dict none of whose tensors is one of the
    network's (another network's weights, another bundle's ``model.pt``) raises, naming what it holds, instead of
    loading nothing and leaving the network at its random start without a word. MONAI Label loads a bundle's
    ``model.pt`` so (strict=False), and would serve masks of a random network. A load that fits in part (a
    pretrained encoder, another output layer) goes on as torch does it."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if not strict and len(state_dict):
            own = self.state_dict()
            if not any(key in own for key in state_dict):
                from vmunet_monai.weights import CheckpointError, other_network_hint

                given, mine = next(iter(state_dict)), next(iter(own), None)
                prefix = next((p for p in ("module.", "_orig_mod.", "model.", "network.")
                               if any(k[len(p):] in own for k in state_dict if k.startswith(p))), None)
                hint = (f"; its keys carry the prefix {prefix!r} (of a wrapper: DataParallel, torch.compile): save "
                        f"the network's own state dict, as `python -m vmunet_monai package` writes the weights"
                        if prefix else other_network_hint(state_dict, self))
                raise CheckpointError(
                    f"none of the {len(state_dict)} tensors given (e.g. {given!r}) is one of this "
                    f"{type(self).__name__}'s (e.g. {mine!r}), so a load with strict=False (as MONAI Label loads a "
                    f"bundle's model.pt) would leave the network at its random start{hint}")
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as exc:
            classes = self._other_classes(state_dict)
            if classes is None:
                raise
            from vmunet_monai.weights import OtherClassesError

            trained, here = classes
            raise OtherClassesError(
                f"the weights' output layer has {trained} classes against {here} in this {type(self).__name__}: they "
                f"were trained with --num_classes {trained}; give the same num_classes, or write a bundle set up for "
                f"them with python -m vmunet_monai copy_bundle BUNDLE OUT --checkpoint WEIGHTS (MONAI Label and the "
                f"model zoo then take OUT as it is)") from exc

    def _other_classes(self, state_dict) -> tuple[int, int] | None:
        """(trained, here) class counts where the tensors of ``state_dict`` differ from this network's in one pair of
        sizes throughout (the output layers: another number of classes; VM-UNetV2's upsampling of its coarse output
        has them as both its channel sizes); one output channel is the 2D networks' binary head, two classes. None
        for any other difference."""
        own = self.state_dict()
        differ = [k for k in state_dict if k in own and tuple(state_dict[k].shape) != tuple(own[k].shape)]
        if not differ or any(state_dict[k].dim() != own[k].dim() for k in differ):
            return None
        counts = {(int(a), int(b)) for k in differ for a, b in zip(state_dict[k].shape, own[k].shape) if a != b}
        if len(counts) != 1:
            return None
        from vmunet_monai.engine.utils import classes_of_outputs

        trained, here = counts.pop()
        return classes_of_outputs(trained), classes_of_outputs(here)

    def __prepare_scriptable__(self):
        """``torch.jit.script`` (MONAI's ``ckpt_export`` without ``--use_trace``) cannot compile these networks (their
        scan backends and recomputation are Python); they export by tracing. Said here, before the compiler's
        "Lambda aren't supported" from deep inside a block."""
        raise TypeError(f"{type(self).__name__} exports by tracing, not by torch.jit.script: give MONAI's ckpt_export "
                        f"--use_trace True (the input size from metadata.json, or --input_shape \"[1, C, H, W]\"), or "
                        f"use python -m vmunet_monai export, which traces and checks the export against the network")


def prepare_input(x: torch.Tensor, stem_channels: int, multiple: int, name: str,
                  dtype: torch.dtype | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Check the input, cast a floating-point input to ``dtype`` (the weights'), repeat a 1-channel image to
    a 3-channel stem's channels (a stem of another count takes its own count only), zero-pad H and W to
    ``multiple``."""
    if x.dim() != 4:
        raise ValueError(f"{name} takes (batch, channels, H, W) input, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} takes floating-point images (intensities scaled as in training), got {x.dtype}; "
                         "convert with x.float()")
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    c = x.shape[1]
    if c != stem_channels:
        if c != 1 or stem_channels != 3:  # a grey image into an RGB stem, as the papers fed CT; never one of several
            also = " (or 1 channel, repeated)" if stem_channels == 3 else ""  # modalities into all of them
            raise ValueError(f"{name} was built for {stem_channels}-channel input{also}; "
                             f"got {c} channel{'s' if c != 1 else ''}")
        x = x.expand(-1, stem_channels, -1, -1)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x, (h, w)


def crop_output(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if y.shape[-2:] != size:
        y = y[..., : size[0], : size[1]]
    return y


def init_linear_and_norm(module: nn.Module) -> None:
    """The official ``_init_weights``: Linear ~ trunc_normal(std 0.02) with zero bias; LayerNorm = (1, 0)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def mixer_options(name: str, dropout: float = 0.0, **options) -> dict:
    """The keyword arguments every VSS block passes to its token mixer: ``options`` and, above 0, ``dropout`` on
    the SS2D output (a rate from 0 up to but not including 1; 0 adds no module, so the state dict is the same).

    Checked here for the network ``name``: ``dropout``, ``options["mixer"]`` (a name registered in
    :data:`vmunet_monai.layers.Mixer`) and ``options["recompute"]`` (True or False)."""
    dropout = check_rate(name, "dropout", dropout)
    if "mixer" in options:
        mixer_class(options["mixer"], name)
    if "recompute" in options:
        options["recompute"] = check_flag(name, "recompute", options["recompute"])
    return {**options, **({"dropout": dropout} if dropout else {})}


def drop_path_rates(rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``rate`` over all blocks, split per stage."""
    total = sum(depths)
    flat = torch.linspace(0, rate, total).tolist() if total else []
    out, start = [], 0
    for d in depths:
        out.append(flat[start : start + d])
        start += d
    return out
