"""``spectrascope amplitude``, ``spectrum`` and ``plot``: Fourier analyses of feature maps."""
from __future__ import annotations

import click
import torch

from spectrascope.cli.app import main
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
        with staged_output(out, overwrite=overwrite, command=kind) as stage, warnings.catch_warnings(record=True) as caught:
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
