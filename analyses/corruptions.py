"""``corruptions``: top-1 error under the common corruptions of ImageNet-C (Hendrycks & Dietterich
2019), applied on the fly with the ``imagecorruptions`` package, and the Fourier spectrum of what
each corruption adds (Yin et al. 2019, Fig. 4).

For every corruption ``c`` (the 15 of ImageNet-C with ``--corruptions common``, the 4 extra with
``validation``, all 19 with ``all``, a group or a comma list), severity ``s`` and labelled image
``x`` at the model's input size (rounded to uint8, the package's input; ``engine.corruptions``
seeds every call so that a run is reproducible and equal on any number of processes):

    E(c, s)  = top-1 error on c(x, s),     E(c) = mean_s E(c, s),     mean error = mean_c E(c),
    F(c, s)  = mean over images and channels of |fft2(c(x, s) - x)|  (unitary, DC centred).

The *mean corruption error* reported is the unnormalised mean error over corruptions and
severities (as CIFAR-C papers report it); Hendrycks & Dietterich's mCE divides each corruption's
summed error by AlexNet's, which needs AlexNet's errors on the same images. ``--heatmap DIR``
takes a ``fourier-heatmap`` result (its model of the same label, else its first) and draws its map
beside the spectra, so that what a corruption adds can be read against where the model is fragile.

The package is an optional dependency (``pip install imagecorruptions``); ``spectrascope.compat``
makes it work beside setuptools >= 81, numpy 2 and scikit-image >= 0.19. Inputs must be at least
32 x 32 px (the package's limit). Under ``torchrun`` the images are shared out and the counts and
spectra summed.

Example:
    ``spectrascope corruptions --model dfformer_s18 --data cifar10:data --corruptions common``
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from spectrascope.engine.corruptions import MIN_SIDE, SUBSETS, corruption_counts, corruption_names
from spectrascope.errors import DataError, OptionError
from spectrascope.ops.bands import centred, radius_grid
from spectrascope.report import frequency as report
from spectrascope.seam import Analysis, Needs, Option, Result, register
from spectrascope.seam.result import load_result

from spectrascope.analyses._robustness import (FORWARD_BATCH, LEVEL, LabelledSource, clean_counts, forward_batch,
                                               model_labels, perturbation_seed, prepare_model, rate, run_block)

__all__ = ["Corruptions", "CorruptionsResult", "REFERENCE"]

REFERENCE = ("Hendrycks & Dietterich 2019, Benchmarking neural network robustness to common corruptions and "
             "perturbations (ICLR); imagecorruptions 1.1.2; spectra as Yin et al. 2019, Fig. 4")
#: radius (cycles per pixel) above which a spectrum's energy counts as high-frequency in the summary
HIGH_FREQ = 0.25


@dataclass(kw_only=True)
class CorruptionsResult(Result):
    """Errors under corruptions and their spectra.

    Attributes:
        method: seed, level, reference, the package's version.
        images, data, run: as ``fourier-heatmap``.
        corruptions, severities: what was applied; ``spectrum_severity``: the severity drawn.
        models: per model its record, ``clean`` error, ``mean_error``, and ``per_corruption[c]``:
            ``error`` (mean over severities), ``by_severity`` with its Wilson bounds, ``loss_by_severity``.
        spectra_sizes: the input sizes (``HxW``) whose spectra are kept; ``high_freq_share[c]``: the
            share of ``F(c, spectrum_severity)^2`` beyond 0.25 cycles per pixel (first size).
        heatmap: the heat map drawn beside the spectra (label, folder), when ``--heatmap`` was given.
        maps: ``spectrum_<HxW>_<c>_s<s>`` and ``heatmap_error`` (``corruptions.npz``).
    """

    method: dict
    images: dict
    data: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=list)
    spectrum_severity: int = 3
    models: list[dict] = field(default_factory=list)
    spectra_sizes: list[str] = field(default_factory=list)
    high_freq_share: dict = field(default_factory=dict)
    heatmap: dict | None = None
    maps: dict = field(default_factory=dict, metadata={"json": False})

    def arrays(self) -> dict:
        return {"corruptions.npz": {k: np.asarray(v) for k, v in self.maps.items()}}

    def load_arrays(self, files: dict) -> None:
        self.maps = dict(files.get("corruptions.npz", {}))


def _names(value) -> tuple[str, ...]:
    try:
        known = corruption_names("all")
    except ImportError as exc:
        raise OptionError(str(exc).splitlines()[0]) from None
    if isinstance(value, str) and value in SUBSETS:
        return tuple(corruption_names(value))
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip()]
    bad = [v for v in items if v not in known]
    if bad or not items:
        raise OptionError(f"{bad[0] if bad else value!r} is not a corruption; use {', '.join(SUBSETS)} or names "
                          f"among {', '.join(known)}", option="--corruptions")
    return tuple(dict.fromkeys(items))


def _severities(value) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = sorted({int(str(v).strip()) for v in items})
    except ValueError:
        out = []
    if not out or any(s < 1 or s > 5 for s in out):
        raise OptionError(f"{value!r} is not a list of severities (integers 1 to 5, e.g. 1,2,3,4,5)",
                          option="--severities")
    return tuple(out)


def _heatmap_result(path):
    """The fourier-heatmap result of ``--heatmap`` (read before any work)."""
    try:
        res = load_result(path)
    except DataError as exc:
        raise DataError(exc.args[0] if exc.args else str(exc), option="--heatmap") from None
    if res.analysis != "fourier-heatmap":
        raise DataError(f"{path} holds a `{res.analysis}` result, not a fourier-heatmap one", option="--heatmap")
    return res


def _heatmap_beside(res, path, labels: list[str]) -> tuple[dict, np.ndarray]:
    """The map of the model of the same label (else the first) of a fourier-heatmap result."""
    k = next((i for i, m in enumerate(res.models) if m.get("label") in labels), 0)
    m = res.models[k]
    return {"label": m["label"], "folder": str(path), "input_size": m["input_size"]}, res.model_map(k, "error")


def _high_share(spectrum: torch.Tensor) -> float:
    H, W = spectrum.shape
    d = centred(radius_grid(H, W, "circle", "cycles"))
    e = spectrum.double() ** 2
    total = float(e.sum())
    return float(e[d > HIGH_FREQ].sum()) / total if total > 0 else 0.0


def _corruptions_of(ctx, spec_, source, names, severities, seed: int, spectra_by_size: dict) -> dict:
    m = prepare_model(ctx, spec_, source)
    H, W = m.size
    if min(H, W) < MIN_SIDE:
        raise OptionError(f"imagecorruptions needs inputs of at least {MIN_SIDE} x {MIN_SIDE} px; {m.label} runs at "
                          f"{H}x{W}", option="--img-size")
    dataset = source.dataset(m.pre)
    c = clean_counts(ctx, m, dataset)
    size = f"{H}x{W}"
    spectra = {} if size not in spectra_by_size else None
    S = len(severities)
    errors = torch.zeros(len(names) * S, dtype=torch.long)
    loss = torch.zeros(len(names) * S, dtype=torch.float64)
    n = 0
    with ctx.dist.together():
        for b in ctx.runner.batches(dataset):
            y = torch.as_tensor(b.extra[0], dtype=torch.long, device=b.x.device)
            counts = corruption_counts(m.model, b.x, y, b.indices, names, severities, seed=seed,
                                       normalization=m.normalization, runner=ctx.runner,
                                       forward_batch=forward_batch(ctx), spectra=spectra)
            errors += counts.errors
            loss += counts.loss_sum
            n += counts.n
    d = ctx.dist
    errors, loss = d.all_reduce(errors), d.all_reduce(loss)
    n = int(d.all_reduce(torch.tensor([n], dtype=torch.long)).item())
    if spectra is not None:
        denom = float(n * 3)
        zero = torch.zeros(H, W, dtype=torch.float64)
        spectra_by_size[size] = {key: d.all_reduce(spectra.get(key, zero)) / denom
                                 for key in ((nm, int(s)) for nm in names for s in severities)}
    per = {}
    for j, name in enumerate(names):
        recs = [rate(errors[j * S + s], n, loss[j * S + s]) for s in range(S)]
        per[name] = {"error": float(np.mean([r["error"] for r in recs])), "by_severity": [r["error"] for r in recs],
                     "by_severity_low": [r["error_low"] for r in recs],
                     "by_severity_high": [r["error_high"] for r in recs],
                     "loss_by_severity": [r["loss"] for r in recs]}
    return dict(m.record, clean=rate(c.errors[0], c.n, c.loss_sum[0]), n=n, per_corruption=per,
                mean_error=float(np.mean([per[nm]["error"] for nm in names])))


@register
class Corruptions(Analysis):
    """Top-1 error under the ImageNet-C corruptions x severities applied on the fly (imagecorruptions,
    an optional dependency), the mean corruption error, and each corruption's mean Fourier spectrum of
    (corrupted - clean) beside a model's Fourier heat map (--heatmap).

    Writes results.json, corruptions.csv, corruptions.npz and corruptions, corruption_severity and
    corruption_spectra PNG+PDF. Under torchrun the images are shared out."""

    name = "corruptions"
    summary = "Error under common corruptions (ImageNet-C) and their Fourier spectra"
    needs = Needs(models="many", data="labelled")
    repeat_models = True
    options = (
        Option("corruptions", "common", f"{', '.join(SUBSETS)}, or comma-separated names", metavar="SET|NAMES",
               parse=_names),
        Option("severities", "1,2,3,4,5", "comma-separated severities (1-5)", metavar="S[,S]", parse=_severities),
        Option("spectrum_severity", 3, "the severity whose spectra are drawn", type=int, metavar="S"),
        Option("heatmap", None, "a fourier-heatmap result folder whose map is drawn beside the spectra",
               metavar="DIR"),
        FORWARD_BATCH,
        Option("cmap", "magma", "colour map of the spectra", metavar="NAME", parse=report.checked_cmap),
    )
    result = CorruptionsResult
    random_weights = "the errors describe an untrained network"
    draw_options = ("cmap",)

    def check(self, params) -> None:
        if params.spectrum_severity not in params.severities:
            raise OptionError(f"{params.spectrum_severity} is not among --severities "
                              f"{','.join(map(str, params.severities))}", option="--spectrum-severity")

    def source(self, params):
        return LabelledSource.resolve(params.get("data"), params.get("num_images"))

    def run(self, ctx) -> CorruptionsResult:
        p = ctx.params
        seed = perturbation_seed(ctx)
        res = CorruptionsResult(method={"name": "error under common corruptions", "reference": REFERENCE,
                                        "seed": seed, "level": LEVEL, "input": "uint8 round(255 x) at the input size",
                                        "mean_corruption_error": "unnormalised mean over corruptions and severities"},
                                images=ctx.source.describe(), data={"spec": ctx.source.spec}, run=run_block(ctx),
                                corruptions=list(p.corruptions), severities=list(p.severities),
                                spectrum_severity=int(p.spectrum_severity))
        beside = ctx.dist.agreed(_heatmap_result, p.heatmap) if p.heatmap else None
        spectra: dict = {}
        res.models = [_corruptions_of(ctx, s, ctx.source, p.corruptions, p.severities, seed, spectra)
                      for s in ctx.specs]
        labels = model_labels(res.models)
        for rec, label in zip(res.models, labels):
            rec["label"] = label
        for size, by_key in spectra.items():
            res.spectra_sizes.append(size)
            for (name, sev), arr in by_key.items():
                res.maps[f"spectrum_{size}_{name}_s{sev}"] = arr.numpy()
        first = spectra[res.spectra_sizes[0]]
        res.high_freq_share = {nm: _high_share(first[(nm, res.spectrum_severity)]) for nm in res.corruptions}
        if beside is not None:
            res.heatmap, res.maps["heatmap_error"] = _heatmap_beside(beside, p.heatmap, labels)
        return res

    def report(self, result, folder, style):
        rows = [{"model": m["label"], "corruption": nm, "severity": sev, "error": pc["by_severity"][i],
                 "error_low": pc["by_severity_low"][i], "error_high": pc["by_severity_high"][i],
                 "loss": pc["loss_by_severity"][i], "n": m["n"], "clean_error": m["clean"]["error"],
                 "high_freq_share": round(result.high_freq_share.get(nm, float("nan")), 6)}
                for m in result.models for nm, pc in m["per_corruption"].items()
                for i, sev in enumerate(result.severities)]
        return report.write_rows(folder, "corruptions.csv", rows) + self.draw(result, folder, style)

    def draw(self, result, folder, style):
        return report.draw_corruptions(result, folder, style) + report.draw_corruption_spectra(result, folder, style)

    def describe(self, result, output):
        lines = [f"{m['label']}: clean error {m['clean']['error']:.3f}; mean corruption error {m['mean_error']:.3f} "
                 f"over {len(result.corruptions)} corruptions x {len(result.severities)} severities"
                 for m in result.models]
        return lines + [f"corruptions -> {output}"]
