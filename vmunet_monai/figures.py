"""Figures written to files: matplotlib without a display, and one way to save and release a figure."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pyplot", "save"]


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, unless a backend was chosen already."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | os.PathLike, dpi: int = 100) -> str:
    """Write ``fig`` to ``path`` (its folder made if missing), close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return str(path)
