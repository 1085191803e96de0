"""Figures of ``spectrascope filters``: filter-bank grids (DFFormer Fig. 9 bases, GFNet /
DFFormer Fig. 2 global filters), routing shares, effective filters, AFF masks and kernels,
SPF masks.

Every figure is written as PNG and PDF (``FORMATS``) at ``DPI`` through
``report.style.save_figure``; colour bars carry a label; the title block (one line per
title line, e.g. the random-weights note) has its own reserved band above the column
headers, so they never overlap. The default colour map is ``viridis`` (yellow = high
amplitude, as DFFormer Fig. 9 describes its key).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from spectrascope.engine.runner import progress_iter
from spectrascope.report.style import new_figure, paper_name, save_figure

__all__ = ["DPI", "FORMATS", "AMPLITUDE_LABEL", "DEFAULT_CMAP", "MAX_CHANNELS", "GLOBAL_COLUMNS", "plot_filter_grid",
           "plot_rows", "plot_routing", "draw", "parse_channels", "check_channels"]

DPI = 200
FORMATS = ("png", "pdf")
DEFAULT_CMAP = "viridis"
AMPLITUDE_LABEL = "amplitude |W| (DC centred)"
#: most channels one figure shows (one column each)
MAX_CHANNELS = 256
_LINE_IN = 0.17          # inches per title line
_HEADER_IN = 0.22        # inches for the column headers under the title


def parse_channels(value, option: str = "--channels") -> list[int] | None:
    """``0,1,2`` / ``0-7`` / ``0-3,8`` -> channel indices (ascending ranges, each channel once, at most
    ``MAX_CHANNELS``: one column each); None when empty. Anything else is an ``OptionError``."""
    from spectrascope.errors import OptionError
    if value is None or not str(value).strip():
        return None
    out: list[int] = []
    for part in str(value).split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-") if not part.startswith("-") else (part, "", "")
            a = int(lo)
            b = int(hi) if hi else a
        except ValueError:
            raise OptionError(f"{value!r} is not a channel list such as 0,1,2 or 0-7", option=option) from None
        if a < 0:
            raise OptionError("channels must be >= 0", option=option)
        if b < a:
            raise OptionError(f"{part!r} is an empty range (write low-high, e.g. 2-5)", option=option)
        if b - a + 1 + len(out) > MAX_CHANNELS:
            raise OptionError(f"{value!r} asks for more than {MAX_CHANNELS} channels (one column each)", option=option)
        out.extend(range(a, b + 1))
    dup = sorted({c for c in out if out.count(c) > 1})
    if dup:
        raise OptionError(f"channel {dup[0]} is listed twice", option=option)
    return out


def check_channels(channels, counts, option: str = "--channels") -> None:
    """Every channel of ``channels`` exists in every layer of ``counts`` (layer name -> its channel
    count); otherwise an ``OptionError`` naming the layer and its channels."""
    from spectrascope.errors import OptionError
    if not channels:
        return
    for name, n in counts.items():
        beyond = [c for c in channels if c >= n]
        if beyond:
            raise OptionError(f"channel {beyond[0]} is beyond {name}'s {n} channels (0-{n - 1})", option=option)


def _frame(width: float, height_body: float, title: str, left: float = 0.9, right: float = 0.25,
           bottom: float = 0.15):
    """A figure whose axes area leaves a fixed band for ``title`` (all its lines) and the headers."""
    lines = title.count("\n") + 1
    top_in = lines * _LINE_IN + _HEADER_IN + 0.08
    height = height_body + top_in + bottom
    fig = new_figure(width + left + right, height, layout=None)
    fig.subplots_adjust(left=left / (width + left + right), right=1 - right / (width + left + right),
                        bottom=bottom / height, top=1 - top_in / height, wspace=0.08, hspace=0.12)
    fig.suptitle(title, fontsize=8, y=1 - 0.04 / height, va="top")
    return fig


def _save(fig, directory, stem: str, formats=FORMATS) -> list[str]:
    return [p.name for p in save_figure(fig, Path(directory), stem, formats=formats, dpi=DPI)]


def _upsample(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """A stack (n, h', w') repeated by whole factors (nearest) to (n, h, w) when they divide, so maps
    of every stage are drawn at one size with square pixels; others are returned as they are."""
    fh, fw = h // a.shape[-2], w // a.shape[-1]
    if fh >= 1 and fw >= 1 and fh * a.shape[-2] == h and fw * a.shape[-1] == w and fh == fw:
        return np.repeat(np.repeat(a, fh, axis=-2), fw, axis=-1)
    return a


def _mosaic(tiles: Sequence, cols: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """Maps (each a stack (n, h, w)) tiled into one image with one-pixel NaN gaps (drawn blank):
    every stack starts a new tile row and wraps after ``cols`` tiles; with ``size`` (h, w) smaller
    maps are repeated to it (``_upsample``)."""
    h = max(int(a.shape[-2]) for a in tiles)
    w = max(int(a.shape[-1]) for a in tiles)
    if size is not None:
        h, w = max(h, size[0]), max(w, size[1])
        tiles = [_upsample(np.asarray(a), h, w) for a in tiles]
    tile_rows = [max(1, -(-int(a.shape[0]) // cols)) for a in tiles]
    out = np.full((sum(tile_rows) * (h + 1) - 1, cols * (w + 1) - 1), np.nan, dtype=np.float32)
    r0 = 0
    for a, nr in zip(tiles, tile_rows):
        a = np.asarray(a, dtype=np.float32)
        for j in range(a.shape[0]):
            r, c = r0 + j // cols, j % cols
            out[r * (h + 1): r * (h + 1) + a.shape[-2], c * (w + 1): c * (w + 1) + a.shape[-1]] = a[j]
        r0 += nr
    return out


def _stages(layers) -> list[list[int]]:
    groups: dict = {}
    for i, layer in enumerate(layers):
        groups.setdefault(layer.stage, []).append(i)
    return list(groups.values())


def _bare(ax) -> None:
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)


def plot_filter_grid(layers, amps, columns: int, directory, stem: str, *, title: str, cmap: str = DEFAULT_CMAP,
                     col_label: str = "filter", cbar_label: str = AMPLITUDE_LABEL, formats=FORMATS,
                     ncols: int | None = None, col_ids: Sequence[int] | None = None):
    """Rows = layers (grouped by stage), columns = the first ``columns`` filters, wrapped after
    ``ncols`` tiles (default: the active ``--ncols``, else 12; 8 in a column figure); square pixels,
    the smaller maps of deeper stages repeated to the size of the largest (whole factors); one colour
    scale per stage with a colour bar in its own axes beside it, labelled with its stage (one colour
    scale, labelled ``cbar_label``, when the model has one stage). Returns (figure, files)."""
    import matplotlib
    from spectrascope.report.style import COLUMN_WIDTH, active_style, add_colorbar, wrap_columns
    cols = min(columns, max(a.shape[0] for a in amps))
    ids = list(col_ids) if col_ids is not None else list(range(cols))
    wrap = wrap_columns(cols, ncols=ncols, default=min(cols, 8 if active_style().width == COLUMN_WIDTH else 12))
    groups = _stages(layers)
    per_layer = -(-cols // wrap)
    h = max(int(a.shape[-2]) for a in amps)
    w = max(int(a.shape[-1]) for a in amps)
    cell = 0.5 if wrap <= 8 else 0.4
    body_w, body_h = cell * wrap, cell * (h / w) * per_layer * len(layers)
    fig = new_figure(body_w + 1.6, body_h + 0.25 * len(groups) + 0.9)
    grid = fig.add_gridspec(len(groups), 2, width_ratios=[body_w, 0.1],
                            height_ratios=[len(g) * per_layer for g in groups])
    colour = matplotlib.colormaps[cmap].with_extremes(bad="white")
    fig.spectrascope_maps = []
    for k, idx in enumerate(groups):
        tiles = [np.asarray(amps[i])[:cols] for i in idx]
        lo = min(float(t.min()) for t in tiles)
        hi = max(float(t.max()) for t in tiles)
        mosaic = _mosaic(tiles, wrap, (h, w))
        ax = fig.add_subplot(grid[k, 0])
        fig.spectrascope_maps.append(ax)
        im = ax.imshow(mosaic, cmap=colour, vmin=lo, vmax=hi, interpolation="nearest", aspect="equal")
        th, tw = h + 1, w + 1
        ax.set_yticks([r * per_layer * th + (per_layer * th - 1) / 2 - 0.5 for r in range(len(idx))],
                      [layers[i].name for i in idx])
        if per_layer == 1:
            ax.set_xticks([c * tw + (w - 1) / 2 for c in range(cols)],
                          [f"{col_label} {c}" for c in ids[:cols]] if k == 0 else [],
                          rotation=90 if len(f"{col_label} {ids[cols - 1]}") * 0.55 * 8 / 72 > cell else 0)
        else:
            ax.set_xticks([])
            if k == len(groups) - 1:
                span = f"{ids[0]}-{ids[cols - 1]}" if ids[:cols] == list(range(ids[0], ids[0] + cols)) \
                    else ",".join(map(str, ids[:cols]))
                ax.set_xlabel(f"{col_label} {span}, {wrap} per row, left to right")
        ax.xaxis.tick_top()
        _bare(ax)
        stage = layers[idx[0]].stage
        bar = add_colorbar(fig, im, fig.add_subplot(grid[k, 1]),
                           f"stage {stage}:\n|W|" if len(groups) > 1 else cbar_label)
        if len(groups) > 1:                 # beside the bar, so short rows never overlap their labels
            bar.ax.set_ylabel(bar.ax.get_ylabel(), rotation=0, ha="left", va="center")
    fig.suptitle(title)
    return fig, _save(fig, directory, stem, formats)


def _column_scales(rows, shared, signed):
    """Per map column: ``(vmin, vmax, normalise)``: a fixed scale when ``shared`` gives one, else
    each map divided by its own largest magnitude (kernels in [-1, 1], amplitudes in [0, 1])."""
    nc = max(len(r) for r in rows)
    out = []
    for j in range(nc):
        if shared is not None and j < len(shared) and shared[j] is not None:
            out.append((shared[j][0], shared[j][1], False))
            continue
        col = [np.asarray(r[j]) for r in rows if j < len(r)]
        neg = signed[j] if signed is not None else any(float(np.nanmin(a)) < 0 for a in col)
        out.append((-1.0 if neg else 0.0, 1.0, True))
    return out


def _bar_groups(nc: int, keys) -> list[list[int]]:
    """Runs of neighbouring columns with the same colour map, scale and label: one colour bar each."""
    groups: list[list[int]] = []
    for j in range(nc):
        if groups and keys[groups[-1][-1]] == keys[j]:
            groups[-1].append(j)
        else:
            groups.append([j])
    return groups


def _tick(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-2 or v == 0 else f"{v:.0e}"


def plot_rows(rows: Sequence[Sequence[np.ndarray]], row_labels, col_labels, directory, stem: str, *, title: str,
              cmaps, cbar_labels, shared=None, signed=None, formats=FORMATS):
    """A grid of maps (one row per layer / stage, square pixels) with labelled colour bars in their
    own axes under the columns (neighbouring columns on the same colour map and scale share one
    bar). A column with a ``shared`` (vmin, vmax) scale is drawn on it; any other column shows each
    map divided by its own largest magnitude (the bar reads ``/ max``), so layers of very different
    magnitudes stay visible. ``cbar_labels`` names the quantity of every column (or one for all).
    ``fig.spectrascope_bars`` lists (columns, colour bar)."""
    from spectrascope.report.style import add_colorbar
    nr, nc = len(rows), max(len(r) for r in rows)
    labels = list(cbar_labels) if len(cbar_labels) == nc else [cbar_labels[0]] * nc
    scales = _column_scales(rows, shared, signed)
    texts = [lab if not norm else (f"{lab} / max|{lab}|" if lo < 0 else f"{lab} / max")
             for lab, (lo, hi, norm) in zip(labels, scales)]
    keys = [(cmaps[j % len(cmaps)], scales[j][:2], texts[j]) for j in range(nc)]
    cell = 0.8
    fig = new_figure(cell * nc + 1.0, cell * nr + 1.3)
    grid = fig.add_gridspec(nr + 1, nc, height_ratios=[1.0] * nr + [0.07])
    fig.spectrascope_bars = []
    shown = {}
    for j in range(nc):
        lo, hi, norm = scales[j]
        for i, r in enumerate(rows):
            ax = fig.add_subplot(grid[i, j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r):
                ax.axis("off")
                continue
            a = np.asarray(r[j], dtype=float)
            if norm:
                a = a / max(float(np.nanmax(np.abs(a))), 1e-30)
            shown[j] = ax.imshow(a, cmap=cmaps[j % len(cmaps)], interpolation="nearest", vmin=lo, vmax=hi,
                                 aspect="equal")
            if i == 0:
                ax.set_title(col_labels[j])
            if j == 0:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center")
    for cols in _bar_groups(nc, keys):
        if cols[0] not in shown:
            continue
        lo, hi, _ = scales[cols[0]]
        cax = fig.add_subplot(grid[nr, cols[0]:cols[-1] + 1])
        bar = add_colorbar(fig, shown[cols[0]], cax, texts[cols[0]], orientation="horizontal")
        ticks = [lo, (lo + hi) / 2, hi] if len(cols) > 1 else [lo, hi]
        bar.set_ticks(ticks, labels=[_tick(t) for t in ticks])
        fig.spectrascope_bars.append((cols, bar))
    fig.suptitle(title)
    return fig, _save(fig, directory, stem, formats)


def plot_routing(stats: dict, directory, stem: str, *, title: str, cmap: str = DEFAULT_CMAP, formats=FORMATS):
    """Share of (image, channel) pairs whose top basis is each basis, one row per layer."""
    names = list(stats)
    share = np.stack([np.asarray(stats[n]["argmax_share"], dtype=float) for n in names])
    fig = _frame(0.9 * share.shape[1] + 1.6, 0.3 * len(names) + 0.3, title, bottom=0.45)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(share, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(names)), names, fontsize=6)
    ax.set_xticks(range(share.shape[1]), [f"basis {f}" for f in range(share.shape[1])], fontsize=6)
    for i in range(share.shape[0]):
        for j in range(share.shape[1]):
            ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=5,
                    color="white" if share[i, j] < 0.5 else "black")
    bar = fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03)
    bar.set_label("share of (image, channel) pairs with this top basis", fontsize=5)
    bar.ax.tick_params(labelsize=5)
    return fig, _save(fig, directory, stem, formats)


# ---------------------------------------------------------------------------- the figures of a result
#: channels of the global filters shown without --channels
GLOBAL_COLUMNS = 24


def _layers(result, kind_pred) -> list:
    from types import SimpleNamespace
    return [SimpleNamespace(**lay) for lay in result.layers if kind_pred(lay["kind"])]


def _scale_note(layers) -> str:
    return "one colour scale per stage" if len({lay.stage for lay in layers}) > 1 else "one colour scale"


def _banks(result, folder, formats, cmap: str, note: str) -> list[str]:
    arrays = result.filters
    files = []
    name = paper_name(result.model)
    dynamic = _layers(result, lambda k: k == "dynamic-basis")
    static = _layers(result, lambda k: k != "dynamic-basis")
    if dynamic:
        amps = [arrays[f"amplitude/{b.name}"] for b in dynamic]
        files += plot_filter_grid(dynamic, amps, max(a.shape[0] for a in amps), folder, "basis_filters",
                                  title=f"{name}: dynamic filter bases |W| (DC centred, {_scale_note(dynamic)}){note}",
                                  cmap=cmap, col_label="basis", formats=formats)[1]
    if static:
        ch = result.channels
        amps = [arrays[f"amplitude/{b.name}"][list(ch)] if ch else arrays[f"amplitude/{b.name}"] for b in static]
        files += plot_filter_grid(static, amps, len(ch) if ch else GLOBAL_COLUMNS, folder, "global_filters",
                                  title=f"{name}: global filters |W| (DC centred, {_scale_note(static)}){note}",
                                  cmap=cmap, col_label="ch", formats=formats, col_ids=list(ch) if ch else None)[1]
    return files


def _routing(result, folder, formats, cmap: str, note: str) -> list[str]:
    stats = {k: dict(v, mean=result.filters.get(f"routing_mean/{k}")) for k, v in result.routing.items()}
    n = max((v["images"] for v in result.routing.values()), default=0)
    return plot_routing(stats, folder, "routing", cmap=cmap,
                        title=f"{paper_name(result.model)}: which basis the channels use over {n} images{note}",
                        formats=formats)[1]


def _effective(result, folder, formats, cmap: str, note: str) -> list[str]:
    eff = result.effective
    names, chs = eff["layers"], eff["channels"]
    files = []
    for i, image in enumerate(progress_iter(eff["images"], f"{result.model} effective filters", unit="figure")):
        rows = [[result.filters[f"effective_amplitude/{k}"][i, c] for c in range(len(chs))] for k in names]
        files += plot_rows(rows, names, [f"ch {c}" for c in chs], folder, f"effective_{i:02d}_{Path(image).stem}",
                           title=f"{paper_name(result.model)}: effective filters of {image} (DC centred,\neach map "
                                 f"scaled by its largest value){note}", cmaps=[cmap],
                           cbar_labels=["|W|"], formats=formats)[1]
    return files


def _aff(result, folder, formats, cmap: str, note: str) -> list[str]:
    from spectrascope.ops import filters as fl
    import torch
    cols = ["mean\n|M|", "mean\nkernel", "kernel\nch 0", "kernel\nch 1", "kernel\nch 2"]
    bars = ["|M|", "k", "k", "k", "k"]
    files = []
    for i, image in enumerate(result.aff_images or []):
        rows = []
        for r in result.aff:
            mask = torch.from_numpy(np.asarray(result.filters[f"aff_mask/{r['name']}"][i]))
            amp = fl.filter_amplitude(mask, width=r["grid"][1])
            ker = fl.centered_kernel(torch.from_numpy(np.asarray(result.filters[f"aff_kernel/{r['name']}"][i])))
            rows.append([amp.mean(0).numpy(), ker.mean(0).numpy()] + [ker[c].numpy() for c in range(3)])
        files += plot_rows(rows, [r["name"] for r in result.aff], cols, folder, f"aff_masks_{i:02d}_{Path(image).stem}",
                           title=f"{paper_name(result.model)}: adaptive masks (DC centred) and equivalent kernels, "
                                 f"{image}\n(each map scaled by its largest magnitude){note}",
                           cmaps=[cmap, "RdBu_r", "RdBu_r", "RdBu_r", "RdBu_r"], signed=[False, True, True, True, True],
                           cbar_labels=bars, formats=formats)[1]
    return files


def _spf(result, folder, formats, cmap: str) -> list[str]:
    lams = sorted({round(r["lambda"], 6) for r in result.spf})
    stages = sorted({r["stage"] for r in result.spf})
    by = {(r["stage"], round(r["lambda"], 6)): r for r in result.spf}

    def arr(kind, r):
        return result.filters[f"spf_{kind}/stage{r['stage']}_lambda{r['lambda']:.1f}"]
    heads = [f"\u03bb = {lam:.1f}" for lam in lams]
    rows = [[arr("mask", by[(s, lam)]) for lam in lams if (s, lam) in by] for s in stages]
    files = plot_rows(rows, [f"stage {s} (r={by[(s, lams[0])]['radius']})" for s in stages], heads, folder,
                      "spf_masks", title=f"{paper_name(result.model)}: SPF masks (DC centred)", cmaps=[cmap],
                      cbar_labels=["mask value"], shared=[(0, 1)] * len(lams), formats=formats)[1]
    rows = [[arr("kernel", by[(s, lam)]) for lam in lams if (s, lam) in by] for s in stages]
    files += plot_rows(rows, [f"stage {s}" for s in stages], heads, folder, "spf_kernels",
                       title=f"{paper_name(result.model)}: SPF equivalent spatial kernels (centred,\neach scaled by its "
                             "largest magnitude)", cmaps=["RdBu_r"], cbar_labels=["k"], formats=formats)[1]
    return files


def draw(result, folder, style) -> list[str]:
    """Every figure of a ``filters`` result (``analyses.filters.FiltersResult``) from its data and
    arrays alone: bases / global filters, routing, effective filters, AFF masks, SPF masks."""
    cmap = style.get("cmap") or result.colour_map or DEFAULT_CMAP
    note = "\n(random weights: no checkpoint given)" if result.random_weights else ""
    fmts = style.formats
    files = _banks(result, folder, fmts, cmap, note) if result.layers else []
    if result.routing:
        files += _routing(result, folder, fmts, cmap, note)
    if result.effective:
        files += _effective(result, folder, fmts, cmap, note)
    if result.aff:
        files += _aff(result, folder, fmts, cmap, note)
    if result.spf:
        files += _spf(result, folder, fmts, cmap)
    return files
