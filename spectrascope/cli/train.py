"""``spectrascope train``: options parsed here, the work done by ``spectrascope.train``."""
from __future__ import annotations


import click

from spectrascope.cli.app import main
from spectrascope.cli.options import shared_option, speaks, user_errors, with_options
from spectrascope.seam.options import parse_img_size, parse_model_kwargs


def _train_options(fn):
    """timm's flag names (and the short forms) for ``spectrascope train``; the shared options (``--amp``,
    ``--output`` ...) come from their one declaration, with no default here (the config fills it)."""
    from spectrascope.train.config import RECIPES
    unset = {"default": None, "show_default": False}
    opts = [
        click.option("--model", "model", default=None, help="registry name, alias or timm:<name> (required unless --resume)"),
        click.option("--data", default=None, help="imagefolder:PATH | cifar10:PATH | cifar100:PATH | synthetic[:k=v,...]"),
        click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
                     help="a paper's ImageNet recipe (lr scaled to the global batch unless --lr)"),
        click.option("--epochs", type=int, default=None, help="[10]"),
        shared_option("batch_size", **unset, aliases=("-b",), help="per process [64]", parse=None),
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
        shared_option("amp", **unset, help="autocast the forward and backward [off]"),
        shared_option("channels_last", **unset),
        shared_option("tf32", **unset, help="TF32 matmuls and convolutions on CUDA GPUs (no effect on CPUs) [on]"),
        shared_option("compile", **unset),
        click.option("--grad-accum", "--grad-accum-steps", "grad_accum", type=int, default=None, help="[1]"),
        shared_option("seed", **unset, help="[42]"),
        shared_option("img_size", help="S or HxW (default: the data's or the model's)"),
        shared_option("model_kwargs", help="constructor overrides, e.g. dims=32,64,96,128"),
        shared_option("workers", **unset, aliases=("-j",), help="data loader workers [0 on CPU]"),
        shared_option("device", **unset, help="auto, cpu, cuda or cuda:N [auto]"),
        shared_option("output", help="run folder [runs/train/<model>-<time>]"),
        shared_option("overwrite", **unset, help="reuse a non-empty --output"),
        click.option("--resume", type=click.Path(), default=None, help="continue from last.pth (or its folder)"),
        click.option("--checkpoint-steps", type=int, default=None, help="also checkpoint every N updates [0: per epoch]"),
        click.option("--limit-train-batches", type=int, default=None, help="shorten epochs (smoke tests, benchmarks)"),
        click.option("--limit-val-batches", type=int, default=None),
        click.option("--no-progress", is_flag=True, default=False, help="no progress bars"),
    ]
    for o in reversed(opts):
        fn = o(fn) if not isinstance(o, click.Option) else with_options(o)(fn)
    return fn


@main.command("train")
@_train_options
@user_errors
def train_cmd(compile, model_kwargs, img_size, no_progress, resume, **opts):
    """Train a zoo model on a data spec (DDP: torchrun --nproc_per_node=N -m spectrascope.cli train ...).

    Writes last.pth / best.pth (every epoch and on SIGTERM/SIGINT), metrics.csv and
    results.json into the run folder; --resume continues exactly."""
    from spectrascope.train.config import TrainConfig
    from spectrascope.train.loop import train
    kw = parse_model_kwargs(model_kwargs)
    cfg = TrainConfig(compile=compile, model_kwargs=kw or None, img_size=parse_img_size(img_size),
                      progress=False if no_progress else None,
                      **{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in opts.items()})
    res = train(cfg, resume=resume)
    if res and res.get("final") and speaks():          # one process reports for the run
        f, best = res["final"], res["best"]
        click.echo(f"done: top-1 {_fmt(f['top1'])}  top-5 {_fmt(f['top5'])}  best top-1 {_fmt(best.get('top1'))} "
                   f"(epoch {best.get('epoch')})  -> {res['run']['output']}")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"
