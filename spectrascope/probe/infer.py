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


def _structure(model: nn.Module):
    """(stem (path, hook) | None, [(stage_path | None, downsample_path | None, [block paths])], single_stage)."""
    blocks = _child(model, "blocks")
    if _is_seq(blocks) and not _child(model, "stages") and not _child(model, "layers"):
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
        stem = None
        for name in ("patch_embed", "stem"):
            m = _child(model, name)
            if m is not None and not isinstance(m, nn.Identity):
                stem = (name, "forward")
                break
        return stem, stages, False
    if all(_is_seq(_child(model, f"layer{i}")) for i in range(1, 5)):      # ResNet family
        stages = [(f"layer{i}", None, [f"layer{i}.{n}" for n, _ in getattr(model, f"layer{i}").named_children()])
                  for i in range(1, 5)]
        stem = None
        for name in ("maxpool", "act1", "relu"):
            m = _child(model, name)
            if m is not None and not isinstance(m, nn.Identity):
                stem = (name, "forward")
                break
        return stem, stages, False
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
    if isinstance(_child(model, "fc"), nn.Linear):
        return "fc"
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


def infer_taps(model: nn.Module, input_size=None) -> TapList:
    """Taps for a model that declares none (timm ViT/DeiT, Swin, ConvNeXt, FocalNet,
    MetaFormer, ResNet ...), ordered by execution; raises TapError when it cannot."""
    stem, stages, single = _structure(model)
    size = _default_size(model, input_size)
    hints = _channel_hints(model, stages)
    num_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    pe_grid = None
    pe = _child(model, "patch_embed")
    if pe is not None and getattr(pe, "grid_size", None) is not None and single:
        gs = pe.grid_size
        pe_grid = (int(gs[0]), int(gs[1]))
        if input_size is not None and getattr(pe, "patch_size", None) is not None:
            ps = pe.patch_size if not isinstance(pe.patch_size, int) else (pe.patch_size, pe.patch_size)
            pe_grid = (size[0] // ps[0], size[1] // ps[1])

    # candidate points: (name, role, path, hook, stage0, index, depth)
    cand = []
    if stem is not None:
        cand.append(("stem", "stem", stem[0], stem[1], 0, None, None))
    depths = [len(b) for _, _, b in stages]
    depth_of = {(s, j): d for s, j, d in block_depths(depths)}
    for s, (spath, dpath, bpaths) in enumerate(stages):
        if dpath is not None:
            cand.append((f"downsample{s + 1}", "downsample", dpath, "forward", s, None, None))
        for j, bp in enumerate(bpaths):
            blk = model.get_submodule(bp)
            pre = f"s{s + 1}.b{j}"
            d = depth_of[(s, j)]
            for mname in MIXER_CHILDREN:
                if _child(blk, mname) is not None:
                    cand.append((f"{pre}.mixer", "mixer", f"{bp}.{mname}", "forward", s, j, d))
                    break
            if _child(blk, "norm2") is not None and _child(blk, "mlp") is not None:
                cand.append((f"{pre}.residual", "residual", f"{bp}.norm2", "pre", s, j, d))
            if _child(blk, "mlp") is not None:
                cand.append((f"{pre}.mlp", "mlp", f"{bp}.mlp", "forward", s, j, d))
            cand.append((f"{pre}.block", "block", bp, "forward", s, j, d))
        if spath is not None and not single:
            cand.append((f"stage{s + 1}", "stage", spath, "forward", s, None, None))
    pool = _pool_tap(model)
    if pool is not None:
        cand.append(("pool", "pool", pool, "pre", None, None, None))
    fallbacks = {}
    for name, role, path, hook, s, j, d in cand:
        if role == "mixer":
            bp = path.rsplit(".", 1)[0]
            if _child(model.get_submodule(bp), MIXER_FALLBACK) is not None:
                fallbacks[name] = f"{bp}.{MIXER_FALLBACK}"

    points = list(dict.fromkeys([(c[2], c[3]) for c in cand] + [(p, "forward") for p in fallbacks.values()]))
    shapes = _dry_run(model, points, size)

    def channels_for(s, path):
        if s is None:
            return None
        for key in (path.rsplit(".", 1)[0] if "." in path else path, path):
            if key in hints:
                return hints[key]
        return hints.get(s)

    # the spatial grid of each stage, from the first resolvable 4-D map of that stage
    stage_grid: dict[int, tuple[int, int]] = {}
    if single and pe_grid is not None:
        stage_grid[0] = pe_grid
    for name, role, path, hook, s, j, d in cand:
        if s is None or s in stage_grid or role not in ("block", "downsample", "stage"):
            continue
        shp = shapes.get((path, hook))
        if shp is not None and len(shp) == 4:
            res = _layout(shp, size, channels_for(s, path), None, num_prefix, single)
            if res and res[0] in ("NCHW", "NHWC"):
                stage_grid[s] = res[1]

    def is_map(res):
        return res is not None and res[0] in ("NCHW", "NHWC", "NLC")

    # a family whose mixer output is not a map in some block (Swin: windows) uses the fallback everywhere
    use_fallback = bool(fallbacks) and any(
        not is_map(_layout(shapes.get((path, hook)), size, channels_for(s, path), stage_grid.get(s), num_prefix,
                           single))
        for name, role, path, hook, s, j, d in cand if role == "mixer")
    taps = TapList()
    for name, role, path, hook, s, j, d in cand:
        grid = stage_grid.get(s) if s is not None else None
        ch = None if role == "stem" else channels_for(s, path)
        shp = shapes.get((path, hook))
        res = _layout(shp, size, ch, grid, num_prefix, single)
        note = ""
        if role == "mixer" and use_fallback and name in fallbacks:
            fb = fallbacks[name]
            res = _layout(shapes.get((fb, "forward")), size, ch, grid, num_prefix, single)
            path, hook, note = fb, "forward", "token-mixer output after the window merge (taken at drop_path1)"
        if role == "stem" and res is None:
            res = _layout(shp, size, None, grid, num_prefix, single)
        if res is None:
            if role in ("block",):
                raise TapError(f"cannot infer the layout of {path} (output shape {shp}) in {type(model).__name__}")
            log.info("timm taps: skipping %s (%s): output shape %s is not a map of the batch", name, path, shp)
            continue
        if res[0] == "?":
            raise TapError(f"cannot tell NCHW from NHWC for {path} (output shape {shp}) in {type(model).__name__}; "
                           "pass it as --taps path:<module.path>:LAYOUT")
        layout, g, prefix = res
        if role == "pool" and layout != "NC":
            continue
        taps.append(TapSpec(name, role, path, layout, stage=None if s is None else s + 1, index=j, hook=hook,
                            num_prefix_tokens=prefix, grid=g, depth=d, note=note))
    if not any(t.role == "block" for t in taps):
        raise TapError(f"cannot infer taps for {type(model).__name__}: no block outputs found")
    return taps


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
        if res is None or res[0] == "?":
            what = "fits both NCHW and NHWC" if res else "is not a feature map of the batch"
            raise TapError(f"the output of {t.path} (shape {shp}) {what}; give its layout as "
                           f"path:{t.path}:NCHW|NHWC|NLC[:HxW]")
        layout, grid, p = res
        out.append(replace(t, layout=layout, grid=grid if layout != "NC" else None, num_prefix_tokens=p))
    return out
