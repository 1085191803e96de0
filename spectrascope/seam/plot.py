"""``plot``: the figures of any analysis drawn again from its results.json alone.

Into the results folder itself (the default) only figures that spectrascope wrote there are
replaced; new figure files are added to the folder's manifest, and a file of the same name that
the folder's owner put there stops the redraw before anything is written. Into another folder
(``--output``) the figures are staged and committed like any command's output (``--overwrite``
replaces an earlier ``plot`` folder).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

from spectrascope.errors import OptionError, OutputError
from spectrascope.io.results import StagedOutput, read_manifest, record_outputs, write_json
from spectrascope.io.schema import read_json_doc
from spectrascope.report.style import active_ncols, active_style, use_style
from spectrascope.seam import options as so
from spectrascope.seam.analysis import Style
from spectrascope.seam.registry import get
from spectrascope.seam.result import load_result

__all__ = ["redraw", "draw_options"]


def draw_options(analysis, given: Mapping) -> dict:
    """``given`` figure options checked against what ``analysis``'s figures take."""
    own = {o.name: o for o in analysis.all_options()}
    out = {}
    for name, value in given.items():
        flag = "--" + name.replace("_", "-")
        if name not in analysis.draw_options:
            takes = ", ".join("--" + n.replace("_", "-") for n in analysis.draw_options) or "none"
            raise OptionError(f"the figures of `{analysis.name}` take no {flag} (they take: {takes})", option=flag)
        out[name] = own[name].convert(value)
    return out


def _into_results_folder(analysis, result, folder: Path, style: Style) -> list[Path]:
    man = read_manifest(folder)
    if man is None:
        raise OutputError(f"{folder} holds no spectrascope manifest, so plot cannot tell its own figures from "
                          "yours; give another folder with --output", option="--output")
    listed = set(man["files"])
    with tempfile.TemporaryDirectory(prefix=".spectrascope-plot-", dir=folder) as tmp:
        names = list(analysis.draw(result, Path(tmp), style))
        foreign = [n for n in names if (folder / n).exists() and n not in listed]
        if foreign:
            raise OutputError(f"{folder / foreign[0]} was not written by spectrascope; plot does not replace it "
                              "(give another folder with --output)", option="--output")
        record_outputs(folder, command=man["command"], files=names)
        for n in names:
            (folder / n).parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / n, folder / n)
    doc = read_json_doc(folder / "results.json", what="results.json") if "results.json" in listed else None
    if names and isinstance(doc, dict) and isinstance(doc.get("provenance"), dict):
        # the run's figure style stays; each redraw in place adds which files it drew in which style
        doc["provenance"].setdefault("redrawn", []).append(
            {"files": names, "figure_style": active_style().name, "figure_ncols": active_ncols()})
        write_json(folder / "results.json", doc)
    return [folder / n for n in names]


def redraw(results, output=None, *, formats=("png", "pdf"), overwrite: bool = False,
           options: Mapping | None = None, style: str | None = None, ncols: int | None = None) -> list[Path]:
    """Draw the figures of a results.json again.

    Args:
        results: ``results.json`` or its folder.
        output: folder for the figures (default: the results folder).
        formats: file formats (png, pdf, svg).
        overwrite: replace an earlier ``plot`` folder given as ``output``.
        options: figure options of the analysis (``cmap``, ``freq_axis`` ...).
        style: the figure style (paper, column, page, notebook; default paper).
        ncols: columns of wrapped grids (default: each figure's own).

    Returns:
        The files written.
    """
    result = load_result(results)
    analysis = get(result.analysis)
    declared = {o.name: o for o in so.STYLE}
    style = Style(tuple(formats), draw_options(analysis, dict(options or {})), declared["style"].convert(style),
                  declared["ncols"].convert(ncols))
    folder = Path(result.output).resolve()
    target = Path(output).resolve() if output else folder
    with use_style(style.preset, style.ncols):
        if target == folder:
            return _into_results_folder(analysis, result, folder, style)
        with StagedOutput(target, command="plot", overwrite=overwrite) as stage:
            names = list(analysis.draw(result, stage, style))
    return [target / n for n in names]
