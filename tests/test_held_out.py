"""An evaluation never scores images its model was trained or selected on: training records its data beside the
weights (``trained_on.json``), and ``evaluate.json`` stops when the datalist has changed since."""

from __future__ import annotations

import json
import shutil

import pytest
from bundle_helpers import copy_bundle, make_prepared, run_workflow, tiny_overrides, workflow

from vmunet_monai.engine.held_out import TRAINED_ON, check_held_out, record_trained_on
from vmunet_monai.validation import InputError

BUNDLE = "isic_skin_lesion"


def test_the_record_and_the_check(tmp_path):
    weights = tmp_path / "models" / "model.pt"
    record_trained_on(weights.parent, ["/d/a.png", "/d/b.png"], ["/d/c.png"])
    assert json.loads((weights.parent / TRAINED_ON).read_text()) == {"training": ["/d/a.png", "/d/b.png"],
                                                                     "validation": ["/d/c.png"]}
    check_held_out([weights], ["/d/x.png", "/d/y.png"], "test")  # unseen images: nothing to say
    check_held_out([weights], ["/d/a.png"], "training")  # the training split is what it was trained on
    check_held_out([weights], ["/d/c.png"], "validation")  # its own validation data: where model.pt was chosen
    with pytest.raises(InputError) as failure:
        check_held_out([weights], ["/d/x.png", "/d/b.png", "/d/c.png"], "test")
    message = str(failure.value)
    assert message.startswith(f"{weights}: 2 of the 3 test images were in the data it was trained on (1 in its "
                              f"training data and 1 in its validation data; first: /d/b.png")
    assert "prepare with another --seed" in message and "\n" not in message
    with pytest.raises(InputError, match=r"1 of the 1 validation images .*\(1 in its training data;"):
        check_held_out([weights], ["/d/a.png"], "validation")
    # an ensemble: every member with a record is checked; weights without one are not
    other = tmp_path / "elsewhere" / "model.pt"
    check_held_out([other], ["/d/a.png"], "test")
    with pytest.raises(InputError, match=str(weights)):
        check_held_out([other, weights], ["/d/a.png"], "test")

    # a resumed training adds its data to the record; a new one replaces it
    record_trained_on(weights.parent, ["/d/z.png"], [], resumed=True)
    assert json.loads((weights.parent / TRAINED_ON).read_text())["training"] == ["/d/a.png", "/d/b.png", "/d/z.png"]
    record_trained_on(weights.parent, ["/d/z.png"], [])
    assert json.loads((weights.parent / TRAINED_ON).read_text()) == {"training": ["/d/z.png"], "validation": []}


def test_a_bundle_evaluation_after_the_split_changed_stops_before_scoring(tmp_path):
    prepared = make_prepared(BUNDLE, tmp_path, num=8)
    root = copy_bundle(BUNDLE, tmp_path)
    over = tiny_overrides(BUNDLE, epochs=1)
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    doc = json.loads((prepared / "datalist.json").read_text())
    resolved = {k: sorted(str((prepared / it["image"]).resolve()) for it in doc[k]) for k in ("training", "validation")}
    assert json.loads((root / "models" / TRAINED_ON).read_text()) == resolved

    # the split drawn again (as prepare with another --seed would): a training image is now a test image
    moved = dict(doc, training=doc["training"][1:], test=doc["test"] + doc["training"][:1])
    (prepared / "datalist.json").write_text(json.dumps(moved))
    wf = workflow(BUNDLE, ["train.json", "evaluate.json"], "eval", bundle_root=str(root), dataset_dir=str(prepared),
                  **over)
    wf.initialize()
    with pytest.raises(Exception) as failure:
        wf.run()
    cause = failure.value
    while cause is not None and not isinstance(cause, InputError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None, failure.value
    assert f"1 of the {len(moved['test'])} test images were in the data it was trained on (1 in its training data;" \
        in str(cause)
    assert not (root / "eval" / "metrics_test_summary.json").exists()  # nothing scored

    # score: masks that predict wrote with these weights (its prediction.json names them) are refused the same way
    from vmunet_monai.evaluation.score import score_masks

    masks = tmp_path / "predicted" / "masks"
    masks.mkdir(parents=True)
    for item in moved["test"]:
        shutil.copy(prepared / item["label"], masks / f"{(prepared / item['image']).stem}_mask.png")
    record = {"weights": str(root / "models" / "model.pt"), "num_classes": 2}
    (tmp_path / "predicted" / "prediction.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match="were in the data it was trained on"):
        score_masks(masks, prepared, tmp_path / "score")
    (prepared / "datalist.json").write_text(json.dumps(doc))  # the datalist it was trained with: scored
    assert score_masks(masks, prepared, tmp_path / "score")["overall"]["n_images"] == len(doc["test"])
