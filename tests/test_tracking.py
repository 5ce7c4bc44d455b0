"""``python -m monai.bundle run ... --tracking mlflow`` with the bundles: one MLflow run per workflow, in one store per
bundle, with the workflow's numbers, files and tags, and no run logging into another's."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from ignite.engine import Engine, Events

pytest.importorskip("mlflow", reason="mlflow is not installed (the [tracking] extra: pip install "
                    "'vmunet-monai[tracking]')")

from bundle_helpers import copy_bundle, make_prepared, run_workflow, tiny_overrides  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from monai.handlers import MLFlowHandler  # noqa: E402

from vmunet_monai.engine import TrackingRun, store_uri  # noqa: E402
from vmunet_monai.engine.tracking import mlflow_handlers  # noqa: E402

BUNDLE = "isic_skin_lesion"


def _run_workflow(root, prepared, configs, kind, **overrides):
    run_workflow(BUNDLE, configs, kind, bundle_root=str(root), dataset_dir=str(prepared), tracking="mlflow",
                 **dict(tiny_overrides(BUNDLE, epochs=1), **overrides))


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {uri}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def _artifacts(uri: str, run) -> set[str]:
    client = MlflowClient(uri)
    names, folders = set(), [None]
    while folders:
        for item in client.list_artifacts(run.info.run_id, folders.pop()):
            (folders.append(item.path) if item.is_dir else names.add(item.path))
    return names


def test_training_and_evaluations_each_get_a_finished_run_of_their_own(tmp_path):
    prepared = make_prepared(BUNDLE, tmp_path, num=8)
    root = copy_bundle(BUNDLE, tmp_path)
    _run_workflow(root, prepared, ["train.json"], "train")
    _run_workflow(root, prepared, ["train.json", "evaluate.json"], "eval")
    _run_workflow(root, prepared, ["train.json", "evaluate.json", "evaluate_native.json"], "eval")
    _run_workflow(root, prepared, ["inference.json"], "infer")

    uri = store_uri(root / "eval")
    assert (root / "eval" / "mlruns.db").is_file()
    training, evaluation, native, inference = _runs(uri, BUNDLE)  # the experiment is named after the bundle
    for run in (training, evaluation, native, inference):
        assert run.info.status == "FINISHED", run.info.run_name
    assert training.info.run_name.startswith("training_")
    assert evaluation.info.run_name.startswith("evaluation_test_") and native.info.run_name.startswith("evaluation_")

    # training: the loss and the validation of its epoch, the curves and the config, its network
    assert {"train_loss", "val_mean_dice", "train_mean_dice"} <= set(training.data.metrics)
    assert not {"pooled_dsc", "calibration_ece"} & set(training.data.metrics)  # nothing of the evaluations
    assert training.data.tags["workflow"] == "training" and training.data.tags["network"] == "VMUNet"
    assert {"training_curves.png", "training_log.csv"} <= _artifacts(uri, training)
    assert any(name.startswith("config_") for name in _artifacts(uri, training))

    # an evaluation: the report's numbers as metrics, its files as artifacts, its split and weights as tags
    summary = json.loads((root / "eval" / "metrics_test_summary.json").read_text())
    assert evaluation.data.metrics["pooled_dsc"] == pytest.approx(summary["overall"]["pooled"]["dsc"])
    assert evaluation.data.tags["workflow"] == "evaluation" and evaluation.data.tags["eval_split"] == "test"
    assert evaluation.data.tags["checkpoints"].endswith("models/model.pt")
    files = _artifacts(uri, evaluation)
    assert {"metrics_test_per_image.csv", "metrics_test_summary.json", "metrics_test.png"} <= files
    assert any(name.startswith("config_") for name in files) and not any(f.endswith(".db") for f in files)

    # the evaluation at each image's own size: the calibration written at the end is logged too
    calibration = json.loads((root / "eval" / "native" / "metrics_test_calibration.json").read_text())
    assert native.data.metrics["calibration_ece"] == pytest.approx(calibration["ece"])
    assert {"metrics_test_calibration.png", "metrics_test_per_image.csv"} <= _artifacts(uri, native)
    assert "metrics_test_calibration.png" not in files

    # an inference: in the bundle's experiment too (not MONAI's default), with its weights, data and image count
    test_images = json.loads((prepared / "datalist.json").read_text())["test"]
    assert inference.info.run_name.startswith("inference_") and inference.data.tags["workflow"] == "inference"
    assert inference.data.tags["checkpoints"].endswith("models/model.pt")
    assert inference.data.tags["output_dir"].endswith("eval") and inference.data.tags["tta"] == "False"
    assert inference.data.metrics == {"images": len(test_images)}
    assert [name for name in _artifacts(uri, inference) if not name.startswith("config_")] == []
    assert "images" not in training.data.metrics and "images" not in evaluation.data.metrics


def _engine_with_tracking(tmp_path, run_name: str, close: bool = True, kind: str = "evaluation",
                          resume_from_epoch: int = 0, fail: bool = False):
    """A one-step ignite engine with MONAI's MLflow handler (as ``--tracking`` attaches it, after ours); with
    ``resume_from_epoch`` it starts past that epoch, as a resumed training does; with ``fail`` its step raises."""
    def step(engine, batch):
        if fail:
            raise RuntimeError("the step failed")
        return batch

    engine = Engine(step)
    if resume_from_epoch:  # what TrainingCheckpoint does when it resumes: listed before TrackingRun
        engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "epoch", resume_from_epoch))
    picture = tmp_path / "out" / "sub" / "picture.png"
    tracking = TrackingRun(kind, artifacts=str(tmp_path / "out"), tags={"split": "test", "none": None,
                                                                        "checkpoints": "models"},
                           close=close, resume_tag="checkpoints")
    tracking.attach(engine)
    handler = MLFlowHandler(tracking_uri=store_uri(tmp_path), experiment_name="exp", run_name=run_name,
                            iteration_log=False)
    handler.attach(engine)

    @engine.on(Events.COMPLETED)
    def write(e):  # a report written at the end, after the tracking handlers were attached
        e.state.metrics["late_metric"] = torch.tensor(0.25)
        picture.parent.mkdir(parents=True, exist_ok=True)
        picture.write_bytes(b"png")

    return engine, tracking, handler


def _experiment(tmp_path):
    """The client of the store in ``tmp_path`` and an experiment whose files stay there (MLflow's default is
    ``./mlruns`` in the working directory)."""
    client = MlflowClient(store_uri(tmp_path))
    return client, client.create_experiment("exp", artifact_location=(tmp_path / "mlruns").as_uri())


def test_an_unnamed_run_never_joins_a_run_left_open(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    client, experiment = _experiment(tmp_path)
    left_open = client.create_run(experiment, run_name="crashed").info.run_id
    (tmp_path / "out").mkdir()
    old = tmp_path / "out" / "old.csv"
    old.write_text("written before the workflow")
    os.utime(old, (old.stat().st_atime - 60, old.stat().st_mtime - 60))
    engine, tracking, handler = _engine_with_tracking(tmp_path, run_name="")
    assert mlflow_handlers(engine) == [handler]
    config = tmp_path / "config_0.json"  # a file logged by another handler, as MONAI's logs the bundle's config
    config.write_text("{}")
    engine.add_event_handler(Events.COMPLETED, lambda e: client.log_artifact(tracking.run_id, str(config)))
    tracking_log = logging.getLogger("vmunet_monai.engine.tracking")
    monkeypatch.setattr(tracking_log, "disabled", False)  # (as a logging set-up of an earlier test may leave it)
    tracking_log.addHandler(caplog.handler)  # its records directly, whatever the loggers above it were set to
    try:
        with caplog.at_level("INFO", logger=tracking_log.name):
            engine.run([1.0], max_epochs=1)
    finally:
        tracking_log.removeHandler(caplog.handler)
    assert tracking.run_id != left_open and tracking.run_name.startswith("evaluation_")
    run = client.get_run(tracking.run_id)
    assert run.info.status == "FINISHED" and client.get_run(left_open).info.status == "RUNNING"
    assert run.data.tags["split"] == "test" and "none" not in run.data.tags
    assert run.data.metrics["late_metric"] == pytest.approx(0.25)  # logged after MONAI's handler had finished
    assert _artifacts(store_uri(tmp_path), run) == {"sub/picture.png", "config_0.json"}  # not the file from before
    assert f"MLflow run {tracking.run_name!r} ({tracking.run_id}): 2 artifact(s), finished" in caplog.text


def test_a_named_run_gets_a_run_of_its_own(tmp_path, monkeypatch):
    """``--run_name seed1``: the run is named so, even where a run of that name is open (a training of seed1
    going on while its last checkpoint is evaluated)."""
    monkeypatch.chdir(tmp_path)
    client, experiment = _experiment(tmp_path)
    open_run = client.create_run(experiment, run_name="seed1").info.run_id
    engine, tracking, _ = _engine_with_tracking(tmp_path, run_name="seed1")
    engine.run([1.0], max_epochs=1)
    assert tracking.run_id != open_run and tracking.run_name == "seed1"
    assert client.get_run(open_run).info.status == "RUNNING"  # untouched
    assert client.get_run(tracking.run_id).data.tags["workflow"] == "evaluation"


def test_a_failed_training_is_marked_and_its_resumption_goes_on_in_its_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    client, experiment = _experiment(tmp_path)
    # a training of the same checkpoint folder killed outright (SIGKILL), and one of another folder, both RUNNING
    killed = client.create_run(experiment, run_name="killed", tags={"workflow": "training", "checkpoints": "models"})
    running = client.create_run(experiment, run_name="running", tags={"workflow": "training",
                                                                      "checkpoints": "another"})
    engine, failed, _ = _engine_with_tracking(tmp_path, run_name="", kind="training", close=False, fail=True)
    with pytest.raises(RuntimeError, match="the step failed"):
        engine.run([1.0], max_epochs=2)
    # a fresh training starts that folder over: its run left RUNNING can never go on; the other folder's is untouched
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert client.get_run(running.info.run_id).info.status == "RUNNING"
    assert client.get_run(failed.run_id).info.status == "RUNNING"
    failed._fail_if_open()  # what happens when the process exits
    assert client.get_run(failed.run_id).info.status == "FAILED"
    # a training of another checkpoint folder, left open, is not the one resumed
    other = client.create_run(experiment, run_name="other", tags={"workflow": "training", "checkpoints": "elsewhere"})

    # a fresh training: a new run
    engine, fresh, _ = _engine_with_tracking(tmp_path, run_name="", kind="training", close=False)
    engine.run([1.0], max_epochs=1)
    assert fresh.run_id != failed.run_id and client.get_run(failed.run_id).info.status == "FAILED"
    fresh._fail_if_open()  # completed: left as it is
    assert client.get_run(fresh.run_id).info.status == "RUNNING"  # a training run is closed by MONAI's handler
    client.set_terminated(fresh.run_id)

    # the resumed one (the engine starts past epoch 0): the failed run again, running
    engine, resumed, _ = _engine_with_tracking(tmp_path, run_name="", kind="training", close=False,
                                               resume_from_epoch=1)
    engine.run([1.0], max_epochs=2)
    assert resumed.run_id == failed.run_id and resumed.run_id != other.info.run_id
    assert client.get_run(failed.run_id).info.status == "RUNNING"


def test_without_tracking_nothing_happens(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    engine = Engine(lambda e, batch: batch)
    tracking = TrackingRun("training", artifacts=str(tmp_path), close=True)
    tracking.attach(engine)
    engine.run([1.0], max_epochs=1)
    assert tracking.run_id is None and not list(tmp_path.iterdir())
