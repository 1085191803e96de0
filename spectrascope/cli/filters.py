"""``spectrascope filters``: the frequency filters of a model."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import (_output_dir, image_options, model_options, parse_img_size, parse_model_kwargs,
                                      user_errors)


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
