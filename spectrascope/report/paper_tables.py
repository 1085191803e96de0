"""The papers' measurement tables beside our counts (``spectrascope figure dfformer-table2`` ...).

The published numbers live in one data file per paper (``spectrascope/assets/papers/*.json``,
each row with its table); this module counts every row's model (zoo models on the meta
device, ``timm:`` rows when timm is installed), compares with the paper
(|ours - paper| <= max(0.05 G, 1.5 %) for FLOPs; parameters within half a unit of the printed
digit or 1.5 %), attaches the investigated explanation of every row that does not reproduce,
and writes the table as CSV, Markdown and LaTeX. ``--throughput`` adds measured throughput on
the chosen device and batch, ``--checkpoint MODEL=PATH`` with ``--data`` a measured top-1.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from types import SimpleNamespace

from spectrascope.engine.runner import progress_iter
from spectrascope.errors import FigureError

__all__ = ["PAPERS", "TABLES", "option", "load_paper", "table_spec", "table_rows", "table_notes", "COLUMNS",
           "flops_ok", "params_ok", "write_table", "run_table"]

PAPERS = ("dfformer", "spanet", "affnet")
#: recipe name -> (paper, table key)
TABLES = {
    "dfformer-table2": ("dfformer", "table2"), "dfformer-table4": ("dfformer", "table4"),
    "spanet-table2": ("spanet", "table2"), "spanet-table5": ("spanet", "table5"),
    **{f"affnet-table{n}": ("affnet", f"table{n}") for n in (2, 4, 5, 6, 7, 8, 10, 12, 13, 14)},
}
COLUMNS = ["model", "ours", "paper params (M)", "params (M)", "paper FLOPs (G)", "FLOPs (G)", "FFT nlogn (G)",
           "paper throughput", "throughput", "paper top-1", "top-1", "status", "note"]


@lru_cache(maxsize=None)
def _load(paper: str) -> str:
    if paper not in PAPERS:
        raise FigureError(f"no data file for paper {paper!r} (papers: {', '.join(PAPERS)})")
    return resources.files("spectrascope").joinpath("assets", "papers", f"{paper}.json").read_text()


def load_paper(paper: str) -> dict:
    """The transcribed tables of one paper (a fresh copy)."""
    return json.loads(_load(paper))


def table_spec(name: str) -> dict:
    paper, key = TABLES[name]
    doc = load_paper(paper)
    return dict(doc["tables"][key], paper=doc["paper"], convention=doc["flops_convention"], paper_key=paper)


def _decimals(x: float) -> int:
    text = repr(float(x))
    return 0 if text.endswith(".0") else len(text.split(".")[1])


def flops_ok(ours_g: float, paper_g: float) -> bool:
    return abs(ours_g - paper_g) <= max(0.05, 0.015 * paper_g) + 1e-9


def params_ok(ours_m: float, paper_m: float) -> bool:
    """Rounded or truncated to the paper's printed digits (AFFNet prints 5.569 M as 5.5), or within 1.5 %."""
    d = _decimals(paper_m)
    unit = 10 ** -d
    truncated = math.floor(ours_m / unit + 1e-9) * unit
    return (abs(ours_m - paper_m) <= max(0.5 * unit, 0.015 * paper_m) + 1e-9
            or abs(truncated - paper_m) < 0.5 * unit)


def _timm_ok() -> bool:
    from spectrascope.compat import timm_available
    return timm_available()


@lru_cache(maxsize=512)
def _count(model: str, size: tuple):
    """Counts are pure functions of (model, input size): a model in several tables is counted once."""
    from spectrascope.engine.flops import count_flops
    return count_flops(model, size, fft="nlogn")


def _row_size(spec: dict, row: dict) -> tuple:
    s = row.get("input")
    return (3, s, s) if s else tuple(spec["input_size"])


def _status(row: dict, count) -> str:
    if count is None:
        return "paper only" + (" (timm not installed)" if (row.get("model") or "").startswith("timm:") else "")
    good = flops_ok(count.flops / 1e9, row["flops_g"]) and params_ok(count.params / 1e6, row["params_m"])
    return "reproduces" if good else "differs"


def _auto_note(row: dict, count) -> str:
    d_f = count.flops / 1e9 - row["flops_g"]
    d_p = count.params / 1e6 - row["params_m"]
    return f"differs from the paper by {d_f:+.3f} G FLOPs and {d_p:+.2f} M parameters"


def _fmt(x, digits: int) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _one_row(spec: dict, row: dict, use_timm: bool, measured: dict, known: dict) -> dict:
    model = row.get("model")
    count = None
    size = _row_size(spec, row)
    if model and (model, size) in known:
        count = SimpleNamespace(**known[(model, size)])
    elif model and (not model.startswith("timm:") or use_timm):
        count = _count(model, size)
    status = _status(row, count)
    note = row.get("note", "")
    if status == "differs" and not note:
        note = _auto_note(row, count)
    m = measured.get(model, {})
    return {"model": row["label"], "ours": model or "", "paper params (M)": row["params_m"],
            "params (M)": _fmt(count.params / 1e6, 3) if count else "",
            "paper FLOPs (G)": row["flops_g"], "FLOPs (G)": _fmt(count.flops / 1e9, 3) if count else "",
            "FFT nlogn (G)": _fmt(count.flops_fft / 1e9, 3) if count else "",
            "paper throughput": row.get("throughput", ""), "throughput": _fmt(m.get("throughput"), 1),
            "paper top-1": row.get("top1", ""), "top-1": _fmt(m.get("top1"), 2), "status": status, "note": "",
            "_note": note,
            "_params": count.params if count else None, "_flops": count.flops if count else None,
            "_flops_fft": count.flops_fft if count else None, "_input": list(_row_size(spec, row))}


def table_rows(name: str, *, use_timm: bool | None = None, measured: dict | None = None,
               known: dict | None = None) -> list[dict]:
    """Every row of the table ``name``: the paper's numbers beside ours (plain integers in ``_params``,
    ``_flops``, ``_flops_fft``; the explanation of a row that differs in ``_note``, referenced as ``[k]``
    in ``note``). ``known`` maps (model, (C, H, W)) to already counted ``params``/``flops``/``flops_fft``."""
    spec = table_spec(name)
    use_timm = _timm_ok() if use_timm is None else use_timm
    rows = [_one_row(spec, row, use_timm, measured or {}, known or {})
            for row in progress_iter(spec["rows"], name, unit="row")]
    texts = list(dict.fromkeys(r["_note"] for r in rows if r["_note"]))
    for r in rows:
        if r["_note"]:
            r["note"] = f"[{texts.index(r['_note']) + 1}]"
    return rows


def table_notes(name: str, rows: list[dict], measured_with: str = "") -> list[str]:
    spec = table_spec(name)
    notes = [f"{spec['paper']}, {spec['cite']} (transcribed in spectrascope/assets/papers/{spec['paper_key']}.json).",
             f"Paper's FLOPs convention: {spec['convention']}.",
             "Ours: `spectrascope flops` (fvcore's conventions, one FLOP per multiply-accumulate, FFTs excluded; "
             "the FFT column is N*C*ceil(log2 N) per 2-D transform), batch of one, at the row's input size "
             f"(default {'x'.join(map(str, spec['input_size'][1:]))}).",
             "reproduces: |FLOPs - paper| <= max(0.05 G, 1.5 %) and parameters within half a unit of the printed "
             "digit or 1.5 %; paper only: a model outside our zoo and timm (or timm not installed)."]
    if spec.get("throughput"):
        notes.append(f"Paper throughput: {spec['throughput']}." + (f" Ours: {measured_with}." if measured_with else
                                                                    " Ours: run with --throughput."))
    texts = list(dict.fromkeys(r["_note"] for r in rows if r["_note"]))
    for k, text in enumerate(texts, 1):
        labels = ", ".join(r["model"] for r in rows if r["_note"] == text)
        notes.append(f"[{k}] {labels}: {text}")
    n_ok = sum(r["status"] == "reproduces" for r in rows)
    n_counted = sum(r["status"] in ("reproduces", "differs") for r in rows)
    notes.append(f"{n_ok} of {n_counted} counted rows reproduce.")
    return notes


def option(ctx, name: str, default=None):
    """A recipe option's value from the figure context (``default`` when not given)."""
    getter = getattr(ctx, "option", None)
    if callable(getter):
        return getter(name, default)
    value = (getattr(ctx, "options", None) or {}).get(name)
    return default if value is None or value == () else value


def _measure(ctx, rows: list[dict]) -> tuple[dict, str]:
    """Throughput (``--throughput``) and top-1 (``--checkpoint`` + ``--data``) of the rows' models."""
    measured: dict[str, dict] = {}
    how = ""
    models = [r["ours"] for r in rows if r["ours"] and r["status"] != "paper only"]
    if option(ctx, "throughput"):
        from spectrascope.engine.throughput import measure
        from spectrascope.engine.device import resolve_device
        from spectrascope.zoo.registry import create_model
        dev = resolve_device(ctx.device)
        for r in progress_iter(rows, "throughput", unit="row"):
            if r["ours"] in models and r["ours"] not in measured:
                model = create_model(r["ours"], img_size=tuple(r["_input"][1:]))
                got = measure(model, tuple(r["_input"][1:]), batch_size=ctx.batch_size, device=dev, warmup=3, iters=10)
                measured[r["ours"]] = {"throughput": got["throughput_img_s"]}
        how = f"{dev.type}, batch {ctx.batch_size}, 3 warm-up + 10 timed forwards, img/s"
    if ctx.data:
        from spectrascope.train.evaluate import evaluate
        for m in models:
            if ctx.checkpoint(m):
                res = evaluate(m, checkpoint=ctx.checkpoint(m), data=ctx.data, device=ctx.device,
                               batch_size=ctx.batch_size)
                measured.setdefault(m, {})["top1"] = res["top1"]
    return measured, how


def write_table(folder, name: str, rows: list[dict], notes: list[str]) -> list[str]:
    from spectrascope.report.tables import write_tables
    spec = table_spec(name)
    columns = [c for c in COLUMNS if c not in ("paper throughput", "throughput") or spec.get("throughput")
               or any(r["throughput"] for r in rows)]
    columns = [c for c in columns if c not in ("paper top-1", "top-1") or any(r["paper top-1"] != "" for r in rows)]
    return write_tables(folder, name.replace("-", "_"), rows, columns, title=spec["title"], notes=notes)


def run_table(name: str):
    def run(ctx):
        from spectrascope.io.results import write_json
        rows = table_rows(name)
        measured, how = _measure(ctx, rows) if (option(ctx, "throughput") or ctx.data) else ({}, "")
        if measured:
            rows = table_rows(name, measured=measured)
        notes = table_notes(name, rows, how)
        files = write_table(ctx.output, name, rows, notes)
        write_json(ctx.output / "rows.json", {"table": name, "rows": rows, "notes": notes})
        differs = [r["model"] for r in rows if r["status"] == "differs"]
        return {"rows": len(rows), "reproduce": sum(r["status"] == "reproduces" for r in rows),
                "differ": differs, "files": files}
    return run
