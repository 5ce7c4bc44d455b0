"""Figures written to files: matplotlib without a display, and one way to save and release a figure.

Titles name files, and file names are not always Latin: an installed font that covers Chinese, Japanese or Korean
is added behind matplotlib's own, and a character no installed font can draw is written as its code (``\\u75c5``)
rather than as an empty box with a warning per character."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pyplot", "save"]


#: font families that draw Chinese, Japanese or Korean text (Linux, macOS and Windows names), used where installed
CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans JP",
             "Noto Sans SC", "Source Han Sans", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "Droid Sans Fallback", "IPAexGothic", "IPAGothic", "TakaoGothic", "VL Gothic", "NanumGothic",
             "Hiragino Sans", "Hiragino Sans GB", "PingFang SC", "Apple SD Gothic Neo", "Arial Unicode MS",
             "Microsoft YaHei", "SimHei", "Yu Gothic", "Meiryo", "MS Gothic", "Malgun Gothic")


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, unless a backend was chosen already, with the installed
    fonts of :data:`CJK_FONTS` behind the default sans-serif ones."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    families = list(matplotlib.rcParams["font.sans-serif"])
    extra = [name for name in CJK_FONTS if name in installed and name not in families]
    if extra:
        matplotlib.rcParams["font.sans-serif"] = families + extra
    return plt


def _drawable(fig) -> None:
    """Each character of ``fig``'s texts that none of its fonts has, written as its code instead."""
    from matplotlib import font_manager
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        words = text.get_text()
        if words.isascii():
            continue
        try:
            paths = font_manager.fontManager._find_fonts_by_props(text.get_fontproperties())
        except (AttributeError, ValueError):  # (an older matplotlib: its first font)
            paths = [font_manager.findfont(text.get_fontproperties())]
        fonts = [font_manager.get_font(path) for path in paths]
        drawable = "".join(c if c.isascii() or c.isspace() or any(f.get_char_index(ord(c)) for f in fonts)
                           else ascii(c)[1:-1] for c in words)
        if drawable != words:
            text.set_text(drawable)


def save(fig, path: str | os.PathLike, dpi: int = 100) -> str:
    """Write ``fig`` to ``path`` (its folder made if missing), close it, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drawable(fig)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return str(path)
