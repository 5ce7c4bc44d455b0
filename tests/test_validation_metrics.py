"""The bundles' validation metrics score images whose label is empty, as their evaluation does, and their
learning-rate schedule follows the trainer's length, as MONAI Label sets it."""

import json

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser

from bundle_helpers import config_path


def _score(handler, pairs) -> float:
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine, "dice")
    engine.run([[{"pred": p, "label": y}] for p, y in pairs], max_epochs=1)
    return float(engine.state.metrics["dice"])


def _parsed(bundle: str, key: str, **overrides):
    parser = ConfigParser()
    parser.read_config(config_path(bundle, "train.json"))
    for k, v in overrides.items():
        parser[k] = v
    return parser.get_parsed_content(key)


def _one_hot(classes: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(classes, n).permute(2, 0, 1).float()


@pytest.mark.parametrize("bundle", ["isic_skin_lesion", "polyp_seg"])
def test_a_false_positive_on_an_image_without_a_lesion_lowers_the_validation_dice(bundle):
    """One image segmented exactly, one without a lesion where the network paints 16 pixels: MONAI's MeanDice left
    the second out (1.0), so such a network could be kept as the best; the bundles' metric scores it 0, as the
    evaluation's per-image Dice does, and an empty prediction there 1."""
    from monai.handlers import MeanDice, from_engine

    lesion, empty, fired = torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)
    lesion[:, 2:5, 2:5] = 1
    fired[:, :2] = 1
    assert _score(MeanDice(output_transform=from_engine(["pred", "label"])), [(lesion, lesion), (fired, empty)]) == 1
    for key in ("validate#key_metric#val_mean_dice", "train#key_metric#train_mean_dice",
                "validate#additional_metrics#val_mean_iou"):
        assert _score(_parsed(bundle, key), [(lesion, lesion), (fired, empty)]) == pytest.approx(0.5), key
        assert _score(_parsed(bundle, key), [(lesion, lesion), (empty, empty)]) == pytest.approx(1.0), key


def test_the_ct_validation_dice_scores_a_false_positive_organ_and_leaves_out_an_organ_absent_from_both():
    """The CT evaluation's rule: an organ absent from the label and the prediction is not scored; one predicted
    where the label has none scores 0 (MONAI's MeanDice left it out)."""
    classes = torch.zeros(8, 8, dtype=torch.long)
    classes[:3, :3] = 1  # organ 1 present; organs 2..8 absent
    fired = classes.clone()
    fired[6:, 6:] = 2  # organ 2 predicted where there is none
    metric = _parsed("synapse_multiorgan", "validate#key_metric#val_mean_dice")
    assert _score(metric, [(_one_hot(classes, 9), _one_hot(classes, 9))]) == pytest.approx(1.0)
    metric = _parsed("synapse_multiorgan", "validate#key_metric#val_mean_dice")
    assert _score(metric, [(_one_hot(fired, 9), _one_hot(classes, 9))]) == pytest.approx(0.5)


def test_empty_aware_dice_refuses_another_value_for_an_organ_absent_from_both():
    from vmunet_monai.engine import EmptyAwareDice

    with pytest.raises(ValueError, match=r"absent_both 0.5: 1 \(scored as agreement\) or nan \(not scored\)"):
        EmptyAwareDice(absent_both=0.5)


@pytest.mark.parametrize("bundle", ["isic_skin_lesion", "polyp_seg"])
def test_the_cosine_schedule_runs_over_the_trainer_s_epochs(bundle):
    """MONAI Label's BundleTrainTask sets train#trainer#max_epochs alone: the cosine runs over those epochs (it ran
    over the config's 300, so a 10-epoch training there never lowered its rate); --epochs sets both."""
    assert json.loads(open(config_path(bundle, "train.json")).read())["epochs"] == 300
    assert _parsed(bundle, "lr_scheduler#T_max", **{"train#trainer#max_epochs": 10}) == 10
    assert _parsed(bundle, "lr_scheduler#T_max", epochs=20) == 20
