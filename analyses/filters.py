"""``filters``: the frequency filters of a model, as data, and their figures (``report.filters``).

* DFFormer / CDFFormer: every dynamic-filter layer's N basis filters (DFFormer Fig. 9); the
  routing statistics over images (which basis each channel uses) as a streaming
  ``RoutingReducer`` whose sums cross ranks; the effective per-image filters.
* GFNet / GFNet-H / GFFormer: the static per-channel global filters (GFNet / DFFormer Fig. 2).
* AFFNet: the instance-adaptive masks of given images and their equivalent spatial
  kernels, with a numerical check of the equivalence on the model's own tensors.
* SPANet: the spectral pooling masks per stage and lambda, and their spatial kernels.

``--layers`` is read by the one tap grammar (``probe.grammar``): a filter layer is kept
when a selected tap belongs to its block or module. Captures go through ``Probe`` and
forwards through the engine's ``Runner`` (NaN/inf checks). Amplitudes follow the official
GFNet recipe (``spectrascope.ops.filters.filter_amplitude``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from spectrascope.engine.reducers.routing import RoutingReducer
from spectrascope.engine.runner import Runner, nonfinite_cause
from spectrascope.errors import NonFiniteError, OptionError, TapError
from spectrascope.ops import filters as fl
from spectrascope.probe import Probe
from spectrascope.probe.grammar import TapRequest
from spectrascope.probe.infer import model_taps
from spectrascope.probe.spec import TapList, TapSpec
from spectrascope.report import filters as rf
from spectrascope.report.style import check_cmap
from spectrascope.seam import Analysis, Needs, Option, Result, register

__all__ = ["Filters", "FiltersResult", "FilterLayer", "collect_filters", "resolve_layers", "layer_selected",
           "select_layers", "RoutingReducer", "routing_statistics", "effective_filters", "aff_masks", "spf_masks",
           "check_finite_weights", "filter_summary", "parse_channels", "aff_lines"]


@dataclass
class FilterLayer:
    """One layer's learned filter bank: ``filters`` (K, H, W//2+1) complex."""

    name: str          # tap-style block name, e.g. "s3.b2"
    path: str          # parameter key
    kind: str          # "dynamic-basis" or "global"
    stage: int
    index: int
    filters: torch.Tensor
    width: int

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.filters.shape[-2]), self.width

    @property
    def module(self) -> str:
        return self.path.rsplit(".", 1)[0]


def _declared(model) -> TapList:
    try:
        return model_taps(model)
    except TapError:
        return TapList()


def _mixer_names(model) -> dict[str, tuple]:
    out = {}
    for t in _declared(model):
        if t.role == "mixer" and t.stage is not None:
            prefix = t.name[: -len(".mixer")] if t.name.endswith(".mixer") else t.name
            out.setdefault(t.path, (prefix, t.stage, t.index or 0, t.grid))
    return out


def collect_filters(model) -> list[FilterLayer]:
    """Every complex filter parameter ``(H, W//2+1, K, 2)`` (``complex_weight(s)``), in order."""
    names = _mixer_names(model)
    modules = dict(model.named_modules())
    layers: list[FilterLayer] = []
    for key, p in model.named_parameters():
        if not key.endswith(("complex_weight", "complex_weights")) or p.ndim != 4 or p.shape[-1] != 2:
            continue
        mpath = key.rsplit(".", 1)[0]
        prefix, stage, index, grid = names.get(mpath, (mpath, 0, len(layers), None))
        kind = "dynamic-basis" if hasattr(modules.get(mpath), "num_filters") else "global"
        filt = fl.param_to_filters(p.detach().float().cpu())
        h, wf = filt.shape[-2:]
        width = fl.infer_width(h, wf)
        if grid is not None and grid[0] == h and grid[1] // 2 + 1 == wf:
            width = int(grid[1])                       # the built grid (odd widths are ambiguous otherwise)
        layers.append(FilterLayer(prefix, key, kind, stage, index, filt, width))
    return layers


# ---------------------------------------------------------------------------- --layers


def _as_module_token(model, token: str) -> str:
    """A parameter path (``stages.2.0.token_mixer.complex_weights``) names its module."""
    params = dict(model.named_parameters())
    if token in params and "." in token:
        return "path:" + token.rsplit(".", 1)[0]
    return token


def resolve_layers(model, spec: str | None, *, known: Sequence[str] = ()) -> TapList | None:
    """``--layers`` through the tap grammar: stage numbers (``3``), tap or block names and globs
    (``s3.*``, ``s4.b2``), module or parameter paths; the union of the comma-separated items
    (each resolved on its own, so ``3,s4.*`` is stage 3 and stage 4). None when ``spec`` is empty."""
    if not spec or not str(spec).strip():
        return None
    out = TapList()
    for token in [t.strip() for t in str(spec).split(",") if t.strip()]:
        try:
            taps = TapRequest.parse(_as_module_token(model, token), option="--layers").resolve(model)
        except TapError as exc:
            raise TapError(_none_matched(token, known, str(exc)), option="--layers") from None
        out.extend(t for t in taps if t.name not in set(out.names()))
    return out


def _none_matched(spec, known: Sequence[str], why: str = "") -> str:
    names = ", ".join(list(known)[:8]) + (" ..." if len(known) > 8 else "")
    return f"{spec!r} matches none of the filter layers ({names or 'none'})" + (f": {why}" if why else "")


def layer_selected(selection: TapList | None, name: str, module: str) -> bool:
    """Whether a layer (block ``name``, module path) belongs to a resolved ``--layers`` selection:
    a selected tap of that block, of that module, of a module inside it or of one containing it."""
    if selection is None:
        return True
    for t in selection:
        if t.name == name or t.name.startswith(name + "."):
            return True
        if t.path and (module == t.path or module.startswith(t.path + ".") or t.path.startswith(module + ".")):
            return True
    return False


def select_layers(layers: list, selection: TapList | None, spec: str | None = None) -> list:
    """The layers of a resolved ``--layers`` selection (every layer when there is none)."""
    if selection is None:
        return list(layers)
    keep = [x for x in layers if layer_selected(selection, x.name, x.module)]
    if not keep:
        raise TapError(_none_matched(spec, [x.name for x in layers]), option="--layers")
    return keep


# ---------------------------------------------------------------------------- checks


def check_finite_weights(model, what: str) -> None:
    """A model whose weights hold NaN/inf gives no result: one ``NonFiniteError`` line."""
    for key, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() or t.is_complex():
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"non-finite values (NaN/inf) in {what}: {nonfinite_cause(model)}; "
                                     "nothing was written")


def filter_summary(a: torch.Tensor) -> dict:
    """Range and rough type counts (``ops.filters.filter_kind``) of a stack of amplitude maps."""
    kinds: dict[str, int] = {}
    for k in range(a.shape[0]):
        kind = fl.filter_kind(a[k])
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"amplitude_min": float(a.min()), "amplitude_max": float(a.max()), "amplitude_mean": float(a.mean()),
            "kinds": kinds}


def _taps_of(model, role: str, what: str) -> TapList:
    taps = TapList(t for t in _declared(model) if t.role == role)
    if not taps:
        raise TapError(f"this model has no {what} ({role} taps)")
    return taps


def _block(tap: TapSpec) -> str:
    return tap.name.rsplit(".", 1)[0]


def routing_statistics(model, dataset, runner: Runner, *, selection: TapList | None = None) -> dict:
    """The ``RoutingReducer`` result over ``dataset`` (``Runner.reduce``: this rank's shard, merged
    over the ranks)."""
    taps = TapList(t for t in _taps_of(model, "df_routing", "dynamic-filter routing")
                   if layer_selected(selection, _block(t), t.path.rsplit(".", 1)[0]))
    reducer = RoutingReducer(taps)
    runner.reduce(model, dataset, reducer, desc="routing")
    return reducer.result()


def effective_filters(model, x: torch.Tensor, runner: Runner, *, channels: Sequence[int],
                      selection: TapList | None = None) -> dict[str, torch.Tensor]:
    """Amplitudes ``(B, len(channels), H, W)`` of the effective per-image DF filters of ``x``."""
    taps = TapList(t for t in _taps_of(model, "df_filter", "dynamic filters")
                   if layer_selected(selection, _block(t), t.path.rsplit(".", 1)[0]))
    with Probe(model, taps, nchw=False) as probe:
        runner.forward(model, x, probe, need_output=False)
        got = probe.pop()
    out = {}
    for t in taps:
        w = got[t.name].cpu().permute(0, 3, 1, 2)          # (B, 2C, H, W//2+1) complex
        ch = [c for c in channels if c < w.shape[1]]
        out[_block(t)] = fl.filter_amplitude(w[:, ch], width=t.grid[1] if t.grid else None)
    return out


# ---------------------------------------------------------------------------- AFF / SPF


def _aff_taps(model, selection) -> tuple[TapList, TapList]:
    masks = TapList(t for t in _taps_of(model, "aff_mask", "adaptive frequency masks")
                    if layer_selected(selection, _block(t), t.path.rsplit(".", 1)[0]))
    if not masks:
        raise TapError("the --layers selection holds none of the AFF layers", option="--layers")
    extra = TapList()
    declared = _declared(model)
    for t in masks:
        mixer = t.path.rsplit(".", 1)[0]
        extra.append(TapSpec(t.name + "_in", "path", mixer, "raw", t.stage, t.index, hook="pre"))
        sub = [m for m in declared if m.role == "mixer" and m.path.startswith(mixer + ".")]
        if sub:
            extra.append(TapSpec(t.name + "_out", "path", sub[0].path, "raw", t.stage, t.index))
    return masks, extra


def aff_masks(model, x: torch.Tensor, runner: Runner, *, check_channels: int = 2,
              selection: TapList | None = None) -> list[dict]:
    """AFFNet masks for a batch: per AFF layer the mask (B, C, H, W//2+1), its equivalent
    kernels (B, C, H, W) and the max error of ``irfft2(M * rfft2(x)) == x (*) kernel``
    checked on the first image and ``check_channels`` channels of the model's own input."""
    masks, extra = _aff_taps(model, selection)
    with Probe(model, list(masks) + list(extra), nchw=False) as probe:
        runner.forward(model, x, probe, need_output=False)
        got = probe.pop()
    out = []
    for t in masks:
        mask = got[t.name].cpu()
        if not mask.is_complex():
            raise TapError(f"{t.name}: the mask is not a Fourier mask (transform ablation); nothing to show")
        xin = got[t.name + "_in"].float().cpu()
        H, W = xin.shape[-2:]
        kernel = fl.equivalent_kernel(mask, width=W)
        err = None
        if t.name + "_out" in got:
            k = min(check_channels, xin.shape[1])
            ker = kernel[:1, :k].expand(1, k, H, W) if mask.shape[1] > 1 else kernel[:1, :1]
            conv = fl.circular_conv2d(xin[:1, :k], ker)
            err = float((conv - got[t.name + "_out"].float().cpu()[:1, :k]).abs().max())
        out.append({"name": _block(t), "stage": t.stage, "index": t.index, "mask": mask, "kernel": kernel,
                    "grid": (H, W), "equivalence_max_abs_error": err})
    return out


def spf_masks(model) -> list[dict]:
    """SPANet SPF masks, one per (stage, lambda) (every block of a stage uses the same)."""
    if not hasattr(model, "spf_modules"):
        raise TapError("this model has no spectral pooling filters")
    seen = {}
    for key, mod in model.spf_modules():
        parts = key.split(".")
        stage = int(parts[1]) // 2 + 1 if parts[0] == "network" and parts[1].isdigit() else 0
        lam = float(mod.lamb)
        if (stage, round(lam, 6)) in seen:
            continue
        mask = mod.filter.detach().float().cpu().reshape(mod.filter.shape[-2:])
        kernel = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(mask)).real)
        seen[(stage, round(lam, 6))] = {"stage": stage, "lambda": lam, "radius": mod.radius, "mask": mask,
                                        "kernel": kernel, "path": key}
    return [seen[k] for k in sorted(seen)]


# ---------------------------------------------------------------------------- the declaration
#: channels of the effective filters shown without --channels
DEFAULT_EFFECTIVE_CHANNELS = (0, 1, 2, 3)


def parse_channels(value):
    """``--channels``: ``0,1,2`` / ``0-7`` / ``0-3,8`` -> channel indices (``report.filters.parse_channels``);
    a list passes as it is (the Python API)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return rf.parse_channels(value)


def _channel_counts(model, banks, effective: bool) -> dict[str, int]:
    """Channels of every layer ``--channels`` applies to: the global filters, and the dynamic
    filters' layers when effective filters are drawn."""
    counts = {}
    for b in banks:
        if b.kind != "dynamic-basis":
            counts[b.name] = int(b.filters.shape[0])
        elif effective:
            n = getattr(model.get_submodule(b.path.rsplit(".", 1)[0]), "med_channels", None)
            if isinstance(n, int):
                counts[b.name] = n
    return counts


@dataclass(kw_only=True)
class FiltersResult(Result):
    """The filters of one model: a summary per layer (``layers``: name, parameter, kind, stage,
    number of filters, grid, amplitude range, rough kinds), the routing statistics, the effective
    filters' images and channels, the AFF and SPF entries; the arrays (amplitudes, routing means,
    effective filters, masks and kernels) are in ``filters.npz``."""

    model: str
    family: str
    input_size: list[int]
    colour_map: str
    random_weights: bool = False
    channels: list[int] | None = None
    layers: list[dict] = field(default_factory=list)
    routing: dict | None = None
    effective: dict | None = None
    aff: list[dict] | None = None
    aff_images: list[str] | None = None
    spf: list[dict] | None = None
    filters: dict = field(default_factory=dict, metadata={"json": False})

    def arrays(self) -> dict:
        return {"filters.npz": self.filters}

    def load_arrays(self, files: dict) -> None:
        self.filters = dict(files.get("filters.npz", {}))


def _family(model) -> str:
    card = getattr(model, "card", None)
    return card.family if card is not None else type(model).__name__.lower()


def _has_aff(model) -> bool:
    return any(t.role == "aff_mask" for t in _declared(model))


def _has_spf(model) -> bool:
    return hasattr(model, "spf_modules") and bool(model.spf_modules())


def _banks(res: FiltersResult, banks: list) -> None:
    for b in banks:
        a = fl.filter_amplitude(b.filters, width=b.width)
        res.filters[f"amplitude/{b.name}"] = a.numpy().astype(np.float32)
        res.layers.append({"name": b.name, "parameter": b.path, "kind": b.kind, "stage": b.stage,
                           "filters": int(a.shape[0]), "grid": list(b.grid), **filter_summary(a)})


def _routing(ctx, res: FiltersResult, model, pre, selection) -> None:
    stats = routing_statistics(model, ctx.source.dataset(pre), ctx.runner, selection=selection)
    res.routing = {k: {"argmax_share": v["argmax_share"].tolist(), "mean_entropy_nats": float(v["entropy"].mean()),
                       "images": v["images"]} for k, v in stats.items()}
    for k, v in stats.items():
        res.filters[f"routing_mean/{k}"] = v["mean"].numpy().astype(np.float32)


def _images(ctx, pre, n: int) -> torch.Tensor:
    return ctx.source.load(pre, list(range(min(n, len(ctx.source))))).to(ctx.runner.device)


def _effective(ctx, res: FiltersResult, model, pre, selection) -> None:
    chs = list(ctx.params.channels or DEFAULT_EFFECTIVE_CHANNELS)
    eff = effective_filters(model, _images(ctx, pre, ctx.params.effective), ctx.runner, channels=chs,
                            selection=selection)
    for k, v in eff.items():
        res.filters[f"effective_amplitude/{k}"] = v.numpy()
    n = min(ctx.params.effective, len(ctx.source))
    res.effective = {"layers": list(eff), "channels": chs, "images": list(ctx.source.names[:n])}


def _aff(ctx, res: FiltersResult, model, pre, selection) -> None:
    x = _images(ctx, pre, max(1, min(len(ctx.source), 4)))
    out = aff_masks(model, x, ctx.runner, selection=selection)
    res.aff = [{"name": r["name"], "stage": r["stage"], "grid": list(r["grid"]), "mask_shape": list(r["mask"].shape),
                "equivalence_max_abs_error": r["equivalence_max_abs_error"]} for r in out]
    res.aff_images = list(ctx.source.names[:x.shape[0]])
    for r in out:
        res.filters[f"aff_mask/{r['name']}"] = r["mask"].numpy()
        res.filters[f"aff_kernel/{r['name']}"] = r["kernel"].numpy()


def _spf(res: FiltersResult, model) -> None:
    out = spf_masks(model)
    res.spf = [{"stage": r["stage"], "lambda": r["lambda"], "radius": r["radius"], "grid": list(r["mask"].shape),
                "values": sorted({round(float(v), 6) for v in r["mask"].unique()})} for r in out]
    for r in out:
        key = f"stage{r['stage']}_lambda{r['lambda']:.1f}"
        res.filters[f"spf_mask/{key}"] = r["mask"].numpy()
        res.filters[f"spf_kernel/{key}"] = r["kernel"].numpy()


def _what(model, name: str, layers) -> tuple[list, bool, bool, object]:
    """(filter banks, has AFF masks, has SPF masks, --layers selection), checked."""
    banks = collect_filters(model)
    has_aff, has_spf = _has_aff(model), _has_spf(model)
    if not banks and not has_aff and not has_spf:
        raise TapError(f"{name} has no frequency filters to show (no complex filter parameters, AFF masks or "
                       "SPF masks)", option="--model")
    selection = resolve_layers(model, layers, known=[b.name for b in banks])
    if banks:
        banks = select_layers(banks, selection, layers)
    return banks, has_aff, has_spf, selection


def aff_lines(result: FiltersResult) -> list[str]:
    """The equivalence check of every AFF layer, one line each."""
    return [f"{a['name']}: mask filtering == circular convolution with its kernel, "
            f"max abs error {a['equivalence_max_abs_error']:.2e}"
            for a in (result.aff or []) if a["equivalence_max_abs_error"] is not None]


@register
class Filters(Analysis):
    """Frequency filters of a model: DFFormer bases (Fig. 9), GFNet/GFFormer global filters
    (Fig. 2), AFFNet adaptive masks and their equivalent kernels, SPANet SPF masks.

    Writes results.json, filters.npz and the figures. Runs under torchrun (the routing statistics
    are sharded over the processes)."""

    name = "filters"
    summary = "Frequency filters of a model: DF bases, global filters, AFF masks, SPF masks (DFFormer Figs. 2, 9)"
    needs = Needs(models="one", data="images")
    options = (
        Option("layers", None, "taps as in --taps: stages (3), layer names or globs (s3.*, s4.b2), module or "
                               "parameter paths"),
        Option("routing", False, "DFFormer: routing statistics over the images (which basis is used)", type=bool),
        Option("effective", 0, "DFFormer: effective per-image filters of the first N images", type=int,
               parse=lambda v: _non_negative(v, "--effective")),
        Option("channels", None, "channels to show (global / effective filters), e.g. 0-23", parse=parse_channels),
        Option("cmap", None, "matplotlib colour map (default viridis: yellow = high amplitude)", parse=check_cmap),
    )
    result = FiltersResult
    random_weights = "the filters are its initialisation"
    draw_options = ("cmap",)

    def run(self, ctx) -> FiltersResult:
        p = ctx.params
        built = ctx.build(ctx.spec)
        model = built.model
        check_finite_weights(model, f"the weights of {built.name}")
        banks, has_aff, has_spf, selection = _what(model, built.name, p.layers)
        dynamic = any(b.kind == "dynamic-basis" for b in banks)
        rf.check_channels(p.channels, _channel_counts(model, banks, bool(p.effective)))
        res = FiltersResult(model=built.name, family=_family(model), input_size=list(built.pre.size),
                            colour_map=p.cmap or rf.DEFAULT_CMAP, random_weights=built.random_weights,
                            channels=p.channels)
        _banks(res, banks)
        if p.routing and dynamic:
            _routing(ctx, res, model, built.pre, selection)
        if p.effective and dynamic and ctx.dist.main:
            _effective(ctx, res, model, built.pre, selection)
        if has_aff:
            _aff(ctx, res, model, built.pre, selection)
        if has_spf:
            _spf(res, model)
        return res

    def draw(self, result, folder, style):
        return rf.draw(result, folder, style)

    def describe(self, result, output):
        figures = [f for f in result.files if f.endswith(".png")]
        return aff_lines(result) + [f"filters of {result.model} -> {output} ({', '.join(figures)})"]


def _non_negative(value, flag: str):
    if value is not None and value < 0:
        raise OptionError("must be >= 0", option=flag)
    return value
