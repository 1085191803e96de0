"""``spectrascope cka``: layer similarity reports."""
from __future__ import annotations

import click
import torch

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
    from spectrascope.io.results import check_output, default_output_dir
    size = parse_img_size(img_size)
    common = parse_model_kwargs(model_kwargs)
    spec_a = ModelSpec(model_a, checkpoint_a, size, {**common, **parse_model_kwargs(model_kwargs_a)})
    spec_b = ModelSpec(model_b, checkpoint_b, size, {**common, **parse_model_kwargs(model_kwargs_b)})
    out = Path(output) if output else default_output_dir("cka", f"{model_a}-vs-{model_b}")
    check_output(out, command="cka", overwrite=overwrite)
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
