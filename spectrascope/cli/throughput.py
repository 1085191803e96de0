"""``spectrascope throughput``: throughput and peak memory vs resolution."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import (parse_img_size, parse_model_kwargs, user_errors)
from spectrascope.zoo import registry


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
    from spectrascope.report.style import save_figure
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
    with staged_output(out, overwrite=overwrite, command="throughput") as stage:
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
