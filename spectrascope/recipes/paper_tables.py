"""The papers' measurement tables and bubble charts as recipes: ``FIGURES`` holds one
(FigureSpec, runner) pair per table of ``spectrascope.report.paper_tables`` and per chart of
``spectrascope.report.paper_charts``."""
from __future__ import annotations

from dataclasses import fields as dc_fields
from types import SimpleNamespace

from spectrascope.recipes.base import FigureSpec
from spectrascope.report import paper_charts, paper_tables

__all__ = ["FIGURES"]


def recipes(spec_cls) -> list[tuple[object, SimpleNamespace]]:
    known = {f.name for f in dc_fields(spec_cls)}

    def make_spec(**fields):
        return spec_cls(**{k: v for k, v in fields.items() if k in known})

    out = []
    for name in paper_tables.TABLES:
        spec = paper_tables.table_spec(name)
        zoo = tuple(dict.fromkeys(r["model"] for r in spec["rows"] if r.get("model") and ":" not in r["model"]))
        fs = make_spec(name=name, title=spec["title"], paper=f"{spec['paper']}, {spec['cite']}", models=zoo,
                       needs_weights=False, options=("throughput",),
                       summary="The paper's params/FLOPs (and throughput, top-1) beside ours, as CSV, Markdown "
                               "and LaTeX; --throughput measures throughput on --device at --batch-size; "
                               "--checkpoint MODEL=PATH with --data measures top-1.")
        out.append((fs, SimpleNamespace(FIGURE=fs, run=paper_tables.run_table(name))))
    out += [(fs, SimpleNamespace(FIGURE=fs, run=run)) for fs, run in paper_charts.charts(make_spec)]
    return out


FIGURES = recipes(FigureSpec)
