"""``spectrascope filters``: the learned (or instance-adaptive) frequency filters of a model,
as figures, raw arrays and ``results.json``.

* DFFormer / CDFFormer: every dynamic-filter layer's N basis filters (DFFormer Fig. 9),
  optionally the routing statistics over images (which basis each channel uses) and the
  effective per-image filters.
* GFNet / GFNet-H / GFFormer: the static per-channel global filters (GFNet / DFFormer Fig. 2).
* AFFNet: the instance-adaptive masks of given images and their equivalent spatial
  kernels, with a numerical check of the equivalence on the model's own tensors.
* SPANet: the spectral pooling masks per stage and lambda, and their spatial kernels.

Amplitudes follow the official GFNet recipe (``spectrascope.ops.filters.filter_amplitude``).
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spectrascope.ops import filters as fl

log = logging.getLogger("spectrascope.ops.filters")

__all__ = ["FilterLayer", "collect_filters", "select_layers", "run_filters", "routing_statistics",
           "aff_masks", "spf_masks"]


@dataclass
class FilterLayer:
    """One layer's learned filter bank: ``filters`` (K, H, W//2+1) complex."""

    name: str          # tap-style name, e.g. "s3.b2"
    path: str          # parameter key
    kind: str          # "dynamic-basis" or "global"
    stage: int
    index: int
    filters: torch.Tensor
    width: int

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.filters.shape[-2]), self.width


def _mixer_names(model) -> dict[str, tuple]:
    out = {}
    taps = model.taps() if hasattr(model, "taps") else []
    for t in taps:
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
        mod = modules.get(mpath)
        prefix, stage, index, grid = names.get(mpath, (mpath, 0, len(layers), None))
        kind = "dynamic-basis" if hasattr(mod, "num_filters") else "global"
        filt = fl.param_to_filters(p.detach().float().cpu())
        h, wf = filt.shape[-2:]
        width = fl.infer_width(h, wf)
        if grid is not None and grid[0] == h and grid[1] // 2 + 1 == wf:
            width = int(grid[1])                       # the built grid (odd widths are ambiguous otherwise)
        layers.append(FilterLayer(prefix, key, kind, stage, index, filt, width))
    return layers


def select_layers(layers: list, spec: str | None) -> list:
    """``--layers``: comma-separated stage numbers (``3``), names or globs (``s3.*``,
    ``s4.b2``) or parameter paths; empty keeps everything."""
    if not spec:
        return layers
    keep = []
    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    for layer in layers:
        for tok in tokens:
            if tok.isdigit() and layer.stage == int(tok):
                keep.append(layer)
                break
            if fnmatch.fnmatch(layer.name, tok) or fnmatch.fnmatch(layer.path, tok) or layer.path.startswith(tok):
                keep.append(layer)
                break
    if not keep:
        raise ValueError(f"--layers {spec!r} matches none of {', '.join(x.name for x in layers[:8])}"
                         + (" ..." if len(layers) > 8 else ""))
    return keep


# ---------------------------------------------------------------------------- data-driven views


def _batches(model, cfg, paths, batch_size, device):
    from spectrascope.io.images import iter_batches
    for batch, chunk in iter_batches(paths, batch_size, cfg["size"], cfg["crop_pct"], cfg["mean"], cfg["std"]):
        yield batch.to(device), chunk


def routing_statistics(model, batches, want_effective: int = 0, channels=(0, 1, 2, 3)) -> dict:
    """Streamed DF routing statistics per layer: mean weights (N, 2C), share of
    (image, channel) pairs whose top basis is each basis, mean entropy; and the effective
    filters of the first ``want_effective`` images for ``channels`` (amplitudes)."""
    from spectrascope.probe import Probe, model_taps
    taps = [t for t in model_taps(model) if t.role in ("df_routing", "df_filter")]
    routing_taps = [t for t in taps if t.role == "df_routing"]
    if not routing_taps:
        raise ValueError("this model has no dynamic-filter routing (df_routing taps)")
    stats: dict[str, dict] = {}
    eff: dict[str, list] = {}
    seen = {"n": 0}

    def consume(tap, x):
        base = tap.name.rsplit(".", 1)[0]
        if tap.role == "df_routing":
            r = x.float().cpu()
            s = stats.setdefault(base, {"sum": torch.zeros(r.shape[1:]), "top": torch.zeros(r.shape[1]),
                                        "ent": torch.zeros(r.shape[2]), "n": 0})
            s["sum"] += r.sum(0)
            top = r.argmax(dim=1)
            s["top"] += torch.stack([(top == f).float().sum() for f in range(r.shape[1])])
            s["ent"] += -(r.clamp_min(1e-12).log() * r).sum(dim=1).sum(0)
            s["n"] += r.shape[0]
        elif want_effective and seen["n"] < want_effective:
            take = x[: want_effective - seen["n"]].cpu()          # (b, H, W//2+1, 2C) complex
            ch = [c for c in channels if c < take.shape[-1]]
            w = take.permute(0, 3, 1, 2)[:, ch]
            eff.setdefault(base, []).append(fl.filter_amplitude(w, width=tap.grid[1] if tap.grid else None))

    with Probe(model, taps if want_effective else routing_taps, callback=consume, nchw=False):
        with torch.inference_mode():
            for x, _ in batches:
                model(x)
                seen["n"] += x.shape[0]
    out = {}
    for name, s in stats.items():
        n = max(s["n"], 1)
        c = s["sum"].shape[1]
        out[name] = {"mean": s["sum"] / n, "argmax_share": s["top"] / (n * c), "entropy": s["ent"] / n,
                     "images": s["n"]}
        if name in eff:
            out[name]["effective"] = torch.cat(eff[name])
    return out


def aff_masks(model, x: torch.Tensor, check_channels: int = 2) -> list[dict]:
    """AFFNet masks for a batch: per AFF layer the mask (B, C, H, W//2+1), its equivalent
    kernels (B, C, H, W) and the max error of ``irfft2(M * rfft2(x)) == x (*) kernel``
    checked on the first image and ``check_channels`` channels of the model's own input."""
    from spectrascope.probe import Probe, model_taps
    from spectrascope.models.base import TapSpec
    mask_taps = [t for t in model_taps(model) if t.role == "aff_mask"]
    if not mask_taps:
        raise ValueError("this model has no adaptive frequency masks (aff_mask taps)")
    extra = []
    for t in mask_taps:
        mixer = t.path.rsplit(".", 1)[0]
        extra.append(TapSpec(t.name + "_in", "path", mixer, "raw", t.stage, t.index, hook="pre"))
        sub = [m for m in model_taps(model) if m.role == "mixer" and m.path.startswith(mixer + ".")]
        if sub:
            extra.append(TapSpec(t.name + "_out", "path", sub[0].path, "raw", t.stage, t.index))
    with Probe(model, mask_taps + extra, nchw=False) as probe, torch.inference_mode():
        model(x)
        got = probe.pop()
    out = []
    for t in mask_taps:
        mask = got[t.name].cpu()
        if not mask.is_complex():
            raise ValueError(f"{t.name}: the mask is not a Fourier mask (transform ablation); nothing to show")
        xin = got[t.name + "_in"].float().cpu()
        H, W = xin.shape[-2:]
        kernel = fl.equivalent_kernel(mask, width=W)
        err = None
        if t.name + "_out" in got:
            k = min(check_channels, xin.shape[1])
            conv = fl.circular_conv2d(xin[:1, :k], kernel[:1, :k].expand(1, k, H, W) if mask.shape[1] > 1
                                      else kernel[:1, :1])
            ref = got[t.name + "_out"].float().cpu()[:1, :k]
            err = float((conv - ref).abs().max())
        out.append({"name": t.name.rsplit(".", 1)[0], "stage": t.stage, "index": t.index, "mask": mask,
                    "kernel": kernel, "grid": (H, W), "equivalence_max_abs_error": err})
    return out


def spf_masks(model) -> list[dict]:
    """SPANet SPF masks, one per (stage, lambda) (every block of a stage uses the same)."""
    if not hasattr(model, "spf_modules"):
        raise ValueError("this model has no spectral pooling filters")
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


# ---------------------------------------------------------------------------- figures


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def plot_filter_grid(layers: list[FilterLayer], amps: list[torch.Tensor], columns: int, png: Path, *, title: str,
                     cmap: str = "viridis", col_label: str = "filter") -> None:
    """Rows = layers (grouped by stage), columns = the first ``columns`` filters; one
    colour scale per stage."""
    plt = _plt()
    rows = len(layers)
    cols = min(columns, max(a.shape[0] for a in amps))
    stage_lim = {}
    for layer, a in zip(layers, amps):
        lo, hi = stage_lim.get(layer.stage, (float("inf"), -float("inf")))
        a = a[:cols]
        stage_lim[layer.stage] = (min(lo, float(a.min())), max(hi, float(a.max())))
    cell = 1.0 if cols <= 8 else 0.55
    fig, axes = plt.subplots(rows, cols + 1, figsize=(cell * cols + 1.6, cell * rows + 0.9), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * cols + [0.12]})
    last_of_stage = {layer.stage: i for i, layer in enumerate(layers)}
    for i, (layer, a) in enumerate(zip(layers, amps)):
        lo, hi = stage_lim[layer.stage]
        im = None
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < a.shape[0]:
                im = ax.imshow(a[j].numpy(), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0:
                ax.set_title(f"{col_label} {j}", fontsize=7)
        axes[i, 0].set_ylabel(layer.name, fontsize=7, rotation=0, ha="right", va="center")
        cax = axes[i, cols]
        if last_of_stage[layer.stage] == i and im is not None:
            fig.colorbar(im, cax=cax)
            cax.tick_params(labelsize=6)
        else:
            cax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _plot_rows(rows: list[list[np.ndarray]], row_labels, col_labels, png: Path, title: str, cmaps, shared=None):
    plt = _plt()
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(1.5 * nc + 0.8, 1.5 * nr + 0.8), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(nc):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r):
                ax.axis("off")
                continue
            kw = {}
            if shared is not None and shared[j] is not None:
                kw = dict(vmin=shared[j][0], vmax=shared[j][1])
            ax.imshow(r[j], cmap=cmaps[j % len(cmaps)], interpolation="nearest", **kw)
            if i == 0:
                ax.set_title(col_labels[j], fontsize=7)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_routing(stats: dict, png: Path, title: str) -> None:
    plt = _plt()
    names = list(stats)
    share = np.stack([stats[n]["argmax_share"].numpy() for n in names])
    fig, ax = plt.subplots(figsize=(1.2 * share.shape[1] + 2.5, 0.32 * len(names) + 1.4))
    im = ax.imshow(share, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xticks(range(share.shape[1]), [f"basis {f}" for f in range(share.shape[1])], fontsize=7)
    for i in range(share.shape[0]):
        for j in range(share.shape[1]):
            ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if share[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of (image, channel) pairs with this top basis")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- runner


def _family(model) -> str:
    card = getattr(model, "card", None)
    return card.family if card is not None else type(model).__name__.lower()


def _weights_note(checkpoint) -> str:
    return "" if checkpoint else "\n(random weights: no checkpoint given)"


def _summary(a: torch.Tensor) -> dict:
    kinds: dict[str, int] = {}
    for k in range(a.shape[0]):
        kind = fl.filter_kind(a[k])
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"amplitude_min": float(a.min()), "amplitude_max": float(a.max()), "amplitude_mean": float(a.mean()),
            "kinds": kinds}


def run_filters(model_name: str, *, checkpoint=None, img_size=None, device="cpu", overrides=None, layers=None,
                images=None, data=None, num_images=None, batch_size=16, routing=False, effective=0,
                channels=None, output: Path, overwrite=False, cmap=None) -> dict:
    """Build the model, extract its filters and write figures + ``filters.npz`` +
    ``results.json`` into ``output`` (staged: nothing is left behind on error)."""
    from spectrascope.io.images import paths_digest, resolve_image_paths
    from spectrascope.zoo.build import build_for_inference
    from spectrascope.zoo.checkpoint import file_sha256
    from spectrascope.io.results import Stopwatch, provenance, staged_output, write_json
    clock = Stopwatch()
    model, cfg = build_for_inference(model_name, checkpoint=checkpoint, img_size=img_size, device=device,
                                     **(overrides or {}))
    family = _family(model)
    banks = collect_filters(model)
    has_aff = any(t.role == "aff_mask" for t in (model.taps() if hasattr(model, "taps") else []))
    has_spf = hasattr(model, "spf_modules") and bool(model.spf_modules())
    if not banks and not has_aff and not has_spf:
        raise ValueError(f"{model_name} has no frequency filters to show (no complex filter parameters, "
                         "AFF masks or SPF masks)")
    needs_images = has_aff or routing or effective
    paths = resolve_image_paths(images, data, num_images) if needs_images else []
    note = _weights_note(checkpoint)
    summary: dict = {"model": model_name, "family": family, "input_size": list(cfg["size"]), "figures": [],
                     "layers": []}
    arrays: dict[str, np.ndarray] = {}
    output = Path(output)
    with staged_output(output, overwrite, command="filters") as out:
        if banks:
            banks = select_layers(banks, layers)
            amps = [fl.filter_amplitude(b.filters, width=b.width) for b in banks]
            dynamic = [i for i, b in enumerate(banks) if b.kind == "dynamic-basis"]
            static = [i for i, b in enumerate(banks) if b.kind != "dynamic-basis"]
            for b, a in zip(banks, amps):
                arrays[f"amplitude/{b.name}"] = a.numpy().astype(np.float32)
                summary["layers"].append({"name": b.name, "parameter": b.path, "kind": b.kind, "stage": b.stage,
                                          "filters": int(a.shape[0]), "grid": list(b.grid), **_summary(a)})
            if dynamic:
                n = max(amps[i].shape[0] for i in dynamic)
                png = out / "basis_filters.png"
                plot_filter_grid([banks[i] for i in dynamic], [amps[i] for i in dynamic], n, png,
                                 title=f"{model_name}: dynamic filter bases |W| (DC centred, one scale per stage)"
                                       + note, cmap=cmap or "viridis", col_label="basis")
                summary["figures"].append(png.name)
            if static:
                cols = channels[-1] + 1 if channels else 24
                png = out / "global_filters.png"
                sel = [amps[i][list(channels)] if channels else amps[i] for i in static]
                plot_filter_grid([banks[i] for i in static], sel, cols if not channels else len(channels), png,
                                 title=f"{model_name}: global filters |W| (DC centred, one scale per stage)" + note,
                                 cmap=cmap or "YlGnBu", col_label="ch")
                summary["figures"].append(png.name)
            if (routing or effective) and dynamic:
                stats = routing_statistics(model, _batches(model, cfg, paths, batch_size, device),
                                           want_effective=effective, channels=tuple(channels or (0, 1, 2, 3)))
                if layers:
                    names = {banks[i].name for i in dynamic}
                    stats = {k: v for k, v in stats.items() if k in names}
                summary["routing"] = {k: {"argmax_share": v["argmax_share"].tolist(),
                                          "mean_entropy_nats": float(v["entropy"].mean()),
                                          "images": v["images"]} for k, v in stats.items()}
                for k, v in stats.items():
                    arrays[f"routing_mean/{k}"] = v["mean"].numpy()
                    if "effective" in v:
                        arrays[f"effective_amplitude/{k}"] = v["effective"].numpy()
                if routing:
                    png = out / "routing.png"
                    plot_routing(stats, png, f"{model_name}: which basis the channels use over {len(paths)} "
                                             f"images{note}")
                    summary["figures"].append(png.name)
                if effective:
                    names = [k for k in stats if "effective" in stats[k]]
                    chs = list(channels or (0, 1, 2, 3))
                    for img_i in range(min(effective, len(paths))):
                        rows = [[stats[k]["effective"][img_i, c].numpy() for c in range(len(chs))] for k in names]
                        png = out / f"effective_{img_i:02d}_{Path(paths[img_i]).stem}.png"
                        _plot_rows(rows, names, [f"ch {c}" for c in chs], png,
                                   f"{model_name}: effective filters of {Path(paths[img_i]).name}{note}", [cmap or "viridis"])
                        summary["figures"].append(png.name)
        if has_aff:
            from spectrascope.io.images import load_batch
            x = load_batch(paths[: max(1, min(len(paths), 4))], cfg["size"], cfg["crop_pct"], cfg["mean"],
                           cfg["std"]).to(device)
            res = aff_masks(model, x)
            if layers:
                res = [r for r in res if any(fnmatch.fnmatch(r["name"], t.strip()) or
                                             (t.strip().isdigit() and r["stage"] == int(t)) for t in layers.split(","))]
            summary["aff"] = []
            for img_i in range(x.shape[0]):
                rows, labels = [], []
                for r in res:
                    amp = fl.filter_amplitude(r["mask"][img_i], width=r["grid"][1])
                    ker = fl.centered_kernel(r["kernel"][img_i])
                    rows.append([amp.mean(0).numpy(), ker.mean(0).numpy()] + [ker[c].numpy() for c in range(3)])
                    labels.append(r["name"])
                png = out / f"aff_masks_{img_i:02d}_{Path(paths[img_i]).stem}.png"
                _plot_rows(rows, labels, ["|M| mean (DC centred)", "kernel mean", "kernel ch0", "kernel ch1",
                                          "kernel ch2"], png,
                           f"{model_name}: adaptive masks and equivalent kernels, {Path(paths[img_i]).name}{note}",
                           ["viridis", "gray", "gray", "gray", "gray"])
                summary["figures"].append(png.name)
            for r in res:
                arrays[f"aff_mask/{r['name']}"] = r["mask"].numpy()
                arrays[f"aff_kernel/{r['name']}"] = r["kernel"].numpy()
                summary["aff"].append({"name": r["name"], "stage": r["stage"], "grid": list(r["grid"]),
                                       "mask_shape": list(r["mask"].shape),
                                       "equivalence_max_abs_error": r["equivalence_max_abs_error"]})
        if has_spf:
            res = spf_masks(model)
            lams = sorted({round(r["lambda"], 6) for r in res})
            stages = sorted({r["stage"] for r in res})
            by = {(r["stage"], round(r["lambda"], 6)): r for r in res}
            rows = [[by[(s, lam)]["mask"].numpy() for lam in lams if (s, lam) in by] for s in stages]
            png = out / "spf_masks.png"
            _plot_rows(rows, [f"stage {s} (r={by[(s, lams[0])]['radius']})" for s in stages],
                       [f"lambda {lam:.1f}" for lam in lams], png,
                       f"{model_name}: SPF masks (DC centred)", ["viridis"], shared=[(0, 1)] * len(lams))
            summary["figures"].append(png.name)
            rows = [[by[(s, lam)]["kernel"].numpy() for lam in lams if (s, lam) in by] for s in stages]
            png = out / "spf_kernels.png"
            _plot_rows(rows, [f"stage {s}" for s in stages], [f"lambda {lam:.1f}" for lam in lams], png,
                       f"{model_name}: SPF equivalent spatial kernels (centred)", ["gray"])
            summary["figures"].append(png.name)
            summary["spf"] = [{"stage": r["stage"], "lambda": r["lambda"], "radius": r["radius"],
                               "grid": list(r["mask"].shape), "values": sorted({round(float(v), 6)
                                                                                for v in r["mask"].unique()})}
                              for r in res]
            for r in res:
                arrays[f"spf_mask/stage{r['stage']}_lambda{r['lambda']:.1f}"] = r["mask"].numpy()
        np.savez_compressed(out / "filters.npz", **arrays)
        prov = provenance(command="filters", model=model_name, random_weights=checkpoint is None,
                          images_sha256=paths_digest(paths) if paths else None, device=device,
                          wall_time_s=clock.elapsed,
                          checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None)
        write_json(out / "results.json", {"provenance": prov, **summary})
    return summary
