"""PH2 as it is distributed: one folder per image, its lesion mask beside it and the clinical table; imported
as an external test set with each diagnosis reported apart, or divided into its own splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vmunet_monai.data import demo_data, prepare
from vmunet_monai.data.common import DatasetLayoutError, load_datalist
from vmunet_monai.data.ph2 import find_ph2, read_ph2_diagnoses
from vmunet_monai.validation import InputError


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("ph2")
    demo_data("isic_skin_lesion", str(root / "download"), num=15, layout="ph2")
    return root / "download"


def test_the_clinical_table_as_ph2_writes_it(tmp_path):
    table = tmp_path / "PH2_dataset.txt"
    table.write_text("PH2 Dataset\n|| Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry || Colors ||\n"
                     "|| IMD003 ||  || 0 || 0 | AT | A | A | A | A || 2  3 ||\n"
                     "|| IMD058 || Melanoma || 2 || 2 | T | AT | P | P | P || 1  3  4  5 ||\n"
                     "|| IMD437 || Dermal Nevus || 1 || 1 | AT | A | A | A | A || 3 ||\n"
                     "Legend: 0 - Common Nevus, 1 - Atypical Nevus, 2 - Melanoma\n")
    assert read_ph2_diagnoses(table) == {"IMD003": "common nevus", "IMD058": "melanoma", "IMD437": "atypical nevus"}
    table.write_text("|| IMD003 ||  || 7 || 0 ||\n")
    with pytest.raises(DatasetLayoutError, match=r"PH2_dataset.txt: row 1 \(IMD003\) gives the clinical diagnosis '7'"):
        read_ph2_diagnoses(table)


def test_ph2_is_found_and_imported_as_an_external_test_set(raw, tmp_path):
    assert find_ph2(raw) == raw / "PH2Dataset" / "PH2 Dataset images"  # two levels below RAW
    assert find_ph2(tmp_path) is None
    path = prepare("isic_skin_lesion", str(raw), str(tmp_path / "prepared"))  # found without --layout
    doc = json.loads(Path(path).read_text())
    assert doc["meta"]["layout"] == "ph2" and doc["meta"]["counts"] == {"training": 0, "validation": 0, "test": 15}
    groups = [item["dataset"] for item in doc["test"]]
    assert {g: groups.count(g) for g in set(groups)} == {"PH2 common nevus": 6, "PH2 atypical nevus": 6,
                                                           "PH2 melanoma": 3}  # the demo writes PH2's 2:2:1
    test = load_datalist(tmp_path / "prepared", "test", ["image", "label"])  # as the bundle reads it
    assert all(Path(i["image"]).name == f"{i['name']}.bmp" and Path(i["label"]).name == f"{i['name']}_lesion.bmp"
               for i in test)
    assert (tmp_path / "prepared" / "preview.png").is_file()


def test_ph2_divided_per_diagnosis_and_what_is_refused(raw, tmp_path):
    path = prepare("isic_skin_lesion", str(raw), str(tmp_path / "own"), layout="ph2", split="paper",
                   test_fraction=0.3, val_fraction=0.2, seed=3)
    doc = json.loads(Path(path).read_text())
    names = {k: [i["name"] for i in doc[k]] for k in ("training", "validation", "test")}
    assert sum(map(len, names.values())) == 15 and not set(names["test"]) & set(names["training"])
    for group in ("PH2 common nevus", "PH2 atypical nevus", "PH2 melanoma"):  # every diagnosis in every part
        assert all(any(i["dataset"] == group for i in doc[k]) for k in ("training", "validation", "test")), group
    again = json.loads(Path(prepare("isic_skin_lesion", str(raw), str(tmp_path / "again"), layout="ph2",
                                    split="paper", seed=3)).read_text())
    assert [i["name"] for i in again["test"]] == names["test"]  # seeded
    for option, value in (("test_fraction", 0.25), ("val_fraction", 0.1)):  # nothing is divided without --split
        with pytest.raises(InputError, match=rf"--{option} {value}: not used, since PH2 is read as an external test "
                                             r"set .* give --split paper"):
            prepare("isic_skin_lesion", str(raw), str(tmp_path / "x"), **{option: value})
    with pytest.raises(InputError, match="PH2 has no official split"):
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "x"), split="official")
    with pytest.raises(InputError, match=r"--year 2017: only for the ISIC challenge or the folders layout"):
        prepare("isic_skin_lesion", str(raw), str(tmp_path / "x"), year=2017)
    with pytest.raises(DatasetLayoutError, match="no PH2 image folders"):
        prepare("isic_skin_lesion", str(tmp_path), str(tmp_path.parent / f"{tmp_path.name}_x"), layout="ph2")


def test_a_case_without_its_mask_is_named_and_the_table_is_optional(raw, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)
    images = copy / "PH2Dataset" / "PH2 Dataset images"
    shutil.rmtree(images / "IMD004" / "IMD004_lesion")
    (copy / "PH2Dataset" / "PH2_dataset.txt").unlink()
    doc = json.loads(Path(prepare("isic_skin_lesion", str(copy), str(tmp_path / "p"))).read_text())
    assert len(doc["test"]) == 14 and {i["dataset"] for i in doc["test"]} == {"PH2"}
    assert doc["meta"]["skipped"][0]["file"].endswith("IMD004") and "no lesion mask" in doc["meta"]["skipped"][0]["reason"]
    assert "no PH2_dataset.txt, so no diagnoses" in capsys.readouterr().out
