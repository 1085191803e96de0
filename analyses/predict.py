"""``predict``: the top-k classes of a model on images, one line per image (a smoke test of a
checkpoint), each class with its name: the names a spectrascope training checkpoint records (its
data set's classes), else the ImageNet-1k names for a 1000-class head (``io.classnames``). Under
``torchrun`` the images are shared out and rank 0 prints them in order.

Example:
    ``spectrascope predict --model dfformer_s18 --checkpoint dfformer_s18.pth --images photos/``
"""
from __future__ import annotations

from dataclasses import dataclass, field

from spectrascope.errors import OptionError
from spectrascope.io.classnames import class_names
from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.options import parse_positive

__all__ = ["Predict", "PredictResult"]


@dataclass(kw_only=True)
class PredictResult(Result):
    """Per image (in order): its file name, the top-k class indices, their names (when known) and
    probabilities."""

    lines: list[str] = field(default_factory=list)
    predictions: list[dict] = field(default_factory=list)


def _names(built, preds) -> list[str] | None:
    """The class names of the model's head: recorded by its training checkpoint, or ImageNet's."""
    if not preds:
        return None
    args = (getattr(built.model, "checkpoint_info", None) or {}).get("args")
    meta = args.get("spectrascope") if isinstance(args, dict) else None
    recorded = meta.get("classes") if isinstance(meta, dict) else None
    return class_names(int(preds[0]["shape"][-1]), recorded)


def _line(r: dict) -> str:
    """``photo.jpg: logits (1000,) top-2 [207 golden retriever:0.812, 208 Labrador retriever:0.101]``."""
    names = r.get("names") or [None] * len(r["classes"])
    items = [f"{c} {n}:{q:.3f}" if n else f"{c}:{q:.3f}" for c, n, q in zip(r["classes"], names, r["probabilities"])]
    return f"{r['image']}: logits {tuple(r['shape'])} top-{len(r['classes'])} [" + ", ".join(items) + "]"


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
        known = _names(built, preds)
        for r in preds:
            r["names"] = [known[c] for c in r["classes"]] if known else None
        return PredictResult(lines=[_line(r) for r in preds], predictions=preds)

    def describe(self, result, output):
        return list(result.lines)
