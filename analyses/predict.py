"""``predict``: the top-k classes of a model on images, one line per image (a smoke test of a
checkpoint). Under ``torchrun`` the images are shared out and rank 0 prints them in order.

Example:
    ``spectrascope predict --model dfformer_s18 --checkpoint dfformer_s18.pth --images photos/``
"""
from __future__ import annotations

from dataclasses import dataclass, field

from spectrascope.errors import OptionError
from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.options import parse_positive

__all__ = ["Predict", "PredictResult"]


@dataclass(kw_only=True)
class PredictResult(Result):
    """Per image (in order): its file name, the top-k class indices and probabilities."""

    lines: list[str] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)


@register
class Predict(Analysis):
    """Run a model on images and print the top-k classes (a smoke test of a checkpoint)."""

    name = "predict"
    summary = "Top-k classes of a model on images (a smoke test of a checkpoint)"
    needs = Needs(models="one", data="images", output=False)
    options = (Option("topk", 5, "classes per image", type=int,
                      parse=parse_positive("--topk", "a number of classes (an integer >= 1)")),)
    result = PredictResult
    random_weights = "the classes are meaningless"

    def run(self, ctx) -> PredictResult:
        built = ctx.build(ctx.spec)
        names = [p.name for p in ctx.source.paths] or list(ctx.source.names)
        k = ctx.params.topk
        mine: list[tuple[int, list[dict]]] = []

        def on_batch(batch, out):
            probs = out.float().softmax(-1)
            p, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
            mine.append((batch.number, [{"image": names[i], "classes": ii, "probabilities": pi,
                                         "shape": list(probs.shape[1:])}
                                        for i, pi, ii in zip(batch.indices, p.tolist(), idx.tolist())]))

        try:
            ctx.runner.run(built.model, ctx.source.dataset(built.pre), on_batch=on_batch, need_output=True)
        except TypeError as exc:          # an override the constructor does not take surfaces at build time
            raise OptionError(str(exc).splitlines()[0], option="--model-kwargs") from None
        gathered = ctx.dist.gather_object(mine) or []
        preds = [row for part in sorted((p for g in gathered for p in g), key=lambda t: t[0]) for row in part[1]]
        lines = [f"{r['image']}: logits {tuple(r['shape'])} top-{len(r['classes'])} ["
                 + ", ".join(f"{c}:{q:.3f}" for c, q in zip(r["classes"], r["probabilities"])) + "]" for r in preds]
        return PredictResult(lines=lines, predictions=preds)

    def describe(self, result, output):
        return list(result.lines)
