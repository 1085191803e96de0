"""``spectrascope flops``: parameters and FLOPs of zoo (or timm) models, with a breakdown."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import parse_img_size, user_errors


@main.command("flops")
@click.option("--model", "models", multiple=True, required=True, help="zoo name or timm:<name>; repeat to compare")
@click.option("--img-size", default=None, help="input size S or HxW (default: each model's)")
@click.option("--fft", type=click.Choice(["none", "nlogn"]), default="none", show_default=True,
              help="FFTs free (fvcore, the papers) or N*C*ceil(log2 N) per transform in the total")
@click.option("--by", type=click.Choice(["module", "op", "stage"]), default=None,
              help="break the count down by module, operator kind or stage")
@click.option("--depth", default=2, show_default=True, type=click.IntRange(1, 8),
              help="module path depth of --by module")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list (plain integer counts)")
@user_errors
def flops_cmd(models, img_size, fft, by, depth, as_json):
    """Parameters and FLOPs (one per multiply-accumulate, fvcore's conventions) of one forward pass of one
    image; zoo models are counted on the meta device (no weights are allocated)."""
    from spectrascope.pipelines.flops import count_models
    from spectrascope.report.tables import flops_json, flops_text
    counts = count_models(models, parse_img_size(img_size), fft=fft)
    if as_json:
        click.echo(flops_json(counts, by=by, depth=depth))
    else:
        click.echo(flops_text(counts, by=by, depth=depth))
