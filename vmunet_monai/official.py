"""Build the official VM-UNet from a local checkout, to time or compare it beside ours.

Only used by ``benchmark --reference PATH`` and parity checks; nothing of the official code is
shipped. The official code imports timm and einops; when timm is missing (it would pull a CUDA
torch into a CPU environment) a minimal stand-in for ``timm.models.layers`` is provided from
MONAI's DropPath and trunc_normal_. When mamba-ssm's kernel cannot be imported, the official SS2D
gets the scan function passed in ``scan_fn`` (for example :func:`mamba_style_reference_scan`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import torch
import torch.nn.functional as F

__all__ = ["load_official_vmunet", "mamba_style_reference_scan", "mamba_shaped_scan", "copy_weights_to_official"]

MAMBA_CHUNK = 2048  # sequence chunk of mamba-ssm's CUDA kernel: it keeps one state per chunk for the backward


def mamba_style_reference_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False):
    """The algorithm of mamba-ssm's pure-PyTorch ``selective_scan_ref``, for machines where it cannot be imported.

    It materialises ``exp(delta * A)`` and ``delta * B * u`` for the whole sequence, (batch, dim, L, N)
    each, then walks the sequence in a Python loop; grouped B/C are repeated to every channel.
    """
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    if B.dim() == 4:
        B = B.float().repeat_interleave(dim // B.shape[1], dim=1)
    if C.dim() == 4:
        C = C.float().repeat_interleave(dim // C.shape[1], dim=1)
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A.float()))
    delta_b_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    x = A.new_zeros((batch, dim, A.shape[1]), dtype=torch.float32)
    ys = []
    for i in range(length):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, i]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D[:, None].float()
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype_in)
    return (y, x) if return_last_state else y


class _MambaShapedScan(torch.autograd.Function):
    """Keeps for the backward exactly what mamba-ssm's ``SelectiveScanFn`` keeps when z is None
    (u, delta, A, B, C, D, delta_bias and a (batch, dim, ceil(L / 2048), 2N) float32 state
    tensor), so activation memory on a machine without its CUDA kernel is the official model's;
    the arithmetic is our ``cpu`` backend's."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, softplus):
        from vmunet_monai.ops import selective_scan

        y = selective_scan(u, delta, A, B, C, D, None, delta_bias, softplus, backend="cpu")
        batch, dim, length = u.shape
        states = u.new_empty((batch, dim, -(-length // MAMBA_CHUNK), 2 * A.shape[1]), dtype=torch.float32)
        ctx.softplus = softplus
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, states)
        return y

    @staticmethod
    def backward(ctx, dy):
        from vmunet_monai.ops import selective_scan

        u, delta, A, B, C, D, delta_bias, _ = ctx.saved_tensors
        leaves = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
                  for t in (u, delta, A, B, C, D, delta_bias)]
        with torch.enable_grad():
            y = selective_scan(*leaves[:6], None, leaves[6], ctx.softplus, backend="cpu")
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, dy))
        return (*[next(grads) if t is not None and t.requires_grad else None for t in leaves], None)


def mamba_shaped_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """The official SS2D's call of ``selective_scan_fn`` (z None, no last state) with mamba-ssm's
    memory footprint, for measuring the official model's training memory on a CPU."""
    if z is not None or return_last_state:
        raise ValueError("mamba_shaped_scan covers the official SS2D's call only (z=None, return_last_state=False)")
    # mamba-ssm makes u, delta, B, C contiguous before it saves them
    return _MambaShapedScan.apply(u.contiguous(), delta.contiguous(), A, B.contiguous(), C.contiguous(), D,
                                  delta_bias, delta_softplus)


def _timm_stand_in() -> None:
    if importlib.util.find_spec("timm") is not None:
        return
    from monai.networks.layers import DropPath, trunc_normal_

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath, layers.trunc_normal_, layers.to_2tuple = DropPath, trunc_normal_, to_2tuple
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def load_official_vmunet(path: str, *, num_classes: int = 1, depths=(2, 2, 2, 2), depths_decoder=(2, 2, 2, 1),
                         drop_path_rate: float = 0.2, scan_fn=None):
    """Instantiate ``models.vmunet.vmunet.VMUNet`` from a checkout of the official repository.

    Args:
        path: the checkout's root (it holds ``models/vmunet/vmamba.py``).
        num_classes, depths, depths_decoder, drop_path_rate: as in the official configs.
        scan_fn: scan used by the official SS2D when mamba-ssm's ``selective_scan_fn`` is not importable.

    Returns:
        (model, scan_name): the official module and which scan it runs.
    """
    pkg_dir = os.path.join(path, "models", "vmunet")
    if not os.path.isfile(os.path.join(pkg_dir, "vmamba.py")):
        raise FileNotFoundError(f"{path}: not a checkout of the official VM-UNet (no models/vmunet/vmamba.py)")
    if importlib.util.find_spec("einops") is None:
        raise ModuleNotFoundError("the official VM-UNet code needs einops: pip install einops")
    _timm_stand_in()
    name = "_official_vmunet"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(pkg_dir, "__init__.py"),
                                                      submodule_search_locations=[pkg_dir])
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        if os.path.isfile(os.path.join(pkg_dir, "__init__.py")):
            spec.loader.exec_module(package)
    vmamba = importlib.import_module(f"{name}.vmamba")
    scan_name = "mamba_ssm selective_scan_fn"
    if getattr(vmamba, "selective_scan_fn", None) is None:
        if scan_fn is None:
            raise RuntimeError("mamba-ssm's selective_scan_fn is not importable here; pass scan_fn")
        vmamba.selective_scan_fn = scan_fn
        scan_name = getattr(scan_fn, "__name__", "custom scan")
    vmunet_mod = importlib.import_module(f"{name}.vmunet")
    model = vmunet_mod.VMUNet(input_channels=3, num_classes=num_classes, depths=list(depths),
                              depths_decoder=list(depths_decoder), drop_path_rate=drop_path_rate)
    return model, scan_name


def copy_weights_to_official(ours: torch.nn.Module, official: torch.nn.Module) -> None:
    """Give the official VM-UNet our VMUNet's weights (its keys are ours with the ``vmunet.`` prefix)."""
    state = {"vmunet." + k: v for k, v in ours.state_dict().items()}
    official.load_state_dict(state, strict=True)  # raises on a key of either side without its counterpart
