"""Training survives a kill and is reproducible.

- A short deterministic ``python -m monai.bundle run training`` killed with SIGKILL in the middle of an
  epoch resumes with ``--resume true`` and ends with exactly the weights (and optimiser state, and
  best model) of a run that was never interrupted.
- ``--determinism true`` gives bit-identical weights in two separate CPU runs (two threads each).
- The latest checkpoint is replaced atomically: a process killed while writing it leaves the previous one.
- The Synapse bundle (random slice sampling, epochs shorter than a pass over the data) resumes exactly too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from bundle_helpers import PYTHON, cli_args, config_path, copy_bundle, make_prepared, run_env, tiny_overrides

BUNDLE = "isic_skin_lesion"
KILL_AT_ITERATION = 6  # epoch 2 of 3, iteration 2 of 4: the weights have moved past the epoch-1 checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks in-process: see conftest


def _kill_when_marked(proc, marker, timeout, why_not):
    """SIGKILL ``proc`` once ``marker`` exists; fail with ``why_not()`` if it exits or times out first."""
    try:
        deadline = time.time() + timeout
        while not marker.exists():
            assert proc.poll() is None, why_not()
            assert time.time() < deadline, f"{marker.name} did not appear within {timeout} s"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")

def prepared(tmp_path_factory):
    return make_prepared(BUNDLE, tmp_path_factory.mktemp("resume_data"), num=8)


def _overrides() -> dict:
    # 8 training images, batch 2: 4 iterations per epoch; validation every epoch picks model.pt
    over = dict(tiny_overrides(BUNDLE, epochs=3), batch_size=2, determinism=True)
    over["image_size"] = [32, 32]
    return over


def _env(threads: int = 2) -> dict:
    env = run_env()
    env["OMP_NUM_THREADS"] = str(threads)  # the CPU scan kernel is multi-threaded unless determinism is on
    env["PYTHONIOENCODING"] = "utf-8"  # progress bars print non-ASCII characters
    return env


def _command(root: Path, prepared: Path, config_files: list[str], extra: dict | None = None) -> list[str]:
    files = "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    cmd = [PYTHON, "-m", "monai.bundle", "run", "training", "--config_file", files, "--bundle_root", str(root),
           "--dataset_dir", str(prepared)]
    return cmd + cli_args(dict(_overrides(), **(extra or {})))


def _train(root: Path, prepared: Path, extra: dict | None = None) -> subprocess.CompletedProcess:
    cmd = _command(root, prepared, [config_path(BUNDLE, "train.json")], extra)
    proc = subprocess.run(cmd, cwd=str(root), env=_env(), capture_output=True, text=True, encoding="utf-8",
                          errors="replace", timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _final(root: Path) -> dict:
    from vmunet_monai.engine.curves import read_log

    return {
        "latest": torch.load(root / "models" / "checkpoint_latest.pt", weights_only=True),
        "best": torch.load(root / "models" / "model.pt", weights_only=True),
        "curves": [{k: v for k, v in row.items() if k != "seconds"}  # all but the time an epoch took
                   for row in read_log(root / "runs" / "training_log.csv")],
    }


def _assert_same_state(a: dict, b: dict, path: str = "") -> None:
    """Bitwise equality of nested state dicts (tensors with torch.equal, the rest with ==)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            _assert_same_state(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    """One deterministic 3-epoch run, never interrupted: the reference for both tests below."""
    root = copy_bundle(BUNDLE, tmp_path_factory.mktemp("uninterrupted"))
    _train(root, prepared)
    return _final(root)


def test_determinism_gives_bit_identical_weights_across_runs(prepared, uninterrupted, tmp_path):
    root = copy_bundle(BUNDLE, tmp_path)
    proc = _train(root, prepared)
    again = _final(root)
    _assert_same_state(uninterrupted["latest"]["model"], again["latest"]["model"], "model")
    _assert_same_state(uninterrupted["latest"]["optimizer"], again["latest"]["optimizer"], "optimizer")
    _assert_same_state(uninterrupted["best"], again["best"], "model.pt")
    assert again["latest"]["trainer"]["iteration"] == 12
    assert "SupervisedTrainer - INFO - Epoch[3] Complete" in proc.stdout + proc.stderr


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(prepared, uninterrupted, tmp_path):
    root = copy_bundle(BUNDLE, tmp_path)
    marker = tmp_path / "reached_iteration"
    # a test-only config that parks the run in the middle of epoch 2 (blocked reading an empty pipe), so the
    # kill lands mid-epoch (MONAI parses any expression containing the word "import" as Python, so none here)
    hang = tmp_path / "hang_mid_epoch.json"
    hang.write_text(json.dumps({"run": [
        f"$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once={KILL_AT_ITERATION}), "
        f"lambda e: (open({str(marker)!r}, 'w').close(), os.read(os.pipe()[0], 1)))",
        "$@train#trainer.run()",
    ]}))
    cmd = _command(root, prepared, [config_path(BUNDLE, "train.json"), str(hang)])
    proc = subprocess.Popen(cmd, cwd=str(root), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _kill_when_marked(proc, marker, 240, lambda: "the run ended before the kill: "
                          + proc.stderr.read().decode("utf-8", "replace")[-4000:])
    finally:
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    latest = torch.load(root / "models" / "checkpoint_latest.pt", weights_only=True)
    assert latest["trainer"]["iteration"] == 4  # the end of epoch 1: the kill came mid-epoch 2
    assert {"model", "optimizer", "lr_scheduler", "trainer", "rng", "validation"} <= set(latest)
    recorded = json.loads((root / "models" / "network.json").read_text())
    assert recorded["_desc_"]["trained_input_size"]  # what predict resizes to

    resumed = _train(root, prepared, {"resume": True})
    log = resumed.stdout + resumed.stderr
    assert "resumed from" in log and "after epoch 1 of 3" in log
    # only epochs 2 and 3 ran again
    assert "Trainer - INFO - Epoch[1] Complete" not in log and "Trainer - INFO - Epoch[3] Complete" in log
    final = _final(root)
    assert final["latest"]["trainer"]["iteration"] == 12
    assert json.loads((root / "models" / "network.json").read_text()) == recorded  # the resumed run kept the size
    for key in ("model", "optimizer", "lr_scheduler"):
        _assert_same_state(uninterrupted["latest"][key], final["latest"][key], key)
    _assert_same_state(uninterrupted["latest"]["validation"], final["latest"]["validation"], "validation")
    _assert_same_state(uninterrupted["best"], final["best"], "model.pt")
    # the curves: epoch 1 from the killed run, 2 and 3 from the resumed one, the same as never interrupted
    assert [r["epoch"] for r in final["curves"]] == [1, 2, 3] and final["curves"] == uninterrupted["curves"]


def test_resume_true_without_a_checkpoint_starts_from_scratch(prepared, tmp_path):
    from bundle_helpers import workflow

    root = copy_bundle(BUNDLE, tmp_path)
    wf = workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                  **dict(tiny_overrides(BUNDLE, epochs=1), resume=True))
    wf.initialize()
    wf.run()
    wf.finalize()
    handler = next(h for h in wf.parser.get_parsed_content("train#handlers") if hasattr(h, "resumed_from"))
    assert handler.resumed_from is None
    assert torch.load(root / "models" / "checkpoint_latest.pt", weights_only=True)["trainer"]["iteration"] == 2


def test_resume_refuses_corrupt_and_foreign_checkpoints(prepared, tmp_path):
    from bundle_helpers import workflow

    from vmunet_monai.weights import CheckpointError

    root = copy_bundle(BUNDLE, tmp_path)
    over = tiny_overrides(BUNDLE, epochs=2)
    truncated = tmp_path / "truncated.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    weights_only = tmp_path / "weights_only.pt"
    torch.save({f"layers.{i}.weight": torch.zeros(1) for i in range(40)}, weights_only)
    # a training checkpoint of a run with --num_classes 3: its network is named as predict names it
    from vmunet_monai.networks import VMUNet
    from bundle_helpers import TINY_NETWORKS

    three = tmp_path / "three_classes.pt"
    net = VMUNet(out_channels=3, **TINY_NETWORKS["vmunet_monai.networks.VMUNet"])
    torch.save({"model": net.state_dict(), "optimizer": {}, "lr_scheduler": {}, "trainer": {}}, three)
    # the official code's latest.pth: its weights in model_state_dict, with numpy scalars beside them
    import numpy as np

    official = tmp_path / "latest.pth"
    torch.save({"epoch": 5, "min_loss": np.float64(0.3), "model_state_dict": net.state_dict(),
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, official)
    picture = tmp_path / "picture.pth"  # a file of another kind under a checkpoint's name
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    for path, message in ((truncated, "cannot be read as a checkpoint"),
                          (official, r"latest.pth: not a training checkpoint, it lacks .* \(found epoch, min_loss, "
                                     r"model_state_dict, optimizer_state_dict\) .*give them as "
                                     r"--pretrained_checkpoint"),
                          (picture, r"picture.pth: cannot be read as a checkpoint \(a PNG image file, not a "
                                    r"checkpoint\)"),
                          (weights_only, r"not a training checkpoint, it lacks \['model', 'optimizer', "
                                         r"'lr_scheduler', 'trainer'\] \(found layers.0.weight, layers.1.weight, "
                                         r"layers.10.weight, layers.11.weight, layers.12.weight, layers.13.weight and "
                                         r"34 more\) .*give them as --pretrained_checkpoint"),
                          (three, r"three_classes.pt: its network does not fit this VMUNet .*it was trained with "
                                  r"--num_classes 3"),
                          (tmp_path / "missing.pt", "no such checkpoint")):
        wf = workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                      resume_checkpoint=str(path), **over)
        wf.initialize()
        with pytest.raises(CheckpointError, match=message) as failure:
            wf.parser.get_parsed_content("train#trainer").run()
        assert str(path) in str(failure.value) and "\n" not in str(failure.value)
        wf.finalize()


def test_atomic_save_survives_sigkill_while_writing(tmp_path):
    """A process killed in the middle of writing the checkpoint leaves the previous, complete one."""
    from vmunet_monai.engine.handlers import atomic_torch_save

    target = tmp_path / "checkpoint_latest.pt"
    atomic_torch_save({"generation": torch.tensor(1), "weights": torch.arange(10.0)}, target)
    marker = tmp_path / "writing"
    script = f"""
import os, time, torch
import vmunet_monai.engine.handlers as h
real_save = torch.save
def slow_save(obj, f):
    f.write(b"PK-half-written-checkpoint")  # the first bytes of a new file, then the process dies
    f.flush()
    open({str(marker)!r}, "w").close()
    time.sleep(600)
h.torch.save = slow_save
h.atomic_torch_save({{"generation": torch.tensor(2), "weights": torch.zeros(10)}}, {str(target)!r})
"""
    proc = subprocess.Popen([PYTHON, "-c", script], env=run_env())
    _kill_when_marked(proc, marker, 120, lambda: "the writer did not start")
    state = torch.load(target, weights_only=True)
    assert int(state["generation"]) == 1 and torch.equal(state["weights"], torch.arange(10.0))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the half-written temporary file, never the checkpoint itself
    atomic_torch_save({"generation": torch.tensor(3)}, target)  # and the next save still works
    assert int(torch.load(target, weights_only=True)["generation"]) == 3


# ----------------------------------------------------------------------------------------------------
# Synapse: random slice crops, an epoch of 3 iterations over a 2-batch pass (each epoch starts a new pass)

SYNAPSE = "synapse_multiorgan"
SYNAPSE_RUN = {
    "network_def#dims": [8, 16, 32, 64], "network_def#depths": [1, 1, 1, 1],
    "network_def#depths_decoder": [1, 1, 1, 1], "network_def#d_state": 4,
    "epochs": 2, "iterations_per_epoch": 3, "val_interval": 1, "num_workers": 0, "roi_size": [32, 32],
    "slices_per_volume": 2, "volumes_per_batch": 1, "sw_batch_size": 4, "cache_rate": 0.0, "device": "cpu",
    "determinism": True,
}


@pytest.fixture
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def test_synapse_resume_in_process_matches_uninterrupted(tmp_path, restore_determinism):
    from bundle_helpers import workflow
    from ignite.engine import Events

    from vmunet_monai.data import synapse

    raw = synapse.demo_data(str(tmp_path / "raw"), num=5, seed=0, shape=(40, 40, 8))
    synapse.prepare(raw, str(tmp_path / "prepared"), num_val=1)
    training = json.loads((tmp_path / "prepared" / "datalist.json").read_text())["training"]
    assert len(training) == 2  # 2 batches per pass, 3 iterations per epoch: the epochs do not align with passes

    def run_once(root: Path, stop_after: int | None = None, **extra):
        wf = workflow(SYNAPSE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(tmp_path / "prepared"),
                      **SYNAPSE_RUN, **extra)
        wf.initialize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        if stop_after:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_after), lambda e: e.terminate())
        wf.run()
        wf.finalize()
        return torch.load(Path(root) / "models" / "checkpoint_latest.pt", weights_only=True)

    reference = run_once(tmp_path / "a")
    stopped = run_once(tmp_path / "b", stop_after=5)  # in epoch 2: the checkpoint is still epoch 1's
    assert stopped["trainer"]["iteration"] == 3
    resumed = run_once(tmp_path / "b", resume=True)
    assert resumed["trainer"]["iteration"] == reference["trainer"]["iteration"] == 6
    for key in ("model", "optimizer", "lr_scheduler", "rng"):
        _assert_same_state(reference[key], resumed[key], key)
    assert len(reference["rng"]["transforms"]) >= 4  # the random crop, rotations and flips have their states saved


def test_determinism_restricts_the_automatic_scan_backend(monkeypatch, restore_determinism):
    """mamba-ssm's CUDA kernels sum gradients with atomics: deterministic mode picks the triton kernels,
    which then add nothing atomically (tests/test_scan_triton.py)."""
    from vmunet_monai.engine.guards import set_determinism
    from vmunet_monai.ops import dispatch

    real = dispatch._load

    def all_available(name):
        module, status = real(name)
        return module, dispatch.BackendStatus(name, True, "test", "", status.devices)

    monkeypatch.setattr(dispatch, "_load", all_available)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    set_determinism(0, deterministic=False)
    assert dispatch.resolve_backend("cuda") == "mamba_ssm"
    set_determinism(0, deterministic=True)
    assert dispatch.resolve_backend("cuda") == "triton" and dispatch.resolve_backend("cpu") == "cpu"
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG")


def test_deterministic_mode_makes_the_cpu_kernel_repeatable(restore_determinism):
    """Two threads add partial gradients in the order they finish; deterministic mode fixes the order."""
    from vmunet_monai.engine.guards import set_determinism
    from vmunet_monai.networks import VMUNet
    from vmunet_monai.ops.dispatch import backend_status

    if not backend_status("cpu").available:
        pytest.skip(f"the compiled CPU scan kernel is not available here: {backend_status('cpu').detail}")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        set_determinism(0, deterministic=True)
        net = VMUNet(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4,
                     drop_path_rate=0.0, scan_backend="cpu")
        x = torch.randn(4, 3, 64, 64)
        grads = []
        for _ in range(6):
            net.zero_grad()
            net(x).square().mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        assert all(torch.equal(grads[0], g) for g in grads[1:])
    finally:
        torch.set_num_threads(threads)


def _lr_log(root: Path) -> list[float]:
    from vmunet_monai.engine.curves import read_log

    return [float(row["learning_rate"]) for row in read_log(root / "runs" / "training_log.csv")]


def test_a_new_training_sets_an_earlier_one_aside_and_refuses_a_running_one(prepared, tmp_path, capfd):
    """A run from scratch into a folder holding an earlier run's checkpoint and model.pt moves them into
    previous_run/ (not overwritten unseen; the new trained_on.json never stands beside the old model.pt); a folder
    that another running training holds is refused."""
    from bundle_helpers import run_workflow, workflow

    from vmunet_monai.engine.handlers import PREVIOUS_RUN, TRAINING_LOCK
    from vmunet_monai.validation import InputError

    root = copy_bundle(BUNDLE, tmp_path)
    over = dict(tiny_overrides(BUNDLE, epochs=1), batch_size=2)
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    models = root / "models"
    first = {n: (models / n).read_bytes() for n in ("model.pt", "checkpoint_latest.pt", "trained_on.json",
                                                    "network.json")}
    assert not (models / TRAINING_LOCK).exists()  # released when the run completed
    capfd.readouterr()
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                 **dict(over, seed=7))
    printed = "".join(capfd.readouterr())
    assert {n: (models / PREVIOUS_RUN / n).read_bytes() for n in first} == first
    # the log starts anew; the earlier one, and the TensorBoard events of other processes, are kept apart
    runs = root / "runs"
    assert (runs / PREVIOUS_RUN / "training_log.csv").is_file() and (runs / "training_log.csv").is_file()
    other = runs / "events.out.tfevents.1700000000.elsewhere.example.12345.0"  # an earlier process's
    other.write_bytes(b"")
    mine = sorted(p.name for p in runs.glob("events.out.tfevents.*") if p != other)
    assert mine  # this process's own, kept in place
    assert (models / "model.pt").read_bytes() != first["model.pt"]
    assert ("held an earlier training's checkpoint_latest.pt, model.pt, trained_on.json, network.json (last written"
            in printed)
    assert "--resume true goes on with a run instead" in printed
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    assert (runs / PREVIOUS_RUN / other.name).is_file() and not other.exists()
    assert sorted(p.name for p in runs.glob("events.out.tfevents.*"))[:len(mine)] == mine
    first = {n: (models / PREVIOUS_RUN / n).read_bytes() for n in first}  # the second run's, set aside by the third
    # another training, running on this machine, holds the folder
    sleeper = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (models / TRAINING_LOCK).write_text(f"{socket.gethostname()} {sleeper.pid}\n")
        events = sorted(runs.glob("events.out.tfevents.*"))
        wf = workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
        wf.initialize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        assert len(list(runs.glob("events.out.tfevents.*"))) > len(events)  # its TensorBoard writers opened files
        with pytest.raises(InputError, match=f"another training \\(process {sleeper.pid}\\) is writing its "
                                             "checkpoints into this folder"):
            trainer.run()
        assert sorted(runs.glob("events.out.tfevents.*")) == events  # the refused run's empty ones are gone
        assert (models / PREVIOUS_RUN / "model.pt").read_bytes() == first["model.pt"]  # nothing moved
        assert (models / TRAINING_LOCK).read_text().split()[1] == str(sleeper.pid)  # the other's mark stays
    finally:
        sleeper.kill()
        sleeper.wait()
    # its process gone, the mark is taken over
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)


def test_a_larger_epochs_continues_down_a_longer_cosine_and_a_new_batch_size_is_followed(prepared, tmp_path):
    """A finished 2-epoch run continued to 4 epochs has the learning rates of a 4-epoch schedule from epoch 3 on
    (not a rate rising again from the minimum); resumed with another batch size, its epochs have the new number of
    batches."""
    import math

    from bundle_helpers import run_workflow

    root = copy_bundle(BUNDLE, tmp_path)
    over = dict(tiny_overrides(BUNDLE, epochs=2), batch_size=2)  # 8 images: 4 batches per epoch
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                 **dict(over, epochs=4, batch_size=4, resume=True))
    state = torch.load(root / "models" / "checkpoint_latest.pt", weights_only=True)
    assert state["lr_scheduler"]["T_max"] == 4
    assert state["trainer"]["epoch_length"] == 2 and state["trainer"]["iteration"] == 4 * 2  # epoch 4 of 2 batches
    config = json.loads((root / "configs" / "train.json").read_text())
    top, low = config["learning_rate"], config["min_learning_rate"]
    lrs = _lr_log(root)
    assert len(lrs) == 4
    for epoch in (3, 4):  # the rate each of the continued epochs trained with, on the 4-epoch cosine
        assert lrs[epoch - 1] == pytest.approx(low + (top - low) * (1 + math.cos(math.pi * (epoch - 1) / 4)) / 2)


def test_a_run_shorter_than_the_validation_interval_still_chooses_model_pt(prepared, tmp_path):
    """Validation every val_interval epochs and after the last: a 3-epoch run at interval 2 validates epochs 2 and
    3, and writes model.pt."""
    from bundle_helpers import run_workflow

    from vmunet_monai.engine.curves import read_log

    root = copy_bundle(BUNDLE, tmp_path)
    over = dict(tiny_overrides(BUNDLE, epochs=3), batch_size=4, val_interval=2)
    run_workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    assert (root / "models" / "model.pt").is_file()
    rows = read_log(root / "runs" / "training_log.csv")
    validated = [int(r["epoch"]) for r in rows if any(k.startswith("val") and r[k] not in ("", None) for k in r)]
    assert validated == [2, 3]


def _without_logging_errors(printed: str) -> str:
    """What a run printed, less logging's "--- Logging error ---" reports of handlers that an earlier test's run
    left writing to a capture closed since (they name no file of ours)."""
    return re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", printed, flags=re.S)


@pytest.mark.parametrize("where", ["training", "validation"])
def test_ctrl_c_says_where_the_run_goes_on_from(prepared, tmp_path, capfd, where):
    """Ctrl-C in epoch 2 stops the run (the KeyboardInterrupt goes on as it came) and says that the checkpoint
    holds epoch 1 and that --resume true goes on from there, as the last line: ignite's and MONAI's logs of the
    interrupt (a screen of traceback, from the evaluator's handlers too when it comes in validation) are left out,
    and the process's last traceback too (``python -m monai.bundle run`` ends on the line)."""
    import sys

    from bundle_helpers import workflow
    from ignite.engine import Events

    root = copy_bundle(BUNDLE, tmp_path)
    wf = workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                  **dict(tiny_overrides(BUNDLE, epochs=3), batch_size=2))
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")

    def interrupt(engine):
        raise KeyboardInterrupt

    if where == "training":
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=6), interrupt)  # epoch 2, 4 iterations per epoch
    else:
        evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: trainer.state.epoch == 2 and interrupt(e))
    capfd.readouterr()
    with pytest.raises(KeyboardInterrupt) as stopped:
        trainer.run()
    sys.excepthook(KeyboardInterrupt, stopped.value, stopped.value.__traceback__)
    printed = _without_logging_errors("".join(capfd.readouterr()))
    assert printed.strip().splitlines()[-1].endswith(
        f"stopped (Ctrl-C) in epoch 2: {root / 'models' / 'checkpoint_latest.pt'} holds epoch 1; the same command "
        "plus --resume true goes on from there"), printed
    assert "Traceback" not in printed and "terminating due to exception" not in printed, printed
    assert not (root / "models" / ".training.lock").exists()  # the folder is free again
    other = KeyboardInterrupt()  # one that no training answered keeps its traceback
    try:
        raise other
    except KeyboardInterrupt:
        sys.excepthook(KeyboardInterrupt, other, other.__traceback__)
    assert "Traceback" in capfd.readouterr().err


def test_a_full_disk_stops_training_with_the_folder_and_the_way_on(prepared, tmp_path, capfd, monkeypatch):
    """A disk that fills in epoch 2 (``torch.save`` then fails with ``unexpected pos``, naming no file): the run stops
    naming the checkpoint file and the space left on its disk, says that the checkpoint still holds epoch 1, and the
    bundle run's last line names the file."""
    from bundle_helpers import workflow
    from ignite.engine import Events

    from vmunet_monai.validation import NotWrittenError, last_line_for

    root = copy_bundle(BUNDLE, tmp_path)
    wf = workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                  **dict(tiny_overrides(BUNDLE, epochs=3), batch_size=2))
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")

    real_save = torch.save

    def full(obj, f, *args, **kwargs):  # the run's own checkpoint; MONAI's model.pt is another test's
        if "checkpoint_latest" in str(getattr(f, "name", f)):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3187840 vs 3187732")
        return real_save(obj, f, *args, **kwargs)

    trainer.add_event_handler(Events.EPOCH_STARTED(once=2), lambda e: monkeypatch.setattr(torch, "save", full))
    capfd.readouterr()
    with pytest.raises(Exception) as stopped:
        trainer.run()
    monkeypatch.undo()
    printed = "".join(capfd.readouterr())
    assert re.search(r"stopped \(.*: could not be written \(\[enforce fail at inline_container.cc:672\] . unexpected "
                     r"pos 3187840 vs 3187732; [0-9.]+ MiB free on its disk\); what stood there before is kept\) in "
                     r"epoch 2: .*checkpoint_latest.pt holds epoch 1; the same command plus --resume true", printed)
    assert last_line_for(RuntimeError("Failed to evaluate ConfigExpression")) is None
    wrapped = RuntimeError("Failed to evaluate ConfigExpression")
    wrapped.__cause__ = stopped.value
    assert isinstance(last_line_for(wrapped), NotWrittenError)
    held = torch.load(root / "models" / "checkpoint_latest.pt", weights_only=True)["trainer"]
    assert int(held["iteration"]) == int(held["epoch_length"])  # epoch 1, whole
    assert not (root / "models" / ".training.lock").exists() and not list((root / "models").glob(".*.tmp"))


def test_sigterm_stops_like_ctrl_c_with_exit_status_143(prepared, tmp_path, capfd):
    """SIGTERM (a scheduler's time limit) in epoch 2 ends the run with SystemExit(143) after the same hint as
    Ctrl-C; the folder is freed and the process's own SIGTERM handler is back."""
    import os
    import signal

    from bundle_helpers import workflow
    from ignite.engine import Events

    from vmunet_monai.engine import TrainingTerminated

    root = copy_bundle(BUNDLE, tmp_path)
    wf = workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared),
                  **dict(tiny_overrides(BUNDLE, epochs=3), batch_size=2))
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    before = signal.getsignal(signal.SIGTERM)

    def terminate(engine):
        assert signal.getsignal(signal.SIGTERM) is not before  # caught while training (else the kill ends pytest)
        os.kill(os.getpid(), signal.SIGTERM)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=6), terminate)  # epoch 2, 4 iterations per epoch
    capfd.readouterr()
    with pytest.raises(TrainingTerminated) as stopped:
        trainer.run()
    assert isinstance(stopped.value, SystemExit) and stopped.value.code == 143
    printed = _without_logging_errors("".join(capfd.readouterr()))
    assert printed.strip().splitlines()[-1].endswith(
        f"stopped (SIGTERM, a time limit or kill) in epoch 2: {root / 'models' / 'checkpoint_latest.pt'} holds "
        "epoch 1; the same command plus --resume true goes on from there"), printed
    assert "Traceback" not in printed and "terminating due to exception" not in printed, printed
    assert not (root / "models" / ".training.lock").exists()
    assert signal.getsignal(signal.SIGTERM) is before
