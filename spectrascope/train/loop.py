"""Training loop: AdamW + cosine schedule with warm-up, label smoothing, mixup/cutmix,
drop path, EMA, AMP (bf16, or fp16 with a GradScaler; FFT mixers stay float32),
channels-last, ``torch.compile``, gradient accumulation and DDP through ``torchrun``.

Reproducibility and resuming: every random draw is derived from ``(seed, epoch, position)``
(data order and per-sample augmentation) or ``(seed, epoch, micro-step, rank)`` (mixup,
drop path), so a run resumed from a checkpoint -- written at the end of every epoch, every
``checkpoint_steps`` updates and on SIGTERM/SIGINT -- continues exactly as the
uninterrupted run would (bitwise on CPU). Checkpoints are written to a temporary file and
renamed, so a kill at any moment leaves the previous ``last.pth`` intact. Only rank 0
writes. Checkpoints hold plain types only and load with ``torch.load(weights_only=True)``,
``spectrascope.create_model(name, checkpoint=...)`` and every analysis command
(``model_spec_from_checkpoint`` gives the architecture to rebuild).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spectrascope.zoo import registry
from spectrascope.zoo.build import (CheckpointModelSpec, create_model_from_checkpoint,  # noqa: F401  (re-exported)
                                    model_spec_from_checkpoint)
from spectrascope.zoo.checkpoint import CheckpointError
from spectrascope.io.images import DataError
from spectrascope.io.results import OutputExistsError, default_output_dir, provenance, write_csv, write_json
from spectrascope.errors import TrainingError, NonFiniteLossError, TrainingInterrupted

CHECKPOINT_FORMAT = "spectrascope-train"
CHECKPOINT_VERSION = 1





# ---------------------------------------------------------------------------- configuration


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
        return _plain(dataclasses.asdict(self))


#: used where neither the user nor a recipe sets a value: a short single-machine run
BASIC = dict(epochs=10, batch_size=64, lr=1e-3, weight_decay=0.05, opt="adamw", momentum=0.9, warmup_epochs=0.0,
             warmup_lr=1e-6, min_lr=1e-5, clip_grad=None, drop_path=None, smoothing=0.1, mixup=0.0, cutmix=0.0,
             mixup_prob=1.0, mixup_switch_prob=0.5, aa=None, reprob=0.0, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
             hflip=0.5, aug_backend="auto", model_ema=False, model_ema_decay=0.9998, amp="off", channels_last=False,
             compile=False, grad_accum=1, seed=42, model_kwargs={}, workers=None, device="auto", overwrite=False,
             checkpoint_steps=0, progress=True)

_TIMM_AUG = dict(aa="rand-m9-mstd0.5-inc1", smoothing=0.1, mixup=0.8, cutmix=1.0, reprob=0.25)

#: The papers' ImageNet recipes. ``lr`` is the peak rate at the reference global batch
#: ``batch_ref``; it is scaled linearly to the actual global batch (batch x accumulation
#: x processes) unless --lr is given. ``drop_path``/``model_kwargs`` per model are in
#: ``_PER_MODEL``. Sources: ../shared/research/architectures.md §2.6, §3.6, §4.7, §5.4, §6
#: and the papers.
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
                  "limit_val_batches", "resume", "overwrite"}


def recipe_for(recipe: str, model: str | None) -> dict:
    import fnmatch
    key = recipe.lower()
    if key not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
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
    global_batch = res.batch_size * res.grad_accum * world_size
    if cfg.lr is None and cfg.recipe:
        res.lr = recipe["lr"] * global_batch / recipe["batch_ref"]
        res.lr_note = (f"recipe {cfg.recipe}: lr {recipe['lr']:g} at global batch {recipe['batch_ref']} "
                       f"scaled to {res.lr:.4g} for global batch {global_batch}")
    _validate(res)
    return res


def _validate(c: TrainConfig) -> None:
    checks = [(c.epochs >= 1, "--epochs must be >= 1"), (c.batch_size >= 1, "--batch-size must be >= 1"),
              (c.grad_accum >= 1, "--grad-accum must be >= 1"), (c.lr > 0, "--lr must be > 0"),
              (c.warmup_epochs >= 0, "--warmup-epochs must be >= 0"), (0 <= c.smoothing < 1, "--smoothing in [0, 1)"),
              (c.mixup >= 0 and c.cutmix >= 0, "--mixup/--cutmix must be >= 0"), (0 <= c.reprob <= 1, "--reprob in [0, 1]"),
              (c.amp in ("off", "bf16", "fp16"), "--amp must be bf16, fp16 or off"),
              (c.opt in ("adamw", "sgd"), "--opt must be adamw or sgd"),
              (c.drop_path is None or 0 <= c.drop_path < 1, "--drop-path in [0, 1)"),
              (0 < c.model_ema_decay < 1, "--model-ema-decay in (0, 1)")]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


def _plain(o):
    """Plain python types (for weights_only checkpoints and JSON)."""
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return o


# ---------------------------------------------------------------------------- seeds and sampling


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SeedSequence hashing: independent streams per tuple)."""
    a, b = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFF for p in parts]).generate_state(2, np.uint32)
    return int((int(a) << 31) ^ int(b)) & 0x7FFFFFFFFFFFFFFF


_TAG_DATA, _TAG_ITEM, _TAG_STEP = 1, 2, 3


class EpochBatchSampler:
    """Batches of ``(index, seed)`` for one rank: a permutation of the data set from
    ``(seed, epoch)``, padded to a multiple of the world size (DistributedSampler style),
    rank ``r`` taking positions ``r, r + world, ...``; full batches only. The global batch
    ``s`` is the contiguous block of positions ``[s*B*world, (s+1)*B*world)`` whatever the
    world size, and each item's augmentation seed comes from its global position."""

    def __init__(self, n: int, batch_size: int, *, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / world)
        self.num_batches = self.per_rank // batch_size
        if self.num_batches < 1:
            raise DataError(f"the training split has {n} images: fewer than one batch of {batch_size} "
                            f"per process ({world} process(es)); lower --batch-size")

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, _TAG_DATA, self.epoch))
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self.per_rank * self.world
        perm = (perm * math.ceil(total / self.n))[:total]
        for b in range(self.start, self.num_batches):
            batch = []
            for j in range(self.batch_size):
                pos = (b * self.batch_size + j) * self.world + self.rank
                batch.append((perm[pos], derive_seed(self.seed, _TAG_ITEM, self.epoch, pos)))
            yield batch


class ShardSampler:
    """Evaluation: rank ``r`` takes indices ``r, r + world, ...`` in batches (no padding, so
    summed metrics over ranks are exact)."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, limit_batches: int | None = None):
        self.idx = list(range(rank, n, world))
        self.batch_size = batch_size
        self.limit = limit_batches

    def __iter__(self):
        k = 0
        for i in range(0, len(self.idx), self.batch_size):
            if self.limit is not None and k >= self.limit:
                return
            yield self.idx[i:i + self.batch_size]
            k += 1

    def __len__(self):
        n = math.ceil(len(self.idx) / self.batch_size)
        return n if self.limit is None else min(n, self.limit)


# ---------------------------------------------------------------------------- optimisation


class CosineWarmup:
    """Per-update schedule: linear warm-up from ``warmup_lr`` over ``warmup_steps``, then
    cosine decay to ``min_lr`` at ``total_steps``."""

    def __init__(self, optimizer, lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr: float = 1e-6,
                 min_lr: float = 1e-5):
        self.optimizer, self.base_lr = optimizer, lr
        self.total, self.warmup = max(1, total_steps), max(0, min(warmup_steps, total_steps))
        self.warmup_lr, self.min_lr = min(warmup_lr, lr), min(min_lr, lr)
        self.last_step = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t))

    def step_to(self, step: int) -> float:
        lr = self.lr_at(step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.last_step = step
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "total": self.total, "warmup": self.warmup, "warmup_lr": self.warmup_lr,
                "min_lr": self.min_lr, "last_step": self.last_step}

    def load_state_dict(self, d: dict) -> None:
        self.last_step = int(d.get("last_step", 0))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """timm's rule: no weight decay for biases, 1-D parameters (norms, scales) and the names
    in ``model.no_weight_decay()``."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


class ModelEma:
    """Exponential moving average of a model's parameters and buffers (timm ModelEmaV2)."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.is_floating_point():
                e.lerp_(m.detach(), 1.0 - self.decay)
            else:
                e.copy_(m)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)


# ---------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    enabled: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str) -> tuple[Dist, torch.device]:
    """Read torchrun's environment; nccl on CUDA, gloo on CPU."""
    from spectrascope.engine.device import resolve_device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_pref)
    import torch.distributed as dist
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)),
             int(os.environ.get("LOCAL_WORLD_SIZE", world)), True)
    dev = resolve_device(device_pref)
    if dev.type == "cuda":
        dev = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(dev)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // d.local_world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return d, dev


def _all_reduce(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        import torch.distributed as dist
        dist.all_reduce(t)
    return t


# ---------------------------------------------------------------------------- checkpoints


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then fsync and rename over ``path``: never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_checkpoint(path) -> dict:
    """A spectrascope training checkpoint (file, or a run directory holding last.pth)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable training checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a spectrascope training checkpoint (cannot resume from it)")
    obj["_path"] = str(path)
    return obj


def _rng_state() -> dict:
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    st = {"torch": torch.get_rng_state(), "python": _plain(random.getstate()),
          "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                    "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return st


def _set_rng_state(st: dict) -> None:
    if not st:
        return
    torch.set_rng_state(st["torch"])
    v, inner, g = st["python"]
    random.setstate((v, tuple(inner), g))
    n = st["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(st["cuda"])


# ---------------------------------------------------------------------------- helpers


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def _amp_dtype(amp: str):
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose target is in the top-k (k clipped to the number of classes)."""
    maxk = min(max(ks), logits.shape[-1])
    top = logits.topk(maxk, dim=-1).indices
    hit = top.eq(target.view(-1, 1))
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def _write_json_atomic(path: Path, payload: dict) -> None:
    atomic_write(path, lambda tmp: write_json(tmp, payload))


def _write_csv_atomic(path: Path, rows: list[dict]) -> None:
    names: list[str] = []
    for r in rows:
        names += [k for k in r if k not in names]
    atomic_write(path, lambda tmp: write_csv(tmp, rows, names))


class _StopFlag:
    """SIGTERM/SIGINT set a flag checked at the next update; a second SIGINT aborts."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def __enter__(self):
        import threading
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------- the run


def train(cfg: TrainConfig, *, resume: str | None = None, log=None) -> dict:
    """Train (or resume) and return the results dict also written to ``results.json``."""
    from spectrascope.io.datasets import (AugmentConfig, EvalTransform, TrainTransform, TransformedDataset, build_mixup, load_data,
                           resolve_backend)
    from spectrascope.train.evaluate import evaluate_loader
    from spectrascope.zoo.build import preprocessing

    dist_info, device = init_distributed(cfg.device or "auto")
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say = say if dist_info.main else (lambda msg: None)
    ckpt = None
    if resume:
        ckpt = load_training_checkpoint(resume)
        cfg = _merge_resume(cfg, ckpt)
    cfg = resolve_config(cfg, dist_info.world) if ckpt is None else cfg
    if not cfg.model or not cfg.data:
        raise ValueError("--model and --data are required (unless --resume)")

    # --- everything that can fail on bad input happens before anything is written
    bundle = load_data(cfg.data, cfg.img_size)
    size = _train_size(cfg, bundle)
    cfg.img_size = list(size)
    backend = resolve_backend(cfg.aug_backend)
    overrides = dict(cfg.model_kwargs or {})
    build_kw = dict(overrides)
    if cfg.drop_path is not None:
        build_kw["drop_path_rate"] = cfg.drop_path
    torch.manual_seed(derive_seed(cfg.seed, 0))
    try:
        model = registry.create_model(cfg.model, num_classes=bundle.num_classes, img_size=size, **build_kw)
    except TypeError as exc:        # unknown constructor override
        raise ValueError(str(exc)) from None
    name = getattr(model, "spectrascope_name", cfg.model)
    pre = preprocessing(model, size)
    aug = AugmentConfig(scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, aa=cfg.aa, reprob=cfg.reprob,
                        backend=backend)
    train_ds = TransformedDataset(bundle.train, TrainTransform(size, pre["mean"], pre["std"], aug,
                                                               geometric=bundle.geometric_ok, backend=backend))
    val_ds = TransformedDataset(bundle.val, EvalTransform(size, pre["mean"], pre["std"], pre["crop_pct"],
                                                          center_crop=bundle.center_crop))
    sampler = EpochBatchSampler(len(train_ds), cfg.batch_size, seed=cfg.seed, rank=dist_info.rank,
                                world=dist_info.world)
    batches = sampler.num_batches if cfg.limit_train_batches is None else min(sampler.num_batches,
                                                                                 cfg.limit_train_batches)
    steps_per_epoch = batches // cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"one epoch has {batches} batches: fewer than --grad-accum {cfg.grad_accum}")
    out = Path(cfg.output) if cfg.output else (Path(ckpt["_path"]).parent if ckpt else
                                                  default_output_dir("train", name))
    if dist_info.main:
        _prepare_output(out, cfg.overwrite, resuming=ckpt is not None)
    if not bundle.geometric_ok and cfg.aa:
        say(f"note: {bundle.spec.kind} labels depend on scale and orientation: only the photometric "
            "RandAugment ops are applied (no crops, flips, rotations, shears or translations)")

    # --- model, optimiser, schedule
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    groups = param_groups(model, cfg.weight_decay)
    if cfg.opt == "adamw":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    else:
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    sched = CosineWarmup(opt, cfg.lr, cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch),
                         cfg.warmup_lr, cfg.min_lr)
    amp_dtype = _amp_dtype(cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    ema = ModelEma(model, cfg.model_ema_decay) if cfg.model_ema else None
    start_epoch, start_step, history, best = 0, 0, [], {"metric": None, "epoch": None}
    partial = {"loss_sum": 0.0, "updates": 0, "images": 0, "time": 0.0}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ema is not None and "model_ema" in ckpt:
            ema.load_state_dict(ckpt["model_ema"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt.get("scheduler", {}))
        if "scaler" in ckpt and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt.get("rng"))
        start_epoch, start_step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
        history = list(ckpt.get("history", []))
        best = dict(ckpt.get("best", best))
        partial = dict(ckpt.get("partial", partial)) if start_step else partial
        say(f"resuming {ckpt['_path']} at epoch {start_epoch + 1}, update {start_step}")
        was = ckpt["args"].get("world_size", 1)
        if was != dist_info.world:
            say(f"note: the run used {was} process(es) and resumes on {dist_info.world}: the global batch "
                "changes, so it will not continue exactly as before")
    train_model = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    mixup = build_mixup(backend, cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob, cfg.smoothing,
                        bundle.num_classes)

    workers = cfg.workers if cfg.workers is not None else (
        min(8, max(1, (os.cpu_count() or 1) // dist_info.local_world)) if device.type == "cuda" else 0)
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    val_loader = torch.utils.data.DataLoader(
        val_ds, batch_sampler=ShardSampler(len(val_ds), cfg.val_batch_size or cfg.batch_size, dist_info.rank,
                                           dist_info.world, cfg.limit_val_batches),
        num_workers=workers, pin_memory=device.type == "cuda")

    spec_meta = {"model": name, "num_classes": bundle.num_classes, "img_size": list(size), "overrides": overrides,
                 "has_ema": ema is not None, "classes": list(bundle.classes)}
    args = dict(cfg.as_dict(), spectrascope=spec_meta, world_size=dist_info.world)
    run_info = {"output": str(out), "world_size": dist_info.world, "device": str(device), "aug_backend": backend,
                "steps_per_epoch": steps_per_epoch, "global_batch": cfg.batch_size * cfg.grad_accum * dist_info.world,
                "data_info": bundle.info, "train_size": len(bundle.train), "val_size": len(bundle.val)}
    if dist_info.main:
        _write_json_atomic(out / "args.json", dict(args, run=run_info))
        if cfg.lr_note:
            say(cfg.lr_note)
        say(f"training {name} on {bundle.spec.text} ({len(bundle.train)} train / {len(bundle.val)} val images, "
            f"{bundle.num_classes} classes, {size[0]}x{size[1]}) for {cfg.epochs} epochs x {steps_per_epoch} "
            f"updates on {device}{f' x {dist_info.world}' if dist_info.enabled else ''} -> {out}")

    def make_state(epoch: int, step: int, part: dict) -> dict:
        st = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": model.state_dict(),
              "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
              "epoch": epoch, "step": step, "rng": _rng_state(), "args": args, "model_name": name, "arch": name,
              "history": history, "best": best, "partial": part}
        if ema is not None:
            st["model_ema"] = ema.state_dict()
        return st

    def write_results(status: str, wall: float) -> dict:
        res = provenance(command="train", model=name, device=device, wall_time_s=wall, random_weights=False,
                         extra={"status": status, "config": cfg.as_dict(), "run": run_info, "history": history,
                                "best": best, "final": history[-1] if history else None,
                                "checkpoints": {"last": str(out / "last.pth"),
                                                "best": str(out / "best.pth") if best["epoch"] is not None else None}})
        if dist_info.main:
            _write_csv_atomic(out / "metrics.csv", history) if history else None
            _write_json_atomic(out / "results.json", res)
        return res

    ddp_model = train_model
    if cfg.compile:
        train_model = torch.compile(train_model)

    def run_epoch(epoch: int, skip: int, part: dict | None, stop: _StopFlag) -> dict:
        from tqdm import tqdm
        model.train()
        sampler.set_epoch(epoch, skip * cfg.grad_accum)
        stats = dict(part) if part else {"loss_sum": 0.0, "updates": 0, "images": 0, "time": 0.0}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}", file=sys.stderr,
                   disable=not (dist_info.main and cfg.progress), leave=False, dynamic_ncols=True, mininterval=1.0)
        it = iter(loader)
        t0 = time.perf_counter()
        step, lr = skip, sched.lr_at(epoch * steps_per_epoch + skip)
        loss_acc = torch.zeros((), device=device)
        while step < steps_per_epoch:
            lr = sched.step_to(epoch * steps_per_epoch + step)
            images = 0
            for k in range(cfg.grad_accum):
                x, y = next(it)[:2]
                seed = derive_seed(cfg.seed, _TAG_STEP, epoch, step * cfg.grad_accum + k, dist_info.rank)
                torch.manual_seed(seed)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                target = None
                if mixup is not None:
                    x, target = mixup(x, y, np.random.default_rng(seed))
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                sync = ddp_model.no_sync() if dist_info.enabled and k < cfg.grad_accum - 1 else contextlib.nullcontext()
                with sync:
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        logits = train_model(x)
                    logits = logits.float()
                    loss = soft_cross_entropy(logits, target) if target is not None else \
                        F.cross_entropy(logits, y, label_smoothing=cfg.smoothing)
                    scaler.scale(loss / cfg.grad_accum).backward()
                loss_acc += loss.detach()
                images += x.shape[0]
            check = torch.stack([loss_acc / cfg.grad_accum, torch.tensor(float(bool(stop.signum)), device=device)])
            loss_val, stop_now = _all_reduce(check, dist_info).tolist()
            loss_val /= dist_info.world
            loss_acc.zero_()
            if not math.isfinite(loss_val):
                bar.close()
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss_val}) at epoch {epoch + 1}, update {step + 1} (lr {lr:.3g}); "
                    f"stopped without applying it. The last good checkpoint is {out / 'last.pth'} if one was "
                    "written; try a lower --lr, --clip-grad, more --warmup-epochs or --amp bf16/off")
            if cfg.clip_grad:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            step += 1
            stats["loss_sum"] += loss_val
            stats["updates"] += 1
            stats["images"] += images * dist_info.world
            bar.update(1)
            if step % 10 == 0 or step == steps_per_epoch:
                bar.set_postfix(loss=f"{stats['loss_sum'] / stats['updates']:.4f}", lr=f"{lr:.2e}", refresh=False)
            if step < steps_per_epoch:
                periodic = cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0
                if stop_now > 0 or periodic:
                    part_now = dict(stats, time=stats["time"] + time.perf_counter() - t0)
                    if dist_info.main:
                        save_checkpoint(out / "last.pth", make_state(epoch, step, part_now))
                    if stop_now > 0:
                        bar.close()
                        _interrupt(stop.signum or signal.SIGTERM, out, epoch, step)
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = stats["time"] + time.perf_counter() - t0
        ev = evaluate_loader(model, val_loader, device, amp_dtype, cfg.channels_last, dist_info)
        peak, kind = _peak_memory_mb(device)
        row = {"epoch": epoch + 1, "train_loss": stats["loss_sum"] / max(1, stats["updates"]), "val_loss": ev["loss"],
               "top1": ev["top1"], "top5": ev["top5"], "lr": lr, "throughput_img_s": stats["images"] / max(train_time, 1e-9),
               "epoch_time_s": train_time, "eval_time_s": ev["time_s"], "peak_mem_mb": peak, "peak_mem_kind": kind}
        if ema is not None:
            ev_ema = evaluate_loader(ema.module, val_loader, device, amp_dtype, cfg.channels_last, dist_info)
            row.update(ema_val_loss=ev_ema["loss"], ema_top1=ev_ema["top1"], ema_top5=ev_ema["top5"])
        return row

    wall0 = time.perf_counter()
    status = "running"
    try:
        with _StopFlag() as stop:
            for epoch in range(start_epoch, cfg.epochs):
                skip = start_step if epoch == start_epoch else 0
                row = run_epoch(epoch, skip, partial if skip else None, stop)
                history.append(row)
                metric = row.get("ema_top1", row["top1"])
                is_best = best["metric"] is None or metric > best["metric"]
                if is_best:
                    best = {"metric": metric, "epoch": epoch + 1, "top1": row["top1"], "top5": row["top5"]}
                if dist_info.main:
                    state = make_state(epoch + 1, 0, {})
                    if is_best:          # best first: a kill in between re-runs this epoch identically
                        save_checkpoint(out / "best.pth", state)
                    save_checkpoint(out / "last.pth", state)
                    del state
                    write_results("running", time.perf_counter() - wall0)
                say(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}  val loss "
                    f"{row['val_loss']:.4f}  top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}"
                    + (f"  ema top-1 {row['ema_top1']:.2f}" if 'ema_top1' in row else "")
                    + f"  lr {row['lr']:.3g}  {row['throughput_img_s']:.1f} img/s  peak {row['peak_mem_mb']:.0f} MB")
                if _agree(stop.signum, device, dist_info) and epoch + 1 < cfg.epochs:
                    _interrupt(stop.signum, out, epoch + 1, 0)
        status = "completed"
    except NonFiniteLossError:
        status = "failed: non-finite loss"
        raise
    except TrainingInterrupted:
        status = "interrupted"
        raise
    finally:
        if status != "running" and (history or status == "completed"):
            results = write_results(status, time.perf_counter() - wall0)
        if dist_info.enabled:
            import torch.distributed as dist
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    return results


def _train_size(cfg: TrainConfig, bundle) -> tuple[int, int]:
    if cfg.img_size is not None:
        s = cfg.img_size
        return (s, s) if isinstance(s, int) else tuple(int(v) for v in s)[-2:]
    if bundle.spec.kind == "synthetic":
        return bundle.train.cfg.height, bundle.train.cfg.width
    if bundle.spec.kind in ("cifar10", "cifar100"):
        return 32, 32
    card = registry.get_card(cfg.model) if not str(cfg.model).startswith("timm:") else None
    return tuple(card.default_input_size[1:]) if card else (224, 224)


def _prepare_output(out: Path, overwrite: bool, resuming: bool = False) -> None:
    if not resuming and (out.is_file() or (out.is_dir() and any(out.iterdir()))):
        if not overwrite:
            raise OutputExistsError(f"output directory {out} exists and is not empty "
                                    "(use --overwrite, or --resume to continue a run)")
        for nm in ("last.pth", "best.pth", "metrics.csv", "results.json", "args.json"):
            with contextlib.suppress(FileNotFoundError):
                (out / nm).unlink()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp-*"):     # left by a kill during a save
        with contextlib.suppress(OSError):
            stale.unlink()


def _merge_resume(cfg: TrainConfig, ckpt: dict) -> TrainConfig:
    stored = dict(ckpt["args"])
    stored.pop("spectrascope", None)
    stored.pop("world_size", None)
    given = {k: v for k, v in dataclasses.asdict(cfg).items() if v is not None and k != "lr_note"}
    for k, v in given.items():
        if k in RESUME_MUTABLE:
            stored[k] = v
            continue
        old = stored.get(k)
        same = _plain(v) == _plain(old) or (k == "model" and _same_model(v, old)) or (
            k == "img_size" and old is not None and _hw(v) == _hw(old))
        if not same:
            raise ValueError(f"--{k.replace('_', '-')} cannot change when resuming "
                             f"(checkpoint has {old!r}, got {v!r})")
    fields_ = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in stored.items() if k in fields_})


def _hw(s) -> tuple:
    return (int(s), int(s)) if isinstance(s, (int, float)) else tuple(int(v) for v in s)[-2:]


def _same_model(a, b) -> bool:
    try:
        return registry.resolve_name(a) == registry.resolve_name(b)
    except Exception:
        return a == b


def _agree(signum: int, device, d: Dist) -> bool:
    """True on every rank when any rank received a stop signal."""
    if not d.enabled:
        return bool(signum)
    t = torch.tensor([float(bool(signum))], device=device)
    return bool(_all_reduce(t, d).item() > 0)


def _interrupt(signum: int, out: Path, epoch: int, step: int):
    raise TrainingInterrupted(
        f"stopped by {signal.Signals(signum).name} at epoch {epoch + (1 if step else 0)} update {step}; "
        f"checkpoint {out / 'last.pth'} (continue with --resume {out / 'last.pth'})", signum)


__all__ = ["TrainConfig", "resolve_config", "RECIPES", "train", "TrainingError", "NonFiniteLossError",
           "TrainingInterrupted", "model_spec_from_checkpoint", "create_model_from_checkpoint",
           "load_training_checkpoint", "CheckpointModelSpec", "EpochBatchSampler", "CosineWarmup", "ModelEma",
           "derive_seed", "accuracy_counts"]
