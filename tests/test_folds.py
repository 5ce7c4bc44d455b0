"""Cross-validation: ``--folds K --fold k`` on the bundles' train and evaluate configs deals the datalist's training
and validation splits (together) into K folds by patient or case, never splitting one, and keeps each fold's
checkpoints, reports and logs in their own folders."""

from __future__ import annotations

import csv
import json
import random

import pytest
from bundle_helpers import config_path, copy_bundle, make_prepared, tiny_overrides, workflow

from vmunet_monai.data.common import cross_validation_split, fold_folder, load_datalist, run_folder
from vmunet_monai.validation import InputError


def _items():
    """Four two-frame patients (ACDC-like), three cases and five lone images."""
    items = [{"image": f"p{p}_{frame}.nii.gz", "patient": f"patient{p:03d}", "case": f"p{p}_{frame}"}
             for p in range(4) for frame in ("ed", "es")]
    items += [{"image": f"c{c}.nii.gz", "case": f"{c:04d}"} for c in range(3)]
    items += [{"image": f"img{i}.png"} for i in range(5)]
    return items


@pytest.mark.parametrize("folds", [2, 3, 5])
def test_the_folds_partition_the_pool_and_keep_patients_together(folds):
    items = _items()
    validated = []
    for fold in range(folds):
        training, validation = cross_validation_split(items, folds, fold)
        assert sorted(map(json.dumps, training + validation)) == sorted(map(json.dumps, items))
        assert not {i["image"] for i in training} & {i["image"] for i in validation}
        for patient in {i["patient"] for i in items if "patient" in i}:  # both frames on one side
            sides = {any(i.get("patient") == patient for i in part) for part in (training, validation)}
            assert sides == {True, False}
        validated += [i["image"] for i in validation]
        shuffled = list(items)
        random.Random(fold).shuffle(shuffled)  # the datalist's order does not matter
        assert cross_validation_split(shuffled, folds, fold)[1] == [i for i in shuffled if i in validation]
    assert sorted(validated) == sorted(i["image"] for i in items)  # every item validated exactly once
    groups = [len({i.get("patient", i.get("case", i["image"])) for i in cross_validation_split(items, folds, f)[1]})
              for f in range(folds)]
    assert max(groups) - min(groups) <= 1  # 12 groups dealt in turn
    assert cross_validation_split(items, folds, 0, seed=1) != cross_validation_split(items, folds, 0, seed=0)


def test_bad_folds_are_refused_by_name():
    for folds, fold, message in ((1, 0, "--folds 1: give 0"), (-2, 0, "--folds -2: give 0"),
                                 (2.5, 0, "--folds 2.5"), (5, 5, "--fold 5: give a fold from 0 to 4 (--folds 5)"),
                                 (3, -1, "--fold -1: give a fold from 0 to 2"),
                                 (0, 1, "--fold 1: give --folds K first")):
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            fold_folder(folds, fold)
    assert (fold_folder(0, 0), fold_folder(5, 3)) == ("", "/fold3")
    assert (run_folder("", 0, 0), run_folder("seed1"), run_folder("seed-2.b", 5, 3)) == ("", "/seed1", "/seed-2.b/fold3")
    for bad in ("a/b", "..", "two words", "../up"):
        with pytest.raises(InputError, match=rf"--run_name {bad!r}: one folder name".replace(".", r"\.")):
            run_folder(bad)
    with pytest.raises(InputError, match="--folds 20: the pool holds 12 patient"):
        cross_validation_split(_items(), 20, 0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared("isic_skin_lesion", tmp_path_factory.mktemp("isic_folds"), num=8)


def test_load_datalist_deals_training_and_validation_and_leaves_test_alone(prepared):
    pool = load_datalist(prepared, "training") + load_datalist(prepared, "validation")
    parts = [(load_datalist(prepared, "training", folds=3, fold=k), load_datalist(prepared, "validation", folds=3,
                                                                                    fold=k)) for k in range(3)]
    for training, validation in parts:
        assert sorted(i["image"] for i in training + validation) == sorted(i["image"] for i in pool)
    assert sorted(i["image"] for _, v in parts for i in v) == sorted(i["image"] for i in pool)
    assert load_datalist(prepared, "test", folds=3, fold=1) == load_datalist(prepared, "test")
    # --fold_seed: another dealing of the same pool (repeated cross-validation), again a partition
    other = [load_datalist(prepared, "validation", folds=3, fold=k, fold_seed=5) for k in range(3)]
    assert sorted(i["image"] for v in other for i in v) == sorted(i["image"] for i in pool)
    assert [sorted(i["image"] for i in v) for v in other] != [sorted(i["image"] for i in v) for _, v in parts]
    assert load_datalist(prepared, "validation", folds=3, fold=0, fold_seed=0) == parts[0][1]
    with pytest.raises(InputError, match="--fold_seed '1': a whole number"):
        load_datalist(prepared, "training", folds=3, fold=0, fold_seed="1")


@pytest.mark.parametrize("bundle", ["isic_skin_lesion", "polyp_seg", "synapse_multiorgan"])
@pytest.mark.parametrize("run_name", ["", "seed1"])
def test_each_fold_has_its_own_folders(bundle, run_name):
    """Each fold, and each named run (``--run_name seed1``, the runs of several seeds), in its own sub-folder of
    models/, eval/ and runs/, in train.json, evaluate.json and inference.json, and with a baseline overlay."""
    from monai.bundle import ConfigParser

    run = f"/{run_name}" if run_name else ""
    for overlay in ([], ["baseline_unet.json"]):
        parser = ConfigParser()
        parser.read_config([config_path(bundle, c) for c in ["train.json", "evaluate.json", *overlay]])
        parser.update({"bundle_root": "/b", "folds": 5, "fold": 3, "run_name": run_name})
        sub = "/baseline_unet" if overlay else ""
        assert [parser.get_parsed_content(k) for k in ("ckpt_dir", "output_dir", "log_dir")] == [
            f"/b/{d}{sub}{run}/fold3" for d in ("models", "eval", "runs")]
        assert parser.get_parsed_content("validate#handlers#0#load_path") == f"/b/models{sub}{run}/fold3/model.pt"
        inference = ConfigParser()  # inference.json takes the same options: fold 3's weights, into its folder
        inference.read_config([config_path(bundle, c) for c in ["inference.json", *overlay]])
        inference.update({"bundle_root": "/b", "folds": 5, "fold": 3, "run_name": run_name})
        assert inference.get_parsed_content("checkpoint") == f"/b/models{sub}{run}/fold3/model.pt"
        assert inference.get_parsed_content("output_dir") == f"/b/eval{sub}{run}/fold3"
        parser.update({"folds": 0, "fold": 0})  # a named run without folds
        assert parser.get_parsed_content("ckpt_dir") == f"/b/models{sub}{run}"


def test_a_fold_trains_on_its_part_into_its_folders(prepared, tmp_path):
    root = copy_bundle("isic_skin_lesion", tmp_path)
    wf = workflow("isic_skin_lesion", ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                  folds=2, fold=1, run_name="seed7", seed=7, **tiny_overrides("isic_skin_lesion"))
    wf.initialize()
    names = {split: {item["name"] for item in wf.parser.get_parsed_content(f"{split}#dataset#data")}
             for split in ("train", "validate")}
    assert names["validate"] == {i["name"] for i in load_datalist(prepared, "validation", folds=2, fold=1)}
    assert not names["train"] & names["validate"]
    wf.run()
    wf.finalize()
    assert (root / "models" / "seed7" / "fold1" / "model.pt").is_file() and not (root / "models" / "model.pt").exists()
    with open(root / "runs" / "seed7" / "fold1" / "training_log.csv") as f:
        assert len(list(csv.DictReader(f))) == 1  # one epoch logged, in the fold's own folder
    with pytest.raises(RuntimeError) as failure:  # the bundle parser wraps the cause
        workflow("isic_skin_lesion", ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                 folds=2, fold=2).parser.get_parsed_content("ckpt_dir")
    assert "--fold 2: give a fold from 0 to 1 (--folds 2)" in str(failure.value.__cause__)


def test_demo_with_folds_runs_the_cross_validation_route(tmp_path, capsys, monkeypatch):
    """``demo --folds 2``: each fold's weights, out-of-fold and test evaluations in its own folders; the
    cross-validated estimate is every pooled image once; the folds' models and their ensemble predicted the test
    images, were scored and compared."""
    import vmunet_monai.demo as demo

    monkeypatch.setattr(demo, "DEMO_NETWORK", {k.split("#")[1]: v for k, v in tiny_overrides("isic_skin_lesion").items()
                                               if k.startswith("network_def")})
    result = demo.run_demo(out=str(tmp_path / "demo"), epochs=1, num=8, size=32, folds=2)
    root = tmp_path / "demo" / "isic_skin_lesion"
    for k in range(2):
        assert (root / "models" / f"fold{k}" / "model.pt").is_file()
        assert (root / "eval" / f"fold{k}" / "oof" / "metrics_validation_per_image.csv").is_file()
        assert (root / "eval" / f"fold{k}" / "metrics_test_per_image.csv").is_file()
    assert not (root / "models" / "model.pt").exists()
    pooled = len(load_datalist(tmp_path / "demo" / "prepared", "training")) + len(
        load_datalist(tmp_path / "demo" / "prepared", "validation"))
    cv = result["cross_validation"]["overall"]["models"][0]
    assert cv["folds"] is True and cv["n_cases"] == pooled and len(cv["run_means"]) == 2
    pair = result["ensemble_comparison"]["overall"]["against_first"][0]
    assert pair["label"] == "ensemble" and pair["n_paired"] == 2  # num 8: 2 test images
    record = json.loads((tmp_path / "demo" / "predictions" / "ensemble" / "prediction.json").read_text())
    assert record["weights"] == [str(root / "models" / f"fold{k}" / "model.pt") for k in range(2)]
    printed = capsys.readouterr().out
    assert "fold*/oof: 2 runs with no case in common" in printed and "ensemble" in printed
    from vmunet_monai.demo import run_demo

    with pytest.raises(InputError, match="demo --folds 1: must be an integer of at least 2"):
        run_demo(out=str(tmp_path / "x"), folds=1)
    with pytest.raises(InputError, match="demo --folds 2: on its own"):
        run_demo(out=str(tmp_path / "x"), folds=2, baseline="unet")


def test_evaluate_json_scores_an_ensemble_of_folds_in_its_own_folder(prepared, tmp_path):
    """``--ensemble_checkpoints`` on evaluate.json: the bundle's own evaluation of the weights as one ensemble, into
    ``eval/ensemble``; two copies of one fold's weights score exactly as that fold alone; bad lists are named."""
    import shutil

    root = copy_bundle("isic_skin_lesion", tmp_path)
    tiny = tiny_overrides("isic_skin_lesion")
    for k in range(2):
        wf = workflow("isic_skin_lesion", ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                      folds=2, fold=k, **tiny)
        wf.initialize()
        wf.run()
        wf.finalize()
    weights = [str(root / "models" / f"fold{k}" / "model.pt") for k in range(2)]
    shutil.copy(weights[0], tmp_path / "copy.pt")

    def evaluate(**over):
        wf = workflow("isic_skin_lesion", ["train.json", "evaluate.json"], "eval", bundle_root=str(root),
                      dataset_dir=str(prepared), **tiny, **over)
        wf.initialize()
        inferer = wf.parser.get_parsed_content("validate#evaluator#inferer")
        wf.run()
        wf.finalize()
        return inferer

    def dice(folder):
        with open(folder / "metrics_test_per_image.csv") as f:
            return {row["name"]: float(row["dice"]) for row in csv.DictReader(f)}

    assert len(evaluate(ensemble_checkpoints=weights).members) == 1
    assert (root / "eval" / "ensemble" / "metrics_test_per_image.csv").is_file()
    evaluate(folds=2, fold=0)
    evaluate(ensemble_checkpoints=f"{weights[0]},{tmp_path / 'copy.pt'}", eval_dir=str(tmp_path / "twice"))
    assert dice(tmp_path / "twice") == pytest.approx(dice(root / "eval" / "fold0"), abs=1e-6)
    for value, message in (([weights[0], str(tmp_path / "none.pt")], "none.pt: no such weight file"),
                           ([weights[0], weights[0]], "is given twice"), (3, "--ensemble_checkpoints 3: give")):
        with pytest.raises(RuntimeError) as failure:  # the bundle parser wraps the cause
            workflow("isic_skin_lesion", ["train.json", "evaluate.json"], "eval", bundle_root=str(root),
                     dataset_dir=str(prepared), ensemble_checkpoints=value, **tiny).parser.get_parsed_content("eval_dir")
        assert message in str(failure.value.__cause__)
