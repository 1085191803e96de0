"""Figures and tables of the frequency-robustness analyses, drawn from their results alone (no
model, no engine): Fourier heat maps (Yin et al. 2019, Fig. 1-3), error under band-limited noise
(Park & Kim 2022, Fig. 2), accuracy on low-/high-pass filtered inputs (Wang et al. 2020), the
Fourier sensitivity of input gradients, and errors under common corruptions with the Fourier
spectra of what each corruption adds (Yin et al. 2019, Fig. 4).

Maps are drawn as the papers draw them: centred on DC (``fx`` to the right, ``fy`` up), square
pixels, several models side by side on one colour scale with one labelled colour bar in its own
axes. Curves of several models share one axis, with the 95 % Wilson interval shaded, each model's
clean level dotted, the class bands of synthetic data shaded, and the legend outside the data.
Every figure is written as PNG and PDF (``Style.formats``).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.patches import Ellipse, Patch

from spectrascope.io.results import write_csv
from spectrascope.report.style import MARKERS, PAPER_RC, check_cmap, new_figure, paper_labels, save_figure

__all__ = ["checked_cmap", "COLORS", "write_heatmap_csv", "draw_heatmaps", "draw_curves", "write_rows",
           "draw_noise", "draw_filter", "draw_sensitivity", "draw_corruptions", "draw_corruption_spectra"]

#: one colour per model (colour-blind safe: Okabe & Ito)
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
BAND_COLOR = "#bbbbbb"


def _paper(fn):
    """Draw under the toolkit's rc settings (fonts and lines are set when artists are made)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with matplotlib.rc_context(PAPER_RC):
            return fn(*args, **kwargs)
    return call


def checked_cmap(name):
    """``name`` when matplotlib knows the colour map, else a one-line ``OptionError`` naming ``--cmap``."""
    return check_cmap(name, "--cmap")


def _name_of(m: dict) -> str:
    return str(m.get("model") or str(m.get("label") or "").split(" (")[0])


def _shown(m: dict, among=()) -> str:
    """A model's label as figures print it: the paper's name for the registry name it starts with
    (results keep the registry name), unless another model of ``among`` would print the same name."""
    label, name = str(m.get("label") or m.get("model") or ""), _name_of(m)
    names = list(dict.fromkeys([_name_of(x) for x in among] + [name]))
    shown = dict(zip(names, paper_labels(names)))[name]
    return shown + label[len(name):] if name and label.startswith(name) else label


def _formats(style) -> tuple[str, ...]:
    return tuple(getattr(style, "formats", None) or ("png", "pdf"))


def _cmap(style, default: str = "viridis") -> str:
    return (style.get("cmap") if style is not None else None) or default


def _save(fig, folder, stem: str, style) -> list[str]:
    return [p.name for p in save_figure(fig, folder, stem, _formats(style))]


def write_rows(folder, name: str, rows: list[dict]) -> list[str]:
    """Write a tidy CSV.

    Args:
        folder: the result folder.
        name: the file name (``noise.csv`` ...).
        rows: one dict per row, every row with the keys of the first.

    Returns:
        ``[name]``, or ``[]`` when there are no rows (nothing is written).
    """
    if not rows:
        return []
    write_csv(Path(folder) / name, rows, list(rows[0]))
    return [name]


def _num(v, digits: int = 6):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), digits)


# ---------------------------------------------------------------------------- heat maps


def write_heatmap_csv(result, folder) -> list[str]:
    """Write ``heatmap.csv``: one row per model and frequency.

    Args:
        result: a ``fourier-heatmap`` result (its maps loaded).
        folder: the result folder.

    Returns:
        ``["heatmap.csv"]``; the columns are ``model, fy, fx`` (signed indices, DC = 0),
        ``radius_cycles``, ``error, error_low, error_high`` (95 % Wilson interval), ``loss``, ``n``,
        ``errors``.
    """
    rows = []
    for k, m in enumerate(result.models):
        fy, fx = result.axes(k)
        H, W = m["input_size"]
        err, lo, hi = (result.model_map(k, key) for key in ("error", "error_low", "error_high"))
        loss, n = result.model_map(k, "loss"), result.model_map(k, "n")
        for i, y in enumerate(fy.tolist()):
            for j, x in enumerate(fx.tolist()):
                rows.append({"model": m["label"], "fy": int(y), "fx": int(x),
                             "radius_cycles": _num(math.hypot(y / H, x / W)), "error": _num(err[i, j]),
                             "error_low": _num(lo[i, j]), "error_high": _num(hi[i, j]), "loss": _num(loss[i, j]),
                             "n": int(n[i, j]), "errors": int(round(float(err[i, j]) * int(n[i, j])))})
    return write_rows(folder, "heatmap.csv", rows)


def _freq_ticks(ax, fy: np.ndarray, fx: np.ndarray) -> None:
    for values, setter in ((fx, ax.set_xticks), (fy, ax.set_yticks)):
        K = int(values.max())
        step = max(1, int(math.ceil(K / 2)))
        ticks = sorted({0, K, -K, *range(-step * (K // step), K + 1, step)})
        setter([t for t in ticks if abs(t) <= K])


def _band_rings(ax, bands, H: int, W: int, color: str = "white") -> None:
    for lo, hi in bands or ():
        for r in (lo, hi):
            ax.add_patch(Ellipse((0, 0), 2 * r * W, 2 * r * H, fill=False, ls=(0, (2, 2)), lw=0.5, color=color,
                                 alpha=0.8))


def _boxed(ax) -> None:
    """A map panel framed on all four sides (the toolkit's curves show two spines only)."""
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(True)


def _map_grid(n: int, width: float = 2.2, height: float = 2.75):
    fig = new_figure(width * n + 0.75, height)
    grid = fig.add_gridspec(1, n + 1, width_ratios=[1.0] * n + [0.05])
    axes = [fig.add_subplot(grid[0, j]) for j in range(n)]
    for ax in axes:
        _boxed(ax)
    return fig, axes, fig.add_subplot(grid[0, n])


def _draw_map_panels(result, key: str, label: str, stem: str, folder, style, title: str) -> list[str]:
    n = len(result.models)
    maps = [result.model_map(k, key) for k in range(n)]
    vmin = float(min(np.nanmin(a) for a in maps))
    vmax = float(max(np.nanmax(a) for a in maps))
    if vmax <= vmin:
        vmax = vmin + 1e-9
    fig, axes, cax = _map_grid(n)
    im = None
    for k, (ax, m, a) in enumerate(zip(axes, result.models, maps)):
        fy, fx = result.axes(k)
        ext = (fx[0] - 0.5, fx[-1] + 0.5, fy[0] - 0.5, fy[-1] + 0.5)
        im = ax.imshow(a, origin="lower", extent=ext, cmap=_cmap(style), vmin=vmin, vmax=vmax,
                       interpolation="nearest", aspect="equal")
        H, W = m["input_size"]
        _band_rings(ax, m.get("class_bands"), H, W)
        ax.set_xlim(ext[0], ext[1])
        ax.set_ylim(ext[2], ext[3])
        _freq_ticks(ax, fy, fx)
        ax.set_xlabel(r"$f_x$ (cycles per image width)")
        if k == 0:
            ax.set_ylabel(r"$f_y$ (cycles per image height)")
        c = m["clean"]
        ax.set_title(f"{_shown(m, result.models)}\nclean error {c['error']:.3f}, {H}x{W} px")
    bar = fig.colorbar(im, cax=cax)
    bar.set_label(label)
    if any(m.get("class_bands") for m in result.models):
        fig.legend(handles=[Patch(facecolor="none", edgecolor="0.3", ls="--", label="class bands (synthetic data)")],
                   loc="outside lower center", frameon=False)
    fig.suptitle(title)
    return _save(fig, folder, stem, style)


@_paper
def draw_heatmaps(result, folder, style) -> list[str]:
    """Draw ``heatmap`` (top-1 error) and ``heatmap_loss`` (mean cross-entropy).

    Args:
        result: a ``fourier-heatmap`` result.
        folder: where the figures go.
        style: formats and ``cmap``.

    Returns:
        The file names written (PNG and PDF of both): one panel per model, DC centred, square
        pixels, one colour scale and one labelled colour bar.
    """
    me = result.method
    sign = "random signs (seed %d)" % me["seed"] if me["sign"] == "random" else f"sign {me['sign']}"
    what = f"eps = {me['eps']:g}, {sign}, {result.images['count']} images"
    return (_draw_map_panels(result, "error", "top-1 error under the perturbation", "heatmap", folder, style,
                             f"Fourier heat map: top-1 error ({what})")
            + _draw_map_panels(result, "loss", "mean cross-entropy under the perturbation", "heatmap_loss", folder,
                               style, f"Fourier heat map: loss ({what})"))


# ---------------------------------------------------------------------------- curves


def _shade_bands(ax, bands) -> bool:
    for lo, hi in bands or ():
        ax.axvspan(lo, hi, color=BAND_COLOR, alpha=0.35, lw=0, zorder=0)
    return bool(bands)


def draw_curves(ax, series: Sequence[dict], *, clean_key: str | None = "clean") -> None:
    """Draw curves of several models on one axis.

    Args:
        ax: the axes.
        series: one dict per model: ``x``, ``y``, ``label``, optional ``low`` / ``high`` (the shaded
            interval) and ``clean`` (a level drawn dotted in the model's colour).
        clean_key: the key of the dotted level (None: none).
    """
    for k, s in enumerate(series):
        color, marker = COLORS[k % len(COLORS)], MARKERS[k % len(MARKERS)]
        x, y = np.asarray(s["x"], dtype=float), np.asarray(s["y"], dtype=float)
        if s.get("low") is not None:
            ax.fill_between(x, np.asarray(s["low"], dtype=float), np.asarray(s["high"], dtype=float), color=color,
                            alpha=0.18, lw=0)
        ax.plot(x, y, color=color, marker=marker, ms=2.5, lw=1.0, label=s["label"])
        if clean_key and s.get(clean_key) is not None:
            ax.axhline(s[clean_key], color=color, ls=":", lw=0.8)


def _legend_outside(fig, ax, bands: bool, clean: bool = True) -> None:
    """The legend to the right of ``ax``, outside the data (with the clean and class-band keys)."""
    handles, labels = ax.get_legend_handles_labels()
    if clean:
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], color="0.3", ls=":", lw=0.8))
        labels.append("clean images")
    if bands:
        handles.append(Patch(color=BAND_COLOR, alpha=0.35, lw=0))
        labels.append("class bands")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)


def _curve_figure(title: str, width: float = 4.6, height: float = 2.6):
    fig = new_figure(width, height)
    fig.suptitle(title)
    return fig


@_paper
def draw_noise(result, folder, style) -> list[str]:
    """Draw ``noise``: top-1 error against the centre frequency of the noise band.

    Args:
        result: a ``freq-noise`` result.
        folder: where the figure goes.
        style: formats.

    Returns:
        The file names written (one curve per model, class bands of synthetic data shaded).
    """
    me = result.method
    widths = sorted({round(h - lo, 4) for m in result.models for lo, h in zip(m["low"], m["high"])})
    width = f"width {widths[0]:.3g} c/px" if len(widths) == 1 else "rings"
    fig = _curve_figure(f"Band-limited {me['base']} noise ({me['shape']} rings, {width}, {me['norm_desc']}), "
                        f"{result.images['count']} images")
    ax = fig.add_subplot(1, 1, 1)
    bands = _shade_bands(ax, result.data.get("class_bands"))
    draw_curves(ax, [{"x": m["centres"], "y": m["error"], "low": m["error_low"], "high": m["error_high"],
                      "label": _shown(m, result.models), "clean": m["clean"]["error"]} for m in result.models])
    ax.set_xlabel("centre frequency of the noise band (cycles per pixel)")
    ax.set_ylabel("top-1 error")
    ax.set_xlim(0, max(max(m["centres"]) for m in result.models) * 1.02 + 1e-9)
    ax.set_ylim(bottom=0)
    _legend_outside(fig, ax, bands)
    return _save(fig, folder, "noise", style)


@_paper
def draw_filter(result, folder, style) -> list[str]:
    """Draw ``filter``: top-1 accuracy on low-pass and on high-pass filtered images against the radius.

    Args:
        result: a ``freq-filter`` result.
        folder: where the figure goes.
        style: formats.

    Returns:
        The file names written (two panels, one curve per model; ``inf`` is the dotted clean level).
    """
    me = result.method
    unit = "index units" if me["units"] == "index" else "cycles per pixel"
    fig = _curve_figure(f"Filtered inputs (circular masks, outside = {me['outside']:g}), "
                        f"{result.images['count']} images", width=6.6)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind in zip(axes, ("low", "high")):
        series = []
        for m in result.models:
            curve = m[kind]
            keep = [i for i, r in enumerate(curve["radius"]) if r is not None and math.isfinite(r)]
            acc = [1 - curve["error"][i] for i in keep]
            series.append({"x": [curve["radius"][i] for i in keep], "y": acc,
                           "low": [1 - curve["error_high"][i] for i in keep],
                           "high": [1 - curve["error_low"][i] for i in keep], "label": _shown(m, result.models),
                           "clean": 1 - m["clean"]["error"]})
        draw_curves(ax, series)
        ax.set_title(f"{kind}-pass: keeps {'d <= r' if kind == 'low' else 'd > r'}")
        ax.set_xlabel(f"radius r ({unit})")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("top-1 accuracy")
    _legend_outside(fig, axes[1], False)
    return _save(fig, folder, "filter", style)


@_paper
def draw_sensitivity(result, folder, style) -> list[str]:
    """Draw ``sensitivity`` (the normalised radial profiles of the input-gradient power) and
    ``sensitivity_maps`` (the mean power maps, DC centred, logarithmic, one colour scale).

    Args:
        result: a ``freq-sensitivity`` result.
        folder: where the figures go.
        style: formats and ``cmap``.

    Returns:
        The file names written.
    """
    fig = _curve_figure(f"Fourier sensitivity of the input gradient, {result.images['count']} images")
    ax = fig.add_subplot(1, 1, 1)
    bands = _shade_bands(ax, result.data.get("class_bands"))
    draw_curves(ax, [{"x": m["radius_cycles"], "y": m["profile"], "low": m.get("profile_low"),
                      "high": m.get("profile_high"), "label": _shown(m, result.models)} for m in result.models],
                clean_key=None)
    ax.set_xlabel("radial frequency (cycles per pixel of the shorter side)")
    ax.set_ylabel("share of the gradient's power")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    _legend_outside(fig, ax, bands, clean=False)
    files = _save(fig, folder, "sensitivity", style)
    maps = [np.asarray(result.maps[f"m{k}_power"]) for k in range(len(result.models))]
    if maps:
        files += _power_maps(result, maps, folder, style)
    return files


def _power_maps(result, maps, folder, style) -> list[str]:
    positive = np.concatenate([a[a > 0].ravel() for a in maps])
    vmin, vmax = (float(positive.min()), float(positive.max())) if positive.size else (1e-12, 1.0)
    fig, axes, cax = _map_grid(len(maps))
    im = None
    for ax, m, a in zip(axes, result.models, maps):
        H, W = a.shape
        ext = (-(W // 2) - 0.5, (W - 1) // 2 + 0.5, -(H // 2) - 0.5, (H - 1) // 2 + 0.5)
        im = ax.imshow(np.where(a > 0, a, vmin), origin="lower", extent=ext, cmap=_cmap(style, "magma"),
                       norm=LogNorm(vmin, max(vmax, vmin * 1.0001)), interpolation="nearest", aspect="equal")
        _band_rings(ax, m.get("class_bands"), H, W)
        ax.set_xlabel(r"$f_x$ (cycles per image width)")
        ax.set_title(_shown(m, result.models))
    axes[0].set_ylabel(r"$f_y$ (cycles per image height)")
    bar = fig.colorbar(im, cax=cax)
    bar.set_label(r"mean $|\mathrm{FFT}(\nabla_x \mathrm{loss})|^2$ (channel mean)")
    fig.suptitle(f"Input-gradient power spectra, DC centred, {result.images['count']} images")
    return _save(fig, folder, "sensitivity_maps", style)


# ---------------------------------------------------------------------------- corruptions


@_paper
def draw_corruptions(result, folder, style) -> list[str]:
    """Draw ``corruptions`` (top-1 error per corruption, mean over the severities, one bar per model,
    the clean error dotted) and ``corruption_severity`` (error against severity, one panel per
    corruption).

    Args:
        result: a ``corruptions`` result.
        folder: where the figures go.
        style: formats.

    Returns:
        The file names written.
    """
    names = result.corruptions
    fig = new_figure(max(4.6, 0.36 * len(names) + 1.8), 2.8)
    fig.suptitle(f"Common corruptions (severities {', '.join(map(str, result.severities))}), "
                 f"{result.images['count']} images")
    ax = fig.add_subplot(1, 1, 1)
    n = len(result.models)
    width = 0.8 / max(n, 1)
    x = np.arange(len(names))
    for k, m in enumerate(result.models):
        color = COLORS[k % len(COLORS)]
        ax.bar(x - 0.4 + width * (k + 0.5), [m["per_corruption"][c]["error"] for c in names], width, color=color,
               label=f"{_shown(m, result.models)} (mean {m['mean_error']:.3f})")
        ax.axhline(m["clean"]["error"], color=color, ls=":", lw=0.8)
    ax.set_xticks(x, [c.replace("_", " ") for c in names], rotation=60, ha="right")
    ax.set_ylabel("top-1 error (mean over severities)")
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.6, len(names) - 0.4)
    _legend_outside(fig, ax, False)
    return _save(fig, folder, "corruptions", style) + _severity_panels(result, folder, style)


def _severity_panels(result, folder, style) -> list[str]:
    names = result.corruptions
    cols = min(5, len(names))
    rows = int(math.ceil(len(names) / cols))
    fig = new_figure(1.45 * cols + 1.6, 1.25 * rows + 0.4)
    fig.suptitle("Top-1 error against corruption severity")
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    for j, c in enumerate(names):
        ax = axes.flat[j]
        draw_curves(ax, [{"x": result.severities, "y": m["per_corruption"][c]["by_severity"],
                          "label": _shown(m, result.models), "clean": m["clean"]["error"]} for m in result.models])
        ax.set_title(c.replace("_", " "), fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_xticks(result.severities)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("severity")
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 error")
    _legend_outside(fig, axes.flat[0], False)
    return _save(fig, folder, "corruption_severity", style)


@_paper
def draw_corruption_spectra(result, folder, style) -> list[str]:
    """Draw ``corruption_spectra``: per corruption the mean ``|FFT(corrupted - clean)|`` (unitary, DC
    centred) at the drawn severity on one logarithmic colour scale, beside the heat map given with
    ``--heatmap`` (when one was).

    Args:
        result: a ``corruptions`` result.
        folder: where the figure goes.
        style: formats and ``cmap``.

    Returns:
        The file names written (none when the result holds no spectra).
    """
    sev = result.spectrum_severity
    size = next(iter(result.spectra_sizes), None)
    if size is None:
        return []
    spectra = [np.asarray(result.maps[f"spectrum_{size}_{c}_s{sev}"]) for c in result.corruptions]
    heat = result.maps.get("heatmap_error")
    cols = min(5, len(spectra) + (heat is not None))
    total = len(spectra) + (heat is not None)
    rows = int(math.ceil(total / cols))
    bars = 1 + (heat is not None)
    fig = new_figure(1.5 * cols + 0.7 * bars, 1.55 * rows + 0.4)
    grid = fig.add_gridspec(rows, cols + bars, width_ratios=[1.0] * cols + [0.06] * bars)
    positive = np.concatenate([s[s > 0].ravel() for s in spectra])
    norm = LogNorm(float(positive.min()), float(positive.max())) if positive.size else Normalize(0, 1)
    panels = ([("heatmap", heat)] if heat is not None else []) + list(zip(result.corruptions, spectra))
    im_s = im_h = None
    for j, (name, arr) in enumerate(panels):
        ax = fig.add_subplot(grid[j // cols, j % cols])
        _boxed(ax)
        H, W = arr.shape
        ext = (-(W // 2) - 0.5, (W - 1) // 2 + 0.5, -(H // 2) - 0.5, (H - 1) // 2 + 0.5)
        if name == "heatmap":
            im_h = ax.imshow(arr, origin="lower", extent=ext, cmap="viridis", interpolation="nearest", aspect="equal")
            ax.set_title(f"heat map\n{_shown(result.heatmap)}", fontsize=6)
        else:
            im_s = ax.imshow(np.where(arr > 0, arr, norm.vmin), origin="lower", extent=ext,
                             cmap=_cmap(style, "magma"), norm=norm, interpolation="nearest", aspect="equal")
            ax.set_title(name.replace("_", " "), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(im_s, cax=fig.add_subplot(grid[:, cols]))
    bar.set_label(f"mean |FFT(corrupted - clean)|, severity {sev}")
    if im_h is not None:
        hb = fig.colorbar(im_h, cax=fig.add_subplot(grid[:, cols + 1]))
        hb.set_label("heat-map top-1 error")
    fig.suptitle(f"Fourier spectra of the corruptions ({size.replace('x', ' x ')} px, DC centred)")
    return _save(fig, folder, "corruption_spectra", style)
