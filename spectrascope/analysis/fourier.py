"""Fourier analyses of feature maps: model -> taps -> streaming reducer -> results payload.

``analyse(models, source, kind="amplitude")`` gives the relative log-amplitude curves (Park &
Kim 2022; DFFormer Fig. 1 and 8; SPANet Fig. 2) and the high-frequency Delta per latent;
``kind="spectrum"`` the 2-D spectrum maps of token-mixer outputs (SPANet Fig. 1). ``source``
provides the images (``dataset(preprocessing)``, ``describe()``, ``notes``: an
``io.sources.ImageSource``; ``pipelines.fourier.amplitude_analysis`` resolves one from
``--images``/``--data``). Both run on the engine:
taps from the one grammar (``probe.grammar``), captures through ``Probe`` feeding the
``AmplitudeReducer``, forwards through ``engine.runner.Runner`` (batching, device, AMP,
channels-last, the non-finite stop, the early stop after the last tap) and, under
``torchrun``, images sharded by batch with the reducer's sums all-reduced. They return a
plain, JSON-serialisable payload; ``report.fourier.write_results`` turns it into
``results.json``, a tidy CSV, ``maps.npz`` and the figures.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import replace
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from spectrascope.engine import dist as _dist
from spectrascope.engine.reducers.amplitude import AmplitudeReducer
from spectrascope.engine.runner import Batch, RunConfig, Runner, RunStats
from spectrascope.errors import DataError, NonFiniteError, OptionError, TapError
from spectrascope.ops.fourier import (EPS, ZERO_MEAN_WARN_FRACTION, DiagonalStats, ZeroMeanWarning, curve_from_map,
                                      frequency_axis, normalised_depth)
from spectrascope.probe import Probe, model_taps, select_taps
from spectrascope.probe.grammar import TapRequest, check_spatial
from spectrascope.probe.spec import TapList, TapSpec

__all__ = ["DEFAULT_AMPLITUDE_ROLES", "DEFAULT_SPECTRUM_ROLES", "parse_tap_request", "choose_taps", "fourier_taps",
           "annotate_mixers", "mixer_kind", "reduce_spectra", "reduce_dataset", "analyse", "DegenerateMapWarning"]

#: Park & Kim's latents: the residual stream after every token mixer and every MLP, plus downsampling
DEFAULT_AMPLITUDE_ROLES = ("stem", "downsample", "residual", "block")
#: SPANet Fig. 1: the token-mixer outputs
DEFAULT_SPECTRUM_ROLES = ("mixer",)
REFERENCE = "Park & Kim 2022 (How do vision transformers work?), fourier_analysis.ipynb @ 9571ff1"


# ---------------------------------------------------------------------------- tap selection

def parse_tap_request(text: str | Iterable[str] | None) -> tuple[list[str] | None, list[tuple[str, str | None]]]:
    """``"mixer,block,path:blocks.3.attn:NLC"`` -> (roles, [(module path, layout or None)]) (library helper;
    the commands parse ``--taps`` with ``probe.grammar.TapRequest``)."""
    if text is None:
        return None, []
    roles, paths = [], []
    for item in ([text] if isinstance(text, str) else list(text)):
        for part in (p.strip() for p in str(item).split(",")):
            if part.startswith("path:"):
                path, _, layout = part[5:].partition(":")
                if not path:
                    raise TapError(f"empty module path in {part!r}")
                paths.append((path, layout.upper() or None))
            elif part:
                roles.append(part)
    return (roles or None), paths


def _request_tokens(roles, paths) -> list[str]:
    """Grammar tokens of a (roles, module paths) selection."""
    out = list(roles or [])
    for path, layout in paths or ():
        out.append(f"path:{path}:{layout}" if layout else f"path:{path}")
    return out


def choose_taps(model: nn.Module, *, roles: Sequence[str] | None = None, stages: Sequence[int] | None = None,
                paths: Sequence[tuple[str, str | None]] = (), blocks="all",
                default_roles: Sequence[str] = DEFAULT_AMPLITUDE_ROLES, input_size=None,
                what: str = "the amplitude") -> TapList:
    """Spatial taps of ``model`` by role / 1-based stage / module path, through the one grammar.

    Library form of ``--taps``/``--stage``/``--blocks``: roles must be roles of the model and a
    module path that is not a declared tap needs its layout (``(path, "NHWC")``)."""
    declared = model_taps(model, input_size=input_size)
    if roles:
        select_taps(declared, roles=roles)                  # names unknown roles as such
    if stages:
        select_taps(declared, stages=stages)                # validates the stage numbers
    by_path = {t.path for t in declared if t.hook == "forward"}
    for path, layout in paths or ():
        try:
            model.get_submodule(path)
        except AttributeError:
            raise TapError(f"no module {path!r} in this model (see `spectrascope taps --model ...`)") from None
        if layout is None and path not in by_path:
            raise TapError(f"module {path!r} is not a declared tap; give its layout as path:{path}:NCHW|NHWC|NLC")
    req = TapRequest.parse(_request_tokens(roles, paths) or None, stages=stages, blocks=blocks)
    return req.resolve(model, input_size=input_size, default=default_roles, spatial=True, what=what)


def fourier_taps(model: nn.Module, request: TapRequest, *, input_size=None, kind: str = "amplitude",
                 notes: list | None = None) -> TapList:
    """The taps of ``request`` (``--taps``/``--stage``/``--blocks``) for ``kind``, with their mixer kinds."""
    default = DEFAULT_SPECTRUM_ROLES if kind == "spectrum" else DEFAULT_AMPLITUDE_ROLES
    what = "the spectrum map" if kind == "spectrum" else "the amplitude"
    taps = request.resolve(model, input_size=input_size, default=default, spatial=True, what=what, notes=notes)
    return annotate_mixers(model, taps, input_size=input_size)


# ---------------------------------------------------------------------------- mixer kinds

#: class-name words -> mixer kind (first match wins; FFT words before the generic ones)
_MIXER_WORDS = (
    ("fft", ("filter", "fft", "fourier", "afno", "aff", "spectral", "spam", "spf", "gfn", "fno", "ffc", "dff")),
    ("attention", ("attention", "attn", "msa")),
    ("pooling", ("pool",)),
    ("conv", ("conv", "modulation")),
    ("identity", ("identity",)),
    ("mlp", ("mixing", "mlp")),
)
#: module classes that only pass a tensor through (their parent says what the mixer is)
_WRAPPERS = ("tappoint", "droppath", "identity", "sequential", "modulelist", "scale", "layerscale")
#: child names under which blocks keep their token mixer
_MIXER_CHILDREN = ("token_mixer", "attn", "attention", "filter", "mixer", "modulation", "conv_dw", "global_rep")


def mixer_kind(module: nn.Module) -> str:
    """The kind (``probe.spec.MIXER_KINDS``) of a token-mixer module from its class name, or ''."""
    name = type(module).__name__.lower()
    for kind, words in _MIXER_WORDS:
        if any(w in name for w in words):
            return kind
    return ""


def _kind_near(model: nn.Module, path: str) -> str:
    """The mixer kind at ``path``: the module itself, else up to three parents or their mixer children."""
    parts = path.split(".") if path else []
    for up in range(0, min(4, len(parts) + 1)):
        sub = ".".join(parts[:len(parts) - up])
        try:
            mod = model.get_submodule(sub)
        except AttributeError:
            continue
        cls = type(mod).__name__.lower()
        if cls not in _WRAPPERS and mixer_kind(mod):
            return mixer_kind(mod)
        for child in _MIXER_CHILDREN:
            c = getattr(mod, child, None)
            if isinstance(c, nn.Module) and type(c).__name__.lower() not in _WRAPPERS and mixer_kind(c):
                return mixer_kind(c)
    return ""


def annotate_mixers(model: nn.Module, taps: Sequence[TapSpec], *, input_size=None) -> TapList:
    """Fill ``TapSpec.mixer`` (when empty) of every block tap with the kind of its block's token mixer,
    read from the model's mixer tap of the same block (stage, index)."""
    try:
        declared = model_taps(model, input_size=input_size)
    except TapError:
        declared = TapList()
    mixer_path = {(t.stage, t.index): t.path for t in declared if t.role == "mixer" and t.index is not None}
    kinds: dict = {}
    out = TapList()
    for t in taps:
        if t.mixer or t.index is None or (t.stage, t.index) not in mixer_path:
            out.append(t)
            continue
        key = (t.stage, t.index)
        if key not in kinds:
            kinds[key] = _kind_near(model, mixer_path[key]) or "other"
        out.append(replace(t, mixer=kinds[key]))
    out.notes = list(getattr(taps, "notes", []))
    return out


# ---------------------------------------------------------------------------- reduction

def _agree_on_failure(d: _dist.Dist, exc: BaseException | None) -> None:
    """Every rank raises when one rank hit a non-finite value (no rank waits alone in a collective)."""
    if not d.enabled:
        if exc is not None:
            raise exc
        return
    msgs = d.all_gather_object(str(exc) if exc is not None else None)
    first = next((m for m in msgs if m), None)
    if exc is not None:
        raise exc
    if first is not None:
        raise NonFiniteError(first)


def reduce_dataset(model: nn.Module, dataset, taps: Sequence[TapSpec], runner: Runner, *, eps: float = EPS,
                   dtype: torch.dtype = torch.float32, maps: bool = True,
                   desc: str = "") -> tuple[dict, int, list[str], RunStats]:
    """Run ``model`` over this rank's shard of ``dataset`` with a streaming amplitude reducer on ``taps``
    and all-reduce its sums. Returns (tap name -> SpectrumStats or DiagonalStats, number of images over
    all ranks, tap names in firing order, this rank's RunStats)."""
    reducer = AmplitudeReducer(taps, eps=eps, dtype=dtype, maps=maps)
    stats, failure = RunStats(), None
    with Probe(model, reducer.taps, callback=reducer, **reducer.probe_kwargs) as probe:
        try:
            stats = runner.run(model, dataset, probe, need_output=False, desc=desc)
        except NonFiniteError as exc:
            failure = exc
    _agree_on_failure(runner.dist, failure)
    n = runner.total(stats.images)
    if n == 0:
        raise DataError("no images were processed")
    reducer.all_reduce(runner.dist)
    missing = reducer.missing()
    if missing:
        raise TapError(f"tap(s) {', '.join(missing[:5])} never fired during the forward pass")
    order = _global_order(runner.dist, stats.order, taps)
    return reducer.finalise(), n, order, stats


def _global_order(d: _dist.Dist, order: list[str], taps) -> list[str]:
    """The firing order of the taps (rank 0's, or the first rank that ran a batch)."""
    if d.enabled:
        order = next((o for o in d.all_gather_object(list(order)) if o), [])
    rest = [t.name for t in taps if t.name not in order]
    return list(order) + rest


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


# ---------------------------------------------------------------------------- records

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
    msg = (f"{name}: taps {', '.join(zm[:6])}{' ...' if len(zm) > 6 else ''} are (almost) zero-mean maps: "
           "their DC reference collapses to log(eps) and their curves are shifted by about +14..16")
    warnings.warn(msg, ZeroMeanWarning, stacklevel=3)
    return msg


# ---------------------------------------------------------------------------- analysis

def _as_list(x) -> list:
    if x is None:
        return []
    return [x] if isinstance(x, (str, nn.Module)) else list(x)


def _checkpoint_map(names: list[str], checkpoints) -> list:
    if checkpoints is None:
        return [None] * len(names)
    if isinstance(checkpoints, Mapping):
        unknown = [k for k in checkpoints if k not in names]
        if unknown:
            raise OptionError(f"checkpoint given for {', '.join(unknown)}, which is not among the models "
                              f"({', '.join(names)})", option="--checkpoint")
        return [checkpoints.get(n) for n in names]
    cks = _as_list(checkpoints)
    if len(cks) != len(names):
        raise OptionError(f"{len(cks)} checkpoint(s) for {len(names)} model(s): give one per model, in order, "
                          "or MODEL=PATH", option="--checkpoint")
    return cks


def _check_options(kind, method, freq_axis, dtype, models) -> list[str]:
    if kind not in ("amplitude", "spectrum"):
        raise OptionError(f"unknown analysis kind {kind!r} (amplitude or spectrum)")
    if method not in ("diagonal", "radial"):
        raise OptionError(f"{method!r} is not accepted; use diagonal or radial", option="--method")
    if freq_axis not in ("index", "true"):
        raise OptionError(f"{freq_axis!r} is not accepted; use index or true", option="--freq-axis")
    if dtype not in (torch.float32, torch.float64):
        raise OptionError("the compute dtype must be float32 or float64", option="--precision")
    if not models:
        raise OptionError("no model given", option="--model")
    names = [m if isinstance(m, str) else getattr(m, "spectrascope_name", type(m).__name__) for m in models]
    if len(set(names)) != len(names):
        raise OptionError(f"a model is listed twice: {', '.join(names)}", option="--model")
    return names


def _build(spec, ck, img_size, device, model_kwargs, d: _dist.Dist):
    """The model and its preprocessing; under torchrun, random weights are drawn from one seed
    (rank 0's) so that every rank analyses the same network."""
    from spectrascope.zoo.build import build_for_inference, preprocessing
    if isinstance(spec, nn.Module):
        if ck is not None:
            raise OptionError("pass checkpoints only with model names (a built model is used as is)",
                              option="--checkpoint")
        return spec.eval().to(device), preprocessing(spec, img_size)
    if ck is None and d.enabled:
        seed = int(torch.randint(0, 2 ** 31 - 1, ()).item()) if d.main else None
        torch.manual_seed(d.broadcast_object(seed))
    return build_for_inference(spec, checkpoint=ck, img_size=img_size, device=device, **dict(model_kwargs or {}))


def _model_record(name, label, spec, ck, model, cfg, n, tap_recs, run: RunStats, runner: Runner) -> dict:
    info = getattr(model, "checkpoint_info", None) or {}
    card = getattr(model, "card", None)
    return {
        "model": name, "label": label,
        "family": getattr(card, "family", None) or ("timm" if name.startswith("timm:") else None),
        "checkpoint": str(ck) if ck is not None else None,
        "checkpoint_sha256": info.get("sha256") if ck is not None else None,
        "random_weights": ck is None and not isinstance(spec, nn.Module),
        "input_size": list(cfg["size"]), "num_images": n, "taps": tap_recs,
        "forward": {"batches": int(runner.total(run.batches)), "stopped_early": runner.dist.any(run.stopped_early),
                    "last_tap": tap_recs[-1]["name"] if tap_recs else None},
    }


def _analyse_model(k, spec, name, ck, ctx) -> tuple[dict, dict]:
    """One model: build, choose taps, reduce over the images, records. Returns (record, arrays)."""
    model, cfg = _build(spec, ck, ctx["img_size"], ctx["runner"].device, ctx["model_kwargs"], ctx["runner"].dist)
    model = ctx["runner"].prepare(model)
    taps = fourier_taps(model, ctx["request"], input_size=cfg["size"], kind=ctx["kind"], notes=ctx["notes"])
    if ctx["select"] is not None:
        taps = annotate_mixers(model, check_spatial(ctx["select"](name, model, taps), ctx["what"]),
                               input_size=cfg["size"])
    stats, n, order, run = reduce_dataset(model, ctx["source"].dataset(cfg), taps, ctx["runner"], eps=ctx["eps"],
                                          dtype=ctx["dtype"], maps=ctx["maps"], desc=name)
    rank = {nm: i for i, nm in enumerate(order)}
    ordered = sorted(taps, key=lambda t: rank[t.name])
    depths = normalised_depth(len(ordered))
    tap_recs = [_tap_record(t, stats[t.name], float(d), method=ctx["method"], kind=ctx["kind"],
                            relative=ctx["relative"]) for t, d in zip(ordered, depths)]
    arrays = {f"{name}/{t.name}": stats[t.name].mean_map(shift=True).numpy().astype(np.float32)
              for t in ordered} if ctx["maps"] else {}
    msg = _zero_mean_warning(name, tap_recs)
    if msg:
        ctx["warnings"].append(msg)
    label = ctx["labels"][k] if ctx["labels"] else name
    rec = _model_record(name, label, spec, ck, model, cfg, n, tap_recs, run, ctx["runner"])
    if ctx["kind"] == "amplitude":
        rec["taps"], rec["left_out"] = _without_degenerate(name, tap_recs, ctx["warnings"])
    return rec, arrays


class DegenerateMapWarning(UserWarning):
    """Feature maps with fewer than 2 frequency points (1x1, 2x2): left out of the amplitude curves."""


def _without_degenerate(name: str, recs: list[dict], warns: list) -> tuple[list[dict], list[dict]]:
    """The tap records with at least 2 frequency points, and the others (``left_out``). A map of
    1x1 or 2x2 has a one-point curve (its DC only, 0 by construction): it is warned about and left
    out of the curves and the high-frequency plot, never drawn as a measured 0; a model with no
    tap left is a ``TapError``."""
    keep = [r for r in recs if len(r["curve"]) >= 2]
    left = [r for r in recs if len(r["curve"]) < 2]
    if not left:
        return recs, []
    shown = ", ".join(f"{r['name']} ({r['shape'][1]}x{r['shape'][2]})" for r in left[:4]) + \
        (" ..." if len(left) > 4 else "")
    if not keep:
        raise TapError(f"{name}: every tap's feature map has fewer than 2 frequency points at this input size "
                       f"({shown}); use a larger --img-size", option="--img-size")
    msg = (f"{name}: {len(left)} tap(s) with fewer than 2 frequency points left out of the curves and the "
           f"high-frequency plot: {shown}")
    warnings.warn(msg, DegenerateMapWarning, stacklevel=3)
    warns.append(msg)
    return keep, [{"name": r["name"], "shape": r["shape"], "normalised_depth": r["normalised_depth"],
                   "reason": "fewer than 2 frequency points"} for r in left]


def _run_config(device, batch_size, progress, amp, channels_last, compile, workers, check_finite) -> RunConfig:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"{batch_size!r} is not a batch size (an integer >= 1)", option="--batch-size")
    return RunConfig(device=device, batch_size=batch_size, amp=amp, channels_last=channels_last, compile=compile,
                     workers=workers, progress=progress, check_finite=check_finite)


def analyse(models, source, *, kind: str = "amplitude", checkpoints=None, img_size=None,
            roles: Sequence[str] | None = None, stages: Sequence[int] | None = None,
            tap_paths: Sequence[tuple[str, str | None]] = (), blocks=None, taps: str | Sequence[str] | None = None,
            select: Callable[[str, nn.Module, TapList], TapList] | None = None, device="auto",
            batch_size: int = 16, method: str = "diagonal", relative: bool = True, freq_axis: str = "index",
            eps: float = EPS, dtype: torch.dtype = torch.float32, progress: bool = False,
            model_kwargs: Mapping | None = None, labels: Sequence[str] | None = None,
            save_maps: bool | None = None, amp: str = "off", channels_last: bool = False, compile: bool = False,
            workers: int = 0, check_finite: bool = True) -> dict:
    """Run the Fourier analysis of ``kind`` ("amplitude" or "spectrum") for one or more models on the
    images of ``source`` and return the results payload (no provenance yet; see
    ``report.fourier.write_results``).

    ``models`` are registry names, ``timm:<name>`` or built modules. The taps are ``taps`` (the
    ``--taps`` grammar) or ``roles`` + ``tap_paths``, with ``stages`` and ``blocks`` (default: all;
    the last block per stage for spectra); ``select(name, model, taps)`` may replace them per model.
    ``save_maps`` accumulates the whole 2-D mean log-amplitude maps (``payload["arrays"]``, written
    to maps.npz); it is implied by ``kind="spectrum"`` and ``method="radial"``. Without it the
    diagonal curves come from the fast half-diagonal reduction (square maps only). Inside a
    ``torchrun`` session (``pipelines.common.session``) the images are sharded and every rank
    returns the same payload."""
    mlist = _as_list(models)
    names = _check_options(kind, method, freq_axis, dtype, mlist)
    cks = _checkpoint_map(names, checkpoints)
    runner = Runner(_run_config(device, batch_size, progress, amp, channels_last, compile, workers, check_finite))
    src = source
    if len(src) == 0:
        raise DataError("no images to analyse")
    if blocks is None:
        blocks = "last" if kind == "spectrum" else "all"
    tokens = taps if taps is not None else (_request_tokens(roles, tap_paths) or None)
    ctx = {"kind": kind, "img_size": img_size, "runner": runner, "model_kwargs": model_kwargs,
           "request": TapRequest.parse(tokens, stages=stages, blocks=blocks), "select": select,
           "what": "the spectrum map" if kind == "spectrum" else "the amplitude", "source": src, "eps": eps,
           "dtype": dtype, "maps": bool(save_maps) or kind == "spectrum" or method == "radial", "method": method,
           "relative": relative, "labels": labels, "warnings": [], "notes": list(src.notes)}
    t0 = time.perf_counter()
    records, arrays = [], {}
    for k, (spec, name, ck) in enumerate(zip(mlist, names, cks)):
        rec, arr = _analyse_model(k, spec, name, ck, ctx)
        records.append(rec)
        arrays.update(arr)
    return _payload(kind, ctx, roles, stages, blocks, freq_axis, src, runner, records, arrays, t0)


def _payload(kind, ctx, roles, stages, blocks, freq_axis, src, runner, records, arrays, t0) -> dict:
    return {
        "kind": kind,
        "method": {
            "name": "relative log amplitude of Fourier-transformed feature maps" if kind == "amplitude"
            else "2-D spectrum map (batch/channel mean of log|F|, centred)",
            "reference": REFERENCE, "eps": ctx["eps"], "curve": ctx["method"], "relative": ctx["relative"],
            "freq_axis": freq_axis, "dtype": str(ctx["dtype"]).replace("torch.", ""), "blocks": blocks,
            "maps": ctx["maps"], "roles": list(roles) if roles else None,
            "stages": list(stages) if stages else None, "taps": ctx["request"].describe() or None,
        },
        "images": src.describe(),
        "device": str(runner.device),
        "run": {"world_size": runner.dist.world, "batch_size": runner.config.batch_size, "amp": runner.config.amp,
                "channels_last": runner.config.channels_last, "compile": runner.config.compile},
        "models": records,
        "warnings": ctx["warnings"],
        "notes": list(dict.fromkeys(ctx["notes"])),
        "compute_time_s": time.perf_counter() - t0,
        # not JSON: centred mean log-amplitude maps (model/tap -> H x W), written to maps.npz
        "arrays": arrays,
    }
