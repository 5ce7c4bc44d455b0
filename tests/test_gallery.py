"""The picture of the images a 2D model gets most wrong (``<prefix>_worst.png``): which images it keeps, their
Dice, their orientation, and that the evaluation report and ``score`` write it."""

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vmunet_monai.evaluation.gallery import WorstCases, image_dice


def test_image_dice_over_the_classes_present():
    truth = np.zeros((6, 6), np.uint8)
    assert image_dice(truth, truth) == 1.0  # nothing to find, nothing found
    assert image_dice(truth, np.ones_like(truth)) == 0.0
    truth[:3] = 1
    pred = np.zeros_like(truth)
    pred[:2] = 1
    assert image_dice(truth, pred) == pytest.approx(2 * 12 / (18 + 12))
    pred[5, 5] = 2  # a class of its own that the truth lacks counts as a miss: (0.8 + 0) / 2
    assert image_dice(truth, pred, num_classes=3) == pytest.approx(0.4)
    assert image_dice(truth, pred, num_classes=4) == pytest.approx(0.4)  # class 3, in neither, is left out


def test_worst_cases_keeps_the_k_lowest_worst_first_and_reads_only_kept_images(tmp_path):
    rng = np.random.default_rng(0)
    truth = np.zeros((300, 500), np.uint8)
    truth[50:250, 100:400] = 1
    scores, reads = {}, []
    kept = WorstCases(k=3)
    for i in rng.permutation(11):
        pred = np.zeros_like(truth)
        pred[50:50 + 20 * int(i), 100:400] = 1  # image i covers i tenths of the truth
        scores[f"img{i}"] = kept.offer(f"img{i}", truth, pred, image=lambda i=i: reads.append(i) or
                                       rng.integers(0, 255, (300, 500, 3)).astype(np.uint8), group="set")
    assert [c["name"] for c in kept.cases()] == ["img0", "img1", "img2"]
    assert [c["dice"] for c in kept.cases()] == [scores["img0"], scores["img1"], scores["img2"]] and scores["img0"] == 0
    assert set(reads) >= {0, 1, 2} and len(reads) < 10 and 10 not in reads  # nor images never kept, or perfect
    case = kept.cases()[0]
    assert case["image"].shape == (150, 250, 3) and case["truth"].shape == (150, 250)  # at most 256 a side
    path = kept.plot(tmp_path / "worst.png", class_names=["lesion"])
    assert Image.open(path).size[0] > 500
    assert WorstCases(k=0).offer("a", truth, truth) == 1.0 and WorstCases(k=0).plot(tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_evaluation_report_draws_its_worst_images_upright(tmp_path):
    """The bundles read PNGs as (W, H) (PILReader's default): the picture turns masks and image upright, and takes
    the image from its source file."""
    from monai.data import MetaTensor

    from vmunet_monai.engine import BinarySegmentationReport

    photo = np.zeros((40, 60, 3), np.uint8)  # H 40, W 60
    photo[:10, :30] = (200, 30, 30)
    Image.fromarray(photo).save(tmp_path / "a.png")
    upright = np.zeros((40, 60), np.float32)
    upright[:10, :30] = 1  # the lesion in the top-left corner, where the photo is red
    label = torch.from_numpy(upright.T.copy())[None]  # (1, W, H), as the bundles load it
    half = upright.copy()
    half[:10, 15:30] = 0
    outputs, batch = [], []
    for name, pred in (("good", upright), ("half", half), ("none", np.zeros_like(upright))):
        image = MetaTensor(torch.rand(3, 60, 40), meta={"filename_or_obj": str(tmp_path / "a.png")})
        batch.append({"image": image, "name": name})
        outputs.append({"pred": torch.from_numpy(pred.T.copy())[None], "label": label})
    report = BinarySegmentationReport(str(tmp_path / "eval"), prefix="metrics_test", worst=2, print_summary=False)
    engine = SimpleNamespace(state=SimpleNamespace(output=outputs, batch=batch, metrics={}))
    report._reset(engine)
    report._collect(engine)
    cases = report.worst_cases.cases()
    assert [c["name"] for c in cases] == ["none", "half"] and cases[1]["dice"] == pytest.approx(2 / 3)
    assert cases[0]["truth"].shape == (40, 60) and np.array_equal(cases[0]["truth"], upright)
    assert np.array_equal(cases[0]["image"], photo)  # the source file, not the network's tensor
    report._write(engine)
    with open(report.paths["csv"]) as f:  # the picture's Dice is the table's
        table = {row["name"]: float(row["dice"]) for row in csv.DictReader(f)}
    assert [table[c["name"]] for c in cases] == pytest.approx([c["dice"] for c in cases])
    assert report.paths["worst"] == str(tmp_path / "eval" / "metrics_test_worst.png")
    assert Image.open(report.paths["worst"]).size[0] > 300
    none = BinarySegmentationReport(str(tmp_path / "eval0"), worst=0, print_summary=False)
    none._reset(engine)
    none._collect(engine)
    none._write(engine)
    assert "worst" not in none.paths and not list((tmp_path / "eval0").glob("*_worst.png"))


def test_a_name_no_font_draws_is_written_as_its_code_without_a_warning(tmp_path, recwarn):
    """A title naming a file in a script the installed fonts lack (CJK on a machine with DejaVu only) shows the
    characters' codes, not boxes, and matplotlib warns of no missing glyph; what a font draws stays as it is."""
    from matplotlib import font_manager

    from vmunet_monai.figures import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.set_title("病例01.png, Müller")
    save(fig, tmp_path / "t.png")
    title = ax.title.get_text()
    fonts = [font_manager.get_font(p) for p in
             font_manager.fontManager._find_fonts_by_props(ax.title.get_fontproperties())]
    drawn = any(f.get_char_index(ord("病")) for f in fonts)
    assert title == ("病例01.png, Müller" if drawn else "\\u75c5\\u4f8b01.png, Müller")
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    assert Image.open(tmp_path / "t.png").size[0] > 100
