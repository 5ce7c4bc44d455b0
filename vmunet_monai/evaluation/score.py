"""Score segmentations already on disk against a prepared dataset's labels, by the protocol of the bundle's own
evaluation (``python -m vmunet_monai score``).

The predictions may come from ``predict``, from another tool, or from any model that writes one mask or label map
per image at the image's own size (per volume on the volume's own grid). They are paired with the cases of a
split of ``datalist.json`` by name and scored as ``evaluate.json`` scores the bundle's own network:

- volumes (:func:`score_volumes`; ``predict``'s ``<image>_seg.nii.gz``, nnU-Net's ``<case>.nii.gz``): Dice and
  HD95 in mm per class, the TransUNet rule beside them, per group and, for ACDC's patients, the clinical indices
  (:func:`vmunet_monai.evaluation.ct.evaluate_files`);
- 2D masks (:func:`score_masks`; ``predict``'s ``<image>_mask.png``, or ``<image>.png``): pooled and per-image
  Dice and IoU per test set, and per class for masks of several classes (:mod:`vmunet_monai.evaluation.binary`).

``compare`` then reads the per-case table beside the bundle's own evaluation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vmunet_monai.validation import IMAGE_EXTENSIONS, LOSSY_EXTENSIONS, VOLUME_EXTENSIONS, InputError

__all__ = ["PREDICTION_SUFFIXES", "match_volumes", "score", "score_masks", "score_volumes"]

PREDICTION_SUFFIXES = ("_seg", "_pred", "_prediction", "_label", "_mask")
# predict's class probabilities, uncertainty and (with --tta or an ensemble) its two parts, beside its label maps
COMPANION_SUFFIXES = ("_prob", "_uncertainty", "_pass_entropy", "_disagreement")


def _prediction_files(folder: Path) -> dict[str, Path]:
    """Prediction files under ``folder`` (searched recursively) by every name they may answer to: the file's stem,
    and the stem without a prediction suffix (``_seg``). ``<case>_prob``, ``<case>_uncertainty``,
    ``<case>_pass_entropy`` and ``<case>_disagreement`` volumes are not label maps (``predict --probabilities``,
    ``--uncertainty``) and are left out."""
    from vmunet_monai.evaluation.ct import _case_name

    if not folder.is_dir():
        raise InputError(f"{folder}: " + ("a file; PRED is the folder of predicted volumes (predict's OUTPUT), scored "
                                          "case by case against DATASET's split" if folder.is_file()
                                          else "no such folder of predictions"))
    names: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or not path.name.lower().endswith(VOLUME_EXTENSIONS):
            continue
        stem = _case_name(path)
        if stem.endswith(COMPANION_SUFFIXES):
            continue
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
        ``{"pairs": [(name, prediction, label, image, case), ...], "missing": [cases without a prediction],
        "unused": [predictions of no case], "not_volumes": [other files named after a case without a prediction],
        "datalist": path}``: ``name`` is the image's file name without its
        extension, as the bundle's evaluation names the case in ``per_case.csv``; ``case`` the datalist's.

    Raises:
        InputError: no datalist, an unknown split, or no case with a prediction (naming what was looked for).
    """
    from vmunet_monai.evaluation.ct import _case_name

    dataset = Path(dataset)
    path, items = _items(dataset, split)
    found = _prediction_files(Path(pred))
    pairs, missing, used = [], [], set()
    for item in items:
        image = (dataset / item["image"]).resolve() if "image" in item else None
        case = str(item.get("case") or _case_name(item["label"]))
        keys = [case] + ([_case_name(image)] if image is not None else [])
        if keys[-1].endswith("_0000"):  # nnU-Net names a prediction without the image's channel number
            keys.append(keys[-1][:-5])
        hits = list(dict.fromkeys(found[k] for k in keys if k in found))
        if len(hits) > 1:  # (else one would be scored and the other called a prediction of no case)
            raise InputError(f"{hits[0]} and {hits[1]}: two predictions of the case {case} (one by its name, one by "
                             f"its image's; give one prediction per case)")
        hit = hits[0] if hits else None
        if hit is None:
            missing.append(case)
            continue
        used.add(hit)
        # named as the bundle's evaluation names a case (its image's file name), so compare pairs the two tables
        name = _case_name(str(image)) if image is not None else case
        pairs.append((name, str(hit), str((dataset / item["label"]).resolve()), str(image) if image else None, case))
    unused = sorted({str(p) for p in found.values()} - {str(p) for p in used})
    not_volumes = _not_volume_files(Path(pred), missing)
    if not pairs:
        example = next(iter(sorted(found.values())), None)
        raise InputError(f"{pred}: no prediction is named after a {split!r} case of {path} (looked for e.g. "
                         f"{missing[0]}_seg.nii.gz or {missing[0]}.nii.gz; found "
                         f"{example.name if example else 'no volume file'}){_not_volumes_note(not_volumes)}")
    return {"pairs": pairs, "missing": missing, "unused": unused, "not_volumes": not_volumes, "datalist": str(path)}


def _not_volume_files(folder: Path, cases: list[str]) -> list[str]:
    """Files under ``folder`` named after one of ``cases`` (with or without a prediction suffix) that are not
    volume files: a PNG or NumPy export of a case, which :func:`match_volumes` cannot score."""
    wanted = set(cases)
    if not wanted:
        return []
    hits = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.lower().endswith(VOLUME_EXTENSIONS):
            continue
        stem = path.name.split(".")[0]
        if stem in wanted or any(stem.endswith(s) and stem[: -len(s)] in wanted for s in PREDICTION_SUFFIXES):
            hits.append(str(path))
    return hits


def _not_volumes_note(paths: list[str]) -> str:
    if not paths:
        return ""
    return (f"; {len(paths)} file(s) named after such a case are not volume files, which is what is scored "
            f"({', '.join(VOLUME_EXTENSIONS)}): {Path(paths[0]).name}" + (", ..." if len(paths) > 1 else ""))


def default_out(pred: str | os.PathLike, what: str = "score") -> Path:
    """Where ``score`` (``objects``, ``tune_split``: ``what``) writes without ``--out``: ``<what>/`` beside predict's
    ``masks/`` or ``instances/`` (in that predict run's OUTPUT), else ``<PRED>_<what>/`` beside PRED, so the results
    of two folders of predictions side by side do not replace each other (never inside PRED, whose files are all
    read as predictions)."""
    pred = Path(pred).resolve()
    return pred.parent / (what if pred.name in ("masks", "instances") else f"{pred.name}_{what}")


def score_volumes(pred: str | os.PathLike, dataset: str | os.PathLike, out: str | os.PathLike | None = None,
                  split: str = "test", transunet: bool = True, montage: bool = True) -> dict:
    """Score the predicted label maps in ``pred`` against the labels of ``dataset``'s ``split`` (see
    :func:`match_volumes`), with the classes, groups and patients its datalist records.

    Writes into ``out`` (default: :func:`default_out`): ``per_case.csv``, ``summary.json``,
    ``organ_boxplot.png``, ``montage_<case>.png`` and ``montage_worst_<case>.png`` of the first case and of the
    case of the lowest mean Dice (``montage``), for ACDC's patients ``clinical_indices.csv`` and
    ``clinical_indices.png``, and where ``predict --probabilities`` left ``<case>_prob.nii.gz`` beside a
    ``<case>_seg.nii.gz``, the top-label calibration of those probabilities (``calibration.png`` and
    ``calibration.json``; :mod:`vmunet_monai.evaluation.calibration`).

    Returns:
        the summary, with ``missing_prediction`` (cases of the split without a prediction, left out and named),
        ``unused_predictions``, ``predictions`` (predict's ``prediction.json`` where there is one) and ``paths``.

    Raises:
        InputError: see :func:`match_volumes`; a prediction on another grid than its label (naming both).
    """
    from vmunet_monai.data.common import datalist_classes, datalist_groups, datalist_patients
    from vmunet_monai.evaluation.ct import DEFAULT_ORGANS, evaluate_files
    from vmunet_monai.predict import read_record
    from vmunet_monai.validation import check_output_location

    matched = match_volumes(pred, dataset, split)
    pairs = matched["pairs"]
    out = check_output_location([Path(dataset)], default_out(pred) if out is None else Path(out))
    organs = datalist_classes(dataset) or DEFAULT_ORGANS
    groups, patients = datalist_groups(dataset, split), datalist_patients(dataset, split)
    named = {case: name for name, _, _, _, case in pairs}  # datalist case -> the name the tables use
    record = read_record(pred)
    warn_unfinished(record)
    _check_held_out(record, [p[3] for p in pairs if p[3]], split)
    _clear_earlier_score(out, VOLUME_SCORE_FILES)
    summary = evaluate_files([p[1] for p in pairs], [p[2] for p in pairs], str(out), organs=organs,
                             transunet=transunet, montage_image=pairs[0][3] if montage and pairs[0][3] else None,
                             worst_images=[p[3] for p in pairs] if montage else None,
                             cases=[p[0] for p in pairs],
                             groups={named[c]: g for c, g in groups.items() if c in named},
                             patients={named[c]: p for c, p in patients.items() if c in named},
                             extra={"missing_prediction": matched["missing"], "unused_predictions": matched["unused"],
                                    "predictions": record[1] if record else None, "environment": _made_in(record)})
    beside = [(str(p[1])[: -len("_seg.nii.gz")] + "_prob.nii.gz", p[2]) for p in pairs
              if str(p[1]).endswith("_seg.nii.gz") and os.path.isfile(str(p[1])[: -len("_seg.nii.gz")] + "_prob.nii.gz")]
    if beside:  # predict --probabilities: whether the class probabilities mean what they say
        from vmunet_monai.evaluation.calibration import calibrate_volumes, errors_line

        try:
            calibration = calibrate_volumes(beside)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        summary["calibration"] = {**calibration.summary(), "cases": len(beside)}
        (out / "calibration.json").write_text(json.dumps(summary["calibration"], indent=4) + "\n")
        plot = calibration.plot(out / "calibration.png", title=f"{Path(pred).name}: calibration of the class "
                                f"probabilities, {len(beside)} of {len(pairs)} case(s), {split} split")
        print(f"calibration of the class probabilities ({len(beside)} case(s) with <case>_prob.nii.gz): top-label "
              f"ECE {summary['calibration']['ece']:.4f}, Brier {summary['calibration']['brier']:.4f}"
              f"{errors_line(summary['calibration']['errors'], '; ')} ({plot})")
    if matched["missing"]:
        print(f"left out: {len(matched['missing'])} {split} case(s) without a prediction (first: "
              f"{matched['missing'][0]}){_not_volumes_note(matched['not_volumes'])}")
    if matched["unused"]:
        print(f"not scored: {len(matched['unused'])} prediction(s) of no {split} case (first: {matched['unused'][0]})")
    summary["paths"] = {"csv": str(out / "per_case.csv"), "json": str(out / "summary.json"), "folder": str(out)}
    if beside:
        summary["paths"].update(calibration_json=str(out / "calibration.json"), calibration_plot=plot)
    print(f"{len(pairs)} cases scored against {matched['datalist']} ({split}); written to {out}")
    return summary


# what score_volumes writes into OUT, some files only for some runs (calibration, ACDC's indices, the montages)
VOLUME_SCORE_FILES = ["per_case.csv", "summary.json", "organ_boxplot.png", "montage_*.png", "clinical_indices.csv",
                      "clinical_indices.png", "calibration.json", "calibration.png"]


def _clear_earlier_score(out: Path, patterns: list[str], what: str = "") -> None:
    """Remove the files an earlier score left in ``out`` (``patterns``: the names a score writes), saying so: one that
    this score does not write again (a calibration, a montage of another worst case) would be read as its own."""
    stale = sorted({p for pattern in patterns for p in out.glob(pattern) if p.is_file()}) if out.is_dir() else []
    for path in stale:
        path.unlink()
    if stale:
        print(f"note: {out} held an earlier score {what}({len(stale)} files): replaced", flush=True)


def _made_in(record) -> dict | None:
    """The environment behind scores of files: that of the ``predict`` run that wrote them (``record``: its
    ``prediction.json``), else None (another tool's), not the scoring's own, which changes no number."""
    environment = record[1].get("environment") if record is not None else None
    return environment if isinstance(environment, dict) else None


def warn_unfinished(record) -> None:
    """Say so where ``predict`` stopped before it finished the folder being scored (``record``: its
    ``prediction.json``): the images it had not reached are then left out, and the score is of part of the set."""
    if record is not None and record[1].get("finished") is False:
        print(f"warning: {record[0]} says the predict run that wrote these predictions stopped before it finished: "
              "what it had not reached is left out of this score; finish it with the same predict command plus "
              "--resume", flush=True)


def _check_held_out(record, images: list[str], split: str) -> None:
    """Predictions that ``predict`` wrote (``record``: its ``prediction.json``) are not scored on images their
    weights were trained or selected on (:func:`vmunet_monai.engine.held_out.check_held_out`)."""
    from vmunet_monai.engine.held_out import check_held_out

    if record is not None and record[1].get("weights"):
        weights = record[1]["weights"]
        check_held_out([weights] if isinstance(weights, str) else weights, images, split)


def _items(dataset: Path, split: str) -> tuple[Path, list[dict]]:
    """The datalist's path and the labelled entries of ``split``, or an InputError naming what is missing."""
    from vmunet_monai.data.common import DATALIST_NAME

    path = dataset / DATALIST_NAME
    if dataset.is_file():
        raise InputError(f"{dataset}: a file; give the folder that holds the {DATALIST_NAME} (here "
                         f"{dataset.parent}), as `prepare BUNDLE RAW OUT` wrote it")
    if not path.is_file():
        raise InputError(f"{dataset}: no {DATALIST_NAME} (give the folder that `prepare BUNDLE RAW OUT` wrote; it "
                         f"names the cases, their labels and classes)")
    doc = json.loads(path.read_text())
    # (a datalist's other lists, such as the files an importer skipped, are no splits)
    splits = [k for k, v in doc.items() if isinstance(v, list) and k != "skipped"
              and all(isinstance(i, dict) and "label" in i for i in v)]
    if split not in splits:
        raise InputError(f"--split {split!r}: {path} has the splits {', '.join(splits)}")
    items = [item for item in doc[split] if isinstance(item, dict) and "label" in item]
    if not items:
        raise InputError(f"{path}: its {split!r} split has no labelled case to score against")
    return path, items


def all_wrong_size(wrong_size: list[str]) -> InputError:
    """The refusal when every prediction found is of the wrong size: the first one named, the count of the rest."""
    rest = len(wrong_size) - 1
    return InputError(wrong_size[0] + (f"; so are the other {rest}" if rest else ""))


def _tail_match(candidates: list[Path], image: Path) -> Path | None:
    """The candidate whose folders name most of the image's folders (``CVC-300/1.png``, as the PraNet lineage saves
    its results, for ``.../CVC-300/images/1.png``), then whose folders agree longest with the image's counted from
    the file upwards (predict mirrors the input folders: ``masks/CVC-300/images/1_mask.png``); None if tied or if
    there is none."""
    ranked = sorted(candidates, key=lambda path: _agreement(path, image), reverse=True)
    if not ranked:
        return None
    if len(ranked) > 1 and _agreement(ranked[0], image) == _agreement(ranked[1], image):
        return None
    return ranked[0]


def _agreement(path: Path, image: Path) -> tuple[int, int]:
    """How well ``path``'s folders answer to ``image``'s (see :func:`_tail_match`)."""
    n = 0
    for a, b in zip(reversed(path.parent.parts), reversed(image.parent.parts)):
        if a != b:
            break
        n += 1
    return len(set(image.parent.parts).intersection(path.parent.parts)), n


def _twins(candidates: list[Path], image: Path) -> list[Path] | None:
    """Two predictions of one folder that answer to ``image`` equally well (``X_mask.png`` beside
    ``X_segmentation.png``), where :func:`_tail_match` finds none; None otherwise."""
    ranked = sorted(candidates, key=lambda path: _agreement(path, image), reverse=True)
    if len(ranked) > 1 and ranked[0].parent == ranked[1].parent and \
            _agreement(ranked[0], image) == _agreement(ranked[1], image):
        return ranked[:2]
    return None


def _check_one_case_each(hits: list[tuple[Path, Path]], pred: Path) -> None:
    """Refuse a prediction file that answers to two images (``hits``: ``(image, prediction)``): test sets that share
    image names (``1.png`` in every polyp set) with predictions in one flat folder would score one set's masks
    against another's labels."""
    taken: dict[Path, Path] = {}
    for image, hit in hits:
        other = taken.setdefault(hit, image)
        if other != image:
            raise InputError(f"{hit}: answers to two images, {other} and {image} (their sets share image names): put "
                             f"each set's predictions in a folder named after it below {pred} (as predict and the "
                             "PraNet lineage write them), so that each image finds its own")

def _read_values(path: Path):
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from vmunet_monai.engine.transforms import gray_converter

    try:
        with Image.open(path) as image:
            values = np.asarray(gray_converter(image))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: cannot be read as a mask ({exc})") from None
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        return values  # a 0-1 float mask: its half-scale rule needs the fractions
    return values.astype(np.int64)


def _read_map(path: Path):
    """A binary prediction's values on the 0-255 scale of 8-bit masks and maps, whatever the file's depth: a 16-bit
    map (0-65535) divided by 257, a float map of probabilities (0-1) times 255; so that the half-scale rule and the
    calibration (grey level / 255) read every map alike."""
    values = _read_values(path)
    if values.size and values.dtype.kind in "iu" and values.max() > 255:
        return values / 257.0
    if values.size and values.dtype.kind == "f" and values.max() <= 1:
        return values * 255.0
    return values


def _read_photo(path: Path):
    """The image behind a scored mask, for the gallery of the worst; None where it cannot be read."""
    import numpy as np
    from PIL import Image

    from vmunet_monai.engine.transforms import rgb_converter

    try:
        with Image.open(path) as image:
            return np.asarray(rgb_converter(image))
    except (OSError, ValueError):
        return None


def score_masks(pred: str | os.PathLike, dataset: str | os.PathLike, out: str | os.PathLike | None = None,
                split: str = "test", mask_values=None, worst: int = 8) -> dict:
    """Score predicted 2D masks in ``pred`` against the labels of ``dataset``'s ``split``, as the 2D bundles'
    evaluation does: a mask's foreground is what is at least half its scale; masks of several classes hold each
    class as its value (``mask_values``: given, or as ``predict``'s ``prediction.json`` records them, else the
    class numbers).

    A case is paired with ``<image>_mask.png`` (predict), ``<image>_segmentation.png`` (ISIC submissions),
    ``<image>_prob.png`` (``predict --probabilities``) or ``<image>.png`` below ``pred``; where several test sets
    share an image name, with the one whose folders name the image's set (``<set>/1.png``, or predict's mirrored
    folders; of predict's output, only the images it was given), and a file that answers to two images is refused.
    Binary masks saved as grey-level probability maps (as the PraNet lineage saves its predictions) are thresholded
    at half scale like any mask, and also scored by that lineage's protocol (:mod:`vmunet_monai.evaluation.pranet`:
    ``metrics_<split>_pranet_*``) and for their calibration (:mod:`vmunet_monai.evaluation.calibration`:
    ``metrics_<split>_calibration.png`` and ``.json``); for several classes, the ``<image>_prob_<k>.png`` maps of
    ``predict --probabilities`` (below ``pred``, or in ``probabilities/`` beside predict's ``masks/``) give the
    top-label calibration of the images that have all of them. Writes ``metrics_<split>_per_image.csv``,
    ``metrics_<split>_summary.json``, ``metrics_<split>.png`` and, for the ``worst`` images of the lowest Dice,
    ``metrics_<split>_worst.png`` (:mod:`vmunet_monai.evaluation.gallery`) into ``out`` (default:
    :func:`default_out`).

    A prediction of another size than its label is left out and named (``wrong_size_prediction``), as a missing
    one is; a JPEG's grey levels are taken for its compression's, so JPEG masks are scored as masks, not as maps.

    Returns:
        the report's summary, with ``missing_prediction`` (cases without a prediction, named and left out),
        ``wrong_size_prediction`` and ``paths``.

    Raises:
        InputError: no datalist or split, no pair, every prediction of another size than its label, a value that
            is no class's (naming the file, the value and the classes).
    """
    import numpy as np

    from vmunet_monai.data.common import datalist_classes
    from vmunet_monai.engine.transforms import foreground, mask_levels
    from vmunet_monai.evaluation.binary import format_summary, make_record, write_report
    from vmunet_monai.evaluation.gallery import WorstCases
    from vmunet_monai.evaluation.pranet import image_scores
    from vmunet_monai.predict import read_record
    from vmunet_monai.validation import check_at_least, check_output_location

    dataset = Path(dataset)
    datalist, items = _items(dataset, split)
    classes = datalist_classes(dataset) or {}
    num_classes = len(classes) + 1 if classes else 2
    record = read_record(pred)
    warn_unfinished(record)
    _check_held_out(record, [str((dataset / item["image"]).resolve()) for item in items], split)
    made_for = record[1].get("num_classes") if record is not None else None
    if isinstance(made_for, int) and made_for != num_classes:
        def named(count, names):
            return f"{count} classes" + (f" ({', '.join(str(n) for n in names)})" if names else "")

        ours = ["background", *classes.values()] if classes else None
        raise InputError(f"{pred}: written by a model of {named(made_for, record[1].get('class_names'))}, as "
                         f"{record[0]} records, and {datalist} has {named(num_classes, ours)}: predictions are "
                         "scored against a dataset of the classes their model was trained on")
    source = "as --mask_values gives them" if mask_values is not None else None
    if mask_values is None and record is not None:
        mask_values = record[1].get("mask_values")
        source = "as prediction.json records them" if mask_values is not None else None
    source = source or "the class numbers, as predict writes them without --mask_values"
    levels = mask_levels(mask_values, num_classes) if num_classes > 2 else None
    # binary masks written with other grey levels (predict --mask_values 255,0 or 0,127): read by those levels
    binary_levels = mask_levels(mask_values, 2) if num_classes == 2 and mask_values is not None else None
    if not Path(pred).is_dir():
        raise InputError(f"{pred}: " + ("a file; PRED is the folder of predicted masks (predict's OUTPUT/masks), "
                                        "scored image by image against DATASET's split" if Path(pred).is_file()
                                        else "no such folder of predicted masks"))
    found, found_maps = _mask_files(Path(pred), record)
    class_maps = _class_maps(Path(pred), record) if levels is not None else {}
    out = default_out(pred) if out is None else Path(out)
    out = check_output_location([dataset], out)
    gallery = WorstCases(check_at_least("score --worst", worst, 0), max(num_classes, 2))
    records, missing, binary_pairs, class_pairs, map_pairs, used = [], [], [], [], [], set()
    grey_files, lossy_grey, wrong_size, between, numbered = [], [], [], [], []
    images = [(dataset / item["image"]).resolve() for item in items]
    # a mask, else a probability map; a map beside a mask is the mask's probabilities
    hits = [_tail_match(found.get(image.stem) or found_maps.get(image.stem, []), image) for image in images]
    inputs = [Path(i).resolve() for i in (record[1].get("inputs") or [])] if record is not None else []
    predicted = [any(image == i or i in image.parents for i in inputs) for image in images]
    if any(predicted):  # predict's masks: of the images it was given, not of others of the same name
        hits = [hit if was else None for hit, was in zip(hits, predicted)]
    for image, hit, was in zip(images, hits, predicted):
        twins = _twins(found.get(image.stem) or [], image) if hit is None and (was or not any(predicted)) else None
        if twins:  # (else the image was said to have no prediction, and both files to answer to no image)
            raise InputError(f"{twins[0]} and {twins[1]}: two predictions of the image {image} (give one mask per "
                             f"image)")
    _check_one_case_each([(image, hit) for image, hit in zip(images, hits) if hit is not None], Path(pred))
    for item, image, hit in zip(items, images, hits):
        name = str(item.get("name") or image.stem)
        if hit is None:
            missing.append(name)
            if len(missing) == 1:  # named with its set where sets share image names (1.png in each polyp set)
                first_missing = name + (f" of {item['dataset']}" if item.get("dataset") else "")
            continue
        beside = _tail_match(found_maps.get(image.stem, []), image) if image.stem in found else None
        used.update(p for p in (hit, beside) if p is not None)
        label_path = (dataset / item["label"]).resolve()
        truth = _read_values(label_path)
        values = _read_map(hit) if levels is None else _read_values(hit)
        if truth.shape != values.shape:  # left out and named, as a missing prediction is
            wrong_size.append(f"{hit}: {values.shape[0]}x{values.shape[1]} against its label {label_path} "
                              f"{truth.shape[0]}x{truth.shape[1]} (masks are scored at the image's own size; "
                              f"predict writes them so)")
            continue
        group = str(item.get("dataset", "all"))
        if levels is None:
            predicted = foreground(values)
            if binary_levels is not None and set(np.unique(values).tolist()) <= set(binary_levels):
                predicted = values == binary_levels[1]
            records.append(make_record(name, predicted, foreground(truth), group=group))
            binary_pairs.append((name, hit, label_path, group))  # for the PraNet protocol, if any file is a map
            if beside is not None:
                map_pairs.append((beside, label_path))
            if values.size and 1 < float(values.max()) < 128 and np.all(values == np.rint(values)):
                numbered.append((hit, np.unique(values)))  # whole numbers, all under half the scale: a class map?
            if np.unique(values).size > 2:  # a probability map; a JPEG's grey levels are its compression's
                lossy = hit.suffix.lower() in LOSSY_EXTENSIONS and not hit.stem.endswith("_prob")
                (lossy_grey if lossy else grey_files).append(hit)
                if not lossy:  # how much of the map is neither background nor foreground
                    between.append(float(np.mean((values > 0) & (values < 255))))
            gallery.offer(name, foreground(truth), predicted, image=lambda: _read_photo(image), group=group)
            continue
        unknown = sorted(set(np.unique(values).tolist()) - set(levels))
        if unknown:
            from vmunet_monai.data.common import DATALIST_NAME

            stored = ", ".join(f"{classes.get(c, 'background') if c else 'background'} as {v}"
                               for c, v in enumerate(levels))
            raise InputError(f"{hit}: holds the value {unknown[0]}, which is no class's (the masks are read with "
                             f"each class stored as one value, {source}: {stored}; give --mask_values with the "
                             f"values the masks were written with, background first, e.g. the dataset's own "
                             f"meta.mask_values from {DATALIST_NAME})")
        lookup = np.zeros(max(levels) + 1, np.int64)
        lookup[levels] = np.arange(len(levels))
        numbers = lookup[values]
        for c, cls in classes.items():
            records.append(make_record(name, numbers == c, truth == c, group=group, cls=cls))
        gallery.offer(name, truth, numbers, image=lambda: _read_photo(image), group=group)
        maps = [_tail_match(class_maps.get((image.stem, c), []), image) for c in range(1, num_classes)]
        if all(maps):
            class_pairs.append((maps, label_path))
    if not records and wrong_size:
        raise all_wrong_size(wrong_size)
    if not records:
        example = next((p[0] for p in (*found.values(), *found_maps.values())), None)
        raise InputError(f"{pred}: no predicted mask is named after a {split!r} image of {datalist} (looked for e.g. "
                         f"{missing[0]}_mask.png; found {example.name if example else 'no image file'})")
    # a probability map beside a mask goes with it (counted once, as the mask); one of its own is a prediction
    alone = [paths for stem, paths in found_maps.items() if stem not in found]
    unused = sorted(str(p) for paths in (*found.values(), *alone) for p in paths if p not in used)
    title = f"{Path(pred).name} against {dataset.name}, {split} split, scored from files"
    _clear_earlier_score(out, [f"metrics_{split}[_.]*"], f"of the {split} split ")
    paths = write_report(records, out, prefix=f"metrics_{split}", title=title, worst=gallery,
                         extra={"missing_prediction": missing, "wrong_size_prediction": wrong_size,
                                "unused_predictions": unused,
                                "predictions": record[1] if record else None, "environment": _made_in(record)})
    summary = paths.pop("summary")
    print(format_summary(summary))
    grey = bool(grey_files)
    if numbered:
        from vmunet_monai.validation import describe_values

        print(f"note: {len(numbered)} prediction(s) hold whole numbers above 1 and none from half the scale up (first: "
              f"{numbered[0][0]}, values {describe_values(numbered[0][1])}): read as grey-level maps (foreground "
              "from 128 of 255), they predict no foreground. This dataset's masks are binary (0 and 1, or 0 and 255); "
              "a label map of several classes is scored against a dataset prepared with those classes", flush=True)
    if grey and np.mean(between) < 0.02:
        print(f"note: the grey levels of the {len(grey_files)} map(s) cover {100 * np.mean(between):.1f}% of their "
              "pixels: masks with smoothed edges rather than probability maps? Their PraNet and calibration numbers "
              "then say little about probabilities", flush=True)
    if lossy_grey:
        print(f"note: {len(lossy_grey)} JPEG prediction(s) hold grey levels, read as masks (a JPEG's grey levels are "
              f"mostly its compression's), not as probability maps (first: {lossy_grey[0]}; save maps as PNG)")
    if grey:  # probability maps, as the PraNet lineage saves them: its protocol too, labelled as such
        from vmunet_monai.evaluation.pranet import format_summary as format_pranet
        from vmunet_monai.evaluation.pranet import write_report as write_pranet

        maps = [image_scores(name, _read_map(hit), _read_values(label), group=group)
                for name, hit, label, group in binary_pairs]
        pranet = write_pranet(maps, out, prefix=f"metrics_{split}", title=f"{title} (PraNet protocol)")
        print(format_pranet(pranet["summary"]))
        summary["pranet"] = pranet.pop("summary")["overall"]
        paths.update({f"pranet_{k}": v for k, v in pranet.items()})
        # and whether the maps' probabilities mean what they say, pixel by pixel (grey levels / 255)
        _write_calibration(_calibrate_maps([(hit, label) for _, hit, label, _ in binary_pairs]), summary, paths, out,
                           split, f"{Path(pred).name}: calibration, {split} split", "the probability maps",
                           len(binary_pairs))
    elif map_pairs:  # predict --probabilities beside its masks: the masks are scored, the maps calibrated
        _write_calibration(_calibrate_maps(map_pairs), summary, paths, out, split,
                           f"{Path(pred).name}: calibration, {split} split",
                           f"the probability maps beside the masks ({len(map_pairs)} of {len(records)} image(s) with "
                           f"<image>_prob.png)", len(map_pairs))
    if class_pairs:  # predict --probabilities of several classes: <stem>_prob_<k>.png, by the top label
        from vmunet_monai.evaluation.calibration import Calibration
        from vmunet_monai.evaluation.uncertainty import class_probabilities_2d

        calibration = Calibration(top_label=True)
        for maps, label in class_pairs:
            prob, truth = class_probabilities_2d(maps), _read_values(label)
            if prob.shape[1:] != truth.shape:
                raise InputError(f"{maps[0]}: a probability map of {prob.shape[1]}x{prob.shape[2]} pixels against "
                                 f"its label {label} of {truth.shape[0]}x{truth.shape[1]} (predict writes them at the "
                                 f"image's own size)")
            calibration.add_classes(prob, truth)
        _write_calibration(calibration, summary, paths, out, split,
                           f"{Path(pred).name}: top-label calibration, {split} split",
                           f"the class probabilities (top label; {len(class_pairs)} of {len(records) // len(classes)} "
                           f"image(s) with <stem>_prob_<k>.png)", len(class_pairs))
    if missing:
        print(f"left out: {len(missing)} {split} image(s) without a prediction (first: {first_missing})")
    if wrong_size:
        print(f"left out: {len(wrong_size)} prediction(s) of another size than their label (first: {wrong_size[0]})")
    if unused:
        print(f"not scored: {len(unused)} file(s) named after no {split} image (first: {unused[0]})")
    scored = len(records) // max(len(classes), 1)
    print(f"{scored} image{'s' if scored != 1 else ''} scored against {datalist} ({split}); written to {out}")
    summary["paths"] = paths
    return summary


def _calibrate_maps(pairs: list[tuple[Path, Path]]):
    """The :class:`~vmunet_monai.evaluation.calibration.Calibration` of binary probability maps (grey levels / 255)
    against their labels' foreground, as ``(map, label)`` pairs.

    Raises:
        InputError: a map of another size than its label.
    """
    import numpy as np

    from vmunet_monai.engine.transforms import foreground
    from vmunet_monai.evaluation.calibration import Calibration

    calibration = Calibration()
    for hit, label in pairs:
        values, truth = _read_map(hit), _read_values(label)
        if values.shape != truth.shape:
            raise InputError(f"{hit}: a probability map of {values.shape[0]}x{values.shape[1]} pixels against its "
                             f"label {label} of {truth.shape[0]}x{truth.shape[1]} (predict writes them at the "
                             f"image's own size)")
        calibration.add(np.clip(values, 0, 255) / 255.0, foreground(truth))
    return calibration


#: what predict writes beside its masks and probability maps, which are neither (overlays, pictures of doubt)
PREDICT_PICTURES = ("_overlay", "_uncertainty", "_pass_entropy", "_instances")


def _prediction_roots(pred: Path, record) -> list[Path]:
    """The folders of 2D predictions to read: ``masks/`` and ``probabilities/`` of ``predict``'s output folder where
    ``pred`` is that folder or its ``masks/`` (``record``: its ``prediction.json``), else ``pred`` itself."""
    if record is not None:
        folder = record[0].parent.resolve()
        if pred.resolve() in (folder, folder / "masks") and (folder / "masks").is_dir():
            return [p for p in (folder / "masks", folder / "probabilities") if p.is_dir()]
    return [pred]


MASK_SUFFIXES = ("_mask", "_segmentation")  # predict's; the ISIC challenge's submissions


def _mask_files(pred: Path, record) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """The 2D predictions below ``pred`` by the image stem they name: masks (``<stem>_mask.png``, the ISIC challenge's
    ``<stem>_segmentation.png``, or ``<stem>.png``) and binary probability maps (``<stem>_prob.png``), apart. Of
    ``predict``'s output folder (``record``: its ``prediction.json``) or its ``masks/``, the files of ``masks/`` and
    ``probabilities/`` are read; predict's overlays and pictures (:data:`PREDICT_PICTURES`) never are, and the class
    maps ``<stem>_prob_<k>.png`` of several classes are :func:`_class_maps`'."""
    import re

    masks: dict[str, list[Path]] = {}
    maps: dict[str, list[Path]] = {}
    for root in _prediction_roots(pred, record):
        for path in sorted(root.rglob("*")):
            stem = path.stem
            if (not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS or stem.endswith(PREDICT_PICTURES)
                    or re.fullmatch(r".+_prob_\d+", stem)):
                continue
            if stem.endswith("_prob"):
                maps.setdefault(stem[: -len("_prob")], []).append(path)
            else:
                suffix = next((x for x in MASK_SUFFIXES if stem.lower().endswith(x) and len(stem) > len(x)), "")
                masks.setdefault(stem[: len(stem) - len(suffix)], []).append(path)
    return masks, maps


def _class_maps(pred: Path, record) -> dict[tuple[str, int], list[Path]]:
    """The class probability maps ``<stem>_prob_<k>.png`` of ``predict --probabilities`` for several classes, by
    (stem, k), in the folders :func:`_prediction_roots` gives (``record``: its ``prediction.json``, as
    :func:`vmunet_monai.predict.read_record` found it)."""
    import re

    maps: dict[tuple[str, int], list[Path]] = {}
    for root in _prediction_roots(pred, record):
        for path in sorted(root.rglob("*_prob_*")):
            hit = re.fullmatch(r"(.+)_prob_(\d+)", path.stem)
            if hit and path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                maps.setdefault((hit.group(1), int(hit.group(2))), []).append(path)
    return maps


def _write_calibration(calibration, summary: dict, paths: dict, out: Path, split: str, title: str, what: str,
                       images: int) -> None:
    """``metrics_<split>_calibration.json`` and ``.png`` of ``calibration`` into ``out``, its summary (with the
    number of ``images``) into ``summary`` and its files into ``paths``, and one line on the console."""
    from vmunet_monai.evaluation.calibration import errors_line

    summary["calibration"] = {**calibration.summary(), "images": images}
    paths["calibration_json"] = str(out / f"metrics_{split}_calibration.json")
    Path(paths["calibration_json"]).write_text(json.dumps(summary["calibration"], indent=4) + "\n")
    paths["calibration_plot"] = calibration.plot(out / f"metrics_{split}_calibration.png", title=title)
    print(f"calibration of {what}: ECE {summary['calibration']['ece']:.4f}, Brier "
          f"{summary['calibration']['brier']:.4f} over {summary['calibration']['pixels']:,} pixels"
          f"{errors_line(summary['calibration']['errors'], '; ')} ({paths['calibration_plot']})")


def score(pred: str | os.PathLike, dataset: str | os.PathLike, out: str | os.PathLike | None = None,
          split: str = "test", **options) -> dict:
    """:func:`score_volumes` or :func:`score_masks`, as the datalist's labels are volumes or 2D masks."""
    _, items = _items(Path(dataset), split)
    volumes = str(items[0]["label"]).lower().endswith(VOLUME_EXTENSIONS)
    for option in ("mask_values", "worst"):
        if volumes and option in options:
            raise InputError(f"--{option} {options[option]!r}: only for 2D masks; {dataset} holds volumes")
    if not volumes:
        unknown = sorted(set(options) - {"mask_values", "worst"})
        if unknown:
            raise InputError(f"--{unknown[0]}: only for volumes; {dataset} holds 2D masks")
    return (score_volumes if volumes else score_masks)(pred, dataset, out=out, split=split, **options)
