"""``spectrascope cka``: layer similarity reports (a thin wrapper over ``spectrascope.pipelines.cka``)."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import (image_options, parse_img_size, parse_model_kwargs, pretrained_options,
                                      user_errors)


@main.command("cka")
@pretrained_options
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
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off", show_default=True,
              help="autocast of the forward passes (Gram products stay float32 or float64)")
@click.option("--channels-last", "channels_last", is_flag=True, help="channels-last weights and inputs")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--seed", default=0, show_default=True, type=int, help="seed of random initialisations")
@click.option("--output", type=click.Path(file_okay=False), default=None,
              help="report directory (default: runs/cka/<A>-vs-<B>-<time>)")
@click.option("--overwrite", is_flag=True, help="replace an existing report directory (spectrascope's files only)")
@click.option("--title", default=None, help="report title")
@user_errors
def cka_cmd(model_a, model_b, checkpoint_a, checkpoint_b, taps, taps_a, taps_b, img_size, model_kwargs,
            model_kwargs_a, model_kwargs_b, images, data, num_images, batch_size, estimator, engine, precision, amp,
            channels_last, device, seed, output, overwrite, title):
    """Mini-batch linear CKA between the layers of two models, written as a report directory
    (heatmap PNG/PDF, matrix CSV, best matches, results.json, report.html).

    Runs under torchrun too (one process per device; gloo on CPU): every process takes its
    share of the batches and the first one writes the report."""
    from spectrascope.pipelines.cka import CKAOptions, run
    from spectrascope.zoo.build import ModelSpec
    size = parse_img_size(img_size)
    common = parse_model_kwargs(model_kwargs)
    spec_a = ModelSpec(model_a, checkpoint_a, size, {**common, **parse_model_kwargs(model_kwargs_a)})
    spec_b = ModelSpec(model_b, checkpoint_b, size, {**common, **parse_model_kwargs(model_kwargs_b)})
    opts = CKAOptions(taps=taps, taps_a=taps_a, taps_b=taps_b, estimator=estimator, engine=engine,
                      precision=precision, seed=seed)
    outcome = run(spec_a, spec_b, opts=opts, images=images, data=data, num_images=num_images,
                  batch_size=batch_size, device=device, amp=amp, channels_last=channels_last, output=output,
                  overwrite=overwrite, title=title)
    if outcome.output is None:       # not the writing process of a torchrun group
        return
    for msg in outcome.warnings:
        click.echo(f"warning: {msg}", err=True)
    for note in outcome.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(outcome.summary)
