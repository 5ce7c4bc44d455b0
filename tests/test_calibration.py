"""Calibration of binary probability maps: ECE, Brier and the reliability diagram, checked against the formulas."""

from __future__ import annotations

import numpy as np
import pytest

from vmunet_monai.evaluation.calibration import Calibration


def test_counts_ece_and_brier_by_hand():
    p = np.array([0.05, 0.05, 0.15, 0.95, 1.0, 0.55, 0.55, 0.55, 0.55])
    t = np.array([0, 1, 0, 1, 1, 1, 1, 0, 0], bool)
    cal = Calibration(bins=10)
    cal.add(p[:4].reshape(2, 2), t[:4].reshape(2, 2))  # images of any shape, added one by one
    cal.add(p[4:], t[4:])
    s = cal.summary()
    assert s["pixels"] == 9 and [r["pixels"] for r in s["bins"]] == [2, 1, 0, 0, 0, 4, 0, 0, 0, 2]  # 1.0: last bin
    assert s["bins"][2]["mean_probability"] is None and s["bins"][2]["observed_share"] is None
    assert s["bins"][5]["mean_probability"] == pytest.approx(0.55) and s["bins"][5]["observed_share"] == 0.5
    ece = (2 * abs(0.5 - 0.05) + 1 * abs(0.0 - 0.15) + 4 * abs(0.5 - 0.55) + 2 * abs(1.0 - 0.975)) / 9
    assert s["ece"] == pytest.approx(ece)
    assert s["brier"] == pytest.approx(float(np.mean((p - t) ** 2)))


def _errors_by_hand(confidence: np.ndarray, wrong: np.ndarray) -> tuple[float, float]:
    """AUROC over every (error, right pixel) pair, and the share of errors among the len(errors) least confident
    pixels, a tie group on the boundary taken pro rata."""
    cw, cr = confidence[wrong], confidence[~wrong]
    auroc = float(np.mean((cw[:, None] < cr[None, :]) + 0.5 * (cw[:, None] == cr[None, :])))
    budget, found = int(wrong.sum()), 0.0
    for value in np.unique(confidence):  # ascending: least sure first
        group = confidence == value
        take = min(budget, int(group.sum()))
        found += take * wrong[group].mean()
        budget -= take
        if not budget:
            break
    return auroc, found / wrong.sum()


@pytest.mark.parametrize("part", [1 << 20, 333])
def test_errors_are_found_by_doubt_as_counted_pair_by_pair(part, monkeypatch):
    """Fresh 8-bit maps (as predict writes them, so equal values tie): binary, where the mask is p >= 0.5 and the
    confidence max(p, 1 - p), and by the top label of three classes; in parts or whole, the same."""
    monkeypatch.setattr(Calibration, "PART", part)
    rng = np.random.default_rng()
    p = np.rint(rng.uniform(0, 1, 3000) * 255) / 255
    truth = rng.uniform(0, 1, p.size) < np.clip(p + rng.normal(0, 0.2, p.size), 0, 1)
    binary = Calibration()
    binary.add(p.reshape(60, 50), truth.reshape(60, 50))
    errors = binary.summary()["errors"]
    wrong = (p >= 0.5) != truth
    confidence = np.rint(np.maximum(p, 1 - p) * 255) / 255  # 1 - k/255 and (255 - k)/255 are one level, tied
    auroc, least = _errors_by_hand(confidence, wrong)
    assert errors["auroc"] == pytest.approx(auroc, abs=1e-9) and errors["least_sure_errors"] == pytest.approx(least)
    assert errors["wrong"] == int(wrong.sum()) and errors["error_rate"] == pytest.approx(wrong.mean())
    assert 0.6 < errors["auroc"] < 1.0  # these maps' doubt does point at their errors, not perfectly
    prob = rng.dirichlet(np.ones(3), size=2000).T
    prob = np.rint(prob * 255) / 255
    classes = rng.integers(0, 3, 2000)
    top = Calibration(top_label=True)
    top.add_classes(prob, classes)
    auroc, least = _errors_by_hand(prob.max(0), prob.argmax(0) != classes)
    assert top.summary()["errors"]["auroc"] == pytest.approx(auroc, abs=1e-9)
    assert top.summary()["errors"]["least_sure_errors"] == pytest.approx(least)


def test_errors_at_their_ends():
    perfect = Calibration()
    p = np.linspace(0, 1, 1001)
    truth = p >= 0.5
    truth[np.abs(p - 0.5) < 0.1] ^= True  # the least sure pixels, and only they, are wrong
    perfect.add(p, truth)
    assert perfect.errors()["auroc"] == pytest.approx(1.0)
    assert perfect.errors()["least_sure_errors"] == pytest.approx(1.0)
    right = Calibration()
    right.add(np.array([0.1, 0.9]), np.array([False, True]))
    assert right.errors() == {"auroc": None, "least_sure_errors": None, "wrong": 0, "error_rate": 0.0}
    assert Calibration().errors()["error_rate"] is None


def test_a_calibrated_model_scores_near_zero_and_an_overconfident_one_does_not():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    calibrated, sure = Calibration(), Calibration()
    truth = rng.uniform(0, 1, p.size) < p  # foreground as often as the probability says
    calibrated.add(p, truth)
    sure.add(np.where(p > 0.5, 1.0, 0.0), truth)  # the same decisions, stated as certainties
    assert calibrated.summary()["ece"] < 0.01
    assert sure.summary()["ece"] > 0.2 and sure.summary()["brier"] > calibrated.summary()["brier"]


def test_bad_input_and_empty_summary(tmp_path):
    cal = Calibration()
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        cal.add(np.array([0.5, 255.0]), np.array([0, 1], bool))
    with pytest.raises(ValueError, match="3 probabilities against 2 ground-truth pixels"):
        cal.add(np.zeros(3), np.zeros(2, bool))
    with pytest.raises(ValueError, match="bins=0"):
        Calibration(bins=0)
    assert cal.summary()["ece"] is None and cal.summary()["pixels"] == 0
    assert (tmp_path / "empty.png").name in cal.plot(tmp_path / "empty.png")  # an empty diagram still draws
    cal.add(np.array([0.2, 0.9]), np.array([0, 1], bool))
    assert cal.plot(tmp_path / "c.png") == str(tmp_path / "c.png") and (tmp_path / "c.png").stat().st_size > 0


def _prob_volume(path, prob, affine):
    """A 4D probability NIfTI as predict --probabilities writes it: 8 bits with the scale factor 1/255."""
    import nibabel as nib

    image = nib.Nifti1Image(np.rint(prob * 255).astype(np.uint8), affine)
    image.header.set_slope_inter(1.0 / 255.0, 0.0)
    nib.save(image, str(path))


def test_score_volumes_calibrates_the_class_probabilities_beside_them(tmp_path, capsys):
    """``score`` on predict's output folder: ``<case>_prob.nii.gz`` beside ``<case>_seg.nii.gz`` gives the
    top-label calibration; predict's probability and uncertainty volumes are not taken for predictions."""
    import json

    import nibabel as nib

    from vmunet_monai.data import prepare, synapse
    from vmunet_monai.evaluation.calibration import calibrate_volumes
    from vmunet_monai.evaluation.score import score_volumes

    synapse.demo_data(str(tmp_path / "acdc"), num=10, seed=2, layout="acdc", shape=(48, 48, 4))
    prepare("synapse_multiorgan", str(tmp_path / "acdc"), str(tmp_path / "prepared"))
    tests = json.loads((tmp_path / "prepared" / "datalist.json").read_text())["test"]
    out = tmp_path / "pred"
    out.mkdir()
    for item in tests:
        label = nib.load(tmp_path / "prepared" / item["label"])
        truth = np.asarray(label.dataobj).astype(np.int64)
        nib.save(nib.Nifti1Image(truth.astype(np.uint8), label.affine), out / f"{item['case']}_seg.nii.gz")
        prob = np.full((*truth.shape, 4), 0.1)  # the right class at 0.7 everywhere: right, but too timid
        np.put_along_axis(prob, truth[..., None], 0.7, axis=-1)
        _prob_volume(out / f"{item['case']}_prob.nii.gz", prob, label.affine)
        for companion in ("uncertainty", "pass_entropy", "disagreement"):  # predict --uncertainty --tta: no label maps
            nib.save(nib.Nifti1Image(np.zeros(truth.shape, np.uint8), label.affine),
                     out / f"{item['case']}_{companion}.nii.gz")
    summary = score_volumes(out, tmp_path / "prepared", out=tmp_path / "scored", montage=False)
    assert summary["num_cases"] == len(tests) and summary["unused_predictions"] == []
    calibration = summary["calibration"]
    assert calibration["cases"] == len(tests) and calibration["kind"] == "top_label"
    assert calibration["ece"] == pytest.approx(0.3, abs=1 / 255)  # said 0.7, right every time
    assert calibration["brier"] == pytest.approx(0.09, abs=2 / 255)
    assert (tmp_path / "scored" / "calibration.png").is_file()
    assert json.loads((tmp_path / "scored" / "calibration.json").read_text())["ece"] == calibration["ece"]
    assert "top-label ECE 0.30" in capsys.readouterr().out
    # scored again without the probabilities: the earlier calibration is not left to be read as this score's
    (tmp_path / "scored" / "mine.txt").write_text("kept")
    for item in tests:
        (out / f"{item['case']}_prob.nii.gz").rename(tmp_path / f"{item['case']}_prob.nii.gz")
    again = score_volumes(out, tmp_path / "prepared", out=tmp_path / "scored", montage=False)
    assert "calibration" not in again and not (tmp_path / "scored" / "calibration.json").exists()
    assert not (tmp_path / "scored" / "calibration.png").exists()
    assert (tmp_path / "scored" / "mine.txt").read_text() == "kept" and (tmp_path / "scored" / "summary.json").is_file()
    assert f"note: {tmp_path / 'scored'} held an earlier score (7 files): replaced" in capsys.readouterr().out
    for item in tests:
        (tmp_path / f"{item['case']}_prob.nii.gz").rename(out / f"{item['case']}_prob.nii.gz")
    # read a few slices at a time or all at once: the same counts; a volume on another grid is named
    pairs = [(out / f"{item['case']}_prob.nii.gz", tmp_path / "prepared" / item["label"]) for item in tests]
    assert _same(calibrate_volumes(pairs, slab=1).summary(), calibrate_volumes(pairs, slab=64).summary())
    _prob_volume(out / "bad_prob.nii.gz", np.full((48, 48, 3, 4), 0.25), np.eye(4))
    with pytest.raises(ValueError, match=r"bad_prob.nii.gz: class probabilities of shape \(48, 48, 3, 4\)"):
        calibrate_volumes([(out / "bad_prob.nii.gz", pairs[0][1])])


def _same(a: dict, b: dict) -> bool:
    """Two summaries alike: the same counts, the same numbers up to the order of float sums."""
    return (a["pixels"] == b["pixels"] and a["kind"] == b["kind"]
            and [r["pixels"] for r in a["bins"]] == [r["pixels"] for r in b["bins"]]
            and a["ece"] == pytest.approx(b["ece"]) and a["brier"] == pytest.approx(b["brier"])
            and all(x["mean_probability"] == pytest.approx(y["mean_probability"])
                    for x, y in zip(a["bins"], b["bins"])))


def test_the_evaluation_handler_counts_binary_maps_and_top_labels(tmp_path):
    """``CalibrationReport`` on an evaluator's outputs: one channel as a binary model's foreground probability
    (masks at half scale), several channels by their top label (one-hot or class-number ground truth)."""
    import json
    from types import SimpleNamespace

    import torch

    from vmunet_monai.engine import CalibrationReport

    rng = np.random.default_rng(1)

    def run(outputs, prefix):
        report = CalibrationReport(str(tmp_path), prefix=prefix)
        engine = SimpleNamespace(state=SimpleNamespace(batch=[{}] * len(outputs), output=outputs, metrics={}))
        report._reset(engine)
        report._collect(engine)
        report._write(engine)
        return report, engine, json.loads((tmp_path / f"{prefix}_calibration.json").read_text())

    p = rng.uniform(0, 1, (2, 1, 6, 7))
    mask = rng.uniform(0, 1, (2, 1, 6, 7)) < p
    _, engine, binary = run([{"prob": torch.tensor(p[i]), "label": torch.tensor(mask[i] * 255.0)} for i in range(2)],
                            "binary")
    expected = Calibration()
    expected.add(p, mask)
    assert _same(binary, expected.summary()) and engine.state.metrics["calibration_ece"] == binary["ece"]
    logits = rng.normal(0, 1, (2, 3, 6, 7))
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = rng.integers(0, 3, (2, 6, 7))
    onehot = np.eye(3)[truth].transpose(0, 3, 1, 2)
    _, _, top = run([{"prob": torch.tensor(soft[i]), "label": torch.tensor(onehot[i])} for i in range(2)], "top")
    _, _, numbers = run([{"prob": soft[i], "label": truth[i][None]} for i in range(2)], "numbers")
    expected = Calibration(top_label=True)
    expected.add(soft.max(1), soft.argmax(1) == truth)
    assert _same(top, expected.summary()) and _same(numbers, top) and top["kind"] == "top_label"
    assert (tmp_path / "top_calibration.png").is_file()


def test_volumes_by_the_class_picked_and_its_probability_as_argmax_keeps_them(tmp_path):
    """The Synapse evaluation's way: ``ChannelArgmaxd(probability_key=...)`` keeps the highest probability of each
    voxel beside the class picked, and ``CalibrationReport(pred_key=...)`` counts those (3D maps, the ground
    truth taken from the batch) as the full class probabilities would be counted; ``prefix=""`` writes
    ``calibration.json``."""
    import json
    from types import SimpleNamespace

    import torch

    from vmunet_monai.engine import CalibrationReport, ChannelArgmaxd

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (2, 4, 5, 6, 3))
    soft = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = rng.integers(0, 4, (2, 1, 5, 6, 3))
    picked = [ChannelArgmaxd("pred", probability_key="top")({"pred": torch.tensor(soft[i], dtype=torch.float32)})
              for i in range(2)]
    for i, out in enumerate(picked):
        assert out["pred"].shape == out["top"].shape == (1, 5, 6, 3)
        np.testing.assert_array_equal(out["pred"][0].numpy(), soft[i].argmax(0))
        np.testing.assert_allclose(out["top"][0].numpy(), soft[i].max(0), rtol=1e-6)
    report = CalibrationReport(str(tmp_path), prob_key="top", pred_key="pred", label_key="original_label", prefix="")
    engine = SimpleNamespace(state=SimpleNamespace(batch=[{"original_label": torch.tensor(t)} for t in truth],
                                                   output=picked, metrics={}))
    report._reset(engine)
    report._collect(engine)
    report._write(engine)
    got = json.loads((tmp_path / "calibration.json").read_text())
    expected = Calibration(top_label=True)
    expected.add(soft.max(1), soft.argmax(1) == truth[:, 0])
    assert _same(got, expected.summary()) and got["kind"] == "top_label" and (tmp_path / "calibration.png").is_file()
    # several keys: each keeps its own; and a ground truth of another grid is named
    two = ChannelArgmaxd(["a", "b"], probability_key="top")({"a": torch.tensor(soft[0]), "b": torch.tensor(soft[1])})
    assert {"a_top", "b_top"} <= set(two)
    engine.state.batch = [{"original_label": torch.zeros(1, 5, 6, 2)}] * 2
    with pytest.raises(ValueError, match="90 probabilities against 60 ground-truth values"):
        report._collect(engine)
    engine.state.batch = [{}] * 2
    with pytest.raises(KeyError, match="needs 'top' .*'pred' \\(the class picked\\) and 'original_label'"):
        report._collect(engine)


def test_score_volumes_draws_the_montage_of_a_volume_of_one_time_point(tmp_path):
    """A test image stored as X, Y, Z, 1 (a 4D NIfTI of one time point, which prepare takes): its montage is drawn
    (score stopped with an IndexError after writing the scores)."""
    import json
    import warnings
    from pathlib import Path

    import nibabel as nib

    from vmunet_monai.data import prepare, synapse
    from vmunet_monai.evaluation.score import score_volumes

    raw = synapse.demo_data(str(tmp_path / "raw"), num=4, seed=1, shape=(32, 32, 8))
    prepare("synapse_multiorgan", raw, str(tmp_path / "prepared"))
    tests = json.loads((tmp_path / "prepared" / "datalist.json").read_text())["test"]
    first = tmp_path / "prepared" / tests[0]["image"]
    image = nib.load(first)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., None], image.affine), str(first))
    out = tmp_path / "pred"
    out.mkdir()
    for item in tests:
        label = nib.load(tmp_path / "prepared" / item["label"])
        nib.save(nib.Nifti1Image(np.asarray(label.dataobj).astype(np.uint8), label.affine),
                 out / f"{item['case']}_seg.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "montage ... not written" would fail the test
        summary = score_volumes(out, tmp_path / "prepared", out=tmp_path / "scored")
    assert summary["num_cases"] == len(tests)
    assert [p.name for p in (tmp_path / "scored").glob("montage_*.png")] == [f"montage_{Path(first).name[:7]}.png"]
