"""Figures of the CAM and context commands: heat-map overlays (pytorch-grad-cam's
``show_cam_on_image``), de-normalised input images, the wrapped image-by-model grid (SPANet
Fig. S2 / Fig. 4) as PNG and PDF, and atomic PNG writing."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
import torch

from spectrascope.report.style import footnote, new_figure, paper_name, save_figure

__all__ = ["overlay", "denormalize", "to_uint8", "plot_grid", "save_png", "safe_name", "cam_title", "draw_cam",
           "draw_context", "upscale", "OVERLAY_MIN_SIDE", "GRID_PANELS", "GRID_IMAGES"]


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


#: overlays are written at least this many pixels on their shorter side (whole-factor nearest repeats)
OVERLAY_MIN_SIDE = 256
#: panels in one row of a grid before it wraps (a column figure: half as many)
GRID_PANELS = 8
#: the most images a grid shows (the first ones; every image keeps its own overlay files): a grid of
#: 64 images is unreadable on a page and takes minutes to lay out
GRID_IMAGES = 16


def upscale(arr: np.ndarray, min_side: int = OVERLAY_MIN_SIDE) -> np.ndarray:
    """An (H, W[, C]) image repeated by the smallest whole factor that makes its shorter side at
    least ``min_side`` (nearest neighbour: every map pixel stays a square block of pixels)."""
    k = max(1, -(-min_side // max(1, min(arr.shape[0], arr.shape[1]))))
    return np.repeat(np.repeat(arr, k, axis=0), k, axis=1) if k > 1 else arr


def _draw_boxes(ax, boxes) -> None:
    from matplotlib.patches import Rectangle
    for x0, y0, x1, y1 in boxes or ():
        # pixel (r, c) covers [c - 0.5, c + 0.5]: the half-open box [x0, x1) spans x0 - 0.5 .. x1 - 0.5
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.0, ec="white"))
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.0, ec="black", ls=(0, (2, 2))))


def plot_grid(rows: list[list[np.ndarray]], row_labels, col_labels, directory: Path, title: str,
              stem: str = "grid", *, formats=("png", "pdf"), notes=None, boxes=None, ncols: int | None = None,
              footer: str | None = None) -> Path:
    """Images and their maps, wrapped: one cell per image (its input, then one panel per map column),
    ``ncols`` cells per row (default: the active ``--ncols``, else as many as fit in ``GRID_PANELS``
    panels; half in a column figure). Square pixels; the image's name heads its input panel, the map
    column's name heads each map and ``notes[i][j]`` (e.g. class and probability) is written under it; ``boxes[i]``
    (x0, y0, x1, y1 in input pixels, half-open) are outlined on every panel of image ``i``; ``footer`` is
    written under the grid. Writes ``directory/stem`` in ``formats``; returns the first file."""
    from spectrascope.report.style import COLUMN_WIDTH, active_style, wrap_columns
    per = max(len(r) for r in rows)
    budget = GRID_PANELS // 2 if active_style().width == COLUMN_WIDTH else GRID_PANELS
    cells = wrap_columns(len(rows), ncols=ncols, default=max(1, budget // per))
    lines = 1 + max((len(str(n).splitlines()) for r in (notes or []) for n in r if n), default=0) \
        + max((len(str(c).splitlines()) for c in col_labels[1:] if c), default=0)
    nrow = -(-len(rows) // cells)
    ratios = []
    for c in range(cells):
        ratios += [1.0] * per + ([0.12] if c < cells - 1 else [])
    fig = new_figure(sum(ratios) * 1.1 + 0.2, nrow * (1.1 + 0.16 * lines) + 0.5, layout="compressed")
    grid = fig.add_gridspec(nrow, len(ratios), width_ratios=ratios, wspace=0.05)
    fig.spectrascope_panels = []
    for i, r in enumerate(rows):
        g, c = divmod(i, cells)
        for j in range(per):
            ax = fig.add_subplot(grid[g, c * (per + 1) + j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(r):
                ax.axis("off")
                continue
            ax.imshow(r[j], aspect="equal", interpolation="nearest")
            _draw_boxes(ax, boxes[i] if boxes else None)
            head = str(row_labels[i]) if j == 0 else str(col_labels[j])
            note = notes[i][j] if notes and j < len(notes[i]) and notes[i][j] else ""
            if head:            # alone over its cell when the maps have no heading of their own
                ax.set_title(head, fontsize=7, loc="left" if j == 0 and not any(col_labels[1:]) else "center")
            if note:
                ax.set_xlabel(note, fontsize=7, labelpad=2)
            fig.spectrascope_panels.append(ax)
    fig.suptitle(title)
    if footer:
        footnote(fig, footer)
    return save_figure(fig, directory, stem, formats=formats, dpi=300)[0]


def cam_title(method: str, flavour: str, random_weights: bool) -> str:
    title = {"scorecam": f"Score-CAM ({flavour})", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}[method]
    if random_weights:
        title += "\n(random weights where marked: no checkpoint given)"
    return title


def _model_label(entry: dict) -> str:
    return paper_name(entry["model"]) + ("" if entry.get("checkpoint") else " (random)")


def _cam_notes(entry: dict, i: int) -> str:
    """Class and probability of image ``i``'s map (the class the map explains)."""
    classes, probs = entry.get("classes") or [], entry.get("class_probability") or []
    if i >= len(classes):
        return ""
    text = f"class {classes[i]}"
    return text + (f"\np={probs[i]:.2g}" if i < len(probs) and probs[i] is not None else "")


def _same_inputs(result) -> bool:
    sizes = {tuple(e.get("input_size") or ()) for e in result.models}
    return len(sizes) <= 1


def draw_cam(result, folder, style) -> list[str]:
    """The overlays (``overlays/<model>/<image>.png``, at least ``OVERLAY_MIN_SIDE`` px) and the grid
    of a ``cam`` result (``grid.png``/``.pdf``: each image with one overlay per model, its class and
    probability, the ground-truth boxes when the data has them; wrapped at ``--ncols`` images per row),
    from its maps and input images alone."""
    folder = Path(folder)
    keys = [e.get("key", e["model"]) for e in result.models]
    cols: dict[str, dict] = {"input": {}}
    notes: dict[str, list] = {}
    files = []
    for entry, key in zip(result.models, keys):
        mdir = folder / "overlays" / safe_name(key)
        mdir.mkdir(parents=True, exist_ok=True)
        label = _model_label(entry) if key == entry["model"] else key + ("" if entry.get("checkpoint") else " (random)")
        for i, image in enumerate(result.images):
            rgb = np.asarray(result.inputs[f"{key}/{image}"])
            ov = overlay(rgb.astype(np.float32) / 255.0, np.asarray(result.maps[f"{key}/{image}"]))
            save_png(mdir / f"{safe_name(image)}.png", upscale(ov))
            files.append(f"overlays/{safe_name(key)}/{safe_name(image)}.png")
            cols.setdefault(label, {})[image] = ov
            notes.setdefault(label, []).append(_cam_notes(entry, i))
            cols["input"].setdefault(image, rgb)
    names = list(cols)
    shown = list(result.images[:GRID_IMAGES])
    rows = [[cols[c][n] for c in names if n in cols[c]] for n in shown]
    cell_notes = [[""] + [notes[c][i] for c in names[1:]] for i in range(len(shown))]
    footer = (f"the first {len(shown)} of {len(result.images)} images; every image's overlay is in overlays/"
              if len(shown) < len(result.images) else None)
    title = cam_title(result.method, (result.models[0].get("flavour") or "gradcam-lib") if result.models else "",
                      any(not e.get("checkpoint") for e in result.models))
    targets = list(dict.fromkeys(e.get("target_tap") or e.get("target_layer") for e in result.models
                                 if e.get("target_tap") or e.get("target_layer")))    # the tap name: 1-based stages
    if len(targets) == 1:
        head, _, rest = title.partition("\n")
        title = f"{head} at {targets[0]}" + (f"\n{rest}" if rest else "")
    if len(result.models) == 1:
        title = f"{names[1]}: {title}" if len(names) > 1 else title
        names = ["input", ""]
    boxes = result.boxes[:len(shown)] if result.boxes and _same_inputs(result) else None
    out = plot_grid(rows, shown, names, folder, title, formats=style.formats, notes=cell_notes, boxes=boxes,
                    footer=footer)
    return [f"grid.{f}" for f in style.formats] + files if out else files


def draw_context(result, folder, style) -> list[str]:
    """The overlays (``overlays/<image>_<map>.png``, at least ``OVERLAY_MIN_SIDE`` px) and the grid of
    a ``context`` result (PNG and PDF, wrapped at ``--ncols`` images per row)."""
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
            save_png(odir / f"{safe_name(image)}_{k}.png", upscale(ov))
            files.append(f"overlays/{safe_name(image)}_{k}.png")
            row.append(ov)
        rows.append(row)
    plot_grid(rows, result.images, ["input"] + [result.maps_shown[k] for k in keys], folder, result.title,
              formats=style.formats)
    return [f"grid.{f}" for f in style.formats] + files
