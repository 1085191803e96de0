"""``evaluate``: top-1 / top-5 accuracy, loss and throughput of a model on a data set's
validation split, as results.json. Under ``torchrun`` the batches are shared out and the
numbers equal one process exactly (per-batch sums, ``math.fsum``; see ``train.metrics``).

A spectrascope training checkpoint supplies the architecture (overrides, input size, number of
classes), so ``--model`` may be left out; for other checkpoints the head must fit the data.

Example:
    ``spectrascope evaluate --checkpoint runs/train/x/best.pth --data synthetic``
"""
from __future__ import annotations

from dataclasses import dataclass, field

from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.options import parse_positive
from spectrascope.train.evaluate import evaluate

__all__ = ["Evaluate", "EvaluateResult"]


@dataclass(kw_only=True)
class EvaluateResult(Result):
    """``results``: model, data, split, classes, input size, checkpoint (and its sha256), top1, top5
    (percent), loss (mean cross-entropy), n, time and images/s."""

    results: dict = field(default_factory=dict)


@register
class Evaluate(Analysis):
    """Top-1/top-5 accuracy, loss and throughput on a data spec's validation split -> results.json
    (under torchrun the batches are shared out; the numbers equal one process)."""

    name = "evaluate"
    summary = "Top-1/top-5 accuracy, loss and throughput on a data set's validation split"
    needs = Needs(models="one", data="labelled", seed=False)
    shared = {"model": {"required": False, "help": "registry name, alias or timm:<name> (optional with a "
                                                   "spectrascope training checkpoint)"},
              "batch_size": {"default": 64, "aliases": ("-b",)},
              "workers": {"aliases": ("-j",)}}
    without = ("pretrained", "weights_dir", "images", "num_images")
    options = (
        Option("use_ema", False, "evaluate the EMA weights of the checkpoint", type=bool),
        Option("limit_batches", None, "evaluate the first N batches only", type=int,
               parse=parse_positive("--limit-batches")),
    )
    result = EvaluateResult

    def source(self, params):
        return None

    def tag(self, params) -> str:
        return str(params.model or "checkpoint").replace("timm:", "")

    def run(self, ctx) -> EvaluateResult:
        p = ctx.params
        res = evaluate(p.model, checkpoint=p.checkpoint, data=p.data, img_size=p.img_size, use_ema=p.use_ema,
                       limit_batches=p.limit_batches, model_kwargs=p.model_kwargs, runner=ctx.runner)
        if p.checkpoint is None:
            ctx.note(f"random weights for {res['model']} (no checkpoint given): the accuracy is that of an "
                     "untrained network")
        ctx.provenance.update({"model": res["model"], "checkpoint_sha256": res["checkpoint_sha256"],
                               "random_weights": p.checkpoint is None})
        return EvaluateResult(results=res)

    def describe(self, result, output):
        r = result.results
        return [f"{r['model']} on {r['data']} ({r['n']} images): top-1 {r['top1']:.2f}  top-5 {r['top5']:.2f}  "
                f"loss {r['loss']:.4f}  {r['throughput_img_s']:.1f} img/s -> {output}"]
