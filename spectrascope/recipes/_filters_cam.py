"""Shared steps of the filter figure recipes (not a recipe itself: the name starts with '_')."""
from __future__ import annotations


#: what the rough filter-kind counts mean without trained weights
RANDOM_KINDS = ("random weights: untrained filters get these low/high/band-pass labels too, so the counts are no "
                "evidence of the paper's finding (give a checkpoint: the counts are then compared with the same "
                "layers at initialisation)")


def _count_kinds(layers) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for layer in layers:
        for k, n in layer["kinds"].items():
            kinds[k] = kinds.get(k, 0) + n
    return kinds


def _kinds_with_baseline(ctx, model: str, res, kw) -> dict:
    """The rough filter kinds (``ops.filters.filter_kind``) only beside a baseline: with a checkpoint,
    the same layers at initialisation (a fresh random draw, nothing written); with random weights,
    the counts under a name that says so and a warning."""
    from spectrascope.seam import run
    kinds = _count_kinds(res.layers)
    if ctx.checkpoint(model) is None:
        ctx.warn(f"{model}: {RANDOM_KINDS}")
        return {"filter_kinds_random_weights": kinds, "filter_kinds_note": RANDOM_KINDS}
    init = run("filters", model=model, img_size=ctx.img_size, device=ctx.device, layers=kw.get("layers"),
               channels=kw.get("channels"), seed=0)
    return {"filter_kinds": kinds, "filter_kinds_at_init": _count_kinds(init.layers),
            "filter_kinds_note": "trained counts beside the same layers at initialisation (seed 0)"}


def filters_recipe(ctx, model: str, **kw) -> dict:
    """``spectrascope filters`` of one model into ``<figure>/<model>/``; its notes become the
    recipe's warnings (re-printed by ``spectrascope figure``)."""
    from spectrascope.analyses.filters import aff_lines
    from spectrascope.seam import run
    kw.setdefault("cmap", ctx.option("cmap"))
    res = run("filters", model=model, checkpoint=ctx.checkpoint(model), img_size=ctx.img_size, device=ctx.device,
              images=ctx.images, data=ctx.data, num_images=ctx.num_images, batch_size=ctx.batch_size,
              output=ctx.output / model, progress=ctx.progress, **kw)
    ctx.warn(*[n for n in res.notes if not n.startswith("random weights")])
    out = {"model": model, "figures": [f"{model}/{f}" for f in res.files if f.endswith((".png", ".pdf"))]}
    if res.layers:
        out.update(_kinds_with_baseline(ctx, model, res, kw))
    if res.aff:
        out["equivalence_max_abs_error"] = max(a["equivalence_max_abs_error"] or 0.0 for a in res.aff)
        out["equivalence"] = aff_lines(res)
    if res.routing:
        out["routing_argmax_share"] = {k: [round(v, 3) for v in r["argmax_share"]] for k, r in res.routing.items()}
    return out
