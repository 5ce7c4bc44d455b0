import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
if not torch.cuda.is_available():
    # Triton's own library functions are decorated when triton is first imported, so the interpreter
    # (which runs the kernels on CPU tensors) must be chosen before any test imports it.
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread in each test process (and in the commands the tests start): under -n 2 on two cores, two
    # workers of two threads each, and their subprocesses, spend their time waiting on each other
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


TINY = dict(dims=(8, 16, 32, 64), d_state=4)


@pytest.fixture
def one_thread():
    """In-process runs of tiny networks: one thread is fastest (two crawl on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def triton_device(monkeypatch):
    """Device for the triton backend: CUDA, or the CPU with the interpreted kernels (dispatch is told
    to send CPU tensors to them)."""
    pytest.importorskip("triton", reason="triton is not installed")
    from vmunet_monai.ops import dispatch, triton_scan

    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1 (conftest sets it before triton loads)")
    real_resolve, real_module = dispatch.resolve_backend, dispatch._module
    monkeypatch.setattr(dispatch, "resolve_backend",
                        lambda dev, b=None: "triton" if b == "triton" else real_resolve(dev, b))
    monkeypatch.setattr(dispatch, "_module", lambda name: triton_scan if name == "triton" else real_module(name))
    return "cpu"
