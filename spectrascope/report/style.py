"""The plot style of every spectrascope figure: rc settings, colour maps, markers, a
figure factory on the Agg canvas (no pyplot: headless) and atomic PNG/PDF/SVG writing.

Figure styles (``--style``): ``paper`` (the default: each figure's own size, at most a page
wide, 6-9 pt text), ``column`` (3.3 in wide, the column of a two-column paper, 7-9 pt text),
``page`` (6.9 in wide, the full text width, 7-9 pt text) and ``notebook`` (each figure's own
size, 9-13 pt text for the screen). The style of a run is set once with :func:`use_style`
(a context variable, so threads and nested runs do not see each other's) and applied by
:func:`save_figure`: text sizes are brought into the style's range, then the figure is scaled
so that the written file has the style's width (the layout engine re-flows the axes around
the fixed-size text; every map keeps its aspect).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["PAPER_RC", "DEPTH_CMAP", "SPECTRUM_CMAP", "MARKERS", "RANDOM_COLOR", "new_figure", "save_figure",
           "check_cmap", "FigureStyle", "FIGURE_STYLES", "STYLE_NAMES", "COLUMN_WIDTH", "PAGE_WIDTH", "use_style",
           "active_style", "active_ncols", "fit_figure", "wrap_columns", "PAPER_NAMES", "paper_name", "paper_labels",
           "add_colorbar", "footnote"]

#: rc settings applied to every figure of the toolkit
PAPER_RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "axes.linewidth": 0.7, "lines.linewidth": 1.0, "xtick.major.width": 0.6,
    "ytick.major.width": 0.6, "savefig.bbox": "tight", "savefig.pad_inches": 0.04, "pdf.fonttype": 42,
    "axes.spines.top": False, "axes.spines.right": False,
}
#: width of one column of a two-column paper and of the full text block (inches)
COLUMN_WIDTH = 3.3
PAGE_WIDTH = 6.9


@dataclass(frozen=True)
class FigureStyle:
    """One figure style: the written width and the range of text sizes.

    Args:
        name: ``paper``, ``column``, ``page`` or ``notebook``.
        width: the written figure's width in inches (None: the figure's own).
        max_width: the widest a figure of its own width may be (None: no limit).
        min_font: the smallest text (pt); smaller text is raised to it.
        max_font: the largest text (pt); larger text is lowered to it.
    """

    name: str
    width: float | None
    max_width: float | None
    min_font: float
    max_font: float


#: the figure styles of ``--style``
FIGURE_STYLES = {
    "paper": FigureStyle("paper", None, PAGE_WIDTH, 6.0, 9.0),
    "column": FigureStyle("column", COLUMN_WIDTH, COLUMN_WIDTH, 7.0, 9.0),
    "page": FigureStyle("page", PAGE_WIDTH, PAGE_WIDTH, 7.0, 9.0),
    "notebook": FigureStyle("notebook", None, None, 9.0, 13.0),
}
STYLE_NAMES = tuple(FIGURE_STYLES)
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("spectrascope_figure_style",
                                                         default=(FIGURE_STYLES["paper"], None))

#: the papers' names of the zoo's families and models, as the figures print them (registry names
#: stay in results.json and the tables)
PAPER_NAMES = {
    "dfformer": "DFFormer", "cdfformer": "CDFFormer", "gfformer": "GFFormer", "convformer": "ConvFormer",
    "caformer": "CAFormer", "identityformer": "IdentityFormer", "randformer": "RandFormer",
    "poolformerv2": "PoolFormerV2", "poolformer": "PoolFormer", "spanet": "SPANet", "affnet": "AFFNet",
    "gfnet": "GFNet", "gfnet_h": "GFNet-H", "resnet": "ResNet", "vit": "ViT", "deit": "DeiT", "swin": "Swin",
    "convnext": "ConvNeXt", "focalnet": "FocalNet", "mobilevit": "MobileViT", "mobilevitv2": "MobileViTv2",
}


_SIZES = {"s": "S", "m": "M", "b": "B", "bx": "BX", "mx": "MX", "t": "T", "et": "ET", "ti": "Ti", "xs": "XS"}


def paper_name(name: str) -> str:
    """The papers' spelling of a registry or timm model name: ``dfformer_s18`` -> ``DFFormer-S18``,
    ``gfnet_ti`` -> ``GFNet-Ti``, ``affnet_et`` -> ``AFFNet-ET``, ``spanet_s_k3`` -> ``SPANet-S (k3)``,
    ``timm:vit_tiny_patch16_224`` -> ``ViT-Tiny/16``; names of other families as given.

    Args:
        name: a registry name, alias or ``timm:<name>``.

    Returns:
        The name the papers print."""
    raw = str(name)
    base = raw.split(":", 1)[1] if raw.startswith("timm:") else raw
    base, _, tag = base.partition(".")                 # timm's pretrained tag: convnext_tiny.fb_in22k
    head, _, rest = base.partition("_")
    fam = PAPER_NAMES.get(head)
    if fam is None or not rest:
        return fam or raw
    if head == "gfnet" and rest.startswith("h_"):
        fam, rest = "GFNet-H", rest[2:]
    parts = rest.split("_")
    size, extra = parts[0], parts[1:]
    if base.startswith(("vit_", "deit_", "swin_", "focalnet_", "convnext_", "resnet")) or raw.startswith("timm:"):
        label = f"{fam}-{size[:1].upper() + size[1:]}"
        patch = [p for p in extra if p.startswith("patch") and p[5:].isdigit()]
        sides = [p for p in extra if p.isdigit() and p != "224"]          # another input size than 224 px
        notes = ([f"{sides[-1]} px"] if sides else []) + ([tag] if tag else [])
        return label + ("/" + patch[0][5:] if patch else "") + (f" ({', '.join(notes)})" if notes else "")
    if size in _SIZES or (size[:1] in "smb" and size[1:].isdigit() and len(size) > 1):
        label = f"{fam}-{_SIZES.get(size, size.upper())}"
    else:
        label, extra = fam, parts
    extra = extra + ([tag] if tag else [])
    return label + (f" ({'-'.join(extra)})" if extra else "")


def paper_labels(names) -> list[str]:
    """``paper_name`` of each name, or the names as given where two different names would print alike."""
    names = [str(n) for n in names]
    out = [paper_name(n) for n in names]
    clash = {lab for lab in out if len({n for n, o in zip(names, out) if o == lab}) > 1}
    return [n if o in clash else o for n, o in zip(names, out)]


@contextlib.contextmanager
def use_style(name: str | None = None, ncols: int | None = None) -> Iterator[FigureStyle]:
    """Draw and write the figures inside the block in the style ``name`` with grids wrapped at
    ``ncols`` columns; None keeps the enclosing block's (outside any: ``paper``, each figure's own
    columns), so a recipe's style reaches the analyses it runs."""
    outer, outer_ncols = _ACTIVE.get()
    style = FIGURE_STYLES[name] if name else outer
    token = _ACTIVE.set((style, ncols if ncols is not None else outer_ncols))
    try:
        yield style
    finally:
        _ACTIVE.reset(token)


def active_style() -> FigureStyle:
    """The figure style set by the innermost :func:`use_style` (``paper`` outside any)."""
    return _ACTIVE.get()[0]


def active_ncols() -> int | None:
    """The ``--ncols`` set by the innermost :func:`use_style` (None: each grid's own columns)."""
    return _ACTIVE.get()[1]


def wrap_columns(n: int, default: int | None = None, ncols: int | None = None) -> int:
    """Columns of a wrapped grid of ``n`` panels: ``ncols`` when given, else the active ``--ncols``,
    else ``default`` (else a near-square grid: ceil(sqrt(n)), at most 8 and at most 4 in a column
    figure)."""
    import math
    chosen = ncols or _ACTIVE.get()[1] or default
    if not chosen:
        chosen = min(math.ceil(math.sqrt(max(n, 1))), 4 if active_style().width == COLUMN_WIDTH else 8)
    return max(1, min(int(chosen), max(n, 1)))


def add_colorbar(fig, mappable, cax, label: str, orientation: str = "vertical"):
    """A colour bar in its own axes ``cax`` with ``label``, without an offset text (a ``1e-5`` above
    the bar lands on the panel above it): large or small values get scientific tick labels."""
    bar = fig.colorbar(mappable, cax=cax, orientation=orientation)
    bar.formatter.set_useOffset(False)
    try:
        bar.formatter.set_powerlimits((-3, 4))
    except AttributeError:
        pass
    bar.update_ticks()
    bar.set_label(label)
    return bar


def footnote(fig: Figure, text: str, color: str = "0.35", fontsize: float = 7):
    """A note under the figure's axes (the figure's x super-label), left-aligned and wrapped to
    the figure's width again whenever the figure is resized for a style, so it never widens it."""
    label = fig.supxlabel(text, fontsize=fontsize, color=color, ha="left", x=0.01, ma="left")
    label.spectrascope_wrap = text
    _rewrap(fig)
    return label


def _rewrap(fig: Figure) -> None:
    import textwrap
    title = getattr(fig, "_suptitle", None)
    if title is not None and title.get_text() and getattr(title, "spectrascope_wrap", None) is None:
        title.spectrascope_wrap = title.get_text()
    for t in [*fig.texts, getattr(fig, "_supxlabel", None), title]:
        raw = getattr(t, "spectrascope_wrap", None)
        if raw is not None:
            width = max(20, int(fig.get_figwidth() * 0.97 * 72 / (0.55 * t.get_fontsize())))
            t.set_text("\n".join(textwrap.fill(line, width) for line in raw.split("\n")))


def _clamp_fonts(fig: Figure, style: FigureStyle) -> None:
    from matplotlib.text import Text
    lo, hi = style.min_font, style.max_font
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = axis.get_majorticklabels() + axis.get_minorticklabels()
            sizes = [t.get_fontsize() for t in labels]
            if sizes and (min(sizes) < lo or max(sizes) > hi):
                axis.set_tick_params(which="both", labelsize=min(max(min(sizes), lo), hi))
    for t in fig.findobj(Text):
        size = t.get_fontsize()
        if size < lo or size > hi:
            t.set_fontsize(min(max(size, lo), hi))


def _written_width(fig: Figure) -> float:
    _rewrap(fig)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    return fig.get_tightbbox(renderer).width + 2 * PAPER_RC["savefig.pad_inches"]


def _axes_span(fig: Figure) -> tuple[float, float]:
    """Width and height (inches) of the union of the figure's axes."""
    boxes = [ax.get_position() for ax in fig.axes if ax.get_visible()]
    if not boxes:
        return 0.0, 0.0
    w, h = fig.get_size_inches()
    return ((max(b.x1 for b in boxes) - min(b.x0 for b in boxes)) * w,
            (max(b.y1 for b in boxes) - min(b.y0 for b in boxes)) * h)


def _resize(fig: Figure, width: float, base: tuple) -> None:
    """Width ``width``; the height keeps the text band of ``base`` (w, h, axes w, axes h) and scales
    the axes band by the axes' own width change, so maps keep their size relative to each other."""
    w, h, aw, ah = base
    text_w, text_h = max(w - aw, 0.0), max(h - ah, 0.0)
    k = max(width - text_w, 0.2 * width) / aw if aw > 0 else width / w
    fig.set_size_inches(width, max(text_h + ah * k, 0.6))


def _overflow(fig: Figure) -> float:
    """Inches by which the drawn artists reach above or below the canvas."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    box = fig.get_tightbbox(renderer)
    return max(0.0, box.y1 - fig.get_figheight()) + max(0.0, -box.y0)


def _fit_width(fig: Figure, target: float, written: float) -> float:
    """Resize ``fig`` until the tight width written is ``target``; returns the width written."""
    base = (*fig.get_size_inches(), *_axes_span(fig))
    w0, s0 = None, None
    for _ in range(8):
        if abs(written - target) < 0.01:
            break
        w = fig.get_figwidth()
        if w0 is None or abs(written - s0) < 1e-6:
            new = w * target / written
        else:                                          # secant step: the margins need not scale
            new = w + (target - written) * (w - w0) / (written - s0)
        new = min(max(new, 0.6 * target), 4 * target)
        w0, s0 = w, written
        _resize(fig, new, base)
        for hook in getattr(fig, "spectrascope_on_resize", ()):     # e.g. limits that follow the size
            hook()
        written = _written_width(fig)
    return written


def fit_figure(fig: Figure, style: FigureStyle | None = None) -> Figure:
    """``fig`` in ``style`` (default: the active one): text sizes clamped into the style's range,
    then the figure resized until the file written with a tight bounding box is the style's width
    (or at most its ``max_width``); the height follows the axes, so maps keep their aspect and the
    text keeps its size."""
    style = style or active_style()
    with matplotlib.rc_context(PAPER_RC):
        fig.draw(fig.canvas.get_renderer())               # tick labels exist only once drawn
        _clamp_fonts(fig, style)
        written = _written_width(fig)
        target = style.width or (style.max_width if style.max_width and written > style.max_width + 0.01 else None)
        if target is None:
            return fig
        for _ in range(3):
            written = _fit_width(fig, target, written)
            over = _overflow(fig)
            if over < 0.01:
                break
            fig.set_size_inches(fig.get_figwidth(), fig.get_figheight() + over + 0.05)   # text taller than it
            written = _written_width(fig)
    return fig


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
    """Write ``directory/stem.<fmt>`` for every format (atomically: temp file + rename), in the
    active figure style (:func:`fit_figure`)."""
    fit_figure(fig)
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
