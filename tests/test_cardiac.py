"""Clinical indices of cine cardiac MRI (ACDC): volumes, ejection fractions and myocardial mass from the ED and ES
frames' label maps, checked by hand, and how they reach the Synapse evaluation's outputs and ``compare``."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from vmunet_monai.evaluation import ct
from vmunet_monai.evaluation.cardiac import clinical_indices, summarize_indices, write_clinical

SPACING = (1.5, 1.5, 10.0)  # ACDC-like: 22.5 ul voxels
VOXEL_ML = 1.5 * 1.5 * 10.0 / 1000
CLASSES = {1: "RV", 2: "MYO", 3: "LV"}


def _frame(lv: int, myo: int, rv: int) -> np.ndarray:
    """A 20x20x4 label map holding exactly ``lv``, ``myo`` and ``rv`` voxels of LV 3, MYO 2 and RV 1."""
    label = np.zeros(20 * 20 * 4, np.uint8)
    label[:lv] = 3
    label[lv:lv + myo] = 2
    label[lv + myo:lv + myo + rv] = 1
    return label.reshape(20, 20, 4)


def _rows(frames: dict) -> tuple[list[dict], dict, dict]:
    """Rows of case_scores for {(patient, phase): (truth voxels, predicted voxels)}, with groups and patients."""
    rows, groups, patients = [], {}, {}
    for (patient, phase), (truth, pred) in frames.items():
        case = f"{patient}_{phase.lower()}"
        row = ct.case_scores(_frame(*pred), _frame(*truth), SPACING, CLASSES, transunet=False)
        row["case"] = case
        rows.append(row)
        groups[case], patients[case] = phase, patient
    return rows, groups, patients


# (LV, MYO, RV) voxels: truth, prediction
FRAMES = {
    ("p1", "ED"): ((400, 300, 350), (400, 300, 350)),
    ("p1", "ES"): ((200, 320, 150), (200, 320, 150)),
    ("p2", "ED"): ((500, 280, 420), (520, 270, 420)),
    ("p2", "ES"): ((300, 300, 200), (290, 300, 230)),
    ("p3", "ED"): ((360, 330, 300), (350, 340, 310)),
    ("p3", "ES"): ((120, 350, 140), (130, 350, 140)),
    ("p4", "ED"): ((450, 310, 380), (450, 310, 380)),  # a patient without its ES frame is left out
}


def test_indices_by_hand():
    rows, groups, patients = _rows(FRAMES)
    found = clinical_indices(rows, groups, patients)
    assert [p["patient"] for p in found] == ["p1", "p2", "p3"]
    p2 = found[1]
    assert (p2["ed_case"], p2["es_case"]) == ("p2_ed", "p2_es")
    assert p2["truth"]["LV_EDV"] == pytest.approx(500 * VOXEL_ML)
    assert p2["pred"]["LV_ESV"] == pytest.approx(290 * VOXEL_ML)
    assert p2["truth"]["LV_EF"] == pytest.approx(100 * (500 - 300) / 500)
    assert p2["pred"]["LV_EF"] == pytest.approx(100 * (520 - 290) / 520)
    assert p2["pred"]["RV_EF"] == pytest.approx(100 * (420 - 230) / 420)
    assert p2["truth"]["MYO_mass"] == pytest.approx(280 * VOXEL_ML * 1.05)  # at end-diastole, 1.05 g/ml
    assert found[0]["truth"] == found[0]["pred"]
    summary = summarize_indices(found)
    ef = summary["LV_EF"]
    truth = np.array([50.0, 40.0, 100 * 240 / 360])
    pred = np.array([50.0, 100 * 230 / 520, 100 * 220 / 350])
    assert ef["n"] == 3 and ef["unit"] == "%"
    assert ef["bias"] == pytest.approx(np.mean(pred - truth))
    assert ef["mae"] == pytest.approx(np.mean(np.abs(pred - truth)))
    assert ef["sd_difference"] == pytest.approx(np.std(pred - truth, ddof=1))
    centred_t, centred_p = truth - truth.mean(), pred - pred.mean()
    r = (centred_t @ centred_p) / math.sqrt((centred_t @ centred_t) * (centred_p @ centred_p))
    assert ef["correlation"] == pytest.approx(r)
    assert ef["truth_mean"] == pytest.approx(truth.mean()) and ef["pred_mean"] == pytest.approx(pred.mean())


def test_no_indices_without_cardiac_classes_or_both_phases(tmp_path):
    rows, groups, patients = _rows(FRAMES)
    assert write_clinical(rows, groups, {}, str(tmp_path)) is None
    assert clinical_indices(rows, {case: "ED" for case in groups}, patients) == []
    organs = {1: "liver", 2: "spleen", 3: "kidney"}
    other = [dict(ct.case_scores(_frame(10, 10, 10), _frame(10, 10, 10), SPACING, organs), case=case)
             for case in groups]
    assert clinical_indices(other, groups, patients) == []
    # an empty end-diastolic LV has no ejection fraction, and is left out of that index's agreement
    rows, groups, patients = _rows({("a", "ED"): ((0, 300, 350), (10, 300, 350)), ("a", "ES"): ((0, 3, 5), (0, 3, 5)),
                                    ("b", "ED"): ((40, 30, 35), (40, 30, 35)), ("b", "ES"): ((20, 3, 5), (20, 3, 5))})
    found = clinical_indices(rows, groups, patients)
    assert math.isnan(found[0]["truth"]["LV_EF"]) and found[0]["pred"]["LV_EF"] == pytest.approx(100.0)
    summary = summarize_indices(found)
    assert summary["LV_EF"]["n"] == 1 and math.isnan(summary["LV_EF"]["correlation"])  # too few to correlate
    assert summary["RV_EF"]["n"] == 2


def test_the_evaluation_writes_indices_groups_and_volumes_that_compare_reads(tmp_path, capsys):
    from vmunet_monai.evaluation.compare import format_comparison, run_compare

    rows, groups, patients = _rows(FRAMES)
    summary = ct._write_outputs(rows, str(tmp_path / "a"), "", groups, patients)
    ct._log_summary(summary)
    clinical = summary["clinical"]
    assert clinical["num_patients"] == 3 and set(clinical["indices"]) == {
        "LV_EDV", "LV_ESV", "LV_EF", "RV_EDV", "RV_ESV", "RV_EF", "MYO_mass"}
    printed = capsys.readouterr().out
    assert "clinical indices of 3 patients" in printed
    assert f"correlation {clinical['indices']['LV_EF']['correlation']:.3f}" in printed
    stored = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert stored["clinical"]["indices"]["LV_EF"]["bias"] == pytest.approx(clinical["indices"]["LV_EF"]["bias"])
    table = list(csv.DictReader(open(tmp_path / "a" / "clinical_indices.csv")))
    assert [r["patient"] for r in table] == ["p1", "p2", "p3"]
    assert float(table[1]["truth_LV_EDV"]) == pytest.approx(500 * VOXEL_ML)
    assert float(table[1]["pred_LV_EDV"]) == pytest.approx(520 * VOXEL_ML)
    assert (tmp_path / "a" / "clinical_indices.png").stat().st_size > 10_000
    # per_case.csv: the group and every structure's volumes, predicted and true
    cases = {r["case"]: r for r in csv.DictReader(open(tmp_path / "a" / "per_case.csv"))}
    assert cases["p2_es"]["group"] == "ES" and cases["p4_ed"]["group"] == "ED"
    assert float(cases["p2_es"]["volume_ml_RV"]) == pytest.approx(230 * VOXEL_ML)
    assert float(cases["p2_es"]["truth_volume_ml_RV"]) == pytest.approx(200 * VOXEL_ML)
    # compare pairs cases per group, and does not take volumes for scores
    worse = [dict(r) for r in rows]
    worse[3] = dict(ct.case_scores(_frame(100, 300, 200), _frame(300, 300, 200), SPACING, CLASSES), case="p2_es")
    ct._write_outputs(worse, str(tmp_path / "b"), "", groups, patients)
    result = run_compare([str(tmp_path / "a"), str(tmp_path / "b")], out=str(tmp_path / "cmp"))
    assert set(result["groups"]) == {"ED", "ES"}
    assert result["groups"]["ES"]["against_first"][0]["worse"] == 1
    assert result["groups"]["ED"]["against_first"][0]["worse"] == 0
    assert "group ES:" in format_comparison(result) and "test set" not in format_comparison(result)
    from vmunet_monai.validation import InputError

    with pytest.raises(InputError, match="no column for --metric 'volume_ml_LV'"):
        run_compare([str(tmp_path / "a"), str(tmp_path / "b")], metric="volume_ml_LV", out=str(tmp_path / "c2"))


def test_score_reads_predictions_on_disk_against_a_prepared_acdc_dataset(tmp_path, capsys):
    """``score``: predictions written by predict (``_seg``) or named as nnU-Net names them are paired with the test
    cases of the datalist and scored by the evaluation's protocol, phases apart and with the clinical indices; a
    perfect prediction agrees exactly, a case without a prediction is named, a prediction off its grid refused."""
    import nibabel as nib

    from vmunet_monai.cli import main
    from vmunet_monai.data import prepare
    from vmunet_monai.data import synapse
    from vmunet_monai.evaluation.compare import run_compare
    from vmunet_monai.evaluation.score import score, score_volumes
    from vmunet_monai.validation import InputError

    synapse.demo_data(str(tmp_path / "acdc"), num=10, seed=2, layout="acdc", shape=(48, 48, 4))
    prepare("synapse_multiorgan", str(tmp_path / "acdc"), str(tmp_path / "prepared"))
    doc = json.loads((tmp_path / "prepared" / "datalist.json").read_text())
    tests = doc["test"]
    assert len(tests) == 4  # two testing patients, ED and ES each
    for k, item in enumerate(tests):
        label = nib.load(tmp_path / "prepared" / item["label"])
        data = np.asarray(label.dataobj)
        name = f"{item['case']}_seg.nii.gz" if k % 2 == 0 else f"{item['case']}.nii.gz"
        for folder, values in (("perfect", data), ("eroded", np.where(data == 3, 2, data) if k == 1 else data)):
            (tmp_path / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(values.astype(np.uint8), label.affine), tmp_path / folder / name)
    summary = score_volumes(tmp_path / "perfect", tmp_path / "prepared", out=tmp_path / "s_perfect")
    assert summary["num_cases"] == 4 and set(summary["groups"]) == {"ED", "ES"}
    assert summary["dice"]["mean_over_organs"] == 1.0 and summary["organs"] == ["RV", "MYO", "LV"]
    clinical = summary["clinical"]["indices"]
    assert summary["clinical"]["num_patients"] == 2
    assert clinical["LV_EF"]["bias"] == 0.0 and clinical["MYO_mass"]["mae"] == 0.0
    assert 0 < clinical["LV_EF"]["truth_mean"] < 100
    assert (tmp_path / "s_perfect" / "clinical_indices.png").is_file()
    # the second case's LV predicted as myocardium: its LV volume is lost, its EF changes, compare sees it
    main(["score", str(tmp_path / "eroded"), str(tmp_path / "prepared"), "--out", str(tmp_path / "s_eroded"),
          "--montage", "false"])
    eroded = json.loads((tmp_path / "s_eroded" / "summary.json").read_text())
    assert eroded["clinical"]["indices"]["LV_EF"]["mae"] > 1.0
    assert not list((tmp_path / "s_eroded").glob("montage_*.png"))
    result = run_compare([str(tmp_path / "s_perfect"), str(tmp_path / "s_eroded")], out=str(tmp_path / "cmp"))
    assert result["overall"]["against_first"][0]["worse"] == 1 and set(result["groups"]) == {"ED", "ES"}
    # a missing prediction is named and left out; a prediction on another grid is refused
    (tmp_path / "perfect" / f"{tests[3]['case']}.nii.gz").unlink()
    capsys.readouterr()
    partial = score_volumes(tmp_path / "perfect", tmp_path / "prepared", out=tmp_path / "s_partial", montage=False)
    assert partial["missing_prediction"] == [tests[3]["case"]] and partial["num_cases"] == 3
    stored = json.loads((tmp_path / "s_partial" / "summary.json").read_text())
    assert stored["missing_prediction"] == [tests[3]["case"]] and stored["num_cases"] == 3 and "environment" in stored
    assert f"left out: 1 test case(s) without a prediction (first: {tests[3]['case']})\n" in capsys.readouterr().out
    # that case exported as a PNG: still left out, and the file is named
    (tmp_path / "perfect" / f"{tests[3]['case']}_seg.png").write_bytes(b"not read")
    score_volumes(tmp_path / "perfect", tmp_path / "prepared", out=tmp_path / "s_partial", montage=False)
    printed = capsys.readouterr().out
    assert (f"left out: 1 test case(s) without a prediction (first: {tests[3]['case']}); 1 file(s) named after such a "
            f"case are not volume files, which is what is scored (.nii.gz, .nii, .nrrd, .mha, .mhd): "
            f"{tests[3]['case']}_seg.png\n") in printed, printed
    (tmp_path / "perfect" / f"{tests[3]['case']}_seg.png").unlink()
    first = tmp_path / "perfect" / f"{tests[0]['case']}_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 3), np.uint8), np.eye(4)), first)
    with pytest.raises(InputError, match=r"_seg.nii.gz: shape \(48, 48, 3\) against \(48, 48, 4\) of its label"):
        score_volumes(tmp_path / "perfect", tmp_path / "prepared", out=tmp_path / "s_bad")
    with pytest.raises(InputError, match=r"--worst 3: only for 2D masks"):
        score(tmp_path / "perfect", tmp_path / "prepared", worst=3)
    with pytest.raises(InputError, match="no datalist.json"):
        score_volumes(tmp_path / "perfect", tmp_path / "acdc")
    with pytest.raises(InputError, match=r"datalist.json: a file; give the folder that holds the datalist.json \(here "
                                         rf"{re.escape(str(tmp_path / 'prepared'))}\)"):
        score_volumes(tmp_path / "perfect", tmp_path / "prepared" / "datalist.json")  # (it said: no datalist.json)
    with pytest.raises(InputError, match=r"--split 'tset': .* has the splits") as refused:
        score_volumes(tmp_path / "perfect", tmp_path / "prepared", split="tset")
    splits = str(refused.value).split("has the splits ")[1].split(", ")
    assert "test" in splits and "skipped" not in splits  # (the importer's list of skipped files is no split)
    with pytest.raises(InputError, match="no prediction is named after a 'test' case"):
        score_volumes(tmp_path / "s_perfect", tmp_path / "prepared", out=tmp_path / "s_none")
    # the same shape on another grid: what differs, with the numbers
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 4), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), first)
    label_affine = nib.load(tmp_path / "prepared" / tests[0]["label"]).affine
    if not np.allclose(np.abs(np.diag(label_affine))[:3], 2.0):
        with pytest.raises(InputError, match=r"_seg.nii.gz: the same shape but another grid \(spacing \(2, 2, 2\) mm "
                                             r"against \("):
            score_volumes(tmp_path / "perfect", tmp_path / "prepared", out=tmp_path / "s_bad")
    with pytest.raises(InputError, match=r"_seg.nii.gz: a file; PRED is the folder of predicted volumes"):
        score_volumes(first, tmp_path / "prepared", out=tmp_path / "s_bad")


def test_demo_with_acdc_runs_the_cardiac_route(tmp_path, capsys, monkeypatch):
    """``demo --acdc`` at the smallest settings: ACDC recognised, the volume bundle trained on its three classes,
    the test frames evaluated per phase with the clinical indices, and the testing folder predicted."""
    from bundle_helpers import tiny_overrides

    import vmunet_monai.demo as demo
    from vmunet_monai.validation import InputError

    monkeypatch.setattr(demo, "DEMO_NETWORK", {k.split("#")[1]: v for k, v in tiny_overrides("isic_skin_lesion").items()
                                               if k.startswith("network_def")})
    monkeypatch.setitem(demo.ACDC, "iterations_per_epoch", 2)
    result = demo.run_demo(out=str(tmp_path / "demo"), epochs=1, num=5, size=32, acdc=True)
    printed = capsys.readouterr().out
    summary = result["test_summary"]
    assert summary["organs"] == ["RV", "MYO", "LV"] and set(summary["groups"]) == {"ED", "ES"}
    assert summary["num_cases"] == 2 and summary["clinical"]["num_patients"] == 1
    assert f"VM-UNet: 2 test frames: Dice {summary['dice']['mean_over_organs']:.4f}" in printed
    predicted = Path(result["predicted"])
    assert (predicted / "volumes.csv").is_file() and (predicted / "clinical_indices.csv").is_file()
    meta = json.loads((Path(result["bundle_root"]) / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["3"] == "LV"
    with pytest.raises(InputError, match="demo --acdc: on its own"):
        demo.run_demo(out=str(tmp_path / "x"), acdc=True, baseline="unet")
    with pytest.raises(InputError, match="demo --num 40: the ACDC demo writes 4 to 30 patients"):
        demo.run_demo(out=str(tmp_path / "x"), acdc=True, num=40)


def test_datalist_groups_answer_to_the_case_and_to_its_image_name(tmp_path):
    """The evaluation names a case by its image's file name (abd_004_0000 for nnU-Net's channel-numbered images),
    the datalist by its case: a group or patient is found under either."""
    from vmunet_monai.data.common import datalist_groups, datalist_patients

    doc = {"test": [{"case": "abd_004", "image": "imagesTs/abd_004_0000.nii.gz", "label": "labelsTs/abd_004.nii.gz",
                     "group": "ED", "patient": "p4"},
                    {"case": "abd_005", "image": "imagesTs/abd_005.nii.gz", "group": "ES", "patient": "p4"},
                    {"case": "abd_006", "image": "imagesTs/abd_006.nii.gz"}]}
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    assert datalist_groups(tmp_path) == {"abd_004": "ED", "abd_004_0000": "ED", "abd_005": "ES"}
    assert datalist_patients(tmp_path) == {"abd_004": "p4", "abd_004_0000": "p4", "abd_005": "p4"}
    assert datalist_groups(tmp_path, "training") == {} and datalist_groups(tmp_path / "none") == {}


def test_two_predictions_of_one_case_are_named_as_such(tmp_path):
    """A case found both by its name (0001.nii.gz) and by its image's (img0001_seg.nii.gz): one was scored and the
    other called a prediction of no case; both are named as two predictions of that case."""
    import json

    import nibabel as nib

    from vmunet_monai.evaluation.score import score_volumes
    from vmunet_monai.validation import InputError

    for folder in ("data/imagesTr", "data/labelsTr", "pred"):
        (tmp_path / folder).mkdir(parents=True)
    volume = np.zeros((8, 8, 3), np.uint8)
    volume[2:5, 2:5, 1] = 1
    for name in ("data/imagesTr/img0001.nii.gz", "data/labelsTr/label0001.nii.gz", "pred/img0001_seg.nii.gz",
                 "pred/0001.nii.gz"):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / name)
    (tmp_path / "data" / "datalist.json").write_text(json.dumps({"training": [], "test": [
        {"image": "imagesTr/img0001.nii.gz", "label": "labelsTr/label0001.nii.gz", "case": "0001"}]}))
    with pytest.raises(InputError, match=r"0001.nii.gz and .*img0001_seg.nii.gz: two predictions of the case 0001 "
                                         r"\(one by its name, one by its image's; give one prediction per case\)"):
        score_volumes(tmp_path / "pred", tmp_path / "data", out=tmp_path / "s")
    (tmp_path / "pred" / "0001.nii.gz").unlink()
    summary = score_volumes(tmp_path / "pred", tmp_path / "data", out=tmp_path / "s", montage=False)
    assert summary["num_cases"] == 1 and summary["unused_predictions"] == []
