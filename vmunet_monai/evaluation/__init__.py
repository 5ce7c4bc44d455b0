"""Evaluation protocols: binary (ISIC, polyp) pooled and per-image metrics; CT metrics live in ``ct``;
comparisons of several models' evaluations in ``compare``."""

from vmunet_monai.evaluation.binary import (
    PER_IMAGE_LABEL,
    POOLED_LABEL,
    confusion_counts,
    format_summary,
    image_dice_iou,
    make_record,
    pooled_metrics,
    summarize,
    write_report,
)

__all__ = [
    "PER_IMAGE_LABEL",
    "POOLED_LABEL",
    "confusion_counts",
    "format_summary",
    "image_dice_iou",
    "make_record",
    "pooled_metrics",
    "summarize",
    "write_report",
]
