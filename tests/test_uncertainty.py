"""``predict --uncertainty``: the normalised entropy of the class probabilities, as pictures (2D) and NIfTI
volumes, and ``uncertainty.csv`` ranking the predictions, the most doubtful first."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from reliability_helpers import tiny_bundle_with_weights, write_ct_volume, write_rgb

from vmunet_monai.evaluation.uncertainty import (class_probabilities_2d, disagreement, normalized_entropy,
                                                 summarize_uncertainty, uncertainty_picture)
from vmunet_monai.validation import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks in-process: see conftest


def _entropy_by_hand(prob):
    """-sum p log p / log C, one pixel at a time."""
    flat = prob.reshape(prob.shape[0], -1)
    out = [sum(-p * np.log(p) for p in column if p > 0) / np.log(len(column)) for column in flat.T]
    return np.asarray(out).reshape(prob.shape[1:])


def test_normalized_entropy_against_the_formula_and_its_ends():
    rng = np.random.default_rng(3)
    for classes in (2, 3, 9):
        logits = rng.normal(0, 2, (classes, 5, 7))
        prob = np.exp(logits) / np.exp(logits).sum(0)
        assert np.allclose(normalized_entropy(prob), _entropy_by_hand(prob), atol=1e-5)
        assert np.allclose(normalized_entropy(np.full((classes, 2, 2), 1 / classes)), 1.0)  # all alike: 1
        sure = np.zeros((classes, 2, 2))
        sure[classes - 1] = 1.0
        assert np.array_equal(normalized_entropy(sure), np.zeros((2, 2)))  # one class certain: 0
    # 8-bit maps that sum to a little more than one are renormalised first
    assert normalized_entropy(np.array([[0.502], [0.502]]))[0] == pytest.approx(1.0)
    # two classes: at least 0.5 between about 0.11 and 0.89
    p = np.array([0.10, 0.12, 0.5, 0.88, 0.90])
    assert (normalized_entropy(np.stack([1 - p, p])) >= 0.5).tolist() == [False, True, True, True, False]
    with pytest.raises(ValueError, match="1 class probability map"):
        normalized_entropy(np.ones((1, 3, 3)))


def test_summary_counts_uncertain_and_foreground_pixels():
    uncertainty = np.array([[0.0, 0.6, 0.5], [0.9, 0.1, 0.0]])
    foreground = np.array([[1, 1, 0], [0, 0, 0]])
    row = summarize_uncertainty(uncertainty, foreground)
    assert row["uncertain_pixels"] == 3 and row["foreground_pixels"] == 2
    assert row["uncertain_share"] == pytest.approx(3 / 5) and row["mean_uncertainty"] == pytest.approx(2.1 / 6)
    assert summarize_uncertainty(np.zeros((2, 2)), np.zeros((2, 2)))["uncertain_share"] == 0.0


def test_disagreement_is_the_uncertainty_the_passes_do_not_have_on_their_own():
    """Two passes sure of opposite classes: all disagreement; two passes equally unsure: none."""
    sure_apart = np.stack([np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]])])  # (passes, classes, pixels)
    unsure_alike = np.stack([np.array([[0.5], [0.5]])] * 2)
    for passes, expected in ((sure_apart, 1.0), (unsure_alike, 0.0)):
        total = normalized_entropy(passes.mean(0))
        own = np.mean([normalized_entropy(p) for p in passes], axis=0)
        assert disagreement(total, own) == pytest.approx([expected])
    rounded = disagreement(np.array([0.2, 0.5]), np.array([0.21, 0.1]))  # 8-bit noise below 0 is set to 0
    assert rounded.tolist() == pytest.approx([0.0, 0.4])
    row = summarize_uncertainty(np.zeros((2, 2)), np.zeros((2, 2)), spread=np.full((2, 2), 0.25))
    assert row["mean_disagreement"] == 0.25
    assert "mean_disagreement" not in summarize_uncertainty(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"uncertainty map of shape \(2, 2\) and a pass entropy map of shape \(2, 3\)"):
        disagreement(np.zeros((2, 2)), np.zeros((2, 3)))


def test_background_is_what_the_class_maps_leave(tmp_path):
    maps = []
    for k, level in enumerate((40, 100)):
        path = tmp_path / f"x_prob_{k + 1}.png"
        Image.fromarray(np.full((3, 4), level, np.uint8)).save(path)
        maps.append(path)
    prob = class_probabilities_2d(maps)
    assert prob.shape == (3, 3, 4) and np.allclose(prob[:, 0, 0], [115 / 255, 40 / 255, 100 / 255])
    Image.fromarray(np.zeros((3, 5), np.uint8)).save(tmp_path / "other.png")
    with pytest.raises(ValueError, match="different sizes"):
        class_probabilities_2d([maps[0], tmp_path / "other.png"])


def test_picture_is_the_grey_image_where_the_model_is_sure():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3)).astype(np.float32)
    uncertainty = np.zeros((20, 30), np.float32)
    uncertainty[5:10, 5:10] = 1.0
    classes = np.zeros((20, 30), int)
    classes[12:18, 15:25] = 1
    picture = uncertainty_picture(image, uncertainty, classes)
    assert picture.shape == (20, 30, 3) and picture.dtype == np.uint8
    grey = np.clip(image @ np.array([0.299, 0.587, 0.114]) * 0.8, 0, 255).astype(np.uint8)
    sure = uncertainty == 0
    sure[12:18, 15:25] = False  # the outline of the mask is drawn over it
    assert np.array_equal(picture[sure], np.repeat(grey[sure][:, None], 3, axis=1))
    hot = picture[5:10, 5:10].reshape(-1, 3)
    assert (hot[:, 0] > hot[:, 2]).all()  # warm colours where it is unsure
    assert (picture[12, 15:25] == (0, 255, 0)).all()  # the mask's outline


def _read_table(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_predict_2d_writes_pictures_and_ranks_the_images(tmp_path):
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("isic_skin_lesion", tmp_path / "bundle")
    images = tmp_path / "images"
    for i, (h, w) in enumerate(((37, 53), (64, 48), (50, 50))):
        write_rgb(images / ("sub" if i == 2 else "") / f"img{i}.png", h, w, seed=i)
    result = predict(str(bundle), str(images), str(tmp_path / "out"), device="cpu", uncertainty=True, tta=True)
    out = tmp_path / "out"
    assert len(result["probabilities"]) == 3  # implied by --uncertainty
    pictures = sorted(Path(r["picture"]) for r in result["uncertainty"])
    assert pictures == sorted([out / "uncertainty" / "img0_uncertainty.png", out / "uncertainty" / "img1_uncertainty.png",
                               out / "uncertainty" / "sub" / "img2_uncertainty.png"])
    rows = _read_table(result["uncertainty_table"])
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    shares = [float(r["uncertain_share"]) for r in rows]
    assert shares == sorted(shares, reverse=True)
    for row in rows:  # every number again from the probability map the run wrote
        stem = Path(row["file"]).stem
        source = Path(row["file"])
        prob_path = out / "probabilities" / source.parent.relative_to(images) / f"{stem}_prob.png"
        p = np.asarray(Image.open(prob_path), np.float32) / 255
        uncertainty = normalized_entropy(np.stack([1 - p, p]))
        assert int(row["uncertain_pixels"]) == int((uncertainty >= 0.5).sum())
        assert int(row["foreground_pixels"]) == int((p > 0.5).sum())
        assert float(row["mean_uncertainty"]) == pytest.approx(uncertainty.mean(), abs=1e-4)
        picture = np.asarray(Image.open(row["picture"]))
        assert picture.shape == (*p.shape, 3) == (*Image.open(source).size[::-1], 3)
        # --tta: four passes, so the mean of their own entropies beside the probabilities, and the disagreement
        own = np.asarray(Image.open(prob_path.with_name(f"{stem}_pass_entropy.png")), np.float32) / 255
        spread = np.clip(uncertainty - own, 0, 1)
        assert float(row["mean_disagreement"]) == pytest.approx(spread.mean(), abs=1e-4)
        assert (own <= uncertainty + 2 / 255).all()  # each pass's doubt never exceeds the doubt of their mean
        assert row["disagreement_picture"] == row["picture"][: -len("_uncertainty.png")] + "_disagreement.png"
        assert np.asarray(Image.open(row["disagreement_picture"])).shape == picture.shape
    assert result["uncertainty_plot"] == str(out / "uncertainty_most.png") and Path(result["uncertainty_plot"]).is_file()
    from vmunet_monai.evaluation.uncertainty import plot_most_uncertain

    assert plot_most_uncertain([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert result["disagreement_plot"] == str(out / "disagreement_most.png")
    assert (out / "disagreement_most.png").is_file()
    no_spread = [{k: v for k, v in r.items() if k != "mean_disagreement"} for r in result["uncertainty"]]
    assert plot_most_uncertain(no_spread, tmp_path / "none.png", by_disagreement=True) is None
    record = json.loads((out / "prediction.json").read_text())
    assert record["settings"]["uncertainty"] is True and record["settings"]["probabilities"] is True
    with pytest.raises(InputError, match="--uncertainty 'yes': true or false"):
        predict(str(bundle), str(images), str(tmp_path / "bad"), device="cpu", uncertainty="yes")
    # --rank_by: the table ordered by another column, largest first
    from vmunet_monai.evaluation.uncertainty import write_uncertainty_table

    for by, column in (("disagreement", "mean_disagreement"), ("uncertainty", "mean_uncertainty")):
        (tmp_path / by).mkdir()
        ranked = _read_table(write_uncertainty_table(result["uncertainty"], tmp_path / by, by=by))
        values = [float(r[column]) for r in ranked]
        assert values == sorted(values, reverse=True) and len(values) == 3
    rerun = predict(str(bundle), str(images / "sub"), str(tmp_path / "ranked"), device="cpu", uncertainty=True,
                    tta=True, rank_by="disagreement")
    assert len(_read_table(rerun["uncertainty_table"])) == 1
    for options, rule in (({"rank_by": "entropy", "uncertainty": True}, "choose from share, uncertainty, disagreement"),
                          ({"rank_by": "uncertainty"}, "which only --uncertainty writes"),
                          ({"rank_by": "disagreement", "uncertainty": True}, "needs several passes")):
        with pytest.raises(InputError, match=rule):  # refused before anything runs
            predict(str(bundle), str(images), str(tmp_path / "refused"), device="cpu", **options)
        assert not (tmp_path / "refused").exists()


def test_predict_2d_of_several_classes_takes_every_class_map(tmp_path):
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("isic_skin_lesion", tmp_path / "bundle", num_classes=3)
    write_rgb(tmp_path / "images" / "a.png", 40, 44)
    result = predict(str(bundle), str(tmp_path / "images"), str(tmp_path / "out"), device="cpu", uncertainty=True)
    maps = [tmp_path / "out" / "probabilities" / f"a_prob_{k}.png" for k in (1, 2)]
    prob = class_probabilities_2d(maps)
    row = result["uncertainty"][0]
    assert row["uncertain_pixels"] == int((normalized_entropy(prob) >= 0.5).sum())
    assert row["foreground_pixels"] == int((prob.argmax(0) > 0).sum())
    # one pass: nothing to disagree, so no pass entropy map and an empty column
    assert "mean_disagreement" not in row and not list((tmp_path / "out").rglob("*_pass_entropy*"))
    assert "disagreement_plot" not in result
    assert _read_table(result["uncertainty_table"])[0]["mean_disagreement"] == ""


def test_predict_volumes_write_uncertainty_on_the_segmentation_grid(tmp_path):
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("synapse_multiorgan", tmp_path / "bundle")
    for name, seed in (("ct_a", 0), ("ct_b", 1)):
        write_ct_volume(tmp_path / "scans" / f"{name}.nii.gz", shape=(30, 26, 5), seed=seed)
    with pytest.raises(InputError, match="--rank_by disagreement: needs several passes"):  # one pass
        predict(str(bundle), str(tmp_path / "scans"), str(tmp_path / "segs"), device="cpu", uncertainty=True,
                rank_by="disagreement")
    assert not (tmp_path / "segs").exists()
    written = predict(str(bundle), str(tmp_path / "scans"), str(tmp_path / "segs"), device="cpu", uncertainty=True,
                      tta=True, rank_by="disagreement")
    assert len(written) == 2
    rows = _read_table(tmp_path / "segs" / "uncertainty.csv")
    assert sorted(Path(r["file"]).name for r in rows) == ["ct_a.nii.gz", "ct_b.nii.gz"]
    spread = [float(r["mean_disagreement"]) for r in rows]
    assert spread == sorted(spread, reverse=True)
    for seg_path in written:
        seg = nib.load(seg_path)
        case = Path(seg_path).name[: -len("_seg.nii.gz")]
        stored = nib.load(tmp_path / "segs" / f"{case}_uncertainty.nii.gz")
        assert stored.shape == seg.shape and stored.get_data_dtype() == np.uint8
        assert np.allclose(stored.affine, seg.affine)
        prob = np.moveaxis(nib.load(tmp_path / "segs" / f"{case}_prob.nii.gz").get_fdata(), -1, 0)
        expected = normalized_entropy(prob)
        assert np.abs(stored.get_fdata() - expected).max() <= 0.5 / 255 + 1e-6  # one 8-bit rounding
        row = next(r for r in rows if Path(r["file"]).name == f"{case}.nii.gz")
        assert int(row["foreground_pixels"]) == int((prob.argmax(0) > 0).sum())
        assert row["picture"] == str(tmp_path / "segs" / f"{case}_uncertainty.nii.gz")
        # --tta: the passes' mean entropy on the same grid, and where they disagree
        own = nib.load(tmp_path / "segs" / f"{case}_pass_entropy.nii.gz")
        spread = nib.load(tmp_path / "segs" / f"{case}_disagreement.nii.gz")
        assert own.shape == spread.shape == seg.shape and np.allclose(spread.affine, seg.affine)
        expected_spread = np.clip(stored.get_fdata() - own.get_fdata(), 0, 1)
        assert np.abs(spread.get_fdata() - expected_spread).max() <= 1.5 / 255 + 1e-6
        assert float(row["mean_disagreement"]) == pytest.approx(spread.get_fdata().mean(), abs=1 / 255)
        assert row["disagreement_picture"] == str(tmp_path / "segs" / f"{case}_disagreement.nii.gz")
        # and pictures of them: the montage's slices with the uncertainty, and the disagreement, in colour
        assert (tmp_path / "segs" / "montages" / f"{case}_seg_uncertainty.png").is_file()
        assert (tmp_path / "segs" / "montages" / f"{case}_seg_disagreement.png").is_file()
        assert (tmp_path / "segs" / "montages" / f"{case}_seg.png").is_file()
    # a slab smaller than the volume gives the same map as one pass
    from vmunet_monai.evaluation.uncertainty import write_uncertainty_volumes

    prob_path = tmp_path / "segs" / "ct_a_prob.nii.gz"
    first = write_uncertainty_volumes([("ct_a", str(prob_path))], slab=2)[0]
    again = write_uncertainty_volumes([("ct_a", str(prob_path))], slab=64)[0]
    assert first == again


def test_a_bundle_from_before_pass_entropy_still_gives_the_uncertainty(tmp_path, capsys):
    """A trained copy of a bundle whose inference.json predates the pass_entropy option: --uncertainty --tta writes
    the uncertainty as before, says why there is no disagreement, and does not fail on the missing maps."""
    from vmunet_monai.predict import predict

    bundle = tiny_bundle_with_weights("isic_skin_lesion", tmp_path / "bundle")
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    del config["pass_entropy"], config["inferer"]["spread"]
    post = config["postprocessing"]["transforms"]
    post[:] = [t for t in post if not t["_target_"].endswith("SplitPassEntropyd")]
    next(t for t in post if t["_target_"] == "Invertd")["keys"] = "pred"
    config["handlers"] = [h for h in config["handlers"] if h.get("suffix") != "pass_entropy"]
    path.write_text(json.dumps(config, indent=4))
    write_rgb(tmp_path / "images" / "a.png", 40, 44)
    result = predict(str(bundle), str(tmp_path / "images"), str(tmp_path / "out"), device="cpu", uncertainty=True,
                     tta=True)
    assert "mean_disagreement" not in result["uncertainty"][0] and Path(result["uncertainty"][0]["picture"]).is_file()
    assert f"note: {path} has no pass_entropy option" in capsys.readouterr().err
