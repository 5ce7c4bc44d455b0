"""MONAI Label with the vmunet-monai bundles: importing it next to a CPU build of PyTorch, and its server.

The bundles load in MONAI Label's ``monaibundle`` sample app as they are (``BundleInferTask`` reads
``configs/inference.json`` and ``metadata.json``; ``BundleTrainTask`` reads ``configs/train.json``).
What needs help is the installation:

- monailabel 0.8.5 declares ``monai[torchvision]`` and ``sam2`` as requirements. From PyPI that is a
  CUDA build of torchvision (it cannot load beside the CPU wheel of torch: ``operator torchvision::nms
  does not exist``) and a source build of sam2. The ``label`` extra therefore lists the packages
  monailabel really imports, and monailabel itself is installed with ``--no-deps``::

      pip install 'vmunet-monai[label]' && pip install --no-deps monailabel==0.8.5 pydicom-seg==0.4.1

- monailabel imports ``torchvision.utils.make_grid`` and ``save_image`` when it loads its
  post-processing module (they draw debug images). Where torchvision cannot be imported,
  :func:`install_torchvision_fallback` provides those two functions, written here with torch and
  Pillow, under the name ``torchvision``. ``python -m vmunet_monai.label start_server ...`` does that
  and then runs ``monailabel``'s own command line (the same arguments as ``monailabel start_server``); the
  processes the server starts for training, batch inference and scoring get the stand-in through ``PYTHONPATH``.
  Where torchvision imports (a CUDA machine with matching torch and torchvision), nothing is replaced.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
import types

import torch

from vmunet_monai.install import extra_install

__all__ = [
    "MONAILABEL_VERSION",
    "INSTALL_HINT",
    "torchvision_problem",
    "install_torchvision_fallback",
    "remove_torchvision_fallback",
    "share_fallback_with_child_processes",
    "require_monailabel",
    "make_grid",
    "save_image",
    "main",
]

logger = logging.getLogger("vmunet_monai.label")  # also when run as __main__

MONAILABEL_VERSION = "0.8.5"
INSTALL_HINT = f"{extra_install('label')} && pip install --no-deps monailabel==0.8.5 pydicom-seg==0.4.1"


def torchvision_problem() -> str | None:
    """None if ``import torchvision`` works here, else why it does not (the exception, as text)."""
    try:
        importlib.import_module("torchvision")
    except Exception as exc:  # absent, or a build that does not match this torch (raises RuntimeError)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # a half-imported package must not shadow the fallback
        return f"{type(exc).__name__}: {exc}"
    return None


def make_grid(tensor, nrow: int = 8, padding: int = 2, normalize: bool = False, value_range=None,
              scale_each: bool = False, pad_value: float = 0.0) -> torch.Tensor:
    """Tile a batch of images (B, C, H, W), or a list of (C, H, W), into one (C, H', W') image.

    One-channel images become three-channel; ``normalize`` maps ``value_range`` (default: the
    min and max, per image with ``scale_each``) to [0, 1]. Same arguments as torchvision's.
    """
    if isinstance(tensor, (list, tuple)):
        tensor = torch.stack([torch.as_tensor(t) for t in tensor])
    tensor = torch.as_tensor(tensor).detach().clone().float()
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() == 3:
        tensor = tensor[None] if tensor.shape[0] in (1, 3) else tensor[:, None]
    if tensor.dim() != 4:
        raise ValueError(f"make_grid takes (B, C, H, W), (C, H, W) or (H, W) images, got shape {tuple(tensor.shape)}")
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1).clone()
    if normalize:
        parts = tensor if scale_each else tensor[None]
        for part in parts:
            low, high = value_range if value_range is not None else (float(part.min()), float(part.max()))
            part.clamp_(min=low, max=high).sub_(low).div_(max(high - low, 1e-5))
    if tensor.shape[0] == 1:
        return tensor[0]
    count, channels, height, width = tensor.shape
    cols = min(nrow, count)
    rows = math.ceil(count / cols)
    cell_h, cell_w = height + padding, width + padding
    grid = tensor.new_full((channels, rows * cell_h + padding, cols * cell_w + padding), pad_value)
    for k in range(count):
        r, c = divmod(k, cols)
        top, left = r * cell_h + padding, c * cell_w + padding
        grid[:, top : top + height, left : left + width] = tensor[k]
    return grid


def save_image(tensor, fp, format: str | None = None, **grid_kwargs) -> None:
    """Write an image (or a batch, tiled by :func:`make_grid`) with values in [0, 1] as an 8-bit file."""
    from PIL import Image

    grid = make_grid(tensor, **grid_kwargs)
    array = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
    Image.fromarray(array).save(fp, format=format)


def install_torchvision_fallback() -> bool:
    """Make ``import torchvision.utils`` give :func:`make_grid` and :func:`save_image` if torchvision cannot
    be imported here. Returns True when the fallback was put in place, False when torchvision works."""
    problem = torchvision_problem()
    if problem is None:
        return False
    package = types.ModuleType("torchvision")
    package.__doc__ = f"vmunet_monai.label's stand-in for torchvision, which cannot be imported here ({problem})"
    package.__version__ = "0+vmunet_monai.label"
    package.__path__ = []  # a package, so ``import torchvision.utils`` resolves to the submodule below
    utils = types.ModuleType("torchvision.utils")
    utils.make_grid, utils.save_image = make_grid, save_image
    package.utils = utils
    package._vmunet_monai_fallback = utils._vmunet_monai_fallback = True
    sys.modules["torchvision"], sys.modules["torchvision.utils"] = package, utils
    logger.warning("torchvision cannot be imported (%s); monailabel gets make_grid/save_image from %s",
                   problem, "vmunet_monai.label")
    return True


_CHILD_PACKAGE = {
    "__init__.py": '"""vmunet_monai.label\'s stand-in for torchvision, which cannot be imported here."""\n\n'
                   '__version__ = "0+vmunet_monai.label"\n_vmunet_monai_fallback = True\n\nfrom . import utils  # noqa\n',
    "utils.py": "from vmunet_monai.label import make_grid, save_image  # noqa\n\n_vmunet_monai_fallback = True\n",
}


def share_fallback_with_child_processes() -> str:
    """Write the stand-in as a ``torchvision`` package into a temporary folder (removed at exit) and put that folder
    first on ``PYTHONPATH``, so the processes MONAI Label starts for training, batch inference and scoring
    (``python -m monailabel.interfaces.utils.app``, with this environment) import it too, as this process does.
    Returns the folder."""
    import atexit
    import os
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="vmunet_monai_label_")
    atexit.register(shutil.rmtree, folder, True)
    os.makedirs(os.path.join(folder, "torchvision"))
    for name, text in _CHILD_PACKAGE.items():
        with open(os.path.join(folder, "torchvision", name), "w") as f:
            f.write(text)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (folder, os.environ.get("PYTHONPATH")) if p)
    return folder


def remove_torchvision_fallback() -> None:
    """Take the stand-in of :func:`install_torchvision_fallback` out of ``sys.modules`` again."""
    for name in ("torchvision.utils", "torchvision"):
        if getattr(sys.modules.get(name), "_vmunet_monai_fallback", False):
            del sys.modules[name]


def require_monailabel():
    """Import monailabel (with the torchvision fallback in place) or explain how to install it.

    Raises:
        ModuleNotFoundError: naming the missing package and the install command.
    """
    install_torchvision_fallback()
    try:
        import monailabel
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"MONAI Label is not installed ({exc}); install it with: {INSTALL_HINT}") from exc
    return monailabel


def main(argv: list[str] | None = None) -> None:
    """``python -m vmunet_monai.label ARGS``: monailabel's command line (``start_server``, ``apps``, ...)
    with the torchvision fallback in place, e.g. ``start_server --app APP --studies DIR --conf models NAME``."""
    if install_torchvision_fallback():
        share_fallback_with_child_processes()  # training, batch inference and scoring run in child processes
    require_monailabel()
    from monailabel.main import Main

    sys.argv = ["monailabel"] + list(sys.argv[1:] if argv is None else argv)
    Main().run()


if __name__ == "__main__":
    main()
