"""Evaluation protocols: binary (ISIC, polyp) pooled and per-image metrics; CT metrics live in ``ct``, cine-MRI
clinical indices in ``cardiac``, the PraNet lineage's polyp metrics in ``pranet``, object-level scores in
``objects``; the pictures of the worst cases in ``gallery``; scoring files on disk in ``score``; comparisons of
several models' evaluations in ``compare``."""

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
