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
    assert s["bins"][2]["mean_probability"] is None and s["bins"][2]["foreground_share"] is None
    assert s["bins"][5]["mean_probability"] == pytest.approx(0.55) and s["bins"][5]["foreground_share"] == 0.5
    ece = (2 * abs(0.5 - 0.05) + 1 * abs(0.0 - 0.15) + 4 * abs(0.5 - 0.55) + 2 * abs(1.0 - 0.975)) / 9
    assert s["ece"] == pytest.approx(ece)
    assert s["brier"] == pytest.approx(float(np.mean((p - t) ** 2)))


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
