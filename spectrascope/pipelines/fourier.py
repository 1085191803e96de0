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

from spectrascope.analysis.fourier import analyse
from spectrascope.errors import OptionError
from spectrascope.io.sources import ImageSource
from spectrascope.ops.fourier import ZeroMeanWarning
from spectrascope.pipelines.common import Outcome, random_weights_note, session, stage_output
from spectrascope.report.fourier import write_results

__all__ = ["PRECISIONS", "run_fourier"]

#: ``--precision`` values
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


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
    models = list(models)
    with session(device) as (d, dev):
        stage = stage_output(output, command=kind, tag=_tag(models), overwrite=overwrite,
                             inputs=_inputs(images, data, checkpoints), dist=d)
        out = Path(output) if output else stage.final
        t0 = time.perf_counter()
        with stage as folder, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            source = ImageSource.resolve(images, data, num_images)
            payload = analyse(models, kind=kind, checkpoints=checkpoints, source=source, img_size=img_size,
                              taps=taps, stages=stages, blocks=blocks, device=dev, batch_size=batch_size,
                              method=method, dtype=PRECISIONS[precision], progress=progress,
                              model_kwargs=model_kwargs, amp=amp, channels_last=channels_last, compile=compile,
                              workers=workers, **extra)
            if d.main:
                write_results(payload, folder, command=kind, wall_time_s=time.perf_counter() - t0, cmap=cmap)
        main = d.main
    if not main:
        return Outcome(output=out, payload=payload)
    warns = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ZeroMeanWarning)))
    rnd = random_weights_note([m["model"] for m in payload["models"] if m["random_weights"]],
                              "the curves describe an untrained network")
    notes = list(payload.get("notes", [])) + ([rnd] if rnd else [])
    return Outcome(output=out, summary=_summary(kind, payload, out), notes=notes, warnings=warns, payload=payload)
