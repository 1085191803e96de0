"""``freq-filter``: top-1 accuracy on low-pass and on high-pass filtered images against the filter
radius (Wang et al. 2020, "High-frequency component helps explain the generalization of
convolutional neural networks", HaohanWang/HFC).

For every radius ``r`` and labelled image ``x`` in [0, 1] (before the model's normalisation):

    low(x)  = real(ifft2(M_r * fft2(x))),          M_r = 1 where d <= r, ``outside`` elsewhere,
    high(x) = real(ifft2((1 - M_r) * fft2(x))),

with ``d = sqrt(fy^2 + fx^2)`` the distance from DC on the centred spectrum, in frequency-index
units (HFC's pixel distance; ``--units index``) or cycles per pixel (``--units cycles``), and no
clipping (as HFC). ``--outside 0`` gives the ideal filters; ``--outside 0.5`` is HFC's own mask,
which halves rather than removes what lies outside the disc. Radius 0 low-pass keeps DC (the
per-channel mean image); radius ``inf`` keeps the image as it is (``ops.bands.filter_images``).
Under ``torchrun`` the images are shared out and the counts summed.

Example:
    ``spectrascope freq-filter --model dfformer_s18 --data cifar10:data --radii 0,2,4,8,12,16,inf``
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from spectrascope.engine.variants import filter_counts
from spectrascope.errors import OptionError
from spectrascope.ops.bands import max_radius
from spectrascope.report import frequency as report
from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.options import choice

from spectrascope.analyses._robustness import (FORWARD_BATCH, LEVEL, LabelledSource, clean_counts, forward_batch,
                                               model_labels, prepare_model, rate, rates, run_block, sharded_counts)

__all__ = ["FreqFilter", "FilterResult", "parse_radii", "default_radii", "REFERENCE"]

REFERENCE = ("Wang et al. 2020, High-frequency component helps explain the generalization of convolutional "
             "neural networks (CVPR); HaohanWang/HFC")


@dataclass(kw_only=True)
class FilterResult(Result):
    """Accuracy on filtered images per radius and model.

    Attributes:
        method: units, outside, radii asked for, level, reference.
        images, data, run: as ``fourier-heatmap``.
        models: per model its record, ``clean`` error, and ``low`` / ``high``: ``radius`` (None for
            inf in results.json), ``error`` with ``error_low`` / ``error_high``, ``loss``, ``n``.
    """

    method: dict
    images: dict
    data: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)


def parse_radii(value):
    """``"0,2,4,inf"`` (or a sequence) -> sorted unique radii; ``inf`` keeps everything."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        text = str(item).strip().lower()
        try:
            r = math.inf if text in ("inf", "infinity") else float(text)
        except ValueError:
            raise OptionError(f"{item!r} is not a radius (a number >= 0 or inf)", option="--radii") from None
        if not r >= 0:
            raise OptionError(f"{item!r} is not a radius (a number >= 0 or inf)", option="--radii")
        out.append(r)
    if not out:
        raise OptionError("give at least one radius", option="--radii")
    return tuple(sorted(set(out)))


def _check_outside(value):
    if value is None or not (0.0 <= value <= 1.0):
        raise OptionError(f"{value!r} is not accepted; use 0 (ideal filters), 0.5 (HFC's mask) or a number in "
                          "[0, 1]", option="--outside")
    return value


def default_radii(H: int, W: int, units: str) -> tuple[float, ...]:
    """0, 1, 2, ... up to the largest distance (index units), or steps of 0.025 cycles per pixel,
    then ``inf``."""
    top = max_radius(H, W, "circle", units)
    step = 1.0 if units == "index" else 0.025
    return tuple(k * step for k in range(int(math.ceil(top / step)) + 1)) + (math.inf,)


def _curve(r: dict, first: int, radii) -> dict:
    idx = range(first, first + len(radii))
    return {"radius": [None if math.isinf(v) else v for v in radii],
            **{k: [r[k][i].item() for i in idx] for k in ("error", "error_low", "error_high", "loss", "errors")}}


def _filter_of(ctx, spec_, source: LabelledSource, radii, units: str, outside: float) -> dict:
    m = prepare_model(ctx, spec_, source)
    H, W = m.size
    dataset = source.dataset(m.pre)
    c = clean_counts(ctx, m, dataset)
    radii = radii or default_radii(H, W, units)
    settings = [(r, "low") for r in radii] + [(r, "high") for r in radii]

    def count(x, y, _idx):
        return filter_counts(m.model, x, y, settings, normalization=m.normalization, outside=outside, units=units,
                             runner=ctx.runner, forward_batch=forward_batch(ctx))
    counts = sharded_counts(ctx, dataset, count, len(settings))
    r = rates(counts)
    k = len(radii)
    return dict(m.record, clean=rate(c.errors[0], c.n, c.loss_sum[0]), n=counts.n,
                low=_curve(r, 0, radii), high=_curve(r, k, radii))


@register
class FreqFilter(Analysis):
    """Top-1 accuracy on low-pass and high-pass filtered images against the radius of a circular mask
    on the centred spectrum (Wang et al. 2020, HFC), filtered in [0, 1] pixel space before the
    model's normalisation; one curve per model on one axis per filter.

    Writes results.json, filter.csv and filter PNG+PDF. Under torchrun the images are shared out."""

    name = "freq-filter"
    summary = "Accuracy on low-/high-pass filtered inputs vs the filter radius (Wang et al. 2020)"
    needs = Needs(models="many", data="labelled")
    repeat_models = True
    options = (
        Option("radii", None, "comma-separated radii, inf keeps everything (default: 0, 1, 2, ... to the corner, "
                              "and inf)", metavar="R[,R]", parse=parse_radii),
        Option("units", "index", "radius units: index (frequency index, HFC) or cycles (per pixel)",
               type=choice("index", "cycles")),
        Option("outside", 0.0, "the low-pass mask outside the disc: 0 (ideal filter) or 0.5 (HFC's mask)",
               type=float, parse=_check_outside),
        FORWARD_BATCH,
    )
    result = FilterResult
    random_weights = "the curves describe an untrained network"

    def source(self, params):
        return LabelledSource.resolve(params.get("data"), params.get("num_images"))

    def run(self, ctx) -> FilterResult:
        p = ctx.params
        res = FilterResult(method={"name": "accuracy on filtered images", "reference": REFERENCE, "units": p.units,
                                   "outside": float(p.outside),
                                   "radii": None if p.radii is None else [None if math.isinf(r) else r
                                                                          for r in p.radii],
                                   "level": LEVEL, "space": "[0, 1] pixels before normalisation, not clipped"},
                           images=ctx.source.describe(), data={"spec": ctx.source.spec}, run=run_block(ctx))
        res.models = [_filter_of(ctx, s, ctx.source, p.radii, p.units, float(p.outside)) for s in ctx.specs]
        for rec, label in zip(res.models, model_labels(res.models)):
            rec["label"] = label
        return res

    def report(self, result, folder, style):
        rows = []
        for m in result.models:
            for kind in ("low", "high"):
                c = m[kind]
                for i, r in enumerate(c["radius"]):
                    rows.append({"model": m["label"], "filter": kind, "radius": "inf" if r is None else r,
                                 "units": result.method["units"], "accuracy": 1 - c["error"][i], "error": c["error"][i],
                                 "error_low": c["error_low"][i], "error_high": c["error_high"][i],
                                 "loss": c["loss"][i], "n": m["n"]})
        return report.write_rows(folder, "filter.csv", rows) + self.draw(result, folder, style)

    def draw(self, result, folder, style):
        return report.draw_filter(result, folder, style)

    def describe(self, result, output):
        lines = []
        for m in result.models:
            lo, hi = m["low"], m["high"]
            line = f"{m['label']}: clean accuracy {1 - m['clean']['error']:.3f}"
            first = next((i for i, r in enumerate(lo["radius"]) if r is not None), None)
            if first is not None:
                line += (f"; low-pass r={lo['radius'][first]:g}: {1 - lo['error'][first]:.3f}, high-pass "
                         f"r={hi['radius'][first]:g}: {1 - hi['error'][first]:.3f}")
            lines.append(f"{line} ({len(lo['radius'])} radii)")
        return lines + [f"freq-filter -> {output}"]
