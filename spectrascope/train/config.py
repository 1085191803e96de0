"""Training options: ``TrainConfig`` (timm's option names), the papers' recipes, how unset
options are filled (user value > recipe > basic default, a recipe's lr scaled linearly to
the global batch), their validation, and which options may change when resuming."""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spectrascope.errors import OptionError
from spectrascope.zoo import registry

__all__ = ["TrainConfig", "BASIC", "RECIPES", "RESUME_MUTABLE", "recipe_for", "resolve_config", "merge_resume",
           "plain", "hw"]


@dataclass
class TrainConfig:
    """Every training option (timm's names). ``None`` means "from the recipe or the basic
    defaults" until ``resolve_config`` fills it in."""

    model: str | None = None
    data: str | None = None
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    val_batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    opt: str | None = None
    momentum: float | None = None
    warmup_epochs: float | None = None
    warmup_lr: float | None = None
    min_lr: float | None = None
    clip_grad: float | None = None
    drop_path: float | None = None
    smoothing: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    mixup_prob: float | None = None
    mixup_switch_prob: float | None = None
    aa: str | None = None
    reprob: float | None = None
    scale: tuple | None = None
    ratio: tuple | None = None
    hflip: float | None = None
    aug_backend: str | None = None
    model_ema: bool | None = None
    model_ema_decay: float | None = None
    amp: str | None = None
    channels_last: bool | None = None
    tf32: str | None = None
    compile: bool | None = None
    grad_accum: int | None = None
    seed: int | None = None
    img_size: object = None
    model_kwargs: dict | None = None
    workers: int | None = None
    device: str | None = None
    output: str | None = None
    overwrite: bool | None = None
    checkpoint_steps: int | None = None
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    progress: bool | None = None
    # filled by resolve_config
    lr_note: str | None = None

    def as_dict(self) -> dict:
        return plain(dataclasses.asdict(self))


#: used where neither the user nor a recipe sets a value: a short single-machine run
BASIC = dict(epochs=10, batch_size=64, lr=1e-3, weight_decay=0.05, opt="adamw", momentum=0.9, warmup_epochs=0.0,
             warmup_lr=1e-6, min_lr=1e-5, clip_grad=None, drop_path=None, smoothing=0.1, mixup=0.0, cutmix=0.0,
             mixup_prob=1.0, mixup_switch_prob=0.5, aa=None, reprob=0.0, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
             hflip=0.5, aug_backend="auto", model_ema=False, model_ema_decay=0.9998, amp="off", channels_last=False,
             tf32="on", compile=False, grad_accum=1, seed=42, model_kwargs={}, workers=None, device="auto",
             overwrite=False, checkpoint_steps=0, progress=True)

_TIMM_AUG = dict(aa="rand-m9-mstd0.5-inc1", smoothing=0.1, mixup=0.8, cutmix=1.0, reprob=0.25)

#: The papers' ImageNet recipes. ``lr`` is the peak rate at the reference global batch
#: ``batch_ref``; it is scaled linearly to the actual global batch (batch x accumulation
#: x processes) unless --lr is given. ``drop_path``/``model_kwargs`` per model are in
#: ``_PER_MODEL``. Sources: the papers' training sections and their official repositories' READMEs.
RECIPES: dict[str, dict] = {
    # DFFormer paper + README: 300 ep, batch 1024, lr 5e-4 x batch/512, 20 warm-up epochs,
    # drop path 0.2 (S18), RandAugment, mixup 0.8, cutmix 1.0, random erasing 0.25
    "dfformer": dict(_TIMM_AUG, epochs=300, batch_ref=1024, lr=1e-3, weight_decay=0.05, warmup_epochs=20,
                     warmup_lr=1e-6, min_lr=1e-5, drop_path=0.2, img_size=224),
    # SPANet paper: 300 ep, batch 1024, lr 1e-3 x batch/1024, 5 warm-up epochs; MixUp, CutMix,
    # CutOut (random erasing), RandAugment, label smoothing, stochastic depth per size
    "spanet": dict(_TIMM_AUG, epochs=300, batch_ref=1024, lr=1e-3, weight_decay=0.05, warmup_epochs=5,
                   warmup_lr=1e-6, min_lr=1e-5, drop_path=0.1, img_size=224),
    # AFFNet: 300 ep, batch 1024 at 256^2 (paper); MobileViT-v2-style cvnets recipe: AdamW lr 2e-3
    # -> 2e-4 cosine, 20k warm-up iterations (~16 epochs at batch 1024), EMA 0.9995, mixup 0.2,
    # cutmix 1.0, RandAugment, random erasing 0.25, grad clip 10
    "affnet": dict(epochs=300, batch_ref=1024, lr=2e-3, weight_decay=0.05, warmup_epochs=16, warmup_lr=1e-6,
                   min_lr=2e-4, clip_grad=10.0, aa="rand-m9-mstd0.5", smoothing=0.1, mixup=0.2, cutmix=1.0,
                   reprob=0.25, model_ema=True, model_ema_decay=0.9995, drop_path=0.0, img_size=256),
    # GFNet (DeiT-style): lr 5e-4 x batch/512, 5 warm-up epochs, min lr 1e-5, clip grad 1,
    # RandAugment m9, mixup 0.8, cutmix 1.0, no random erasing, EMA decay 0.99996 when enabled
    "gfnet": dict(epochs=300, batch_ref=512, lr=5e-4, weight_decay=0.05, warmup_epochs=5, warmup_lr=1e-6,
                  min_lr=1e-5, clip_grad=1.0, aa="rand-m9-mstd0.5-inc1", smoothing=0.1, mixup=0.8, cutmix=1.0,
                  reprob=0.0, model_ema_decay=0.99996, drop_path=0.1, img_size=224),
    # MetaFormer baselines scripts: global batch 4096, AdamW lr 4e-3 (8e-3 CAFormer), 20 warm-up
    # epochs (5 for Identity/Rand/PoolFormerV2), drop path per model, timm's defaults otherwise
    "metaformer": dict(_TIMM_AUG, epochs=300, batch_ref=4096, lr=4e-3, weight_decay=0.05, warmup_epochs=20,
                       warmup_lr=1e-6, min_lr=1e-5, drop_path=0.2, img_size=224),
}

#: per-model settings of the recipes (glob patterns, first match wins)
_PER_MODEL: list[tuple[str, dict]] = [
    ("spanet_mx*", dict(drop_path=0.3)), ("spanet_m*", dict(drop_path=0.2)),
    ("spanet_bx*", dict(drop_path=0.5)), ("spanet_b*", dict(drop_path=0.3)), ("spanet_s*", dict(drop_path=0.1)),
    ("gfnet_ti", dict(drop_path=0.0)), ("gfnet_xs", dict(drop_path=0.0)),
    ("convformer_s18", dict(drop_path=0.2)), ("convformer_s36", dict(drop_path=0.3)),
    ("convformer_m36", dict(drop_path=0.4)), ("convformer_b36", dict(drop_path=0.6)),
    ("caformer_s18", dict(drop_path=0.15, lr=8e-3)),
    ("caformer_s36", dict(drop_path=0.3, lr=8e-3, model_kwargs={"head_dropout": 0.4})),
    ("caformer_m36", dict(drop_path=0.4, lr=8e-3, model_kwargs={"head_dropout": 0.4})),
    ("caformer_b36", dict(drop_path=0.6, lr=8e-3, model_kwargs={"head_dropout": 0.5})),
    ("identityformer_*", dict(drop_path=0.1, warmup_epochs=5)), ("randformer_*", dict(drop_path=0.1, warmup_epochs=5)),
    ("poolformerv2_*", dict(drop_path=0.1, warmup_epochs=5)),
]

#: options that may differ from the checkpoint when resuming
RESUME_MUTABLE = {"epochs", "workers", "device", "output", "compile", "val_batch_size", "progress", "checkpoint_steps",
                  "limit_val_batches", "resume", "overwrite", "tf32"}


def recipe_for(recipe: str, model: str | None) -> dict:
    """A recipe's settings with the per-model entries of ``model`` applied."""
    key = recipe.lower()
    if key not in RECIPES:
        raise OptionError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}", option="--recipe")
    out = dict(RECIPES[key])
    if model:
        try:
            name = registry.resolve_name(model)
        except registry.UnknownModelError:
            name = model.lower()
        for pat, extra in _PER_MODEL:
            if fnmatch.fnmatch(name, pat):
                extra = dict(extra)
                out["model_kwargs"] = dict(out.get("model_kwargs", {}), **extra.pop("model_kwargs", {}))
                out.update(extra)
                break
    return out


def resolve_config(cfg: TrainConfig, world_size: int = 1) -> TrainConfig:
    """Fill unset options: user value > recipe > basic default; scale a recipe's lr."""
    user = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None}
    recipe = recipe_for(cfg.recipe, cfg.model) if cfg.recipe else {}
    out = dict(BASIC)
    out.update({k: v for k, v in recipe.items() if k not in ("batch_ref", "img_size", "model_kwargs")})
    out.update(user)
    kw = dict(recipe.get("model_kwargs", {}))
    kw.update(user.get("model_kwargs") or {})
    out["model_kwargs"] = kw
    # the papers' input size applies to photos (imagefolder); CIFAR/synthetic keep their own size
    if cfg.img_size is None and recipe.get("img_size") and str(cfg.data or "").split(":")[0].lower() == "imagefolder":
        out["img_size"] = recipe["img_size"]
    res = TrainConfig(**{k: v for k, v in out.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    if isinstance(res.aa, str) and res.aa.lower() in ("", "none", "off"):
        res.aa = None
    res.scale, res.ratio = tuple(res.scale), tuple(res.ratio)
    _validate(res)
    global_batch = res.batch_size * res.grad_accum * world_size
    if cfg.lr is None and cfg.recipe:
        res.lr = recipe["lr"] * global_batch / recipe["batch_ref"]
        res.lr_note = (f"recipe {cfg.recipe}: lr {recipe['lr']:g} at global batch {recipe['batch_ref']} "
                       f"scaled to {res.lr:.4g} for global batch {global_batch}")
    return res


def _validate(c: TrainConfig) -> None:
    checks = [(c.epochs >= 1, "--epochs", "must be >= 1"), (c.batch_size >= 1, "--batch-size", "must be >= 1"),
              (c.grad_accum >= 1, "--grad-accum", "must be >= 1"), (c.lr > 0, "--lr", "must be > 0"),
              (c.warmup_epochs >= 0, "--warmup-epochs", "must be >= 0"),
              (0 <= c.smoothing < 1, "--smoothing", "must be in [0, 1)"),
              (c.mixup >= 0 and c.cutmix >= 0, "--mixup/--cutmix", "must be >= 0"),
              (0 <= c.reprob <= 1, "--reprob", "must be in [0, 1]"),
              (c.amp in ("off", "bf16", "fp16"), "--amp", "must be bf16, fp16 or off"),
              (c.tf32 in ("on", "off"), "--tf32", "must be on or off"),
              (c.opt in ("adamw", "sgd"), "--opt", "must be adamw or sgd"),
              (c.drop_path is None or 0 <= c.drop_path < 1, "--drop-path", "must be in [0, 1)"),
              (0 < c.model_ema_decay < 1, "--model-ema-decay", "must be in (0, 1)"),
              (c.val_batch_size is None or c.val_batch_size >= 1, "--validation-batch-size", "must be >= 1"),
              (c.workers is None or c.workers >= 0, "--workers", "must be >= 0"),
              (c.checkpoint_steps is None or c.checkpoint_steps >= 0, "--checkpoint-steps", "must be >= 0"),
              (c.limit_train_batches is None or c.limit_train_batches >= 1, "--limit-train-batches", "must be >= 1"),
              (c.limit_val_batches is None or c.limit_val_batches >= 1, "--limit-val-batches", "must be >= 1")]
    for ok, option, msg in checks:
        if not ok:
            raise OptionError(f"{option} {msg}", option=option)


def plain(o):
    """Plain python types (for weights_only checkpoints and JSON)."""
    if isinstance(o, dict):
        return {str(k): plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [plain(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return o


def hw(s) -> tuple:
    """``S`` or ``(H, W)`` (or ``[C, H, W]``) -> ``(H, W)``."""
    return (int(s), int(s)) if isinstance(s, (int, float)) else tuple(int(v) for v in s)[-2:]


def _same_model(a, b) -> bool:
    try:
        return registry.resolve_name(a) == registry.resolve_name(b)
    except registry.UnknownModelError:
        return a == b


def merge_resume(cfg: TrainConfig, ckpt: dict) -> TrainConfig:
    """The checkpoint's options, with the given ones that may change (``RESUME_MUTABLE``);
    any other given option must equal the checkpoint's."""
    stored = dict(ckpt["args"])
    stored.pop("spectrascope", None)
    stored.pop("world_size", None)
    for k, v in BASIC.items():            # options newer than the checkpoint: their defaults
        stored.setdefault(k, v)
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None and k != "lr_note"}
    for k, v in given.items():
        if k in RESUME_MUTABLE:
            stored[k] = v
            continue
        old = stored.get(k)
        same = plain(v) == plain(old) or (k == "model" and _same_model(v, old)) or (
            k == "img_size" and old is not None and hw(v) == hw(old))
        if not same:
            option = f"--{k.replace('_', '-')}"
            raise OptionError(f"{option} cannot change when resuming (checkpoint has {old!r}, got {v!r})",
                              option=option)
    fields_ = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in stored.items() if k in fields_})
