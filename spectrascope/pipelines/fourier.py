"""The ``amplitude`` and ``spectrum`` commands as pipelines: device and ``torchrun`` session,
the checked and staged output folder, the analysis on the engine, and rank 0 writing.

``run_fourier(kind, models, ...)`` returns an ``Outcome`` (output folder, summary line, notes,
warnings, payload); on ranks other than 0 the outcome carries no lines to print. A NaN/inf
value in the forward stops every rank with the one ``NonFiniteError`` and nothing is written.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import torch

from spectrascope.analysis.fourier import DegenerateMapWarning, analyse
from spectrascope.errors import DataError, OptionError, OutputError, UserError
from spectrascope.io.sources import ImageSource
from spectrascope.ops.fourier import ZeroMeanWarning
from spectrascope.pipelines.common import Outcome, random_weights_note, session, stage_output
from spectrascope.report.fourier import write_results
from spectrascope.report.style import check_cmap

__all__ = ["PRECISIONS", "run_fourier", "image_source", "amplitude_analysis", "spectrum_analysis"]

#: ``--precision`` values
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def image_source(images=None, data: str | None = None, num_images: int | None = None,
                 image_paths: Sequence | None = None) -> ImageSource:
    """The images of ``--images`` / ``--data`` / ``--num-images``, or of an explicit list of files."""
    if image_paths is None:
        return ImageSource.resolve(images, data, num_images)
    paths = [Path(p) for p in image_paths][:num_images] if num_images is not None else [Path(p) for p in image_paths]
    if not paths:
        raise DataError("no images to analyse")
    return ImageSource(paths, [p.stem for p in paths], description=str(images) if images else (data or "samples"))


def amplitude_analysis(models, *, images=None, data: str | None = None, num_images: int | None = None,
                       image_paths: Sequence | None = None, source: ImageSource | None = None, **kw) -> dict:
    """Relative log-amplitude curves (``analysis.fourier.analyse``) of ``models`` on the images of
    ``--images``/``--data`` (bundled photos by default); default taps: stem, downsample, residual
    (after each token mixer) and block (after each MLP)."""
    src = source if source is not None else image_source(images, data, num_images, image_paths)
    return analyse(models, src, kind="amplitude", **kw)


def spectrum_analysis(models, *, images=None, data: str | None = None, num_images: int | None = None,
                      image_paths: Sequence | None = None, source: ImageSource | None = None, **kw) -> dict:
    """2-D spectrum maps (``analysis.fourier.analyse``); default taps: the token mixer of the last
    block of every stage (``blocks="last"``); ``relative=True`` puts the DC value at 0."""
    src = source if source is not None else image_source(images, data, num_images, image_paths)
    return analyse(models, src, kind="spectrum", **kw)


def _inputs(images, data, checkpoints) -> list:
    """The command's inputs, which the output folder may neither be nor contain."""
    out = [images] if images else []
    if data and ":" in data and data.split(":", 1)[0] in ("imagefolder", "cifar10", "cifar100"):
        out.append(data.split(":", 1)[1])
    if isinstance(checkpoints, Mapping):
        out += [v for v in checkpoints.values() if v]
    elif checkpoints:
        out += [c for c in checkpoints if c]
    return out


def _tag(models: Sequence) -> str:
    return "-vs-".join(str(m).replace("timm:", "") for m in models)


def _summary(kind: str, payload: dict, out: Path) -> str:
    ntaps = ", ".join(f"{m['model']}: {len(m['taps'])} taps" for m in payload["models"])
    return f"{kind} over {payload['images']['count']} images ({ntaps}) -> {out}"


def _staged(d, output, **kw):
    """``stage_output`` with its checks agreed by every rank: only rank 0 checks the folder, so a
    refusal there is raised on every rank (no rank waits alone in a collective)."""
    error = None
    try:
        stage = stage_output(output, dist=d, **kw)
    except UserError as exc:
        error, stage = exc, None
    if d.enabled:
        msgs = d.all_gather_object(None if error is None else (type(error).__name__, str(error)))
        first = next((m for m in msgs if m), None)
        if error is None and first is not None:
            raise OutputError(first[1])
    if error is not None:
        raise error
    return stage


def run_fourier(kind: str, models: Sequence[str], *, checkpoints=None, output=None, overwrite: bool = False,
                taps=None, stages=None, blocks=None, method: str = "diagonal", precision: str = "float32",
                img_size=None, device="auto", model_kwargs: Mapping | None = None, images=None,
                data: str | None = None, num_images: int | None = None, batch_size: int = 16, amp: str = "off",
                channels_last: bool = False, compile: bool = False, workers: int = 0, progress: bool = True,
                cmap: str | None = None, **extra) -> Outcome:
    """``spectrascope amplitude|spectrum``: see the module doc; ``extra`` goes to ``analyse``
    (``freq_axis``, ``save_maps``, ``relative``)."""
    if precision not in PRECISIONS:
        raise OptionError(f"{precision!r} is not accepted; use {', '.join(PRECISIONS)}", option="--precision")
    check_cmap(cmap)
    models = list(models)
    with session(device) as (d, dev):
        stage = _staged(d, output, command=kind, tag=_tag(models), overwrite=overwrite,
                        inputs=_inputs(images, data, checkpoints))
        out = Path(output) if output else stage.final
        t0 = time.perf_counter()
        with stage as folder, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source = ImageSource.resolve(images, data, num_images)
            payload = analyse(models, source, kind=kind, checkpoints=checkpoints, img_size=img_size,
                              taps=taps, stages=stages, blocks=blocks, device=dev, batch_size=batch_size,
                              method=method, dtype=PRECISIONS[precision], progress=progress,
                              model_kwargs=model_kwargs, amp=amp, channels_last=channels_last, compile=compile,
                              workers=workers, **extra)
            if d.main:
                write_results(payload, folder, command=kind, wall_time_s=time.perf_counter() - t0, cmap=cmap)
        main = d.main
    if not main:
        return Outcome(output=out, payload=payload)
    warns = list(dict.fromkeys(str(w.message) for w in caught
                               if issubclass(w.category, (ZeroMeanWarning, DegenerateMapWarning))))
    rnd = random_weights_note([m["model"] for m in payload["models"] if m["random_weights"]],
                              "the curves describe an untrained network")
    notes = list(payload.get("notes", [])) + ([rnd] if rnd else [])
    return Outcome(output=out, summary=_summary(kind, payload, out), notes=notes, warnings=warns, payload=payload)
