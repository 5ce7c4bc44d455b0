"""The README's main job: synthetic ISIC data -> import -> train the isic_skin_lesion bundle -> Dice (``classes=2``:
the same on lesions with a dark core, two classes).

Every step is the real one: ``demo_data`` writes the ISIC 2017 challenge layout, ``prepare`` imports
it, and training and evaluation run the bundle's own ``train.json`` / ``evaluate.json`` on MONAI's
engines. Only values change, so that the run ends in a few minutes on a 2-core CPU: the image size,
the epoch count, the batch size and the network width/depth (the bundle's defaults stay the paper's).
The bundle is copied to ``OUT/isic_skin_lesion`` with those values written into its configs, so the
trained copy is a complete bundle: ``python -m vmunet_monai predict OUT/isic_skin_lesion IMAGES MASKS``.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

from vmunet_monai.engine.utils import find_bundle
from vmunet_monai.validation import InputError

__all__ = ["DEMO_BASELINES", "DEMO_BATCH_SIZE", "DEMO_EPOCHS", "DEMO_MARK", "DEMO_NETWORK", "claim_folder",
           "make_demo_bundle", "run_demo"]

BUNDLE = "isic_skin_lesion"
# a narrow, shallow VM-UNet: the same architecture at a size a 2-core CPU trains in about a minute
DEMO_NETWORK = {"dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1], "d_state": 8,
                "drop_path_rate": 0.0}
# small batches: more optimizer steps from the few demo images in the same time
DEMO_BATCH_SIZE = 4
# the baselines at about the demo network's size (0.5 M parameters for the U-Net, as DEMO_NETWORK)
#: the file that marks a folder as the demo's own: it replaces its raw/, prepared/ and bundle folders only there
DEMO_MARK = ".vmunet_monai_demo"


def claim_folder(out: Path) -> None:
    """Make ``out`` the demo's working folder, or refuse it: the demo deletes and rewrites its ``raw/``,
    ``prepared/`` and bundle folders inside, so a folder that holds anything it did not write (a dataset in
    ``raw/``, a trained bundle) is refused, naming what is there. New and empty folders, and an earlier demo's
    (:data:`DEMO_MARK`), are taken.

    Raises:
        InputError: ``out`` is a file, or a folder with other contents.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"demo --out {out}: is a file (give a new or empty folder)")
    found = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if found and DEMO_MARK not in found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise InputError(f"demo --out {out}: holds {shown}, and no {DEMO_MARK} that marks a demo's folder (the demo "
                         f"replaces its raw/, prepared/ and bundle folders there; give a new or empty folder)")
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).write_text("python -m vmunet_monai demo works here; a later demo in this folder replaces "
                                 "what it wrote\n")


DEMO_BASELINES = {"unet": {"features": [16, 16, 32, 64, 128, 16]}, "swin_unetr": {"feature_size": 12}}


def _start_afresh(bundle_root: Path) -> None:
    """A demo run again starts from nothing: the earlier run's weights, curves and evaluations are removed (a
    training would set the weights and the curves aside in previous_run/, beside the new ones)."""
    for folder in ("models", "runs", "eval"):
        shutil.rmtree(Path(bundle_root) / folder, ignore_errors=True)


def make_demo_bundle(target: str | Path, size: int = 64, epochs: int = 30, batch_size: int = 8,
                     network: dict | None = None, bundle: str = BUNDLE, classes: dict | None = None,
                     mask_values: list[int] | None = None, extra: dict | None = None) -> Path:
    """Copy ``bundle`` to ``target`` and write the demo's values into its configs.

    Args:
        target: folder of the copy (replaced if it exists, except its models/).
        size: square network input size.
        epochs: training epochs.
        batch_size: training batch size.
        network: ``network_def`` values to change (default :data:`DEMO_NETWORK`).
        bundle: the bundle to copy.
        classes: class number -> name, background left out, for masks of several classes: ``num_classes`` is
            set in the copy's train.json and inference.json, and the output's channels in its metadata.json, so
            the copy predicts, exports and packages those classes with no further option.
        mask_values: the value of background and of each class in the dataset's masks (the datalist's
            ``meta.mask_values``): the copy's inference.json writes its masks with them.
        extra: further config ids to set where train.json or inference.json has them (e.g. ``roi_size``).

    Returns:
        the copy's folder.
    """
    from monai.bundle import ConfigParser

    source = find_bundle(bundle)
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for item in ("configs", "docs", "LICENSE", "large_files.yml"):
        src = source / item
        if src.is_dir():
            shutil.rmtree(target / item, ignore_errors=True)
            shutil.copytree(src, target / item)
        elif src.is_file():
            shutil.copy2(src, target / item)
    values = {"image_size": [size, size], "num_workers": 0, "cache_rate": 1.0, "epochs": epochs,
              "batch_size": batch_size, "val_batch_size": 16}
    if classes and len(classes) > 1:
        values["num_classes"] = len(classes) + 1
    if mask_values is not None:
        values["mask_values"] = [int(v) for v in mask_values]
    values.update(extra or {})
    for name in ("train.json", "inference.json"):
        path = target / "configs" / name
        config = ConfigParser.load_config_file(str(path))
        for key, value in values.items():
            if key in config:
                config[key] = value
        config["network_def"].update(network if network is not None else DEMO_NETWORK)
        path.write_text(json.dumps(config, indent=4) + "\n")
    for name, values in DEMO_BASELINES.items():  # the baseline overlays, shrunk alike
        path = target / "configs" / f"baseline_{name}.json"
        if path.is_file():
            config = json.loads(path.read_text())
            config["network_def"].update(values)
            path.write_text(json.dumps(config, indent=4) + "\n")
    meta_path = target / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    for tensor in ("inputs", "outputs"):
        meta["network_data_format"][tensor]["image" if tensor == "inputs" else "pred"]["spatial_shape"] = [size, size]
    if classes and len(classes) > 1:
        pred = meta["network_data_format"]["outputs"]["pred"]
        pred["num_channels"] = len(classes) + 1
        pred["channel_def"] = {"0": "background", **{str(k): v for k, v in sorted(classes.items())}}
        meta["pred_classes"] = (f"one softmax channel per class ({', '.join(pred['channel_def'].values())}); the "
                                f"written mask holds " + (f"the values {mask_values}, background first"
                                                          if mask_values else f"the class numbers 0-{len(classes)}"))
    meta["description"] += f" Demo copy: network {network or DEMO_NETWORK}, {size}x{size} input, {epochs} epochs."
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")
    return target


def _run_workflow(bundle_root: Path, config_files: list[str], workflow_type: str, **overrides):
    from monai.bundle import ConfigWorkflow

    configs = bundle_root / "configs"
    workflow = ConfigWorkflow(
        config_file=[str(configs / c) for c in config_files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle_root),
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    return workflow


def _train_then_evaluate(bundle_root: Path, prepared: Path, overlay: list[str], report: str):
    """Train the bundle copy (with ``overlay`` configs merged last), evaluate it on the test split; returns the
    best validation Dice, its epoch and the evaluation's handler of type ``report`` (after the run)."""
    trained = _run_workflow(bundle_root, ["train.json", *overlay], "train", dataset_dir=str(prepared.resolve()))
    evaluator = trained.parser.get_parsed_content("validate#evaluator")
    best_dice, best_epoch = float(evaluator.state.best_metric), int(evaluator.state.best_metric_epoch)
    trained.finalize()
    evaluated = _run_workflow(bundle_root, ["train.json", "evaluate.json", *overlay], "eval",
                              dataset_dir=str(prepared.resolve()))
    handler = next(h for h in evaluated.parser.get_parsed_content("validate#handlers") if type(h).__name__ == report)
    evaluated.finalize()
    return best_dice, best_epoch, handler


def _train_and_evaluate(bundle_root: Path, prepared: Path, overlay: list[str]) -> tuple[float, int, dict]:
    """:func:`_train_then_evaluate` for a 2D bundle: the best validation Dice, its epoch and the test summary."""
    best_dice, best_epoch, report = _train_then_evaluate(bundle_root, prepared, overlay, "BinarySegmentationReport")
    summary = dict(report.paths["summary"]["overall"])
    if report.paths["summary"].get("classes"):
        summary["classes"] = report.paths["summary"]["classes"]
    return best_dice, best_epoch, summary


def _print_result(what: str, best_dice: float, best_epoch: int, epochs: int, summary: dict,
                  classes: dict | None = None) -> None:
    print(f"{what}: validation Dice (best, epoch {best_epoch} of {epochs}): {best_dice:.4f}")
    print(f"{what}: test split{', mean over classes' if classes else ''}: per-image Dice "
          f"{summary['per_image']['dice_mean']:.4f} ± {summary['per_image']['dice_sd']:.4f}, pooled DSC "
          f"{summary['pooled']['dsc']:.4f}, pooled mIoU {summary['pooled']['miou']:.4f}")
    for name, entry in (classes or {}).items():
        entry = entry["overall"]
        print(f"{what}: test split, class {name}: per-image Dice {entry['per_image']['dice_mean']:.4f} ± "
              f"{entry['per_image']['dice_sd']:.4f}, pooled DSC {entry['pooled']['dsc']:.4f}")


def _run_folds(bundle_root: Path, prepared: Path, raw_test: Path, folds: int, epochs: int) -> dict:
    """The cross-validation route: each fold trained on its part of the training and validation images and
    evaluated on the ones it held out (``eval/fold<k>/oof``) and on the test split (``eval/fold<k>``); the
    out-of-fold evaluations compared as one cross-validated evaluation; then the test images predicted by each
    fold's model and by the folds as one ensemble, scored and compared."""
    from vmunet_monai.evaluation.compare import run_compare
    from vmunet_monai.evaluation.score import score
    from vmunet_monai.predict import predict

    eval_dir, models = bundle_root / "eval", bundle_root / "models"
    result: dict = {"folds": []}
    for k in range(folds):
        print(f"fold {k} of {folds}: training ({epochs} epochs) on the other folds' images, validating on its own",
              flush=True)
        trained = _run_workflow(bundle_root, ["train.json"], "train", dataset_dir=str(prepared.resolve()),
                                folds=folds, fold=k)
        evaluator = trained.parser.get_parsed_content("validate#evaluator")
        entry = {"fold": k, "best_val_dice": float(evaluator.state.best_metric),
                 "best_epoch": int(evaluator.state.best_metric_epoch)}
        trained.finalize()
        for split, where in (("validation", eval_dir / f"fold{k}" / "oof"), ("test", eval_dir / f"fold{k}")):
            _run_workflow(bundle_root, ["train.json", "evaluate.json"], "eval", dataset_dir=str(prepared.resolve()),
                          folds=folds, fold=k, eval_split=split, eval_dir=str(where)).finalize()
        result["folds"].append(entry)
    print("\ncross-validation (each fold's model on the images it held out):")
    result["cross_validation"] = run_compare([",".join(str(eval_dir / f"fold{k}" / "oof") for k in range(folds))])
    predictions = bundle_root.parent / "predictions"
    weights = [str(models / f"fold{k}" / "model.pt") for k in range(folds)]
    scored = []
    for name, checkpoint in [*((f"fold{k}", w) for k, w in enumerate(weights)), ("ensemble", ",".join(weights))]:
        print(f"predicting the test images with {name}", flush=True)
        predict(str(bundle_root), str(raw_test), str(predictions / name), checkpoint=checkpoint, device="cpu")
        score(predictions / name / "masks", prepared, out=predictions / name / "score", worst=0)
        scored.append(str(predictions / name / "score"))
    print("\ntest images at their own size: the folds' models (runs of one model) and the folds as one ensemble:")
    result["ensemble_comparison"] = run_compare([",".join(scored[:-1]), scored[-1]], labels="folds,ensemble",
                                                out=str(predictions / "compare"))
    return result


DEMO_EPOCHS = {1: 30, 2: 60}  # two classes learn the lesion's ring around its core more slowly
# tiles of about 170x130 with glands of 20-40 pixels: trained near full size
GLANDS = {"epochs": 80, "size": 128}


def _run_glands(out: Path, epochs: int, num: int, size: int, extra: dict) -> dict:
    """Synthetic GlaS tiles -> ``prepare --foreground nonzero`` -> train on binary masks -> ``predict`` the test
    tiles (``--split_touching``, its depth chosen by :func:`~vmunet_monai.evaluation.objects.tune_split` on the
    predicted training tiles) -> ``objects`` against their numbered glands, for the binary masks and for their
    split objects: pixel Dice beside object F1 and object Dice."""
    from vmunet_monai.data import demo_data, prepare
    from vmunet_monai.evaluation.objects import (label_components, object_scores, read_objects, run_objects,
                                                 summarize_objects, tune_split)
    from vmunet_monai.predict import predict

    raw, prepared, tiles, seen = out / "raw", out / "prepared", out / "test_tiles", out / "training_tiles"
    for folder in (raw, tiles, seen, out / "predicted", out / "predicted_training"):
        shutil.rmtree(folder, ignore_errors=True)
    demo_data("polyp_seg", str(raw), num=num, seed=0, layout="glands")
    prepare(BUNDLE, str(raw), str(prepared), foreground="nonzero")  # names give the split: testA and testB
    bundle_root = make_demo_bundle(out / BUNDLE, size=size, epochs=epochs, batch_size=DEMO_BATCH_SIZE, extra=extra)
    _start_afresh(bundle_root)
    print(f"training {BUNDLE} on binary gland masks ({epochs} epochs, {size}x{size}) in {bundle_root}", flush=True)
    best_dice, best_epoch, summary = _train_and_evaluate(bundle_root, prepared, [])
    for folder, pattern in ((tiles, "test*"), (seen, "train_*")):  # tiles with their numbered masks beside them
        folder.mkdir(parents=True)
        for path in sorted(raw.glob(pattern)):
            shutil.copy2(path, folder / path.name)
    # the split depth is chosen on the training tiles, never on the test tiles it is judged by
    predict(str(bundle_root), str(seen), str(out / "predicted_training"), device="cpu")
    print("")
    depth = tune_split(out / "predicted_training" / "masks", seen)["best_split"]  # shown even where none is better
    print("")
    predicted = out / "predicted"
    predict(str(bundle_root), str(tiles), str(predicted), device="cpu", split_touching=depth)
    print("")
    objects = run_objects(predicted / "masks", tiles, out=predicted / "objects", group_by="prefix",
                          title="test tiles, object by object: the binary masks")
    print("")
    split = run_objects(predicted / "instances", tiles, out=predicted / "objects_split", group_by="prefix",
                        title=f"test tiles, object by object: touching objects split (--split_touching {depth:g})")
    print("")
    _print_result("VM-UNet", best_dice, best_epoch, epochs, summary)
    # the binary masks the network learns from, scored the same way: the most a binary mask can reach unsplit
    rows = []
    for anno in sorted(tiles.glob("*_anno.bmp")):
        numbered = read_objects(anno)
        rows.append({"group": "all", **object_scores(numbered, label_components(numbered > 0), hausdorff=False)})
    ceiling = summarize_objects(rows)["overall"]
    whole, cut = objects["overall"], split["overall"]
    print(f"VM-UNet: test tiles, object by object: F1 {whole['pooled']['f1']:.4f}, object Dice "
          f"{whole['per_image']['object_dice_mean']:.4f} against pixel Dice {whole['per_image']['dice_mean']:.4f}; "
          f"the binary training masks themselves score F1 {ceiling['pooled']['f1']:.4f}, object Dice "
          f"{ceiling['per_image']['object_dice_mean']:.4f}: glands that touch are one object in a binary mask")
    print(f"VM-UNet: the same masks with touching glands split (predict --split_touching {depth:g}, the best depth "
          f"on the training tiles): F1 {cut['pooled']['f1']:.4f}, object Dice "
          f"{cut['per_image']['object_dice_mean']:.4f} (pictures: {predicted / 'objects_split' / 'pictures'})")
    return {"best_val_dice": best_dice, "best_epoch": best_epoch, "test_summary": summary, "objects": objects,
            "objects_split": split, "binary_masks_objects": ceiling, "split_depth": depth,
            "bundle_root": str(bundle_root)}


# cine MRI in ACDC's layout: few patients, the volume bundle's slice-wise training at a small window
ACDC = {"epochs": 30, "size": 96, "num": 16, "iterations_per_epoch": 10}


def _run_acdc(out: Path, epochs: int, num: int, size: int, extra: dict) -> dict:
    """Synthetic ACDC (patient folders, ``Info.cfg``) -> ``prepare`` (split by patient, phases as groups) -> train
    the ``synapse_multiorgan`` bundle on MRI -> evaluate the test frames (Dice and HD95 per class, ED and ES apart,
    each patient's clinical indices against the ground truth) -> ``predict`` the testing folder (volumes and
    clinical indices from the predictions alone)."""
    from vmunet_monai.data import demo_data, prepare
    from vmunet_monai.data.common import datalist_classes
    from vmunet_monai.predict import predict

    volumes = "synapse_multiorgan"
    raw, prepared, predicted = out / "raw", out / "prepared", out / "predicted"
    for folder in (raw, predicted):
        shutil.rmtree(folder, ignore_errors=True)
    demo_data(volumes, str(raw), num=num, seed=0, layout="acdc")
    prepare(volumes, str(raw), str(prepared))
    extra = {"roi_size": [size, size], "intensity": "mri", "iterations_per_epoch": ACDC["iterations_per_epoch"],
             "val_interval": max(1, epochs // 3), "sw_batch_size": 8, **extra}
    root = make_demo_bundle(out / volumes, size=size, epochs=epochs, bundle=volumes,
                            classes=datalist_classes(prepared), extra=extra)
    _start_afresh(root)
    print(f"training {volumes} on cine MRI ({epochs} epochs of {ACDC['iterations_per_epoch']} iterations, "
          f"{size}x{size} slices, network {DEMO_NETWORK}) in {root}", flush=True)
    best_dice, best_epoch, handler = _train_then_evaluate(root, prepared, [], "OrganMetricsHandler")
    summary = handler.summary
    print("")
    predict(str(root), str(raw / "database" / "testing"), str(predicted), device="cpu")
    print("")
    print(f"VM-UNet: validation Dice (best, epoch {best_epoch} of {epochs}): {best_dice:.4f}")
    per_class = ", ".join(f"{name} {entry['mean']:.4f}" for name, entry in summary["dice"]["per_organ"].items())
    print(f"VM-UNet: {summary['num_cases']} test frames: Dice {summary['dice']['mean_over_organs']:.4f} ({per_class}), "
          f"HD95 {summary['hd95_mm']['mean_over_organs']:.2f} mm")
    for phase, part in summary.get("groups", {}).items():
        print(f"VM-UNet: {phase} frames: Dice {part['dice']['mean_over_organs']:.4f}, HD95 "
              f"{part['hd95_mm']['mean_over_organs']:.2f} mm")
    clinical = summary.get("clinical")
    if clinical:
        ef = clinical["indices"].get("LV_EF")
        if ef:
            print(f"VM-UNet: LV ejection fraction of {ef['n']} test patients: predicted {ef['pred_mean']:.1f}% against "
                  f"{ef['truth_mean']:.1f}%, bias {ef['bias']:+.2f} ± {ef['sd_difference']:.2f} points "
                  f"({clinical['paths']['plot']})")
    print(f"model: {root / 'models' / 'model.pt'}; curves: {root / 'runs' / 'training_curves.png'}; "
          f"report: {root / 'eval'}; predictions: {predicted}")
    return {"best_val_dice": best_dice, "best_epoch": best_epoch, "test_summary": summary, "bundle_root": str(root),
            "predicted": str(predicted)}


def _restores_deterministic_mode(function):
    """Give back torch's deterministic-algorithms mode as it was before ``function`` (the demo's training turns
    it on or off for the whole process; a Python session that runs the demo keeps its own setting)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import torch

        before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        try:
            return function(*args, **kwargs)
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    return wrapper


@_restores_deterministic_mode
def run_demo(out: str = "demo_run", epochs: int | None = None, num: int | None = None, size: int | None = None,
             baseline: str = "", classes: int = 1, glands: bool = False, acdc: bool = False, folds: int = 0,
             determinism: bool = True) -> dict:
    """Synthetic ISIC 2017-layout data -> ``prepare`` -> train -> evaluate on the test split; prints the Dice.

    Args:
        out: working folder (``raw/``, ``prepared/`` and the bundle copy ``isic_skin_lesion/``).
        epochs: training epochs (default 30; 60 with two classes, 80 with glands, 30 of 10 iterations with acdc).
        num: synthetic training images (validation and test get ``num // 4`` each; default 48), or with ``acdc``
            patients (default 16, a fifth of them tested).
        size: network input size (default 64; 128 with glands; 96 with acdc).
        baseline: also train and evaluate a MONAI baseline the same way (``unet`` or ``swin_unetr``, through the
            bundle's ``configs/baseline_<name>.json`` overlay, shrunk as :data:`DEMO_BASELINES`), then compare
            the two on the test images (:mod:`vmunet_monai.evaluation.compare`).
        classes: 2 trains on lesions with a dark core, two classes, in the your-own-data folders layout
            (``demo_data --layout folders --classes 2``): the multi-class route end to end, with one softmax
            output per class and the test Dice of each class.
        glands: synthetic GlaS tiles instead (``demo_data polyp_seg --layout glands``): trained on binary masks,
            the test tiles predicted and scored object by object against their numbered glands
            (:mod:`vmunet_monai.evaluation.objects`), also with touching glands split at the depth that
            ``tune_split`` finds best on the predicted training tiles; the result then has ``objects``,
            ``objects_split`` and ``split_depth``.
        acdc: synthetic cine MRI in ACDC's patient folders instead (``demo_data synapse_multiorgan --layout
            acdc``): the ``synapse_multiorgan`` bundle trained slice-wise on RV, MYO and LV with ``--intensity
            mri``, evaluated with ED and ES apart and each test patient's clinical indices, and the testing
            folder predicted (``volumes.csv``, ``clinical_indices.csv``); the result then has ``predicted``.

        folds: a K-fold cross-validation instead of one training run (K at least 2): each fold trained and evaluated
            on the images it held out and on the test split, the out-of-fold evaluations compared as one, and
            the test images predicted by every fold's model and by the folds as one ensemble, scored and
            compared; the result then has ``folds``, ``cross_validation`` and ``ensemble_comparison``.
        determinism: train in the bundles' deterministic mode (``determinism`` true in the copy's train.json:
            deterministic kernels, the CPU scan on one thread), so that a second run on the same machine and
            software repeats the first one's weights and numbers exactly; it costs the demo's small network
            no time on a CPU. False trains as the bundles do by default: seeded, but the numbers vary a little
            between runs, as threads add up gradients in a varying order.

    Returns:
        ``{"best_val_dice", "best_epoch", "test_summary", "seconds", "bundle_root"}`` (``test_summary`` with
        ``classes``, each class's summary, for two classes), and with a baseline
        ``"baseline"`` (its ``best_val_dice``, ``best_epoch``, ``test_summary``) and ``"comparison"``.
    """
    from vmunet_monai.validation import check_at_least

    if classes not in (1, 2) or isinstance(classes, bool):
        raise InputError(f"demo --classes {classes!r}: 1 (lesions, the ISIC challenge layout) or 2 (lesions with a "
                         f"dark core, your-own-data folders)")
    for flag, on in (("glands", glands), ("acdc", acdc)):
        if on and (classes != 1 or baseline or (glands and acdc)):
            raise InputError(f"demo --{flag}: on its own (not with --classes, --baseline or another data set)")
    if folds:
        check_at_least("demo --folds", folds, 2)
        if classes != 1 or baseline or glands or acdc:
            raise InputError(f"demo --folds {folds}: on its own (not with --classes, --baseline, --glands or --acdc)")
    mode = GLANDS if glands else ACDC if acdc else {"epochs": DEMO_EPOCHS[classes], "size": 64}
    epochs = mode["epochs"] if epochs is None else epochs
    size = mode["size"] if size is None else size
    num = (ACDC["num"] if acdc else 48) if num is None else num
    for name, value, least in (("epochs", epochs, 1), ("num", num, 4), ("size", size, 32)):
        check_at_least(f"demo --{name}", value, least)
    baseline = str(baseline or "").strip()
    if baseline and baseline not in DEMO_BASELINES:
        raise InputError(f"demo --baseline {baseline!r}: choose from {', '.join(DEMO_BASELINES)} (or leave it out)")
    if baseline == "swin_unetr" and size % 32:
        raise InputError(f"demo --size {size}: SwinUNETR needs a multiple of 32 (it halves the map five times)")
    from vmunet_monai.engine import handlers

    said = handlers.RESUME_HINT
    handlers.RESUME_HINT = "the demo has no --resume: run it again to start over (it takes minutes)"
    try:
        return _run_demo(out, epochs, num, size, baseline, classes, glands, acdc, folds, determinism)
    finally:
        handlers.RESUME_HINT = said


def _run_demo(out, epochs, num, size, baseline, classes, glands, acdc, folds, determinism) -> dict:
    """:func:`run_demo` once its arguments are checked."""
    from vmunet_monai.data import demo_data, prepare
    from vmunet_monai.validation import check_flag

    start = time.perf_counter()
    out = Path(out)
    if acdc and not 4 <= num <= 30:
        raise InputError(f"demo --num {num}: the ACDC demo writes 4 to 30 patients")
    check_flag("demo --determinism", determinism)
    claim_folder(out)
    extra = {"determinism": determinism}
    if glands or acdc:
        result = (_run_glands if glands else _run_acdc)(out, epochs, num, size, extra)
        result["seconds"] = time.perf_counter() - start
        print(f"total {result['seconds'] / 60:.1f} min")
        return result
    raw, prepared = out / "raw", out / "prepared"
    shutil.rmtree(raw, ignore_errors=True)
    from vmunet_monai.data.common import datalist_classes, datalist_meta

    if classes == 2:
        demo_data(BUNDLE, str(raw), num=num, seed=0, layout="folders", classes=2)
        prepare(BUNDLE, str(raw), str(prepared), test_fraction=0.2)  # num // 4 test images, as the challenge layout
    else:
        demo_data(BUNDLE, str(raw), num=num, seed=0)
        prepare(BUNDLE, str(raw), str(prepared))
    names = datalist_classes(prepared) if classes == 2 else None
    levels = datalist_meta(prepared).get("mask_values") if classes == 2 else None
    bundle_root = make_demo_bundle(out / BUNDLE, size=size, epochs=epochs, batch_size=DEMO_BATCH_SIZE,
                                   classes=names, mask_values=levels, extra=extra)
    _start_afresh(bundle_root)
    shutil.rmtree(out / "predictions", ignore_errors=True)  # the closing hint's output: stale with new weights
    if folds:
        print(f"{folds}-fold cross-validation of {BUNDLE} ({epochs} epochs, {size}x{size}, network {DEMO_NETWORK}) "
              f"in {bundle_root}", flush=True)
        result = _run_folds(bundle_root, prepared, raw / "ISIC-2017_Test_v2_Data", folds, epochs)
        result.update(bundle_root=str(bundle_root), seconds=time.perf_counter() - start)
        print(f"models: {bundle_root / 'models'}/fold*; reports: {bundle_root / 'eval'}/fold*; ensemble: "
              f"{out / 'predictions' / 'ensemble'}; total {result['seconds'] / 60:.1f} min")
        return result
    print(f"training {BUNDLE} ({epochs} epochs, {size}x{size}, network {DEMO_NETWORK}) in {bundle_root}", flush=True)
    best_dice, best_epoch, summary = _train_and_evaluate(bundle_root, prepared, [])
    result = {"best_val_dice": best_dice, "best_epoch": best_epoch, "test_summary": summary,
              "bundle_root": str(bundle_root)}
    if baseline:
        overlay = f"baseline_{baseline}.json"
        print(f"training the baseline {baseline} ({DEMO_BASELINES[baseline]}) the same way: configs/{overlay}",
              flush=True)
        b_dice, b_epoch, b_summary = _train_and_evaluate(bundle_root, prepared, [overlay])
        result["baseline"] = {"name": baseline, "best_val_dice": b_dice, "best_epoch": b_epoch,
                              "test_summary": b_summary}
    seconds = time.perf_counter() - start
    print("")
    _print_result("VM-UNet", best_dice, best_epoch, epochs, summary, summary.get("classes"))
    if baseline:
        _print_result(baseline, b_dice, b_epoch, epochs, b_summary, b_summary.get("classes"))
        from vmunet_monai.evaluation.compare import run_compare

        print("")
        eval_dir = bundle_root / "eval"
        result["comparison"] = run_compare([str(eval_dir), str(eval_dir / f"baseline_{baseline}")],
                                           labels=["vmunet", baseline], out=str(eval_dir / "compare"))
    print(f"model: {bundle_root / 'models' / 'model.pt'}; curves: {bundle_root / 'runs' / 'training_curves.png'}; "
          f"report: {bundle_root / 'eval'}; total {seconds / 60:.1f} min")
    test_images = raw / ("images" if classes == 2 else "ISIC-2017_Test_v2_Data")
    print(f"next, segment images with it and see where it is unsure, and where its mirror images disagree: "
          f"python -m vmunet_monai predict {bundle_root} {test_images} {out / 'predictions'} --uncertainty --tta")
    result["seconds"] = seconds
    return result
