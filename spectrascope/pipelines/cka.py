"""``spectrascope cka`` as a function: build both models, resolve the images, compare their
taps on the engine's runner, and write the report directory (rank 0 only under ``torchrun``).

``compute`` is the part the Fig. 7 recipe shares (no output folder); ``run`` is the whole
command inside the distributed session: the output folder is checked before any work, so
a bad input or a non-finite tap stops the run with one line and nothing written.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spectrascope.analysis.cka import (ENGINES, ESTIMATORS, CKAResult, PairDataset, compare_dataset,
                                       resolve_taps)
from spectrascope.engine.runner import RunConfig, Runner
from spectrascope.errors import OptionError
from spectrascope.io.results import Stopwatch
from spectrascope.io.sources import ImageSource
from spectrascope.pipelines.common import Outcome, random_weights_note, session, stage_output
from spectrascope.report.cka import write_files
from spectrascope.zoo.build import ModelSpec, build

__all__ = ["CKAOptions", "PRECISIONS", "compute", "run", "skip_warning"]

#: ``--precision`` -> Gram-product dtype (None: automatic)
PRECISIONS = {"auto": None, "float32": torch.float32, "float64": torch.float64}


@dataclass
class CKAOptions:
    """What is compared and how: taps (``taps`` for both models unless ``taps_a``/``taps_b``),
    estimator, engine, Gram-product precision (``auto``/``float32``/``float64``), seed."""

    taps: str = "fig7"
    taps_a: str | None = None
    taps_b: str | None = None
    estimator: str = "unbiased"
    engine: str = "spectrascope"
    precision: str = "auto"
    seed: int = 0
    notes: list = field(default_factory=list)

    def check(self, batch_size: int) -> None:
        if self.estimator not in ESTIMATORS:
            raise OptionError(f"must be one of {', '.join(ESTIMATORS)}, not {self.estimator!r}", option="--estimator")
        if self.engine not in ENGINES:
            raise OptionError(f"must be one of {', '.join(ENGINES)}, not {self.engine!r}", option="--engine")
        if self.precision not in PRECISIONS:
            raise OptionError(f"must be one of {', '.join(PRECISIONS)}, not {self.precision!r}",
                              option="--precision")
        if not isinstance(batch_size, int) or batch_size < 4:
            raise OptionError("must be at least 4 (the unbiased estimator needs n >= 4 per batch)",
                              option="--batch-size")


def _side(built, spec: ModelSpec) -> dict:
    d = built.describe()
    d["name"] = spec.name
    return d


def compute(spec_a: ModelSpec, spec_b: ModelSpec, source: ImageSource, runner: Runner,
            opts: CKAOptions | None = None) -> CKAResult:
    """Build both models (identical specs share one model object, so a model compared with
    itself gives a unit diagonal even with random weights), compare them over ``source`` on
    ``runner`` and attach the provenance to the result."""
    opts = opts or CKAOptions()
    opts.check(runner.config.batch_size)
    clock = Stopwatch()
    built_a = build(spec_a, runner.device, seed=opts.seed)
    built_b = built_a if spec_b.key() == spec_a.key() else build(spec_b, runner.device, seed=opts.seed)
    model_a = runner.prepare(built_a.model)
    model_b = model_a if built_b is built_a else runner.prepare(built_b.model)
    ta = resolve_taps(model_a, opts.taps_a or opts.taps, option="--taps-a" if opts.taps_a else "--taps",
                      notes=opts.notes)
    tb = resolve_taps(model_b, opts.taps_b or opts.taps, option="--taps-b" if opts.taps_b else "--taps",
                      notes=opts.notes)
    shared = built_a.pre == built_b.pre
    dataset = source.dataset(built_a.pre) if shared else PairDataset(source.dataset(built_a.pre),
                                                                     source.dataset(built_b.pre))
    result = compare_dataset(model_a, model_b, dataset, runner, taps_a=ta, taps_b=tb, estimator=opts.estimator,
                             engine=opts.engine, dtype=PRECISIONS[opts.precision],
                             desc=f"CKA {spec_a.name} vs {spec_b.name}")
    result.meta.update({
        "model_a": _side(built_a, spec_a), "model_b": _side(built_b, spec_b),
        "same_model_object": model_a is model_b, "shared_input": shared,
        "images": source.describe()["files"], "num_images": len(source), "images_sha256": source.digest,
        "batch_size": runner.config.batch_size, "world_size": runner.dist.world, "seed": opts.seed,
        "precision": opts.precision, "amp": runner.config.amp, "channels_last": runner.config.channels_last,
        "taps_spec": {"a": opts.taps_a or opts.taps, "b": opts.taps_b or opts.taps},
        "wall_time_s": clock.elapsed, "device": str(runner.device),
    })
    return result


def skip_warning(result: CKAResult) -> str | None:
    """The line that reports the batches left out (counted over every rank), or None."""
    k, n = result.skipped_batches, result.skipped_examples
    if not k:
        return None
    need = "torch-cka would divide by zero below 4" if result.engine == "torch-cka" else \
        f"the {result.estimator} estimator needs at least 4 per batch"
    if k == 1:
        return f"CKA: skipped a batch of {n} example(s) ({need}); {result.examples} images compared"
    return f"CKA: skipped {k} batches with {n} example(s) in total ({need}); {result.examples} images compared"


def _warnings(caught, result: CKAResult) -> list[str]:
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
            and not str(w.message).startswith("CKA: skipped")]
    skip = skip_warning(result)
    return list(dict.fromkeys(msgs + ([skip] if skip else []) + list(result.diagnostics)))


def run(spec_a: ModelSpec, spec_b: ModelSpec, *, opts: CKAOptions | None = None, images=None, data=None,
        num_images=None, batch_size: int = 16, device="auto", amp: str = "off", channels_last: bool = False,
        workers: int = 0, output=None, overwrite: bool = False, title: str | None = None,
        progress: bool = True) -> Outcome:
    """The ``cka`` command: the report directory of ``spec_a`` (rows) vs ``spec_b`` (columns)."""
    opts = opts or CKAOptions()
    opts.check(batch_size)
    with session(device) as (d, dev):
        source = ImageSource.resolve(images, data, num_images)
        inputs = [*source.roots, spec_a.checkpoint, spec_b.checkpoint]
        stage = stage_output(output, command="cka", tag=f"{spec_a.name}-vs-{spec_b.name}", overwrite=overwrite,
                             inputs=inputs, dist=d)
        runner = Runner(RunConfig(device=dev, batch_size=batch_size, amp=amp, channels_last=channels_last,
                                  workers=workers, progress=progress), d)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            result = compute(spec_a, spec_b, source, runner, opts)
        with stage as folder:
            if folder is not None:
                write_files(result, folder, title=title, command="cka")
        if not d.main:
            return Outcome(output=None)
    notes = list(source.notes) + list(dict.fromkeys(opts.notes))
    rnd = random_weights_note(s.name for s in (spec_a, spec_b) if s.checkpoint is None)
    if rnd:
        notes.append(rnd)
    out = Path(stage.final)
    summary = (f"CKA {len(result.labels_a)}x{len(result.labels_b)} over {result.examples} images "
               f"({result.batches} batches) -> {out}")
    return Outcome(output=out, summary=summary, notes=notes, warnings=_warnings(caught, result),
                   payload={"result": result})
