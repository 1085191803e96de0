"""Running an analysis: the one path from checked options to a written result folder.

``execute(analysis, params)`` does, in this order, for every analysis:

1. join the ``torchrun`` process group when a launcher started the process (``engine.dist``);
2. resolve the images (``--images`` / ``--data`` / ``--num-images``) and the models
   (``--model`` / ``--checkpoint`` / ``--pretrained`` / ``--img-size`` / ``--model-kwargs``);
3. check and stage the output folder (``io.results.StagedOutput``: nothing is written into the
   final folder before the run succeeded; ``--overwrite`` replaces only spectrascope's own files);
4. run the analysis on the engine (``Analysis.run(ctx)``);
5. on the rank that writes: refuse non-finite numbers, write results.json with provenance, and
   the analysis's report (tables, arrays, figures);
6. commit the folder.

Every step is agreed by every rank (``Dist.together``): a failure on one process ends every
process with the same line and exit status before any collective can wait for it.
``run(name, **options)`` is the Python verb over the same path.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from spectrascope.engine import dist as _dist
from spectrascope.engine.device import resolve_device
from spectrascope.engine.runner import RunConfig, Runner, progress_scope
from spectrascope.errors import OptionError
from spectrascope.io.results import StagedOutput, Stopwatch, default_output_dir, provenance, write_json
from spectrascope.report.style import active_ncols, use_style
from spectrascope.seam.analysis import Analysis, Params, Style
from spectrascope.seam.context import Context, model_specs
from spectrascope.seam.registry import get
from spectrascope.seam.result import Result

__all__ = ["Outcome", "execute", "run", "save", "write_result", "random_weights_note", "RecordedWarning"]


class RecordedWarning(UserWarning):
    """A warning an analysis wants printed after the run and kept in results.json
    (``warnings.warn(msg, RecordedWarning)`` from library code below the seam)."""


@dataclass
class Outcome:
    """What a run returns to the command line: the result (on every rank), the folder written
    (None when nothing was written) and the lines to print (rank 0)."""

    result: Result
    output: Path | None = None
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def random_weights_note(names: Sequence[str], what: str) -> str | None:
    """``random weights for A, B (no checkpoint given): <what>``, or None without names."""
    names = list(dict.fromkeys(names))
    if not names:
        return None
    return f"random weights for {', '.join(names)} (no checkpoint given): {what}"


def _inputs(params: Params, specs) -> list:
    """The run's inputs (from the options, before any of them is read): the output folder may
    neither be nor contain them."""
    out = [params.get("images")] if params.get("images") else []
    data = params.get("data")
    if isinstance(data, str) and data.split(":", 1)[0] in ("imagefolder", "cifar10", "cifar100") and ":" in data:
        out.append(data.split(":", 1)[1])
    out += [s.checkpoint for s in specs if getattr(s, "checkpoint", None)]
    out += [v for k, v in params.as_dict().items() if k.startswith("checkpoint_") and isinstance(v, str)]
    return out


def _stage(analysis: Analysis, params: Params, specs, d: _dist.Dist) -> StagedOutput:
    out = params.get("output")
    if out is None:
        out = default_output_dir(analysis.name, analysis.tag(params))
    if d.enabled:
        out = d.broadcast_object(str(out))        # one name (rank 0's time stamp) for every rank
    return StagedOutput(out, command=analysis.name, overwrite=bool(params.get("overwrite")),
                        inputs=_inputs(params, specs), enabled=d.main)


def _runner(analysis: Analysis, params: Params, device, d: _dist.Dist, progress: bool) -> Runner | None:
    if not analysis.needs.runner:
        return None
    return Runner(RunConfig(device=device, batch_size=params.get("batch_size") or 16,
                            amp=params.get("amp") or "off", channels_last=bool(params.get("channels_last")),
                            compile=bool(params.get("compile")), tf32=params.get("tf32") or "off",
                            workers=params.get("workers") or 0,
                            progress=progress), d)


def _provenance(ctx: Context, wall: float) -> dict:
    names = [b.name for b in ctx.built] or [str(s.name) for s in ctx.specs if hasattr(s, "name")]
    shas = [b.checkpoint_sha256 for b in ctx.built]
    return provenance(command=ctx.analysis.name, model=", ".join(dict.fromkeys(names)) or None,
                      checkpoint_sha256=shas[0] if len(shas) == 1 else None,
                      images_sha256=ctx.source.digest if ctx.source is not None else None, device=ctx.device,
                      wall_time_s=wall, random_weights=bool(ctx.random_models()) if ctx.built else None,
                      world_size=ctx.dist.world, extra=ctx.provenance)


def write_result(analysis: Analysis, result: Result, folder, style: Style | None = None) -> list[str]:
    """The result folder's files in an existing (staged) ``folder``: the arrays (``result.npz``),
    the analysis's report (tables, figures), then results.json naming them all.

    Raises:
        NonFiniteError: the result holds a NaN/inf (nothing is written).
    """
    folder = Path(folder)
    result.check_finite()
    written = []
    for name, arrays in result.arrays().items():
        if arrays:
            import numpy as np
            np.savez_compressed(folder / name, **{k: np.asarray(v) for k, v in arrays.items()})
            written.append(name)
    style = style or Style()
    with use_style(style.preset, style.ncols) as drawn:
        written += [w for w in (analysis.report(result, folder, style) or []) if w not in written]
        if any(w.endswith((".png", ".pdf", ".svg")) for w in written):     # how this folder's figures were drawn
            result.provenance = dict(result.provenance or {}, figure_style=drawn.name,
                                     figure_ncols=active_ncols())
    result.files = written
    write_json(folder / "results.json", result.to_json())
    return ["results.json"] + written


def _finish(ctx: Context, result: Result, clock: Stopwatch, caught) -> None:
    for w in caught:
        if issubclass(w.category, RecordedWarning):
            ctx.warn(str(w.message))
    rnd = random_weights_note(ctx.random_models(), ctx.analysis.random_weights)
    if rnd:
        ctx.notes.insert(0, rnd)
    result.notes = list(dict.fromkeys(list(result.notes) + ctx.notes))
    result.warnings = list(dict.fromkeys(list(result.warnings) + ctx.warnings))
    result.provenance = _provenance(ctx, clock.elapsed)


def _context(analysis: Analysis, params: Params, specs, d: _dist.Dist, device, progress: bool) -> Context:
    source = analysis.source(params) if analysis.needs.data else None
    return Context(analysis, params, d, device, _runner(analysis, params, device, d, progress), source, specs,
                   progress=progress, notes=list(source.notes) if source is not None else [])


def execute(analysis: Analysis, params: Params, *, write: bool = True, progress: bool = False,
            style: Style | None = None) -> Outcome:
    """Run ``analysis`` with ``params`` (see the module doc).

    Args:
        analysis: the analysis (``seam.get(name)``).
        params: checked option values (``analysis.params(values)``).
        write: write the result folder (``--output``, or ``runs/<name>/<models>-<time>``); the Python
            API writes only when ``output`` is given.
        progress: progress bars on the rank that reports.
        style: how the figures are drawn.

    Returns:
        The ``Outcome``; its ``result`` on every rank, its lines on rank 0.
    """
    clock = Stopwatch()
    write = write and analysis.needs.output
    with _dist.session(resolve_device(params.get("device") or "auto")) as (d, device):
        specs = d.agreed(model_specs, params, repeats=analysis.repeat_models)
        stage = d.agreed(_stage, analysis, params, specs, d) if write else None          # before any work
        ctx = d.agreed(_context, analysis, params, specs, d, device, progress and d.main)
        with d.together(), progress_scope(progress and d.main), \
                (stage if stage is not None else contextlib.nullcontext()) as folder:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RecordedWarning)
                result = analysis.run(ctx)
            _finish(ctx, result, clock, caught)
            if folder is not None:
                write_result(analysis, result, folder, style or Style.of(params))
        output = stage.final if stage is not None else None
        main = d.main
        if main and output is not None:
            analysis.committed(result, output)
    result.output = output
    if not main:
        return Outcome(result, output)
    return Outcome(result, output, analysis.describe(result, output), list(result.notes), list(result.warnings))


def run(analysis: str | Analysis, **options: Any) -> Result:
    """Run an analysis from Python: the one verb of every analysis.

    Args:
        analysis: its name (``"amplitude"``, ``"cka"``, ...) or an ``Analysis`` instance.
        **options: the command's options by their Python names (``model="dfformer_s18"``,
            ``img_size=64``, ``data="synthetic"``, ``output="runs/x"`` ...); ``output`` makes it write the
            result folder as the command does.

    Returns:
        The analysis's ``Result`` dataclass (``result.output`` is the folder written, if any).

    Examples:
        >>> import spectrascope
        >>> res = spectrascope.run("amplitude", model="dfformer_s18", img_size=64, num_images=2,
        ...                        model_kwargs={"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]})
        >>> [t["name"] for t in res.models[0]["taps"]][:2]
        ['stem', 's1.b0.residual']
    """
    a = get(analysis) if isinstance(analysis, str) else analysis
    progress = bool(options.pop("progress", False))
    style = options.pop("style", None)
    if isinstance(style, str):                 # style="column": the --style option
        options["style"], style = style, None
    params = a.params(options)
    write = params.get("output") is not None
    return execute(a, params, write=write, progress=progress, style=style).result


def save(result: Result, output, *, overwrite: bool = False, style: Style | None = None) -> Path:
    """Write a result folder (results.json and the report) for a result computed earlier.

    Args:
        result: a result returned by ``run`` (or ``load_result``).
        output: the folder (checked and staged as the commands do).
        overwrite: replace a folder of spectrascope outputs of the same analysis.
        style: how the figures are drawn.

    Returns:
        The folder written.
    """
    analysis = get(result.analysis)
    if not output:
        raise OptionError("give a folder", option="--output")
    with StagedOutput(output, command=analysis.name, overwrite=overwrite) as folder:
        write_result(analysis, result, folder, style)
    result.output = Path(output)
    return Path(output)
