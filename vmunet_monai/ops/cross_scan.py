"""The four scan orders of SS2D (official v0 order) and their inverse merge.

Direction 0 walks the map row by row (h outer, w inner), direction 1 column by column (the
transposed map, row-major), directions 2 and 3 are directions 0 and 1 walked backwards.
"""

from __future__ import annotations

import torch

__all__ = ["cross_scan", "cross_merge", "to_scan_order"]


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4, C, H*W): the map read in the four scan orders."""
    b, c, h, w = x.shape
    rows = x.reshape(b, c, h * w)
    cols = x.transpose(2, 3).reshape(b, c, h * w)
    fwd = torch.stack([rows, cols], dim=1)
    return torch.cat([fwd, fwd.flip(-1)], dim=1)


def to_scan_order(x: torch.Tensor) -> torch.Tensor:
    """(B, 4, C, H, W) with one map per direction -> (B, 4, C, H*W), direction k read in order k."""
    b, k, c, h, w = x.shape
    if k != 4:
        raise ValueError(f"expected 4 direction maps in dim 1, got {k}")
    rows = x[:, 0::2].reshape(b, 2, c, h * w)  # directions 0 and 2 read row-major
    cols = x[:, 1::2].transpose(3, 4).reshape(b, 2, c, h * w)  # 1 and 3 column-major
    return torch.stack([rows[:, 0], cols[:, 0], rows[:, 1].flip(-1), cols[:, 1].flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 4, C, H*W) in scan order -> (B, C, H*W) row-major: the sum of the four directions."""
    b, k, c, length = y.shape
    if k != 4 or length != height * width:
        raise ValueError(f"cannot merge {tuple(y.shape)} into a {height}x{width} map")
    rows = y[:, 0] + y[:, 2].flip(-1)
    cols = y[:, 1] + y[:, 3].flip(-1)
    cols = cols.reshape(b, c, width, height).transpose(2, 3).reshape(b, c, length)
    return rows + cols
