"""The training run: AdamW + cosine schedule with warm-up, label smoothing, mixup/cutmix,
drop path, EMA, AMP (bf16, or fp16 with a GradScaler; FFT mixers stay float32),
channels-last, ``torch.compile``, gradient accumulation and DDP through ``torchrun``
(the process group is joined through ``engine.dist``).

Reproducibility and resuming: every random draw is derived from ``(seed, epoch, position)``
or ``(seed, epoch, micro-step, rank)`` (``train.sampler``), so a run resumed from a
checkpoint -- written at the end of every epoch, every ``checkpoint_steps`` updates and on
SIGTERM/SIGINT -- continues exactly as the uninterrupted run would (bitwise on CPU). The
position inside the epoch is kept in global samples (``sample``), so a run resumed on
another number of processes continues with exactly the samples not yet seen (with the
global batch of its new world size). A stop signal is agreed by every rank after each
update, after each evaluation batch and before the end-of-epoch checkpoints are written,
so the run saves and ends within torchrun's grace period.
Checkpoints are atomic, hold plain types only and load with
``torch.load(weights_only=True)``, ``spectrascope.create_model(name, checkpoint=...)`` and
every analysis command (``model_spec_from_checkpoint`` gives the architecture to rebuild).
Only rank 0 writes.

This module also re-exports the names of the training package that callers use.
"""
from __future__ import annotations

import signal
import sys
import time

from spectrascope.engine import dist as _dist
from spectrascope.engine.device import resolve_device, tf32
from spectrascope.errors import NonFiniteLossError, TrainingError, TrainingInterrupted
from spectrascope.io.results import provenance
from spectrascope.train.agree import agreed
from spectrascope.train.config import RECIPES, RESUME_MUTABLE, TrainConfig, resolve_config  # noqa: F401
from spectrascope.train.ema import ModelEma
from spectrascope.train.epoch import run_epoch
from spectrascope.train.metrics import accuracy_counts, soft_cross_entropy  # noqa: F401
from spectrascope.train.prepare import Run, setup_run
from spectrascope.train.sampler import EpochBatchSampler, ShardSampler, derive_seed  # noqa: F401
from spectrascope.train.schedule import CosineWarmup, param_groups  # noqa: F401
from spectrascope.train.state import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_write,  # noqa: F401
                                      claim_scope, load_training_checkpoint, rng_state, save_checkpoint,
                                      write_csv_atomic, write_json_atomic)
from spectrascope.train.stop import StopFlag, interrupt
from spectrascope.zoo.build import (CheckpointModelSpec, create_model_from_checkpoint,  # noqa: F401  (re-exported)
                                    model_spec_from_checkpoint)

__all__ = ["TrainConfig", "resolve_config", "RECIPES", "train", "TrainingError", "NonFiniteLossError",
           "TrainingInterrupted", "model_spec_from_checkpoint", "create_model_from_checkpoint",
           "load_training_checkpoint", "CheckpointModelSpec", "EpochBatchSampler", "CosineWarmup", "ModelEma",
           "derive_seed", "accuracy_counts"]


def make_state(run: Run, epoch: int, step: int, part: dict) -> dict:
    """The checkpoint of ``run`` at ``(epoch, step)`` (plain types and tensors only)."""
    st = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": run.model.state_dict(),
          "optimizer": run.opt.state_dict(), "scheduler": run.sched.state_dict(), "scaler": run.scaler.state_dict(),
          "epoch": epoch, "step": step, "sample": run.position if step else 0, "rng": rng_state(), "args": run.args,
          "model_name": run.name, "arch": run.name, "history": run.history, "best": run.best, "partial": part}
    if run.ema is not None:
        st["model_ema"] = run.ema.state_dict()
    return st


def write_results(run: Run, status: str, wall: float) -> dict:
    """results.json (and metrics.csv) of the run so far; written by rank 0, returned everywhere."""
    out = run.out
    res = provenance(command="train", model=run.name, device=run.device, wall_time_s=wall, random_weights=False,
                     world_size=run.dist.world,
                     extra={"status": status, "config": run.cfg.as_dict(), "run": run.run_info,
                            "history": run.history, "best": run.best,
                            "final": run.history[-1] if run.history else None,
                            "checkpoints": {"last": str(out / "last.pth"),
                                            "best": str(out / "best.pth") if run.best["epoch"] is not None else None}})
    if run.dist.main:
        if run.history:
            write_csv_atomic(out / "metrics.csv", run.history)
        write_json_atomic(out / "results.json", res)
    return res


def _fmt(v, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def _end_of_epoch(run: Run, epoch: int, row: dict, wall0: float, stopping: bool = False) -> None:
    """Record the epoch's row, write best.pth/last.pth and results.json (rank 0) and print the row;
    ``stopping``: the run ends after these checkpoints (its results are written as it ends)."""
    run.history.append(row)
    metric = row.get("ema_top1", row["top1"])
    is_best = metric is not None and (run.best["metric"] is None or metric > run.best["metric"])
    if is_best:
        run.best = {"metric": metric, "epoch": epoch + 1, "top1": row["top1"], "top5": row["top5"]}

    def save() -> None:
        state = make_state(run, epoch + 1, 0, {})
        if is_best:          # best first: a kill in between re-runs this epoch identically
            save_checkpoint(run.out / "best.pth", state)
        save_checkpoint(run.out / "last.pth", state)
        if not stopping:
            write_results(run, "running", time.perf_counter() - wall0)
    agreed(run.dist, save, only_main=True)     # a failed write (a full disk) stops every rank
    run.say(f"epoch {epoch + 1}/{run.cfg.epochs}: train loss {row['train_loss']:.4f}  val loss "
            f"{_fmt(row['val_loss'], '.4f')}  top-1 {_fmt(row['top1'])}  top-5 {_fmt(row['top5'])}"
            + (f"  ema top-1 {_fmt(row['ema_top1'])}" if 'ema_top1' in row else "")
            + f"  lr {row['lr']:.3g}  {row['throughput_img_s']:.1f} img/s  peak {row['peak_mem_mb']:.0f} MB")


def _epochs(run: Run, wall0: float) -> None:
    with StopFlag() as stop:
        for epoch in range(run.start_epoch, run.cfg.epochs):
            skip = run.start_step if epoch == run.start_epoch else 0
            row = run_epoch(run, epoch, skip, run.partial if skip else None, stop,
                            lambda e, s, p: make_state(run, e, s, p), start=run.start_sample if skip else 0)
            stopping = run.dist.any(bool(stop.signum)) and epoch + 1 < run.cfg.epochs     # agreed before saving
            _end_of_epoch(run, epoch, row, wall0, stopping)
            if stopping:
                interrupt(stop.signum or signal.SIGTERM, run.out, epoch + 1, 0)


def _start(run: Run) -> None:
    agreed(run.dist, lambda: write_json_atomic(run.out / "args.json", dict(run.args, run=run.run_info)),
           only_main=True)
    if run.dist.main:
        if run.cfg.lr_note:
            run.say(run.cfg.lr_note)
        b, cfg, d = run.bundle, run.cfg, run.dist
        run.say(f"training {run.name} on {b.spec.text} ({len(b.train)} train / {len(b.val)} val images, "
                f"{b.num_classes} classes, {run.size[0]}x{run.size[1]}) for {cfg.epochs} epochs x "
                f"{run.steps_per_epoch} updates on {run.device}{f' x {d.world}' if d.enabled else ''} -> {run.out}")


def _run(run: Run) -> dict:
    wall0 = time.perf_counter()
    status, results = "running", None
    try:
        _epochs(run, wall0)
        status = "completed"
    except NonFiniteLossError:
        status = "failed: non-finite loss"
        raise
    except TrainingInterrupted:
        status = "interrupted"
        raise
    finally:
        if status != "running" and (run.history or status == "completed"):
            results = write_results(run, status, time.perf_counter() - wall0)
    return results


def train(cfg: TrainConfig, *, resume: str | None = None, log=None) -> dict:
    """Train (or resume) and return the results dict also written to ``results.json``.
    Under ``torchrun`` the processes join one group (``engine.dist``) for the run; TF32 follows
    ``cfg.tf32`` (default ``on``) during the run.

    Args:
        cfg: the options (``None`` fields: recipe or defaults; when resuming, the checkpoint's).
        resume: a checkpoint (or its run folder) to continue.
        log: where progress lines go (default: stderr of rank 0).

    Returns:
        The run's results (``results.json``), on every rank."""
    with _dist.session(resolve_device(cfg.device or "auto")) as (d, device), claim_scope():
        say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        say = say if d.main else (lambda msg: None)
        run = setup_run(cfg, resume, d, device, say)
        with tf32(run.cfg.tf32):               # process-wide for the run, restored after it
            _start(run)
            return _run(run)
