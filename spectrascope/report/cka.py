"""The report of ``cka``: heatmap (PNG + PDF), matrix CSV, best-match table and a self-contained
report.html beside results.json, drawn from the result alone (``analyses.cka.CKAResult``).

Heatmap conventions: origin lower-left (row 0 = the shallowest tap of model A at the
bottom, as in torch-cka's and DFFormer's figures), a fixed 0-1 colour range so figures are
comparable (negative unbiased values are clipped to the bottom colour; NaN cells are grey),
dashed lines at stage boundaries, index ticks and stage names on the opposite axes.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from spectrascope.io.results import provenance, write_csv
from spectrascope.report.style import new_figure, paper_name, save_figure

__all__ = ["plot_heatmap", "best_matches", "matrix_rows", "render_html", "write_report_files", "draw",
           "default_title", "provenance_of", "FILES"]

#: files of a report directory
FILES = ("cka.png", "cka.pdf", "cka_matrix.csv", "best_match.csv", "results.json", "report.html")


def _random_sides(result) -> list[str]:
    return [_display_name(result, s) for s in ("a", "b") if (result.meta.get(f"model_{s}") or {}).get("random_weights")]


def _boundaries(stages: Sequence[int | None]) -> list[int]:
    """Indices i where the stage changes between tap i-1 and tap i."""
    return [i for i in range(1, len(stages)) if stages[i] is not None and stages[i - 1] is not None
            and stages[i] != stages[i - 1]]


def _stage_centres(stages: Sequence[int | None]) -> tuple[list[float], list[str]]:
    pos, lab = [], []
    i = 0
    while i < len(stages):
        j = i
        while j + 1 < len(stages) and stages[j + 1] == stages[i]:
            j += 1
        if stages[i] is not None:
            pos.append((i + j) / 2)
            lab.append(f"S{stages[i]}")
        i = j + 1
    return pos, lab


def _index_ticks(n: int) -> list[int]:
    step = 1 if n <= 12 else 5 if n <= 24 else 10 if n <= 150 else 25
    return list(range(0, n, step))


#: at most this many taps on a side are named on the axis (more get index ticks and stage names)
NAMED_TAPS = 16


def _display_name(result, side: str) -> str:
    info = result.meta.get(f"model_{side}") or {}
    return str(info.get("name") or side.upper())


def _figure_name(result, side: str) -> str:
    """The papers' name of a side's model, as the figures print it (tables keep the registry name)."""
    return paper_name(_display_name(result, side))


def _tap_ticks(ax, axis: str, labels: Sequence[str], stages) -> None:
    """Tap names on the axis when there are few (custom taps), else index ticks and the stage names on
    the opposite side."""
    n = len(labels)
    set_ticks = ax.set_xticks if axis == "x" else ax.set_yticks
    if n <= NAMED_TAPS:
        set_ticks(range(n), list(labels), **({"rotation": 90} if axis == "x" else {}))
        return
    set_ticks(_index_ticks(n))
    pos, lab = _stage_centres(stages)
    if pos:
        other = ax.secondary_xaxis("top") if axis == "x" else ax.secondary_yaxis("right")
        (other.set_xticks if axis == "x" else other.set_yticks)(pos, lab)
        other.tick_params(length=0)


def _heatmap_size(n_a: int, n_b: int) -> tuple[float, float]:
    """(width, height) in inches of a heatmap figure whose axes follow the matrix's aspect (rows x
    columns), the longer side 3.6-6 in, plus room for labels and the colour bar."""
    longest = min(6.0, max(3.6, 0.09 * max(n_a, n_b)))
    cell = longest / max(n_a, n_b)
    return n_b * cell + 1.9, n_a * cell + 1.5


def plot_heatmap(result, png: Path | None = None, pdf: Path | None = None, *, title: str | None = None,
                 cmap: str = "magma", ax=None, colorbar: bool = True):
    """Draw the CKA matrix (rows = model A, columns = model B, square cells, so a non-square matrix
    gives a non-square map that fills its figure); tap names on the axes when a side has at most
    ``NAMED_TAPS`` taps, index ticks and stage names otherwise; the colour bar in its own axes. Saves
    to ``png``/``pdf`` if given (in the active figure style). Returns the matplotlib figure."""
    import matplotlib

    m = result.matrix.double().numpy()
    n_a, n_b = m.shape
    own = ax is None
    if own:
        fig = new_figure(*_heatmap_size(n_a, n_b))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    cm = matplotlib.colormaps[cmap].with_extremes(bad="#9e9e9e")
    im = ax.imshow(np.ma.masked_invalid(m), origin="lower", cmap=cm, vmin=0.0, vmax=1.0, interpolation="nearest",
                   aspect="equal")
    ax.set_xlabel(f"Layers {_figure_name(result, 'b')}")
    ax.set_ylabel(f"Layers {_figure_name(result, 'a')}")
    _tap_ticks(ax, "x", result.labels_b, result.stages_b)
    _tap_ticks(ax, "y", result.labels_a, result.stages_a)
    for i in _boundaries(result.stages_a):
        ax.axhline(i - 0.5, color="white", lw=0.9, ls="--", alpha=0.8)
    for j in _boundaries(result.stages_b):
        ax.axvline(j - 0.5, color="white", lw=0.9, ls="--", alpha=0.8)
    if title is None:
        title = f"{_figure_name(result, 'a')} vs {_figure_name(result, 'b')}"
        rnd = [paper_name(n) for n in _random_sides(result)]
        if rnd:
            title += "\n(random weights: " + ", ".join(dict.fromkeys(rnd)) + ")"
    ax.set_title(title, fontsize=9)
    if colorbar:
        finite = m[np.isfinite(m)]
        extend = "min" if finite.size and finite.min() < 0 else "neither"
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, extend=extend, shrink=min(1.0, max(0.4, n_a / n_b)),
                     label=f"CKA ({result.estimator}{', torch-cka engine' if result.engine == 'torch-cka' else ''})")
    if own:
        for path in (png, pdf):
            if path is not None:
                save_figure(fig, Path(path).parent, Path(path).stem, formats=(Path(path).suffix[1:],), dpi=200)
    return fig


def best_matches(result) -> list[dict]:
    """For every tap of A its most similar tap of B, and for every tap of B its most similar
    tap of A (NaN cells ignored; an all-NaN line has no match)."""
    m = result.matrix.double().numpy()
    rows = []
    for side, labels, stages, other_labels, other_stages, mat in (
            ("a", result.labels_a, result.stages_a, result.labels_b, result.stages_b, m),
            ("b", result.labels_b, result.stages_b, result.labels_a, result.stages_a, m.T)):
        for i, label in enumerate(labels):
            line = mat[i]
            ok = np.isfinite(line)
            if ok.any():
                j = int(np.nanargmax(np.where(ok, line, -np.inf)))
                best, val, bst = other_labels[j], float(line[j]), other_stages[j]
            else:
                j, best, val, bst = None, None, float("nan"), None
            rows.append({"model": _display_name(result, side), "side": side, "index": i, "layer": label,
                         "stage": stages[i], "best_index": j, "best_match": best, "best_stage": bst, "cka": val})
    return rows


def matrix_rows(result) -> tuple[list[str], list[dict]]:
    """The matrix as CSV rows: first column the tap of A, then one column per tap of B."""
    head = ["layer_a \\ layer_b"] + list(result.labels_b)
    out = []
    for label, line in zip(result.labels_a, result.matrix.double().tolist()):
        row = {head[0]: label}
        row.update({b: ("nan" if v != v else repr(float(v))) for b, v in zip(result.labels_b, line)})
        out.append(row)
    return head, out


def _colour(v: float, cmap) -> tuple[str, str]:
    if v != v:
        return "#9e9e9e", "#000"
    r, g, b, _ = cmap(min(1.0, max(0.0, v)))
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}", ("#000" if lum > 0.5 else "#fff")


def render_html(result, png_bytes: bytes, best: list[dict], prov: dict, title: str) -> str:
    """A self-contained HTML page: heatmap (base64 PNG), summary, diagnostics, best-match
    table, the full matrix and the provenance."""
    import matplotlib
    cm = matplotlib.colormaps["magma"]
    e = html.escape
    rnd = _random_sides(result)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 5px;text-align:right}th{background:#f0f0f0}"
        ".warn{background:#fff3cd;border:1px solid #e0c060;padding:.6em}.m td{font-size:9px;padding:1px 2px}"
        "pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:11px}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if rnd:
        parts.append(f"<p class='warn'><b>Random weights</b> ({e(', '.join(dict.fromkeys(rnd)))}): no checkpoint "
                     "was given, so the similarities describe untrained networks.</p>")
    parts.append("<ul>" + "".join(f"<li>{e(k)}: {e(str(v))}</li>" for k, v in (
        ("rows (model A)", f"{_display_name(result, 'a')}: {len(result.labels_a)} taps"),
        ("columns (model B)", f"{_display_name(result, 'b')}: {len(result.labels_b)} taps"),
        ("estimator", f"{result.estimator} mini-batch linear CKA"),
        ("engine", result.engine),
        ("images", f"{result.examples} in {result.batches} batch(es)"
                   + (f"; {result.skipped_batches} batch(es) with {result.skipped_examples} image(s) skipped"
                      if result.skipped_batches else "")),
        ("batch size", result.meta.get("batch_size")),
    )) + "</ul>")
    if result.diagnostics:
        parts.append("<h2>Diagnostics</h2><ul>" + "".join(f"<li>{e(d)}</li>" for d in result.diagnostics) + "</ul>")
    b64 = base64.b64encode(png_bytes).decode("ascii")
    parts.append(f"<h2>Heatmap</h2><img alt='CKA heatmap' style='max-width:100%' src='data:image/png;base64,{b64}'>")
    parts.append("<h2>Best match per layer</h2><table><tr><th>model</th><th>#</th><th>layer</th><th>stage</th>"
                 "<th>best match</th><th>#</th><th>stage</th><th>CKA</th></tr>")
    for r in best:
        bg, fg = _colour(r["cka"], cm)
        parts.append(f"<tr><td>{e(r['model'])}</td><td>{r['index']}</td><td>{e(r['layer'])}</td>"
                     f"<td>{'' if r['stage'] is None else r['stage']}</td><td>{e(str(r['best_match']))}</td>"
                     f"<td>{'' if r['best_index'] is None else r['best_index']}</td>"
                     f"<td>{'' if r['best_stage'] is None else r['best_stage']}</td>"
                     f"<td style='background:{bg};color:{fg}'>{r['cka']:.4f}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Matrix</h2><p>Rows: taps of model A (top = shallowest here, unlike the heatmap); columns: "
                 "taps of model B; both in execution order.</p><div style='overflow-x:auto'><table class='m'><tr><th></th>"
                 + "".join(f"<th title='{e(b)}'>{j}</th>" for j, b in enumerate(result.labels_b)) + "</tr>")
    for i, (label, line) in enumerate(zip(result.labels_a, result.matrix.double().tolist())):
        cells = []
        for v in line:
            bg, fg = _colour(v, cm)
            cells.append(f"<td style='background:{bg};color:{fg}'>{'nan' if v != v else f'{v:.2f}'}</td>")
        parts.append(f"<tr><th title='{i}'>{e(label)}</th>{''.join(cells)}</tr>")
    parts.append("</table></div><p>Column index: " + ", ".join(f"{j} = {e(b)}" for j, b in
                                                                 enumerate(result.labels_b)) + "</p>")
    parts.append("<h2>Provenance</h2><pre>" + e(json.dumps(prov, indent=1, default=str)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def provenance_of(result) -> dict:
    """A provenance block for a result built by hand (library calls without a run)."""
    a, b = _display_name(result, "a"), _display_name(result, "b")
    meta_a, meta_b = result.meta.get("model_a") or {}, result.meta.get("model_b") or {}
    rnd = bool(meta_a.get("random_weights") or meta_b.get("random_weights"))
    return provenance(command="cka", model=f"{a} vs {b}", checkpoint_sha256=None,
                      images_sha256=result.meta.get("images_sha256"), device=result.meta.get("device"),
                      wall_time_s=result.meta.get("wall_time_s"), random_weights=rnd,
                      world_size=result.meta.get("world_size"),
                      extra={"checkpoint_sha256_a": meta_a.get("checkpoint_sha256"),
                             "checkpoint_sha256_b": meta_b.get("checkpoint_sha256")})


def default_title(result) -> str:
    return f"CKA: {_display_name(result, 'a')} vs {_display_name(result, 'b')}"


def write_report_files(result, folder) -> list[str]:
    """The report files beside results.json (see ``FILES``) in the existing (staging) ``folder``."""
    folder = Path(folder)
    title = result.title or default_title(result)
    best = best_matches(result)
    plot_heatmap(result, folder / "cka.png", folder / "cka.pdf")
    head, rows = matrix_rows(result)
    write_csv(folder / "cka_matrix.csv", rows, head)
    write_csv(folder / "best_match.csv", [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v)
                                           for k, v in r.items()} for r in best])
    (folder / "report.html").write_text(render_html(result, (folder / "cka.png").read_bytes(), best,
                                                    result.provenance, title))
    return ["cka.png", "cka.pdf", "cka_matrix.csv", "best_match.csv", "report.html"]


def draw(result, folder, style) -> list[str]:
    """The heatmap of ``result`` in ``style.formats`` (``plot``)."""
    fig = plot_heatmap(result)
    return [p.name for p in save_figure(fig, Path(folder), "cka", formats=style.formats, dpi=200)]
