"""Tap inference for models that declare none (timm models).

The structure is read from the module tree (``blocks`` of a plain ViT; ``stages`` /
``layers`` with ``downsample`` + ``blocks`` of hierarchical models such as Swin,
ConvNeXt, FocalNet and timm's MetaFormers; ``layer1..4`` of ResNets), and the layout of
every candidate tap is inferred from one dry forward pass (batch 2 at the analysis input
size) using the channel counts of ``model.feature_info``: 4-D outputs are NCHW or NHWC,
3-D outputs are tokens (NLC) whose grid comes from ``patch_embed.grid_size`` (with the
class/register/distillation tokens counted as prefix tokens) or from the stage's spatial
size. When a layout cannot be decided the call fails with a TapError naming the module.

Per block the roles are the zoo's: ``mixer`` (the first of ``token_mixer``, ``attn``,
``modulation``, ``conv_dw``, ``mixer``; when that output is not a map of the batch, as
Swin's windowed attention, the token-mixer output after the window merge is taken at
``drop_path1``), ``residual`` (the input of ``norm2``, i.e. the residual stream after the
token mixer), ``mlp`` and ``block``; plus ``stem``, ``downsample``, ``stage`` and ``pool``.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn as nn

from spectrascope.errors import TapError
from spectrascope.models.base import block_depths
from spectrascope.probe.layouts import infer_layout
from spectrascope.probe.probe import Probe
from spectrascope.probe.spec import TapList, TapSpec

log = logging.getLogger("spectrascope.probe.probe")

__all__ = ["model_taps", "infer_taps", "resolve_layouts"]

MIXER_CHILDREN = ("token_mixer", "attn", "modulation", "conv_dw", "mixer")
MIXER_FALLBACK = "drop_path1"
_ROLE_RANK = {"mixer": 0, "residual": 1, "mlp": 2, "block": 3}


def _is_seq(m) -> bool:
    return isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > 0


def _child(mod: nn.Module, name: str):
    c = getattr(mod, name, None)
    return c if isinstance(c, nn.Module) else None


def _first_stem(model: nn.Module, names) -> tuple[str, str] | None:
    for name in names:
        m = _child(model, name)
        if m is not None and not isinstance(m, nn.Identity):
            return (name, "forward")
    return None


def _structure(model: nn.Module):
    """(stem (path, hook) | None, [(stage_path | None, downsample_path | None, [block paths])], single_stage)."""
    blocks = _child(model, "blocks")
    if _is_seq(blocks) and not _child(model, "stages") and not _child(model, "layers"):
        if all(_is_seq(c) for c in blocks.children()):        # EfficientNet / MobileNet: blocks = stages
            stages = [(f"blocks.{i}", None, [f"blocks.{i}.{n}" for n, _ in st.named_children()])
                      for i, st in enumerate(blocks)]
            return _first_stem(model, ("bn1", "conv_stem", "stem")), stages, False
        paths = [f"blocks.{i}" for i in range(len(blocks))]
        if hasattr(model, "num_prefix_tokens") or hasattr(model, "pos_embed"):
            stem = ("blocks.0", "pre")      # patch embedding + prefix tokens + position embedding
        elif _child(model, "patch_embed") is not None:
            stem = ("patch_embed", "forward")
        else:
            stem = None
        return stem, [(None, None, paths)], True
    for attr in ("stages", "layers"):
        seq = _child(model, attr)
        if not _is_seq(seq):
            continue
        stages = []
        for i, st in enumerate(seq):
            sb = _child(st, "blocks")
            if _is_seq(sb):
                bpaths = [f"{attr}.{i}.blocks.{j}" for j in range(len(sb))]
            elif isinstance(st, nn.Sequential):
                bpaths = [f"{attr}.{i}.{n}" for n, _ in st.named_children()]
            else:
                raise TapError(f"cannot infer taps for {type(model).__name__}: {attr}.{i} "
                               f"({type(st).__name__}) has no blocks")
            ds = _child(st, "downsample")
            dpath = f"{attr}.{i}.downsample" if ds is not None and not isinstance(ds, nn.Identity) else None
            stages.append((f"{attr}.{i}", dpath, bpaths))
        return _first_stem(model, ("patch_embed", "stem")), stages, False
    if all(_is_seq(_child(model, f"layer{i}")) for i in range(1, 5)):      # ResNet family
        stages = [(f"layer{i}", None, [f"layer{i}.{n}" for n, _ in getattr(model, f"layer{i}").named_children()])
                  for i in range(1, 5)]
        return _first_stem(model, ("maxpool", "act1", "relu")), stages, False
    raise TapError(f"cannot infer taps for {type(model).__name__}: it declares none and is not a supported "
                   "family (ViT-like blocks, stages/layers with blocks, ResNet layers); pass module paths with "
                   "--taps path:<module.path>[:LAYOUT]")


def _pool_tap(model: nn.Module):
    head = _child(model, "head")
    if head is not None:
        fc = _child(head, "fc")
        if isinstance(fc, nn.Linear):
            return "head.fc"
        if isinstance(head, nn.Linear):
            return "head"
    for name in ("fc", "classifier"):                 # ResNet / EfficientNet, MobileNet
        if isinstance(_child(model, name), nn.Linear):
            return name
    return None


def _default_size(model: nn.Module, input_size) -> tuple[int, int]:
    if input_size is not None:
        return (input_size, input_size) if isinstance(input_size, int) else tuple(int(v) for v in input_size[-2:])
    pe = _child(model, "patch_embed")
    if pe is not None and getattr(pe, "img_size", None) is not None:
        s = pe.img_size
        return (s, s) if isinstance(s, int) else tuple(int(v) for v in s)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224))[-2:])


def _channel_hints(model: nn.Module, stages) -> dict:
    """stage index (0-based) or block path -> channel count, from timm's feature_info."""
    info = getattr(model, "feature_info", None) or []
    by_module = {}
    for d in info:
        try:
            by_module[d["module"]] = int(d["num_chs"])
        except (KeyError, TypeError):
            continue
    hints = {}
    for i, (spath, _, bpaths) in enumerate(stages):
        if spath in by_module:
            hints[i] = by_module[spath]
        for b in bpaths:
            if b in by_module:
                hints[b] = by_module[b]
    return hints


def _dry_run(model: nn.Module, points: list[tuple[str, str]], size) -> dict:
    """Output (or input) shapes of ``points`` in one forward of a batch of 2 random images."""
    shapes: dict[tuple[str, str], tuple] = {}
    taps = [TapSpec(f"{path}|{hook}", "path", path, "raw", hook=hook) for path, hook in points]

    def rec(tap, x):
        key = (tap.path, tap.hook)
        if key not in shapes:
            shapes[key] = tuple(x.shape)
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    dt = p.dtype if p is not None and p.is_floating_point() else torch.float32
    if dev.type == "meta":
        raise TapError("cannot infer taps on the meta device")
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0)).to(dev, dt)
    was_training = model.training
    model.eval()
    try:
        with Probe(model, taps, callback=rec, nchw=False, clone=False, skip_non_tensor=True), \
                torch.inference_mode():
            model(x)
    except TapError:
        raise
    except Exception as exc:   # a model that cannot run at this size
        raise TapError(f"cannot infer taps for {type(model).__name__}: a dry forward at {size[0]}x{size[1]} "
                       f"failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    finally:
        model.train(was_training)
    return shapes


def _layout(shape, size, channels, grid, num_prefix, single_stage):
    """(layout, grid, num_prefix_tokens) for a recorded shape, or None when it is not a map of the batch."""
    return infer_layout(shape, size, batch=2, channels=channels, grid=grid, num_prefix_tokens=num_prefix,
                        prefix_allowed=single_stage)


def _patch_grid(model: nn.Module, size, input_size, single: bool):
    pe = _child(model, "patch_embed")
    if pe is None or getattr(pe, "grid_size", None) is None or not single:
        return None
    grid = (int(pe.grid_size[0]), int(pe.grid_size[1]))
    if input_size is not None and getattr(pe, "patch_size", None) is not None:
        ps = pe.patch_size if not isinstance(pe.patch_size, int) else (pe.patch_size, pe.patch_size)
        grid = (size[0] // ps[0], size[1] // ps[1])
    return grid


def _mixer_point(blk: nn.Module, bp: str):
    """(path, hook, note) of a block's token-mixer output, or None."""
    if _child(blk, "transformer") is not None and _child(blk, "conv_proj") is not None:   # MobileViT block
        return (f"{bp}.conv_proj", "pre", "global representation (transformer over unfolded patches) folded back "
                                          "to a map: the input of conv_proj")
    for mname in MIXER_CHILDREN:
        c = _child(blk, mname)
        if c is not None and not isinstance(c, nn.Identity):       # byobnet blocks carry Identity placeholders
            return (f"{bp}.{mname}", "forward", "")
    return None


def _candidates(model: nn.Module, stem, stages, single: bool) -> list[tuple]:
    """Candidate points: (name, role, path, hook, stage0, index, depth, note), in execution order."""
    cand = []
    if stem is not None:
        cand.append(("stem", "stem", stem[0], stem[1], 0, None, None, ""))
    depth_of = {(s, j): d for s, j, d in block_depths([len(b) for _, _, b in stages])}
    for s, (spath, dpath, bpaths) in enumerate(stages):
        if dpath is not None:
            cand.append((f"downsample{s + 1}", "downsample", dpath, "forward", s, None, None, ""))
        for j, bp in enumerate(bpaths):
            blk = model.get_submodule(bp)
            pre, d = f"s{s + 1}.b{j}", depth_of[(s, j)]
            mix = _mixer_point(blk, bp)
            if mix is not None:
                cand.append((f"{pre}.mixer", "mixer", mix[0], mix[1], s, j, d, mix[2]))
            if _child(blk, "norm2") is not None and _child(blk, "mlp") is not None:
                cand.append((f"{pre}.residual", "residual", f"{bp}.norm2", "pre", s, j, d, ""))
            if _child(blk, "mlp") is not None:
                cand.append((f"{pre}.mlp", "mlp", f"{bp}.mlp", "forward", s, j, d, ""))
            cand.append((f"{pre}.block", "block", bp, "forward", s, j, d, ""))
        if spath is not None and not single:
            cand.append((f"stage{s + 1}", "stage", spath, "forward", s, None, None, ""))
    pool = _pool_tap(model)
    if pool is not None:
        cand.append(("pool", "pool", pool, "pre", None, None, None, ""))
    return cand


def _second_size(size) -> tuple[int, int]:
    return tuple(int(v) + 32 * max(1, int(v) // 128) for v in size)


def _spatial_axis_test(model, keys, size) -> dict:
    """Settle NCHW vs NHWC for 4-D maps that fit both, from a second dry forward at another size:
    the channel axis is the one that does not change."""
    if not keys:
        return {}
    other = _dry_run(model, keys, _second_size(size))
    return {k: v for k, v in other.items()}


class _Reader:
    """Layouts of the recorded shapes, with the channel hints, stage grids and the second-size test."""

    def __init__(self, model, size, shapes, hints, num_prefix, single):
        self.model, self.size, self.shapes, self.hints = model, size, shapes, hints
        self.num_prefix, self.single = num_prefix, single
        self.grids: dict[int, tuple[int, int]] = {}
        self.other: dict = {}

    def channels(self, s, path):
        if s is None:
            return None
        for key in (path.rsplit(".", 1)[0] if "." in path else path, path):
            if key in self.hints:
                return self.hints[key]
        return self.hints.get(s)

    def layout(self, path, hook, s, role):
        shp = self.shapes.get((path, hook))
        # a mixer may work at another width than its stage (expanded depthwise convs, MobileViT's transformer)
        ch = None if role in ("stem", "mixer") else self.channels(s, path)
        res = _layout(shp, self.size, ch, self.grids.get(s), self.num_prefix, self.single)
        if role == "stem" and res is None:
            res = _layout(shp, self.size, None, None, self.num_prefix, self.single)
        if res is not None and res[0] == "?":
            res = self._settle(path, hook, shp)
        return res

    def _settle(self, path, hook, shp):
        if (path, hook) not in self.other:
            self.other.update(_spatial_axis_test(self.model, [(path, hook)], self.size))
        two = self.other.get((path, hook))
        if two is not None and len(two) == 4:
            if two[1] == shp[1] and two[3] != shp[3]:
                return ("NCHW", (shp[2], shp[3]), 0)
            if two[3] == shp[3] and two[1] != shp[1]:
                return ("NHWC", (shp[1], shp[2]), 0)
        return ("?", shp, 0)


def infer_taps(model: nn.Module, input_size=None) -> TapList:
    """Taps for a model that declares none (timm ViT/DeiT, Swin, ConvNeXt, FocalNet, MetaFormer,
    ResNet, EfficientNet/MobileNet, MobileViT ...), ordered by execution; raises TapError when it cannot."""
    stem, stages, single = _structure(model)
    size = _default_size(model, input_size)
    cand = _candidates(model, stem, stages, single)
    fallbacks = {c[0]: f"{c[2].rsplit('.', 1)[0]}.{MIXER_FALLBACK}" for c in cand if c[1] == "mixer"
                 and c[3] == "forward" and _child(model.get_submodule(c[2].rsplit(".", 1)[0]), MIXER_FALLBACK)}
    points = list(dict.fromkeys([(c[2], c[3]) for c in cand] + [(p, "forward") for p in fallbacks.values()]))
    rd = _Reader(model, size, _dry_run(model, points, size), _channel_hints(model, stages),
                 int(getattr(model, "num_prefix_tokens", 0) or 0), single)
    grid = _patch_grid(model, size, input_size, single)
    if grid is not None:
        rd.grids[0] = grid
    for name, role, path, hook, s, j, d, note in cand:       # each stage's grid, from its first 4-D map
        if s is not None and s not in rd.grids and role in ("block", "downsample", "stage"):
            res = rd.layout(path, hook, s, role)
            if res and res[0] in ("NCHW", "NHWC"):
                rd.grids[s] = res[1]
    # a family whose mixer output is not a map in some block (Swin: windows) uses the fallback everywhere
    use_fallback = bool(fallbacks) and any(
        (rd.layout(c[2], c[3], c[4], "mixer") or ("-",))[0] not in ("NCHW", "NHWC", "NLC")
        for c in cand if c[1] == "mixer")
    taps = TapList()
    for name, role, path, hook, s, j, d, note in cand:
        if role == "mixer" and use_fallback and name in fallbacks:
            path, hook, note = fallbacks[name], "forward", "token-mixer output after the window merge (taken at " \
                                                           "drop_path1)"
        tap = _tap_from(rd, model, name, role, path, hook, s, j, d, note)
        if tap is not None:
            taps.append(tap)
    if not any(t.role == "block" for t in taps):
        raise TapError(f"cannot infer taps for {type(model).__name__}: no block outputs found")
    return taps


def _tap_from(rd: _Reader, model, name, role, path, hook, s, j, d, note):
    res = rd.layout(path, hook, s, role)
    shp = rd.shapes.get((path, hook))
    if res is None:
        if role == "block":
            raise TapError(f"cannot infer the layout of {path} (output shape {shp}) in {type(model).__name__}")
        log.info("timm taps: skipping %s (%s): output shape %s is not a map of the batch", name, path, shp)
        return None
    if res[0] == "?":
        raise TapError(f"cannot tell NCHW from NHWC for {path} (output shape {shp}) in {type(model).__name__}; "
                       f"pass it as --taps path:{path}:NCHW|NHWC")
    layout, g, prefix = res
    if role == "pool" and layout != "NC":
        return None
    return TapSpec(name, role, path, layout, stage=None if s is None else s + 1, index=j, hook=hook,
                   num_prefix_tokens=prefix, grid=g, depth=d, note=note)


def model_taps(model: nn.Module, input_size=None) -> TapList:
    """The taps a model declares (zoo models) or that can be inferred (timm and other models).

    ``input_size`` (S or (H, W)) is the input the taps will see; inference for foreign
    models runs one dry forward at that size (default: the model's own input size) and
    caches the result on the model."""
    if hasattr(model, "taps") and callable(model.taps):
        return TapList(model.taps())
    key = None if input_size is None else (tuple(input_size) if not isinstance(input_size, int) else input_size)
    cache = model.__dict__.setdefault("_spectrascope_inferred_taps", {})
    if key not in cache:
        cache[key] = TapList(infer_taps(model, input_size=input_size))
    return TapList(cache[key])


def resolve_layouts(model: nn.Module, taps, input_size=None) -> TapList:
    """Taps whose layout is ``"auto"`` get the layout, grid and prefix tokens read from their
    tensor in one dry forward at ``input_size`` (the others are returned as they are).

    A 4-D map that fits both NCHW and NHWC, or a tensor that is not a map of the batch,
    is refused with a ``TapError`` naming the module and the syntax that settles it."""
    taps = TapList(taps)
    todo = [t for t in taps if t.layout == "auto"]
    if not todo:
        return taps
    size = _default_size(model, input_size)
    shapes = _dry_run(model, list(dict.fromkeys((t.path, t.hook) for t in todo)), size)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    out = TapList()
    for t in taps:
        if t.layout != "auto":
            out.append(t)
            continue
        shp = shapes.get((t.path, t.hook))
        res = infer_layout(shp, size, batch=2, grid=t.grid, num_prefix_tokens=prefix)
        if res is not None and res[0] == "?":
            res = _Reader(model, size, shapes, {}, prefix, True)._settle(t.path, t.hook, shp)
        if res is None or res[0] == "?":
            what = "fits both NCHW and NHWC" if res else "is not a feature map of the batch"
            raise TapError(f"the output of {t.path} (shape {shp}) {what}; give its layout as "
                           f"path:{t.path}:NCHW|NHWC|NLC[:HxW]")
        layout, grid, p = res
        out.append(replace(t, layout=layout, grid=grid if layout != "NC" else None, num_prefix_tokens=p))
    return out
