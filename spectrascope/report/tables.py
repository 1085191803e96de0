"""Tables as text: the ``spectrascope flops`` listing and breakdowns, and one writer for CSV,
Markdown and LaTeX (the paper-table recipes write all three from the same rows)."""
from __future__ import annotations

import csv
import io
from typing import Sequence

__all__ = ["giga", "mega", "flops_rows", "flops_text", "flops_json", "breakdown_rows", "to_csv", "to_markdown",
           "to_latex", "write_tables"]


def giga(n: int | None) -> str:
    return "" if n is None else f"{n / 1e9:.3f}"


def mega(n: int | None) -> str:
    return "" if n is None else f"{n / 1e6:.3f}"


def _size(t) -> str:
    return "x".join(str(v) for v in t)


def flops_rows(counts) -> list[dict]:
    return [{"model": c.model, "input": _size(c.input_size), "params (M)": mega(c.params), "FLOPs (G)": giga(c.flops),
             "FFT nlogn (G)": giga(c.flops_fft), f"total fft={c.fft} (G)": giga(c.flops_total)} for c in counts]


def breakdown_rows(count, by: str, depth: int = 2) -> list[dict]:
    """One row per module / op kind / stage: FLOPs without the FFT term, the FFT term, their share."""
    table = count.breakdown(by, depth)
    total = count.flops + count.flops_fft
    rows = []
    for key, kinds in table.items():
        fft = kinds.get("fft", 0)
        rest = sum(v for k, v in kinds.items() if k != "fft")
        parts = ", ".join(f"{k} {v / 1e9:.3f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]) if k != "fft")
        rows.append({by: key, "FLOPs (G)": giga(rest), "FFT nlogn (G)": giga(fft),
                     "share %": f"{100.0 * (rest + fft) / total:.1f}" if total else "0.0", "kinds (G)": parts})
    return rows


def _text_table(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def flops_text(counts, by: str | None = None, depth: int = 2) -> str:
    out = [_text_table(flops_rows(counts))]
    if by:
        for c in counts:
            out.append(f"\n{c.model} by {by} (FFT term: N*C*ceil(log2 N) per transform)")
            out.append(_text_table(breakdown_rows(c, by, depth)))
    return "\n".join(out)


def flops_json(counts, by: str | None = None, depth: int = 2) -> str:
    from spectrascope.io.results import dumps
    docs = []
    for c in counts:
        d = c.as_dict()
        if by:
            d["by"] = by
            d["breakdown"] = c.breakdown(by, depth)
        docs.append(d)
    return dumps(docs)


# ----------------------------------------------------------------------------- CSV / Markdown / LaTeX


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    return buf.getvalue()


def _md_cell(v) -> str:
    return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: Sequence[dict], columns: Sequence[str], title: str = "", notes: Sequence[str] = ()) -> str:
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(_md_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str("" if text is None else text))


def to_latex(rows: Sequence[dict], columns: Sequence[str], caption: str = "", label: str = "",
             notes: Sequence[str] = ()) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{l" + "r" * (len(columns) - 1) + "}",
             r"\toprule", " & ".join(latex_escape(c) for c in columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(r.get(c, "")) for c in columns) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    if label:
        lines.append(r"\label{" + label + "}")
    lines.append(r"\end{table}")
    if notes:
        lines += ["% " + latex_escape(n) for n in notes]
    return "\n".join(lines) + "\n"


def write_tables(folder, stem: str, rows: Sequence[dict], columns: Sequence[str], *, title: str = "",
                 notes: Sequence[str] = ()) -> list[str]:
    """``stem.csv``, ``stem.md`` and ``stem.tex`` in ``folder``; returns the file names."""
    from pathlib import Path
    folder = Path(folder)
    (folder / f"{stem}.csv").write_text(to_csv(rows, columns))
    (folder / f"{stem}.md").write_text(to_markdown(rows, columns, title, notes))
    (folder / f"{stem}.tex").write_text(to_latex(rows, columns, caption=title, label=f"tab:{stem}", notes=notes))
    return [f"{stem}.csv", f"{stem}.md", f"{stem}.tex"]
