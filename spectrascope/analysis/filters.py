"""The frequency filters of a model, as data (the ``spectrascope filters`` analysis; the
figures are in ``report.filters``, the command in ``pipelines.filters``).

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

from dataclasses import dataclass
from typing import Sequence

import torch

from spectrascope.engine.reducers import Reducer
from spectrascope.engine.runner import Runner, nonfinite_cause
from spectrascope.errors import NonFiniteError, TapError
from spectrascope.ops import filters as fl
from spectrascope.probe import Probe
from spectrascope.probe.grammar import TapRequest
from spectrascope.probe.infer import model_taps
from spectrascope.probe.spec import TapList, TapSpec

__all__ = ["FilterLayer", "collect_filters", "resolve_layers", "layer_selected", "select_layers", "RoutingReducer",
           "routing_statistics", "effective_filters", "aff_masks", "spf_masks", "check_finite_weights",
           "filter_summary"]


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


# ---------------------------------------------------------------------------- routing


def _block(tap: TapSpec) -> str:
    return tap.name.rsplit(".", 1)[0]


class RoutingReducer(Reducer):
    """Streamed DF routing statistics per layer from the ``df_routing`` taps ``(B, N, C)``:
    float64 sums of the weights (N, C), of the (image, channel) pairs whose top basis is
    each basis (N,), of the routing entropy per channel (C,) in nats, and the image count.
    ``result()`` gives the means; ``all_reduce(dist)`` (the protocol's) merges the ranks."""

    def __init__(self, taps: Sequence[TapSpec]):
        self.taps = TapList(t for t in taps if t.role == "df_routing")
        self.sums: dict[str, dict[str, torch.Tensor]] = {}

    def __call__(self, tap: TapSpec, x: torch.Tensor) -> None:
        r = x.detach().to(torch.float64)
        n = r.shape[1]
        top = torch.nn.functional.one_hot(r.argmax(dim=1), n).sum(dim=(0, 1)).to(torch.float64)
        ent = -(r.clamp_min(1e-12).log() * r).sum(dim=1).sum(dim=0)
        new = {"sum": r.sum(dim=0), "top": top, "ent": ent,
               "n": torch.tensor(float(r.shape[0]), dtype=torch.float64, device=r.device)}
        acc = self.sums.setdefault(_block(tap), {})
        for k, v in new.items():
            acc[k] = v if k not in acc else acc[k] + v

    def state(self) -> dict:
        return {f"{name}|{k}": v for name, acc in self.sums.items() for k, v in acc.items()}

    def load_state(self, state: dict) -> None:
        self.sums = {}
        for key, v in state.items():
            name, k = key.rsplit("|", 1)
            self.sums.setdefault(name, {})[k] = v

    def result(self) -> dict[str, dict]:
        """Per layer (execution order): ``mean`` (N, C), ``argmax_share`` (N,), ``entropy`` (C,), ``images``."""
        out = {}
        for name in dict.fromkeys([_block(t) for t in self.taps] + list(self.sums)):
            if name not in self.sums:
                continue
            s = {k: v.cpu() for k, v in self.sums[name].items()}
            n = max(float(s["n"]), 1.0)
            c = s["sum"].shape[1]
            out[name] = {"mean": s["sum"] / n, "argmax_share": s["top"] / (n * c), "entropy": s["ent"] / n,
                         "images": int(s["n"])}
        return out


def _taps_of(model, role: str, what: str) -> TapList:
    taps = TapList(t for t in _declared(model) if t.role == role)
    if not taps:
        raise TapError(f"this model has no {what} ({role} taps)")
    return taps


def routing_statistics(model, dataset, runner: Runner, *, selection: TapList | None = None) -> dict:
    """The ``RoutingReducer`` result over ``dataset`` (this rank's shard, merged over the ranks)."""
    taps = TapList(t for t in _taps_of(model, "df_routing", "dynamic-filter routing")
                   if layer_selected(selection, _block(t), t.path.rsplit(".", 1)[0]))
    reducer = RoutingReducer(taps)
    failure = None
    try:
        with Probe(model, taps, callback=reducer, **reducer.probe_kwargs) as probe:
            runner.run(model, dataset, probe, need_output=False, desc="routing")
    except NonFiniteError as exc:
        failure = exc
    _stop_together(runner.dist, failure)
    reducer.all_reduce(runner.dist)
    return reducer.result()


def _stop_together(dist, failure: Exception | None) -> None:
    """A non-finite stop on one rank stops every rank with the same message (no rank waits forever
    in the all-reduce)."""
    if dist is not None and dist.enabled:
        messages = [m for m in dist.all_gather_object(str(failure) if failure is not None else None) if m]
        if messages:
            raise NonFiniteError(messages[0])
    elif failure is not None:
        raise failure


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
