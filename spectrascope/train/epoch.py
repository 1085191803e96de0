"""One training epoch: micro-batches (mixup/cutmix, channels-last, autocast, gradient
accumulation with DDP's ``no_sync``), the loss check shared by every rank (a non-finite
loss stops the run before the update is applied), clipping, the optimiser and EMA
updates, periodic and on-signal checkpoints, and the evaluation row that ends the epoch.

The position inside the epoch is counted in global samples (``Run.position``: every
update takes ``batch x grad_accum x world`` of them), so a checkpoint written mid-epoch
resumes on any number of processes with the samples not yet seen. A stop signal is
agreed by every rank after each update and after each evaluation batch; a stop during the
evaluation saves the trained epoch (``step == steps_per_epoch``) and the resumed run
evaluates it."""
from __future__ import annotations

import contextlib
import math
import resource
import signal
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spectrascope.engine.device import to_memory_format
from spectrascope.errors import NonFiniteError, NonFiniteLossError
from spectrascope.train.agree import agreed
from spectrascope.train.evaluate import EvaluationStopped, evaluate_model
from spectrascope.train.metrics import soft_cross_entropy
from spectrascope.train.prepare import Run
from spectrascope.train.sampler import TAG_STEP, derive_seed
from spectrascope.train.state import save_checkpoint
from spectrascope.train.stop import StopFlag, interrupt

__all__ = ["run_epoch", "peak_memory_mb"]


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_max_rss"


def _fetch(run: Run, it) -> list:
    """The ``grad_accum`` micro-batches of one update, loaded before any forward: a sample that
    cannot be read on one rank stops every rank here, not in DDP's gradient all-reduce."""
    return agreed(run.dist, lambda: [next(it)[:2] for _ in range(run.cfg.grad_accum)])


def _micro_batches(run: Run, it, epoch: int, step: int, loss_acc: torch.Tensor) -> int:
    """Forward and backward of the ``grad_accum`` micro-batches of one update; returns the images seen."""
    cfg, d, device = run.cfg, run.dist, run.device
    images = 0
    for k, (x, y) in enumerate(_fetch(run, it)):
        seed = derive_seed(cfg.seed, TAG_STEP, epoch, step * cfg.grad_accum + k, d.rank)
        torch.manual_seed(seed)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        target = None
        if run.mixup is not None:
            x, target = run.mixup(x, y, np.random.default_rng(seed))
        x = to_memory_format(x, bool(cfg.channels_last))
        sync = run.ddp_model.no_sync() if d.enabled and k < cfg.grad_accum - 1 else contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
                logits = run.train_model(x)
            logits = logits.float()
            loss = soft_cross_entropy(logits, target) if target is not None else \
                F.cross_entropy(logits, y, label_smoothing=cfg.smoothing)
            run.scaler.scale(loss / cfg.grad_accum).backward()
        loss_acc += loss.detach()
        images += x.shape[0]
    return images


def _agree_on_loss(run: Run, loss_acc: torch.Tensor, stop: StopFlag) -> tuple[float, float]:
    """The mean loss over ranks and whether any rank was asked to stop (one all-reduce)."""
    check = torch.stack([loss_acc / run.cfg.grad_accum, torch.tensor(float(bool(stop.signum)), device=run.device)])
    loss_val, stop_now = run.dist.all_reduce(check).tolist()
    return loss_val / run.dist.world, stop_now


def _apply_update(run: Run) -> None:
    cfg = run.cfg
    if cfg.clip_grad:
        run.scaler.unscale_(run.opt)
        nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=not run.dist.enabled)      # under DDP the gradients are its buckets
    if run.ema is not None:
        run.ema.update(run.model)


def _bar(run: Run, epoch: int, skip: int):
    from tqdm import tqdm
    return tqdm(total=run.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{run.cfg.epochs}", file=sys.stderr,
                disable=not (run.dist.main and run.cfg.progress), leave=False, dynamic_ncols=True, mininterval=1.0)


def _mid_epoch_checkpoint(run: Run, epoch: int, step: int, stats: dict, t0: float, stop_now: float, stop, bar,
                          make_state) -> None:
    periodic = run.cfg.checkpoint_steps and step % run.cfg.checkpoint_steps == 0
    if stop_now > 0 or periodic:
        part_now = dict(stats, time=stats["time"] + time.perf_counter() - t0)
        agreed(run.dist, lambda: save_checkpoint(run.out / "last.pth", make_state(epoch, step, part_now)),
               only_main=True)
        if stop_now > 0:
            bar.close()
            interrupt(stop.signum or signal.SIGTERM, run.out, epoch, step)


def _train_steps(run: Run, epoch: int, skip: int, stats: dict, stop: StopFlag, make_state) -> tuple[float, float]:
    """The updates ``skip .. steps_per_epoch`` of ``epoch``; returns (last lr, start time)."""
    cfg, spe = run.cfg, run.steps_per_epoch
    bar = _bar(run, epoch, skip)
    it = iter(run.loader)
    t0 = time.perf_counter()
    step, lr = skip, run.sched.lr_at(epoch * spe + max(0, skip - 1))     # the last update's lr
    loss_acc = torch.zeros((), device=run.device)
    while step < spe:
        lr = run.sched.step_to(epoch * spe + step)
        images = _micro_batches(run, it, epoch, step, loss_acc)
        loss_val, stop_now = _agree_on_loss(run, loss_acc, stop)
        loss_acc.zero_()
        if not math.isfinite(loss_val):
            bar.close()
            raise NonFiniteLossError(
                f"non-finite training loss ({loss_val}) at epoch {epoch + 1}, update {step + 1} (lr {lr:.3g}); "
                f"stopped without applying it. The last good checkpoint is {run.out / 'last.pth'} if one was "
                "written; try a lower --lr, --clip-grad, more --warmup-epochs or --amp bf16/off")
        _apply_update(run)
        step += 1
        run.position += cfg.batch_size * cfg.grad_accum * run.dist.world
        stats["loss_sum"] += loss_val
        stats["updates"] += 1
        stats["images"] += images * run.dist.world
        bar.update(1)
        if step % 10 == 0 or step == spe:
            bar.set_postfix(loss=f"{stats['loss_sum'] / stats['updates']:.4f}", lr=f"{lr:.2e}", refresh=False)
        if step < spe:
            _mid_epoch_checkpoint(run, epoch, step, stats, t0, stop_now, stop, bar, make_state)
    bar.close()
    return lr, t0


def _evaluate(run: Run, model, epoch: int, stop: StopFlag) -> dict:
    """The validation metrics of ``model``; non-finite logits end the run (nothing of this epoch
    is saved); a stop signal on any rank ends it with ``EvaluationStopped``."""
    try:
        return evaluate_model(model, run.val_ds, run.val_runner, stop=lambda: bool(stop.signum))
    except NonFiniteError as exc:
        raise NonFiniteLossError(f"epoch {epoch + 1}: the evaluation stopped: {exc}. The last good checkpoint is "
                                 f"{run.out / 'last.pth'} if one was written; try a lower --lr, --clip-grad or "
                                 "--amp bf16/off") from None


def _evaluations(run: Run, epoch: int, stop: StopFlag, trained: dict, make_state) -> tuple[dict, dict | None]:
    """The evaluation of the model (and of its EMA). A stop during them saves the trained epoch
    (``trained``: its statistics) as update ``steps_per_epoch`` and ends the run."""
    try:
        ev = _evaluate(run, run.model, epoch, stop)
        ev_ema = _evaluate(run, run.ema.module, epoch, stop) if run.ema is not None else None
    except EvaluationStopped:
        agreed(run.dist, lambda: save_checkpoint(run.out / "last.pth", make_state(epoch, run.steps_per_epoch, trained)),
               only_main=True)
        interrupt(stop.signum or signal.SIGTERM, run.out, epoch, run.steps_per_epoch)
    return ev, ev_ema


def run_epoch(run: Run, epoch: int, skip: int, part: dict | None, stop: StopFlag, make_state,
              start: int = 0) -> dict:
    """Train ``epoch`` from update ``skip`` (``part``: the statistics of its first updates;
    ``start``: the global samples they took) and evaluate; returns the epoch's metrics row.
    ``make_state(epoch, step, part)`` builds a checkpoint."""
    run.model.train()
    run.sampler.set_epoch(epoch, start=start)
    run.position = start
    stats = dict(part) if part else {"loss_sum": 0.0, "updates": 0, "images": 0, "time": 0.0}
    device = run.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    lr, t0 = _train_steps(run, epoch, skip, stats, stop, make_state)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = stats["time"] + time.perf_counter() - t0
    ev, ev_ema = _evaluations(run, epoch, stop, dict(stats, time=train_time), make_state)
    peak, kind = peak_memory_mb(device)
    row = {"epoch": epoch + 1, "train_loss": stats["loss_sum"] / max(1, stats["updates"]), "val_loss": ev["loss"],
           "top1": ev["top1"], "top5": ev["top5"], "lr": lr,
           "throughput_img_s": stats["images"] / max(train_time, 1e-9), "epoch_time_s": train_time,
           "eval_time_s": ev["time_s"], "peak_mem_mb": peak, "peak_mem_kind": kind}
    if ev_ema is not None:
        row.update(ema_val_loss=ev_ema["loss"], ema_top1=ev_ema["top1"], ema_top5=ev_ema["top5"])
    return row
