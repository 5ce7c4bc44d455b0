"""A NaN or Inf loss never trains silently: it stops the run naming the epoch, the iteration and the
batch's files, or (``--nonfinite_loss skip``) skips exactly that optimiser step."""

from __future__ import annotations

import pytest
import torch
from bundle_helpers import copy_bundle, make_prepared, tiny_overrides, workflow
from ignite.engine import Events

BUNDLE = "isic_skin_lesion"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks in-process: see conftest


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(BUNDLE, tmp_path_factory.mktemp("nan_data"), num=8)


class LossWithInjectedNaN(torch.nn.Module):
    """The bundle's Dice+CE loss, returning NaN on the chosen calls (1-based)."""

    def __init__(self, nan_calls):
        super().__init__()
        from monai.losses import DiceCELoss

        self.loss = DiceCELoss(sigmoid=True)
        self.nan_calls, self.calls = set(nan_calls), 0

    def forward(self, pred, target):
        self.calls += 1
        value = self.loss(pred, target)
        return value * float("nan") if self.calls in self.nan_calls else value


def _workflow(prepared, root, **extra):
    over = dict(tiny_overrides(BUNDLE, epochs=2), batch_size=2, **extra)
    wf = workflow(BUNDLE, ["train.json"], "train", bundle_root=str(root), dataset_dir=str(prepared), **over)
    wf.initialize()
    return wf


def _weights(network) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in network.parameters()])


def test_nan_loss_stops_training_naming_epoch_iteration_and_files(prepared, tmp_path):
    from vmunet_monai.engine.guards import NonFiniteLossError

    root = copy_bundle(BUNDLE, tmp_path)
    wf = _workflow(prepared, root, loss=LossWithInjectedNaN({6}))  # epoch 2, its 2nd of 4 iterations
    network = wf.parser.get_parsed_content("network")
    seen = {}
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_STARTED(once=6), lambda e: seen.update(before=_weights(network)))
    with pytest.raises(NonFiniteLossError) as failure:
        trainer.run()
    message = str(failure.value)
    assert "non-finite training loss (nan) at epoch 2, iteration 6" in message
    assert "ISIC_" in message and ".jpg" in message  # the batch's files are named
    assert "--nonfinite_loss skip" in message and "\n" not in message
    # stopped before the optimiser step: the weights are those the iteration started with, all finite
    assert torch.equal(_weights(network), seen["before"]) and torch.isfinite(seen["before"]).all()
    # the last checkpoint is the end of epoch 1, untouched by the NaN
    latest = torch.load(root / "models" / "checkpoint_latest.pt", weights_only=True)
    assert latest["trainer"]["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in latest["model"].values() if v.is_floating_point())
    wf.finalize()


def test_nan_loss_skip_mode_skips_exactly_that_step(prepared, tmp_path):
    root = copy_bundle(BUNDLE, tmp_path)
    wf = _workflow(prepared, root, loss=LossWithInjectedNaN({3, 6}), nonfinite_loss="skip")
    network = wf.parser.get_parsed_content("network")
    optimizer = wf.parser.get_parsed_content("optimizer")
    trainer = wf.parser.get_parsed_content("train#trainer")
    snapshots = {}

    def remember(tag):
        def handler(engine):
            steps = {id(p): optimizer.state.get(p, {}).get("step") for p in network.parameters()}
            snapshots[(tag, engine.state.iteration)] = (_weights(network), steps)
        return handler

    trainer.add_event_handler(Events.ITERATION_STARTED, remember("start"))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, remember("end"))
    wf.run()
    guard = next(h for h in wf.parser.get_parsed_content("train#handlers") if hasattr(h, "skipped"))
    assert guard.skipped == [(1, 3), (2, 6)]
    for it in range(1, 9):
        (w0, steps0), (w1, steps1) = snapshots[("start", it)], snapshots[("end", it)]
        if it in (3, 6):  # skipped: weights and AdamW step counters untouched
            assert torch.equal(w0, w1) and steps0 == steps1, it
        else:  # trained
            assert not torch.equal(w0, w1), it
        assert torch.isfinite(w1).all()
    assert trainer.state.iteration == 8
    wf.finalize()


def test_too_many_nan_losses_in_a_row_stop_even_in_skip_mode(prepared, tmp_path):
    from vmunet_monai.engine.guards import NonFiniteLossError, NonFiniteLossGuard

    root = copy_bundle(BUNDLE, tmp_path)
    wf = _workflow(prepared, root, loss=LossWithInjectedNaN(set(range(1, 100))), nonfinite_loss="skip")
    guard = next(h for h in wf.parser.get_parsed_content("train#handlers") if isinstance(h, NonFiniteLossGuard))
    guard.max_consecutive_skips = 2
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row") as failure:
        wf.parser.get_parsed_content("train#trainer").run()
    assert "epoch 1, iteration 3" in str(failure.value)
    wf.finalize()


def test_guard_rejects_an_unknown_mode():
    from vmunet_monai.engine.guards import NonFiniteLossGuard

    with pytest.raises(ValueError, match="'stop' or 'skip'"):
        NonFiniteLossGuard(mode="ignore")


def _ddp_guard_worker(rank: int, port: int, results) -> None:
    from types import SimpleNamespace

    import torch.distributed as dist

    from vmunet_monai.engine.guards import NonFiniteLossError, NonFiniteLossGuard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        loss = torch.tensor(float("nan") if rank == 1 else 0.5)  # only process 1 sees the NaN
        state = SimpleNamespace(output={"loss": loss}, epoch=1, iteration=3, batch={})
        try:
            NonFiniteLossGuard("stop")._check_loss(SimpleNamespace(state=state))
            results.put((rank, "trained on"))
        except NonFiniteLossError as exc:
            results.put((rank, str(exc)))
    finally:
        dist.destroy_process_group()


def test_all_processes_of_a_distributed_run_stop_together():
    """Gradients are averaged across processes: a NaN in one process's loss must stop every process."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    mp.start_processes(_ddp_guard_worker, args=(port, results), nprocs=2, join=True, start_method="spawn")
    messages = dict(results.get(timeout=60) for _ in range(2))
    assert messages[1].startswith("non-finite training loss (nan) at epoch 1, iteration 3")
    assert messages[0].startswith("non-finite training loss in another process at epoch 1, iteration 3")
