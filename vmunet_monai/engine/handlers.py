"""Ignite handlers for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` used by the bundles.

Each handler has ``attach(engine)``, so a config lists it in ``train#handlers`` or
``validate#handlers`` like MONAI's own handlers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events

from vmunet_monai.evaluation.binary import format_summary, make_record, write_report

__all__ = [
    "TqdmProgressBar",
    "TrainingCheckpoint",
    "BinarySegmentationReport",
    "OverlayWriter",
    "item_name",
    "item_source_path",
]

logger = logging.getLogger(__name__)


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


class TqdmProgressBar:
    """A tqdm progress bar over each epoch's iterations, showing the loss when the engine has one.

    Args:
        desc: text before the bar (ignite adds the epoch counter).
        loss_key: key of the loss in the engine output (MONAI trainers use ``"loss"``); ignored when absent.
        persist: keep finished bars on screen.
        rank0_only: in a distributed run, draw only on rank 0.
    """

    def __init__(self, desc: str = "", loss_key: str = "loss", persist: bool = False, rank0_only: bool = True) -> None:
        self.desc, self.loss_key, self.persist, self.rank0_only = desc, loss_key, persist, rank0_only

    def _loss(self, output):
        first = output[0] if isinstance(output, (list, tuple)) and output else output
        if isinstance(first, dict) and self.loss_key in first:
            value = first[self.loss_key]
            return {self.loss_key: float(value.item() if isinstance(value, torch.Tensor) else value)}
        return {}

    def attach(self, engine: Engine) -> None:
        if self.rank0_only and _rank() != 0:
            return
        from ignite.handlers import ProgressBar

        bar = ProgressBar(persist=self.persist, desc=self.desc, bar_format=None)
        bar.attach(engine, output_transform=self._loss)


class TrainingCheckpoint:
    """Keep one ``checkpoint_latest.pt`` with everything needed to resume (network, optimizer, scheduler
    and the trainer's epoch/iteration counters), and resume from such a file when asked.

    MONAI's ``CheckpointSaver`` cannot take the trainer into its ``save_dict`` from a config (the trainer
    holds its handlers, so the reference would be circular); this handler adds the engine it is
    attached to. The best model by the validation key metric is saved separately (``CheckpointSaver``
    on the evaluator writes ``model.pt``).

    Args:
        save_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict`` (e.g. ``{"model": ..., "optimizer": ...}``).
        filename: checkpoint file name.
        resume_from: a checkpoint written by this handler to restore when training starts; the run
            continues at the saved epoch up to the configured ``max_epochs``.
        map_location: device for the loaded tensors.
        save_interval: save every this many epochs (the last epoch is always saved).
    """

    def __init__(self, save_dir: str, save_dict: dict, filename: str = "checkpoint_latest.pt",
                 resume_from: str | None = None, map_location=None, save_interval: int = 1) -> None:
        self.save_dir, self.save_dict, self.filename = save_dir, dict(save_dict), filename
        self.resume_from = None if resume_from in (None, "", "None") else resume_from
        self.map_location, self.save_interval = map_location, max(1, int(save_interval))

    def _objects(self, engine: Engine) -> dict:
        objects = {}
        for key, obj in self.save_dict.items():
            objects[key] = obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj
        objects["trainer"] = engine
        return objects

    def attach(self, engine: Engine) -> None:
        if self.resume_from is not None:
            engine.add_event_handler(Events.STARTED, self._resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)

    def _resume(self, engine: Engine) -> None:
        from ignite.handlers import Checkpoint

        path = Path(self.resume_from)
        if not path.is_file():
            raise FileNotFoundError(f"resume_checkpoint {path}: no such file")
        max_epochs = engine.state.max_epochs
        state = torch.load(path, map_location=self.map_location, weights_only=True)
        missing = [k for k in self._objects(engine) if k not in state]
        if missing:
            raise KeyError(f"{path}: not a TrainingCheckpoint file (no {missing}); it has {sorted(state)}")
        Checkpoint.load_objects(self._objects(engine), state)
        if engine.state.epoch >= max_epochs:
            raise ValueError(f"{path} ended at epoch {engine.state.epoch}; set epochs above it to continue")
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d of %d", path, engine.state.epoch, max_epochs)

    def _save(self, engine: Engine) -> None:
        last = engine.state.epoch >= (engine.state.max_epochs or 0)
        if _rank() != 0 or (engine.state.epoch % self.save_interval and not last):
            return
        target = Path(self.save_dir) / self.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.state_dict() for k, v in self._objects(engine).items()}
        tmp = target.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, target)  # never leave a half-written file behind


class BinarySegmentationReport:
    """Collect per-image confusion counts during an evaluation and write the report when it completes.

    Writes ``<prefix>_per_image.csv``, ``<prefix>_summary.json`` and ``<prefix>.png`` under
    ``output_dir`` (see :mod:`vmunet_monai.evaluation.binary`): the paper-compatible pooled metrics
    and per-image Dice/IoU mean ± sd, overall and for each group (e.g. each polyp test set, taken from
    the datalist item's ``group_key`` field). It also stores the summary in
    ``engine.state.metrics["pooled_dsc"]`` and ``["image_dice_mean"]`` for other handlers.

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
    """

    def __init__(self, output_dir: str, pred_key: str = "pred", label_key: str = "label", name_key: str = "name",
                 group_key: str = "dataset", threshold: float = 0.5, prefix: str = "metrics", title: str = "",
                 print_summary: bool = True) -> None:
        self.output_dir, self.pred_key, self.label_key = output_dir, pred_key, label_key
        self.name_key, self.group_key, self.threshold = name_key, group_key, threshold
        self.prefix, self.title, self.print_summary = prefix, title, print_summary
        self.records: list[dict] = []
        self.paths: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.records = []

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
            self.records.append(
                make_record(item_name(item, self.name_key), out[self.pred_key], out[self.label_key],
                            group=group if group is not None else "all", threshold=self.threshold)
            )

    def _write(self, engine: Engine) -> None:
        if _rank() != 0 or not self.records:
            return
        self.paths = write_report(self.records, self.output_dir, prefix=self.prefix, title=self.title)
        summary = self.paths["summary"]
        engine.state.metrics["pooled_dsc"] = summary["overall"]["pooled"]["dsc"]
        engine.state.metrics["pooled_miou"] = summary["overall"]["pooled"]["miou"]
        engine.state.metrics["image_dice_mean"] = summary["overall"]["per_image"]["dice_mean"]
        if self.print_summary:
            print(format_summary(summary), flush=True)
            print(f"report: {self.paths['csv']}, {self.paths['json']}, {self.paths.get('plot', '')}", flush=True)


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
    """

    def __init__(self, output_dir: str, data_root_dir: str = "", pred_key: str = "pred", image_key: str = "image",
                 color: Sequence[int] = (0, 255, 0), alpha: float = 0.35, pil_reverse_indexing: bool = True) -> None:
        self.output_dir, self.data_root_dir = output_dir, data_root_dir
        self.pred_key, self.image_key = pred_key, image_key
        self.color = np.asarray(color, dtype=np.float32)
        self.alpha, self.pil_reverse_indexing = alpha, pil_reverse_indexing
        self.written: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write)

    def _target(self, source: str) -> Path:
        src = Path(os.path.abspath(source))
        rel = Path(src.name)
        if self.data_root_dir:
            try:
                rel = src.relative_to(os.path.abspath(self.data_root_dir))
            except ValueError:
                pass
        return Path(self.output_dir) / rel.parent / f"{src.stem}_overlay.png"

    def _write(self, engine: Engine) -> None:
        from PIL import Image
        from scipy.ndimage import binary_erosion

        batch = engine.state.batch
        for i, out in enumerate(engine.state.output):
            item = batch[i] if isinstance(batch, (list, tuple)) else out
            source = item_source_path(item, self.image_key) or item_source_path(out, self.image_key)
            if source is None:
                raise ValueError("OverlayWriter: the item carries no source file name (load images with LoadImaged)")
            mask = out[self.pred_key]
            mask = (mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)) > 0.5
            mask = mask.reshape(mask.shape[-2:]) if mask.ndim > 2 else mask
            image = np.asarray(Image.open(source).convert("RGB"), dtype=np.float32)
            if self.pil_reverse_indexing:
                mask = mask.T
            if mask.shape != image.shape[:2]:
                raise ValueError(
                    f"{source}: mask {mask.shape} does not match image {image.shape[:2]}; invert the resizing first"
                )
            edge = mask & ~binary_erosion(mask, iterations=max(1, min(mask.shape) // 200))
            blended = image.copy()
            blended[mask] = (1 - self.alpha) * image[mask] + self.alpha * self.color
            blended[edge] = self.color
            target = self._target(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(target)
            self.written.append(str(target))
