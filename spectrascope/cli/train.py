"""``spectrascope train``, ``evaluate`` and ``predict``: options parsed here, the work done by
``pipelines.train`` and ``pipelines.evaluate``."""
from __future__ import annotations


import click

from spectrascope.cli.app import main
from spectrascope.cli.options import (image_options, model_options, parse_img_size, parse_model_kwargs, speaks,
                                      user_errors)


def _train_options(fn):
    """timm's flag names (and the issue's short forms) for ``spectrascope train``."""
    from spectrascope.train.config import RECIPES
    opts = [
        click.option("--model", "model", default=None, help="registry name, alias or timm:<name> (required unless --resume)"),
        click.option("--data", default=None, help="imagefolder:PATH | cifar10:PATH | cifar100:PATH | synthetic[:k=v,...]"),
        click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
                     help="a paper's ImageNet recipe (lr scaled to the global batch unless --lr)"),
        click.option("--epochs", type=int, default=None, help="[10]"),
        click.option("-b", "--batch-size", type=int, default=None, help="per process [64]"),
        click.option("-vb", "--validation-batch-size", "val_batch_size", type=int, default=None),
        click.option("--lr", type=float, default=None, help="peak learning rate [1e-3]"),
        click.option("--weight-decay", "--wd", "weight_decay", type=float, default=None, help="[0.05]"),
        click.option("--opt", type=click.Choice(["adamw", "sgd"]), default=None, help="[adamw]"),
        click.option("--momentum", type=float, default=None, help="SGD momentum [0.9]"),
        click.option("--warmup-epochs", type=float, default=None, help="[0]"),
        click.option("--warmup-lr", type=float, default=None, help="[1e-6]"),
        click.option("--min-lr", type=float, default=None, help="[1e-5]"),
        click.option("--clip-grad", type=float, default=None, help="gradient norm clip (off)"),
        click.option("--drop-path", type=float, default=None, help="stochastic depth rate (model default)"),
        click.option("--smoothing", type=float, default=None, help="label smoothing [0.1]"),
        click.option("--mixup", type=float, default=None, help="mixup alpha [0]"),
        click.option("--cutmix", type=float, default=None, help="cutmix alpha [0]"),
        click.option("--mixup-prob", type=float, default=None, help="[1.0]"),
        click.option("--mixup-switch-prob", type=float, default=None, help="[0.5]"),
        click.option("--aa", default=None, help="RandAugment policy, e.g. rand-m9-mstd0.5-inc1, or none"),
        click.option("--reprob", type=float, default=None, help="random erasing probability [0]"),
        click.option("--scale", type=float, nargs=2, default=None, help="random resized crop scale [0.08 1.0]"),
        click.option("--ratio", type=float, nargs=2, default=None, help="random resized crop ratio [0.75 1.33]"),
        click.option("--hflip", type=float, default=None, help="horizontal flip probability [0.5]"),
        click.option("--aug-backend", type=click.Choice(["auto", "builtin", "timm"]), default=None,
                     help="augmentation implementation [auto: timm when installed]"),
        click.option("--model-ema/--no-model-ema", default=None, help="keep an EMA of the weights"),
        click.option("--model-ema-decay", type=float, default=None, help="[0.9998]"),
        click.option("--amp", type=click.Choice(["bf16", "fp16", "off"]), default=None, help="[off]"),
        click.option("--channels-last/--no-channels-last", default=None,
                     help="channels-last convolution weights and inputs (never the FFT filters)"),
        click.option("--tf32", type=click.Choice(["on", "off"]), default=None,
                     help="TF32 matmuls and convolutions on CUDA (no effect on CPU) [on]"),
        click.option("--compile", "--torchcompile", "compile_", is_flag=True, default=None, help="torch.compile"),
        click.option("--grad-accum", "--grad-accum-steps", "grad_accum", type=int, default=None, help="[1]"),
        click.option("--seed", type=int, default=None, help="[42]"),
        click.option("--img-size", default=None, help="S or HxW (default: the data's or the model's)"),
        click.option("--model-kwargs", "model_kwargs", multiple=True, metavar="KEY=VALUE",
                     help="constructor overrides, e.g. dims=32,64,96,128"),
        click.option("-j", "--workers", type=int, default=None, help="data loader workers [0 on CPU]"),
        click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [auto]"),
        click.option("--output", type=click.Path(file_okay=False), default=None,
                     help="run folder [runs/train/<model>-<time>]"),
        click.option("--overwrite", is_flag=True, default=None, help="reuse a non-empty --output"),
        click.option("--resume", type=click.Path(), default=None, help="continue from last.pth (or its folder)"),
        click.option("--checkpoint-steps", type=int, default=None, help="also checkpoint every N updates [0: per epoch]"),
        click.option("--limit-train-batches", type=int, default=None, help="shorten epochs (smoke tests, benchmarks)"),
        click.option("--limit-val-batches", type=int, default=None),
        click.option("--no-progress", is_flag=True, default=False, help="no progress bars"),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


@main.command("train")
@_train_options
@user_errors
def train_cmd(compile_, model_kwargs, img_size, no_progress, resume, **opts):
    """Train a zoo model on a data spec (DDP: torchrun --nproc_per_node=N -m spectrascope.cli train ...).

    Writes last.pth / best.pth (every epoch and on SIGTERM/SIGINT), metrics.csv and
    results.json into the run folder; --resume continues exactly."""
    from spectrascope.pipelines.train import run_train
    from spectrascope.train.config import TrainConfig
    kw = parse_model_kwargs(model_kwargs)
    cfg = TrainConfig(compile=compile_, model_kwargs=kw or None, img_size=parse_img_size(img_size),
                      progress=False if no_progress else None,
                      **{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in opts.items()})
    outcome = run_train(cfg, resume=resume)
    if outcome.summary and speaks():
        click.echo(outcome.summary)


def _echo(outcome) -> None:
    if not speaks():
        return
    for note in outcome.notes:
        click.echo(note, err=True)
    if outcome.summary:
        click.echo(outcome.summary)


@main.command("evaluate")
@model_options
@click.option("--data", required=True, help="imagefolder:PATH | cifar10:PATH | cifar100:PATH | synthetic[:k=v,...]")
@click.option("-b", "--batch-size", default=64, show_default=True, type=int)
@click.option("--amp", type=click.Choice(["bf16", "fp16", "off"]), default="off", show_default=True)
@click.option("--use-ema", is_flag=True, help="evaluate the EMA weights of the checkpoint")
@click.option("--channels-last", is_flag=True)
@click.option("-j", "--workers", default=0, show_default=True, type=int)
@click.option("--limit-batches", type=int, default=None, help="evaluate the first N batches only")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="result folder [runs/evaluate/<model>-<time>]")
@click.option("--overwrite", is_flag=True)
@user_errors
def evaluate_cmd(model_name, checkpoint, img_size, device, model_kwargs, data, batch_size, amp, use_ema, channels_last,
                 workers, limit_batches, output, overwrite):
    """Top-1/top-5 accuracy, loss and throughput on a data spec's validation split -> results.json
    (under torchrun the batches are shared out; the numbers equal one process)."""
    from spectrascope.pipelines.evaluate import EvaluateRequest, run_evaluate
    req = EvaluateRequest(model=model_name, data=data, checkpoint=checkpoint, img_size=parse_img_size(img_size),
                          batch_size=batch_size, device=device, amp=amp, use_ema=use_ema,
                          channels_last=channels_last, workers=workers, limit_batches=limit_batches,
                          model_kwargs=parse_model_kwargs(model_kwargs), output=output, overwrite=overwrite)
    _echo(run_evaluate(req))


@main.command("predict")
@model_options
@image_options
@click.option("--topk", default=5, show_default=True, type=int)
@user_errors
def predict_cmd(model_name, checkpoint, img_size, device, model_kwargs, images, data, num_images, batch_size, topk):
    """Run a model on images and print the top-k classes (a smoke test of a checkpoint)."""
    from spectrascope.pipelines.evaluate import PredictRequest, run_predict
    req = PredictRequest(model=model_name, checkpoint=checkpoint, img_size=parse_img_size(img_size), device=device,
                         model_kwargs=parse_model_kwargs(model_kwargs), images=images, data=data,
                         num_images=num_images, batch_size=batch_size, topk=topk)
    _echo(run_predict(req))
