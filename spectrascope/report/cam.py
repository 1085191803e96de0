"""Figures of the CAM and context commands: heat-map overlays (pytorch-grad-cam's
``show_cam_on_image``), de-normalised input images, the image-by-model grid (SPANet Fig. S2 /
Fig. 4) and atomic PNG writing."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import torch

from spectrascope.report.style import new_figure, save_figure

__all__ = ["overlay", "denormalize", "to_uint8", "plot_grid", "save_png", "safe_name", "cam_title", "draw_cam",
           "draw_context"]


def overlay(rgb: np.ndarray, cam: np.ndarray, image_weight: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Heat map over an image: ``(1-w)·heat + w·rgb`` divided by its maximum; rgb (H, W, 3) in
    [0, 1], cam (H, W) in [0, 1] -> uint8."""
    heat = matplotlib.colormaps[cmap](np.clip(cam, 0, 1))[..., :3]
    out = (1 - image_weight) * heat + image_weight * rgb
    out = out / max(float(out.max()), 1e-8)
    return (out * 255).round().astype(np.uint8)


def denormalize(x: torch.Tensor, mean, std) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) float in [0, 1]."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x.cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (rgb * 255).round().astype(np.uint8)


def safe_name(name: str) -> str:
    """A file-name-safe version of a model or image name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def save_png(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 image atomically (temp file + rename)."""
    from PIL import Image
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def plot_grid(rows: list[list[np.ndarray]], row_labels, col_labels, directory: Path, title: str,
              stem: str = "grid") -> Path:
    """One row per image, one column per map; writes ``directory/stem.png``."""
    nr, nc = len(rows), max(len(r) for r in rows)
    fig = new_figure(2.0 * nc + 0.6, 2.0 * nr + 0.7, layout="tight")
    axes = fig.subplots(nr, nc, squeeze=False)
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
    return save_figure(fig, directory, stem, formats=("png",), dpi=100)[0]


def cam_title(method: str, flavour: str, random_weights: bool) -> str:
    title = {"scorecam": f"Score-CAM ({flavour})", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}[method]
    if random_weights:
        title += "\n(random weights where marked: no checkpoint given)"
    return title


def _model_label(entry: dict) -> str:
    return entry["model"] + ("" if entry.get("checkpoint") else " (random)")


def draw_cam(result, folder, style) -> list[str]:
    """The overlays (``overlays/<model>/<image>.png``) and the image-by-model grid of a ``cam`` result,
    from its maps and input images alone."""
    folder = Path(folder)
    keys = [e.get("key", e["model"]) for e in result.models]
    cols: dict[str, dict] = {"input": {}}
    files = []
    for entry, key in zip(result.models, keys):
        mdir = folder / "overlays" / safe_name(key)
        mdir.mkdir(parents=True, exist_ok=True)
        label = _model_label(entry) if key == entry["model"] else key + ("" if entry.get("checkpoint") else " (random)")
        for image in result.images:
            rgb = np.asarray(result.inputs[f"{key}/{image}"])
            ov = overlay(rgb.astype(np.float32) / 255.0, np.asarray(result.maps[f"{key}/{image}"]))
            save_png(mdir / f"{safe_name(image)}.png", ov)
            files.append(f"overlays/{safe_name(key)}/{safe_name(image)}.png")
            cols.setdefault(label, {})[image] = ov
            cols["input"].setdefault(image, rgb)
    names = list(cols)
    rows = [[cols[c][n] for c in names if n in cols[c]] for n in result.images]
    title = cam_title(result.method, (result.models[0].get("flavour") or "gradcam-lib") if result.models else "",
                      any(not e.get("checkpoint") for e in result.models))
    plot_grid(rows, result.images, names, folder, title)
    return ["grid.png"] + files


def draw_context(result, folder, style) -> list[str]:
    """The overlays (``overlays/<image>_<map>.png``) and the grid of a ``context`` result."""
    folder = Path(folder)
    odir = folder / "overlays"
    odir.mkdir(parents=True, exist_ok=True)
    keys = list(result.maps_shown)
    rows, files = [], []
    for image in result.images:
        rgb = np.asarray(result.inputs[image])
        row = [rgb]
        for k in keys:
            ov = overlay(rgb.astype(np.float32) / 255.0, np.asarray(result.maps[f"{image}/{k}"]))
            save_png(odir / f"{safe_name(image)}_{k}.png", ov)
            files.append(f"overlays/{safe_name(image)}_{k}.png")
            row.append(ov)
        rows.append(row)
    plot_grid(rows, result.images, ["input"] + [result.maps_shown[k] for k in keys], folder, result.title)
    return ["grid.png"] + files
