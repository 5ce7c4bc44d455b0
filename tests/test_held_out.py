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
    assert json.loads((weights.parent / TRAINED_ON).read_text()) == {
        "training": ["/d/a.png", "/d/b.png"], "validation": ["/d/c.png"],
        "fingerprints": {"training": [], "validation": []}}  # files that are not there have none
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
    assert json.loads((weights.parent / TRAINED_ON).read_text())["training"] == ["/d/z.png"]


def test_a_copied_or_moved_dataset_is_recognised_by_content(tmp_path):
    """Paths change when a dataset is copied to another machine or folder; the files' fingerprints do not."""
    import numpy as np

    from vmunet_monai.engine.held_out import fingerprint

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for name, size in (("a.png", 100), ("b.png", 300_000), ("c.png", 300_000), ("d.png", 300_000)):
        (data / name).write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    weights = tmp_path / "models" / "model.pt"
    record_trained_on(weights.parent, [str(data / "a.png"), str(data / "b.png")], [str(data / "c.png")])
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert fingerprint(copy / "b.png") == fingerprint(data / "b.png") != fingerprint(data / "c.png")
    check_held_out([weights], [str(copy / "d.png")], "test")  # not trained on
    with pytest.raises(InputError) as failure:
        check_held_out([weights], [str(copy / n) for n in ("a.png", "c.png", "d.png")], "test")
    assert ("2 of the 3 test images were in the data it was trained on (1 in its training data and 1 in its "
            "validation data; first: " in str(failure.value))
    assert "2 of them recognised by content under another path: the dataset copied or moved since" in str(failure.value)
    # a change in the middle of a big file is not seen by the fingerprint, but one at either end or in the size is
    changed = bytearray((data / "b.png").read_bytes())
    changed[-1] ^= 1
    (copy / "b.png").write_bytes(bytes(changed))
    check_held_out([weights], [str(copy / "b.png")], "test")
    # a record without fingerprints (written before them) is checked by path, as it was
    record = json.loads((weights.parent / TRAINED_ON).read_text())
    del record["fingerprints"]
    (weights.parent / TRAINED_ON).write_text(json.dumps(record))
    check_held_out([weights], [str(copy / "a.png")], "test")
    with pytest.raises(InputError):
        check_held_out([weights], [str(data / "a.png")], "test")


def test_a_bundle_evaluation_after_the_split_changed_stops_before_scoring(tmp_path):
    prepared = make_prepared(BUNDLE, tmp_path, num=8)
    root = copy_bundle(BUNDLE, tmp_path)
    over = tiny_overrides(BUNDLE, epochs=1)
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    doc = json.loads((prepared / "datalist.json").read_text())
    resolved = {k: sorted(str((prepared / it["image"]).resolve()) for it in doc[k]) for k in ("training", "validation")}
    written = json.loads((root / "models" / TRAINED_ON).read_text())
    assert {k: written[k] for k in resolved} == resolved
    assert {k: len(v) for k, v in written["fingerprints"].items()} == {k: len(v) for k, v in resolved.items()}

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
