"""Accuracy-vs-cost bubble charts from the papers' tables (``spanet-fig5``, ``affnet-fig1``).

Accuracies are the papers' published top-1; parameters and FLOPs are our counts where the
model is in the zoo (or timm, when installed), else the paper's (marked). ``--add
NAME=results.json`` adds the user's own measured models: the JSON gives ``top1`` and either
``model`` (a zoo / timm name, counted here) or ``params`` and ``flops`` (plain counts).
"""
from __future__ import annotations

from pathlib import Path

from spectrascope.errors import FigureError

__all__ = ["CHARTS", "CHART_NAMES", "chart_name", "chart_points", "parse_add", "charts"]

#: chart -> (table recipe, x axes, bubble size, families kept or None for all, title)
CHARTS = {
    "spanet-fig5": ("spanet-table2", ("flops", "params"), "params", None,
                    "SPANet Fig. 5: ImageNet-1K top-1 vs FLOPs and vs params (bubble = params)"),
    "affnet-fig1": ("affnet-table2", ("params",), "flops", ("MViT", "MViTv2", "EdgeNext", "AFFNet"),
                    "AFFNet Fig. 1: ImageNet-1K top-1 vs params (bubble = FLOPs) of lightweight models"),
}


def _family(label: str) -> str:
    base = label.split("-")[0].split(" ")[0]
    return {"RSB": "ResNet"}.get(base, base)


#: plausible ranges of an added point: top-1 (%), parameters, FLOPs per image, input side (px)
ADD_RANGES = {"top1": (0.0, 100.0), "params": (1, 10 ** 13), "flops": (1, 10 ** 16), "img_size": (1, 8192)}


def _added_point(name: str, p: Path) -> dict:
    """One ``--add NAME=results.json`` document checked: ``top1`` a percentage, ``params``/``flops``
    positive integers of a plausible size, or ``model`` a model name (counted here)."""
    from spectrascope.engine.flops import count_flops
    from spectrascope.io.schema import InvalidValue, integer, number, read_json_doc, text
    doc = read_json_doc(p, what="results JSON file", option=f"--add {name}")
    try:
        if not isinstance(doc, dict):
            raise InvalidValue("", f"holds a {type(doc).__name__}, not an object with 'top1'")
        if "top1" not in doc:
            raise InvalidValue("", "has no 'top1' (the top-1 accuracy in percent)")
        top1 = number(doc["top1"], "top1", *ADD_RANGES["top1"])
        if "params" in doc and "flops" in doc:
            params = integer(doc["params"], "params", *ADD_RANGES["params"])
            flops = integer(doc["flops"], "flops", *ADD_RANGES["flops"])
            source = "given"
        elif doc.get("model") is not None:
            model = text(doc["model"], "model")
            size = doc.get("img_size")
            if size is not None:
                sides = size if isinstance(size, list) else [size]
                if len(sides) not in (1, 2):
                    raise InvalidValue("img_size", "is not S or [H, W]")
                sides = [integer(v, "img_size", *ADD_RANGES["img_size"]) for v in sides]
                size = sides[0] if len(sides) == 1 else tuple(sides)
            c = count_flops(model, size)
            params, flops, source = c.params, c.flops, "counted"
        else:
            raise InvalidValue("", "needs 'model' or both 'params' and 'flops'")
    except InvalidValue as exc:
        raise FigureError(f"{p}: {exc}".replace(": : ", ": ").rstrip(": "), option=f"--add {name}") from None
    return {"label": name, "family": "added", "top1": top1, "params_m": params / 1e6, "flops_g": flops / 1e9,
            "source": source}


def parse_add(items) -> list[dict]:
    """``NAME=results.json`` items -> points (counted when the JSON names a model); every value is
    checked (``_added_point``): finite, typed and plausible."""
    points = []
    for item in items or ():
        name, sep, path = str(item).partition("=")
        name = name.strip()
        if not sep or not name:
            raise FigureError(f"{item!r}: give NAME=results.json", option="--add")
        if len(name) > 60 or not name.isprintable():
            raise FigureError(f"{name[:60]!r}: a label is at most 60 printable characters", option="--add")
        p = Path(path.strip())
        if not p.is_file():
            raise FigureError(f"{p} not found", option=f"--add {name}")
        points.append(_added_point(name, p))
    return points


def chart_points(chart: str, added=(), use_timm: bool | None = None) -> list[dict]:
    """One point per table row with a published top-1 (families filtered as in the paper's figure);
    rows counted neither in the zoo nor with timm keep the paper's params/FLOPs (``source`` "paper")."""
    from spectrascope.report.paper_tables import table_rows
    table, _, _, keep, _ = CHARTS[chart]
    points = []
    for r in table_rows(table, use_timm=use_timm):
        fam = _family(r["model"])
        if keep and fam not in keep or r["paper top-1"] == "":
            continue
        counted = r["_flops"] is not None
        points.append({"label": r["model"], "family": fam, "top1": float(r["paper top-1"]),
                       "params_m": r["_params"] / 1e6 if counted else float(r["paper params (M)"]),
                       "flops_g": r["_flops"] / 1e9 if counted else float(r["paper FLOPs (G)"]),
                       "source": "counted" if counted else "paper"})
    return points + list(added)


#: the names the charts print for the tables' short family names
CHART_NAMES = {"MViT": "MobileViT", "MViTv2": "MobileViTv2"}
#: family colours: distinct hues (tab10, then black and two dark hues), with a marker per family too
FAMILY_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf", "#000000", "#6b3d9a", "#b15928")
BUBBLE_MAX = 420          # marker area (pt^2) of the largest bubble


def chart_name(label: str) -> str:
    """A table label with the chart's family spelling (``MViT-XS`` -> ``MobileViT-XS``)."""
    head, sep, rest = label.partition("-")
    return CHART_NAMES.get(head, head) + sep + rest


def _variant(p: dict) -> str:
    """The variant part of a point's label (``ConvNeXt-T`` -> ``T``; ``AFFNet`` -> ``AFFNet``)."""
    label = p["label"]
    fam = p["family"]
    for prefix in (fam + "-", "RSB-" + fam + "-"):
        if label.startswith(prefix):
            return label[len(prefix):]
    return label


def _fit_bubbles(fig, ax, sizes_pt2: list[float]) -> None:
    """Widen the data limits until every bubble (area in pt^2) lies inside the axes."""
    import numpy as np
    pts = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    radius_px = 1.25 * np.sqrt(np.asarray(sizes_pt2) / np.pi) * fig.dpi / 72 + 2   # squares, triangles reach further
    for _ in range(3):
        fig.draw_without_rendering()
        box = ax.get_window_extent()
        xy = ax.transData.transform(pts)
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        sx, sy = (x1 - x0) / box.width, (y1 - y0) / box.height
        ax.set_xlim(min(x0, float(((xy[:, 0] - radius_px) - box.x0).min() * sx + x0)),
                    max(x1, float(x1 - (box.x1 - (xy[:, 0] + radius_px)).min() * sx)))
        ax.set_ylim(min(y0, float(((xy[:, 1] - radius_px) - box.y0).min() * sy + y0)),
                    max(y1, float(y1 - (box.y1 - (xy[:, 1] + radius_px)).min() * sy)))


def _draw(points: list[dict], axes: tuple, size_key: str, title: str):
    from spectrascope.report.style import COLUMN_WIDTH, MARKERS, PAGE_WIDTH, active_style, footnote, new_figure
    narrow = active_style().width == COLUMN_WIDTH            # a column: panels stacked, legend below
    points = [dict(p, label=chart_name(p["label"]), family=CHART_NAMES.get(p["family"], p["family"]))
              for p in points]                     # the charts' spelling; points.csv keeps the tables'

    fig = new_figure(COLUMN_WIDTH, 2.3 * len(axes) + 1.4) if narrow else \
        new_figure(PAGE_WIDTH if len(axes) > 1 else 4.6, 3.2)
    fams = list(dict.fromkeys(p["family"] for p in points))
    scale = max(p[f"{size_key}_m" if size_key == "params" else "flops_g"] for p in points) or 1.0
    fig.spectrascope_bubbles = []
    panels = fig.subplots(len(axes), 1, squeeze=False)[:, 0] if narrow else fig.subplots(1, len(axes), squeeze=False)[0]
    for ax, ax_key in zip(panels, axes):
        sizes = []
        for k, fam in enumerate(fams):
            sel = [p for p in points if p["family"] == fam]
            colour, marker = FAMILY_COLORS[k % len(FAMILY_COLORS)], MARKERS[k % len(MARKERS)]
            xs = [p["flops_g"] if ax_key == "flops" else p["params_m"] for p in sel]
            ss = [20 + BUBBLE_MAX * (p["params_m"] if size_key == "params" else p["flops_g"]) / scale for p in sel]
            for counted in (True, False):
                idx = [j for j, p in enumerate(sel) if (p["source"] != "paper") == counted]
                if idx:
                    ax.scatter([xs[j] for j in idx], [sel[j]["top1"] for j in idx], s=[ss[j] for j in idx],
                               alpha=0.55, color=colour, marker=marker,
                               label=fam if counted or len(idx) == len(sel) else None,
                               edgecolors="k" if counted else "none", linewidths=0.8 if counted else 0)
                    sizes += [ss[j] for j in idx]
            ax.plot(xs, [p["top1"] for p in sel], color=colour, lw=0.8, alpha=0.7)
            for x, p in zip(xs, sel):
                ax.annotate(_variant(p), (x, p["top1"]), xytext=(0, 0), textcoords="offset points", ha="center",
                            va="center", fontsize=6, color="0.1")
        ax.set_xlabel("FLOPs (G)" if ax_key == "flops" else "Parameters (M)")
        ax.set_ylabel("ImageNet-1K top-1 (%)")
        ax.grid(alpha=0.3)
        fig.spectrascope_bubbles.append((ax, sizes))
    handles, labels = panels[-1].get_legend_handles_labels()
    if narrow:
        legend = panels[-1].legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=3,
                                   frameon=False, borderaxespad=0.0, columnspacing=0.8, handletextpad=0.2)
    else:
        legend = panels[-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.03, 1.0), frameon=False,
                                   borderaxespad=0.0)
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    fig.suptitle(title)
    footnote(fig, "black edge: our count; no edge: the paper's numbers; bubble area: "
             + ("parameters" if size_key == "params" else "FLOPs") + "; labels: the variants")
    def refit():
        for ax, sizes in fig.spectrascope_bubbles:
            _fit_bubbles(fig, ax, sizes)
    fig.spectrascope_on_resize = [refit]
    refit()
    return fig


def _run_chart(chart: str):
    def run(ctx):
        from spectrascope.io.results import write_csv, write_json
        from spectrascope.report.paper_tables import option
        from spectrascope.report.style import save_figure
        _, axes, size_key, _, title = CHARTS[chart]
        points = chart_points(chart, parse_add(option(ctx, "add", ())))
        write_csv(ctx.output / "points.csv", points)
        write_json(ctx.output / "points.json", {"chart": chart, "points": points})
        save_figure(_draw(points, axes, size_key, title), ctx.output, chart.replace("-", "_"), dpi=200)
        return {"points": len(points), "counted": sum(p["source"] != "paper" for p in points)}
    return run


def charts(make_spec) -> list:
    out = []
    for chart, (table, _, _, _, title) in CHARTS.items():
        spec = make_spec(name=chart, title=title, paper=f"from the {table} data", models=(), needs_weights=False,
                         options=("add",),
                         summary="Published top-1 with our counted params/FLOPs; --add NAME=results.json adds "
                                 "a measured model (JSON with top1 and model, or params and flops).")
        out.append((spec, _run_chart(chart)))
    return out
