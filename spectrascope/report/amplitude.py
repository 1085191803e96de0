"""The report of ``amplitude`` and ``spectrum``: figures in the papers' style drawn from the
result alone (no model needed; ``draw``), and the tidy CSV beside results.json (``write_tables``).

Uses matplotlib's object API with the Agg canvas (no pyplot, no global state), so it
works headless and can be called from any thread. Every figure is written as PNG and
PDF (``save_figure`` writes each file atomically).

Conventions (Park & Kim 2022 / DFFormer Fig. 1 and 8 / SPANet Fig. 2): curves are
coloured by normalised depth with ``plasma`` (shallow = dark purple, deep = yellow: "the
yellower the colour, the deeper the layer"), drawn deepest first, with a colour bar;
the x axis is in units of pi; y is the Delta log amplitude. Spectrum maps put the zero
frequency at the centre with a shared colour scale across panels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
import numpy as np

from spectrascope.errors import FigureError
from spectrascope.io.results import write_csv
from spectrascope.report.style import (DEPTH_CMAP, MARKERS, PAPER_RC, RANDOM_COLOR, SPECTRUM_CMAP,  # noqa: F401
                                       check_cmap, footnote, new_figure, paper_name, save_figure, active_style, COLUMN_WIDTH)

__all__ = ["PAPER_RC", "new_figure", "save_figure", "depth_colors", "pi_formatter", "amplitude_figure",
           "highfreq_figure", "spectrum_figure", "figures_for", "random_weights_footer", "shading_spans",
           "MIXER_COLORS", "MIXER_LABELS", "write_tables", "draw"]


def depth_colors(depths: Sequence[float], cmap: str = DEPTH_CMAP):
    cm = matplotlib.colormaps[cmap]
    return [cm(float(d)) for d in depths]


def pi_formatter(decimals: int = 1) -> FuncFormatter:
    return FuncFormatter(lambda v, _p: f"{v:.{decimals}f}\u03c0")


def random_weights_footer(models: Sequence[Mapping]) -> str | None:
    rnd = [paper_name(m["model"]) for m in models if m.get("random_weights")]
    if not rnd:
        return None
    return ("random weights (no checkpoint): " + ", ".join(rnd) + " - the results do not describe trained models")


def _footer(fig: Figure, payload: Mapping, extra: str = "") -> None:
    method = payload.get("method", {})
    imgs = payload.get("images", {})
    bits = []
    if imgs.get("count") is not None:
        bits.append(f"{imgs['count']} image{'s' if imgs['count'] != 1 else ''}")
    if method.get("curve") and payload.get("kind") != "spectrum":
        bits.append(f"{method['curve']} curve")
    if method.get("eps") is not None:
        bits.append(f"eps={method['eps']:g}")
    if extra:
        bits.append(extra)
    left = [t.get("name", "?") for m in payload.get("models", []) if isinstance(m.get("left_out"), list)
            for t in m["left_out"] if isinstance(t, dict)]
    if left:
        bits.append(f"{len(left)} tap{'s' if len(left) > 1 else ''} left out (< 2 frequency points)")
    note = random_weights_footer(payload.get("models", []))
    lines = [(note, RANDOM_COLOR)] if note else []
    if bits:
        lines.append(("; ".join(bits), "0.35"))
    if lines:                 # under the axes, wrapped to the figure's width (never wider than it)
        footnote(fig, "\n".join(t for t, _ in lines), color=lines[0][1])


def _model_name(m: Mapping) -> str:
    """The papers' name of a model entry (its own label when the user gave one)."""
    label = m.get("label")
    return label if label and label != m["model"] else paper_name(m["model"])


def _taps_said(payload: Mapping) -> str:
    """The tap selection when it is not the default (``stage 3``, a tap expression), for titles."""
    taps = (payload.get("method") or {}).get("taps")
    return taps if isinstance(taps, str) and taps not in ("", "default", "all", "block") else ""


def _panel_title(m: Mapping, payload: Mapping | None = None) -> str:
    title = _model_name(m)
    said = _taps_said(payload or {})
    if said:
        title += f", {said}"
    if m.get("random_weights"):
        title += "\n(random weights)"
    return title


def _curve_x(tap: Mapping, freq_axis: str) -> np.ndarray:
    key = "freq_true_pi" if freq_axis == "true" else "freq_index_pi"
    return np.asarray(tap[key], dtype=float)


#: at most this many taps per model are named in a legend instead of a depth colour bar
LEGEND_TAPS = 4


def amplitude_figure(payload: Mapping, *, freq_axis: str | None = None, cmap: str = DEPTH_CMAP,
                     deepest_first: bool = True, title: str | None = None) -> Figure:
    """Relative log-amplitude curves, one panel per model, coloured by normalised depth (with a depth
    colour bar; at most ``LEGEND_TAPS`` taps per model are named in a legend beside the axes instead)."""
    models = payload["models"]
    freq_axis = freq_axis or payload.get("method", {}).get("freq_axis", "index")
    n = len(models)
    few = max((len(m["taps"]) for m in models), default=0) <= LEGEND_TAPS
    fig = new_figure(2.4 * n + (1.5 if few else 0.7), 2.6)
    with matplotlib.rc_context(PAPER_RC):
        axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
        for ax, m in zip(axes, models):
            taps = m["taps"]
            order = range(len(taps) - 1, -1, -1) if deepest_first else range(len(taps))
            colors = depth_colors([t["normalised_depth"] for t in taps], cmap)
            for i in order:
                t = taps[i]
                ax.plot(_curve_x(t, freq_axis), t["curve"], color=colors[i], lw=1.0, label=t["name"])
            ax.set_xlim(0, 1)
            ax.xaxis.set_major_formatter(pi_formatter(1))
            ax.set_xticks([0.0, 0.5, 1.0])
            ax.set_xlabel("Frequency")
            ax.set_title(_panel_title(m, payload), color=RANDOM_COLOR if m.get("random_weights") else "black")
            ax.axhline(0.0, color="0.8", lw=0.5, zorder=0)
            if few:
                handles, labels = ax.get_legend_handles_labels()
                ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                          title="tap", borderaxespad=0.0)
        axes[0].set_ylabel("\u0394 Log amplitude")
        if not few:
            sm = ScalarMappable(norm=Normalize(0, 1), cmap=cmap)
            cb = fig.colorbar(sm, ax=list(axes), fraction=0.05 if n > 1 else 0.08, pad=0.02)
            cb.set_label("Normalized depth")
        if title:
            fig.suptitle(title)
        _footer(fig, payload, "x: index axis (reference)" if freq_axis == "index" else "x: true frequency 2k/H")
    return fig


#: colours of the shaded steps by token-mixer kind (Park & Kim shade the attention blocks grey)
MIXER_COLORS = {"attention": "0.45", "fft": "tab:orange", "conv": "tab:green", "pooling": "tab:purple",
                "mlp": "tab:olive", "identity": "0.85", "other": "tab:brown", "downsample": "tab:blue"}
MIXER_LABELS = {"attention": "attention", "fft": "FFT", "conv": "convolution", "pooling": "pooling",
                "mlp": "MLP mixing", "identity": "identity", "other": "token mixer", "downsample": "downsampling"}


def _span_kind(t: Mapping, mixer_blocks: set) -> str | None:
    role = t.get("role")
    if role in ("residual", "mixer"):
        return t.get("mixer") or "other"
    if role == "block" and (t.get("stage"), t.get("index")) not in mixer_blocks and t.get("mixer"):
        return t["mixer"]                  # a block latent without a tap after its mixer: the whole block
    if role == "downsample":
        return "downsample"
    return None


def shading_spans(taps: Sequence[Mapping]) -> list[dict]:
    """The shaded steps of a high-frequency plot: ``{x0, x1, kind, tap}`` per latent produced by a
    token mixer (kind from the tap's ``mixer``: attention / fft / conv / pooling / ...) or by
    downsampling (kind ``downsample``); the step runs from the previous latent's depth to its own."""
    x = [float(t["normalised_depth"]) for t in taps]
    mixer_blocks = {(t.get("stage"), t.get("index")) for t in taps if t.get("role") in ("residual", "mixer")}
    spans = []
    for i, t in enumerate(taps):
        kind = _span_kind(t, mixer_blocks)
        if kind is None or len(x) < 2:
            continue
        x0 = x[i - 1] if i > 0 else x[0] - (x[1] - x[0])
        spans.append({"x0": x0, "x1": x[i], "kind": kind, "tap": t["name"]})
    return spans


def _shade(ax, models: Sequence[Mapping]) -> list[dict]:
    """Shade every model's spans, each model in its own horizontal band when there are several."""
    n = len(models)
    drawn = []
    for k, m in enumerate(models):
        lo, hi = (k / n, (k + 1) / n) if n > 1 else (0.0, 1.0)
        for sp in shading_spans(m["taps"]):
            ax.axvspan(sp["x0"], sp["x1"], ymin=lo, ymax=hi, color=MIXER_COLORS.get(sp["kind"], "0.6"),
                       alpha=0.18, lw=0, zorder=0)
            drawn.append(dict(sp, model=m["model"], ymin=lo, ymax=hi))
    return drawn


def _shade_legend(drawn: Sequence[Mapping]) -> list:
    from matplotlib.patches import Patch
    kinds = list(dict.fromkeys(d["kind"] for d in drawn))
    return [Patch(color=MIXER_COLORS.get(k, "0.6"), alpha=0.35, label=MIXER_LABELS.get(k, k)) for k in kinds]


def _highfreq_line(ax, m: Mapping, k: int, cmap: str):
    cm = matplotlib.colormaps[cmap]
    taps = m["taps"]
    x = np.asarray([t["normalised_depth"] for t in taps], dtype=float)
    y = np.asarray([t["high_freq_delta"] for t in taps], dtype=float)
    if len(x) > 1:
        seg = np.stack([np.stack([x[:-1], y[:-1]], -1), np.stack([x[1:], y[1:]], -1)], 1)
        lc = LineCollection(seg, cmap=cmap, norm=Normalize(0, 1), linewidths=1.2)
        lc.set_array((x[:-1] + x[1:]) / 2)
        ax.add_collection(lc)
    mk = MARKERS[k % len(MARKERS)]
    ax.scatter(x, y, c=[cm(v) for v in x], marker=mk, s=14, edgecolors="0.2", linewidths=0.3, zorder=3)
    return ax.scatter([], [], marker=mk, c="white", edgecolors="0.2", label=_panel_title(m).replace("\n", " "))


def _highfreq_title(models: Sequence[Mapping], payload: Mapping, title: str | None) -> str | None:
    said = _taps_said(payload)
    if title or not said:
        return title
    return ", ".join(_model_name(m) for m in models) + f": {said}"


def _legend_above(fig: Figure, entries: list, width: float) -> None:
    """A figure legend above the axes in as many columns (at most 3) as fit ``width`` inches."""
    renderer = fig.canvas.get_renderer()
    for ncols in range(min(len(entries), 3), 0, -1):
        legend = fig.legend(handles=entries, loc="outside upper center", ncols=ncols, frameon=False,
                            columnspacing=1.0, handletextpad=0.4)
        if ncols == 1 or legend.get_window_extent(renderer).width / fig.dpi <= 0.95 * width:
            return
        legend.remove()


def highfreq_figure(payload: Mapping, *, cmap: str = DEPTH_CMAP, shade: bool = True,
                    title: str | None = None) -> Figure:
    """Park & Kim Fig. 8: Delta log amplitude at the highest frequency vs normalised depth.

    The steps produced by a token mixer are shaded by mixer kind (attention grey, FFT, convolution,
    pooling; see ``MIXER_COLORS``) and downsampling steps blue; with several models each model's
    shading fills its own horizontal band (bottom = first model). ``fig.spectrascope_shading``
    lists the drawn spans (model, x0, x1, kind, ymin, ymax)."""
    models = payload["models"]
    width = active_style().width
    column = width is not None and width <= COLUMN_WIDTH
    fig = new_figure(5.6, 4.0 if column else 2.8)       # a column keeps axes as tall as the two-line y label
    with matplotlib.rc_context(PAPER_RC):
        ax = fig.subplots()
        handles = [_highfreq_line(ax, m, k, cmap) for k, m in enumerate(models)]
        drawn = _shade(ax, models) if shade else []
        fig.spectrascope_shading = drawn
        ax.set_xlim(-0.02, 1.02)
        ax.autoscale(axis="y")
        ax.set_xlabel("Normalized depth")
        ax.set_ylabel("\u0394 Log amplitude\n(highest frequency)")
        if len(models) > 1 or drawn:          # outside the axes, never over the data
            entries = handles + _shade_legend(drawn)
            if column:
                # a column is too narrow to give a third of it to a legend beside the axes: above them
                _legend_above(fig, entries, width)
            else:
                ax.legend(handles=entries, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                          borderaxespad=0.0)
        title = _highfreq_title(models, payload, title)
        if title:
            ax.set_title(title)
        band = "; shading bands bottom to top: " + ", ".join(_model_name(m) for m in models) \
            if len(models) > 1 and drawn else ""
        _footer(fig, payload, band.lstrip("; "))
    return fig


def _extent(H: int, W: int):
    # pixel centres at 2 (j - W//2) / W (units of pi); origin upper -> top row is the most negative
    left, right = 2 * (-(W // 2) - 0.5) / W, 2 * (W - 1 - W // 2 + 0.5) / W
    top, bottom = 2 * (-(H // 2) - 0.5) / H, 2 * (H - 1 - H // 2 + 0.5) / H
    return (left, right, bottom, top)


_PI_LABELS = {-1.0: "\u2212\u03c0", -0.5: "\u2212\u03c0/2", 0.0: "0", 0.5: "\u03c0/2", 1.0: "\u03c0"}


def _common_limits(shapes) -> tuple[float, float, float, float]:
    """(left, right, bottom, top): the range -pi..pi on both axes for every map (the Nyquist pixel of
    an even side, centred at -pi, shows its inner half), so panels of any size share their ticks."""
    return (-1.0, 1.0, 1.0, -1.0)


def _freq_ticks(ax, limits, *, xlabels: bool = True, ylabels: bool = True) -> None:
    """The same frequency range and ticks on every map (labels only where asked: outer panels)."""
    left, right, bottom, top = limits
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ticks = (-1.0, 0.0, 1.0)
    xt = [t for t in ticks if left <= t <= right]
    yt = [t for t in ticks if top <= t <= bottom]
    ax.set_xticks(xt, [_PI_LABELS[t] for t in xt] if xlabels else [])
    ax.set_yticks(yt, [_PI_LABELS[t] for t in yt] if ylabels else [])
    ax.set_xticks([t for t in (-0.5, 0.5) if left <= t <= right], minor=True)
    ax.set_yticks([t for t in (-0.5, 0.5) if top <= t <= bottom], minor=True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)


def spectrum_figure(payload: Mapping, *, cmap: str = SPECTRUM_CMAP, shared_scale: bool = True,
                    title: str | None = None) -> Figure:
    """2-D spectrum maps: rows = models, columns = taps; zero frequency at the centre."""
    models = payload["models"]
    relative = payload.get("method", {}).get("relative", True)
    if len(models) > 1 and all(len(m["taps"]) == 1 for m in models):
        return _spectrum_row(payload, cmap=cmap, shared_scale=shared_scale, title=title)
    rows = len(models)
    cols = max(len(m["taps"]) for m in models)
    maps = [[np.asarray(t["map"], dtype=float) for t in m["taps"]] for m in models]
    if active_style().width == COLUMN_WIDTH and cols > 3 and rows < cols:
        return _spectrum_columns(payload, maps, cmap=cmap, vmin_vmax=_scale(maps, shared_scale), title=title)
    vmin, vmax = _scale(maps, shared_scale)
    limits = _common_limits([a.shape for row in maps for a in row])
    fig = new_figure(1.5 * cols + 1.2, 1.5 * rows + 0.7)
    with matplotlib.rc_context(PAPER_RC):
        axes = fig.subplots(rows, cols, squeeze=False)
        im = None
        for r, (m, row) in enumerate(zip(models, maps)):
            for c in range(cols):
                ax = axes[r][c]
                if c >= len(row):
                    ax.axis("off")
                    continue
                t = m["taps"][c]
                H, W = row[c].shape
                im = ax.imshow(row[c], cmap=cmap, vmin=vmin, vmax=vmax, origin="upper", extent=_extent(H, W),
                               interpolation="nearest")
                ax.set_title(f"{t['name']}\n{H}\u00d7{W}", fontsize=7)
                last = r == rows - 1 or c >= len(maps[r + 1])
                _freq_ticks(ax, limits, xlabels=last, ylabels=c == 0)
                if c == 0:
                    ax.set_ylabel(_model_name(m) + ("\n(random)" if m.get("random_weights") else ""),
                                  color=RANDOM_COLOR if m.get("random_weights") else "black")
        if im is not None:
            sm = ScalarMappable(norm=Normalize(vmin, vmax) if shared_scale else im.norm, cmap=cmap)
            cb = fig.colorbar(sm, ax=[a for row in axes for a in row], shrink=0.85, aspect=30, pad=0.02)
            cb.set_label("\u0394 log amplitude (DC = 0)" if relative else "log amplitude")
        if title:
            fig.suptitle(title)
        _footer(fig, payload, "shared colour scale" if shared_scale else "")
    return fig


def _scale(maps, shared: bool):
    allv = np.concatenate([a.ravel() for row in maps for a in row])
    return (float(np.nanmin(allv)), float(np.nanmax(allv))) if shared else (None, None)


def _spectrum_columns(payload: Mapping, maps, *, cmap: str, vmin_vmax, title: str | None) -> Figure:
    """The spectrum grid transposed for a narrow column: one column per model, one row per tap."""
    models = payload["models"]
    relative = payload.get("method", {}).get("relative", True)
    vmin, vmax = vmin_vmax
    limits = _common_limits([a.shape for row in maps for a in row])
    rows, cols = max(len(r) for r in maps), len(models)
    fig = new_figure(1.3 * cols + 1.4, 1.3 * rows + 0.8)
    with matplotlib.rc_context(PAPER_RC):
        axes = fig.subplots(rows, cols, squeeze=False)
        im = None
        for c, (m, row) in enumerate(zip(models, maps)):
            for r in range(rows):
                ax = axes[r][c]
                if r >= len(row):
                    ax.axis("off")
                    continue
                t = m["taps"][r]
                H, W = row[r].shape
                im = ax.imshow(row[r], cmap=cmap, vmin=vmin, vmax=vmax, origin="upper", extent=_extent(H, W),
                               interpolation="nearest")
                _freq_ticks(ax, limits, xlabels=r == rows - 1 or r + 1 >= len(row), ylabels=c == 0)
                if c == 0:
                    ax.set_ylabel(f"{t['name']}\n{H}\u00d7{W}")
                if r == 0:
                    ax.set_title(_model_name(m) + ("\n(random)" if m.get("random_weights") else ""),
                                 color=RANDOM_COLOR if m.get("random_weights") else "black")
        if im is not None:
            sm = ScalarMappable(norm=Normalize(vmin, vmax) if vmin is not None else im.norm, cmap=cmap)
            cb = fig.colorbar(sm, ax=[a for row in axes for a in row], shrink=0.6, aspect=25, pad=0.03)
            cb.set_label("\u0394 log amplitude (DC = 0)" if relative else "log amplitude")
        if title:
            fig.suptitle(title)
        _footer(fig, payload, "shared colour scale" if vmin is not None else "")
    return fig


def _spectrum_row(payload: Mapping, *, cmap: str, shared_scale: bool, title: str | None) -> Figure:
    """One map per model, side by side (SPANet Fig. 1 layout)."""
    models = payload["models"]
    relative = payload.get("method", {}).get("relative", True)
    maps = [np.asarray(m["taps"][0]["map"], dtype=float) for m in models]
    allv = np.concatenate([a.ravel() for a in maps])
    vmin, vmax = (float(np.nanmin(allv)), float(np.nanmax(allv))) if shared_scale else (None, None)
    n = len(models)
    limits = _common_limits([a.shape for a in maps])
    fig = new_figure(1.8 * n + 0.8, 2.4)
    with matplotlib.rc_context(PAPER_RC):
        axes = fig.subplots(1, n, squeeze=False)[0]
        im = None
        for ax, m, a in zip(axes, models, maps):
            t = m["taps"][0]
            H, W = a.shape
            im = ax.imshow(a, cmap=cmap, vmin=vmin, vmax=vmax, origin="upper", extent=_extent(H, W),
                           interpolation="nearest")
            ax.set_title(_panel_title(m), color=RANDOM_COLOR if m.get("random_weights") else "black")
            ax.set_xlabel(f"{t['name']} ({H}\u00d7{W})", fontsize=6)
            _freq_ticks(ax, limits, ylabels=ax is axes[0])
        sm = ScalarMappable(norm=Normalize(vmin, vmax) if shared_scale else im.norm, cmap=cmap)
        cb = fig.colorbar(sm, ax=list(axes), shrink=0.85, aspect=20, pad=0.02)
        cb.set_label("\u0394 log amplitude (DC = 0)" if relative else "log amplitude")
        if title:
            fig.suptitle(title)
        _footer(fig, payload, "shared colour scale" if shared_scale else "")
    return fig


def figures_for(payload: Mapping, **kw) -> dict[str, Figure]:
    """The standard figures of a results payload, by file stem."""
    kind = payload.get("kind")
    title = kw.pop("title", None)
    if kind == "amplitude":
        fa = kw.get("freq_axis")
        return {"amplitude": amplitude_figure(payload, freq_axis=fa, title=title),
                "highfreq": highfreq_figure(payload, title=title)}
    if kind == "spectrum":
        return {"spectrum": spectrum_figure(payload, cmap=kw.get("cmap") or SPECTRUM_CMAP, title=title)}
    raise FigureError(f"cannot draw results of kind {kind!r} (expected amplitude or spectrum)")


# ---------------------------------------------------------------------------- result folders

def _spectrum_rows(base: dict, t: Mapping) -> list[dict]:
    arr = np.asarray(t["map"])
    H, W = arr.shape
    return [dict(base, freq_y_pi=round(2 * (i - H // 2) / H, 6), freq_x_pi=round(2 * (j - W // 2) / W, 6),
                 value=arr[i, j]) for i in range(H) for j in range(W)]


def _csv_rows(payload: Mapping) -> list[dict]:
    rows = []
    for m in payload["models"]:
        for t in m["taps"]:
            base = {"model": m["model"], "random_weights": m["random_weights"], "tap": t["name"], "role": t["role"],
                    "stage": t["stage"], "block": t["index"], "normalised_depth": round(t["normalised_depth"], 6),
                    "map_h": t["shape"][1], "map_w": t["shape"][2]}
            if payload["kind"] == "spectrum":
                rows += _spectrum_rows(base, t)
                continue
            for k, (v, fi, ft) in enumerate(zip(t["curve"], t["freq_index_pi"], t["freq_true_pi"])):
                rows.append(dict(base, k=k, freq_index_pi=round(fi, 6), freq_true_pi=round(ft, 6),
                                 delta_log_amplitude=v))
    return rows


def write_tables(result, folder) -> list[str]:
    """``<kind>.csv`` into ``folder``: one row per curve point (amplitude) or map pixel (spectrum)."""
    doc = result.to_json()
    write_csv(Path(folder) / f"{doc['kind']}.csv", _csv_rows(doc))
    return [f"{doc['kind']}.csv"]


def draw(result, folder, style) -> list[str]:
    """The figures of an amplitude or spectrum result (``style``: formats, ``freq_axis``, ``cmap``)."""
    doc = result.to_json() if hasattr(result, "to_json") else dict(result)
    cmap = style.get("cmap") or (doc.get("method") or {}).get("cmap")
    written = []
    for stem, fig in figures_for(doc, freq_axis=style.get("freq_axis"), cmap=cmap, title=doc.get("title")).items():
        written += [p.name for p in save_figure(fig, Path(folder), stem, style.formats)]
    return written
