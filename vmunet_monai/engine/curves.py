"""Training curves a person can open without TensorBoard: ``training_log.csv`` and ``training_curves.png``,
rewritten after every epoch (so a run stopped at any point leaves them up to its last epoch), continued by a
resumed run.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from pathlib import Path

from ignite.engine import Engine, Events

__all__ = ["TrainingCurves", "read_log"]

BASE_COLUMNS = ("epoch", "train_loss", "learning_rate", "seconds", "skipped_steps")


def _number(value) -> float | None:
    """A float of a scalar metric or loss (a tensor, a number); None for anything else."""
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number


def _duration(seconds: float) -> str:
    """``42 s``, ``17 min``, ``3.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _cell(value) -> str:
    """A CSV cell: empty for None, six significant digits for a float."""
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


logger = logging.getLogger(__name__)

def _this_process(event_file: str) -> bool:
    """Whether a TensorBoard event file (``events.out.tfevents.<time>.<host>.<pid>.<n>``) is this process's."""
    import socket

    parts = event_file.split(".")
    return len(parts) >= 7 and parts[-2] == str(os.getpid()) and ".".join(parts[4:-2]) == socket.gethostname()


def read_log(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``training_log.csv``: numbers as floats (``epoch`` and ``skipped_steps`` as ints), empty
    cells as None."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {k: (float(v) if v not in ("", None) else None) for k, v in raw.items()}
            for key in ("epoch", "skipped_steps"):
                if row.get(key) is not None:
                    row[key] = int(row[key])
            rows.append(row)
    return rows


class TrainingCurves:
    """After every epoch, write ``<name>.csv`` (epoch, mean training loss, learning rate, seconds, steps skipped
    for a non-finite loss, and the validation metrics of the epochs that were validated) and ``<name>.png``
    (the loss, and the validation metrics with the best epoch marked) into ``output_dir``, and print the time
    left at the pace of the epochs run so far.

    List it after the ``ValidationHandler`` (and after ``TrainingCheckpoint``, whose resume it continues from) in
    the trainer's handlers. A resumed run keeps the rows up to the epoch it resumes from; a fresh run starts the
    files anew. In a distributed run only rank 0 writes, with its own share of the training loss.

    Args:
        output_dir: folder of the two files (the bundles: ``runs/``, beside TensorBoard's).
        evaluator: the validation evaluator, whose ``state.metrics`` are read in the epochs it ran.
        loss_key: key of the loss in the trainer's output.
        name: the files' name, without extension.
    """

    def __init__(self, output_dir: str, evaluator: Engine | None = None, loss_key: str = "loss",
                 name: str = "training_log") -> None:
        self.output_dir, self.evaluator, self.loss_key, self.name = Path(output_dir), evaluator, loss_key, name
        self.rows: list[dict] = []
        self._losses: list[float] = []
        self._skipped = 0
        self._lr: float | None = None
        self._t0 = 0.0
        self._session: list[float] = []  # this run's epoch times, for the time left

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"{self.name}.csv"

    @property
    def plot_path(self) -> Path:
        return self.output_dir / "training_curves.png"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        from vmunet_monai.engine.handlers import _rank

        start = int(engine.state.epoch or 0)  # after a resume, the epoch it continues from
        self.rows = []
        if start == 0 and _rank() == 0:
            self._set_aside_earlier_run()
        if start > 0 and self.csv_path.is_file():
            try:
                self.rows = [r for r in read_log(self.csv_path) if r.get("epoch") is not None and r["epoch"] <= start]
            except (OSError, ValueError, csv.Error):
                self.rows = []  # an unreadable log is started anew rather than stopping training

    def _set_aside_earlier_run(self) -> None:
        """A run from scratch moves an earlier run's log, curves and TensorBoard event files (those of other
        processes) into ``previous_run/``, replacing what an older run left there: TensorBoard then
        shows the two runs apart instead of one mixed curve."""
        from vmunet_monai.engine.handlers import move_aside

        if not self.output_dir.is_dir():
            return
        found = [p for p in (self.csv_path, self.plot_path) if p.is_file()]
        found += [p for p in self.output_dir.glob("events.out.tfevents.*") if not _this_process(p.name)]
        if not any(not p.name.startswith("events.out.tfevents.") or _holds_events(p) for p in found):
            return  # none, or only the empty event files of writers that logged nothing (a parsed, unrun config)
        target = move_aside(found, self.output_dir)
        logger.warning("%s: the log, curves and TensorBoard events of an earlier training moved to %s", self.output_dir,
                       target)

    def _epoch_started(self, engine: Engine) -> None:
        self._losses, self._skipped, self._t0 = [], 0, time.perf_counter()
        optimizer = getattr(engine, "optimizer", None)
        groups = getattr(optimizer, "param_groups", None)
        self._lr = float(groups[0]["lr"]) if groups else None

    def _iteration(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, (list, tuple)):
            output = output[0] if output else None
        loss = _number(output.get(self.loss_key)) if isinstance(output, dict) else None
        if loss is None:
            return
        if math.isfinite(loss):
            self._losses.append(loss)
        else:
            self._skipped += 1

    def _validation(self, engine: Engine) -> dict:
        state = getattr(self.evaluator, "state", None)
        if state is None or getattr(state, "epoch", None) != engine.state.epoch:
            return {}  # not validated this epoch
        metrics = {}
        for key, value in (getattr(state, "metrics", None) or {}).items():
            number = _number(value)
            if number is not None:
                metrics[str(key)] = number
        return metrics

    def _epoch_completed(self, engine: Engine) -> None:
        from vmunet_monai.engine.handlers import _rank

        if _rank() != 0:
            return
        row = {"epoch": int(engine.state.epoch),
               "train_loss": sum(self._losses) / len(self._losses) if self._losses else None,
               "learning_rate": self._lr, "seconds": round(time.perf_counter() - self._t0, 3),
               "skipped_steps": self._skipped, **self._validation(engine)}
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._write_csv()
        self._session.append(row["seconds"])
        left = int(engine.state.max_epochs or 0) - row["epoch"]
        if left > 0:
            eta = left * sum(self._session) / len(self._session)
            print(f"epoch {row['epoch']} of {engine.state.max_epochs} took {_duration(row['seconds'])}; about "
                  f"{_duration(eta)} left at this run's pace", flush=True)
        try:
            self._plot(getattr(getattr(self.evaluator, "state", None), "key_metric_name", None))
        except Exception as exc:  # a picture must never stop training
            import warnings

            warnings.warn(f"{self.plot_path} not drawn: {exc}")

    def _write_csv(self) -> None:
        metrics = sorted({k for r in self.rows for k in r} - set(BASE_COLUMNS))
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*BASE_COLUMNS, *metrics])
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: _cell(r.get(k)) for k in writer.fieldnames})
        os.replace(tmp, self.csv_path)

    def _plot(self, key_metric: str | None) -> None:
        from vmunet_monai.figures import pyplot, save

        plt = pyplot()

        metrics = sorted({k for r in self.rows for k in r} - set(BASE_COLUMNS))
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
        trained = [(r["epoch"], r["train_loss"]) for r in self.rows if r.get("train_loss") is not None]
        if trained:
            ax_loss.plot(*zip(*trained), marker="o" if len(trained) < 30 else None, ms=3, color="tab:blue")
            losses = [v for _, v in trained]
            if min(losses) > 0 and max(losses) / min(losses) > 20:
                ax_loss.set_yscale("log")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_title("training loss (mean over the epoch)")
        ax_loss.grid(alpha=0.3)
        key = key_metric if key_metric in metrics else (metrics[0] if metrics else None)
        for name in metrics:
            points = [(r["epoch"], r[name]) for r in self.rows if r.get(name) is not None]
            ax_val.plot(*zip(*points), marker="o" if len(points) < 30 else None, ms=3, label=name,
                        lw=2 if name == key else 1)
        if key is not None:
            points = [(r["epoch"], r[key]) for r in self.rows if r.get(key) is not None]
            best_epoch, best = max(points, key=lambda p: (p[1], -p[0]))
            ax_val.scatter([best_epoch], [best], s=120, marker="*", color="gold", edgecolor="black", zorder=3)
            ax_val.set_title(f"validation: best {key} {best:.4f} at epoch {best_epoch}")
            ax_val.legend(fontsize=8, loc="lower right")
        else:
            ax_val.set_title("validation: none yet")
        ax_val.set_xlabel("epoch")
        ax_val.grid(alpha=0.3)
        fig.tight_layout()
        save(fig, self.plot_path, dpi=100)


def _holds_events(path: Path) -> bool:
    """Whether the TensorBoard event file ``path`` holds a logged event: a writer that logged nothing (one built
    when a config is parsed, as MONAI's ``check_properties`` does, and never run) leaves one record, the file's
    version. Each record: its length (8 bytes), a checksum (4), the data, a checksum (4)."""
    import struct

    try:
        with open(path, "rb") as f:
            for _ in range(2):  # the version's record, then any other
                head = f.read(12)
                if len(head) < 12:
                    return False
                f.seek(struct.unpack("<Q", head[:8])[0] + 4, os.SEEK_CUR)
            return True
    except OSError:
        return True  # unreadable: kept as an earlier run's
