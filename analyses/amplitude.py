"""``amplitude``: relative log amplitude of Fourier-transformed feature maps (Park & Kim 2022).

For every tapped latent ``x`` (B, C, H, W) of the images:

    A(u, v) = mean over batch and channels of log(|FFT2(x)(u, v)| + eps),  eps = 1e-6

centred on the zero frequency; the curve is ``A`` along the diagonal from DC to the highest
frequency minus its DC value (``curve[0] = 0``), and the high-frequency Delta is its last
point. Curves are drawn one panel per model, coloured by normalised depth (DFFormer Figs. 1
and 8, SPANet Fig. 2), and Delta against depth with the token mixers shaded (Park & Kim Fig. 8).
Reference: Park & Kim 2022 (How do vision transformers work?), ``fourier_analysis.ipynb``.

Example:
    ``spectrascope amplitude --model dfformer_s18 --model timm:vit_tiny_patch16_224``, or from
    Python ``spectrascope.run("amplitude", model=("dfformer_s18",), stage="3")``.

The module also holds what ``spectrum`` shares (tap choice, the streaming reduction on the
engine, the per-tap records).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from spectrascope.engine import dist as _dist
from spectrascope.engine.reducers.amplitude import AmplitudeReducer
from spectrascope.engine.runner import Batch, RunConfig, Runner
from spectrascope.errors import DataError, OptionError, TapError
from spectrascope.ops.fourier import (EPS, ZERO_MEAN_WARN_FRACTION, DiagonalStats, curve_from_map, frequency_axis,
                                      normalised_depth)
from spectrascope.probe import Probe
from spectrascope.probe.grammar import SPECTRAL_ROLES, TapRequest, check_spatial, parse_blocks, parse_stages
from spectrascope.probe.mixers import annotate_mixers
from spectrascope.probe.spec import TapSpec
from spectrascope.report import amplitude as report
from spectrascope.seam import Analysis, Context, Needs, Option, Result, register
from spectrascope.seam.options import choice

__all__ = ["Amplitude", "AmplitudeResult", "SpectraResult", "DEFAULT_ROLES", "REFERENCE", "FFT_DTYPES",
           "measure", "spectra", "reduce_spectra"]

#: Park & Kim's latents: the residual stream after every token mixer and every MLP, plus downsampling
DEFAULT_ROLES = SPECTRAL_ROLES
REFERENCE = "Park & Kim 2022 (How do vision transformers work?), fourier_analysis.ipynb @ 9571ff1"
#: ``--precision`` values
FFT_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------------------- options (shared with spectrum)

def _taps_help(default: Sequence[str]) -> str:
    return ("taps in the tap grammar: roles (stem, downsample, residual, block, mixer, ...), tap names "
            "(s3.b1.block), globs (s3.*), presets, or path:<module.path>[:LAYOUT]; comma-separated "
            f"[default: {','.join(default)}]")


TAPS = Option("taps", None, _taps_help(DEFAULT_ROLES), metavar="TAPS")
STAGE = Option("stage", None, "1-based stage(s) only, e.g. 3 or 2,3", metavar="K[,K]", parse=parse_stages)
METHOD = Option("method", "diagonal", "radial: ring average for non-square maps (a documented deviation)",
                type=choice("diagonal", "radial"))
PRECISION = Option("precision", "float32", "FFT precision (whatever the model dtype)",
                   type=choice("float32", "float64"))
LABELS = Option("labels", (), "display names of the models, in --model order", multiple=True, cli=False)
SELECT = Option("select", None, "select(name, model, taps) -> taps: a per-model tap choice", cli=False)
EPS_OPTION = Option("eps", EPS, "epsilon added to |F| before the log", type=float, cli=False)


# ---------------------------------------------------------------------------- result

@dataclass(kw_only=True)
class SpectraResult(Result):
    """Per model, per tap: the relative curve (amplitude) or the centred 2-D map (spectrum).

    Attributes:
        kind: ``amplitude`` or ``spectrum``.
        method: the recipe (reference, eps, curve, axis, dtype, taps asked for).
        images: count, sha256 and file names of the images.
        models: one record per model: name, label, checkpoint, input size, ``taps`` (one record per
            tap: name, role, stage, shape, ``curve``, ``high_freq_delta``, and ``map`` for spectra).
        maps: centred mean log-amplitude maps by ``model/tap`` (``maps.npz``; not in results.json).
    """

    kind: str
    method: dict
    images: dict
    device: str = "cpu"
    run: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    compute_time_s: float = 0.0
    title: str | None = None
    maps: dict = field(default_factory=dict, metadata={"json": False})

    @classmethod
    def validate(cls, doc: dict, where: str) -> None:
        """Every value the figures use checked (``io.schema.validate_results``: types, finiteness,
        ranges, non-empty model and tap lists), one line naming ``where`` and the place in it."""
        from spectrascope.io.schema import validate_results
        validate_results(doc, where, option="RESULTS")

    def arrays(self) -> dict:
        return {"maps.npz": {k: np.asarray(v, dtype=np.float32) for k, v in self.maps.items()}}

    def load_arrays(self, files: dict) -> None:
        self.maps = dict(files.get("maps.npz", {}))


@dataclass(kw_only=True)
class AmplitudeResult(SpectraResult):
    """The result of ``amplitude`` (see ``SpectraResult``)."""


# ---------------------------------------------------------------------------- the reduction on the engine

def _tap_record(t: TapSpec, st, depth: float, *, method: str, kind: str, relative: bool) -> dict:
    C, (H, W) = st.channels, st.size
    if isinstance(st, DiagonalStats):
        m, curve = None, st.curve()
    else:
        m = st.mean_map(shift=True)
        try:
            curve = curve_from_map(m, method)
        except ValueError as exc:
            raise TapError(f"tap {t.name} ({H}x{W}): {exc}") from None
    K = len(curve)
    rec = {
        "name": t.name, "role": t.role, "stage": t.stage, "index": t.index, "path": t.path, "hook": t.hook,
        "layout": t.layout, "num_prefix_tokens": t.num_prefix_tokens, "note": t.note, "mixer": t.mixer or None,
        "shape": [C, H, W], "num_maps": st.count, "block_depth": t.depth, "normalised_depth": float(depth),
        "zero_mean_fraction": st.zero_mean_fraction,
        "curve": [float(v) for v in curve],
        "freq_index_pi": frequency_axis(K, kind="index").tolist(),
        "freq_true_pi": frequency_axis(K, min(H, W), kind="true").tolist(),
        "high_freq_delta": float(curve[-1]),
    }
    if kind == "spectrum":
        mm = m - m[H // 2, W // 2] if relative else m
        rec["map"] = np.round(mm.numpy().astype(np.float64), 6).tolist()
    return rec


def _zero_mean_warning(name: str, tap_recs: list[dict]) -> str | None:
    zm = [r["name"] for r in tap_recs if r["zero_mean_fraction"] > ZERO_MEAN_WARN_FRACTION]
    if not zm:
        return None
    return (f"{name}: taps {', '.join(zm[:6])}{' ...' if len(zm) > 6 else ''} are (almost) zero-mean maps: "
            "their DC reference collapses to log(eps) and their curves are shifted by about +14..16")


class DegenerateMapWarning(UserWarning):
    """Feature maps with fewer than 2 frequency points (1x1, 2x2): left out of the amplitude curves."""


def _without_degenerate(name: str, recs: list[dict]) -> tuple[list[dict], list[dict], str | None]:
    """The tap records with at least 2 frequency points, the others (``left_out``) and the warning.

    A map of 1x1 or 2x2 has a one-point curve (its DC only, 0 by construction): it is left out of
    the curves and the high-frequency plot, never drawn as a measured 0.

    Raises:
        TapError: no tap of the model has 2 frequency points at this input size.
    """
    keep = [r for r in recs if len(r["curve"]) >= 2]
    left = [r for r in recs if len(r["curve"]) < 2]
    if not left:
        return recs, [], None
    shown = ", ".join(f"{r['name']} ({r['shape'][1]}x{r['shape'][2]})" for r in left[:4]) + \
        (" ..." if len(left) > 4 else "")
    if not keep:
        raise TapError(f"{name}: every tap's feature map has fewer than 2 frequency points at this input size "
                       f"({shown}); use a larger --img-size", option="--img-size")
    msg = (f"{name}: {len(left)} tap(s) with fewer than 2 frequency points left out of the curves and the "
           f"high-frequency plot: {shown}")
    return keep, [{"name": r["name"], "shape": r["shape"], "normalised_depth": r["normalised_depth"],
                   "reason": "fewer than 2 frequency points"} for r in left], msg


def _taps(ctx: Context, model, name: str, pre, kind: str, default: Sequence[str]):
    p = ctx.params
    what = "the spectrum map" if kind == "spectrum" else "the amplitude"
    request = TapRequest.parse(p.taps, stages=p.stage, blocks=p.blocks)
    taps = request.resolve(model, input_size=pre["size"], default=default, spatial=True, what=what,
                           notes=ctx.notes)
    taps = annotate_mixers(model, taps, input_size=pre["size"])
    select: Callable | None = p.get("select")
    if select is not None:
        taps = annotate_mixers(model, check_spatial(select(name, model, taps), what), input_size=pre["size"])
    return taps


def _model_record(built, label: str, n: int, tap_recs: list[dict], stats) -> dict:
    return {
        "model": built.name, "label": label,
        "family": getattr(getattr(built.model, "card", None), "family", None)
        or ("timm" if built.name.startswith("timm:") else None),
        "checkpoint": str(built.spec.checkpoint) if built.spec.checkpoint is not None else None,
        "checkpoint_sha256": built.checkpoint_sha256,
        "random_weights": built.random_weights and not getattr(built, "user_module", False),
        "input_size": list(built.pre["size"]), "num_images": n, "taps": tap_recs,
        "forward": {"batches": int(stats.batches), "stopped_early": bool(stats.stopped_early),
                    "last_tap": tap_recs[-1]["name"] if tap_recs else None},
    }


def measure(ctx: Context, k: int, spec, *, kind: str, default: Sequence[str], maps: bool,
            relative: bool = True) -> tuple[dict, dict]:
    """One model: build it, choose its taps, reduce the images on the engine, one record per tap.

    Returns:
        (the model's record, its centred maps by ``model/tap`` when ``maps``).
    """
    p = ctx.params
    built = ctx.build(spec)
    name = built.name
    taps = _taps(ctx, built.model, name, built.pre, kind, default)
    reducer = AmplitudeReducer(taps, eps=p.eps, dtype=FFT_DTYPES[p.precision], maps=maps)
    stats = ctx.runner.reduce(built.model, ctx.source.dataset(built.pre), reducer, desc=name)
    found = reducer.finalise()
    rank = {nm: i for i, nm in enumerate(stats.order)}
    ordered = sorted(taps, key=lambda t: rank[t.name])
    depths = normalised_depth(len(ordered))
    tap_recs = [_tap_record(t, found[t.name], float(d), method=p.method, kind=kind, relative=relative)
                for t, d in zip(ordered, depths)]
    key = f"{name}@{built.spec.label}" if built.spec.label else name          # one model at several checkpoints
    arrays = {f"{key}/{t.name}": found[t.name].mean_map(shift=True).numpy().astype(np.float32)
              for t in ordered} if maps else {}
    ctx.warn(_zero_mean_warning(name, tap_recs))
    left = []
    if kind == "amplitude":
        tap_recs, left, msg = _without_degenerate(name, tap_recs)
        if msg:
            warnings.warn(msg, DegenerateMapWarning, stacklevel=2)
            ctx.warn(msg)
    labels = p.labels
    label = labels[k] if labels and k < len(labels) else (f"{name} ({built.spec.label})" if built.spec.label
                                                            else name)
    rec = _model_record(built, label, int(stats.images), tap_recs, stats)
    if left:
        rec["left_out"] = left
    return rec, arrays


def spectra(ctx: Context, result_type: type, *, kind: str, default: Sequence[str], maps: bool,
            relative: bool = True, freq_axis: str = "index") -> SpectraResult:
    """``measure`` every model on the same images; the result of ``amplitude`` or ``spectrum``."""
    p = ctx.params
    if p.labels and len(p.labels) != len(ctx.specs):
        raise OptionError(f"{len(p.labels)} label(s) for {len(ctx.specs)} model(s)", option="labels")
    t0 = time.perf_counter()
    records, arrays = [], {}
    for k, spec in enumerate(ctx.specs):
        rec, arr = measure(ctx, k, spec, kind=kind, default=default, maps=maps, relative=relative)
        records.append(rec)
        arrays.update(arr)
    request = TapRequest.parse(p.taps, stages=p.stage, blocks=p.blocks)
    method = {
        "name": "relative log amplitude of Fourier-transformed feature maps" if kind == "amplitude"
        else "2-D spectrum map (batch/channel mean of log|F|, centred)",
        "reference": REFERENCE, "eps": p.eps, "curve": p.method, "relative": relative, "freq_axis": freq_axis,
        "dtype": p.precision, "blocks": parse_blocks(p.blocks), "maps": maps, "roles": None,
        "stages": list(p.stage or ()) or None, "taps": request.describe() or None,
    }
    r = ctx.runner
    return result_type(kind=kind, method=method, images=ctx.source.describe(), device=str(r.device),
                       run={"world_size": r.dist.world, "batch_size": r.config.batch_size, "amp": r.config.amp,
                            "channels_last": r.config.channels_last, "compile": r.config.compile},
                       models=records, compute_time_s=time.perf_counter() - t0, maps=arrays)


def reduce_spectra(model: nn.Module, batches: Iterable, taps: Sequence[TapSpec], *, device=None,
                   eps: float = EPS, dtype: torch.dtype = torch.float32, maps: bool = True, progress: bool = False,
                   total: int | None = None, desc: str = "") -> tuple[dict, int, list[str]]:
    """Library form over pre-formed ``batches`` (tensors or ``(tensor, ...)`` tuples), one process:
    returns (tap name -> SpectrumStats, or DiagonalStats when ``maps=False``; number of images;
    tap names in firing order). Each batch goes through ``Runner.forward`` (non-finite stop, early stop)."""
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    runner = Runner(RunConfig(device=device, progress=progress), dist=_dist.Dist())
    reducer = AmplitudeReducer(taps, eps=eps, dtype=dtype, maps=maps)
    n = 0
    with Probe(model, reducer.taps, callback=reducer, **reducer.probe_kwargs) as probe:
        for k, item in enumerate(batches):
            x = (item[0] if isinstance(item, (tuple, list)) else item).to(runner.device, non_blocking=True)
            runner.forward(model, Batch(k, list(range(n, n + int(x.shape[0]))), x), probe, need_output=False)
            n += int(x.shape[0])
    if n == 0:
        raise DataError("no images were processed")
    missing = reducer.missing()
    if missing:
        raise TapError(f"tap(s) {', '.join(missing[:5])} never fired during the forward pass")
    return reducer.finalise(), n, list(probe.order)


def summary_line(result: SpectraResult, output: Path | None) -> list[str]:
    ntaps = ", ".join(f"{m.get('label') or m['model']}: {len(m['taps'])} taps" for m in result.models)
    return [f"{result.kind} over {result.images['count']} images ({ntaps}) -> {output}"]


# ---------------------------------------------------------------------------- the declaration

@register
class Amplitude(Analysis):
    """Relative log amplitude of Fourier-transformed feature maps (Park & Kim 2022): one curve per
    tap, coloured by normalised depth, and the high-frequency Delta vs depth.

    Writes results.json, amplitude.csv, amplitude and highfreq PNG+PDF (and maps.npz with --save-maps).
    Runs under torchrun (images sharded over the processes, sums all-reduced)."""

    name = "amplitude"
    summary = "Relative log amplitude of Fourier-transformed feature maps (Park & Kim 2022)"
    needs = Needs(models="many", data="images")
    options = (
        TAPS, STAGE,
        Option("blocks", "all", "per stage and role: all, first, last or a block index", parse=parse_blocks),
        METHOD, PRECISION,
        Option("freq_axis", "index", "index: the reference's linspace(0,1,K); true: 2k/H",
               type=choice("index", "true")),
        Option("save_maps", False, "also accumulate the 2-D mean log-amplitude maps (maps.npz; slower)", type=bool),
        LABELS, SELECT, EPS_OPTION,
    )
    result = AmplitudeResult
    random_weights = "the curves describe an untrained network"
    draw_options = ("freq_axis",)

    def run(self, ctx: Context) -> AmplitudeResult:
        p = ctx.params
        maps = p.save_maps or p.method == "radial"
        return spectra(ctx, AmplitudeResult, kind="amplitude", default=DEFAULT_ROLES, maps=maps,
                       freq_axis=p.freq_axis)

    def report(self, result, folder, style):
        return report.write_tables(result, folder) + self.draw(result, folder, style)

    def draw(self, result, folder, style):
        return report.draw(result, folder, style)

    def describe(self, result, output):
        return summary_line(result, output)
