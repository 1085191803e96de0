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
from spectrascope.report.style import new_figure, save_figure

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


def _mosaic(amps: Sequence, cols: int) -> np.ndarray:
    """Rows of maps tiled into one image with one-pixel NaN gaps (drawn blank)."""
    h = max(int(a.shape[-2]) for a in amps)
    w = max(int(a.shape[-1]) for a in amps)
    out = np.full((len(amps) * (h + 1) - 1, cols * (w + 1) - 1), np.nan, dtype=np.float32)
    for i, a in enumerate(amps):
        a = np.asarray(a, dtype=np.float32)
        for j in range(min(cols, a.shape[0])):
            out[i * (h + 1): i * (h + 1) + a.shape[-2], j * (w + 1): j * (w + 1) + a.shape[-1]] = a[j]
    return out


def _stages(layers) -> list[list[int]]:
    groups: dict = {}
    for i, layer in enumerate(layers):
        groups.setdefault(layer.stage, []).append(i)
    return list(groups.values())


def plot_filter_grid(layers, amps, columns: int, directory, stem: str, *, title: str, cmap: str = DEFAULT_CMAP,
                     col_label: str = "filter", cbar_label: str = AMPLITUDE_LABEL, formats=FORMATS):
    """Rows = layers (grouped by stage), columns = the first ``columns`` filters; one colour
    scale per stage with a labelled colour bar beside it (one image per stage, so large banks
    draw quickly). Returns (figure, files)."""
    import matplotlib
    cols = min(columns, max(a.shape[0] for a in amps))
    groups = _stages(layers)
    cell = 1.0 if cols <= 8 else 0.55
    fig = _frame(cell * cols + 0.5, cell * len(layers) + 0.06 * len(groups), title)
    grid = fig.add_gridspec(len(groups), 2, width_ratios=[cell * cols, 0.12],
                            height_ratios=[len(g) for g in groups])
    colour = matplotlib.colormaps[cmap].with_extremes(bad="white")
    for k, idx in enumerate(groups):
        tiles = [np.asarray(amps[i])[:cols] for i in idx]
        lo = min(float(t.min()) for t in tiles)
        hi = max(float(t.max()) for t in tiles)
        mosaic = _mosaic(tiles, cols)
        ax = fig.add_subplot(grid[k, 0])
        im = ax.imshow(mosaic, cmap=colour, vmin=lo, vmax=hi, interpolation="nearest", aspect="auto")
        th, tw = (mosaic.shape[0] + 1) / len(idx), (mosaic.shape[1] + 1) / cols
        ax.set_yticks([(r + 0.5) * th - 1 for r in range(len(idx))], [layers[i].name for i in idx], fontsize=6)
        ax.set_xticks([(c + 0.5) * tw - 1 for c in range(cols)], [f"{col_label} {c}" for c in range(cols)]
                      if k == 0 else [], fontsize=6)
        ax.xaxis.tick_top()
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        bar = fig.colorbar(im, cax=fig.add_subplot(grid[k, 1]))
        stage = layers[idx[0]].stage
        bar.set_label(f"stage {stage}: {cbar_label}" if len(groups) > 1 else cbar_label, fontsize=5)
        bar.ax.tick_params(labelsize=5)
    return fig, _save(fig, directory, stem, formats)


def plot_rows(rows: Sequence[Sequence[np.ndarray]], row_labels, col_labels, directory, stem: str, *, title: str,
              cmaps, cbar_labels, shared=None, formats=FORMATS):
    """A grid of maps (one row per layer / stage) with one labelled colour bar per map column."""
    nr, nc = len(rows), max(len(r) for r in rows)
    fig = _frame(1.5 * nc + 0.4 * nc, 1.5 * nr, title)
    axes = fig.subplots(nr, nc, squeeze=False)
    for i, r in enumerate(rows):
        for j in range(nc):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r):
                ax.axis("off")
                continue
            kw = {}
            if shared is not None and shared[j] is not None:
                kw = dict(vmin=shared[j][0], vmax=shared[j][1])
            im = ax.imshow(np.asarray(r[j]), cmap=cmaps[j % len(cmaps)], interpolation="nearest", **kw)
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            bar.set_label(cbar_labels[j % len(cbar_labels)], fontsize=5)
            bar.ax.tick_params(labelsize=5)
            if i == 0:
                ax.set_title(col_labels[j], fontsize=6)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=6, rotation=0, ha="right", va="center")
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


def _banks(result, folder, formats, cmap: str, note: str) -> list[str]:
    arrays = result.filters
    files = []
    dynamic = _layers(result, lambda k: k == "dynamic-basis")
    static = _layers(result, lambda k: k != "dynamic-basis")
    if dynamic:
        amps = [arrays[f"amplitude/{b.name}"] for b in dynamic]
        files += plot_filter_grid(dynamic, amps, max(a.shape[0] for a in amps), folder, "basis_filters",
                                  title=f"{result.model}: dynamic filter bases |W| (DC centred, one scale per "
                                        f"stage){note}", cmap=cmap, col_label="basis", formats=formats)[1]
    if static:
        ch = result.channels
        amps = [arrays[f"amplitude/{b.name}"][list(ch)] if ch else arrays[f"amplitude/{b.name}"] for b in static]
        files += plot_filter_grid(static, amps, len(ch) if ch else GLOBAL_COLUMNS, folder, "global_filters",
                                  title=f"{result.model}: global filters |W| (DC centred, one scale per stage){note}",
                                  cmap=cmap, col_label="ch", formats=formats)[1]
    return files


def _routing(result, folder, formats, cmap: str, note: str) -> list[str]:
    stats = {k: dict(v, mean=result.filters.get(f"routing_mean/{k}")) for k, v in result.routing.items()}
    n = max((v["images"] for v in result.routing.values()), default=0)
    return plot_routing(stats, folder, "routing", cmap=cmap,
                        title=f"{result.model}: which basis the channels use over {n} images{note}",
                        formats=formats)[1]


def _effective(result, folder, formats, cmap: str, note: str) -> list[str]:
    eff = result.effective
    names, chs = eff["layers"], eff["channels"]
    files = []
    for i, image in enumerate(progress_iter(eff["images"], f"{result.model} effective filters", unit="figure")):
        rows = [[result.filters[f"effective_amplitude/{k}"][i, c] for c in range(len(chs))] for k in names]
        files += plot_rows(rows, names, [f"ch {c}" for c in chs], folder, f"effective_{i:02d}_{Path(image).stem}",
                           title=f"{result.model}: effective filters of {image}{note}", cmaps=[cmap],
                           cbar_labels=[AMPLITUDE_LABEL], formats=formats)[1]
    return files


def _aff(result, folder, formats, cmap: str, note: str) -> list[str]:
    from spectrascope.ops import filters as fl
    import torch
    cols = ["|M| mean (DC centred)", "kernel mean", "kernel ch0", "kernel ch1", "kernel ch2"]
    files = []
    for i, image in enumerate(result.aff_images or []):
        rows = []
        for r in result.aff:
            mask = torch.from_numpy(np.asarray(result.filters[f"aff_mask/{r['name']}"][i]))
            amp = fl.filter_amplitude(mask, width=r["grid"][1])
            ker = fl.centered_kernel(torch.from_numpy(np.asarray(result.filters[f"aff_kernel/{r['name']}"][i])))
            rows.append([amp.mean(0).numpy(), ker.mean(0).numpy()] + [ker[c].numpy() for c in range(3)])
        files += plot_rows(rows, [r["name"] for r in result.aff], cols, folder, f"aff_masks_{i:02d}_{Path(image).stem}",
                           title=f"{result.model}: adaptive masks and equivalent kernels, {image}{note}",
                           cmaps=[cmap, "gray", "gray", "gray", "gray"],
                           cbar_labels=["amplitude |M|", "kernel weight"], formats=formats)[1]
    return files


def _spf(result, folder, formats, cmap: str) -> list[str]:
    lams = sorted({round(r["lambda"], 6) for r in result.spf})
    stages = sorted({r["stage"] for r in result.spf})
    by = {(r["stage"], round(r["lambda"], 6)): r for r in result.spf}

    def arr(kind, r):
        return result.filters[f"spf_{kind}/stage{r['stage']}_lambda{r['lambda']:.1f}"]
    heads = [f"lambda {lam:.1f}" for lam in lams]
    rows = [[arr("mask", by[(s, lam)]) for lam in lams if (s, lam) in by] for s in stages]
    files = plot_rows(rows, [f"stage {s} (r={by[(s, lams[0])]['radius']})" for s in stages], heads, folder,
                      "spf_masks", title=f"{result.model}: SPF masks (DC centred)", cmaps=[cmap],
                      cbar_labels=["mask value"], shared=[(0, 1)] * len(lams), formats=formats)[1]
    rows = [[arr("kernel", by[(s, lam)]) for lam in lams if (s, lam) in by] for s in stages]
    files += plot_rows(rows, [f"stage {s}" for s in stages], heads, folder, "spf_kernels",
                       title=f"{result.model}: SPF equivalent spatial kernels (centred)", cmaps=["gray"],
                       cbar_labels=["kernel weight"], formats=formats)[1]
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
