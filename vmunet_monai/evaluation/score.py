"""Score segmentations already on disk against a prepared dataset's labels, by the Synapse evaluation's protocol
(``python -m vmunet_monai score``).

The predictions may come from ``predict`` (``<image>_seg.nii.gz``), from another tool (nnU-Net writes
``<case>.nii.gz``), or from any model that writes one label map per volume on the volume's own grid. They are
paired with the cases of a split of ``datalist.json`` by name, and scored exactly as ``evaluate.json`` scores the
bundle's own network (:func:`vmunet_monai.evaluation.ct.evaluate_files`): Dice and HD95 in mm per class, the
TransUNet rule beside them, per group and, for ACDC's patients, the clinical indices. ``compare`` then reads the
``per_case.csv`` beside the bundle's own evaluation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vmunet_monai.validation import InputError

__all__ = ["PREDICTION_SUFFIXES", "match_volumes", "score_volumes"]

PREDICTION_SUFFIXES = ("_seg", "_pred", "_prediction", "_label", "_mask")
_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for ext in _EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem


def _prediction_files(folder: Path) -> dict[str, Path]:
    """Prediction files under ``folder`` (searched recursively) by every name they may answer to: the file's stem,
    and the stem without a prediction suffix (``_seg``)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of predictions")
    names: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not path.name.lower().endswith(_EXTENSIONS):
            continue
        stem = _stem(path)
        keys = [stem] + [stem[: -len(s)] for s in PREDICTION_SUFFIXES if stem.endswith(s) and len(stem) > len(s)]
        for key in keys:
            if key in names and names[key] != path:
                raise InputError(f"{path} and {names[key]}: both answer to the name {key!r}; keep one prediction per "
                                 f"volume in {folder}")
            names[key] = path
    return names


def match_volumes(pred: str | os.PathLike, dataset: str | os.PathLike, split: str = "test") -> dict:
    """Pair the predictions in ``pred`` with the ``split`` cases of ``dataset/datalist.json``.

    A case is matched by its name (``case``) or its image's file name, with or without a prediction suffix:
    ``patient101_frame01_seg.nii.gz`` (predict), ``abd_004.nii.gz`` (nnU-Net, for the image
    ``abd_004_0000.nii.gz``) and ``img0001_pred.nii.gz`` all find their case.

    Returns:
        ``{"pairs": [(case, prediction, label, image), ...], "missing": [cases without a prediction],
        "unused": [predictions of no case], "datalist": path}``.

    Raises:
        InputError: no datalist, an unknown split, or no case with a prediction (naming what was looked for).
    """
    from vmunet_monai.data.common import DATALIST_NAME

    dataset = Path(dataset)
    path = dataset / DATALIST_NAME
    if not path.is_file():
        raise InputError(f"{dataset}: no {DATALIST_NAME} (give the folder that `prepare synapse_multiorgan RAW OUT` "
                         f"wrote; it names the cases, their labels and classes)")
    doc = json.loads(path.read_text())
    splits = [k for k, v in doc.items() if isinstance(v, list)]
    if split not in splits:
        raise InputError(f"--split {split!r}: {path} has the splits {', '.join(splits)}")
    items = [item for item in doc[split] if isinstance(item, dict) and "label" in item]
    if not items:
        raise InputError(f"{path}: its {split!r} split has no labelled case to score against")
    found = _prediction_files(Path(pred))
    pairs, missing, used = [], [], set()
    for item in items:
        image = (dataset / item["image"]).resolve() if "image" in item else None
        case = str(item.get("case") or _stem(item["label"]))
        keys = [case] + ([_stem(image)] if image is not None else [])
        if image is not None and _stem(image).endswith("_0000"):  # nnU-Net names a prediction without the channel
            keys.append(_stem(image)[:-5])
        hit = next((found[k] for k in keys if k in found), None)
        if hit is None:
            missing.append(case)
            continue
        used.add(hit)
        pairs.append((case, str(hit), str((dataset / item["label"]).resolve()), str(image) if image else None))
    unused = sorted({str(p) for p in found.values()} - {str(p) for p in used})
    if not pairs:
        example = next(iter(sorted(found.values())), None)
        raise InputError(f"{pred}: no prediction is named after a {split!r} case of {path} (looked for e.g. "
                         f"{missing[0]}_seg.nii.gz or {missing[0]}.nii.gz; found "
                         f"{example.name if example else 'no volume file'})")
    return {"pairs": pairs, "missing": missing, "unused": unused, "datalist": str(path)}


def score_volumes(pred: str | os.PathLike, dataset: str | os.PathLike, out: str | os.PathLike | None = None,
                  split: str = "test", transunet: bool = True, montage: bool = True) -> dict:
    """Score the predicted label maps in ``pred`` against the labels of ``dataset``'s ``split`` (see
    :func:`match_volumes`), with the classes, groups and patients its datalist records.

    Writes into ``out`` (default: ``score/`` beside ``pred``): ``per_case.csv``, ``summary.json``,
    ``organ_boxplot.png``, ``montage_<case>.png`` (``montage``), and for ACDC's patients ``clinical_indices.csv``
    and ``clinical_indices.png``.

    Returns:
        the summary, with ``missing_prediction`` (cases of the split without a prediction, left out and named),
        ``unused_predictions``, ``predictions`` (predict's ``prediction.json`` where there is one) and ``paths``.

    Raises:
        InputError: see :func:`match_volumes`; a prediction on another grid than its label (naming both).
    """
    from vmunet_monai.data.common import datalist_classes, datalist_groups, datalist_patients
    from vmunet_monai.evaluation.ct import DEFAULT_ORGANS, _nan_to_none, evaluate_files
    from vmunet_monai.predict import read_record
    from vmunet_monai.validation import check_output_location

    matched = match_volumes(pred, dataset, split)
    pairs = matched["pairs"]
    out = Path(out) if out is not None else Path(pred).resolve().parent / "score"
    out = check_output_location([Path(dataset)], out)
    organs = datalist_classes(dataset) or DEFAULT_ORGANS
    summary = evaluate_files([p for _, p, _, _ in pairs], [label for _, _, label, _ in pairs], str(out),
                             organs=organs, transunet=transunet,
                             montage_image=pairs[0][3] if montage and pairs[0][3] else None,
                             cases=[case for case, _, _, _ in pairs],
                             groups=datalist_groups(dataset, split), patients=datalist_patients(dataset, split))
    record = read_record(pred)
    summary.update(missing_prediction=matched["missing"], unused_predictions=matched["unused"],
                   predictions=record[1] if record else None)
    (out / "summary.json").write_text(json.dumps(_nan_to_none(summary), indent=4) + "\n")
    if matched["missing"]:
        print(f"left out: {len(matched['missing'])} {split} case(s) without a prediction (first: "
              f"{matched['missing'][0]})")
    if matched["unused"]:
        print(f"not scored: {len(matched['unused'])} prediction(s) of no {split} case (first: {matched['unused'][0]})")
    summary["paths"] = {"csv": str(out / "per_case.csv"), "json": str(out / "summary.json"), "folder": str(out)}
    print(f"{len(pairs)} cases scored against {matched['datalist']} ({split}); written to {out}")
    return summary

