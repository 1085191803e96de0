"""Setting a training run up: options (from the command line, a recipe or the checkpoint it
resumes), data and transforms, the model, optimiser, schedule, AMP scaler and EMA, restored
state, DDP wrapping and the data loaders. Everything that can fail on bad input fails here,
before anything is written; the result is a ``Run`` that ``train.epoch`` and ``train.loop``
drive."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from spectrascope.engine.device import available_cpus, to_memory_format
from spectrascope.engine.dist import Dist, data_parallel
from spectrascope.engine.runner import AMP_DTYPES, RunConfig, Runner
from spectrascope.errors import OptionError
from spectrascope.io.bundles import load_data
from spectrascope.io.mixing import build_mixup
from spectrascope.io.transforms import AugmentConfig, TrainTransform, TransformedDataset, resolve_backend
from spectrascope.io.results import default_output_dir
from spectrascope.train.agree import agreed
from spectrascope.train.config import TrainConfig, merge_resume, resolve_config
from spectrascope.train.ema import ModelEma
from spectrascope.train.evaluate import eval_dataset, first_batches
from spectrascope.train.sampler import EpochBatchSampler, derive_seed
from spectrascope.train.schedule import CosineWarmup, make_optimizer
from spectrascope.train.state import load_training_checkpoint, prepare_output, set_rng_state
from spectrascope.zoo import registry
from spectrascope.zoo.build import preprocessing

__all__ = ["Run", "setup_run", "train_size"]

#: constructor arguments that other options set (so --model-kwargs may not)
_RESERVED = {"num_classes": "the head size follows the data's classes", "img_size": "use --img-size"}


@dataclass
class Run:
    """Everything one training run holds (see the module doc)."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    say: Callable
    ckpt: dict | None = None
    bundle: Any = None
    size: tuple = ()
    backend: str = "builtin"
    model: Any = None
    name: str = ""
    train_ds: Any = None
    val_ds: Any = None
    sampler: Any = None
    steps_per_epoch: int = 0
    out: Path | None = None
    opt: Any = None
    sched: Any = None
    scaler: Any = None
    ema: Any = None
    amp_dtype: Any = None
    train_model: Any = None
    ddp_model: Any = None
    mixup: Any = None
    loader: Any = None
    val_runner: Any = None
    start_epoch: int = 0
    start_step: int = 0
    start_sample: int = 0
    position: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"metric": None, "epoch": None})
    partial: dict = field(default_factory=lambda: {"loss_sum": 0.0, "updates": 0, "images": 0, "time": 0.0})
    args: dict = field(default_factory=dict)
    run_info: dict = field(default_factory=dict)


def train_size(cfg: TrainConfig, bundle) -> tuple[int, int]:
    """The training input size: --img-size, the data's own size, or the model card's."""
    if cfg.img_size is not None:
        s = cfg.img_size
        return (s, s) if isinstance(s, int) else tuple(int(v) for v in s)[-2:]
    if bundle.spec.kind == "synthetic":
        return bundle.train.cfg.height, bundle.train.cfg.width
    if bundle.spec.kind in ("cifar10", "cifar100"):
        return 32, 32
    card = registry.get_card(cfg.model) if not str(cfg.model).startswith("timm:") else None
    return tuple(card.default_input_size[1:]) if card else (224, 224)


def _config(cfg: TrainConfig, resume, world: int) -> tuple[TrainConfig, dict | None]:
    ckpt = None
    if resume:
        ckpt = load_training_checkpoint(resume)
        given_output = cfg.output
        cfg = merge_resume(cfg, ckpt)
        if given_output is None:       # the run continues where its checkpoint now is (moved or not)
            cfg.output = None
    cfg = resolve_config(cfg, world) if ckpt is None else cfg
    if not cfg.model or not cfg.data:
        raise OptionError("--model and --data are required (unless --resume)", option="--model")
    return cfg, ckpt


def _build_model(run: Run) -> None:
    cfg = run.cfg
    overrides = dict(cfg.model_kwargs or {})
    for key, why in _RESERVED.items():
        if key in overrides:
            raise OptionError(f"{key} cannot be overridden ({why})", option="--model-kwargs")
    build_kw = dict(overrides)
    if cfg.drop_path is not None:
        build_kw["drop_path_rate"] = cfg.drop_path
    torch.manual_seed(derive_seed(cfg.seed, 0))
    try:
        run.model = registry.create_model(cfg.model, num_classes=run.bundle.num_classes, img_size=run.size,
                                          **build_kw)
    except TypeError as exc:        # unknown constructor override
        raise OptionError(str(exc).splitlines()[0], option="--model-kwargs") from None
    run.name = getattr(run.model, "spectrascope_name", cfg.model)


def _data(run: Run) -> None:
    cfg = run.cfg
    run.bundle = load_data(cfg.data, cfg.img_size)
    run.size = train_size(cfg, run.bundle)
    cfg.img_size = list(run.size)
    run.backend = resolve_backend(cfg.aug_backend)
    _build_model(run)
    pre = preprocessing(run.model, run.size)
    aug = AugmentConfig(scale=tuple(cfg.scale), ratio=tuple(cfg.ratio), hflip=cfg.hflip, aa=cfg.aa, reprob=cfg.reprob,
                        backend=run.backend)
    run.train_ds = TransformedDataset(run.bundle.train, TrainTransform(
        run.size, pre["mean"], pre["std"], aug, geometric=run.bundle.geometric_ok, backend=run.backend))
    run.val_ds = eval_dataset(run.bundle.val, pre, run.bundle.center_crop)
    d = run.dist
    run.sampler = EpochBatchSampler(len(run.train_ds), cfg.batch_size, seed=cfg.seed, rank=d.rank, world=d.world)
    batches = run.sampler.num_batches if cfg.limit_train_batches is None else min(run.sampler.num_batches,
                                                                                   cfg.limit_train_batches)
    run.steps_per_epoch = batches // cfg.grad_accum
    if run.steps_per_epoch < 1:
        raise OptionError(f"one epoch has {batches} batches: fewer than --grad-accum {cfg.grad_accum}",
                          option="--grad-accum")


def _output(run: Run) -> None:
    """The run folder, checked and recorded by rank 0; every rank stops when rank 0 refuses it."""
    cfg, d, ckpt = run.cfg, run.dist, run.ckpt
    out = Path(cfg.output) if cfg.output else (Path(ckpt["_path"]).parent if ckpt else
                                                default_output_dir("train", run.name))
    if d.enabled:
        out = Path(d.broadcast_object(str(out)))
    resuming = ckpt is not None and Path(os.path.abspath(out)) == Path(os.path.abspath(Path(ckpt["_path"]).parent))
    inputs = [run.bundle.spec.path] if run.bundle.spec.path is not None else []
    agreed(d, lambda: prepare_output(out, cfg.overwrite, resuming=resuming, inputs=inputs,
                                     resumed=ckpt["_path"] if ckpt else None), only_main=True)
    run.out = out


def _optimisation(run: Run) -> None:
    cfg, model, device = run.cfg, run.model, run.device
    model.to(device)
    to_memory_format(model, bool(cfg.channels_last))
    run.opt = make_optimizer(model, cfg.opt, cfg.lr, cfg.weight_decay, cfg.momentum)
    spe = run.steps_per_epoch
    run.sched = CosineWarmup(run.opt, cfg.lr, cfg.epochs * spe, round(cfg.warmup_epochs * spe), cfg.warmup_lr,
                             cfg.min_lr)
    run.amp_dtype = AMP_DTYPES[cfg.amp]
    run.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    run.ema = ModelEma(model, cfg.model_ema_decay) if cfg.model_ema else None


def _restore(run: Run) -> None:
    ckpt = run.ckpt
    run.model.load_state_dict(ckpt["model"])
    if run.ema is not None and "model_ema" in ckpt:
        run.ema.load_state_dict(ckpt["model_ema"])
    run.opt.load_state_dict(ckpt["optimizer"])
    run.sched.load_state_dict(ckpt.get("scheduler", {}))
    if "scaler" in ckpt and ckpt["scaler"]:
        run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt.get("rng"))
    run.start_epoch = int(ckpt["epoch"])
    _resume_position(run, ckpt)
    run.history = list(ckpt.get("history", []))
    run.best = dict(ckpt.get("best", run.best))
    run.partial = dict(ckpt.get("partial", run.partial)) if run.start_step else run.partial
    run.say(f"resuming {ckpt['_path']} at epoch {run.start_epoch + 1}, update {run.start_step}")


def _resume_position(run: Run, ckpt: dict) -> None:
    """Where the resumed epoch continues: its global sample position (``sample``; for older
    checkpoints the updates times their global batch), and the update of this world size
    from which the rest of the epoch -- the samples not yet seen -- takes the remaining updates."""
    cfg, args = run.cfg, ckpt["args"]
    step, was = int(ckpt.get("step", 0)), int(args.get("world_size", 1))
    sample = ckpt.get("sample")
    if sample is None:
        sample = step * int(args.get("batch_size") or cfg.batch_size) * int(args.get("grad_accum") or 1) * was
    run.start_sample = int(sample) if step else 0
    per_update = cfg.batch_size * cfg.grad_accum * run.dist.world
    left = max(0, run.steps_per_epoch * per_update - run.start_sample) // per_update
    run.start_step = run.steps_per_epoch - left if step else 0
    if was != run.dist.world:
        run.say(f"note: the run used {was} process(es) and resumes on {run.dist.world}: the global batch changes "
                f"from {cfg.batch_size * cfg.grad_accum * was} to {per_update}; the epoch continues after its first "
                f"{run.start_sample} samples (update {run.start_step} of {run.steps_per_epoch} at this size)")


def _loaders(run: Run) -> None:
    cfg, d, device = run.cfg, run.dist, run.device
    run.train_model = run.model
    if d.enabled:
        run.train_model = data_parallel(run.model, device)
    run.mixup = build_mixup(run.backend, cfg.mixup, cfg.cutmix, cfg.mixup_prob, cfg.mixup_switch_prob, cfg.smoothing,
                            run.bundle.num_classes)
    workers = cfg.workers if cfg.workers is not None else (
        min(8, max(1, available_cpus() // d.local_world)) if device.type == "cuda" else 0)
    run.loader = torch.utils.data.DataLoader(run.train_ds, batch_sampler=run.sampler, num_workers=workers,
                                             pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    val_batch = cfg.val_batch_size or cfg.batch_size
    # --limit-val-batches counts batches per process (each rank evaluates that many)
    limit = None if cfg.limit_val_batches is None else cfg.limit_val_batches * d.world
    run.val_ds = first_batches(run.val_ds, limit, val_batch)
    run.val_runner = Runner(RunConfig(device=device, batch_size=val_batch, amp=cfg.amp,
                                      channels_last=bool(cfg.channels_last), workers=workers, tf32=cfg.tf32), dist=d)
    run.ddp_model = run.train_model
    if cfg.compile:
        run.train_model = torch.compile(run.train_model)


def _describe(run: Run) -> None:
    cfg, d, b = run.cfg, run.dist, run.bundle
    spec_meta = {"model": run.name, "num_classes": b.num_classes, "img_size": list(run.size),
                 "overrides": dict(cfg.model_kwargs or {}), "has_ema": run.ema is not None, "classes": list(b.classes)}
    run.args = dict(cfg.as_dict(), spectrascope=spec_meta, world_size=d.world)
    run.run_info = {"output": str(run.out), "world_size": d.world, "device": str(run.device),
                    "aug_backend": run.backend, "steps_per_epoch": run.steps_per_epoch,
                    "global_batch": cfg.batch_size * cfg.grad_accum * d.world, "data_info": b.info,
                    "train_size": len(b.train), "val_size": len(b.val)}


def _planned(cfg: TrainConfig, resume, d: Dist, device: torch.device, say: Callable) -> Run:
    """Options, checkpoint, data and model of a run (no collective: every rank on its own)."""
    cfg, ckpt = _config(cfg, resume, d.world)
    run = Run(cfg=cfg, dist=d, device=device, say=say, ckpt=ckpt)
    _data(run)
    return run


def _placed(run: Run) -> None:
    """Model on the device, optimiser, schedule, scaler, EMA and the resumed state."""
    _optimisation(run)
    if run.ckpt is not None:
        _restore(run)


def setup_run(cfg: TrainConfig, resume, d: Dist, device: torch.device, say: Callable) -> Run:
    """A ``Run`` ready for its first epoch (resumed state restored); the run folder checked. A
    failure on any rank (a data set or checkpoint one node cannot read) stops every rank."""
    run = agreed(d, lambda: _planned(cfg, resume, d, device, say))
    _output(run)
    if not run.bundle.geometric_ok and run.cfg.aa:
        say(f"note: {run.bundle.spec.kind} labels depend on scale and orientation: only the photometric "
            "RandAugment ops are applied (no crops, flips, rotations, shears or translations)")
    agreed(d, lambda: _placed(run))
    _loaders(run)
    _describe(run)
    return run
