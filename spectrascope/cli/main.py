"""The ``spectrascope`` command line. Each command is a thin wrapper over library calls.

Bad input ends in one clear error line and a non-zero exit (``click.ClickException``)."""
from __future__ import annotations

import functools
import json
import logging
import sys

import click
import torch

from spectrascope.zoo import registry
from spectrascope.zoo.checkpoint import CheckpointError
from spectrascope.io.images import DataError
from spectrascope.io.results import OutputExistsError

#: library errors that are the user's input, reported as one line
USER_ERRORS = (registry.UnknownModelError, CheckpointError, DataError, OutputExistsError, ValueError,
               FileNotFoundError, KeyError)


def user_errors(fn):
    """Turn library errors caused by the input into a one-line ClickException."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise click.ClickException(str(msg).splitlines()[0] if msg else type(exc).__name__) from None

    return wrapper


def parse_img_size(value):
    """'224' -> 224, '96x128' -> (96, 128)."""
    if value is None:
        return None
    try:
        parts = [int(v) for v in str(value).lower().replace(",", "x").split("x")]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not S or HxW") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise click.BadParameter(f"{value!r} is not S or HxW")


def _scalar(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _given(param: str) -> bool:
    """Whether the user set a click parameter (rather than its default)."""
    from click.core import ParameterSource
    return click.get_current_context().get_parameter_source(param) not in (ParameterSource.DEFAULT, None)


def parse_model_kwargs(items) -> dict:
    """``("dims=32,64,96,128", "drop_path_rate=0.1", "token_mixers=sepconv,df")`` -> overrides dict.
    Comma-separated values become lists; numbers, true/false and none are converted."""
    out = {}
    for item in items or ():
        for part in [item] if "=" in item and item.count("=") == 1 else item.split():
            if "=" not in part:
                raise click.BadParameter(f"{part!r} is not KEY=VALUE", param_hint="--model-kwargs")
            key, value = part.split("=", 1)
            vals = [_scalar(v) for v in value.split(",")] if "," in value else _scalar(value)
            out[key.strip()] = vals
    return out


def runtime_options(fn):
    """--img-size/--device/--model-kwargs: how every analysed model is built and where it runs."""
    fn = click.option("--model-kwargs", "model_kwargs", multiple=True, metavar="KEY=VALUE",
                      help="constructor overrides with the official argument names (every model), "
                           "e.g. dims=32,64,96,128")(fn)
    fn = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")(fn)
    fn = click.option("--img-size", default=None, help="input size S or HxW (default: each model's)")(fn)
    return fn


def model_options(fn):
    """--model/--checkpoint/--img-size/--device/--model-kwargs, shared by the analysis commands."""
    fn = runtime_options(fn)
    fn = click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                      help="official .pth, timm .pth.tar, spectrascope checkpoint or .safetensors")(fn)
    fn = click.option("--model", "model_name", required=True, help="registry name, alias or timm:<name>")(fn)
    return fn


def image_options(fn):
    """--images/--data/--num-images/--batch-size, shared by the analysis commands."""
    fn = click.option("--batch-size", default=16, show_default=True, type=int)(fn)
    fn = click.option("--num-images", default=None, type=int, help="use the first N images")(fn)
    fn = click.option("--data", default=None, help="samples | imagefolder:PATH")(fn)
    fn = click.option("--images", type=click.Path(file_okay=False), default=None,
                      help="folder of images (default: the bundled sample photos)")(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spectrascope")
@click.option("-v", "--verbose", count=True, help="log more (-v info, -vv debug)")
def main(verbose):
    """Spectral analysis and interpretability of vision models with frequency-domain token mixers."""
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- zoo


@main.command("models")
@click.argument("pattern", required=False)
@click.option("--json", "as_json", is_flag=True, help="print the model cards as JSON")
@click.option("--markdown", is_flag=True, help="print a markdown table (ours vs the paper's parameter counts)")
@user_errors
def models_cmd(pattern, as_json, markdown):
    """List the model zoo (name, family, params, default resolution). PATTERN filters names
    (substring or shell pattern such as 'dfformer*')."""
    names = registry.list_models(pattern)
    if not names:
        raise click.ClickException(f"no model matches {pattern!r}")
    cards = [registry.get_card(n) for n in names]
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in cards], indent=1))
        return
    if markdown:
        click.echo(zoo_markdown(cards))
        return
    rows = [(c.name, c.family, f"{c.params / 1e6:.2f}M", f"{c.default_input_size[1]}x{c.default_input_size[2]}",
             "yes" if c.weight_file else "-") for c in cards]
    header = ("name", "family", "params", "input", "weights")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*header))
    for r in rows:
        click.echo(fmt.format(*r))


def zoo_markdown(cards) -> str:
    lines = ["| model | family | params (ours) | trainable | paper/README | input | official weights | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cards:
        paper = f"{c.paper_params_m:g}M" if c.paper_params_m is not None else "-"
        trainable = f"{c.params_trainable / 1e6:.2f}M" if c.params_trainable != c.params else "="
        lines.append(f"| `{c.name}` | {c.family} | {c.params / 1e6:.2f}M | {trainable} | {paper} | "
                     f"{c.default_input_size[1]}x{c.default_input_size[2]} | {c.weight_file or '-'} | "
                     f"{c.description} |")
    return "\n".join(lines)


@main.command("predict")
@model_options
@image_options
@click.option("--topk", default=5, show_default=True, type=int)
@user_errors
def predict_cmd(model_name, checkpoint, img_size, device, model_kwargs, images, data, num_images, batch_size, topk):
    """Run a model on images and print the top-k classes (a smoke test of a checkpoint)."""
    from spectrascope.io.images import iter_batches, resolve_image_paths
    from spectrascope.engine.device import resolve_device
    from spectrascope.zoo.build import build_for_inference
    dev = resolve_device(device)
    model, cfg = build_for_inference(model_name, checkpoint=checkpoint, img_size=parse_img_size(img_size),
                                     device=dev, **parse_model_kwargs(model_kwargs))
    if checkpoint is None:
        click.echo(f"note: {model_name} has random weights (no --checkpoint); the classes are meaningless", err=True)
    paths = resolve_image_paths(images, data, num_images)
    with torch.inference_mode():
        for batch, chunk in iter_batches(paths, batch_size, cfg["size"], cfg["crop_pct"], cfg["mean"], cfg["std"]):
            probs = model(batch.to(dev)).float().softmax(-1)
            p, idx = probs.topk(min(topk, probs.shape[-1]), dim=-1)
            for path, pi, ii in zip(chunk, p.tolist(), idx.tolist()):
                top = ", ".join(f"{c}:{q:.3f}" for c, q in zip(ii, pi))
                click.echo(f"{path.name}: logits {tuple(probs.shape[1:])} top-{len(ii)} [{top}]")


# ---------------------------------------------------------------- cka


@main.command("cka")
@click.option("--model-a", "model_a", required=True, help="model of the rows (registry name, alias or timm:<name>)")
@click.option("--model-b", "model_b", required=True, help="model of the columns (may equal --model-a)")
@click.option("--checkpoint-a", type=click.Path(dir_okay=False), default=None, help="checkpoint of model A")
@click.option("--checkpoint-b", type=click.Path(dir_okay=False), default=None, help="checkpoint of model B")
@click.option("--taps", default="fig7", show_default=True,
              help="comma-separated presets (fig7 = DFFormer Fig. 7's 40 points), tap roles, tap names "
                   "or path:<module.path>")
@click.option("--taps-a", default=None, help="taps of model A (default: --taps)")
@click.option("--taps-b", default=None, help="taps of model B (default: --taps)")
@click.option("--img-size", default=None, help="input size S or HxW for both models (default: each model's)")
@click.option("--model-kwargs", "model_kwargs", multiple=True, metavar="KEY=VALUE", help="overrides for both models")
@click.option("--model-kwargs-a", "model_kwargs_a", multiple=True, metavar="KEY=VALUE", help="overrides for model A")
@click.option("--model-kwargs-b", "model_kwargs_b", multiple=True, metavar="KEY=VALUE", help="overrides for model B")
@image_options
@click.option("--estimator", type=click.Choice(["unbiased", "biased"]), default="unbiased", show_default=True)
@click.option("--engine", type=click.Choice(["spectrascope", "torch-cka"]), default="spectrascope",
              show_default=True, help="torch-cka: torch-cka 0.21's float32 computation (the papers' numbers)")
@click.option("--precision", type=click.Choice(["auto", "float32", "float64"]), default="auto", show_default=True,
              help="Gram products of the centred features (sums are float64 either way); auto = float32 "
                   "for float32/half features, float64 for float64 ones")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of random initialisations")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="report directory (default: runs/cka/<A>-vs-<B>-<time>)")
@click.option("--overwrite", is_flag=True, help="replace an existing report directory")
@click.option("--title", default=None, help="report title")
@user_errors
def cka_cmd(model_a, model_b, checkpoint_a, checkpoint_b, taps, taps_a, taps_b, img_size, model_kwargs,
            model_kwargs_a, model_kwargs_b, images, data, num_images, batch_size, estimator, engine, precision, device,
            seed, output, overwrite, title):
    """Mini-batch linear CKA between the layers of two models, written as a report directory
    (heatmap PNG/PDF, matrix CSV, best matches, results.json, report.html).

    Runs under torchrun too (one process per device; gloo on CPU): every process takes its
    share of the batches and the first one writes the report."""
    import warnings
    from pathlib import Path

    from spectrascope.analysis.cka import ModelSpec, init_distributed, run_cka
    from spectrascope.report.cka import write_report
    from spectrascope.engine.device import resolve_device
    from spectrascope.io.results import OutputExistsError, default_output_dir
    size = parse_img_size(img_size)
    common = parse_model_kwargs(model_kwargs)
    spec_a = ModelSpec(model_a, checkpoint_a, size, {**common, **parse_model_kwargs(model_kwargs_a)})
    spec_b = ModelSpec(model_b, checkpoint_b, size, {**common, **parse_model_kwargs(model_kwargs_b)})
    out = Path(output) if output else default_output_dir("cka", f"{model_a}-vs-{model_b}")
    if not overwrite and (out.is_file() or (out.is_dir() and any(out.iterdir()))):
        raise OutputExistsError(f"output directory {out} exists and is not empty (use --overwrite)")
    rank, world, dev = init_distributed(resolve_device(device))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            result = run_cka(spec_a, spec_b, taps=taps, taps_a=taps_a, taps_b=taps_b, images=images, data=data,
                             num_images=num_images, batch_size=batch_size, estimator=estimator, engine=engine,
                             device=dev, seed=seed, rank=rank, world=world, progress=rank == 0,
                             dtype={"auto": None, "float32": torch.float32, "float64": torch.float64}[precision])
        if rank == 0:
            write_report(result, out, overwrite=overwrite, title=title)
            for msg in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)):
                click.echo(f"warning: {msg}", err=True)
            for d in result.diagnostics:
                click.echo(f"warning: {d}", err=True)
            rnd = [s.name for s in (spec_a, spec_b) if s.checkpoint is None]
            if rnd:
                click.echo(f"note: random weights for {', '.join(dict.fromkeys(rnd))} (no checkpoint given)", err=True)
            click.echo(f"CKA {len(result.labels_a)}x{len(result.labels_b)} over {result.examples} images "
                       f"({result.batches} batches) -> {out}")
    finally:
        if world > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


# ---------------------------------------------------------------- training


def _train_options(fn):
    """timm's flag names (and the issue's short forms) for ``spectrascope train``."""
    from spectrascope.train.loop import RECIPES
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
        click.option("--channels-last/--no-channels-last", default=None),
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
    """Train a zoo model on a data spec (DDP: torchrun --nproc_per_node=N -m spectrascope.cli.main train ...).

    Writes last.pth / best.pth (every epoch and on SIGTERM/SIGINT), metrics.csv and
    results.json into the run folder; --resume continues exactly."""
    from spectrascope.train.loop import TrainConfig, TrainingError, TrainingInterrupted, train
    kw = parse_model_kwargs(model_kwargs)
    cfg = TrainConfig(compile=compile_, model_kwargs=kw or None, img_size=parse_img_size(img_size),
                      progress=False if no_progress else None,
                      **{k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in opts.items()})
    try:
        res = train(cfg, resume=resume)
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(exc.exit_code)
    except TrainingError as exc:
        raise click.ClickException(str(exc)) from None
    if res and res.get("final"):
        f = res["final"]
        click.echo(f"done: top-1 {f['top1']:.2f}  top-5 {f['top5']:.2f}  best top-1 {res['best']['top1']:.2f} "
                   f"(epoch {res['best']['epoch']})  -> {res['run']['output']}")


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
    """Top-1/top-5 accuracy, loss and throughput on a data spec's validation split -> results.json."""
    from pathlib import Path

    from spectrascope.train.evaluate import evaluate
    from spectrascope.io.results import Stopwatch, default_output_dir, provenance, staged_output, write_json
    watch = Stopwatch()
    out = Path(output) if output else default_output_dir("evaluate", model_name)
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied and not overwrite:
        raise click.ClickException(f"output directory {out} exists and is not empty (use --overwrite)")
    res = evaluate(model_name, checkpoint=checkpoint, data=data, img_size=parse_img_size(img_size),
                   batch_size=batch_size, device=device, amp=amp, use_ema=use_ema, channels_last=channels_last,
                   workers=workers, limit_batches=limit_batches, model_kwargs=parse_model_kwargs(model_kwargs))
    with staged_output(out, overwrite=overwrite) as stage:
        write_json(stage / "results.json", provenance(
            command="evaluate", model=res["model"], checkpoint_sha256=res["checkpoint_sha256"], device=res["device"],
            wall_time_s=watch.elapsed, random_weights=checkpoint is None, extra={"results": res}))
    if checkpoint is None:
        click.echo(f"note: {model_name} has random weights (no --checkpoint)", err=True)
    click.echo(f"{res['model']} on {res['data']} ({res['n']} images): top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}"
               f"  loss {res['loss']:.4f}  {res['throughput_img_s']:.1f} img/s -> {out}")


# ---------------------------------------------------------------- fourier analysis


def _fourier_options(kind: str):
    """--taps/--stage/--blocks/--method/... shared by ``amplitude`` and ``spectrum``."""
    from spectrascope.analysis.fourier import DEFAULT_AMPLITUDE_ROLES, DEFAULT_SPECTRUM_ROLES
    roles = ",".join(DEFAULT_SPECTRUM_ROLES if kind == "spectrum" else DEFAULT_AMPLITUDE_ROLES)

    def deco(fn):
        opts = [
            click.option("--taps", default=None, metavar="ROLE,...",
                         help=f"tap roles, and/or path:<module.path>[:LAYOUT] [{roles}]"),
            click.option("--stage", "stages", default=None, metavar="K[,K]", help="1-based stage(s) only, e.g. 3"),
            click.option("--blocks", default="last" if kind == "spectrum" else "all", show_default=True,
                         help="per stage and role: all, first, last or a block index"),
            click.option("--method", type=click.Choice(["diagonal", "radial"]), default="diagonal",
                         show_default=True, help="radial: ring average for non-square maps (documented deviation)"),
            click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32",
                         show_default=True, help="FFT precision (whatever the model dtype)"),
            click.option("--output", type=click.Path(file_okay=False), default=None,
                         help=f"result folder [runs/{kind}/<model>-<time>]"),
            click.option("--overwrite", is_flag=True, help="replace a non-empty --output"),
        ]
        if kind == "spectrum":
            opts.append(click.option("--absolute", is_flag=True, help="raw mean log amplitude (not relative to DC)"))
            opts.append(click.option("--cmap", default="viridis", show_default=True, help="matplotlib colour map"))
        else:
            opts.append(click.option("--freq-axis", type=click.Choice(["index", "true"]), default="index",
                                     show_default=True, help="index: the reference's linspace(0,1,K); true: 2k/H"))
            opts.append(click.option("--save-maps", is_flag=True,
                                     help="also accumulate the 2-D mean log-amplitude maps (maps.npz; slower)"))
        for o in reversed(opts):
            fn = o(fn)
        return fn
    return deco


def _parse_stages(text):
    if not text:
        return None
    try:
        return [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise click.ClickException(f"--stage {text!r} is not a stage number or a comma list") from None


def _run_fourier(kind: str, models, checkpoints, *, output, overwrite, taps, stages, blocks, method, precision,
                 img_size, device, model_kwargs, images, data, num_images, batch_size, **extra):
    import time
    import warnings
    from pathlib import Path

    from spectrascope.analysis.fourier import analyse, parse_tap_request, write_results
    from spectrascope.io.results import default_output_dir, staged_output
    roles, paths = parse_tap_request(taps)
    blocks = blocks if blocks in ("all", "first", "last") else _int_blocks(blocks)
    out = Path(output) if output else default_output_dir(kind, "-vs-".join(m.replace("timm:", "") for m in models))
    t0 = time.perf_counter()
    try:
        with staged_output(out, overwrite=overwrite) as stage, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            payload = analyse(models, kind=kind, checkpoints=checkpoints, images=images, data=data,
                              num_images=num_images, img_size=parse_img_size(img_size), roles=roles,
                              stages=_parse_stages(stages), tap_paths=paths, blocks=blocks, device=device,
                              batch_size=batch_size, method=method,
                              dtype=torch.float64 if precision == "float64" else torch.float32, progress=True,
                              model_kwargs=parse_model_kwargs(model_kwargs), **extra)
            write_results(payload, stage, command=kind, wall_time_s=time.perf_counter() - t0)
    except ImportError as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from None
    from spectrascope.ops.fourier import ZeroMeanWarning
    for msg in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ZeroMeanWarning)):
        click.echo(f"warning: {msg}", err=True)
    rnd = [m["model"] for m in payload["models"] if m["random_weights"]]
    if rnd:
        click.echo(f"note: random weights for {', '.join(rnd)} (no --checkpoint): the curves describe an "
                   "untrained network", err=True)
    ntaps = ", ".join(f"{m['model']}: {len(m['taps'])} taps" for m in payload["models"])
    click.echo(f"{kind} over {payload['images']['count']} images ({ntaps}) -> {out}")
    return out


def _int_blocks(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        raise click.ClickException(f"--blocks {text!r} is not all, first, last or a block index") from None


@main.command("amplitude")
@model_options
@image_options
@_fourier_options("amplitude")
@user_errors
def amplitude_cmd(model_name, checkpoint, img_size, device, model_kwargs, images, data, num_images, batch_size, taps,
                  stages, blocks, method, precision, output, overwrite, freq_axis, save_maps):
    """Relative log amplitude of Fourier-transformed feature maps (Park & Kim 2022): one curve
    per tap, coloured by normalised depth, and the high-frequency Delta vs depth.

    Writes results.json, amplitude.csv, amplitude/highfreq PNG+PDF (and maps.npz with --save-maps)."""
    _run_fourier("amplitude", [model_name], [checkpoint] if checkpoint else None, output=output,
                 overwrite=overwrite, taps=taps, stages=stages, blocks=blocks, method=method, precision=precision,
                 img_size=img_size, device=device, model_kwargs=model_kwargs, images=images, data=data,
                 num_images=num_images, batch_size=batch_size, freq_axis=freq_axis, save_maps=save_maps)


def _checkpoint_pairs(models, items):
    """``--checkpoint`` values for several models: MODEL=PATH, or plain paths in model order."""
    if not items:
        return None
    pairs, plain = {}, []
    for item in items:
        model, sep, path = item.partition("=")
        if sep and model in models:
            pairs[model] = path
        else:
            plain.append(item)
    if plain and pairs:
        raise click.ClickException("--checkpoint: use either MODEL=PATH for every checkpoint or plain paths in "
                                   "--model order")
    if plain:
        if len(plain) != len(models):
            raise click.ClickException(f"--checkpoint: {len(plain)} checkpoint(s) for {len(models)} model(s); give "
                                       "one per --model in order, or MODEL=PATH")
        return list(plain)
    return pairs


@main.command("spectrum")
@click.option("--model", "models", multiple=True, required=True,
              help="registry name, alias or timm:<name>; repeat to compare models side by side")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="[MODEL=]PATH",
              help="one per --model (in order) or MODEL=PATH")
@runtime_options
@image_options
@_fourier_options("spectrum")
@user_errors
def spectrum_cmd(models, checkpoints, img_size, device, model_kwargs, images, data, num_images, batch_size, taps,
                 stages, blocks, method, precision, output, overwrite, absolute, cmap):
    """2-D Fourier spectrum maps of token-mixer outputs (SPANet Fig. 1 style): batch/channel
    mean of log|F|, zero frequency at the centre, relative to DC, one shared colour scale.

    Default taps: the token mixer of the last block of every stage. Writes results.json,
    spectrum.csv, maps.npz and spectrum PNG+PDF."""
    models = list(dict.fromkeys(models))
    _run_fourier("spectrum", models, _checkpoint_pairs(models, checkpoints), output=output, overwrite=overwrite,
                 taps=taps, stages=stages, blocks=blocks, method=method, precision=precision, img_size=img_size,
                 device=device, model_kwargs=model_kwargs, images=images, data=data, num_images=num_images,
                 batch_size=batch_size, relative=not absolute)


@main.command("taps")
@click.option("--model", "model_name", required=True, help="registry name, alias or timm:<name>")
@click.option("--img-size", default=None, help="input size S or HxW (default: the model's)")
@click.option("--model-kwargs", "model_kwargs", multiple=True, metavar="KEY=VALUE", help="constructor overrides")
@click.option("--role", "roles", default=None, metavar="ROLE,...", help="only these roles")
@click.option("--stage", "stages", default=None, metavar="K[,K]", help="only these 1-based stages")
@click.option("--json", "as_json", is_flag=True, help="print the taps as JSON")
@user_errors
def taps_cmd(model_name, img_size, model_kwargs, roles, stages, as_json):
    """List the hookable taps of a model in execution order (name, role, stage, layout, grid,
    module path), i.e. what --taps ROLE / path:<module.path> can address."""
    from spectrascope.probe import model_taps, select_taps
    size = parse_img_size(img_size)
    if model_name.startswith("timm:"):
        try:
            model = registry.create_model(model_name, img_size=size, **parse_model_kwargs(model_kwargs)).eval()
        except ImportError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None
    else:
        with torch.device("meta"):
            model = registry.create_model(model_name, img_size=size, **parse_model_kwargs(model_kwargs))
    hw = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    taps = model_taps(model, input_size=hw)
    if roles or stages:
        taps = select_taps(taps, roles=roles.split(",") if roles else None, stages=_parse_stages(stages))
    if as_json:
        click.echo(json.dumps([t.as_dict() for t in taps], indent=1))
        return
    rows = [(t.name, t.role, "" if t.stage is None else str(t.stage), t.layout + (f"+{t.num_prefix_tokens}"
             if t.num_prefix_tokens else ""), "" if t.grid is None else f"{t.grid[0]}x{t.grid[1]}",
             t.path + (" (input)" if t.hook == "pre" else "")) for t in taps]
    header = ("name", "role", "stage", "layout", "grid", "module")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*header).rstrip())
    for r in rows:
        click.echo(fmt.format(*r).rstrip())


@main.command("plot")
@click.argument("results", type=click.Path(exists=True))
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="folder for the figures (default: next to results.json)")
@click.option("--format", "formats", default="png,pdf", show_default=True, help="comma list of formats")
@click.option("--freq-axis", type=click.Choice(["index", "true"]), default=None, help="amplitude x axis")
@click.option("--cmap", default=None, help="colour map of spectrum maps")
@user_errors
def plot_cmd(results, output, formats, freq_axis, cmap):
    """Redraw the figures of a results.json (amplitude or spectrum) from its data alone."""
    from spectrascope.analysis.fourier import redraw
    fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in ("png", "pdf", "svg")]
    if bad or not fmts:
        raise click.ClickException(f"--format: unsupported format(s) {', '.join(bad) or repr(formats)}; "
                                   "use png, pdf, svg")
    written = redraw(results, output, formats=fmts, freq_axis=freq_axis, cmap=cmap)
    for p in written:
        click.echo(str(p))


class _FigureGroup(click.Group):
    """``figure list`` plus one sub-command per recipe module in ``spectrascope.analyses``."""

    def list_commands(self, ctx):
        from spectrascope.report.recipes import list_figures
        return ["list"] + [f.name for f in list_figures()]

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        from spectrascope.report.recipes import FigureError, get_figure
        try:
            spec, _ = get_figure(name)
        except FigureError:
            return None
        return _figure_command(spec)

    def resolve_command(self, ctx, args):
        from spectrascope.report.recipes import FigureError, get_figure
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            try:
                get_figure(args[0])
            except FigureError as exc:
                raise click.ClickException(str(exc)) from None
        return super().resolve_command(ctx, args)


@main.group("figure", cls=_FigureGroup)
def figure_group():
    """Reproduce a paper figure: `spectrascope figure list`, `spectrascope figure NAME`."""


@figure_group.command("list")
def figure_list_cmd():
    """The figure recipes and the models they need."""
    from spectrascope.report.recipes import list_figures, model_available
    figs = list_figures()
    if not figs:
        raise click.ClickException("no figure recipes found in spectrascope.analyses")
    for f in figs:
        marks = []
        for m in f.models:
            ok, why = model_available(m)
            marks.append(m if ok else f"{m} [{why}]")
        click.echo(f"{f.name}  -  {f.paper}")
        click.echo(f"    {f.title}")
        if marks:
            click.echo(f"    models: {', '.join(marks)}")


def _figure_command(spec):
    @click.command(spec.name, help=f"{spec.title}. {spec.paper}.\n\n{spec.summary}")
    @click.option("--checkpoint", "checkpoints", multiple=True, metavar="MODEL=PATH",
                  help=f"weights per model ({', '.join(spec.models)})")
    @click.option("--output", type=click.Path(file_okay=False), default="figures", show_default=True,
                  help="parent folder; the figure goes to OUTPUT/<name>/")
    @click.option("--overwrite", is_flag=True, help="replace an existing figure folder")
    @click.option("--img-size", default=None, help="input size S or HxW (default: each model's)")
    @click.option("--device", default="auto", show_default=True)
    @click.option("--skip-unavailable", is_flag=True, help="draw the available models when some are missing")
    @image_options
    @user_errors
    def cmd(checkpoints, output, overwrite, img_size, device, skip_unavailable, images, data, num_images,
            batch_size):
        import warnings

        from spectrascope.report.recipes import run_figure
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                folder, doc = run_figure(spec.name, output=output, overwrite=overwrite, checkpoints=checkpoints,
                                         device=device, images=images, data=data, num_images=num_images,
                                         batch_size=batch_size, img_size=parse_img_size(img_size),
                                         skip_unavailable=skip_unavailable, progress=True)
        except ImportError as exc:
            raise click.ClickException(str(exc).splitlines()[0]) from None
        from spectrascope.ops.fourier import ZeroMeanWarning
        for msg in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ZeroMeanWarning)):
            click.echo(f"warning: {msg}", err=True)
        for s in doc["skipped_models"]:
            click.echo(f"note: skipped {s['model']}: {s['reason']}", err=True)
        if doc["random_weights"]:
            click.echo(f"note: random weights for {', '.join(doc['random_weights'])} (no --checkpoint)", err=True)
        click.echo(f"{spec.name} -> {folder} ({', '.join(doc['files'])})")

    return cmd


# ---------------------------------------------------------------- filters, cam, context


def _output_dir(output, command: str, tag: str, overwrite: bool):
    from pathlib import Path

    from spectrascope.io.results import default_output_dir
    out = Path(output) if output else default_output_dir(command, tag)
    if not overwrite and (out.is_file() or (out.is_dir() and any(out.iterdir()))):
        raise OutputExistsError(f"output directory {out} exists and is not empty (use --overwrite)")
    return out


def _channels(value):
    if not value:
        return None
    try:
        out = []
        for part in str(value).split(","):
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a channel list such as 0,1,2 or 0-7", param_hint="--channels")
    if any(c < 0 for c in out):
        raise click.BadParameter("channels must be >= 0", param_hint="--channels")
    return out


@main.command("filters")
@model_options
@image_options
@click.option("--layers", default=None, help="stages (3), layer names or globs (s3.*, s4.b2) or parameter paths")
@click.option("--routing", is_flag=True, help="DFFormer: routing statistics over the images (which basis is used)")
@click.option("--effective", default=0, type=int, show_default=True,
              help="DFFormer: effective per-image filters of the first N images")
@click.option("--channels", default=None, help="channels to show (global / effective filters), e.g. 0-23")
@click.option("--cmap", default=None, help="matplotlib colormap (default viridis for bases, YlGnBu for global filters)")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="output directory (default: runs/filters/<model>-<time>)")
@click.option("--overwrite", is_flag=True, help="replace an existing output directory")
@user_errors
def filters_cmd(model_name, checkpoint, img_size, device, model_kwargs, images, data, num_images, batch_size, layers,
                routing, effective, channels, cmap, output, overwrite):
    """Frequency filters of a model: DFFormer bases (Fig. 9), GFNet/GFFormer global filters
    (Fig. 2), AFFNet adaptive masks and their equivalent kernels, SPANet SPF masks."""
    from spectrascope.engine.device import resolve_device
    from spectrascope.analysis.filters import run_filters
    if effective < 0:
        raise click.BadParameter("must be >= 0", param_hint="--effective")
    out = _output_dir(output, "filters", model_name, overwrite)
    summary = run_filters(model_name, checkpoint=checkpoint, img_size=parse_img_size(img_size),
                          device=resolve_device(device), overrides=parse_model_kwargs(model_kwargs), layers=layers,
                          images=images, data=data, num_images=num_images, batch_size=batch_size, routing=routing,
                          effective=effective, channels=_channels(channels), output=out, overwrite=overwrite,
                          cmap=cmap)
    if checkpoint is None:
        click.echo(f"note: {model_name} has random weights (no --checkpoint); the filters are its initialisation",
                   err=True)
    for a in summary.get("aff", []):
        if a["equivalence_max_abs_error"] is not None:
            click.echo(f"{a['name']}: mask filtering == circular convolution with its kernel, "
                       f"max abs error {a['equivalence_max_abs_error']:.2e}")
    click.echo(f"filters of {model_name} -> {out} ({', '.join(summary['figures'])})")


@main.command("cam")
@click.option("--model", "model_names", required=True, multiple=True,
              help="registry name, alias or timm:<name>; repeat to compare models in one grid")
@click.option("--checkpoint", "checkpoints", multiple=True,
              help="one per --model in order, or MODEL=PATH; '-' keeps random weights")
@click.option("--method", type=click.Choice(["scorecam", "gradcam", "gradcam++"]), default="scorecam",
              show_default=True)
@click.option("--flavour", type=click.Choice(["gradcam-lib", "authors", "torchcam"]), default="gradcam-lib",
              show_default=True, help="Score-CAM implementation to reproduce")
@click.option("--score", type=click.Choice(["logit", "softmax"]), default=None,
              help="class score of a masked input (default: the flavour's own)")
@click.option("--target-layer", default=None, help="tap role (stage, block, ...), tap name (stage4) or module path")
@click.option("--class", "target_class", type=int, default=None,
              help="class to explain (default: top-1, or the label of synthetic data)")
@runtime_options
@image_options
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="output directory (default: runs/cam/<models>-<time>)")
@click.option("--overwrite", is_flag=True, help="replace an existing output directory")
@user_errors
def cam_cmd(model_names, checkpoints, method, flavour, score, target_layer, target_class, img_size, device,
            model_kwargs, images, data, num_images, batch_size, output, overwrite):
    """Class activation maps (Score-CAM, Grad-CAM, Grad-CAM++) with overlays, a grid
    comparing the models (SPANet Fig. S2), raw maps and, on synthetic data, localisation
    scores (pointing game, energy in the box). --batch-size is the number of images per
    Grad-CAM pass and of masked inputs per Score-CAM forward (Score-CAM without --batch-size:
    chosen automatically, at most 8 on CPUs and 64 on GPUs)."""
    from pathlib import Path

    from spectrascope.engine.device import resolve_device
    from spectrascope.analysis.cam import run_cam
    cks = _pair_checkpoints(model_names, checkpoints)
    for _, ck in cks:
        if ck is not None and not Path(ck).is_file():
            raise click.ClickException(f"checkpoint not found: {ck}")
    out = _output_dir(output, "cam", "-".join(model_names), overwrite)
    payload = run_cam(cks, method=method, flavour=flavour, target_layer=target_layer, target_class=target_class,
                      images=images, data=data, num_images=num_images, img_size=parse_img_size(img_size),
                      device=resolve_device(device), overrides=parse_model_kwargs(model_kwargs),
                      batch_size=batch_size, score=score, output=out, overwrite=overwrite,
                      mask_batch_size=batch_size if _given("batch_size") else None)
    rnd = [m["model"] for m in payload["models"] if m["random_weights"]]
    if rnd:
        click.echo(f"note: random weights for {', '.join(rnd)} (no --checkpoint); the maps are not meaningful",
                   err=True)
    for m in payload["models"]:
        loc = m.get("localisation")
        extra = (f", pointing game {loc['pointing_accuracy']:.2f}, energy in box {loc['mean_energy_in_box']:.3f}"
                 if loc else "")
        click.echo(f"{m['model']}: {method} at {m['target_layer']} on {len(payload['images'])} images{extra}")
    click.echo(f"-> {out}")


def _pair_checkpoints(models, checkpoints):
    models = list(models)
    cks = list(checkpoints or ())
    if not cks:
        return [(m, None) for m in models]
    if all("=" in c for c in cks):
        named = dict(c.split("=", 1) for c in cks)
        unknown = [k for k in named if k not in models]
        if unknown:
            raise click.BadParameter(f"{', '.join(unknown)} is not a --model", param_hint="--checkpoint")
        return [(m, named.get(m)) for m in models]
    if len(cks) != len(models):
        raise click.BadParameter(f"{len(cks)} checkpoints for {len(models)} models: give one per --model "
                                 "('-' for random weights) or MODEL=PATH", param_hint="--checkpoint")
    return [(m, None if c == "-" else c) for m, c in zip(models, cks)]


@main.command("context")
@model_options
@image_options
@click.option("--block", default=None, help="SPAM block (s4.b3), a stage number (its last block) or 'last' [last]")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="output directory (default: runs/context/<model>-<time>)")
@click.option("--overwrite", is_flag=True, help="replace an existing output directory")
@user_errors
def context_cmd(model_name, checkpoint, img_size, device, model_kwargs, images, data, num_images, batch_size, block,
                output, overwrite):
    """SPANet context maps (Fig. 4 / S1): each SPG's output and the aggregated context of a
    SPAM block, channel-mean, resized to the image and overlaid."""
    from spectrascope.engine.device import resolve_device
    from spectrascope.analysis.cam import run_context
    out = _output_dir(output, "context", model_name, overwrite)
    payload = run_context(model_name, checkpoint=checkpoint, block=block, images=images, data=data,
                          num_images=num_images, img_size=parse_img_size(img_size), device=resolve_device(device),
                          overrides=parse_model_kwargs(model_kwargs), output=out, overwrite=overwrite)
    if checkpoint is None:
        click.echo(f"note: {model_name} has random weights (no --checkpoint); the maps are not meaningful", err=True)
    click.echo(f"context maps of {model_name} at {payload['block']} ({', '.join(payload['maps'].values())}) "
               f"on {len(payload['images'])} images -> {out}")


# ---------------------------------------------------------------- throughput


@main.command("throughput")
@click.option("--model", "models", multiple=True, required=True, help="repeat to compare models")
@click.option("--resolutions", default="224,384,512", show_default=True, help="comma list of S or HxW")
@click.option("--batch-size", default=4, show_default=True, type=int)
@click.option("--warmup", default=10, show_default=True, type=int)
@click.option("--iters", default=40, show_default=True, type=int)
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True)
@click.option("--channels-last", is_flag=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--model-kwargs", "model_kwargs", multiple=True, metavar="KEY=VALUE")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="result folder [runs/throughput/<models>-<time>]")
@click.option("--overwrite", is_flag=True)
@user_errors
def throughput_cmd(models, resolutions, batch_size, warmup, iters, amp, channels_last, device, model_kwargs, output,
                   overwrite):
    """Inference throughput and peak memory vs resolution (DFFormer Figs. 5-6); every model is built for each
    resolution. Peak memory is measured on CUDA only."""
    from pathlib import Path

    from spectrascope.engine.device import resolve_device
    from spectrascope.report.fourier import save_figure
    from spectrascope.io.results import Stopwatch, default_output_dir, provenance, staged_output, write_csv, write_json
    from spectrascope.analysis.throughput import figures, sweep
    res = [parse_img_size(r) for r in resolutions.split(",") if r.strip()]
    if not res or batch_size < 1 or iters < 1 or warmup < 0:
        raise click.ClickException("--resolutions needs at least one size; --batch-size/--iters must be >= 1")
    for name in models:
        if not name.startswith("timm:"):
            registry.resolve_name(name)           # unknown names fail before any output exists
    dev = resolve_device(device)
    out = Path(output) if output else default_output_dir("throughput", "-vs-".join(m.replace("timm:", "") for m in models))
    watch = Stopwatch()
    with staged_output(out, overwrite=overwrite) as stage:
        rows = sweep(models, res, batch_size=batch_size, device=dev, warmup=warmup, iters=iters,
                     amp=None if amp == "off" else amp, channels_last=channels_last,
                     model_kwargs=parse_model_kwargs(model_kwargs),
                     progress=lambda r: click.echo(f"{r['model']} {r['resolution'][0]}x{r['resolution'][1]}: "
                                                   + (f"{r['throughput_img_s']:.1f} img/s" if r["status"] == "ok"
                                                      else "out of memory"), err=True))
        write_csv(stage / "throughput.csv", [{k: (v if k != "resolution" else "x".join(map(str, v)))
                                              for k, v in r.items()} for r in rows])
        write_json(stage / "results.json", {
            **provenance(command="throughput", model=",".join(models), device=dev, wall_time_s=watch.elapsed,
                         extra={"protocol": {"batch_size": batch_size, "warmup": warmup, "iters": iters, "amp": amp,
                                             "channels_last": channels_last, "input": "randn",
                                             "memory": "torch.cuda.max_memory_allocated (CUDA only)"}}),
            "rows": rows})
        for stem, fig in figures(rows, title_suffix=f" ({dev.type}, batch {batch_size})").items():
            save_figure(fig, stage, stem)
    click.echo(f"throughput of {len(models)} model(s) at {len(res)} resolution(s) -> {out}")

