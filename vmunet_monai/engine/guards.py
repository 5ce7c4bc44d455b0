"""Guards for training runs: no silent NaN, no unchecked input, reproducible when asked.

- :class:`NonFiniteLossGuard` (a trainer handler): a NaN or Inf loss stops training with the epoch,
  the iteration and the files of the batch, or (``mode="skip"``) skips that optimiser step.
- :class:`ValidateInputd` (a dictionary transform placed right after loading): the file-level rules of
  :mod:`vmunet_monai.validation` on the loaded arrays: finite image, expected dimensions and channels,
  image and label of one size, label values within the classes.
- :func:`set_determinism`: seeds everything and, in deterministic mode, turns on
  ``torch.use_deterministic_algorithms`` (which also restricts the automatic scan backend choice
  to backends without atomic adds, see :data:`vmunet_monai.ops.dispatch.DETERMINISTIC_BACKENDS`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine
from monai.config import KeysCollection
from monai.transforms import MapTransform

from vmunet_monai.validation import (check_binary_mask, check_finite, check_label_values, check_same_grid,
                                     input_error)

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard", "ValidateInputd", "set_determinism", "batch_files"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or Inf loss (the message names the epoch, the iteration and the batch's files)."""


def batch_files(batch, key: str = "image", limit: int = 4) -> str:
    """The source files of a collated batch, as ``a.png, b.png, ... (+3)``; ``"unknown files"`` if not recorded."""
    names = []
    value = batch.get(key) if isinstance(batch, Mapping) else None
    meta = getattr(value, "meta", None)
    if meta and "filename_or_obj" in meta:
        files = meta["filename_or_obj"]
        names = [str(f) for f in (files if isinstance(files, (list, tuple)) else [files])]
    if not names:
        return "unknown files"
    names = [os.path.basename(n) for n in names]
    more = f" (+{len(names) - limit})" if len(names) > limit else ""
    return ", ".join(dict.fromkeys(names[:limit])) + more


class NonFiniteLossGuard:
    """Never train on a NaN or Inf loss.

    Attached to a MONAI ``SupervisedTrainer``, it looks at every loss after the forward pass
    (``IterationEvents.LOSS_COMPLETED``), before any gradient reaches the weights.

    Args:
        mode: ``"stop"``: raise :class:`NonFiniteLossError` naming the epoch, the iteration and the
            batch's files; ``"skip"``: leave the weights and the optimiser state untouched for that
            step (gradients are dropped; under AMP the gradient scaler skips the step and lowers its
            scale) and log a warning with the same details.
        max_consecutive_skips: in skip mode, stop anyway after this many non-finite losses in a row
            (the weights themselves have probably become non-finite).
        image_key: batch key whose metadata names the files.
    """

    def __init__(self, mode: str = "stop", max_consecutive_skips: int = 20, image_key: str = "image") -> None:
        if mode not in ("stop", "skip"):
            raise ValueError(f"nonfinite_loss must be 'stop' or 'skip', got {mode!r}")
        self.mode, self.max_consecutive_skips, self.image_key = mode, int(max_consecutive_skips), image_key
        self.skipped: list[tuple[int, int]] = []  # (epoch, iteration) of every skipped step
        self._consecutive = 0
        self._skip_step = False

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._check_loss)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._drop_gradients)

    def _message(self, engine: Engine, loss: torch.Tensor, local: bool = True) -> str:
        what = (f"non-finite training loss ({float(loss.detach().float().cpu())})" if local
                else "non-finite training loss in another process")
        return (f"{what} at epoch {engine.state.epoch}, iteration {engine.state.iteration} "
                f"(batch: {batch_files(engine.state.batch, self.image_key)})")

    def _check_loss(self, engine: Engine) -> None:
        from monai.utils import CommonKeys

        loss = engine.state.output[CommonKeys.LOSS]
        local_bad = not bool(torch.isfinite(loss.detach()).all())
        bad = local_bad
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # the gradients are averaged across processes, so every process must stop or skip together
            flag = torch.tensor([1.0 if local_bad else 0.0], device=loss.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = bool(flag.item() > 0)
        if not bad:
            self._consecutive = 0
            return
        message = self._message(engine, loss, local=local_bad)
        if self.mode == "stop":
            raise NonFiniteLossError(f"{message}; training stopped before the weights were updated. Check the "
                                     "inputs and the learning rate, or pass --nonfinite_loss skip to skip such steps")
        self._consecutive += 1
        if self._consecutive > self.max_consecutive_skips:
            raise NonFiniteLossError(f"{message}; {self._consecutive} non-finite losses in a row, training stopped "
                                     "(the weights are probably no longer finite)")
        logger.warning("%s; step skipped (nonfinite_loss=skip)", message)
        self.skipped.append((engine.state.epoch, engine.state.iteration))
        self._skip_step = True  # the gradients of this loss are dropped before the optimiser step

    def _drop_gradients(self, engine: Engine) -> None:
        if not self._skip_step:
            return
        self._skip_step = False
        scaler = getattr(engine, "scaler", None)
        for group in engine.optimizer.param_groups:
            for p in group["params"]:
                if scaler is not None and getattr(engine, "amp", False):
                    # the scaler must see an inf to skip the step (an empty step would fail its checks)
                    p.grad = torch.full_like(p, float("inf"))
                else:
                    p.grad = None  # optimisers leave parameters without a gradient untouched


class ValidateInputd(MapTransform):
    """Check freshly loaded images and labels; raise :class:`~vmunet_monai.validation.InputError`
    naming the file, the value and the rule.

    Place it right after ``LoadImaged`` / ``EnsureChannelFirstd`` (channel-first arrays).

    Args:
        keys: the image key first, then the label key (if any).
        spatial_dims: 2 for the 2D bundles, 3 for CT volumes.
        channels: accepted image channel counts.
        num_classes: label values must be integers ``0 .. num_classes - 1``; ``None`` for binary
            masks (0/1 or 0/255, see :func:`~vmunet_monai.validation.check_binary_mask`).
        allow_missing_keys: a missing label is not an error (inference).
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int = 2, channels: Sequence[int] = (1, 3),
                 num_classes: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims, self.channels, self.num_classes = int(spatial_dims), tuple(channels), num_classes

    @staticmethod
    def _source(value, fallback: str) -> str:
        meta = getattr(value, "meta", None)
        return str(meta.get("filename_or_obj", fallback)) if meta else fallback

    def _check_dims(self, array, path: str, what: str) -> None:
        kind = {2: "2D image", 3: "3D volume"}[self.spatial_dims]
        found = array.ndim - 1
        if found != self.spatial_dims:
            raise input_error(path, f"the {what} has {found} spatial dimensions (shape {tuple(array.shape[1:])})",
                              f"this bundle takes a {kind} per file")

    @staticmethod
    def _check_same_grid(image, image_path: str, label, label_path: str) -> None:
        """Refuse a label whose voxel-to-world matrix is not its image's: the evaluation scores the label's voxels
        against the prediction on the image's grid (a label saved in another voxel order, or whose header an
        annotation tool dropped, scored wrong numbers without a word), and a training read them misplaced."""
        ours, theirs = (getattr(v, "affine", None) for v in (image, label))
        if ours is None or theirs is None or tuple(ours.shape) != (4, 4) or tuple(theirs.shape) != (4, 4):
            return
        check_same_grid(image_path, _numpy(ours), label_path, _numpy(theirs), "; prepare puts a label stored in "
                        "another voxel order on its image's grid and names the others")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        image_key = self.keys[0]
        image_path = None
        if image_key in d:
            image = d[image_key]
            image_path = self._source(image, str(image_key))
            self._check_dims(image, image_path, "image")
            if int(image.shape[0]) not in self.channels:
                raise input_error(image_path, f"the image has {int(image.shape[0])} channels",
                                  f"this bundle takes {' or '.join(str(c) for c in self.channels)}-channel images")
            check_finite(_numpy(image), image_path)
        for key in self.keys[1:]:
            if key not in d:
                continue
            label = d[key]
            label_path = self._source(label, str(key))
            self._check_dims(label, label_path, "label")
            if int(label.shape[0]) != 1:
                raise input_error(label_path, f"the label has {int(label.shape[0])} channels", "one label channel")
            if image_path is not None and tuple(label.shape[1:]) != tuple(d[image_key].shape[1:]):
                size = lambda s: "x".join(str(int(v)) for v in s)  # noqa: E731
                raise input_error(label_path, f"the label is {size(label.shape[1:])} but its image {image_path} is "
                                  f"{size(d[image_key].shape[1:])}", "an image and its label must have the same size")
            if image_path is not None and self.spatial_dims == 3:
                self._check_same_grid(d[image_key], image_path, label, label_path)
            values = _numpy(label)
            if self.num_classes is None:
                check_binary_mask(values, label_path)
            else:
                check_label_values(values, label_path, int(self.num_classes))
        return d


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def set_determinism(seed: int | None = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy, torch and MONAI's transforms; in deterministic mode also make every kernel deterministic.

    Deterministic mode turns on ``torch.use_deterministic_algorithms(True, warn_only=True)`` (an op
    without a deterministic implementation warns instead of failing), sets
    ``CUBLAS_WORKSPACE_CONFIG`` for cuBLAS when it is unset, and thereby makes the automatic scan
    backend skip the CUDA kernels that sum gradients with atomic adds (triton, mamba_ssm: the
    ``torch`` backend runs instead, slower) and run the CPU kernel on one thread. Two runs with the
    same seed, data and configuration on the same machine and software then give bit-identical weights.

    Args:
        seed: the seed (``None``: leave the generators unseeded).
        deterministic: deterministic mode (``--determinism true`` on the bundle command).
    """
    from monai.utils import set_determinism as monai_set_determinism

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monai_set_determinism(seed=seed)
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    if deterministic:
        logger.info("deterministic mode: seed %s, deterministic algorithms on, scan backends without atomics", seed)
