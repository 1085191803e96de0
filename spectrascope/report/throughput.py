"""Figures of the throughput sweep (DFFormer Figs. 5-6): throughput and, on CUDA, peak memory
vs input resolution, one line per model."""
from __future__ import annotations

from typing import Sequence

from spectrascope.report.style import MARKERS, new_figure, paper_labels

__all__ = ["figures"]


def figures(rows: Sequence[dict], *, labels=None, title_suffix: str = "") -> dict:
    """Throughput vs resolution and (CUDA) peak memory vs resolution, one line per model (``labels``:
    model -> legend text; default: the papers' names, or the registry names where two would print
    alike), the legend beside the axes."""
    labels = labels or {}
    out = {}
    metrics = [("throughput", "throughput_img_s", "throughput (images / s)")]
    if any(r.get("peak_memory_mib") is not None for r in rows):
        metrics.append(("memory", "peak_memory_mib", "peak memory (MiB)"))
    names = list(dict.fromkeys(r["model"] for r in rows))
    shown = dict(zip(names, paper_labels(names)))
    for stem, key, ylabel in metrics:
        fig = new_figure(4.2, 3.2)
        ax = fig.add_subplot(1, 1, 1)
        for i, name in enumerate(names):
            pts = [(r["resolution"][0], r[key]) for r in rows if r["model"] == name and r.get(key) is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], label=labels.get(name) or shown[name])
        ax.set_xlabel("input resolution (px)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.split(' (')[0].capitalize()} vs resolution{title_suffix}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, borderaxespad=0.0)
        ax.grid(alpha=0.3)
        out[f"{stem}_vs_resolution"] = fig
    return out
