"""The maths of class activation maps on plain tensors: Score-CAM masks and the per-flavour
combination, Grad-CAM / Grad-CAM++ channel weights, the weighted combination, min-max
normalisation, bilinear resizing, target classes and class scores, the automatic
masked-input batch, and the localisation scores (pointing game, energy in a box).

No hooks, no I/O, no models: ``spectrascope.engine.cam`` captures the activations (and
gradients) through ``probe.Probe``, runs the forwards through ``engine.runner.Runner`` and
calls these functions.

Score-CAM flavours (as each implementation computes them):

``gradcam-lib`` (default, pytorch-grad-cam 1.5.x, used for the SPANet figures)
    masks = bilinear ``align_corners=True`` upsampling of each channel, min-max (+1e-8);
    score = raw logit (``score="softmax"``: class probability); weights = softmax over
    channels; map = ReLU(sum w A) at layer resolution, min-max (1e-7), bilinear resize,
    ReLU, min-max.
``authors`` (haofanwang/Score-CAM)
    masks = bilinear ``align_corners=False`` upsampling then min-max; constant channels
    skipped; weight = class softmax probability (no channel softmax); map = ReLU(sum
    score * upsampled A) at input resolution, min-max.
``torchcam`` (torchcam 0.5)
    masks = min-max (+1e-8) at layer resolution then bilinear ``align_corners=False``;
    score = logit minus the unmasked logit; weights = softmax over channels; map =
    ReLU(sum w A) at layer resolution, min-max (1e-8). ``output_size="layer"`` keeps the
    layer resolution like torchcam; the default resizes bilinearly to the input.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from spectrascope.errors import CamError

__all__ = [
    "FLAVOURS", "METHODS", "SCORES", "AUTO_BATCH_CAP", "MAX_CPU_WORKERS", "CamError",
    "check_flavour", "flavour_score", "target_classes", "class_scores", "auto_batch_size", "cpu_workers",
    "normalize_maps", "resize_maps", "scorecam_masks", "scorecam_pairs", "scorecam_combine", "mean_of_layers",
    "weighted_cam", "gradcam_weights", "gradcam_pp_weights", "finish_map",
    "box_mask", "pointing_game", "energy_in_box", "localisation_scores",
]

FLAVOURS = ("gradcam-lib", "authors", "torchcam")
METHODS = ("scorecam", "gradcam", "gradcam++")
SCORES = ("logit", "softmax")
_DEFAULT_SCORE = {"gradcam-lib": "logit", "torchcam": "logit", "authors": "softmax"}

#: most masked inputs per forward chosen automatically. CPUs: 16 (dfformer_s18 on one thread, at 96
#: and 224 px, ran more images/s at 16 than at 8 and no more at 32-64, while peak memory grows
#: linearly); GPUs need more
AUTO_BATCH_CAP = {"cpu": 16, "other": 64}
#: most concurrent masked forwards on a CPU (each runs with ``threads // workers`` threads): beyond
#: this the interpreter lock between the forwards' many small operators costs more than it gains
MAX_CPU_WORKERS = 8


# ---------------------------------------------------------------------------- requests


def check_flavour(flavour: str) -> str:
    if flavour not in FLAVOURS:
        raise CamError(f"unknown Score-CAM flavour {flavour!r}; choose from {', '.join(FLAVOURS)}",
                       option="--flavour")
    return flavour


def flavour_score(flavour: str, score: str | None) -> str:
    """The class score a flavour uses (``logit`` or ``softmax``), ``score`` overriding it."""
    score = score or _DEFAULT_SCORE[check_flavour(flavour)]
    if score not in SCORES:
        raise CamError(f"score must be 'logit' or 'softmax', not {score!r}", option="--score")
    return score


def target_classes(classes, logits: torch.Tensor) -> torch.Tensor:
    """One class per image: None (top-1), an int, or a sequence of one class per image."""
    B, K = logits.shape
    if classes is None:
        return logits.argmax(dim=1)
    if isinstance(classes, int):
        c = torch.full((B,), classes, dtype=torch.long)
    else:
        c = torch.as_tensor(list(classes) if not isinstance(classes, torch.Tensor) else classes).long().flatten()
        if c.numel() == 1 and B > 1:
            c = c.expand(B).clone()
    if c.numel() != B:
        raise CamError(f"{c.numel()} target classes for {B} images", option="--class")
    if (c < 0).any() or (c >= K).any():
        raise CamError(f"target class {int(c[(c < 0) | (c >= K)][0])} is outside the model's {K} classes "
                       f"(0-{K - 1})", option="--class")
    return c.to(logits.device)


def class_scores(logits: torch.Tensor, cls: torch.Tensor, kind: str = "logit") -> torch.Tensor:
    """The score of class ``cls[i]`` in row i: the logit, or its softmax probability."""
    if kind == "softmax":
        logits = torch.softmax(logits.float(), dim=-1)
    return logits.gather(1, cls[:, None].to(logits.device)).squeeze(1).float()


def auto_batch_size(input_shape, budget_bytes: int, act_bytes_per_sample: int, device_type: str = "cpu",
                    workers: int = 1) -> int:
    """Masked inputs per forward whose estimated peak fits the budget.

    Args:
        input_shape: (C, H, W) of one image.
        budget_bytes: memory allowed for the masked forwards in flight, all workers together.
        act_bytes_per_sample: bytes of the largest activation of one sample.
        device_type: ``cpu`` or an accelerator's type (selects ``AUTO_BATCH_CAP``).
        workers: concurrent forwards sharing the budget.

    Returns:
        The batch: the estimated peak per sample (input copy, mask, three activation-sized
        buffers) times the batch times ``workers`` fits ``budget_bytes``; at least 1, at most
        ``AUTO_BATCH_CAP``."""
    c, h, w = input_shape
    per = 4 * (c * h * w * 2 + h * w) + 3 * act_bytes_per_sample
    cap = AUTO_BATCH_CAP["cpu" if device_type == "cpu" else "other"]
    return int(max(1, min(cap, budget_bytes // max(per * max(int(workers), 1), 1))))


def cpu_workers(threads: int, chunks: int, workers: int | None = None) -> tuple[int, int]:
    """How a CPU scores ``chunks`` independent masked batches with ``threads`` threads.

    The masked forwards are independent, so they run side by side, each on its own share of
    the threads (``threads // workers``; one each up to ``MAX_CPU_WORKERS``), rather than one at
    a time with every operator split over all threads: no barrier per operator, and no
    collapse when other processes hold some of the cores.

    Args:
        threads: the intra-op threads available (``torch.get_num_threads()``).
        chunks: the number of masked batches to score.
        workers: a fixed number of concurrent forwards (None: automatic; 1: one at a time).

    Returns:
        (workers, threads per worker); (1, threads) when there is nothing to run side by side."""
    threads = max(int(threads), 1)
    if workers is None:
        workers = min(threads, MAX_CPU_WORKERS)
    workers = max(1, min(int(workers), int(chunks), threads))
    if workers == 1:
        return 1, threads
    return workers, max(1, threads // workers)


# ---------------------------------------------------------------------------- maps


def normalize_maps(cam: torch.Tensor, eps: float = 1e-7, mode: str = "max") -> torch.Tensor:
    """Per-map min-max over the last two axes.

    ``mode="max"``: ``(x - min) / (max(x - min) + eps)`` (pytorch-grad-cam, torchcam);
    ``mode="range"``: ``(x - min) / (max - min)`` with constant maps -> 0 (the authors')."""
    flat = cam.flatten(-2)
    lo = flat.min(-1).values[..., None, None]
    x = cam - lo
    hi = x.flatten(-2).max(-1).values[..., None, None]
    if mode == "range":
        return torch.where(hi > 0, x / torch.where(hi > 0, hi, torch.ones_like(hi)), torch.zeros_like(x))
    return x / (hi + eps)


def resize_maps(maps: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of (..., h, w) maps to ``size`` (== cv2.resize INTER_LINEAR when upsampling)."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[-2:]) == size:
        return maps
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    return x.reshape(*lead, *size)


def weighted_cam(weights: torch.Tensor, acts: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """``ReLU(sum_k w[b, k] A[b, k])``: weights (B, C), activations (B, C, h, w) -> (B, h, w)."""
    cam = (weights[:, :, None, None].to(acts.dtype) * acts).sum(dim=1)
    return cam.clamp_min(0) if relu else cam


def finish_map(cam: torch.Tensor, size: Sequence[int] | None, eps: float = 1e-7) -> torch.Tensor:
    """A (B, h, w) map resized bilinearly to ``size`` (None: kept) and min-max normalised."""
    if size is not None:
        cam = resize_maps(cam, size)
    return normalize_maps(cam.float(), eps)


def mean_of_layers(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Several layers' maps combined as pytorch-grad-cam does: ReLU, mean, min-max."""
    if len(maps) == 1:
        return maps[0]
    return normalize_maps(torch.stack(list(maps)).clamp_min(0).mean(0), 1e-7)


# ---------------------------------------------------------------------------- Grad-CAM weights


def gradcam_weights(grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights: gradients averaged over space, (B, C, h, w) -> (B, C)."""
    return grads.mean(dim=(2, 3))


def gradcam_pp_weights(grads: torch.Tensor, acts: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Grad-CAM++ channel weights (Chattopadhyay et al. 2018, with the exponential-score
    closed form used by pytorch-grad-cam): ``alpha = g^2 / (2 g^2 + sum_ab A * g^3)``,
    ``w = sum_ab alpha * relu(g)``."""
    g2 = grads.pow(2)
    g3 = g2 * grads
    sum_a = acts.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + eps)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (alpha * grads.clamp_min(0)).sum(dim=(2, 3))


# ---------------------------------------------------------------------------- Score-CAM


def scorecam_masks(acts: torch.Tensor, size: Sequence[int], flavour: str = "gradcam-lib") -> torch.Tensor:
    """Score-CAM masks (N, H, W) in [0, 1] from activation maps (N, h, w) of one flavour."""
    if flavour == "gradcam-lib":
        up = resize_maps(acts, size, align_corners=True)
        flat = up.flatten(-2)
        lo = flat.min(-1).values[..., None, None]
        hi = flat.max(-1).values[..., None, None]
        return (up - lo) / (hi - lo + 1e-8)
    if flavour == "torchcam":
        return resize_maps(normalize_maps(acts, 1e-8), size, align_corners=False)
    if flavour == "authors":
        return normalize_maps(resize_maps(acts, size, align_corners=False), mode="range")
    raise CamError(f"unknown Score-CAM flavour {flavour!r}; choose from {', '.join(FLAVOURS)}", option="--flavour")


def scorecam_pairs(acts: torch.Tensor, size: Sequence[int], skip_constant: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The (image, channel) pairs to score, (N, 2) long, and the kept-channel mask (B, C).

    ``skip_constant`` (the authors' flavour) drops channels whose upsampled map is constant."""
    B, C = acts.shape[:2]
    keep = torch.ones(B, C, dtype=torch.bool)
    if skip_constant:
        for b in range(B):
            flat = resize_maps(acts[b], size, align_corners=False).flatten(-2)
            keep[b] = (flat.max(-1).values != flat.min(-1).values).cpu()
    return keep.nonzero(), keep


def scorecam_combine(flavour: str, scores: torch.Tensor, keep: torch.Tensor, acts: torch.Tensor,
                     base: torch.Tensor, size: Sequence[int], output_size: str = "input"):
    """A flavour's Score-CAM maps (B, H, W) and channel weights (B, C) from the masked inputs'
    class scores (B, C), the kept channels, the activations (B, C, h, w) and the unmasked
    inputs' class scores ``base`` (B,)."""
    acts = acts.cpu()
    if flavour == "gradcam-lib":
        w = torch.softmax(scores, dim=-1)
        cam = normalize_maps(weighted_cam(w, acts), 1e-7)
        cam = resize_maps(cam, size).clamp_min(0)
        return normalize_maps(cam, 1e-7), w
    if flavour == "torchcam":
        w = torch.softmax(scores - base.cpu()[:, None], dim=-1)
        cam = normalize_maps(weighted_cam(w, torch.nan_to_num(acts)), 1e-8)
        if output_size == "input":
            cam = resize_maps(cam, size)
        return cam, w
    if flavour != "authors":
        check_flavour(flavour)
    # authors: sum of score * raw upsampled activation at input resolution
    w = torch.where(keep, scores, torch.zeros_like(scores))
    cams = [(w[b][:, None, None] * resize_maps(acts[b], size, align_corners=False)).sum(0)
            for b in range(acts.shape[0])]
    return normalize_maps(torch.stack(cams).clamp_min(0), mode="range"), w


# ---------------------------------------------------------------------------- localisation


def box_mask(boxes, size: Sequence[int]) -> torch.Tensor:
    """Boolean (H, W) union of boxes ``(x0, y0, x1, y1)`` in pixels, half-open ``[x0, x1)``."""
    H, W = int(size[0]), int(size[1])
    m = torch.zeros(H, W, dtype=torch.bool)
    if isinstance(boxes, torch.Tensor) and boxes.dtype == torch.bool:
        return boxes
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    for x0, y0, x1, y1 in boxes.tolist():
        r0, r1 = max(0, math.floor(y0)), min(H, math.ceil(y1))
        c0, c1 = max(0, math.floor(x0)), min(W, math.ceil(x1))
        if r1 > r0 and c1 > c0:
            m[r0:r1, c0:c1] = True
    return m


def _masks_for(cam: torch.Tensor, boxes) -> torch.Tensor:
    B, H, W = cam.shape
    if isinstance(boxes, torch.Tensor) and boxes.dtype == torch.bool:
        if boxes.shape != cam.shape:
            raise CamError(f"box masks {tuple(boxes.shape)} do not match the maps {tuple(cam.shape)}")
        return boxes
    if len(boxes) != B:
        raise CamError(f"{len(boxes)} box lists for {B} maps")
    return torch.stack([box_mask(b, (H, W)) for b in boxes])


def pointing_game(cam: torch.Tensor, boxes, tolerance: int = 0) -> torch.Tensor:
    """Hit (bool per map) when the map's maximum lies inside a box, or within
    ``tolerance`` pixels of one (Zhang et al. use 15 px at 224)."""
    masks = _masks_for(cam, boxes)
    if tolerance > 0:
        k = 2 * tolerance + 1
        masks = F.max_pool2d(masks[:, None].float(), k, stride=1, padding=tolerance)[:, 0] > 0
    B, H, W = cam.shape
    idx = cam.reshape(B, -1).argmax(dim=1)
    return masks.reshape(B, -1)[torch.arange(B), idx]


def energy_in_box(cam: torch.Tensor, boxes) -> torch.Tensor:
    """Share of the map's energy inside the boxes, ``sum_box cam / sum cam`` (the
    energy-based pointing game of the Score-CAM paper); NaN for an all-zero map."""
    masks = _masks_for(cam, boxes)
    c = cam.float().clamp_min(0)
    tot = c.flatten(1).sum(1)
    inside = (c * masks).flatten(1).sum(1)
    return torch.where(tot > 0, inside / torch.where(tot > 0, tot, torch.ones_like(tot)),
                       torch.full_like(tot, float("nan")))


def localisation_scores(cam: torch.Tensor, boxes, tolerance: int = 0) -> dict:
    """Per-image and mean pointing-game hits and box energy. An all-zero map has no energy
    share: its ``energy_in_box`` is None (JSON null), named in ``undefined_energy``."""
    hits = pointing_game(cam, boxes, tolerance)
    energy = energy_in_box(cam, boxes)
    valid = ~torch.isnan(energy)
    return {"pointing_hits": hits.tolist(), "pointing_accuracy": float(hits.float().mean()),
            "energy_in_box": [float(e) if ok else None for e, ok in zip(energy.tolist(), valid.tolist())],
            "mean_energy_in_box": float(energy[valid].mean()) if valid.any() else None,
            "undefined_energy": [i for i, ok in enumerate(valid.tolist()) if not ok],
            "box_area_share": _masks_for(cam, boxes).float().flatten(1).mean(1).tolist()}
