"""``spectrascope filters``: the frequency filters of a model (a thin wrapper over
``pipelines.filters.run_filters``)."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import image_options, model_options, parse_img_size, parse_model_kwargs, user_errors
from spectrascope.errors import OptionError


@main.command("filters")
@model_options
@image_options
@click.option("--layers", default=None,
              help="taps as in --taps: stages (3), layer names or globs (s3.*, s4.b2), module or parameter paths")
@click.option("--routing", is_flag=True, help="DFFormer: routing statistics over the images (which basis is used)")
@click.option("--effective", default=0, type=int, show_default=True,
              help="DFFormer: effective per-image filters of the first N images")
@click.option("--channels", default=None, help="channels to show (global / effective filters), e.g. 0-23")
@click.option("--cmap", default=None, help="matplotlib colormap (default viridis: yellow = high amplitude)")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="output directory (default: runs/filters/<model>-<time>)")
@click.option("--overwrite", is_flag=True, help="replace an existing output directory")
@user_errors
def filters_cmd(model_name, checkpoint, img_size, device, model_kwargs, images, data, num_images, batch_size, layers,
                routing, effective, channels, cmap, output, overwrite):
    """Frequency filters of a model: DFFormer bases (Fig. 9), GFNet/GFFormer global filters
    (Fig. 2), AFFNet adaptive masks and their equivalent kernels, SPANet SPF masks.
    Runs under torchrun (the routing statistics are sharded over the processes)."""
    from spectrascope.pipelines.filters import aff_lines, run_filters
    from spectrascope.report.filters import parse_channels
    if effective < 0:
        raise OptionError("must be >= 0", option="--effective")
    res = run_filters(model_name, checkpoint=checkpoint, img_size=parse_img_size(img_size), device=device,
                      overrides=parse_model_kwargs(model_kwargs), layers=layers, images=images, data=data,
                      num_images=num_images, batch_size=batch_size, routing=routing, effective=effective,
                      channels=parse_channels(channels), output=output, overwrite=overwrite, cmap=cmap,
                      progress=True)
    if not res.summary:                 # a rank other than 0 under torchrun: rank 0 reports
        return
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
    for line in aff_lines(res.payload):
        click.echo(line)
    click.echo(res.summary)
