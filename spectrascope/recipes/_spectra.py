"""Shared steps of the Fourier figure recipes (not a recipe itself: the name starts with '_')."""
from __future__ import annotations

from spectrascope.probe.spec import TapList
from spectrascope.seam import run


def labels_for(ctx, labels: dict) -> list[str]:
    return [labels.get(m, m) for m in ctx.models]


def models_title(base: str, ctx, labels: dict) -> str:
    """``base (A vs B)`` over the models actually drawn (a skipped model leaves the title)."""
    short = [labels.get(m, m).split(" (")[0] for m in ctx.models]
    return f"{base} ({' vs '.join(short)})" if short else base


def _analysis(ctx, analysis: dict) -> dict:
    kw = dict(ctx.analysis_kwargs(), **analysis)
    if ctx.option("freq_axis"):
        kw["freq_axis"] = ctx.option("freq_axis")
    return kw


def amplitude_recipe(ctx, *, labels: dict, title: str, **analysis) -> dict:
    """Relative log-amplitude curves of ``ctx.models`` on the same images -> results + figures."""
    result = run("amplitude", labels=tuple(labels_for(ctx, labels)), **_analysis(ctx, analysis))
    ctx.save(result, title=title)
    return dict(_summary(result, ctx), title=title)


def spectrum_recipe(ctx, *, labels: dict, title: str, **analysis) -> dict:
    """2-D spectrum maps of ``ctx.models`` on the same images -> results + figures."""
    if ctx.option("cmap"):
        analysis["cmap"] = ctx.option("cmap")
    result = run("spectrum", labels=tuple(labels_for(ctx, labels)), **_analysis(ctx, analysis))
    ctx.save(result, title=title)
    return dict(_summary(result, ctx), title=title)


def _summary(result, ctx) -> dict:
    return {
        "kind": result.kind,
        "images": result.images["count"],
        "taps": {m["model"]: [t["name"] for t in m["taps"]] for m in result.models},
        "high_freq_delta": {m["model"]: [round(t["high_freq_delta"], 4) for t in m["taps"]]
                            for m in result.models},
        "skipped": [m for m, _ in ctx.skipped],
    }


#: normalised depth of the last stage-3 block of a [3, 3, 9, 3] network (ConvNeXt-T, Swin-T has [2, 2, 6, 2]
#: with the same ratio 14/17 ~ 0.82 at the last stage-3 block of ConvNeXt-T / FocalNet-T)
DEEP_MID_DEPTH = 14 / 17


def one_mixer_per_model(name, model, taps: TapList) -> TapList:
    """The token-mixer output of the last block of stage 3 (hierarchical models), or of the
    block at the same normalised depth (single-stage models such as ViT)."""
    mixers = TapList(t for t in taps if t.role == "mixer")
    stages = sorted({t.stage for t in mixers})
    if len(stages) >= 3:
        s3 = [t for t in mixers if t.stage == 3]
        return TapList([max(s3, key=lambda t: t.index)])
    best = min(mixers, key=lambda t: abs((t.depth if t.depth is not None else 0.0) - DEEP_MID_DEPTH))
    return TapList([best])
