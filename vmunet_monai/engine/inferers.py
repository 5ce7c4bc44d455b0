"""Inferers for the bundles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["PlainTensorInferer", "FlipTTAInferer", "EnsembleInferer", "ensemble_members", "checkpoint_list"]

ACTIVATIONS = ("sigmoid", "softmax", "none")


def _plain(x):
    return x.as_tensor() if hasattr(x, "as_tensor") else x


def _check_activation(owner: str, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{owner} activation={activation!r}: choose one of {', '.join(ACTIVATIONS)}")


def to_probability(out: torch.Tensor, activation: str) -> torch.Tensor:
    """A network's output as class probabilities in fp32 (``none``: the output itself)."""
    if activation == "sigmoid":
        return torch.sigmoid(out.float())
    if activation == "softmax":
        return torch.softmax(out.float(), dim=1)
    return out.float()


def to_logits(p: torch.Tensor, activation: str) -> torch.Tensor:
    """Logits whose ``activation`` is ``p`` again (``logit(p)`` for sigmoid, ``log(p)`` for softmax), so that a
    bundle's postprocessing turns an average of probabilities back into that average unchanged."""
    if activation == "sigmoid":
        return torch.logit(p, eps=1e-7)
    if activation == "softmax":
        return torch.log(p.clamp_min(1e-12))
    return p


def averaged(outputs, activation: str) -> torch.Tensor:
    """The logits (:func:`to_logits`) of the mean of the probabilities of ``outputs``, network outputs of one
    input taken one at a time (mirror images flipped back, or the members of an ensemble)."""
    total, count = None, 0
    for out in outputs:
        p = to_probability(_plain(out), activation)
        total, count = (p if total is None else total + p), count + 1
    return to_logits(total / count, activation)


class PlainTensorInferer(SimpleInferer):
    """``SimpleInferer`` that hands the network plain ``torch.Tensor`` inputs instead of ``MetaTensor``.

    The network needs no metadata, and a ``MetaTensor`` would carry it through every operation of the
    forward (a measurable cost for small networks on CPU) and into custom autograd kernels, some of
    which accept plain tensors only. Metadata stays on the batch, so ``Invertd`` and the image
    writers still work on the prediction afterwards.
    """

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        return network(_plain(inputs), *args, **kwargs)


class FlipTTAInferer(Inferer):
    """Test-time augmentation by mirroring: the prediction averaged over the image and its in-plane flips.

    Each flip of the input goes through ``inferer`` (e.g. :class:`PlainTensorInferer`, or MONAI's
    ``SliceInferer`` for volumes), its output is flipped back, and the class probabilities are averaged.
    The result is returned as logits of that average (``logit(p)`` for ``sigmoid``, ``log(p)`` for
    ``softmax``), so a bundle's postprocessing (``Activationsd``, threshold or argmax) turns it into the
    averaged probabilities unchanged. Disabled, it is ``inferer`` itself.

    Args:
        inferer: the inferer to run on every flip (default :class:`PlainTensorInferer`).
        activation: ``sigmoid`` (one channel per class, independent), ``softmax`` (channels are classes) or
            ``none`` (average the raw outputs).
        flips: spatial axes to mirror, one entry per pass; ``[]`` is the image itself. The default, the image,
            its vertical and horizontal mirror and both, costs four network passes.
        enabled: ``false`` runs ``inferer`` once, unchanged (the bundles' ``--tta`` option).

    Raises:
        ValueError: an unknown activation, no flips, or a flip axis the input does not have.
    """

    ACTIVATIONS = ACTIVATIONS

    def __init__(self, inferer: Inferer | None = None, activation: str = "sigmoid",
                 flips: Sequence[Sequence[int]] = ((), (0,), (1,), (0, 1)), enabled: bool = True) -> None:
        super().__init__()
        _check_activation("FlipTTAInferer", activation)
        self.flips = [tuple(int(a) for a in f) for f in flips]
        if not self.flips:
            raise ValueError("FlipTTAInferer needs at least one entry in flips ([] is the image itself)")
        self.inferer = inferer if inferer is not None else PlainTensorInferer()
        self.activation, self.enabled = activation, bool(enabled)

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        if not self.enabled:
            return self.inferer(inputs, network, *args, **kwargs)
        spatial = inputs.ndim - 2
        for axes in self.flips:
            if any(a < 0 or a >= spatial for a in axes):
                raise ValueError(f"FlipTTAInferer flip axes {list(axes)}: the input has spatial axes 0 to {spatial - 1}")

        def mirrored():
            for axes in self.flips:
                dims = [2 + a for a in axes]
                out = _plain(self.inferer(torch.flip(inputs, dims) if dims else inputs, network, *args, **kwargs))
                yield torch.flip(out, dims) if dims else out

        return averaged(mirrored(), self.activation)


class EnsembleInferer(Inferer):
    """The prediction averaged over several trained networks of one architecture: the runs of several seeds, or
    the models of several cross-validation folds, used as one model.

    The evaluator's network and each of ``members`` go through ``inferer`` (e.g. a :class:`FlipTTAInferer`,
    so test-time augmentation applies to every member) and their class probabilities are averaged. As with
    :class:`FlipTTAInferer` the result is returned as the logits of that average, so the bundle's
    postprocessing turns it into the averaged probabilities unchanged. The members are put in the evaluator
    network's mode (eval) on every call.

    Args:
        inferer: the inferer each network runs through (default :class:`PlainTensorInferer`).
        members: the further networks (the evaluator's own network is always the first member);
            :func:`ensemble_members` makes them from checkpoints.
        activation: ``sigmoid``, ``softmax`` or ``none``; default: ``inferer``'s own ``activation`` (as a
            :class:`FlipTTAInferer` has), else ``sigmoid``.

    Raises:
        ValueError: an unknown activation.
    """

    def __init__(self, inferer: Inferer | None = None, members: Sequence[torch.nn.Module] = (),
                 activation: str | None = None) -> None:
        super().__init__()
        self.inferer = inferer if inferer is not None else PlainTensorInferer()
        self.activation = activation or getattr(self.inferer, "activation", "sigmoid")
        _check_activation("EnsembleInferer", self.activation)
        self.members = list(members)

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        if not self.members:
            return self.inferer(inputs, network, *args, **kwargs)
        for member in self.members:
            member.train(network.training)
        return averaged((self.inferer(inputs, net, *args, **kwargs) for net in [network, *self.members]),
                        self.activation)


def ensemble_members(network: torch.nn.Module, checkpoints: Sequence[str], device=None) -> list[torch.nn.Module]:
    """Copies of ``network``, one per checkpoint, each holding that checkpoint's weights (in eval mode, on
    ``device`` or on the network's device): the ``members`` of an :class:`EnsembleInferer`.

    Raises:
        vmunet_monai.weights.CheckpointError: a checkpoint that is unreadable or not of this network (named).
    """
    import copy

    from vmunet_monai.weights import check_checkpoint_fits

    base = getattr(network, "module", network)
    members = []
    for path in checkpoints:
        state = check_checkpoint_fits(base, path)
        member = copy.deepcopy(base)
        member.load_state_dict(state)
        if device is not None:
            member.to(device)
        members.append(member.eval())
    return members


def checkpoint_list(value, option: str = "--ensemble_checkpoints") -> list[str]:
    """The weight files of an ensemble as the bundles' ``ensemble_checkpoints`` gives them: a list, or one string
    of paths joined by commas; each must exist (relative paths are taken from the working folder).

    Raises:
        vmunet_monai.validation.InputError: not a list of paths, an empty item, a missing file or one given twice.
    """
    import os

    from vmunet_monai.validation import InputError, comma_list

    if value is None or value == "" or (isinstance(value, (list, tuple)) and not value):
        return []
    if not isinstance(value, (str, list, tuple)):
        raise InputError(f"{option} {value!r}: give the weight files as a list, e.g. \"['fold0/model.pt', "
                         f"'fold1/model.pt']\", or joined by commas")
    items = comma_list(value) if isinstance(value, str) else [str(v).strip() for v in value]
    paths = [os.path.abspath(os.path.expanduser(i)) for i in items if i]
    if len(paths) != len(items):
        raise InputError(f"{option} {value!r}: an empty item (give weight files, e.g. fold0/model.pt,fold1/model.pt)")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise InputError(f"{missing[0]}: no such weight file, listed in {option} (every member of an ensemble is a "
                         f"model.pt that training wrote)")
    twice = next((p for p in paths if paths.count(p) > 1), None)
    if twice:
        raise InputError(f"{option}: {twice} is given twice (an ensemble averages distinct models)")
    return paths
