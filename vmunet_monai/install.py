"""The pip command that installs an optional extra into the environment this package runs in."""

from __future__ import annotations

from pathlib import Path


def checkout() -> Path | None:
    """The source checkout this package is imported from (its ``setup.cfg`` beside the package folder: an editable
    install, as the README makes, or a ``PYTHONPATH``), or None for an install from a wheel."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "setup.cfg").is_file() and (root / "vmunet_monai").is_dir() else None


def extra_install(extra: str) -> str:
    """``pip install -e '<checkout>[extra]'`` where the package runs from a checkout (it is not on the package index
    under its name), else ``pip install 'vmunet-monai[extra]'``."""
    root = checkout()
    return f"pip install -e '{root}[{extra}]'" if root else f"pip install 'vmunet-monai[{extra}]'"
