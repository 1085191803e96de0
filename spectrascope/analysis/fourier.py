"""Fourier analyses of feature maps: model -> taps -> streaming reducer -> results -> figures.

``amplitude_analysis`` gives the relative log-amplitude curves (Park & Kim 2022; DFFormer
Fig. 1 and 8; SPANet Fig. 2) and the high-frequency Delta per latent; ``spectrum_analysis``
gives the 2-D spectrum maps of token-mixer outputs (SPANet Fig. 1). Both return a plain,
JSON-serialisable payload; ``write_results`` turns it into ``results.json`` (with the
provenance block), a tidy CSV, ``maps.npz`` and the figures (PNG + PDF), and ``redraw``
draws the figures again from a ``results.json`` alone.
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from spectrascope.io.images import iter_batches, paths_digest, resolve_image_paths
from spectrascope.models.base import TapList, TapSpec
from spectrascope.engine.reducers.amplitude import AmplitudeReducer
from spectrascope.probe.grammar import check_spatial as check_spatial_taps
from spectrascope.io.results import SCHEMA_VERSION, provenance, write_csv, write_json
from spectrascope.ops.fourier import (EPS, ZERO_MEAN_WARN_FRACTION, DiagonalStats, ZeroMeanWarning, curve_from_map, frequency_axis,
                       normalised_depth)
from spectrascope.probe import Probe, TapError, model_taps, select_taps

__all__ = ["DEFAULT_AMPLITUDE_ROLES", "DEFAULT_SPECTRUM_ROLES", "parse_tap_request", "choose_taps", "reduce_spectra",
           "analyse", "amplitude_analysis", "spectrum_analysis", "write_results", "load_results", "redraw"]

#: Park & Kim's latents: the residual stream after every token mixer and every MLP, plus downsampling
DEFAULT_AMPLITUDE_ROLES = ("stem", "downsample", "residual", "block")
#: SPANet Fig. 1: the token-mixer outputs
DEFAULT_SPECTRUM_ROLES = ("mixer",)
REFERENCE = "Park & Kim 2022 (How do vision transformers work?), fourier_analysis.ipynb @ 9571ff1"


# ---------------------------------------------------------------------------- tap selection

def parse_tap_request(text: str | Iterable[str] | None) -> tuple[list[str] | None, list[tuple[str, str | None]]]:
    """``"mixer,block,path:blocks.3.attn:NLC"`` -> (roles, [(module path, layout or None)])."""
    if text is None:
        return None, []
    items = [text] if isinstance(text, str) else list(text)
    roles, paths = [], []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if part.startswith("path:"):
                rest = part[5:]
                path, _, layout = rest.partition(":")
                if not path:
                    raise TapError(f"empty module path in {part!r}")
                paths.append((path, layout.upper() or None))
            else:
                roles.append(part)
    return (roles or None), paths


def _filter_blocks(taps: TapList, blocks) -> TapList:
    if blocks in (None, "all"):
        return taps
    groups: dict[tuple, list[TapSpec]] = {}
    for t in taps:
        if t.index is not None:
            groups.setdefault((t.stage, t.role), []).append(t)
    keep = set()
    for key, group in groups.items():
        idx = sorted({t.index for t in group})
        if blocks == "first":
            want = idx[0]
        elif blocks == "last":
            want = idx[-1]
        else:
            want = int(blocks)
            if want < 0:
                want = idx[want] if -want <= len(idx) else None
            if want not in idx:
                continue
        keep.update(t.name for t in group if t.index == want)
    out = TapList(t for t in taps if t.index is None or t.name in keep)
    if not out:
        raise TapError(f"no tap left after --blocks {blocks}")
    return out


def choose_taps(model: nn.Module, *, roles: Sequence[str] | None = None, stages: Sequence[int] | None = None,
                paths: Sequence[tuple[str, str | None]] = (), blocks="all",
                default_roles: Sequence[str] = DEFAULT_AMPLITUDE_ROLES, input_size=None,
                what: str = "the amplitude") -> TapList:
    """Spatial taps of ``model`` by role / 1-based stage / module path (``--taps``, ``--stage``).

    Without ``roles`` and ``paths`` the ``default_roles`` that the model has are used.
    ``blocks`` keeps, per stage and role, all blocks or the first / last / N-th one.
    Non-spatial taps (pooled vectors, routing weights, complex filters) are refused."""
    all_taps = model_taps(model, input_size=input_size)
    if roles is None and not paths:
        have = set(all_taps.roles())
        roles = [r for r in default_roles if r in have]
        if not roles:
            raise TapError(f"this model has none of the default roles ({', '.join(default_roles)}); "
                           f"it has: {', '.join(all_taps.roles())}")
    out = TapList()
    if roles:
        out = select_taps(all_taps, roles=roles, stages=stages)
    elif stages:
        select_taps(all_taps, stages=stages)        # validates the stage numbers
    by_path = {t.path: t for t in all_taps if t.hook == "forward"}
    for path, layout in paths:
        try:
            model.get_submodule(path)
        except AttributeError:
            raise TapError(f"no module {path!r} in this model (see `spectrascope taps --model ...`)") from None
        tap = by_path.get(path)
        if tap is None or (layout and layout != tap.layout):
            if layout is None:
                raise TapError(f"module {path!r} is not a declared tap; give its layout as path:{path}:NCHW|NHWC|NLC")
            tap = TapSpec(name=path, role="path", path=path, layout=layout)
        if tap not in out:
            out.append(tap)
    out = _filter_blocks(TapList(out), blocks)
    return check_spatial_taps(out, what)


# ---------------------------------------------------------------------------- reduction

def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, unit="batch", file=sys.stderr, leave=False, disable=None)


def reduce_spectra(model: nn.Module, batches: Iterable, taps: Sequence[TapSpec], *, device=None,
                   eps: float = EPS, dtype: torch.dtype = torch.float32, maps: bool = True, progress: bool = False,
                   total: int | None = None, desc: str = "") -> tuple[dict, int, list[str]]:
    """Run ``model`` over ``batches`` (tensors or ``(tensor, ...)`` tuples) with a streaming
    amplitude reducer on ``taps``. Returns (tap name -> SpectrumStats, or DiagonalStats when
    ``maps=False``; number of images; tap names in firing order)."""
    reducer = AmplitudeReducer(taps, eps=eps, dtype=dtype, maps=maps)
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    n = 0
    with torch.inference_mode(), Probe(model, reducer.taps, callback=reducer, **reducer.probe_kwargs) as probe:
        for item in _progress(batches, total, desc, progress):
            batch = item[0] if isinstance(item, (tuple, list)) else item
            model(batch.to(device, non_blocking=True))
            n += int(batch.shape[0])
    if n == 0:
        raise ValueError("no images were processed")
    missing = reducer.missing()
    if missing:
        raise TapError(f"tap(s) {', '.join(missing[:5])} never fired during the forward pass")
    stats = reducer.finalise()
    return stats, n, list(probe.order)


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
            raise ValueError(f"checkpoint given for {', '.join(unknown)}, which is not among the models "
                             f"({', '.join(names)})")
        return [checkpoints.get(n) for n in names]
    cks = _as_list(checkpoints)
    if len(cks) != len(names):
        raise ValueError(f"{len(cks)} checkpoint(s) for {len(names)} model(s): give one per model, in order, "
                         "or MODEL=PATH")
    return cks


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
        "layout": t.layout, "num_prefix_tokens": t.num_prefix_tokens, "note": t.note,
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


def analyse(models, *, kind: str = "amplitude", checkpoints=None, images=None, data: str | None = None,
            num_images: int | None = None, image_paths: Sequence | None = None, img_size=None,
            roles: Sequence[str] | None = None, stages: Sequence[int] | None = None,
            tap_paths: Sequence[tuple[str, str | None]] = (), blocks=None,
            select: Callable[[str, nn.Module, TapList], TapList] | None = None, device="auto",
            batch_size: int = 16, method: str = "diagonal", relative: bool = True, freq_axis: str = "index",
            eps: float = EPS, dtype: torch.dtype = torch.float32, progress: bool = False,
            model_kwargs: Mapping | None = None, labels: Sequence[str] | None = None,
            save_maps: bool | None = None) -> dict:
    """Run the Fourier analysis of ``kind`` ("amplitude" or "spectrum") for one or more
    models on the same images and return the results payload (no provenance yet; see
    ``write_results``). ``models`` are registry names, ``timm:<name>`` or built modules.
    ``select(name, model, taps)`` may replace the role/stage selection per model.

    ``save_maps`` accumulates the whole 2-D mean log-amplitude maps (returned in
    ``payload["arrays"]``, written to maps.npz); it is implied by ``kind="spectrum"`` and
    ``method="radial"``. Without it the diagonal curves come from the fast half-diagonal
    reduction (square maps only)."""
    from spectrascope.engine.device import resolve_device
    from spectrascope.zoo.build import build_for_inference, preprocessing
    if kind not in ("amplitude", "spectrum"):
        raise ValueError(f"unknown analysis kind {kind!r}")
    if method not in ("diagonal", "radial"):
        raise ValueError(f"--method must be diagonal or radial, not {method!r}")
    if freq_axis not in ("index", "true"):
        raise ValueError(f"--freq-axis must be index or true, not {freq_axis!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError("the compute dtype must be float32 or float64")
    mlist = _as_list(models)
    if not mlist:
        raise ValueError("no model given")
    names = [m if isinstance(m, str) else getattr(m, "spectrascope_name", type(m).__name__) for m in mlist]
    if len(set(names)) != len(names):
        raise ValueError(f"a model is listed twice: {', '.join(names)}")
    cks = _checkpoint_map(names, checkpoints)
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    paths = list(image_paths) if image_paths is not None else resolve_image_paths(images, data, num_images)
    if image_paths is not None and num_images is not None:
        paths = paths[:num_images]
    if not paths:
        raise ValueError("no images to analyse")
    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    if blocks is None:
        blocks = "last" if kind == "spectrum" else "all"
    default_roles = DEFAULT_SPECTRUM_ROLES if kind == "spectrum" else DEFAULT_AMPLITUDE_ROLES
    maps = bool(save_maps) or kind == "spectrum" or method == "radial"
    what = "the spectrum map" if kind == "spectrum" else "the amplitude"
    t0 = time.perf_counter()
    records, warn_list, arrays = [], [], {}
    for k, (spec, name, ck) in enumerate(zip(mlist, names, cks)):
        if isinstance(spec, nn.Module):
            model = spec.eval().to(dev)
            cfg = preprocessing(model, img_size)
            if ck is not None:
                raise ValueError("pass checkpoints only with model names (a built model is used as is)")
        else:
            model, cfg = build_for_inference(spec, checkpoint=ck, img_size=img_size, device=dev,
                                             **dict(model_kwargs or {}))
        taps = choose_taps(model, roles=roles, stages=stages, paths=tap_paths, blocks=blocks,
                           default_roles=default_roles, input_size=cfg["size"], what=what)
        if select is not None:
            taps = check_spatial_taps(select(name, model, taps), what)
        batches = iter_batches(paths, batch_size, cfg["size"], cfg["crop_pct"], cfg["mean"], cfg["std"])
        total = -(-len(paths) // batch_size)
        stats, n, order = reduce_spectra(model, batches, taps, device=dev, eps=eps, dtype=dtype, maps=maps,
                                         progress=progress, total=total, desc=name)
        rank = {nm: i for i, nm in enumerate(order)}
        ordered = sorted(taps, key=lambda t: rank[t.name])
        depths = normalised_depth(len(ordered))
        tap_recs = [_tap_record(t, stats[t.name], float(d), method=method, kind=kind, relative=relative)
                    for t, d in zip(ordered, depths)]
        if maps:
            for t in ordered:
                arrays[f"{name}/{t.name}"] = stats[t.name].mean_map(shift=True).numpy().astype(np.float32)
        zm = [r["name"] for r in tap_recs if r["zero_mean_fraction"] > ZERO_MEAN_WARN_FRACTION]
        if zm:
            msg = (f"{name}: taps {', '.join(zm[:6])}{' ...' if len(zm) > 6 else ''} are (almost) zero-mean maps: "
                   "their DC reference collapses to log(eps) and their curves are shifted by about +14..16")
            warnings.warn(msg, ZeroMeanWarning, stacklevel=2)
            warn_list.append(msg)
        info = getattr(model, "checkpoint_info", None) or {}
        card = getattr(model, "card", None)
        records.append({
            "model": name, "label": (labels[k] if labels else name),
            "family": getattr(card, "family", None) or ("timm" if name.startswith("timm:") else None),
            "checkpoint": str(ck) if ck is not None else None,
            "checkpoint_sha256": info.get("sha256") if ck is not None else None,
            "random_weights": ck is None and not isinstance(spec, nn.Module),
            "input_size": list(cfg["size"]), "num_images": n, "taps": tap_recs,
        })
        del model
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "method": {
            "name": "relative log amplitude of Fourier-transformed feature maps" if kind == "amplitude"
            else "2-D spectrum map (batch/channel mean of log|F|, centred)",
            "reference": REFERENCE, "eps": eps, "curve": method, "relative": relative, "freq_axis": freq_axis,
            "dtype": str(dtype).replace("torch.", ""), "blocks": blocks, "maps": maps,
            "roles": list(roles) if roles else None, "stages": list(stages) if stages else None,
        },
        "images": {"count": len(paths), "sha256": paths_digest(paths), "files": [Path(p).name for p in paths],
                   "source": str(images) if images else (data or "samples")},
        "device": str(dev),
        "models": records,
        "warnings": warn_list,
        "compute_time_s": time.perf_counter() - t0,
        # not JSON: centred mean log-amplitude maps (model/tap -> H x W), written to maps.npz
        "arrays": arrays,
    }


def amplitude_analysis(models, **kw) -> dict:
    """Relative log-amplitude curves (see ``analyse``); default taps: stem, downsample,
    residual (after each token mixer) and block (after each MLP)."""
    return analyse(models, kind="amplitude", **kw)


def spectrum_analysis(models, **kw) -> dict:
    """2-D spectrum maps (see ``analyse``); default taps: the token mixer of the last block
    of every stage (``blocks="last"``); ``relative=True`` puts the DC value at 0."""
    return analyse(models, kind="spectrum", **kw)


# ---------------------------------------------------------------------------- outputs

def _csv_rows(payload: Mapping) -> list[dict]:
    rows = []
    for m in payload["models"]:
        for t in m["taps"]:
            base = {"model": m["model"], "random_weights": m["random_weights"], "tap": t["name"], "role": t["role"],
                    "stage": t["stage"], "block": t["index"], "normalised_depth": round(t["normalised_depth"], 6),
                    "map_h": t["shape"][1], "map_w": t["shape"][2]}
            if payload["kind"] == "spectrum":
                arr = np.asarray(t["map"])
                H, W = arr.shape
                for i in range(H):
                    for j in range(W):
                        rows.append(dict(base, freq_y_pi=round(2 * (i - H // 2) / H, 6),
                                         freq_x_pi=round(2 * (j - W // 2) / W, 6), value=arr[i, j]))
            else:
                for k, (v, fi, ft) in enumerate(zip(t["curve"], t["freq_index_pi"], t["freq_true_pi"])):
                    rows.append(dict(base, k=k, freq_index_pi=round(fi, 6), freq_true_pi=round(ft, 6),
                                     delta_log_amplitude=v))
    return rows


def write_results(payload: dict, out_dir, *, command: str, wall_time_s: float | None = None,
                  formats: Sequence[str] = ("png", "pdf"), title: str | None = None, extra: Mapping | None = None,
                  maps: Mapping[str, np.ndarray] | None = None) -> list[Path]:
    """Write ``results.json`` (payload + provenance), ``<kind>.csv``, the figures and, when
    given, ``maps.npz`` into ``out_dir`` (normally a ``staged_output`` directory)."""
    from spectrascope.report.fourier import figures_for, save_figure
    out_dir = Path(out_dir)
    names = [m["model"] for m in payload["models"]]
    shas = [m["checkpoint_sha256"] for m in payload["models"]]
    prov = provenance(command=command, model=", ".join(names), checkpoint_sha256=shas[0] if len(shas) == 1 else None,
                      images_sha256=payload["images"]["sha256"], device=payload.get("device"),
                      wall_time_s=wall_time_s, random_weights=any(m["random_weights"] for m in payload["models"]),
                      extra=extra)
    doc = dict(payload)
    arrays = doc.pop("arrays", None) or {}
    if maps:
        arrays = dict(arrays, **maps)
    doc["provenance"] = prov
    if title:
        doc["title"] = title
    written = []
    write_json(out_dir / "results.json", doc)
    written.append(out_dir / "results.json")
    write_csv(out_dir / f"{payload['kind']}.csv", _csv_rows(payload))
    written.append(out_dir / f"{payload['kind']}.csv")
    if arrays:
        np.savez_compressed(out_dir / "maps.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
        written.append(out_dir / "maps.npz")
    for stem, fig in figures_for(doc, title=title).items():
        written += save_figure(fig, out_dir, stem, formats)
    return written


def load_results(path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results file {path}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a results.json file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") not in ("amplitude", "spectrum") or "models" not in doc:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        raise ValueError(f"{path} holds no amplitude or spectrum results (kind={kind!r})")
    return doc


def redraw(results, output=None, *, formats: Sequence[str] = ("png", "pdf"), freq_axis: str | None = None,
           cmap: str | None = None) -> list[Path]:
    """Draw the figures of a ``results.json`` again (from its data alone) into ``output``
    (default: the folder of the results file)."""
    from spectrascope.report.fourier import figures_for, save_figure
    src = Path(results)
    doc = load_results(src)
    out = Path(output) if output else (src if src.is_dir() else src.parent)
    written = []
    for stem, fig in figures_for(doc, freq_axis=freq_axis, cmap=cmap, title=doc.get("title")).items():
        written += save_figure(fig, out, stem, formats)
    return written
