"""The images a 2D model gets most wrong, drawn: ``<prefix>_worst.png`` beside an evaluation's tables.

A table says that a few images score a Dice of 0.3; a picture says why (a missed second lesion, a reflection
taken for a polyp, a label that is itself doubtful). :class:`WorstCases` keeps, while an evaluation runs, the
``k`` images of the lowest per-image Dice (the mean over the classes present in the ground truth or the
prediction; 1 for an image where both are empty), each shrunk to at most 256 pixels a side, so memory stays flat
however many images are scored; perfect images are not kept. :meth:`WorstCases.plot` draws each as two panels:
the ground truth and the prediction, tinted and outlined over the image in the overlays' colours, with the
ground truth's outline in white over the prediction.

The bundles' evaluation (:class:`vmunet_monai.engine.BinarySegmentationReport`) and ``score`` (2D masks) write it.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["CLASS_COLORS", "WorstCases", "class_colors", "image_dice", "tint"]

CLASS_COLORS = ((255, 64, 64), (64, 128, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220), (255, 128, 0),
                (160, 100, 255), (255, 255, 255))  # classes 2, 3, ... of an overlay (class 1 takes its color)


def class_colors(num_classes: int, first: Sequence[int] = (0, 255, 0)) -> list[tuple[int, ...]]:
    """RGB of classes 0 .. ``num_classes - 1`` in overlays and previews: black for background, ``first`` for
    class 1, then :data:`CLASS_COLORS` in turn."""
    rest = [CLASS_COLORS[i % len(CLASS_COLORS)] for i in range(max(num_classes - 2, 0))]
    return [(0, 0, 0), tuple(int(v) for v in first)] + rest


def tint(image: np.ndarray, classes: np.ndarray, num_classes: int = 2, first: Sequence[int] = (0, 255, 0),
         alpha: float = 0.35) -> np.ndarray:
    """``image`` (H, W, 3, 0-255) with each class of ``classes`` (H, W class numbers) tinted by ``alpha`` and
    outlined in its colour (:func:`class_colors`); float, 0-255."""
    from scipy.ndimage import binary_erosion

    image = np.asarray(image, np.float32)
    blended = image.copy()
    colors = class_colors(max(num_classes, 2), tuple(first))
    for c in range(1, max(num_classes, 2)):
        mask = classes == c
        if not mask.any():
            continue
        color = np.asarray(colors[c], np.float32)
        edge = mask & ~binary_erosion(mask, iterations=max(1, min(mask.shape) // 200))
        blended[mask] = (1 - alpha) * image[mask] + alpha * color
        blended[edge] = color
    return blended


def image_dice(truth: np.ndarray, pred: np.ndarray, num_classes: int = 2) -> float:
    """The mean Dice over the classes (background aside) present in ``truth`` or ``pred`` (class-number arrays);
    1.0 where neither holds any."""
    scores = []
    for c in range(1, max(num_classes, 2)):
        t, p = truth == c, pred == c
        total = int(t.sum()) + int(p.sum())
        if total:
            scores.append(2.0 * int((t & p).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


def _display(image: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W), (H, W, C) or (C, H, W) of any range as (shape, 3) uint8 for display; grey where None."""
    from PIL import Image

    if image is None:
        return np.full((*shape, 3), 96, np.uint8)
    a = np.asarray(image, np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # channels first, as the network sees it
    a = a[..., :3] if a.ndim == 3 else a[..., None]
    a = np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a
    low, high = float(np.nanmin(a)), float(np.nanmax(a))
    if low < 0 or high > 255 or high <= 1.0:  # normalised network input: stretched to 0-255
        a = (a - low) / (high - low or 1.0) * 255
    picture = Image.fromarray(np.nan_to_num(a).clip(0, 255).astype(np.uint8))
    return np.asarray(picture.resize((shape[1], shape[0]), Image.BILINEAR))


def _outline(classes: np.ndarray) -> np.ndarray:
    """The one-pixel boundaries between classes of a class-number map."""
    edge = np.zeros(classes.shape, bool)
    edge[1:] |= classes[1:] != classes[:-1]
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    return edge


def _shrink(classes: np.ndarray, side: int) -> np.ndarray:
    """A class-number map shrunk (nearest) so its longer side is at most ``side``."""
    step = max(1, int(np.ceil(max(classes.shape) / side)))
    return classes[::step, ::step]


class WorstCases:
    """The ``k`` images of the lowest per-image Dice seen so far, kept small, for :meth:`plot`.

    Args:
        k: how many to keep (0 keeps none).
        num_classes: classes including background; ``truth`` and ``pred`` hold class numbers.
        side: the longest side each image is kept at.
    """

    def __init__(self, k: int = 8, num_classes: int = 2, side: int = 256) -> None:
        self.k, self.num_classes, self.side = int(k), int(num_classes), int(side)
        self._heap: list = []  # (-dice, order, entry): the best of the kept on top, to be pushed out first
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def offer(self, name: str, truth: np.ndarray, pred: np.ndarray, image=None, group: str | None = None) -> float:
        """Score one image and keep it if it is among the ``k`` worst so far (and not perfect).

        Args:
            name: the image's name, for its panel's title.
            truth, pred: (H, W) class numbers (binary masks: 0/1), in the same orientation.
            image: the image, in that orientation and of any size and range (resized to the masks, stretched to
                0-255 where it is not 0-255 already), or a callable that returns it (only called for a kept
                image); None draws the masks on grey.
            group: the image's test set, shown beside its name.

        Returns:
            the image's Dice (:func:`image_dice`).
        """
        truth, pred = np.asarray(truth), np.asarray(pred)
        dice = image_dice(truth, pred, self.num_classes)
        if self.k <= 0 or dice >= 1.0 or (len(self._heap) >= self.k and -self._heap[0][0] <= dice):
            return dice
        truth_small, pred_small = _shrink(truth, self.side), _shrink(pred, self.side)
        picture = _display(image() if callable(image) else image, truth_small.shape)
        entry = {"name": str(name), "group": group, "dice": dice, "image": picture,
                 "truth": truth_small.astype(np.uint8), "pred": pred_small.astype(np.uint8)}
        item = (-dice, next(self._order), entry)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)
        return dice

    def cases(self) -> list[dict]:
        """The kept images, worst first."""
        return [entry for _, _, entry in sorted(self._heap, key=lambda item: (-item[0], item[1]))]

    def plot(self, path: str | os.PathLike, title: str = "", class_names: Sequence[str] | None = None) -> str | None:
        """Draw the kept images, worst first, two per row (ground truth | prediction for each); None if none
        were kept."""
        cases = self.cases()
        if not cases:
            return None
        from vmunet_monai.figures import pyplot, save

        plt = pyplot()
        from matplotlib.patches import Patch

        per_row = 2 if len(cases) > 1 else 1
        rows = (len(cases) + per_row - 1) // per_row
        height = 3.3 * rows + 0.8
        fig, axes = plt.subplots(rows, 2 * per_row, figsize=(3.2 * 2 * per_row, height), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for i, case in enumerate(cases):
            row, col = divmod(i, per_row)
            where = f" ({case['group']})" if case["group"] not in (None, "", "all") else ""
            for j, (key, what) in enumerate((("truth", "ground truth"), ("pred", f"Dice {case['dice']:.3f}"))):
                ax = axes[row, 2 * col + j]
                picture = tint(case["image"], case[key], self.num_classes)
                if key == "pred":  # where it should have been
                    picture[_outline(case["truth"])] = 255
                ax.imshow(picture.clip(0, 255).astype(np.uint8))
                ax.set_title(f"{case['name']}{where}\n{what}" if j == 0 else f"prediction\n{what}", fontsize=8)
        colors = class_colors(max(self.num_classes, 2))
        names = list(class_names or [f"class {c}" for c in range(1, max(self.num_classes, 2))])
        handles = [Patch(color=np.asarray(colors[c]) / 255, label=names[c - 1])
                   for c in range(1, max(self.num_classes, 2)) if c - 1 < len(names)]
        handles.append(Patch(facecolor="white", edgecolor="black", label="ground truth's outline, over the prediction"))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
        fig.suptitle(title or f"the {len(cases)} images of the lowest Dice, worst first", fontsize=10)
        fig.tight_layout(rect=(0, 0.35 / height, 1, 1 - 0.4 / height))  # room for the legend and the title
        return save(fig, path, dpi=90)
