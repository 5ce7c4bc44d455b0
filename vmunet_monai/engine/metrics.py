"""Validation metrics that score images with an empty label as the bundles' evaluation does.

MONAI's ``MeanDice`` and ``MeanIoUHandler`` leave out an image whose label holds nothing (``ignore_empty=True`` of
``DiceMetric`` and ``MeanIoU``, which these handlers cannot change): a normal scan without a lesion, a polyp-free
frame, an organ absent from a volume. A network that segments something there, a false positive, then scored as
well as one that leaves it empty, and could be kept as the best checkpoint. The handlers here score a false
positive 0, and an empty label with an empty prediction 1 (the 2D evaluation's per-image rule) or, with
``absent_both=nan``, not at all (the CT evaluation's rule for an organ absent from both).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import DiceMetric, MeanIoU
from monai.utils import MetricReduction

__all__ = ["EmptyAwareDice", "EmptyAwareIoU"]


def _absent_from_both(y_pred: torch.Tensor, y: torch.Tensor, include_background: bool) -> torch.Tensor:
    """(batch, classes) True where a class holds no voxel in the label nor in the prediction (both one-hot)."""
    if y_pred.shape != y.shape:
        raise ValueError(f"absent_both=nan needs one-hot predictions and labels of one shape, not "
                         f"{tuple(y_pred.shape)} and {tuple(y.shape)}")
    empty = (y.flatten(2).sum(-1) == 0) & (y_pred.flatten(2).sum(-1) == 0)
    return empty if include_background else empty[:, 1:]


class _Dice(DiceMetric):
    def __init__(self, absent_both: float, **options) -> None:
        super().__init__(ignore_empty=False, **options)
        self.absent_both = float(absent_both)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scores = super()._compute_tensor(y_pred, y)
        if self.absent_both != 1.0:
            absent = _absent_from_both(y_pred, y, self.include_background).to(scores.device)
            scores = torch.where(absent, torch.full_like(scores, self.absent_both), scores)
        return scores


class EmptyAwareDice(IgniteMetricHandler):
    """MONAI's ``MeanDice`` handler (same arguments) with an empty label scored, not left out: 0 for any foreground
    predicted there; ``absent_both`` (1 by default) for an empty prediction, ``nan`` to leave that class out of the
    image's mean as the CT evaluation does (one-hot predictions and labels)."""

    def __init__(self, include_background: bool = True, reduction: MetricReduction | str = MetricReduction.MEAN,
                 num_classes: int | None = None, output_transform: Callable = lambda x: x,
                 save_details: bool = True, absent_both: float = 1.0) -> None:
        if not (math.isnan(float(absent_both)) or float(absent_both) == 1.0):
            raise ValueError(f"absent_both {absent_both!r}: 1 (scored as agreement) or nan (not scored)")
        metric = _Dice(absent_both, include_background=include_background, reduction=reduction,
                       num_classes=num_classes)
        super().__init__(metric_fn=metric, output_transform=output_transform, save_details=save_details)


class EmptyAwareIoU(IgniteMetricHandler):
    """MONAI's ``MeanIoUHandler`` (same arguments) with an empty label scored, not left out: 1 for an empty
    prediction, 0 for any foreground predicted (``MeanIoU(ignore_empty=False)``)."""

    def __init__(self, include_background: bool = True, reduction: MetricReduction | str = MetricReduction.MEAN,
                 output_transform: Callable = lambda x: x, save_details: bool = True) -> None:
        metric = MeanIoU(include_background=include_background, reduction=reduction, ignore_empty=False)
        super().__init__(metric_fn=metric, output_transform=output_transform, save_details=save_details)
