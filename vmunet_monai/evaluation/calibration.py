"""Whether a model's probabilities mean what they say: calibration of binary probability maps, pixel by pixel.

A model is calibrated when, of all the pixels it gives a foreground probability near 0.8, about 80% are
foreground. :class:`Calibration` counts the pixels of every scored image in ten probability bins (0-0.1, ...,
0.9-1; 1 falls in the last), with their mean probability and the share that is foreground in the ground truth,
and gives:

- ``ece``, the expected calibration error: the mean over the bins, weighted by their pixels, of
  ``|share foreground - mean probability|`` (0 for a calibrated model);
- ``brier``: the mean of ``(probability - truth)**2`` over all pixels;
- the reliability diagram (:meth:`Calibration.plot`): share foreground against mean probability per bin, the
  diagonal for reference, and the pixels per bin on a log scale below.

For several classes (``top_label``) the same is counted for the class the model picks: its probability (the
highest) against whether it is the right class, the "confidence" calibration of the classification literature.

Before trusting an uncertainty map (``predict --uncertainty``) or a threshold other than 0.5, look here: a model
trained with Dice loss is often too sure, one trained briefly too unsure. ``score`` writes it for the 2D maps of
``predict --probabilities`` (``metrics_<split>_calibration.png`` and ``calibration`` in the summary; by the top
label for the ``<image>_prob_<k>.png`` maps of several classes) and for volumes with their ``<case>_prob.nii.gz``
beside them (``calibration.png``, top label).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["Calibration", "calibrate_volumes"]


class Calibration:
    """Pixel counts per probability bin over all the images :meth:`add` is given.

    Args:
        bins: equal-width probability bins from 0 to 1.
        top_label: what :meth:`add` is given: the highest class probability and whether that class is right
            (True), or a binary map's foreground probability and the foreground (False); only the plot's words
            differ.
    """

    PART = 1 << 20  # values binned at a time

    def __init__(self, bins: int = 10, top_label: bool = False) -> None:
        if int(bins) < 1:
            raise ValueError(f"Calibration bins={bins}: at least 1")
        self.bins, self.top_label = int(bins), bool(top_label)
        self.pixels = np.zeros(self.bins, np.int64)
        self.probability = np.zeros(self.bins, np.float64)  # sums
        self.foreground = np.zeros(self.bins, np.int64)
        self.squared_error = 0.0

    def add(self, probability, truth) -> None:
        """One image (or part of one): ``probability`` the foreground probability (0-1) and ``truth`` the foreground
        (bool), both of one shape; with ``top_label`` the highest class probability and whether its class is the
        ground truth's."""
        p = np.asarray(probability).ravel()
        t = np.asarray(truth, bool).ravel()
        if p.shape != t.shape:
            raise ValueError(f"Calibration.add: {p.size} probabilities against {t.size} ground-truth pixels")
        if p.size and not (p.min() >= 0.0 and p.max() <= 1.0):  # a NaN fails both
            raise ValueError("Calibration.add: probabilities must lie in [0, 1] (scale 0-255 grey levels by 1/255)")
        # a million values at a time (a CT volume holds 40 M: a few MB of scratch, reused, instead of GBs), float
        # bounds and int32 bin numbers (int64 conversions made a volume take seconds)
        for start in range(0, p.size, self.PART):
            part, right = p[start:start + self.PART].astype(np.float64), t[start:start + self.PART]
            scaled = part * self.bins
            np.minimum(scaled, self.bins - 1.0, out=scaled)  # 1 falls in the last bin
            index = scaled.astype(np.int32)
            self.pixels += np.bincount(index, minlength=self.bins)
            self.probability += np.bincount(index, weights=part, minlength=self.bins)
            self.foreground += np.bincount(index[right], minlength=self.bins)
            # sum of (p - t)^2 = sum p^2 - 2 sum of p where t + count of t (no float copy of the truth)
            self.squared_error += (float(np.dot(part, part)) - 2.0 * float(np.sum(part, where=right))
                                   + int(np.count_nonzero(right)))

    def add_classes(self, prob, truth, axis: int = 0) -> None:
        """One image or volume of several classes, by the top label: ``prob`` its class probabilities (classes
        along ``axis``) and ``truth`` the ground truth's class numbers (``prob``'s shape without that axis)."""
        prob = np.asarray(prob)
        self.add(prob.max(axis=axis), prob.argmax(axis=axis) == np.asarray(truth))

    def summary(self) -> dict:
        """``ece``, ``brier``, ``pixels`` and per bin its edges, ``pixels``, ``mean_probability`` and
        ``observed_share``, the share foreground (right, with ``top_label``), None for an empty bin."""
        total = int(self.pixels.sum())
        rows, ece = [], 0.0
        for b in range(self.bins):
            n = int(self.pixels[b])
            mean = float(self.probability[b] / n) if n else None
            share = float(self.foreground[b] / n) if n else None
            if n:
                ece += n / total * abs(share - mean)
            rows.append({"low": b / self.bins, "high": (b + 1) / self.bins, "pixels": n, "mean_probability": mean,
                         "observed_share": share})
        return {"ece": ece if total else None, "brier": self.squared_error / total if total else None,
                "pixels": total, "kind": "top_label" if self.top_label else "foreground", "bins": rows}

    def plot(self, path: str | os.PathLike, title: str = "") -> str:
        """The reliability diagram and the pixels per bin."""
        from vmunet_monai.figures import pyplot, save

        plt = pyplot()
        summary = self.summary()
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 6.2), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 1]})
        top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
        full = [r for r in summary["bins"] if r["pixels"]]
        centres = [(r["low"] + r["high"]) / 2 for r in summary["bins"]]
        width = 1.0 / self.bins
        what = "right" if self.top_label else "foreground"
        top.bar([(r["low"] + r["high"]) / 2 for r in full], [r["observed_share"] for r in full], width=width * 0.9,
                color="#4c72b0", alpha=0.35, label=f"share {what}, per bin")
        top.plot([r["mean_probability"] for r in full], [r["observed_share"] for r in full], marker="o",
                 color="#c44e52", label="at the bin's mean probability")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("share of the pixels whose class is right" if self.top_label
                       else "share of the pixels that is foreground")
        ece, brier = summary["ece"], summary["brier"]
        top.set_title((title + "\n" if title else "") + (f"ECE {ece:.4f}, Brier {brier:.4f}, {summary['pixels']:,} "
                                                          f"pixels" if summary["pixels"] else "no pixels"), fontsize=9)
        top.legend(fontsize=8, loc="upper left")
        bottom.bar(centres, [max(r["pixels"], 0) for r in summary["bins"]], width=width * 0.9, color="#55a868")
        if summary["pixels"]:
            bottom.set_yscale("log")
        bottom.set_xlabel("probability of the predicted class (the highest)" if self.top_label
                          else "predicted foreground probability")
        bottom.set_ylabel("pixels")
        fig.tight_layout()
        return save(fig, path, dpi=90)


def calibrate_volumes(pairs, slab: int = 16) -> Calibration:
    """Top-label calibration over volumes: each ``(probability volume, label volume)`` pair is a 4D
    ``<case>_prob.nii.gz`` as ``predict --probabilities`` writes it (X, Y, Z, classes; a reader's scale applied)
    and the ground truth's class numbers on the same grid, read ``slab`` slices at a time.

    Raises:
        ValueError: a probability volume that is not 4D, or of another grid than its label (both named).
    """
    import nibabel as nib

    from vmunet_monai.engine.transforms import probability_slabs

    calibration = Calibration(top_label=True)
    for prob_path, label_path in pairs:
        prob, label = nib.load(str(prob_path)), nib.load(str(label_path))
        if len(prob.shape) != 4 or tuple(prob.shape[:3]) != tuple(label.shape[:3]):
            raise ValueError(f"{prob_path}: class probabilities of shape {tuple(prob.shape)} for the label "
                             f"{label_path} of {tuple(label.shape)} (expected (X, Y, Z, classes) on its grid)")
        for z, part in probability_slabs(prob_path, slab):
            truth = np.rint(np.asarray(label.dataobj[:, :, z:z + slab], np.float32)).astype(np.int64)
            calibration.add_classes(part, truth, axis=-1)
    return calibration
