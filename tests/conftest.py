import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
if not torch.cuda.is_available():
    # Triton's own library functions are decorated when triton is first imported, so the interpreter
    # (which runs the kernels on CPU tensors) must be chosen before any test imports it.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _patch_triton_language_once_per_launch() -> bool:
    """Triton's interpreter replaces ``triton.language``'s functions with interpreted ones when a kernel launches,
    and again at every call of a ``@triton.jit`` helper inside it (thousands per launch: a quarter of an
    interpreted kernel's time), although the launch's replacement is still in place. Here a helper that shares the
    launching kernel's module (so sees the same ``triton.language``) uses the launch's; any other goes through
    Triton's own path. Without the expected interpreter (another Triton), nothing changes and the tests run
    slower."""
    import importlib.util
    import inspect

    if os.environ.get("TRITON_INTERPRET") != "1" or importlib.util.find_spec("triton") is None:
        return False
    try:
        from triton.runtime import interpreter
        launch, helper = interpreter.GridExecutor.__call__, interpreter.InterpretedFunction.__call__
        patch_lang, empty_scope = interpreter._patch_lang, interpreter._LangPatchScope
        sources = inspect.getsource(launch), inspect.getsource(helper)
    except (ImportError, AttributeError, OSError, TypeError):
        return False
    if not all("_patch_lang(self.fn)" in text for text in sources):
        return False
    state = {"launching": False, "patched": None}  # the launch in progress: its kernel's module globals

    def launch_kernel(self, *args, **kwargs):
        outer = state["patched"]
        state["launching"], state["patched"] = True, None
        try:
            return launch(self, *args, **kwargs)
        finally:
            state["launching"], state["patched"] = False, outer

    def patch_once(fn):
        if state["launching"]:  # the launch's own call: patch, and remember for whose module
            state["launching"] = False
            scope = patch_lang(fn)
            state["patched"] = fn.__globals__
            return scope
        if state["patched"] is not None and state["patched"] is fn.__globals__:
            return empty_scope()  # a helper of the launching kernel's module: already patched
        return patch_lang(fn)

    interpreter.GridExecutor.__call__ = launch_kernel
    interpreter._patch_lang = patch_once
    return True


TRITON_LANGUAGE_PATCHED_ONCE = _patch_triton_language_once_per_launch()
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
