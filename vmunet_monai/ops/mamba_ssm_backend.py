"""Adapter over mamba-ssm's compiled CUDA selective scan, imported only when first needed.

mamba-ssm 2.3.x imports its compiled ``selective_scan_cuda`` unconditionally, so on a machine
without that extension even ``import mamba_ssm`` fails; this module turns every such failure into
a status line with the fix, and never lets it escape at import time.
"""

from __future__ import annotations

import functools
import importlib.util

from vmunet_monai.install import extra_install

__all__ = ["selective_scan", "status"]

# the last state comes back detached from the graph, as in mamba-ssm (dispatch guards it)
LAST_STATE_HAS_GRAD = False


def build_command() -> str:
    """The shell command that builds mamba-ssm for this machine's GPU alone into this interpreter: the
    script shipped in the package (``scripts/build_mamba_ssm.sh`` in a checkout runs the same file)."""
    import shlex
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "resources" / "build_mamba_ssm.sh"
    return f"PYTHON={shlex.quote(sys.executable)} bash {shlex.quote(str(script))}"


BUILD_HINT = (
    "install a CUDA build of torch, then build the extension for this GPU only: "
    f"`{build_command()}` (about 3 minutes for one architecture), "
    f"or `{extra_install('cuda')} --no-build-isolation`"
)


@functools.lru_cache(maxsize=1)
def _kernel():
    """Return (selective_scan_fn or None, reason)."""
    if importlib.util.find_spec("mamba_ssm") is None:
        return None, "mamba-ssm is not installed (it is an optional extra: vmunet-monai[cuda])"
    import torch

    if not torch.cuda.is_available():
        return None, (
            "mamba-ssm is installed but no CUDA device is visible; its kernel is CUDA-only "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})"
        )
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as exc:
        return None, (
            f"mamba-ssm is installed but its compiled extension does not load ({type(exc).__name__}: {exc}); "
            "mamba-ssm 2.3.x imports selective_scan_cuda unconditionally, so the package is unusable without it"
        )
    return selective_scan_fn, "mamba-ssm selective_scan_cuda loaded"


def status():
    fn, reason = _kernel()
    return fn is not None, reason, ("" if fn is not None else BUILD_HINT)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    fn, reason = _kernel()
    if fn is None:
        raise RuntimeError(f"the mamba_ssm scan backend is not available: {reason}. Fix: {BUILD_HINT}")
    # the kernel needs a contiguous last dim, B/C in u's dtype and A, D, delta_bias in float32
    dtype = u.dtype
    B = B.to(dtype) if B.dim() >= 3 else B.float()
    C = C.to(dtype) if C.dim() >= 3 else C.float()
    return fn(
        u.contiguous(),
        delta.to(dtype).contiguous(),
        A.float().contiguous(),
        B.contiguous(),
        C.contiguous(),
        None if D is None else D.float().contiguous(),
        None if z is None else z.to(dtype).contiguous(),
        None if delta_bias is None else delta_bias.float().contiguous(),
        delta_softplus,
        return_last_state,
    )
