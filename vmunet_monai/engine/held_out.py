"""What a model was trained on, kept beside its weights, and the check that an evaluation's images are not in it.

Training writes ``trained_on.json`` into its checkpoint folder (:class:`vmunet_monai.engine.TrainingCheckpoint`):
the image of every item of its training data and of its validation data (which chose ``model.pt``). An evaluation
(:class:`HeldOutCheck`, in each bundle's ``evaluate.json``) stops before it scores anything when one of its images is
among the training images of the weights it evaluates, or, for a test split, among their validation images. That
happens when the datalist was written again after the training (``prepare`` with another ``--seed``, or with more
data, reshuffles the split): the scores would then count images the model was fitted or selected on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ignite.engine import Engine, Events

from vmunet_monai.validation import write_whole

__all__ = ["TRAINED_ON", "HeldOutCheck", "check_held_out", "fingerprint", "item_images", "record_trained_on"]

logger = logging.getLogger(__name__)

TRAINED_ON = "trained_on.json"


def item_images(dataset) -> list[str]:
    """The absolute paths of the ``image`` files of a MONAI dataset's items (its ``data``); empty for a dataset
    that holds no file names."""
    found = []
    for item in getattr(dataset, "data", None) or []:
        image = item.get("image") if isinstance(item, Mapping) else None
        if isinstance(image, (str, os.PathLike)):
            found.append(os.path.abspath(image))
    return found


def fingerprint(path: str | os.PathLike) -> str | None:
    """A short mark of a file's content: its size and a hash of its first and last 64 KiB, the same wherever the
    file is copied or moved; None for a file that cannot be read."""
    import hashlib

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.sha1(f.read(1 << 16))
            if size > 1 << 17:
                f.seek(-(1 << 16), os.SEEK_END)
            digest.update(f.read(1 << 16))
    except OSError:
        return None
    return f"{size}:{digest.hexdigest()[:20]}"


def _fingerprints(paths: Iterable[str]) -> set[str]:
    return {f for f in map(fingerprint, paths) if f is not None}


def record_trained_on(folder: str | os.PathLike, training: Iterable[str], validation: Iterable[str],
                      resumed: bool = False) -> Path:
    """Write ``folder/trained_on.json``: the training and validation images of the weights in ``folder``, by path
    and by :func:`fingerprint` (under ``fingerprints``, so that a copied or moved dataset is still recognised). A
    resumed training adds its images to those of the record it finds (its weights saw both)."""
    path = Path(folder) / TRAINED_ON
    record = {"training": set(training), "validation": set(validation)}
    marks = {kind: _fingerprints(files) for kind, files in record.items()}
    if resumed and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("%s cannot be read (%s): written again from this run's data", path, exc)
            old = {}
        for key in record:
            record[key] |= set(old.get(key, []))
            marks[key] |= set(old.get("fingerprints", {}).get(key, []))
    path.parent.mkdir(parents=True, exist_ok=True)
    written = {k: sorted(v) for k, v in record.items()}
    written["fingerprints"] = {k: sorted(v) for k, v in marks.items()}
    write_whole(path, json.dumps(written, indent=1) + "\n")
    return path


def check_held_out(weights: Iterable[str | os.PathLike], images: Iterable[str], split: str) -> None:
    """Refuse to evaluate ``weights`` on ``images`` of ``split`` where the ``trained_on.json`` beside any of them
    lists one of the images: as training data, or for a test split (any split but ``training`` and
    ``validation``) as validation data too. Weights without a record, and the ``training`` split, are not checked.

    Raises:
        vmunet_monai.validation.InputError: naming the weights, how many images they saw and the first of them.
    """
    from vmunet_monai.validation import InputError

    split = str(split)
    if split == "training":
        return
    kinds = ("training",) if split == "validation" else ("training", "validation")
    evaluated = {os.path.abspath(i) for i in images}
    marks: dict[str, str] | None = None  # fingerprint -> evaluated image, read once a record has fingerprints
    for weight in weights:
        record_path = Path(weight).parent / TRAINED_ON
        if not record_path.is_file():
            continue
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("%s cannot be read (%s): not checked", record_path, exc)
            continue
        seen = {kind: evaluated & set(record.get(kind, [])) for kind in kinds}
        copies = set()  # the same files under another path: the dataset copied or moved since
        if isinstance(record.get("fingerprints"), dict):
            if marks is None:
                marks = {m: image for image in sorted(evaluated) if (m := fingerprint(image)) is not None}
            for kind in kinds:
                found = {marks[m] for m in record["fingerprints"].get(kind, []) if m in marks}
                copies |= found - seen[kind]
                seen[kind] |= found
        both = set().union(*seen.values())
        if both:
            where = " and ".join(f"{len(found)} in its {kind} data" for kind, found in seen.items() if found)
            moved = (f"; {len(copies)} of them recognised by content under another path: the dataset copied or "
                     "moved since, or one file in it twice" if copies else "")
            raise InputError(
                f"{weight}: {len(both)} of the {len(evaluated)} {split} images were in the data it was trained on "
                f"({where}; first: {sorted(both)[0]}; {record_path} lists that data{moved}): the datalist was written "
                f"again after this training (prepare with another --seed or more data?), and the scores would count "
                f"images the model was fitted or selected on. Evaluate with the datalist it was trained with, or train "
                f"again")


class HeldOutCheck:
    """When the evaluation starts, :func:`check_held_out` on the images its data loader holds.

    Args:
        weights: the weight files evaluated (the bundles: ``@ensemble``, or ``[@ckpt_dir + '/model.pt']``).
        split: the datalist split evaluated (``@eval_split``).
    """

    def __init__(self, weights, split: str) -> None:
        self.weights = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights or ())
        self.split = str(split)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        check_held_out(self.weights, item_images(getattr(getattr(engine, "data_loader", None), "dataset", None)),
                       self.split)
        engine.state.evaluated_weights = evaluated_weights(self.weights)


def evaluated_weights(weights: Iterable[str | os.PathLike]) -> list[dict]:
    """Each weights file an evaluation scores, as its summary records it: ``{"path": absolute, "sha256": ...}``
    (the reports of ``evaluate.json`` write it beside their numbers, so a summary says which weights made them)."""
    from vmunet_monai.package import sha256

    return [{"path": os.path.abspath(w), "sha256": sha256(w) if os.path.isfile(w) else None} for w in weights]
