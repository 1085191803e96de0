"""Class activation maps: Score-CAM (three published flavours), Grad-CAM / Grad-CAM++ and
localisation scores.

The weighting maths (``scorecam_*``, ``gradcam_weights``, ``gradcam_pp_weights``,
``weighted_cam``, ``normalize_maps``) works on plain tensors. ``score_cam`` and
``grad_cam`` run a model: one activation pass with a forward hook on the target layer
(removed before anything else runs), then, for Score-CAM, the masked inputs are built
and scored in chunks of ``batch_size`` (image, channel) pairs, so at most that many
masked inputs exist at any time.

Score-CAM flavours (analyses.md section 7):

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

import contextlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from spectrascope.errors import CamError

__all__ = [
    "FLAVOURS", "METHODS", "TargetLayer", "resolve_target_layer", "default_target_layer", "score_cam", "grad_cam",
    "compute_cam", "CamError",
    "scorecam_masks", "weighted_cam", "normalize_maps", "resize_maps", "gradcam_weights", "gradcam_pp_weights",
    "box_mask", "pointing_game", "energy_in_box", "localisation_scores",
]

FLAVOURS = ("gradcam-lib", "authors", "torchcam")
METHODS = ("scorecam", "gradcam", "gradcam++")



# ---------------------------------------------------------------------------- target layers


@dataclass
class TargetLayer:
    """A module whose output is the CAM's activation map, and how to read it as NCHW.

    ``layout``: ``NCHW``, ``NHWC``, ``NLC`` (tokens, row-major, after
    ``num_prefix_tokens`` class/register tokens) or ``auto`` (4-D = NCHW, 3-D = NLC)."""

    module: nn.Module
    path: str
    layout: str = "auto"
    num_prefix_tokens: int = 0
    grid: tuple[int, int] | None = None
    name: str = ""
    extra: dict = field(default_factory=dict)

    def to_nchw(self, x: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        if layout == "auto":
            layout = "NCHW" if x.ndim == 4 else ("NLC" if x.ndim == 3 else "?")
        if layout == "NCHW" and x.ndim == 4:
            return x
        if layout == "NHWC" and x.ndim == 4:
            return x.permute(0, 3, 1, 2)
        if layout == "NLC" and x.ndim == 3:
            x = x[:, self.num_prefix_tokens:]
            B, L, C = x.shape
            if self.grid is not None and self.grid[0] * self.grid[1] == L:
                h, w = self.grid
            else:
                h = math.isqrt(L)
                if h * h != L:
                    raise CamError(f"target layer {self.path}: {L} tokens are not a square grid; give the grid")
                w = h
            return x.transpose(1, 2).reshape(B, C, h, w)
        raise CamError(f"target layer {self.path or type(self.module).__name__} gives a {x.ndim}-D "
                       f"{tuple(x.shape)} output that is not a {layout} feature map")

    def from_nchw(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Inverse of ``to_nchw`` (prefix tokens taken from ``like``)."""
        layout = self.layout
        if layout == "auto":
            layout = "NCHW" if like.ndim == 4 else "NLC"
        if layout == "NCHW":
            return y
        if layout == "NHWC":
            return y.permute(0, 2, 3, 1)
        tokens = y.flatten(2).transpose(1, 2)
        if self.num_prefix_tokens:
            tokens = torch.cat([like[:, :self.num_prefix_tokens], tokens], dim=1)
        return tokens


def _module_path(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise CamError(f"the target layer {type(module).__name__} is not a sub-module of the model")


def _model_taps(model):
    if hasattr(model, "taps") and callable(model.taps):
        try:
            return list(model.taps())
        except NotImplementedError:
            return []
    return []


_SPATIAL = ("NCHW", "NHWC", "NLC")


def _from_tap(model, tap) -> TargetLayer:
    return TargetLayer(model.get_submodule(tap.path), tap.path, tap.layout, tap.num_prefix_tokens, tap.grid,
                       name=tap.name)


def default_target_layer(model: nn.Module) -> TargetLayer:
    """The conventional Score-CAM / Grad-CAM layer of a model.

    Zoo models: the output of the last stage (MetaFormer/DFFormer NHWC stage, SPANet's
    last ``network`` stage, AFFNet's last AFF stage), falling back to the last block.
    timm/foreign models: ViT-like ``blocks[-1].norm1`` (tokens, class tokens dropped),
    Swin ``layers[-1].blocks[-1].norm1``, ``stages[-1]`` (ConvNeXt, timm MetaFormer),
    ResNet ``layer4[-1]``, ``features[-1]`` (VGG, MobileNet, DenseNet)."""
    taps = [t for t in _model_taps(model) if t.hook == "forward" and t.layout in _SPATIAL]
    for role in ("stage", "block"):
        cands = [t for t in taps if t.role == role]
        if cands:
            return _from_tap(model, cands[-1])
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and hasattr(blocks[-1], "norm1") \
            and (prefix or hasattr(model, "cls_token") or hasattr(model, "pos_embed")):
        prefix = prefix or (1 if getattr(model, "cls_token", None) is not None else 0)
        idx = len(blocks) - 1
        return TargetLayer(blocks[-1].norm1, f"blocks.{idx}.norm1", "NLC", prefix,
                           extra={"note": "ViT-like: tokens of the last block's norm1, class tokens dropped"})
    layers = getattr(model, "layers", None)
    if isinstance(layers, (nn.Sequential, nn.ModuleList)) and len(layers) and hasattr(layers[-1], "blocks"):
        li, bi = len(layers) - 1, len(layers[-1].blocks) - 1
        mod = layers[-1].blocks[-1]
        sub = mod.norm1 if hasattr(mod, "norm1") else mod
        path = f"layers.{li}.blocks.{bi}" + (".norm1" if sub is not mod else "")
        return TargetLayer(sub, path, "NHWC", extra={"note": "Swin-like: channels-last norm1 of the last block"})
    for attr in ("stages", "layer4", "features", "network"):
        seq = getattr(model, attr, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq):
            return TargetLayer(seq[-1], f"{attr}.{len(seq) - 1}", "auto")
    raise CamError(f"no default target layer for {type(model).__name__}; give one with --target-layer PATH")


def resolve_target_layer(model: nn.Module, target=None, layout: str | None = None) -> TargetLayer:
    """A ``TargetLayer`` from None (the default), a module, a ``TargetLayer``, or a string:
    a declared tap name (``stage4``, ``s4.b2.block``), a tap role (the last tap of that
    role: ``stage``, ``block``, ``mixer``, ...) or a module path (``stages.3.2``)."""
    if target is None:
        tl = default_target_layer(model)
    elif isinstance(target, TargetLayer):
        tl = target
    elif isinstance(target, nn.Module):
        path = _module_path(model, target)
        tl = TargetLayer(target, path)
        for t in _model_taps(model):
            if t.path == path and t.hook == "forward" and t.layout in _SPATIAL:
                tl = _from_tap(model, t)
                break
    elif isinstance(target, str):
        taps = [t for t in _model_taps(model) if t.hook == "forward"]
        by_name = {t.name: t for t in taps}
        role_taps = [t for t in taps if t.role == target and t.layout in _SPATIAL]
        by_path = {t.path: t for t in taps if t.layout in _SPATIAL}
        if target in by_name:
            tap = by_name[target]
            if tap.layout not in _SPATIAL:
                raise CamError(f"tap {target!r} carries {tap.layout} data, not a feature map")
            tl = _from_tap(model, tap)
        elif role_taps:
            tl = _from_tap(model, role_taps[-1])
        elif target in by_path:
            tl = _from_tap(model, by_path[target])
        else:
            try:
                mod = model.get_submodule(target)
            except AttributeError:
                roles = sorted({t.role for t in taps if t.layout in _SPATIAL})
                hint = f" (roles: {', '.join(roles)})" if roles else ""
                raise CamError(f"target layer {target!r} is neither a tap, a tap role nor a module path "
                               f"of {type(model).__name__}{hint}") from None
            tl = TargetLayer(mod, target)
    else:
        raise CamError(f"target_layer must be a module, a module path or None, not {type(target).__name__}")
    if layout is not None:
        tl.layout = layout
    return tl


@contextlib.contextmanager
def _capture(module: nn.Module):
    """Forward hook storing the module's (first) output; always removed on exit."""
    store: list[torch.Tensor] = []

    def hook(_m, _i, out):
        t = out[0] if isinstance(out, (tuple, list)) else out
        store.append(t.detach())
    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return fallback


def _classes_tensor(classes, logits: torch.Tensor) -> torch.Tensor:
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
        raise CamError(f"{c.numel()} target classes for {B} images")
    if (c < 0).any() or (c >= K).any():
        raise CamError(f"target class {int(c[(c < 0) | (c >= K)][0])} is outside the model's {K} classes")
    return c.to(logits.device)


# ---------------------------------------------------------------------------- pure maths


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
    raise CamError(f"unknown Score-CAM flavour {flavour!r}; choose from {', '.join(FLAVOURS)}")


def weighted_cam(weights: torch.Tensor, acts: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """``ReLU(sum_k w[b, k] A[b, k])``: weights (B, C), activations (B, C, h, w) -> (B, h, w)."""
    cam = (weights[:, :, None, None].to(acts.dtype) * acts).sum(dim=1)
    return cam.clamp_min(0) if relu else cam


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


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _class_scores(logits: torch.Tensor, cls: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "softmax":
        logits = torch.softmax(logits.float(), dim=-1)
    return logits.gather(1, cls[:, None].to(logits.device)).squeeze(1).float()


# ---------------------------------------------------------------------------- Score-CAM


#: most masked inputs per forward chosen automatically: CPUs gain little beyond 8 (dfformer_s18 at
#: 96 px: 58 img/s at 8, 65 at 16-32 on 2 cores) while peak memory grows linearly; GPUs need more
AUTO_BATCH_CAP = {"cpu": 8, "other": 64}


def _auto_batch_size(input_shape, budget_bytes: int, act_bytes_per_sample: int, device_type: str = "cpu") -> int:
    c, h, w = input_shape
    per = 4 * (c * h * w * 2 + h * w) + 3 * act_bytes_per_sample
    cap = AUTO_BATCH_CAP["cpu" if device_type == "cpu" else "other"]
    return int(max(1, min(cap, budget_bytes // max(per, 1))))


def _largest_activation(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the largest leaf-module output for one sample (a per-sample memory estimate)."""
    largest = [0]

    def hook(_m, _i, out):
        t = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(t, torch.Tensor):
            largest[0] = max(largest[0], t.numel() * t.element_size() // max(t.shape[0], 1) if t.ndim else 0)
    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return largest[0]


@torch.no_grad()
def _activation_pass(model, layers: list[TargetLayer], x: torch.Tensor):
    stores = []
    with contextlib.ExitStack() as stack:
        for tl in layers:
            stores.append(stack.enter_context(_capture(tl.module)))
        logits = model(x)
    acts = []
    for tl, st in zip(layers, stores):
        if not st:
            raise CamError(f"target layer {tl.path} did not run in the forward pass")
        if len(st) > 1:
            raise CamError(f"target layer {tl.path} ran {len(st)} times in one forward; pick a module used once")
        acts.append(tl.to_nchw(st[0]).float())
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.float(), acts


def _score_chunks(model, x, acts, cls, flavour, score, batch_size, size, skip_constant, progress=None):
    """Scores (B, C) of all masked inputs, built and run ``batch_size`` pairs at a time."""
    B, C = acts.shape[:2]
    pairs = [(b, k) for b in range(B) for k in range(C)]
    keep = torch.ones(B, C, dtype=torch.bool)
    if skip_constant:
        up = None
        for b in range(B):
            up = resize_maps(acts[b], size, align_corners=False)
            flat = up.flatten(-2)
            keep[b] = flat.max(-1).values != flat.min(-1).values
        del up
        pairs = [(b, k) for b, k in pairs if keep[b, k]]
    scores = torch.zeros(B, C)
    zero_logits = None
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        bi = torch.tensor([p[0] for p in chunk], device=x.device)
        ki = torch.tensor([p[1] for p in chunk], device=x.device)
        masks = scorecam_masks(acts[bi, ki], size, flavour)
        # an all-zero mask (a constant channel) blanks the input whatever the image: score it once
        blank = masks.flatten(1).amax(1) == 0
        if bool(blank.any()):
            if zero_logits is None:
                zero_logits = _first(model(torch.zeros_like(x[:1])))
            zb = zero_logits.expand(int(blank.sum()), -1)
            scores[bi[blank].cpu(), ki[blank].cpu()] = _class_scores(zb, cls[bi[blank]], score).cpu()
            keep_rows = ~blank
            bi, ki, masks = bi[keep_rows], ki[keep_rows], masks[keep_rows]
        if bi.numel():
            xm = x[bi]                                   # a copy: masked in place, masks freed first
            xm.mul_(masks[:, None].to(x.dtype))
            del masks
            out = _first(model(xm))
            del xm
            scores[bi.cpu(), ki.cpu()] = _class_scores(out, cls[bi], score).cpu()
        if progress is not None:
            progress.update(len(chunk))
    return scores, keep


def score_cam(model: nn.Module, target_layer, images: torch.Tensor, classes=None, flavour: str = "gradcam-lib",
              batch_size: int | None = None, *, score: str | None = None, output_size: str = "input",
              memory_budget: int = 256 * 2 ** 20, return_weights: bool = False, layout: str | None = None,
              progress: bool = False):
    """Score-CAM maps ``(B, H, W)`` in [0, 1] for ``images`` (B, 3, H, W), already normalised.

    ``target_layer``: a module, a module path, a tap name/role, a ``TargetLayer``, None
    (the model's default) or a list of them (maps averaged as pytorch-grad-cam does).
    ``classes``: None (top-1 per image), an int, or one class per image.
    ``flavour``: ``gradcam-lib`` (default), ``authors`` or ``torchcam`` (see the module doc).
    ``score``: ``logit`` or ``softmax`` (the class score of a masked input); defaults to
    the flavour's own. ``batch_size``: masked inputs per forward; None (default) = the largest
    batch whose estimated peak fits ``memory_budget`` bytes, at most ``AUTO_BATCH_CAP`` (8 on
    CPUs, 64 on accelerators). ``output_size``: ``input`` or ``layer`` (torchcam only).
    With ``return_weights`` also returns the channel weights (B, C) (authors: the class
    probabilities, 0 for skipped constant channels) of the first target layer."""
    if flavour not in FLAVOURS:
        raise CamError(f"unknown Score-CAM flavour {flavour!r}; choose from {', '.join(FLAVOURS)}")
    default_score = {"gradcam-lib": "logit", "torchcam": "logit", "authors": "softmax"}[flavour]
    score = score or default_score
    if score not in ("logit", "softmax"):
        raise CamError(f"score must be 'logit' or 'softmax', not {score!r}")
    if output_size not in ("input", "layer"):
        raise CamError("output_size must be 'input' or 'layer'")
    if images.ndim != 4:
        raise CamError(f"images must be a (B, C, H, W) batch, got {tuple(images.shape)}")
    targets = list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]
    layers = [resolve_target_layer(model, t, layout) for t in targets]
    dev = _model_device(model, images.device)
    x = images.to(dev)
    size = tuple(x.shape[-2:])
    with _eval_mode(model):
        logits, acts_list = _activation_pass(model, layers, x)     # hooks are gone after this line
        cls = _classes_tensor(classes, logits)
        if batch_size is None:
            batch_size = _auto_batch_size(tuple(x.shape[1:]), memory_budget, _largest_activation(model, x),
                                          dev.type)
        if batch_size < 1:
            raise CamError("batch_size must be >= 1")
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=sum(a.shape[0] * a.shape[1] for a in acts_list), desc="score-cam", unit="mask")
        maps, first_weights = [], None
        try:
            with torch.inference_mode():
                for acts in acts_list:
                    acts = acts.to(dev)
                    scores, keep = _score_chunks(model, x, acts, cls, flavour, score, batch_size, size,
                                                 skip_constant=(flavour == "authors"), progress=bar)
                    cam, w = _combine(flavour, scores, keep, acts, logits, cls, size, score, output_size)
                    maps.append(cam)
                    if first_weights is None:
                        first_weights = w
        finally:
            if bar is not None:
                bar.close()
    if len(maps) == 1:
        out = maps[0]
    else:
        out = normalize_maps(torch.stack(maps).clamp_min(0).mean(0), 1e-7)
    out = out.cpu()
    return (out, first_weights) if return_weights else out


def _combine(flavour, scores, keep, acts, logits, cls, size, score, output_size):
    acts = acts.cpu()
    if flavour == "gradcam-lib":
        w = torch.softmax(scores, dim=-1)
        cam = normalize_maps(weighted_cam(w, acts), 1e-7)
        cam = resize_maps(cam, size).clamp_min(0)
        return normalize_maps(cam, 1e-7), w
    if flavour == "torchcam":
        base = _class_scores(logits, cls, score).cpu()
        w = torch.softmax(scores - base[:, None], dim=-1)
        cam = normalize_maps(weighted_cam(w, torch.nan_to_num(acts)), 1e-8)
        if output_size == "input":
            cam = resize_maps(cam, size)
        return cam, w
    # authors: sum of score * raw upsampled activation at input resolution
    w = torch.where(keep, scores, torch.zeros_like(scores))
    cams = []
    for b in range(acts.shape[0]):
        up = resize_maps(acts[b], size, align_corners=False)
        cams.append((w[b][:, None, None] * up).sum(0))
    cam = normalize_maps(torch.stack(cams).clamp_min(0), mode="range")
    return cam, w


# ---------------------------------------------------------------------------- Grad-CAM


class _NCHWView(nn.Module):
    """Wraps a target module so that an identity sub-module sees its output as NCHW
    (captum's LayerGradCam assumes channels on axis 1)."""

    def __init__(self, inner: nn.Module, tl: TargetLayer):
        super().__init__()
        self.inner = inner
        self.nchw = nn.Identity()
        self._tl = tl

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        return self._tl.from_nchw(self.nchw(self._tl.to_nchw(out)), out)


@contextlib.contextmanager
def _nchw_layer(model: nn.Module, tl: TargetLayer):
    """Yield a module whose output is the NCHW view of the target layer (the layer itself
    when it is already NCHW); the model is restored on exit."""
    if tl.layout == "NCHW":
        yield tl.module
        return
    if not tl.path:
        raise CamError("a non-NCHW target layer needs its module path")
    wrapper = _NCHWView(tl.module, tl)
    model.set_submodule(tl.path, wrapper)
    try:
        yield wrapper.nchw
    finally:
        model.set_submodule(tl.path, tl.module)


def grad_cam(model: nn.Module, target_layer, images: torch.Tensor, classes=None, *, plus_plus: bool = False,
             output_size: str = "input", layout: str | None = None, return_weights: bool = False):
    """Grad-CAM (captum ``LayerGradCam``, ReLU'd, bilinear ``LayerAttribution.interpolate``)
    or Grad-CAM++ (``plus_plus``) maps ``(B, H, W)`` in [0, 1]."""
    from captum.attr import LayerAttribution, LayerGradCam
    tl = resolve_target_layer(model, target_layer, layout)
    dev = _model_device(model, images.device)
    x = images.to(dev)
    size = tuple(x.shape[-2:])
    with _eval_mode(model):
        with torch.no_grad():
            logits = model(x)
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        cls = _classes_tensor(classes, logits.float())
        if tl.layout == "auto":
            with torch.no_grad(), _capture(tl.module) as st:
                model(x[:1])
            tl.layout = "NCHW" if st[0].ndim == 4 else "NLC"
        with _nchw_layer(model, tl) as layer, torch.enable_grad():
            if not plus_plus:
                attr = LayerGradCam(model, layer).attribute(x, target=cls.tolist(), relu_attributions=True)
                weights = None
                cam = attr.detach()
            else:
                acts, grads = _acts_and_grads(model, layer, x, cls)
                weights = gradcam_pp_weights(grads, acts)
                cam = weighted_cam(weights, acts)[:, None]
    if output_size == "input":
        cam = LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear")
    out = normalize_maps(cam[:, 0].float(), 1e-7).cpu()
    return (out, weights) if return_weights else out


def _acts_and_grads(model, layer, x, cls):
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))
    h = layer.register_forward_hook(hook)
    try:
        xx = x.detach().requires_grad_(True)
        out = model(xx)
        out = out[0] if isinstance(out, (tuple, list)) else out
        out.gather(1, cls[:, None]).sum().backward()
    finally:
        h.remove()
    model.zero_grad(set_to_none=True)
    return store["a"].detach().float(), store["g"].detach().float()


def compute_cam(model, images, method: str = "scorecam", target_layer=None, classes=None, **kw) -> torch.Tensor:
    """One entry point for the three methods (``scorecam``, ``gradcam``, ``gradcam++``)."""
    if method == "scorecam":
        return score_cam(model, target_layer, images, classes, **kw)
    if method in ("gradcam", "gradcam++"):
        kw = {k: v for k, v in kw.items() if k in ("output_size", "layout", "return_weights")}
        return grad_cam(model, target_layer, images, classes, plus_plus=(method == "gradcam++"), **kw)
    raise CamError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")


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
    """Per-image and mean pointing-game hits and box energy."""
    hits = pointing_game(cam, boxes, tolerance)
    energy = energy_in_box(cam, boxes)
    valid = ~torch.isnan(energy)
    return {"pointing_hits": hits.tolist(), "pointing_accuracy": float(hits.float().mean()),
            "energy_in_box": energy.tolist(),
            "mean_energy_in_box": float(energy[valid].mean()) if valid.any() else float("nan"),
            "box_area_share": _masks_for(cam, boxes).float().flatten(1).mean(1).tolist()}
