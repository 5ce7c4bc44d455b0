"""Training curves without TensorBoard: training_log.csv and training_curves.png after every epoch, continued by a
resumed run."""

import math

import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image

from vmunet_monai.engine import TrainingCurves
from vmunet_monai.engine.curves import read_log


def _trainer(evaluator, validate_every=2):
    """An ignite trainer whose iterations return their batch as the loss (in decollated outputs, as the bundles'),
    with an optimizer whose learning rate halves each epoch, validated every ``validate_every`` epochs."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    trainer = Engine(lambda engine, batch: [{"loss": torch.tensor(batch)}, {"loss": torch.tensor(batch)}])
    trainer.optimizer = optimizer

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate_and_step(engine):
        if engine.state.epoch % validate_every == 0:
            evaluator.state.epoch = engine.state.epoch
            evaluator.state.metrics = {"val_mean_dice": 0.1 * engine.state.epoch, "val_mean_iou": torch.tensor(0.05)}
        for group in optimizer.param_groups:
            group["lr"] /= 2

    return trainer


def test_curves_record_loss_learning_rate_and_validation_each_epoch(tmp_path, capsys):
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.key_metric_name = "val_mean_dice"
    losses = [[1.0, 3.0, 2.0], [0.5, float("nan"), 1.5], [0.25, 0.75, 0.5], [0.1, 0.3, 0.2]]
    trainer = _trainer(evaluator)
    curves = TrainingCurves(str(tmp_path / "runs"), evaluator=evaluator)
    curves.attach(trainer)
    trainer.run(_Feeder(losses), max_epochs=4, epoch_length=3)
    rows = read_log(tmp_path / "runs" / "training_log.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["train_loss"] for r in rows] == pytest.approx([2.0, 1.0, 0.5, 0.2])
    assert rows[1]["skipped_steps"] == 1 and rows[0]["skipped_steps"] == 0  # the NaN step, counted apart
    assert [r["learning_rate"] for r in rows] == pytest.approx([0.1, 0.05, 0.025, 0.0125])  # as each epoch ran
    assert [r["val_mean_dice"] for r in rows] == [None, pytest.approx(0.2), None, pytest.approx(0.4)]
    assert rows[3]["val_mean_iou"] == pytest.approx(0.05) and all(r["seconds"] >= 0 for r in rows)
    printed = capsys.readouterr().out  # the time left, after every epoch but the last
    assert [line.split(" took")[0] for line in printed.splitlines() if "left at this run's pace" in line] == [
        "epoch 1 of 4", "epoch 2 of 4", "epoch 3 of 4"]
    with Image.open(tmp_path / "runs" / "training_curves.png") as picture:
        assert picture.size == (1100, 400)


class _Feeder:
    """A data source that gives each epoch its own values (ignite iterates it anew each epoch)."""

    def __init__(self, epochs):
        self.epochs, self.epoch = epochs, 0

    def __iter__(self):
        self.epoch += 1
        return iter(self.epochs[self.epoch - 1])

    def __len__(self):
        return len(self.epochs[0])


def test_a_resumed_run_continues_the_log_and_a_fresh_one_starts_anew(tmp_path):
    evaluator = Engine(lambda engine, batch: None)
    out = tmp_path / "runs"
    first = _trainer(evaluator)
    TrainingCurves(str(out), evaluator=evaluator).attach(first)
    first.run([1.0, 1.0], max_epochs=3)
    assert [r["epoch"] for r in read_log(out / "training_log.csv")] == [1, 2, 3]
    # resumed from the checkpoint of epoch 2 (TrainingCheckpoint sets the epoch at STARTED): epoch 3 is run again
    resumed = _trainer(evaluator)
    resumed.add_event_handler(Events.STARTED, lambda engine: setattr(engine.state, "epoch", 2))
    TrainingCurves(str(out), evaluator=evaluator).attach(resumed)
    resumed.run([2.0, 2.0], max_epochs=4)
    rows = read_log(out / "training_log.csv")
    assert [(r["epoch"], r["train_loss"]) for r in rows] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]
    fresh = _trainer(evaluator)
    TrainingCurves(str(out), evaluator=evaluator).attach(fresh)
    fresh.run([3.0], max_epochs=1)
    assert [(r["epoch"], r["train_loss"]) for r in read_log(out / "training_log.csv")] == [(1, 3.0)]
    assert not math.isnan(rows[0]["learning_rate"])


def test_empty_event_files_of_a_parsed_config_are_no_earlier_training(tmp_path, caplog):
    """MONAI's check_properties parses train.json, which builds the TensorBoard writers: each opens an event file
    holding its version alone. The first real training then took them for an earlier training's and said so;
    now only files with logged events (or a log or curves) count, and then all are set aside."""
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "runs"
    parsed = SummaryWriter(str(out), filename_suffix=".elsewhere")  # (another process's name: not this run's)
    parsed.close()
    (empty,) = out.glob("events.out.tfevents.*")
    empty.rename(out / "events.out.tfevents.1700000000.elsewhere.example.12345.0")
    evaluator = Engine(lambda engine, batch: None)
    with caplog.at_level("WARNING"):
        first = _trainer(evaluator)
        TrainingCurves(str(out), evaluator=evaluator).attach(first)
        first.run([1.0], max_epochs=1)
    assert "earlier training" not in caplog.text
    assert (out / "events.out.tfevents.1700000000.elsewhere.example.12345.0").is_file()
    logged = SummaryWriter(str(out / "other"))
    logged.add_scalar("train_loss", 0.5, 1)
    logged.close()
    (written,) = (out / "other").glob("events.out.tfevents.*")
    written.rename(out / "events.out.tfevents.1700000001.elsewhere.example.12346.0")
    (out / "training_log.csv").unlink()
    (out / "training_curves.png").unlink(missing_ok=True)
    with caplog.at_level("WARNING"):
        second = _trainer(evaluator)
        TrainingCurves(str(out), evaluator=evaluator).attach(second)
        second.run([1.0], max_epochs=1)
    assert "TensorBoard events of an earlier training moved to" in caplog.text
    assert sorted(p.name for p in (out / "previous_run").iterdir()) == [
        "events.out.tfevents.1700000000.elsewhere.example.12345.0",
        "events.out.tfevents.1700000001.elsewhere.example.12346.0"]


class _Stream:
    """A stand-in for sys.stderr: a terminal or a file, and what was written to it."""

    def __init__(self, terminal: bool) -> None:
        self.terminal, self.text = terminal, []

    def isatty(self) -> bool:
        return self.terminal

    def write(self, text: str) -> int:
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("terminal, show, drawn", [(True, "auto", True), (False, "auto", False),
                                                   (False, "always", True), (True, "never", False)])
def test_the_progress_bar_is_drawn_on_a_terminal_not_into_a_log_file(monkeypatch, terminal, show, drawn):
    """Redirected to a file (a cluster job's log), a bar would be a few redrawn lines per iteration."""
    import sys

    from vmunet_monai.engine import TqdmProgressBar

    stream = _Stream(terminal)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    engine = Engine(lambda e, batch: [{"loss": torch.tensor(float(batch))}])
    TqdmProgressBar("train", show=show).attach(engine)
    engine.run([1, 2, 3], max_epochs=1)
    assert any("train" in text for text in stream.text) == drawn
    with pytest.raises(ValueError, match="auto, always or never"):
        TqdmProgressBar("train", show="sometimes")
