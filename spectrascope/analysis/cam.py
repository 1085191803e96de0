"""``spectrascope cam`` and ``spectrascope context``: CAM maps (Score-CAM, Grad-CAM,
Grad-CAM++) of one or several models on the same images (SPANet Fig. S2), and SPANet's
SPG / aggregated context maps (SPANet Fig. 4 / S1). Both write per-image overlays (PNG), a
grid figure, the raw maps (``maps.npz``) and ``results.json``."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from spectrascope.ops.cam import compute_cam, localisation_scores, normalize_maps, resize_maps, resolve_target_layer

log = logging.getLogger("spectrascope.ops.cam")

__all__ = ["overlay", "denormalize", "load_images", "run_cam", "run_context", "context_maps", "ImageSet"]


def overlay(rgb: np.ndarray, cam: np.ndarray, image_weight: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Heat map over an image (pytorch-grad-cam's ``show_cam_on_image``): ``(1-w)·heat + w·rgb``
    divided by its maximum; rgb (H, W, 3) in [0, 1], cam (H, W) in [0, 1] -> uint8."""
    import matplotlib
    heat = matplotlib.colormaps[cmap](np.clip(cam, 0, 1))[..., :3]
    out = (1 - image_weight) * heat + image_weight * rgb
    out = out / max(float(out.max()), 1e-8)
    return (out * 255).round().astype(np.uint8)


def denormalize(x: torch.Tensor, mean, std) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) float in [0, 1]."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x.cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


@dataclass
class ImageSet:
    """Images for one model: normalised batch, names, boxes (synthetic data) and labels."""

    x: torch.Tensor
    names: list[str]
    boxes: list | None = None
    labels: list[int] | None = None
    digest: str | None = None


def load_images(cfg: dict, images=None, data=None, num_images=None) -> ImageSet:
    """Photos (``--images`` / ``--data samples|imagefolder:PATH``) with the model's eval
    transform, or the ``synthetic`` data set's validation images with their boxes."""
    if data and data.split(":", 1)[0] == "synthetic":
        from spectrascope.io.datasets import load_data, to_float, _normalize
        bundle = load_data(data, img_size=tuple(cfg["size"]))
        val = bundle.val
        n = min(num_images or 8, len(val))
        xs, boxes, labels, names = [], [], [], []
        for i in range(n):
            img, label, extra = val.load(i)
            xs.append(_normalize(to_float(img), cfg["mean"], cfg["std"]))
            boxes.append([tuple(int(v) for v in extra[0].tolist())])
            labels.append(int(label))
            names.append(f"synthetic_{i:03d}")
        return ImageSet(torch.stack(xs), names, boxes, labels, digest=f"synthetic:{data}")
    from spectrascope.io.images import load_batch, paths_digest, resolve_image_paths
    paths = resolve_image_paths(images, data, num_images)
    x = load_batch(paths, cfg["size"], cfg["crop_pct"], cfg["mean"], cfg["std"])
    return ImageSet(x, [Path(p).stem for p in paths], digest=paths_digest(paths))


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def plot_grid(rows: list[list[np.ndarray]], row_labels, col_labels, png: Path, title: str) -> None:
    plt = _plt()
    nr, nc = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nr, nc, figsize=(2.0 * nc + 0.6, 2.0 * nr + 0.7), squeeze=False)
    for i, r in enumerate(rows):
        for j in range(nc):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(r):
                ax.imshow(r[j])
            else:
                ax.axis("off")
            if i == 0:
                ax.set_title(col_labels[j], fontsize=8)
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(arr).save(path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _build(name, checkpoint, img_size, device, overrides):
    from spectrascope.zoo.build import build_for_inference
    return build_for_inference(name, checkpoint=checkpoint, img_size=img_size, device=device, **(overrides or {}))


def run_cam(models: Sequence[tuple[str, str | None]], *, method="scorecam", flavour="gradcam-lib",
            target_layer=None, target_class=None, images=None, data=None, num_images=None, img_size=None,
            device="cpu", overrides=None, batch_size=32, score=None, output: Path, overwrite=False,
            progress=False, mask_batch_size: int | None = None) -> dict:
    """CAM maps of every model on the same images. ``models``: (name, checkpoint or None).
    ``batch_size``: images per pass; ``mask_batch_size``: masked inputs per Score-CAM forward
    (None: ``score_cam``'s automatic choice)."""
    from spectrascope.zoo.checkpoint import file_sha256
    from spectrascope.io.results import Stopwatch, provenance, staged_output, write_json
    clock = Stopwatch()
    if not models:
        raise ValueError("give at least one --model")
    per_model, maps_npz, grid_cols = [], {}, {"input": {}}
    first: ImageSet | None = None
    built = []
    for name, ck in models:                           # build and check everything before any output
        model, cfg = _build(name, ck, img_size, device, overrides)
        tl = resolve_target_layer(model, target_layer)
        built.append((name, ck, model, cfg, tl))
    with staged_output(Path(output), overwrite, command="cam") as out:
        for name, ck, model, cfg, tl in built:
            imgs = load_images(cfg, images, data, num_images)
            if first is None:
                first = imgs
            classes = target_class
            if classes is None and imgs.labels is not None:
                classes = imgs.labels
            t0 = Stopwatch()
            with torch.no_grad():
                logits = model(imgs.x.to(device)).float()
            probs = logits.softmax(-1).cpu()
            if classes is not None and isinstance(classes, int) and not 0 <= classes < logits.shape[1]:
                raise ValueError(f"--class {classes} is outside {name}'s {logits.shape[1]} classes")
            kw = {"output_size": "input"}
            if method == "scorecam":
                kw.update(flavour=flavour, batch_size=mask_batch_size, score=score, progress=progress)
            cams = []
            for i in range(0, imgs.x.shape[0], max(1, batch_size if method != "scorecam" else 8)):
                xb = imgs.x[i:i + (batch_size if method != "scorecam" else 8)]
                cb = classes if (classes is None or isinstance(classes, int)) else classes[i:i + xb.shape[0]]
                cams.append(compute_cam(model, xb, method, tl, cb, **kw))
            cam = torch.cat(cams)
            used = (torch.as_tensor(classes).expand(cam.shape[0]) if classes is not None
                    else logits.argmax(1).cpu()).tolist()
            label = name + ("" if ck else " (random)")
            mdir = out / "overlays" / _safe(name)
            mdir.mkdir(parents=True, exist_ok=True)
            for j, img_name in enumerate(imgs.names):
                rgb = denormalize(imgs.x[j], cfg["mean"], cfg["std"])
                ov = overlay(rgb, cam[j].numpy())
                _save_png(mdir / f"{_safe(img_name)}.png", ov)
                grid_cols.setdefault(label, {})[img_name] = ov
                grid_cols.setdefault("input", {}).setdefault(img_name, (rgb * 255).round().astype(np.uint8))
                maps_npz[f"{_safe(name)}/{_safe(img_name)}"] = cam[j].numpy().astype(np.float32)
            entry = {"model": name, "checkpoint": ck, "checkpoint_sha256": file_sha256(ck) if ck else None,
                     "random_weights": ck is None, "input_size": list(cfg["size"]), "target_layer": tl.path,
                     "target_layout": tl.layout, "method": method, "flavour": flavour if method == "scorecam" else None,
                     "classes": used, "class_probability": [float(probs[j, c]) for j, c in enumerate(used)],
                     "top1": logits.argmax(1).cpu().tolist(), "seconds": t0.elapsed}
            if imgs.boxes is not None:
                entry["localisation"] = localisation_scores(cam, imgs.boxes)
            per_model.append(entry)
        names = first.names
        col_labels = list(grid_cols)
        rows = [[grid_cols[c][n] for c in col_labels if n in grid_cols[c]] for n in names]
        title = {"scorecam": f"Score-CAM ({flavour})", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}[method]
        if any(ck is None for _, ck in models):
            title += "\n(random weights where marked: no checkpoint given)"
        plot_grid(rows, names, col_labels, out / "grid.png", title)
        np.savez_compressed(out / "maps.npz", **maps_npz)
        prov = provenance(command="cam", model=",".join(n for n, _ in models),
                          random_weights=any(ck is None for _, ck in models), images_sha256=first.digest,
                          device=device, wall_time_s=clock.elapsed)
        payload = {"provenance": prov, "method": method, "images": names, "models": per_model,
                   "boxes": first.boxes, "figures": ["grid.png"] + [f"overlays/{_safe(n)}/" for n, _ in models]}
        write_json(out / "results.json", payload)
    return payload


# ---------------------------------------------------------------------------- context maps


def _block_prefix(taps, block: str | None) -> str:
    ctx = [t for t in taps if t.role == "context"]
    if not ctx:
        raise ValueError("this model has no SPAM context taps (SPANet models only)")
    prefixes = [t.name.rsplit(".", 1)[0] for t in ctx]
    if block in (None, "", "last"):
        return prefixes[-1]
    if block in prefixes:
        return block
    if block.isdigit():                                  # stage number -> its last block
        cands = [p for p, t in zip(prefixes, ctx) if t.stage == int(block)]
        if cands:
            return cands[-1]
    raise ValueError(f"--block {block!r} is not a SPAM block; choose one of {', '.join(prefixes[-4:])} ... "
                     "(s<stage>.b<index>, a stage number or 'last')")


def context_maps(model, x: torch.Tensor, block: str | None = None) -> dict:
    """Channel-mean SPG outputs and aggregated context of one SPAM block, resized to the
    input and min-max normalised per image: name -> (B, H, W)."""
    from spectrascope.probe import Probe, model_taps
    taps = model_taps(model)
    prefix = _block_prefix(taps, block)
    sel = [t for t in taps if t.name.rsplit(".", 1)[0] == prefix and t.role in ("spg", "context")]
    with Probe(model, sel, nchw=True) as probe, torch.inference_mode():
        model(x)
        got = probe.pop()
    out = {"block": prefix, "maps": {}, "notes": {}}
    for t in sel:
        m = got[t.name].float().mean(dim=1).cpu()
        out["maps"][t.name.rsplit(".", 1)[1]] = normalize_maps(resize_maps(m, x.shape[-2:]), 1e-7)
        out["notes"][t.name.rsplit(".", 1)[1]] = t.note
    return out


def run_context(model_name: str, *, checkpoint=None, block=None, images=None, data=None, num_images=None,
                img_size=None, device="cpu", overrides=None, output: Path, overwrite=False) -> dict:
    from spectrascope.zoo.checkpoint import file_sha256
    from spectrascope.io.results import Stopwatch, provenance, staged_output, write_json
    clock = Stopwatch()
    model, cfg = _build(model_name, checkpoint, img_size, device, overrides)
    from spectrascope.probe import model_taps
    prefix = _block_prefix(model_taps(model), block)
    lambdas = getattr(model.get_submodule(_mixer_path(model, prefix)), "lambdas", None)
    imgs = load_images(cfg, images, data, num_images)
    with staged_output(Path(output), overwrite, command="context") as out:
        res = context_maps(model, imgs.x.to(device), prefix)
        keys = list(res["maps"])
        labels = []
        for k in keys:
            if k.startswith("spg") and lambdas is not None and int(k[3:]) < len(lambdas):
                labels.append(f"SPG lambda={lambdas[int(k[3:])]:.1f}")
            else:
                labels.append("context (sum)" if k == "context" else k)
        rows, npz = [], {}
        odir = out / "overlays"
        odir.mkdir()
        for j, img_name in enumerate(imgs.names):
            rgb = denormalize(imgs.x[j], cfg["mean"], cfg["std"])
            row = [(rgb * 255).round().astype(np.uint8)]
            for k in keys:
                ov = overlay(rgb, res["maps"][k][j].numpy())
                _save_png(odir / f"{_safe(img_name)}_{k}.png", ov)
                row.append(ov)
                npz[f"{_safe(img_name)}/{k}"] = res["maps"][k][j].numpy().astype(np.float32)
            rows.append(row)
        title = f"{model_name}: SPG maps and aggregated context at {prefix}"
        if checkpoint is None:
            title += "\n(random weights: no checkpoint given)"
        plot_grid(rows, imgs.names, ["input"] + labels, out / "grid.png", title)
        np.savez_compressed(out / "maps.npz", **npz)
        prov = provenance(command="context", model=model_name, random_weights=checkpoint is None,
                          checkpoint_sha256=file_sha256(checkpoint) if checkpoint else None,
                          images_sha256=imgs.digest, device=device, wall_time_s=clock.elapsed)
        payload = {"provenance": prov, "block": prefix, "maps": dict(zip(keys, labels)), "images": imgs.names,
                   "notes": res["notes"], "aggregation": "channel mean, bilinear resize to the input, min-max",
                   "figures": ["grid.png", "overlays/"]}
        write_json(out / "results.json", payload)
    return payload


def _mixer_path(model, prefix: str) -> str:
    from spectrascope.probe import model_taps
    for t in model_taps(model):
        if t.name == f"{prefix}.context":
            return t.path.rsplit(".", 1)[0]
    return ""
