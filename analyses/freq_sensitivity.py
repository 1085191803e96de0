"""``freq-sensitivity``: the Fourier sensitivity of a model, the spectrum of the gradient of its
loss with respect to the input image (kiranchari/Fourier-Sensitivity-Regularization).

For every labelled image ``x`` in [0, 1] (the gradient is taken in that space, through the model's
normalisation) with ``g = d CE(f(x), y) / d x``:

    P(fy, fx) = |fft2(mean_c g)(fy, fx)|^2   (unitary FFT),
    S(k)      = sum of P over the ring round(sqrt(fy'^2 + fx'^2)) = k,  k = 1 .. R (DC left out),

normalised per image to sum to 1 (``ops.spectra.fourier_sensitivity``; for a non-square input
``f' = f * min(H, W) / side``); the curve is the mean over images, with a 95 % normal interval of
that mean. An image whose gradient is exactly zero (a saturated softmax) has no profile: it is
counted and left out. The mean of the per-image power maps (each divided by its total without DC)
is kept too, DC centred, and for synthetic data the *band concentration*: the share of that power
at the frequencies of the class bands over the share of those frequencies (1 = no preference).

One forward and one backward per batch; under ``torchrun`` the images are shared out and the
sums all-reduced.

Example:
    ``spectrascope freq-sensitivity --model dfformer_s18 --model gfnet_h_ti --data cifar10:data``
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from spectrascope.engine.sensitivity import input_gradients
from spectrascope.ops.bands import centred, radius_grid
from spectrascope.ops.binomial import normal_quantile
from spectrascope.ops.spectra import fourier_sensitivity, gradient_power
from spectrascope.report import frequency as report
from spectrascope.seam import Analysis, Needs, Option, Result, register

from spectrascope.analyses._robustness import (LEVEL, LabelledSource, model_labels, prepare_model, run_block)

__all__ = ["FreqSensitivity", "SensitivityResult", "REFERENCE"]

REFERENCE = ("Fourier sensitivity of input gradients: kiranchari/Fourier-Sensitivity-Regularization "
             "(Krishnamachari et al. 2023), regularizers.py")


@dataclass(kw_only=True)
class SensitivityResult(Result):
    """Fourier sensitivity per model.

    Attributes:
        method: level, reference, what the profile is.
        images, data, run: as ``fourier-heatmap``.
        models: per model its record, ``rings`` (1 .. R), ``radius_cycles`` (ring / shorter side),
            ``profile`` (mean share of the power per ring) with ``profile_low`` / ``profile_high``,
            ``images_used`` and ``zero_gradients``; ``band_concentration`` for synthetic data.
        maps: per model ``m<k>_power``: mean normalised power map, DC centred (``sensitivity.npz``).
    """

    method: dict
    images: dict
    data: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    maps: dict = field(default_factory=dict, metadata={"json": False})

    def arrays(self) -> dict:
        return {"sensitivity.npz": {k: np.asarray(v) for k, v in self.maps.items()}}

    def load_arrays(self, files: dict) -> None:
        self.maps = dict(files.get("sensitivity.npz", {}))


def _sums(ctx, m, dataset):
    """(sum of profiles, sum of squared profiles, valid images, sum of normalised power maps, images)
    over every rank."""
    H, W = m.size
    s1 = s2 = pmap = None
    valid_n = total = 0
    with ctx.dist.together():
        for b in ctx.runner.batches(dataset):
            y = torch.as_tensor(b.extra[0], dtype=torch.long, device=b.x.device)
            grad = input_gradients(m.model, b.x, y, normalization=m.normalization, runner=ctx.runner).double()
            prof, valid = fourier_sensitivity(grad)
            power = gradient_power(grad)
            power[:, 0, 0] = 0.0
            tot = power.flatten(1).sum(1)
            t = tot[:, None, None]
            norm = torch.where(t > 0, power / torch.where(t > 0, t, torch.ones_like(t)), torch.zeros_like(power))
            v = valid.to(prof.dtype)[:, None]
            parts = ((prof * v).sum(0), (prof ** 2 * v).sum(0), norm[valid].sum(0))
            s1, s2, pmap = parts if s1 is None else (s1 + parts[0], s2 + parts[1], pmap + parts[2])
            valid_n += int(valid.sum())
            total += len(b.indices)
    d = ctx.dist
    R = int(fourier_sensitivity(torch.zeros(1, 1, H, W, dtype=torch.float64))[0].shape[1])
    zero = torch.zeros(R, dtype=torch.float64)
    s1 = d.all_reduce((s1 if s1 is not None else zero).cpu())
    s2 = d.all_reduce((s2 if s2 is not None else zero).cpu())
    pmap = d.all_reduce((pmap if pmap is not None else torch.zeros(H, W, dtype=torch.float64)).cpu())
    counts = d.all_reduce(torch.tensor([valid_n, total], dtype=torch.long))
    return s1, s2, int(counts[0]), pmap, int(counts[1])


def _band_concentration(pmap: torch.Tensor, bands) -> float | None:
    H, W = pmap.shape
    d = radius_grid(H, W, "circle", "cycles")
    inside = torch.zeros_like(d, dtype=torch.bool)
    for lo, hi in bands:
        inside |= (d >= lo) & (d < hi)
    inside[0, 0] = False
    others = torch.ones_like(inside)
    others[0, 0] = False
    total = float(pmap[others].sum())
    share = float(inside.double().sum() / others.double().sum())
    if total <= 0 or share <= 0:
        return None
    return float(pmap[inside].sum()) / total / share


def _sensitivity_of(ctx, k: int, spec_, source: LabelledSource, result: SensitivityResult) -> dict:
    m = prepare_model(ctx, spec_, source)
    H, W = m.size
    s1, s2, n, pmap, total = _sums(ctx, m, source.dataset(m.pre))
    mean = s1 / max(n, 1)
    var = (s2 / max(n, 1) - mean ** 2).clamp_min(0) * (n / max(n - 1, 1))
    half = normal_quantile(LEVEL) * var.sqrt() / math.sqrt(max(n, 1))
    rings = list(range(1, len(mean) + 1))
    if n < total:
        ctx.warn(f"{m.label}: {total - n} of {total} images have a zero input gradient (a saturated softmax) and "
                 "are left out of the profile")
    mean_map = pmap / max(n, 1)
    result.maps[f"m{k}_power"] = centred(mean_map).numpy()
    rec = dict(m.record, rings=rings, radius_cycles=[r / min(H, W) for r in rings], profile=mean.tolist(),
               profile_low=(mean - half).clamp_min(0).tolist(), profile_high=(mean + half).tolist(),
               images_used=n, zero_gradients=total - n)
    bands = source.class_bands(m.size)
    if bands and n:
        rec.update(class_bands=bands, band_concentration=_band_concentration(mean_map, bands))
    return rec


@register
class FreqSensitivity(Analysis):
    """Fourier sensitivity (kiranchari/Fourier-Sensitivity-Regularization): the unitary-FFT power of
    the input gradient of the loss (channel mean), summed over rings of radius and normalised per
    image; one curve per model on one axis, and the mean power maps (DC centred).

    Writes results.json, sensitivity.csv, sensitivity.npz, sensitivity and sensitivity_maps
    PNG+PDF. Under torchrun the images are shared out."""

    name = "freq-sensitivity"
    summary = "Fourier sensitivity: the radial spectrum of the loss's input gradient"
    needs = Needs(models="many", data="labelled", gradients=True)
    repeat_models = True
    options = (
        Option("cmap", "magma", "colour map of the power maps", metavar="NAME", parse=report.checked_cmap),
    )
    result = SensitivityResult
    random_weights = "the spectra describe an untrained network"
    draw_options = ("cmap",)

    def source(self, params):
        return LabelledSource.resolve(params.get("data"), params.get("num_images"))

    def run(self, ctx) -> SensitivityResult:
        res = SensitivityResult(method={"name": "Fourier sensitivity of the input gradient", "reference": REFERENCE,
                                        "level": LEVEL, "fft": "unitary (norm='ortho'), channel mean",
                                        "space": "gradient with respect to [0, 1] pixels"},
                                images=ctx.source.describe(), run=run_block(ctx))
        res.models = [_sensitivity_of(ctx, k, s, ctx.source, res) for k, s in enumerate(ctx.specs)]
        for rec, label in zip(res.models, model_labels(res.models)):
            rec["label"] = label
        res.data = {"spec": ctx.source.spec, "class_bands": res.models[0].get("class_bands")}
        return res

    def report(self, result, folder, style):
        rows = [{"model": m["label"], "ring": k, "radius_cycles": round(r, 6), "share": v, "share_low": lo,
                 "share_high": hi, "images": m["images_used"]}
                for m in result.models
                for k, r, v, lo, hi in zip(m["rings"], m["radius_cycles"], m["profile"], m["profile_low"],
                                           m["profile_high"])]
        return report.write_rows(folder, "sensitivity.csv", rows) + self.draw(result, folder, style)

    def draw(self, result, folder, style):
        return report.draw_sensitivity(result, folder, style)

    def describe(self, result, output):
        lines = []
        for m in result.models:
            peak = int(np.argmax(m["profile"]))
            line = (f"{m['label']}: gradient power peaks at {m['radius_cycles'][peak]:.3f} c/px "
                    f"({m['profile'][peak]:.3f} of it) over {m['images_used']} images")
            if m.get("band_concentration") is not None:
                line += f"; class-band concentration {m['band_concentration']:.2f}"
            lines.append(line)
        return lines + [f"freq-sensitivity -> {output}"]
