"""The plot style of every spectrascope figure: rc settings, colour maps, markers, a
figure factory on the Agg canvas (no pyplot, no global state: headless and thread-safe)
and atomic PNG/PDF/SVG writing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["PAPER_RC", "DEPTH_CMAP", "SPECTRUM_CMAP", "MARKERS", "RANDOM_COLOR", "new_figure", "save_figure",
           "check_cmap"]

#: rc settings applied to every figure of the toolkit
PAPER_RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "axes.linewidth": 0.7, "lines.linewidth": 1.0, "xtick.major.width": 0.6,
    "ytick.major.width": 0.6, "savefig.bbox": "tight", "savefig.pad_inches": 0.04, "pdf.fonttype": 42,
    "axes.spines.top": False, "axes.spines.right": False,
}
DEPTH_CMAP = "plasma"
SPECTRUM_CMAP = "viridis"
MARKERS = ("o", "D", "s", "^", "v", "P", "X", "*")
RANDOM_COLOR = "#b22222"


def check_cmap(name, option: str = "--cmap") -> str | None:
    """``name`` when it is a colour map in matplotlib's registry (None passes: the default); any other
    value is an ``OptionError`` naming ``option`` with a few registered names. Every ``--cmap`` is
    checked here, before any work."""
    if name is None:
        return None
    if isinstance(name, str) and name in matplotlib.colormaps:
        return name
    from difflib import get_close_matches

    from spectrascope.errors import OptionError
    names = sorted(matplotlib.colormaps)
    close = get_close_matches(str(name), names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "e.g. viridis, plasma, magma, inferno, gray"
    raise OptionError(f"{name!r} is not a matplotlib colour map ({hint} {len(names)} are registered: "
                      "matplotlib.colormaps)", option=option)


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A Figure with an Agg canvas, the toolkit's rc settings and (by default) constrained layout."""
    with matplotlib.rc_context(PAPER_RC):
        fig = Figure(figsize=(width, height), dpi=150, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, directory, stem: str, formats: Iterable[str] = ("png", "pdf"),
                dpi: int = 300) -> list[Path]:
    """Write ``directory/stem.<fmt>`` for every format (atomically: temp file + rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    with matplotlib.rc_context(PAPER_RC):
        for fmt in formats:
            path = directory / f"{stem}.{fmt}"
            tmp = directory / f".{stem}.{os.getpid()}.tmp.{fmt}"
            try:
                fig.savefig(tmp, format=fmt, dpi=dpi)
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            out.append(path)
    return out
