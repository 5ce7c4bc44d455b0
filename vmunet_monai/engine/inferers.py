"""Inferers for the bundles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["PlainTensorInferer", "FlipTTAInferer", "EnsembleInferer", "ensemble_members", "checkpoint_list",
           "pass_entropy"]

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


def pass_entropy(p: torch.Tensor, activation: str) -> torch.Tensor:
    """The normalised entropy (0 to 1) of class probabilities ``p`` (batch, channels, ...), one channel: over
    ``log(channels)`` for ``softmax``; for ``sigmoid`` each channel is a class against its absence, and their
    entropies over ``log(2)`` are averaged. The same number that
    :func:`vmunet_monai.evaluation.uncertainty.normalized_entropy` gives a probability map."""
    if activation == "softmax":
        if p.shape[1] < 2:
            raise ValueError(f"pass_entropy: {p.shape[1]} softmax channel; at least 2 classes are needed")
        return -torch.xlogy(p, p).sum(1, keepdim=True) / math.log(p.shape[1])
    if activation == "sigmoid":
        q = 1 - p
        return -(torch.xlogy(p, p) + torch.xlogy(q, q)).mean(1, keepdim=True) / math.log(2)
    raise ValueError(f"pass_entropy: activation {activation!r} gives no probabilities (sigmoid or softmax)")


def combined(probabilities, activation: str, spread: bool = False) -> torch.Tensor:
    """The logits (:func:`to_logits`) of the mean of ``probabilities``, the class probabilities of one input in
    several passes (mirror images flipped back, or the members of an ensemble), taken one at a time so that
    memory holds two sums, not every pass. With ``spread`` one channel follows the classes: the mean of the passes'
    own entropies (:func:`pass_entropy`); the entropy of the mean less this is where the passes disagree."""
    total = entropy = None
    count = 0
    for p in probabilities:
        total = p if total is None else total + p
        if spread:
            h = pass_entropy(p, activation)
            entropy = h if entropy is None else entropy + h
        count += 1
    logits = to_logits(total / count, activation)
    return torch.cat([logits, (entropy / count).to(logits.dtype)], dim=1) if spread else logits


def passes(inferer: Inferer, inputs: torch.Tensor, network, activation: str, *args: Any, **kwargs: Any):
    """The class probabilities of every pass ``inferer`` makes over ``inputs``, one at a time: its own ``passes``
    where it has them (:class:`FlipTTAInferer`, :class:`EnsembleInferer`), else its one output."""
    if hasattr(inferer, "passes"):
        yield from inferer.passes(inputs, network, *args, **kwargs)
    else:
        yield to_probability(_plain(inferer(inputs, network, *args, **kwargs)), activation)


def _check_spread(owner: str, activation: str, spread: bool) -> bool:
    if spread and activation == "none":
        raise ValueError(f"{owner} spread=True needs probabilities (activation sigmoid or softmax), not 'none'")
    return bool(spread)


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
        spread: append one channel after the classes, the mean of the passes' own entropies
            (:func:`pass_entropy`), for ``predict --uncertainty`` to tell the passes' disagreement from the doubt
            each pass has on its own (the bundles' ``pass_entropy`` option, which splits it off again).

    Raises:
        ValueError: an unknown activation, no flips, a flip axis the input does not have, or ``spread`` without
            probabilities.
    """

    ACTIVATIONS = ACTIVATIONS

    def __init__(self, inferer: Inferer | None = None, activation: str = "sigmoid",
                 flips: Sequence[Sequence[int]] = ((), (0,), (1,), (0, 1)), enabled: bool = True,
                 spread: bool = False) -> None:
        super().__init__()
        _check_activation("FlipTTAInferer", activation)
        self.spread = _check_spread("FlipTTAInferer", activation, spread)
        self.flips = [tuple(int(a) for a in f) for f in flips]
        if not self.flips:
            raise ValueError("FlipTTAInferer needs at least one entry in flips ([] is the image itself)")
        self.inferer = inferer if inferer is not None else PlainTensorInferer()
        self.activation, self.enabled = activation, bool(enabled)

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        if not self.enabled and not self.spread:
            return self.inferer(inputs, network, *args, **kwargs)
        return combined(self.passes(inputs, network, *args, **kwargs), self.activation, self.spread)

    def passes(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        """The class probabilities of each flip, flipped back, one at a time (the image alone when disabled)."""
        if not self.enabled:
            yield from passes(self.inferer, inputs, network, self.activation, *args, **kwargs)
            return
        spatial = inputs.ndim - 2
        for axes in self.flips:
            if any(a < 0 or a >= spatial for a in axes):
                raise ValueError(f"FlipTTAInferer flip axes {list(axes)}: the input has spatial axes 0 to {spatial - 1}")
        for axes in self.flips:
            dims = [2 + a for a in axes]
            out = _plain(self.inferer(torch.flip(inputs, dims) if dims else inputs, network, *args, **kwargs))
            yield to_probability(torch.flip(out, dims) if dims else out, self.activation)


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
        spread: append the mean of the passes' own entropies as one channel after the classes, as
            :class:`FlipTTAInferer` does; the passes are every member's, and with a :class:`FlipTTAInferer` inside,
            every flip of every member.

    Raises:
        ValueError: an unknown activation, or ``spread`` without probabilities.
    """

    def __init__(self, inferer: Inferer | None = None, members: Sequence[torch.nn.Module] = (),
                 activation: str | None = None, spread: bool = False) -> None:
        super().__init__()
        self.inferer = inferer if inferer is not None else PlainTensorInferer()
        self.activation = activation or getattr(self.inferer, "activation", "sigmoid")
        _check_activation("EnsembleInferer", self.activation)
        self.spread = _check_spread("EnsembleInferer", self.activation, spread)
        self.members = list(members)

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        if not self.members and not self.spread:
            return self.inferer(inputs, network, *args, **kwargs)
        return combined(self.passes(inputs, network, *args, **kwargs), self.activation, self.spread)

    def passes(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any):
        """The class probabilities of every pass of every member (the evaluator's network first), one at a time."""
        for member in self.members:
            member.train(network.training)
        for net in [network, *self.members]:
            yield from passes(self.inferer, inputs, net, self.activation, *args, **kwargs)


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
    _members_agree(paths, option)
    return paths


def _members_agree(paths: Sequence[str], option: str) -> None:
    """The members of an ensemble were trained on one image scale (else an ``InputError``: one scale feeds them
    all) and, as far as their ``network.json`` records say, at one input size (else a warning: every member runs at
    the size the first was trained at)."""
    import logging

    from vmunet_monai.engine.handlers import read_network_settings, trained_input_size, trained_intensity_max
    from vmunet_monai.validation import InputError

    sizes, scales = {}, {}
    for path in paths:
        saved = read_network_settings(path)
        if saved is None:
            continue
        size, scale = trained_input_size(path, saved), trained_intensity_max(path, saved)
        if size:
            sizes[path] = "x".join(map(str, size))
        if scale is not None:
            scales[path] = scale
    if len(set(scales.values())) > 1:
        listed = ", ".join(f"{p}: 0-{v:g}" for p, v in scales.items())
        raise InputError(f"{option}: the members were trained on images of different scales ({listed}); one scale "
                         f"feeds them all, so some would see inputs they never saw: give members of one scale (weights "
                         f"trained before bundle 0.1.17 saw 0-1)")
    if len(set(sizes.values())) > 1:
        first = sizes.get(paths[0], "the bundle's input size")
        logging.getLogger(__name__).warning(
            "%s: the members were trained at different input sizes (%s); every member runs at %s, so the others see "
            "images at a size they were not trained at: train the members at one size", option,
            ", ".join(f"{p}: {v}" for p, v in sizes.items()), first)
