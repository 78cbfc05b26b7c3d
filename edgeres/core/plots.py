"""Plot files: checked before the work that fills them, and written whole.  matplotlib is imported only to draw.

Light: the check needs only the standard library, so ``bench --plot`` fails in its first second (a folder
that does not exist, a format matplotlib cannot write, matplotlib missing), never after the timing.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

from edgeres.core.errors import RuntimeUnavailableError, UsageError
from edgeres.core.fs import check_output_file, write_bytes_atomic

#: file suffix -> the format matplotlib writes (raster ones through Pillow, a core dependency)
FORMATS = {".png": "png", ".svg": "svg", ".svgz": "svgz", ".pdf": "pdf", ".eps": "eps", ".ps": "ps",
           ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}
_NEEDS = "--plot needs matplotlib: pip install 'edgeres[plot]'"


def check_plot_file(path, option: str = "--plot", force: bool = True) -> None:
    """Refuse, before any work, a plot path that cannot be written or whose suffix names no image format (and
    without ``force`` one that exists)."""
    path = Path(path)
    check_output_file(path, option, force)
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"{option} {path}: '{path.suffix or 'no suffix'}' is not an image format edgeres writes; "
                         f"end the name in {', '.join(sorted(FORMATS))}")
    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeUnavailableError(_NEEDS)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeUnavailableError(_NEEDS) from None
    return plt


def save_figure(fig, path, dpi: int = 100) -> None:
    """``fig`` in the format its suffix names (PNG without one), written atomically, then closed."""
    path = Path(path)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=FORMATS.get(path.suffix.lower(), "png"), dpi=dpi)
    finally:
        pyplot().close(fig)
    write_bytes_atomic(path, buf.getvalue())
