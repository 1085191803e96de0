"""The ``evaluate`` and ``predict`` pipelines: a model on a validation split (accuracy, loss,
throughput -> results.json) or on images (top-k classes), both through the engine's runner,
so they run under ``torchrun`` (rank 0 writes / prints, results equal one process) and stop
with one line on NaN/inf logits, writing nothing."""
from __future__ import annotations

from dataclasses import dataclass, field

from spectrascope.engine.runner import RunConfig, Runner
from spectrascope.errors import OptionError, OutputError, UserError
from spectrascope.io.specs import parse_data_spec
from spectrascope.io.images import resolve_image_paths
from spectrascope.io.results import Stopwatch, provenance, write_json
from spectrascope.io.sources import ImageDataset
from spectrascope.pipelines.common import Outcome, session, stage_output
from spectrascope.train.evaluate import agreed, evaluate
from spectrascope.zoo.build import build_for_inference

__all__ = ["EvaluateRequest", "run_evaluate", "PredictRequest", "run_predict"]


@dataclass
class EvaluateRequest:
    """The options of ``spectrascope evaluate``."""

    model: str | None
    data: str
    checkpoint: str | None = None
    img_size: object = None
    batch_size: int = 64
    device: str = "auto"
    amp: str = "off"
    use_ema: bool = False
    channels_last: bool = False
    workers: int = 0
    limit_batches: int | None = None
    model_kwargs: dict = field(default_factory=dict)
    output: str | None = None
    overwrite: bool = False


def _agreed_stage(d, **kw):
    """``stage_output(**kw)`` checked by rank 0; every rank stops when rank 0 refuses the folder."""
    stage, error = None, None
    try:
        stage = stage_output(dist=d, **kw)
    except UserError as exc:
        error = exc
    if d.any(error is not None):
        raise error or OutputError("the output folder was refused (see rank 0)", option="--output")
    return stage


def _inputs(req: EvaluateRequest) -> list:
    spec = parse_data_spec(req.data)
    return [p for p in (req.checkpoint, spec.path) if p is not None]


def run_evaluate(req: EvaluateRequest) -> Outcome:
    """Evaluate, then write results.json (rank 0; nothing when anything failed)."""
    watch = Stopwatch()
    with session(req.device) as (d, dev):
        stage = _agreed_stage(d, output=req.output, command="evaluate", tag=req.model or "checkpoint",
                              overwrite=req.overwrite, inputs=_inputs(req))
        runner = Runner(RunConfig(device=dev, batch_size=req.batch_size, amp=req.amp,
                                  channels_last=req.channels_last, workers=req.workers), dist=d)
        res = evaluate(req.model, checkpoint=req.checkpoint, data=req.data, img_size=req.img_size,
                       use_ema=req.use_ema, limit_batches=req.limit_batches, model_kwargs=req.model_kwargs,
                       runner=runner)
        with stage as folder:
            if folder is not None:
                write_json(folder / "results.json", provenance(
                    command="evaluate", model=res["model"], checkpoint_sha256=res["checkpoint_sha256"],
                    device=res["device"], wall_time_s=watch.elapsed, random_weights=req.checkpoint is None,
                    world_size=d.world, extra={"results": res}))
    notes = [] if req.checkpoint else [f"note: {req.model} has random weights (no --checkpoint)"]
    summary = (f"{res['model']} on {res['data']} ({res['n']} images): top-1 {res['top1']:.2f}  "
               f"top-5 {res['top5']:.2f}  loss {res['loss']:.4f}  {res['throughput_img_s']:.1f} img/s -> "
               f"{stage.final}")
    return Outcome(output=stage.final, summary=summary, notes=notes, payload=res)


@dataclass
class PredictRequest:
    """The options of ``spectrascope predict``."""

    model: str
    checkpoint: str | None = None
    img_size: object = None
    device: str = "auto"
    model_kwargs: dict = field(default_factory=dict)
    images: str | None = None
    data: str | None = None
    num_images: int | None = None
    batch_size: int = 16
    topk: int = 5


def _prediction_lines(runner: Runner, model, pre, paths, topk: int) -> list[tuple[int, list[str]]]:
    lines: list[tuple[int, list[str]]] = []

    def on_batch(batch, out):
        probs = out.float().softmax(-1)
        p, idx = probs.topk(min(topk, probs.shape[-1]), dim=-1)
        rows = []
        for i, pi, ii in zip(batch.indices, p.tolist(), idx.tolist()):
            top = ", ".join(f"{c}:{q:.3f}" for c, q in zip(ii, pi))
            rows.append(f"{paths[i].name}: logits {tuple(probs.shape[1:])} top-{len(ii)} [{top}]")
        lines.append((batch.number, rows))

    agreed(runner.dist, lambda: runner.run(model, ImageDataset(paths, pre), on_batch=on_batch, need_output=True))
    return lines


def run_predict(req: PredictRequest) -> Outcome:
    """Top-k classes of every image; the outcome's payload holds the lines in image order (rank 0)."""
    if not isinstance(req.topk, int) or req.topk < 1:
        raise OptionError(f"{req.topk!r} is not a number of classes (an integer >= 1)", option="--topk")
    with session(req.device) as (d, dev):
        runner = Runner(RunConfig(device=dev, batch_size=req.batch_size), dist=d)
        try:
            model, pre = build_for_inference(req.model, checkpoint=req.checkpoint, img_size=req.img_size,
                                             device=dev, **req.model_kwargs)
        except TypeError as exc:        # an override the constructor does not take
            raise OptionError(str(exc).splitlines()[0], option="--model-kwargs") from None
        paths = resolve_image_paths(req.images, req.data, req.num_images)
        mine = _prediction_lines(runner, model, pre, paths, req.topk)
        gathered = d.gather_object(mine)
    lines = [row for part in sorted((p for g in (gathered or []) for p in g), key=lambda t: t[0]) for row in part[1]]
    notes = [] if req.checkpoint else [f"note: {req.model} has random weights (no --checkpoint); the classes are "
                                       "meaningless"]
    return Outcome(summary="\n".join(lines), notes=notes, payload={"lines": lines})
