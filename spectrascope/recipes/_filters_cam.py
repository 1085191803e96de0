"""Shared steps of the filter figure recipes (not a recipe itself: the name starts with '_')."""
from __future__ import annotations


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
        kinds: dict[str, int] = {}
        for layer in res.layers:
            for k, n in layer["kinds"].items():
                kinds[k] = kinds.get(k, 0) + n
        out["filter_kinds"] = kinds
    if res.aff:
        out["equivalence_max_abs_error"] = max(a["equivalence_max_abs_error"] or 0.0 for a in res.aff)
        out["equivalence"] = aff_lines(res)
    if res.routing:
        out["routing_argmax_share"] = {k: [round(v, 3) for v in r["argmax_share"]] for k, r in res.routing.items()}
    return out
