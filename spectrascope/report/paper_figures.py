"""The committed, weight-independent outputs under ``figures/`` (``make figures``).

``figures/tables/``: every paper table's params/FLOPs columns beside the paper's (CSV,
Markdown, LaTeX); ``figures/flops/``: the FLOPs of every zoo model at its default input and the
breakdowns (by stage and by operator kind, FFT term included) of the main models;
``figures/index.md``: the index page; ``figures/index.json``: what the files were made from
(timm version) and the counts of the rows counted with timm (``figures/tables/timm_counts.json``),
so a test regenerates everything from fresh zoo counts plus those recorded timm counts (and
re-counts a sample of the timm rows) and fails when anything is stale.

Run: ``python -m spectrascope.report.paper_figures [--output figures]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["MAIN_MODELS", "generate", "render", "timm_counts", "parse_known"]

#: the models whose breakdowns are committed (one per family and paper)
MAIN_MODELS = ("dfformer_s18", "cdfformer_s18", "gfformer_s18", "dfformer_s18_afno", "caformer_s18", "gfnet_h_s",
               "spanet_s", "poolformer_s24", "affnet", "affnet_et")


def _timm_version() -> str | None:
    from spectrascope.compat import timm_available
    if not timm_available():
        return None
    from spectrascope.compat import import_timm
    return import_timm().__version__


def timm_counts(use_timm: bool) -> dict:
    """(model, input size) -> counts for every ``timm:`` row of every table (empty without timm)."""
    from spectrascope.report.paper_tables import TABLES, _count, _row_size, table_spec
    out = {}
    if not use_timm:
        return out
    for name in TABLES:
        spec = table_spec(name)
        for row in spec["rows"]:
            m = row.get("model") or ""
            if m.startswith("timm:"):
                size = _row_size(spec, row)
                if (m, size) not in out:
                    c = _count(m, size)
                    out[(m, size)] = {"params": c.params, "flops": c.flops, "flops_fft": c.flops_fft}
    return out


def _tables(use_timm: bool, known: dict) -> dict[str, str]:
    from spectrascope.report.paper_tables import TABLES, table_notes, table_rows
    from spectrascope.report.tables import to_csv, to_latex, to_markdown
    from spectrascope.report.paper_tables import table_spec
    files, summary = {}, []
    cols = ["model", "ours", "paper params (M)", "params (M)", "paper FLOPs (G)", "FLOPs (G)", "FFT nlogn (G)",
            "status", "note"]
    for name in TABLES:
        rows = table_rows(name, use_timm=False, known=known)
        notes = table_notes(name, rows)
        notes = [n for n in notes if not n.startswith("Paper throughput")]
        title = table_spec(name)["title"]
        stem = f"tables/{name.replace('-', '_')}"
        files[f"{stem}.csv"] = to_csv(rows, cols)
        files[f"{stem}.md"] = to_markdown(rows, cols, title, notes)
        files[f"{stem}.tex"] = to_latex(rows, cols, caption=title, label=f"tab:{name}", notes=notes)
        ok = sum(r["status"] == "reproduces" for r in rows)
        counted = sum(r["status"] in ("reproduces", "differs") for r in rows)
        summary.append(f"| [{name}]({stem}.md) | {title} | {ok} / {counted} | {len(rows) - counted} |")
    files["_tables_index"] = "\n".join(summary)
    return files


def _flops() -> dict[str, str]:
    from spectrascope.report.paper_tables import _count
    from spectrascope.report.tables import breakdown_rows, flops_rows, to_csv, to_markdown
    from spectrascope.zoo.registry import get_card, list_models
    files = {}
    counts = [_count(n, tuple(get_card(n).default_input_size)) for n in list_models()]
    rows = flops_rows(counts)
    cols = list(rows[0])
    files["flops/zoo.csv"] = to_csv(rows, cols)
    files["flops/zoo.md"] = to_markdown(rows, cols, "FLOPs of every zoo model at its default input (fvcore's "
                                        "conventions; FFT term N*C*ceil(log2 N) per transform)")
    for c in counts:
        if c.model not in MAIN_MODELS:
            continue
        for by in ("stage", "op"):
            b = breakdown_rows(c, by)
            title = (f"{c.model} at {'x'.join(map(str, c.input_size))}: {c.flops / 1e9:.3f} G without FFTs, "
                     f"{c.flops_fft / 1e9:.3f} G FFT term (nlogn), by {by}")
            files[f"flops/{c.model}_by_{by}.md"] = to_markdown(b, list(b[0]), title)
            files[f"flops/{c.model}_by_{by}.csv"] = to_csv(b, list(b[0]))
    return files


def _known_text(known: dict) -> str:
    import json
    rows = [{"model": m, "input_size": list(size), **c} for (m, size), c in sorted(known.items())]
    return json.dumps(rows, indent=1) + "\n"


def parse_known(text: str) -> dict:
    import json
    return {(r["model"], tuple(r["input_size"])): {k: r[k] for k in ("params", "flops", "flops_fft")}
            for r in json.loads(text)}


def render(use_timm: bool | None = None, known: dict | None = None) -> dict[str, str]:
    """Every committed file's text, by relative path (``index.json`` records the timm version used).
    ``known``: the timm rows' counts to use instead of counting them (``timm_counts.json``)."""
    import json
    timm_version = _timm_version()
    use_timm = timm_version is not None if use_timm is None else use_timm
    if known is None:
        known = timm_counts(use_timm)
    elif not known:
        use_timm = False
    files = _tables(use_timm, known)
    files["tables/timm_counts.json"] = _known_text(known)
    table_index = files.pop("_tables_index")
    files.update(_flops())
    breakdowns = "\n".join(f"- {m}: [by stage](flops/{m}_by_stage.md), [by operator](flops/{m}_by_op.md)"
                           for m in MAIN_MODELS)
    files["index.md"] = "\n".join([
        "# Weight-independent paper outputs", "",
        "Regenerated by `make figures` (a test fails when these files are stale). Parameters and FLOPs are "
        "counted by `spectrascope flops` (fvcore's conventions: one FLOP per multiply-accumulate, FFTs excluded; "
        "the FFT column is N*C*ceil(log2 N) per 2-D transform) on the meta device; throughput and top-1 need "
        "`--throughput` / `--checkpoint` and `--data` on the recipes (`spectrascope figure NAME`).",
        (f"Rows of models outside the zoo are counted with timm {timm_version} (counts kept in "
         "[tables/timm_counts.json](tables/timm_counts.json))." if use_timm else
         "Rows of models outside the zoo show the paper's numbers only (timm was not installed)."), "",
        "## Tables", "", "| recipe | table | rows that reproduce / counted | paper only |", "|---|---|---|---|",
        table_index, "", "## FLOPs", "", "- [every zoo model](flops/zoo.md) ([csv](flops/zoo.csv))", breakdowns, ""])
    files["index.json"] = json.dumps({"timm": timm_version if use_timm else None,
                                      "files": sorted(set(files) | {"index.json"})}, indent=1) + "\n"
    return files


def generate(output="figures", use_timm: bool | None = None) -> list[Path]:
    """Write ``render()`` under ``output``; returns the paths written."""
    out = Path(output)
    written = []
    for rel, text in render(use_timm).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="figures")
    parser.add_argument("--no-timm", action="store_true", help="paper numbers only for rows outside the zoo")
    args = parser.parse_args(argv)
    paths = generate(args.output, use_timm=False if args.no_timm else None)
    print(f"figures: {len(paths)} files under {args.output}/")


if __name__ == "__main__":
    main()
