"""``spectrascope cam`` and ``context``: class activation maps and SPANet context maps."""
from __future__ import annotations

import click

from spectrascope.cli.app import main
from spectrascope.cli.options import (_given, _output_dir, image_options, model_options, parse_img_size,
                                      parse_model_kwargs, runtime_options, user_errors)


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
