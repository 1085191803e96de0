"""``spectrascope amplitude``, ``spectrum`` and ``plot``: Fourier analyses of feature maps."""
from __future__ import annotations

import click
import torch

from spectrascope.cli.app import main
from spectrascope.errors import OptionError
from spectrascope.cli.options import (image_options, model_options, parse_img_size, parse_model_kwargs, runtime_options,
                                      user_errors)


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
            click.option("--output", type=click.Path(), default=None,
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


def _runner_options(fn):
    """--amp/--channels-last/--compile/--workers: how the engine's runner runs the forwards."""
    opts = [
        click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True,
                     help="autocast the forward (the FFTs stay float32)"),
        click.option("--channels-last", "channels_last", is_flag=True, help="channels-last weights and inputs"),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (no early stop)"),
        click.option("--workers", default=0, show_default=True, type=int, help="DataLoader workers decoding images"),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _run_fourier(kind: str, models, checkpoints, *, img_size, model_kwargs, compile_, **kw):
    from spectrascope.pipelines.fourier import run_fourier
    outcome = run_fourier(kind, models, checkpoints=checkpoints, img_size=parse_img_size(img_size),
                          model_kwargs=parse_model_kwargs(model_kwargs), compile=compile_, **kw)
    for msg in outcome.warnings:
        click.echo(f"warning: {msg}", err=True)
    for msg in outcome.notes:
        click.echo(f"note: {msg}", err=True)
    if outcome.summary:
        click.echo(outcome.summary)
    return outcome.output


@main.command("amplitude")
@model_options
@image_options
@_fourier_options("amplitude")
@_runner_options
@user_errors
def amplitude_cmd(model_name, checkpoint, img_size, device, model_kwargs, images, data, num_images, batch_size, taps,
                  stages, blocks, method, precision, output, overwrite, freq_axis, save_maps, amp, channels_last,
                  compile_, workers):
    """Relative log amplitude of Fourier-transformed feature maps (Park & Kim 2022): one curve
    per tap, coloured by normalised depth, and the high-frequency Delta vs depth.

    Writes results.json, amplitude.csv, amplitude/highfreq PNG+PDF (and maps.npz with --save-maps)."""
    _run_fourier("amplitude", [model_name], [checkpoint] if checkpoint else None, output=output,
                 overwrite=overwrite, taps=taps, stages=stages, blocks=blocks, method=method, precision=precision,
                 img_size=img_size, device=device, model_kwargs=model_kwargs, images=images, data=data,
                 num_images=num_images, batch_size=batch_size, freq_axis=freq_axis, save_maps=save_maps, amp=amp,
                 channels_last=channels_last, compile_=compile_, workers=workers)


@main.command("spectrum")
@click.option("--model", "models", multiple=True, required=True,
              help="registry name, alias or timm:<name>; repeat to compare models side by side")
@click.option("--checkpoint", "checkpoints", multiple=True, metavar="[MODEL=]PATH",
              help="one per --model (in order) or MODEL=PATH")
@runtime_options
@image_options
@_fourier_options("spectrum")
@_runner_options
@user_errors
def spectrum_cmd(models, checkpoints, img_size, device, model_kwargs, images, data, num_images, batch_size, taps,
                 stages, blocks, method, precision, output, overwrite, absolute, cmap, amp, channels_last, compile_,
                 workers):
    """2-D Fourier spectrum maps of token-mixer outputs (SPANet Fig. 1 style): batch/channel
    mean of log|F|, zero frequency at the centre, relative to DC, one shared colour scale.

    Default taps: the token mixer of the last block of every stage. Writes results.json,
    spectrum.csv, maps.npz and spectrum PNG+PDF."""
    from spectrascope.zoo.build import pair_checkpoints
    models = list(dict.fromkeys(models))
    pairs = pair_checkpoints(models, checkpoints) if checkpoints else None
    _run_fourier("spectrum", models, pairs, output=output, overwrite=overwrite,
                 taps=taps, stages=stages, blocks=blocks, method=method, precision=precision, img_size=img_size,
                 device=device, model_kwargs=model_kwargs, images=images, data=data, num_images=num_images,
                 batch_size=batch_size, relative=not absolute, cmap=cmap, amp=amp, channels_last=channels_last,
                 compile_=compile_, workers=workers)


@main.command("plot")
@click.argument("results", type=click.Path(exists=True))
@click.option("--output", type=click.Path(), default=None,
              help="folder for the figures (default: next to results.json)")
@click.option("--format", "formats", default="png,pdf", show_default=True, help="comma list of formats")
@click.option("--freq-axis", type=click.Choice(["index", "true"]), default=None, help="amplitude x axis")
@click.option("--cmap", default=None, help="colour map of spectrum maps")
@user_errors
def plot_cmd(results, output, formats, freq_axis, cmap):
    """Redraw the figures of a results.json (amplitude or spectrum) from its data alone."""
    from spectrascope.report.fourier import redraw
    fmts = [f.strip().lower() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in ("png", "pdf", "svg")]
    if bad or not fmts:
        raise OptionError(f"unsupported format(s) {', '.join(bad) or repr(formats)}; use png, pdf, svg",
                          option="--format")
    written = redraw(results, output, formats=fmts, freq_axis=freq_axis, cmap=cmap)
    for p in written:
        click.echo(str(p))
