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

Whether the doubt points at the mistakes is counted too (``errors``). Each pixel's confidence is the
probability of the class it is given (for a binary map ``max(p, 1 - p)``, the mask being ``p >= 0.5``), and an
error is a pixel given the wrong class:

- ``auroc``: the chance that an error is less confident than a right pixel, ties counted half (0.5: the
  confidence says nothing about the mistakes; 1: every error is less sure than every right pixel);
- ``least_sure_errors``: of the pixels the model is least sure of, as many as there are errors, the share that
  are errors: what a reviewer who checks that many pixels, least sure first, would find (1 at best; the error
  rate, ``error_rate``, by chance).

Both come from counts in 1,024 confidence bins, so pixels closer than 1/1024 count as ties.

Before trusting an uncertainty map (``predict --uncertainty``) or a threshold other than 0.5, look here: a model
trained with Dice loss is often too sure, one trained briefly too unsure. ``score`` writes it for the 2D maps of
``predict --probabilities`` (``metrics_<split>_calibration.png`` and ``calibration`` in the summary; by the top
label for the ``<image>_prob_<k>.png`` maps of several classes) and for volumes with their ``<case>_prob.nii.gz``
beside them (``calibration.png``, top label).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["Calibration", "calibrate_volumes", "errors_line"]


class Calibration:
    """Pixel counts per probability bin over all the images :meth:`add` is given.

    Args:
        bins: equal-width probability bins from 0 to 1.
        top_label: what :meth:`add` is given: the highest class probability and whether that class is right
            (True), or a binary map's foreground probability and the foreground (False); only the plot's words
            differ.
    """

    PART = 1 << 20  # values binned at a time
    FINE = 1024  # confidence bins of the error counts

    def __init__(self, bins: int = 10, top_label: bool = False) -> None:
        if int(bins) < 1:
            raise ValueError(f"Calibration bins={bins}: at least 1")
        self.bins, self.top_label = int(bins), bool(top_label)
        self.pixels = np.zeros(self.bins, np.int64)
        self.probability = np.zeros(self.bins, np.float64)  # sums
        self.foreground = np.zeros(self.bins, np.int64)
        self.squared_error = 0.0
        self.right_by_confidence = np.zeros(self.FINE, np.int64)
        self.wrong_by_confidence = np.zeros(self.FINE, np.int64)

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
            self.probability += np.bincount(index, weights=part, minlength=self.bins)
            # one count per (bin, truth) pair: a boolean selection before counting costs five times as much
            pairs = np.bincount(index * 2 + right, minlength=2 * self.bins).reshape(self.bins, 2)
            self.pixels += pairs.sum(axis=1)
            self.foreground += pairs[:, 1]
            # sum of (p - t)^2 = sum p^2 - 2 sum of p where t + count of t (no float copy of the truth)
            self.squared_error += (float(np.dot(part, part)) - 2.0 * float(np.sum(part, where=right))
                                   + int(pairs[:, 1].sum()))
            # the confidence of the class given, and whether it is the ground truth's
            wrong = ~right if self.top_label else (part >= 0.5) != right
            confidence = part if self.top_label else np.maximum(part, 1.0 - part)
            fine = np.minimum(confidence * self.FINE, self.FINE - 1.0).astype(np.int32)
            pairs = np.bincount(fine * 2 + wrong, minlength=2 * self.FINE).reshape(self.FINE, 2)
            self.right_by_confidence += pairs[:, 0]
            self.wrong_by_confidence += pairs[:, 1]

    def add_classes(self, prob, truth, axis: int = 0) -> None:
        """One image or volume of several classes, by the top label: ``prob`` its class probabilities (classes
        along ``axis``) and ``truth`` the ground truth's class numbers (``prob``'s shape without that axis)."""
        prob = np.asarray(prob)
        self.add(prob.max(axis=axis), prob.argmax(axis=axis) == np.asarray(truth))

    def errors(self) -> dict:
        """Whether the least confident pixels are the mistakes (module docstring): ``auroc``,
        ``least_sure_errors``, ``error_rate`` and ``wrong``, the pixels given the wrong class; the first two None
        where every pixel is right, or every one wrong."""
        right, wrong = self.right_by_confidence.astype(np.float64), self.wrong_by_confidence.astype(np.float64)
        n_right, n_wrong = right.sum(), wrong.sum()
        result = {"auroc": None, "least_sure_errors": None, "wrong": int(n_wrong),
                  "error_rate": float(n_wrong / (n_right + n_wrong)) if n_right + n_wrong else None}
        if not n_right or not n_wrong:
            return result
        surer = np.cumsum(right[::-1])[::-1] - right  # right pixels in the bins above each bin
        result["auroc"] = float(np.sum(wrong * (surer + 0.5 * right)) / (n_right * n_wrong))
        total = np.cumsum(right + wrong)  # pixels up to each bin, least sure first
        b = int(np.searchsorted(total, n_wrong))  # the bin where the review of n_wrong pixels ends
        before = total[b - 1] if b else 0.0
        found = (wrong[:b].sum() + wrong[b] * (n_wrong - before) / (right[b] + wrong[b]))  # that bin pro rata
        result["least_sure_errors"] = float(found / n_wrong)
        return result

    def summary(self) -> dict:
        """``ece``, ``brier``, ``pixels``, ``errors`` (:meth:`errors`) and per bin its edges, ``pixels``,
        ``mean_probability`` and ``observed_share``, the share foreground (right, with ``top_label``), None for an
        empty bin."""
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
                "pixels": total, "kind": "top_label" if self.top_label else "foreground", "errors": self.errors(),
                "bins": rows}

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
                                                          f"pixels" if summary["pixels"] else "no pixels")
                      + errors_line(summary["errors"], "\n"), fontsize=9)
        top.legend(fontsize=8, loc="upper left")
        bottom.bar(centres, [max(r["pixels"], 0) for r in summary["bins"]], width=width * 0.9, color="#55a868")
        if summary["pixels"]:
            bottom.set_yscale("log")
        bottom.set_xlabel("probability of the predicted class (the highest)" if self.top_label
                          else "predicted foreground probability")
        bottom.set_ylabel("pixels")
        fig.tight_layout()
        return save(fig, path, dpi=90)


def errors_line(errors: dict, before: str = "") -> str:
    """``errors`` (:meth:`Calibration.errors`) in a few words, after ``before``; "" where there is nothing to
    say (no error, or no right pixel)."""
    if errors["auroc"] is None:
        return ""
    return (f"{before}errors found by doubt: AUROC {errors['auroc']:.3f}, least sure {errors['least_sure_errors']:.0%} "
            f"(chance {errors['error_rate']:.1%})")


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
