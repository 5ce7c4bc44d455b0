"""Experiment tracking with ``python -m monai.bundle run ... --tracking mlflow``: one MLflow run per workflow.

MONAI's ``--tracking mlflow`` appends its ``MLFlowHandler`` to the trainer's, the validator's and the evaluator's
handlers. On its own each handler logs into whichever run of the experiment is still open (with the bundles' empty
``run_name``), and an evaluation never closes its run; so the next training or evaluation would write its numbers
into that evaluation's run (an inference too). :class:`TrackingRun`, listed among a workflow's handlers, gives each
workflow a run of its own (``training_<time>``, ``evaluation_<split>_<time>``, ``inference_<time>``, or
``run_name``), tags it, logs the workflow's
pictures and tables as artifacts, finishes the run of an evaluation, marks a run that never completed as FAILED,
and lets a resumed training go on in its run. Without tracking it finds no MLflow handler and does nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from pathlib import Path
from urllib.parse import quote

from ignite.engine import Engine, Events

from vmunet_monai.evaluation.binary import scalar_metrics

__all__ = ["TrackingRun", "mlflow_handlers", "store_uri"]

logger = logging.getLogger(__name__)

# what a workflow writes that is not a result of its own: MLflow's store, and the checkpoints
SKIPPED_SUFFIXES = (".db", ".db-journal", ".pt", ".ts", ".onnx", ".pt2")


def store_uri(folder: str | os.PathLike) -> str:
    """The tracking URI of an MLflow store in ``<folder>/mlruns.db`` (SQLite; MLflow keeps the runs' files in
    ``<folder>/mlruns``): the bundles put every run of a bundle, whatever its ``run_name`` or fold, in the one store
    under ``<bundle>/eval``."""
    return "sqlite:///" + quote(Path(folder, "mlruns.db").absolute().as_posix(), safe="/:")


def mlflow_handlers(engine: Engine | None) -> list:
    """The ``monai.handlers.MLFlowHandler`` objects attached to ``engine`` (what ``--tracking mlflow`` added), in
    the order they were attached; empty without tracking."""
    if engine is None:
        return []
    from monai.handlers import MLFlowHandler

    found = []
    for handlers in getattr(engine, "_event_handlers", {}).values():
        for entry in handlers:
            owner = getattr(entry[0], "__self__", None)
            if isinstance(owner, MLFlowHandler) and all(owner is not f for f in found):
                found.append(owner)
    return found


def _artifact_files(paths, since: float) -> list[tuple[Path, str | None]]:
    """``(file, folder in the run's artifacts)`` for the files under ``paths`` (files, or folders searched to any
    depth, whose sub-folders are kept) written at or after ``since``, leaving out MLflow's own store (``mlruns``)
    and checkpoints."""
    found: dict[Path, str | None] = {}
    for entry in paths:
        if not entry:
            continue
        path = Path(entry)
        if path.is_file():
            candidates = [(path, None)]
        elif path.is_dir():
            candidates = [(p, p.parent.relative_to(path).as_posix()) for p in sorted(path.rglob("*"))
                          if p.is_file() and "mlruns" not in p.relative_to(path).parts]
        else:
            continue
        for file, folder in candidates:
            if file.name.endswith(SKIPPED_SUFFIXES) or file in found or file.stat().st_mtime < since:
                continue
            found[file] = None if folder in (None, ".") else folder
    return list(found.items())


def _items(engine: Engine) -> int:
    """How many items ``engine`` ran over: its data's length where it has one, else its iterations."""
    try:
        return len(engine.state.dataloader.dataset)
    except (AttributeError, TypeError):
        return int(engine.state.iteration or 0)


class TrackingRun:
    """One MLflow run per workflow under ``--tracking mlflow``: named, tagged, with the workflow's files, finished.

    List it in the handlers of the engine the workflow runs (the trainer for training, the evaluator for an
    evaluation), anywhere before MONAI's tracking handler, which ``--tracking`` appends to the end of that list,
    and after a handler that resumes a training (``TrainingCheckpoint``).

    - When the engine starts, it opens the run for every MLflow handler on the engine (and on ``evaluator``: the
      validation during training) before they look for one themselves, which would be any run left open. It is a
      new run, named ``run_name`` when you gave one (``--run_name seed1``, also the runs' sub-folder), else
      ``<name>_<YYYYmmdd_HHMMSS>``, and tagged at once. A resumed training (the engine starts past epoch 0) goes
      on in the latest unfinished run whose ``resume_tag`` tag is the same (the bundles: its checkpoint folder);
      a fresh one marks such runs still RUNNING (their process was killed outright) as KILLED.
    - When the engine has completed, after every other handler (the reports are written), the run gets the files
      under ``artifacts`` written since this handler was made (pictures, tables, reports; not MLflow's store or
      checkpoints), ``config``, and the engine's scalar metrics that no handler logged (those reports add some
      at the end); with ``close`` the run is then finished (MONAI leaves an evaluation's run open; a training's
      run finishes by itself).
    - A run that never completes (an error, an interrupt) is marked ``FAILED`` when the process exits.

    Args:
        kind: the ``workflow`` tag (``training``, ``evaluation``, ``inference``).
        artifacts: files or folders whose new files are logged (a folder's sub-folders are kept).
        tags: more tags for the run (values turned into strings; None left out).
        evaluator: another engine whose MLflow handlers log into the same run (the validation during training).
        close: finish the run when the engine has completed.
        name: the first part of a generated run name (default ``kind``).
        config: the workflow's config as run, saved by ``--tracking`` (the bundles pass ``@save_execute_config``,
            which is ``true`` without tracking): logged too (MONAI's handler logs it for a training only).
        resume_tag: the tag (one of ``tags``) that a resumed training's run shares with the run it continues.
        count: the name of a metric logged at completion: how many items the engine's data held (an inference's
            ``images`` or ``volumes``, which has no other number to log).
    """

    def __init__(self, kind: str, artifacts=(), tags: dict | None = None, evaluator: Engine | None = None,
                 close: bool = False, name: str | None = None, config=None, resume_tag: str | None = None,
                 count: str | None = None) -> None:
        self.kind = str(kind)
        self.name = str(name) if name else self.kind
        self.artifacts = [artifacts] if isinstance(artifacts, (str, os.PathLike)) else list(artifacts or ())
        self.config = Path(config) if isinstance(config, (str, os.PathLike)) else None
        self.tags = {str(k): str(v) for k, v in (tags or {}).items() if v is not None}
        self.tags["workflow"] = self.kind
        self.resume_tag = resume_tag
        self.evaluator = evaluator
        self.close = bool(close)
        self.count = str(count) if count else None
        self.since = time.time() - 0.1  # a file's time can lag the clock by a tick
        self.client = None
        self.run_id: str | None = None
        self.run_name: str | None = None
        self.done = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)

    def _unfinished_runs(self, client, experiment_id: str) -> list:
        """The unfinished runs of this workflow with the same ``resume_tag`` value (its checkpoint folder), the
        latest first; none without that tag."""
        value = self.tags.get(self.resume_tag or "")
        if value is None:
            return []
        runs = client.search_runs([experiment_id], filter_string=f"tags.workflow = '{self.kind}'",
                                  order_by=["attributes.start_time DESC"])
        return [r for r in runs if r.data.tags.get(self.resume_tag) == value and r.info.status != "FINISHED"]

    def _resumed_run(self, client, experiment_id: str):
        """The latest unfinished run of this workflow's checkpoint folder, or None."""
        return next(iter(self._unfinished_runs(client, experiment_id)), None)

    def _end_abandoned(self, client, experiment_id: str) -> None:
        """A fresh training starts over in its checkpoint folder (``resume_tag``), so a run of that folder still
        RUNNING (its process killed outright, which leaves no time to mark it FAILED) can never go on: KILLED."""
        for run in self._unfinished_runs(client, experiment_id):
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
                logger.info("MLflow run %r (%s) of %s was left running: marked KILLED", run.info.run_name,
                            run.info.run_id, run.data.tags.get(self.resume_tag))

    def _open_run(self, handler, resumed: bool) -> None:
        """The run this workflow logs into, chosen once with the first MLflow handler's client and experiment."""
        handler._set_experiment()  # what the handler's own start() does first
        client, experiment_id = handler.client, handler.experiment.experiment_id
        run = self._resumed_run(client, experiment_id) if resumed else None
        if not resumed:
            self._end_abandoned(client, experiment_id)
        if run is None:
            name = handler.run_name or f"{self.name}_{time.strftime('%Y%m%d_%H%M%S')}"
            run = client.create_run(experiment_id=experiment_id, run_name=name, tags=self.tags)
        elif run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        self.client, self.run_id, self.run_name = client, run.info.run_id, run.info.run_name
        atexit.register(self._fail_if_open)

    def started(self, engine: Engine) -> None:
        handlers = mlflow_handlers(engine) + mlflow_handlers(self.evaluator)
        if not handlers:
            return
        if self.run_id is None:
            self._open_run(handlers[0], resumed=int(getattr(engine.state, "epoch", 0) or 0) > 0)
        for handler in handlers:
            if handler.cur_run is None:
                handler.cur_run = self.client.get_run(self.run_id)
        # added now, so that it runs after every handler attached when the workflow was built
        if not engine.has_event_handler(self.completed, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def completed(self, engine: Engine) -> None:
        if self.run_id is None:
            return
        client, run_id = self.client, self.run_id
        logged = set(client.get_run(run_id).data.metrics)
        step = int(getattr(engine.state, "epoch", 0) or 0)
        numbers = scalar_metrics(engine.state.metrics or {})
        if self.count:
            numbers[self.count] = float(_items(engine))
        for key, number in numbers.items():
            if key not in logged:
                client.log_metric(run_id, key, number, step=step)
        files = _artifact_files(self.artifacts, self.since)
        if self.config is not None and self.config.is_file() and all(not f.samefile(self.config) for f, _ in files):
            files.insert(0, (self.config, None))
        for file, folder in files:
            client.log_artifact(run_id, str(file), folder)
        if self.close:
            closed = [h for h in mlflow_handlers(engine) if h.cur_run is not None]
            for handler in closed:
                handler.close()
            if not closed:
                client.set_terminated(run_id, "FINISHED")
        self.done = True
        logger.info("MLflow run %r (%s): %d artifact(s)%s", self.run_name, run_id, _count_artifacts(client, run_id),
                    ", finished" if self.close else "")

    def _fail_if_open(self) -> None:
        """At exit: a run whose workflow never completed is marked FAILED (a resumed training goes on in it)."""
        if self.run_id is None or self.done:
            return
        try:
            if self.client.get_run(self.run_id).info.status == "RUNNING":
                self.client.set_terminated(self.run_id, "FAILED")
        except Exception as exc:  # the store may be gone at exit; nothing else to do then
            logger.warning("MLflow run %s could not be marked FAILED: %s", self.run_id, exc)


def _count_artifacts(client, run_id: str) -> int:
    """The files logged to the run ``run_id`` in all (ours, and MONAI's config files), folders searched."""
    count, folders = 0, [None]
    while folders:
        for item in client.list_artifacts(run_id, folders.pop()):
            if item.is_dir:
                folders.append(item.path)
            else:
                count += 1
    return count
