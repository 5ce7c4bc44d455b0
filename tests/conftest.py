import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
if not torch.cuda.is_available():
    # Triton's own library functions are decorated when triton is first imported, so the interpreter
    # (which runs the kernels on CPU tensors) must be chosen before any test imports it.
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
