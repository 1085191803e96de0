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

from spectrascope.report.style import new_figure, save_figure

__all__ = ["DPI", "FORMATS", "AMPLITUDE_LABEL", "DEFAULT_CMAP", "plot_filter_grid", "plot_rows", "plot_routing"]

DPI = 200
FORMATS = ("png", "pdf")
DEFAULT_CMAP = "viridis"
AMPLITUDE_LABEL = "amplitude |W| (DC centred)"
_LINE_IN = 0.17          # inches per title line
_HEADER_IN = 0.22        # inches for the column headers under the title


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


def _save(fig, directory, stem: str) -> list[str]:
    return [p.name for p in save_figure(fig, Path(directory), stem, formats=FORMATS, dpi=DPI)]


def _stage_limits(layers, amps, cols: int) -> dict:
    lim: dict = {}
    for layer, a in zip(layers, amps):
        lo, hi = lim.get(layer.stage, (float("inf"), -float("inf")))
        a = a[:cols]
        lim[layer.stage] = (min(lo, float(a.min())), max(hi, float(a.max())))
    return lim


def plot_filter_grid(layers, amps, columns: int, directory, stem: str, *, title: str, cmap: str = DEFAULT_CMAP,
                     col_label: str = "filter", cbar_label: str = AMPLITUDE_LABEL):
    """Rows = layers (grouped by stage), columns = the first ``columns`` filters; one colour
    scale per stage with a labelled colour bar at the stage's last row. Returns (figure, files)."""
    cols = min(columns, max(a.shape[0] for a in amps))
    rows = len(layers)
    lim = _stage_limits(layers, amps, cols)
    cell = 1.0 if cols <= 8 else 0.55
    fig = _frame(cell * cols + 0.5, cell * rows, title)
    axes = fig.subplots(rows, cols + 1, squeeze=False, gridspec_kw={"width_ratios": [1] * cols + [0.12]})
    last_of_stage = {layer.stage: i for i, layer in enumerate(layers)}
    for i, (layer, a) in enumerate(zip(layers, amps)):
        lo, hi = lim[layer.stage]
        im = None
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < a.shape[0]:
                im = ax.imshow(np.asarray(a[j]), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0:
                ax.set_title(f"{col_label} {j}", fontsize=6)
        axes[i, 0].set_ylabel(layer.name, fontsize=6, rotation=0, ha="right", va="center")
        cax = axes[i, cols]
        if last_of_stage[layer.stage] == i and im is not None:
            bar = fig.colorbar(im, cax=cax)
            bar.set_label(f"stage {layer.stage}: {cbar_label}" if len(lim) > 1 else cbar_label, fontsize=5)
            cax.tick_params(labelsize=5)
        else:
            cax.axis("off")
    return fig, _save(fig, directory, stem)


def plot_rows(rows: Sequence[Sequence[np.ndarray]], row_labels, col_labels, directory, stem: str, *, title: str,
              cmaps, cbar_labels, shared=None):
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
    return fig, _save(fig, directory, stem)


def plot_routing(stats: dict, directory, stem: str, *, title: str, cmap: str = DEFAULT_CMAP):
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
    return fig, _save(fig, directory, stem)
