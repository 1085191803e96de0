"""Shared steps of the filter figure recipes (not a recipe itself: the name starts with '_')."""
from __future__ import annotations


def filters_recipe(ctx, model: str, **kw) -> dict:
    """``spectrascope filters`` of one model into ``<figure>/<model>/``; its notes become the
    recipe's warnings (re-printed by ``spectrascope figure``)."""
    from spectrascope.pipelines.filters import aff_lines, run_filters
    kw.setdefault("cmap", ctx.option("cmap"))
    res = run_filters(model, checkpoint=ctx.checkpoint(model), img_size=ctx.img_size, device=ctx.device,
                      images=ctx.images, data=ctx.data, num_images=ctx.num_images, batch_size=ctx.batch_size,
                      output=ctx.output / model, progress=ctx.progress, **kw)
    summary = res.payload
    ctx.warn(*[n for n in res.notes if not n.startswith("random weights")])
    out = {"model": model, "figures": [f"{model}/{f}" for f in summary["figures"]]}
    if summary.get("layers"):
        kinds: dict[str, int] = {}
        for layer in summary["layers"]:
            for k, n in layer["kinds"].items():
                kinds[k] = kinds.get(k, 0) + n
        out["filter_kinds"] = kinds
    if summary.get("aff"):
        out["equivalence_max_abs_error"] = max(a["equivalence_max_abs_error"] or 0.0 for a in summary["aff"])
        out["equivalence"] = aff_lines(summary)
    if summary.get("routing"):
        out["routing_argmax_share"] = {k: [round(v, 3) for v in r["argmax_share"]]
                                       for k, r in summary["routing"].items()}
    return out
