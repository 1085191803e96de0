"""``spectrascope throughput``: throughput and peak memory vs resolution (a thin wrapper over
``analysis.throughput`` with the engine's device checks and the staged output layer)."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import parse_img_size, parse_model_kwargs, user_errors
from spectrascope.errors import OptionError
from spectrascope.zoo import registry


def _check(models, resolutions, batch_size, warmup, iters, overrides=None) -> list:
    from spectrascope.zoo.limits import check_input_size
    res = [parse_img_size(r, option="--resolutions") for r in resolutions.split(",") if r.strip()]
    if not res:
        raise OptionError("needs at least one size (S or HxW, comma-separated)", option="--resolutions")
    for value, option, low in ((batch_size, "--batch-size", 1), (iters, "--iters", 1), (warmup, "--warmup", 0)):
        if value < low:
            raise OptionError(f"{value} is below {low}", option=option)
    for name in models:
        if not name.startswith("timm:"):
            registry.resolve_name(name)           # unknown names fail before any output exists
            for r in res:                         # sizes below the model's minimum or beyond memory, too
                check_input_size(registry.get_card(name), (r, r) if isinstance(r, int) else r, overrides,
                                 option="--resolutions")
    return res


def _echo_row(r) -> None:
    click.echo(f"{r['model']} {r['resolution'][0]}x{r['resolution'][1]}: "
               + (f"{r['throughput_img_s']:.1f} img/s" if r["status"] == "ok" else "out of memory"), err=True)


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
    from spectrascope.analysis.throughput import MEMORY_NOTE, sweep
    from spectrascope.report.throughput import figures
    from spectrascope.io.results import Stopwatch, provenance, write_csv, write_json
    from spectrascope.pipelines.common import session, stage_output
    from spectrascope.report.style import save_figure
    res = _check(models, resolutions, batch_size, warmup, iters, parse_model_kwargs(model_kwargs))
    watch = Stopwatch()
    with session(device) as (d, dev):
        stage = stage_output(output, command="throughput", tag="-vs-".join(m.replace("timm:", "") for m in models),
                             overwrite=overwrite, dist=d)
        with stage as out:
            rows = sweep(models, res, batch_size=batch_size, device=dev, warmup=warmup, iters=iters,
                         amp=None if amp == "off" else amp, channels_last=channels_last,
                         model_kwargs=parse_model_kwargs(model_kwargs), progress=_echo_row)
            if out is not None:
                write_csv(out / "throughput.csv", [{k: (v if k != "resolution" else "x".join(map(str, v)))
                                                    for k, v in r.items()} for r in rows])
                protocol = {"batch_size": batch_size, "warmup": warmup, "iters": iters, "amp": amp,
                            "channels_last": channels_last, "input": "randn",
                            "memory": "torch.cuda.max_memory_allocated (CUDA only)"}
                write_json(out / "results.json", {**provenance(command="throughput", model=",".join(models),
                                                               device=dev, wall_time_s=watch.elapsed,
                                                               extra={"protocol": protocol}), "rows": rows})
                for stem, fig in figures(rows, title_suffix=f" ({dev.type}, batch {batch_size})").items():
                    save_figure(fig, out, stem)
    if dev.type != "cuda":
        click.echo("note: " + MEMORY_NOTE.format(device=dev.type), err=True)
    click.echo(f"throughput of {len(models)} model(s) at {len(res)} resolution(s) -> {stage.final}")
