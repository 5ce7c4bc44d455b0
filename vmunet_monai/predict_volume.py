"""Segment CT volumes (NIfTI files, folders of them, DICOM series) with the Synapse bundle, in their own space.

:func:`predict_volumes` runs the bundle's ``inference.json`` (``SliceInferer`` over axial slices after
RAS orientation, ``Invertd`` back to the input grid) and returns the written NIfTI paths. The
segmentations have the input's shape, affine and orientation; DICOM series are read through ITK.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vmunet_monai.evaluation.uncertainty import check_rank_by
from vmunet_monai.validation import VOLUME_EXTENSIONS  # re-exported here, as before

__all__ = ["VOLUME_EXTENSIONS", "default_bundle_root", "find_volumes", "predict_volumes"]

BUNDLE_NAME = "synapse_multiorgan"


def _is_dicom_file(path: str) -> bool:
    if path.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_series(folder: str) -> bool:
    files = [os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith(".")]
    files = [f for f in files if os.path.isfile(f)]
    return bool(files) and any(_is_dicom_file(f) for f in files[:20])


def _volume_files(folder: str, ignored: list[str] | None) -> list[str]:
    """The volume files directly in ``folder``, leaving out labels beside their volumes (``X_gt.nii.gz`` beside
    ``X.nii.gz``, as ACDC and others keep them); other files go to ``ignored`` when it is given."""
    from vmunet_monai.data.volumes import labels_beside

    labels = {str(p) for p in labels_beside(Path(folder))[0].values()}
    found = []
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        if not os.path.isfile(full) or name.startswith("."):
            continue
        if name.lower().endswith(VOLUME_EXTENSIONS):
            if full not in labels:
                found.append(full)
        elif ignored is not None:
            ignored.append(full)
    return found


def find_volumes(path: str, ignored: list[str] | None = None) -> list[str]:
    """Volumes under ``path``: a volume file, a DICOM series folder, or a folder of volume files, series folders
    and folders of volume files (one per patient); labels beside their volumes (``X_gt``, ``X_seg``) are left out.

    Args:
        path: file or folder.
        ignored: if given, the files in a folder that are neither volumes nor DICOM series are appended to it.

    Returns:
        Sorted paths; a DICOM series is returned as its folder (read by ``ITKReader`` as one volume).

    Raises:
        FileNotFoundError: if ``path`` does not exist or holds no volume.
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.isfile(path):
        if path.lower().endswith(VOLUME_EXTENSIONS):
            return [path]
        raise FileNotFoundError(f"{path}: not a volume file (expected one of {', '.join(VOLUME_EXTENSIONS)})")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if _is_dicom_series(path):
        return [path]
    found = _volume_files(path, ignored)
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isdir(full) and _is_dicom_series(full):
            found.append(full)
        elif os.path.isdir(full) and not name.startswith("."):  # one folder per patient (ACDC): its volumes
            found += _volume_files(full, None)
    found.sort()
    if not found:
        raise FileNotFoundError(
            f"{path}: no volumes ({', '.join(VOLUME_EXTENSIONS)} files or DICOM series folders) found"
        )
    return found


def default_bundle_root() -> str:
    """The ``synapse_multiorgan`` bundle folder (``$VMUNET_BUNDLES_DIR``, the source checkout, or ``./bundles``).

    Raises:
        FileNotFoundError: if the bundle is in none of those places.
    """
    from vmunet_monai.engine import find_bundle

    return str(find_bundle(BUNDLE_NAME))


def _output_name(source: str) -> str:
    from vmunet_monai.evaluation.ct import _case_name

    return f"{_case_name(source)}_seg.nii.gz"  # named after the case, as the evaluation names it


def predict_volumes(
    input: str | Sequence[str],
    output: str,
    checkpoint: str | None = None,
    device: str | None = None,
    bundle_root: str | None = None,
    sw_batch_size: int | None = None,
    baseline: str = "",
    tta: bool = False,
    model: str | None = None,
    montage: bool = True,
    probabilities: bool = False,
    resume: bool = False,
    uncertainty: bool = False,
    rank_by: str = "share",
    **overrides,
) -> list[str]:
    """Segment CT volumes with the Synapse bundle and write ``<name>_seg.nii.gz`` into ``output``.

    Every volume is read completely once before the network runs
    (:func:`vmunet_monai.validation.read_volume`): a volume that is empty, truncated, unreadable, 2D,
    has several channels or time points, or holds NaN/Inf voxels is skipped and named on stderr, and
    the others are segmented. So is a volume whose output name another input already takes.

    Args:
        input: a volume file, a DICOM series folder, a folder of them, or a list of such paths.
        output: folder for the segmentations (label values 0-8, see the bundle's ``channel_def``; 0 to
            ``num_classes - 1`` for your own classes); not an input, not an input folder and not inside one.
        checkpoint: model weights (default ``<bundle_root>/models/model.pt``); several joined by commas, or a list,
            are an ensemble whose class probabilities are averaged (:func:`vmunet_monai.predict.weights_files`).
        device: ``cpu``, ``cuda``, ``cuda:1``...; default: CUDA when available.
        bundle_root: the bundle folder (default: ``bundles/synapse_multiorgan`` of this checkout).
        sw_batch_size: windows per network call (default: the bundle's).
        baseline: segment with a baseline trained through the bundle's ``configs/baseline_<name>.json``
            overlay (``unet``, ``swin_unetr``); the default checkpoint is then ``models/baseline_<name>/model.pt``.
        tta: average the class probabilities over each slice and its in-plane mirror images (four passes of
            the sliding window; :class:`vmunet_monai.engine.FlipTTAInferer`).
        model: an exported network (``.ts``, ``.onnx``, ``.pt2``) to run instead of ``network_def`` and its
            weights (the bundle's ``configs/inference_exported.json``).
        montage: also draw ``output/montages/<name>.png`` per volume: axial slices through the segmented
            classes with the prediction filled in, to look at without a NIfTI viewer (:func:`write_montages`); with
            ``uncertainty`` also ``output/montages/<name>_uncertainty.png``, the same slices with the uncertainty
            (and with ``tta`` or an ensemble ``<name>_disagreement.png``, with the disagreement).
        probabilities: also write ``output/<name>_prob.nii.gz`` per volume: the class probabilities, background
            first, as a 4D NIfTI on the segmentation's grid, stored in 8 bits with the scale factor 1/255
            (:class:`vmunet_monai.engine.SaveProbabilityVolumed`).
        resume: go on with a run that stopped: the segmentations (and probability volumes) it wrote in ``output``
            that read back whole are kept and only the other volumes are segmented, provided its
            ``prediction.json`` names the same bundle, weights and options
            (:func:`vmunet_monai.predict.resume_check`).
        uncertainty: also write ``output/<name>_uncertainty.nii.gz`` per volume, where the model is unsure (the
            normalised entropy of its class probabilities, 0 to 1, 8 bits with the scale factor 1/255), and
            ``output/uncertainty.csv``, the most doubtful volume first
            (:mod:`vmunet_monai.evaluation.uncertainty`); implies ``probabilities``, from which it is computed.
            With ``tta`` or an ensemble also ``output/<name>_disagreement.nii.gz``, where the passes disagree (the
            table's ``mean_disagreement``), from ``output/<name>_pass_entropy.nii.gz``, the passes' mean entropy.
        rank_by: the column of ``uncertainty.csv`` whose largest value comes first (``share``, ``uncertainty`` or,
            with several passes, ``disagreement``: :func:`vmunet_monai.evaluation.uncertainty.check_rank_by`).
        overrides: further ``inference.json`` ids to override (e.g. ``num_classes=3`` for a bundle trained on your
            own classes, ``network_def={...}``, ``roi_size=[...]``).

    Returns:
        The written NIfTI paths, in input order (skipped volumes left out); ``output/prediction.json`` records
        the bundle, weights, classes and settings (:func:`vmunet_monai.predict.write_record`),
        ``output/volumes.csv`` each class's volume per case, for ACDC's patient folders
        ``output/clinical_indices.csv`` each patient's indices (:mod:`vmunet_monai.evaluation.volumetry`), and
        ``output/montages/`` a picture per volume (``montage``).

    Raises:
        FileNotFoundError: for a missing input, checkpoint or bundle.
        vmunet_monai.predict.NothingToPredictError: when every volume was skipped.
        vmunet_monai.validation.InputError: for an output folder inside the inputs.
        vmunet_monai.weights.CheckpointError: for a checkpoint that is unreadable or not of the bundle's network.
    """
    from monai.bundle import ConfigWorkflow

    from vmunet_monai.data.common import report_skipped
    from vmunet_monai.data.volumes import airless_note, hounsfield_like, intensity_span
    from vmunet_monai.engine.utils import inference_configs
    from vmunet_monai.evaluation.volumetry import write_volumes
    from vmunet_monai.predict import (NothingToPredictError, bundle_class_names, finished_output, resume_check,
                                      takes_pass_entropy, weights_files, write_record)
    from vmunet_monai.validation import InputError, check_device, check_output_location, read_volume
    from vmunet_monai.weights import check_checkpoint_fits

    device = check_device(device)
    bundle_root = os.path.abspath(bundle_root or default_bundle_root())
    config_files, default_ckpt, train = inference_configs(bundle_root, baseline, model)
    paths = [input] if isinstance(input, (str, os.PathLike)) else list(input)
    others: list[str] = []
    volumes = [v for p in paths for v in find_volumes(str(p), others)]
    weights = [str(w) for w in weights_files(Path(bundle_root), checkpoint, default_ckpt, train, model, device)]
    source = weights[0]
    output = str(check_output_location([str(p) for p in paths] + volumes, output))
    good, taken, airless = [], {}, []
    skipped = [{"file": f, "reason": f"{f}: not a volume file (expected {', '.join(VOLUME_EXTENSIONS)} files or "
                "DICOM series folders; 2D images go to the 2D bundles)"} for f in others]
    for volume in volumes:
        name = _output_name(volume)
        if name in taken:
            skipped.append({"file": volume, "reason": f"{volume}: its output {name} is already the output of "
                            f"{taken[name]} (give volumes distinct names)"})
            continue
        try:
            _, voxels = read_volume(volume, read_data=True)
        except InputError as exc:
            skipped.append({"file": volume, "reason": str(exc)})
            continue
        span = intensity_span(voxels)
        del voxels
        if not hounsfield_like(span):
            airless.append((volume, span))
        taken[name] = volume
        good.append(volume)
    if not good:
        first = f"; first: {skipped[0]['reason']}" if skipped else ""
        raise NothingToPredictError(f"{input}: no volume could be segmented ({len(skipped)} skipped{first})")
    written = [os.path.join(output, _output_name(v)) for v in good]
    probabilities = bool(probabilities or uncertainty)  # the uncertainty is computed from the probability volumes
    maps = [w[: -len("_seg.nii.gz")] + "_prob.nii.gz" for w in written] if probabilities else []
    spread = bool(uncertainty) and (bool(tta) or len(weights) > 1) and takes_pass_entropy(config_files)
    check_rank_by(rank_by, uncertainty, spread)
    spreads = [w[: -len("_seg.nii.gz")] + "_pass_entropy.nii.gz" for w in written] if spread else []
    check_output_location(volumes, output, written + maps + spreads)
    os.makedirs(output, exist_ok=True)
    settings = {"baseline": baseline or None, "tta": bool(tta), "device": device, "sw_batch_size": sw_batch_size,
                "probabilities": bool(probabilities), "uncertainty": bool(uncertainty),
                "overrides": {k: v for k, v in overrides.items() if isinstance(v, (str, int, float, list, bool))}}
    todo = good
    if resume and resume_check(output, bundle_root, weights, bool(model), settings, ("baseline", "tta", "overrides")):
        files = [[w, *maps[i:i + 1], *spreads[i:i + 1]] for i, w in enumerate(written)]  # each volume's outputs
        todo = [v for v, mine in zip(good, files) if not all(finished_output(p) for p in mine)]
        print(f"--resume: {len(good) - len(todo)} of {len(good)} volume(s) already segmented in {output}, "
              f"{len(todo)} to go", flush=True)
    config = dict(overrides)
    config.update(bundle_root=bundle_root, output_dir=output, datalist=todo, tta=bool(tta))
    if probabilities:
        config["probabilities"] = True
    if spread:
        config["pass_entropy"] = True
    config["exported_model" if model else "checkpoint"] = source
    if len(weights) > 1:  # the bundle's own ensemble: the first loaded into the network, the rest as members
        config["ensemble_checkpoints"] = weights
    if device is not None:
        config["device"] = f"$torch.device('{device}')"
    if sw_batch_size is not None:
        config["sw_batch_size"] = int(sw_batch_size)
    workflow = ConfigWorkflow(
        config_file=config_files,
        meta_file=os.path.join(bundle_root, "configs", "metadata.json"),
        logging_file=os.path.join(bundle_root, "configs", "logging.conf"),
        workflow_type="infer",
        **config,
    )
    workflow.initialize()
    if airless and workflow.parser.get_parsed_content("intensity") == "ct":
        print(f"{airless_note(airless, len(good))} this bundle's CT window expects, so their segmentations may be "
              f"empty or wrong; a bundle trained on MRI or scaled CT takes --intensity mri", flush=True)
    if not model:
        for path in weights:  # an ensemble's too, each named if it is not of this network
            check_checkpoint_fits(workflow.parser.get_parsed_content("network"), path)
    # the record of a run under way: what --resume checks against
    write_record(output, workflow.parser, bundle_root, weights, bool(model), paths, [], skipped, settings,
                 finished=False)
    if todo:
        workflow.run()
    workflow.finalize()
    missing = [w for w in written + maps + spreads if not os.path.isfile(w)]
    if missing:
        raise RuntimeError(f"inference finished but did not write {missing}")
    if maps:
        print(f"{len(maps)} probability volume(s) under {output}")
    doubts = []  # the table's rows, in the order of the volumes: where each one's maps were written
    if uncertainty:
        from vmunet_monai.evaluation.uncertainty import write_uncertainty_table, write_uncertainty_volumes

        doubts = write_uncertainty_volumes(list(zip(good, maps, spreads or [None] * len(maps))))
        write_uncertainty_table(doubts, output, by=rank_by)
    report_skipped(skipped, "volume")
    write_record(output, workflow.parser, bundle_root, weights, bool(model), paths, written, skipped, settings,
                 kept=len(good) - len(todo))
    classes = int(workflow.parser.get_parsed_content("num_classes"))
    names = bundle_class_names(bundle_root, classes) or {c: f"class_{c}" for c in range(1, classes)}
    write_volumes(good, written, names, output)  # volumes.csv; ACDC: clinical_indices.csv
    if montage:
        ct = workflow.parser.get_parsed_content("intensity") == "ct"  # else MRI: each volume's own percentiles
        write_montages(good, written, os.path.join(output, "montages"), num_classes=classes, class_names=names,
                       window=workflow.parser.get_parsed_content("hu_window") if ct else None,
                       uncertainties=[r["picture"] for r in doubts] if uncertainty else None,
                       disagreements=[r.get("disagreement_picture") for r in doubts] if spread else None)
    return written


def write_montages(sources: Sequence[str], segmentations: Sequence[str], folder: str, num_classes: int,
                   window: Sequence[float] | None = None, class_names: dict[int, str] | None = None,
                   uncertainties: Sequence[str] | None = None,
                   disagreements: Sequence[str] | None = None) -> list[str]:
    """``folder/<segmentation name>.png`` for each volume: up to eight axial slices through its segmented classes,
    the prediction filled in colour over the image (:func:`vmunet_monai.evaluation.ct.plot_montage`); with
    ``uncertainties`` also ``folder/<segmentation name>_uncertainty.png``, the same slices with the model's
    uncertainty in colour and the prediction's outlines, and with ``disagreements`` likewise
    ``folder/<segmentation name>_disagreement.png``.

    Args:
        sources: the segmented volumes (files or DICOM series folders), in the order of ``segmentations``.
        segmentations: the written label maps, on their volumes' grids.
        num_classes: label values including background (the colour scale).
        window: the display window (CT: the HU window the network saw); None: each volume's 1st to 99th
            percentile (MRI).
        class_names: label value -> name, for the legend.
        uncertainties: the ``<case>_uncertainty.nii.gz`` volumes of ``predict --uncertainty``, in the same order.
        disagreements: the ``<case>_disagreement.nii.gz`` volumes of ``predict --uncertainty --tta`` (or of an
            ensemble), in the same order.

    Returns:
        the pictures written; a volume that cannot be drawn is named in a warning and left out, never failing the
        prediction already written.
    """
    import warnings

    import nibabel as nib
    import numpy as np
    from monai.transforms import LoadImage
    from tqdm import tqdm

    from vmunet_monai.evaluation.ct import _case_name, plot_montage

    os.makedirs(folder, exist_ok=True)
    drawn = []
    none = [None] * len(segmentations)
    heat = list(zip(uncertainties if uncertainties is not None else none,
                    disagreements if disagreements is not None else none))
    for source, seg, maps in tqdm(list(zip(sources, segmentations, heat)), desc="montages", unit="volume",
                                  leave=False):
        name = _case_name(seg)
        try:
            labels = nib.load(seg)
            image = np.asarray(LoadImage(image_only=True)(source), dtype=np.float32)
            image = image[..., 0] if image.ndim == 4 else image
            if image.shape != labels.shape:
                raise ValueError(f"image {image.shape} and segmentation {labels.shape} differ in shape")
            shown = tuple(window) if window is not None else tuple(np.percentile(image, (1, 99)).tolist())
            path = os.path.join(folder, f"{name}.png")
            plot_montage(image, np.asarray(labels.dataobj), labels.affine, path, window=shown,
                         title=f"{os.path.basename(str(source).rstrip('/'))}: prediction", num_classes=num_classes,
                         class_names=class_names)
            drawn.append(path)
            for kind, doubt in zip(("uncertainty", "disagreement"), maps):
                if doubt is None:
                    continue
                path = os.path.join(folder, f"{name}_{kind}.png")
                plot_montage(image, np.asarray(labels.dataobj), labels.affine, path, window=shown,
                             title=f"{os.path.basename(str(source).rstrip('/'))}: {kind}", num_classes=num_classes,
                             class_names=class_names, uncertainty=np.asarray(nib.load(doubt).dataobj, np.float32),
                             heat_name=kind, heat_power=1.0 if kind == "disagreement" else 2.0)
                drawn.append(path)
        except Exception as exc:  # a picture must never cost the segmentations already written
            warnings.warn(f"{source}: montage not drawn ({exc})")
    if drawn:
        print(f"{len(drawn)} montage(s) under {folder}")
    return drawn
