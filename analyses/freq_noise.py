"""``freq-noise``: top-1 error under band-limited noise against the centre frequency of the band
(Park & Kim 2022, "How do vision transformers work?", Fig. 2; their public ``FreqAttack``).

For every band ``b`` (a ring of frequencies ``low_b <= d < high_b`` in cycles per pixel; ``d =
max(|fy|/H, |fx|/W)`` for the square rings of Park & Kim's code, or ``sqrt((fy/H)^2 + (fx/W)^2)``
for circular ones) and every labelled image ``x`` in [0, 1] (before the model's normalisation):

    x~ = clip(x + n_b, 0, 1),   n_b = real(ifft2(mask_b * fft2(z))),   z ~ N(0, 1) (or sign(N(0, 1))),

``n_b`` scaled to an L2 norm of ``eps`` per image channel (``--norm l2``, the default: every band
perturbs with the same energy, in the heat map's units) or ``z`` scaled by ``eps`` before the band
is cut out (``--norm scale``: the energy grows with the band's area, as Park & Kim's noise). The
base noise ``z`` of image ``i`` is drawn from a generator seeded from ``(--seed, i)`` and shared by
every band (common random numbers), so a curve is not blurred by independent draws and does not
depend on batching or on the number of processes (``engine.variants.band_noise_counts``).

``--bands N`` rings of width ``0.5 / N`` cover 0 .. 0.5 cycles per pixel (the last one includes the
Nyquist frequency 0.5; by default ``N = min(16, shorter side / 2)``, rings one frequency step wide
on the shorter side); ``--width W`` gives rings of width W around the same centres. Circular
rings leave out the corners beyond 0.5 cycles per pixel. Under ``torchrun`` the images are shared
out and the counts summed.

Example:
    ``spectrascope freq-noise --model dfformer_s18 --model poolformer_s12 --data cifar10:data --eps 4``
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from spectrascope.engine.variants import NoiseSpec, band_noise_counts
from spectrascope.errors import OptionError
from spectrascope.ops.bands import BASES, KINDS, band_mask
from spectrascope.ops.spectra import concentration
from spectrascope.report import frequency as report
from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.options import choice, parse_positive

from spectrascope.analyses._robustness import (FORWARD_BATCH, LEVEL, LabelledSource, clean_counts, forward_batch,
                                               model_labels, perturbation_seed, prepare_model, rate, rates,
                                               run_block, sharded_counts)

__all__ = ["FreqNoise", "NoiseResult", "noise_bands", "default_bands", "REFERENCE"]

REFERENCE = "Park & Kim 2022, How do vision transformers work? (ICLR), Fig. 2; FreqAttack of how-do-vits-work"


@dataclass(kw_only=True)
class NoiseResult(Result):
    """Error under band-limited noise per band and model.

    Attributes:
        method: shape, bands, width, eps, norm, base, seed, level, reference.
        images, data, run: as ``fourier-heatmap``.
        models: per model its record, ``clean`` error, and per band ``low`` / ``high`` / ``centres``
            (cycles per pixel), ``num_frequencies``, ``error`` with ``error_low`` / ``error_high``,
            ``loss``; ``concentration`` of the excess error in the class bands (synthetic data).
    """

    method: dict
    images: dict
    data: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)


def noise_bands(num: int, width: float | None = None) -> list[tuple[float, float]]:
    """The ``(low, high)`` rings (cycles per pixel) of ``--bands`` / ``--width`` (see the module
    doc); a ring that reaches 0.5 includes it."""
    step = 0.5 / num
    out = []
    for k in range(num):
        c = (k + 0.5) * step
        lo, hi = (k * step, (k + 1) * step) if width is None else (max(0.0, c - width / 2), c + width / 2)
        out.append((lo, math.nextafter(hi, math.inf) if hi >= 0.5 else hi))
    return out


def default_bands(H: int, W: int) -> int:
    """``--bands`` by default: rings one frequency step wide on the shorter side, at most 16."""
    return max(1, min(16, min(H, W) // 2))


def _check_width(value):
    if value is not None and not (0 < value <= 1.0):
        raise OptionError(f"{value!r} is not a band width (a number in (0, 1] cycles per pixel)", option="--width")
    return value


def _check_eps(value):
    if value is None or isinstance(value, bool) or not (math.isfinite(value) and value >= 0):
        raise OptionError(f"{value!r} is not a noise size (a finite number >= 0)", option="--eps")
    return value


def _noise_of(ctx, spec_, source: LabelledSource, noise: NoiseSpec) -> dict:
    p = ctx.params
    m = prepare_model(ctx, spec_, source)
    H, W = m.size
    kind = p.shape
    bands = noise_bands(p.bands or default_bands(H, W), p.width)
    dataset = source.dataset(m.pre)
    clean = rate(*_first(clean_counts(ctx, m, dataset)))
    masks = torch.stack([band_mask(H, W, lo, hi, kind, "cycles") for lo, hi in bands])

    def count(x, y, idx):
        return band_noise_counts(m.model, x, y, masks, noise, normalization=m.normalization, indices=idx,
                                 runner=ctx.runner, forward_batch=forward_batch(ctx))
    counts = sharded_counts(ctx, dataset, count, len(bands))
    r = rates(counts)
    centres = [(lo + min(hi, 0.5)) / 2 for lo, hi in bands]
    rec = dict(m.record, clean=clean, low=[lo for lo, _ in bands], high=[min(hi, 0.5) for _, hi in bands],
               centres=centres, num_frequencies=masks.flatten(1).sum(1).tolist(), n=counts.n,
               error=r["error"].tolist(), error_low=r["error_low"].tolist(), error_high=r["error_high"].tolist(),
               loss=r["loss"].tolist(), errors=r["errors"].tolist())
    empty = [k + 1 for k, c in enumerate(rec["num_frequencies"]) if c == 0]
    if empty:
        ctx.warn(f"{m.label}: noise band(s) {', '.join(map(str, empty))} hold no frequency of a {H}x{W} input "
                 "(their error is the clean error); use fewer or wider bands")
    cb = source.class_bands(m.size)
    if cb:
        conc = concentration(r["error"], centres, cb, baseline=clean["error"])
        rec.update(class_bands=cb, concentration=None if conc != conc else float(conc))
    return rec


def _first(c):
    return c.errors[0], c.n, c.loss_sum[0]


@register
class FreqNoise(Analysis):
    """Top-1 error under band-limited noise against the band's centre frequency (Park & Kim 2022,
    Fig. 2): square rings as their FreqAttack or circular ones, Gaussian or sign base noise of a fixed
    L2 norm per band (or a fixed scale), added in [0, 1] pixel space before the model's normalisation;
    one curve per model on one axis.

    Writes results.json, noise.csv and noise PNG+PDF. Under torchrun the images are shared out."""

    name = "freq-noise"
    summary = "Error under band-limited noise vs the band's centre frequency (Park & Kim 2022)"
    needs = Needs(models="many", data="labelled")
    repeat_models = True
    options = (
        Option("bands", None, "number of rings from DC to 0.5 cycles per pixel (default: min(16, shorter side / 2))",
               type=int, metavar="N",
               parse=parse_positive("--bands", "a number of bands (an integer >= 1)")),
        Option("width", None, "ring width in cycles per pixel (default: 0.5 / --bands, rings that tile the plane)",
               type=float, metavar="W", parse=_check_width),
        Option("shape", "square", "square rings max(|fy|/H, |fx|/W) as Park & Kim's code, or circle",
               type=choice(*KINDS)),
        Option("eps", 4.0, "L2 norm of the noise per image channel in [0, 1] pixels (--norm l2), or the scale of "
                           "the base noise (--norm scale)", type=float, parse=_check_eps),
        Option("norm", "l2", "l2: every band's noise has norm eps; scale: eps times the base noise, then the band",
               type=choice("l2", "scale")),
        Option("base", "gaussian", "base noise: gaussian N(0, 1) or its sign", type=choice(*BASES)),
        FORWARD_BATCH,
    )
    result = NoiseResult
    random_weights = "the curves describe an untrained network"

    def source(self, params):
        return LabelledSource.resolve(params.get("data"), params.get("num_images"))

    def run(self, ctx) -> NoiseResult:
        p = ctx.params
        seed = perturbation_seed(ctx)
        noise = NoiseSpec(eps=1.0, base=p.base, l2=float(p.eps), seed=seed) if p.norm == "l2" else \
            NoiseSpec(eps=float(p.eps), base=p.base, seed=seed)
        desc = f"L2 norm {p.eps:g} per channel" if p.norm == "l2" else f"scale {p.eps:g}"
        res = NoiseResult(method={"name": "error under band-limited noise", "reference": REFERENCE,
                                  "shape": p.shape, "bands": p.bands, "width": p.width,
                                  "eps": float(p.eps), "norm": p.norm, "norm_desc": desc, "base": p.base,
                                  "seed": seed, "level": LEVEL, "space": "[0, 1] pixels before normalisation"},
                          images=ctx.source.describe(), run=run_block(ctx))
        res.models = [_noise_of(ctx, s, ctx.source, noise) for s in ctx.specs]
        for rec, label in zip(res.models, model_labels(res.models)):
            rec["label"] = label
        res.data = {"spec": ctx.source.spec, "class_bands": res.models[0].get("class_bands")}
        return res

    def report(self, result, folder, style):
        rows = []
        for m in result.models:
            for b in range(len(m["centres"])):
                rows.append({"model": m["label"], "band": b + 1, "low": round(m["low"][b], 6),
                             "high": round(m["high"][b], 6), "centre": round(m["centres"][b], 6),
                             "num_frequencies": m["num_frequencies"][b], "error": m["error"][b],
                             "error_low": m["error_low"][b], "error_high": m["error_high"][b], "loss": m["loss"][b],
                             "n": m["n"], "clean_error": m["clean"]["error"]})
        return report.write_rows(folder, "noise.csv", rows) + self.draw(result, folder, style)

    def draw(self, result, folder, style):
        return report.draw_noise(result, folder, style)

    def describe(self, result, output):
        lines = []
        for m in result.models:
            worst = int(np.argmax(m["error"]))
            line = (f"{m['label']}: clean error {m['clean']['error']:.3f}; worst band "
                    f"[{m['low'][worst]:.3f}, {m['high'][worst]:.3f}) c/px: error {m['error'][worst]:.3f}")
            if m.get("concentration") is not None:
                line += f"; class-band concentration {m['concentration']:.2f}"
            lines.append(line)
        return lines + [f"freq-noise -> {output}"]
